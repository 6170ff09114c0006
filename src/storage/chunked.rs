//! New files written in page-aligned chunks on the blocking pool while the next
//! chunk fills: a file that streams in (a multipart part on fs, a base64 text being
//! decoded, a stream spooled before it goes to S3) holds two chunks of memory
//! whatever its size (three when its bytes are checked beside the write), and whole
//! chunks bypass the page cache (`O_DIRECT`), as [`super::DIRECT_WRITE_FROM`]
//! explains.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::fs_write::io_error;
use super::{FILE_ALIGNMENT, StreamWriteError};

/// How many bytes go to the disk at a time; a file in flight holds two such
/// buffers (one filling, one being written), or three with checks (one being
/// hashed). Large enough that a write costs far more than the trip to the blocking
/// pool, small enough that eight uploads at once hold 4 to 6 MiB.
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
    /// Synced to disk (data, folder, new folders) before it counts as kept.
    sync: bool,
    file: Option<std::fs::File>,
    /// A second handle without the page cache, for whole aligned chunks.
    direct: Option<std::fs::File>,
    try_direct: bool,
    written: u64,
    kept: bool,
}

impl NewFile {
    pub fn new(path: PathBuf, sync: bool) -> Self {
        Self {
            path,
            sync,
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

    /// The finished file stays; synced to disk first (data and folder) when it
    /// syncs, which blocks. An empty stream still makes its (empty) file.
    pub fn keep(mut self) -> std::io::Result<PathBuf> {
        if self.file.is_none() {
            self.file = Some(create_new(&self.path, self.sync)?);
        }
        if self.sync
            && let Some(file) = &self.file
        {
            // A failed sync drops `self` unkept: the file goes.
            file.sync_data()?;
            super::fs_write::sync_folder(self.path.parent().unwrap_or(&self.path))?;
        }
        self.file = None;
        self.kept = true;
        Ok(std::mem::take(&mut self.path))
    }
}

impl ChunkSink for NewFile {
    fn take(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() {
            self.file = Some(create_new(&self.path, self.sync)?);
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

/// A new file, its folder made on first use (synced into its parent when `sync`);
/// never an existing one.
fn create_new(path: &Path, sync: bool) -> std::io::Result<std::fs::File> {
    let open = || {
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(path)
    };
    match open() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            super::fs_write::make_folder(path.parent().unwrap_or(path), sync)?;
            open()
        }
        other => other,
    }
}

/// A chunk a stage is done with, or why a chunk was lost.
type Passed = std::io::Result<AlignedChunk>;

/// Where a stage hands the chunks it is done with.
enum Next {
    Stage(Arc<dyn Feed>),
    /// Back to the pipeline, to be filled again.
    Back(mpsc::UnboundedSender<Passed>),
}

impl Next {
    /// Hands the chunk on; the next stage when it was idle and must be started.
    fn pass(&self, passed: Passed) -> Option<Arc<dyn Feed>> {
        match self {
            Self::Stage(stage) => stage.queue(passed).then(|| Arc::clone(stage)),
            // The pipeline went away: nobody waits for the chunk.
            Self::Back(back) => {
                drop(back.send(passed));
                None
            }
        }
    }
}

/// A stage of a pipeline, whatever its sink.
trait Feed: Send + Sync {
    /// Queues a chunk (a failure passes straight on); true when the stage was idle
    /// and its caller must start it.
    fn queue(&self, passed: Passed) -> bool;

    /// Takes the queued chunks one by one, then leaves the thread.
    fn drain(&self);
}

/// Starts an idle stage on the blocking pool.
fn start(stage: Arc<dyn Feed>) {
    tokio::task::spawn_blocking(move || stage.drain());
}

/// One step of a pipeline (checking the bytes, writing them): it takes its chunks
/// in order, on the blocking pool only while some are queued. A stage that falls
/// behind works through its queue without waiting for the request's task to hand
/// it the next chunk, so the disk never idles between chunks; one that keeps up
/// holds no thread between them.
struct Stage<S> {
    state: Mutex<StageState<S>>,
    next: Next,
}

struct StageState<S> {
    queue: VecDeque<AlignedChunk>,
    /// Out of the state while a chunk is being taken.
    sink: Option<S>,
    draining: bool,
    /// A chunk failed here: the rest pass on untouched.
    failed: bool,
}

impl<S: ChunkSink> Stage<S> {
    fn new(sink: S, next: Next) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(StageState {
                queue: VecDeque::new(),
                sink: Some(sink),
                draining: false,
                failed: false,
            }),
            next,
        })
    }

    fn lock(&self) -> MutexGuard<'_, StageState<S>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sink, once no chunk is left with this stage.
    fn take_sink(&self) -> std::io::Result<S> {
        self.lock()
            .sink
            .take()
            .ok_or_else(|| std::io::Error::other("the pipeline's sink was lost"))
    }
}

