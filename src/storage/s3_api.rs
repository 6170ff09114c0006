//! attache's own signed requests to S3, for what OpenDAL cannot do: streamed
//! multipart uploads (`s3_write`), the multipart uploads left unfinished, and
//! presigned PUTs whose length is part of the signature.
//!
//! Multipart uploads left unfinished on S3. A large object goes up in parts; a
//! refused or broken stream aborts its upload, but a process killed mid-upload
//! leaves the parts stored (and billed) under no object, where no listing of
//! objects shows them. `storage sweep` lists them (ListMultipartUploads, under the
//! prefix) and aborts the old ones. OpenDAL has neither call, so these requests
//! are signed here by the signer OpenDAL itself uses (reqsign, AWS SigV4), with
//! the same settings: bucket, region, endpoint, addressing style and keys.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqsign_aws_v4::{
    Credential, DefaultCredentialProvider, RequestSigner, StaticCredentialProvider,
};
use reqsign_core::{Context, OsEnv, Signer};
use serde::Deserialize;

use crate::config::{AddressingStyle, StorageConfig};

/// How long one request to the store may wait for its answer, or (OpenDAL's calls)
/// a read or write for its next bytes.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// SHA-256 of an empty body: GET and DELETE send none.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Which endpoint a presigned URL names.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    /// `S3_PUBLIC_ENDPOINT_URL` when set: the URLs clients are given.
    Public,
    /// `S3_ENDPOINT_URL`, which attache itself reaches (the startup probe).
    Internal,
}

/// One multipart upload the store holds open.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// The object's key in the bucket, the prefix included.
    pub key: String,
    pub upload_id: String,
    pub initiated: DateTime<Utc>,
}

/// Why the store could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum S3ApiError {
    #[error("cannot sign the request: {0}")]
    Sign(#[from] reqsign_core::Error),
    #[error("the store cannot be reached: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("the store answered {status}: {body}")]
    Refused {
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("the store's answer cannot be read: {0}")]
    Unreadable(String),
}

impl S3ApiError {
    /// The store has no such call (s3s answers 501 Not Implemented).
    pub fn unsupported(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status == reqwest::StatusCode::NOT_IMPLEMENTED)
    }

    /// The credentials may not make this call (403): a policy without it.
    pub fn denied(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status == reqwest::StatusCode::FORBIDDEN)
    }

    /// Whether the store surely did not act on the request: it was throttled (503,
    /// 429, `SlowDown`) or never reached. Safe to send again, a conditional write too.
    pub(super) fn not_applied(&self) -> bool {
        match self {
            Self::Refused { status, body } => {
                matches!(status.as_u16(), 429 | 503) || body.contains("<Code>SlowDown</Code>")
            }
            Self::Unreachable(err) => err.is_connect(),
            _ => false,
        }
    }

    /// Whether another try may succeed: the store failed (a 5xx but 501,
    /// `InternalError`, `RequestTimeout`) or the connection broke. The first try may
    /// have acted. A request that got no answer in its time is not tried again: a
    /// stalled store fails the request in bounded time.
    pub(super) fn transient(&self) -> bool {
        match self {
            Self::Refused { status, body } => {
                (status.is_server_error() && *status != reqwest::StatusCode::NOT_IMPLEMENTED)
                    || self.not_applied()
                    || ["RequestTimeout", "InternalError"]
                        .iter()
                        .any(|code| body.contains(&format!("<Code>{code}</Code>")))
            }
            Self::Unreachable(err) => !err.is_timeout(),
            _ => false,
        }
    }
}

/// attache's own signed requests to the bucket: streamed multipart uploads, the
/// listing and aborting of unfinished ones, and presigned PUTs of a known length.
pub struct S3Api {
    signer: Signer<Credential>,
    http: reqwest::Client,
    /// The bucket's own URL, where uploads are listed: `http://host/bucket` (path
    /// style) or `https://bucket.host/` (virtual-hosted).
    bucket_url: String,
    /// What an object's key follows: `bucket_url` and a slash, where there is none.
    objects_url: String,
    /// The same at `S3_PUBLIC_ENDPOINT_URL`, for the URLs clients are given.
    public_objects_url: String,
    /// The keys' prefix, `prefix/` (empty for the whole bucket).
    prefix: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: String,
}

