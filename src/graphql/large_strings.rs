//! Large base64 strings leave a request's variables before it runs. async-graphql
//! copies a variable's value whenever a resolver reads it: for a 10 MiB file, 14 MB
//! more memory and a copy. [`move_out`] moves every `base64` string of at least
//! [`MOVE_FROM`] bytes into the request's data and leaves a short placeholder that
//! the upload resolvers decode through [`decode`], which drops the text as soon as
//! its bytes exist.

use std::sync::Mutex;

use async_graphql::{BatchRequest, Context, Name, Value};
use bytes::Bytes;

use crate::error::AppResult;

/// Below this size a copy costs less than the detour.
const MOVE_FROM: usize = 64 * 1024;

/// The field whose strings are moved: the file of an upload input.
const FIELD: &str = "base64";

/// The strings moved out of one request, and the prefix of their placeholders:
/// unique per request, so that no client text can pass for one.
struct LargeStrings {
    tag: String,
    values: Vec<Mutex<Moved>>,
}

/// A moved string, then its decoded bytes: a variable used twice is decoded once.
enum Moved {
    Text(String),
    Decoded(Bytes),
}

/// Moves the large `base64` strings of every request of `batch` out of its
/// variables.
pub fn move_out(batch: &mut BatchRequest) {
    for request in batch.iter_mut() {
        let mut large = LargeStrings {
            tag: String::new(),
            values: Vec::new(),
        };
        for value in request.variables.values_mut() {
            large.take(value, false);
        }
        if !large.values.is_empty() {
            request.data.insert(large);
        }
    }
}

impl LargeStrings {
    fn take(&mut self, value: &mut Value, is_file: bool) {
        match value {
            Value::String(text) if is_file && text.len() >= MOVE_FROM => {
                if self.tag.is_empty() {
                    // Made only for a request that has a large string.
                    self.tag = format!("\u{0}attache-large-string-{}:", uuid::Uuid::now_v7());
                }
                let placeholder = format!("{}{}", self.tag, self.values.len());
                let text = std::mem::replace(text, placeholder);
                self.values.push(Mutex::new(Moved::Text(text)));
            }
            Value::List(items) => {
                for item in items {
                    self.take(item, false);
                }
            }
            Value::Object(fields) => {
                for (name, field) in fields.iter_mut() {
                    self.take(field, Name::as_str(name) == FIELD);
                }
            }
            _ => {}
        }
    }
}

/// Decodes the text a `base64` argument stands for with `decode`: the moved string
/// (dropped once decoded) or `value` itself.
pub fn decode(
    ctx: &Context<'_>,
    value: &str,
    decode: impl FnOnce(&str) -> AppResult<Bytes>,
) -> AppResult<Bytes> {
    let moved = ctx.data_opt::<LargeStrings>().and_then(|large| {
        let index = value
            .strip_prefix(large.tag.as_str())?
            .parse::<usize>()
            .ok()?;
        large.values.get(index)
    });
    let Some(moved) = moved else {
        return decode(value);
    };
    let mut moved = moved
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bytes = match &*moved {
        Moved::Decoded(bytes) => return Ok(bytes.clone()),
        Moved::Text(text) => decode(text)?,
    };
    *moved = Moved::Decoded(bytes.clone());
    Ok(bytes)
}
