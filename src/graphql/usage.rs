//! `usage`: what the caller's tenant stores and may store, so a client can show a
//! quota bar or warn before an upload is refused.

use async_graphql::{Context, ErrorExtensions, Object, SimpleObject};

use super::context::{app, principal};
use crate::auth::Access;
use crate::error::AppError;
use crate::quotas;

#[derive(Default)]
pub struct UsageQuery;

#[Object]
impl UsageQuery {
    /// The caller's tenant: its stored bytes and files (direct uploads not yet
    /// completed count at their declared size) and its quota.
    async fn usage(&self, ctx: &Context<'_>) -> async_graphql::Result<Usage> {
        let principal = principal(ctx, Access::Read)?;
        let app = app(ctx)?;
        let usage = quotas::usage(&app.db, &app.config.quotas, principal.tenant.as_str())
            .await
            .map_err(|err| AppError::from(err).extend())?;
        Ok(Usage {
            bytes: usage.bytes as f64,
            files: clamp(usage.files),
            quota_bytes: usage.quota_bytes.map(|quota| quota as f64),
            quota_files: usage.quota_files.map(clamp),
        })
    }
}

/// Byte counts are `Float`: GraphQL's `Int` is 32 bits and stops at 2 GiB; a
/// `Float` holds every byte count exactly up to 8 PiB.
#[derive(SimpleObject)]
pub struct Usage {
    /// Bytes stored.
    bytes: f64,
    /// Files stored.
    files: i32,
    /// The most bytes the tenant may store; null: unlimited.
    quota_bytes: Option<f64>,
    /// The most files the tenant may store; null: unlimited.
    quota_files: Option<i32>,
}

fn clamp(count: i64) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}
