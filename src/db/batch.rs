//! The SQLite connection the writer commits its batches on, called on the
//! committing thread itself (rusqlite, the same SQLite library as sqlx's). A sqlx
//! connection runs on a thread of its own: each batch there is a hand-off to that
//! thread and back, two context switches and a wake-up of an idle core, which on a
//! VM cost a small upload more than its SQL. In WAL mode with `synchronous=NORMAL`
//! a commit is an append to the log, without a sync: shorter than the hand-off.
//! Values are bound exactly as sqlx binds them (UUIDs as 16-byte blobs, times as
//! RFC 3339 text), so what the reader's sqlx connections read back is the same.

use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sea_orm::Statement;
use sea_orm::sea_query::Value;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;

use crate::config::SqliteSync;

/// Opens the connection for the database of `options`. The log is checkpointed by [`checkpoint`] off the request's
/// thread, never by a commit (a checkpoint syncs the database file).
pub fn open(options: &SqliteConnectOptions, sync: SqliteSync) -> rusqlite::Result<Connection> {
    let connection = connect(options)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    let synchronous = match sync {
        SqliteSync::Normal => "NORMAL",
        SqliteSync::Full => "FULL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    connection.pragma_update(None, "journal_size_limit", LOG_KEPT_BYTES)?;
    Ok(connection)
}

/// Opens a connection for the reader ([`super::Reader::models`]): it refuses
/// every write (`query_only`).
pub fn open_reader(options: &SqliteConnectOptions) -> rusqlite::Result<Connection> {
    let connection = connect(options)?;
    connection.pragma_update(None, "query_only", "ON")?;
    connection.busy_timeout(super::SQLITE_BUSY_TIMEOUT)?;
    Ok(connection)
}

/// The database file of `options`, opened read-write.
fn connect(options: &SqliteConnectOptions) -> rusqlite::Result<Connection> {
    let path = options.get_filename();
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // sqlx names an in-memory database `file:sqlx-in-memory-N`, in a shared cache.
    if path.to_string_lossy().starts_with("file:") {
        flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
    }
    Connection::open_with_flags(path, flags)
}

/// What the log file keeps of its size when SQLite writes it from its start again:
/// the rest is given back to the filesystem. The writer starts it again at about
/// this size too (`RESTART_AFTER_FRAMES`).
pub(super) const LOG_KEPT_BYTES: i64 = 64 * 1024 * 1024;

/// Copies the log into the database as far as no reader needs it (`PASSIVE`: it
/// never waits for a reader or the writer); returns the frames the log now holds.
/// SQLite writes the log from its start again only when a commit finds every frame
/// copied, which under a steady stream of commits `PASSIVE` never achieves: each
/// lands while it copies (see [`restart`]).
pub fn checkpoint(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

/// Copies the whole log into the database, waiting up to `patience` for readers of
/// older frames to finish (`RESTART`), so that the next commit writes the log from
/// its start again; `false` when a reader still held them. The caller keeps this
/// process's commits out meanwhile.
pub fn restart(connection: &Connection, patience: Duration) -> rusqlite::Result<bool> {
    connection.busy_timeout(patience)?;
    let busy: i64 = connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
    Ok(busy == 0)
}

/// Why a batch did not commit.
pub enum Refused {
    /// Another process holds SQLite's write lock and the batch may not wait for it.
    Busy,
    /// The batch could not begin (another process held the lock past the patience,
    /// or the connection failed): nothing ran, and a batch on its own would fare no
    /// better.
    NotBegun(rusqlite::Error),
    /// A statement failed (or COMMIT did); nothing of the batch was kept.
    Failed(rusqlite::Error),
}

/// `BEGIN IMMEDIATE; statements; COMMIT`, rolled back when one fails. `patience`
/// is how long BEGIN waits for another process's write lock: without any, a held
/// lock is [`Refused::Busy`] at once, before anything ran.
pub fn commit<'a>(
    connection: &Connection,
    statements: impl IntoIterator<Item = &'a Statement>,
    patience: Duration,
) -> Result<(), Refused> {
    connection
        .busy_timeout(patience)
        .map_err(Refused::NotBegun)?;
    if let Err(err) = connection.execute_batch("BEGIN IMMEDIATE") {
        let busy = err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
        return Err(if busy && patience.is_zero() {
            Refused::Busy
        } else {
            Refused::NotBegun(err)
        });
    }
    let committed = statements
        .into_iter()
        .try_for_each(|statement| execute(connection, statement))
        .and_then(|()| connection.execute_batch("COMMIT"));
    committed.map_err(|err| {
        if !connection.is_autocommit() {
            // Fails only with the connection, which the next batch then finds broken.
            let _ = connection.execute_batch("ROLLBACK");
        }
        Refused::Failed(err)
    })
}

/// Runs one statement, its rows (an `INSERT ... RETURNING`) read and dropped.
fn execute(connection: &Connection, statement: &Statement) -> rusqlite::Result<()> {
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    let values = statement.values.iter().flat_map(|values| values.0.iter());
    let mut rows = prepared.query(rusqlite::params_from_iter(values.map(Bound)))?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// A sea-query value bound as sea-query-sqlx binds it for SQLite.
pub(super) struct Bound<'a>(pub &'a Value);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as Owned;
        let text = |text: String| Ok(ToSqlOutput::Owned(Owned::Text(text)));
        let int = |int: Option<i64>| Ok(int.map_or(ToSqlOutput::Owned(Owned::Null), Into::into));
        match self.0 {
            Value::Bool(v) => int(v.map(i64::from)),
            Value::TinyInt(v) => int(v.map(i64::from)),
            Value::SmallInt(v) => int(v.map(i64::from)),
            Value::Int(v) => int(v.map(i64::from)),
            Value::BigInt(v) => int(*v),
            Value::TinyUnsigned(v) => int(v.map(i64::from)),
            Value::SmallUnsigned(v) => int(v.map(i64::from)),
            Value::Unsigned(v) => int(v.map(i64::from)),
            Value::BigUnsigned(v) => match v.map(i64::try_from).transpose() {
                Ok(v) => int(v),
                Err(err) => Err(rusqlite::Error::ToSqlConversionFailure(Box::new(err))),
            },
            Value::Float(v) => Ok(ToSqlOutput::Owned(
                v.map_or(Owned::Null, |v| Owned::Real(v.into())),
            )),
            Value::Double(v) => Ok(ToSqlOutput::Owned(v.map_or(Owned::Null, Owned::Real))),
            Value::String(Some(v)) => Ok(ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes()))),
            Value::Char(Some(v)) => text(v.to_string()),
            Value::Enum(sea_orm::sea_query::OptionEnum::Some(v)) => text(v.value.to_string()),
            Value::Bytes(Some(v)) => Ok(ToSqlOutput::Borrowed(ValueRef::Blob(v))),
            Value::Uuid(Some(v)) => Ok(ToSqlOutput::Borrowed(ValueRef::Blob(v.as_bytes()))),
            Value::ChronoDateTimeUtc(Some(v)) => text(rfc3339(v)),
            Value::ChronoDateTimeWithTimeZone(Some(v)) => text(rfc3339(v)),
            Value::ChronoDateTimeLocal(Some(v)) => text(rfc3339(v)),
            Value::ChronoDateTime(Some(v)) => text(v.format("%F %T%.f").to_string()),
            Value::ChronoDate(Some(v)) => text(v.format("%F").to_string()),
            Value::ChronoTime(Some(v)) => text(v.format("%T%.f").to_string()),
            Value::Json(Some(v)) => text(v.to_string()),
            // A typed NULL (`Value::String(None)` and the like).
            other if *other == other.as_null() => Ok(ToSqlOutput::Owned(Owned::Null)),
            other => Err(rusqlite::Error::ToSqlConversionFailure(
                format!("the SQLite writer binds no {other:?}").into(),
            )),
        }
    }
}

