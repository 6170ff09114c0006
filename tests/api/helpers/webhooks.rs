//! A real HTTP webhook receiver in the test process that verifies every Standard
//! Webhooks signature and records what it gets, attache set up to deliver to it,
//! and waits on what the receiver saw or the outbox holds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attache::events::admin::{self, DeliveryView};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use entity::webhook_delivery::DeliveryStatus;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{Setup, TestApp, bind_patiently, now};

/// The secret of the Standard Webhooks test vector.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Carried in every receiver URL's query string: it must never reach a log.
pub const URL_TOKEN: &str = "url-token-never-logged";
/// The longest a test waits for deliveries.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Accept,
    /// HTTP 500 to the first `n` attempts of every event, then 200.
    FailFirst(usize),
    /// HTTP 500, always.
    Refuse,
    /// HTTP 503 without `Retry-After`, always: a receiver that is down behind its proxy.
    Unavailable,
    /// HTTP 500 to every event of this type (a handler with a bug), 200 to the others.
    FailType(&'static str),
    /// No answer, ever: the connection stays open.
    Hang,
    /// No answer to the very first request; 200 to the others.
    HangFirst,
    /// 200 after a pause.
    Slow(Duration),
    /// HTTP 410 Gone, always.
    Gone,
    /// HTTP 503 with `Retry-After: n` to the first attempt of every event, then 200.
    RetryAfterFirst(u64),
    /// HTTP 400 to every event of this type (a receiver that knows no such type), 200
    /// to the others.
    RefuseType(&'static str),
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub body: Value,
    pub at: Instant,
    /// What the receiver answered (0: no answer).
    pub status: u16,
    /// The signature, timestamp and content type check out.
    pub verified: bool,
}

struct ReceiverState {
    key: Vec<u8>,
    answer: Mutex<Answer>,
    log: Mutex<Vec<Received>>,
}

/// A real HTTP webhook receiver on 127.0.0.1 that checks every signature the
/// Standard Webhooks way (its own code, not attache's) and records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// On `addr`, which may have been closed a moment ago, or be held for a while
    /// by another test's client connection (an ephemeral port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = bind_patiently(addr, "the receiver", 200).await;
        let addr = listener.local_addr().expect("receiver addr");
        let key = STANDARD
            .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
            .expect("secret");
        let state = Arc::new(ReceiverState {
            key,
            answer: Mutex::new(Answer::Accept),
            log: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        url_at(self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.state.answer.lock().expect("lock") = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for what was received; panics after [`PATIENCE`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what}; received {} requests: {:#?}",
                received.len(),
                received
                    .iter()
                    .map(|r| (&r.id, r.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn url_at(addr: SocketAddr) -> String {
    format!("http://{addr}/hooks?token={URL_TOKEN}")
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<ReceiverState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    let verified = header("content-type") == "application/json"
        && verify(
            &state.key,
            &id,
            &header("webhook-timestamp"),
            &header("webhook-signature"),
            &body,
        );
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, pause, retry_after) = {
        let mut log = state.log.lock().expect("lock");
        let earlier = log.iter().filter(|seen| seen.id == id).count();
        let (status, pause) = match *state.answer.lock().expect("lock") {
            Answer::Accept => (200, None),
            Answer::FailFirst(n) if earlier < n => (500, None),
            Answer::FailFirst(_) => (200, None),
            Answer::Refuse => (500, None),
            Answer::Unavailable => (503, None),
            Answer::FailType(failing) if body["type"] == failing => (500, None),
            Answer::FailType(_) => (200, None),
            Answer::Hang => (0, None),
            Answer::HangFirst if log.is_empty() => (0, None),
            Answer::HangFirst => (200, None),
            Answer::Slow(pause) => (200, Some(pause)),
            Answer::Gone => (410, None),
            Answer::RetryAfterFirst(_) if earlier > 0 => (200, None),
            Answer::RetryAfterFirst(_) => (503, None),
            Answer::RefuseType(refused) if body["type"] == refused => (400, None),
            Answer::RefuseType(_) => (200, None),
        };
        let retry_after = match *state.answer.lock().expect("lock") {
            Answer::RetryAfterFirst(seconds) if status == 503 => Some(seconds.to_string()),
            _ => None,
        };
        log.push(Received {
            id,
            body,
            at: Instant::now(),
            status,
            verified,
        });
        (status, pause, retry_after)
    };
    if status == 0 {
        std::future::pending::<()>().await;
    }
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    let status = axum::http::StatusCode::from_u16(status).expect("status");
    match retry_after {
        Some(seconds) => (status, [(axum::http::header::RETRY_AFTER, seconds)]).into_response(),
        None => status.into_response(),
    }
}

/// The Standard Webhooks check: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`
/// among the space-separated signatures, and a timestamp within five minutes.
fn verify(key: &[u8], id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Ok(sent) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = i64::try_from(now()).expect("now");
    if id.is_empty() || (now - sent).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .any(|signature| signature.strip_prefix("v1,") == Some(expected.as_str()))
}

/// The events flags with short timings; `extra` may override any of them.
pub fn webhook_flags(receivers: &[String], extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = extra.iter().map(ToString::to_string).collect();
    let receivers = receivers.join(",");
    for (flag, value) in [
        ("--webhook-urls", receivers.as_str()),
        ("--webhook-secret", WEBHOOK_SECRET),
        ("--events-poll-interval-ms", "50"),
        ("--webhook-backoff-base-ms", "100"),
        ("--webhook-backoff-max-seconds", "1"),
        ("--webhook-timeout-seconds", "5"),
    ] {
        if !extra.contains(&flag) {
            flags.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    flags
}

/// attache in process, delivering to `receivers`.
pub async fn spawn_delivering(setup: Setup, receivers: &[String], extra: &[&str]) -> TestApp {
    let flags = webhook_flags(receivers, extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestApp::spawn_with(setup, &flags).await
}

/// The distinct events (by `webhook-id`) a receiver accepted.
pub fn accepted(received: &[Received]) -> BTreeSet<String> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.clone())
        .collect()
}

/// The requests carrying events of `file_id` of type `event_type`.
pub fn requests_for<'a>(
    received: &'a [Received],
    event_type: &str,
    file_id: &str,
) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.body["type"] == event_type && r.body["data"]["file_id"] == file_id)
        .collect()
}

/// The deliveries of one tenant, as `attache events list` reads them.
pub async fn deliveries_of(db: &impl sea_orm::ConnectionTrait, tenant: &str) -> Vec<DeliveryView> {
    admin::list(db, admin::Listed::All, 10_000)
        .await
        .expect("list deliveries")
        .into_iter()
        .filter(|delivery| delivery.tenant_id == tenant)
        .collect()
}

/// Waits until `done` holds for the deliveries of `tenant`; panics after [`PATIENCE`].
pub async fn wait_for_deliveries(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &str,
    what: &str,
    done: impl Fn(&[DeliveryView]) -> bool,
) -> Vec<DeliveryView> {
    let started = Instant::now();
    loop {
        let deliveries = deliveries_of(db, tenant).await;
        if done(&deliveries) {
            return deliveries;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}: {deliveries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the outbox holds no pending delivery of `tenant`: every delivery
/// its writes made has ended, delivered or failed (deliveries are written with
/// the attachment row, so none is missed by looking too early). They, for the
/// test to check; panics after [`PATIENCE`].
pub async fn drain_deliveries(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &str,
) -> Vec<DeliveryView> {
    wait_for_deliveries(db, tenant, "no pending delivery", |deliveries| {
        !deliveries.is_empty()
            && deliveries
                .iter()
                .all(|delivery| delivery.status != DeliveryStatus::Pending)
    })
    .await
}

/// The status of each delivery, for an `assert_eq!`.
pub fn statuses(deliveries: &[DeliveryView]) -> Vec<DeliveryStatus> {
    deliveries.iter().map(|delivery| delivery.status).collect()
}
