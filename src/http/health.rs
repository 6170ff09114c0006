//! `/healthz`: the process answers. `/readyz`: the database and storage answer too,
//! and the server is not shutting down. `/metrics`: Prometheus text.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::http::AppState;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The Prometheus text, after reading the figures measured at scrape time: the
/// database pool, the outbox backlog and the tenants near their quota.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (size, idle) = state.app.db.pool_usage();
    crate::telemetry::db_pool(size, idle);
    match crate::events::backlog(state.app.db.read()).await {
        Ok(pending) => crate::telemetry::outbox_backlog(pending),
        Err(err) => tracing::warn!(error = %err, "cannot count the outbox backlog"),
    }
    match crate::quotas::tenants_near_limit(&state.app.db, &state.app.config.quotas).await {
        Ok(tenants) => crate::telemetry::tenants_near_quota(tenants),
        Err(err) => tracing::warn!(error = %err, "cannot count the tenants near their quota"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(),
    )
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
    let database = state.app.db.ping().await.map_err(|err| err.to_string());
    let storage = state
        .app
        .storage
        .ping()
        .await
        .map_err(|err| err.to_string());
    let describe = |result: &Result<(), String>| match result {
        Ok(()) => "ok",
        Err(_) => "unavailable",
    };
    for (part, result) in [("database", &database), ("storage", &storage)] {
        if let Err(err) = result {
            tracing::warn!(part, error = %err, "not ready");
        }
    }
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
