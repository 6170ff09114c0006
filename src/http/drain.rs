//! What is read of a request body that is refused: a bounded amount, dropped, so
//! that a client still sending sees the answer instead of a reset connection, and
//! the connection then closes when its unread bytes would be taken for the next
//! request.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use http_body::Body as _;

/// Most bytes of a refused body read and dropped, so the client, still sending,
/// sees the answer instead of a reset connection (what nginx's lingering close does).
pub(super) fn drain_limit(limit: u64) -> u64 {
    limit.saturating_mul(2).max(DRAIN_AT_LEAST)
}

const DRAIN_AT_LEAST: u64 = 64 * 1024 * 1024;
/// How long a refused body may keep the connection before it is closed anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a request refused before its body is read (CSRF, no valid token) may still
/// send, and for how long, so that a client sending a small body sees the answer
/// rather than a reset connection: a bounded cost, and no upload slot. A body that
/// sends nothing for [`REFUSED_DRAIN_TIMEOUT`] is not waited for any longer.
pub(super) const REFUSED_DRAIN_BYTES: u64 = 1024 * 1024;
pub(super) const REFUSED_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a request refused from its headers alone (CSRF, no valid token or link),
/// and the connection closes. A body it announced of at most [`DRAIN_AT_LEAST`] is
/// read to its end first, within [`DRAIN_TIMEOUT`] and while it keeps coming, and
/// dropped: a proxy such as nginx writes the whole body before it reads the answer,
/// and a connection closed under it became its HTML 502 instead of attache's
/// refusal. Any other body: at most [`REFUSED_DRAIN_BYTES`] within
/// [`REFUSED_DRAIN_TIMEOUT`]. Either way nothing is parsed or kept, and no upload
/// slot is taken.
pub(super) async fn refused_early(request: Request, response: Response) -> Response {
    if !awaits_continue(&request) {
        let (most, timeout) = match request.body().size_hint().exact() {
            Some(announced) if announced <= DRAIN_AT_LEAST => (announced, DRAIN_TIMEOUT),
            _ => (REFUSED_DRAIN_BYTES, REFUSED_DRAIN_TIMEOUT),
        };
        let _ = tokio::time::timeout(timeout, drain(request, most)).await;
    }
    closing(response)
}

/// Reads and drops up to `max` bytes of the body (within [`DRAIN_TIMEOUT`]), then
/// answers `response`; nothing of the body is kept.
pub(super) async fn after_draining(request: Request, max: u64, response: Response) -> Response {
    if awaits_continue(&request) {
        return closing(response);
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(request, max)).await;
    response
}

/// A client that sent `Expect: 100-continue` waits for leave before it sends its
/// body: a refusal is its final answer at once (RFC 9110 §10.1.1), and nothing is
/// drained, as reading the body would make hyper send `100 Continue` and invite
/// the bytes that are then thrown away.
fn awaits_continue(request: &Request) -> bool {
    request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and drops the body until its end, past `max` bytes, or a pause of
/// [`REFUSED_DRAIN_TIMEOUT`]: a client that waits for the answer before it sends
/// more gets it then.
async fn drain(request: Request, max: u64) {
    let mut chunks = request.into_body().into_data_stream();
    let mut received: u64 = 0;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(REFUSED_DRAIN_TIMEOUT, chunks.next()).await
    {
        received += chunk.len() as u64;
        if received > max {
            break;
        }
    }
}

/// A refusal answered without reading the body: the client must not reuse the
/// connection, whose unread bytes would be taken for the next request.
pub(super) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
