//! New files written in page-aligned chunks on the blocking pool while the next
//! chunk fills: a file that streams in (a multipart part on fs, a base64 text being
//! decoded, a stream spooled before it goes to S3) holds two chunks of memory
//! whatever its size, and whole chunks bypass the page cache (`O_DIRECT`), as
//! [`super::DIRECT_WRITE_FROM`] explains.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::fs_write::io_error;
use super::{FILE_ALIGNMENT, StreamWriteError};

/// How many bytes go to the disk at a time; a file in flight holds two such
/// buffers (one filling, one being written). Large enough that a write costs far
/// more than the trip to the blocking pool, small enough that eight uploads at once
/// hold 4 MiB.
pub const WRITE_CHUNK: usize = 256 * 1024;

/// Bytes on their way to the disk, starting on a page boundary (so a whole chunk
/// can be written with `O_DIRECT`), with room for `target` bytes and a page more,
/// so that filling it never moves it.
pub struct AlignedChunk {
    buffer: Vec<u8>,
    start: usize,
    /// Handed over once it holds this many bytes.
    target: usize,
}

impl AlignedChunk {
    fn new(target: usize) -> Self {
        let mut buffer: Vec<u8> = Vec::with_capacity(target + 2 * FILE_ALIGNMENT);
        let start = buffer.as_ptr().align_offset(FILE_ALIGNMENT);
        buffer.resize(start, 0);
        Self {
            buffer,
            start,
            target,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    pub fn len(&self) -> usize {
        self.buffer.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more bytes fit before the chunk is handed over.
    pub fn room(&self) -> usize {
        self.target.saturating_sub(self.len())
    }

    /// The buffer to append to (at most [`AlignedChunk::room`] and a page more, or
    /// it moves and loses its alignment).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    fn clear(&mut self) {
        self.buffer.truncate(self.start);
    }

    /// The bytes, page-aligned, without a copy.
    fn into_bytes(self) -> Bytes {
        Bytes::from(self.buffer).slice(self.start..)
    }
}

/// What a pipeline's chunks are handed to, on the blocking pool.
pub trait ChunkSink: Send + 'static {
    fn take(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

/// A new file (never an existing one, its folder made on first use) written at
/// increasing offsets. Dropped before [`NewFile::keep`], it removes itself: a
/// refused or broken stream leaves nothing.
pub struct NewFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// A second handle without the page cache, for whole aligned chunks.
    direct: Option<std::fs::File>,
    try_direct: bool,
    written: u64,
    kept: bool,
}

impl NewFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            direct: None,
            try_direct: true,
            written: 0,
            kept: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The finished file stays; synced to disk first (data and folder) when `sync`,
    /// which blocks. An empty stream still makes its (empty) file.
    pub fn keep(mut self, sync: bool) -> std::io::Result<PathBuf> {
        let file = match self.file.take() {
            Some(file) => file,
            None => create_new(&self.path)?,
        };
        if sync {
            file.sync_data()?;
            std::fs::File::open(self.path.parent().unwrap_or(&self.path))?.sync_all()?;
        }
        self.kept = true;
        Ok(std::mem::take(&mut self.path))
    }
}

impl ChunkSink for NewFile {
    fn take(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() {
            self.file = Some(create_new(&self.path)?);
        }
        let whole = bytes.len().is_multiple_of(FILE_ALIGNMENT)
            && bytes.as_ptr().align_offset(FILE_ALIGNMENT) == 0;
        if self.try_direct && whole && self.direct.is_none() {
            self.direct = open_direct(&self.path);
            self.try_direct = self.direct.is_some();
        }
        let file = match (&self.direct, &self.file) {
            (Some(direct), _) if whole => direct,
            (_, Some(file)) => file,
            (_, None) => return Err(std::io::Error::other("the file is not open")),
        };
        file.write_all_at(bytes, self.written)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.kept && self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A second handle on `path` that writes without the page cache (`O_DIRECT`);
/// `None` where the filesystem refuses it (tmpfs).
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

type Job<S> = tokio::task::JoinHandle<std::io::Result<(S, AlignedChunk)>>;

/// Chunks filled on the request's task and handed to `S` on the blocking pool, one
/// at a time, while the next fills.
pub struct ChunkPipeline<S: ChunkSink> {
    chunk: AlignedChunk,
    /// The sink when idle; `None` while `job` runs.
    sink: Option<S>,
    job: Option<Job<S>>,
    /// The chunk the sink handed back, for the next one.
    spare: Option<AlignedChunk>,
    /// Nothing handed over yet: the whole stream so far is in `chunk`.
    untouched: bool,
}

impl<S: ChunkSink> ChunkPipeline<S> {
    pub fn new(sink: S) -> Self {
        Self::keeping(sink, WRITE_CHUNK)
    }

    /// A pipeline whose first chunk holds up to `first` bytes (at least a chunk):
    /// a stream that ends within them never reaches the sink.
    pub fn keeping(sink: S, first: usize) -> Self {
        Self {
            chunk: AlignedChunk::new(first.max(WRITE_CHUNK)),
            sink: Some(sink),
            job: None,
            spare: None,
            untouched: true,
        }
    }

    /// The chunk being filled; call [`ChunkPipeline::flush_full`] after filling it.
    pub fn chunk(&mut self) -> &mut AlignedChunk {
        &mut self.chunk
    }

    /// Copies `bytes` in, handing over each chunk that fills.
    pub async fn push(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let (piece, rest) = bytes.split_at(self.chunk.room().min(bytes.len()));
            self.chunk.buffer.extend_from_slice(piece);
            bytes = rest;
            self.flush_full().await?;
        }
        Ok(())
    }

    /// Hands the chunk over once it is full: its whole pages, so that every write
    /// starts on one; the rest starts the next chunk.
    pub async fn flush_full(&mut self) -> std::io::Result<()> {
        let length = self.chunk.len();
        if length >= self.chunk.target {
            self.hand_over(length - length % FILE_ALIGNMENT).await?;
        }
        Ok(())
    }

    /// The whole stream, when it never filled its first chunk: no file was touched.
    pub fn into_memory(self) -> Result<Bytes, Self> {
        match self.untouched {
            true => Ok(self.chunk.into_bytes()),
            false => Err(self),
        }
    }

    /// Hands over what is left and waits for the sink to take it all.
    pub async fn finish(mut self) -> std::io::Result<S> {
        while !self.chunk.is_empty() {
            self.hand_over(WRITE_CHUNK.min(self.chunk.len())).await?;
        }
        self.idle_sink().await
    }

    /// Waits for a chunk being written, then drops the sink: a file it made is
    /// gone when this returns.
    pub async fn abandon(mut self) {
        let _ = self.idle_sink().await;
    }

    /// Gives the chunk's first `length` bytes to the sink, once it is done with the
    /// last ones.
    async fn hand_over(&mut self, length: usize) -> std::io::Result<()> {
        let mut sink = self.idle_sink().await?;
        let mut next = self
            .spare
            .take()
            .unwrap_or_else(|| AlignedChunk::new(WRITE_CHUNK));
        next.buffer.extend_from_slice(&self.chunk.bytes()[length..]);
        let mut full = std::mem::replace(&mut self.chunk, next);
        full.buffer.truncate(full.start + length);
        self.untouched = false;
        self.job = Some(tokio::task::spawn_blocking(move || {
            sink.take(full.bytes())?;
            full.clear();
            Ok((sink, full))
        }));
        Ok(())
    }

    /// The sink, after its job if one runs.
    async fn idle_sink(&mut self) -> std::io::Result<S> {
        if let Some(job) = self.job.take() {
            let (sink, mut spare) = job.await.map_err(std::io::Error::other)??;
            // The first chunk may be larger: it comes back as an ordinary one.
            spare.target = WRITE_CHUNK;
            self.spare = Some(spare);
            return Ok(sink);
        }
        self.sink
            .take()
            .ok_or_else(|| std::io::Error::other("the pipeline's sink was lost"))
    }
}

/// Streams `body` into the new file `path` (never an existing one), refusing more
/// than `max` bytes, synced when `sync`; the file's path and length. A refused or
/// broken stream leaves no file.
pub(super) async fn write_file<S, E>(
    path: PathBuf,
    mut body: S,
    max: u64,
    sync: bool,
) -> Result<(PathBuf, u64), StreamWriteError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut pipeline = ChunkPipeline::new(NewFile::new(path));
    let mut total: u64 = 0;
    let failure = loop {
        let piece = match body.next().await {
            None => break None,
            Some(Err(err)) => break Some(StreamWriteError::Body(err.to_string())),
            Some(Ok(piece)) => piece,
        };
        total += piece.len() as u64;
        if total > max {
            break Some(StreamWriteError::TooLarge);
        }
        if let Err(err) = pipeline.push(&piece).await {
            break Some(StreamWriteError::Storage(io_error(err)));
        }
    };
    if let Some(failure) = failure {
        pipeline.abandon().await;
        return Err(failure);
    }
    let file = pipeline
        .finish()
        .await
        .map_err(|err| StreamWriteError::Storage(io_error(err)))?;
    let kept = match sync {
        true => tokio::task::spawn_blocking(move || file.keep(true))
            .await
            .map_err(std::io::Error::other)
            .and_then(|kept| kept),
        false => file.keep(false),
    };
    let path = kept.map_err(|err| StreamWriteError::Storage(io_error(err)))?;
    Ok((path, total))
}
