use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Attachments::Table)
                    .if_not_exists()
                    .col(uuid(Attachments::Id).primary_key())
                    .col(string_len(Attachments::TenantId, 64))
                    .col(string_len(Attachments::OwnerType, 64))
                    .col(string_len_null(Attachments::OwnerId, 64))
                    .col(string_len(Attachments::Filename, 255))
                    .col(string_len(Attachments::ContentType, 127))
                    .col(big_integer(Attachments::ByteSize))
                    .col(char_len(Attachments::Sha256, 64))
                    .col(string_len_uniq(Attachments::StorageKey, 1024))
                    .col(string(Attachments::CreatedBy))
                    .col(timestamp_with_time_zone(Attachments::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // Serves the tenant + owner listing, newest first (ids are UUIDv7).
        manager
            .create_index(
                Index::create()
                    .name("idx_attachments_tenant_owner")
                    .table(Attachments::Table)
                    .col(Attachments::TenantId)
                    .col(Attachments::OwnerType)
                    .col(Attachments::OwnerId)
                    .col(Attachments::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Attachments::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Attachments {
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
}
