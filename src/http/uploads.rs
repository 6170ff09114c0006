//! `PUT /api/uploads/{id}`: attache's signed upload route, the fs counterpart of a
//! presigned S3 PUT for direct uploads. Streams the body into storage, held to the
//! pace of `BODY_IDLE_TIMEOUT_SECONDS` and `MIN_BODY_BYTES_PER_SECOND`, and whole
//! within `BODY_TIMEOUT_SECONDS` of waiting like a GraphQL body (a direct upload is
//! no larger than one): a trickled PUT holds a connection that long at most. It
//! takes one of the `MAX_CONCURRENT_UPLOADS` slots, and a body announced larger
//! than the upload's declared size is refused before a byte is written.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use crate::attachments::direct::Receiving;
use crate::auth::link::{LinkPurpose, LinkQuery};
use crate::http::AppState;
use crate::http::drain::{closing, refused_early};
use crate::http::extract::{PathOf, QueryOf};
use crate::http::observe::{answer_to_gone, left_mid_body};
use crate::http::slow_body::{body_too_slow, is_too_slow, paced};

pub async fn put(
    State(state): State<AppState>,
    PathOf(id): PathOf,
    QueryOf(link): QueryOf<LinkQuery>,
    request: Request,
) -> Response {
    let app = &state.app;
    let announced = request.body().size_hint().exact();
    let found = match app.links.authorize(LinkPurpose::Upload, &id, &link) {
        Ok((id, tenant)) => {
            crate::http::observe::acting_for(&tenant);
            let receiving = Receiving::find(app, id, &tenant, announced).await;
            receiving.map(|receiving| (receiving, tenant))
        }
        Err(err) => Err(err),
    };
    // Refused before the body is read: a client still sending sees the answer.
    let (receiving, tenant) = match found {
        Ok(found) => found,
        Err(err) => return refused_early(request, err.into_response()).await,
    };
    // The body passes through memory in chunks: it takes an upload slot like a
    // GraphQL upload, or is answered "busy" with its body unread.
    let _permit = match app.upload_permit(tenant.as_str()).await {
        Ok(permit) => permit,
        Err(err) => return closing(err.into_response()),
    };
    // A body cut off for its pace is 408, and one its client left is summed up as
    // gone, as on /graphql: the storage error it becomes keeps only its text, so the
    // cut is noted on its way.
    let cut = std::sync::Arc::new(std::sync::OnceLock::new());
    let noted = std::sync::Arc::clone(&cut);
    let body = paced(
        request.into_body().into_data_stream(),
        &app.config.connections,
    );
    let body = futures::TryStreamExt::inspect_err(body, move |err: &axum::Error| {
        if is_too_slow(err) {
            let _ = noted.set(BodyCut::TooSlow(err.to_string()));
        } else if left_mid_body(err) {
            let _ = noted.set(BodyCut::ClientLeft);
        }
    });
    match (receiving.store(app, body).await, cut.get()) {
        (Ok(()), _) => StatusCode::OK.into_response(),
        (Err(_), Some(BodyCut::TooSlow(message))) => body_too_slow(message),
        (Err(_), Some(BodyCut::ClientLeft)) => answer_to_gone(),
        (Err(err), None) => err.into_response(),
    }
}

/// Why a body ended before its end.
enum BodyCut {
    /// Too slow for the pace; the message says which bound.
    TooSlow(String),
    /// Its client closed the connection.
    ClientLeft,
}
