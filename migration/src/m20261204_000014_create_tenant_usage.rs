//! `tenant_usage`: what each tenant stores (bytes and files, direct uploads' declared
//! sizes included while they wait), its quota override, and the limit the last
//! growing write was checked against. The two CHECKs are the quota itself: a write
//! that would take a tenant past the limit it carries fails, inside the transaction
//! that stores the file, so concurrent uploads (other connections, other replicas)
//! can never overshoot. Writes that shrink usage carry no limit and always pass.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The same SQL on SQLite and PostgreSQL; named constraints, so that a refusal
        // says which limit it met.
        db.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS tenant_usage (
                tenant_id VARCHAR(64) NOT NULL PRIMARY KEY,
                bytes BIGINT NOT NULL DEFAULT 0,
                files BIGINT NOT NULL DEFAULT 0,
                quota_bytes BIGINT NULL,
                quota_files BIGINT NULL,
                limit_bytes BIGINT NULL,
                limit_files BIGINT NULL,
                warned BOOLEAN NOT NULL DEFAULT FALSE,
                CONSTRAINT quota_bytes_exceeded CHECK (limit_bytes IS NULL OR bytes <= limit_bytes),
                CONSTRAINT quota_files_exceeded CHECK (limit_files IS NULL OR files <= limit_files)
            )",
        )
        .await?;
        // What is stored already counts from the start. The table may be there
        // already with rows of a later state (a PostgreSQL restore of a backup older
        // than this table drops only what the backup holds): they are counted anew,
        // keeping their quotas. `WHERE true` lets SQLite parse the upsert.
        db.execute_unprepared(
            "UPDATE tenant_usage
             SET bytes = 0, files = 0, limit_bytes = NULL, limit_files = NULL, warned = FALSE",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO tenant_usage (tenant_id, bytes, files)
             SELECT tenant_id, SUM(byte_size), COUNT(*) FROM (
                 SELECT tenant_id, byte_size FROM attachments
                 UNION ALL SELECT tenant_id, byte_size FROM direct_uploads
             ) AS stored
             WHERE true
             GROUP BY tenant_id
             ON CONFLICT (tenant_id) DO UPDATE SET bytes = excluded.bytes, files = excluded.files",
        )
        .await
        .map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TenantUsage::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum TenantUsage {
    Table,
}
