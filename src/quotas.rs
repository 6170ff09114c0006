//! Tenant quotas and usage. Every write that adds files to a tenant carries, in the
//! same transaction, a statement that adds them to its `tenant_usage` row together
//! with the limit that applies (its own quota, else `TENANT_QUOTA_*`); the row's
//! CHECKs refuse the transaction when the sum would pass the limit. So the database
//! decides, atomically, on SQLite and on PostgreSQL, with any number of replicas:
//! concurrent uploads store exactly as many as fit. A row per tenant keeps tenants
//! apart: one tenant's uploads never wait for another's counter.
//!
//! Before any byte is stored, [`check`] refuses what clearly does not fit, so a
//! refused upload costs one read; the CHECK settles the races that read cannot see.

use entity::outbox_event::EventType;
use entity::tenant_usage::{self, Column, Entity};
use entity::{attachment, direct_upload};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, QueryTrait, Statement,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::app::App;
use crate::config::QuotaConfig;
use crate::db::{Database, Transaction, Writes};
use crate::error::{AppError, AppResult, QuotaRefusal, QuotaUsage};

/// Past this share of a limit, a tenant is warned (`tenant.quota_warning`) and counted
/// by the `attache_tenants_near_quota` gauge.
const WARN_PERCENT: i64 = 80;

/// What a tenant stores and may store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub tenant_id: String,
    pub bytes: i64,
    pub files: i64,
    /// The limits that apply: the tenant's own, else the default; `None`: unlimited.
    pub quota_bytes: Option<i64>,
    pub quota_files: Option<i64>,
    /// Whether the quota is the tenant's own (`attache tenant quota set`).
    #[serde(skip)]
    pub own_quota: bool,
}

impl Usage {
    fn of(row: Option<tenant_usage::Model>, tenant: &str, defaults: &QuotaConfig) -> Self {
        let row = row.unwrap_or_else(|| tenant_usage::Model {
            tenant_id: tenant.to_owned(),
            bytes: 0,
            files: 0,
            quota_bytes: None,
            quota_files: None,
            limit_bytes: None,
            limit_files: None,
            warned: false,
        });
        let (default_bytes, default_files) = limits(defaults);
        Self {
            own_quota: row.quota_bytes.is_some() || row.quota_files.is_some(),
            quota_bytes: row.quota_bytes.or(default_bytes),
            quota_files: row.quota_files.or(default_files),
            tenant_id: row.tenant_id,
            bytes: row.bytes,
            files: row.files,
        }
    }

    /// The larger of the two shares of its limits, in percent; `None`: unlimited.
    pub fn percent(&self) -> Option<f64> {
        let share = |used: i64, limit: Option<i64>| {
            limit.map(|limit| used as f64 * 100.0 / Ord::max(limit, 1) as f64)
        };
        match (
            share(self.bytes, self.quota_bytes),
            share(self.files, self.quota_files),
        ) {
            (Some(bytes), Some(files)) => Some(bytes.max(files)),
            (one, other) => one.or(other),
        }
    }

    /// `QUOTA_EXCEEDED` of an upload of `bytes` in `files` files, with this usage.
    fn refusal(&self, bytes: i64, files: i64) -> AppError {
        AppError::QuotaExceeded(Box::new(QuotaRefusal {
            usage: QuotaUsage {
                bytes: self.bytes,
                files: self.files,
                quota_bytes: self.quota_bytes,
                quota_files: self.quota_files,
            },
            requested_bytes: bytes,
            requested_files: files,
        }))
    }

    /// Whether `bytes` more in `files` more files would pass a limit.
    fn would_pass(&self, bytes: i64, files: i64) -> bool {
        let passes = |used: i64, more: i64, limit: Option<i64>| {
            limit.is_some_and(|limit| used.saturating_add(more) > limit)
        };
        passes(self.bytes, bytes, self.quota_bytes) || passes(self.files, files, self.quota_files)
    }
}

