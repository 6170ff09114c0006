//! HTTP dates (RFC 9110 §5.6.7), read by the download route's preconditions and by
//! the dispatcher's `Retry-After`, written in `Last-Modified`.

use chrono::{DateTime, Utc};

/// IMF-fixdate, the form attache sends.
pub const FORMAT: &str = "%a, %d %b %Y %H:%M:%S GMT";

/// An HTTP date: IMF-fixdate, or one of the two obsolete forms a recipient must
/// still take (RFC 850's and asctime's); `None` for any other text, which RFC 9110
/// says to ignore.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    const OBSOLETE: [&str; 2] = ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"];
    std::iter::once(FORMAT)
        .chain(OBSOLETE)
        .find_map(|form| chrono::NaiveDateTime::parse_from_str(text.trim(), form).ok())
        .map(|date| date.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9110 §5.6.7's three forms of one date.
    #[test]
    fn reads_the_obsolete_forms_too() {
        let imf = parse("Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(imf.is_some());
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), imf);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), imf);
        assert_eq!(parse("yesterday"), None);
    }
}
