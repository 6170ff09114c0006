//! The file types attache accepts, detected from the bytes (magic numbers), never
//! trusted from the client's declaration.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    Pdf,
    Png,
    Jpeg,
    Gif,
    Webp,
    Docx,
    Xlsx,
    Odt,
    Ods,
    Txt,
    Csv,
}

impl MediaType {
    pub const ALL: [MediaType; 11] = [
        Self::Pdf,
        Self::Png,
        Self::Jpeg,
        Self::Gif,
        Self::Webp,
        Self::Docx,
        Self::Xlsx,
        Self::Odt,
        Self::Ods,
        Self::Txt,
        Self::Csv,
    ];

    pub fn mime(self) -> &'static str {
        match self {
            Self::Pdf => "application/pdf",
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
            Self::Docx => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            Self::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Self::Odt => "application/vnd.oasis.opendocument.text",
            Self::Ods => "application/vnd.oasis.opendocument.spreadsheet",
            Self::Txt => "text/plain",
            Self::Csv => "text/csv",
        }
    }

    /// The canonical extension, with its dot (SPEC 3).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Pdf => ".pdf",
            Self::Png => ".png",
            Self::Jpeg => ".jpg",
            Self::Gif => ".gif",
            Self::Webp => ".webp",
            Self::Docx => ".docx",
            Self::Xlsx => ".xlsx",
            Self::Odt => ".odt",
            Self::Ods => ".ods",
            Self::Txt => ".txt",
            Self::Csv => ".csv",
        }
    }

    /// Every extension of this type, with its dot, the canonical one first: a saved
    /// file with one of these opens as this type.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Self::Pdf => &[".pdf"],
            Self::Png => &[".png"],
            Self::Jpeg => &[".jpg", ".jpeg"],
            Self::Gif => &[".gif"],
            Self::Webp => &[".webp"],
            Self::Docx => &[".docx"],
            Self::Xlsx => &[".xlsx"],
            Self::Odt => &[".odt"],
            Self::Ods => &[".ods"],
            Self::Txt => &[".txt"],
            Self::Csv => &[".csv"],
        }
    }

    /// Types a browser may show inline without risk (`?inline=1`).
    pub fn is_inline_safe(self) -> bool {
        matches!(
            self,
            Self::Pdf | Self::Png | Self::Jpeg | Self::Gif | Self::Webp
        )
    }

    fn is_text(self) -> bool {
        matches!(self, Self::Txt | Self::Csv)
    }

    /// The type a stored `Content-Type` names.
    pub fn from_mime(mime: &str) -> Option<Self> {
        let essence = mime
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let canonical = match essence.as_str() {
            "image/jpg" | "image/pjpeg" => "image/jpeg",
            "application/x-pdf" => "application/pdf",
            // What systems declare for a .csv (Excel's type: see [`EXCEL`]).
            "application/csv"
            | "application/x-csv"
            | "text/x-csv"
            | "text/comma-separated-values"
            | "text/x-comma-separated-values" => "text/csv",
            other => other,
        };
        Self::ALL.into_iter().find(|kind| kind.mime() == canonical)
    }

    /// The type a client declares before sending the bytes (direct uploads), with the
    /// csv rule of [`MediaType::detect`]. A `contentType` that declares nothing (empty,
    /// `application/octet-stream`: a browser's `File.type` for an extension it does
    /// not map) leaves it to the filename's extension, as the other upload paths
    /// accept such a declaration; the bytes are checked against it at completion.
    pub fn declared(content_type: &str, filename: &str) -> Option<Self> {
        if declares_nothing(content_type) {
            let name = filename.to_ascii_lowercase();
            return Self::ALL.iter().copied().find(|media| {
                media
                    .extensions()
                    .iter()
                    .any(|extension| name.ends_with(extension))
            });
        }
        let csv_name = filename.to_ascii_lowercase().ends_with(".csv");
        if is_excel(content_type) && csv_name {
            return Some(Self::Csv);
        }
        match Self::from_mime(content_type) {
            Some(Self::Txt) if csv_name => Some(Self::Csv),
            Some(kind) => Some(kind),
            None if declares_text(content_type) => Some(Self::text_type(None, filename)),
            None => None,
        }
    }

    /// Detects the type from the bytes. Text has no magic number: valid UTF-8 without
    /// NUL is text, and csv when the declared type or the filename says so.
    pub fn detect(bytes: &[u8], declared: Option<&str>, filename: &str) -> Option<Self> {
        match Signature::of(bytes) {
            Signature::Binary(kind) => Some(kind),
            Signature::Foreign => None,
            Signature::None => {
                let text = std::str::from_utf8(bytes).is_ok_and(|text| !text.contains('\0'));
                text.then(|| Self::text_type(declared, filename))
            }
        }
    }

    /// Which text type: csv when the declared type or the filename says so.
    fn text_type(declared: Option<&str>, filename: &str) -> Self {
        let says_csv = declared.and_then(Self::from_mime) == Some(Self::Csv)
            || filename.to_ascii_lowercase().ends_with(".csv");
        if says_csv { Self::Csv } else { Self::Txt }
    }

    /// Whether `head` carries this binary type's whole magic number. `infer` matches
    /// some on a few letters (`GIF`, `WEBP` at byte 8, `%PDF` anywhere in the first
    /// KiB), which text may hold: a CSV whose first cell is "GIFT" is no image.
    fn whole_signature(self, head: &[u8]) -> bool {
        match self {
            Self::Gif => head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a"),
            Self::Webp => head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP"),
            // `%PDF-` and its version, where readers look for it: in the first KiB.
            Self::Pdf => head[..head.len().min(1024)]
                .windows(6)
                .any(|window| window.starts_with(b"%PDF-") && window[5].is_ascii_digit()),
            _ => true,
        }
    }

    /// Whether a client's declared `contentType` contradicts the detected type.
    /// `application/octet-stream` declares nothing; the two text types are compatible,
    /// and compatible with the text types a browser declares by extension.
    pub fn contradicts(self, declared: &str) -> bool {
        if declares_nothing(declared) {
            return false;
        }
        let essence = declared.split(';').next().unwrap_or_default().trim();
        if is_excel(essence) {
            return self != Self::Csv;
        }
        match Self::from_mime(essence) {
            Some(kind) => kind != self && !(kind.is_text() && self.is_text()),
            None => !(self.is_text() && declares_text(essence)),
        }
    }
}

