//! Every request gets an id (the client's `x-request-id` when it is a sane one),
//! returned in the response and carried by every log line of the request, one
//! summary line when it ends, and its count and latency in the metrics under the
//! route's template, never the raw path (which holds ids and signatures).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::GraphqlCodes;

pub const REQUEST_ID: &str = "x-request-id";

pub async fn request(request: Request, next: Next) -> Response {
    let id = crate::telemetry::request_id(
        request
            .headers()
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok()),
    );
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = crate::telemetry::method_name(request.method().as_str());
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let codes = response
        .extensions()
        .get::<GraphqlCodes>()
        .map(|codes| codes.0.as_str());
    span.in_scope(|| match codes {
        Some(codes) => tracing::info!(
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            graphql_errors = codes,
            "request"
        ),
        None => tracing::info!(status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request"),
    });
    crate::telemetry::http_request(&route, method, status, elapsed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
