//! Database connection and migrations, SQLite and PostgreSQL alike; the file of a
//! SQLite database and the claim one process holds on it.
//!
//! SQLite runs in WAL mode: readers never wait for the writer, and a commit is one
//! append to the log instead of a journal written, synced and deleted. With
//! `synchronous=NORMAL` (the default) a committed upload survives a crash of the
//! process; `SQLITE_SYNCHRONOUS=full` syncs the log at every commit, so it also
//! survives a power loss.

mod batch;
mod pool_writer;
mod reader;
mod rows;
mod transaction;
mod writer;
mod writes;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::config::{ConfigError, DatabaseConfig, SqliteSync};
pub use reader::{FromSqliteRow, Reader};
pub use transaction::Transaction;
use writer::Writer;
pub use writes::Writes;

/// How long startup waits for the database before it gives up.
/// Most values one lookup binds (`IN (...)`): far below SQLite's 32,766 parameters
/// and PostgreSQL's 65,535, whatever a list of keys or seqs grows to.
pub const VALUES_PER_LOOKUP: usize = 500;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a PostgreSQL connection sits idle in the pool before it is pinged when
/// next taken.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a SQLite writer waits for another one before the statement fails.
const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `statements` in order with `db`, the caller's transaction. SQLite gets them
/// as one batch: each statement sent on its own is a round trip to the connection's
/// thread, two thread switches that cost a small upload more than its SQL.
/// PostgreSQL takes them one by one (its protocol prepares one statement at a time).
pub async fn execute_all<C: ConnectionTrait>(
    db: &C,
    statements: Vec<Statement>,
) -> Result<(), sea_orm::DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        for statement in statements {
            db.execute_raw(statement).await?;
        }
        return Ok(());
    }
    db.execute_raw(sqlite_batch(statements)).await.map(drop)
}

/// `statements` as one SQLite batch: their SQL joined, their values in order (SQLite
/// binds the `?` of a batch across its statements).
fn sqlite_batch(statements: impl IntoIterator<Item = Statement>) -> Statement {
    let mut sql = String::new();
    let mut values = Vec::new();
    for statement in statements {
        sql.push_str(&statement.sql);
        sql.push_str(";\n");
        values.extend(statement.values.map(|bound| bound.0).unwrap_or_default());
    }
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// `statement` as a sqlx query for the SQLite connections attache holds itself (the
/// writer's and the reader's), its values bound as sea-orm binds them.
fn sqlite_query(
    statement: Statement,
) -> sea_orm::sqlx::query::Query<'static, sea_orm::sqlx::Sqlite, sea_query_sqlx::SqlxValues> {
    let values =
        sea_query_sqlx::SqlxValues(statement.values.unwrap_or(sea_orm::Values(Vec::new())));
    sea_orm::sqlx::query_with(sea_orm::sqlx::AssertSqlSafe(statement.sql), values)
}

/// Locks `mutex`, whose holder never leaves its data half-changed: a panic while it
/// was held does not stop the others.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connects to `DATABASE_URL`; a failure names the variable, never the password.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, ConfigError> {
    let url = config.database_url.as_str();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT);
    if url.starts_with("sqlite:") {
        // A local file has no connection to lose: no ping before every query.
        options.test_before_acquire(false);
    } else {
        // A ping is a round trip, as costly as the statement it would guard: only a
        // connection that sat idle (a server restarted, a proxy that dropped it)
        // is pinged before use. Busy connections go straight to their statements.
        options
            .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
            .max_connections(config.database_max_connections);
    }
    let synchronous = config.sqlite_synchronous;
    options.map_sqlx_sqlite_opts(move |sqlite| tune_sqlite(sqlite, synchronous));
    if let Some(file) = sqlite_file(url) {
        let folder = sqlite_folder(&file);
        let missing = match (folder.is_dir(), file.exists() || url.contains("mode=rwc")) {
            (false, _) => Some(format!("its folder {} does not exist", folder.display())),
            (true, false) => Some(format!(
                "{} does not exist: add ?mode=rwc to the URL to create it",
                file.display()
            )),
            (true, true) => None,
        };
        if let Some(missing) = missing {
            return Err(ConfigError::new("DATABASE_URL", missing));
        }
    }
    match sea_orm::Database::connect(options).await {
        Ok(db) => Ok(db),
        Err(err) => Err(cannot_connect(&why_not(err, url).await, url)),
    }
}

/// Why the pool could not connect. It reports an unreachable PostgreSQL only as a
/// timeout of its own (it retries until then); one connection of our own says why:
/// refused, no such host, a password or database refused.
async fn why_not(err: sea_orm::DbErr, url: &str) -> String {
    use sea_orm::sqlx::Connection;
    let said = err.to_string();
    if url.starts_with("sqlite:") || !said.contains("pool timed out") {
        return said;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, sea_orm::sqlx::PgConnection::connect(url)).await {
        Ok(Err(direct)) => direct.to_string(),
        _ => said,
    }
}