/// Text types a browser declares for a file by its extension (`File.type`, a file
/// part's `Content-Type`): `.md` text/markdown, `.json` application/json, `.ics`
/// text/calendar, `.sql` application/sql... Such a file is stored as text when its
/// bytes are (the stored type always comes from them); markup is not among them.
fn declares_text(declared: &str) -> bool {
    let essence = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("text", subtype)) => !matches!(subtype, "html" | "xml"),
        Some(("application", subtype)) => {
            subtype.ends_with("+json")
                || matches!(
                    subtype,
                    "json"
                        | "x-ndjson"
                        | "yaml"
                        | "x-yaml"
                        | "toml"
                        | "sql"
                        | "x-sql"
                        | "javascript"
                        | "x-javascript"
                        | "x-subrip"
                )
        }
        _ => false,
    }
}

/// Whether a declared `contentType` says nothing of the file: empty, or
/// `application/octet-stream` (any bytes at all).
fn declares_nothing(declared: &str) -> bool {
    let essence = declared.split(';').next().unwrap_or_default().trim();
    essence.is_empty() || essence.eq_ignore_ascii_case("application/octet-stream")
}

/// Excel's type, which Chrome and Edge on Windows with Office installed also declare
/// for a `.csv` (in a file part and in `File.type`): it declares a CSV when the
/// bytes are text and the name says `.csv`, never an `.xls`.
const EXCEL: &str = "application/vnd.ms-excel";

fn is_excel(declared: &str) -> bool {
    let essence = declared.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(EXCEL)
}

