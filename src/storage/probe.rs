//! Probes of the backend: the cheap liveness check of `/readyz`, the startup probe
//! that names the variable to fix, and `storage check`, which runs every operation
//! attache uses on probe objects.

use std::time::Duration;

use bytes::Bytes;

use super::s3_api::{Endpoint, S3Api};
use super::{Storage, StorageKey, StreamWriteError};
use crate::config::{ConfigError, StorageBackend, StorageConfig};

/// The type of probe objects, which also proves presigned GETs can override it.
pub(super) const PROBE_CONTENT_TYPE: &str = "text/plain";

/// How long the startup probe may take before the bucket counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The store's own words for `err`, on one short line: an S3 error's code
/// (`NoSuchBucket`), else its message, and its deepest cause (`Connection refused`);
/// the whole error goes to the debug log.
pub fn what_the_store_said(err: &opendal::Error) -> String {
    let message = err.message();
    let said = match message
        .split_once("code: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
    {
        Some((code, _)) => code.to_owned(),
        None if message.is_empty() => err.kind().to_string(),
        None => message.to_owned(),
    };
    // The deepest cause says most (`Connection refused`, not `error sending request`).
    let mut cause = std::error::Error::source(err);
    while let Some(deeper) = cause.and_then(std::error::Error::source) {
        cause = Some(deeper);
    }
    let said = match cause {
        Some(cause) => format!("{said}: {cause}"),
        None => said,
    };
    said.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

impl Storage {
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
                true => self
                    .check_steps()
                    .await
                    .into_iter()
                    .find_map(|(step, result)| result.err().map(|err| (step, err))),
                false => self.ping().await.err().map(|err| ("list", err)),
            }
        };
        let (step, failure) = match tokio::time::timeout(PROBE_TIMEOUT, checked).await {
            Ok(None) => return Ok(()),
            Ok(Some(failed)) => failed,
            Err(_) => (
                "any",
                opendal::Error::new(
                    opendal::ErrorKind::Unexpected,
                    format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
                ),
            ),
        };
        let (variable, reason) = match (self.backend, failure.kind()) {
            (StorageBackend::Fs, _) if self.fsync_files => (
                "STORAGE_ROOT",
                "the folder cannot be written, synced to disk (FSYNC_FILES) and read",
            ),
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
            format!(
                "storage probe failed: {reason} (step {step}: {}); \
                 `attache storage check` tries each step",
                what_the_store_said(&failure)
            ),
        ))
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
        let read = self.read_back(&probe, &payload).await;
        let stat = self.size(&probe).await.and_then(|size| match size {
            Some(size) if size == payload.len() as u64 => Ok(()),
            _ => Err(opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                "stat gives another size",
            )),
        });
        let presigned = self.presigned_round_trip(&payload).await;
        let streamed = self.streamed_round_trip(&payload).await;
        let deleted = self.delete(&probe).await;
        vec![
            ("list", Ok(())),
            ("write", Ok(())),
            ("conditional write", conditional),
            ("read", read),
            ("stat", stat),
            ("presigned PUT/GET", presigned),
            ("streamed write", streamed),
            ("delete", deleted),
        ]
    }

    /// Reads `probe` back: it must hold `payload`.
    async fn read_back(&self, probe: &StorageKey, payload: &Bytes) -> opendal::Result<()> {
        let read = self.read_all(probe).await?;
        match read == *payload {
            true => Ok(()),
            false => Err(opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                "read back differs from what was written",
            )),
        }
    }

    /// Writes a second probe object from a stream of known length, as large files
    /// are written (on S3 attache's own signed PUT, its body unsigned), reads it back
    /// and removes it.
    async fn streamed_round_trip(&self, payload: &Bytes) -> opendal::Result<()> {
        let probe = StorageKey::probe();
        let body = futures::stream::iter([Ok::<_, std::io::Error>(payload.clone())]);
        let size = payload.len() as u64;
        let written = self
            .put_exact(&probe, body, size, PROBE_CONTENT_TYPE)
            .await
            .map_err(StreamWriteError::into_storage);
        let read = match written {
            Ok(_) => self.read_back(&probe, payload).await,
            Err(err) => Err(err),
        };
        let removed = self.delete(&probe).await;
        read.and(removed)
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
        let Some(api) = &self.s3_api else {
            return Ok(());
        };
        let probe = StorageKey::probe();
        let sent = self.presigned_put_then_get(api, &probe, payload).await;
        let removed = self.delete(&probe).await;
        sent.and(removed)
    }

    async fn presigned_put_then_get(
        &self,
        api: &S3Api,
        probe: &StorageKey,
        payload: &Bytes,
    ) -> opendal::Result<()> {
        let failed = |message: String| opendal::Error::new(opendal::ErrorKind::Unexpected, message);
        let client = reqwest::Client::new();
        // At S3_ENDPOINT_URL: the public endpoint may be reachable by browsers only.
        let length = payload.len() as u64;
        let (url, headers) = api
            .presign_put(
                probe.as_str(),
                PROBE_TIMEOUT,
                PROBE_CONTENT_TYPE,
                length,
                Endpoint::Internal,
            )
            .await
            .map_err(|err| failed(format!("the PUT cannot be presigned: {err}")))?;
        let mut request = client.put(url).timeout(PROBE_TIMEOUT).body(payload.clone());
        for (name, value) in headers {
            request = request.header(name, value);
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
}
