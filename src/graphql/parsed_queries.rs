//! Every request's document is bounded, parsed and measured here before it runs
//! ([`ParsedQueries::prepare`]), and kept: clients send the same few operations over
//! and over, and parsing one (a pest grammar) costs more than a clone of its syntax
//! tree, about a twentieth of a listing's time. Done before execution rather than as
//! a schema extension, which would wrap every field's resolver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::BatchRequest;
use async_graphql::parser::types::ExecutableDocument;

use crate::auth::Access;
use crate::config::QueryLimits;
use crate::error::{AppError, ParseFailure};
use crate::graphql::attachments::{FILE_FIELDS, LISTING};
use crate::graphql::bounds::{self, Shape};

/// Longer query texts are parsed every time: a file inlined as a literal, say.
const LONGEST_KEPT: usize = 8 * 1024;
/// Past this many distinct texts, or this many tokens in all, the store starts over,
/// so no client can grow it. A syntax tree takes some 120 bytes a token of its text:
/// 600 documents of 2,000 fields (4 KB of text each) once held 124 MiB; 200,000
/// tokens hold at most some 25 MiB, room for hundreds of the operations an app sends.
const MOST_KEPT: usize = 512;
const MOST_KEPT_TOKENS: u64 = 200_000;

/// A request-wide count, held to its setting as it grows.
struct Budget {
    spent: u64,
    most: u64,
    what: &'static str,
    setting: &'static str,
    fix: &'static str,
}

impl Budget {
    fn new(what: &'static str, most: u64, setting: &'static str, fix: &'static str) -> Self {
        Self {
            spent: 0,
            most,
            what,
            setting,
            fix,
        }
    }

    fn spend(&mut self, amount: u64) -> Result<(), AppError> {
        self.spent = self.spent.saturating_add(amount);
        match self.spent > self.most {
            true => Err(bounds::too_many(
                self.what,
                self.spent,
                self.most,
                self.setting,
                self.fix,
            )),
            false => Ok(()),
        }
    }
}

/// A document that passed the bounds, and what it costs.
struct Parsed {
    document: ExecutableDocument,
    shape: Shape,
    /// Tokens of its text, which its syntax tree's size follows.
    tokens: u64,
}

/// What [`ParsedQueries::prepare`] found out about a batch that passed.
pub struct Prepared {
    /// A request of the batch runs a mutation.
    pub mutates: bool,
    /// A request of the batch runs a query.
    pub reads: bool,
}

impl Prepared {
    /// What the batch's operations need from a token's scopes (SPEC 5), checked
    /// before they run: a resolver checks its own field too, but `__schema` and
    /// `__typename` reach none.
    pub fn needs(&self) -> impl Iterator<Item = Access> {
        [(self.reads, Access::Read), (self.mutates, Access::Write)]
            .into_iter()
            .filter_map(|(needed, access)| needed.then_some(access))
    }
}

#[derive(Default)]
pub struct ParsedQueries(Mutex<Kept>);

/// The documents kept, by text, and their tokens in all.
#[derive(Default)]
struct Kept {
    documents: HashMap<String, Arc<Parsed>>,
    tokens: u64,
}

