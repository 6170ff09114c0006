//! The writer: how uploads commit. SQLite lets one connection write at a time; with
//! a pool of writers the others poll for its lock (SQLite's busy handler sleeps up to
//! 100 ms between tries), and each statement is a round trip to its connection's
//! thread. So on SQLite uploads commit on one connection that the writer holds, one
//! turn at a time, each turn one batch, `BEGIN IMMEDIATE; ...; COMMIT`, run on the
//! committing task's own thread ([`batch`]): no hand-off to another thread, and no
//! await inside a turn, so a caller that goes away cannot cut a batch in two. The
//! transactions that wait while a turn runs share the next one (group commit), so
//! concurrent uploads write the pages they share once; a commit first lets the tasks
//! ready to run reach theirs, so that on few cores, where no turn is running when a
//! commit arrives, they share a turn too. On PostgreSQL, with row locks and a wire
//! protocol, each is an ordinary transaction of the pool, except that the commits of
//! one tenant's uploads share theirs ([`super::pool_writer`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::{DatabaseConnection, DbErr, RuntimeErr, Statement};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use super::batch::{self, Refused};
use super::pool_writer::PoolWriter;
use super::writes::Writes;
use crate::config::SqliteSync;

/// Statements committed between two checkpoints of the log: each changes a page or
/// a few, so the log stays within a few MiB (SQLite's own default is 1,000 pages).
const CHECKPOINT_EVERY: usize = 500;

/// Frames the log may hold after a checkpoint before the next one holds the turn:
/// under a steady stream of commits a checkpoint that lets them run never copies the
/// last frames, and the log grew by 58 KB an upload (docs/performance.md). As many
/// frames of SQLite's default 4 KiB page as the log file keeps (16,384).
const RESTART_AFTER_FRAMES: i64 = batch::LOG_KEPT_BYTES / 4096;

/// How long a checkpoint that holds the turn waits for readers of the log's older
/// frames (a backup, a long listing): the commits wait as long.
const RESTART_PATIENCE: Duration = Duration::from_millis(100);

pub enum Writer {
    Sqlite(Arc<SqliteWriter>),
    Pool(PoolWriter),
}

pub struct SqliteWriter {
    options: SqliteConnectOptions,
    sync: SqliteSync,
    /// The connections; a broken one is dropped and the next turn opens another.
    turn: Arc<Mutex<Connections>>,
    /// Transactions waiting for a turn.
    waiting: SyncMutex<Vec<Transaction>>,
    /// Statements committed since the last checkpoint began.
    since_checkpoint: AtomicUsize,
    /// The checkpoint's own connection, held while one runs.
    checkpointer: Arc<SyncMutex<Option<rusqlite::Connection>>>,
    /// [`RESTART_AFTER_FRAMES`], or fewer in a test.
    restart_after_frames: i64,
}

/// What the writer's turn holds: two connections to the one database, never used
/// at once.
pub(super) struct Connections {
    /// Group commits ([`batch`]); in a mutex only so that the turn can be shared
    /// (a rusqlite connection is not `Sync`): reached through `get_mut`, never locked.
    batch: SyncMutex<Option<rusqlite::Connection>>,
    /// [`super::Transaction`]s: sea-orm reads their rows from sqlx.
    pub(super) transaction: Option<SqliteConnection>,
}

/// One caller's statements and where its outcome goes.
pub(super) struct Transaction {
    pub(super) statements: Vec<Statement>,
    pub(super) outcome: oneshot::Sender<Result<(), DbErr>>,
}

impl Writer {
    /// Connections of its own on SQLite (the one for transactions opened on first
    /// use); `pool` itself on PostgreSQL.
    pub fn open(
        sqlite: Option<(SqliteConnectOptions, SqliteSync)>,
        pool: &DatabaseConnection,
    ) -> rusqlite::Result<Self> {
        let Some((options, sync)) = sqlite else {
            return Ok(Self::Pool(PoolWriter::new(pool)));
        };
        let connections = Connections {
            batch: SyncMutex::new(Some(batch::open(&options, sync)?)),
            transaction: None,
        };
        Ok(Self::Sqlite(Arc::new(SqliteWriter {
            options,
            sync,
            turn: Arc::new(Mutex::new(connections)),
            waiting: SyncMutex::default(),
            since_checkpoint: AtomicUsize::new(0),
            checkpointer: Arc::default(),
            restart_after_frames: RESTART_AFTER_FRAMES,
        })))
    }

