//! Large base64 strings leave a request's variables before it runs. async-graphql
//! copies a variable's value whenever a resolver reads it: for a 10 MiB file, 14 MB
//! more memory and a copy. [`move_out`] moves every `base64` string of at least
//! [`MOVE_FROM`] bytes into the request's data and leaves a short placeholder that
//! the upload resolvers read back through [`text`].

use async_graphql::{BatchRequest, Context, Name, Value};

/// Below this size a copy costs less than the detour.
const MOVE_FROM: usize = 64 * 1024;

/// The field whose strings are moved: the file of an upload input.
const FIELD: &str = "base64";

/// The strings moved out of one request, and the prefix of their placeholders:
/// unique per request, so that no client text can pass for one.
struct LargeStrings {
    tag: String,
    values: Vec<String>,
}

/// Moves the large `base64` strings of every request of `batch` out of its
/// variables.
pub fn move_out(batch: &mut BatchRequest) {
    for request in batch.iter_mut() {
        let mut large = LargeStrings {
            tag: format!("\u{0}attache-large-string-{}:", uuid::Uuid::now_v7()),
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
                let placeholder = format!("{}{}", self.tag, self.values.len());
                self.values.push(std::mem::replace(text, placeholder));
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

/// The text a `base64` argument stands for: the moved string, or `value` itself.
pub fn text<'ctx: 'v, 'v>(ctx: &Context<'ctx>, value: &'v str) -> &'v str {
    let Some(large) = ctx.data_opt::<LargeStrings>() else {
        return value;
    };
    value
        .strip_prefix(large.tag.as_str())
        .and_then(|index| index.parse::<usize>().ok())
        .and_then(|index| large.values.get(index))
        .map_or(value, String::as_str)
}
