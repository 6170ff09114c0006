//! serve's periodic housekeeping: retries object removals, removes expired direct
//! uploads and the spools a killed process left, and prunes delivered events. Replicas on one database take turns: a pass
//! runs on the replica that holds the `maintenance` lease of `worker_leases`, and a
//! lease whose holder died lapses after one period. Each step is safe to repeat, so
//! a pass that overruns its lease costs work, never correctness.

use std::time::Duration;

use chrono::Utc;
use entity::worker_lease;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, Condition, DbErr, EntityTrait, QueryFilter, Set};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{App, SharedApp};
use crate::attachments;
use crate::db::Database;

/// How often a pass runs, on one replica.
pub const PERIOD: Duration = Duration::from_secs(60);

const LEASE: &str = "maintenance";

/// Every [`PERIOD`] until `shutdown`: one pass, when this replica holds the lease.
pub async fn run(app: SharedApp, shutdown: CancellationToken) {
    let holder = Uuid::new_v4();
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // Every replica, lease or not: its own uploads read the answer.
        if let Err(err) = crate::quotas::refresh_own_quotas(&app).await {
            tracing::warn!(error = %err, "cannot count the tenants with a quota of their own");
        }
        match acquire(&app.db, LEASE, holder, PERIOD).await {
            Ok(true) => pass(&app, &shutdown).await,
            Ok(false) => tracing::debug!("another replica holds the maintenance lease"),
            Err(err) => tracing::warn!(error = %err, "cannot take the maintenance lease"),
        }
    }
}

/// How long each step of a pass may go on with batches of removals: both within the
/// lease, so that the passes of two replicas rarely overlap; what is left waits for
/// the next pass.
const STEP_BUDGET: Duration = Duration::from_secs(20);

/// One pass of every step; a failing step is logged and the others still run. A
/// shutdown ends it after the step under way (each step within its budget), so a
/// SIGTERM during a long pass does not take the whole shutdown grace.
pub async fn pass(app: &App, shutdown: &CancellationToken) {
    let intents = attachments::Abandoned::After(
        chrono::Utc::now() - attachments::intent_grace(app.config.connections.body_timeout()),
    );
    let until = || Some(tokio::time::Instant::now() + STEP_BUDGET);
    let retried = attachments::in_batches(until(), || attachments::retry_deletions(app, intents));
    if let Err(err) = retried.await {
        tracing::warn!(
            error = err.cause(),
            "retrying pending object deletions failed"
        );
    }
    if shutdown.is_cancelled() {
        return;
    }
    let expired = attachments::in_batches(until(), || attachments::direct::expire(app));
    if let Err(err) = expired.await {
        tracing::warn!(
            error = err.cause(),
            "removing expired direct uploads failed"
        );
    }
    if shutdown.is_cancelled() {
        return;
    }
    match attachments::sweep::abandoned_spools(app).await {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => tracing::info!(
            removed = removed.len(),
            "removed the spools of uploads that a killed process left"
        ),
        Err(err) => tracing::warn!(
            error = err.cause(),
            "removing abandoned upload spools failed"
        ),
    }
    if shutdown.is_cancelled() {
        return;
    }
    let cutoff = chrono::TimeDelta::from_std(app.webhooks.retention)
        .ok()
        .and_then(|retention| Utc::now().checked_sub_signed(retention))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    match crate::events::admin::prune(&app.db, cutoff, until()).await {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, "pruned delivered events past their retention"),
        Err(err) => tracing::warn!(error = %err, "pruning delivered events failed"),
    }
}

/// Takes the lease `name` for `ttl` when it is free or lapsed, or renews it when
/// `holder` has it; `false` while another holder's lease runs.
pub async fn acquire(
    db: &Database,
    name: &str,
    holder: Uuid,
    ttl: Duration,
) -> Result<bool, DbErr> {
    use worker_lease::Column;
    let now = Utc::now();
    let lease = worker_lease::ActiveModel {
        name: Set(name.to_owned()),
        holder: Set(holder),
        expires_at: Set(crate::events::later(now, ttl)),
    };
    let txn = db.begin().await?;
    let taken = worker_lease::Entity::update_many()
        .set(lease.clone())
        .filter(Column::Name.eq(name))
        .filter(
            Condition::any()
                .add(Column::ExpiresAt.lt(now))
                .add(Column::Holder.eq(holder)),
        )
        .exec(&txn)
        .await?;
    if taken.rows_affected > 0 {
        txn.commit().await?;
        return Ok(true);
    }
    // The first time: one of several replicas inserting at once wins.
    let inserted = worker_lease::Entity::insert(lease)
        .on_conflict(OnConflict::column(Column::Name).do_nothing().to_owned())
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(inserted > 0)
}
