use sea_orm_migration::{prelude::*, schema::*};

/// An upload records its key here before it writes the object (an intent), and
/// removes the entry in the transaction that inserts the row; a crash in between
/// leaves an entry whose object is removed later.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(StorageDeletions::Table)
                    .add_column(boolean(StorageDeletions::Intent).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(StorageDeletions::Table)
                    .drop_column(StorageDeletions::Intent)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum StorageDeletions {
    Table,
    Intent,
}
