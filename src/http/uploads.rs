//! `PUT /api/uploads/{id}`: attache's signed upload route, the fs counterpart of a
//! presigned S3 PUT for direct uploads. Streams the body into storage.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use crate::attachments::direct;
use crate::error::AppError;
use crate::http::AppState;

#[derive(Deserialize)]
pub struct UploadParams {
    expires: i64,
    signature: String,
}

pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<UploadParams>, QueryRejection>,
    body: Body,
) -> Response {
    let Ok(Query(params)) = params else {
        return AppError::Forbidden("this route needs a signed upload link".into()).into_response();
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return AppError::NotFound("no such direct upload".into()).into_response();
    };
    let stream = body.into_data_stream();
    match direct::receive(&state.app, id, params.expires, &params.signature, stream).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}
