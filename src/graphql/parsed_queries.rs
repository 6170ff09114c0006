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
            let Ok(mut kept) = self.0.lock() else {
                return;
            };
            let document = match kept.get(&request.query) {
                Some(document) => document.clone(),
                None => {
                    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
                        continue;
                    };
                    if kept.len() >= MOST_KEPT {
                        kept.clear();
                    }
                    kept.insert(request.query.clone(), document.clone());
                    document
                }
            };
            drop(kept);
            request.set_parsed_query(document);
        }
    }
}
