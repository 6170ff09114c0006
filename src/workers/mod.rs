//! Background work beside the HTTP server, one module per worker and one shape for
//! all: `run(app, shutdown)` (`run(shutdown)` for a worker that needs no app) works
//! until `shutdown` is cancelled, then lets what is under way finish and returns.
//! [`spawn`] starts every one `serve` runs.

pub mod dispatcher;
pub mod maintenance;
pub mod metrics_upkeep;
pub mod migration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::SharedApp;
pub use dispatcher::{DispatchError, Dispatcher};

/// Starts the maintenance, the metrics' upkeep, the background storage migration (a
/// no-op unless `AUTO_MIGRATE_STORAGE` has work) and, with webhooks configured, the
/// dispatcher.
pub fn spawn(
    app: &SharedApp,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, DispatchError> {
    let mut workers = vec![
        tokio::spawn(maintenance::run(app.clone(), shutdown.clone())),
        tokio::spawn(metrics_upkeep::run(shutdown.clone())),
        tokio::spawn(migration::run(app.clone(), shutdown.clone())),
    ];
    if let Some(dispatcher) = Dispatcher::new(app.clone())? {
        workers.push(tokio::spawn(dispatcher.run(shutdown.clone())));
    }
    Ok(workers)
}
