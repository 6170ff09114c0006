//! Database connection and migrations; SQLite and PostgreSQL alike.

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait,
};

use crate::config::ConfigError;

/// How long startup waits for the database before it gives up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to `DATABASE_URL`; a failure names the variable, never the password.
pub async fn connect(url: &str) -> Result<DatabaseConnection, ConfigError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT);
    Database::connect(options).await.map_err(|err| {
        ConfigError::new(
            "DATABASE_URL",
            format!("cannot connect: {}", redact(&err.to_string(), url)),
        )
    })
}

/// Arbitrary, fixed: the advisory lock that serializes migrations on PostgreSQL.
const MIGRATION_LOCK: i64 = 0x0061_7474_6163_6865;

/// Applies every pending migration. On PostgreSQL under a transaction-scoped advisory
/// lock, so replicas starting together on a new database migrate one after another.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let txn = db.begin().await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [MIGRATION_LOCK.into()],
    ))
    .await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// Removes the URL (and so any password in it) from a driver's message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "DATABASE_URL")
}
