//! `GET`/`HEAD /api/attachments/{id}/download` (bearer token or signed link) and
//! `/media/{key}` (public URLs on fs). Streams from storage with Range, ETag, a safe
//! Content-Disposition and a sandboxing CSP (but on a PDF shown inline); never holds
//! a file in memory.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use entity::attachment;

use serde::Deserialize;
use uuid::Uuid;

use crate::app::App;
use crate::attachments;
use crate::auth::Access;
use crate::auth::link::{LinkPurpose, LinkQuery};
use crate::config::UrlMode;
use crate::disposition::{content_disposition, download_filename};
use crate::error::{AppError, AppResult};
use crate::http::extract::{PathOf, QueryOf};
use crate::http::{AppState, bearer_token, wants_html};
use crate::media::MediaType;

/// Whatever a stored file is, opened from our origin (an inline image, or a file a
/// browser renders anyway) it runs no script and reaches no storage of ours; all
/// but a PDF shown inline, whose viewer refuses a sandbox (see [`respond`]).
const FILE_CSP: &str = "sandbox";

#[derive(Deserialize)]
pub struct DownloadParams {
    #[serde(flatten)]
    link: LinkQuery,
    inline: Option<String>,
}

impl DownloadParams {
    fn inline(&self) -> bool {
        matches!(self.inline.as_deref(), Some("1" | "true"))
    }
}

pub async fn by_id(
    State(state): State<AppState>,
    PathOf(id): PathOf,
    QueryOf(params): QueryOf<DownloadParams>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let app = &state.app;
    let found = match authorize(app, &id, &params, &headers).await {
        Ok(row) => row,
        Err(err) => return refusal(&headers, err),
    };
    respond(app, found, &method, &headers, params.inline())
        .await
        .unwrap_or_else(|err| refusal(&headers, err))
}

/// An error as its reader can read it: scripts (`fetch`, Apollo Client) and other
/// clients get the JSON; a browser tab that opened the link (from a bookmark, an
/// email, a tab left open) gets a short page that says what happened and what to
/// do, in words for the app's users: it showed them raw JSON that named attache.
fn refusal(headers: &HeaderMap, err: AppError) -> Response {
    if !wants_html(headers) {
        return err.into_response();
    }
    let (what, next) = match err.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => (
            "This download link has expired or is not valid.",
            "Go back to the page you came from and open the file again.",
        ),
        StatusCode::NOT_FOUND => (
            "This file is not available.",
            "It may have been deleted. Go back to the page you came from.",
        ),
        status if status.is_server_error() => (
            "The file cannot be downloaded right now.",
            "Try again in a moment.",
        ),
        _ => (
            "This download link is not valid.",
            "Go back to the page you came from and open the file again.",
        ),
    };
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{what}</title></head>\
         <body style=\"font-family: sans-serif; margin: 3em auto; max-width: 36em\">\
         <h1 style=\"font-size: 1.3em\">{what}</h1><p>{next}</p></body></html>\n"
    );
    // The JSON answer's status, code and headers (`WWW-Authenticate`, `Retry-After`),
    // with the page for its body.
    let mut response = err.into_response();
    *response.body_mut() = Body::from(page);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A signed link when the query carries one (checked before any lookup), else the
/// bearer token (checked before the id): 401/403 first, then 404.
async fn authorize(
    app: &App,
    id: &str,
    params: &DownloadParams,
    headers: &HeaderMap,
) -> AppResult<attachment::Model> {
    if params.link.is_present() {
        let (id, tenant) = app
            .links
            .authorize(LinkPurpose::Download, id, &params.link)?;
        crate::http::observe::acting_for(&tenant);
        return attachments::find(app, &tenant, id)
            .await?
            .ok_or_else(AppError::not_found);
    }
    let token = bearer_token(headers).ok_or_else(|| {
        AppError::Unauthenticated(
            "an `Authorization: Bearer <token>` header or a signed link is required".into(),
        )
    })?;
    let principal = app.verifier.verify(token)?;
    crate::http::observe::acting_for(&principal.tenant);
    principal.require(Access::Read)?;
    let id = Uuid::parse_str(id).map_err(|_| AppError::not_found())?;
    attachments::find(app, &principal.tenant, id)
        .await?
        .ok_or_else(AppError::not_found)
}

