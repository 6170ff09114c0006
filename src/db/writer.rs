//! The writer: how uploads commit. SQLite lets one connection write at a time; with
//! a pool of writers the others poll for its lock (SQLite's busy handler sleeps up to
//! 100 ms between tries), each statement is a round trip to its connection's thread
//! (BEGIN and COMMIT two each), and the pool pings every connection it gets back.
//! So on SQLite uploads commit on one connection that the writer holds, one turn at
//! a time, each turn one batch, `BEGIN IMMEDIATE; ...; COMMIT`: one round trip. The
//! transactions that wait while a turn runs share the next one (group commit), so
//! concurrent uploads write the pages they share once. On PostgreSQL, with row locks
//! and a wire protocol, each is an ordinary transaction of the pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, ConnectOptions};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement, TransactionTrait};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

pub enum Writer {
    Sqlite(Arc<SqliteWriter>),
    Pool(DatabaseConnection),
}

pub struct SqliteWriter {
    options: SqliteConnectOptions,
    /// The connection; empty after it broke, until the next turn opens another.
    turn: Arc<Mutex<Option<SqliteConnection>>>,
    /// Transactions waiting for a turn.
    waiting: SyncMutex<Vec<Transaction>>,
    /// Numbers the transactions, so that a caller knows its own.
    tickets: AtomicU64,
}

/// One caller's statements and where its outcome goes.
struct Transaction {
    ticket: u64,
    statements: Vec<Statement>,
    outcome: oneshot::Sender<Result<(), DbErr>>,
}

impl Writer {
    /// A connection of its own on SQLite; `pool` itself on PostgreSQL.
    pub async fn open(
        sqlite: Option<SqliteConnectOptions>,
        pool: &DatabaseConnection,
    ) -> Result<Self, sqlx::Error> {
        let Some(options) = sqlite else {
            return Ok(Self::Pool(pool.clone()));
        };
        let connection = options.connect().await?;
        Ok(Self::Sqlite(Arc::new(SqliteWriter {
            options,
            turn: Arc::new(Mutex::new(Some(connection))),
            waiting: SyncMutex::default(),
            tickets: AtomicU64::new(0),
        })))
    }

    /// Commits `statements` as one transaction: all of them or none.
    pub async fn commit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        let writer = match self {
            Self::Pool(pool) => {
                let txn = pool.begin().await?;
                super::execute_all(&txn, statements).await?;
                return txn.commit().await;
            }
            Self::Sqlite(writer) => writer,
        };
        let (outcome, committed) = oneshot::channel();
        let ticket = writer.tickets.fetch_add(1, Ordering::Relaxed);
        writer.waiting().push(Transaction {
            ticket,
            statements,
            outcome,
        });
        let turn = writer.turn().await;
        // Everything waiting, ours too unless an earlier turn took it.
        let group = std::mem::take(&mut *writer.waiting());
        match group.len() {
            0 => drop(turn),
            // Alone: the turn runs here, the cheapest way (no task to hand over to).
            1 if group[0].ticket == ticket => {
                Arc::clone(writer).run(turn, group).await;
            }
            // Others' transactions too: their outcome must be reported whatever
            // happens to this caller, so the turn runs in a task of its own.
            _ => drop(tokio::spawn(Arc::clone(writer).run(turn, group))),
        }
        committed
            .await
            .unwrap_or_else(|_| Err(DbErr::Custom("the writer stopped".into())))
    }
}

impl SqliteWriter {
    /// The writer's turn: its connection, for one caller at a time.
    pub(super) async fn turn(&self) -> OwnedMutexGuard<Option<SqliteConnection>> {
        Arc::clone(&self.turn).lock_owned().await
    }

    /// How to open another connection when the held one broke.
    pub(super) fn options(&self) -> &SqliteConnectOptions {
        &self.options
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Transaction>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits `group` in one batch; if a statement fails, each transaction again on
    /// its own, so one refused upload does not fail the others.
    async fn run(
        self: Arc<Self>,
        mut turn: OwnedMutexGuard<Option<SqliteConnection>>,
        group: Vec<Transaction>,
    ) {
        if group.len() > 1 {
            let statements = group.iter().flat_map(|txn| txn.statements.iter().cloned());
            if let Ok(()) = self.batch(&mut turn, statements.collect()).await {
                for txn in group {
                    let _ = txn.outcome.send(Ok(()));
                }
                return;
            }
        }
        for txn in group {
            let result = self.batch(&mut turn, txn.statements).await;
            let _ = txn.outcome.send(result);
        }
    }

    /// One round trip: `BEGIN IMMEDIATE; statements; COMMIT`, rolled back when a
    /// statement fails.
    async fn batch(
        &self,
        held: &mut Option<SqliteConnection>,
        statements: Vec<Statement>,
    ) -> Result<(), DbErr> {
        let mut connection = match held.take() {
            Some(connection) => connection,
            None => self.options.connect().await.map_err(exec_error)?,
        };
        let begin = Statement::from_string(DbBackend::Sqlite, "BEGIN IMMEDIATE");
        let commit = Statement::from_string(DbBackend::Sqlite, "COMMIT");
        let batch = super::sqlite_batch(
            std::iter::once(begin)
                .chain(statements)
                .chain(std::iter::once(commit)),
        );
        let committed = super::sqlite_query(batch).execute(&mut connection).await;
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
            // A broken connection is not kept (closing it rolls back); the next
            // batch opens another.
            Err(err) => Err(exec_error(err)),
        }
    }
}