/// The one door to the database: reads go through [`Database::read`], writes
/// through [`Database::commit`] (statements known in advance, committed in groups)
/// or [`Database::begin`] (a transaction that reads before it writes). On SQLite
/// both write on the writer's one connection, one turn at a time, so no write of
/// ours waits for SQLite's lock behind another of ours; the pool only migrates and
/// answers the readiness check. On PostgreSQL all three are the pool.
pub struct Database {
    pool: DatabaseConnection,
    writer: Writer,
    reader: Reader,
}

impl Database {
    /// Connects to `DATABASE_URL` (see [`connect`]) and opens the writer.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        let url = config.database_url.as_str();
        refuse_in_memory(url)?;
        let pool = connect(config).await?;
        let sqlite = match pool.get_database_backend() {
            DbBackend::Sqlite => Some(
                SqliteConnectOptions::from_str(url)
                    .map(|options| tune_sqlite(options, config.sqlite_synchronous))
                    .map_err(|err| cannot_connect(&err.to_string(), url))?,
            ),
            _ => None,
        };
        let synchronous = config.sqlite_synchronous;
        let writer = Writer::open(sqlite.clone().map(|options| (options, synchronous)), &pool)
            .map_err(|err| cannot_connect(&err.to_string(), url))?;
        let reader = Reader::new(sqlite, &pool);
        Ok(Self {
            pool,
            writer,
            reader,
        })
    }

    /// [`Database::open`] for a command that works on the server's data: refuses a
    /// database attache has never set up ([`require_existing`]).
    pub async fn open_existing(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        require_existing(config).await?;
        Self::open(config).await
    }

    /// Where reads go: a statement that writes is refused there on SQLite.
    pub fn read(&self) -> &Reader {
        &self.reader
    }

    pub fn backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    /// Commits `statements` as one transaction: all of them or none.
    pub async fn commit(&self, statements: Vec<Statement>) -> Result<(), sea_orm::DbErr> {
        self.writer.commit(statements).await
    }

    /// Commits `writes` as one transaction, shared on PostgreSQL with the commits of
    /// `key` that wait meanwhile: those that change the same row (a tenant's usage),
    /// which would otherwise wait for each other's commit one by one. Their rows and
    /// deletes merge into one statement per table ([`Writes`]).
    pub async fn commit_shared(&self, key: &str, writes: Writes) -> Result<(), sea_orm::DbErr> {
        self.writer.commit_shared(key, writes).await
    }

    /// Begins a transaction on the writer (see [`Transaction`]); keep it short, on
    /// SQLite every other write waits for it.
    pub async fn begin(&self) -> Result<Transaction, sea_orm::DbErr> {
        match &self.writer {
            Writer::Sqlite(writer) => Transaction::sqlite(writer).await,
            Writer::Pool(writer) => Transaction::pool(writer.pool()).await,
        }
    }

    /// A transaction that reads one state of the database while no commit that
    /// writes `table` can land: SQLite's write lock (every commit waits for it); on
    /// PostgreSQL, `table` locked against writers, then one snapshot for every read.
    pub async fn begin_excluding_writers_of(
        &self,
        table: &str,
    ) -> Result<Transaction, sea_orm::DbErr> {
        match &self.writer {
            Writer::Sqlite(writer) => Transaction::sqlite(writer).await,
            Writer::Pool(writer) => Transaction::pool_locking(writer.pool(), table).await,
        }
    }

    /// Applies every pending migration (see [`migrate`]).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        migrate(&self.pool).await.map_err(|err| {
            // sea-orm's words for a migration recorded that this build lacks.
            let text = err.to_string();
            match text.contains("has been applied but its file is missing") {
                true => MigrateError::Newer(text.split('\'').nth(1).unwrap_or("?").to_owned()),
                false => MigrateError::Database(err),
            }
        })
    }

    /// Whether the database answers and still holds attache's tables: a `SELECT 1`
    /// passed for a PostgreSQL database dropped and created again empty under the
    /// server (or a SQLite file replaced), whose every request then failed.
    pub async fn ping(&self) -> Result<(), sea_orm::DbErr> {
        let ours = Statement::from_string(
            self.pool.get_database_backend(),
            "SELECT 1 FROM seaql_migrations LIMIT 1",
        );
        self.pool.query_one_raw(ours).await.map(drop)
    }

    /// The pool's size and idle connections, for the metrics.
    pub fn pool_usage(&self) -> (u32, usize) {
        use sea_orm::DatabaseConnectionType as Pool;
        match &self.pool.inner {
            Pool::SqlxSqlitePoolConnection(_) => {
                let pool = self.pool.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            Pool::SqlxPostgresPoolConnection(_) => {
                let pool = self.pool.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => (0, 0),
        }
    }
}

/// What every SQLite connection of attache runs with (see the top of this file).
fn tune_sqlite(options: SqliteConnectOptions, synchronous: SqliteSync) -> SqliteConnectOptions {
    options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match synchronous {
            SqliteSync::Normal => SqliteSynchronous::Normal,
            SqliteSync::Full => SqliteSynchronous::Full,
        })
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
}