    /// Commits `statements` as one transaction: all of them or none.
    pub async fn commit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        let writer = match self {
            Self::Pool(pool) => return pool.commit(statements).await,
            Self::Sqlite(writer) => writer,
        };
        let (outcome, committed) = oneshot::channel();
        writer.waiting().push(Transaction {
            statements,
            outcome,
        });
        // The requests ready to run reach their commits first and share our turn:
        // on few cores no turn is running when a commit arrives, so without this each
        // would commit alone (its own BEGIN, COMMIT and log pages).
        tokio::task::yield_now().await;
        let mut turn = writer.turn().await;
        // Everything waiting, ours too unless an earlier turn took it.
        let group = std::mem::take(&mut *writer.waiting());
        if !group.is_empty() {
            // `synchronous=FULL` syncs the log at every commit: a thread of its own
            // waits for the disk. Otherwise here, unless another process holds the
            // lock (a command's write): then the wait for it is a thread's too.
            let left = match writer.sync {
                SqliteSync::Full => Some(group),
                SqliteSync::Normal => writer.run(&mut turn, group, Duration::ZERO),
            };
            if let Some(group) = left {
                let writer = Arc::clone(writer);
                drop(tokio::task::spawn_blocking(move || {
                    writer.run(&mut turn, group, super::SQLITE_BUSY_TIMEOUT)
                }));
            }
        }
        writer.checkpoint_if_due();
        committed
            .await
            .unwrap_or_else(|_| Err(DbErr::Custom("the writer stopped".into())))
    }

    /// Commits `writes` as one transaction, which on PostgreSQL the commits of `key`
    /// waiting meanwhile share ([`PoolWriter::commit_shared`]); on SQLite every
    /// commit shares its turn already.
    pub async fn commit_shared(&self, key: &str, writes: Writes) -> Result<(), DbErr> {
        match self {
            Self::Pool(pool) => pool.commit_shared(key, writes).await,
            Self::Sqlite(_) => self.commit(writes.statements()).await,
        }
    }
}

impl SqliteWriter {
    /// The writer's turn: its connections, for one caller at a time.
    pub(super) async fn turn(&self) -> OwnedMutexGuard<Connections> {
        Arc::clone(&self.turn).lock_owned().await
    }

