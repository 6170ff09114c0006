//! SQLite backups: `VACUUM INTO` a temporary file beside the database (a consistent
//! snapshot, taken while a server keeps writing), streamed into storage. A restore
//! downloads beside the database, checks the copy, then renames it over the file.

use std::path::Path;

use bytes::Bytes;
use futures::Stream;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::BackupError;
use crate::config::DatabaseConfig;
use crate::storage::{Storage, StorageKey};

/// The temporary files beside the database: a snapshot being taken, a backup being
/// downloaded for a restore.
const SNAPSHOT: &str = ".attache-backup-";
const DOWNLOAD: &str = ".attache-restore-";

/// Those not written to for this long are a killed run's, not another run's.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes what a killed `backup create` or `restore` left beside the database (its
/// temporary files go only when dropped, and a snapshot is the database's size):
/// the files not written to for [`STALE_AFTER`], so one still being written by a
/// run beside this one stays.
fn remove_stale(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(SNAPSHOT) || name.starts_with(DOWNLOAD));
        if ours && crate::storage::temp::unwritten_for(&entry, STALE_AFTER) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a killed backup run's file")
                }
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot remove a killed backup run's file");
                }
            }
        }
    }
}

/// A consistent copy of the database at `file` as a stream; the temporary file is
/// already unlinked, so nothing is left behind whatever happens to the stream.
pub async fn dump(
    config: &DatabaseConfig,
    file: &Path,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Unpin + use<>, BackupError> {
    if !tokio::fs::try_exists(file).await.unwrap_or(false) {
        return Err(BackupError::Database(format!(
            "there is no database at {}",
            file.display()
        )));
    }
    remove_stale(crate::db::sqlite_folder(file));
    let snapshot = tempfile::Builder::new()
        .prefix(SNAPSHOT)
        .tempfile_in(crate::db::sqlite_folder(file))
        .map_err(|source| BackupError::io("cannot create the snapshot file", source))?
        .into_temp_path();
    let target = snapshot.to_str().ok_or_else(|| {
        BackupError::Database(format!("{} is not a UTF-8 path", snapshot.display()))
    })?;
    let db = crate::db::connect(config).await?;
    // An empty file is what VACUUM INTO accepts as a target.
    let vacuumed = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "VACUUM INTO ?",
            [target.into()],
        ))
        .await;
    let _ = db.close().await;
    vacuumed.map_err(BackupError::Snapshot)?;
    let opened = tokio::fs::File::open(&snapshot)
        .await
        .map_err(|source| BackupError::io("cannot read the snapshot", source))?;
    drop(snapshot);
    Ok(tokio_util::io::ReaderStream::with_capacity(
        opened,
        256 * 1024,
    ))
}

/// Replaces the database at `file` with the backup at `key`: downloaded into its
/// folder, synced, checked, then renamed over it (atomic: the file is either the
/// old database or the new one), without the old one's journal files.
pub async fn restore(file: &Path, storage: &Storage, key: &StorageKey) -> Result<(), BackupError> {
    let folder = crate::db::sqlite_folder(file);
    remove_stale(folder);
    let copy = tempfile::Builder::new()
        .prefix(DOWNLOAD)
        .tempfile_in(folder)
        .map_err(|source| BackupError::io("cannot create the download file", source))?;
    let mut download = copy
        .reopen()
        .map(tokio::fs::File::from_std)
        .map_err(|source| BackupError::io("cannot open the download file", source))?;
    storage
        .download_to(key, &mut download)
        .await
        .map_err(|source| BackupError::io("downloading the backup failed", source))?;
    download
        .sync_all()
        .await
        .map_err(|source| BackupError::io("cannot sync the download", source))?;
    drop(download);
    check(copy.path()).await?;
    if let Ok(old) = std::fs::metadata(file) {
        std::fs::set_permissions(copy.path(), old.permissions())
            .map_err(|source| BackupError::io("cannot copy the file mode", source))?;
    }
    // A journal left by the old database would be replayed into the new one. Its
    // commits go into its own file first, so that a kill before the new file is in
    // place loses none of them.
    checkpoint(file).await;
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut journal = file.as_os_str().to_owned();
        journal.push(suffix);
        match std::fs::remove_file(&journal) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(BackupError::io("cannot remove the old journal", err));
            }
            _ => {}
        }
    }
    copy.persist(file)
        .map_err(|err| BackupError::io("cannot move the backup into place", err.error))?;
    std::fs::File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(|source| BackupError::io("cannot sync the database folder", source))
}

/// Moves the commits of `file`'s write-ahead log into the file itself, where it can
/// be opened; a database that cannot (missing, damaged: what a restore may replace)
/// is left as it is.
async fn checkpoint(file: &Path) {
    use sea_orm::sqlx::Connection as _;
    use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    if !file.exists() {
        return;
    }
    let options = SqliteConnectOptions::new().filename(file);
    let checkpointed = async {
        let mut connection = SqliteConnection::connect_with(&options).await?;
        sea_orm::sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut connection)
            .await?;
        connection.close().await
    };
    if let Err(err) = checkpointed.await {
        tracing::warn!(error = %err, "cannot checkpoint the database being replaced; its log is dropped");
    }
}

/// `PRAGMA quick_check` on the downloaded copy, and attache's tables in it: a
/// damaged backup, or one of another database, never replaces a working database.
async fn check(copy: &Path) -> Result<(), BackupError> {
    use sea_orm::sqlx::Connection as _;
    use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    let unsound = |err: sea_orm::sqlx::Error| BackupError::Corrupt(err.to_string());
    let options = SqliteConnectOptions::new().filename(copy);
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .map_err(unsound)?;
    let verdict: Result<String, _> = sea_orm::sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut connection)
        .await;
    let mut missing = None;
    for table in ["seaql_migrations", "attachments"] {
        let found: Result<i64, _> = sea_orm::sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
        )
        .bind(table)
        .fetch_one(&mut connection)
        .await;
        if found.is_ok_and(|count| count == 0) {
            missing.get_or_insert(table);
        }
    }
    let _ = connection.close().await;
    match verdict.map_err(unsound)?.as_str() {
        "ok" => missing.map_or(Ok(()), |table| Err(BackupError::Foreign(table))),
        other => Err(BackupError::Corrupt(other.to_owned())),
    }
}
