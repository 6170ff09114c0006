//! One OpenDAL operator behind a small interface: write a new object (never
//! overwriting), stream a range of it, delete it, probe the backend. The database
//! keeps only relative keys, so every key is valid on every backend (SPEC 8).

mod chunked;
mod copy;
mod file_read;
mod fs_write;
mod key;
mod local;
mod probe;
mod s3_api;
mod s3_write;
pub mod temp;

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use opendal::Operator;

use chunked::write_file;
pub use chunked::{ChunkPipeline, ChunkSink, NewFile, WRITE_CHUNK};
pub use copy::{CopyError, Digest};
pub use file_read::read_file;
pub use fs_write::{DIRECT_WRITE_FROM, FILE_ALIGNMENT};
use fs_write::{INLINE_WRITE_UP_TO, link_new_file, write_new_file};
pub use key::{KeyTemplate, StorageKey};
pub use local::LocalFile;
pub use probe::{PROBE_TIMEOUT, what_the_store_said};
use s3_api::Endpoint;
pub use s3_api::Unfinished;

use crate::config::{AddressingStyle, ConfigError, StorageBackend, StorageConfig};

/// Why a streamed write did not store an object.
#[derive(Debug, thiserror::Error)]
pub enum StreamWriteError {
    #[error("more bytes than allowed")]
    TooLarge,
    #[error("the request body broke: {0}")]
    Body(String),
    #[error(transparent)]
    Storage(#[from] opendal::Error),
}

impl StreamWriteError {
    /// The failure as a storage error, for writes whose source cannot break (a
    /// file of attache's own).
    pub fn into_storage(self) -> opendal::Error {
        match self {
            Self::Storage(err) => err,
            other => opendal::Error::new(opendal::ErrorKind::Unexpected, other.to_string()),
        }
    }
}

/// Whether a failed storage call still answered: a missing object, or a refused
/// conditional write, is an answer, not a failure of the store.
fn is_an_answer(err: &opendal::Error) -> bool {
    matches!(
        err.kind(),
        opendal::ErrorKind::NotFound | opendal::ErrorKind::ConditionNotMatch
    )
}

/// A presigned PUT: its URL and the headers that are part of its signature.
#[derive(Clone, Debug)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A stored object as a listing sees it.
#[derive(Clone, Debug)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub modified: Option<std::time::SystemTime>,
}

/// An object found by [`Storage::open`], to be read by [`Storage::read`].
#[derive(Debug)]
pub struct OpenObject {
    key: StorageKey,
    size: u64,
    /// The open file on fs; S3 opens nothing until the read.
    file: Option<std::fs::File>,
}

impl OpenObject {
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The object store of attache: local disk or an S3-compatible bucket.
#[derive(Clone, Debug)]
pub struct Storage {
    operator: Operator,
    /// Signs the read URLs clients get: the operator itself, or one for
    /// S3_PUBLIC_ENDPOINT_URL (it never sends a request).
    presigner: Operator,
    backend: StorageBackend,
    /// The absolute root folder on fs, where objects are plain files.
    fs_root: Option<std::path::PathBuf>,
    /// Where the objects live, for people: `fs:/srv/uploads`, `s3://bucket/prefix`.
    location: String,
    /// `FSYNC_FILES`: new files are synced to disk before they count as written.
    fsync_files: bool,
    /// attache's own S3 requests (streamed writes, unfinished multipart uploads,
    /// presigned PUTs of a known length); `None` on fs.
    s3_api: Option<std::sync::Arc<s3_api::S3Api>>,
    /// The parts of a large object's write: `S3_PART_SIZE_BYTES` on S3; `None` on
    /// fs, which writes each chunk as it comes.
    part_size: Option<usize>,
}

/// Parts of an object copied between stores are buffered up to this size (an S3
/// multipart part, unless `S3_PART_SIZE_BYTES` says otherwise), so a copy holds the
/// same memory whatever the file's size.
const COPY_CHUNK: usize = 8 * 1024 * 1024;

impl Storage {
    /// Builds the operator from configuration; [`Storage::check`] then proves it works.
    /// `fsync_files`: new files on fs are synced to disk before they count as written
    /// ([`StorageConfig::files_synced`]).
    pub fn from_config(config: &StorageConfig, fsync_files: bool) -> Result<Self, ConfigError> {
        // Outgoing HTTPS uses rustls with ring; later calls find both installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
        match config.storage_backend {
            StorageBackend::Fs => {
                if config.storage_root.exists() && !config.storage_root.is_dir() {
                    return Err(ConfigError::new(
                        "STORAGE_ROOT",
                        format!("{} is a file, not a folder", config.storage_root.display()),
                    ));
                }
                std::fs::create_dir_all(&config.storage_root).map_err(|err| {
                    ConfigError::new(
                        "STORAGE_ROOT",
                        format!("cannot create {}: {err}", config.storage_root.display()),
                    )
                })?;
                Ok(Self {
                    fsync_files,
                    ..Self::fs(&config.storage_root)?
                })
            }
            StorageBackend::S3 => {
                let bucket = config.s3_bucket_name.as_deref().unwrap_or_default();
                let prefix = config.s3_prefix.trim_matches('/');
                let operator = Self::s3_operator(config, config.s3_endpoint_url.as_deref())?;
                let presigner = match &config.s3_public_endpoint_url {
                    Some(public) => Self::s3_operator(config, Some(public))?,
                    None => operator.clone(),
                };
                Ok(Self {
                    operator,
                    presigner,
                    backend: StorageBackend::S3,
                    fs_root: None,
                    location: format!("s3://{bucket}/{prefix}")
                        .trim_end_matches('/')
                        .to_owned(),
                    fsync_files: false,
                    s3_api: Some(std::sync::Arc::new(s3_api::S3Api::new(config))),
                    part_size: Some(
                        usize::try_from(config.s3_part_size_bytes).unwrap_or(COPY_CHUNK),
                    ),
                })
            }
        }
    }

