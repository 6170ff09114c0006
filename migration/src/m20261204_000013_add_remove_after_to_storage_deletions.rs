use sea_orm_migration::{prelude::*, schema::*};

/// The object of a deleted attachment is kept until `remove_after`
/// (`DELETED_FILES_RETENTION`), so a backup restored meanwhile finds every file; an
/// entry without it is removed as soon as possible.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(StorageDeletions::Table)
                    .add_column(timestamp_with_time_zone_null(StorageDeletions::RemoveAfter))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(StorageDeletions::Table)
                    .drop_column(StorageDeletions::RemoveAfter)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum StorageDeletions {
    Table,
    RemoveAfter,
}
