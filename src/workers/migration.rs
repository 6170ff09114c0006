//! `AUTO_MIGRATE_STORAGE`: the storage migration of `storage migrate`, run beside
//! the HTTP server with its progress in the log and the metrics.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::SharedApp;
use crate::attachments::migrate;

/// Files between two progress lines of the background migration.
const LOG_EVERY: u64 = 100;
/// Wait before a background migration that left files behind tries again.
const RETRY_PERIOD: Duration = Duration::from_secs(300);

/// `AUTO_MIGRATE_STORAGE`: the migration of `storage migrate`, run by `serve` beside
/// the HTTP server, progress in the log; passes repeat until every file is verified
/// or `stop` is cancelled (copies under way then finish).
pub async fn run(app: SharedApp, stop: CancellationToken) {
    let Some(source) = app.local_fallback.as_ref() else {
        return;
    };
    let plan = migrate::Plan {
        dry_run: false,
        batch_size: 100,
        concurrency: 4,
    };
    loop {
        tracing::info!(
            from = source.location(),
            to = app.storage.location(),
            "storage migration started"
        );
        let progress = LogProgress::default();
        match migrate::run(&app.db, source, &app.storage, plan, &progress, &stop).await {
            Ok(summary) if summary.complete() => {
                app.migration_done
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(%summary, "storage migration complete: every file is in the bucket");
                return;
            }
            Ok(summary) if stop.is_cancelled() => {
                tracing::info!(%summary, "storage migration stopped; the next start goes on");
                return;
            }
            Ok(summary) => tracing::warn!(
                %summary, "storage migration left files behind; retrying in 5 minutes"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "storage migration stopped; retrying in 5 minutes")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PERIOD) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Progress in the log (a line every [`LOG_EVERY`] files and one per problem) and
/// in the metrics.
#[derive(Default)]
struct LogProgress {
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
    bytes_done: std::sync::atomic::AtomicU64,
    bytes_total: std::sync::atomic::AtomicU64,
}

impl migrate::Progress for LogProgress {
    fn begin(&self, files: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.total.store(files, Relaxed);
        self.bytes_total.store(bytes, Relaxed);
        crate::telemetry::migration_progress(0, files, 0, bytes);
        tracing::info!(files, bytes, "storage migration: files to check");
    }

    fn file(&self, key: &str, bytes: u64, outcome: &migrate::Outcome) {
        use std::sync::atomic::Ordering::Relaxed;
        let done = self.done.fetch_add(1, Relaxed) + 1;
        let bytes_done = self.bytes_done.fetch_add(bytes, Relaxed) + bytes;
        crate::telemetry::migration_progress(
            done,
            self.total.load(Relaxed),
            bytes_done,
            self.bytes_total.load(Relaxed),
        );
        match outcome {
            migrate::Outcome::Missing => {
                tracing::error!(key, "storage migration: the local file is missing")
            }
            migrate::Outcome::Failed(reason) => {
                tracing::error!(key, reason, "storage migration: copy failed")
            }
            _ => {}
        }
        if done.is_multiple_of(LOG_EVERY) {
            let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
            tracing::info!(done, total, "storage migration progress");
        }
    }

    fn waiting(&self) {
        tracing::info!("another storage migration holds the lock; waiting for it");
    }
}