/// Each connection to an in-memory SQLite database opens a database of its own: the
/// writer's would have no tables, and nothing would outlive the process anyway.
fn refuse_in_memory(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("sqlite:") && sqlite_file(url).is_none() {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "an in-memory SQLite database is not supported: name a file, for example \
             sqlite://attache.db?mode=rwc",
        ));
    }
    Ok(())
}

fn cannot_connect(error: &str, url: &str) -> ConfigError {
    ConfigError::new(
        "DATABASE_URL",
        format!("cannot connect: {}", redact(error, url)),
    )
}

/// For the commands that work on the server's data (`storage migrate` and `sweep`,
/// `events`, `tenant`, `backup create --keep`): refuses a database that attache has never
/// set up. Left
/// unset, `DATABASE_URL` names `attache.db` in the working directory, which these
/// commands would otherwise create empty, and a sweep would then take every stored
/// object for an orphan.
pub async fn require_existing(config: &DatabaseConfig) -> Result<(), ConfigError> {
    let url = config.database_url.as_str();
    refuse_in_memory(url)?;
    let not_ours = |what: String| {
        ConfigError::new(
            "DATABASE_URL",
            format!(
                "{what}: this command works on the server's data, so point DATABASE_URL \
                 at the database the server uses"
            ),
        )
    };
    if let Some(file) = sqlite_file(url)
        && !file.exists()
    {
        return Err(not_ours(format!("{} does not exist", file.display())));
    }
    let pool = connect(config).await?;
    let applied = pool
        .query_one_raw(Statement::from_string(
            pool.get_database_backend(),
            "SELECT COUNT(*) AS applied FROM seaql_migrations",
        ))
        .await;
    let never_set_up = |why: String| {
        not_ours(format!(
            "the database holds no attache tables ({why}; `attache db migrate` or `serve` \
             sets up a new one)"
        ))
    };
    match applied {
        Ok(Some(row)) if row.try_get::<i64>("", "applied").unwrap_or_default() > 0 => Ok(()),
        Ok(_) => Err(never_set_up("no migration was applied".to_owned())),
        Err(err) => Err(never_set_up(redact(&err.to_string(), url))),
    }
}

/// Arbitrary, fixed: the advisory lock that serializes migrations on PostgreSQL.
const MIGRATION_LOCK: i64 = 0x0061_7474_6163_6865;

/// Applies every pending migration, all in one transaction (SQLite's DDL is
/// transactional too), so that a kill midway leaves none half-applied: a migration's
/// table made but not recorded would fail every later start. On PostgreSQL under a
/// transaction-scoped advisory lock, so replicas starting together on a new database
/// migrate one after another.
async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    // SQLite: the write lock from BEGIN on, waited for as any write is; a deferred
    // transaction that read first could not wait for it, and would fail at once
    // beside a running server.
    let options = sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    let txn = db.begin_with_options(options).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        advisory_lock(&txn, MIGRATION_LOCK).await?;
    }
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// PostgreSQL: waits for the advisory lock `id`, held until `txn` ends.
pub async fn advisory_lock(txn: &impl ConnectionTrait, id: i64) -> Result<(), sea_orm::DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [id.into()],
    ))
    .await
    .map(drop)
}

/// PostgreSQL: takes the advisory lock `id` for as long as `txn` lasts, if it is free.
pub async fn try_advisory_lock(
    txn: &impl ConnectionTrait,
    id: i64,
) -> Result<bool, sea_orm::DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            [id.into()],
        ))
        .await?;
    Ok(row
        .map(|row| row.try_get::<bool>("", "locked"))
        .transpose()?
        .unwrap_or(false))
}

/// Why the database's migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A newer attache migrated this database (a downgrade, or a backup of a newer
    /// version restored): this one does not know its tables.
    #[error(
        "this database was set up by a newer attache (it has migration {0}, which this \
         version does not know): run that version or a newer one, or restore a backup \
         taken by this version"
    )]
    Newer(String),
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
}

/// Removes the URL (and so any password in it) from a driver's message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "DATABASE_URL")
}

