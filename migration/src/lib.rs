//! Database migrations, applied by `attache db migrate` and at `attache serve` startup.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_attachments;
mod m20261125_000002_create_storage_deletions;
mod m20261125_000003_create_direct_uploads;
mod m20261202_000001_create_storage_migrations;
mod m20261202_000002_add_intent_to_storage_deletions;
mod m20261202_000010_create_outbox_events;
mod m20261202_000011_create_webhook_deliveries;
mod m20261202_000012_create_worker_leases;
mod m20261204_000013_add_remove_after_to_storage_deletions;
mod m20261204_000014_create_tenant_usage;
mod m20261206_000015_index_attachments_by_owner_type;
mod m20261207_000016_index_webhook_deliveries_by_claim;
mod m20261207_000017_index_undelivered_webhook_deliveries;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_attachments::Migration),
            Box::new(m20261125_000002_create_storage_deletions::Migration),
            Box::new(m20261125_000003_create_direct_uploads::Migration),
            Box::new(m20261202_000001_create_storage_migrations::Migration),
            Box::new(m20261202_000002_add_intent_to_storage_deletions::Migration),
            Box::new(m20261202_000010_create_outbox_events::Migration),
            Box::new(m20261202_000011_create_webhook_deliveries::Migration),
            Box::new(m20261202_000012_create_worker_leases::Migration),
            Box::new(m20261204_000013_add_remove_after_to_storage_deletions::Migration),
            Box::new(m20261204_000014_create_tenant_usage::Migration),
            Box::new(m20261206_000015_index_attachments_by_owner_type::Migration),
            Box::new(m20261207_000016_index_webhook_deliveries_by_claim::Migration),
            Box::new(m20261207_000017_index_undelivered_webhook_deliveries::Migration),
        ]
    }
}
