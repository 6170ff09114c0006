//! The events dispatcher, beside the HTTP server: claims due deliveries, POSTs each
//! signed event to its receiver and records the outcome.
//!
//! A claim is one statement that marks due records with a fresh token and a lease
//! (`claimed_until`); on PostgreSQL its inner select takes the rows `FOR UPDATE SKIP
//! LOCKED`, so dispatchers of several replicas never claim the same record, and the
//! lease outlives the request timeout, so a record is never sent twice at once. A
//! replica killed mid-delivery leaves a lease that lapses; another replica then sends
//! the event again with the same `webhook-id` (at least once). SQLite serves a single
//! process. A record is not due while an earlier event of the same attachment is
//! undelivered to the same receiver, so receivers see an attachment's events in order.
//! A receiver found down is paused and probed ([`pause`]).

mod pause;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use entity::attachment;
use entity::outbox_event::{self, EventType};
use entity::webhook_delivery::{self, DeliveryStatus};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{
    ActiveEnum, ColumnTrait, Condition, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, Set, UpdateMany,
};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::SharedApp;
use crate::error::AppError;
use crate::events::{EventData, WebhookSecret, events_by_seq, later, redact_url};
use pause::{Change, ReceiverPause, Room, Verdict, Why};

/// Deliveries in flight to one receiver at once: enough to keep a fast receiver busy,
/// few enough that one that hangs cannot tie up the process.
const MAX_IN_FLIGHT_PER_RECEIVER: usize = 16;

/// What a claim adds to the request timeout: time to make the URL and record the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Most time the body may take to make (its `url` may read the database): well
/// inside [`LEASE_MARGIN`], so the claim outlasts the request that follows.
const BODY_DEADLINE: Duration = Duration::from_secs(2);

/// Most of a receiver's answer read, so that its connection serves the next delivery;
/// a longer answer closes the connection instead.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How long deliveries in flight may finish after shutdown; then they are abandoned
/// and their claims released.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The pause after a failed claim (the database is away): no busy loop of errors.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("cannot build the webhook HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Why an attempt did not arrive; its message becomes the delivery's `last_error`.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the stored event cannot be read or encoded: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("cannot make the file's url: {}", chain(.0))]
    Url(AppError),
    #[error("making the body took over {} s (the database is slow)", BODY_DEADLINE.as_secs())]
    SlowBody,
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// Without its URL, which may carry a token.
    #[error("{}", chain(.0))]
    Transport(reqwest::Error),
    /// With the wait its `Retry-After` asks for (on 429 and 503).
    #[error("the receiver answered HTTP {0}")]
    Status(reqwest::StatusCode, Option<Duration>),
    /// 410: the receiver asks for no more deliveries; the delivery fails at once.
    #[error("the receiver answered HTTP 410 Gone: it takes no more deliveries")]
    Gone,
}

/// A `Retry-After` value: seconds, or an HTTP date in any of its three forms (RFC
/// 9110 §10.2.3; RFC 850's and asctime's were ignored).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    (crate::http_date::parse(value)? - Utc::now()).to_std().ok()
}

/// An error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Delivers events to every receiver of `WEBHOOK_URLS`.
pub struct Dispatcher {
    app: SharedApp,
    client: reqwest::Client,
    secret: WebhookSecret,
    lease: Duration,
    receivers: Vec<Arc<Slot>>,
}

/// One receiver, its deliveries in flight and whether it is paused.
struct Slot {
    url: String,
    in_flight: AtomicUsize,
    pause: ReceiverPause,
}

