//! Database connection and migrations; SQLite and PostgreSQL alike.
//!
//! SQLite runs in WAL mode: readers never wait for the writer, and a commit is one
//! append to the log instead of a journal written, synced and deleted. With
//! `synchronous=NORMAL` (the default) a committed upload survives a crash of the
//! process; `SQLITE_SYNCHRONOUS=full` syncs the log at every commit, so it also
//! survives a power loss.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

use crate::config::{ConfigError, DatabaseConfig, SqliteSync};

/// How long startup waits for the database before it gives up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a SQLite writer waits for another one before the statement fails.
const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to `DATABASE_URL`; a failure names the variable, never the password.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, ConfigError> {
    let url = config.database_url.as_str();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT);
    let synchronous = match config.sqlite_synchronous {
        SqliteSync::Normal => SqliteSynchronous::Normal,
        SqliteSync::Full => SqliteSynchronous::Full,
    };
    options.map_sqlx_sqlite_opts(move |sqlite| {
        sqlite
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
    });
    Database::connect(options).await.map_err(|err| {
        ConfigError::new(
            "DATABASE_URL",
            format!("cannot connect: {}", redact(&err.to_string(), url)),
        )
    })
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    Migrator::up(db, None).await
}

/// Removes the URL (and so any password in it) from a driver's message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "DATABASE_URL")
}
