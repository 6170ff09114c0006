//! A large base64 file leaves the request body as it arrives: decoded piece by piece
//! into a file of its own (a staging object on fs, a temporary file beside S3),
//! hashed and sniffed on the way by the blocking pool while the next piece is
//! decoded. An upload holds two buffers of [`SPOOL_CHUNK`] whatever its size; its
//! resolver finds the size, type and checksum ready, and storage takes the file
//! over ([`crate::storage::Storage::put_spooled`]: a link on fs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::base64_stream::{Base64Stream, InvalidBase64};
use crate::error::AppError;
use crate::media::{MediaType, Sniffer};

/// How many decoded bytes are written at a time; two such buffers per upload.
pub const SPOOL_CHUNK: usize = 512 * 1024;

/// Why a spooled file cannot be stored; its resolver reports it in SPEC 4's order.
#[derive(Debug)]
pub enum SpoolFailure {
    InvalidBase64,
    Write(std::io::Error),
}

impl SpoolFailure {
    pub fn to_error(&self) -> AppError {
        match self {
            Self::InvalidBase64 => AppError::bad_input("the file is not valid base64"),
            Self::Write(err) => AppError::Internal(anyhow::anyhow!(
                "cannot keep an upload while it arrives: {err}"
            )),
        }
    }
}

/// A file received whole, with what the checks need; its spool file is removed
/// when the last user drops it.
pub struct Spooled {
    path: PathBuf,
    size: u64,
    sha256: String,
    sniffer: Sniffer,
}

impl Spooled {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Lowercase hex, as attache records it.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// [`MediaType::detect`] of the whole file.
    pub fn media(&self, declared: Option<&str>, filename: &str) -> Option<MediaType> {
        self.sniffer.finish(declared, filename)
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The file, hasher and sniffer of a spool, which travel to the blocking pool with
/// each buffer; a worker dropped before it is done (a failed write, a request that
/// went away) removes its file.
struct Worker {
    path: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256,
    sniffer: Sniffer,
    done: bool,
}

impl Worker {
    /// Hashes, sniffs and appends `buffer`, handing it back empty.
    fn write(mut self, mut buffer: Vec<u8>) -> std::io::Result<(Self, Vec<u8>)> {
        use std::io::Write;
        self.hasher.update(&buffer);
        self.sniffer.update(&buffer);
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => self.file.insert(create_new(&self.path)?),
        };
        file.write_all(&buffer)?;
        buffer.clear();
        Ok((self, buffer))
    }

    fn into_spooled(mut self, size: u64) -> Spooled {
        self.done = true;
        Spooled {
            path: std::mem::take(&mut self.path),
            size,
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
            sniffer: std::mem::take(&mut self.sniffer),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new file, its folder made on first use; never an existing one.
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    let open = || {
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(path)
    };
    match open() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().unwrap_or(path))?;
            open()
        }
        other => other,
    }
}

type Job = tokio::task::JoinHandle<std::io::Result<(Worker, Vec<u8>)>>;

/// A base64 file decoded into its spool file as its text arrives.
pub struct Base64Spool {
    decoder: Base64Stream,
    /// Decoded bytes not yet handed to the worker.
    buffer: Vec<u8>,
    /// The worker when idle; `None` while `job` runs.
    worker: Option<Worker>,
    job: Option<Job>,
    /// The buffer the worker handed back, for the next one.
    spare: Option<Vec<u8>>,
    size: u64,
}

impl Base64Spool {
    /// A spool that will write the new file `path` (from its first bytes on).
    pub fn new(path: PathBuf) -> Self {
        Self {
            decoder: Base64Stream::default(),
            buffer: Vec::with_capacity(SPOOL_CHUNK),
            worker: Some(Worker {
                path,
                file: None,
                hasher: Sha256::new(),
                sniffer: Sniffer::new(),
                done: false,
            }),
            job: None,
            spare: None,
            size: 0,
        }
    }

    /// Decodes the next piece of text (JSON escapes already resolved).
    pub async fn feed(&mut self, text: &[u8]) -> Result<(), SpoolFailure> {
        // A piece decodes into at most one buffer's worth at a time.
        for piece in text.chunks(SPOOL_CHUNK / 3 * 4) {
            self.decoder
                .feed(piece, &mut self.buffer)
                .map_err(|InvalidBase64| SpoolFailure::InvalidBase64)?;
            if self.buffer.len() >= SPOOL_CHUNK {
                self.hand_over().await?;
            }
        }
        Ok(())
    }

    /// The whole file, once its text ended.
    pub async fn finish(mut self) -> Result<Arc<Spooled>, SpoolFailure> {
        let decoder = std::mem::take(&mut self.decoder);
        decoder
            .finish(&mut self.buffer)
            .map_err(|InvalidBase64| SpoolFailure::InvalidBase64)?;
        if !self.buffer.is_empty() {
            self.hand_over().await?;
        }
        let worker = self.idle_worker().await?;
        Ok(Arc::new(worker.into_spooled(self.size)))
    }

    /// Gives the full buffer to the worker, once it is done with the last one.
    async fn hand_over(&mut self) -> Result<(), SpoolFailure> {
        let worker = self.idle_worker().await?;
        self.size += self.buffer.len() as u64;
        let spare = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(SPOOL_CHUNK));
        let full = std::mem::replace(&mut self.buffer, spare);
        self.job = Some(tokio::task::spawn_blocking(move || worker.write(full)));
        Ok(())
    }

    /// The worker, after its job if one runs.
    async fn idle_worker(&mut self) -> Result<Worker, SpoolFailure> {
        if let Some(job) = self.job.take() {
            let (worker, spare) = job
                .await
                .map_err(|err| SpoolFailure::Write(std::io::Error::other(err)))?
                .map_err(SpoolFailure::Write)?;
            self.spare = Some(spare);
            return Ok(worker);
        }
        self.worker
            .take()
            .ok_or_else(|| SpoolFailure::Write(std::io::Error::other("the spool was used up")))
    }
}
