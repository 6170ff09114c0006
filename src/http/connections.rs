//! The accept loop, with the bounds no request handler can set: at most
//! `MAX_CONNECTIONS` open connections (fitted under the open-file limit, which is
//! raised to its hard limit first), `HEADER_READ_TIMEOUT_SECONDS` to send a request's
//! headers (also the keep-alive idle timeout), and `SEND_TIMEOUT_SECONDS` for a
//! client that stops reading a response. HTTP/1.1 only.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionLimits;

/// Open files kept for what is not a client connection: the database, storage,
/// logs, outgoing webhooks.
const RESERVED_FILES: u64 = 256;

/// Most bytes of a request head; hyper refuses a larger one (431).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops
/// accepting, closes idle connections and waits for the rest to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(connection_cap(limits.max_connections)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(MAX_HEAD_BYTES);
    let send_timeout = limits.send_timeout();
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of files or memory: wait, rather than spin on the error.
                    tracing::warn!(error = %err, "accept error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // No Nagle delay between a response's headers and a small body.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(SendTimeout::new(tcp, send_timeout));
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
    let fitting = files.saturating_sub(RESERVED_FILES) / 2;
    if fitting < u64::from(configured) {
        tracing::warn!(
            max_connections = fitting,
            open_file_limit = files,
            "MAX_CONNECTIONS lowered to fit the open-file limit (ulimit -n)"
        );
        return usize::try_from(fitting.max(1)).unwrap_or(1);
    }
    configured as usize
}

/// A connection whose writes fail once the client has read nothing for `timeout`,
/// so a stalled download frees its buffers and its slot.
struct SendTimeout {
    tcp: TcpStream,
    timeout: Duration,
    /// Armed when a write first waits; disarmed by any write that goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendTimeout {
    fn new(tcp: TcpStream, timeout: Duration) -> Self {
        Self {
            tcp,
            timeout,
            stalled: None,
        }
    }

    fn wrote<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for SEND_TIMEOUT_SECONDS",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for SendTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.tcp).poll_flush(cx);
        self.wrote(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