/// The default limits as the database stores them.
fn limits(defaults: &QuotaConfig) -> (Option<i64>, Option<i64>) {
    let stored = |limit: Option<u64>| limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
    (
        stored(defaults.tenant_quota_bytes),
        stored(defaults.tenant_quota_files),
    )
}

/// `tenant`'s usage and limits, read now.
pub async fn usage(db: &Database, defaults: &QuotaConfig, tenant: &str) -> Result<Usage, DbErr> {
    let row = Entity::find_by_id(tenant.to_owned()).one(db.read()).await?;
    Ok(Usage::of(row, tenant, defaults))
}

/// Refuses, before anything is stored, `bytes` in `files` files that would take
/// `tenant` past a limit as its usage stands now. Whether the upload brings the
/// tenant to [`WARN_PERCENT`] of a limit: only then does [`warn_if_near`] read its
/// usage again after the commit (uploads racing past the threshold together are
/// warned of by the next one).
pub async fn check(app: &App, tenant: &str, bytes: i64, files: i64) -> AppResult<bool> {
    let defaults = &app.config.quotas;
    let unlimited = defaults.tenant_quota_bytes.is_none() && defaults.tenant_quota_files.is_none();
    if unlimited && !app.own_quotas_exist.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let mut usage = match estimate(app, tenant) {
        Some(estimate) => estimate,
        None => read_estimate(app, tenant).await?,
    };
    if usage.would_pass(bytes, files) {
        // An estimate may be out of date (a delete, another replica): only what
        // the database says now refuses.
        usage = read_estimate(app, tenant).await?;
        if usage.would_pass(bytes, files) {
            return Err(usage.refusal(bytes, files));
        }
    }
    let after = Usage {
        bytes: usage.bytes.saturating_add(bytes),
        files: usage.files.saturating_add(files),
        ..usage
    };
    Ok(after
        .percent()
        .is_some_and(|percent| percent >= WARN_PERCENT as f64))
}

/// `tenant`'s usage read now, kept as its estimate.
async fn read_estimate(app: &App, tenant: &str) -> AppResult<Usage> {
    let usage = usage(&app.db, &app.config.quotas, tenant).await?;
    keep_estimate(app, &usage);
    Ok(usage)
}

/// After a commit that added `bytes` in `files` files to `tenant`'s usage.
pub fn grew(app: &App, tenant: &str, bytes: i64, files: i64) {
    if let Some((usage, _)) = estimates(app).get_mut(tenant) {
        usage.bytes = usage.bytes.saturating_add(bytes);
        usage.files = usage.files.saturating_add(files);
    }
}

// Usage as this process last read it, plus what it stored since, per tenant
// (`App::usage_estimates`), for [`check`]'s early refusal: a read per upload cost
// more than the upload itself (10 KiB from 8 clients: 10 to 45 % fewer per second).
// An estimate lives [`ESTIMATE_FOR`]; it is never what refuses (see [`check`]), and
// the CHECKs of the commit hold the quota whatever it says.

/// How long an estimate is used before the usage is read again.
const ESTIMATE_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The most tenants with an estimate; past it, the expired ones go first.
const MAX_ESTIMATES: usize = 10_000;

/// `tenant`'s estimate, unless it expired.
fn estimate(app: &App, tenant: &str) -> Option<Usage> {
    let estimates = estimates(app);
    let (usage, read) = estimates.get(tenant)?;
    (read.elapsed() < ESTIMATE_FOR).then(|| Usage {
        tenant_id: tenant.to_owned(),
        bytes: usage.bytes,
        files: usage.files,
        quota_bytes: usage.quota_bytes,
        quota_files: usage.quota_files,
        own_quota: false,
    })
}

