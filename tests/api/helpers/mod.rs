//! The test harness: the real app on 127.0.0.1:0 with a fresh database (SQLite, or
//! PostgreSQL when TEST_DATABASE_URL is set) and fresh storage (a temporary folder,
//! or an in-process S3 server that checks SigV4 signatures), a real HTTP client,
//! tokens minted the way an identity provider would.
//!
//! One file a concern; every item is at hand as `crate::helpers::X`.

mod app;
mod databases;
mod fixtures;
mod graphql;
mod matrix;
mod metrics;
mod ports;
mod processes;
mod s3;
mod tokens;
pub mod webhooks;

pub use app::*;
pub use databases::*;
pub use fixtures::*;
pub use graphql::*;
pub use matrix::*;
pub use metrics::*;
pub use ports::*;
pub use processes::*;
pub use s3::*;
pub use tokens::*;
