//! `PUT /api/uploads/{id}`: attache's signed upload route, the fs counterpart of a
//! presigned S3 PUT for direct uploads. Streams the body into storage, held to the
//! pace of `BODY_IDLE_TIMEOUT_SECONDS` and `MIN_BODY_BYTES_PER_SECOND`, and whole
//! within `BODY_TIMEOUT_SECONDS` of waiting like a GraphQL body (a direct upload is
//! no larger than one): a trickled PUT holds a connection that long at most.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::attachments::direct;
use crate::auth::link::{LinkPurpose, LinkQuery};
use crate::http::AppState;
use crate::http::slow_body::paced;

pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(link): Query<LinkQuery>,
    body: Body,
) -> Response {
    let app = &state.app;
    let received = match app.links.authorize(LinkPurpose::Upload, &id, &link) {
        Ok((id, tenant)) => {
            let body = paced(body.into_data_stream(), &app.config.connections);
            direct::receive(app, id, &tenant, body).await
        }
        Err(err) => Err(err),
    };
    match received {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}