fn keep_estimate(app: &App, usage: &Usage) {
    let mut estimates = estimates(app);
    if estimates.len() >= MAX_ESTIMATES {
        estimates.retain(|_, (_, read)| read.elapsed() < ESTIMATE_FOR);
    }
    if estimates.len() < MAX_ESTIMATES {
        let kept = QuotaUsage {
            bytes: usage.bytes,
            files: usage.files,
            quota_bytes: usage.quota_bytes,
            quota_files: usage.quota_files,
        };
        estimates.insert(usage.tenant_id.clone(), (kept, std::time::Instant::now()));
    }
}

fn estimates(app: &App) -> std::sync::MutexGuard<'_, HashMap<String, (QuotaUsage, Instant)>> {
    app.usage_estimates
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts again whether some tenant has a quota of its own (see
/// [`App::own_quotas_exist`]); one set meanwhile is enforced all the same, by the
/// CHECKs, only without the early read.
pub async fn refresh_own_quotas(app: &App) -> Result<(), DbErr> {
    let own = Entity::find()
        .filter(
            Condition::any()
                .add(Column::QuotaBytes.is_not_null())
                .add(Column::QuotaFiles.is_not_null()),
        )
        .count(app.db.read())
        .await?;
    app.own_quotas_exist.store(own > 0, Ordering::Relaxed);
    Ok(())
}

/// Adds `bytes` and `files` to `tenant`'s usage in `writes`, with the limit that the
/// row's CHECKs hold it to: its own quota, else `defaults`. Uploads of the tenant
/// that commit together add their sum once ([`Writes::add_to`]).
pub fn grow(writes: &mut Writes, defaults: &QuotaConfig, tenant: &str, bytes: i64, files: i64) {
    let limits = limits(defaults);
    let key = tenant.to_owned();
    writes.add_to(tenant, [bytes, files], move |backend, amounts| {
        grow_statement(backend, &key, amounts, limits)
    });
}

/// The upsert of [`grow`], for its sum of `bytes` and `files`.
fn grow_statement(
    backend: DbBackend,
    tenant: &str,
    [bytes, files]: [i64; 2],
    (default_bytes, default_files): (Option<i64>, Option<i64>),
) -> Statement {
    let insert = Query::insert()
        .into_table(Entity)
        .columns([
            Column::TenantId,
            Column::Bytes,
            Column::Files,
            Column::LimitBytes,
            Column::LimitFiles,
        ])
        .values_panic([
            tenant.into(),
            bytes.into(),
            files.into(),
            default_bytes.into(),
            default_files.into(),
        ])
        .on_conflict(
            OnConflict::column(Column::TenantId)
                .values([
                    (
                        Column::Bytes,
                        Expr::cust("tenant_usage.bytes + excluded.bytes"),
                    ),
                    (
                        Column::Files,
                        Expr::cust("tenant_usage.files + excluded.files"),
                    ),
                    (
                        Column::LimitBytes,
                        Expr::cust("COALESCE(tenant_usage.quota_bytes, excluded.limit_bytes)"),
                    ),
                    (
                        Column::LimitFiles,
                        Expr::cust("COALESCE(tenant_usage.quota_files, excluded.limit_files)"),
                    ),
                ])
                .to_owned(),
        )
        .to_owned();
    backend.build(&insert)
}

/// The statement that takes `bytes` and `files` off `tenant`'s usage (a delete, an
/// expired direct upload): never refused, and the warning is cleared once the
/// tenant is back under [`WARN_PERCENT`] of its limits.
pub fn shrink(
    backend: DbBackend,
    defaults: &QuotaConfig,
    tenant: &str,
    bytes: i64,
    files: i64,
) -> Statement {
    let still_near = near_limit_sql(
        defaults,
        &format!("bytes - {bytes}"),
        &format!("files - {files}"),
    );
    let update = Query::update()
        .table(Entity)
        .value(Column::Bytes, Expr::cust(format!("bytes - {bytes}")))
        .value(Column::Files, Expr::cust(format!("files - {files}")))
        .value(Column::LimitBytes, Expr::cust("NULL"))
        .value(Column::LimitFiles, Expr::cust("NULL"))
        .value(
            Column::Warned,
            Expr::cust(format!("CASE WHEN {still_near} THEN warned ELSE FALSE END")),
        )
        .and_where(Column::TenantId.eq(tenant))
        .to_owned();
    backend.build(&update)
}

/// SQL that holds when `bytes` or `files` (expressions over a `tenant_usage` row) are
/// at least [`WARN_PERCENT`] of the limits that apply.
fn near_limit_sql(defaults: &QuotaConfig, bytes: &str, files: &str) -> String {
    let (default_bytes, default_files) = limits(defaults);
    let limit = |own: &str, default: Option<i64>| match default {
        Some(default) => format!("COALESCE({own}, {default})"),
        None => own.to_owned(),
    };
    let near = |used: &str, limit: String| {
        // Decimal (PostgreSQL) or real (SQLite) arithmetic: in BIGINT a limit near
        // the 8 EiB a quota may be would overflow, failing every delete of its tenant.
        format!("({limit} IS NOT NULL AND ({used}) * 100.0 >= {limit} * {WARN_PERCENT}.0)")
    };
    format!(
        "({} OR {})",
        near(bytes, limit("quota_bytes", default_bytes)),
        near(files, limit("quota_files", default_files))
    )
}

/// Whether `err` is the refusal of [`grow`]'s CHECKs.
pub fn is_refusal(err: &DbErr) -> bool {
    let text = err.to_string();
    text.contains("quota_bytes_exceeded") || text.contains("quota_files_exceeded")
}

/// The refusal of an upload of `bytes` in `files` files whose commit the CHECKs
/// refused, with the usage as it stands now; any other error as it is.
pub async fn refusal_or(app: &App, tenant: &str, err: DbErr, bytes: i64, files: i64) -> AppError {
    if !is_refusal(&err) {
        return err.into();
    }
    match usage(&app.db, &app.config.quotas, tenant).await {
        Ok(usage) => usage.refusal(bytes, files),
        Err(read) => read.into(),
    }
}

/// What `tenant.quota_warning` carries.
#[derive(Serialize)]
struct Warning<'a> {
    #[serde(flatten)]
    usage: &'a Usage,
    percent: f64,
    /// The upload that brought the tenant past the threshold.
    file_id: uuid::Uuid,
}

