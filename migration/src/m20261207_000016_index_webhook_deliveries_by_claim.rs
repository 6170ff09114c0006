use sea_orm_migration::prelude::*;

/// Serves the dispatcher's read-back of what it has just claimed (`claimed_by` =
/// its token, in `event_seq` order): without it every claim scanned all deliveries,
/// delivered ones kept for `EVENTS_RETENTION_DAYS` included.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_claimed_by")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::ClaimedBy)
                    .col(WebhookDeliveries::EventSeq)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_webhook_deliveries_claimed_by")
                    .table(WebhookDeliveries::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    ClaimedBy,
    EventSeq,
}
