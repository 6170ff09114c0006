//! The JSON of a GraphQL request (a body, or a multipart body's `operations`),
//! parsed only after its values are counted. Parsed, each value takes some 60
//! bytes or more (the two bytes of `0,` included): eight bodies within
//! `MAX_REQUEST_BYTES` took 1.6 GiB before this count. The count walks the text
//! without keeping anything.

use std::cell::Cell;
use std::fmt;

use async_graphql::{BatchRequest, Request};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a request's JSON is not used.
#[derive(Debug, thiserror::Error)]
pub enum BatchJsonError {
    #[error(
        "the request holds more than {0} JSON values (MAX_JSON_VALUES): send fewer or \
         smaller variables, or raise the limit"
    )]
    TooManyValues(u64),
    #[error("{0}")]
    Invalid(String),
}

impl BatchJsonError {
    /// The same complaint about a multipart field, which names the field.
    pub fn in_field(self, field: &str) -> Self {
        match self {
            Self::Invalid(message) => Self::Invalid(format!("the `{field}` field: {message}")),
            bound => bound,
        }
    }
}

/// Parses `text` into one request or a non-empty batch, once it is known to hold
/// at most `max_values` values (object keys included).
pub fn parse(text: &[u8], max_values: u64) -> Result<BatchRequest, BatchJsonError> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(BatchJsonError::Invalid(
            "the JSON is empty: send an object with `query` (and `variables`)".into(),
        ));
    }
    count_values(text, max_values)?;
    let invalid = |err: serde_json::Error| BatchJsonError::Invalid(err.to_string());
    // Straight to the variant the first byte names: serde's untagged enum would
    // first copy the whole document into a tree of its own.
    match text.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => {
            let batch: Vec<Request> = serde_json::from_slice(text).map_err(invalid)?;
            if batch.is_empty() {
                return Err(BatchJsonError::Invalid(
                    "the batch array is empty: send at least one operation".into(),
                ));
            }
            Ok(BatchRequest::Batch(batch))
        }
        _ => Ok(BatchRequest::Single(
            serde_json::from_slice(text).map_err(invalid)?,
        )),
    }
}

/// Walks `text` as JSON, keeping nothing, and stops at its `max_values + 1`th value.
pub fn count_values(text: &[u8], max_values: u64) -> Result<(), BatchJsonError> {
    let left = Cell::new(max_values);
    let over = Cell::new(false);
    let mut json = serde_json::Deserializer::from_slice(text);
    let counted = Count {
        left: &left,
        over: &over,
    }
    .deserialize(&mut json)
    .and_then(|()| json.end());
    match counted {
        Ok(()) => Ok(()),
        Err(_) if over.get() => Err(BatchJsonError::TooManyValues(max_values)),
        Err(err) => Err(BatchJsonError::Invalid(err.to_string())),
    }
}

/// A value of the walk: it takes one from `left`, then walks its elements.
#[derive(Clone, Copy)]
struct Count<'a> {
    left: &'a Cell<u64>,
    over: &'a Cell<bool>,
}

impl Count<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.over.set(true);
                Err(E::custom("too many values"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.take()
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.take()
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.take()
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.take()
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.take()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.take()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut elements: A) -> Result<(), A::Error> {
        self.take()?;
        while elements.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        self.take()?;
        while entries.next_key_seed(self)?.is_some() {
            entries.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_keys_and_containers_included() {
        // The object, "query" and its string, "variables", its object, "v", the
        // list and its three numbers: 10.
        let text = br#"{"query": "{ a }", "variables": {"v": [1, 2.5, -3]}}"#;
        assert!(count_values(text, 10).is_ok());
        assert!(matches!(
            count_values(text, 9),
            Err(BatchJsonError::TooManyValues(9))
        ));
        let nulls = b"[null, true, false, \"a\\\"b\", {}]";
        assert!(count_values(nulls, 6).is_ok());
        assert!(count_values(nulls, 5).is_err());
    }

    #[test]
    fn a_batch_is_parsed_by_its_first_byte() {
        let single = parse(br#" {"query": "{ a }"}"#, 100).expect("a request");
        assert!(matches!(single, BatchRequest::Single(_)));
        let batch = parse(br#"[{"query": "{ a }"}, {"query": "{ b }"}]"#, 100).expect("two");
        assert!(matches!(batch, BatchRequest::Batch(requests) if requests.len() == 2));
        for (text, why) in [
            (&b"[]"[..], "empty"),
            (b"{\"query\": 1}", "mistyped"),
            (b"{\"query\": \"{ a }\"} x", "trailing"),
            (b"", "nothing"),
        ] {
            assert!(
                matches!(parse(text, 100), Err(BatchJsonError::Invalid(_))),
                "{why}"
            );
        }
    }
}
