//! `/healthz`: the process answers. `/readyz`: the database and storage answer too,
//! and the server is not shutting down. `/metrics`: Prometheus text. Anyone may call
//! `/readyz` (and `/metrics` on the main listener): what they read from the database
//! and the bucket is read at most once per [`REFRESH_EVERY`], however many callers
//! come, so a flood of them costs the bucket (billed per request) nothing more.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::http::AppState;

/// How old an answer of the database or the bucket may be when `/readyz` or
/// `/metrics` reports it.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How long one of those reads may take: a store that never answers is then a
/// failed check, kept like any answer, not a read that every caller waits behind.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `/metrics` waits for the figures it reads from the database, well
/// within Prometheus' default scrape timeout (10 s): a stalled database must not
/// cost the scrape, and with it every other series of the incident.
const FIGURES_TIMEOUT: Duration = Duration::from_secs(2);

/// The last value a check read, and when. A caller finds it fresh, or reads it
/// anew; callers that come meanwhile wait for that read instead of starting theirs.
pub struct Recent<T> {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, T)>>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Recent<T> {
    /// The value read within [`REFRESH_EVERY`], or what `read` reads now.
    pub async fn get(&self, read: impl Future<Output = T>) -> T {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = &*last
            && at.elapsed() < REFRESH_EVERY
        {
            return value.clone();
        }
        let value = read.await;
        *last = Some((tokio::time::Instant::now(), value.clone()));
        value
    }
}

/// What the health routes last read.
#[derive(Default)]
pub struct Checks {
    /// The database's and the storage's answers.
    readiness: Recent<(Result<(), String>, Result<(), String>)>,
    /// When the figures `/metrics` reads from the database were last read.
    figures: Recent<()>,
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The Prometheus text, after reading the figures measured at scrape time (at most
/// once per [`REFRESH_EVERY`]): the database pool, the outbox backlog and the tenants
/// near their quota.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (size, idle) = state.app.db.pool_usage();
    crate::telemetry::db_pool(size, idle);
    state.checks.figures.get(read_figures(&state)).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(),
    )
}

/// Both figures, asked at once: a stalled database costs a scrape one
/// [`FIGURES_TIMEOUT`]. A figure not read keeps its last value, and a warning says so.
async fn read_figures(state: &AppState) {
    let (backlog, near) = tokio::join!(
        within(FIGURES_TIMEOUT, crate::events::backlog(state.app.db.read())),
        within(
            FIGURES_TIMEOUT,
            crate::quotas::tenants_near_limit(&state.app.db, &state.app.config.quotas),
        ),
    );
    match backlog {
        Ok(pending) => crate::telemetry::outbox_backlog(pending),
        Err(err) => tracing::warn!(error = %err, "cannot count the outbox backlog"),
    }
    match near {
        Ok(tenants) => crate::telemetry::tenants_near_quota(tenants),
        Err(err) => tracing::warn!(error = %err, "cannot count the tenants near their quota"),
    }
}

/// `read`'s answer within `limit`, its error as text.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    read: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, read).await {
        Ok(answer) => answer.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

pub async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    if state
        .app
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let body = Json(json!({ "status": "draining" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let (database, storage) = state.checks.readiness.get(read_readiness(&state)).await;
    let describe = |result: &Result<(), String>| match result {
        Ok(()) => "ok",
        Err(_) => "unavailable",
    };
    let status = if database.is_ok() && storage.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "database": describe(&database), "storage": describe(&storage) })),
    )
        .into_response()
}

/// The database's and the storage's answers, asked at once (an outage of one then
/// costs a caller one timeout, not two); a failure is logged once per read, not
/// once per caller.
async fn read_readiness(state: &AppState) -> (Result<(), String>, Result<(), String>) {
    let (database, storage) = tokio::join!(
        within(READ_TIMEOUT, state.app.db.ping()),
        within(READ_TIMEOUT, state.app.storage.ping())
    );
    for (part, result) in [("database", &database), ("storage", &storage)] {
        if let Err(err) = result {
            tracing::warn!(part, error = %err, "not ready");
        }
    }
    (database, storage)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_value_is_read_once_per_interval_however_many_ask() {
        let recent = Recent::default();
        let reads = AtomicU32::new(0);
        let read = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            reads.fetch_add(1, Ordering::Relaxed) + 1
        };
        let answers = futures::future::join_all((0..100).map(|_| recent.get(read()))).await;
        assert!(answers.iter().all(|answer| *answer == 1), "{answers:?}");
        tokio::time::sleep(REFRESH_EVERY / 2).await;
        assert_eq!(recent.get(read()).await, 1, "still fresh");
        tokio::time::sleep(REFRESH_EVERY).await;
        assert_eq!(recent.get(read()).await, 2, "read anew");
        assert_eq!(reads.load(Ordering::Relaxed), 2);
    }
}
