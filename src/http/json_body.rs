//! A JSON request body read as it arrives. Each large `base64` string inside its
//! `variables` is decoded into a spool on the way ([`crate::attachments::spool`])
//! and a short placeholder takes its place, so a file never sits in memory as text;
//! the rest, small, is parsed as before, and
//! [`crate::graphql::large_strings`] hands the spooled files to their resolvers.

use std::path::PathBuf;

use crate::attachments::FileContent;
use crate::attachments::spool::{Base64Spool, SpoolFailure};
use crate::error::AppError;
use crate::graphql::bounds::too_many_files;
use crate::graphql::large_strings::LargeStrings;

/// A `base64` string is spooled once its text reaches this length: below it, the
/// detour costs more than the copy.
pub const SPOOL_FROM: usize = 64 * 1024;

/// A body announced at most this long keeps its decoded files in memory (up to
/// three quarters of it: 1.5 MiB).
const SMALL_BODY: u64 = 2 * 1024 * 1024;

/// The text of a body that may hold files starts with room for this much.
const TEXT_FIRST: usize = 64 * 1024;

/// Past this nesting the rest of the body is copied as it is (the JSON parser
/// refuses it anyway): the scanner's stack stays small.
const MAX_DEPTH: usize = 128;

/// Escaped text is decoded in batches of this size.
const UNESCAPED_BATCH: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Other,
    Variables,
    Base64,
}

/// Where a container sits: only strings inside the `variables` object are files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Outside,
    VariablesObject,
    InsideVariables,
}

struct Frame {
    object: bool,
    place: Place,
    /// In an object, whether the next string is a key.
    expect_key: bool,
    /// The key of the value being read (an object's).
    key: Key,
}

/// Where the scanner is in the text.
enum Mode {
    Between,
    /// A key: its first bytes, and whether it had an escape (never a known key).
    Key {
        text: Vec<u8>,
        plain: bool,
        escaped: bool,
    },
    /// Any other string, copied.
    Copied {
        escaped: bool,
    },
    /// A `base64` string, held until it is long enough to spool.
    Candidate {
        text: Vec<u8>,
        escaped: bool,
    },
    Spooling(Box<Spooling>),
    /// Too deep to follow: copied to the end.
    Verbatim,
}

/// The request body read so far, without its spooled strings.
pub struct JsonBody {
    scan: bool,
    /// What is left of the announced length, to grow the text in one step.
    unread: usize,
    /// `MAX_BATCH_FILES`: no more strings are spooled than a request may store.
    max_files: u64,
    too_many_files: bool,
    spool_path: Box<dyn Fn() -> PathBuf + Send + Sync>,
    /// How large a decoded file may grow in memory before it goes to its spool.
    in_memory_up_to: usize,
    text: Vec<u8>,
    frames: Vec<Frame>,
    mode: Mode,
    large: LargeStrings,
}

impl JsonBody {
    /// A body of `length` bytes (when announced) whose large files, at most
    /// `max_files`, are spooled at the paths `spool_path` gives; a body too short to
    /// hold one is only kept.
    pub fn new(
        length: Option<u64>,
        max_files: u64,
        spool_path: impl Fn() -> PathBuf + Send + Sync + 'static,
    ) -> Self {
        let scan = length.is_none_or(|length| length >= SPOOL_FROM as u64);
        // The announced size for a body too short to spool anything; a longer one
        // starts smaller (a large allocation costs memory per request even where no
        // text reaches it: 7.0 against 4.7 MiB per 10 MiB upload in flight) and
        // grows to the rest of its announced size at once ([`JsonBody::room_for`]).
        let announced = usize::try_from(length.unwrap_or(0)).unwrap_or(0);
        let capacity = match scan {
            true => announced.min(TEXT_FIRST),
            false => announced,
        };
        // A body announced small holds its files in memory: they weigh no more than
        // the body, and one write of a whole file beats a spool file and its link
        // (1 MiB uploads from one client: see docs/performance.md).
        let in_memory_up_to = match length {
            Some(length) if length <= SMALL_BODY => announced,
            _ => 0,
        };
        Self {
            scan,
            unread: announced,
            in_memory_up_to,
            max_files,
            too_many_files: false,
            spool_path: Box::new(spool_path),
            text: Vec::with_capacity(capacity),
            frames: Vec::new(),
            mode: Mode::Between,
            large: LargeStrings::default(),
        }
    }

