//! `PUT /api/uploads/{id}`: attache's signed upload route, the fs counterpart of a
//! presigned S3 PUT for direct uploads. Streams the body into storage, held to the
//! pace of `BODY_IDLE_TIMEOUT_SECONDS` and `MIN_BODY_BYTES_PER_SECOND`, and whole
//! within `BODY_TIMEOUT_SECONDS` of waiting like a GraphQL body (a direct upload is
//! no larger than one): a trickled PUT holds a connection that long at most. It
//! takes one of the `MAX_CONCURRENT_UPLOADS` slots, and a body announced larger
//! than the upload's declared size is refused before a byte is written.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use crate::attachments::direct::Receiving;
use crate::auth::link::{LinkPurpose, LinkQuery};
use crate::http::AppState;
use crate::http::drain::{closing, refused_early};
use crate::http::slow_body::paced;

pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(link): Query<LinkQuery>,
    request: Request,
) -> Response {
    let app = &state.app;
    let announced = request.body().size_hint().exact();
    let found = match app.links.authorize(LinkPurpose::Upload, &id, &link) {
        Ok((id, tenant)) => Receiving::find(app, id, &tenant, announced).await,
        Err(err) => Err(err),
    };
    // Refused before the body is read: a client still sending sees the answer.
    let receiving = match found {
        Ok(receiving) => receiving,
        Err(err) => return refused_early(request, err.into_response()).await,
    };
    // The body passes through memory in chunks: it takes an upload slot like a
    // GraphQL upload, or is answered "busy" with its body unread.
    let _permit = match app.upload_permit().await {
        Ok(permit) => permit,
        Err(err) => return closing(err.into_response()),
    };
    let body = paced(
        request.into_body().into_data_stream(),
        &app.config.connections,
    );
    match receiving.store(app, body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}
