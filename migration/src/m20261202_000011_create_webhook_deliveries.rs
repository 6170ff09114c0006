use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261202_000010_create_outbox_events::OutboxEvents;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .if_not_exists()
                    .col(big_pk_auto(WebhookDeliveries::Id))
                    .col(big_integer(WebhookDeliveries::EventSeq))
                    .col(uuid(WebhookDeliveries::AttachmentId))
                    .col(text(WebhookDeliveries::Receiver))
                    .col(string_len(WebhookDeliveries::Status, 16))
                    .col(integer(WebhookDeliveries::Attempts).default(0))
                    .col(timestamp_with_time_zone(WebhookDeliveries::NextAttemptAt))
                    .col(uuid_null(WebhookDeliveries::ClaimedBy))
                    .col(timestamp_with_time_zone_null(
                        WebhookDeliveries::ClaimedUntil,
                    ))
                    .col(text_null(WebhookDeliveries::LastError))
                    .col(timestamp_with_time_zone_null(
                        WebhookDeliveries::DeliveredAt,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_deliveries_event")
                            .from(WebhookDeliveries::Table, WebhookDeliveries::EventSeq)
                            .to(OutboxEvents::Table, OutboxEvents::Seq)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            // The dispatcher's claim: due deliveries of one receiver.
            (
                "idx_webhook_deliveries_due",
                vec![
                    WebhookDeliveries::Receiver,
                    WebhookDeliveries::Status,
                    WebhookDeliveries::NextAttemptAt,
                ],
            ),
            // The order per attachment: earlier undelivered deliveries to a receiver.
            (
                "idx_webhook_deliveries_order",
                vec![
                    WebhookDeliveries::AttachmentId,
                    WebhookDeliveries::Receiver,
                    WebhookDeliveries::EventSeq,
                ],
            ),
            // Pruning and the lookups of one event's deliveries.
            (
                "idx_webhook_deliveries_event",
                vec![WebhookDeliveries::EventSeq],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(WebhookDeliveries::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookDeliveries::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookDeliveries {
    Table,
    Id,
    EventSeq,
    AttachmentId,
    Receiver,
    Status,
    Attempts,
    NextAttemptAt,
    ClaimedBy,
    ClaimedUntil,
    LastError,
    DeliveredAt,
}
