use sea_orm_migration::prelude::*;

/// Serves the pruning of delivered events, which looks up each old event's
/// deliveries still waited for: through `idx_webhook_deliveries_event`, PostgreSQL
/// walked every delivery kept (a merge anti join, 179 ms per batch of 500 at a
/// million); the deliveries not yet delivered are few.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_undelivered")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::EventSeq)
                    .and_where(Expr::col(WebhookDeliveries::Status).ne("delivered"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_webhook_deliveries_undelivered")
                    .table(WebhookDeliveries::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    EventSeq,
    Status,
}
