//! Moving files from the local disk into the bucket (SPEC 9, `storage migrate`): walk
//! the attachment rows by id, copy each object under the same key as a stream,
//! verify size and sha256 of what landed against the row, and record it in
//! `storage_migrations`. Only verified objects are recorded, so an interrupted run
//! is completed by the next one; no attachment row is ever written.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use entity::{attachment, storage_deletion, storage_migration};
use futures::StreamExt;
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Database, Transaction};
use crate::storage::{CopyError, Digest, Storage, StorageKey};

/// Copies of one file tried before it counts as failed.
const MAX_ATTEMPTS: u32 = 3;
/// Wait before the second copy; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The PostgreSQL advisory lock that makes migrations run one at a time.
const LOCK_ID: i64 = 0x6174_7461_6368_6531;

/// How a migration runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// List what would be copied; copy and record nothing.
    pub dry_run: bool,
    /// Attachment rows read per query.
    pub batch_size: u64,
    /// Files copied at once.
    pub concurrency: usize,
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Copied and verified, after this many attempts.
    Copied { attempts: u32 },
    /// Already in the bucket with the right bytes (an interrupted run, or an upload
    /// made on S3); now recorded.
    AlreadyThere,
    /// Recorded by an earlier run.
    Skipped,
    /// `--dry-run`: would be copied.
    WouldCopy,
    /// No local file and no verified object in the bucket.
    Missing,
    /// Its row was deleted while the file was copied, or since: the copy is removed
    /// again.
    Deleted,
    /// Not tried: the run was asked to stop.
    Interrupted,
    /// Every attempt failed; the reason, for people.
    Failed(String),
}

/// The counts a run ends with.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub copied: u64,
    pub already_there: u64,
    pub skipped: u64,
    pub would_copy: u64,
    pub missing: u64,
    pub failed: u64,
    /// Files whose rows were deleted while they were copied, or since: their copies
    /// removed.
    pub deleted: u64,
    /// Copies of files deleted since that could not be removed (tried again by the
    /// next run; they leave no file uncopied, so the run stays complete).
    pub deleted_left: u64,
    /// Files not tried because the run was stopped.
    pub interrupted: u64,
    /// Bytes copied (or, on a dry run, that would be).
    pub bytes: u64,
    pub elapsed: Duration,
    pub dry_run: bool,
}

impl Summary {
    fn add(&mut self, outcome: &Outcome, bytes: u64) {
        match outcome {
            Outcome::Copied { .. } => {
                self.copied += 1;
                self.bytes += bytes;
            }
            Outcome::AlreadyThere => self.already_there += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::WouldCopy => {
                self.would_copy += 1;
                self.bytes += bytes;
            }
            Outcome::Missing => self.missing += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Deleted => self.deleted += 1,
            Outcome::Interrupted => self.interrupted += 1,
        }
    }

    /// Whether every file is now verified in the bucket.
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.failed == 0 && self.would_copy == 0 && self.interrupted == 0
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.bytes as f64 / seconds / 1_000_000.0
        } else {
            0.0
        };
        if self.dry_run {
            write!(f, "dry run: would copy {}, ", self.would_copy)?;
        }
        write!(
            f,
            "copied {}, already there {}, skipped {}, missing {}, failed {}, {} bytes, {seconds:.1} s, {rate:.1} MB/s",
            self.copied, self.already_there, self.skipped, self.missing, self.failed, self.bytes
        )?;
        if self.deleted > 0 {
            write!(f, " (copies of deleted files removed: {})", self.deleted)?;
        }
        if self.deleted_left > 0 {
            write!(
                f,
                " (copies of deleted files that could not be removed: {}, tried again next run)",
                self.deleted_left
            )?;
        }
        if self.interrupted > 0 {
            write!(f, " (stopped: {} files not tried)", self.interrupted)?;
        }
        Ok(())
    }
}

/// Where a run reports each file: a progress bar on a terminal, the log in `serve`.
pub trait Progress: Send + Sync {
    /// Called once, with the rows and bytes the run will walk.
    fn begin(&self, files: u64, bytes: u64);
    /// Called once per file, in no particular order.
    fn file(&self, key: &str, bytes: u64, outcome: &Outcome);
    /// Called when another migration holds the lock and this one waits for it.
    fn waiting(&self);
}

/// Why a run could not go on at all (a single file's failure is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("DATABASE_URL: {0}")]
    Database(#[from] sea_orm::DbErr),
}