/// Public URLs on fs (`URL_MODE=public`): no authentication, by storage key.
pub async fn by_key(
    State(state): State<AppState>,
    PathOf(key): PathOf,
    QueryOf(params): QueryOf<DownloadParams>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let app = &state.app;
    if app.config.urls.url_mode != UrlMode::Public {
        return AppError::not_found().into_response();
    }
    let found = match attachments::find_by_key(app, &key).await {
        Ok(Some(row)) => row,
        Ok(None) => return AppError::not_found().into_response(),
        Err(err) => return err.into_response(),
    };
    respond(app, found, &method, &headers, params.inline())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

enum RangeRequest {
    Full,
    Partial(std::ops::Range<u64>),
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110; several ranges or a malformed header are served whole.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (start, end) = (start.trim(), end.trim());
    // Digits only (`u64`'s parser takes `+1`): a range that is not valid is ignored
    // (RFC 9110 §14.2), not answered 416.
    let digits = |text: &str| text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(start) || !digits(end) {
        return RangeRequest::Full;
    }
    match (start.parse::<u64>(), end.parse::<u64>()) {
        // An invalid range (`5-3`) is ignored, however large the file (RFC 9110 §14.1.1).
        (Ok(start), Ok(end)) if end < start => RangeRequest::Full,
        (Ok(start), _) if start >= size => RangeRequest::Unsatisfiable,
        (Ok(start), Ok(end)) if end >= start => {
            RangeRequest::Partial(start..end.saturating_add(1).min(size))
        }
        (Ok(start), Err(_)) if end.is_empty() => RangeRequest::Partial(start..size),
        // A suffix of nothing, or of an empty file, has no bytes to send.
        (Err(_), Ok(suffix)) if start.is_empty() && (suffix == 0 || size == 0) => {
            RangeRequest::Unsatisfiable
        }
        (Err(_), Ok(suffix)) if start.is_empty() => {
            RangeRequest::Partial(size.saturating_sub(suffix)..size)
        }
        _ => RangeRequest::Full,
    }
}

/// `If-None-Match`'s weak comparison (RFC 9110 §13.1.2): `W/` is ignored.
pub(super) fn etag_matches(header_value: &str, etag: &str) -> bool {
    header_value
        .split(',')
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// `If-Match`'s strong comparison (RFC 9110 §13.1.1): a weak tag never matches.
fn etag_matches_strongly(header_value: &str, etag: &str) -> bool {
    header_value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag)
}

/// The outcome of a request's preconditions, evaluated in RFC 9110 §13.2.2's order.
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

fn preconditions(
    request: &HeaderMap,
    method: &Method,
    etag: &str,
    modified: chrono::DateTime<chrono::Utc>,
) -> Precondition {
    let text = |name: header::HeaderName| request.get(name).and_then(|value| value.to_str().ok());
    // Dates have a one-second resolution: the stored time is compared at that.
    let modified = modified.timestamp();
    if let Some(value) = text(header::IF_MATCH) {
        if !etag_matches_strongly(value, etag) {
            return Precondition::Failed;
        }
    } else if let Some(since) = text(header::IF_UNMODIFIED_SINCE).and_then(crate::http_date::parse)
        && modified > since.timestamp()
    {
        return Precondition::Failed;
    }
    let safe = method == Method::GET || method == Method::HEAD;
    if let Some(value) = text(header::IF_NONE_MATCH) {
        if etag_matches(value, etag) {
            return match safe {
                true => Precondition::NotModified,
                false => Precondition::Failed,
            };
        }
    } else if safe
        && let Some(since) = text(header::IF_MODIFIED_SINCE).and_then(crate::http_date::parse)
        && modified <= since.timestamp()
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

async fn respond(
    app: &App,
    row: attachment::Model,
    method: &Method,
    request: &HeaderMap,
    inline: bool,
) -> AppResult<Response> {
    let size = u64::try_from(row.byte_size).unwrap_or_default();
    let etag = format!("\"{}\"", row.sha256);
    let media = MediaType::from_mime(&row.content_type);
    let inline = inline && media.is_some_and(MediaType::is_inline_safe);
    // Chromium will not run its PDF viewer in a sandboxed document ("This page has
    // been blocked"): a PDF shown inline goes without the sandbox. The viewer runs
    // the file's scripts apart from our origin, and `nosniff` keeps the bytes a PDF.
    let csp = match (inline, media) {
        (true, Some(MediaType::Pdf)) => None,
        _ => Some(FILE_CSP),
    };
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        // `no-cache`: a browser asks again each time (a 304 while the ETag holds),
        // so a deleted file or a revoked token is not served from its cache.
        .header(header::CACHE_CONTROL, "private, no-cache")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::LAST_MODIFIED,
            row.created_at.format(crate::http_date::FORMAT).to_string(),
        );
    if let Some(csp) = csp {
        response = response.header(header::CONTENT_SECURITY_POLICY, csp);
    }
    match preconditions(request, method, &etag, row.created_at) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            return build(response.status(StatusCode::NOT_MODIFIED), Body::empty());
        }
        Precondition::Failed => {
            return build(
                response.status(StatusCode::PRECONDITION_FAILED),
                Body::empty(),
            );
        }
    }
    let header_text =
        |name: header::HeaderName| request.get(name).and_then(|value| value.to_str().ok());
    let range_applies = header_text(header::IF_RANGE).is_none_or(|value| value.trim() == etag);
    // Range applies to GET alone (RFC 9110 §14.2): HEAD answers as a full GET would.
    let range = match header_text(header::RANGE) {
        Some(value) if range_applies && method == Method::GET => parse_range(value, size),
        _ => RangeRequest::Full,
    };
    let (status, range) = match range {
        RangeRequest::Full => (StatusCode::OK, 0..size),
        RangeRequest::Partial(range) => {
            let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
            response = response.header(header::CONTENT_RANGE, content_range);
            (StatusCode::PARTIAL_CONTENT, range)
        }
        RangeRequest::Unsatisfiable => {
            let response = response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"));
            return build(response, Body::empty());
        }
    };
    let (store, object) = attachments::locate(app, &row).await?;
    let content_type = HeaderValue::from_str(&row.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let response = response
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, range.end - range.start)
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(&download_filename(&row.filename, &row.content_type), inline),
        );
    if method == Method::HEAD {
        return build(response, Body::empty());
    }
    let stream = match store.read(object, range).await {
        Ok(stream) => stream,
        Err(err) if err.kind() == opendal::ErrorKind::NotFound => {
            return Err(attachments::missing(app, &row).await);
        }
        Err(err) => return Err(err.into()),
    };
    build(response, Body::from_stream(stream))
}

