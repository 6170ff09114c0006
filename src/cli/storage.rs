//! `attache storage check | migrate | sweep`: probe the store, move the local files
//! into the bucket, remove what crashes and abandoned uploads left behind.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::app::App;
use crate::attachments::migrate::{self, Outcome, Plan, Progress};
use crate::config::{Config, DatabaseConfig, StorageBackend, StorageConfig};
use crate::storage::Storage;

#[derive(Args)]
pub struct StorageArgs {
    #[command(subcommand)]
    command: StorageCommand,
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Write, read, stat and delete a probe object; say what works and what does not.
    Check {
        #[command(flatten)]
        storage: StorageConfig,
    },
    /// Copy every attachment file from STORAGE_ROOT into the S3 bucket under the same
    /// key, verify it and record it in `storage_migrations`. Safe to interrupt and re-run.
    Migrate(Box<MigrateArgs>),
    /// Remove objects no row references (older than --older-than), expired direct
    /// uploads, pending deletions and unfinished S3 multipart uploads. Never touches
    /// `backups/`.
    Sweep(Box<SweepArgs>),
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseConfig,
    #[command(flatten)]
    storage: StorageConfig,
    /// List what would be copied; copy and record nothing (pending database
    /// migrations are applied, as every command does).
    #[arg(long)]
    dry_run: bool,
    /// Attachment rows read per database query.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch_size: u64,
    /// Files copied at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    config: Config,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Orphans younger than this are kept (an upload may be about to commit its row).
    #[arg(long, default_value = "24h", value_parser = crate::config::parse_age)]
    older_than: Duration,
}

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    match args.command {
        StorageCommand::Check { storage } => check(&storage).await,
        StorageCommand::Migrate(args) => migrate(*args).await,
        StorageCommand::Sweep(args) => sweep(*args).await,
    }
}

async fn check(config: &StorageConfig) -> anyhow::Result<()> {
    // The settings first, as `serve` checks them: OpenDAL's own words for a missing
    // bucket name ("ConfigInvalid ... at , context") say nothing of the variable.
    config.validate()?;
    // Knowing no database, it checks the stricter path: files synced to disk, as
    // `serve` syncs them on PostgreSQL, unless FSYNC_FILES says otherwise.
    let storage = Storage::from_config(config, config.files_synced(None))?;
    let target = match &config.s3_bucket_name {
        Some(bucket) if storage.backend() == StorageBackend::S3 => format!("s3 bucket {bucket}"),
        _ => format!("folder {}", config.storage_root.display()),
    };
    println!("checking {target}");
    let mut failed = 0;
    for (step, result) in storage.check_steps().await {
        match result {
            Ok(()) => println!("  {step:<17} ok"),
            Err(err) => {
                failed += 1;
                let message = crate::storage::what_the_store_said(&err);
                println!("  {step:<17} FAILED: {message}");
                tracing::debug!(step, error = %err, "storage check step failed");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("storage check failed: see the steps above");
    }
    println!("storage works");
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    if args.storage.storage_backend != StorageBackend::S3 {
        anyhow::bail!(
            "STORAGE_BACKEND: storage migrate copies STORAGE_ROOT into the S3 bucket; \
             set STORAGE_BACKEND=s3 and the S3_ variables"
        );
    }
    args.storage.validate()?;
    // The database first (it names the files), then both sides answer before
    // anything is copied; each failure names its variable.
    let db = crate::db::Database::open_existing(&args.database).await?;
    let source = Storage::local_source(&args.storage.storage_root)?;
    // The bucket: syncing files is fs's.
    let destination = Storage::from_config(&args.storage, false)?;
    destination.probe(&args.storage, !args.dry_run).await?;
    db.migrate()
        .await
        .context("DATABASE_URL: applying database migrations failed")?;
    println!(
        "{} {} -> {} (rows of {})",
        if args.dry_run {
            "dry run:"
        } else {
            "migrating"
        },
        source.location(),
        destination.location(),
        crate::db::describe(&args.database.database_url)
    );
    let plan = Plan {
        dry_run: args.dry_run,
        batch_size: args.batch_size,
        concurrency: usize::from(args.concurrency),
    };
    let progress = BarProgress::new(args.dry_run);
    // Ctrl-C or SIGTERM: copies under way finish, nothing new starts. A second one
    // stops at once (what was cut short is copied again by the next run).
    let stop = tokio_util::sync::CancellationToken::new();
    crate::cli::serve::stop_on_signals(
        stop.clone(),
        "stopping once the copies under way end; stop again to cut them short",
        "stopped: the copies under way were cut short; the next run makes them",
    )?;
    let summary = migrate::run(&db, &source, &destination, plan, &progress, &stop).await?;
    progress.bar.finish_and_clear();
    println!("{summary}");
    if summary.missing + summary.failed + summary.interrupted > 0 {
        anyhow::bail!(
            "{} files missing, {} failed, {} not tried: see the lines above",
            summary.missing,
            summary.failed,
            summary.interrupted
        );
    }
    Ok(())
}

/// An `indicatif` bar (files and bytes) on a terminal, else a line every
/// [`LINE_EVERY`] files (a run under systemd or `nohup` shows it is alive); lines
/// for what needs a look.
struct BarProgress {
    bar: indicatif::ProgressBar,
    dry_run: bool,
    /// No terminal: progress is told in lines.
    lines: bool,
    files_done: AtomicU64,
    files: AtomicU64,
}

/// Files between two progress lines when there is no terminal.
const LINE_EVERY: u64 = 100;

impl BarProgress {
    fn new(dry_run: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal && !dry_run {
            indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self {
            bar,
            dry_run,
            lines: !terminal && !dry_run,
            files_done: AtomicU64::new(0),
            files: AtomicU64::new(0),
        }
    }
}

impl Progress for BarProgress {
    fn begin(&self, files: u64, bytes: u64) {
        self.bar.set_length(bytes);
        self.files.store(files, Ordering::Relaxed);
        self.bar.set_message(format!("0/{files} files"));
    }

    fn file(&self, key: &str, bytes: u64, outcome: &Outcome) {
        self.bar.inc(bytes);
        let line = match outcome {
            Outcome::WouldCopy if self.dry_run => Some(format!("would copy {key} ({bytes} bytes)")),
            Outcome::Missing => Some(format!("missing: {key} is not in the source folder")),
            Outcome::Failed(reason) => Some(format!("failed: {key}: {reason}")),
            _ => None,
        };
        if let Some(line) = line {
            self.bar.suspend(|| println!("{line}"));
        }
        let done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        let files = self.files.load(Ordering::Relaxed);
        self.bar.set_message(format!("{done}/{files} files"));
        if self.lines && done.is_multiple_of(LINE_EVERY) {
            println!("{done}/{files} files");
        }
    }

    fn waiting(&self) {
        self.bar
            .suspend(|| eprintln!("another storage migration holds the lock; waiting for it"));
    }
}

async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let config = args.config;
    config.validate()?;
    let base_url = config.public_base_url(config.listen_addr)?;
    crate::db::require_existing(&config.database).await?;
    config.storage.require_existing_root()?;
    let app = App::build(config, base_url).await?;
    app.db
        .migrate()
        .await
        .context("DATABASE_URL: applying database migrations failed")?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "sweeping {} against the rows of {}",
        app.storage.location(),
        crate::db::describe(&app.config.database.database_url)
    );
    let swept = crate::attachments::sweep::run(&app, args.older_than, args.dry_run).await?;
    for item in &swept {
        println!("{verb} {} ({})", item.key, item.reason);
    }
    println!("{verb} {} objects", swept.len());
    Ok(())
}
