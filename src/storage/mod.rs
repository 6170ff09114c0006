//! One OpenDAL operator behind a small interface: write a new object (never
//! overwriting), stream a range of it, delete it, probe the backend. The database
//! keeps only relative keys, so every key is valid on every backend (SPEC 8).

mod key;

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use opendal::Operator;

pub use key::{KeyTemplate, StorageKey};

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

/// A presigned PUT: its URL and the headers that are part of its signature.
#[derive(Clone, Debug)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Why an object was not copied from one store to another, and which side failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source failed: {0}")]
    Source(#[source] opendal::Error),
    #[error("writing the destination failed: {0}")]
    Destination(#[source] opendal::Error),
}

/// The size and sha256 of an object's bytes, as read back from a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

/// The size and sha256 of bytes read chunk by chunk.
#[derive(Default)]
struct Digesting {
    hasher: sha2::Sha256,
    size: u64,
}

impl Digesting {
    fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest as _;
        self.size += chunk.len() as u64;
        self.hasher.update(chunk);
    }

    fn finish(self) -> Digest {
        use sha2::Digest as _;
        Digest {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// A broken read stream as an OpenDAL error.
fn read_failed(err: std::io::Error) -> opendal::Error {
    opendal::Error::new(opendal::ErrorKind::Unexpected, "reading an object failed").set_source(err)
}

/// A stored object as a listing sees it.
#[derive(Clone, Debug)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub modified: Option<std::time::SystemTime>,
}

/// The object store of attache: local disk or an S3-compatible bucket.
#[derive(Clone, Debug)]
pub struct Storage {
    operator: Operator,
    /// Signs the URLs clients get: the operator itself, or one for
    /// S3_PUBLIC_ENDPOINT_URL (it never sends a request).
    presigner: Operator,
    backend: StorageBackend,
    /// The absolute root folder on fs, where objects are plain files.
    fs_root: Option<std::path::PathBuf>,
    /// Where the objects live, for people: `fs:/srv/uploads`, `s3://bucket/prefix`.
    location: String,
    /// `FSYNC_FILES`: new files are synced to disk before they count as written.
    fsync_files: bool,
}

/// Parts of an object copied between stores are buffered up to this size (an S3
/// multipart part), so a copy holds the same memory whatever the file's size.
const COPY_CHUNK: usize = 8 * 1024 * 1024;

/// The most bytes one fs read of a download holds (see [`Storage::stream`]).
const READ_CHUNK: usize = 128 * 1024;

/// The type of probe objects, which also proves presigned GETs can override it.
const PROBE_CONTENT_TYPE: &str = "text/plain";

/// How long the startup probe may take before the bucket counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl Storage {
    /// Builds the operator from configuration; [`Storage::check`] then proves it works.
    pub fn from_config(config: &StorageConfig) -> Result<Self, ConfigError> {
        // Outgoing HTTPS uses rustls with ring; later calls find both installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
        match config.storage_backend {
            StorageBackend::Fs => {
                std::fs::create_dir_all(&config.storage_root).map_err(|err| {
                    ConfigError::new(
                        "STORAGE_ROOT",
                        format!("cannot create {}: {err}", config.storage_root.display()),
                    )
                })?;
                Ok(Self {
                    fsync_files: config.fsync_files,
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
        Operator::new(builder).map_err(|err| ConfigError::new("S3_BUCKET_NAME", err.to_string()))
    }

    pub fn backend(&self) -> StorageBackend {
        self.backend
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
            let write = tokio::task::spawn_blocking(move || write_new_file(&path, &bytes, sync));
            return self
                .observed("write", async {
                    write.await.map_err(|err| {
                        opendal::Error::new(opendal::ErrorKind::Unexpected, "a write task failed")
                            .set_source(err)
                    })?
                })
                .await;
        }
        let write = self
            .operator
            .write_with(key.as_str(), bytes)
            .content_type(content_type)
            .if_not_exists(true);
        self.observed("write", async { write.await.map(drop) })
            .await
    }

    /// Runs one storage operation and records its latency and failure in the
    /// metrics; a missing object is an answer, not a failure.
    async fn observed<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = opendal::Result<T>>,
    ) -> opendal::Result<T> {
        let started = std::time::Instant::now();
        let result = work.await;
        let ok = result
            .as_ref()
            .map_or_else(|err| err.kind() == opendal::ErrorKind::NotFound, |_| true);
        let backend = match self.backend {
            StorageBackend::Fs => "fs",
            StorageBackend::S3 => "s3",
        };
        crate::telemetry::storage_operation(backend, operation, started.elapsed(), ok);
        result
    }

    /// Writes a new object from a stream, refusing more than `max` bytes; a refused
    /// or broken stream leaves no object behind.
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
        self.write_new(key, body, max, None, content_type).await
    }

    /// Writes a new object of any length from a stream, in parts of [`COPY_CHUNK`]
    /// bytes (an S3 multipart upload), so memory stays flat however large it is; a
    /// broken stream (its producer reports an error) leaves no object behind.
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
        self.write_new(key, body, u64::MAX, Some(COPY_CHUNK), content_type)
            .await
    }

    /// Creates `key` (never overwriting) and feeds it `body`, buffered into parts of
    /// `chunk` bytes when given; closes it at the end, or discards the object when
    /// the body breaks or passes `max` bytes.
    async fn write_new<S, E>(
        &self,
        key: &StorageKey,
        mut body: S,
        max: u64,
        chunk: Option<usize>,
        content_type: &str,
    ) -> Result<u64, StreamWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut writer = self
            .operator
            .writer_with(key.as_str())
            .content_type(content_type)
            .if_not_exists(true);
        if let Some(chunk) = chunk {
            writer = writer.chunk(chunk);
        }
        let mut writer = writer.await?;
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            let failure = match chunk {
                Err(err) => Some(StreamWriteError::Body(err.to_string())),
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    if total > max {
                        Some(StreamWriteError::TooLarge)
                    } else {
                        writer
                            .write(chunk)
                            .await
                            .err()
                            .map(StreamWriteError::Storage)
                    }
                }
            };
            if let Some(failure) = failure {
                self.discard_partial(key, writer.abort().await).await;
                return Err(failure);
            }
        }
        writer.close().await?;
        Ok(total)
    }

    /// After a refused stream: S3 aborts the unfinished upload; fs cannot abort, but
    /// the file is this writer's own (opened with O_EXCL), so it is removed.
    async fn discard_partial(&self, key: &StorageKey, aborted: opendal::Result<()>) {
        let removed = match aborted {
            Err(err) if err.kind() == opendal::ErrorKind::Unsupported && self.fs_root.is_some() => {
                self.delete(key).await
            }
            other => other,
        };
        if let Err(err) = removed {
            tracing::warn!(key = %key, error = %err, "cannot remove a refused write");
        }
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

    /// A presigned PUT and the headers the client must send with it (S3); `None` on fs.
    pub async fn presign_write(
        &self,
        key: &StorageKey,
        ttl: Duration,
        content_type: &str,
    ) -> opendal::Result<Option<PresignedPut>> {
        if self.backend == StorageBackend::Fs {
            return Ok(None);
        }
        // If-None-Match: * is signed in, where the store honours it; `key` is a
        // staging key anyway, which no attachment is ever stored under.
        let options = opendal::options::WriteOptions {
            content_type: Some(content_type.to_owned()),
            if_not_exists: true,
            ..Default::default()
        };
        let request = self
            .presigner
            .presign_write_options(key.as_str(), ttl, options)
            .await?;
        let headers = request
            .header()
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        Ok(Some(PresignedPut {
            url: request.uri().to_string(),
            headers,
        }))
    }

    /// Streams `range` of an object without holding it in memory: on fs in reads of
    /// [`READ_CHUNK`], so a download that its client stopped reading holds no more;
    /// on S3 as one GET whose body arrives as the network delivers it.
    pub async fn stream(
        &self,
        key: &StorageKey,
        range: opendal::BytesRange,
    ) -> opendal::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + use<>> {
        self.observed("read", async {
            let reader = self.operator.reader_with(key.as_str());
            let reader = match self.backend {
                StorageBackend::Fs => reader.chunk(READ_CHUNK).await?,
                StorageBackend::S3 => reader.await?,
            };
            reader.into_bytes_stream(range).await
        })
        .await
    }

    /// The size and sha256 of a stored object, read as a stream; `None` when there is
    /// no such object.
    pub async fn digest(&self, key: &StorageKey) -> opendal::Result<Option<Digest>> {
        let mut stream = match self.stream(key, opendal::BytesRange::from(..)).await {
            Ok(stream) => stream,
            Err(err) if err.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut digest = Digesting::default();
        while let Some(chunk) = stream.next().await {
            digest.update(&chunk.map_err(read_failed)?);
        }
        Ok(Some(digest.finish()))
    }

    /// Copies `key` from `source` into this store as a stream, replacing what is
    /// there, and returns the digest of the bytes read from the source.
    pub async fn copy_from(
        &self,
        source: &Storage,
        key: &StorageKey,
        content_type: &str,
    ) -> Result<Digest, CopyError> {
        let mut stream = source
            .stream(key, opendal::BytesRange::from(..))
            .await
            .map_err(CopyError::Source)?;
        let mut writer = self
            .operator
            .writer_with(key.as_str())
            .content_type(content_type)
            .chunk(COPY_CHUNK)
            .await
            .map_err(CopyError::Destination)?;
        let mut digest = Digesting::default();
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(chunk) => {
                    digest.update(&chunk);
                    writer.write(chunk).await.map_err(CopyError::Destination)
                }
                Err(err) => Err(CopyError::Source(read_failed(err))),
            };
            if let Err(err) = written {
                // The bucket keeps what was there before an aborted multipart upload.
                let _ = writer.abort().await;
                return Err(err);
            }
        }
        writer.close().await.map_err(CopyError::Destination)?;
        Ok(digest.finish())
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

    /// A cheap liveness check of the backend (a list, no write). On fs the root
    /// folder itself must still be there: listing a vanished folder finds nothing,
    /// which is not an error to OpenDAL.
    pub async fn ping(&self) -> opendal::Result<()> {
        if let Some(root) = &self.fs_root
            && !tokio::fs::metadata(root)
                .await
                .is_ok_and(|meta| meta.is_dir())
        {
            return Err(opendal::Error::new(
                opendal::ErrorKind::NotFound,
                "the storage folder is gone",
            ));
        }
        self.observed("list", self.operator.check()).await
    }

    /// The startup probe: a failure becomes one line naming the variable to fix,
    /// within [`PROBE_TIMEOUT`] rather than at the first upload.
    pub async fn startup_check(&self, config: &StorageConfig) -> Result<(), ConfigError> {
        self.probe(config, true).await
    }

    /// Like [`Storage::startup_check`]; without `write`, only lists (writes nothing).
    pub async fn probe(&self, config: &StorageConfig, write: bool) -> Result<(), ConfigError> {
        let checked = async {
            match write {
                true => self.check().await,
                false => self.ping().await,
            }
        };
        let failure = match tokio::time::timeout(PROBE_TIMEOUT, checked).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err,
            Err(_) => opendal::Error::new(opendal::ErrorKind::Unexpected, "no answer in time"),
        };
        let (variable, reason) = match (self.backend, failure.kind()) {
            (StorageBackend::Fs, _) => ("STORAGE_ROOT", "the folder cannot be written and read"),
            (StorageBackend::S3, opendal::ErrorKind::PermissionDenied) => (
                "S3_ACCESS_KEY / S3_SECRET_KEY",
                "the bucket refused these credentials",
            ),
            (
                StorageBackend::S3,
                opendal::ErrorKind::NotFound | opendal::ErrorKind::ConfigInvalid,
            ) => ("S3_BUCKET_NAME", "no such bucket"),
            (StorageBackend::S3, _) if config.s3_endpoint_url.is_some() => (
                "S3_ENDPOINT_URL",
                "the endpoint cannot be reached or answers errors",
            ),
            (StorageBackend::S3, _) => ("S3_BUCKET_NAME", "the bucket cannot be reached"),
        };
        Err(ConfigError::new(
            variable,
            format!("storage probe failed: {reason} ({})", failure.kind()),
        ))
    }

    /// Writes, reads back and deletes a probe object: the proof that storage answers.
    pub async fn check(&self) -> opendal::Result<()> {
        self.check_steps()
            .await
            .into_iter()
            .try_for_each(|(_, result)| result)
    }

    /// Each step of the probe and its outcome, for `attache storage check`: list the
    /// root (a missing bucket shows here), then write, read, stat and delete a probe
    /// object. After a failed list or write, the later steps are not tried.
    pub async fn check_steps(&self) -> Vec<(&'static str, opendal::Result<()>)> {
        let listed = self.ping().await;
        if listed.is_err() {
            return vec![("list", listed)];
        }
        let probe = StorageKey::probe();
        let payload = Bytes::from_static(b"attache storage probe");
        let written = self
            .put_new(&probe, payload.clone(), PROBE_CONTENT_TYPE)
            .await;
        if written.is_err() {
            return vec![("list", Ok(())), ("write", written)];
        }
        let conditional = self.conditional_write(&probe, payload.clone()).await;
        let read = self.read_all(&probe).await.and_then(|read| {
            if read == payload {
                Ok(())
            } else {
                Err(opendal::Error::new(
                    opendal::ErrorKind::Unexpected,
                    "read back differs from what was written",
                ))
            }
        });
        let stat = self.size(&probe).await.and_then(|size| match size {
            Some(size) if size == payload.len() as u64 => Ok(()),
            _ => Err(opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                "stat gives another size",
            )),
        });
        let presigned = self.presigned_round_trip(&payload).await;
        let deleted = self.delete(&probe).await;
        vec![
            ("list", Ok(())),
            ("write", Ok(())),
            ("conditional write", conditional),
            ("read", read),
            ("stat", stat),
            ("presigned PUT/GET", presigned),
            ("delete", deleted),
        ]
    }

    /// Writes `probe` again with `If-None-Match: *`: a store that overwrites is said
    /// in the log, not refused, as attache does not depend on it (direct uploads go
    /// to staging keys; every stored key is a new UUID no client can write to).
    async fn conditional_write(&self, probe: &StorageKey, payload: Bytes) -> opendal::Result<()> {
        match self.put_new(probe, payload, PROBE_CONTENT_TYPE).await {
            Err(err) if err.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(()),
            Err(err) => Err(err),
            Ok(()) => {
                tracing::warn!(
                    location = %self.location,
                    "this store ignores If-None-Match: * (an existing object was overwritten); \
                     attache does not rely on it"
                );
                Ok(())
            }
        }
    }

    /// On S3, PUTs a second probe object through a presigned URL and GETs it back
    /// through another, as a browser would (signed for the endpoint attache talks
    /// to, which it can reach): signatures, clock, region, the signed headers and the
    /// response overrides must all be right. The second object is removed.
    async fn presigned_round_trip(&self, payload: &Bytes) -> opendal::Result<()> {
        if self.backend == StorageBackend::Fs {
            return Ok(());
        }
        let probe = StorageKey::probe();
        let sent = self.presigned_put_then_get(&probe, payload).await;
        let removed = self.delete(&probe).await;
        sent.and(removed)
    }

    async fn presigned_put_then_get(
        &self,
        probe: &StorageKey,
        payload: &Bytes,
    ) -> opendal::Result<()> {
        let failed = |message: String| opendal::Error::new(opendal::ErrorKind::Unexpected, message);
        let client = reqwest::Client::new();
        let options = opendal::options::WriteOptions {
            content_type: Some(PROBE_CONTENT_TYPE.to_owned()),
            if_not_exists: true,
            ..Default::default()
        };
        let put = self
            .operator
            .presign_write_options(probe.as_str(), PROBE_TIMEOUT, options)
            .await?;
        let mut request = client
            .put(put.uri().to_string())
            .timeout(PROBE_TIMEOUT)
            .body(payload.clone());
        for (name, value) in put.header() {
            request = request.header(name.as_str(), value.as_bytes());
        }
        let response = request.send().await.map_err(|err| {
            failed(format!(
                "the presigned PUT cannot be sent: {}",
                err.without_url()
            ))
        })?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "the presigned PUT answered {} (a clock, region or signature problem?)",
                response.status()
            )));
        }
        let get = self
            .operator
            .presign_read_with(probe.as_str(), PROBE_TIMEOUT)
            .override_content_type(PROBE_CONTENT_TYPE)
            .await?;
        let response = client
            .get(get.uri().to_string())
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(|err| {
                failed(format!(
                    "the presigned GET cannot be sent: {}",
                    err.without_url()
                ))
            })?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(|err| {
            failed(format!(
                "the presigned GET broke off: {}",
                err.without_url()
            ))
        })?;
        if !status.is_success() || body != *payload {
            return Err(failed(format!(
                "the presigned GET answered {status} or other bytes than were PUT"
            )));
        }
        if content_type.as_deref() != Some(PROBE_CONTENT_TYPE) {
            return Err(failed(format!(
                "the presigned GET ignored response-content-type (answered {content_type:?})"
            )));
        }
        Ok(())
    }

    /// Streams a whole object into `file` without holding it in memory.
    pub async fn download_to(
        &self,
        key: &StorageKey,
        file: &mut tokio::fs::File,
    ) -> std::io::Result<()> {
        let stream = self
            .stream(key, opendal::BytesRange::from(..))
            .await
            .map_err(std::io::Error::other)?;
        let mut reader = tokio_util::io::StreamReader::new(stream);
        tokio::io::copy(&mut reader, file).await?;
        tokio::io::AsyncWriteExt::flush(file).await
    }

    /// A real filesystem path to an object, for tools that need one (scanners,
    /// converters): the file itself on fs, a temporary copy removed on drop on s3.
    pub async fn local_path(&self, key: &StorageKey) -> std::io::Result<LocalFile> {
        if let Some(root) = &self.fs_root {
            let path = root.join(key.as_str());
            tokio::fs::metadata(&path).await?;
            return Ok(LocalFile { path, _copy: None });
        }
        let copy = tempfile::NamedTempFile::new()?.into_temp_path();
        let mut file = tokio::fs::File::create(&copy).await?;
        self.download_to(key, &mut file).await?;
        Ok(LocalFile {
            path: copy.to_path_buf(),
            _copy: Some(copy),
        })
    }
}

