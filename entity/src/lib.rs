//! sea-orm entities of attache's tables. Plain data: no GraphQL or HTTP derives here.

pub mod attachment;
pub mod direct_upload;
pub mod outbox_event;
pub mod storage_deletion;
pub mod storage_migration;
pub mod tenant_usage;
pub mod webhook_delivery;
pub mod worker_lease;
