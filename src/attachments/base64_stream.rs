//! Base64 text decoded as it arrives, piece by piece, with the rules of
//! [`super::upload::decode_base64`]: the standard or URL-safe alphabet (never both),
//! optional padding at the end only, whitespace anywhere, a `data:*;base64,` prefix.

use base64_simd::Base64;

/// The longest `data:` prefix looked for before giving up on the text.
const PREFIX_MAX: usize = 256;

/// Why the text is not a file: nothing more specific is useful to a client.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidBase64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alphabet {
    /// Only characters both alphabets share, so far.
    Either,
    Standard,
    UrlSafe,
}

/// Decodes base64 text fed in pieces of any length; [`Base64Stream::finish`] says
/// whether the whole was valid.
pub struct Base64Stream {
    /// The first characters, kept until it is known whether a `data:` prefix starts
    /// the text; `None` once that is decided.
    head: Option<Vec<u8>>,
    /// Characters of a quadruple that the next piece completes (at most three).
    carry: Vec<u8>,
    /// How many `=` ended the text so far: anything but more `=` after them is invalid.
    padding: usize,
    alphabet: Alphabet,
    /// A piece with whitespace, copied without it.
    compact: Vec<u8>,
}

impl Default for Base64Stream {
    fn default() -> Self {
        Self {
            head: Some(Vec::new()),
            carry: Vec::with_capacity(4),
            padding: 0,
            alphabet: Alphabet::Either,
            compact: Vec::new(),
        }
    }
}

impl Base64Stream {
    /// Decodes `text`, the next piece, appending its bytes to `out` (the last
    /// characters of an incomplete quadruple wait for the next piece).
    pub fn feed(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidBase64> {
        let Some(head) = self.head.as_mut() else {
            return self.data(text, out);
        };
        let room = (PREFIX_MAX + 1).saturating_sub(head.len());
        let (kept, rest) = text.split_at(room.min(text.len()));
        head.extend_from_slice(kept);
        self.decide_prefix(rest, out, false)
    }

    /// Decodes what is left; the text must end on a whole byte.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), InvalidBase64> {
        if self.head.is_some() {
            self.decide_prefix(&[], out, true)?;
        }
        match self.carry.len() {
            0 => Ok(()),
            1 => Err(InvalidBase64),
            _ => self
                .engine()
                .decode_append(&self.carry, out)
                .map_err(|_| InvalidBase64),
        }
    }

    /// Once enough of the text is there (or at its end): skips a `data:*;base64,`
    /// prefix and decodes the rest of what was kept, then `rest`.
    fn decide_prefix(
        &mut self,
        rest: &[u8],
        out: &mut Vec<u8>,
        at_end: bool,
    ) -> Result<(), InvalidBase64> {
        let Some(head) = self.head.take() else {
            return self.data(rest, out);
        };
        let start = if head.starts_with(b"data:") {
            match memchr::memchr(b',', &head) {
                Some(comma) if head[..comma].ends_with(b";base64") => comma + 1,
                Some(_) => return Err(InvalidBase64),
                None if head.len() > PREFIX_MAX || at_end => return Err(InvalidBase64),
                None => {
                    self.head = Some(head);
                    return Ok(());
                }
            }
        } else if b"data:".starts_with(&head) && !at_end {
            self.head = Some(head);
            return Ok(());
        } else {
            0
        };
        self.data(&head[start..], out)?;
        self.data(rest, out)
    }

