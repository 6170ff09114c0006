//! `attache serve`: bind, build the app, migrate, probe storage, then serve until
//! SIGTERM or Ctrl-C, with the background workers (`workers`) beside the HTTP server.
//! Without a JWT key it prints a development token. Signals are handled from the
//! first moment: one stops the start or drains the server, a second ends it at once.

use std::net::SocketAddr;
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
    let shutdown = CancellationToken::new();
    stop_on_signals(
        shutdown.clone(),
        "stopping: requests in flight may finish within SHUTDOWN_GRACE_SECONDS; stop \
         again to end at once",
        "stopped at once: requests in flight were cut short (the maintenance removes \
         what they left)",
    )?;
    let config = args.config;
    config.validate()?;
    check_temp_folder()?;
    // A SQLite file belongs to one server; `backup restore` waits for it to stop.
    let _claim =
        crate::db::SqliteClaim::for_url(&config.database.database_url).context("DATABASE_URL")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("LISTEN_ADDR: cannot listen on {}", config.listen_addr))?;
    // Both listeners before anything is migrated: a port in use stops the start
    // before it changed the database.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("METRICS_ADDR: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let base_url = config.public_base_url(listener.local_addr()?)?;
    let address = listener.local_addr()?;
    if config.auth.is_development()
        && let Some(shared) = shared_setup(&config, address, &base_url)
    {
        anyhow::bail!(
            "neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set, and {shared}: development \
             mode (one machine, SQLite, the local disk) would hand a token to anyone who \
             opens /graphql. Set JWT_SECRET (openssl rand -hex 32) or JWT_PUBLIC_KEY_FILE"
        );
    }
    if config.public_base_url.is_none() && address.ip().is_unspecified() {
        tracing::warn!(
            "PUBLIC_BASE_URL is unset: the URLs handed out start with {base_url}, which \
             other machines cannot open; set it to the origin clients use \
             (https://files.example.com)"
        );
    }
    let app = tokio::select! {
        app = start(config, base_url) => app?,
        () = shutdown.cancelled() => {
            tracing::info!("attache stopped before it served");
            return Ok(());
        }
    };
    let workers = crate::workers::spawn(&app, &shutdown).context("WEBHOOK_URLS")?;
    tracing::info!(url = %format!("{}/graphql", app.public_base_url), "attache is listening");
    let grace = Duration::from_secs(app.config.shutdown_grace_seconds);
    crate::http::serve(listener, metrics_listener, app, shutdown.cancelled_owned()).await?;
    let stopped = futures::future::join_all(workers);
    if tokio::time::timeout(grace, stopped).await.is_err() {
        tracing::warn!("background work did not stop in time; the next start goes on");
    }
    tracing::info!("attache stopped");
    Ok(())
}

/// What makes a setup more than one developer's machine, where development mode's
/// token would reach others: an address other machines reach, a public URL other
/// than loopback (a proxy in front forwards anyone, with any `Host`), PostgreSQL or
/// S3 (shared by others, production's).
fn shared_setup(config: &Config, address: SocketAddr, base_url: &str) -> Option<String> {
    if !address.ip().is_loopback() {
        return Some(format!(
            "LISTEN_ADDR {address} is reachable from other machines (listen on 127.0.0.1)"
        ));
    }
    let loopback =
        url::Url::parse(base_url).is_ok_and(|url| crate::http::is_loopback_name(url.host_str()));
    if !loopback {
        return Some(format!("PUBLIC_BASE_URL {base_url} is not this machine"));
    }
    if !config.database.database_url.starts_with("sqlite:") {
        return Some("DATABASE_URL is PostgreSQL".into());
    }
    (config.storage.storage_backend == StorageBackend::S3).then(|| "STORAGE_BACKEND is s3".into())
}

/// The app, built on a migrated database and a storage that answered, and what the
/// operator should know before it serves.
async fn start(config: Config, base_url: String) -> anyhow::Result<Arc<App>> {
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
        // In the log too, where alerts and JSON pipelines look.
        tracing::warn!("development mode: neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set");
        println!(
            "WARNING: neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set: development mode, \
             tokens are signed with a key that dies with this process.\n\
             Development token for tenant `dev`, valid 24 h:\n\n{token}\n\n\
             Playground: {}/graphql (HTTP header: Authorization: Bearer <token>)\n",
            app.public_base_url
        );
    }
    Ok(app)
}

/// Spooled uploads and multipart parts that wait for their turn go to the process's
/// folder in `TMPDIR` (`storage::temp`), made now, after what ended processes left
/// there is removed: one that cannot be made (a read-only root filesystem) would
/// fail them one by one after a healthy start, so it stops the start instead.
fn check_temp_folder() -> anyhow::Result<()> {
    crate::storage::temp::folder()?;
    Ok(())
}

/// Settings that do nothing in this configuration, said out loud.
fn warn_unavailable(config: &Config) {
    if config.auto_migrate_storage && config.storage.storage_backend == StorageBackend::Fs {
        tracing::warn!("AUTO_MIGRATE_STORAGE has no effect with STORAGE_BACKEND=fs");
    }
}

/// Ctrl-C or SIGTERM cancels `stop` and logs `first`; a second one logs `second` and
/// ends the process at once, as a second Ctrl-C does elsewhere, with the status a
/// shell gives a process that signal ended (130 after Ctrl-C, 143 after SIGTERM).
/// On unix the handlers are in place when this returns: a signal that comes while
/// the process starts is not lost (as PID 1 in a container, a SIGTERM nothing
/// handles is dropped).
pub(crate) fn stop_on_signals(
    stop: CancellationToken,
    first: &'static str,
    second: &'static str,
) -> anyhow::Result<()> {
    let mut signals = Signals::new().context("cannot handle SIGTERM and Ctrl-C")?;
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("{first}");
        stop.cancel();
        let status = signals.next().await;
        tracing::warn!("{second}");
        std::process::exit(status);
    });
    Ok(())
}

/// SIGTERM and Ctrl-C (SIGINT), registered when made.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal, as the exit status of a process it ends (128 + its number).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => 130,
            _ = self.terminate.recv() => 143,
        }
    }
}

/// Ctrl-C, where there is no SIGTERM.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> i32 {
        let _ = tokio::signal::ctrl_c().await;
        130
    }
}
