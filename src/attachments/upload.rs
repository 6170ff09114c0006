//! Parse, don't validate: client input becomes a [`ValidUpload`] here, in the order
//! of SPEC 4, or a clear error with its code. Nothing in this file writes anything.

use base64_simd::AsOut;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::spool::FileContent;
use crate::collections::{Collection, Collections};
use crate::error::{AppError, AppResult, printable};
use crate::ids::SafeId;
use crate::media::{MediaType, Sniffer};
use crate::storage::FILE_ALIGNMENT;

/// Where an upload goes: a known collection and, when its layout needs one, a record.
#[derive(Clone, Debug)]
pub struct Target {
    pub owner_type: String,
    pub owner_id: Option<SafeId>,
    pub collection: Collection,
}

impl Target {
    /// Checks `ownerType` against the collections and `ownerId` against the id rules;
    /// a layout with a folder per owner needs the `ownerId`.
    pub fn resolve(
        collections: &Collections,
        owner_type: &str,
        owner_id: Option<&str>,
    ) -> AppResult<Self> {
        let target = Self::filter(collections, owner_type, owner_id)?;
        if target.collection.key.needs_owner() && target.owner_id.is_none() {
            return Err(AppError::bad_input(format!(
                "ownerType `{owner_type}` needs an ownerId"
            )));
        }
        Ok(target)
    }

    /// Like [`Target::resolve`], with `ownerId` optional: what a listing selects.
    pub fn filter(
        collections: &Collections,
        owner_type: &str,
        owner_id: Option<&str>,
    ) -> AppResult<Self> {
        let collection = collections.get(owner_type).ok_or_else(|| {
            AppError::bad_input(format!(
                "unknown ownerType `{}`: expected one of {}",
                printable(owner_type),
                collections.owner_types().join(", ")
            ))
        })?;
        let owner_id = owner_id.map(parse_owner_id).transpose()?;
        Ok(Self {
            owner_type: owner_type.to_owned(),
            owner_id,
            collection: collection.clone(),
        })
    }

    /// PAYLOAD_TOO_LARGE above the collection's limit or `MAX_UPLOAD_BYTES`.
    pub fn check_size(&self, size: u64, max_upload_bytes: u64) -> AppResult<()> {
        let limit = self.collection.max_bytes.min(max_upload_bytes);
        if size > limit {
            return Err(AppError::PayloadTooLarge(format!(
                "the file has {size} bytes; `{}` accepts at most {limit}",
                self.owner_type
            )));
        }
        Ok(())
    }

    /// UNSUPPORTED_MEDIA_TYPE unless the type is known and the collection accepts
    /// it, saying what the file was found to be and what would be accepted.
    pub fn accept(&self, media: Option<MediaType>) -> AppResult<MediaType> {
        match media {
            Some(media) if self.collection.accept.contains(&media) => Ok(media),
            found => Err(AppError::UnsupportedMediaType(format!(
                "the file is not a type that `{}` accepts ({}; it accepts {})",
                self.owner_type,
                found.map_or("its content is of no type attache knows".into(), |media| {
                    format!("its content is {}", media.mime())
                }),
                self.accepted()
            ))),
        }
    }

    /// [`Target::accept`] for a type declared before any byte exists (a direct
    /// upload): a declaration that names no type attache knows is refused as such,
    /// not as content.
    pub fn accept_declared(&self, media: Option<MediaType>) -> AppResult<MediaType> {
        match media {
            Some(media) => self.accept(Some(media)),
            None => Err(AppError::UnsupportedMediaType(format!(
                "neither `contentType` nor the filename's extension names a type attache \
                 knows: declare the file's type, one that `{}` accepts ({})",
                self.owner_type,
                self.accepted()
            ))),
        }
    }

    /// The types the collection accepts, for a refusal.
    fn accepted(&self) -> String {
        let accepted = self.collection.accept.iter().map(|media| media.mime());
        accepted.collect::<Vec<_>>().join(", ")
    }
}

/// An `ownerId` that may reach a key: `[A-Za-z0-9_-]{1,64}`.
fn parse_owner_id(owner_id: &str) -> AppResult<SafeId> {
    SafeId::parse(owner_id).ok_or_else(|| {
        AppError::bad_input("ownerId must be 1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`")
    })
}

