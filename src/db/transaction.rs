//! [`Transaction`]: a transaction that reads before it writes (a delete that must
//! find its row, a claim that must count what it marked). On SQLite it runs on the
//! writer's connection, in the writer's turn, so that it never waits for SQLite's
//! lock behind another connection; on PostgreSQL it is a transaction of the pool.

use std::sync::Arc;

use sea_orm::sqlx::sqlite::SqliteConnection;
use sea_orm::sqlx::{self, ConnectOptions};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr,
    Statement, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::writer::{Connections, SqliteWriter};

/// Commits with [`Transaction::commit`]; dropped without it, rolls back.
pub enum Transaction {
    Sqlite(SqliteTransaction),
    Pool(DatabaseTransaction),
}

/// The writer's turn, held from `BEGIN IMMEDIATE` to `COMMIT` or `ROLLBACK`.
pub struct SqliteTransaction {
    /// The writer's slot: the connection goes back into it when the transaction ends
    /// soundly; left empty when it broke, so the next turn opens another.
    turn: Option<OwnedMutexGuard<Connections>>,
    /// Taken out while a statement runs: a statement cut off (its caller dropped)
    /// takes the connection with it, and closing it rolls the transaction back.
    connection: Mutex<Option<SqliteConnection>>,
}

impl Transaction {
    /// Begins on the writer's connection once it is the caller's turn.
    pub(super) async fn sqlite(writer: &Arc<SqliteWriter>) -> Result<Self, DbErr> {
        let mut turn = writer.turn().await;
        let mut connection = match turn.transaction.take() {
            Some(connection) => connection,
            None => writer.options().connect().await.map_err(exec_error)?,
        };
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut connection)
            .await
            .map_err(exec_error)?;
        Ok(Self::Sqlite(SqliteTransaction {
            turn: Some(turn),
            connection: Mutex::new(Some(connection)),
        }))
    }

    pub(super) async fn pool(pool: &sea_orm::DatabaseConnection) -> Result<Self, DbErr> {
        Ok(Self::Pool(pool.begin().await?))
    }

    /// A PostgreSQL transaction whose reads all see one snapshot, taken once no
    /// transaction that writes `table` is under way, and none can start until it ends.
    pub(super) async fn pool_locking(
        pool: &sea_orm::DatabaseConnection,
        table: &str,
    ) -> Result<Self, DbErr> {
        let txn = pool
            .begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), None)
            .await?;
        // Taken before any query, so the snapshot follows the lock.
        txn.execute_unprepared(&format!(
            "LOCK TABLE \"{table}\" IN SHARE ROW EXCLUSIVE MODE"
        ))
        .await?;
        Ok(Self::Pool(txn))
    }

    pub async fn commit(self) -> Result<(), DbErr> {
        match self {
            Self::Pool(txn) => txn.commit().await,
            Self::Sqlite(mut txn) => {
                let mut connection = txn.connection.get_mut().take().ok_or_else(lost)?;
                sqlx::raw_sql("COMMIT")
                    .execute(&mut connection)
                    .await
                    .map_err(exec_error)?;
                if let Some(mut turn) = txn.turn.take() {
                    turn.transaction = Some(connection);
                }
                Ok(())
            }
        }
    }
}

impl Drop for SqliteTransaction {
    /// Not committed: rolls back and gives the connection back to the writer, the
    /// turn held until then. Without a runtime, closing the connection rolls back.
    fn drop(&mut self) {
        let (Some(mut turn), Some(mut connection)) =
            (self.turn.take(), self.connection.get_mut().take())
        else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if sqlx::raw_sql("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .is_ok()
                {
                    turn.transaction = Some(connection);
                }
            });
        }
    }
}

impl SqliteTransaction {
    /// Runs `statement` on the connection, taken out meanwhile (see `connection`).
    async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, DbErr> {
        let mut slot = self.connection.lock().await;
        let mut connection = slot.take().ok_or_else(lost)?;
        let result = statement(&mut connection).await;
        // A refused statement leaves the transaction open and the connection sound.
        if matches!(result, Ok(_) | Err(sqlx::Error::Database(_))) {
            *slot = Some(connection);
        }
        result.map_err(|err| DbErr::Query(RuntimeErr::SqlxError(Arc::new(err))))
    }
}

fn exec_error(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

fn lost() -> DbErr {
    DbErr::Custom("the transaction's connection broke; nothing of it was committed".into())
}

#[async_trait::async_trait]
impl ConnectionTrait for Transaction {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Sqlite(_) => DbBackend::Sqlite,
            Self::Pool(txn) => txn.get_database_backend(),
        }
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Sqlite(txn) => {
                let query = super::sqlite_query(statement);
                let done = txn
                    .run(async |connection| query.execute(connection).await)
                    .await?;
                Ok(ExecResult::from(done))
            }
            Self::Pool(txn) => txn.execute_raw(statement).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Sqlite(txn) => {
                let sql = sql.to_owned();
                let done = txn
                    .run(async |connection| {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(connection)
                            .await
                    })
                    .await?;
                Ok(ExecResult::from(done))
            }
            Self::Pool(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Sqlite(_) => Ok(self.query_all_raw(statement).await?.into_iter().next()),
            Self::Pool(txn) => txn.query_one_raw(statement).await,
        }
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Sqlite(txn) => {
                let query = super::sqlite_query(statement);
                let rows = txn
                    .run(async |connection| query.fetch_all(connection).await)
                    .await?;
                Ok(rows.into_iter().map(QueryResult::from).collect())
            }
            Self::Pool(txn) => txn.query_all_raw(statement).await,
        }
    }
}
