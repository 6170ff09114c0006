//! The reader: how requests read (listings, one attachment, downloads). On SQLite it
//! holds its connections outside sqlx's pool, because the pool pings every
//! connection it gets back (one more round trip to the connection's thread after
//! each query) and spawns a task to do it: without them a listing serves half as
//! many requests again (docs/performance.md). A connection goes back to the reader only
//! when its query has finished; one whose query was cut off (a client that went
//! away) is closed with the future that held it, never reused half-read. The
//! bounded reads on every request's path (a page of a listing, one attachment) skip
//! sqlx altogether: they run on the request's own thread ([`Reader::models`]). On PostgreSQL, where a
//! connection can break, the pool serves reads and checks them.

use std::sync::{Arc, Mutex as SyncMutex};

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, ConnectOptions};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, ExecResult, IdenStatic,
    Iterable, QueryResult, QuerySelect, QueryTrait, RuntimeErr, Select, Statement,
};
use tokio::sync::Semaphore;

use super::lock;

/// SQLite connections the reader keeps open at most: reads run side by side in
/// WAL mode, each connection on a thread of its own, so one per core the process
/// may use, and at least four (a read waits for its statement's disk reads).
fn sqlite_read_connections() -> usize {
    std::thread::available_parallelism().map_or(4, |cores| cores.get().max(4))
}

pub enum Reader {
    Sqlite(Box<SqliteReader>),
    Pool(DatabaseConnection),
}

pub struct SqliteReader {
    options: SqliteConnectOptions,
    /// Connections between queries; opened when none is idle.
    idle: SyncMutex<Vec<SqliteConnection>>,
    /// One per connection that may be open.
    permits: Semaphore,
    /// Connections that [`Reader::models`] reads on the caller's thread, between
    /// reads. A read holds one without awaiting, so there are never more than the
    /// runtime's threads.
    here: SyncMutex<Vec<rusqlite::Connection>>,
}

/// A model read from a SQLite row as sqlx would read it, for [`Reader::models`].
pub trait FromSqliteRow: Sized {
    /// The model of `row`, in which the entity's column number `i` (in the order
    /// its `Column` declares them) is at `at[i]`: the names are looked up once per
    /// query, not once per row.
    fn from_sqlite_row(row: &rusqlite::Row<'_>, at: &[usize]) -> rusqlite::Result<Self>;
}

impl Reader {
    /// The models `select` finds, for a select that reads a bounded number of rows
    /// (a lookup by key, a range of an index with a limit). On SQLite the query runs
    /// on the caller's thread (rusqlite, the library sqlx links), as the writer's
    /// commits do: on a sqlx connection it is a hand-off to that connection's thread
    /// and back, two context switches and the wake-up of another core, which cost a
    /// listing more than its SQL. Such a read touches a few of SQLite's pages, from
    /// memory, so the caller's thread is not held for long; a scan or a sort of
    /// many rows belongs on the reader's sqlx connections (`.all(reader)`).
    pub async fn models<E>(&self, select: Select<E>) -> Result<Vec<E::Model>, DbErr>
    where
        E: EntityTrait,
        E::Model: FromSqliteRow,
    {
        let reader = match self {
            Self::Sqlite(reader) => reader,
            Self::Pool(pool) => return select.all(pool).await,
        };
        let mut at = Vec::new();
        reader.read_here(&select.build(DbBackend::Sqlite), |row| {
            if at.is_empty() {
                at = E::Column::iter()
                    .map(|column| row.as_ref().column_index(column.as_str()))
                    .collect::<rusqlite::Result<_>>()?;
            }
            E::Model::from_sqlite_row(row, &at)
        })
    }

    /// The first model `select` finds, read as [`Self::models`] reads.
    pub async fn model<E>(&self, select: Select<E>) -> Result<Option<E::Model>, DbErr>
    where
        E: EntityTrait,
        E::Model: FromSqliteRow,
    {
        Ok(self.models(select.limit(1)).await?.into_iter().next())
    }
}

impl Reader {
    /// Connections of its own on SQLite (opened on first use); `pool` itself on
    /// PostgreSQL.
    pub fn new(sqlite: Option<SqliteConnectOptions>, pool: &DatabaseConnection) -> Self {
        match sqlite {
            Some(options) => Self::Sqlite(Box::new(SqliteReader {
                options,
                idle: SyncMutex::default(),
                permits: Semaphore::new(sqlite_read_connections()),
                here: SyncMutex::default(),
            })),
            None => Self::Pool(pool.clone()),
        }
    }
}

impl SqliteReader {
    /// Runs `query` on a connection of the reader.
    async fn run<T>(
        &self,
        query: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, DbErr> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DbErr::Custom("the reader is closed".into()))?;
        let idle = self.idle().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self
                .options
                .connect()
                .await
                .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))))?,
        };
        let result = query(&mut connection).await;
        // A refused statement leaves the connection sound; anything else closes it.
        if matches!(result, Ok(_) | Err(sqlx::Error::Database(_))) {
            self.idle().push(connection);
        }
        result.map_err(|err| DbErr::Query(RuntimeErr::SqlxError(Arc::new(err))))
    }

    /// Runs `statement` on a connection of [`Self::here`], on this thread, each row
    /// read by `read`.
    pub(super) fn read_here<T>(
        &self,
        statement: &Statement,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbErr> {
        let cannot = |err: rusqlite::Error| DbErr::Custom(format!("cannot read SQLite: {err}"));
        let idle = lock(&self.here).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => super::batch::open_reader(&self.options).map_err(cannot)?,
        };
        let rows = read_rows(&connection, statement, read);
        // A refused statement leaves the connection sound; anything else closes it.
        if matches!(rows, Ok(_) | Err(rusqlite::Error::SqliteFailure(..))) {
            lock(&self.here).push(connection);
        }
        rows.map_err(cannot)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SqliteConnection>> {
        lock(&self.idle)
    }
}

