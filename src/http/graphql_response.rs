//! GraphQL over HTTP's answers. `application/json` by default: GraphQL errors travel
//! with HTTP 200, as SPEC 6 and Apollo's clients expect (413 stays 413). A client
//! that accepts `application/graphql-response+json` gets that media type, and 4xx
//! for request errors. A request error (a document that does not parse or validate,
//! or one refused before it ran) has no `data` entry, and a code: what Apollo Server
//! names `GRAPHQL_PARSE_FAILED` and `GRAPHQL_VALIDATION_FAILED`, or attache's own.

use async_graphql::{BatchResponse, ServerError};
use async_graphql_axum::GraphQLResponse;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::error::GraphqlCodes;

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// The media type of a request's answer, from its `Accept` header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Json,
    GraphqlResponse,
}

impl Answer {
    /// GraphQL's own media type when the client ranks it at least as high as JSON
    /// (RFC 9110 §12.5.1: the most specific range names a type's `q`; `q=0` refuses
    /// it; media types compare without case). JSON otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut graphql = None;
        // application/json, application/*, */*: the first listed that is present rules.
        let mut json = [None; 3];
        let items = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for item in items {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .find_map(|param| param.strip_prefix("q=").or(param.strip_prefix("Q=")))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let rank = match media.as_str() {
                GRAPHQL_RESPONSE => &mut graphql,
                "application/json" => &mut json[0],
                "application/*" => &mut json[1],
                "*/*" => &mut json[2],
                _ => continue,
            };
            *rank = Some(rank.map_or(q, |seen: f32| seen.max(q)));
        }
        let graphql = graphql.unwrap_or(0.0);
        let json = json.into_iter().flatten().next().unwrap_or(0.0);
        match graphql > 0.0 && graphql >= json {
            true => Self::GraphqlResponse,
            false => Self::Json,
        }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Self::Json => HeaderValue::from_static("application/json"),
            Self::GraphqlResponse => HeaderValue::from_static(GRAPHQL_RESPONSE),
        }
    }

    /// An answer written as `application/json` before or without `Accept` (the
    /// HTTP refusals: a body too large, too slow or malformed, a content type, the
    /// CSRF rule, no free slot), in the media type the client asked for: Apollo
    /// Client 4 reads a 4xx's `extensions.code` only from GraphQL's.
    pub fn retype(self, response: &mut Response) {
        let headers = response.headers_mut();
        if self == Self::GraphqlResponse
            && headers.get(header::CONTENT_TYPE)
                == Some(&HeaderValue::from_static("application/json"))
        {
            headers.insert(header::CONTENT_TYPE, self.content_type());
        }
    }

    /// A request refused before it ran, without `data`.
    pub fn refusal(self, err: &AppError) -> Response {
        let status = match (self, err) {
            (_, AppError::PayloadTooLarge(_)) | (Self::GraphqlResponse, _) => err.status(),
            (Self::Json, _) => StatusCode::OK,
        };
        self.json(status, &err.graphql_body())
    }

    /// A mutation sent over GET: 405 with `Allow: POST` (GraphQL over HTTP), its
    /// body GraphQL-shaped like every other refusal.
    pub fn mutation_over_get(self) -> Response {
        let err = AppError::bad_input("mutations cannot be sent over GET: use POST");
        let mut answer = self.json(StatusCode::METHOD_NOT_ALLOWED, &err.graphql_body());
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        answer
    }

    /// A request that is not GraphQL over HTTP at all (no `query`): its 4xx status
    /// whatever the media type.
    pub fn malformed(self, err: &AppError) -> Response {
        self.json(err.status(), &err.graphql_body())
    }

    /// What the executor answered (its field errors [`coded`]); a request error
    /// loses its `data` and gains a code.
    pub fn executed(self, response: BatchResponse) -> Response {
        let failed = match &response {
            BatchResponse::Single(response) => is_request_error(response),
            BatchResponse::Batch(responses) => responses.iter().any(is_request_error),
        };
        if !failed {
            let codes = response_codes(&response);
            let mut answer = GraphQLResponse::from(response).into_response();
            answer
                .headers_mut()
                .insert(header::CONTENT_TYPE, self.content_type());
            return with_codes(answer, codes);
        }
        match response {
            BatchResponse::Single(response) => {
                let status = match self {
                    Self::Json => StatusCode::OK,
                    Self::GraphqlResponse => StatusCode::BAD_REQUEST,
                };
                self.json(status, &shaped(response))
            }
            BatchResponse::Batch(responses) => {
                let shaped: Vec<serde_json::Value> = responses.into_iter().map(shaped).collect();
                self.json(StatusCode::OK, &serde_json::Value::Array(shaped))
            }
        }
    }

    fn json(self, status: StatusCode, body: &serde_json::Value) -> Response {
        let codes = body_codes(body);
        let mut answer = (status, axum::Json(body)).into_response();
        crate::error::challenge(&mut answer);
        answer
            .headers_mut()
            .insert(header::CONTENT_TYPE, self.content_type());
        with_codes(answer, codes)
    }
}