    /// The local folder `STORAGE_ROOT` as it is, never created: the source of
    /// `storage migrate` and the fallback of downloads while files move to S3.
    pub fn local_source(root: &std::path::Path) -> Result<Self, ConfigError> {
        let listed = std::fs::read_dir(root).map_err(|err| {
            ConfigError::new(
                "STORAGE_ROOT",
                format!("the source folder {} cannot be read: {err}", root.display()),
            )
        })?;
        drop(listed);
        Self::fs(root)
    }

    fn fs(root: &std::path::Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError::new("STORAGE_ROOT", message);
        let root =
            std::path::absolute(root).map_err(|err| fail(format!("{}: {err}", root.display())))?;
        let text = root
            .to_str()
            .ok_or_else(|| fail("is not valid UTF-8".into()))?;
        // No atomic_write_dir: its final rename would overwrite, while without it
        // `if_not_exists` opens with O_EXCL and two writers can never share a key.
        let builder = opendal::services::Fs::default().root(text);
        let operator = Operator::new(builder).map_err(|err| fail(err.to_string()))?;
        Ok(Self {
            presigner: operator.clone(),
            operator,
            backend: StorageBackend::Fs,
            location: format!("fs:{text}"),
            fs_root: Some(root),
            fsync_files: false,
            s3_api: None,
            part_size: None,
        })
    }