/// Whether text opens as markup, as an element, a doctype, a comment or a processing
/// instruction does: `<` and a letter, `!` or `?`, after any whitespace. `infer`
/// knows a list of HTML tags and `<?xml`: `<svg onload=...>`, `<img onerror=...>`
/// and prefixed elements were stored as text.
fn opens_as_markup(head: &[u8]) -> bool {
    let start = head.iter().position(|byte| !byte.is_ascii_whitespace());
    match start.map(|start| &head[start..]) {
        Some([b'<', next, ..]) => next.is_ascii_alphabetic() || matches!(next, b'!' | b'?'),
        _ => false,
    }
}

/// Foreign types whose signature is a few letters that text may begin with ("BM",
/// "MZ", "ID3", "FWS"): such a file is text when its bytes are (a real one is not).
const WEAK_FOREIGN: [&str; 4] = ["bmp", "exe", "mp3", "swf"];

/// What a file's first bytes say before its text is looked at.
enum Signature {
    /// A binary type attache takes, its whole magic number there.
    Binary(MediaType),
    /// A type attache does not take: an archive, RTF, markup or a script (`<html`,
    /// `<?xml`, `#!`), text or not.
    Foreign,
    /// No whole signature of a type attache takes: the file is text or nothing.
    None,
}

impl Signature {
    fn of(head: &[u8]) -> Self {
        // `infer`'s markup matchers skip whitespace, not a UTF-8 byte-order mark:
        // markup is looked for behind one too (one mark; more are text).
        if let Some(behind) = head.strip_prefix(b"\xEF\xBB\xBF")
            && matches!(Self::of_bytes(behind), Self::Foreign)
        {
            return Self::Foreign;
        }
        Self::of_bytes(head)
    }

    fn of_bytes(head: &[u8]) -> Self {
        if opens_as_markup(head) {
            return Self::Foreign;
        }
        let Some(found) = infer::get(head) else {
            return Self::None;
        };
        match MediaType::from_mime(found.mime_type()) {
            Some(kind) if !kind.is_text() && kind.whole_signature(head) => Self::Binary(kind),
            Some(_) => Self::None,
            None if found.matcher_type() != infer::MatcherType::Text
                && WEAK_FOREIGN.contains(&found.extension()) =>
            {
                Self::None
            }
            None => Self::Foreign,
        }
    }
}

/// How many first bytes decide a binary type: the signatures `infer` knows all lie
/// well within them (the parts of an Office file's zip included).
pub const HEAD_BYTES: usize = 64 * 1024;

/// [`MediaType::detect`] over a file that arrives in chunks, holding only its first
/// [`HEAD_BYTES`]: a binary type is known from them; a text type holds only if every
/// later byte is UTF-8 without NUL, which [`Sniffer::finish`] says at the end.
#[derive(Default)]
pub struct Sniffer {
    head: Vec<u8>,
    /// A UTF-8 sequence cut by a chunk boundary, completed by the next chunk.
    pending: Vec<u8>,
    text: bool,
    started: bool,
}

impl Sniffer {
    pub fn new() -> Self {
        Self {
            text: true,
            ..Self::default()
        }
    }

    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.started = true;
        let room = HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        if !self.text {
            return;
        }
        let mut rest = chunk;
        if !self.pending.is_empty() {
            // Complete the sequence cut at the last boundary from this chunk's first
            // bytes (at most three), rather than copying the whole chunk behind it.
            let length = match self.pending[0] {
                0xf0.. => 4,
                0xe0.. => 3,
                _ => 2,
            };
            let take = (length - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < length {
                return;
            }
            self.text = std::str::from_utf8(&std::mem::take(&mut self.pending)).is_ok();
            if !self.text {
                return;
            }
        }
        match std::str::from_utf8(rest) {
            Ok(text) => self.text = !text.contains('\0'),
            // Cut at the end: the rest of the sequence comes with the next chunk.
            Err(err) if err.error_len().is_none() => {
                let valid = &rest[..err.valid_up_to()];
                self.text = !valid.contains(&0);
                self.pending = rest[err.valid_up_to()..].to_vec();
            }
            Err(_) => self.text = false,
        }
    }