/// A file that passed every check and can be stored as is.
pub struct ValidUpload {
    pub target: Target,
    pub filename: String,
    pub media: MediaType,
    /// `None` for a large file in memory sent without a checksum: none can fail, so
    /// it is hashed while storage writes it ([`hash_while_written`]).
    pub sha256: Option<String>,
    pub content: FileContent,
}

/// From this size a file sent without a checksum is hashed while it is written:
/// the write mostly waits (for the disk, which takes such files without the page
/// cache, or for S3), and SHA-256 costs 0.65 ms per MiB that need not wait for it
/// (10 MiB from one client: 300 instead of 220 uploads in 8 s; 1 MiB, alternated:
/// see docs/performance.md). Smaller files are copied into the page cache, which
/// costs CPU that hashing would compete with.
const HASH_WHILE_WRITTEN_FROM: usize = crate::storage::DIRECT_WRITE_FROM;

/// Whether a file of `size` bytes, with or without a checksum to verify, is hashed
/// while it is written rather than before.
fn hash_while_written(expected: Option<&str>, size: usize) -> bool {
    expected.is_none() && size >= HASH_WHILE_WRITTEN_FROM
}

/// The SHA-256 of `bytes`, as attache records it (lowercase hex).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a client says of a file besides its bytes, before the checks of SPEC 4.
pub struct Draft<'a> {
    pub owner_type: &'a str,
    pub owner_id: Option<&'a str>,
    pub filename: &'a str,
    pub declared_type: Option<&'a str>,
    pub sha256: Option<&'a str>,
}

impl ValidUpload {
    /// SPEC 4 in order for an upload whose bytes come whole (base64, batch): the
    /// owner, then the bytes (decoded or read only once the owner is known to be
    /// valid), then [`ValidUpload::check`]. Multipart files and direct uploads are
    /// checked as they stream, by the same rules ([`StreamCheck`]).
    pub async fn parse(
        collections: &Collections,
        draft: Draft<'_>,
        content: impl Future<Output = AppResult<FileContent>>,
        max_upload_bytes: u64,
    ) -> AppResult<Self> {
        let target = Target::resolve(collections, draft.owner_type, draft.owner_id)?;
        Self::check(target, &draft, content.await?, max_upload_bytes)
    }

    /// Size, type, declared type and checksum, in that order.
    fn check(
        target: Target,
        draft: &Draft<'_>,
        content: FileContent,
        max_upload_bytes: u64,
    ) -> AppResult<Self> {
        let size = content.size();
        if size == 0 {
            return Err(AppError::bad_input("the file is empty"));
        }
        target.check_size(size, max_upload_bytes)?;
        let filename = sanitize_filename(draft.filename);
        let detected = match &content {
            FileContent::Memory(bytes) => MediaType::detect(bytes, draft.declared_type, &filename),
            FileContent::Spooled(spooled) => spooled.media(draft.declared_type, &filename),
        };
        let media = check_type(&target, draft, detected)?;
        let sha256 = match &content {
            FileContent::Spooled(spooled) => Some(spooled.sha256().to_owned()),
            FileContent::Memory(bytes) if hash_while_written(draft.sha256, bytes.len()) => None,
            FileContent::Memory(bytes) => Some(sha256_hex(bytes)),
        };
        if let Some(sha256) = &sha256 {
            check_sha256(draft.sha256, sha256)?;
        }
        Ok(Self {
            target,
            filename,
            media,
            sha256,
            content,
        })
    }
}

/// The detected type, accepted by the collection and not contradicting the declared one.
fn check_type(
    target: &Target,
    draft: &Draft<'_>,
    detected: Option<MediaType>,
) -> AppResult<MediaType> {
    let media = target.accept(detected)?;
    if let Some(declared) = draft.declared_type
        && media.contradicts(declared)
    {
        return Err(AppError::UnsupportedMediaType(format!(
            "the file's content is {}, not the declared {}",
            media.mime(),
            printable(declared)
        )));
    }
    Ok(media)
}