impl S3Api {
    /// For the configured bucket (rustls on ring, installed by the caller).
    pub fn new(config: &StorageConfig) -> Self {
        let region = config.region();
        let bucket_url = bucket_url_at(config, config.s3_endpoint_url.as_deref());
        let objects_url = objects_url_of(&bucket_url);
        let public_objects_url = match config.s3_public_endpoint_url.as_deref() {
            Some(public) => objects_url_of(&bucket_url_at(config, Some(public))),
            None => objects_url.clone(),
        };
        // An HTTP client too: credentials of a role (instance, ECS task, web
        // identity, SSO) are fetched over HTTP; without one every such provider fails.
        let context = Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_http_send(opendal::HttpTransporter::default())
            .with_env(OsEnv);
        let signer = match (&config.s3_access_key, &config.s3_secret_key) {
            (Some(access), Some(secret)) => Signer::new(
                context,
                StaticCredentialProvider::new(access.expose(), secret.expose()),
                RequestSigner::new("s3", region),
            ),
            _ => Signer::new(
                context,
                DefaultCredentialProvider::new(),
                RequestSigner::new("s3", region),
            ),
        };
        let prefix = match config.s3_prefix.trim_matches('/') {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        Self {
            signer,
            http: reqwest::Client::new(),
            bucket_url,
            objects_url,
            public_objects_url,
            prefix,
        }
    }

    /// A PUT of `key` presigned for `ttl`, and the headers it must carry: its type,
    /// `If-None-Match: *` and its length, all signed, so the store refuses any body
    /// but one of exactly `length` bytes (OpenDAL's presigned PUT leaves the length
    /// open: a URL for one byte would take gigabytes).
    pub async fn presign_put(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        length: u64,
        endpoint: Endpoint,
    ) -> Result<(String, Vec<(String, String)>), S3ApiError> {
        let base = match endpoint {
            Endpoint::Public => &self.public_objects_url,
            Endpoint::Internal => &self.objects_url,
        };
        let request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(url_at(base, &self.bucket_key(key)))
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, length)
            .header(http::header::IF_NONE_MATCH, "*")
            .body(())
            .map_err(|err| S3ApiError::Unreadable(err.to_string()))?;
        let (mut parts, ()) = request.into_parts();
        self.signer.sign(&mut parts, Some(ttl)).await?;
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::HOST)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        Ok((parts.uri.to_string(), headers))
    }

    /// Every unfinished upload under the prefix, page after page.
    pub async fn list(&self) -> Result<Vec<Unfinished>, S3ApiError> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!("uploads&prefix={}", encode(&self.prefix));
            if let Some((key, upload_id)) = &markers {
                query.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(key),
                    encode(upload_id)
                ));
            }
            let url = format!("{}?{query}", self.bucket_url);
            let body = self.send(http::Method::GET, &url).await?;
            let page: ListMultipartUploadsResult = quick_xml::de::from_str(&body)
                .map_err(|err| S3ApiError::Unreadable(err.to_string()))?;
            for upload in page.upload {
                let initiated = DateTime::parse_from_rfc3339(&upload.initiated)
                    .map_err(|err| S3ApiError::Unreadable(err.to_string()))?;
                found.push(Unfinished {
                    key: upload.key,
                    upload_id: upload.upload_id,
                    initiated: initiated.with_timezone(&Utc),
                });
            }
            let next = match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(upload_id)) => Some((key, upload_id)),
                _ => return Ok(found),
            };
            // A store that hands back the same page again would be asked forever.
            if next == markers {
                return Err(S3ApiError::Unreadable(
                    "the listing's next page is the page just read".into(),
                ));
            }
            markers = next;
        }
    }

    /// Aborts `upload`: the store drops its parts.
    pub async fn abort(&self, upload: &Unfinished) -> Result<(), S3ApiError> {
        let url = format!(
            "{}?uploadId={}",
            self.object_url(&upload.key),
            encode(&upload.upload_id)
        );
        self.send(http::Method::DELETE, &url).await.map(drop)
    }

    /// The key of `upload` without the prefix, as attache names objects.
    pub fn storage_key<'a>(&self, upload: &'a Unfinished) -> &'a str {
        upload.key.strip_prefix(&self.prefix).unwrap_or(&upload.key)
    }

    /// The URL of the object whose key (the prefix included) is `key`.
    pub(super) fn object_url(&self, key: &str) -> String {
        url_at(&self.objects_url, key)
    }

    /// The key in the bucket of attache's `key`: the prefix and the key.
    pub(super) fn bucket_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Sends a signed request without a body, which may be repeated (a listing, an
    /// abort); the answer's body when it succeeds.
    async fn send(&self, method: http::Method, url: &str) -> Result<String, S3ApiError> {
        let response = self
            .execute(
                method,
                url,
                Vec::new(),
                Payload::Empty,
                REQUEST_TIMEOUT,
                Retry::IfTransient,
            )
            .await?;
        Ok(response.text().await?)
    }

    /// Sends a signed request with `headers` and a payload that can be sent again,
    /// waiting at most `timeout` for each answer, and again as `retry` allows
    /// ([`Tries`]); the answer when it succeeds. A streamed body goes through
    /// [`S3Api::attempt`] once: its caller sends a new stream.
    pub(super) async fn execute(
        &self,
        method: http::Method,
        url: &str,
        headers: Vec<(http::HeaderName, String)>,
        payload: Payload,
        timeout: Duration,
        retry: Retry,
    ) -> Result<reqwest::Response, S3ApiError> {
        let mut tries = Tries::default();
        let mut next = payload;
        loop {
            let again = next.copy();
            let sent = self
                .attempt(method.clone(), url, &headers, next, timeout)
                .await;
            match (sent, again) {
                (Err(err), Some(again)) if tries.again(&err, retry).await => next = again,
                (done, _) => return done,
            }
        }
    }

    /// One try of a signed request.
    pub(super) async fn attempt(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(http::HeaderName, String)],
        payload: Payload,
        timeout: Duration,
    ) -> Result<reqwest::Response, S3ApiError> {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let (content_sha256, body) = match payload {
            Payload::Empty => (EMPTY_SHA256.to_owned(), reqwest::Body::from(Vec::new())),
            Payload::Bytes(bytes) => {
                use sha2::Digest;
                let digest = hex::encode(sha2::Sha256::digest(&bytes));
                (digest, reqwest::Body::from(bytes))
            }
            // As AWS's SDKs stream: the body's length is signed, its bytes are not.
            Payload::Streamed(body) => ("UNSIGNED-PAYLOAD".to_owned(), body),
        };
        let request = request
            .header("x-amz-content-sha256", content_sha256)
            .body(())
            .map_err(|err| S3ApiError::Unreadable(err.to_string()))?;
        let (mut parts, ()) = request.into_parts();
        self.signer.sign(&mut parts, None).await?;
        parts.headers.remove(http::header::HOST);
        let request = reqwest::Request::try_from(http::Request::from_parts(parts, body))?;
        let response = tokio::time::timeout(timeout, self.http.execute(request))
            .await
            .map_err(|_| {
                S3ApiError::Unreadable(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            })??;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(S3ApiError::Refused { status, body });
        }
        Ok(response)
    }
}

