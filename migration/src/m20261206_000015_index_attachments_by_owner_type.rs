use sea_orm_migration::prelude::*;

/// Serves a listing of a whole owner type (no `ownerId`), newest first: without it
/// the tenant+owner index finds the rows but cannot order them, so every page
/// sorted all of the tenant's rows of that type.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_attachments_tenant_type")
                    .table(Attachments::Table)
                    .col(Attachments::TenantId)
                    .col(Attachments::OwnerType)
                    .col(Attachments::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_attachments_tenant_type")
                    .table(Attachments::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Attachments {
    Table,
    TenantId,
    OwnerType,
    Id,
}
