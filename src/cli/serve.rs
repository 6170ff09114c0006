//! `attache serve`: bind, build the app, migrate, probe storage, then serve until
//! SIGTERM or Ctrl-C, with the background workers (`workers`) beside the HTTP server.
//! Without a JWT key it prints a development token.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{Config, StorageBackend};
use crate::ids::SafeId;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: Config,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config;
    config.validate()?;
    check_temp_folder()?;
    // A SQLite file belongs to one server; `backup restore` waits for it to stop.
    let _claim =
        crate::db::SqliteClaim::for_url(&config.database.database_url).context("DATABASE_URL")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("LISTEN_ADDR: cannot listen on {}", config.listen_addr))?;
    let base_url = config.public_base_url(listener.local_addr()?)?;
    let address = listener.local_addr()?;
    if config.auth.is_development() && !address.ip().is_loopback() {
        anyhow::bail!(
            "neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set, and LISTEN_ADDR {address} is \
             reachable from other machines: development mode would hand a token to anyone \
             who opens /graphql. Set JWT_SECRET (openssl rand -hex 32) or \
             JWT_PUBLIC_KEY_FILE, or listen on 127.0.0.1"
        );
    }
    if config.public_base_url.is_none() && address.ip().is_unspecified() {
        tracing::warn!(
            "PUBLIC_BASE_URL is unset: the URLs handed out start with {base_url}, which \
             other machines cannot open; set it to the origin clients use \
             (https://files.example.com)"
        );
    }
    let app = Arc::new(App::build(config, base_url).await?);
    app.db
        .migrate()
        .await
        .context("DATABASE_URL: applying database migrations failed")?;
    let database = crate::db::describe(&app.config.database.database_url);
    tracing::info!(%database, "database migrations applied");
    app.storage.startup_check(&app.config.storage).await?;
    if app.storage.backend() == crate::config::StorageBackend::Fs {
        let fsync_files = app.storage.fsync_files();
        tracing::info!(root = %app.storage.location(), fsync_files, "files are stored on the local disk");
    }
    warn_unavailable(&app.config);
    if let Some(minter) = &app.dev_minter {
        let tenant = SafeId::parse("dev").context("the dev tenant id")?;
        let token = minter.mint(&tenant, "dev", Duration::from_secs(24 * 3600), None)?;
        println!(
            "WARNING: neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set: development mode, \
             tokens are signed with a key that dies with this process.\n\
             Development token for tenant `dev`, valid 24 h:\n\n{token}\n\n\
             Playground: {}/graphql (HTTP header: Authorization: Bearer <token>)\n",
            app.public_base_url
        );
    }
    let shutdown = CancellationToken::new();
    let workers = crate::workers::spawn(&app, &shutdown).context("WEBHOOK_URLS")?;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    tracing::info!(url = %format!("{}/graphql", app.public_base_url), "attache is listening");
    let grace = Duration::from_secs(app.config.shutdown_grace_seconds);
    crate::http::serve(listener, app, shutdown.cancelled_owned()).await?;
    let stopped = futures::future::join_all(workers);
    if tokio::time::timeout(grace, stopped).await.is_err() {
        tracing::warn!("background work did not stop in time; the next start goes on");
    }
    tracing::info!("attache stopped");
    Ok(())
}

/// Spooled uploads and multipart parts that wait for their turn go to the system's
/// temporary folder: one that cannot be written (a read-only root filesystem) would
/// fail them one by one after a healthy start, so it stops the start instead.
fn check_temp_folder() -> anyhow::Result<()> {
    let folder = std::env::temp_dir();
    tempfile::tempfile_in(&folder).map(drop).with_context(|| {
        format!(
            "TMPDIR: cannot write a temporary file in {}: uploads are spooled there; set \
             TMPDIR to a writable folder (a volume, on a read-only root filesystem)",
            folder.display()
        )
    })
}

/// Settings that do nothing in this configuration, said out loud.
fn warn_unavailable(config: &Config) {
    if config.auto_migrate_storage && config.storage.storage_backend == StorageBackend::Fs {
        tracing::warn!("AUTO_MIGRATE_STORAGE has no effect with STORAGE_BACKEND=fs");
    }
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