impl ParsedQueries {
    /// Bounds the whole batch, then gives every request its parsed query: the batch
    /// length, each text before it is parsed, each document before it is validated,
    /// and the complexity, the files, the rows and the argument bytes of the
    /// operations that would run, summed over the batch. The arguments may copy no
    /// more than a body may hold (`max_argument_bytes`). A query that does not parse
    /// is a request error.
    pub fn prepare(
        &self,
        batch: &mut BatchRequest,
        limits: &QueryLimits,
        max_files: u64,
        max_argument_bytes: u64,
    ) -> Result<Prepared, AppError> {
        let mut operations = Budget::new(
            "operations",
            limits.max_batch_operations.into(),
            "MAX_BATCH_OPERATIONS",
            "send a shorter batch array",
        );
        operations.spend(batch.iter_mut().count() as u64)?;
        let mut expanded = Budget::new(
            "fields, directives and argument values once its fragments are expanded",
            limits.max_expanded_fields.into(),
            "MAX_EXPANDED_FIELDS",
            "send fewer fields or spread fewer fragments",
        );
        let mut complexity = Budget::new(
            "of complexity (1 per operation and per field, aliases included)",
            limits.max_query_complexity.into(),
            "MAX_QUERY_COMPLEXITY",
            "ask for fewer fields or aliases, or split the request",
        );
        let mut files = Budget::new(
            "files",
            max_files,
            "MAX_BATCH_FILES",
            "send the files in several requests",
        );
        let mut rows = Budget::new(
            "rows to list (each `attachments` its `first`, each `totalCount` 100)",
            limits.max_query_rows.into(),
            "MAX_QUERY_ROWS",
            "ask for smaller pages or fewer lists, or split the request",
        );
        let mut argument_bytes = Budget::new(
            "bytes of arguments (a variable counted at each of its uses)",
            max_argument_bytes,
            "MAX_REQUEST_BYTES",
            "read a large variable in one place, not in many",
        );
        let mut prepared = Prepared {
            mutates: false,
            reads: false,
        };
        for request in batch.iter_mut() {
            let parsed = self.parsed(&request.query, limits)?;
            expanded.spend(parsed.shape.expanded)?;
            let operation = request.operation_name.as_deref();
            complexity.spend(parsed.shape.complexity(operation))?;
            let running = bounds::Running::find(&parsed.document, operation, &request.variables)?;
            files.spend(running.files(&FILE_FIELDS))?;
            rows.spend(running.rows(&LISTING))?;
            argument_bytes.spend(running.argument_bytes())?;
            prepared.mutates |= running.is_mutation();
            prepared.reads |= !running.is_mutation();
            request.set_parsed_query(parsed.document.clone());
        }
        Ok(prepared)
    }

    /// The bounded, parsed and measured document of `query`, kept or made now.
    fn parsed(&self, query: &str, limits: &QueryLimits) -> Result<Arc<Parsed>, AppError> {
        let keep = query.len() <= LONGEST_KEPT;
        if keep
            && let Some(parsed) = self
                .kept()
                .and_then(|kept| kept.documents.get(query).cloned())
        {
            return Ok(parsed);
        }
        let tokens = bounds::scan(query, limits)?.into();
        // Parsed outside the lock, which other requests need meanwhile.
        let document = async_graphql::parser::parse_query(query)
            .map_err(|err| AppError::GraphqlParse(parse_failure(&err)))?;
        let shape = bounds::measure(&document, limits)?;
        let parsed = Arc::new(Parsed {
            document,
            shape,
            tokens,
        });
        if keep && let Some(mut kept) = self.kept() {
            if kept.documents.len() >= MOST_KEPT || kept.tokens + tokens > MOST_KEPT_TOKENS {
                *kept = Kept::default();
            }
            kept.tokens += tokens;
            // Two requests that missed on one text both parse it: one counts.
            if let Some(twin) = kept.documents.insert(query.to_owned(), parsed.clone()) {
                kept.tokens -= twin.tokens;
            }
        }
        Ok(parsed)
    }

    /// The kept documents; `None` (parse again) if a panic poisoned the lock.
    fn kept(&self) -> Option<std::sync::MutexGuard<'_, Kept>> {
        self.0.lock().ok()
    }
}

/// Why a query text is not GraphQL, by line and column: the parser's own message
/// quotes the whole line, which may be the whole 14 MB text. The places go in the
/// error's `locations` too, where GraphiQL and editors point at them.
fn parse_failure(err: &async_graphql::parser::Error) -> ParseFailure {
    let locations = match err {
        // The start of what did not parse; its end says nothing more.
        async_graphql::parser::Error::Syntax { start, .. } => vec![*start],
        other => other.positions().collect(),
    };
    let locations = locations
        .into_iter()
        .map(|at| (at.line, at.column))
        .collect();
    ParseFailure {
        message: parse_message(err),
        locations,
    }
}

fn parse_message(err: &async_graphql::parser::Error) -> String {
    let async_graphql::parser::Error::Syntax { message, start, .. } = err else {
        return format!("the query is not GraphQL: {err}");
    };
    // pest ends its message with "= expected ...".
    let expected = message
        .lines()
        .rev()
        .find_map(|line| line.trim_start().strip_prefix("= "))
        .unwrap_or("unexpected text");
    format!(
        "the query is not GraphQL at line {}, column {}: {expected}",
        start.line, start.column
    )
}

