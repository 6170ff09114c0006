//! The writer: how uploads commit. SQLite lets one connection write at a time; with
//! a pool of writers the others poll for its lock (SQLite's busy handler sleeps up to
//! 100 ms between tries), each statement is a round trip to its connection's thread
//! (BEGIN and COMMIT two each), and the pool pings every connection it gets back.
//! So on SQLite uploads take turns on one connection that the writer holds, and
//! each transaction is one batch, `BEGIN IMMEDIATE; ...; COMMIT`: one round trip.
//! On PostgreSQL, with row locks and a wire protocol, it is an ordinary transaction
//! of the pool.

use std::str::FromStr;
use std::sync::Arc;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, ConnectOptions};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement, TransactionTrait};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Mutex;

use crate::config::{ConfigError, DatabaseConfig};

pub enum Writer {
    Sqlite {
        /// Boxed: far larger than the other variant.
        options: Box<SqliteConnectOptions>,
        /// The connection; empty after it broke, until the next turn opens another.
        turn: Mutex<Option<SqliteConnection>>,
    },
    Pool(DatabaseConnection),
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
        let url = config.database_url.as_str();
        let options = SqliteConnectOptions::from_str(url)
            .map(|options| super::tune_sqlite(options, config.sqlite_synchronous))
            .map_err(|err| super::cannot_connect(&err.to_string(), url))?;
        let connection = options
            .connect()
            .await
            .map_err(|err| super::cannot_connect(&err.to_string(), url))?;
        Ok(Self::Sqlite {
            options: Box::new(options),
            turn: Mutex::new(Some(connection)),
        })
    }

    /// Commits `statements` as one transaction: all of them or none.
    pub async fn commit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        let (options, turn) = match self {
            Self::Pool(pool) => {
                let txn = pool.begin().await?;
                super::execute_all(&txn, statements).await?;
                return txn.commit().await;
            }
            Self::Sqlite { options, turn } => (options, turn),
        };
        let mut held = turn.lock().await;
        // Out of the slot while in use: a batch cut off (its task cancelled) drops the
        // connection, and closing it rolls back whatever the batch left open.
        let mut connection = match held.take() {
            Some(connection) => connection,
            None => options.connect().await.map_err(exec_error)?,
        };
        let mut sql = String::from("BEGIN IMMEDIATE;\n");
        let mut values = Vec::new();
        for statement in statements {
            sql.push_str(&statement.sql);
            sql.push_str(";\n");
            values.extend(statement.values.map(|bound| bound.0).unwrap_or_default());
        }
        sql.push_str("COMMIT;");
        let values = SqlxValues(sea_orm::Values(values));
        let committed = sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
            .execute(&mut connection)
            .await;
        match committed {
            Ok(_) => {
                *held = Some(connection);
                Ok(())
            }
            // A statement failed: the ones after it, COMMIT included, did not run.
            Err(err @ sqlx::Error::Database(_)) => {
                if sqlx::raw_sql("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .is_ok()
                {
                    *held = Some(connection);
                }
                Err(exec_error(err))
            }
            // A broken connection is not kept; the next turn opens another.
            Err(err) => Err(exec_error(err)),
        }
    }
}

fn exec_error(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}