/// Counts a delivery in flight until dropped.
struct InFlight(Arc<Slot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    /// Logs and counts a change of the receiver's state.
    fn changed(&self, change: Option<Change>) {
        let Some(change) = change else {
            return;
        };
        let receiver = redact_url(&self.url);
        let ms = |pause: Duration| u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        match change {
            Change::Paused(pause, Why::Down) => {
                crate::telemetry::webhook_receiver_paused(true);
                tracing::warn!(%receiver, pause_ms = ms(pause),
                    "webhook receiver is down; its deliveries are paused, then one is sent to probe it");
            }
            Change::Paused(pause, Why::Refusing) => {
                crate::telemetry::webhook_receiver_paused(true);
                tracing::warn!(%receiver, pause_ms = ms(pause),
                    "webhook receiver refuses every delivery (check its URL and WEBHOOK_SECRET); \
                     its deliveries are paused, then one is sent to probe it");
            }
            Change::StillFailing(pause) => {
                tracing::warn!(%receiver, pause_ms = ms(pause),
                    "webhook receiver still fails; its deliveries stay paused");
            }
            Change::Resumed => {
                crate::telemetry::webhook_receiver_paused(false);
                tracing::info!(%receiver, "webhook receiver answers again; its deliveries resume");
            }
            Change::NothingDue => {
                crate::telemetry::webhook_receiver_paused(false);
                tracing::info!(%receiver, "webhook receiver has nothing due to probe with; its deliveries are no longer paused");
            }
        }
    }
}

/// One claimed delivery and the event it carries.
struct Claimed {
    delivery: webhook_delivery::Model,
    event: outbox_event::Model,
    token: Uuid,
}

/// The JSON body of SPEC 10.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    event_type: String,
    timestamp: String,
    data: &'a serde_json::Value,
}

