//! Parsed queries, kept: clients send the same few operations over and over, and
//! parsing one (a pest grammar) costs more than a clone of its syntax tree, about a
//! twentieth of a listing's time. Done before execution ([`ParsedQueries::attach`])
//! rather than as a schema extension, which would wrap every field's resolver.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::BatchRequest;
use async_graphql::parser::types::ExecutableDocument;

/// Longer query texts are parsed every time: a file inlined as a literal, say.
const LONGEST_KEPT: usize = 8 * 1024;
/// Past this many distinct texts the store starts over, so no client can grow it.
const MOST_KEPT: usize = 512;

#[derive(Default)]
pub struct ParsedQueries(Mutex<HashMap<String, ExecutableDocument>>);

impl ParsedQueries {
    /// Gives every request of `batch` its parsed query, from the store or parsed
    /// now. A query that does not parse is left to the executor, which reports it.
    pub fn attach(&self, batch: &mut BatchRequest) {
        for request in batch.iter_mut() {
            if request.query.len() > LONGEST_KEPT {
                continue;
            }
            let kept = self
                .kept()
                .and_then(|kept| kept.get(&request.query).cloned());
            let document = match kept {
                Some(document) => document,
                // Parsed outside the lock, which other requests need meanwhile.
                None => match async_graphql::parser::parse_query(&request.query) {
                    Ok(document) => {
                        self.keep(&request.query, &document);
                        document
                    }
                    Err(_) => continue,
                },
            };
            request.set_parsed_query(document);
        }
    }

    fn keep(&self, query: &str, document: &ExecutableDocument) {
        if let Some(mut kept) = self.kept() {
            if kept.len() >= MOST_KEPT {
                kept.clear();
            }
            kept.insert(query.to_owned(), document.clone());
        }
    }

    /// The kept documents; `None` (parse again) if a panic poisoned the lock.
    fn kept(&self) -> Option<std::sync::MutexGuard<'_, HashMap<String, ExecutableDocument>>> {
        self.0.lock().ok()
    }
}
