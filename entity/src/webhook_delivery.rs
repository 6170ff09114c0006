//! One event for one receiver of `WEBHOOK_URLS`: each receiver has its own record,
//! so a slow or dead receiver holds back no other. A dispatcher claims a due record
//! for a lease (`claimed_by`, `claimed_until`); a claim whose replica died expires.

use sea_orm::entity::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum DeliveryStatus {
    /// Not delivered yet; due at `next_attempt_at`.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// A receiver answered 2xx.
    #[sea_orm(string_value = "delivered")]
    Delivered,
    /// Every attempt failed; `attache events retry` makes it pending again.
    #[sea_orm(string_value = "failed")]
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The event (`outbox_events.seq`); also the order of delivery per attachment.
    pub event_seq: i64,
    /// What the delivery is ordered with: the attachment of a `file.*` event; for a
    /// tenant event, the event's own id (ordered with nothing, so a receiver that
    /// refuses it holds back no file's events).
    pub attachment_id: Uuid,
    /// The receiver's URL as configured (it may carry a token: never logged whole).
    #[sea_orm(column_type = "Text")]
    pub receiver: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    /// The claim that holds the record, unique per claim.
    pub claimed_by: Option<Uuid>,
    /// When the claim lapses and another dispatcher may take the record.
    pub claimed_until: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