    /// The operator of the configured bucket, talking to `endpoint` (AWS when none).
    fn s3_operator(
        config: &StorageConfig,
        endpoint: Option<&str>,
    ) -> Result<Operator, ConfigError> {
        let bucket = config.s3_bucket_name.as_deref().unwrap_or_default();
        let mut builder = opendal::services::S3::default()
            .bucket(bucket)
            .region(config.region())
            .root(&format!("/{}", config.s3_prefix.trim_matches('/')));
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint(endpoint);
        }
        if config.addressing_style() == AddressingStyle::Virtual {
            builder = builder.enable_virtual_host_style();
        }
        if let (Some(access), Some(secret)) = (&config.s3_access_key, &config.s3_secret_key) {
            builder = builder
                .access_key_id(access.expose())
                .secret_access_key(secret.expose())
                .disable_config_load()
                .disable_ec2_metadata();
        }
        // A throttled or briefly failing store (503 `SlowDown`, a 5xx, a broken
        // connection) costs a retry, as in attache's own client (`s3_api::Tries`):
        // as many tries, from the same first pause, up to 2 s apart.
        let retried = opendal::layers::RetryLayer::new()
            .with_jitter()
            .with_min_delay(s3_api::Tries::FIRST_PAUSE)
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(s3_api::Tries::MOST as usize - 1)
            .with_notify(|event: opendal::layers::RetryEvent<'_>| {
                tracing::warn!(error = %event.err, operation = ?event.op, "the store failed a request; trying again");
                crate::telemetry::storage_retry();
            });
        // No call to the bucket waits for ever: a stalled connection would hold an
        // upload's slot (its work runs to the end whatever the client does). Outside
        // the retries: a stalled store fails a call in 30 s, all tries included
        // (the call's reader or writer is then done with, as after any failure).
        let bounded = opendal::layers::TimeoutLayer::new()
            .with_timeout(s3_api::REQUEST_TIMEOUT)
            .with_io_timeout(s3_api::REQUEST_TIMEOUT);
        Operator::new(builder)
            .map(|operator| operator.layer(retried).layer(bounded))
            .map_err(|err| ConfigError::new("S3_BUCKET_NAME", err.to_string()))
    }

    pub fn backend(&self) -> StorageBackend {
        self.backend
    }

    /// The backend as the metrics name it.
    pub fn backend_label(&self) -> &'static str {
        match self.backend {
            StorageBackend::Fs => "fs",
            StorageBackend::S3 => "s3",
        }
    }

    /// Whether new files on fs are synced to disk before they count as written.
    pub fn fsync_files(&self) -> bool {
        self.fsync_files
    }

    /// Where the objects live, for people and audit rows; never carries credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes a new object of `content_type`; an existing key is an error, never a
    /// silent replacement (where the store honours `If-None-Match`; keys are new
    /// UUIDs that no client can write to, so nothing relies on it).
    pub async fn put_new(
        &self,
        key: &StorageKey,
        bytes: Bytes,
        content_type: &str,
    ) -> opendal::Result<()> {
        if let Some(root) = &self.fs_root {
            let path = root.join(key.as_str());
            let sync = self.fsync_files;
            if !sync && bytes.len() <= INLINE_WRITE_UP_TO {
                return self
                    .observed("write", async { write_new_file(&path, &bytes, false) })
                    .await;
            }
            return self
                .write_blocking(move || write_new_file(&path, &bytes, sync))
                .await;
        }
        let Some(api) = &self.s3_api else {
            return Err(no_store().into_storage());
        };
        // attache's own client, which sends a throttled PUT again (OpenDAL does not).
        let write = api.put_bytes(key.as_str(), bytes, content_type);
        self.observed("write", async {
            write.await.map_err(StreamWriteError::into_storage)
        })
        .await
    }

    /// Where an upload that arrives as base64 is spooled (the attachments' `spool`):
    /// on fs a new staging key, so that [`Storage::put_spooled`] only links it and
    /// `storage sweep` removes what a crash left; beside S3 a file of the process's
    /// temporary folder ([`temp`]), which the next start removes after a crash.
    pub fn spool_path(&self) -> std::path::PathBuf {
        let id = uuid::Uuid::now_v7();
        match &self.fs_root {
            Some(root) => root.join(StorageKey::staging(id).as_str()),
            None => temp::path_for(&format!("spool-{id}")),
        }
    }

    /// On fs, the staging files (spools and direct uploads' objects) unwritten for
    /// longer than `age`, as staging keys: what a killed process left, for the
    /// maintenance to remove those no row names. Beside S3, none.
    pub async fn staging_unwritten_for(&self, age: Duration) -> opendal::Result<Vec<StorageKey>> {
        let Some(root) = self.fs_root.clone() else {
            return Ok(Vec::new());
        };
        let listed = tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(root.join(StorageKey::STAGING)) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                entries => entries.map_err(fs_write::io_error)?,
            };
            Ok(entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
                .filter(|entry| temp::unwritten_for(entry, age))
                .filter_map(|entry| {
                    // Only names attache writes: another spelling of a UUID would
                    // name a key that is not this file.
                    let name = entry.file_name().into_string().ok()?;
                    let id: uuid::Uuid = name.parse().ok()?;
                    (id.hyphenated().to_string() == name).then_some(id)
                })
                .map(StorageKey::staging)
                .collect())
        });
        listed
            .await
            .map_err(|err| fs_write::io_error(std::io::Error::other(err)))?
    }

    /// Stores the finished file at `spooled` as the new object `key`: on fs a second
    /// name for it (no copy, never replacing a file), elsewhere streamed from it.
    pub async fn put_spooled(
        &self,
        key: &StorageKey,
        spooled: &std::path::Path,
        content_type: &str,
    ) -> opendal::Result<()> {
        if let Some(root) = &self.fs_root {
            let (from, to, sync) = (
                spooled.to_owned(),
                root.join(key.as_str()),
                self.fsync_files,
            );
            let linked = self
                .write_blocking(move || link_new_file(&from, &to, sync))
                .await;
            // Another filesystem under the root: the bytes are copied instead.
            if !matches!(&linked, Err(err) if err.kind() == opendal::ErrorKind::Unsupported) {
                return linked;
            }
        }
        let written = self.put_file(key, spooled, content_type).await;
        written.map(drop).map_err(StreamWriteError::into_storage)
    }

    /// Stores the local file at `path` as the new object `key`, streamed from it
    /// (on S3 read again for a request the store failed passingly).
    async fn put_file(
        &self,
        key: &StorageKey,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<u64, StreamWriteError> {
        if let (None, Some(api)) = (&self.fs_root, &self.s3_api) {
            let part_size = self.s3_part_size();
            let put = api.put_local(key.as_str(), path, part_size, content_type);
            return self.observed_stream(put).await;
        }
        let (size, body) = read_file(path).map_err(read_failed)?;
        self.put_exact(key, body, size, content_type).await
    }

    /// An fs write on the blocking pool, observed as a `write`.
    async fn write_blocking(
        &self,
        work: impl FnOnce() -> opendal::Result<()> + Send + 'static,
    ) -> opendal::Result<()> {
        let task = tokio::task::spawn_blocking(work);
        self.observed("write", async {
            task.await.map_err(|err| {
                opendal::Error::new(opendal::ErrorKind::Unexpected, "a write task failed")
                    .set_source(err)
            })?
        })
        .await
    }

    /// Runs one storage operation and records its latency and failure in the
    /// metrics; a missing object or a refused conditional write is an answer, not a
    /// failure.
    async fn observed<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = opendal::Result<T>>,
    ) -> opendal::Result<T> {
        let started = std::time::Instant::now();
        let result = work.await;
        let ok = result.as_ref().map_or_else(is_an_answer, |_| true);
        crate::telemetry::storage_operation(self.backend_label(), operation, started.elapsed(), ok);
        result
    }

    /// [`Storage::observed`] for a write streamed from a body: one that the client
    /// broke or sent too much of failed on the client's side, not the store's.
    async fn observed_stream(
        &self,
        work: impl Future<Output = Result<u64, StreamWriteError>>,
    ) -> Result<u64, StreamWriteError> {
        let started = std::time::Instant::now();
        let result = work.await;
        let ok = !matches!(&result, Err(StreamWriteError::Storage(err)) if !is_an_answer(err));
        crate::telemetry::storage_operation(self.backend_label(), "write", started.elapsed(), ok);
        result
    }

    /// Writes a new object of any length from a stream, as [`Storage::put_stream`]
    /// does (on S3 in parts of `S3_PART_SIZE_BYTES`; on fs each chunk as it comes),
    /// so memory stays flat however large it is; a broken stream (its producer
    /// reports an error) leaves no object behind. No reader ever sees it half-made,
    /// even after a kill: an S3 object appears when its upload completes, and on fs
    /// the file is linked into place once whole and synced ([`land_whole`]).
    pub async fn put_large<S, E>(
        &self,
        key: &StorageKey,
        body: S,
        content_type: &str,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Some(root) = &self.fs_root else {
            return self.put_stream(key, body, u64::MAX, content_type).await;
        };
        let path = root.join(key.as_str());
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // A name of its own: a writer killed midway leaves no file that blocks the next.
        let partial = path.with_file_name(format!(".partial-{}-{name}", uuid::Uuid::new_v4()));
        self.observed_stream(land_whole(&path, partial, body, None, true))
            .await
    }

    /// Writes the new object `key` from exactly `size` bytes of `body`, for a key
    /// that others look for while it is written (a direct upload's staging key,
    /// which a completion reads): none sees it before it is whole, and a body that
    /// ends short leaves nothing, so the writer may try again. On fs it is written
    /// as the new key `partial` and linked into place once whole (the caller's
    /// intent for `partial` removes what a kill leaves); an S3 object appears whole.
    pub async fn put_whole<S, E>(
        &self,
        key: &StorageKey,
        partial: &StorageKey,
        body: S,
        size: u64,
        content_type: &str,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Some(root) = &self.fs_root else {
            return self.put_exact(key, body, size, content_type).await;
        };
        let path = root.join(key.as_str());
        let partial = root.join(partial.as_str());
        let landed = land_whole(&path, partial, body, Some(size), self.fsync_files);
        self.observed_stream(landed).await
    }

    /// Writes the new object `key` (never overwriting) from `body`; a stream that
    /// breaks or passes `max` bytes leaves no object behind. On fs the chunks go
    /// straight to the file. S3 needs each request's length before its first byte:
    /// each part of `S3_PART_SIZE_BYTES` is spooled to a local temporary file, then
    /// streamed up from it (a multipart upload, aborted on failure), so memory stays
    /// flat either way and the disk holds one part at a time.
    pub async fn put_stream<S, E>(
        &self,
        key: &StorageKey,
        body: S,
        max: u64,
        content_type: &str,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if let Some(root) = &self.fs_root {
            return self.write_local(root, key, body, max).await;
        }
        let Some(api) = &self.s3_api else {
            return Err(no_store());
        };
        let put = api.put_spooling(
            key.as_str(),
            body,
            max,
            self.s3_part_size(),
            content_type,
            || self.spool_path(),
        );
        self.observed_stream(put).await
    }

    /// Streams `body` into the new file of `key` under `root` (at most `max`
    /// bytes), synced as `FSYNC_FILES` says; its length.
    async fn write_local<S, E>(
        &self,
        root: &std::path::Path,
        key: &StorageKey,
        body: S,
        max: u64,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = root.join(key.as_str());
        let write = async {
            let (_, written) = write_file(path, body, max, self.fsync_files).await?;
            Ok(written)
        };
        self.observed_stream(write).await
    }

    /// Writes the new object `key` from exactly `size` bytes of `body`: on S3 each
    /// request's body streams from it (`s3_write`), so no part is held in memory.
    pub async fn put_exact<S, E>(
        &self,
        key: &StorageKey,
        body: S,
        size: u64,
        content_type: &str,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if let Some(root) = &self.fs_root {
            let written = self.write_local(root, key, body, size).await?;
            if written == size {
                return Ok(written);
            }
            if let Err(err) = self.delete(key).await {
                tracing::warn!(key = %key, error = %err, "cannot remove a short write");
            }
            return Err(ended_short(written, size));
        }
        let Some(api) = &self.s3_api else {
            return Err(no_store());
        };
        let put = async {
            api.put_sized(key.as_str(), body, size, self.s3_part_size(), content_type)
                .await?;
            Ok(size)
        };
        self.observed_stream(put).await
    }

    /// The size of the parts of an S3 multipart upload.
    fn s3_part_size(&self) -> u64 {
        self.part_size.map_or(COPY_CHUNK as u64, |part| part as u64)
    }

    /// The multipart uploads a crash left unfinished under the prefix, begun before
    /// `cutoff`, with their keys as attache names objects; none on fs, and none
    /// (with a warning) from a store that cannot list them or credentials that may
    /// not (`s3:ListBucketMultipartUploads`): the sweep's other work stands.
    pub async fn unfinished_uploads(
        &self,
        cutoff: std::time::SystemTime,
    ) -> opendal::Result<Vec<(StorageKey, Unfinished)>> {
        let Some(uploads) = &self.s3_api else {
            return Ok(Vec::new());
        };
        let listed = match uploads.list().await {
            Ok(listed) => listed,
            Err(err) if err.unsupported() => {
                tracing::warn!(
                    error = %err,
                    "the store cannot list unfinished multipart uploads; a lifecycle rule \
                     (AbortIncompleteMultipartUpload) removes them instead"
                );
                return Ok(Vec::new());
            }
            Err(err) if err.denied() => {
                tracing::warn!(
                    error = %err,
                    "the credentials may not list unfinished multipart uploads: grant \
                     s3:ListBucketMultipartUploads, or let a lifecycle rule \
                     (AbortIncompleteMultipartUpload) remove them"
                );
                return Ok(Vec::new());
            }
            Err(err) => return Err(api_error("list unfinished multipart uploads", err)),
        };
        let cutoff = chrono::DateTime::<chrono::Utc>::from(cutoff);
        Ok(listed
            .into_iter()
            .filter(|upload| upload.initiated < cutoff)
            .map(|upload| {
                let key = StorageKey::from_stored(uploads.storage_key(&upload).to_owned());
                (key, upload)
            })
            .collect())
    }

    /// Aborts an unfinished multipart upload: the store drops its parts.
    pub async fn abort_upload(&self, upload: &Unfinished) -> opendal::Result<()> {
        let Some(uploads) = &self.s3_api else {
            return Ok(());
        };
        uploads
            .abort(upload)
            .await
            .map_err(|err| api_error("abort a multipart upload", err))
    }

    /// Reads a whole object; only for objects whose size was checked first.
    pub async fn read_all(&self, key: &StorageKey) -> opendal::Result<Bytes> {
        Ok(self.operator.read(key.as_str()).await?.to_bytes())
    }

    /// The size of an object, `None` when there is none.
    pub async fn size(&self, key: &StorageKey) -> opendal::Result<Option<u64>> {
        match self
            .observed("stat", self.operator.stat(key.as_str()))
            .await
        {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(err) if err.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// A presigned GET that answers `content_type` and `disposition` whatever the
    /// object was stored with, where the backend presigns (S3); `None` on fs, whose
    /// links are signed by attache itself.
    pub async fn presign_read(
        &self,
        key: &StorageKey,
        ttl: Duration,
        content_type: &str,
        disposition: &str,
    ) -> opendal::Result<Option<String>> {
        if self.backend == StorageBackend::Fs {
            return Ok(None);
        }
        let request = self
            .presigner
            .presign_read_with(key.as_str(), ttl)
            .override_content_type(content_type)
            .override_content_disposition(disposition)
            .await?;
        Ok(Some(request.uri().to_string()))
    }

    /// A presigned PUT of exactly `length` bytes and the headers the client must send
    /// with it (S3, at `S3_PUBLIC_ENDPOINT_URL` when set); `None` on fs.
    pub async fn presign_write(
        &self,
        key: &StorageKey,
        ttl: Duration,
        content_type: &str,
        length: u64,
    ) -> opendal::Result<Option<PresignedPut>> {
        let Some(api) = &self.s3_api else {
            return Ok(None);
        };
        // If-None-Match: * is signed in, where the store honours it; `key` is a
        // staging key anyway, which no attachment is ever stored under.
        let (url, headers) = api
            .presign_put(key.as_str(), ttl, content_type, length, Endpoint::Public)
            .await
            .map_err(|err| api_error("presign", err))?;
        Ok(Some(PresignedPut { url, headers }))
    }

    /// The object at `key`, opened to be read; `None` if there is none. On fs this
    /// opens the file (on the caller's task when the kernel's caches resolve its
    /// path) and takes its size from it, so what [`Storage::read`] streams is the
    /// file whose size was checked; on S3 it asks for the object's size.
    pub async fn open(&self, key: &StorageKey) -> opendal::Result<Option<OpenObject>> {
        let found = self.observed("stat", async {
            let Some(root) = &self.fs_root else {
                let size = self.operator.stat(key.as_str()).await?.content_length();
                return Ok((size, None));
            };
            let (file, size) = file_read::open(&root.join(key.as_str()))
                .await
                .map_err(fs_write::io_error)?;
            Ok((size, Some(file)))
        });
        match found.await {
            Ok((size, file)) => Ok(Some(OpenObject {
                key: key.clone(),
                size,
                file,
            })),
            Err(err) if err.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Streams `range` of an opened object, as [`Storage::stream`] does, from the
    /// file [`Storage::open`] opened on fs.
    pub async fn read(
        &self,
        object: OpenObject,
        range: std::ops::Range<u64>,
    ) -> opendal::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + use<>> {
        match object.file {
            Some(file) => {
                let reads = self.observed("read", async { Ok(file_read::read_range(file, range)) });
                Ok(reads.await?.left_stream())
            }
            None => {
                let mut stream = self.stream(&object.key, range.into()).await?;
                // The GET goes out with the first read: made here, before the
                // answer's headers, so an object removed since it was opened is an
                // error to answer, never a 200 cut short.
                let first = stream.next().await;
                if let Some(Err(err)) = first {
                    return Err(fs_write::io_error(err));
                }
                Ok(futures::stream::iter(first).chain(stream).right_stream())
            }
        }
    }

    /// Streams `range` of an object without holding it in memory: on fs in reads of
    /// [`file_read::READ_CHUNK`], so a download that its client stopped reading holds
    /// no more; on S3 as one GET whose body arrives as the network delivers it.
    pub async fn stream(
        &self,
        key: &StorageKey,
        range: opendal::BytesRange,
    ) -> opendal::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + use<>> {
        self.observed("read", async {
            let Some(root) = &self.fs_root else {
                let reader = self.operator.reader_with(key.as_str()).await?;
                return Ok(reader.into_bytes_stream(range).await?.right_stream());
            };
            let (file, length) = file_read::open(&root.join(key.as_str()))
                .await
                .map_err(fs_write::io_error)?;
            let end = range.size().map_or(length, |size| range.offset() + size);
            Ok(file_read::read_range(file, range.offset()..end).left_stream())
        })
        .await
    }

    /// Every object of the store (directories left out), in no particular order.
    pub async fn list(
        &self,
    ) -> opendal::Result<impl Stream<Item = opendal::Result<StoredObject>> + use<>> {
        self.list_in("").await
    }

    /// Every object whose key starts with `folder` (`""` or ending in `/`), in no
    /// particular order; a folder that does not exist is empty.
    pub async fn list_in(
        &self,
        folder: &str,
    ) -> opendal::Result<impl Stream<Item = opendal::Result<StoredObject>> + use<>> {
        let lister = self.operator.lister_with(folder).recursive(true).await?;
        Ok(lister.filter_map(|entry| {
            std::future::ready(match entry {
                Err(err) => Some(Err(err)),
                Ok(entry) if entry.metadata().is_dir() => None,
                Ok(entry) => {
                    let metadata = entry.metadata();
                    Some(Ok(StoredObject {
                        size: metadata.content_length(),
                        modified: metadata.last_modified().map(Into::into),
                        key: entry.path().to_owned(),
                    }))
                }
            })
        }))
    }

    /// Removes an object; a missing object counts as removed.
    pub async fn delete(&self, key: &StorageKey) -> opendal::Result<()> {
        self.observed("delete", self.operator.delete(key.as_str()))
            .await
    }
}

/// Gives the file `from` the new name `to` as well, never over an existing file: a
/// hard link, or where the file system has none (SMB shares, some FUSE mounts) a
/// rename once `to` is found free.
fn link_new(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            if to.exists() {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to)
        }
        linked => linked,
    }
}

/// Streams `body` into the new file `partial`, synced when `sync`, then links it to
/// `path` (never over an existing file): a reader, or a kill, never sees it
/// half-made. `exact`: the length the body must have, or nothing lands.
async fn land_whole<S, E>(
    path: &std::path::Path,
    partial: std::path::PathBuf,
    body: S,
    exact: Option<u64>,
    sync: bool,
) -> Result<u64, StreamWriteError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    // Refused before the body is read, not once it has come whole.
    if std::fs::exists(path).unwrap_or(false) {
        let err = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
        return Err(StreamWriteError::Storage(fs_write::io_error(err)));
    }
    let (_, written) = write_file(partial.clone(), body, exact.unwrap_or(u64::MAX), sync).await?;
    let whole = exact.is_none_or(|size| size == written);
    let path = path.to_owned();
    let linked = tokio::task::spawn_blocking(move || {
        let linked = match (whole, sync) {
            (true, true) => link_new(&partial, &path)
                .and_then(|()| fs_write::sync_folder(path.parent().unwrap_or(&path))),
            (true, false) => link_new(&partial, &path),
            (false, _) => Ok(()),
        };
        let _ = std::fs::remove_file(&partial);
        linked
    })
    .await
    .unwrap_or_else(|err| Err(std::io::Error::other(err)));
    linked.map_err(|err| StreamWriteError::Storage(fs_write::io_error(err)))?;
    match exact {
        Some(size) if size != written => Err(ended_short(written, size)),
        _ => Ok(written),
    }
}

/// A body that ended before the length it was written for.
fn ended_short(written: u64, size: u64) -> StreamWriteError {
    StreamWriteError::Body(format!(
        "the body ended after {written} of its {size} bytes"
    ))
}

/// A streamed write on a backend that has no way to take it (never configured).
fn no_store() -> StreamWriteError {
    let err = opendal::Error::new(opendal::ErrorKind::Unexpected, "no store to write to");
    StreamWriteError::Storage(err)
}

/// A local file attache made that cannot be read back.
fn read_failed(err: std::io::Error) -> StreamWriteError {
    StreamWriteError::Storage(fs_write::io_error(err))
}

fn api_error(operation: &'static str, err: s3_api::S3ApiError) -> opendal::Error {
    opendal::Error::new(opendal::ErrorKind::Unexpected, operation).set_source(err)
}