impl Dispatcher {
    /// `None` when no receiver is configured: nothing to deliver.
    pub fn new(app: SharedApp) -> Result<Option<Self>, DispatchError> {
        let webhooks = &app.webhooks;
        let Some(secret) = webhooks.secret.clone() else {
            return Ok(None);
        };
        if webhooks.receivers.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(webhooks.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("attache/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DispatchError::Client)?;
        let receivers = webhooks
            .receivers
            .iter()
            .map(|url| {
                Arc::new(Slot {
                    url: url.clone(),
                    in_flight: AtomicUsize::new(0),
                    pause: ReceiverPause::new(webhooks.backoff),
                })
            })
            .collect();
        Ok(Some(Self {
            lease: webhooks.timeout + LEASE_MARGIN,
            app,
            client,
            secret,
            receivers,
        }))
    }

    /// Claims and delivers until `shutdown`, then lets deliveries in flight finish
    /// (for at most [`SHUTDOWN_GRACE`]) and releases the claims of the rest.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let abandon = CancellationToken::new();
        let mut tasks = JoinSet::new();
        loop {
            let pause = match this.claim_round(&mut tasks, &abandon).await {
                Ok(true) => Duration::ZERO,
                Ok(false) => this.app.webhooks.poll_interval,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim webhook deliveries");
                    ERROR_PAUSE
                }
            };
            // Every delivery that ended, reaped: a turn claims up to 16 per receiver
            // and the select below reaps one, so during a backlog the ended tasks
            // piled up (some 4.5 KB each: 1 GB over 200,000 deliveries).
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        let finish = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
            abandon.cancel();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Claims what each receiver has room for and starts those deliveries; `true`
    /// when a receiver got all it asked for, so more may be due at once.
    async fn claim_round(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        abandon: &CancellationToken,
    ) -> Result<bool, DbErr> {
        let mut more = false;
        for slot in &self.receivers {
            let in_flight = slot.in_flight.load(Ordering::Acquire);
            let free = MAX_IN_FLIGHT_PER_RECEIVER.saturating_sub(in_flight);
            let room = slot.pause.room(free, in_flight, Instant::now());
            let limit = match room {
                Room::Free(0) | Room::None => continue,
                Room::Free(free) => free,
                Room::Probe => 1,
            };
            let claimed = self.claim(&slot.url, limit).await?;
            if room == Room::Probe {
                slot.changed(slot.pause.probed(!claimed.is_empty()));
            }
            more |= claimed.len() == limit;
            for claimed in claimed {
                slot.in_flight.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight(slot.clone());
                let this = self.clone();
                let abandon = abandon.clone();
                tasks.spawn(async move {
                    this.deliver(claimed, &guard.0, abandon).await;
                    drop(guard);
                });
            }
        }
        Ok(more)
    }

    /// Marks up to `limit` due deliveries to `receiver` with a fresh token and a lease,
    /// then reads them back with their events.
    async fn claim(&self, receiver: &str, limit: usize) -> Result<Vec<Claimed>, DbErr> {
        let db = &self.app.db;
        let now = Utc::now();
        let token = Uuid::now_v7();
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let claim = claim_statement(receiver, limit, now, token, later(now, self.lease));
        let txn = db.begin().await?;
        let marked = claim.exec(&txn).await?;
        txn.commit().await?;
        if marked.rows_affected == 0 {
            return Ok(Vec::new());
        }
        let deliveries = claimed_by(token).all(db.read()).await?;
        let mut events = events_by_seq(db.read(), &deliveries).await?;
        Ok(deliveries
            .into_iter()
            .filter_map(|delivery| {
                let event = events.remove(&delivery.event_seq)?;
                Some(Claimed {
                    delivery,
                    event,
                    token,
                })
            })
            .collect())
    }

    /// One attempt and its bookkeeping; abandoned at shutdown, the claim is released.
    async fn deliver(&self, claimed: Claimed, slot: &Slot, abandon: CancellationToken) {
        let outcome = tokio::select! {
            outcome = self.attempt(&claimed) => outcome,
            () = abandon.cancelled() => {
                if let Err(err) = self.release(&claimed).await {
                    tracing::warn!(error = %err, "cannot release a webhook delivery; its lease will lapse");
                }
                return;
            }
        };
        slot.changed(slot.pause.record(verdict(&outcome), Instant::now()));
        if let Err(err) = self.record_outcome(&claimed, outcome).await {
            tracing::warn!(error = %err, "cannot record a webhook delivery; it will be sent again");
        }
    }

    /// Makes the body, signs it and POSTs it.
    async fn attempt(&self, claimed: &Claimed) -> Result<(), AttemptError> {
        let event = &claimed.event;
        let body = tokio::time::timeout(BODY_DEADLINE, self.body(event))
            .await
            .map_err(|_| AttemptError::SlowBody)??;
        let msg_id = event.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = self.secret.sign(&msg_id, timestamp, &body);
        let response = self
            .client
            .post(claimed.delivery.receiver.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|err| {
                if err.is_timeout() {
                    AttemptError::Timeout(self.app.webhooks.timeout.as_secs())
                } else {
                    AttemptError::Transport(err.without_url())
                }
            })?;
        let status = response.status();
        let asked = matches!(
            status,
            reqwest::StatusCode::TOO_MANY_REQUESTS | reqwest::StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| response.headers().get(reqwest::header::RETRY_AFTER))
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(retry_after);
        drain(response).await;
        match status {
            status if status.is_success() => Ok(()),
            reqwest::StatusCode::GONE => Err(AttemptError::Gone),
            status => Err(AttemptError::Status(status, asked)),
        }
    }

    /// The signed body: the stored `data`, plus for `file.stored` a `url` made now,
    /// unless the file has been deleted since: a late delivery hands out no link to
    /// a file that only `DELETED_FILES_RETENTION` keeps.
    async fn body(&self, event: &outbox_event::Model) -> Result<Vec<u8>, AttemptError> {
        let data = if event.event_type == EventType::Stored {
            let mut data: EventData = serde_json::from_str(&event.payload)?;
            let row = data.attachment(&event.storage_key, event.created_at);
            let still_there = crate::attachments::find_by_key(&self.app, &row.storage_key)
                .await
                .map_err(AttemptError::Url)?
                .is_some();
            if still_there {
                let ttl = self.app.config.url_ttl();
                let url = crate::attachments::urls::browser_url(&self.app, &row, ttl)
                    .await
                    .map_err(AttemptError::Url)?;
                data.url = Some(url);
            }
            serde_json::to_value(data)?
        } else {
            serde_json::from_str(&event.payload)?
        };
        let body = Body {
            event_type: event.event_type.to_value(),
            timestamp: event.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            data: &data,
        };
        Ok(serde_json::to_vec(&body)?)
    }

    /// Delivered, or one more failed attempt: retried after the backoff, or `failed`
    /// after the last. Only while the claim is still this one.
    async fn record_outcome(
        &self,
        claimed: &Claimed,
        outcome: Result<(), AttemptError>,
    ) -> Result<(), DbErr> {
        use webhook_delivery::Column;
        let webhooks = &self.app.webhooks;
        let delivery = &claimed.delivery;
        let receiver = redact_url(&delivery.receiver);
        let now = Utc::now();
        let attempts = delivery.attempts.saturating_add(1);
        let mut update = webhook_delivery::ActiveModel {
            attempts: Set(attempts),
            claimed_by: Set(None),
            claimed_until: Set(None),
            ..Default::default()
        };
        // When the attachment's later deliveries to this receiver may go at the
        // earliest: after this one's retry, or once it is sent again by hand.
        let mut later_wait = None;
        match outcome {
            Ok(()) => {
                tracing::debug!(event = %claimed.event.id, %receiver, "webhook delivered");
                crate::telemetry::webhook_attempt("delivered");
                update.status = Set(DeliveryStatus::Delivered);
                update.delivered_at = Set(Some(now));
                update.last_error = Set(None);
            }
            Err(reason) => {
                let failures = u32::try_from(attempts).unwrap_or(u32::MAX);
                let last = webhooks.max_attempts.is_some_and(|max| failures >= max);
                if last || matches!(reason, AttemptError::Gone) {
                    crate::telemetry::webhook_attempt("failed");
                    tracing::error!(event = %claimed.event.id, %receiver, attempts, error = %reason,
                        "webhook delivery failed for good; `attache events retry` sends it again");
                    update.status = Set(DeliveryStatus::Failed);
                    later_wait = Some(crate::events::parked());
                } else {
                    crate::telemetry::webhook_attempt("retry");
                    let delay = match reason {
                        AttemptError::Status(_, Some(asked)) => webhooks.backoff.asked(asked),
                        _ => webhooks.backoff.delay(failures, rand::random()),
                    };
                    tracing::warn!(event = %claimed.event.id, %receiver, attempts, error = %reason,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "webhook delivery failed; retrying");
                    let next = later(now, delay);
                    later_wait = Some(next);
                    update.next_attempt_at = Set(next);
                }
                update.last_error = Set(Some(reason.to_string()));
            }
        }
        let txn = self.app.db.begin().await?;
        let updated = webhook_delivery::Entity::update_many()
            .set(update)
            .filter(Column::Id.eq(delivery.id))
            .filter(Column::ClaimedBy.eq(claimed.token))
            .exec(&txn)
            .await?;
        if let Some(next) = later_wait.filter(|_| updated.rows_affected > 0) {
            // The later deliveries of the attachment to this receiver wait as long:
            // held back but due, every claim walked them (50,000 made a claim 102 ms).
            webhook_delivery::Entity::update_many()
                .col_expr(Column::NextAttemptAt, Expr::value(next))
                .filter(Column::AttachmentId.eq(delivery.attachment_id))
                .filter(Column::Receiver.eq(delivery.receiver.as_str()))
                .filter(Column::EventSeq.gt(delivery.event_seq))
                .filter(Column::Status.eq(DeliveryStatus::Pending))
                .filter(Column::NextAttemptAt.lt(next))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        if updated.rows_affected == 0 {
            tracing::warn!(event = %claimed.event.id, %receiver, "a webhook delivery outlived its claim; it may be sent again");
        }
        Ok(())
    }

    /// Gives an unfinished delivery back at once, for any dispatcher to take.
    async fn release(&self, claimed: &Claimed) -> Result<(), DbErr> {
        use webhook_delivery::Column;
        let release = webhook_delivery::Entity::update_many()
            .set(webhook_delivery::ActiveModel {
                claimed_by: Set(None),
                claimed_until: Set(None),
                ..Default::default()
            })
            .filter(Column::Id.eq(claimed.delivery.id))
            .filter(Column::ClaimedBy.eq(claimed.token))
            .build(self.app.db.backend());
        self.app.db.commit(vec![release]).await
    }
}

/// What an attempt's outcome says about its receiver: no connection, no answer in
/// time, 408, 429, 502, 503 and 504 say it is down or overloaded; any other answer
/// that refuses the event (a 4xx, a 3xx, 500: a bug in one of its handlers, most
/// often) says it is there.
fn verdict(outcome: &Result<(), AttemptError>) -> Verdict {
    use reqwest::StatusCode;
    match outcome {
        Ok(()) | Err(AttemptError::Gone) => Verdict::Up,
        Err(AttemptError::Timeout(_) | AttemptError::Transport(_)) => Verdict::Down { asked: None },
        Err(AttemptError::Status(status, asked)) => match *status {
            StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Verdict::Down { asked: *asked },
            _ => Verdict::Refused,
        },
        Err(AttemptError::Payload(_) | AttemptError::Url(_) | AttemptError::SlowBody) => {
            Verdict::Unknown
        }
    }
}

/// Reads a receiver's answer up to [`MAX_ANSWER_BYTES`] (within the request's
/// timeout), so its connection goes back to the pool for the next delivery.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read <= MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The deliveries a claim marked with `token`, read back through their index.
fn claimed_by(token: Uuid) -> Select<webhook_delivery::Entity> {
    use webhook_delivery::Column;
    webhook_delivery::Entity::find()
        .filter(Column::ClaimedBy.eq(token))
        .order_by_asc(Column::EventSeq)
}

/// Marks with `token` until `until` the first `limit` deliveries to `receiver` that
/// are due, unclaimed (or whose claim lapsed) and not held back by an undelivered
/// earlier event of the same attachment; the longest due first, in the order of the
/// receiver's due index, so the scan stops after `limit` rows: in `event_seq` order
/// it read and sorted every due row, and on SQLite, under the write lock, a backlog
/// of 150,000 made each claim 155 ms and every upload wait as long. The inner select locks its rows `FOR UPDATE
/// SKIP LOCKED` (PostgreSQL; SQLite has one writer at a time and no such clause), so
/// concurrent claims of several replicas take disjoint rows.
fn claim_statement(
    receiver: &str,
    limit: u64,
    now: DateTime<Utc>,
    token: Uuid,
    until: DateTime<Utc>,
) -> UpdateMany<webhook_delivery::Entity> {
    use webhook_delivery::{Column, Entity};
    let earlier = "earlier";
    let held_back = Query::select()
        .expr(Expr::val(1))
        .from_as(Entity, earlier)
        .and_where(
            Expr::col((earlier, Column::AttachmentId)).equals((Entity, Column::AttachmentId)),
        )
        .and_where(Expr::col((earlier, Column::Receiver)).equals((Entity, Column::Receiver)))
        .and_where(Expr::col((earlier, Column::EventSeq)).lt(Expr::col((Entity, Column::EventSeq))))
        .and_where(Expr::col((earlier, Column::Status)).ne(DeliveryStatus::Delivered))
        .to_owned();
    let due = Entity::find()
        .select_only()
        .column(Column::Id)
        .filter(Column::Receiver.eq(receiver))
        .filter(Column::Status.eq(DeliveryStatus::Pending))
        .filter(Column::NextAttemptAt.lte(now))
        .filter(
            Condition::any()
                .add(Column::ClaimedUntil.is_null())
                .add(Column::ClaimedUntil.lt(now)),
        )
        .filter(Expr::not_exists(held_back))
        .order_by_asc(Column::NextAttemptAt)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .into_query();
    Entity::update_many()
        .set(webhook_delivery::ActiveModel {
            claimed_by: Set(Some(token)),
            claimed_until: Set(Some(until)),
            ..Default::default()
        })
        .filter(Column::Id.in_subquery(due))
}

impl EventData {
    /// The attachment as it was when the event was written: what
    /// [`crate::attachments::urls::browser_url`] needs to link to it.
    fn attachment(
        &self,
        storage_key: &str,
        created_at: chrono::DateTime<Utc>,
    ) -> attachment::Model {
        attachment::Model {
            id: self.file_id,
            tenant_id: self.tenant_id.clone(),
            owner_type: self.owner_type.clone(),
            owner_id: self.owner_id.clone(),
            filename: self.original_filename.clone(),
            content_type: self.content_type.clone(),
            byte_size: self.size_bytes,
            sha256: self.sha256.clone(),
            storage_key: storage_key.to_owned(),
            created_by: String::new(),
            created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::DbBackend;

    use super::*;

    /// RFC 9110 §10.2.3: seconds, or an HTTP date in any of its three forms.
    #[test]
    fn retry_after_takes_every_form_of_an_http_date() {
        let soon = Utc::now() + chrono::TimeDelta::minutes(10);
        for form in [
            crate::http_date::FORMAT,
            "%A, %d-%b-%y %H:%M:%S GMT",
            "%a %b %e %H:%M:%S %Y",
        ] {
            let asked = retry_after(&soon.format(form).to_string()).expect(form);
            assert!(
                asked > Duration::from_secs(590) && asked <= Duration::from_secs(600),
                "{form}: {asked:?}"
            );
        }
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn a_claim_skips_locked_rows_and_waits_for_earlier_events() {
        let now = Utc::now();
        let claim = claim_statement("http://receiver/hooks", 16, now, Uuid::now_v7(), now);
        let postgres = claim.clone().build(DbBackend::Postgres).to_string();
        assert!(postgres.contains("FOR UPDATE SKIP LOCKED"), "{postgres}");
        assert!(postgres.contains("NOT EXISTS"), "{postgres}");
        assert!(
            postgres.contains(r#""earlier"."event_seq" < "webhook_deliveries"."event_seq""#),
            "{postgres}"
        );
        let sqlite = claim.build(DbBackend::Sqlite).to_string();
        assert!(
            !sqlite.contains("FOR UPDATE") && sqlite.contains("LIMIT 16"),
            "{sqlite}"
        );
    }

    /// A claim reads the receiver's due deliveries in the order of their index and
    /// stops at its limit: sorted by `event_seq`, it read and sorted every due row
    /// (`USE TEMP B-TREE FOR ORDER BY`), under SQLite's write lock.
    #[tokio::test]
    async fn a_claim_stops_at_its_limit_in_the_due_index() {
        let now = Utc::now();
        let claim = claim_statement("http://receiver/hooks", 16, now, Uuid::now_v7(), now);
        let plans = crate::db::sqlite_plans(vec![claim.build(DbBackend::Sqlite)]).await;
        assert!(
            plans[0]
                .iter()
                .any(|step| step.contains("USING INDEX idx_webhook_deliveries_due")),
            "{plans:?}"
        );
        assert!(
            !plans[0].iter().any(|step| step.contains("TEMP B-TREE")),
            "{plans:?}"
        );
    }

    /// The read-back after a claim is a search of an index, not a scan of every
    /// delivery kept.
    #[tokio::test]
    async fn what_a_claim_marked_is_read_back_through_an_index() {
        let query = claimed_by(Uuid::now_v7()).build(DbBackend::Sqlite);
        let plans = crate::db::sqlite_plans(vec![query]).await;
        assert!(
            plans[0]
                .iter()
                .any(|step| step.contains("USING INDEX idx_webhook_deliveries_claimed_by")),
            "{plans:?}"
        );
    }
}
