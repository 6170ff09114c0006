use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StorageDeletions::Table)
                    .if_not_exists()
                    .col(string_len(StorageDeletions::StorageKey, 1024).primary_key())
                    .col(integer(StorageDeletions::Attempts).default(0))
                    .col(timestamp_with_time_zone(StorageDeletions::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StorageDeletions::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum StorageDeletions {
    Table,
    StorageKey,
    Attempts,
    CreatedAt,
}
