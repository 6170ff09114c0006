//! Every request gets an id (the client's `x-request-id` when it is a sane one),
//! returned in the response and carried by every log line of the request, one
//! summary line when it ends, and its count and latency in the metrics under the
//! route's template, never the raw path (which holds ids and signatures).

use std::sync::atomic::Ordering;
use std::time::Instant;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::app::SharedApp;
use crate::error::GraphqlCodes;

pub const REQUEST_ID: &str = "x-request-id";

/// The status a request is summed up with when its client left before the answer
/// (nginx's "client closed request"): none was sent, but an operator counts it.
pub const CLIENT_CLOSED: u16 = 499;

pub async fn request(State(app): State<SharedApp>, request: Request, next: Next) -> Response {
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
    // The peer's address: behind a proxy, the proxy's (its access log has the client).
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|peer| tracing::field::display(peer.0.ip()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        client,
        tenant = tracing::field::Empty,
    );
    crate::telemetry::request_in_flight(true);
    let mut summary = Summary {
        span: span.clone(),
        route,
        method,
        started: Instant::now(),
        summed_up: false,
        app,
    };
    let mut response = next.run(request).instrument(span).await;
    if response.extensions().get::<ClientLeft>().is_some() {
        summary.left();
    } else {
        let codes = response
            .extensions()
            .get::<GraphqlCodes>()
            .map(|codes| codes.0.as_str());
        summary.answered(response.status().as_u16(), codes);
    }
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

/// Marks the answer to a request whose client closed the connection while it still
/// sent its body: nobody reads the answer, and the request is summed up as
/// [`CLIENT_CLOSED`], not as the client's mistake.
#[derive(Clone, Copy)]
pub struct ClientLeft;

/// The answer to a body cut short by its client (the connection ended or broke
/// before the bytes it announced), or `None` for another body error.
pub fn client_left(error: &(dyn std::error::Error + 'static)) -> Option<Response> {
    left_mid_body(error).then(answer_to_gone)
}

/// The answer nobody reads, to a client that left mid-body.
pub fn answer_to_gone() -> Response {
    let mut response = (StatusCode::BAD_REQUEST, "the request body ended early").into_response();
    response.extensions_mut().insert(ClientLeft);
    response
}

/// Whether a body error says its client left: the connection ended or broke before
/// the bytes it announced.
pub fn left_mid_body(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut source = Some(error);
    while let Some(current) = source {
        let gone = current
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || current.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                )
            });
        if gone {
            return true;
        }
        source = current.source();
    }
    false
}

/// A request's summary line and metrics. Dropped before it is summed up when the
/// client leaves while the handler still works (the server drops the handler's
/// future): it is then summed up as [`CLIENT_CLOSED`], so the slow requests of an
/// incident, which clients and load balancers give up on, are not the ones missing
/// from the logs.
struct Summary {
    span: tracing::Span,
    route: String,
    method: &'static str,
    started: Instant,
    summed_up: bool,
    app: SharedApp,
}

impl Summary {
    fn answered(&mut self, status: u16, codes: Option<&str>) {
        self.summed_up = true;
        let elapsed = self.started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1e3;
        self.span.in_scope(|| match codes {
            Some(codes) => {
                tracing::info!(status, elapsed_ms, graphql_errors = codes, "request")
            }
            None => tracing::info!(status, elapsed_ms, "request"),
        });
        crate::telemetry::http_request(&self.route, self.method, status, elapsed);
    }

    /// The client left before the answer; during a shutdown the server may also
    /// have cut the request at the end of its grace.
    fn left(&mut self) {
        self.summed_up = true;
        let elapsed = self.started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1e3;
        let message = match self.app.draining.load(Ordering::Relaxed) {
            false => "request ended unanswered: the client closed the connection",
            true => {
                "request ended unanswered during the shutdown: the client closed the \
                 connection, or SHUTDOWN_GRACE_SECONDS ran out"
            }
        };
        self.span
            .in_scope(|| tracing::info!(status = CLIENT_CLOSED, elapsed_ms, "{message}"));
        crate::telemetry::http_request(&self.route, self.method, CLIENT_CLOSED, elapsed);
    }
}

impl Drop for Summary {
    fn drop(&mut self) {
        if !self.summed_up {
            self.left();
        }
        crate::telemetry::request_in_flight(false);
    }
}
