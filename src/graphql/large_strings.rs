//! Large base64 strings leave a request's variables before it runs. async-graphql
//! copies a variable's value whenever a resolver reads it: for a 10 MiB file, 14 MB
//! more memory and a copy. A JSON body's large files were spooled while it arrived
//! (the http layer's `json_body`); [`move_out`] also moves every other `base64`
//! string of at least [`MOVE_FROM`] bytes (a multipart request's operations) into
//! the request's data. Each leaves a short placeholder that the upload resolvers
//! resolve through [`decode`].

use std::sync::{Arc, Mutex};

use async_graphql::{BatchRequest, Context, Name, Value};
use bytes::Bytes;

use crate::attachments::FileContent;
use crate::attachments::spool::SpoolFailure;
use crate::error::AppResult;

/// Below this size a copy costs less than the detour.
const MOVE_FROM: usize = 64 * 1024;

/// The field whose strings are moved: the file of an upload input.
const FIELD: &str = "base64";

/// The strings taken out of one request body, and the prefix of their
/// placeholders: unique per body, so that no client text can pass for one.
#[derive(Default)]
pub struct LargeStrings {
    tag: String,
    values: Vec<Mutex<Moved>>,
}

/// A moved string, then its decoded bytes (a variable used twice is decoded once);
/// or a file spooled as it arrived, or why it could not be.
enum Moved {
    Text(String),
    Decoded(FileContent),
    Failed(SpoolFailure),
}

/// Moves the large `base64` strings of every request of `batch` out of its
/// variables, beside those `large` took out of its body already.
pub fn move_out(batch: &mut BatchRequest, mut large: LargeStrings) {
    for request in batch.iter_mut() {
        for value in request.variables.values_mut() {
            large.take(value, false);
        }
    }
    if large.is_empty() {
        return;
    }
    let large = Arc::new(large);
    for request in batch.iter_mut() {
        request.data.insert(Arc::clone(&large));
    }
}

impl LargeStrings {
    /// How many strings were taken.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The placeholder of the string taken next, as it is written in JSON.
    pub fn next_placeholder(&mut self) -> String {
        let placeholder = self.placeholder(self.values.len());
        format!("\"{}\"", placeholder.replace('\0', "\\u0000"))
    }

    /// The file of the string whose placeholder [`LargeStrings::next_placeholder`]
    /// gave last.
    pub fn push_spooled(&mut self, spooled: Result<FileContent, SpoolFailure>) {
        let moved = match spooled {
            Ok(content) => Moved::Decoded(content),
            Err(failure) => Moved::Failed(failure),
        };
        self.values.push(Mutex::new(moved));
    }

    fn placeholder(&mut self, index: usize) -> String {
        if self.tag.is_empty() {
            // Made only for a request that has a large string.
            self.tag = format!("\u{0}attache-large-string-{}:", uuid::Uuid::now_v7());
        }
        format!("{}{index}", self.tag)
    }

    fn take(&mut self, value: &mut Value, is_file: bool) {
        match value {
            Value::String(text) if is_file && text.len() >= MOVE_FROM => {
                let placeholder = self.placeholder(self.values.len());
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

/// The file a `base64` argument stands for: the spooled file, the moved string
/// decoded with `decode` (then dropped), or `value` itself decoded.
pub fn decode(
    ctx: &Context<'_>,
    value: &str,
    decode: impl FnOnce(&str) -> AppResult<Bytes>,
) -> AppResult<FileContent> {
    let moved = ctx.data_opt::<Arc<LargeStrings>>().and_then(|large| {
        let index = value
            .strip_prefix(large.tag.as_str())
            .filter(|_| !large.tag.is_empty())?
            .parse::<usize>()
            .ok()?;
        large.values.get(index)
    });
    let Some(moved) = moved else {
        return decode(value).map(FileContent::Memory);
    };
    let mut moved = moved
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bytes = match &*moved {
        Moved::Decoded(content) => return Ok(content.clone()),
        Moved::Failed(failure) => return Err(failure.to_error()),
        Moved::Text(text) => decode(text)?,
    };
    *moved = Moved::Decoded(FileContent::Memory(bytes.clone()));
    Ok(FileContent::Memory(bytes))
}
