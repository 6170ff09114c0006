//! Events (SPEC 10): every stored or deleted file is written to `outbox_events` in
//! the transaction of its attachment row ([`record`]), with one `webhook_deliveries`
//! record per receiver of `WEBHOOK_URLS`. The dispatcher (`workers::dispatcher`) beside the HTTP server
//! claims due deliveries, signs them the Standard Webhooks way and retries with
//! backoff; [`admin`] lists, retries and prunes them.

pub mod admin;
mod backoff;
mod signing;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::outbox_event::{self, EventType};
use entity::{attachment, webhook_delivery};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveEnum, ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    Set,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{ConfigError, EventsConfig};
use crate::db::Writes;
pub use backoff::Backoff;
pub use signing::WebhookSecret;

/// The events settings, checked: receivers, signing key and delivery timings.
#[derive(Debug)]
pub struct Webhooks {
    /// The URLs of `WEBHOOK_URLS`, in order.
    pub receivers: Vec<String>,
    /// Present whenever there are receivers.
    pub secret: Option<WebhookSecret>,
    pub timeout: Duration,
    /// Attempts before a delivery is `failed`; `None`: until a 2xx.
    pub max_attempts: Option<u32>,
    pub backoff: Backoff,
    pub poll_interval: Duration,
    pub retention: Duration,
}

impl Webhooks {
    /// Receivers must be http(s) URLs and need a well-formed `WEBHOOK_SECRET`: an
    /// event that nobody can verify is refused at startup rather than sent unsigned.
    pub fn from_config(config: &EventsConfig) -> Result<Self, ConfigError> {
        let mut receivers = Vec::new();
        for (index, url) in config.webhook_urls.iter().map(|url| url.trim()).enumerate() {
            if url.is_empty() {
                continue;
            }
            // Spaces are not a separator: two URLs would be one receiver.
            if url.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    "WEBHOOK_URLS",
                    format!(
                        "entry {} holds a space: separate receivers with commas",
                        index + 1
                    ),
                ));
            }
            let parsed = reqwest::Url::parse(url).ok();
            if !parsed.is_some_and(|url| matches!(url.scheme(), "http" | "https")) {
                return Err(ConfigError::new(
                    "WEBHOOK_URLS",
                    format!("entry {} is not an http or https URL", index + 1),
                ));
            }
            if !receivers.iter().any(|known| known == url) {
                receivers.push(url.to_owned());
            }
        }
        let secret = config
            .webhook_secret
            .as_ref()
            .map(|secret| WebhookSecret::parse(secret.expose()))
            .transpose()?;
        if !receivers.is_empty() && secret.is_none() {
            return Err(ConfigError::new(
                "WEBHOOK_SECRET",
                "required when WEBHOOK_URLS is set (receivers verify every event with it)",
            ));
        }
        Ok(Self {
            receivers,
            secret,
            timeout: Duration::from_secs(config.webhook_timeout_seconds),
            max_attempts: config.webhook_max_attempts,
            backoff: Backoff {
                base: Duration::from_millis(config.webhook_backoff_base_ms),
                max: Duration::from_secs(config.webhook_backoff_max_seconds),
            },
            poll_interval: Duration::from_millis(config.events_poll_interval_ms),
            retention: Duration::from_secs(u64::from(config.events_retention_days) * 24 * 3600),
        })
    }
}

