//! `attache backup create | list | restore`: database backups in the configured
//! storage under `backups/`. `create` prints the new backup's name alone on stdout,
//! so scripts can keep it; everything else said goes to stderr.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::backup::{self, Backup, BackupName, Database, Restore};
use crate::config::{DatabaseConfig, StorageConfig};
use crate::storage::{Storage, StorageKey};

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: BackupCommand,
}

impl BackupArgs {
    /// Whether it writes into a pipe of a tool it runs (`pg_restore` reads the
    /// backup from its stdin), whose early end must be an error, not a SIGPIPE.
    pub fn feeds_a_tool(&self) -> bool {
        !matches!(self.command, BackupCommand::List { .. })
    }
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Snapshot the database into storage under backups/ and print the backup's name.
    Create {
        #[command(flatten)]
        target: Target,
        /// Then remove all but the newest N backups.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        keep: Option<u16>,
    },
    /// Show the backups in storage: name, size, age; newest first.
    List {
        #[command(flatten)]
        storage: StorageConfig,
    },
    /// Replace the whole database with a backup (SQLite: never while a server uses
    /// the file).
    Restore {
        #[command(flatten)]
        target: Target,
        /// A name as `backup create` printed it and `backup list` shows it.
        name: String,
        /// Go ahead without asking: a restore run from a terminal asks first, one
        /// run from a script (no terminal) does not.
        #[arg(long)]
        yes: bool,
    },
}

/// The database a backup is taken of or restored into, and the storage it lives in.
#[derive(Args)]
struct Target {
    #[command(flatten)]
    database: DatabaseConfig,
    #[command(flatten)]
    storage: StorageConfig,
}

impl Target {
    fn open(&self) -> anyhow::Result<(Database, Storage)> {
        self.storage.validate()?;
        let database = Database::from_config(&self.database)?;
        let fsync_files = self.storage.files_synced(Some(&self.database));
        Ok((database, Storage::from_config(&self.storage, fsync_files)?))
    }
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    match args.command {
        BackupCommand::Create { target, keep } => create(&target, keep).await,
        BackupCommand::List { storage } => list(&storage).await,
        BackupCommand::Restore { target, name, yes } => restore(&target, &name, yes).await,
    }
}

async fn create(target: &Target, keep: Option<u16>) -> anyhow::Result<()> {
    // A backup of a database attache never set up (a mistyped `DATABASE_URL`) would
    // count against `--keep` and prune a real one, and a restore of it would replace
    // the server's database with a stranger's.
    crate::db::require_existing(&target.database).await?;
    let (database, storage) = target.open()?;
    storage.probe(&target.storage, true).await?;
    let backup = backup::create(&database, &storage).await?;
    eprintln!(
        "backed up {database} into {}/{} ({})",
        storage.location(),
        backup.name.key(),
        indicatif::HumanBytes(backup.size)
    );
    println!("{}", backup.name);
    if let Some(keep) = keep {
        for removed in backup::prune(&storage, usize::from(keep)).await? {
            eprintln!("removed the older backup {}", removed.name);
        }
    }
    Ok(())
}

async fn list(config: &StorageConfig) -> anyhow::Result<()> {
    config.validate()?;
    config.require_existing_root()?;
    // It lists, and stores nothing.
    let storage = Storage::from_config(config, false)?;
    let backups = backup::list(&storage).await?;
    if backups.is_empty() {
        eprintln!(
            "no backups in {}/{}",
            storage.location(),
            StorageKey::BACKUPS
        );
        return Ok(());
    }
    let width = backups
        .iter()
        .map(|backup| backup.name.to_string().len())
        .max()
        .unwrap_or_default();
    println!("{:<width$}  {:>10}  AGE", "NAME", "SIZE");
    for backup in &backups {
        println!(
            "{:<width$}  {:>10}  {}",
            backup.name.to_string(),
            indicatif::HumanBytes(backup.size).to_string(),
            age(backup)
        );
    }
    Ok(())
}

async fn restore(target: &Target, name: &str, yes: bool) -> anyhow::Result<()> {
    let name = BackupName::parse(name).ok_or_else(|| {
        anyhow::anyhow!(
            "NAME: `{name}` is not a backup name (attache-YYYYMMDDTHHMMSSZ.sqlite or .pgdump); \
             `attache backup list` shows them"
        )
    })?;
    target.storage.require_existing_root()?;
    let (database, storage) = target.open()?;
    let restore = Restore::prepare(&database, &storage, name).await?;
    let backup = restore.backup().clone();
    let question = format!(
        "restoring {} ({}, taken {} ago) replaces every row of {database}, rows written \
         since included. Go ahead? [y/N] ",
        backup.name,
        indicatif::HumanBytes(backup.size),
        age(&backup)
    );
    if !yes && std::io::stdin().is_terminal() && !confirmed(&question)? {
        anyhow::bail!("nothing restored");
    }
    let restored = restore.run(&storage).await?;
    let attachments = restored.attachments;
    println!(
        "restored {} ({}, taken {} ago) into {database}: {attachments} attachments",
        backup.name,
        indicatif::HumanBytes(backup.size),
        age(&backup)
    );
    let missing = restored.missing.len();
    println!(
        "files: {} present, {missing} missing",
        usize::try_from(attachments)
            .unwrap_or_default()
            .saturating_sub(missing)
    );
    for key in restored.missing.iter().take(20) {
        println!("  missing: {key}");
    }
    if missing > 20 {
        println!("  ... and {} more", missing - 20);
    }
    Ok(())
}

/// Asks `question` on the terminal; only `y` or `yes` goes ahead.
fn confirmed(question: &str) -> std::io::Result<bool> {
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// How long ago a backup was taken: seconds, then minutes, then hours (`3h 12m`).
fn age(backup: &Backup) -> String {
    let seconds = (chrono::Utc::now() - backup.name.taken())
        .num_seconds()
        .max(0)
        .unsigned_abs();
    let unit = match seconds {
        0..60 => 1,
        60..86_400 => 60,
        _ => 3600,
    };
    humantime::format_duration(Duration::from_secs(seconds - seconds % unit)).to_string()
}
