//! Folds the latencies and sizes recorded since the last pass into the metrics'
//! histogram buckets. The Prometheus recorder keeps every recorded value until
//! something folds it: a scrape of `/metrics` or this worker. Without it a server
//! nobody scrapes grows by about 20 bytes a request (1.3 GiB an hour at 18,000
//! requests a second, docs/performance.md); with it, by what one period records.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the recorded values are folded: what one period records is all the
/// memory they take (a few hundred KiB at tens of thousands of requests a second).
pub const PERIOD: Duration = Duration::from_secs(1);

/// Every [`PERIOD`] until `shutdown`: one fold of the process's recorder.
pub async fn run(shutdown: CancellationToken) {
    let recorder = crate::telemetry::prometheus();
    every(PERIOD, &shutdown, || recorder.run_upkeep()).await;
}

/// `upkeep` every `period` until `shutdown`; the first one period after the start.
async fn every(period: Duration, shutdown: &CancellationToken, mut upkeep: impl FnMut()) {
    let start = tokio::time::Instant::now() + period;
    let mut ticker = tokio::time::interval_at(start, period);
    loop {
        tokio::select! {
            _ = ticker.tick() => upkeep(),
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn folds_every_period_until_shutdown() {
        let period = Duration::from_millis(10);
        let shutdown = CancellationToken::new();
        let folds = std::cell::Cell::new(0);
        let worker = every(period, &shutdown, || folds.set(folds.get() + 1));
        let stop = async {
            tokio::time::sleep(period * 10).await;
            assert!(folds.get() >= 3, "{} folds in ten periods", folds.get());
            shutdown.cancel();
        };
        tokio::join!(worker, stop);
        let stopped = folds.get();
        tokio::time::sleep(period * 5).await;
        assert_eq!(folds.get(), stopped, "none after shutdown");
    }
}
