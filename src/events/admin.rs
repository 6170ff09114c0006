//! What operators do with events: list deliveries (`attache events list`), send
//! failed ones again (`attache events retry`), and prune delivered events once they
//! are older than `EVENTS_RETENTION_DAYS` (serve's maintenance).

use chrono::{DateTime, Utc};
use entity::outbox_event::{self, EventType};
use entity::webhook_delivery::{self, DeliveryStatus};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use super::{events_by_seq, redact_url};
use crate::db::Database;

/// One delivery as an operator sees it; the receiver without its query string.
#[derive(Debug)]
pub struct DeliveryView {
    pub event_id: Uuid,
    pub event_type: EventType,
    pub attachment_id: Uuid,
    pub tenant_id: String,
    pub receiver: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Which deliveries `events list` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    All,
    /// Given up: `failed`, sent again only by `events retry`.
    Failed,
    /// Still `pending` after one failed attempt or more: being retried, and holding
    /// back the later events of their attachment for their receiver.
    Stuck,
}

/// The newest `limit` deliveries of `which` kind.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    which: Listed,
    limit: u64,
) -> Result<Vec<DeliveryView>, DbErr> {
    use webhook_delivery::Column;
    let all = webhook_delivery::Entity::find();
    let listed = match which {
        Listed::All => all,
        Listed::Failed => all.filter(Column::Status.eq(DeliveryStatus::Failed)),
        Listed::Stuck => all
            .filter(Column::Status.eq(DeliveryStatus::Pending))
            .filter(Column::Attempts.gt(0)),
    };
    let deliveries = listed
        .order_by_desc(Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    let events = events_by_seq(db, &deliveries).await?;
    Ok(deliveries
        .into_iter()
        .filter_map(|delivery| {
            let event = events.get(&delivery.event_seq)?;
            Some(DeliveryView {
                event_id: event.id,
                event_type: event.event_type,
                attachment_id: event.attachment_id,
                tenant_id: event.tenant_id.clone(),
                receiver: redact_url(&delivery.receiver),
                status: delivery.status,
                attempts: delivery.attempts,
                next_attempt_at: delivery.next_attempt_at,
                delivered_at: delivery.delivered_at,
                last_error: delivery.last_error,
            })
        })
        .collect())
}

/// Which failed deliveries to send again.
#[derive(Clone, Copy, Debug)]
pub enum RetryTarget {
    /// Those of one event, by its id (the `webhook-id` receivers saw).
    Event(Uuid),
    AllFailed,
}

/// Makes failed deliveries pending again, due now, with a fresh count of attempts,
/// and the later deliveries parked behind them due too (they go once these are
/// delivered: the held-back rule keeps the order); returns how many failed ones.
/// Run it in a transaction: the failed ones first, then the parked, so that on
/// PostgreSQL a failure committed between the two statements leaves its parked
/// deliveries due behind a visible failed one, never parked behind a pending one.
pub async fn retry<C: ConnectionTrait>(db: &C, target: RetryTarget) -> Result<u64, DbErr> {
    use webhook_delivery::{Column, Entity};
    let now = Utc::now();
    let mut update = Entity::update_many()
        .set(webhook_delivery::ActiveModel {
            status: Set(DeliveryStatus::Pending),
            attempts: Set(0),
            next_attempt_at: Set(now),
            claimed_by: Set(None),
            claimed_until: Set(None),
            ..Default::default()
        })
        .filter(Column::Status.eq(DeliveryStatus::Failed));
    let mut unpark = Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::value(now))
        .filter(Column::Status.eq(DeliveryStatus::Pending))
        .filter(Column::NextAttemptAt.gte(crate::events::parked()));
    if let RetryTarget::Event(id) = target {
        let Some(event) = outbox_event::Entity::find()
            .filter(outbox_event::Column::Id.eq(id))
            .one(db)
            .await?
        else {
            return Ok(0);
        };
        update = update.filter(Column::EventSeq.eq(event.seq));
        // Parked behind one of this event's deliveries just retried (pending, not
        // yet attempted, a failure on record): of its attachment, to its receiver.
        let retried = "retried";
        let behind = Query::select()
            .expr(Expr::val(1))
            .from_as(Entity, retried)
            .and_where(Expr::col((retried, Column::EventSeq)).eq(event.seq))
            .and_where(Expr::col((retried, Column::Status)).eq(DeliveryStatus::Pending))
            .and_where(Expr::col((retried, Column::Attempts)).eq(0))
            .and_where(Expr::col((retried, Column::LastError)).is_not_null())
            .and_where(
                Expr::col((retried, Column::AttachmentId)).equals((Entity, Column::AttachmentId)),
            )
            .and_where(Expr::col((retried, Column::Receiver)).equals((Entity, Column::Receiver)))
            .to_owned();
        unpark = unpark
            .filter(Column::EventSeq.gt(event.seq))
            .filter(Expr::exists(behind));
    }
    let retried = update.exec(db).await?.rows_affected;
    unpark.exec(db).await?;
    Ok(retried)
}

