//! A large base64 file leaves the request body as it arrives: decoded piece by piece
//! into a file of its own (a staging object on fs, a temporary file beside S3),
//! hashed and sniffed on the way by the blocking pool while the next piece is
//! decoded. An upload holds two buffers of [`SPOOL_CHUNK`] whatever its size; its
//! resolver finds the size, type and checksum ready, and storage takes the file
//! over ([`crate::storage::Storage::put_spooled`]: a link on fs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::base64_stream::{Base64Stream, InvalidBase64};
use super::upload::FileContent;
use crate::error::AppError;
use crate::media::{MediaType, Sniffer};
use crate::storage::FILE_ALIGNMENT;

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
/// each chunk; a worker dropped before it is done (a failed write, a request that
/// went away) removes its file.
struct Worker {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Whole aligned chunks go to the disk without the page cache ([`open_direct`]).
    direct: Option<std::fs::File>,
    try_direct: bool,
    written: u64,
    hasher: Sha256,
    sniffer: Sniffer,
    done: bool,
}

impl Worker {
    /// Hashes, sniffs and appends `chunk`, handing it back empty.
    fn write(mut self, mut chunk: Chunk) -> std::io::Result<(Self, Chunk)> {
        use std::os::unix::fs::FileExt;
        let bytes = chunk.bytes();
        self.hasher.update(bytes);
        self.sniffer.update(bytes);
        if self.file.is_none() {
            self.file = Some(create_new(&self.path)?);
        }
        let whole = bytes.len().is_multiple_of(FILE_ALIGNMENT);
        if self.try_direct && whole && self.direct.is_none() {
            self.direct = open_direct(&self.path);
            self.try_direct = self.direct.is_some();
        }
        let file = match (&self.direct, &self.file) {
            (Some(direct), _) if whole => direct,
            (_, Some(file)) => file,
            (_, None) => return Err(std::io::Error::other("the spool file is not open")),
        };
        file.write_all_at(bytes, self.written)?;
        self.written += bytes.len() as u64;
        chunk.clear();
        Ok((self, chunk))
    }

    fn into_spooled(mut self) -> Spooled {
        self.done = true;
        Spooled {
            path: std::mem::take(&mut self.path),
            size: self.written,
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
            sniffer: std::mem::take(&mut self.sniffer),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.done && self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A second handle on `path` that writes without the page cache (`O_DIRECT`), as
/// storage writes large files; `None` where the filesystem refuses it (tmpfs).
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<std::fs::File> {
    None
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

/// Decoded bytes on their way to the worker, starting on a page boundary (so a
/// whole chunk can be written with `O_DIRECT`), with room for two chunks' worth so
/// that decoding never moves them.
struct Chunk {
    buffer: Vec<u8>,
    start: usize,
}

impl Chunk {
    fn new() -> Self {
        Self::with_room(2 * SPOOL_CHUNK)
    }

    fn with_room(room: usize) -> Self {
        let mut buffer: Vec<u8> = Vec::with_capacity(room + FILE_ALIGNMENT);
        let start = buffer.as_ptr().align_offset(FILE_ALIGNMENT);
        buffer.resize(start, 0);
        Self { buffer, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    fn len(&self) -> usize {
        self.buffer.len() - self.start
    }

    fn clear(&mut self) {
        self.buffer.truncate(self.start);
    }
}

type Job = tokio::task::JoinHandle<std::io::Result<(Worker, Chunk)>>;

/// A file up to this size stays in memory (no file to write, link and remove):
/// within the 2 MiB an upload may hold.
const IN_MEMORY_UP_TO: usize = 3 * SPOOL_CHUNK;

/// A base64 file decoded as its text arrives: in memory while it is small, then
/// into its spool file.
pub struct Base64Spool {
    decoder: Base64Stream,
    /// Nothing handed to the worker yet: the whole file is in `chunk`.
    in_memory: bool,
    /// Decoded bytes not yet handed to the worker.
    chunk: Chunk,
    /// The worker when idle; `None` while `job` runs.
    worker: Option<Worker>,
    job: Option<Job>,
    /// The chunk the worker handed back, for the next one.
    spare: Option<Chunk>,
}

impl Base64Spool {
    /// A spool that will write the new file `path` once the file outgrows memory;
    /// its whole chunks bypass the page cache, as storage's writes of large files
    /// do ([`crate::storage::DIRECT_WRITE_FROM`]).
    pub fn new(path: PathBuf) -> Self {
        Self {
            decoder: Base64Stream::default(),
            in_memory: true,
            chunk: Chunk::with_room(IN_MEMORY_UP_TO),
            worker: Some(Worker {
                path,
                file: None,
                direct: None,
                try_direct: true,
                written: 0,
                hasher: Sha256::new(),
                sniffer: Sniffer::new(),
                done: false,
            }),
            job: None,
            spare: None,
        }
    }

    /// Decodes the next piece of text (JSON escapes already resolved).
    pub async fn feed(&mut self, mut text: &[u8]) -> Result<(), SpoolFailure> {
        while !text.is_empty() {
            // As much text as fills the chunk (a few bytes more at most).
            let target = match self.in_memory {
                true => IN_MEMORY_UP_TO,
                false => SPOOL_CHUNK,
            };
            let room = target.saturating_sub(self.chunk.len());
            let (piece, rest) = text.split_at((room / 3 * 4).max(4).min(text.len()));
            self.decoder
                .feed(piece, &mut self.chunk.buffer)
                .map_err(|InvalidBase64| SpoolFailure::InvalidBase64)?;
            text = rest;
            if self.chunk.len() >= target {
                self.in_memory = false;
                // Whole pages only, so that every write starts on one (`O_DIRECT`).
                let length = self.chunk.len();
                self.hand_over(length - length % FILE_ALIGNMENT).await?;
            }
        }
        Ok(())
    }

    /// The whole file, once its text ended: in memory, or spooled.
    pub async fn finish(mut self) -> Result<FileContent, SpoolFailure> {
        let decoder = std::mem::take(&mut self.decoder);
        decoder
            .finish(&mut self.chunk.buffer)
            .map_err(|InvalidBase64| SpoolFailure::InvalidBase64)?;
        if self.in_memory {
            let start = self.chunk.start;
            let bytes = Bytes::from(std::mem::take(&mut self.chunk.buffer)).slice(start..);
            return Ok(FileContent::Memory(bytes));
        }
        while self.chunk.len() > 0 {
            self.hand_over(SPOOL_CHUNK.min(self.chunk.len())).await?;
        }
        let worker = self.idle_worker().await?;
        Ok(FileContent::Spooled(Arc::new(worker.into_spooled())))
    }

    /// Gives the chunk's first `length` bytes to the worker, once it is done with
    /// the last ones; the rest starts the next chunk.
    async fn hand_over(&mut self, length: usize) -> Result<(), SpoolFailure> {
        let worker = self.idle_worker().await?;
        let mut next = self.spare.take().unwrap_or_else(Chunk::new);
        next.buffer.extend_from_slice(&self.chunk.bytes()[length..]);
        let mut full = std::mem::replace(&mut self.chunk, next);
        full.buffer.truncate(full.start + length);
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