/// After an upload of `row`'s tenant committed: when the tenant is now past
/// [`WARN_PERCENT`] of a limit and was not yet told, marks it warned and records
/// `tenant.quota_warning`, in one transaction, so one crossing makes one event
/// whatever the concurrency. The mark checks the usage again under its row lock,
/// and the event carries what it saw: a delete since the first read (back under
/// the threshold) makes no warning, and leaves the next crossing its own.
pub async fn warn_if_near(app: &App, row: &attachment::Model) -> Result<(), DbErr> {
    let defaults = &app.config.quotas;
    let early = usage(&app.db, defaults, &row.tenant_id).await?;
    if early
        .percent()
        .is_none_or(|percent| percent < WARN_PERCENT as f64)
    {
        return Ok(());
    }
    let txn = app.db.begin().await?;
    let backend = txn.get_database_backend();
    let mark = Query::update()
        .table(Entity)
        .value(Column::Warned, true)
        .and_where(Column::TenantId.eq(row.tenant_id.as_str()))
        .and_where(Column::Warned.eq(false))
        .and_where(Expr::cust(near_limit_sql(defaults, "bytes", "files")))
        .to_owned();
    if txn.execute(&mark).await?.rows_affected() == 0 {
        return Ok(());
    }
    let marked = Entity::find_by_id(row.tenant_id.clone()).one(&txn).await?;
    let usage = Usage::of(marked, &row.tenant_id, defaults);
    // The mark matched a limit, so there is a share; the mark commits either way.
    if let Some(percent) = usage.percent() {
        let data = Warning {
            usage: &usage,
            percent,
            file_id: row.id,
        };
        let mut writes = Writes::new(backend);
        crate::events::record_with(
            &mut writes,
            &app.webhooks,
            EventType::QuotaWarning,
            row,
            &data,
        )?;
        crate::db::execute_all(&txn, writes.statements()).await?;
    }
    txn.commit().await
}