/// The seqs of the events written before `cutoff` that no delivery waits for, the
/// oldest first. Each event's deliveries are looked up through their index: `NOT
/// IN` the undelivered read every delivery, a million in a busy week, per batch.
fn prunable(cutoff: DateTime<Utc>) -> sea_orm::Select<outbox_event::Entity> {
    use webhook_delivery::Entity as Delivery;
    let waited_for = Query::select()
        .expr(Expr::val(1))
        .from(Delivery)
        .and_where(
            Expr::col((Delivery, webhook_delivery::Column::EventSeq))
                .equals((outbox_event::Entity, outbox_event::Column::Seq)),
        )
        .and_where(
            Expr::col((Delivery, webhook_delivery::Column::Status)).ne(DeliveryStatus::Delivered),
        )
        .to_owned();
    outbox_event::Entity::find()
        .select_only()
        .column(outbox_event::Column::Seq)
        .filter(outbox_event::Column::CreatedAt.lt(cutoff))
        .filter(Expr::not_exists(waited_for))
        .order_by_asc(outbox_event::Column::Seq)
}

/// Deletes events written before `cutoff` that nothing waits for any more (every
/// delivery delivered, or none), with their deliveries, batch after batch until
/// none is left or `until` has passed (what is left waits for the next pass);
/// returns how many events.
pub async fn prune(
    db: &Database,
    cutoff: DateTime<Utc>,
    until: Option<tokio::time::Instant>,
) -> Result<u64, DbErr> {
    const BATCH: u64 = 500;
    let mut pruned = 0;
    loop {
        let seqs: Vec<i64> = prunable(cutoff)
            .limit(BATCH)
            .into_tuple()
            .all(db.read())
            .await?;
        if seqs.is_empty() {
            return Ok(pruned);
        }
        let txn = db.begin().await?;
        webhook_delivery::Entity::delete_many()
            .filter(webhook_delivery::Column::EventSeq.is_in(seqs.iter().copied()))
            .exec(&txn)
            .await?;
        pruned += outbox_event::Entity::delete_many()
            .filter(outbox_event::Column::Seq.is_in(seqs.iter().copied()))
            .exec(&txn)
            .await?
            .rows_affected;
        txn.commit().await?;
        let out_of_time = until.is_some_and(|until| tokio::time::Instant::now() >= until);
        if (seqs.len() as u64) < BATCH || out_of_time {
            return Ok(pruned);
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;

    /// Pruning looks each old event's deliveries up through their index, never
    /// reading the whole deliveries table per batch.
    #[tokio::test]
    async fn pruning_reads_deliveries_through_their_index() {
        let query = prunable(Utc::now()).limit(500).build(DbBackend::Sqlite);
        let plans = crate::db::sqlite_plans(vec![query]).await;
        assert!(
            plans[0].iter().any(|step| {
                step.contains("USING INDEX idx_webhook_deliveries_undelivered")
                    || step.contains("USING INDEX idx_webhook_deliveries_event")
            }),
            "{plans:?}"
        );
        assert!(
            !plans[0]
                .iter()
                .any(|step| step.starts_with("SCAN webhook_deliveries")),
            "{plans:?}"
        );
    }
}
