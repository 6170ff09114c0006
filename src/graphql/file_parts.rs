//! The file parts of a multipart request, handed to their resolvers while the body
//! still arrives (the http layer's `multipart_body` reads it). A resolver that waits
//! for a part tells the reader that it is wanted now: the part then streams to it,
//! never through a temporary file. A part nobody waits for yet (one sent before the
//! part the running resolver needs, or one mapped to two variables) is kept in a
//! temporary file for later.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::error::{AppError, AppResult};

/// What a multipart body's `map` puts in the variable a file part fills, followed by
/// the part's number (the GraphQL multipart request spec's convention).
const PLACEHOLDER: &str = "#__graphql_file__:";

/// The value the `map` writes into a variable for file part `index`.
pub fn placeholder(index: usize) -> String {
    format!("{PLACEHOLDER}{index}")
}

/// A file part of the request, as an `Upload` argument names it. async-graphql's own
/// `Upload` unwraps the number after the placeholder, so a client that wrote a
/// placeholder of its own into a variable or a literal panicked the request; here
/// it is a clear error.
pub struct FileArgument(pub usize);

/// A multipart file upload
#[Scalar(
    name = "Upload",
    specified_by_url = "https://github.com/jaydenseric/graphql-multipart-request-spec"
)]
impl ScalarType for FileArgument {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else {
            return Err(InputValueError::expected_type(value));
        };
        text.strip_prefix(PLACEHOLDER)
            .and_then(|index| index.parse().ok())
            .map(FileArgument)
            .ok_or_else(|| {
                InputValueError::custom(
                    "an Upload is a file part of a multipart request, named in its `map`: \
                     send the file as a part and map it to this variable",
                )
            })
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(_))
    }

    fn to_value(&self) -> Value {
        Value::Null
    }
}

/// A part's bytes, in order.
pub type PartBody = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A file part as its resolver gets it.
pub struct Part {
    pub filename: String,
    pub content_type: Option<String>,
    pub body: PartBody,
}

/// The first `HEAD_BYTES` of a part (fewer when it is shorter), which decide its
/// type, and a stream of all of it.
pub async fn head(body: PartBody) -> AppResult<(Vec<u8>, PartBody)> {
    // A part shorter than the head has ended when the rest is asked for.
    let mut body = body.fuse();
    let mut head = Vec::new();
    let mut chunks = Vec::new();
    while head.len() < crate::media::HEAD_BYTES {
        let Some(chunk) = body.next().await else {
            break;
        };
        let chunk =
            chunk.map_err(|err| AppError::bad_input(format!("the file part broke: {err}")))?;
        let room = crate::media::HEAD_BYTES - head.len();
        head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        chunks.push(Ok(chunk));
    }
    Ok((head, Box::pin(futures::stream::iter(chunks).chain(body))))
}

/// What the reader knows of a part.
enum Slot {
    /// Not arrived yet; `shared` when mapped to more than one variable.
    Expected { shared: bool },
    /// Streaming now, to the first resolver that takes it.
    Live(Option<Live>),
    /// In a temporary file, for every use.
    Kept(Arc<Kept>),
    /// The body ended or broke without it.
    Missing(String),
    /// The server could not keep it (its temporary folder failed).
    Lost(String),
}

/// What the body's reader sends of a streaming part.
pub enum Piece {
    Data(Bytes),
    /// The part ended whole. A channel that closes without it was cut off: the
    /// file is incomplete, never stored as if it were whole.
    End,
    Broken(String),
}

/// A part as it streams: its pieces come through a channel from the body's reader.
pub struct Live {
    filename: String,
    content_type: Option<String>,
    pieces: mpsc::Receiver<Piece>,
}

impl Live {
    fn into_part(self) -> Part {
        let chunks = futures::stream::unfold(Some(self.pieces), |pieces| async {
            let mut pieces = pieces?;
            let cut = || std::io::Error::other("the request ended before the file part did");
            match pieces.recv().await {
                Some(Piece::Data(chunk)) => Some((Ok(chunk), Some(pieces))),
                Some(Piece::End) => None,
                Some(Piece::Broken(why)) => Some((Err(std::io::Error::other(why)), None)),
                None => Some((Err(cut()), None)),
            }
        });
        Part {
            filename: self.filename,
            content_type: self.content_type,
            body: Box::pin(chunks),
        }
    }
}

/// A part kept in a named temporary file, removed with the last use.
pub struct Kept {
    pub file: tempfile::TempPath,
    pub filename: String,
    pub content_type: Option<String>,
}

struct State {
    slots: Vec<Slot>,
    /// The parts resolvers wait for.
    wanted: BTreeSet<usize>,
    /// The operations ran: no part is wanted any more.
    executed: bool,
}

/// What the reader should do with the part that arrives.
pub enum Demand {
    /// A resolver waits for it.
    Stream,
    /// Nobody waits for it now: into a temporary file.
    Keep,
    /// The operations ran: the rest of the body is not needed.
    Stop,
}

/// The parts of one request, shared by its resolvers and the body's reader.
pub struct Parts {
    state: watch::Sender<State>,
}