/// A new file on fs in one trip to the blocking pool, where OpenDAL's writer takes
/// six and always syncs (0.3 to 1 ms an upload). `create_new` (O_EXCL) keeps the
/// never-overwrite rule. Without `sync` the file survives a crash of the process
/// (the kernel holds it); with it, also a power loss. A failed write leaves no file.
fn write_new_file(path: &std::path::Path, bytes: &[u8], sync: bool) -> opendal::Result<()> {
    use std::os::unix::fs::FileExt;
    let folder = path.parent().unwrap_or(path);
    std::fs::create_dir_all(folder).map_err(io_error)?;
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error)?;
    let direct = write_direct(path, bytes);
    let written = file
        .write_all_at(&bytes[direct..], direct as u64)
        .and_then(|()| match sync {
            true => file
                .sync_data()
                .and_then(|()| std::fs::File::open(folder)?.sync_all()),
            false => Ok(()),
        });
    if let Err(err) = written {
        let _ = std::fs::remove_file(path);
        return Err(io_error(err));
    }
    Ok(())
}

/// Up to this size an unsynced file is written where the request runs: a few
/// page-cache writes take microseconds, less than the trip to the blocking pool and
/// back (two thread switches).
const INLINE_WRITE_UP_TO: usize = 64 * 1024;

