//! The accept loop, with the bounds no request handler can set: at most
//! `MAX_CONNECTIONS` open connections (fitted under the open-file limit, which is
//! raised to its hard limit first; the oldest are asked to close when all are taken
//! and another client connects),
//! `HEADER_READ_TIMEOUT_SECONDS` to send a request's
//! headers (also the keep-alive idle timeout), and `SEND_TIMEOUT_SECONDS` and
//! `MIN_SEND_BYTES_PER_SECOND` for a client that stops reading a response or reads
//! it a trickle at a time. HTTP/1.1 only.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ConnectionLimits;

/// Open files kept for what is not a client connection: the database, storage,
/// logs, outgoing webhooks; half of the limit when that is smaller, so that a low
/// limit still leaves connections (under 260 files, it left one).
const RESERVED_FILES: u64 = 256;

/// Most bytes of a request head; hyper refuses a larger one (431).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How often a full house is logged while it lasts: a flood makes room at every
/// accept, and one line a minute says it (the counter has every one).
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops
/// accepting, closes idle connections and waits for the rest to finish. When every
/// slot is taken and a client connects, the oldest connections are asked to close
/// for it: an idle one (or one
/// still sending its headers) closes at once, a busy one after its response, which
/// may then wait for its client `SEND_TIMEOUT_SECONDS` more in all, so neither a
/// flood of idle connections nor one of downloads read slowly (but faster than
/// `MIN_SEND_BYTES_PER_SECOND`) can keep a new client out.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) {
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(MAX_HEAD_BYTES);
    let pace = Pace {
        timeout: limits.send_timeout(),
        min_rate: limits.min_send_bytes_per_second,
    };
    let open = Arc::new(Mutex::new(Open::default()));
    let mut warned_full: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of files or memory: wait, rather than spin on the error.
                    tracing::warn!(error = %err, "accept error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Only a client that is here makes room: connections at the cap harm no one
        // until then (asked to close before the accept, they were cut with no one
        // waiting, and a cap of one cut every client's connection in turn).
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let asked = open
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .close_oldest((cap / 8).max(1));
                crate::telemetry::connections_closed_for_room(asked);
                if warned_full.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        max_connections = cap,
                        asked,
                        "every connection slot is taken: the oldest connections are asked to \
                         close for new clients (raise MAX_CONNECTIONS if this is not a flood)"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        // No Nagle delay between a response's headers and a small body.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(SendTimeout::new(tcp, pace, activity.clone()));
        let service = tracked(router.clone(), activity.clone(), peer);
        let connection = builder.serve_connection(io, service);
        let close = shutdown.child_token();
        let registered = Registered::add(&open, close.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                // Idle or still sending its head: closed now. Busy: after its response,
                // whose writes may wait SEND_TIMEOUT_SECONDS more in all.
                () = close.cancelled() => match activity.busy.load(Ordering::Relaxed) {
                    true => {
                        activity.closing.store(true, Ordering::Relaxed);
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                    false => Ok(()),
                },
            };
            if let Err(err) = ended {
                // hyper's words name the step; its source, why (a client cut off).
                let cause = std::error::Error::source(&err).map(ToString::to_string);
                tracing::debug!(error = %err, cause, "connection ended with an error");
            }
            drop((registered, slot));
        });
    }
    drop(listener);
    // Every connection was told to close with `shutdown`; all slots back means done.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// What a connection's service tells the rest of its connection.
#[derive(Default)]
struct Activity {
    /// From the moment a request's head is in until its response body is sent or
    /// dropped.
    busy: AtomicBool,
    /// Requests begun: a new one starts a new measure of how fast the client reads.
    requests: AtomicU64,
    /// Asked to close while busy: its response's writes may wait SEND_TIMEOUT_SECONDS
    /// more in all, however fast the client reads.
    closing: AtomicBool,
}

/// `router` as a connection's service that marks the connection busy from the
/// moment a request's head is in until its response body is sent or dropped.
fn tracked(
    router: Router,
    activity: Arc<Activity>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<TrackedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<TrackedBody>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: Request<Incoming>| {
        activity.busy.store(true, Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        let activity = activity.clone();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, activity }))
        }
    })
}

