//! A large base64 file leaves the request body as it arrives: decoded piece by piece
//! into a file of its own (a staging object on fs, a temporary file beside S3),
//! hashed and sniffed on the way by the blocking pool while the next piece is
//! decoded and the last one written. An upload holds three chunks
//! ([`crate::storage::WRITE_CHUNK`]) whatever its size; its resolver finds the
//! size, type and checksum ready, and storage takes the file over
//! ([`crate::storage::Storage::put_spooled`]: a link on fs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::base64_stream::{Base64Stream, InvalidBase64};
use crate::error::AppError;
use crate::media::{MediaType, Sniffer};
use crate::storage::{ChunkPipeline, ChunkSink, NewFile};

/// A file's text that is not base64, whether decoded at once or as it arrived.
pub fn invalid_base64() -> AppError {
    AppError::bad_input("the file is not valid base64")
}

/// Why a spooled file cannot be stored; its resolver reports it in SPEC 4's order.
#[derive(Debug)]
pub enum SpoolFailure {
    InvalidBase64,
    Write(std::io::Error),
}

impl SpoolFailure {
    pub fn to_error(&self) -> AppError {
        match self {
            Self::InvalidBase64 => invalid_base64(),
            // Its file is a staging object on fs, a temporary file beside S3: either
            // way the server's disk failed (full, read-only), not the client.
            Self::Write(err) => AppError::StorageUnavailable(opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                format!("cannot keep an upload while it arrives: {err}"),
            )),
        }
    }
}

/// The bytes of a file: in memory, or spooled to a file of its own as they arrived
/// (with their size, type and checksum known).
#[derive(Clone)]
pub enum FileContent {
    Memory(Bytes),
    Spooled(Arc<Spooled>),
}

impl FileContent {
    pub fn size(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::Spooled(spooled) => spooled.size(),
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

/// What the checks need of every byte, computed on the blocking pool beside the
/// spool file's write (a chunk is hashed while the one before it is written).
struct Checks {
    hasher: Sha256,
    sniffer: Sniffer,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            hasher: Sha256::new(),
            sniffer: Sniffer::new(),
        }
    }
}

impl ChunkSink for Checks {
    fn take(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.sniffer.update(bytes);
        Ok(())
    }
}

/// A base64 file decoded as its text arrives: in memory while it fits in its first
/// chunk, then into its spool file.
pub struct Base64Spool {
    decoder: Base64Stream,
    /// Dropped before the end (a failed write, a request that went away), the spool
    /// file removes itself.
    pipeline: ChunkPipeline<NewFile, Checks>,
}

impl Base64Spool {
    /// A spool that will write the new file `path` once the file outgrows
    /// `in_memory_up_to` bytes (at least a chunk); its whole chunks bypass the page
    /// cache, as storage's writes of large files do
    /// ([`crate::storage::DIRECT_WRITE_FROM`]).
    pub fn new(path: PathBuf, in_memory_up_to: usize) -> Self {
        Self {
            decoder: Base64Stream::default(),
            pipeline: ChunkPipeline::checked(
                // Synced, when files are, as storage links it.
                NewFile::new(path, false),
                Checks::default(),
                in_memory_up_to,
            ),
        }
    }

    /// Decodes the next piece of text (JSON escapes already resolved).
    pub async fn feed(&mut self, mut text: &[u8]) -> Result<(), SpoolFailure> {
        while !text.is_empty() {
            // As much text as fills the chunk (a few bytes more at most).
            let chunk = self.pipeline.chunk();
            let (piece, rest) = text.split_at((chunk.room() / 3 * 4).max(4).min(text.len()));
            self.decoder
                .feed(piece, chunk.buffer())
                .map_err(|InvalidBase64| SpoolFailure::InvalidBase64)?;
            text = rest;
            self.pipeline
                .flush_full()
                .await
                .map_err(SpoolFailure::Write)?;
        }
        Ok(())
    }

    /// The whole file, once its text ended: in memory, or spooled.
    pub async fn finish(mut self) -> Result<FileContent, SpoolFailure> {
        let decoder = std::mem::take(&mut self.decoder);
        decoder
            .finish(self.pipeline.chunk().buffer())
            .map_err(|InvalidBase64| SpoolFailure::InvalidBase64)?;
        let pipeline = match self.pipeline.into_memory() {
            Ok(bytes) => return Ok(FileContent::Memory(bytes)),
            Err(pipeline) => pipeline,
        };
        let (file, checks) = pipeline.finish().await.map_err(SpoolFailure::Write)?;
        let size = file.written();
        let spooled = Spooled {
            path: file.keep().map_err(SpoolFailure::Write)?,
            size,
            sha256: hex::encode(checks.hasher.finalize()),
            sniffer: checks.sniffer,
        };
        Ok(FileContent::Spooled(Arc::new(spooled)))
    }
}