    /// The type as far as the bytes seen so far tell: final for a binary type, for a
    /// text type only once [`Sniffer::finish`] agrees.
    pub fn guess(&self, declared: Option<&str>, filename: &str) -> Option<MediaType> {
        match Signature::of(&self.head) {
            Signature::Binary(kind) => Some(kind),
            Signature::Foreign => None,
            Signature::None => {
                (self.text && self.started).then(|| MediaType::text_type(declared, filename))
            }
        }
    }

    /// The type of the whole file, once every chunk was fed.
    pub fn finish(&self, declared: Option<&str>, filename: &str) -> Option<MediaType> {
        match self.guess(declared, filename) {
            Some(kind) if kind.is_text() && !self.pending.is_empty() => None,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MediaType, Sniffer};

    /// The sniffer fed in chunks of every size agrees with `detect` on the whole.
    #[test]
    fn a_sniffer_fed_in_chunks_agrees_with_detect() {
        let mut long_pdf = b"%PDF-1.7\n".to_vec();
        long_pdf.resize(200_000, b'x');
        let samples: [(&[u8], &str); 7] = [
            ("gr\u{fc}\u{df}e, \u{1F600} und mehr".as_bytes(), "a.txt"),
            (b"a,b\n1,2\n", "x.csv"),
            (b"text\0with a nul", "a.txt"),
            (b"\xff\xfe not utf-8", "a.txt"),
            (b"ends cut \xe2\x82", "a.txt"),
            (b"a cut sequence \xe2\x82( broken", "a.txt"),
            (&long_pdf, "a.pdf"),
        ];
        for (bytes, name) in samples {
            let whole = MediaType::detect(bytes, None, name);
            for size in [1, 2, 3, 7, 4096, bytes.len()] {
                let mut sniffer = Sniffer::new();
                for chunk in bytes.chunks(size) {
                    sniffer.update(chunk);
                }
                assert_eq!(
                    sniffer.finish(None, name),
                    whole,
                    "{name} in chunks of {size}"
                );
            }
        }
        assert_eq!(Sniffer::new().finish(None, "a.txt"), None, "nothing fed");
    }

    #[test]
    fn detects_from_bytes_not_names() {
        assert_eq!(
            MediaType::detect(b"%PDF-1.4\n%...", None, "x.png"),
            Some(MediaType::Pdf)
        );
        assert_eq!(
            MediaType::detect(b"a,b\n1,2\n", None, "x.csv"),
            Some(MediaType::Csv)
        );
        assert_eq!(
            MediaType::detect(b"a,b\n", Some("text/csv"), "x"),
            Some(MediaType::Csv)
        );
        assert_eq!(
            MediaType::detect(b"hello", None, "x.pdf"),
            Some(MediaType::Txt)
        );
        assert_eq!(
            MediaType::detect(&[0xff, 0xfe, 0x00, 0x01], None, "x.txt"),
            None
        );
        assert_eq!(
            MediaType::detect(b"MZ\x90\x00\x03\x00\x00\x00", None, "x.txt"),
            None
        );
    }

    /// A weak signature at the start of text leaves it text; the whole one decides;
    /// markup stays refused.
    #[test]
    fn text_is_told_from_weak_signatures() {
        let text = [
            (&b"GIFT,amount\n"[..], MediaType::Csv),
            (b"BMW,320i\n", MediaType::Csv),
            (b"12345678WEBP and more", MediaType::Txt),
            (b"MZ is a prefix\n", MediaType::Txt),
            (b"see %PDF in the manual", MediaType::Txt),
            (b"\xEF\xBB\xBFname,amount\n", MediaType::Csv),
        ];
        // Byte-order marks one after another are text, looked at once, not once each
        // (a recursion per mark overflowed the stack on a file of a million of them).
        let marks = b"\xEF\xBB\xBF".repeat(700_000);
        assert_eq!(
            MediaType::detect(&marks, None, "a.txt"),
            Some(MediaType::Txt)
        );
        for (bytes, kind) in text {
            let name = if kind == MediaType::Csv {
                "a.csv"
            } else {
                "a.txt"
            };
            assert_eq!(
                MediaType::detect(bytes, None, name),
                Some(kind),
                "{bytes:?}"
            );
        }
        assert_eq!(
            MediaType::detect(b"GIF89a\x01\x00\x01\x00\x80\x00\x00", None, "a.txt"),
            Some(MediaType::Gif)
        );
        assert_eq!(
            MediaType::detect(b"junk\n%PDF-1.7\n", None, "a.txt"),
            Some(MediaType::Pdf),
            "a PDF's header may follow a few bytes"
        );
        let foreign = [
            &b"<html ><body>"[..],
            b"\xEF\xBB\xBF<html><body>",
            b"\xEF\xBB\xBF\n  <!DOCTYPE html>",
            b"<?xml version=\"1.0\"?>",
            b"#!/bin/sh\n",
            b"{\\rtf1\\ansi hello}",
            // Markup `infer` has no matcher for.
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
            b"  <!DOCTYPE svg><svg/>",
            b"<img src=x onerror=alert(1)>",
            b"<x:script xmlns:x=\"http://www.w3.org/1999/xhtml\">alert(1)</x:script>",
            b"\xEF\xBB\xBF<svg/>",
        ];
        for bytes in foreign {
            assert_eq!(MediaType::detect(bytes, None, "a.txt"), None, "{bytes:?}");
        }
        for text in [
            &b"<3 from Lisbon"[..],
            b"a < b and c > d",
            b"notes\n<b>x</b>",
        ] {
            assert_eq!(
                MediaType::detect(text, None, "a.txt"),
                Some(MediaType::Txt),
                "{text:?}"
            );
        }
        for declared in ["text/x-csv", "application/csv"] {
            assert_eq!(MediaType::from_mime(declared), Some(MediaType::Csv));
            assert!(!MediaType::Csv.contradicts(declared), "{declared}");
        }
        // Excel's type declares a CSV by a CSV's name only, never an Excel file.
        let excel = "application/vnd.ms-excel";
        assert!(!MediaType::Csv.contradicts(excel));
        assert!(MediaType::Xlsx.contradicts(excel));
        assert_eq!(MediaType::declared(excel, "data.csv"), Some(MediaType::Csv));
        assert_eq!(MediaType::declared(excel, "data.xls"), None);
    }

    #[test]
    fn the_canonical_extension_comes_first() {
        for kind in MediaType::ALL {
            assert_eq!(kind.extensions().first(), Some(&kind.extension()));
        }
    }

    #[test]
    fn declarations_contradict_only_when_they_name_another_type() {
        assert!(!MediaType::Pdf.contradicts("application/pdf"));
        assert!(!MediaType::Jpeg.contradicts("image/jpg"));
        assert!(!MediaType::Csv.contradicts("text/plain; charset=utf-8"));
        assert!(!MediaType::Pdf.contradicts("application/octet-stream"));
        assert!(MediaType::Txt.contradicts("application/pdf"));
        assert!(MediaType::Png.contradicts("image/svg+xml"));
    }

    /// What Chromium declares for `.md`, `.json`, `.tsv`, `.ics`, `.yaml`, `.sql` and
    /// `.py` files holds text: multipart refused them, base64 stored them.
    #[test]
    fn text_a_browser_names_by_extension_is_text() {
        for declared in [
            "text/markdown",
            "application/json",
            "text/tab-separated-values",
            "text/calendar",
            "application/x-yaml",
            "application/sql",
            "text/x-python",
            "application/ld+json; charset=utf-8",
        ] {
            assert!(!MediaType::Txt.contradicts(declared), "{declared}");
            assert_eq!(
                MediaType::declared(declared, "notes.md"),
                Some(MediaType::Txt),
                "{declared}"
            );
        }
        for markup_or_binary in ["text/html", "text/xml", "image/svg+xml", "video/mp2t"] {
            assert!(
                MediaType::Txt.contradicts(markup_or_binary),
                "{markup_or_binary}"
            );
            assert_eq!(MediaType::declared(markup_or_binary, "a.ts"), None);
        }
        assert!(MediaType::Pdf.contradicts("text/markdown"));
        assert_eq!(
            MediaType::declared("application/json", "rows.csv"),
            Some(MediaType::Csv)
        );
    }
}
