//! Request bodies that must keep coming: a body that goes `BODY_IDLE_TIMEOUT_SECONDS`
//! without a byte (the first one included), or whose average falls under
//! `MIN_BODY_BYTES_PER_SECOND` once that long has passed, or, where a whole body has
//! a deadline ([`Paced::within`]), that is not all there by then, ends in
//! [`TooSlow`]. So a client that trickles a body cannot hold an upload slot or a
//! connection for ever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::config::ConnectionLimits;

/// Why a body was cut off; found in an error's source chain by [`is_too_slow`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooSlow(String);

/// Whether `error` or one of its sources is a [`TooSlow`].
pub fn is_too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(current) = source {
        if current.is::<TooSlow>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// `body`, held to the pace of `limits`.
pub fn paced<S>(body: S, limits: &ConnectionLimits) -> Paced<S> {
    let idle = limits.body_idle_timeout();
    let started = Instant::now();
    Paced {
        body,
        idle,
        min_rate: limits.min_body_bytes_per_second,
        started,
        received: 0,
        whole_by: None,
        deadline: Box::pin(tokio::time::sleep_until(started + idle)),
    }
}

pub struct Paced<S> {
    body: S,
    idle: Duration,
    min_rate: u64,
    started: Instant,
    received: u64,
    /// When the whole body must have arrived, and that limit's name.
    whole_by: Option<(Instant, Duration, &'static str)>,
    /// The next moment the body is checked without a new byte: an idle timeout or
    /// the whole body's deadline, whichever comes first.
    deadline: Pin<Box<Sleep>>,
}

impl<S> Paced<S> {
    /// The same body, which must have arrived whole within `limit` from now; the
    /// refusal names `setting`.
    pub fn within(mut self, limit: Duration, setting: &'static str) -> Self {
        let by = Instant::now() + limit;
        self.whole_by = Some((by, limit, setting));
        let first = by.min(self.deadline.deadline());
        self.deadline.as_mut().reset(first);
        self
    }

    /// The refusal of a body past its whole deadline, if it has one and `now` is past it.
    fn past_deadline(&self, now: Instant) -> Option<TooSlow> {
        let (by, limit, setting) = self.whole_by?;
        (now >= by).then(|| {
            TooSlow(format!(
                "the request body did not arrive within {} s ({setting})",
                limit.as_secs()
            ))
        })
    }

    /// Whether the average so far is too slow, past the first `idle` seconds.
    fn too_slow(&self, now: Instant) -> bool {
        let graced = now.saturating_duration_since(self.started + self.idle);
        let owed = u128::from(self.min_rate) * graced.as_millis() / 1000;
        u128::from(self.received) < owed
    }
}

impl From<TooSlow> for axum::Error {
    fn from(too_slow: TooSlow) -> Self {
        axum::Error::new(too_slow)
    }
}

impl<S, E> Stream for Paced<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: From<TooSlow>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                let now = Instant::now();
                if this.too_slow(now) {
                    let message = format!(
                        "the request body arrived slower than {} bytes per second \
                         (MIN_BODY_BYTES_PER_SECOND)",
                        this.min_rate
                    );
                    return Poll::Ready(Some(Err(TooSlow(message).into())));
                }
                if let Some(late) = this.past_deadline(now) {
                    return Poll::Ready(Some(Err(late.into())));
                }
                let next = match this.whole_by {
                    Some((by, ..)) => by.min(now + this.idle),
                    None => now + this.idle,
                };
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    if let Some(late) = this.past_deadline(Instant::now()) {
                        return Poll::Ready(Some(Err(late.into())));
                    }
                    let message = format!(
                        "no byte of the request body arrived for {} s (BODY_IDLE_TIMEOUT_SECONDS)",
                        this.idle.as_secs()
                    );
                    Poll::Ready(Some(Err(TooSlow(message).into())))
                }
                Poll::Pending => Poll::Pending,
            },
            done => done,
        }
    }
}
