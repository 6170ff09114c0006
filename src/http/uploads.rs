//! `PUT /api/uploads/{id}`: attache's signed upload route, the fs counterpart of a
//! presigned S3 PUT for direct uploads. Streams the body into storage.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::attachments::direct;
use crate::auth::link::{LinkPurpose, LinkQuery};
use crate::http::AppState;

pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(link): Query<LinkQuery>,
    body: Body,
) -> Response {
    let app = &state.app;
    let received = match app.links.authorize(LinkPurpose::Upload, &id, &link) {
        Ok((id, tenant)) => direct::receive(app, id, &tenant, body.into_data_stream()).await,
        Err(err) => Err(err),
    };
    match received {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}
