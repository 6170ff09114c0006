//! `GET`/`POST /graphql`, in the order that keeps refusals cheap: CSRF rule, then the
//! bearer token (before a byte of the body is read, a slot taken or a document
//! parsed), the body limit (413 before parsing), a bounded upload slot, the body read
//! at a minimum pace, the document bounds, then the executor. GraphiQL for browsers.

use async_graphql::parser::types::DocumentOperations;
use async_graphql::{BatchRequest, BatchResponse};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::auth::Principal;
use crate::config::ConnectionLimits;
use crate::error::{AppError, GraphqlCodes};
use crate::graphql::Prepared;
use crate::graphql::large_strings::{self, LargeStrings};
use crate::http::batch_json;
use crate::http::drain::{after_draining, closing, drain_limit, refused_early};
use crate::http::graphql_response::{Answer, coded};
use crate::http::json_body::JsonBody;
use crate::http::multipart_body::{self, PartHeadTooLong, Read, Rest};
use crate::http::slow_body::{body_too_slow, is_too_slow, paced};
use crate::http::{AppState, wants_html};

/// Requests up to this size skip the upload queue: queries and small mutations
/// never wait behind large uploads.
const SMALL_REQUEST_BYTES: u64 = 64 * 1024;

pub async fn handle(state: State<AppState>, request: Request) -> Response {
    let answer = Answer::from_headers(request.headers());
    let mut response = respond(state, request, answer).await;
    if response.extensions().get::<OperationsCounted>().is_none()
        && let Some(codes) = response.extensions().get::<GraphqlCodes>()
    {
        // Refused before it ran (no token, a bound, its scope, a body too large):
        // counted too, or a key rotation that locks every client out shows nowhere
        // in the metrics (the HTTP status is 200).
        let first = codes.0.split(',').next().unwrap_or_default();
        crate::telemetry::graphql_refusal(first);
    }
    answer.retype(&mut response);
    // An answer is for one bearer at one moment (its URLs are signed), and its form
    // (JSON, GraphQL's media type or the playground) depends on `Accept`.
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.append(header::VARY, HeaderValue::from_static("accept"));
    response
}

async fn respond(State(state): State<AppState>, request: Request, answer: Answer) -> Response {
    let headers = request.headers();
    if reads_query(request.method()) && wants_html(headers) && request.uri().query().is_none() {
        // HTTP/1.1 names the host in `Host`, HTTP/2 in the URI's authority.
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        let host = host.or(request
            .uri()
            .authority()
            .map(|authority| authority.as_str()));
        return crate::http::playground::page_with(state.app.dev_minter.as_ref(), host);
    }
    if needs_preflight_header(request.method(), headers) {
        // A GET has no content type to change: only the header lets it through.
        let fix = match reads_query(request.method()) {
            true => {
                "A GET must carry a non-empty `apollo-require-preflight` (or \
                     `x-apollo-operation-name`) header, such as `Apollo-Require-Preflight: true`."
            }
            false => {
                "Send a non-empty `apollo-require-preflight` or `x-apollo-operation-name` \
                      header, or use the content type application/json."
            }
        };
        let err = AppError::bad_input(format!(
            "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF). {fix}"
        ));
        return refused_early(request, err.into_response()).await;
    }
    let principal = match authenticate(&state, headers) {
        Ok(principal) => principal,
        Err(err) => return refused_early(request, answer.refusal(&err)).await,
    };
    crate::http::observe::acting_for(&principal.tenant);
    if request.method() == Method::POST && !is_graphql_body(headers) {
        let err = AppError::UnsupportedMediaType(
            "a GraphQL request body is application/json (or multipart/form-data for files)".into(),
        );
        return refused_early(request, err.into_response()).await;
    }
    let limit = state.app.config.limits.request_bytes();
    let length = content_length(headers);
    if length.is_some_and(|length| length > limit) {
        let refused = too_large(limit);
        return match length.is_some_and(|length| length <= drain_limit(limit)) {
            true => after_draining(request, drain_limit(limit), refused).await,
            false => refused,
        };
    }
    let slot = if request.method() == Method::POST
        && length.is_none_or(|length| length > SMALL_REQUEST_BYTES)
    {
        match state.app.upload_permit(principal.tenant.as_str()).await {
            Ok(permit) => Some(permit),
            // Answered at once: the body stays unread and the connection closes.
            Err(err) => return closing(err.into_response()),
        }
    } else {
        None
    };
    let over_query_string = reads_query(request.method());
    // A client that trickles its body (files included) is cut off once it has been
    // waited for BODY_TIMEOUT_SECONDS ([`paced`]): no permit is held for ever.
    let (mut batch, rest) = match read_request(request, length, limit, &state.app, answer).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    if batch
        .iter_mut()
        .any(|request| request.query.trim().is_empty())
    {
        let err =
            AppError::bad_input("the request has no `query`: send the GraphQL document in it");
        return unread(rest, answer.malformed(&err)).await;
    }
    let (mut batch, prepared) = match prepare(&state, batch).await {
        Ok(prepared) => prepared,
        Err(err) => return unread(rest, answer.refusal(&err)).await,
    };
    if over_query_string && prepared.mutates {
        return answer.mutation_over_get();
    }
    if let Err(err) = prepared
        .needs()
        .try_for_each(|access| principal.require(access))
    {
        return unread(rest, answer.refusal(&err)).await;
    }
    let names: Vec<Option<String>> = batch.iter_mut().map(operation_name).collect();
    // The slot stays held here until the answer (the rest of a multipart body is
    // read meanwhile), and by every store the request starts until it ends.
    let batch = match &slot {
        Some(slot) => batch.data(principal).data(slot.clone()),
        None => batch.data(principal),
    };
    let Some(mut rest) = rest else {
        let response = coded(state.schema.execute_batch(batch).await);
        return executed(answer, &names, response);
    };
    let parts = rest.parts();
    let execute = async {
        let response = state
            .schema
            .execute_batch(batch.data(Arc::clone(&parts)))
            .await;
        parts.executed();
        response
    };
    let (response, read) = tokio::join!(execute, rest.run());
    let response = executed(answer, &names, coded(response));
    match read {
        Read::Whole => response,
        Read::Unfinished => unread(Some(rest), response).await,
    }
}