    /// Decodes a piece of the text proper.
    fn data(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidBase64> {
        let has_whitespace = memchr::memchr3(b' ', b'\n', b'\r', piece).is_some()
            || memchr::memchr2(b'\t', b'\x0c', piece).is_some();
        if !has_whitespace {
            return self.characters(piece, out);
        }
        let mut compact = std::mem::take(&mut self.compact);
        compact.clear();
        compact.extend(piece.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let decoded = self.characters(&compact, out);
        self.compact = compact;
        decoded
    }

    /// Decodes characters without whitespace.
    fn characters(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidBase64> {
        let (data, padding) = match memchr::memchr(b'=', piece) {
            Some(at) => piece.split_at(at),
            None => (piece, &[][..]),
        };
        if self.padding > 0 && !data.is_empty() {
            return Err(InvalidBase64);
        }
        if padding.iter().any(|&b| b != b'=') {
            return Err(InvalidBase64);
        }
        self.padding += padding.len();
        if self.padding > 2 {
            return Err(InvalidBase64);
        }
        self.learn_alphabet(data)?;
        let mut data = data;
        if !self.carry.is_empty() {
            let take = (4 - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < 4 {
                return Ok(());
            }
            self.engine()
                .decode_append(&self.carry, out)
                .map_err(|_| InvalidBase64)?;
            self.carry.clear();
        }
        let whole = data.len() / 4 * 4;
        self.engine()
            .decode_append(&data[..whole], out)
            .map_err(|_| InvalidBase64)?;
        self.carry.extend_from_slice(&data[whole..]);
        Ok(())
    }

    /// Notes which alphabet the characters use; both in one text is invalid.
    fn learn_alphabet(&mut self, data: &[u8]) -> Result<(), InvalidBase64> {
        let url_safe = memchr::memchr2(b'-', b'_', data).is_some();
        let standard = memchr::memchr2(b'+', b'/', data).is_some();
        self.alphabet = match (self.alphabet, standard, url_safe) {
            (_, true, true) | (Alphabet::Standard, _, true) | (Alphabet::UrlSafe, true, _) => {
                return Err(InvalidBase64);
            }
            (Alphabet::Either, true, false) => Alphabet::Standard,
            (Alphabet::Either, false, true) => Alphabet::UrlSafe,
            (known, _, _) => known,
        };
        Ok(())
    }

    /// The shared characters decode alike in both alphabets.
    fn engine(&self) -> &'static Base64 {
        match self.alphabet {
            Alphabet::UrlSafe => &base64_simd::URL_SAFE_NO_PAD,
            Alphabet::Either | Alphabet::Standard => &base64_simd::STANDARD_NO_PAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachments::upload::decode_base64;

    /// Decodes `text` fed in pieces of `size` characters.
    fn in_pieces(text: &str, size: usize) -> Result<Vec<u8>, InvalidBase64> {
        let mut stream = Base64Stream::default();
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(size) {
            stream.feed(piece, &mut out)?;
        }
        stream.finish(&mut out)?;
        Ok(out)
    }

    /// Whatever the pieces, the stream agrees with the whole-text decoder, on valid
    /// and invalid texts alike.
    #[test]
    fn agrees_with_the_whole_text_decoder_in_pieces_of_any_size() {
        let large: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
        let standard = base64_simd::STANDARD.encode_to_string(&large);
        let texts = [
            "aGVsbG8gd29ybGQ/Pg==".to_owned(),
            "aGVsbG8gd29ybGQ/Pg".to_owned(),
            "aGVsbG8gd29ybGQ_Pg".to_owned(),
            " aGVs\nbG8g d29y\r\nbGQ/Pg== ".to_owned(),
            "data:text/plain;base64,aGVsbG8gd29ybGQ/Pg==".to_owned(),
            format!("data:application/pdf;base64,{standard}"),
            base64_simd::URL_SAFE_NO_PAD.encode_to_string(&large),
            standard.clone(),
            "not base64 at all!".to_owned(),
            "aGVsbG8===".to_owned(),
            "a".to_owned(),
            "aGV=sbG8".to_owned(),
            "data:text/plain,aGVsbG8".to_owned(),
            "aGVs+G8_Pg".to_owned(),
            format!("{standard}_"),
            "dat".to_owned(),
        ];
        for text in &texts {
            let whole = decode_base64(text).map(|bytes| bytes.to_vec()).ok();
            for size in [1, 2, 3, 5, 7, 64, 1000, 100_000] {
                assert_eq!(
                    in_pieces(text, size).ok(),
                    whole,
                    "{text:.40} in pieces of {size}"
                );
            }
        }
    }
}
