//! A multipart request (the GraphQL multipart request spec) read as it arrives:
//! `operations` and `map` first, then, while the operations run, each file part
//! handed to the resolver that waits for it ([`Parts`]), so a file goes from the
//! socket to storage without a temporary file; a part nobody waits for yet is kept
//! in one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::{BatchRequest, Value};
use bytes::Bytes;
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::batch_json;
use super::drain::{REFUSED_DRAIN_BYTES, REFUSED_DRAIN_TIMEOUT};
use crate::graphql::bounds::too_many_files;
use crate::graphql::file_parts::{self, Demand, Kept, Parts, Piece};

/// How many chunks of a streaming part (up to [`PIECE`] each) may wait for its
/// resolver.
const LIVE_CHUNKS: usize = 16;

/// Why the start of a multipart body cannot be used: an [`AppError`] when a bound
/// refused a well-formed body.
///
/// [`AppError`]: crate::error::AppError
pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// The rest of a multipart body, after `operations` and `map`.
pub struct Rest {
    fields: multer::Multipart<'static>,
    heads: HeadBudget,
    /// Each file field's part index.
    indexes: HashMap<String, usize>,
    parts: Arc<Parts>,
}

/// How the reading of the rest ended.
pub enum Read {
    /// To the end of the body.
    Whole,
    /// Not to the end: the operations ran first (a refused file), or the body
    /// broke. The connection cannot be reused.
    Unfinished,
}

/// Reads `operations` and `map` (the spec puts them first) from `body`; returns the
/// operations, their file variables pointing at parts, and the reader of the rest.
/// A refused start drops a little more of the body first ([`drain`]).
pub async fn start<S>(
    body: S,
    boundary: &str,
    max_files: u64,
    max_values: u64,
) -> Result<(BatchRequest, Rest), ReadError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let heads = HeadBudget::default();
    let body = ChunkByChunk {
        body: Box::pin(body),
        rest: Bytes::new(),
        handed: false,
        heads: heads.clone(),
    };
    let mut fields = multer::Multipart::new(body, boundary.to_owned());
    match read_head(&mut fields, &heads, max_files, max_values).await {
        Ok((batch, indexes, uses)) => {
            let rest = Rest {
                fields,
                heads,
                indexes,
                parts: Parts::new(&uses),
            };
            Ok((batch, rest))
        }
        Err(err) => {
            drain(
                &mut fields,
                &heads,
                REFUSED_DRAIN_BYTES,
                REFUSED_DRAIN_TIMEOUT,
            )
            .await;
            Err(err)
        }
    }
}

/// The most bytes multer may read while it looks for a part: the text before the
/// first boundary, a boundary line and the part's headers. It searches all it holds
/// again for each piece it is given, so an endless header block would cost time
/// quadratic in its length (seconds of a core for a body of the size allowed).
const MAX_PART_HEAD_BYTES: usize = 64 * 1024;

/// What is left of [`MAX_PART_HEAD_BYTES`] while multer looks for a part; no bound
/// (`usize::MAX`) while it reads a part's data, whose search resumes where it was.
/// (Looking for a part, multer also reads past what is left of a part dropped
/// unfinished: only [`drain`] does that, and it allows for it.)
#[derive(Clone)]
struct HeadBudget(Arc<AtomicUsize>);

impl Default for HeadBudget {
    fn default() -> Self {
        Self(Arc::new(AtomicUsize::new(usize::MAX)))
    }
}