    /// Reads the next chunk of the body; refuses a body with more large files than
    /// a request may store, before it takes more room.
    pub async fn feed(&mut self, chunk: &[u8]) -> Result<(), AppError> {
        self.unread = self.unread.saturating_sub(chunk.len());
        if !self.scan {
            self.text.extend_from_slice(chunk);
            return Ok(());
        }
        let mut at = 0;
        while at < chunk.len() {
            at += self.step(&chunk[at..]).await;
            if self.too_many_files {
                return Err(too_many_files(self.max_files));
            }
        }
        if let Mode::Spooling(spooling) = &mut self.mode {
            spooling.flush().await;
        }
        Ok(())
    }

    /// Keeps `bytes` of text; when the room runs out, it grows by the rest of the
    /// announced body at once, so a large body of text (no file) is copied once.
    fn keep(&mut self, bytes: &[u8]) {
        if self.text.capacity() - self.text.len() < bytes.len() {
            self.text.reserve_exact(bytes.len() + self.unread);
        }
        self.text.extend_from_slice(bytes);
    }

    /// The body's text with placeholders, and the strings they stand for.
    pub fn finish(self) -> (Vec<u8>, LargeStrings) {
        (self.text, self.large)
    }

    /// Reads from the start of `bytes` as far as the current mode goes; how many
    /// bytes it took.
    async fn step(&mut self, bytes: &[u8]) -> usize {
        let (mode, taken) = match std::mem::replace(&mut self.mode, Mode::Between) {
            Mode::Between => {
                self.between(bytes[0]);
                return 1;
            }
            Mode::Verbatim => {
                self.keep(bytes);
                (Mode::Verbatim, bytes.len())
            }
            Mode::Copied { mut escaped } => {
                let end = string_end(bytes, &mut escaped);
                let taken = end.map_or(bytes.len(), |end| end + 1);
                self.keep(&bytes[..taken]);
                match end {
                    Some(_) => (Mode::Between, taken),
                    None => (Mode::Copied { escaped }, taken),
                }
            }
            Mode::Key {
                mut text,
                mut plain,
                mut escaped,
            } => {
                let end = string_end(bytes, &mut escaped);
                let span = &bytes[..end.unwrap_or(bytes.len())];
                plain &= memchr::memchr(b'\\', span).is_none();
                // One byte past the bound tells a longer key.
                let room = (KEY_BYTES + 1).saturating_sub(text.len());
                text.extend_from_slice(&span[..room.min(span.len())]);
                let taken = end.map_or(bytes.len(), |end| end + 1);
                self.keep(&bytes[..taken]);
                if end.is_none() {
                    let mode = Mode::Key {
                        text,
                        plain,
                        escaped,
                    };
                    (mode, taken)
                } else {
                    let key = match key_name(&text, plain).as_deref() {
                        Some("variables") => Key::Variables,
                        Some("base64") => Key::Base64,
                        _ => Key::Other,
                    };
                    if let Some(frame) = self.frames.last_mut() {
                        frame.key = key;
                    }
                    (Mode::Between, taken)
                }
            }
            Mode::Candidate {
                mut text,
                mut escaped,
            } => {
                let end = string_end(bytes, &mut escaped);
                let span = &bytes[..end.unwrap_or(bytes.len())];
                if text.len() + span.len() >= SPOOL_FROM
                    && self.large.len() as u64 >= self.max_files
                {
                    self.too_many_files = true;
                    (Mode::Verbatim, bytes.len())
                } else if text.len() + span.len() >= SPOOL_FROM {
                    // Long enough: spooled from its start; this chunk is read again
                    // by the spool.
                    let placeholder = self.large.next_placeholder();
                    self.keep(placeholder.as_bytes());
                    let spool = Base64Spool::new((self.spool_path)(), self.in_memory_up_to);
                    let mut spooling = Spooling::new(spool);
                    // The text held so far has no closing quote.
                    let _ = spooling.take(&text).await;
                    (Mode::Spooling(Box::new(spooling)), 0)
                } else if let Some(end) = end {
                    self.keep(b"\"");
                    self.keep(&text);
                    self.keep(span);
                    self.keep(b"\"");
                    (Mode::Between, end + 1)
                } else {
                    text.extend_from_slice(span);
                    (Mode::Candidate { text, escaped }, bytes.len())
                }
            }
            Mode::Spooling(mut spooling) => match spooling.take(bytes).await {
                Some(end) => {
                    self.large.push_spooled(spooling.finish().await);
                    (Mode::Between, end + 1)
                }
                None => (Mode::Spooling(spooling), bytes.len()),
            },
        };
        self.mode = mode;
        taken
    }

