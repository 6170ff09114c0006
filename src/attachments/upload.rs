//! Parse, don't validate: client input becomes a [`ValidUpload`] here, in the order
//! of SPEC 4, or a clear error with its code. Nothing in this file writes anything.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest, Sha256};

use crate::collections::{Collection, Collections};
use crate::error::{AppError, AppResult};
use crate::ids::SafeId;
use crate::media::MediaType;

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
            AppError::bad_input(format!("unknown ownerType `{}`", printable(owner_type)))
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

    /// UNSUPPORTED_MEDIA_TYPE unless the type is known and the collection accepts it.
    pub fn accept(&self, media: Option<MediaType>) -> AppResult<MediaType> {
        media
            .filter(|media| self.collection.accept.contains(media))
            .ok_or_else(|| {
                AppError::UnsupportedMediaType(format!(
                    "the file is not a type that `{}` accepts",
                    self.owner_type
                ))
            })
    }
}

/// An `ownerId` that may reach a key: `[A-Za-z0-9_-]{1,64}`.
fn parse_owner_id(owner_id: &str) -> AppResult<SafeId> {
    SafeId::parse(owner_id).ok_or_else(|| {
        AppError::bad_input("ownerId must be 1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`")
    })
}

/// A file that passed every check and can be stored as is.
#[derive(Debug)]
pub struct ValidUpload {
    pub target: Target,
    pub filename: String,
    pub media: MediaType,
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// A file as a client sent it, already decoded, before the checks of SPEC 4.
pub struct Draft<'a> {
    pub filename: &'a str,
    pub declared_type: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub bytes: Vec<u8>,
}

impl ValidUpload {
    /// Size, type, declared type and checksum, in that order.
    pub fn check(target: Target, draft: Draft<'_>, max_upload_bytes: u64) -> AppResult<Self> {
        let bytes = draft.bytes;
        if bytes.is_empty() {
            return Err(AppError::bad_input("the file is empty"));
        }
        target.check_size(bytes.len() as u64, max_upload_bytes)?;
        let filename = sanitize_filename(draft.filename);
        let media = target.accept(MediaType::detect(&bytes, draft.declared_type, &filename))?;
        if let Some(declared) = draft.declared_type
            && media.contradicts(declared)
        {
            return Err(AppError::UnsupportedMediaType(format!(
                "the file's content is {}, not the declared {}",
                media.mime(),
                printable(declared)
            )));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        // Last, as SPEC 4 orders it; a malformed checksum cannot match either.
        if let Some(expected) = draft.sha256
            && parse_sha256(expected).ok().as_deref() != Some(sha256.as_str())
        {
            return Err(AppError::ChecksumMismatch(
                "the file's sha256 differs from the one given (64 hexadecimal characters)".into(),
            ));
        }
        Ok(Self {
            target,
            filename,
            media,
            sha256,
            bytes,
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

/// At most this many characters of client text are echoed in a message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

const CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireNone);
const STANDARD_DECODER: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
const URL_SAFE_DECODER: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);

/// Decodes base64 inside the string's own buffer, so an upload is never held twice.
/// Accepts the standard and URL-safe alphabets, optional padding, whitespace and a
/// `data:*;base64,` prefix.
pub fn decode_base64(text: String) -> AppResult<Vec<u8>> {
    let invalid = || AppError::bad_input("the file is not valid base64");
    let mut buf = text.into_bytes();
    if buf.starts_with(b"data:") {
        let comma = buf.iter().position(|&b| b == b',').ok_or_else(invalid)?;
        if !buf[..comma].ends_with(b";base64") {
            return Err(invalid());
        }
        buf.drain(..=comma);
    }
    // Scans first and compacts only when needed: most uploads have no whitespace.
    if buf.iter().any(u8::is_ascii_whitespace) {
        buf.retain(|b| !b.is_ascii_whitespace());
    }
    let decoder = if buf.iter().any(|&b| b == b'-' || b == b'_') {
        &URL_SAFE_DECODER
    } else {
        &STANDARD_DECODER
    };
    let unpadded = buf
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |last| last + 1);
    if buf.len() - unpadded > 2 {
        return Err(invalid());
    }
    // 4 input characters give 3 bytes, so the output never overtakes the input.
    const CHUNK: usize = 4 * 1024;
    let mut out = 0;
    let mut scratch = [0u8; CHUNK / 4 * 3];
    let mut read = 0;
    while read < unpadded {
        let end = (read + CHUNK).min(unpadded);
        let written = decoder
            .decode_slice(&buf[read..end], &mut scratch)
            .map_err(|_| invalid())?;
        buf[out..out + written].copy_from_slice(&scratch[..written]);
        out += written;
        read = end;
    }
    buf.truncate(out);
    // Gives back the quarter of the buffer that base64 needed and the bytes do not.
    buf.shrink_to_fit();
    Ok(buf)
}

/// Keeps the Unicode of a filename but drops any path, control and bidirectional
/// override characters, and anything beyond 255 bytes.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let mut name = String::new();
    for c in cleaned.chars() {
        if name.len() + c.len_utf8() > 255 {
            break;
        }
        name.push(c);
    }
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
                decode_base64(text.to_owned()).ok(),
                Some(plain.clone()),
                "{text}"
            );
        }
        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&large);
        assert_eq!(decode_base64(encoded).ok(), Some(large));
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
            assert!(decode_base64(text.to_owned()).is_err(), "{text}");
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
    }
}