/// How many tenants are past [`WARN_PERCENT`] of a limit, for the metrics.
pub async fn tenants_near_limit(db: &Database, defaults: &QuotaConfig) -> Result<u64, DbErr> {
    Entity::find()
        .filter(Expr::cust(near_limit_sql(defaults, "bytes", "files")))
        .count(db.read())
        .await
}

/// Every tenant with a usage row, by id: `attache tenant list`. Sorted here, byte by
/// byte: PostgreSQL's order follows the database's collation (`a A b B` under
/// en-US), SQLite's the bytes (`A B a b`).
pub async fn list(db: &Database, defaults: &QuotaConfig) -> Result<Vec<Usage>, DbErr> {
    let mut rows = Entity::find().all(db.read()).await?;
    rows.sort_unstable_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    Ok(rows
        .into_iter()
        .map(|row| {
            let tenant = row.tenant_id.clone();
            Usage::of(Some(row), &tenant, defaults)
        })
        .collect())
}

/// Sets `tenant`'s own limits: each one given replaces the current one, `None`
/// leaves it; [`unset_quota`] goes back to the default.
pub async fn set_quota(
    db: &Database,
    tenant: &str,
    bytes: Option<i64>,
    files: Option<i64>,
) -> Result<(), DbErr> {
    let given: Vec<_> = [(Column::QuotaBytes, bytes), (Column::QuotaFiles, files)]
        .into_iter()
        .filter_map(|(column, limit)| limit.map(|limit| (column, limit)))
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    let mut columns = vec![Column::TenantId];
    let mut values = vec![tenant.into()];
    for (column, limit) in &given {
        columns.push(*column);
        values.push((*limit).into());
    }
    let upsert = Query::insert()
        .into_table(Entity)
        .columns(columns)
        .values_panic(values)
        .on_conflict(
            OnConflict::column(Column::TenantId)
                .update_columns(given.iter().map(|(column, _)| *column))
                .to_owned(),
        )
        .to_owned();
    db.commit(vec![db.backend().build(&upsert)]).await
}

/// `tenant` back on the default limits; whether it had limits of its own.
pub async fn unset_quota(db: &Database, tenant: &str) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    let update = Query::update()
        .table(Entity)
        .value(Column::QuotaBytes, Expr::cust("NULL"))
        .value(Column::QuotaFiles, Expr::cust("NULL"))
        .and_where(Column::TenantId.eq(tenant))
        .and_where(
            Expr::col(Column::QuotaBytes)
                .is_not_null()
                .or(Expr::col(Column::QuotaFiles).is_not_null()),
        )
        .to_owned();
    let changed = txn.execute(&update).await?.rows_affected() > 0;
    txn.commit().await?;
    Ok(changed)
}

/// One tenant's usage as counted again from the rows, beside what was recorded.
#[derive(Debug, PartialEq, Eq)]
pub struct Recount {
    pub tenant_id: String,
    /// Bytes and files; `None` where the tenant had no usage row.
    pub recorded: Option<(i64, i64)>,
    pub counted: (i64, i64),
}