pub(super) fn exec_error(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use sea_orm::sqlx::Row;

    use super::*;
    use crate::config::SqliteSync;

    fn sql(text: &str) -> Statement {
        Statement::from_string(DbBackend::Sqlite, text)
    }

    /// A writer on a new database in `dir`, with table `t (x INTEGER)` whose `x`
    /// must be positive; the options to open other connections with.
    async fn writer(dir: &tempfile::TempDir) -> (Arc<SqliteWriter>, SqliteConnectOptions) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let options = crate::db::tune_sqlite(
            SqliteConnectOptions::from_str(&url).expect("options"),
            SqliteSync::Normal,
        );
        let Writer::Sqlite(held) = Writer::open(Some(options.clone()), &Default::default())
            .await
            .expect("open")
        else {
            unreachable!("opened on SQLite")
        };
        Writer::Sqlite(Arc::clone(&held))
            .commit(vec![sql("CREATE TABLE t (x INTEGER CHECK (x > 0))")])
            .await
            .expect("table");
        (held, options)
    }

    /// What `t` holds, read on a connection of its own.
    async fn rows(options: &SqliteConnectOptions) -> Vec<i64> {
        let mut reader = options.connect().await.expect("connect");
        sqlx::query("SELECT x FROM t ORDER BY x")
            .fetch_all(&mut reader)
            .await
            .expect("rows")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Transactions that wait while a turn runs share the next one; when one of
    /// them is refused, each runs again alone: the others commit, it fails alone.
    #[tokio::test]
    async fn waiting_transactions_share_a_turn_and_a_refused_one_fails_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (held, options) = writer(&dir).await;
        let writer = Arc::new(Writer::Sqlite(Arc::clone(&held)));
        let running = held.turn.lock().await;
        let commits: Vec<_> = [1, -2, 3]
            .into_iter()
            .map(|x| {
                let writer = Arc::clone(&writer);
                let insert = sql(&format!("INSERT INTO t VALUES ({x})"));
                tokio::spawn(async move { writer.commit(vec![insert]).await })
            })
            .collect();
        for _ in 0..500 {
            if held.waiting().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(held.waiting().len(), 3, "all three wait for the next turn");
        drop(running);
        let mut outcomes = Vec::new();
        for commit in commits {
            outcomes.push(commit.await.expect("joined").is_ok());
        }
        assert_eq!(outcomes, [true, false, true]);
        assert_eq!(rows(&options).await, [1, 3]);
    }

    /// A transaction holds the writer's turn: group commits wait for it; dropped
    /// without a commit it rolls back, and the writer goes on with its connection.
    #[tokio::test]
    async fn a_transaction_holds_the_turn_and_rolls_back_when_dropped() {
        use sea_orm::ConnectionTrait;

        use crate::db::Transaction;

        let dir = tempfile::tempdir().expect("temp dir");
        let (held, options) = writer(&dir).await;
        let writer = Arc::new(Writer::Sqlite(Arc::clone(&held)));
        let txn = Transaction::sqlite(&held).await.expect("begin");
        txn.execute_unprepared("INSERT INTO t VALUES (1)")
            .await
            .expect("insert");
        let refused = txn.execute_unprepared("INSERT INTO t VALUES (-1)").await;
        assert!(refused.is_err(), "a refused statement fails alone");
        let waiting = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move { writer.commit(vec![sql("INSERT INTO t VALUES (2)")]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a group commit waits for the turn");
        drop(txn);
        waiting
            .await
            .expect("joined")
            .expect("commits after the rollback");
        assert_eq!(
            rows(&options).await,
            [2],
            "nothing of the dropped transaction"
        );

        let txn = Transaction::sqlite(&held).await.expect("begin");
        txn.execute_unprepared("INSERT INTO t VALUES (3)")
            .await
            .expect("insert");
        txn.commit().await.expect("commit");
        assert_eq!(rows(&options).await, [2, 3]);
        assert!(held.turn.lock().await.is_some(), "the connection is back");
    }

    /// A writer cut off mid-batch (its caller dropped) loses the connection, which
    /// rolls the batch back; the next turn opens another and commits.
    #[tokio::test]
    async fn a_batch_cut_off_rolls_back_and_the_next_turn_reconnects() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (held, options) = writer(&dir).await;
        let writer = Writer::Sqlite(Arc::clone(&held));
        let long = "INSERT INTO t WITH RECURSIVE c(x) AS \
                    (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT x FROM c";
        let cut_off =
            tokio::time::timeout(Duration::from_millis(5), writer.commit(vec![sql(long)])).await;
        assert!(cut_off.is_err(), "the batch was still running");
        assert!(held.turn.lock().await.is_none(), "its connection is gone");

        writer
            .commit(vec![sql("INSERT INTO t VALUES (7)")])
            .await
            .expect("the next turn commits");
        assert_eq!(rows(&options).await, [7], "nothing of the cut-off batch");
    }
}