/// SQLite's plan of each of `queries` on a new, migrated database, step by step: for
/// the tests that a query is served by an index.
#[cfg(test)]
pub async fn sqlite_plans(queries: Vec<Statement>) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("plan.db").display());
    let db = sea_orm::Database::connect(&url).await.expect("sqlite");
    Migrator::up(&db, None).await.expect("migrate");
    let mut plans = Vec::new();
    for query in queries {
        let explain = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {}", query.sql),
            query.values.unwrap_or(sea_orm::Values(Vec::new())),
        );
        let rows = db.query_all_raw(explain).await.expect("plan");
        plans.push(
            rows.iter()
                .map(|row| row.try_get::<String>("", "detail").expect("detail"))
                .collect(),
        );
    }
    plans
}

/// The database of `DATABASE_URL`, for people and without the password: the file of
/// a SQLite database, `host:port/name` of a PostgreSQL one.
pub fn describe(url: &str) -> String {
    if let Some(file) = sqlite_file(url) {
        return file.display().to_string();
    }
    match url::Url::parse(url) {
        Ok(parsed) => format!(
            "{}{}{}",
            parsed.host_str().unwrap_or("localhost"),
            parsed
                .port()
                .map(|port| format!(":{port}"))
                .unwrap_or_default(),
            parsed.path()
        ),
        Err(_) => "DATABASE_URL".to_owned(),
    }
}

/// The file of a SQLite `DATABASE_URL` (relative to the working directory, as
/// SQLite opens it); `None` for an in-memory SQLite database and for PostgreSQL.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let in_memory = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|param| param == "mode=memory"));
    let options: SqliteConnectOptions = url.parse().ok()?;
    let path = options.get_filename();
    // sqlx names `:memory:` databases `file:sqlx-in-memory-N`.
    let memory_name = path.to_string_lossy().starts_with("file:");
    (!in_memory && !memory_name && !path.as_os_str().is_empty()).then(|| path.to_owned())
}

/// One process's claim on a SQLite database file: an exclusive advisory lock
/// (`flock`) on `<file>.lock` beside it, holding the owner's process id.
/// `attache serve` holds it for its whole life and `attache backup restore` while
/// it replaces the file, so neither runs under the other. The kernel releases it
/// when the process ends, however it ends (no stale lock after a crash); a file of
/// its own keeps it apart from SQLite's locks and survives the rename that
/// replaces the database.
#[derive(Debug)]
pub struct SqliteClaim {
    _file: std::fs::File,
}

/// Why a SQLite database file cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "{} is in use by another attache process{}: a running `attache serve` or `attache backup restore`",
        path.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SqliteClaim {
    /// Claims the file of a SQLite `DATABASE_URL`; `None` where there is no file.
    pub fn for_url(url: &str) -> Result<Option<Self>, ClaimError> {
        sqlite_file(url)
            .map(|file| Self::acquire(&file))
            .transpose()
    }

    /// Claims `database` (which need not exist yet), or says who holds it.
    pub fn acquire(database: &Path) -> Result<Self, ClaimError> {
        use std::io::{Read, Seek, Write};
        let lock = lock_path(database).map_err(|source| ClaimError::Io {
            path: database.to_owned(),
            source,
        })?;
        let io = |source| ClaimError::Io {
            path: lock.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                return Err(ClaimError::InUse {
                    path: database.to_owned(),
                    pid: owner.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// `<file>.lock` in the database's folder, with the folder's real path, so that
/// every way of naming the database (relative, through a symlinked folder) finds
/// the same lock.
fn lock_path(database: &Path) -> std::io::Result<PathBuf> {
    let mut name = database
        .file_name()
        .ok_or_else(|| std::io::Error::other("the database path names no file"))?
        .to_owned();
    name.push(".lock");
    let folder = sqlite_folder(database);
    let folder = std::fs::canonicalize(folder).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => std::io::Error::new(
            err.kind(),
            format!("its folder {} does not exist", folder.display()),
        ),
        _ => err,
    })?;
    Ok(folder.join(name))
}

/// The folder of a SQLite database file (`.` for a bare file name): where its
/// journal, its lock and the temporary files of backups go.
pub fn sqlite_folder(file: &Path) -> &Path {
    match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_file_of_a_sqlite_url() {
        let file = |url: &str| sqlite_file(url).map(|path| path.display().to_string());
        assert_eq!(
            file("sqlite://attache.db?mode=rwc").as_deref(),
            Some("attache.db")
        );
        assert_eq!(
            file("sqlite:///data/attache.db?mode=rwc").as_deref(),
            Some("/data/attache.db")
        );
        for none in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
            "sqlite://x.db?mode=memory",
            "postgres://postgres@127.0.0.1/attache",
        ] {
            assert_eq!(file(none), None, "{none}");
        }
    }

    #[test]
    fn a_claimed_file_is_refused_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("attache.db");
        let claim = SqliteClaim::acquire(&database).expect("the first claim");
        let again = dir.path().join(".").join("attache.db");
        match SqliteClaim::acquire(&again) {
            Err(ClaimError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second claim must fail: {other:?}"),
        }
        drop(claim);
        SqliteClaim::acquire(&database).expect("free again");
    }
}
