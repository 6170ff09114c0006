//! Database backups in the configured storage under `backups/` (SPEC 9): a
//! consistent snapshot (SQLite `VACUUM INTO`, PostgreSQL `pg_dump`) streamed into
//! storage, listed newest first, pruned, restored. Files are not copied: they live
//! in durable storage already, and rows name them by key.

mod name;
mod postgres;
mod sqlite;

use std::fmt;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use sea_orm::{ConnectionTrait, Statement};

pub use name::{BackupName, Engine};

use crate::config::{ConfigError, DatabaseConfig};
use crate::db::{ClaimError, SqliteClaim};
use crate::storage::{Storage, StorageKey, StreamWriteError};
use postgres::PgTarget;

/// Why a backup was not taken, listed or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `DATABASE_URL` names nothing a backup can be taken of or restored into.
    #[error("DATABASE_URL: {0}")]
    Database(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the database refused the snapshot")]
    Snapshot(#[source] sea_orm::DbErr),
    /// `pg_dump` or `pg_restore` is missing or failed; says what it said.
    #[error("{0}")]
    Tool(String),
    #[error("taking the snapshot failed: {0}")]
    Source(String),
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("storage failed")]
    Storage(#[source] opendal::Error),
    #[error("no backup named {0} in storage; `attache backup list` shows them")]
    NotFound(BackupName),
    #[error("a backup named {0} exists already (one backup a second); try again")]
    Exists(BackupName),
    #[error("{name} is a {} backup; it restores into {} only, and DATABASE_URL is {engine}", name.engine(), name.engine())]
    WrongEngine { name: BackupName, engine: Engine },
    #[error("refusing to restore: {0}; stop it, then run the restore again")]
    InUse(ClaimError),
    #[error("cannot claim the database file")]
    Claim(#[source] ClaimError),
    #[error("the backup is not a sound SQLite database ({0}); the database was left as it was")]
    Corrupt(String),
    #[error(
        "the backup holds no attache database (no `{0}` table: a copy of another database); \
         the database was left as it was"
    )]
    Foreign(&'static str),
    #[error("the restored database cannot be read")]
    Reopen(#[source] sea_orm::DbErr),
}

impl BackupError {
    fn io(context: &'static str, source: std::io::Error) -> Self {
        Self::Io { context, source }
    }
}

/// The database of `DATABASE_URL`, as backups see it.
pub struct Database {
    config: DatabaseConfig,
    kind: Kind,
}

enum Kind {
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

impl Database {
    pub fn from_config(config: &DatabaseConfig) -> Result<Self, BackupError> {
        let url = config.database_url.as_str();
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Kind::Postgres(PgTarget::parse(url)?)
        } else if let Some(file) = crate::db::sqlite_file(url) {
            Kind::Sqlite(file)
        } else {
            return Err(BackupError::Database(
                "backups need a SQLite database file or a PostgreSQL database".into(),
            ));
        };
        Ok(Self {
            config: config.clone(),
            kind,
        })
    }

    pub fn engine(&self) -> Engine {
        match self.kind {
            Kind::Sqlite(_) => Engine::Sqlite,
            Kind::Postgres(_) => Engine::Postgres,
        }
    }

    /// The number of attachment rows, read with plain SQL so that an older schema
    /// (a restored backup before `serve` migrates it) reads too.
    async fn attachments(&self) -> Result<i64, BackupError> {
        let db = crate::db::connect(&self.config).await?;
        let counted = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM attachments",
            ))
            .await
            .and_then(|row| match row {
                Some(row) => row.try_get::<i64>("", "n"),
                None => Ok(0),
            });
        let _ = db.close().await;
        counted.map_err(BackupError::Reopen)
    }

    /// Which attachment rows have their object in `storage`: the keys of those that
    /// do not (read with plain SQL, like [`Database::attachments`]).
    async fn missing_objects(&self, storage: &Storage) -> Result<Vec<String>, BackupError> {
        let db = crate::db::connect(&self.config).await?;
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT storage_key FROM attachments ORDER BY storage_key",
            ))
            .await;
        let _ = db.close().await;
        let mut missing = Vec::new();
        for row in rows.map_err(BackupError::Reopen)? {
            let key: String = row
                .try_get("", "storage_key")
                .map_err(BackupError::Reopen)?;
            let found = storage
                .size(&StorageKey::from_stored(key.clone()))
                .await
                .map_err(BackupError::Storage)?;
            if found.is_none() {
                missing.push(key);
            }
        }
        Ok(missing)
    }
}

/// What a restore brought back: the attachment rows, and the keys of those whose
/// object is not in storage (deleted longer than `DELETED_FILES_RETENTION` ago).
pub struct Restored {
    pub attachments: i64,
    pub missing: Vec<String>,
}