/// Last, as SPEC 4 orders it; a malformed checksum cannot match either.
fn check_sha256(expected: Option<&str>, sha256: &str) -> AppResult<()> {
    if let Some(expected) = expected
        && parse_sha256(expected).ok().as_deref() != Some(sha256)
    {
        return Err(AppError::ChecksumMismatch(
            "the file's sha256 differs from the one given (64 hexadecimal characters)".into(),
        ));
    }
    Ok(())
}

/// A file checked while it streams, never held whole: the owner and size first, the
/// type from its first bytes (so it can be stored under the key its type names),
/// then, once every byte went by, a text type's remaining bytes and the checksum.
/// SPEC 4's order and errors, as [`ValidUpload::parse`] gives them.
pub struct StreamCheck {
    target: Target,
    declared_type: Option<String>,
    sha256: Option<String>,
    filename: String,
    media: MediaType,
    limit: u64,
    sniffer: Sniffer,
    hasher: Sha256,
}

/// What a [`StreamCheck`] found once the whole file went by.
pub struct Streamed {
    pub target: Target,
    pub filename: String,
    pub media: MediaType,
    pub sha256: String,
}

impl StreamCheck {
    /// The checks that need no more than the file's `size` (when it is announced)
    /// and its first bytes, `head` (up to [`crate::media::HEAD_BYTES`], the whole
    /// file when shorter); an unannounced size is held to [`StreamCheck::limit`]
    /// as the file streams.
    pub fn start(
        collections: &Collections,
        draft: Draft<'_>,
        size: Option<u64>,
        head: &[u8],
        max_upload_bytes: u64,
    ) -> AppResult<Self> {
        let target = Target::resolve(collections, draft.owner_type, draft.owner_id)?;
        if size == Some(0) || head.is_empty() {
            return Err(AppError::bad_input("the file is empty"));
        }
        if let Some(size) = size {
            target.check_size(size, max_upload_bytes)?;
        }
        let limit = target.collection.max_bytes.min(max_upload_bytes);
        let filename = sanitize_filename(draft.filename);
        let mut first = Sniffer::new();
        first.update(head);
        let media = check_type(&target, &draft, first.guess(draft.declared_type, &filename))?;
        Ok(Self {
            target,
            declared_type: draft.declared_type.map(str::to_owned),
            sha256: draft.sha256.map(str::to_owned),
            filename,
            media,
            limit,
            sniffer: Sniffer::new(),
            hasher: Sha256::new(),
        })
    }

    /// The most bytes the file may have.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// PAYLOAD_TOO_LARGE for a file that passed [`StreamCheck::limit`] as it streamed.
    pub fn too_large(&self) -> AppError {
        AppError::PayloadTooLarge(format!(
            "the file has more than {} bytes, all that `{}` accepts",
            self.limit, self.target.owner_type
        ))
    }

    /// The type the first bytes name: the key the file is stored under.
    pub fn media(&self) -> MediaType {
        self.media
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Every chunk of the file, in order, the first bytes included.
    pub fn update(&mut self, chunk: &[u8]) {
        self.sniffer.update(chunk);
        self.hasher.update(chunk);
    }

    /// The checks that needed every byte: a text type's, then the checksum.
    pub fn finish(self) -> AppResult<Streamed> {
        let whole = self
            .sniffer
            .finish(self.declared_type.as_deref(), &self.filename);
        if whole != Some(self.media) {
            return Err(AppError::UnsupportedMediaType(format!(
                "the file is not a type that `{}` accepts: it is not {} throughout",
                self.target.owner_type,
                self.media.mime()
            )));
        }
        let sha256 = hex::encode(self.hasher.finalize());
        check_sha256(self.sha256.as_deref(), &sha256)?;
        Ok(Streamed {
            target: self.target,
            filename: self.filename,
            media: self.media,
            sha256,
        })
    }
}

pub fn parse_sha256(value: &str) -> AppResult<String> {
    let value = value.trim().to_ascii_lowercase();
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value)
    } else {
        Err(AppError::bad_input(
            "sha256 must be 64 hexadecimal characters",
        ))
    }
}