/// A response body that marks its connection idle again once sent or dropped.
struct TrackedBody {
    body: Body,
    activity: Arc<Activity>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.activity.busy.store(false, Ordering::Relaxed);
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The open connections by age, each with the token that asks it to close.
#[derive(Default)]
struct Open {
    next: u64,
    closing: BTreeMap<u64, CancellationToken>,
}

/// A connection's entry among the open ones, removed when its task ends, however it
/// ends: a panic that unwound the task once left its entry behind for good.
struct Registered {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Registered {
    fn add(open: &Arc<Mutex<Open>>, close: CancellationToken) -> Self {
        let mut entries = open.lock().unwrap_or_else(PoisonError::into_inner);
        entries.next += 1;
        let id = entries.next;
        entries.closing.insert(id, close);
        crate::telemetry::connection(true);
        Self {
            open: Arc::clone(open),
            id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closing
            .remove(&self.id);
        crate::telemetry::connection(false);
    }
}

impl Open {
    /// Asks the `count` oldest connections not yet asked to close; how many it asked.
    fn close_oldest(&mut self, count: usize) -> usize {
        let asked = self
            .closing
            .values()
            .filter(|close| !close.is_cancelled())
            .take(count);
        asked.map(CancellationToken::cancel).count()
    }
}

/// `configured`, lowered so that every connection and a file it may stream fit
/// under the open-file limit (raised to its hard limit first).
fn connection_cap(configured: u32) -> usize {
    let files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read or raise the open-file limit");
            return configured as usize;
        }
    };
    let fitting = (files.saturating_sub(RESERVED_FILES.min(files / 2)) / 2).max(1);
    if fitting < u64::from(configured) {
        tracing::warn!(
            max_connections = fitting,
            open_file_limit = files,
            "MAX_CONNECTIONS lowered to fit the open-file limit (ulimit -n)"
        );
        return usize::try_from(fitting).unwrap_or(1);
    }
    configured as usize
}

/// How slowly a client may read a response: a write may wait `timeout` at most,
/// and once a response's writes have waited `timeout` in all, the client must have
/// taken `min_rate` bytes a second of waiting since the first wait (what the socket
/// buffers took before that, several MiB, does not count).
#[derive(Clone, Copy)]
struct Pace {
    timeout: Duration,
    min_rate: u64,
}

impl Pace {
    /// How long writes that have sent `sent` bytes since their first wait may wait in
    /// all.
    fn allowed_wait(&self, sent: u64) -> Duration {
        match self.min_rate {
            0 => Duration::MAX,
            rate => self.timeout.max(Duration::from_secs(sent / rate)),
        }
    }
}

/// A response's writes once one of them first waited for the client.
struct Waits {
    /// The request the response answers ([`Activity::requests`]).
    request: u64,
    /// Time its writes waited, the current wait excluded.
    waited: Duration,
    /// Bytes written since its first wait.
    sent: u64,
    /// `waited` when the connection was asked to close.
    closing_at: Option<Duration>,
    /// The current wait: when it began, when it fails and why.
    current: Option<(Instant, Pin<Box<Sleep>>, Cut)>,
}

/// Why a response's writes failed.
#[derive(Clone, Copy)]
enum Cut {
    Stalled,
    Slow,
    Closing,
}

impl Cut {
    fn error(self) -> io::Error {
        let why = match self {
            Self::Stalled => "the client read nothing for SEND_TIMEOUT_SECONDS",
            Self::Slow => "the client read slower than MIN_SEND_BYTES_PER_SECOND",
            Self::Closing => {
                "the connection was asked to close (every slot taken, or shutdown) and its \
                 client read too slowly to finish within SEND_TIMEOUT_SECONDS"
            }
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

/// A connection whose writes fail once the client reads nothing for
/// `SEND_TIMEOUT_SECONDS`, or reads slower than `MIN_SEND_BYTES_PER_SECOND`, so a
/// stalled or trickled download frees its buffers and its slot: a slot once stayed
/// taken as long as the client read a byte a minute.
struct SendTimeout<T> {
    io: T,
    pace: Pace,
    activity: Arc<Activity>,
    waits: Option<Waits>,
}

impl<T> SendTimeout<T> {
    fn new(io: T, pace: Pace, activity: Arc<Activity>) -> Self {
        Self {
            io,
            pace,
            activity,
            waits: None,
        }
    }

    /// Counts a write's outcome against the pace; `sent` is how many bytes it wrote.
    fn wrote<R>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<R>>,
        sent: impl FnOnce(&R) -> usize,
    ) -> Poll<io::Result<R>> {
        let request = self.activity.requests.load(Ordering::Relaxed);
        if self
            .waits
            .as_ref()
            .is_some_and(|waits| waits.request != request)
        {
            self.waits = None;
        }
        if let Poll::Ready(result) = written {
            if let Some(waits) = &mut self.waits {
                if let Some((since, _, _)) = waits.current.take() {
                    waits.waited += since.elapsed();
                }
                if let Ok(written) = &result {
                    waits.sent = waits.sent.saturating_add(sent(written) as u64);
                }
            }
            return Poll::Ready(result);
        }
        let pace = self.pace;
        let waits = self.waits.get_or_insert_with(|| Waits {
            request,
            waited: Duration::ZERO,
            sent: 0,
            closing_at: None,
            current: None,
        });
        if waits.closing_at.is_none() && self.activity.closing.load(Ordering::Relaxed) {
            waits.closing_at = Some(waits.waited);
        }
        let (_, fails, cut) = waits.current.get_or_insert_with(|| {
            let left = |allowed: Duration| allowed.saturating_sub(waits.waited);
            let limits = [
                (pace.timeout, Cut::Stalled),
                (left(pace.allowed_wait(waits.sent)), Cut::Slow),
                match waits.closing_at {
                    Some(at) => (left(at.saturating_add(pace.timeout)), Cut::Closing),
                    None => (Duration::MAX, Cut::Closing),
                },
            ];
            let (wait, cut) = limits
                .into_iter()
                .min_by_key(|(wait, _)| *wait)
                .unwrap_or((pace.timeout, Cut::Stalled));
            (Instant::now(), Box::pin(tokio::time::sleep(wait)), cut)
        });
        match fails.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(cut.error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written, |sent| *sent)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written, |sent| *sent)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(cx, flushed, |()| 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `total` bytes through a [`SendTimeout`] (SEND_TIMEOUT 5 s, `min_rate`)
    /// to a client that reads `per_second` bytes a second, in tenths; `closing`: the
    /// connection is asked to close after a second. How it ended, and when.
    async fn send(
        total: usize,
        per_second: usize,
        min_rate: u64,
        closing: bool,
    ) -> (io::Result<()>, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
        activity.requests.fetch_add(1, Ordering::Relaxed);
        let pace = Pace {
            timeout: Duration::from_secs(5),
            min_rate,
        };
        let mut connection = SendTimeout::new(near, pace, activity.clone());
        // Reads nothing at all when `per_second` is 0, yet keeps the far end open.
        tokio::spawn(async move {
            let mut buffer = vec![0; per_second / 10];
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if far.read_exact(&mut buffer).await.is_err() {
                    return;
                }
            }
        });
        if closing {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                activity.closing.store(true, Ordering::Relaxed);
            });
        }
        let started = Instant::now();
        let written = connection.write_all(&vec![0; total]).await;
        (written, started.elapsed())
    }