    /// How to open another connection for transactions.
    pub(super) fn options(&self) -> &SqliteConnectOptions {
        &self.options
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Transaction>> {
        super::lock(&self.waiting)
    }

    /// Commits `group` in one batch; if a statement fails, each transaction again on
    /// its own, so one refused upload does not fail the others. Each outcome is
    /// sent; what could not begin because another process holds the lock (and
    /// `patience` is zero) is given back, nothing of it run.
    fn run(
        &self,
        held: &mut Connections,
        group: Vec<Transaction>,
        patience: Duration,
    ) -> Option<Vec<Transaction>> {
        let slot = held
            .batch
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let connection = match slot.take() {
            Some(connection) => connection,
            None => match batch::open(&self.options, self.sync) {
                Ok(connection) => connection,
                Err(err) => return fail_all(group, &err),
            },
        };
        let left = self.commit_group(&connection, group, patience);
        // A connection that cannot even roll back is not kept.
        if connection.is_autocommit() {
            *slot = Some(connection);
        }
        left
    }

    fn commit_group(
        &self,
        connection: &rusqlite::Connection,
        group: Vec<Transaction>,
        patience: Duration,
    ) -> Option<Vec<Transaction>> {
        if group.len() > 1 {
            let statements = group.iter().flat_map(|txn| &txn.statements);
            match batch::commit(connection, statements, patience) {
                Ok(()) => {
                    self.committed(group.iter().map(|txn| txn.statements.len()).sum());
                    for txn in group {
                        let _ = txn.outcome.send(Ok(()));
                    }
                    return None;
                }
                Err(Refused::Busy) => return Some(group),
                Err(Refused::NotBegun(err)) => return fail_all(group, &err),
                Err(Refused::Failed(_)) => {}
            }
        }
        let mut alone = group.into_iter();
        while let Some(txn) = alone.next() {
            let outcome = match batch::commit(connection, &txn.statements, patience) {
                Ok(()) => {
                    self.committed(txn.statements.len());
                    Ok(())
                }
                Err(Refused::Busy) => return Some(std::iter::once(txn).chain(alone).collect()),
                // Each alone would wait as long again, the writer's turn held.
                Err(Refused::NotBegun(err)) => {
                    return fail_all(std::iter::once(txn).chain(alone), &err);
                }
                Err(Refused::Failed(err)) => Err(refused(&err)),
            };
            let _ = txn.outcome.send(outcome);
        }
        None
    }

    fn committed(&self, statements: usize) {
        self.since_checkpoint
            .fetch_add(statements, Ordering::Relaxed);
    }

    /// Every [`CHECKPOINT_EVERY`] statements, a checkpoint on a thread of its own
    /// (it syncs the database file); none while one runs.
    fn checkpoint_if_due(&self) {
        if self.since_checkpoint.load(Ordering::Relaxed) < CHECKPOINT_EVERY {
            return;
        }
        self.since_checkpoint.store(0, Ordering::Relaxed);
        let (checkpointer, turn, options, sync, restart_after) = (
            Arc::clone(&self.checkpointer),
            Arc::clone(&self.turn),
            self.options.clone(),
            self.sync,
            self.restart_after_frames,
        );
        drop(tokio::task::spawn_blocking(move || {
            let Ok(mut held) = checkpointer.try_lock() else {
                return;
            };
            let done = match held.take() {
                Some(connection) => Ok(connection),
                None => batch::open(&options, sync),
            }
            .and_then(|connection| {
                checkpoint(&connection, &turn, restart_after).map(|()| connection)
            });
            match done {
                Ok(connection) => *held = Some(connection),
                Err(err) => tracing::warn!(error = %err, "cannot checkpoint the SQLite log"),
            }
        }));
    }
}

/// Copies the log into the database while commits go on; when more than
/// `restart_after` frames are left, copies the rest holding the writer's `turn`, so
/// that the next commit writes the log from its start again: the log then stays
/// within about `restart_after` frames however steady the commits. The commits that
/// arrive meanwhile wait, and share the next turn.
fn checkpoint(
    connection: &rusqlite::Connection,
    turn: &Mutex<Connections>,
    restart_after: i64,
) -> rusqlite::Result<()> {
    if batch::checkpoint(connection)? <= restart_after {
        return Ok(());
    }
    let _turn = turn.blocking_lock();
    if !batch::restart(connection, RESTART_PATIENCE)? {
        tracing::debug!("a reader holds the SQLite log; the next checkpoint tries again");
    }
    Ok(())
}

/// Answers every transaction of `group` with `err`, none of them run.
fn fail_all(
    group: impl IntoIterator<Item = Transaction>,
    err: &rusqlite::Error,
) -> Option<Vec<Transaction>> {
    for txn in group {
        let _ = txn.outcome.send(Err(refused(err)));
    }
    None
}

/// A batch's failure as sea-orm reports a statement's (its text names the
/// constraint that refused it).
fn refused(err: &rusqlite::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(err.to_string()))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use sea_orm::DbBackend;
    use sea_orm::sqlx::{self, ConnectOptions, Row};

    use super::*;
    use crate::config::SqliteSync;

    fn sql(text: &str) -> Statement {
        Statement::from_string(DbBackend::Sqlite, text)
    }

    /// A writer on a new database in `dir`, with table `t (x INTEGER)` whose `x`
    /// must be positive, its log in WAL mode as the server has it (sqlx's connections
    /// set it); the options to open other connections with.
    async fn writer(dir: &tempfile::TempDir) -> (Arc<SqliteWriter>, SqliteConnectOptions) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let options = crate::db::tune_sqlite(
            SqliteConnectOptions::from_str(&url).expect("options"),
            SqliteSync::Normal,
        );
        let Writer::Sqlite(held) = Writer::open(
            Some((options.clone(), SqliteSync::Normal)),
            &Default::default(),
        )
        .expect("open") else {
            unreachable!("opened on SQLite")
        };
        Writer::Sqlite(Arc::clone(&held))
            .commit(vec![sql("CREATE TABLE t (x INTEGER CHECK (x > 0))")])
            .await
            .expect("table");
        drop(options.connect().await.expect("WAL mode"));
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

