//! Models read from SQLite rows on the caller's thread ([`super::Reader::models`]),
//! each value decoded as sqlx decodes it for sea-orm: UUIDs from their 16 bytes,
//! times from their text. A unit test reads the same rows both ways.

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::Row;
use rusqlite::types::{Type, ValueRef};
use uuid::Uuid;

use entity::attachment;

use super::reader::FromSqliteRow;

impl FromSqliteRow for attachment::Model {
    fn from_sqlite_row(row: &Row<'_>, at: &[usize]) -> rusqlite::Result<Self> {
        use attachment::Column;
        let at = |column: Column| at[column as usize];
        Ok(Self {
            id: uuid(row, at(Column::Id))?,
            tenant_id: row.get(at(Column::TenantId))?,
            owner_type: row.get(at(Column::OwnerType))?,
            owner_id: row.get(at(Column::OwnerId))?,
            filename: row.get(at(Column::Filename))?,
            content_type: row.get(at(Column::ContentType))?,
            byte_size: row.get(at(Column::ByteSize))?,
            sha256: row.get(at(Column::Sha256))?,
            storage_key: row.get(at(Column::StorageKey))?,
            created_by: row.get(at(Column::CreatedBy))?,
            created_at: time(row, at(Column::CreatedAt))?,
        })
    }
}

/// A UUID as sqlx writes it to SQLite: a blob of its 16 bytes.
fn uuid(row: &Row<'_>, index: usize) -> rusqlite::Result<Uuid> {
    match row.get_ref(index)? {
        ValueRef::Blob(bytes) => Uuid::from_slice(bytes).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(index, Type::Blob, Box::new(err))
        }),
        other => Err(wrong_type(row, index, other.data_type())),
    }
}

/// A time as sqlx reads it from SQLite text (`decode_datetime` in sqlx-sqlite): RFC
/// 3339 (what attache writes), or the other forms SQLite's date functions take, with
/// or without an offset (none is UTC). Time columns have text affinity, so SQLite
/// keeps even a number written there as text: text is all they hold.
fn time(row: &Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    match row.get_ref(index)? {
        ValueRef::Text(text) => std::str::from_utf8(text)
            .ok()
            .and_then(time_from_text)
            .ok_or_else(|| {
                let why = "not a time sqlx reads".into();
                rusqlite::Error::FromSqlConversionFailure(index, Type::Text, why)
            }),
        other => Err(wrong_type(row, index, other.data_type())),
    }
}

/// The text forms sqlx reads after RFC 3339, in its order.
const TIME_FORMATS: [&str; 12] = [
    "%F %T%.f",
    "%F %R",
    "%F %RZ",
    "%F %R%:z",
    "%F %T%.fZ",
    "%F %T%.f%:z",
    "%FT%R",
    "%FT%RZ",
    "%FT%R%:z",
    "%FT%T%.f",
    "%FT%T%.fZ",
    "%FT%T%.f%:z",
];

fn time_from_text(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.to_utc());
    }
    TIME_FORMATS.iter().find_map(|format| {
        DateTime::parse_from_str(text, format)
            .map(|time| time.to_utc())
            .or_else(|_| NaiveDateTime::parse_from_str(text, format).map(|time| time.and_utc()))
            .ok()
    })
}

fn wrong_type(row: &Row<'_>, index: usize, found: Type) -> rusqlite::Error {
    let name = row.as_ref().column_name(index).map_or("?", |name| name);
    rusqlite::Error::InvalidColumnType(index, name.to_owned(), found)
}

#[cfg(test)]
mod tests {
    use sea_orm::{
        ActiveValue::Set, ConnectionTrait, EntityTrait, Iterable, QueryOrder, QuerySelect,
        Statement,
    };

    use super::super::{Database, Reader};
    use super::attachment;

    use crate::config::{DatabaseConfig, SqliteSync};

    /// A new SQLite database at `path`, migrated.
    async fn migrated(path: &std::path::Path) -> Database {
        let db = Database::open(&DatabaseConfig {
            database_url: format!("sqlite://{}?mode=rwc", path.display()),
            sqlite_synchronous: SqliteSync::Normal,
            database_max_connections: 1,
        })
        .await
        .expect("open");
        db.migrate().await.expect("migrate");
        db
    }