impl HeadBudget {
    /// The next part of `fields`, its head read within [`MAX_PART_HEAD_BYTES`].
    async fn next_field(
        &self,
        fields: &mut multer::Multipart<'static>,
    ) -> multer::Result<Option<multer::Field<'static>>> {
        self.next_field_within(fields, MAX_PART_HEAD_BYTES).await
    }

    /// The next part of `fields`, found within `bytes`.
    async fn next_field_within(
        &self,
        fields: &mut multer::Multipart<'static>,
        bytes: usize,
    ) -> multer::Result<Option<multer::Field<'static>>> {
        /// Lifts the bound however the search ends, a dropped future included.
        struct Unbound<'a>(&'a AtomicUsize);
        impl Drop for Unbound<'_> {
            fn drop(&mut self) {
                self.0.store(usize::MAX, Ordering::Relaxed);
            }
        }
        self.0.store(bytes, Ordering::Relaxed);
        let _unbound = Unbound(&self.0);
        fields.next_field().await
    }

    /// Takes `bytes` from what is left; false when they do not fit.
    fn spend(&self, bytes: usize) -> bool {
        let left = self.0.load(Ordering::Relaxed);
        if left == usize::MAX {
            return true;
        }
        self.0.store(left.saturating_sub(bytes), Ordering::Relaxed);
        bytes <= left
    }
}

/// A part whose head does not fit [`MAX_PART_HEAD_BYTES`]: a malformed body.
#[derive(Debug, thiserror::Error)]
#[error(
    "a multipart part's headers (with any text before the first boundary) exceed {} KiB; \
     send Content-Disposition and Content-Type only",
    MAX_PART_HEAD_BYTES / 1024
)]
pub struct PartHeadTooLong;

/// The operations with their file variables set, each file field's part index, and
/// how many variables each part is mapped to.
type Head = (BatchRequest, HashMap<String, usize>, Vec<usize>);

async fn read_head(
    fields: &mut multer::Multipart<'static>,
    heads: &HeadBudget,
    max_files: u64,
    max_values: u64,
) -> Result<Head, ReadError> {
    let mut operations: Option<BatchRequest> = None;
    let mut map: Option<serde_json::Map<String, serde_json::Value>> = None;
    let (mut batch, map) = loop {
        (operations, map) = match (operations, map) {
            (Some(batch), Some(map)) => break (batch, map),
            pending => pending,
        };
        let field = heads
            .next_field(fields)
            .await?
            .ok_or("the body ended before its `operations` and `map` fields")?;
        match field.name() {
            Some("operations") => {
                let text = field.bytes().await?;
                let parsed = batch_json::parse(&text, max_values);
                operations = Some(parsed.map_err(|err| err.in_field("operations"))?);
            }
            Some("map") => {
                let text = field.bytes().await?;
                batch_json::count_values(&text, max_values).map_err(|err| err.in_field("map"))?;
                let parsed = serde_json::from_slice(&text).map_err(|err| {
                    batch_json::BatchJsonError::Invalid(err.to_string()).in_field("map")
                })?;
                map = Some(parsed);
            }
            _ if operations.is_some() => {
                return Err(
                    "the `map` field is missing: it comes after `operations`, before the files"
                        .into(),
                );
            }
            _ => return Err("the `operations` and `map` fields come before the files".into()),
        }
    };
    if map.len() > usize::try_from(max_files).unwrap_or(usize::MAX) {
        return Err(Box::new(too_many_files(max_files)));
    }
    let mut indexes = HashMap::new();
    let mut uses = Vec::new();
    for (index, (name, paths)) in map.into_iter().enumerate() {
        let paths: Vec<String> = serde_json::from_value(paths)?;
        for path in &paths {
            point_at_part(&mut batch, path, index).ok_or_else(|| {
                format!(
                    "the `map` path `{}` names no variable of the operations: write \
                     `variables.NAME` (`0.variables.NAME` in a batch), then list indexes and \
                     object fields, for a variable the operations set to null",
                    crate::error::printable(path)
                )
            })?;
        }
        uses.push(paths.len());
        indexes.insert(name, index);
    }
    Ok((batch, indexes, uses))
}

