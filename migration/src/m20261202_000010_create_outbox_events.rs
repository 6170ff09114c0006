use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OutboxEvents::Table)
                    .if_not_exists()
                    // Assigned by the database in the order of writing: the delivery
                    // order per attachment, whatever the replicas' clocks say.
                    .col(big_pk_auto(OutboxEvents::Seq))
                    .col(uuid_uniq(OutboxEvents::Id))
                    .col(string_len(OutboxEvents::EventType, 32))
                    .col(uuid(OutboxEvents::AttachmentId))
                    .col(string_len(OutboxEvents::TenantId, 64))
                    .col(string_len(OutboxEvents::StorageKey, 1024))
                    .col(text(OutboxEvents::Payload))
                    .col(timestamp_with_time_zone(OutboxEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // Serves the pruning of old events.
        manager
            .create_index(
                Index::create()
                    .name("idx_outbox_events_created_at")
                    .table(OutboxEvents::Table)
                    .col(OutboxEvents::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OutboxEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum OutboxEvents {
    Table,
    Seq,
    Id,
    EventType,
    AttachmentId,
    TenantId,
    StorageKey,
    Payload,
    CreatedAt,
}