/// Generated documents, deep and fragment-heavy, through the real schema's parse
/// and validation: nothing panics, and every document that passes the bounds
/// expands, counted naively, to no more than the bound allows.
#[cfg(test)]
mod generated {
    use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// A random selection set over the schema's root, `depth` levels of nesting left.
    fn selections(rng: &mut StdRng, fragments: usize, own: usize, depth: u32) -> String {
        let mut out = String::new();
        for _ in 0..rng.random_range(1..5) {
            match rng.random_range(0..8) {
                0 => out.push_str("__typename "),
                1 => out.push_str(&format!("a{}: __typename ", rng.random_range(0..50))),
                2 if depth > 0 => {
                    let levels = rng.random_range(0..14);
                    out.push_str(&format!(
                        "__schema {{ types {{ name fields {{ name type {{ {}name{} }} }} }} }} ",
                        "ofType { ".repeat(levels),
                        " }".repeat(levels)
                    ));
                }
                3 => {
                    let nesting = rng.random_range(0..36);
                    out.push_str(&format!(
                        "attachment(id: {}\"x\"{}) {{ id }} ",
                        "[".repeat(nesting),
                        "]".repeat(nesting)
                    ));
                }
                4 | 5 if fragments > 0 => {
                    // Mostly forward spreads; sometimes backwards, so cycles happen.
                    let target = if rng.random_bool(0.9) && own + 1 < fragments {
                        rng.random_range(own + 1..fragments)
                    } else {
                        rng.random_range(0..fragments)
                    };
                    out.push_str(&format!("...F{target} "));
                }
                6 if depth > 0 => out.push_str(&format!(
                    "... on Query {{ {} }} ",
                    selections(rng, fragments, own, depth - 1)
                )),
                _ => out.push_str("__typename "),
            }
        }
        out
    }

    fn document(rng: &mut StdRng) -> String {
        let fragments = rng.random_range(0..12);
        let mut query = format!("{{ {} }}", selections(rng, fragments, usize::MAX - 1, 3));
        for own in 0..fragments {
            query.push_str(&format!(
                " fragment F{own} on Query {{ {} }}",
                selections(rng, fragments, own, 3)
            ));
        }
        if rng.random_bool(0.1) {
            query.truncate(rng.random_range(0..query.len().max(1)));
        }
        query
    }

    /// Selections after expanding every spread, counted the slow way, stopping past `most`.
    fn naive(document: &ExecutableDocument, set: &SelectionSet, most: u64, count: &mut u64) {
        for selection in &set.items {
            *count += 1;
            if *count > most {
                return;
            }
            match &selection.node {
                Selection::Field(field) => {
                    naive(document, &field.node.selection_set.node, most, count)
                }
                Selection::InlineFragment(inline) => {
                    naive(document, &inline.node.selection_set.node, most, count)
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = document.fragments.get(&spread.node.fragment_name.node)
                    {
                        naive(document, &fragment.node.selection_set.node, most, count);
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn generated_documents_stay_within_their_bounds() {
        let limits = QueryLimits::default();
        let schema = crate::graphql::builder()
            .limit_depth(limits.max_query_depth as usize)
            .limit_complexity(limits.max_query_complexity as usize)
            .finish();
        let mut rng = StdRng::seed_from_u64(21);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..400 {
            let query = document(&mut rng);
            let mut batch = BatchRequest::Single(async_graphql::Request::new(query.clone()));
            if ParsedQueries::default()
                .prepare(&mut batch, &limits, 20, 1 << 20)
                .is_err()
            {
                refused += 1;
                continue;
            }
            if let Ok(document) = async_graphql::parser::parse_query(&query) {
                let most = u64::from(limits.max_expanded_fields);
                let mut count = 0;
                for (_, operation) in document.operations.iter() {
                    naive(
                        &document,
                        &operation.node.selection_set.node,
                        most,
                        &mut count,
                    );
                }
                assert!(
                    count <= most,
                    "{count} selections passed the bounds: {query}"
                );
                accepted += 1;
            }
            // Validation and execution (resolvers without the app fail cleanly).
            let _ = schema.execute_batch(batch).await;
        }
        assert!(
            accepted > 20 && refused > 20,
            "{accepted} accepted, {refused} refused"
        );
    }
}
