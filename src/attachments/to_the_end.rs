//! Work that must end once it has begun (storage touched, rows to write or clean
//! up), even if the request that started it goes away. It runs on the request's
//! own task, where a task spawned for it cost an allocation, a schedule and a
//! wake-up per upload, often on another core (issue 26); only a request dropped
//! before the work ends hands the rest to a task of its own.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{AppError, AppResult};

/// Runs `work` to its end even if the request that started it is dropped (a client
/// that disconnects, a timeout): once storage is touched, the object, its row and
/// the clean-up on failure all happen, so nothing is left half-made. A panic in it
/// is an internal error, as it was when a task ran it.
pub(super) async fn uncancellable<T, F>(work: F) -> AppResult<T>
where
    F: Future<Output = AppResult<T>> + Send + 'static,
    T: Send + 'static,
{
    // The work keeps the request's span, so its log lines carry the request id.
    let work = tracing::Instrument::in_current_span(work);
    ToTheEnd(Some(Box::pin(work))).await.unwrap_or_else(|_| {
        Err(AppError::Internal(anyhow::anyhow!(
            "a storage task panicked"
        )))
    })
}

/// A future that, dropped before it is done, is finished by a task of its own.
struct ToTheEnd<F: Future + Send + 'static>(Option<Pin<Box<F>>>)
where
    F::Output: Send + 'static;

impl<F: Future + Send + 'static> Future for ToTheEnd<F>
where
    F::Output: Send + 'static,
{
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.0.as_mut() else {
            return Poll::Pending;
        };
        // A panic ends the work here: it is never polled again, nor spawned.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx)));
        let output = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(panic) => Err(panic),
        };
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for ToTheEnd<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // Outside a runtime (it is shutting down) nothing could run it anyway.
        if let Some(work) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn(work));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn work_dropped_half_way_still_ends() {
        let ended = Arc::new(AtomicBool::new(false));
        let (started, on_start) = tokio::sync::oneshot::channel();
        let work = {
            let ended = Arc::clone(&ended);
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_millis(50)).await;
                ended.store(true, Ordering::SeqCst);
                Ok(())
            }
        };
        let request = tokio::spawn(uncancellable(work));
        on_start.await.expect("the work started");
        request.abort();
        assert!(request.await.expect_err("aborted").is_cancelled());
        for _ in 0..100 {
            if ended.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the work was dropped with its request");
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error() {
        let failed = uncancellable(async {
            if std::hint::black_box(true) {
                panic!("on purpose");
            }
            Ok(())
        })
        .await;
        assert!(matches!(failed, Err(AppError::Internal(_))), "{failed:?}");
        let answered = uncancellable(async { Ok(7) }).await.expect("no panic");
        assert_eq!(answered, 7);
    }
}
