use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DirectUploads::Table)
                    .if_not_exists()
                    .col(uuid(DirectUploads::Id).primary_key())
                    .col(string_len(DirectUploads::TenantId, 64))
                    .col(string_len(DirectUploads::OwnerType, 64))
                    .col(string_len_null(DirectUploads::OwnerId, 64))
                    .col(string_len(DirectUploads::Filename, 255))
                    .col(string_len(DirectUploads::ContentType, 127))
                    .col(big_integer(DirectUploads::ByteSize))
                    .col(char_len(DirectUploads::Sha256, 64))
                    .col(string_len_uniq(DirectUploads::StorageKey, 1024))
                    .col(string(DirectUploads::CreatedBy))
                    .col(timestamp_with_time_zone(DirectUploads::CreatedAt))
                    .col(timestamp_with_time_zone(DirectUploads::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_direct_uploads_expires_at")
                    .table(DirectUploads::Table)
                    .col(DirectUploads::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(DirectUploads::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum DirectUploads {
    Table,
    Id,
    TenantId,
    OwnerType,
    OwnerId,
    Filename,
    ContentType,
    ByteSize,
    Sha256,
    StorageKey,
    CreatedBy,
    CreatedAt,
    ExpiresAt,
}