/// What a request to the store carries.
pub(super) enum Payload {
    Empty,
    /// A small body, signed with its sha256.
    Bytes(bytes::Bytes),
    /// A body that streams in, of a length given in the headers.
    Streamed(reqwest::Body),
}

impl Payload {
    /// The same payload for another try; none for a stream, which is read once.
    fn copy(&self) -> Option<Self> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Bytes(bytes) => Some(Self::Bytes(bytes.clone())),
            Self::Streamed(_) => None,
        }
    }
}

/// Which failures of a request another try may mend.
#[derive(Clone, Copy, Debug)]
pub(super) enum Retry {
    /// Only those the store surely did not act on: for a conditional write, whose
    /// second try would find the first one's object and fail.
    IfNotApplied,
    /// Any passing failure: for a request that may be repeated.
    IfTransient,
}

/// The tries of one request to the store: three at most, about 0.2 s and then
/// 0.8 s apart (half of each pause random, so that clients throttled together
/// spread out). A throttled or briefly failing store (B2 answers 503 as a matter
/// of course, AWS `SlowDown`) costs a second; one that stays down fails soon.
#[derive(Default)]
pub(super) struct Tries {
    failed: u32,
}

impl Tries {
    /// Shared with OpenDAL's `RetryLayer`, so both clients try alike.
    pub(super) const MOST: u32 = 3;
    pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(200);

    /// After a failed try: whether to try again, having paused, as `retry` allows.
    pub(super) async fn again(&mut self, err: &S3ApiError, retry: Retry) -> bool {
        self.failed += 1;
        let mendable = match retry {
            Retry::IfNotApplied => err.not_applied(),
            Retry::IfTransient => err.transient(),
        };
        if !mendable || self.failed >= Self::MOST {
            return false;
        }
        let full = Self::FIRST_PAUSE * 4u32.pow(self.failed - 1);
        let pause = full.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tracing::warn!(error = %err, failed = self.failed, "the store failed a request; trying again");
        crate::telemetry::storage_retry();
        tokio::time::sleep(pause).await;
        true
    }
}

impl std::fmt::Debug for S3Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Api")
            .field("bucket_url", &self.bucket_url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The bucket's URL at `endpoint` (AWS's regional one when none), in the configured
/// addressing style: `http://host/bucket` (path) or `https://bucket.host/` (virtual).
fn bucket_url_at(config: &StorageConfig, endpoint: Option<&str>) -> String {
    let bucket = config.s3_bucket_name.as_deref().unwrap_or_default();
    let endpoint = endpoint
        .map(str::to_owned)
        .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region()));
    let endpoint = endpoint.trim_end_matches('/');
    match config.addressing_style() {
        AddressingStyle::Path => format!("{endpoint}/{bucket}"),
        AddressingStyle::Virtual => match endpoint.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{bucket}.{host}/"),
            None => format!("https://{bucket}.{endpoint}/"),
        },
    }
}

/// What an object's key follows: `bucket_url` and a slash, where there is none.
fn objects_url_of(bucket_url: &str) -> String {
    match bucket_url.ends_with('/') {
        true => bucket_url.to_owned(),
        false => format!("{bucket_url}/"),
    }
}

/// The URL of the object `key` (the prefix included) under `objects_url`.
fn url_at(objects_url: &str, key: &str) -> String {
    let path: Vec<String> = key.split('/').map(encode).collect();
    format!("{objects_url}{}", path.join("/"))
}

/// `value` percent-encoded as SigV4 canonicalizes a query value or path segment.
pub(super) fn encode(value: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, UNRESERVED).to_string()
}