    fn cut_because(ended: &io::Result<()>, setting: &str) -> bool {
        ended
            .as_ref()
            .is_err_and(|err| err.to_string().contains(setting))
    }

    /// A client that reads nothing is cut after SEND_TIMEOUT; one that trickles, once
    /// its writes have waited that long, when it read slower than the floor (any
    /// progress used to keep it for the whole response); a steady one never; and a
    /// busy connection asked to close has SEND_TIMEOUT more of waiting to finish.
    #[tokio::test(start_paused = true)]
    async fn slow_readers_are_cut_and_steady_ones_are_not() {
        let (ended, after) = send(100_000, 0, 1000, false).await;
        assert!(
            cut_because(&ended, "read nothing for SEND_TIMEOUT_SECONDS"),
            "{ended:?}"
        );
        assert!(after <= Duration::from_secs(6), "{after:?}");

        let (ended, after) = send(100_000, 200, 1000, false).await;
        assert!(
            cut_because(&ended, "slower than MIN_SEND_BYTES_PER_SECOND"),
            "{ended:?}"
        );
        assert!(after <= Duration::from_secs(6), "{after:?}");

        let (ended, after) = send(100_000, 20_000, 1000, false).await;
        assert!(ended.is_ok(), "{ended:?}");
        assert!(
            after >= Duration::from_secs(4),
            "the client set the pace: {after:?}"
        );

        let (ended, _) = send(100_000, 200, 0, false).await;
        assert!(ended.is_ok(), "no floor: {ended:?}");

        let (ended, after) = send(400_000, 20_000, 1000, true).await;
        assert!(cut_because(&ended, "asked to close"), "{ended:?}");
        assert!(after <= Duration::from_secs(7), "{after:?}");
    }

    /// A connection task that panics still gives up its entry.
    #[tokio::test]
    async fn an_entry_goes_with_its_task_however_it_ends() {
        let open = Arc::new(Mutex::new(Open::default()));
        let registered = Registered::add(&open, CancellationToken::new());
        let ended = tokio::spawn(async move {
            let _registered = registered;
            panic!("a bug in a handler");
        })
        .await;
        assert!(ended.is_err_and(|err| err.is_panic()));
        assert!(open.lock().expect("lock").closing.is_empty());
    }
}