fn build(builder: axum::http::response::Builder, body: Body) -> AppResult<Response> {
    builder.body(body).map_err(|err| {
        AppError::Internal(anyhow::Error::new(err).context("building a download response"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_byte_ranges() {
        let sized = |value: &str, size: u64| match parse_range(value, size) {
            RangeRequest::Full => "full".to_owned(),
            RangeRequest::Partial(range) => format!("{}..{}", range.start, range.end),
            RangeRequest::Unsatisfiable => "416".to_owned(),
        };
        let check = |value: &str| sized(value, 100);
        assert_eq!(check("bytes=0-9"), "0..10");
        assert_eq!(check("bytes=90-"), "90..100");
        assert_eq!(check("bytes=-10"), "90..100");
        assert_eq!(check("bytes=-1000"), "0..100");
        assert_eq!(check("bytes=95-1000"), "95..100");
        assert_eq!(check("bytes=100-"), "416");
        assert_eq!(check("bytes=-0"), "416");
        assert_eq!(check("bytes=0-1,5-6"), "full");
        assert_eq!(check("items=0-1"), "full");
        assert_eq!(check("bytes=9-3"), "full");
        assert_eq!(check("bytes=500-300"), "full", "invalid beyond the end too");
        assert_eq!(
            check("bytes=200-abc"),
            "full",
            "not a range: ignored, not 416"
        );
        assert_eq!(check("bytes=+1-2"), "full");
        // An empty file has no range to send, a suffix included.
        for value in ["bytes=-10", "bytes=0-", "bytes=0-0"] {
            assert_eq!(sized(value, 0), "416", "{value}");
        }
    }
}
