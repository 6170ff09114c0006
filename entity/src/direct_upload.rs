//! A direct upload announced by `createDirectUpload`: the client PUTs the bytes to a
//! signed URL, then `completeDirectUpload` checks them against this declaration.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "direct_uploads")]
pub struct Model {
    /// Becomes the attachment's id once completed.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub owner_type: String,
    pub owner_id: Option<String>,
    pub filename: String,
    pub content_type: String,
    pub byte_size: i64,
    pub sha256: String,
    #[sea_orm(unique)]
    pub storage_key: String,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