    /// A byte between strings: the structure that says where the next string sits.
    fn between(&mut self, byte: u8) {
        match byte {
            b'"' => {
                self.mode = match self.frames.last() {
                    Some(frame) if frame.object && frame.expect_key => Mode::Key {
                        text: Vec::new(),
                        plain: true,
                        escaped: false,
                    },
                    Some(frame)
                        if frame.object
                            && frame.key == Key::Base64
                            && frame.place == Place::InsideVariables =>
                    {
                        // Its quote is written with its text or placeholder.
                        self.mode = Mode::Candidate {
                            text: Vec::new(),
                            escaped: false,
                        };
                        return;
                    }
                    _ => Mode::Copied { escaped: false },
                };
            }
            b'{' | b'[' => {
                if self.frames.len() >= MAX_DEPTH {
                    self.mode = Mode::Verbatim;
                } else {
                    let place = self.child_place();
                    self.frames.push(Frame {
                        object: byte == b'{',
                        place,
                        expect_key: byte == b'{',
                        key: Key::Other,
                    });
                }
            }
            b'}' | b']' => {
                self.frames.pop();
            }
            b':' => {
                if let Some(frame) = self.frames.last_mut() {
                    frame.expect_key = false;
                }
            }
            b',' => {
                if let Some(frame) = self.frames.last_mut().filter(|frame| frame.object) {
                    frame.expect_key = true;
                    frame.key = Key::Other;
                }
            }
            _ => {}
        }
        self.keep(&[byte]);
    }

    /// The place of a container opened now: the `variables` of a request (the body,
    /// or an element of a batch) and everything inside it.
    fn child_place(&self) -> Place {
        match self.frames.last() {
            None => Place::Outside,
            Some(parent) => match parent.place {
                Place::VariablesObject | Place::InsideVariables => Place::InsideVariables,
                Place::Outside
                    if parent.object && parent.key == Key::Variables && self.frames.len() <= 2 =>
                {
                    Place::VariablesObject
                }
                Place::Outside => Place::Outside,
            },
        }
    }
}

/// How many bytes of a key are kept: enough for the keys looked for, each letter
/// escaped (`\u0076` is six bytes).
const KEY_BYTES: usize = 64;

/// A key's name as JSON means it, from the first bytes of its raw text: escapes
/// decoded (`"bas\u0065\u0036\u0034"` is `base64`, as the parser will read it), so
/// that no spelling of a file field escapes the spool. `None` past [`KEY_BYTES`].
fn key_name(text: &[u8], plain: bool) -> Option<std::borrow::Cow<'_, str>> {
    if text.len() > KEY_BYTES {
        return None;
    }
    if plain {
        return std::str::from_utf8(text)
            .ok()
            .map(std::borrow::Cow::Borrowed);
    }
    let quoted = [&b"\""[..], text, b"\""].concat();
    serde_json::from_slice::<String>(&quoted)
        .ok()
        .map(std::borrow::Cow::Owned)
}

/// Where the string that `bytes` continues ends (the index of its closing quote),
/// if it does in them; `escaped` carries a backslash that ended the last chunk.
fn string_end(bytes: &[u8], escaped: &mut bool) -> Option<usize> {
    let mut at = 0;
    if *escaped {
        if bytes.is_empty() {
            return None;
        }
        *escaped = false;
        at = 1;
    }
    loop {
        let found = at + memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[found] == b'"' {
            return Some(found);
        }
        at = found + 2;
        if at > bytes.len() {
            *escaped = true;
            return None;
        }
    }
}

/// The state of a JSON escape cut by a chunk boundary.
enum Escape {
    None,
    Backslash,
    Unicode { digits: u8, value: u32 },
}

/// A `base64` string on its way into a spool: its raw JSON text unescaped and fed
/// on; after a failure the rest of the string is only read.
struct Spooling {
    spool: Result<Base64Spool, SpoolFailure>,
    escape: Escape,
    /// Text that went through an escape, decoded in batches.
    unescaped: Vec<u8>,
}

impl Spooling {
    fn new(spool: Base64Spool) -> Self {
        Self {
            spool: Ok(spool),
            escape: Escape::None,
            unescaped: Vec::new(),
        }
    }