/// A time as sqlx writes it to SQLite.
fn rfc3339<Tz: chrono::TimeZone>(time: &chrono::DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sea_orm::sqlx::{self, ConnectOptions, Row};
    use sea_orm::{DbBackend, Values};

    use super::*;

    /// Every kind of value attache writes comes out of a batch exactly as sqlx
    /// writes it: the same SQLite type and the same bytes, so reads and comparisons
    /// through sqlx cannot tell the two writers apart.
    #[tokio::test]
    async fn values_are_bound_as_sqlx_binds_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let options = SqliteConnectOptions::from_str(&url).expect("options");
        let mut sqlx_side = options.connect().await.expect("connect");
        sqlx::raw_sql("CREATE TABLE t (writer TEXT, v)")
            .execute(&mut sqlx_side)
            .await
            .expect("table");
        let values = [
            Value::Uuid(Some(uuid::Uuid::now_v7())),
            Value::ChronoDateTimeUtc(Some(chrono::Utc::now())),
            Value::String(Some("zürich".into())),
            Value::BigInt(Some(-7)),
            Value::Bool(Some(true)),
            Value::Bytes(Some(vec![0, 255])),
            Value::String(None),
        ];
        let insert = |writer: &str, value: &Value| {
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("INSERT INTO t VALUES ('{writer}', ?)"),
                Values(vec![value.clone()]),
            )
        };
        let batch = open(&options, SqliteSync::Normal).expect("open");
        let ours: Vec<_> = values.iter().map(|value| insert("batch", value)).collect();
        assert!(
            commit(&batch, &ours, Duration::ZERO).is_ok(),
            "the batch commits"
        );
        for value in &values {
            crate::db::sqlite_query(insert("sqlx", value))
                .execute(&mut sqlx_side)
                .await
                .expect("sqlx insert");
        }
        let mut read = async |writer: &str| {
            sqlx::query("SELECT typeof(v), quote(v) FROM t WHERE writer = ? ORDER BY rowid")
                .bind(writer.to_owned())
                .fetch_all(&mut sqlx_side)
                .await
                .expect("rows")
                .iter()
                .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1)))
                .collect::<Vec<_>>()
        };
        let from_batch = read("batch").await;
        assert_eq!(from_batch.len(), values.len());
        assert_eq!(from_batch, read("sqlx").await);
    }
}
