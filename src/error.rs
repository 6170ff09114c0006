//! The one error type of request paths, mapped once to a GraphQL `extensions.code`
//! and to an HTTP status. Messages are for people and never carry internals: the
//! cause chain of storage and database failures is logged, not returned.

use async_graphql::ErrorExtensions;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadUserInput(String),
    /// A query text that is not GraphQL: a request error, like Apollo Server's.
    #[error("{}", .0.message)]
    GraphqlParse(ParseFailure),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    ChecksumMismatch(String),
    /// The tenant's quota has no room for the upload; the usage and the upload's
    /// size go in `extensions`.
    #[error("{}", quota_text(.0))]
    QuotaExceeded(Box<QuotaRefusal>),
    /// The row exists but its object is on no store: lost data, logged as such.
    #[error("the file of attachment {0} is missing from storage")]
    ObjectMissing(uuid::Uuid),
    #[error("storage is unavailable, try again later")]
    StorageUnavailable(#[source] opendal::Error),
    /// Every upload slot or database connection stayed busy for the bounded wait;
    /// the client should retry after the given seconds.
    #[error("the server is busy; retry in {0} s")]
    Overloaded(u64),
    /// Another request works on the same object now: a retry once it ends succeeds.
    #[error("{0}")]
    InProgress(String),
    /// A failed database call, and where it was made (the `?` that met it), so the
    /// log names the step that failed.
    #[error("internal server error")]
    Database {
        #[source]
        source: sea_orm::DbErr,
        at: &'static std::panic::Location<'static>,
    },
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

pub type AppResult<T> = Result<T, AppError>;

/// Most characters of a message a client is sent: some quote what the client sent
/// (serde's "invalid type: string ...", a query line that does not parse), which may
/// be megabytes long.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Cuts a message for a client at [`MAX_MESSAGE_CHARS`], ending it in `…`.
pub fn clip(message: &mut String) {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
}

/// Client text as a message may echo it: no control characters, at most 64 of them.
pub fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The code of a request async-graphql's validation refused (Apollo's name, which
/// its clients read): no [`AppError`] ever ran for it.
pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";

/// The code of input the client must fix: also given to a field's argument that
/// did not parse, which reaches no resolver.
pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";

impl AppError {
    pub fn not_found() -> Self {
        Self::NotFound("attachment not found".into())
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadUserInput(message.into())
    }

    /// The stable code clients switch on (SPEC 6).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) | Self::ObjectMissing(_) => "NOT_FOUND",
            Self::BadUserInput(_) => BAD_USER_INPUT,
            Self::GraphqlParse(_) => "GRAPHQL_PARSE_FAILED",
            Self::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::ChecksumMismatch(_) => "CHECKSUM_MISMATCH",
            Self::QuotaExceeded(_) => "QUOTA_EXCEEDED",
            // SPEC 6's code for "unavailable, try again later".
            Self::StorageUnavailable(_) | Self::Overloaded(_) | Self::InProgress(_) => {
                "STORAGE_UNAVAILABLE"
            }
            Self::Database { .. } | Self::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::ObjectMissing(_) => StatusCode::NOT_FOUND,
            Self::BadUserInput(_) | Self::GraphqlParse(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ChecksumMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // Retrying does not help; freeing space or a larger quota does.
            Self::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            Self::StorageUnavailable(_) | Self::Overloaded(_) | Self::InProgress(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Database { .. } | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message a client is sent, [`clip`]ped.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        clip(&mut message);
        message
    }

    /// What went wrong, for a log line: the cause behind "internal server error" or
    /// "storage is unavailable", which a client is not told.
    pub fn cause(&self) -> String {
        match self {
            Self::StorageUnavailable(source) => source.to_string(),
            Self::Database { source, at } => format!("{source} (at {at})"),
            Self::Internal(source) => format!("{source:#}"),
            other => other.to_string(),
        }
    }

    /// Logs what the client will not see: the cause of server-side failures.
    fn log(&self) {
        match self {
            Self::StorageUnavailable(source) => tracing::error!(error = %source, "storage failure"),
            Self::ObjectMissing(id) => {
                tracing::error!(attachment = %id, "lost data: the attachment's file is missing from storage")
            }
            Self::Database { source, at } => {
                tracing::error!(error = %source, at = %at, "database failure")
            }
            Self::Overloaded(_) => tracing::warn!("refused a request: the server is busy"),
            Self::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal failure")
            }
            _ => {}
        }
    }

    /// A GraphQL-shaped body for HTTP answers that never reach the executor (413, 400)
    /// and for the errors of the REST routes.
    pub fn graphql_body(&self) -> serde_json::Value {
        let mut extensions = serde_json::json!({ "code": self.code() });
        if let Self::ObjectMissing(id) = self {
            extensions["attachmentId"] = serde_json::json!(id);
        }
        if let Self::QuotaExceeded(refusal) = self {
            extensions["usage"] = usage_json(&refusal.usage);
            extensions["requested"] = requested_json(refusal);
        }
        let mut error = serde_json::json!({ "message": self.message(), "extensions": extensions });
        if let Self::GraphqlParse(failure) = self
            && !failure.locations.is_empty()
        {
            let locations = failure.locations.iter();
            error["locations"] = locations
                .map(|(line, column)| serde_json::json!({ "line": line, "column": column }))
                .collect();
        }
        serde_json::json!({ "errors": [error] })
    }
}

/// Why a query text is not GraphQL, and where: each place a line and a column,
/// counted from 1, as GraphQL's `locations` give them.
#[derive(Debug)]
pub struct ParseFailure {
    pub message: String,
    pub locations: Vec<(usize, usize)>,
}

/// What a tenant stores and may store when its quota refused an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub bytes: i64,
    pub files: i64,
    pub quota_bytes: Option<i64>,
    pub quota_files: Option<i64>,
}