/// Reads and drops what is left of a multipart body, at most `max` bytes within
/// `within`: a client still sending a short body then sees the answer instead of a
/// reset connection, while a long one is not read to its end.
async fn drain(
    fields: &mut multer::Multipart<'static>,
    heads: &HeadBudget,
    max: u64,
    within: std::time::Duration,
) {
    // A part dropped unfinished is read past before the next is found: the drain's
    // own bound, with room for a head.
    let found_within = usize::try_from(max)
        .unwrap_or(usize::MAX)
        .saturating_add(MAX_PART_HEAD_BYTES);
    let drained = async {
        let mut read: u64 = 0;
        while let Ok(Some(mut field)) = heads.next_field_within(fields, found_within).await {
            while let Ok(Some(chunk)) = field.chunk().await {
                read += chunk.len() as u64;
                if read > max {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, drained).await;
}

/// Sets the variable at `path` (`variables.files.2`, or `0.variables.file` in a
/// batch) to the value an `Upload` of part `index` parses from; `None` when no
/// variable is there (a typo would otherwise surface as a confusing type error
/// once the part was read).
fn point_at_part(batch: &mut BatchRequest, path: &str, index: usize) -> Option<()> {
    let (request, path) = match batch {
        BatchRequest::Single(request) => (Some(request), path),
        BatchRequest::Batch(requests) => {
            let (position, path) = path.split_once('.').unwrap_or_default();
            let request = position
                .parse::<usize>()
                .ok()
                .and_then(|position| requests.get_mut(position));
            (request, path)
        }
    };
    let mut steps = path.strip_prefix("variables.")?.split('.');
    let mut value = request?.variables.get_mut(steps.next()?)?;
    for step in steps {
        value = match value {
            Value::List(items) => items.get_mut(step.parse::<usize>().ok()?)?,
            Value::Object(fields) => fields.get_mut(step)?,
            _ => return None,
        };
    }
    *value = Value::String(file_parts::placeholder(index));
    Some(())
}

impl Rest {
    /// The parts, for the resolvers.
    pub fn parts(&self) -> Arc<Parts> {
        Arc::clone(&self.parts)
    }

    /// Reads the file parts as the resolvers want them, until the body ends or the
    /// operations ran.
    pub async fn run(&mut self) -> Read {
        let read = self.read().await;
        self.parts.end(match read {
            Read::Whole => "the request has no such part",
            Read::Unfinished => "the request body broke",
        });
        read
    }

    /// Reads and drops a little more of the body ([`drain`]), once the operations
    /// ran without reading it all.
    pub async fn drain(mut self) {
        drain(
            &mut self.fields,
            &self.heads,
            REFUSED_DRAIN_BYTES,
            REFUSED_DRAIN_TIMEOUT,
        )
        .await;
    }

    async fn read(&mut self) -> Read {
        loop {
            let field = tokio::select! {
                biased;
                () = self.parts.until_executed() => return Read::Unfinished,
                field = self.heads.next_field(&mut self.fields) => field,
            };
            let mut field = match field {
                Ok(Some(field)) => field,
                Ok(None) => return Read::Whole,
                Err(_) => return Read::Unfinished,
            };
            let index = field
                .name()
                .and_then(|name| self.indexes.get(name))
                .copied();
            let filename = field.file_name().unwrap_or_default().to_owned();
            let content_type = field.content_type().map(ToString::to_string);
            let passed = match index {
                // A field no variable names: read past it.
                None => self.pass(&mut field, None).await,
                Some(index) => match self.parts.demand(index).await {
                    Demand::Stop => return Read::Unfinished,
                    Demand::Stream => {
                        let (pieces, receiver) = mpsc::channel(LIVE_CHUNKS);
                        self.parts.stream(index, filename, content_type, receiver);
                        self.pass(&mut field, Some(Sink::Live(pieces))).await
                    }
                    Demand::Keep => match crate::storage::temp::folder()
                        .and_then(tempfile::NamedTempFile::new_in)
                    {
                        Ok(named) => {
                            let (file, path) = named.into_parts();
                            let file = tokio::fs::File::from_std(file);
                            let passed = self.pass(&mut field, Some(Sink::File(file))).await;
                            if passed.is_ok() {
                                let kept = Kept {
                                    file: path,
                                    filename,
                                    content_type,
                                };
                                self.parts.keep(index, kept);
                            }
                            passed
                        }
                        Err(err) => Err(Stopped::Disk(err)),
                    },
                },
            };
            match passed {
                Ok(()) => {}
                Err(Stopped::Body) => return Read::Unfinished,
                Err(Stopped::Disk(err)) => {
                    // The server's fault, not the client's body: said and logged as such.
                    self.parts.fail(format!(
                        "cannot keep a file part in the temporary folder (TMPDIR): {err}"
                    ));
                    return Read::Unfinished;
                }
            }
        }
    }

    /// Reads one field to its end into `sink` (none: dropped); stops when the
    /// operations ran, the body broke or the sink failed.
    async fn pass(
        &self,
        field: &mut multer::Field<'static>,
        mut sink: Option<Sink>,
    ) -> Result<(), Stopped> {
        loop {
            let chunk = tokio::select! {
                biased;
                () = self.parts.until_executed() => return Err(Stopped::Body),
                chunk = field.chunk() => chunk,
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(err) => {
                    if let Some(Sink::Live(pieces)) = &sink {
                        let _ = pieces.send(Piece::Broken(root_cause(&err))).await;
                    }
                    return Err(Stopped::Body);
                }
            };
            match &mut sink {
                // A resolver that stopped reading refused the file: the rest of the
                // part is read past until the operations end.
                Some(Sink::Live(pieces)) => drop(pieces.send(Piece::Data(chunk)).await),
                Some(Sink::File(file)) => file.write_all(&chunk).await.map_err(Stopped::Disk)?,
                None => {}
            }
        }
        match &mut sink {
            Some(Sink::Live(pieces)) => drop(pieces.send(Piece::End).await),
            Some(Sink::File(file)) => file.flush().await.map_err(Stopped::Disk)?,
            None => {}
        }
        Ok(())
    }
}

/// What broke a body, in the words of its first cause (a pace or deadline names its
/// setting), not multer's "failed to read stream".
fn root_cause(err: &multer::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Where a part's bytes go.
enum Sink {
    Live(mpsc::Sender<Piece>),
    File(tokio::fs::File),
}

/// Why a part was not read to its end.
enum Stopped {
    /// The operations ran, or the body broke.
    Body,
    /// Its temporary file could not be made or written.
    Disk(std::io::Error),
}

/// The body as multer should read it: multer copies every chunk the body has ready
/// into one buffer before it hands out any, which on a fast link is as much as the
/// socket holds (megabytes per upload); here each poll gives it one piece of at
/// most [`PIECE`] bytes, then yields once, so it holds a piece or two. Pieces of
/// one size also make its copies one size: the allocator reuses them at once,
/// where the sizes of the socket's chunks, each copied into a buffer of its own
/// size, left a partly used page of every size class behind.
struct ChunkByChunk<S> {
    body: std::pin::Pin<Box<S>>,
    /// What is left of the body's last chunk.
    rest: Bytes,
    /// A piece went out on the last poll: this one yields.
    handed: bool,
    heads: HeadBudget,
}

/// The most bytes multer is given at a time.
const PIECE: usize = 16 * 1024;

impl<S: Stream<Item = Result<Bytes, std::io::Error>>> Stream for ChunkByChunk<S> {
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if std::mem::take(&mut self.handed) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if self.rest.is_empty() {
            match std::task::ready!(self.body.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => self.rest = chunk,
                Some(Err(err)) => return std::task::Poll::Ready(Some(Err(Box::new(err)))),
                None => return std::task::Poll::Ready(None),
            }
        }
        let length = self.rest.len().min(PIECE);
        if !self.heads.spend(length) {
            return std::task::Poll::Ready(Some(Err(Box::new(PartHeadTooLong))));
        }
        self.handed = true;
        std::task::Poll::Ready(Some(Ok(self.rest.split_to(length))))
    }
}
