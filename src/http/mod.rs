//! The HTTP surface: `/graphql`, the download route, `/media` (public URLs on fs),
//! health checks and metrics. [`router`] builds it; [`serve`] runs it until
//! shutdown, then gives in-flight requests `SHUTDOWN_GRACE_SECONDS` to finish.

mod batch_json;
mod connections;
mod download;
mod drain;
mod extract;
mod graphql;
mod graphql_response;
mod health;
mod json_body;
mod multipart_body;
mod observe;
mod playground;
pub mod slow_body;
mod uploads;

pub(crate) use playground::is_loopback_name;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::SharedApp;
use crate::error::AppError;
use crate::graphql::{AppSchema, ParsedQueries};

/// What every handler receives.
#[derive(Clone)]
pub struct AppState {
    pub app: SharedApp,
    pub schema: AppSchema,
    pub parsed_queries: std::sync::Arc<ParsedQueries>,
    /// What `/readyz` and `/metrics` last read.
    pub checks: std::sync::Arc<health::Checks>,
}

/// Every route; `/metrics` too unless `METRICS_ADDR` gives it a listener of its own.
pub fn router(app: SharedApp) -> Router {
    let schema = crate::graphql::schema(app.clone());
    let cors = cors_layer(&app.config.cors_allowed_origins);
    let metrics_here = app.config.metrics_addr.is_none();
    let state = AppState {
        app: app.clone(),
        schema,
        parsed_queries: Default::default(),
        checks: Default::default(),
    };
    let mut router = Router::new()
        .route("/graphql", get(graphql::handle).post(graphql::handle))
        .route("/graphql/assets/{name}", get(playground::asset))
        .route("/api/attachments/{id}/download", get(download::by_id))
        .route("/api/uploads/{id}", put(uploads::put))
        .route("/media/{*key}", get(download::by_key))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if metrics_here {
        router = router.route("/metrics", get(health::metrics));
    }
    let router = router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
        .layer(catch_panics())
        .layer(axum::middleware::from_fn(one_host));
    // Inside the observer: a preflight is logged and counted like any request.
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(app, observe::request))
}

/// A path that no route serves: 404 with a GraphQL-shaped body, like every other
/// refusal of attache's (axum's own is empty).
async fn no_route() -> axum::response::Response {
    AppError::NotFound(
        "nothing is served at this path: the routes are /graphql, \
         /api/attachments/{id}/download, /api/uploads/{id}, /media/{key}, /healthz, \
         /readyz and /metrics"
            .into(),
    )
    .into_response()
}

/// A route asked with a method it does not take: 405, the methods it takes in
/// `Allow` (set by the router), and a GraphQL-shaped body.
async fn wrong_method() -> axum::response::Response {
    let err =
        AppError::bad_input("this route does not take this method: `Allow` lists those it takes");
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(err.graphql_body()),
    )
        .into_response()
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a `Host`, or with several, is
/// answered 400 (its body unread, so the connection closes).
async fn one_host(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if request.version() == axum::http::Version::HTTP_11 && hosts != 1 {
        let err = AppError::bad_input("an HTTP/1.1 request names its host in one `Host` header");
        return drain::closing(err.into_response());
    }
    next.run(request).await
}

/// Answers a request whose handler panicked as an internal error, logged with the
/// panic's message. A panic is a bug of ours, yet it must cost its client one
/// request, not the connection (hyper would drop it without an answer).
fn catch_panics() -> CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> axum::response::Response>
{
    CatchPanicLayer::custom(panicked)
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> axum::response::Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    AppError::Internal(anyhow::anyhow!("a request's handler panicked: {what}")).into_response()
}

/// The router of the `METRICS_ADDR` listener: `/metrics` and `/healthz`.
fn metrics_router(app: SharedApp) -> Router {
    let state = AppState {
        schema: crate::graphql::schema(app.clone()),
        app,
        parsed_queries: Default::default(),
        checks: Default::default(),
    };
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .with_state(state)
}

/// CORS for the configured origins only; none configured, no CORS headers at all.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    // Checked at startup (`config::cors_origin`): nothing is dropped here.
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| crate::config::cors_origin(origin).ok())
        .filter_map(|origin| HeaderValue::from_str(&origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::HEAD,
                axum::http::Method::PUT,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::RANGE,
                header::IF_NONE_MATCH,
                header::IF_MATCH,
                header::IF_RANGE,
                header::IF_MODIFIED_SINCE,
                header::IF_UNMODIFIED_SINCE,
                header::HeaderName::from_static("apollo-require-preflight"),
                header::HeaderName::from_static("x-apollo-operation-name"),
                header::HeaderName::from_static(observe::REQUEST_ID),
            ])
            // What a browser app reads: the busy server's wait, the id to report,
            // the scheme a 401 asks for.
            .expose_headers([
                header::ACCEPT_RANGES,
                header::CONTENT_DISPOSITION,
                header::CONTENT_RANGE,
                header::ETAG,
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                header::HeaderName::from_static(observe::REQUEST_ID),
            ])
            // Browsers keep a preflight's answer this long (Chromium caps it at 2 h).
            .max_age(std::time::Duration::from_secs(7200)),
    )
}

/// Whether the request is a browser's navigation (`Accept` names `text/html`), not
/// a script's or an `<img>`'s fetch.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// Serves `app` on `listener` (and `/metrics` on `metrics_listener`, bound to
/// `METRICS_ADDR` when set) until `shutdown` resolves: then no new connection is
/// accepted, busy keep-alive connections close after their response, and in-flight
/// requests have `SHUTDOWN_GRACE_SECONDS` to finish before the rest are cut.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    app: SharedApp,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = std::time::Duration::from_secs(app.config.shutdown_grace_seconds);
    let draining = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let (app, draining) = (app.clone(), draining.clone());
        async move {
            shutdown.await;
            app.draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                grace_seconds = grace.as_secs(),
                "shutting down: finishing requests in flight"
            );
            draining.cancel();
        }
    });
    let limits = &app.config.connections;
    let main = connections::serve(listener, router(app.clone()), limits, draining.clone());
    let metrics = async {
        if let Some(listener) = metrics_listener {
            let router = metrics_router(app.clone());
            connections::serve(listener, router, limits, draining.clone()).await;
        }
    };
    tokio::select! {
        ((), ()) = futures::future::join(main, metrics) => Ok(()),
        () = async { draining.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("the shutdown grace period is over; requests still running are cut");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_answered_as_an_internal_error() {
        use tower::ServiceExt;
        async fn bug() -> &'static str {
            panic!("index out of bounds")
        }
        let router = Router::new().route("/bug", get(bug)).layer(catch_panics());
        let request = axum::http::Request::get("/bug")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = router.oneshot(request).await.expect("an answer");
        assert_eq!(
            response.status(),
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            "INTERNAL_SERVER_ERROR"
        );
    }
}