/// A quota refusal's `extensions.usage`: the figures of the `usage` query, as exact
/// integers (the query answers bytes as a `Float`).
fn usage_json(usage: &QuotaUsage) -> serde_json::Value {
    serde_json::json!({
        "bytes": usage.bytes,
        "files": usage.files,
        "quotaBytes": usage.quota_bytes,
        "quotaFiles": usage.quota_files,
    })
}

/// A quota refusal: the tenant's usage as it stands, and what the upload asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub usage: QuotaUsage,
    pub requested_bytes: i64,
    pub requested_files: i64,
}

/// A quota refusal's `extensions.requested`: the size of the upload refused.
fn requested_json(refusal: &QuotaRefusal) -> serde_json::Value {
    serde_json::json!({ "bytes": refusal.requested_bytes, "files": refusal.requested_files })
}

/// A quota refusal in words: the upload's size, the limits it met, and what helps
/// (deleting files, unless the upload alone is over a whole limit).
fn quota_text(refusal: &QuotaRefusal) -> String {
    let usage = &refusal.usage;
    let limit = |used: i64, limit: Option<i64>, unit: &str| {
        limit.map(|limit| format!("{used} of {limit} {unit}"))
    };
    let used = [
        limit(usage.bytes, usage.quota_bytes, "bytes"),
        limit(usage.files, usage.quota_files, "files"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    let over = |requested: i64, limit: Option<i64>| limit.is_some_and(|limit| requested > limit);
    let never_fits = over(refusal.requested_bytes, usage.quota_bytes)
        || over(refusal.requested_files, usage.quota_files);
    let remedy = match never_fits {
        true => "it is larger than the whole quota: ask for a larger quota",
        false => "delete files or ask for a larger quota",
    };
    let used = match used.is_empty() {
        true => String::new(),
        false => format!(" ({used} used)"),
    };
    format!(
        "the tenant's storage quota has no room for this upload of {} bytes in {} file(s): \
         {remedy}{used}",
        refusal.requested_bytes, refusal.requested_files
    )
}

/// Names the scheme a 401 asks for (RFC 9110), on every route that answers one.
pub fn challenge(response: &mut Response) {
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
}

/// The error codes of a response, for the request's summary log line
/// (`graphql_errors`): set by `/graphql` from its answer, and by every answer of an
/// [`AppError`].
#[derive(Clone)]
pub struct GraphqlCodes(pub String);

/// Seconds a client is told to wait when the server is busy.
pub const RETRY_AFTER_SECONDS: u64 = 2;

impl From<sea_orm::DbErr> for AppError {
    /// `track_caller`: `?` passes its own location, which the log then names.
    #[track_caller]
    fn from(error: sea_orm::DbErr) -> Self {
        match error {
            sea_orm::DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => {
                Self::Overloaded(RETRY_AFTER_SECONDS)
            }
            other => Self::Database {
                source: other,
                at: std::panic::Location::caller(),
            },
        }
    }
}

impl From<opendal::Error> for AppError {
    fn from(error: opendal::Error) -> Self {
        if error.kind() == opendal::ErrorKind::NotFound {
            Self::not_found()
        } else {
            Self::StorageUnavailable(error)
        }
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        self.log();
        async_graphql::Error::new(self.message()).extend_with(|_, ext| {
            ext.set("code", self.code());
            if let Self::QuotaExceeded(refusal) = self
                && let Ok(usage) = async_graphql::Value::from_json(usage_json(&refusal.usage))
                && let Ok(requested) = async_graphql::Value::from_json(requested_json(refusal))
            {
                ext.set("usage", usage);
                ext.set("requested", requested);
            }
        })
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let mut response = (status, axum::Json(self.graphql_body())).into_response();
        response
            .extensions_mut()
            .insert(GraphqlCodes(self.code().to_owned()));
        challenge(&mut response);
        if let Self::Overloaded(seconds) = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