/// The name of the operation a request runs, for its series: the one it gives, or
/// the name of its document's only operation (curl and GraphiQL send no
/// `operationName` for one named operation).
fn operation_name(request: &mut async_graphql::Request) -> Option<String> {
    if let Some(name) = &request.operation_name {
        return Some(name.clone());
    }
    match &request.parsed_query().ok()?.operations {
        DocumentOperations::Multiple(operations) if operations.len() == 1 => {
            operations.keys().next().map(ToString::to_string)
        }
        _ => None,
    }
}

/// Marks an answer whose operations [`executed`] counted: [`handle`] counts the
/// others as refused.
#[derive(Clone, Copy)]
struct OperationsCounted;

/// The executor's answer, its operations counted.
fn executed(answer: Answer, names: &[Option<String>], response: BatchResponse) -> Response {
    count_operations(names, &response);
    let mut response = answer.executed(response);
    response.extensions_mut().insert(OperationsCounted);
    response
}

/// A response to a multipart request whose files were not all read: after a
/// bounded drain of the rest of its body ([`Rest::drain`]: a short body is read to
/// its end, a long one is not), and the connection closes.
async fn unread(rest: Option<Rest>, response: Response) -> Response {
    if let Some(rest) = rest {
        rest.drain().await;
        return closing(response);
    }
    response
}

/// Whether a POST's content type is one a GraphQL request comes in: JSON (any
/// `+json` too) or multipart (GraphQL multipart request spec).
fn is_graphql_body(headers: &HeaderMap) -> bool {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase());
    essence.is_some_and(|essence| {
        essence == "application/json"
            || essence.ends_with("+json")
            || essence == "multipart/form-data"
    })
}

/// Each operation of the batch, by name and outcome: `OK`, or its first error's code.
fn count_operations(names: &[Option<String>], response: &BatchResponse) {
    let responses = match response {
        BatchResponse::Single(response) => std::slice::from_ref(response),
        BatchResponse::Batch(responses) => responses.as_slice(),
    };
    for (name, response) in names.iter().zip(responses) {
        let code = response.errors.first().map(|error| {
            error
                .extensions
                .as_ref()
                .and_then(|extensions| extensions.get("code"))
                .and_then(|code| match code {
                    async_graphql::Value::String(code) => Some(code.as_str()),
                    _ => None,
                })
                .unwrap_or(crate::error::VALIDATION_FAILED)
        });
        let ran = code != Some(crate::error::VALIDATION_FAILED);
        crate::telemetry::graphql_operation(name.as_deref(), code.unwrap_or("OK"), ran);
    }
}

