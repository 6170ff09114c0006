use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WorkerLeases::Table)
                    .if_not_exists()
                    .col(string_len(WorkerLeases::Name, 64).primary_key())
                    .col(uuid(WorkerLeases::Holder))
                    .col(timestamp_with_time_zone(WorkerLeases::ExpiresAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WorkerLeases::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum WorkerLeases {
    Table,
    Name,
    Holder,
    ExpiresAt,
}