/// For people: the SQLite file, or the PostgreSQL URL without its password.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Sqlite(file) => write!(f, "{}", file.display()),
            Kind::Postgres(target) => target.fmt(f),
        }
    }
}

/// A backup in storage.
#[derive(Clone, Debug)]
pub struct Backup {
    pub name: BackupName,
    pub size: u64,
}

/// Takes a backup of `database` into `storage`, streamed (no whole copy in
/// memory) into `backups/<name>`; a failed snapshot leaves no object behind.
pub async fn create(database: &Database, storage: &Storage) -> Result<Backup, BackupError> {
    let name = BackupName::new(chrono::Utc::now(), database.engine());
    let key = name.key();
    let body = match &database.kind {
        Kind::Sqlite(file) => sqlite::dump(&database.config, file).await?.left_stream(),
        Kind::Postgres(target) => target.dump()?.right_stream(),
    };
    let size = storage
        .put_large(&key, body, "application/octet-stream")
        .await
        .map_err(|err| match err {
            StreamWriteError::Storage(err)
                if err.kind() == opendal::ErrorKind::ConditionNotMatch =>
            {
                BackupError::Exists(name.clone())
            }
            StreamWriteError::Storage(err) => BackupError::Storage(err),
            StreamWriteError::Body(reason) => BackupError::Source(reason),
            other @ StreamWriteError::TooLarge => BackupError::Source(other.to_string()),
        })?;
    Ok(Backup { name, size })
}

/// Every backup in `storage`, newest first; other objects under `backups/` are
/// left out.
pub async fn list(storage: &Storage) -> Result<Vec<Backup>, BackupError> {
    let mut backups: Vec<Backup> = storage
        .list_in(StorageKey::BACKUPS)
        .await
        .map_err(BackupError::Storage)?
        .try_filter_map(|object| {
            std::future::ready(Ok(BackupName::parse(&object.key).map(|name| Backup {
                name,
                size: object.size,
            })))
        })
        .try_collect()
        .await
        .map_err(BackupError::Storage)?;
    backups.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(backups)
}

/// Removes all but the newest `keep` backups; returns what it removed.
pub async fn prune(storage: &Storage, keep: usize) -> Result<Vec<Backup>, BackupError> {
    let mut backups = list(storage).await?;
    let removed = backups.split_off(keep.min(backups.len()));
    for backup in &removed {
        storage
            .delete(&backup.name.key())
            .await
            .map_err(BackupError::Storage)?;
    }
    Ok(removed)
}

/// A restore ready to run: the backup is there, it fits the database engine, and on
/// SQLite the database file is claimed, so no server starts until it is done.
pub struct Restore<'a> {
    database: &'a Database,
    backup: Backup,
    _claim: Option<SqliteClaim>,
}

impl<'a> Restore<'a> {
    /// Finds `name` in storage and claims the SQLite file; refuses, changing
    /// nothing, while a server uses it.
    pub async fn prepare(
        database: &'a Database,
        storage: &Storage,
        name: BackupName,
    ) -> Result<Self, BackupError> {
        if name.engine() != database.engine() {
            return Err(BackupError::WrongEngine {
                name,
                engine: database.engine(),
            });
        }
        let size = storage
            .size(&name.key())
            .await
            .map_err(BackupError::Storage)?
            .ok_or_else(|| BackupError::NotFound(name.clone()))?;
        let claim = match &database.kind {
            Kind::Sqlite(file) => Some(SqliteClaim::acquire(file).map_err(|err| match err {
                ClaimError::InUse { .. } => BackupError::InUse(err),
                ClaimError::Io { .. } => BackupError::Claim(err),
            })?),
            Kind::Postgres(_) => None,
        };
        Ok(Self {
            database,
            backup: Backup { name, size },
            _claim: claim,
        })
    }

    pub fn backup(&self) -> &Backup {
        &self.backup
    }

    /// Replaces the whole database with the backup, then checks every restored row's
    /// object.
    pub async fn run(self, storage: &Storage) -> Result<Restored, BackupError> {
        let key = self.backup.name.key();
        match &self.database.kind {
            Kind::Sqlite(file) => sqlite::restore(file, storage, &key).await?,
            Kind::Postgres(target) => {
                let archive = storage
                    .local_path(&key)
                    .await
                    .map_err(|source| BackupError::io("downloading the backup failed", source))?;
                target.restore(archive.path()).await?;
            }
        }
        Ok(Restored {
            attachments: self.database.attachments().await?,
            missing: self.database.missing_objects(storage).await?,
        })
    }
}
