//! A stored object that has to be removed from storage unless a row claims it: the
//! object of a deleted row (written in the deletion's transaction), or the intent of
//! an upload in flight (written before its object, removed with the row's insert), so
//! no object is ever forgotten, not even after a crash.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "storage_deletions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub storage_key: String,
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    /// An upload's intent: removed only once it is older than any upload can last.
    pub intent: bool,
    /// A deleted attachment's object is kept until then (`DELETED_FILES_RETENTION`),
    /// so that a restored backup finds it; a direct upload's staging object, removed
    /// at once, is removed again then, once its upload URL is dead; an upload's
    /// intent is not abandoned before then (the longest an upload can last on the
    /// replica that recorded it). `None`: removed as soon as possible.
    pub remove_after: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
