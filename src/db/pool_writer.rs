//! The writer on PostgreSQL: each commit an ordinary transaction of the pool, except
//! commits that change the same row (a tenant's usage, which every upload of the
//! tenant adds to). Those waited for each other: PostgreSQL holds a row's lock until
//! the transaction's log is flushed, so one tenant's uploads committed one flush at
//! a time, however many cores and clients (docs/performance.md). Commits of one key
//! that arrive while a transaction of that key runs now share the next one: one
//! wait for the lock and one flush for all of them, as on SQLite's writer, and one
//! statement per table for all their rows ([`Writes`]). Keys never share a
//! transaction, so a transaction locks one such row, as before, and two cannot wait
//! for each other's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement, TransactionTrait};
use tokio::sync::oneshot;

use super::lock;
use super::writes::{self, Writes};

/// The keys whose transaction runs, each with the commits waiting for the next.
type Waiting = Arc<SyncMutex<HashMap<String, Vec<SharedCommit>>>>;

/// One caller's writes and where its outcome goes.
struct SharedCommit {
    writes: Writes,
    outcome: oneshot::Sender<Result<(), DbErr>>,
}

pub struct PoolWriter {
    pool: DatabaseConnection,
    waiting: Waiting,
}

impl PoolWriter {
    pub fn new(pool: &DatabaseConnection) -> Self {
        Self {
            pool: pool.clone(),
            waiting: Arc::default(),
        }
    }

    pub(super) fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    /// Commits `statements` as one transaction of their own.
    pub async fn commit(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        commit(&self.pool, statements).await
    }

    /// Commits `writes` as one transaction, shared with the commits of `key` that
    /// wait while another transaction of `key` runs. The shared transaction runs on
    /// a task of its own, so a caller that goes away cuts nothing short.
    pub async fn commit_shared(&self, key: &str, writes: Writes) -> Result<(), DbErr> {
        let (outcome, committed) = oneshot::channel();
        let txn = SharedCommit { writes, outcome };
        let first = {
            let mut waiting = lock(&self.waiting);
            match waiting.get_mut(key) {
                Some(next) => {
                    next.push(txn);
                    false
                }
                None => {
                    waiting.insert(key.to_owned(), vec![txn]);
                    true
                }
            }
        };
        if first {
            let pool = self.pool.clone();
            let commit = move |group| {
                let pool = pool.clone();
                async move { commit_group(&pool, group).await }
            };
            let waiting = Arc::clone(&self.waiting);
            drop(tokio::spawn(run_key(waiting, key.to_owned(), commit)));
        }
        committed
            .await
            .unwrap_or_else(|_| Err(DbErr::Custom("the writer stopped".into())))
    }
}

/// Runs the transactions of `key` (each group through `commit`) until none waits,
/// then lets the next commit of `key` start again.
async fn run_key<C, F>(waiting: Waiting, key: String, commit: C)
where
    C: Fn(Vec<SharedCommit>) -> F,
    F: Future<Output = ()>,
{
    let _ended = EndOnPanic {
        waiting: Arc::clone(&waiting),
        key: key.clone(),
    };
    loop {
        let group = {
            let mut waiting = lock(&waiting);
            match waiting.get_mut(&key) {
                Some(next) if !next.is_empty() => std::mem::take(next),
                _ => {
                    waiting.remove(&key);
                    return;
                }
            }
        };
        commit(group).await;
    }
}

/// Ends a key's run if its task panics: the commits that wait for it are answered
/// (the writer stopped) and the next commit of the key starts a run again, instead of
/// waiting for one that no longer runs.
struct EndOnPanic {
    waiting: Waiting,
    key: String,
}

impl Drop for EndOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(&self.waiting).remove(&self.key);
        }
    }
}

/// Commits `group` in one transaction, their rows merged; if a statement fails,
/// each commit again on its own, so one refused upload does not fail the others. A
/// failure to begin or to commit is every commit's: whether a commit that failed
/// took effect cannot be known, so none runs again.
async fn commit_group(pool: &DatabaseConnection, group: Vec<SharedCommit>) {
    if let [first, _, ..] = group.as_slice() {
        let statements = writes::merged(first.writes.backend(), group.iter().map(|c| &c.writes));
        let outcome = match pool.begin().await {
            Ok(txn) => match super::execute_all(&txn, statements).await {
                Ok(()) => Some(txn.commit().await),
                Err(_) => None,
            },
            Err(err) => Some(Err(err)),
        };
        if let Some(outcome) = outcome {
            for txn in group {
                let _ = txn.outcome.send(outcome.clone());
            }
            return;
        }
    }
    for txn in group {
        let _ = txn
            .outcome
            .send(commit(pool, txn.writes.statements()).await);
    }
}

/// One transaction of `statements`. A single statement is a transaction of its own
/// on PostgreSQL: it goes alone, one round trip instead of three with BEGIN and
/// COMMIT.
async fn commit(pool: &DatabaseConnection, mut statements: Vec<Statement>) -> Result<(), DbErr> {
    if statements.len() == 1 {
        return pool.execute_raw(statements.remove(0)).await.map(drop);
    }
    let txn = pool.begin().await?;
    super::execute_all(&txn, statements).await?;
    txn.commit().await
}

