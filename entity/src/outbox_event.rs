//! One change to report (SPEC 10), written in the same transaction as the attachment
//! row it describes, so a committed change always has its event and a rolled-back one
//! never does. Its deliveries live in `webhook_deliveries`.

use sea_orm::entity::prelude::*;

/// What happened; the body's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum EventType {
    #[sea_orm(string_value = "file.stored")]
    Stored,
    #[sea_orm(string_value = "file.deleted")]
    Deleted,
    /// The tenant passed 80 % of a quota; the attachment is the upload that did.
    #[sea_orm(string_value = "tenant.quota_warning")]
    QuotaWarning,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_events")]
pub struct Model {
    /// Assigned by the database in the order of writing: the order of delivery per
    /// attachment, whatever the clocks of several replicas say.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// UUIDv7, sent as `webhook-id`: the same on every redelivery.
    #[sea_orm(unique)]
    pub id: Uuid,
    pub event_type: EventType,
    pub attachment_id: Uuid,
    pub tenant_id: String,
    /// The attachment's key, so that its `url` is made at delivery time.
    pub storage_key: String,
    /// JSON of the body's `data`, without `url`.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