    /// Commits from many tasks at once, without a pause: a checkpoint that lets them
    /// run never copies the log's last frames, so without the turn held for the rest
    /// the log never starts again and grows with every commit (here to about 110 MiB,
    /// the whole stream).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_steady_stream_of_commits_keeps_the_log_small() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut held, options) = writer(&dir).await;
        Writer::Sqlite(Arc::clone(&held))
            .commit(vec![sql("ALTER TABLE t ADD COLUMN pad BLOB")])
            .await
            .expect("column");
        Arc::get_mut(&mut held)
            .expect("the writer's only holder")
            .restart_after_frames = 256;
        let writer = Arc::new(Writer::Sqlite(held));
        let streams = (0..8).map(|_| {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                for _ in 0..1200 {
                    let row = sql("INSERT INTO t (x, pad) VALUES (1, zeroblob(4000))");
                    writer.commit(vec![row]).await.expect("commit");
                }
            })
        });
        for stream in futures::future::join_all(streams.collect::<Vec<_>>()).await {
            stream.expect("stream");
        }
        // The log's header counts the times it started again (its checkpoint
        // sequence number, bytes 12 to 15); how far it grew in between depends on
        // how soon the checkpoint's thread runs on a busy machine.
        let log = std::fs::read(dir.path().join("w.db-wal")).expect("the log");
        let restarts = u32::from_be_bytes([log[12], log[13], log[14], log[15]]);
        assert!(restarts >= 2, "the log started again {restarts} times");
        let mib = log.len() >> 20;
        assert!(mib < 64, "the log grew to {mib} MiB, half the stream");
        let mut reader = options.connect().await.expect("connect");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE pad IS NOT NULL")
            .fetch_one(&mut reader)
            .await
            .expect("count");
        assert_eq!(rows, 8 * 1200, "every commit kept");
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

    /// On one thread no turn is ever running when a commit arrives: commits that are
    /// ready at once still share one (each alone would write its own log frames).
    #[tokio::test(flavor = "current_thread")]
    async fn commits_ready_at_once_share_a_turn_on_one_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (held, options) = writer(&dir).await;
        let writer = Arc::new(Writer::Sqlite(held));
        let frames = || {
            let log = std::fs::metadata(dir.path().join("w.db-wal")).map_or(0, |log| log.len());
            log.saturating_sub(32) / (4096 + 24)
        };
        let before = frames();
        let commits: Vec<_> = (1..=8)
            .map(|x| {
                let writer = Arc::clone(&writer);
                let insert = sql(&format!("INSERT INTO t VALUES ({x})"));
                tokio::spawn(async move { writer.commit(vec![insert]).await })
            })
            .collect();
        for commit in commits {
            commit.await.expect("joined").expect("committed");
        }
        assert_eq!(rows(&options).await, [1, 2, 3, 4, 5, 6, 7, 8]);
        let written = frames() - before;
        assert!(written <= 2, "{written} log frames for 8 one-row commits");
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
        assert!(
            held.turn.lock().await.transaction.is_some(),
            "the connection is back"
        );
    }

    /// While another process holds SQLite's write lock, a group commit waits for it
    /// on a thread of its own, the runtime free meanwhile; it commits once the lock
    /// is released.
    #[tokio::test]
    async fn a_commit_waits_for_another_process_lock_off_the_runtime() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (held, options) = writer(&dir).await;
        let writer = Arc::new(Writer::Sqlite(Arc::clone(&held)));
        let mut other = options.connect().await.expect("connect");
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .expect("lock");
        let waiting = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move { writer.commit(vec![sql("INSERT INTO t VALUES (7)")]).await })
        };
        // This runtime has one thread: the sleep ends only if the commit left it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the commit waits for the lock");
        sqlx::raw_sql("COMMIT")
            .execute(&mut other)
            .await
            .expect("unlock");
        waiting
            .await
            .expect("joined")
            .expect("commits after the lock");
        assert_eq!(rows(&options).await, [7]);
    }
}
