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

/// A time as sqlx reads it from SQLite: RFC 3339 text (what attache writes), SQLite's
/// own `YYYY-MM-DD HH:MM:SS` in UTC, or seconds since the epoch.
fn time(row: &Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let invalid = |kind| {
        rusqlite::Error::FromSqlConversionFailure(index, kind, "not a time sqlx reads".into())
    };
    match row.get_ref(index)? {
        ValueRef::Text(text) => {
            let text = std::str::from_utf8(text).map_err(|_| invalid(Type::Text))?;
            DateTime::parse_from_rfc3339(text)
                .map(|time| time.to_utc())
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(text, "%F %T%.f").map(|time| time.and_utc())
                })
                .map_err(|_| invalid(Type::Text))
        }
        ValueRef::Integer(seconds) => {
            DateTime::from_timestamp(seconds, 0).ok_or_else(|| invalid(Type::Integer))
        }
        other => Err(wrong_type(row, index, other.data_type())),
    }
}

fn wrong_type(row: &Row<'_>, index: usize, found: Type) -> rusqlite::Error {
    let name = row.as_ref().column_name(index).map_or("?", |name| name);
    rusqlite::Error::InvalidColumnType(index, name.to_owned(), found)
}

#[cfg(test)]
mod tests {
    use sea_orm::{
        ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, Iterable, PaginatorTrait,
        QueryFilter, QueryOrder, QuerySelect, Statement,
    };

    use super::super::Reader;
    use super::attachment;

    use crate::config::{DatabaseConfig, SqliteSync};

    /// Rows written by sqlx (through sea-orm) and one whose time SQLite wrote itself
    /// read the same through sea-orm and sqlx and through [`FromSqliteRow`].
    #[tokio::test]
    async fn rows_read_here_as_sqlx_reads_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rows.db");
        let db = super::super::Database::open(&DatabaseConfig {
            database_url: format!("sqlite://{}?mode=rwc", path.display()),
            sqlite_synchronous: SqliteSync::Normal,
            database_max_connections: 1,
        })
        .await
        .expect("open");
        db.migrate().await.expect("migrate");
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

        let owned = || all().filter(attachment::Column::OwnerId.is_not_null());
        assert_eq!(db.read().count(owned()).await.expect("count"), 2);
        assert_eq!(
            db.read().count(all()).await.expect("count"),
            PaginatorTrait::count(all(), &db.pool).await.expect("sqlx"),
        );
        let none = all().filter(attachment::Column::TenantId.eq("globex"));
        assert_eq!(db.read().count(none).await.expect("count"), 0);

        let Reader::Sqlite(reader) = db.read() else {
            unreachable!("opened on SQLite")
        };
        let write = Statement::from_string(db.backend(), "DELETE FROM attachments");
        let refused = reader.read_here(&write, |_| Ok(()));
        assert!(refused.is_err(), "reads here never write");
        assert_eq!(db.read().count(all()).await.expect("count"), 3);
    }
}
