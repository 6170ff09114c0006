//! Every request's document is bounded, parsed and measured here before it runs
//! ([`ParsedQueries::prepare`]), and kept: clients send the same few operations over
//! and over, and parsing one (a pest grammar) costs more than a clone of its syntax
//! tree, about a twentieth of a listing's time. Done before execution rather than as
//! a schema extension, which would wrap every field's resolver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::BatchRequest;
use async_graphql::parser::types::ExecutableDocument;

use crate::config::QueryLimits;
use crate::error::AppError;
use crate::graphql::bounds::{self, Shape};

/// Longer query texts are parsed every time: a file inlined as a literal, say.
const LONGEST_KEPT: usize = 8 * 1024;
/// Past this many distinct texts the store starts over, so no client can grow it.
const MOST_KEPT: usize = 512;

/// A document that passed the bounds, and what it costs.
struct Parsed {
    document: ExecutableDocument,
    shape: Shape,
}

#[derive(Default)]
pub struct ParsedQueries(Mutex<HashMap<String, Arc<Parsed>>>);

impl ParsedQueries {
    /// Bounds the whole batch, then gives every request its parsed query: the batch
    /// length, each text before it is parsed, each document before it is validated,
    /// and the complexity and the files of the operations that would run, summed
    /// over the batch. A query that does not parse is left to the executor, which
    /// reports it.
    pub fn prepare(
        &self,
        batch: &mut BatchRequest,
        limits: &QueryLimits,
        max_files: u64,
    ) -> Result<(), AppError> {
        let operations = batch.iter_mut().count() as u64;
        let most = u64::from(limits.max_batch_operations);
        if operations > most {
            return Err(bounds::too_many(
                "operations",
                operations,
                most,
                "MAX_BATCH_OPERATIONS",
                "send a shorter batch array",
            ));
        }
        let (mut complexity, mut expanded, mut files) = (0u64, 0u64, 0u64);
        for request in batch.iter_mut() {
            let Some(parsed) = self.parsed(&request.query, limits)? else {
                continue;
            };
            expanded = expanded.saturating_add(parsed.shape.expanded);
            let most = u64::from(limits.max_expanded_fields);
            if expanded > most {
                return Err(bounds::too_many(
                    "fields once its fragments are expanded",
                    expanded,
                    most,
                    "MAX_EXPANDED_FIELDS",
                    "send fewer fields or spread fewer fragments",
                ));
            }
            let operation = request.operation_name.as_deref();
            complexity = complexity.saturating_add(parsed.shape.complexity(operation));
            let most = u64::from(limits.max_query_complexity);
            if complexity > most {
                return Err(bounds::too_many(
                    "of complexity (1 per operation and per field, aliases included)",
                    complexity,
                    most,
                    "MAX_QUERY_COMPLEXITY",
                    "ask for fewer fields or aliases, or split the request",
                ));
            }
            files = files.saturating_add(bounds::files(
                &parsed.document,
                operation,
                &request.variables,
                &super::attachments::FILE_FIELDS,
            ));
            if files > max_files {
                return Err(bounds::too_many(
                    "files",
                    files,
                    max_files,
                    "MAX_BATCH_FILES",
                    "send the files in several requests",
                ));
            }
            request.set_parsed_query(parsed.document.clone());
        }
        Ok(())
    }

    /// The bounded, parsed and measured document of `query`, kept or made now;
    /// `None` when it does not parse.
    fn parsed(&self, query: &str, limits: &QueryLimits) -> Result<Option<Arc<Parsed>>, AppError> {
        let keep = query.len() <= LONGEST_KEPT;
        if keep && let Some(parsed) = self.kept().and_then(|kept| kept.get(query).cloned()) {
            return Ok(Some(parsed));
        }
        bounds::scan(query, limits)?;
        // Parsed outside the lock, which other requests need meanwhile.
        let Ok(document) = async_graphql::parser::parse_query(query) else {
            return Ok(None);
        };
        let shape = bounds::measure(&document, limits)?;
        let parsed = Arc::new(Parsed { document, shape });
        if keep && let Some(mut kept) = self.kept() {
            if kept.len() >= MOST_KEPT {
                kept.clear();
            }
            kept.insert(query.to_owned(), parsed.clone());
        }
        Ok(Some(parsed))
    }

    /// The kept documents; `None` (parse again) if a panic poisoned the lock.
    fn kept(&self) -> Option<std::sync::MutexGuard<'_, HashMap<String, Arc<Parsed>>>> {
        self.0.lock().ok()
    }
}