/// Counts every tenant's (or one tenant's) bytes and files again from the attachment
/// rows and the pending direct uploads, and corrects the usage rows that drifted;
/// returns the corrections. One transaction that no change of usage interleaves
/// with: on PostgreSQL the usage table is locked first (every upload, delete and
/// direct upload's reservation writes it) and the counts read one snapshot, so a
/// completion that moves a row between the two tables is counted once.
pub async fn recompute(db: &Database, tenant: Option<&str>) -> Result<Vec<Recount>, DbErr> {
    use std::collections::BTreeMap;
    let txn = db
        .begin_excluding_writers_of(sea_orm::EntityName::table_name(&Entity))
        .await?;
    let mut counted: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let attachments =
        stored_by_tenant::<attachment::Entity>(&txn, attachment::Column::TenantId, tenant).await?;
    let pending =
        stored_by_tenant::<direct_upload::Entity>(&txn, direct_upload::Column::TenantId, tenant)
            .await?;
    for (tenant, bytes, files) in attachments.into_iter().chain(pending) {
        let sum = counted.entry(tenant).or_default();
        *sum = (sum.0 + bytes, sum.1 + files);
    }
    let mut recorded: BTreeMap<String, Option<(i64, i64)>> = Entity::find()
        .apply_if(tenant, |query, tenant| {
            query.filter(Column::TenantId.eq(tenant))
        })
        .all(&txn)
        .await?
        .into_iter()
        .map(|row| (row.tenant_id, Some((row.bytes, row.files))))
        .collect();
    for tenant in counted.keys() {
        recorded.entry(tenant.clone()).or_insert(None);
    }
    let mut corrections = Vec::new();
    for (tenant, recorded) in recorded {
        let counted = counted.get(&tenant).copied().unwrap_or_default();
        if recorded == Some(counted) {
            continue;
        }
        let upsert = Query::insert()
            .into_table(Entity)
            .columns([Column::TenantId, Column::Bytes, Column::Files])
            .values_panic([tenant.as_str().into(), counted.0.into(), counted.1.into()])
            .on_conflict(
                OnConflict::column(Column::TenantId)
                    .update_columns([Column::Bytes, Column::Files])
                    .value(Column::LimitBytes, Expr::cust("NULL"))
                    .value(Column::LimitFiles, Expr::cust("NULL"))
                    .to_owned(),
            )
            .to_owned();
        txn.execute(&upsert).await?;
        corrections.push(Recount {
            tenant_id: tenant,
            recorded,
            counted,
        });
    }
    txn.commit().await?;
    Ok(corrections)
}

/// Bytes and files per tenant in the rows of `E` (attachments, or direct uploads
/// still pending, which reserve their declared size): `(tenant, bytes, files)`.
async fn stored_by_tenant<E: EntityTrait>(
    txn: &Transaction,
    tenant_column: E::Column,
    tenant: Option<&str>,
) -> Result<Vec<(String, i64, i64)>, DbErr> {
    E::find()
        .select_only()
        .column(tenant_column)
        .column_as(Expr::cust("CAST(SUM(byte_size) AS BIGINT)"), "bytes")
        .column_as(Expr::cust("COUNT(*)"), "files")
        .apply_if(tenant, |query, tenant| {
            query.filter(tenant_column.eq(tenant))
        })
        .group_by(tenant_column)
        .into_tuple()
        .all(txn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(bytes: i64, files: i64, quota: (Option<i64>, Option<i64>)) -> Usage {
        Usage {
            bytes,
            files,
            quota_bytes: quota.0,
            quota_files: quota.1,
            ..Usage::default()
        }
    }

    #[test]
    fn a_share_is_the_larger_of_bytes_and_files() {
        assert_eq!(usage(5, 1, (None, None)).percent(), None);
        assert_eq!(usage(50, 9, (Some(100), Some(10))).percent(), Some(90.0));
        assert_eq!(usage(50, 9, (Some(100), None)).percent(), Some(50.0));
        assert!(usage(50, 9, (Some(100), Some(10))).would_pass(0, 2));
        assert!(!usage(50, 9, (Some(100), Some(10))).would_pass(50, 1));
        assert!(usage(50, 9, (Some(100), Some(10))).would_pass(51, 1));
    }
}
