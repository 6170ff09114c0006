//! One object copied from the local disk into the bucket by `storage migrate`, and
//! verified there: a row exists only for an object whose size and sha256 matched.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "storage_migrations")]
pub struct Model {
    /// The storage key, the same on both sides.
    #[sea_orm(primary_key, auto_increment = false)]
    pub file_path: String,
    pub migrated_at: DateTimeUtc,
    /// Where the bytes came from, e.g. `fs:/srv/attache/uploads`.
    pub source: String,
    /// Where they went, e.g. `s3://bucket/prefix`.
    pub destination: String,
    pub byte_size: i64,
    pub sha256: String,
    /// Copies tried before the verified one (1 when the first copy held).
    pub attempts: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