#[cfg(test)]
mod tests {
    use sea_orm::DbBackend;
    use sea_orm::sea_query::{Alias, Query};

    use super::*;

    fn sql(text: &str) -> Statement {
        Statement::from_string(DbBackend::Postgres, text)
    }

    /// Commits of one key that wait while its transaction runs share the next one
    /// (their rows carry one transaction id, `xmin`); when a statement of the group
    /// is refused, each runs again alone: the others commit, it fails alone. When
    /// the group's COMMIT fails (a deferred constraint), every member gets the
    /// error and none of their rows stays.
    #[tokio::test(flavor = "current_thread")]
    async fn commits_of_one_key_share_a_transaction_and_a_refused_one_fails_alone() {
        let Some(url) = std::env::var_os("TEST_DATABASE_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but TEST_DATABASE_URL is not: PostgreSQL tests must not skip in CI"
            );
            eprintln!("SKIPPED: a PostgreSQL test, because TEST_DATABASE_URL is not set");
            return;
        };
        let pool = sea_orm::Database::connect(url.to_string_lossy().as_ref())
            .await
            .expect("connect to TEST_DATABASE_URL");
        let table = format!("pool_writer_{}", uuid::Uuid::now_v7().simple());
        pool.execute_raw(sql(&format!(
            "CREATE TABLE {table} (x INTEGER CHECK (x > 0) UNIQUE DEFERRABLE INITIALLY DEFERRED)"
        )))
        .await
        .expect("table");
        let writer = Arc::new(PoolWriter::new(&pool));
        let commit_all = |values: Vec<i32>| {
            let commits: Vec<_> = values
                .into_iter()
                .map(|x| {
                    let writer = Arc::clone(&writer);
                    let mut writes = Writes::new(DbBackend::Postgres);
                    writes.statement(
                        DbBackend::Postgres.build(
                            Query::insert()
                                .into_table(Alias::new(table.as_str()))
                                .columns([Alias::new("x")])
                                .values_panic([x.into()]),
                        ),
                    );
                    // All of them queue before the first transaction's task runs.
                    tokio::spawn(async move { writer.commit_shared("k", writes).await })
                })
                .collect();
            async move {
                let mut outcomes = Vec::new();
                for commit in commits {
                    outcomes.push(commit.await.expect("joined").is_ok());
                }
                outcomes
            }
        };
        let transactions = |range: &str| {
            sql(&format!(
                "SELECT count(*) AS rows, count(DISTINCT xmin::text) AS transactions \
                 FROM {table} WHERE x {range}"
            ))
        };
        let counted = |statement| async {
            let row = pool
                .query_one_raw(statement)
                .await
                .expect("count")
                .expect("row");
            let rows: i64 = row.try_get("", "rows").expect("rows");
            let transactions: i64 = row.try_get("", "transactions").expect("transactions");
            (rows, transactions)
        };

        assert_eq!(commit_all((1..=8).collect()).await, [true; 8]);
        assert_eq!(
            counted(transactions("<= 8")).await,
            (8, 1),
            "one shared transaction"
        );

        let outcomes = commit_all(vec![11, 12, -13, 14]).await;
        assert_eq!(outcomes, [true, true, false, true]);
        assert_eq!(counted(transactions("> 10")).await, (3, 3), "each alone");

        // The duplicate is found at COMMIT, after every statement ran.
        let outcomes = commit_all(vec![21, 22, 21]).await;
        assert_eq!(outcomes, [false, false, false]);
        assert_eq!(counted(transactions("> 20")).await, (0, 0), "nothing stays");

        pool.execute_raw(sql(&format!("DROP TABLE {table}")))
            .await
            .expect("drop");
    }

    /// A key's run whose task panics answers the commit that waits for it (the
    /// writer stopped), and the next commit of the key starts a run of its own
    /// instead of queueing behind one that no longer exists.
    #[tokio::test(flavor = "current_thread")]
    async fn a_run_that_panics_answers_its_waiting_commits() {
        let within = |seconds| std::time::Duration::from_secs(seconds);
        let pool = sea_orm::Database::connect("sqlite::memory:")
            .await
            .expect("sqlite");
        let writer = PoolWriter::new(&pool);
        let (outcome, answered) = oneshot::channel();
        let waiting = SharedCommit {
            writes: Writes::new(DbBackend::Sqlite),
            outcome,
        };
        lock(&writer.waiting).insert("k".to_owned(), vec![waiting]);
        let panics = |_group: Vec<SharedCommit>| async { panic!("this test's group panics") };
        let run = tokio::spawn(run_key(Arc::clone(&writer.waiting), "k".to_owned(), panics));
        assert!(run.await.expect_err("the run panicked").is_panic());
        let answer = tokio::time::timeout(within(5), answered).await;
        assert!(matches!(answer, Ok(Err(_))), "answered: the writer stopped");
        assert!(lock(&writer.waiting).is_empty(), "the key's run is over");

        let mut next = Writes::new(DbBackend::Sqlite);
        next.statement(Statement::from_string(DbBackend::Sqlite, "SELECT 1"));
        tokio::time::timeout(within(5), writer.commit_shared("k", next))
            .await
            .expect("a run of its own")
            .expect("committed");
    }
}