    /// Takes the string's raw text from `bytes`; the index of its closing quote if
    /// it ends there.
    async fn take(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.escape {
                Escape::None => {
                    let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at..]) else {
                        self.text(&bytes[at..]).await;
                        return None;
                    };
                    self.text(&bytes[at..at + found]).await;
                    at += found + 1;
                    if bytes[at - 1] == b'"' {
                        return Some(at - 1);
                    }
                    self.escape = Escape::Backslash;
                }
                Escape::Backslash => {
                    let byte = bytes[at];
                    at += 1;
                    self.escape = Escape::None;
                    match byte {
                        b'u' => {
                            self.escape = Escape::Unicode {
                                digits: 0,
                                value: 0,
                            }
                        }
                        other => self.unescaped.push(unescape(other)),
                    }
                }
                Escape::Unicode { digits, value } => {
                    let byte = bytes[at];
                    at += 1;
                    match char::from(byte).to_digit(16) {
                        Some(digit) if *digits < 3 => {
                            *value = *value * 16 + digit;
                            *digits += 1;
                        }
                        Some(digit) => {
                            let value = *value * 16 + digit;
                            // Base64 is ASCII: anything else makes the text invalid.
                            self.unescaped.push(
                                u8::try_from(value)
                                    .ok()
                                    .filter(u8::is_ascii)
                                    .unwrap_or(b'!'),
                            );
                            self.escape = Escape::None;
                        }
                        // Not an escape: the string is broken there (`!` is never
                        // base64), and the byte is read again as the string's, so a
                        // quote ends it where any JSON parser ends it.
                        None => {
                            self.unescaped.push(b'!');
                            self.escape = Escape::None;
                            at -= 1;
                        }
                    }
                }
            }
        }
        None
    }

    /// Plain text of the string, in order after what went through an escape.
    async fn text(&mut self, text: &[u8]) {
        if self.unescaped.is_empty() {
            self.feed(text).await;
        } else {
            self.unescaped.extend_from_slice(text);
            if self.unescaped.len() >= UNESCAPED_BATCH {
                self.flush().await;
            }
        }
    }

    /// Feeds the unescaped text held so far.
    async fn flush(&mut self) {
        if !self.unescaped.is_empty() {
            let unescaped = std::mem::take(&mut self.unescaped);
            self.feed(&unescaped).await;
            self.unescaped = unescaped;
            self.unescaped.clear();
        }
    }

    async fn feed(&mut self, text: &[u8]) {
        if let Ok(spool) = &mut self.spool
            && let Err(failure) = spool.feed(text).await
        {
            self.spool = Err(failure);
        }
    }

    async fn finish(mut self) -> Result<FileContent, SpoolFailure> {
        self.flush().await;
        if !matches!(self.escape, Escape::None) {
            return Err(SpoolFailure::InvalidBase64);
        }
        self.spool?.finish().await
    }
}

