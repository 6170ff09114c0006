//! The GraphQL schema: one file per domain, merged here. `attache schema` prints it
//! and `schema.graphql` at the root is its checked-in copy.

mod attachments;
mod context;
pub mod large_strings;
mod parsed_queries;

use async_graphql::{EmptySubscription, MergedObject, Schema, SchemaBuilder};

use crate::app::SharedApp;
pub use context::Caller;
pub use parsed_queries::ParsedQueries;

#[derive(MergedObject, Default)]
pub struct Query(attachments::AttachmentQuery);

#[derive(MergedObject, Default)]
pub struct Mutation(attachments::AttachmentMutation);

pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// Query depth limit (SPEC 6).
pub const MAX_DEPTH: usize = 16;
/// Query complexity limit: a thousand aliases are refused (SPEC 6).
pub const MAX_COMPLEXITY: usize = 1000;

fn builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
}

/// The schema that serves requests, with the app in its data.
pub fn schema(app: SharedApp) -> AppSchema {
    builder().data(app).finish()
}

/// The SDL that `attache schema` prints.
pub fn sdl() -> String {
    builder().finish().sdl()
}