impl<S: ChunkSink> Feed for Stage<S> {
    fn queue(&self, passed: Passed) -> bool {
        let chunk = match passed {
            Ok(chunk) => chunk,
            Err(err) => {
                if let Some(next) = self.next.pass(Err(err)) {
                    start(next);
                }
                return false;
            }
        };
        let mut state = self.lock();
        state.queue.push_back(chunk);
        !std::mem::replace(&mut state.draining, true)
    }

    fn drain(&self) {
        loop {
            let (chunk, sink) = {
                let mut state = self.lock();
                let Some(chunk) = state.queue.pop_front() else {
                    state.draining = false;
                    return;
                };
                let sink = if state.failed {
                    None
                } else {
                    state.sink.take()
                };
                (chunk, sink)
            };
            let passed = match sink {
                None => Ok(chunk),
                Some(mut sink) => {
                    let taken =
                        std::panic::catch_unwind(AssertUnwindSafe(|| sink.take(chunk.bytes())))
                            .unwrap_or_else(|_| {
                                Err(std::io::Error::other("a chunk's sink panicked"))
                            });
                    let mut state = self.lock();
                    state.sink = Some(sink);
                    state.failed = taken.is_err();
                    taken.map(|()| chunk)
                }
            };
            let Some(next) = self.next.pass(passed) else {
                continue;
            };
            // The next stage was idle: with nothing left here, this thread goes on
            // with it instead of waking another.
            let mut state = self.lock();
            if state.queue.is_empty() {
                state.draining = false;
                drop(state);
                return next.drain();
            }
            drop(state);
            start(next);
        }
    }
}

