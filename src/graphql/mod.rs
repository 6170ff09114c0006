//! The GraphQL schema: one file per domain, merged here. `attache schema` prints it
//! and `schema.graphql` at the root is its checked-in copy.

mod attachments;
pub mod bounds;
mod context;
pub mod file_parts;
pub mod large_strings;
mod parsed_queries;
mod usage;

use async_graphql::{EmptySubscription, MergedObject, Schema, SchemaBuilder};

use crate::app::SharedApp;
pub use parsed_queries::{ParsedQueries, Prepared};

#[derive(MergedObject, Default)]
pub struct Query(attachments::AttachmentQuery, usage::UsageQuery);

#[derive(MergedObject, Default)]
pub struct Mutation(attachments::AttachmentMutation);

pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// The schema that serves requests, with the app in its data. The depth and
/// complexity limits are async-graphql's own second line behind [`bounds`], which
/// already refused what passes them.
pub fn schema(app: SharedApp) -> AppSchema {
    let limits = &app.config.query_limits;
    let (depth, complexity) = (limits.max_query_depth, limits.max_query_complexity);
    builder()
        .limit_depth(depth as usize)
        .limit_complexity(complexity as usize)
        .data(app)
        .finish()
}

pub(crate) fn builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
}

/// The SDL that `attache schema` prints, with the `@specifiedBy` URLs of its
/// scalars as introspection reports them (codegen reads the file, not the server).
pub fn sdl() -> String {
    let options = async_graphql::SDLExportOptions::new().include_specified_by();
    builder().finish().sdl_with_options(options)
}
