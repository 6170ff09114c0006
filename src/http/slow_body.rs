//! Request bodies that must keep coming: a body that goes `BODY_IDLE_TIMEOUT_SECONDS`
//! without a byte (the first one included), or whose average falls under
//! `MIN_BODY_BYTES_PER_SECOND` once that long has passed, or that was waited for
//! longer than `BODY_TIMEOUT_SECONDS`, ends in [`TooSlow`]. So a client that trickles
//! a body cannot hold an upload slot or a connection for ever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::config::ConnectionLimits;
use crate::error::AppError;
use crate::http::drain::closing;

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

/// The answer to a body that came too slowly, whichever route it came to: 408 with
/// the message naming the setting, and the connection closes.
pub fn body_too_slow(message: &str) -> Response {
    let mut response = AppError::bad_input(message).into_response();
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    closing(response)
}

/// `body`, held to the pace of `limits`, which must also have come whole after
/// `BODY_TIMEOUT_SECONDS` spent waiting for it: a GraphQL request's body, files
/// included (it holds an upload slot), and a direct upload's PUT (it holds a
/// connection that no flood of new ones closes).
pub fn paced<S>(body: S, limits: &ConnectionLimits) -> Paced<S> {
    let idle = limits.body_idle_timeout();
    let started = Instant::now();
    Paced {
        body,
        idle,
        min_rate: limits.min_body_bytes_per_second,
        started,
        received: 0,
        idle_by: started + idle,
        whole: Whole {
            limit: limits.body_timeout(),
            waited: Duration::ZERO,
            waiting_since: None,
        },
        next_check: Box::pin(tokio::time::sleep_until(started + idle)),
    }
}

pub struct Paced<S> {
    body: S,
    idle: Duration,
    min_rate: u64,
    started: Instant,
    received: u64,
    /// When the body is too idle if no byte comes first.
    idle_by: Instant,
    whole: Whole,
    /// The next moment the body is checked without a new byte: its idle timeout or
    /// the end of its time to arrive whole, whichever comes first.
    next_check: Pin<Box<Sleep>>,
}

/// The time a body may be waited for. Only the time spent waiting for the client
/// counts: while attache does not read (a resolver writing the previous file to
/// storage, a commit), what the client sent waits in the socket and costs it nothing.
struct Whole {
    limit: Duration,
    waited: Duration,
    /// When the body last had nothing to give, while it is waited for.
    waiting_since: Option<Instant>,
}

impl Whole {
    /// The time waited by `now`.
    fn waited_by(&self, now: Instant) -> Duration {
        let current = self
            .waiting_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        self.waited + current
    }

    fn refusal(&self) -> TooSlow {
        TooSlow(format!(
            "the request body did not arrive within {} s (BODY_TIMEOUT_SECONDS)",
            self.limit.as_secs()
        ))
    }
}

impl<S> Paced<S> {
    /// Whether the average so far is too slow, past the first `idle` seconds.
    fn too_slow(&self, now: Instant) -> bool {
        let graced = now.saturating_duration_since(self.started + self.idle);
        let owed = u128::from(self.min_rate) * graced.as_millis() / 1000;
        u128::from(self.received) < owed
    }

    /// The refusal of a body waited for longer than its whole body may take.
    fn too_late(&self, now: Instant) -> Option<TooSlow> {
        let whole = &self.whole;
        (whole.waited_by(now) >= whole.limit).then(|| whole.refusal())
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
        let now = Instant::now();
        let whole = &mut this.whole;
        whole.waited = whole.waited_by(now);
        whole.waiting_since = None;
        match Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                if this.too_slow(now) {
                    let message = format!(
                        "the request body arrived slower than {} bytes per second \
                         (MIN_BODY_BYTES_PER_SECOND)",
                        this.min_rate
                    );
                    return Poll::Ready(Some(Err(TooSlow(message).into())));
                }
                if let Some(late) = this.too_late(now) {
                    return Poll::Ready(Some(Err(late.into())));
                }
                this.idle_by = now + this.idle;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Pending => {
                if let Some(late) = this.too_late(now) {
                    return Poll::Ready(Some(Err(late.into())));
                }
                let whole = &mut this.whole;
                whole.waiting_since = Some(now);
                let next = this
                    .idle_by
                    .min(now + whole.limit.saturating_sub(whole.waited));
                if this.next_check.deadline() != next {
                    this.next_check.as_mut().reset(next);
                }
                match this.next_check.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let now = Instant::now();
                        let refusal = this.too_late(now).unwrap_or_else(|| {
                            TooSlow(format!(
                                "no byte of the request body arrived for {} s \
                                 (BODY_IDLE_TIMEOUT_SECONDS)",
                                this.idle.as_secs()
                            ))
                        });
                        Poll::Ready(Some(Err(refusal.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use futures::channel::mpsc;

    use super::*;

    type Body = mpsc::UnboundedReceiver<Result<Bytes, axum::Error>>;

    /// A GraphQL body's pacing with no minimum rate (each test sets what it tests).
    fn whole(
        idle: u64,
        whole: u64,
    ) -> (
        mpsc::UnboundedSender<Result<Bytes, axum::Error>>,
        Paced<Body>,
    ) {
        let limits = ConnectionLimits {
            max_connections: 8,
            header_read_timeout_seconds: 20,
            body_idle_timeout_seconds: idle,
            min_body_bytes_per_second: 0,
            body_timeout_seconds: whole,
            send_timeout_seconds: 60,
            min_send_bytes_per_second: 0,
        };
        let (sender, body) = mpsc::unbounded();
        (sender, paced(body, &limits))
    }

    /// Reads `paced` to its refusal: its message and when it came.
    async fn refusal(paced: &mut Paced<Body>) -> (String, Duration) {
        let started = Instant::now();
        loop {
            match paced.next().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return (err.to_string(), started.elapsed()),
                None => panic!("the body ended without a refusal"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_at_its_whole_time_or_its_idle_time() {
        let (_sender, mut paced) = whole(20, 3);
        let (message, after) = refusal(&mut paced).await;
        assert!(message.contains("BODY_TIMEOUT_SECONDS"), "{message}");
        assert_eq!(after, Duration::from_secs(3));

        let (_sender, mut paced) = whole(1, 60);
        let (message, after) = refusal(&mut paced).await;
        assert!(message.contains("BODY_IDLE_TIMEOUT_SECONDS"), "{message}");
        assert_eq!(after, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_ends_once_waited_for_its_whole_time() {
        let (sender, mut paced) = whole(20, 3);
        tokio::spawn(async move {
            while sender.unbounded_send(Ok(Bytes::from_static(b"a"))).is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let (message, after) = refusal(&mut paced).await;
        assert!(message.contains("BODY_TIMEOUT_SECONDS"), "{message}");
        assert_eq!(after, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_not_reading_costs_the_client_nothing() {
        let (sender, mut paced) = whole(20, 3);
        for _ in 0..10 {
            sender
                .unbounded_send(Ok(Bytes::from_static(b"a")))
                .expect("sent");
        }
        drop(sender);
        assert!(matches!(paced.next().await, Some(Ok(_))));
        // Attache busy elsewhere (a resolver storing the previous file): the rest
        // waited in the socket.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut read = 1;
        while let Some(chunk) = paced.next().await {
            chunk.expect("a chunk, not a refusal");
            read += 1;
        }
        assert_eq!(read, 10);
    }
}