/// Decodes a base64 file with SIMD into a buffer of its own that starts at
/// [`FILE_ALIGNMENT`]. Accepts the standard and URL-safe alphabets, optional padding,
/// whitespace and a `data:*;base64,` prefix. The text is read in place: only a text
/// with whitespace is copied once, without it.
pub fn decode_base64(text: &str) -> AppResult<Bytes> {
    let invalid = super::spool::invalid_base64;
    let mut encoded = text.as_bytes();
    if encoded.starts_with(b"data:") {
        let comma = memchr::memchr(b',', encoded).ok_or_else(invalid)?;
        if !encoded[..comma].ends_with(b";base64") {
            return Err(invalid());
        }
        encoded = &encoded[comma + 1..];
    }
    // SIMD scans: most uploads have no whitespace and use the standard alphabet.
    let compacted: Vec<u8>;
    if memchr::memchr3(b' ', b'\n', b'\r', encoded).is_some()
        || memchr::memchr2(b'\t', b'\x0c', encoded).is_some()
    {
        compacted = encoded
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        encoded = &compacted;
    }
    let unpadded = encoded
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |last| last + 1);
    if encoded.len() - unpadded > 2 {
        return Err(invalid());
    }
    let encoded = &encoded[..unpadded];
    let alphabet = match memchr::memchr2(b'-', b'_', encoded) {
        Some(_) => &base64_simd::URL_SAFE_NO_PAD,
        None => &base64_simd::STANDARD_NO_PAD,
    };
    let size = alphabet.decoded_length(encoded).map_err(|_| invalid())?;
    let mut buffer: Vec<u8> = Vec::with_capacity(size + FILE_ALIGNMENT);
    let start = buffer.as_ptr().align_offset(FILE_ALIGNMENT);
    buffer.resize(start + size, 0);
    alphabet
        .decode(encoded, buffer[start..].as_out())
        .map_err(|_| invalid())?;
    Ok(Bytes::from(buffer).slice(start..))
}

/// The longest filename kept, as most filesystems allow.
const MAX_FILENAME_BYTES: usize = 255;

/// Keeps the Unicode of a filename but drops any path, control and bidirectional
/// override characters; past 255 bytes its stem is cut and its extension kept.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let name = crate::disposition::fit_name(&cleaned, MAX_FILENAME_BYTES).into_owned();
    if matches!(name.trim(), "" | "." | "..") {
        "unnamed".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_tolerated_form_in_place() {
        let plain = b"hello world?>".to_vec();
        for text in [
            "aGVsbG8gd29ybGQ/Pg==",
            "aGVsbG8gd29ybGQ/Pg",
            "aGVsbG8gd29ybGQ_Pg",
            " aGVs\nbG8g d29y\r\nbGQ/Pg== ",
            "data:text/plain;base64,aGVsbG8gd29ybGQ/Pg==",
        ] {
            assert_eq!(
                decode_base64(text).ok().as_deref(),
                Some(plain.as_slice()),
                "{text}"
            );
        }
        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let encoded = base64_simd::STANDARD.encode_to_string(&large);
        let decoded = decode_base64(&encoded).ok();
        assert_eq!(decoded.as_deref(), Some(large.as_slice()));
        assert!(decoded.is_some_and(|bytes| bytes.as_ptr().align_offset(FILE_ALIGNMENT) == 0));
    }

    #[test]
    fn refuses_what_is_not_base64() {
        for text in [
            "not base64 at all!",
            "aGVsbG8===",
            "a",
            "aGV=sbG8",
            "data:text/plain,aGVsbG8",
            "aGVs+G8_Pg",
        ] {
            assert!(decode_base64(text).is_err(), "{text}");
        }
    }

    #[test]
    fn sanitizes_hostile_filenames() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(
            sanitize_filename("C:\\Users\\x\\Vertrag März.pdf"),
            "Vertrag März.pdf"
        );
        assert_eq!(sanitize_filename("in\u{202e}fdp.exe\u{0}\n"), "infdp.exe");
        assert_eq!(sanitize_filename(".."), "unnamed");
        assert_eq!(sanitize_filename(".bashrc"), ".bashrc");
        let long = "ü".repeat(200);
        let cut = sanitize_filename(&long);
        assert!(cut.len() <= 255 && cut.chars().all(|c| c == 'ü'));
        let cut = sanitize_filename(&format!("{}.pdf", "契".repeat(90)));
        assert!(cut.len() <= 255 && cut.ends_with("契.pdf"), "{cut}");
    }
}