/// Whether the executor refused the document itself: no data, and errors that no
/// resolver raised (every resolver error carries a code).
fn is_request_error(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| code(error).is_none())
}

/// What the executor answered, each error with a code: the errors of fields whose
/// arguments did not parse (an `Upload` that names no file part) have a path but no
/// code, as no resolver ran, and get BAD_USER_INPUT. Without it the response would
/// pass for a request error, as if nothing had run, though the mutations before
/// that field have. Every message is clipped.
pub fn coded(mut response: BatchResponse) -> BatchResponse {
    match &mut response {
        BatchResponse::Single(response) => code_field_errors(response),
        BatchResponse::Batch(responses) => responses.iter_mut().for_each(code_field_errors),
    }
    response
}

fn code_field_errors(response: &mut async_graphql::Response) {
    for error in &mut response.errors {
        // The validator's messages quote names and values the client sent.
        crate::error::clip(&mut error.message);
        if !error.path.is_empty() && code(error).is_none() {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", crate::error::BAD_USER_INPUT);
        }
    }
}

fn code(error: &ServerError) -> Option<&async_graphql::Value> {
    error.extensions.as_ref().and_then(|ext| ext.get("code"))
}

/// A response as JSON; a request error without `data`, each error coded.
fn shaped(response: async_graphql::Response) -> serde_json::Value {
    if !is_request_error(&response) {
        return serde_json::to_value(&response).unwrap_or_default();
    }
    let errors: Vec<serde_json::Value> = response
        .errors
        .into_iter()
        .map(|error| {
            let mut error = serde_json::to_value(&error).unwrap_or_default();
            error["extensions"]["code"] = crate::error::VALIDATION_FAILED.into();
            error
        })
        .collect();
    serde_json::json!({ "errors": errors })
}

/// The codes of a response's errors, for the request's summary log line.
fn response_codes(response: &BatchResponse) -> Vec<String> {
    let responses = match response {
        BatchResponse::Single(response) => std::slice::from_ref(response),
        BatchResponse::Batch(responses) => responses.as_slice(),
    };
    responses
        .iter()
        .flat_map(|response| &response.errors)
        .filter_map(|error| match code(error) {
            Some(async_graphql::Value::String(code)) => Some(code.clone()),
            _ => None,
        })
        .collect()
}

/// The codes of a JSON body's `errors` (in a batch array too).
fn body_codes(body: &serde_json::Value) -> Vec<String> {
    let bodies = match body {
        serde_json::Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    bodies
        .into_iter()
        .filter_map(|body| body["errors"].as_array())
        .flatten()
        .filter_map(|error| error["extensions"]["code"].as_str().map(str::to_owned))
        .collect()
}

fn with_codes(mut response: Response, mut codes: Vec<String>) -> Response {
    if !codes.is_empty() {
        // Each code once, whatever the order: a thousand aliases make a short line.
        codes.sort_unstable();
        codes.dedup();
        response
            .extensions_mut()
            .insert(GraphqlCodes(codes.join(",")));
    }
    response
}