/// Where an upload's bytes should start in memory: a page boundary, so that
/// [`Storage::put_new`] can hand them to the disk without a copy (`O_DIRECT`).
pub const FILE_ALIGNMENT: usize = 4096;

/// Large files go to the disk without passing through the page cache (`O_DIRECT`,
/// as MinIO writes objects): a burst of uploads neither evicts what is read often
/// nor pays for filling fresh cache pages, four times the cost of the write on a VM.
const DIRECT_WRITE_FROM: usize = 256 * 1024;

/// Writes the block-aligned head of `bytes` to the new file at `path` with
/// `O_DIRECT`, when the buffer starts on a page (see `decode_base64`) and the
/// filesystem allows it; how many bytes it wrote, the rest is for a buffered write.
#[cfg(target_os = "linux")]
fn write_direct(path: &std::path::Path, bytes: &[u8]) -> usize {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let head = bytes.len() - bytes.len() % FILE_ALIGNMENT;
    if bytes.len() < DIRECT_WRITE_FROM || bytes.as_ptr().align_offset(FILE_ALIGNMENT) != 0 {
        return 0;
    }
    let written = std::fs::File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .and_then(|mut file| file.write_all(&bytes[..head]));
    // A filesystem without O_DIRECT (tmpfs) or a short write: the buffered write
    // starts again from the beginning.
    written.map_or(0, |()| head)
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_path: &std::path::Path, _bytes: &[u8]) -> usize {
    0
}

/// An I/O error as OpenDAL would report it; an existing file is a failed condition.
fn io_error(err: std::io::Error) -> opendal::Error {
    let kind = match err.kind() {
        std::io::ErrorKind::AlreadyExists => opendal::ErrorKind::ConditionNotMatch,
        std::io::ErrorKind::NotFound => opendal::ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => opendal::ErrorKind::PermissionDenied,
        _ => opendal::ErrorKind::Unexpected,
    };
    opendal::Error::new(kind, "writing a file failed").set_source(err)
}

/// A path on the local filesystem holding an object's bytes; a temporary copy is
/// removed when this is dropped.
pub struct LocalFile {
    path: std::path::PathBuf,
    _copy: Option<tempfile::TempPath>,
}

impl LocalFile {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
