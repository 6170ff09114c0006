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

/// The status a request is summed up with when its client left before the answer
/// (nginx's "client closed request"): no status was sent, but an operator counts it.
pub const CLIENT_CLOSED: u16 = 499;

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
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        tenant = tracing::field::Empty,
    );
    let mut summary = Summary {
        span: span.clone(),
        route,
        method,
        started: Instant::now(),
        answered: false,
    };
    let mut response = next.run(request).instrument(span).await;
    let codes = response
        .extensions()
        .get::<GraphqlCodes>()
        .map(|codes| codes.0.as_str());
    summary.answered(response.status().as_u16(), codes);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Names the tenant a request acts for in every later line of its log, its summary
/// included: once its token or signed link is checked, never before.
pub fn acting_for(tenant: &crate::ids::SafeId) {
    tracing::Span::current().record("tenant", tracing::field::display(tenant.as_str()));
}

/// A request's summary line and metrics. Dropped unanswered when the client leaves
/// while the handler still works (the server drops the handler's future): it is
/// then summed up as [`CLIENT_CLOSED`], so the slow requests of an incident, which
/// clients and load balancers give up on, are not the ones missing from the logs.
struct Summary {
    span: tracing::Span,
    route: String,
    method: &'static str,
    started: Instant,
    answered: bool,
}

impl Summary {
    fn answered(&mut self, status: u16, codes: Option<&str>) {
        self.answered = true;
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.span.in_scope(|| match codes {
            Some(codes) => {
                tracing::info!(status, elapsed_ms, graphql_errors = codes, "request")
            }
            None => tracing::info!(status, elapsed_ms, "request"),
        });
        self.count(status);
    }

    fn count(&self, status: u16) {
        crate::telemetry::http_request(&self.route, self.method, status, self.started.elapsed());
    }
}

impl Drop for Summary {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.span.in_scope(|| {
            tracing::info!(
                status = CLIENT_CLOSED,
                elapsed_ms,
                "request ended unanswered: the client closed the connection"
            )
        });
        self.count(CLIENT_CLOSED);
    }
}
