//! `Content-Disposition` values (RFC 6266) that keep a Unicode filename in
//! `filename*` (RFC 5987) and give old clients an ASCII fallback.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::media::MediaType;

/// RFC 5987 `attr-char`s stay as they are; everything else is percent-encoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The longest name a download is offered under: a stored name may take 255 bytes,
/// the most a file name may have on common filesystems, and a client saving under it
/// adds to it (Chromium a `.crdownload` while it downloads, others ` (1)`); past
/// 244 bytes Chromium cancelled the download and saved nothing.
pub const MAX_SAVED_NAME_BYTES: usize = 200;

/// The longest ending after a last `.` that [`fit_name`] keeps as an extension.
const MAX_EXTENSION_BYTES: usize = 16;

/// The name a stored file is saved under: its own when its extension belongs to the
/// detected `content_type`, else with that type's extension appended, so that
/// `notes.html` holding text/plain saves as `notes.html.txt` and no desktop or browser
/// opens it as HTML (a type attache does not know leaves the name as it is); cut to
/// [`MAX_SAVED_NAME_BYTES`], its extension kept.
pub fn download_filename<'a>(filename: &'a str, content_type: &str) -> Cow<'a, str> {
    let named = match MediaType::from_mime(content_type) {
        Some(kind) if !has_extension_of(filename, kind) => {
            Cow::Owned(format!("{filename}{}", kind.extension()))
        }
        _ => Cow::Borrowed(filename),
    };
    if named.len() <= MAX_SAVED_NAME_BYTES {
        return named;
    }
    Cow::Owned(fit_name(&named, MAX_SAVED_NAME_BYTES).into_owned())
}

fn has_extension_of(filename: &str, kind: MediaType) -> bool {
    let name = filename.as_bytes();
    kind.extensions().iter().any(|extension| {
        name.len() > extension.len()
            && name[name.len() - extension.len()..].eq_ignore_ascii_case(extension.as_bytes())
    })
}

/// `name` cut to at most `max` bytes on a character boundary, its extension (a last
/// `.` and at most 16 bytes after it) kept, so that a long name still opens with the
/// right program.
pub fn fit_name(name: &str, max: usize) -> Cow<'_, str> {
    if name.len() <= max {
        return Cow::Borrowed(name);
    }
    let extension = name
        .rfind('.')
        .map(|dot| &name[dot..])
        .filter(|extension| extension.len() <= MAX_EXTENSION_BYTES && extension.len() < max)
        .unwrap_or_default();
    let stem = &name[..name.len() - extension.len()];
    let mut cut = max - extension.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{extension}", &stem[..cut]))
}

/// `attachment` (or `inline`) with `filename` in both forms; give it the name of
/// [`download_filename`].
pub fn content_disposition(filename: &str, inline: bool) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    format!(
        "{kind}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(filename, ATTR_CHAR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_keeps_unicode_in_filename_star() {
        assert_eq!(
            content_disposition("Vertrag März \"1\".pdf", false),
            "attachment; filename=\"Vertrag M_rz _1_.pdf\"; filename*=UTF-8''Vertrag%20M%C3%A4rz%20%221%22.pdf"
        );
    }

    #[test]
    fn a_long_name_is_cut_before_its_extension() {
        let cjk = format!("{}.pdf", "契".repeat(90));
        let saved = download_filename(&cjk, "application/pdf");
        assert!(saved.len() <= MAX_SAVED_NAME_BYTES, "{saved}");
        assert!(saved.ends_with("契.pdf"), "{saved}");
        // Cut when stored (255 bytes), then the type's extension appended: still short.
        let umlauts = "ü".repeat(200);
        let stored = fit_name(&umlauts, 255);
        let saved = download_filename(&stored, "text/plain");
        assert!(saved.len() <= MAX_SAVED_NAME_BYTES && saved.ends_with("ü.txt"));
        assert_eq!(fit_name("short.pdf", 255), "short.pdf");
        let letters = "a".repeat(300);
        assert_eq!(fit_name(&letters, 255).len(), 255);
        let long_ending = format!("{}.{}", "a".repeat(300), "b".repeat(40));
        assert_eq!(fit_name(&long_ending, 255), "a".repeat(255));
    }

    #[test]
    fn the_saved_name_ends_with_an_extension_of_its_type() {
        let cases = [
            ("notes.html", "text/plain", "notes.html.txt"),
            ("notes.txt", "text/plain; charset=utf-8", "notes.txt"),
            ("NOTES.TXT", "text/plain", "NOTES.TXT"),
            ("report.pdf", "application/pdf", "report.pdf"),
            ("report.PDF", "application/pdf", "report.PDF"),
            ("report.pdf.exe", "application/pdf", "report.pdf.exe.pdf"),
            ("photo.JPEG", "image/jpeg", "photo.JPEG"),
            ("photo.jpg", "image/jpeg", "photo.jpg"),
            ("photo.png", "image/jpeg", "photo.png.jpg"),
            ("logo.svg", "image/png", "logo.svg.png"),
            ("README", "text/plain", "README.txt"),
            ("data.csv", "text/plain", "data.csv.txt"),
            ("data.csv", "text/csv", "data.csv"),
            (".pdf", "application/pdf", ".pdf.pdf"),
            ("März", "application/pdf", "März.pdf"),
            ("page.html", "text/html", "page.html"),
        ];
        for (stored, content_type, saved) in cases {
            assert_eq!(
                download_filename(stored, content_type),
                saved,
                "{stored} as {content_type}"
            );
        }
    }
}
