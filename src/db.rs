//! Database connection and migrations; SQLite and PostgreSQL alike.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

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

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    Migrator::up(db, None).await
}

/// Removes the URL (and so any password in it) from a driver's message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "DATABASE_URL")
}