/// The caller of a request, from its headers alone: UNAUTHENTICATED for a missing
/// or invalid token, before anything else is spent on it (SPEC 5 and 6).
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, AppError> {
    let token = crate::http::bearer_token(headers).ok_or_else(|| {
        AppError::Unauthenticated("an `Authorization: Bearer <token>` header is required".into())
    })?;
    state.app.verifier.verify(token)
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
    let is_simple = reads_query(method) || simple_content_type;
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
    // The rest of the body stays unread: the client must not reuse this connection.
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Query texts longer than this are scanned, parsed and measured on a blocking
/// thread: at some 10 MB a second, a text as long as a body may be (14 MB) holds a
/// core for over a second, and the runtime's workers, one per core, serve every
/// other client meanwhile, `/healthz` included. Shorter ones take less than the
/// hand-over would.
const PREPARED_ASIDE_BYTES: usize = 64 * 1024;

/// The batch with its documents parsed and checked against the bounds
/// ([`ParsedQueries::prepare`](crate::graphql::ParsedQueries::prepare)).
async fn prepare(
    state: &AppState,
    batch: BatchRequest,
) -> Result<(BatchRequest, Prepared), AppError> {
    let queries = Arc::clone(&state.parsed_queries);
    let app = Arc::clone(&state.app);
    let run = move |mut batch: BatchRequest| {
        let (limits, config) = (&app.config.limits, &app.config.query_limits);
        let max_argument_bytes = limits.request_bytes();
        queries
            .prepare(
                &mut batch,
                config,
                limits.max_batch_files,
                max_argument_bytes,
            )
            .map(|prepared| (batch, prepared))
    };
    let text: usize = batch.iter().map(|request| request.query.len()).sum();
    if text <= PREPARED_ASIDE_BYTES {
        return run(batch);
    }
    tokio::task::spawn_blocking(move || run(batch))
        .await
        .map_err(|err| AppError::Internal(anyhow::Error::new(err).context("parsing a document")))?
}

/// GET, and HEAD, which RFC 9110 answers as GET without the body (hyper drops it).
fn reads_query(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn bad_request(message: String) -> Box<Response> {
    Box::new(AppError::BadUserInput(message).into_response())
}

/// The request of a GET's query string, under GraphQL over HTTP's parameter names
/// (async-graphql's own parser reads `operation_name`, so `operationName` was lost
/// and the first operation ran). `variables` and `extensions` are JSON, counted
/// before they are parsed, as a body's are; an empty `operationName` names none.
fn query_string_request(query: &str, max_values: u64) -> Result<async_graphql::Request, String> {
    let mut request = serde_json::Map::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = match name.as_ref() {
            "query" => serde_json::Value::String(value.into_owned()),
            "operationName" if value.is_empty() => continue,
            "operationName" => serde_json::Value::String(value.into_owned()),
            "variables" | "extensions" => batch_json::count_values(value.as_bytes(), max_values)
                .map_err(|err| err.to_string())
                .and_then(|()| serde_json::from_str(&value).map_err(|err| err.to_string()))
                .map_err(|err| format!("{name}: {err}"))?,
            _ => continue,
        };
        if request.contains_key(name.as_ref()) {
            return Err(format!("`{name}` is given twice in the query string"));
        }
        request.insert(name.into_owned(), value);
    }
    serde_json::from_value(serde_json::Value::Object(request)).map_err(|err| err.to_string())
}

/// Parses the request: the query string of a GET, a JSON body read as it arrives
/// (its large files spooled on the way, [`JsonBody`]), or the start of a multipart
/// body, whose files the returned [`Rest`] reads while the operations run; a body
/// held to the pace of [`ConnectionLimits`]. Large `base64` strings leave the
/// variables ([`large_strings::move_out`]).
async fn read_request(
    request: Request,
    length: Option<u64>,
    limit: u64,
    app: &crate::app::App,
    answer: Answer,
) -> Result<(BatchRequest, Option<Rest>), Box<Response>> {
    if reads_query(request.method()) {
        let query = request.uri().query().unwrap_or_default();
        let max_values = app.config.query_limits.max_json_values;
        let parsed = query_string_request(query, max_values)
            .map_err(|err| bad_request(format!("invalid GraphQL request: {err}")))?;
        return Ok((BatchRequest::Single(parsed), None));
    }
    let config = &app.config;
    let pace: &ConnectionLimits = &config.connections;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = request.into_body();
    let is_multipart = content_type
        .as_deref()
        .is_some_and(|value| value.to_ascii_lowercase().starts_with("multipart/"));
    if is_multipart {
        let limited = Limited::new(body, limit_usize);
        let stream = paced(limited.into_data_stream(), pace).map_err(std::io::Error::other);
        let boundary = content_type
            .as_deref()
            .and_then(|value| multer::parse_boundary(value).ok())
            .ok_or_else(|| {
                bad_request("invalid GraphQL request: the multipart body has no boundary".into())
            })?;
        let (mut batch, rest) = multipart_body::start(
            stream,
            &boundary,
            config.limits.max_batch_files,
            config.query_limits.max_json_values,
        )
        .await
        .map_err(|err| parse_failure(err.as_ref(), limit, answer))?;
        large_strings::move_out(&mut batch, LargeStrings::default());
        return Ok((batch, Some(rest)));
    }
    let storage = app.storage.clone();
    let max_files = config.limits.max_batch_files;
    let mut kept = Kept::Reading(JsonBody::new(length, max_files, move || {
        storage.spool_path()
    }));
    let mut received: u64 = 0;
    let mut chunks = paced(body.into_data_stream(), pace);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| {
            if is_too_slow(&err) {
                return Box::new(body_too_slow(&err.to_string()));
            }
            match crate::http::observe::client_left(&err) {
                Some(left) => Box::new(left),
                None => bad_request(format!("cannot read the request body: {err}")),
            }
        })?;
        received += chunk.len() as u64;
        if received > limit {
            // Past the limit nothing is kept (spooled files are removed); a modest
            // excess is read and dropped so the client sees the 413 instead of a
            // reset connection.
            kept = Kept::OverLimit;
            if received > drain_limit(limit) {
                break;
            }
            continue;
        }
        if let Kept::Reading(body) = &mut kept
            && let Err(err) = body.feed(&chunk).await
        {
            // Nothing more is kept or decoded; the rest is read and dropped so that
            // the client sees the answer instead of a reset connection.
            kept = Kept::Refused(err);
        }
    }
    let json = match kept {
        Kept::Reading(json) => json,
        // A well-formed request over a bound: a GraphQL error like the bounds found
        // after parsing (HTTP 200 under application/json).
        Kept::Refused(err) => return Err(Box::new(answer.refusal(&err))),
        Kept::OverLimit => return Err(Box::new(too_large(limit))),
    };
    let (text, large) = json.finish();
    let mut batch = batch_json::parse(&text, config.query_limits.max_json_values)
        .map_err(|err| bad_request(format!("invalid GraphQL request: {err}")))?;
    large_strings::move_out(&mut batch, large);
    Ok((batch, None))
}

