//! The writer: how uploads commit. SQLite lets one connection write at a time; with
//! a pool of writers the others poll for its lock (SQLite's busy handler sleeps up to
//! 100 ms between tries), and each statement of a transaction is a round trip to its
//! connection's thread, BEGIN and COMMIT two each. So on SQLite uploads take turns on
//! one connection of their own, in order, and each transaction is one batch,
//! `BEGIN IMMEDIATE; ...; COMMIT`: one round trip. On PostgreSQL, with row locks and
//! a wire protocol, it is an ordinary transaction of the pool.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};
use tokio::sync::Mutex;

use crate::config::{ConfigError, DatabaseConfig};

pub enum Writer {
    Sqlite {
        connection: DatabaseConnection,
        turn: Mutex<Turn>,
    },
    Pool(DatabaseConnection),
}

/// Whether the last batch was cut off (its task cancelled) before it was known to
/// have committed or rolled back: the next turn then rolls back whatever it left.
#[derive(Default)]
pub struct Turn {
    unfinished: bool,
}

impl Writer {
    /// A connection of its own on SQLite; `pool` itself on PostgreSQL.
    pub async fn open(
        config: &DatabaseConfig,
        pool: &DatabaseConnection,
    ) -> Result<Self, ConfigError> {
        if pool.get_database_backend() != DbBackend::Sqlite {
            return Ok(Self::Pool(pool.clone()));
        }
        Ok(Self::Sqlite {
            connection: super::connect_with(config, Some(1)).await?,
            turn: Mutex::default(),
        })
    }

    /// Commits `statements` as one transaction: all of them or none.
    pub async fn commit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        let (connection, turn) = match self {
            Self::Pool(pool) => {
                let txn = pool.begin().await?;
                super::execute_all(&txn, statements).await?;
                return txn.commit().await;
            }
            Self::Sqlite { connection, turn } => (connection, turn),
        };
        let mut turn = turn.lock().await;
        if turn.unfinished {
            // Fails harmlessly when nothing was left open.
            let _ = connection.execute_unprepared("ROLLBACK").await;
        }
        turn.unfinished = true;
        let mut batch = Vec::with_capacity(statements.len() + 2);
        batch.push(Statement::from_string(DbBackend::Sqlite, "BEGIN IMMEDIATE"));
        batch.extend(statements);
        batch.push(Statement::from_string(DbBackend::Sqlite, "COMMIT"));
        let committed = super::execute_all(connection, batch).await;
        if committed.is_err() {
            // A statement failed: the ones after it, COMMIT included, did not run.
            let _ = connection.execute_unprepared("ROLLBACK").await;
        }
        turn.unfinished = false;
        committed
    }
}