/// The next attempt of a delivery parked behind an earlier one of its attachment
/// that failed for good: never due until `attache events retry` sends that one again.
/// Left due, every claim walked such deliveries and their held-back check.
pub fn parked() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `by` after `at`; saturating, though settings keep every such duration small.
pub fn later(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(by)
        .ok()
        .and_then(|by| at.checked_add_signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A receiver URL fit for logs and listings: no credentials, query or fragment,
/// which may carry a token.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The body's `data` (SPEC 10). Stored without `url`, which is made at delivery time
/// so that a late delivery still carries a link valid for `URL_TTL_SECONDS`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventData {
    pub file_id: Uuid,
    pub tenant_id: String,
    pub owner_type: String,
    pub owner_id: Option<String>,
    pub original_filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl From<&attachment::Model> for EventData {
    fn from(row: &attachment::Model) -> Self {
        Self {
            file_id: row.id,
            tenant_id: row.tenant_id.clone(),
            owner_type: row.owner_type.clone(),
            owner_id: row.owner_id.clone(),
            original_filename: row.filename.clone(),
            content_type: row.content_type.clone(),
            size_bytes: row.byte_size,
            sha256: row.sha256.clone(),
            url: None,
        }
    }
}

/// The events of `deliveries`, by `seq`: each seq once (every receiver of an event
/// repeats it), [`crate::db::VALUES_PER_LOOKUP`] at a time (`attache events list
/// --limit` goes to 100,000, past what one query may bind).
pub(crate) async fn events_by_seq<C: ConnectionTrait>(
    db: &C,
    deliveries: &[webhook_delivery::Model],
) -> Result<HashMap<i64, outbox_event::Model>, DbErr> {
    let seqs: Vec<i64> = deliveries
        .iter()
        .map(|delivery| delivery.event_seq)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut events = HashMap::with_capacity(seqs.len());
    for seqs in seqs.chunks(crate::db::VALUES_PER_LOOKUP) {
        let found = outbox_event::Entity::find()
            .filter(outbox_event::Column::Seq.is_in(seqs.iter().copied()))
            .all(db)
            .await?;
        events.extend(found.into_iter().map(|event| (event.seq, event)));
    }
    Ok(events)
}

/// Deliveries still to send (pending, due or not): the outbox backlog.
pub async fn backlog<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    webhook_delivery::Entity::find()
        .filter(webhook_delivery::Column::Status.eq(webhook_delivery::DeliveryStatus::Pending))
        .count(db)
        .await
}

/// Adds to `writes` the event of `row` and one delivery per receiver: the event
/// commits or rolls back with the change it reports. The deliveries find the
/// event's `seq` by its id, so nothing needs to be read back in between.
pub fn record(
    writes: &mut Writes,
    webhooks: &Webhooks,
    event_type: EventType,
    row: &attachment::Model,
) -> Result<(), DbErr> {
    record_with(writes, webhooks, event_type, row, &EventData::from(row))
}

/// Like [`record`], with a `data` of the caller's: an event about the tenant that
/// `row`'s upload brought past a threshold. A tenant event is delivered in an order
/// of its own: a receiver that keeps refusing an event type it does not know would
/// otherwise hold back that file's later events for good.
pub fn record_with(
    writes: &mut Writes,
    webhooks: &Webhooks,
    event_type: EventType,
    row: &attachment::Model,
    data: &impl Serialize,
) -> Result<(), DbErr> {
    let now = Utc::now();
    let payload = serde_json::to_string(data).map_err(|err| DbErr::Json(err.to_string()))?;
    let event_id = Uuid::now_v7();
    let event = outbox_event::ActiveModel {
        seq: NotSet,
        id: Set(event_id),
        event_type: Set(event_type),
        attachment_id: Set(row.id),
        tenant_id: Set(row.tenant_id.clone()),
        storage_key: Set(row.storage_key.clone()),
        payload: Set(payload),
        created_at: Set(now),
    };
    writes.insert(event);
    let ordered_with = match event_type {
        EventType::QuotaWarning => event_id,
        EventType::Stored | EventType::Deleted => row.id,
    };
    for receiver in &webhooks.receivers {
        use webhook_delivery::Column;
        let pending = Query::select()
            .column(outbox_event::Column::Seq)
            .exprs([
                Expr::val(ordered_with),
                Expr::val(receiver.as_str()),
                Expr::val(webhook_delivery::DeliveryStatus::Pending.to_value()),
                Expr::val(0),
                Expr::val(now),
            ])
            .from(outbox_event::Entity)
            .and_where(outbox_event::Column::Id.eq(event_id))
            .to_owned();
        let delivery = Query::insert()
            .into_table(webhook_delivery::Entity)
            .columns([
                Column::EventSeq,
                Column::AttachmentId,
                Column::Receiver,
                Column::Status,
                Column::Attempts,
                Column::NextAttemptAt,
            ])
            .select_from(pending)
            .map_err(|err| DbErr::Custom(err.to_string()))?
            .to_owned();
        writes.statement(writes.backend().build(&delivery));
    }
    Ok(())
}