/// What becomes of a JSON body while it arrives.
enum Kept {
    /// Fed to the scanner, large strings spooled.
    Reading(JsonBody),
    /// A bound was passed: the rest is read and dropped.
    Refused(AppError),
    /// Past `MAX_REQUEST_BYTES`: nothing is kept.
    OverLimit,
}

/// Why a multipart body's start was refused, answered: a body cut short by its
/// limit or its pace, a bound passed (a GraphQL error), or a malformed body.
fn parse_failure(
    err: &(dyn std::error::Error + 'static),
    limit: u64,
    answer: Answer,
) -> Box<Response> {
    if let Some(refused) = err.downcast_ref::<AppError>() {
        return Box::new(answer.refusal(refused));
    }
    if let Some(left) = crate::http::observe::client_left(err) {
        return Box::new(left);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut over_limit = false;
    let mut too_slow = None;
    while let Some(current) = source {
        // Under multer's "failed to read stream": say what is wrong with the body.
        if current.is::<PartHeadTooLong>() {
            return bad_request(format!("invalid GraphQL request: {current}"));
        }
        over_limit |= current.is::<LengthLimitError>()
            || current.to_string().contains("length limit exceeded");
        if current.is::<crate::http::slow_body::TooSlow>() {
            too_slow = Some(current.to_string());
        }
        source = current.source();
    }
    if let Some(message) = too_slow {
        Box::new(body_too_slow(&message))
    } else if over_limit {
        Box::new(too_large(limit))
    } else {
        bad_request(format!("invalid GraphQL request: {err}"))
    }
}