/// The character a one-letter JSON escape stands for; `!` (never base64) for what
/// is not one.
fn unescape(letter: u8) -> u8 {
    match letter {
        b'/' | b'\\' | b'"' => letter,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'f' => b'\x0c',
        _ => b'!',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `body` in chunks of `size` bytes, spooling into `folder`.
    async fn read(
        body: &[u8],
        size: usize,
        folder: &std::path::Path,
    ) -> (serde_json::Value, LargeStrings) {
        let folder = folder.to_owned();
        let mut json = JsonBody::new(None, 20, move || {
            folder.join(uuid::Uuid::now_v7().to_string())
        });
        for chunk in body.chunks(size) {
            json.feed(chunk)
                .await
                .expect("within the files a request may have");
        }
        let (text, large) = json.finish();
        let value = serde_json::from_slice(&text).expect("the text stays JSON");
        (value, large)
    }

    /// Only the large `base64` strings inside `variables` are spooled, escapes and
    /// all, whatever the chunks; the rest of the body is kept as it was, and the
    /// spooled files go when the request's strings do.
    #[tokio::test]
    async fn spools_the_large_base64_strings_of_the_variables_only() {
        // Past what stays in memory, so that it is spooled to a file.
        let file: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let encoded = base64_simd::STANDARD.encode_to_string(&file);
        // PHP escapes every `/`; a \u escape and a line break are legal JSON too.
        let escaped = encoded.replace('/', "\\/").replacen('A', "\\u0041", 3);
        let body = serde_json::json!({
            "query": "mutation { x }",
            "variables": {
                "base64": "top level: not a file field",
                "input": { "ownerType": "contract", "base64": "PLACE" },
                "small": [{ "base64": "aGVsbG8=" }],
            },
            "extensions": { "base64": encoded.clone() },
        })
        .to_string()
        .replace("PLACE", &escaped);
        for size in [3, 4096, 70_000, body.len()] {
            let folder = tempfile::tempdir().expect("temp dir");
            let (value, large) = read(body.as_bytes(), size, folder.path()).await;
            let placeholder = value["variables"]["input"]["base64"]
                .as_str()
                .unwrap_or_default();
            assert!(
                placeholder.starts_with("\u{0}attache-large-string-"),
                "{size}: {placeholder:.40}"
            );
            assert_eq!(value["variables"]["small"][0]["base64"], "aGVsbG8=");
            assert_eq!(value["variables"]["base64"], "top level: not a file field");
            assert_eq!(value["extensions"]["base64"], encoded.as_str());
            let spooled: Vec<_> = std::fs::read_dir(folder.path())
                .expect("spool folder")
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<Result<_, _>>()
                .expect("listing");
            assert_eq!(spooled.len(), 1, "chunks of {size}");
            let read = std::fs::read(&spooled[0]).unwrap_or_default();
            assert!(
                read == file,
                "chunks of {size}: {} of {} bytes",
                read.len(),
                file.len()
            );
            drop(large);
            assert!(
                !spooled[0].exists(),
                "the spooled file goes with the request"
            );
        }
    }

    /// A spooled string that is not base64, or a body cut in the middle of one,
    /// leaves no file behind.
    #[tokio::test]
    async fn a_broken_spooled_string_leaves_no_file() {
        /// Waits (the worker's writes run on the blocking pool) until `path`
        /// exists as `wanted` says; whether it came to.
        async fn until(path: &std::path::Path, wanted: bool) -> bool {
            for _ in 0..200 {
                if path.exists() == wanted {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            false
        }
        // Past what stays in memory: spooled to a file before the break.
        let text = "QUJD".repeat(600_000);
        let start = format!("{{\"variables\":{{\"i\":{{\"base64\":\"{text}");
        for rest in [format!("!{text}\"}}}}}}"), String::new()] {
            let folder = tempfile::tempdir().expect("temp dir");
            let spooled = folder.path().join("spooled");
            let path = spooled.clone();
            let mut json = JsonBody::new(None, 20, move || path.clone());
            json.feed(start.as_bytes()).await.expect("one file");
            assert!(until(&spooled, true).await, "the file spills to its spool");
            json.feed(rest.as_bytes()).await.expect("one file");
            drop(json);
            assert!(until(&spooled, false).await, "the spool file is removed");
        }
    }

    /// A file field whose key is written with escapes is the same field, spooled.
    #[tokio::test]
    async fn escaped_keys_name_the_same_fields() {
        let text = "QUJD".repeat(600_000);
        let body = format!(
            r#"{{"query":"m","variabl\u0065s":{{"i":{{"bas\u0065\u0036\u0034":"{text}"}}}}}}"#
        );
        let folder = tempfile::tempdir().expect("temp dir");
        let (value, large) = read(body.as_bytes(), 4096, folder.path()).await;
        let placeholder = value["variables"]["i"]["base64"]
            .as_str()
            .expect("the field, its key decoded");
        assert!(
            placeholder.len() < 100,
            "spooled, not kept: {} bytes",
            placeholder.len()
        );
        drop(large);
    }

    /// A `\u` escape cut short by a quote ends the string at that quote, as any JSON
    /// parser reads it: what follows is not swallowed into the file, so a body that is
    /// not JSON stays one that is not.
    #[tokio::test]
    async fn a_cut_unicode_escape_ends_the_string_at_its_quote() {
        let text = "QUJD".repeat(600_000);
        let body = format!(r#"{{"variables":{{"i":{{"base64":"{text}\u00"}}}}}}hidden"}}}}}}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
        for size in [3, 4096, body.len()] {
            let folder = tempfile::tempdir().expect("temp dir");
            let path = folder.path().join("spooled");
            let mut json = JsonBody::new(None, 20, move || path.clone());
            for chunk in body.as_bytes().chunks(size) {
                json.feed(chunk).await.expect("one file");
            }
            let (kept, _large) = json.finish();
            let kept = String::from_utf8_lossy(&kept);
            assert!(
                kept.ends_with(r#"}}}hidden"}}}"#),
                "in chunks of {size}: {kept}"
            );
        }
    }
}
