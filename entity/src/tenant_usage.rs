//! What one tenant stores and may store (see the migration that creates the table):
//! the quota is enforced by the database's CHECKs on `limit_bytes` and `limit_files`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenant_usage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    /// Stored bytes, and the declared sizes of direct uploads not yet completed.
    pub bytes: i64,
    pub files: i64,
    /// The tenant's own quota (`attache tenant quota set`); `None`: the default.
    pub quota_bytes: Option<i64>,
    pub quota_files: Option<i64>,
    /// The limit the last growing write was checked against; `None` after a shrink.
    pub limit_bytes: Option<i64>,
    pub limit_files: Option<i64>,
    /// Past 80 % of a limit and told so (`tenant.quota_warning`); cleared below it.
    pub warned: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