impl Parts {
    /// `uses[i]`: how many variables part `i` is mapped to.
    pub fn new(uses: &[usize]) -> Arc<Self> {
        let slots = uses
            .iter()
            .map(|&uses| Slot::Expected { shared: uses > 1 })
            .collect();
        let (state, _) = watch::channel(State {
            slots,
            wanted: BTreeSet::new(),
            executed: false,
        });
        Arc::new(Self { state })
    }

    /// Part `index`, once it arrives.
    pub async fn take(&self, index: usize) -> AppResult<Part> {
        let mut changes = self.state.subscribe();
        loop {
            let mut taken = None;
            self.state.send_if_modified(|state| {
                let wanted = match state.slots.get_mut(index) {
                    None => {
                        taken = Some(Err(missing("no part is mapped to this variable")));
                        false
                    }
                    Some(Slot::Missing(why)) => {
                        taken = Some(Err(missing(why)));
                        false
                    }
                    Some(Slot::Lost(why)) => {
                        let lost =
                            opendal::Error::new(opendal::ErrorKind::Unexpected, why.as_str());
                        taken = Some(Err(AppError::StorageUnavailable(lost)));
                        false
                    }
                    Some(Slot::Kept(kept)) => {
                        taken = Some(kept_part(kept));
                        false
                    }
                    Some(Slot::Live(part)) => {
                        taken = Some(part.take().map(Live::into_part).ok_or_else(|| {
                            missing(
                                "the part streamed to an earlier field; to store one \
                                         file twice, map its part to a variable for each field \
                                         (`map`: {\"0\": [\"variables.a\", \"variables.b\"]})",
                            )
                        }));
                        false
                    }
                    Some(Slot::Expected { .. }) => true,
                };
                match wanted {
                    true => state.wanted.insert(index),
                    false => state.wanted.remove(&index),
                }
            });
            if let Some(taken) = taken {
                return taken;
            }
            if changes.changed().await.is_err() {
                return Err(missing("the request ended"));
            }
        }
    }

    /// Waits until part `index` is wanted, or it is clear that it is not now.
    pub async fn demand(&self, index: usize) -> Demand {
        let mut changes = self.state.subscribe();
        loop {
            {
                let state = changes.borrow_and_update();
                if state.executed {
                    return Demand::Stop;
                }
                if matches!(
                    state.slots.get(index),
                    Some(Slot::Expected { shared: true })
                ) {
                    return Demand::Keep;
                }
                if state.wanted.contains(&index) {
                    return Demand::Stream;
                }
                if !state.wanted.is_empty() {
                    return Demand::Keep;
                }
            }
            if changes.changed().await.is_err() {
                return Demand::Stop;
            }
        }
    }

    /// Part `index` as it streams: `pieces` carries its bytes.
    pub fn stream(
        &self,
        index: usize,
        filename: String,
        content_type: Option<String>,
        pieces: mpsc::Receiver<Piece>,
    ) {
        let live = Live {
            filename,
            content_type,
            pieces,
        };
        self.fill(index, Slot::Live(Some(live)));
    }

    /// Part `index` kept whole in a temporary file.
    pub fn keep(&self, index: usize, kept: Kept) {
        self.fill(index, Slot::Kept(Arc::new(kept)));
    }

    /// The body ended (`why` says how): the parts that did not come are missing.
    pub fn end(&self, why: &str) {
        self.settle(|| Slot::Missing(why.to_owned()));
    }

    /// The server could not keep a part (`why`): those that did not come are lost.
    pub fn fail(&self, why: String) {
        self.settle(|| Slot::Lost(why.clone()));
    }

    /// Every part still expected becomes `slot`.
    fn settle(&self, slot: impl Fn() -> Slot) {
        self.state.send_modify(|state| {
            for place in &mut state.slots {
                if matches!(place, Slot::Expected { .. }) {
                    *place = slot();
                }
            }
        });
    }

    /// The operations ran.
    pub fn executed(&self) {
        self.state.send_modify(|state| state.executed = true);
    }

    /// Resolves when the operations ran.
    pub async fn until_executed(&self) {
        let mut changes = self.state.subscribe();
        let _ = changes.wait_for(|state| state.executed).await;
    }

    fn fill(&self, index: usize, slot: Slot) {
        self.state.send_modify(|state| {
            if let Some(place) = state.slots.get_mut(index) {
                *place = slot;
            }
        });
    }
}

fn missing(why: &str) -> AppError {
    AppError::bad_input(format!("the file part is missing: {why}"))
}

/// A use of a kept part: its own reader from the start (an open file outlives the
/// removal of its temporary name).
fn kept_part(kept: &Kept) -> AppResult<Part> {
    let (_, body) = crate::storage::read_file(&kept.file).map_err(|err| {
        AppError::Internal(anyhow::Error::new(err).context("reading a multipart part"))
    })?;
    Ok(Part {
        filename: kept.filename.clone(),
        content_type: kept.content_type.clone(),
        body: Box::pin(body),
    })
}
