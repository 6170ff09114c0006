//! One stored file and the record it is attached to.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attachments")]
pub struct Model {
    /// UUIDv7: time-ordered, so ordering by id is ordering by creation.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub owner_type: String,
    pub owner_id: Option<String>,
    pub filename: String,
    pub content_type: String,
    pub byte_size: i64,
    pub sha256: String,
    /// Relative key, valid on every storage backend.
    #[sea_orm(unique)]
    pub storage_key: String,
    pub created_by: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