/// Copies every attachment's object from `source` (the local folder) into
/// `destination` (the bucket). One run at a time per database: see [`RunLock`].
/// Once `stop` is cancelled no new copy starts; those under way finish.
pub async fn run(
    db: &Database,
    source: &Storage,
    destination: &Storage,
    plan: Plan,
    progress: &dyn Progress,
    stop: &CancellationToken,
) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let _lock = match plan.dry_run {
        true => None,
        false => Some(RunLock::acquire(db, progress).await?),
    };
    let (files, bytes) = totals(db).await?;
    progress.begin(files, bytes);
    let copier = Copier {
        db,
        source,
        destination,
        dry_run: plan.dry_run,
    };
    let mut summary = Summary {
        dry_run: plan.dry_run,
        ..Summary::default()
    };
    let mut after: Option<Uuid> = None;
    let mut seen = 0;
    loop {
        if stop.is_cancelled() {
            // Asked to stop: no new copy, and no need to page through the rest.
            summary.interrupted += files.saturating_sub(seen);
            break;
        }
        let mut query = attachment::Entity::find().order_by_asc(attachment::Column::Id);
        if let Some(after) = after {
            query = query.filter(attachment::Column::Id.gt(after));
        }
        let rows = query.limit(plan.batch_size.max(1)).all(db.read()).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        let recorded = recorded_keys(db, &rows, destination.location()).await?;
        let copier = &copier;
        let recorded = &recorded;
        let mut outcomes = futures::stream::iter(rows)
            .map(|row| async move {
                let outcome = if recorded.contains(&row.storage_key) {
                    Outcome::Skipped
                } else if stop.is_cancelled() {
                    Outcome::Interrupted
                } else {
                    copier.migrate(&row).await
                };
                (row, outcome)
            })
            .buffer_unordered(plan.concurrency.max(1));
        while let Some((row, outcome)) = outcomes.next().await {
            seen += 1;
            let size = u64::try_from(row.byte_size).unwrap_or_default();
            progress.file(&row.storage_key, size, &outcome);
            summary.add(&outcome, size);
        }
    }
    if !plan.dry_run {
        copier
            .forget_deleted(plan.batch_size, stop, &mut summary)
            .await?;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Up to `limit` keys after `after` recorded as copied into `destination` whose
/// attachment row is gone and whose removal nothing records (a deletion kept for
/// `DELETED_FILES_RETENTION` keeps its copy until it is due). `NOT EXISTS` on the
/// keys' unique indexes: an anti-join on both databases, whatever the tables' size.
async fn copies_of_deleted_files(
    db: &Database,
    destination: &str,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<String>, sea_orm::DbErr> {
    use storage_migration::{Column, Entity};
    let mut query = Entity::find()
        .select_only()
        .column(Column::FilePath)
        .filter(Column::Destination.eq(destination))
        .filter(Expr::not_exists(naming_the_copy(
            attachment::Entity,
            attachment::Column::StorageKey,
        )))
        .filter(Expr::not_exists(naming_the_copy(
            storage_deletion::Entity,
            storage_deletion::Column::StorageKey,
        )));
    if let Some(after) = after {
        query = query.filter(Column::FilePath.gt(after));
    }
    query
        .order_by_asc(Column::FilePath)
        .limit(limit)
        .into_tuple::<String>()
        .all(db.read())
        .await
}

/// The rows of `table` whose `key` is the tracked copy's.
fn naming_the_copy<E, C>(table: E, key: C) -> sea_orm::sea_query::SelectStatement
where
    E: EntityTrait,
    C: ColumnTrait,
{
    use sea_orm::sea_query::ExprTrait;
    Query::select()
        .expr(Expr::val(1))
        .from(table)
        .and_where(Expr::col((table, key)).equals((
            storage_migration::Entity,
            storage_migration::Column::FilePath,
        )))
        .to_owned()
}

/// Whether `key` has been copied into `destination` (a [`Storage::location`]) and
/// verified.
pub async fn is_migrated(
    db: &Database,
    key: &str,
    destination: &str,
) -> Result<bool, sea_orm::DbErr> {
    Ok(storage_migration::Entity::find_by_id(key.to_owned())
        .filter(storage_migration::Column::Destination.eq(destination))
        .one(db.read())
        .await?
        .is_some())
}

async fn totals(db: &Database) -> Result<(u64, u64), sea_orm::DbErr> {
    let row: Option<(i64, Option<i64>)> = attachment::Entity::find()
        .select_only()
        .column_as(attachment::Column::Id.count(), "files")
        // SUM of a BIGINT is a NUMERIC on PostgreSQL: cast back.
        .column_as(Expr::cust("CAST(SUM(byte_size) AS BIGINT)"), "bytes")
        .into_tuple()
        .one(db.read())
        .await?;
    let (files, bytes) = row.unwrap_or_default();
    Ok((
        u64::try_from(files).unwrap_or_default(),
        u64::try_from(bytes.unwrap_or_default()).unwrap_or_default(),
    ))
}

/// The keys of `rows` recorded as copied into `destination`: a copy recorded for
/// another bucket or prefix (a run with a mistyped variable) is made again.
async fn recorded_keys(
    db: &Database,
    rows: &[attachment::Model],
    destination: &str,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    let keys = rows.iter().map(|row| row.storage_key.clone());
    Ok(storage_migration::Entity::find()
        .select_only()
        .column(storage_migration::Column::FilePath)
        .filter(storage_migration::Column::FilePath.is_in(keys))
        .filter(storage_migration::Column::Destination.eq(destination))
        .into_tuple::<String>()
        .all(db.read())
        .await?
        .into_iter()
        .collect())
}

/// Why one copy did not end verified.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("verifying the bucket failed: {0}")]
    Verify(#[source] opendal::Error),
    #[error("the local file differs from its row ({0} bytes, sha256 {1})")]
    SourceDiffers(u64, String),
    #[error("the object in the bucket differs from what was sent")]
    LandedDiffers,
    #[error("recording the copy failed: {0}")]
    Record(#[from] sea_orm::DbErr),
}

impl FileError {
    /// A local file that does not match its row will not match on the next attempt.
    fn retryable(&self) -> bool {
        !matches!(self, Self::SourceDiffers(..))
    }
}

struct Copier<'a> {
    db: &'a Database,
    source: &'a Storage,
    destination: &'a Storage,
    dry_run: bool,
}

impl Copier<'_> {
    /// One file, retried with backoff; every error ends as an [`Outcome`]. A file
    /// whose row was deleted meanwhile is no loss, and its copy is removed again:
    /// the delete removed what was in the bucket then, and nothing else would remove
    /// what landed after it.
    async fn migrate(&self, row: &attachment::Model) -> Outcome {
        let outcome = self.copy(row).await;
        if matches!(
            outcome,
            Outcome::Skipped | Outcome::WouldCopy | Outcome::Interrupted
        ) {
            return outcome;
        }
        match attachment::Entity::find_by_id(row.id)
            .one(self.db.read())
            .await
        {
            Ok(None) => self.forget(&row.storage_key).await,
            // Still there, or unknown: the outcome stands (a next pass looks again).
            Ok(Some(_)) | Err(_) => outcome,
        }
    }

    /// Removes the copies of files deleted since they were copied: a server on the
    /// local disk (the migration beside it, before the switch) deletes its own file
    /// alone, and nothing else would remove the bucket's. Page after page, until
    /// the last or a stop; one that cannot be removed is counted and tried again by
    /// the next run.
    async fn forget_deleted(
        &self,
        batch_size: u64,
        stop: &CancellationToken,
        summary: &mut Summary,
    ) -> Result<(), MigrateError> {
        let mut after: Option<String> = None;
        while !stop.is_cancelled() {
            let keys = copies_of_deleted_files(
                self.db,
                self.destination.location(),
                after.as_deref(),
                batch_size.max(1),
            )
            .await?;
            let Some(last) = keys.last().cloned() else {
                return Ok(());
            };
            for key in keys {
                match self.forget(&key).await {
                    Outcome::Failed(reason) => {
                        tracing::warn!(key, reason, "cannot remove the copy of a deleted file");
                        summary.deleted_left += 1;
                    }
                    _ => summary.deleted += 1,
                }
            }
            after = Some(last);
        }
        Ok(())
    }

    /// Removes the copy (if one landed) and the tracking row of a file whose row
    /// has gone.
    async fn forget(&self, key: &str) -> Outcome {
        let stored = StorageKey::from_stored(key.to_owned());
        if let Err(err) = self.destination.delete(&stored).await {
            return Outcome::Failed(format!("its row was deleted, and the copy stays: {err}"));
        }
        let untrack =
            storage_migration::Entity::delete_by_id(key.to_owned()).build(self.db.backend());
        match self.db.commit(vec![untrack]).await {
            Ok(()) => Outcome::Deleted,
            Err(err) => Outcome::Failed(format!("cannot drop the tracking row: {err}")),
        }
    }

    async fn copy(&self, row: &attachment::Model) -> Outcome {
        let key = StorageKey::from_stored(row.storage_key.clone());
        let expected = Digest {
            size: u64::try_from(row.byte_size).unwrap_or_default(),
            sha256: row.sha256.clone(),
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self
                .attempt(&key, &expected, &row.content_type, attempt)
                .await
            {
                Ok(outcome) => return outcome,
                Err(err) if err.retryable() && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(key = %key, attempt, error = %err, "copy failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(err) => return Outcome::Failed(err.to_string()),
            }
        }
    }

    async fn attempt(
        &self,
        key: &StorageKey,
        expected: &Digest,
        content_type: &str,
        attempt: u32,
    ) -> Result<Outcome, FileError> {
        if self.dry_run {
            let local = self.source.size(key).await.map_err(CopyError::Source)?;
            return Ok(match local {
                Some(_) => Outcome::WouldCopy,
                // Uploaded since the switch to the bucket: a run records it.
                None if self.verified_in_bucket(key, expected).await? => Outcome::AlreadyThere,
                None => Outcome::Missing,
            });
        }
        if self.verified_in_bucket(key, expected).await? {
            self.record(key, expected, attempt).await?;
            return Ok(Outcome::AlreadyThere);
        }
        // A missing file only shows once read, after the bucket's writer is open: ask first.
        if self
            .source
            .size(key)
            .await
            .map_err(CopyError::Source)?
            .is_none()
        {
            return Ok(Outcome::Missing);
        }
        let sent = self
            .destination
            .copy_from(self.source, key, content_type)
            .await?;
        if &sent != expected {
            return Err(FileError::SourceDiffers(sent.size, sent.sha256));
        }
        if !self.verified_in_bucket(key, expected).await? {
            return Err(FileError::LandedDiffers);
        }
        self.record(key, expected, attempt).await?;
        Ok(Outcome::Copied { attempts: attempt })
    }

    /// Whether the bucket holds exactly the row's bytes; a stat first, so a missing
    /// or wrong-sized object is never read.
    async fn verified_in_bucket(
        &self,
        key: &StorageKey,
        expected: &Digest,
    ) -> Result<bool, FileError> {
        match self
            .destination
            .size(key)
            .await
            .map_err(FileError::Verify)?
        {
            Some(size) if size == expected.size => {}
            _ => return Ok(false),
        }
        let landed = self
            .destination
            .digest(key)
            .await
            .map_err(FileError::Verify)?;
        Ok(landed.as_ref() == Some(expected))
    }

    /// The tracking row: one per key (SPEC 9), so a copy into another destination
    /// replaces the record of the earlier one.
    async fn record(
        &self,
        key: &StorageKey,
        digest: &Digest,
        attempts: u32,
    ) -> Result<(), sea_orm::DbErr> {
        let row = storage_migration::Model {
            file_path: key.to_string(),
            migrated_at: Utc::now(),
            source: self.source.location().to_owned(),
            destination: self.destination.location().to_owned(),
            byte_size: i64::try_from(digest.size).unwrap_or(i64::MAX),
            sha256: digest.sha256.clone(),
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        };
        let insert =
            storage_migration::Entity::insert(sea_orm::IntoActiveModel::into_active_model(row))
                .on_conflict(
                    OnConflict::column(storage_migration::Column::FilePath)
                        .update_columns([
                            storage_migration::Column::MigratedAt,
                            storage_migration::Column::Source,
                            storage_migration::Column::Destination,
                            storage_migration::Column::ByteSize,
                            storage_migration::Column::Sha256,
                            storage_migration::Column::Attempts,
                        ])
                        .to_owned(),
                )
                .build(self.db.backend());
        self.db.commit(vec![insert]).await
    }
}

/// One migration at a time: on PostgreSQL a transaction-scoped advisory lock, held
/// until this value is dropped (another run, in a server or a command, waits for
/// it). SQLite has no such lock: one process owns a SQLite database (docs/operations.md).
struct RunLock {
    _transaction: Option<Transaction>,
}

impl RunLock {
    async fn acquire(db: &Database, progress: &dyn Progress) -> Result<Self, sea_orm::DbErr> {
        if db.backend() != DbBackend::Postgres {
            return Ok(Self { _transaction: None });
        }
        let txn = db.begin().await?;
        // The transaction sits idle while files are copied: a server-wide
        // `idle_in_transaction_session_timeout` (common on managed PostgreSQL) would
        // end it, and the lock with it, in the middle of the run.
        txn.execute_unprepared("SET LOCAL idle_in_transaction_session_timeout = 0")
            .await?;
        if !crate::db::try_advisory_lock(&txn, LOCK_ID).await? {
            progress.waiting();
            crate::db::advisory_lock(&txn, LOCK_ID).await?;
        }
        Ok(Self {
            _transaction: Some(txn),
        })
    }
}