    /// Rows written by sqlx (through sea-orm) and one whose time SQLite wrote itself
    /// read the same through sea-orm and sqlx and through [`FromSqliteRow`].
    #[tokio::test]
    async fn rows_read_here_as_sqlx_reads_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rows.db");
        let db = migrated(&path).await;
        let row = |owner_id: Option<&str>, created_at: &str| attachment::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            tenant_id: Set("acme".into()),
            owner_type: Set("contract".into()),
            owner_id: Set(owner_id.map(Into::into)),
            filename: Set("Relevé été.pdf".into()),
            content_type: Set("application/pdf".into()),
            byte_size: Set(i64::MAX),
            sha256: Set("ab".repeat(32)),
            storage_key: Set(format!("acme/{}", uuid::Uuid::now_v7())),
            created_by: Set("user-1".into()),
            created_at: Set(created_at.parse().expect("a time")),
        };
        attachment::Entity::insert_many([
            row(Some("c-1"), "2026-12-06T10:11:12.123456789Z"),
            row(None, "2026-01-01T00:00:00Z"),
        ])
        .exec(&db.pool)
        .await
        .expect("insert");
        let last = row(Some("c-2"), "2026-12-06T00:00:00Z");
        attachment::Entity::insert(last)
            .exec(&db.pool)
            .await
            .expect("insert");
        db.pool
            .execute_raw(Statement::from_string(
                db.backend(),
                "UPDATE attachments SET created_at = CURRENT_TIMESTAMP WHERE owner_id = 'c-2'",
            ))
            .await
            .expect("SQLite's own time");

        let all = || attachment::Entity::find().order_by_asc(attachment::Column::Id);
        let through_sqlx = all().all(&db.pool).await.expect("sqlx");
        let here = db.read().models(all()).await.expect("here");
        assert_eq!(through_sqlx.len(), 3);
        assert_eq!(here, through_sqlx);
        // The columns in another order: they are found by name.
        let reversed = all().select_only().columns(
            attachment::Column::iter()
                .collect::<Vec<_>>()
                .into_iter()
                .rev(),
        );
        assert_eq!(
            db.read().models(reversed).await.expect("here"),
            through_sqlx
        );
        let first = db.read().model(all()).await.expect("first");
        assert_eq!(first.as_ref(), through_sqlx.first());

        let Reader::Sqlite(reader) = db.read() else {
            unreachable!("opened on SQLite")
        };
        let write = Statement::from_string(db.backend(), "DELETE FROM attachments");
        let refused = reader.read_here(&write, |_| Ok(()));
        assert!(refused.is_err(), "reads here never write");
        assert_eq!(all().all(&db.pool).await.expect("sqlx").len(), 3);
    }

    /// Every text form of time sqlx reads from SQLite reads the same here, with and
    /// without an offset. (The column has text affinity: SQLite stores a number there
    /// as its text, which neither reads.)
    #[tokio::test]
    async fn every_time_sqlx_reads_reads_the_same_here() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = migrated(&dir.path().join("t.db")).await;
        let times = [
            "'2026-12-06T10:11:12.5+02:00'",
            "'2026-12-06 10:11:12.123'",
            "'2026-12-06 10:11'",
            "'2026-12-06 10:11Z'",
            "'2026-12-06 10:11+01:30'",
            "'2026-12-06 10:11:12.5Z'",
            "'2026-12-06 10:11:12-03:00'",
            "'2026-12-06T10:11'",
            "'2026-12-06T10:11Z'",
            "'2026-12-06T10:11-05:00'",
            "'2026-12-06T10:11:12.25'",
            "'2026-12-06T10:11:12Z'",
        ];
        for (n, time) in times.iter().enumerate() {
            let insert = format!(
                "INSERT INTO attachments (id, tenant_id, owner_type, owner_id, filename, \
                 content_type, byte_size, sha256, storage_key, created_by, created_at) \
                 VALUES (randomblob(16), 'acme', 'contract', NULL, 'f.pdf', \
                 'application/pdf', 1, 'ab', 'acme/{n}', 'u', {time})"
            );
            db.pool
                .execute_raw(Statement::from_string(db.backend(), insert))
                .await
                .expect("insert");
        }
        let all = || attachment::Entity::find().order_by_asc(attachment::Column::StorageKey);
        let through_sqlx = all().all(&db.pool).await.expect("sqlx reads each");
        assert_eq!(through_sqlx.len(), times.len());
        assert_eq!(db.read().models(all()).await.expect("here"), through_sqlx);
    }
}
