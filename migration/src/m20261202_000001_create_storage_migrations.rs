use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StorageMigrations::Table)
                    .if_not_exists()
                    .col(string_len(StorageMigrations::FilePath, 1024).primary_key())
                    .col(timestamp_with_time_zone(StorageMigrations::MigratedAt))
                    .col(string_len(StorageMigrations::Source, 1024))
                    .col(string_len(StorageMigrations::Destination, 1024))
                    .col(big_integer(StorageMigrations::ByteSize))
                    .col(char_len(StorageMigrations::Sha256, 64))
                    .col(integer(StorageMigrations::Attempts).default(1))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StorageMigrations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum StorageMigrations {
    Table,
    FilePath,
    MigratedAt,
    Source,
    Destination,
    ByteSize,
    Sha256,
    Attempts,
}