/// No checks beside the write.
impl ChunkSink for () {
    fn take(&mut self, _bytes: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// Chunks filled on the request's task and handed, in order, to `C` (checks such
/// as a hash) and then to `S` (the file), each a [`Stage`] on the blocking pool:
/// the next chunk fills while the last is checked and the one before written. A
/// stream holds one chunk more than it has stages.
pub struct ChunkPipeline<S: ChunkSink, C: ChunkSink + Default = ()> {
    chunk: AlignedChunk,
    checks: Option<Arc<Stage<C>>>,
    sink: Arc<Stage<S>>,
    returned: mpsc::UnboundedReceiver<Passed>,
    /// Chunks made so far, at most [`ChunkPipeline::live`].
    made: usize,
    /// Chunks handed over and not back yet.
    outstanding: usize,
    /// Nothing handed over yet: the whole stream so far is in `chunk`.
    untouched: bool,
}

impl<S: ChunkSink> ChunkPipeline<S> {
    pub fn new(sink: S) -> Self {
        Self::build(sink, None, WRITE_CHUNK)
    }
}

impl<S: ChunkSink, C: ChunkSink + Default> ChunkPipeline<S, C> {
    /// A pipeline whose chunks go through `checks` on their way to `sink`, and
    /// whose first chunk holds up to `first` bytes (at least a chunk): a stream that
    /// ends within them reaches neither.
    pub fn checked(sink: S, checks: C, first: usize) -> Self {
        Self::build(sink, Some(checks), first)
    }

    fn build(sink: S, checks: Option<C>, first_bytes: usize) -> Self {
        let (back, returned) = mpsc::unbounded_channel();
        let sink = Stage::new(sink, Next::Back(back));
        let checks = checks.map(|checks| Stage::new(checks, Next::Stage(sink.clone())));
        Self {
            chunk: AlignedChunk::new(first_bytes.max(WRITE_CHUNK)),
            checks,
            sink,
            returned,
            made: 1,
            outstanding: 0,
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

    /// Hands over what is left and waits for both stages to take it all; the
    /// checks and the sink.
    pub async fn finish(mut self) -> std::io::Result<(S, C)> {
        while !self.chunk.is_empty() {
            self.hand_over(WRITE_CHUNK.min(self.chunk.len())).await?;
        }
        self.settle().await?;
        let checks = match &self.checks {
            Some(checks) => checks.take_sink()?,
            None => C::default(),
        };
        Ok((self.sink.take_sink()?, checks))
    }

    /// Waits for the chunks being checked or written, then drops the sinks: a file
    /// the sink made is gone when this returns.
    pub async fn abandon(mut self) {
        let _ = self.settle().await;
        drop(self.sink.take_sink());
        if let Some(checks) = &self.checks {
            drop(checks.take_sink());
        }
    }

    /// Hands the chunk's first `length` bytes to the first stage: the checks if
    /// any, else the sink.
    async fn hand_over(&mut self, length: usize) -> std::io::Result<()> {
        let mut next = self.spare().await?;
        next.buffer.extend_from_slice(&self.chunk.bytes()[length..]);
        let mut full = std::mem::replace(&mut self.chunk, next);
        full.buffer.truncate(full.start + length);
        self.untouched = false;
        self.outstanding += 1;
        let first: Arc<dyn Feed> = match &self.checks {
            Some(checks) => checks.clone(),
            None => self.sink.clone(),
        };
        if first.queue(Ok(full)) {
            start(first);
        }
        Ok(())
    }

    /// How many chunks the stream may hold: the one filling and one per stage.
    fn live(&self) -> usize {
        2 + usize::from(self.checks.is_some())
    }

    /// A chunk to fill next: one that came back, a new one while fewer than
    /// [`ChunkPipeline::live`] exist, or else the next to come back.
    async fn spare(&mut self) -> std::io::Result<AlignedChunk> {
        if let Ok(passed) = self.returned.try_recv() {
            return self.came_back(passed);
        }
        if self.made < self.live() {
            self.made += 1;
            return Ok(AlignedChunk::new(WRITE_CHUNK));
        }
        let passed = self.next_back().await?;
        self.came_back(passed)
    }

    /// Waits until every chunk handed over came back; the first failure.
    async fn settle(&mut self) -> std::io::Result<()> {
        let mut failure = None;
        while self.outstanding > 0 {
            let passed = self.next_back().await?;
            if let Err(err) = self.came_back(passed) {
                failure.get_or_insert(err);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn next_back(&mut self) -> std::io::Result<Passed> {
        self.returned
            .recv()
            .await
            .ok_or_else(|| std::io::Error::other("the pipeline's stages are gone"))
    }

    /// A chunk back from the stages, emptied; or why it was lost.
    fn came_back(&mut self, passed: Passed) -> std::io::Result<AlignedChunk> {
        self.outstanding -= 1;
        let mut chunk = passed.inspect_err(|_| self.made -= 1)?;
        chunk.clear();
        // The first chunk may be larger: it comes back as an ordinary one.
        chunk.target = WRITE_CHUNK;
        Ok(chunk)
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
    let mut pipeline = ChunkPipeline::new(NewFile::new(path, sync));
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
    let (file, ()) = pipeline
        .finish()
        .await
        .map_err(|err| StreamWriteError::Storage(io_error(err)))?;
    let kept = match sync {
        true => tokio::task::spawn_blocking(move || file.keep())
            .await
            .map_err(std::io::Error::other)
            .and_then(|kept| kept),
        false => file.keep(),
    };
    let path = kept.map_err(|err| StreamWriteError::Storage(io_error(err)))?;
    Ok((path, total))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Keeps what it is given, fails at its `fails_at`th chunk, and says when it was
    /// dropped; slow enough that the stream waits for it.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        chunks: usize,
        fails_at: Option<usize>,
        dropped: Arc<AtomicBool>,
    }

    impl Recorder {
        fn failing_at(chunk: usize, dropped: Arc<AtomicBool>) -> Self {
            Self {
                bytes: Vec::new(),
                chunks: 0,
                fails_at: Some(chunk),
                dropped,
            }
        }
    }

    impl ChunkSink for Recorder {
        fn take(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.chunks += 1;
            if Some(self.chunks) == self.fails_at {
                return Err(std::io::Error::other("the disk is full"));
            }
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn stream(length: usize) -> Vec<u8> {
        (0..length).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The checks and the sink each see every byte, in order, while the stream holds
    /// one chunk more than it has stages.
    #[tokio::test]
    async fn checks_and_sink_take_every_byte_in_order() {
        let input = stream(5 * WRITE_CHUNK + 12_345);
        let mut pipeline = ChunkPipeline::checked(Recorder::default(), Recorder::default(), 0);
        for piece in input.chunks(70_001) {
            pipeline.push(piece).await.expect("pushed");
            assert!(pipeline.made <= 3, "{} chunks in memory", pipeline.made);
        }
        let (sink, checks) = pipeline.finish().await.expect("finished");
        assert_eq!(sink.bytes, input);
        assert_eq!(checks.bytes, input);
    }

    /// A sink that fails stops the stream at one of its next chunks; abandoned, the
    /// pipeline returns once the sink is dropped (a file it made is gone by then).
    #[tokio::test]
    async fn a_failing_sink_stops_the_stream_and_is_dropped_on_abandon() {
        let dropped = Arc::new(AtomicBool::new(false));
        let sink = Recorder::failing_at(3, dropped.clone());
        let mut pipeline = ChunkPipeline::checked(sink, Recorder::default(), 0);
        let input = stream(WRITE_CHUNK);
        let mut pushed = 0;
        let failure = loop {
            assert!(pushed < 10, "the failure never reached the stream");
            if let Err(err) = pipeline.push(&input).await {
                break err;
            }
            pushed += 1;
        };
        assert_eq!(failure.to_string(), "the disk is full");
        assert!(!dropped.load(Ordering::SeqCst));
        pipeline.abandon().await;
        assert!(dropped.load(Ordering::SeqCst));
    }

    /// A failure in the last chunks comes out of `finish`.
    #[tokio::test]
    async fn a_failure_at_the_end_comes_out_of_finish() {
        let sink = Recorder::failing_at(2, Arc::default());
        let mut pipeline = ChunkPipeline::new(sink);
        pipeline
            .push(&stream(WRITE_CHUNK + 10))
            .await
            .expect("pushed");
        let failure = pipeline.finish().await.err().expect("a failure");
        assert_eq!(failure.to_string(), "the disk is full");
    }
}
