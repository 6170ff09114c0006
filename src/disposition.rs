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

/// The name a stored file is saved under: its own when its extension belongs to the
/// detected `content_type`, else with that type's extension appended, so that
/// `notes.html` holding text/plain saves as `notes.html.txt` and no desktop or browser
/// opens it as HTML. A type attache does not know leaves the name as it is.
pub fn download_filename<'a>(filename: &'a str, content_type: &str) -> Cow<'a, str> {
    let Some(kind) = MediaType::from_mime(content_type) else {
        return Cow::Borrowed(filename);
    };
    let name = filename.as_bytes();
    let has_extension = kind.extensions().iter().any(|extension| {
        name.len() > extension.len()
            && name[name.len() - extension.len()..].eq_ignore_ascii_case(extension.as_bytes())
    });
    if has_extension {
        Cow::Borrowed(filename)
    } else {
        Cow::Owned(format!("{filename}{}", kind.extension()))
    }
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