/// The rows of `statement`, each read by `read`. The statement is reset when it is
/// dropped here, so the connection holds no snapshot of the log between reads.
fn read_rows<T>(
    connection: &rusqlite::Connection,
    statement: &Statement,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    let values = statement.values.iter().flat_map(|values| values.0.iter());
    let rows = prepared.query_map(
        rusqlite::params_from_iter(values.map(super::batch::Bound)),
        read,
    )?;
    rows.collect()
}

/// Only what reads need: a statement that writes is refused on SQLite, where
/// uploads, deletes and commands write through the writer or the pool.
#[async_trait::async_trait]
impl ConnectionTrait for Reader {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Sqlite(_) => DbBackend::Sqlite,
            Self::Pool(pool) => pool.get_database_backend(),
        }
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Sqlite(_) => Err(writes_elsewhere()),
            Self::Pool(pool) => pool.execute_raw(statement).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Sqlite(_) => Err(writes_elsewhere()),
            Self::Pool(pool) => pool.execute_unprepared(sql).await,
        }
    }

    /// All rows, the first kept: the statements sea-orm sends here for one row say
    /// `LIMIT 1` or count.
    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.query_all_raw(statement).await?.into_iter().next())
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Sqlite(reader) => {
                let query = super::sqlite_query(statement);
                let rows = reader
                    .run(async |connection| query.fetch_all(connection).await)
                    .await?;
                Ok(rows.into_iter().map(QueryResult::from).collect())
            }
            Self::Pool(pool) => pool.query_all_raw(statement).await,
        }
    }
}

fn writes_elsewhere() -> DbErr {
    DbErr::Custom("the reader only reads".into())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use super::*;

    /// Counting to `n` takes SQLite long enough to cut the query off midway.
    fn count_to(n: u64) -> Statement {
        Statement::from_string(
            DbBackend::Sqlite,
            format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
                 SELECT x FROM c"
            ),
        )
    }

    fn reader(dir: &tempfile::TempDir) -> SqliteReader {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        SqliteReader {
            options: SqliteConnectOptions::from_str(&url).expect("options"),
            idle: SyncMutex::default(),
            permits: Semaphore::new(sqlite_read_connections()),
            here: SyncMutex::default(),
        }
    }

    #[tokio::test]
    async fn a_query_cut_off_closes_its_connection_and_a_refused_one_keeps_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reader = Reader::Sqlite(Box::new(reader(&dir)));
        let Reader::Sqlite(held) = &reader else {
            unreachable!("built as SQLite")
        };

        let cut_off = tokio::time::timeout(
            Duration::from_millis(20),
            reader.query_all_raw(count_to(50_000_000)),
        )
        .await;
        assert!(cut_off.is_err(), "the query was still running");
        assert_eq!(held.idle().len(), 0, "a half-read connection is not reused");
        assert_eq!(held.permits.available_permits(), sqlite_read_connections());

        let rows = reader.query_all_raw(count_to(1000)).await.expect("rows");
        assert_eq!(rows.len(), 1000);
        let last: i64 = rows[999].try_get("", "x").expect("x");
        assert_eq!(last, 1000);
        assert_eq!(
            held.idle().len(),
            1,
            "a finished query gives its connection back"
        );

        let refused = Statement::from_string(DbBackend::Sqlite, "SELECT * FROM missing");
        assert!(reader.query_one_raw(refused).await.is_err());
        assert_eq!(held.idle().len(), 1, "a refused statement leaves it sound");
        let write = Statement::from_string(DbBackend::Sqlite, "CREATE TABLE t (x)");
        assert!(
            reader.execute_raw(write).await.is_err(),
            "the reader only reads"
        );
    }
}
