//! `GET`/`POST /graphql`: CSRF rule, bearer token, body limit (413 before parsing),
//! bounded concurrent uploads, then the executor. GraphiQL for browsers.

use async_graphql::http::{GraphiQLSource, MultipartOptions};
use async_graphql::{BatchRequest, ParseRequestError};
use async_graphql_axum::GraphQLResponse;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::error::AppError;
use crate::graphql::Caller;
use crate::http::AppState;

/// Requests up to this size skip the upload queue: queries and small mutations
/// never wait behind large uploads.
const SMALL_REQUEST_BYTES: u64 = 64 * 1024;

pub async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers();
    if request.method() == Method::GET && wants_html(headers) && request.uri().query().is_none() {
        return Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response();
    }
    if needs_preflight_header(request.method(), headers) {
        return (
            StatusCode::BAD_REQUEST,
            "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF). \
             Send a non-empty `apollo-require-preflight` or `x-apollo-operation-name` header, \
             or use the content type application/json.\n",
        )
            .into_response();
    }
    let caller = authenticate(&state, headers);
    let limit = state.app.config.limits.request_bytes();
    let length = content_length(headers);
    if length.is_some_and(|length| length > limit) {
        return too_large(limit);
    }
    let _permit = if request.method() == Method::POST
        && length.is_none_or(|length| length > SMALL_REQUEST_BYTES)
    {
        match state.app.upload_permits.acquire().await {
            Ok(permit) => Some(permit),
            Err(_) => {
                return AppError::Internal(anyhow::anyhow!("upload queue closed")).into_response();
            }
        }
    } else {
        None
    };
    let batch = match read_request(
        request,
        length,
        limit,
        state.app.config.limits.max_batch_files,
    )
    .await
    {
        Ok(batch) => batch,
        Err(response) => return *response,
    };
    let response = state.schema.execute_batch(batch.data(caller)).await;
    let mut response = GraphQLResponse::from(response).into_response();
    // Apollo's convention: GraphQL errors travel as HTTP 200 with application/json.
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Caller {
    match crate::http::bearer_token(headers) {
        None => Caller::Anonymous,
        Some(token) => match state.app.verifier.verify(token) {
            Ok(principal) => Caller::Verified(principal),
            Err(err) => Caller::Refused(err.to_string()),
        },
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// Apollo Server's CSRF prevention: requests a browser may send without a preflight
/// must carry a header that only scripts can set.
fn needs_preflight_header(method: &Method, headers: &HeaderMap) -> bool {
    let simple_content_type = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    {
        None => true,
        Some(value) => {
            let essence = value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            matches!(
                essence.as_str(),
                "multipart/form-data" | "application/x-www-form-urlencoded" | "text/plain"
            )
        }
    };
    let is_simple = method == Method::GET || simple_content_type;
    let has_header = ["apollo-require-preflight", "x-apollo-operation-name"]
        .iter()
        .any(|name| headers.get(*name).is_some_and(|value| !value.is_empty()));
    is_simple && !has_header
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

fn too_large(limit: u64) -> Response {
    let error = AppError::PayloadTooLarge(format!(
        "the request body exceeds {limit} bytes (MAX_REQUEST_BYTES)"
    ));
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(error.graphql_body()),
    )
        .into_response()
}

fn bad_request(message: String) -> Box<Response> {
    let error = AppError::BadUserInput(message);
    Box::new((StatusCode::BAD_REQUEST, axum::Json(error.graphql_body())).into_response())
}

/// Parses the request: the query string of a GET, a JSON body read once and parsed
/// in place, or a multipart body streamed to temporary files.
async fn read_request(
    request: Request,
    length: Option<u64>,
    limit: u64,
    max_files: u64,
) -> Result<BatchRequest, Box<Response>> {
    if request.method() == Method::GET {
        return async_graphql::http::parse_query_string(request.uri().query().unwrap_or_default())
            .map(BatchRequest::Single)
            .map_err(|err| bad_request(format!("invalid GraphQL request: {err}")));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = Limited::new(request.into_body(), limit_usize);
    let is_multipart = content_type
        .as_deref()
        .is_some_and(|value| value.to_ascii_lowercase().starts_with("multipart/"));
    if is_multipart {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream).compat();
        let options = MultipartOptions::default()
            .max_file_size(limit_usize)
            .max_num_files(usize::try_from(max_files).unwrap_or(usize::MAX));
        return async_graphql::http::receive_batch_body(content_type, reader, options)
            .await
            .map_err(|err| parse_failure(&err, limit));
    }
    // One buffer of the announced size: no chunk list plus a contiguous copy.
    let capacity = usize::try_from(length.unwrap_or(0))
        .unwrap_or(0)
        .min(limit_usize);
    let mut bytes = Vec::with_capacity(capacity);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Box::new(too_large(limit)));
            }
            Err(err) => return Err(bad_request(format!("cannot read the request body: {err}"))),
        }
    }
    serde_json::from_slice::<BatchRequest>(&bytes)
        .map_err(|err| bad_request(format!("invalid GraphQL request: {err}")))
}

fn parse_failure(err: &ParseRequestError, limit: u64) -> Box<Response> {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    let mut over_limit = matches!(err, ParseRequestError::PayloadTooLarge);
    while let Some(current) = source {
        over_limit |= current.is::<LengthLimitError>()
            || current.to_string().contains("length limit exceeded");
        source = current.source();
    }
    if over_limit {
        Box::new(too_large(limit))
    } else {
        bad_request(format!("invalid GraphQL request: {err}"))
    }
}
