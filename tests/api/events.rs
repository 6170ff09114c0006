//! Events end to end (SPEC 10): a real webhook receiver in the test process verifies
//! every Standard Webhooks signature and records what it gets, while attache runs in
//! process or as several `attache serve` processes on one PostgreSQL database.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attache::events::admin::{self, DeliveryView};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use entity::webhook_delivery::DeliveryStatus;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{
    Api, COMPLETE_DIRECT, DELETE, Refusal, SECRET, SIGNING_KEY, Setup, TestApp, UPLOAD,
    announce_and_put, codes, data, database_url, declaration, empty_postgres_database, fetch,
    hs256, http_client, now, pdf, png, postgres_admin, private_database_url, run_attache,
    sha256_hex, tenant, upload_file_form,
};

/// The secret of the Standard Webhooks test vector.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Carried in every receiver URL's query string: it must never reach a log.
const URL_TOKEN: &str = "url-token-never-logged";
/// The longest a test waits for deliveries.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the receiver answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Accept,
    /// HTTP 500 to the first `n` attempts of every event, then 200.
    FailFirst(usize),
    /// HTTP 500, always.
    Refuse,
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
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    body: Value,
    at: Instant,
    /// What the receiver answered (0: no answer).
    status: u16,
    /// The signature, timestamp and content type check out.
    verified: bool,
}

struct ReceiverState {
    key: Vec<u8>,
    answer: Mutex<Answer>,
    log: Mutex<Vec<Received>>,
}

/// A real HTTP webhook receiver on 127.0.0.1 that checks every signature the
/// Standard Webhooks way (its own code, not attache's) and records every request.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// On `addr`, which may have been closed a moment ago, or be held for a while
    /// by another test's client connection (an ephemeral port).
    async fn start_on(addr: SocketAddr) -> Self {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 200 => {
                    tries += 1;
                    eprintln!("rebinding the receiver: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot bind the receiver: {err}"),
            }
        };
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

    fn url(&self) -> String {
        url_at(self.addr)
    }

    fn answer(&self, answer: Answer) {
        *self.state.answer.lock().expect("lock") = answer;
    }

    fn received(&self) -> Vec<Received> {
        self.state.log.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for what was received; panics after [`PATIENCE`].
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
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

fn url_at(addr: SocketAddr) -> String {
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
    let (status, pause, retry_after) = {
        let mut log = state.log.lock().expect("lock");
        let earlier = log.iter().filter(|seen| seen.id == id).count();
        let (status, pause) = match *state.answer.lock().expect("lock") {
            Answer::Accept => (200, None),
            Answer::FailFirst(n) if earlier < n => (500, None),
            Answer::FailFirst(_) => (200, None),
            Answer::Refuse => (500, None),
            Answer::Hang => (0, None),
            Answer::HangFirst if log.is_empty() => (0, None),
            Answer::HangFirst => (200, None),
            Answer::Slow(pause) => (200, Some(pause)),
            Answer::Gone => (410, None),
            Answer::RetryAfterFirst(_) if earlier > 0 => (200, None),
            Answer::RetryAfterFirst(_) => (503, None),
        };
        let retry_after = match *state.answer.lock().expect("lock") {
            Answer::RetryAfterFirst(seconds) if status == 503 => Some(seconds.to_string()),
            _ => None,
        };
        log.push(Received {
            id,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
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
fn webhook_flags(receivers: &[String], extra: &[&str]) -> Vec<String> {
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
async fn spawn_delivering(setup: Setup, receivers: &[String], extra: &[&str]) -> TestApp {
    let flags = webhook_flags(receivers, extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestApp::spawn_with(setup, &flags).await
}

/// The distinct events (by `webhook-id`) a receiver accepted.
fn accepted(received: &[Received]) -> BTreeSet<String> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.clone())
        .collect()
}

/// The requests carrying events of `file_id` of type `event_type`.
fn requests_for<'a>(
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
async fn deliveries_of(db: &impl sea_orm::ConnectionTrait, tenant: &str) -> Vec<DeliveryView> {
    admin::list(db, false, 10_000)
        .await
        .expect("list deliveries")
        .into_iter()
        .filter(|delivery| delivery.tenant_id == tenant)
        .collect()
}

/// Waits until `done` holds for the deliveries of `tenant`; panics after [`PATIENCE`].
async fn wait_for_deliveries(
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

/// What a test knows of an attachment it stored, to check its event against.
struct Stored {
    id: String,
    owner_type: &'static str,
    owner_id: Option<&'static str>,
    filename: &'static str,
    content_type: &'static str,
    content: Vec<u8>,
}

impl Stored {
    /// Checks every field of the event's `data`; the `url` of `file.stored` is
    /// fetched without headers and must serve the very bytes.
    async fn check(&self, request: &Received, tenant: &str) {
        let body = &request.body;
        let stored = body["type"] == "file.stored";
        assert!(stored || body["type"] == "file.deleted", "{body}");
        let timestamp =
            chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("timestamp"))
                .expect("RFC 3339 timestamp");
        let age = chrono::Utc::now().signed_duration_since(timestamp);
        assert!(
            age < chrono::TimeDelta::minutes(1) && age > chrono::TimeDelta::seconds(-2),
            "{body}"
        );
        let data = &body["data"];
        let expected = json!({
            "file_id": self.id,
            "tenant_id": tenant,
            "owner_type": self.owner_type,
            "owner_id": self.owner_id,
            "original_filename": self.filename,
            "content_type": self.content_type,
            "size_bytes": self.content.len(),
            "sha256": sha256_hex(&self.content),
        });
        let mut without_url = data.clone();
        let url = without_url
            .as_object_mut()
            .expect("data is an object")
            .remove("url");
        assert_eq!(without_url, expected, "{body}");
        match url {
            Some(url) => {
                assert!(stored, "file.deleted has no url: {body}");
                assert_eq!(fetch(&url).await, self.content, "the url serves the file");
            }
            None => assert!(!stored, "file.stored has a url: {body}"),
        }
    }
}

async fn every_store_path_emits_its_event_with_every_field(setup: Setup) {
    let receiver = Receiver::start().await;
    let app = spawn_delivering(setup, &[receiver.url()], &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let mut stored = Vec::new();

    let content = pdf();
    let att = app
        .upload(
            &bearer,
            &content,
            "contract",
            Some("c-1"),
            "Übergabeprotokoll.pdf",
        )
        .await;
    stored.push(Stored {
        id: att["id"].as_str().expect("id").to_owned(),
        owner_type: "contract",
        owner_id: Some("c-1"),
        filename: "Übergabeprotokoll.pdf",
        content_type: "application/pdf",
        content,
    });

    let (logo, order) = (png(), pdf());
    let batch =
        "mutation($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { id } }";
    let body = app
        .gql(
            batch,
            json!({ "input": [
                { "ownerType": "invoice_logo", "filename": "logo.png", "base64": STANDARD.encode(&logo) },
                { "ownerType": "customer", "ownerId": "k-1", "filename": "Auftrag.pdf", "base64": STANDARD.encode(&order) },
            ]}),
            Some(&bearer),
        )
        .await;
    let batch = data(&body, "uploadAttachments");
    for (index, (owner_type, owner_id, filename, content_type, content)) in [
        ("invoice_logo", None, "logo.png", "image/png", logo),
        (
            "customer",
            Some("k-1"),
            "Auftrag.pdf",
            "application/pdf",
            order,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        stored.push(Stored {
            id: batch[index]["id"].as_str().expect("id").to_owned(),
            owner_type,
            owner_id,
            filename,
            content_type,
            content,
        });
    }

    let scan = pdf();
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&bearer)
        .header("apollo-require-preflight", "true")
        .multipart(upload_file_form(
            "customer",
            "k-2",
            &scan,
            "Scan.pdf",
            "application/pdf",
        ))
        .send()
        .await
        .expect("POST");
    let body: Value = response.json().await.expect("JSON");
    stored.push(Stored {
        id: data(&body, "uploadAttachmentFile")["id"]
            .as_str()
            .expect("id")
            .to_owned(),
        owner_type: "customer",
        owner_id: Some("k-2"),
        filename: "Scan.pdf",
        content_type: "application/pdf",
        content: scan,
    });

    let direct = pdf();
    let (announced, status) = announce_and_put(
        &app,
        &bearer,
        declaration(&direct, "application/pdf"),
        direct.clone(),
    )
    .await;
    assert!((200..300).contains(&status), "PUT {status}");
    let body = app
        .gql(
            COMPLETE_DIRECT,
            json!({ "id": announced["id"] }),
            Some(&bearer),
        )
        .await;
    stored.push(Stored {
        id: data(&body, "completeDirectUpload")["id"]
            .as_str()
            .expect("id")
            .to_owned(),
        owner_type: "contract",
        owner_id: Some("c-7"),
        filename: "Direkt.pdf",
        content_type: "application/pdf",
        content: direct,
    });

    let received = receiver
        .wait_for("five file.stored", |received| accepted(received).len() == 5)
        .await;
    for file in &stored {
        let events = requests_for(&received, "file.stored", &file.id);
        assert_eq!(events.len(), 1, "file.stored of {}", file.id);
        file.check(events[0], &acme).await;
    }

    let deleted = &stored[0];
    let body = app
        .gql(DELETE, json!({ "id": deleted.id }), Some(&bearer))
        .await;
    assert_eq!(data(&body, "deleteAttachment"), deleted.id);
    let received = receiver
        .wait_for("the file.deleted", |received| accepted(received).len() == 6)
        .await;
    let gone = requests_for(&received, "file.deleted", &deleted.id);
    assert_eq!(gone.len(), 1);
    deleted.check(gone[0], &acme).await;
    assert!(
        received.iter().all(|r| r.verified),
        "every signature verifies"
    );
    assert_eq!(received.len(), 6, "each event exactly once");
    let ids: BTreeSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 6, "every event has its own webhook-id");
}

async fn a_failing_receiver_is_retried_with_backoff_and_in_order(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::FailFirst(2));
    let app = spawn_delivering(
        setup,
        &[receiver.url()],
        &["--webhook-backoff-base-ms", "300"],
    )
    .await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let att = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let id = att["id"].as_str().expect("id");
    app.gql(DELETE, json!({ "id": id }), Some(&bearer)).await;

    let received = receiver
        .wait_for("both events, each on its third attempt", |received| {
            accepted(received).len() == 2
        })
        .await;
    assert!(received.iter().all(|r| r.verified));
    let stored = requests_for(&received, "file.stored", id);
    let statuses: Vec<u16> = stored.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    assert!(
        stored.iter().all(|r| r.id == stored[0].id),
        "the same webhook-id on every attempt"
    );
    // 300 ms then 600 ms, each shortened by at most a fifth of jitter.
    for (pair, nominal) in stored.windows(2).zip([300u64, 600]) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(nominal * 4 / 5)
                && gap < Duration::from_millis(nominal + 1500),
            "retry after {gap:?}, backoff {nominal} ms"
        );
    }
    let deleted = requests_for(&received, "file.deleted", id);
    assert_eq!(deleted.len(), 3);
    assert!(
        deleted[0].at > stored[2].at,
        "file.deleted waits until file.stored is delivered"
    );
    // The receiver records a request before attache records its answer.
    let deliveries =
        wait_for_deliveries(app.app.db.read(), &acme, "both delivered", |deliveries| {
            deliveries.len() == 2
                && deliveries
                    .iter()
                    .all(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    for delivery in deliveries {
        assert_eq!(delivery.attempts, 3);
        assert!(delivery.delivered_at.is_some());
    }
}

/// Uploads `count` PDFs, one request each; their ids.
async fn upload_pdfs(api: &Api, bearer: &str, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in 0..count {
        let att = api
            .upload(bearer, &pdf(), "contract", Some("c-1"), &format!("{n}.pdf"))
            .await;
        ids.insert(att["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// A port that nothing listens on (yet).
async fn free_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

async fn a_receiver_down_during_uploads_gets_everything_later(setup: Setup) {
    let addr = free_addr().await;
    let app = spawn_delivering(setup, &[url_at(addr)], &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let ids = upload_pdfs(&app, &bearer, 4).await;
    let failing = wait_for_deliveries(app.app.db.read(), &acme, "failed attempts", |deliveries| {
        deliveries.len() == 4 && deliveries.iter().all(|d| d.attempts >= 2)
    })
    .await;
    for delivery in &failing {
        assert_eq!(delivery.status, DeliveryStatus::Pending);
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(!error.is_empty() && !error.contains(URL_TOKEN), "{error}");
    }

    let receiver = Receiver::start_on(addr).await;
    let received = receiver
        .wait_for("every event once the receiver is up", |received| {
            accepted(received).len() == 4
        })
        .await;
    assert!(received.iter().all(|r| r.verified));
    let files: BTreeSet<String> = received
        .iter()
        .map(|r| {
            r.body["data"]["file_id"]
                .as_str()
                .expect("file_id")
                .to_owned()
        })
        .collect();
    assert_eq!(files, ids);
}

async fn a_dead_receiver_holds_back_no_other(setup: Setup) {
    let dead = Receiver::start().await;
    dead.answer(Answer::Hang);
    let live = Receiver::start().await;
    let app = spawn_delivering(
        setup,
        &[dead.url(), live.url()],
        &["--webhook-timeout-seconds", "60"],
    )
    .await;
    let acme = tenant();
    let bearer = app.token(&acme);
    upload_pdfs(&app, &bearer, 24).await;
    let uploaded = Instant::now();
    let received = live
        .wait_for("every event at the live receiver", |received| {
            accepted(received).len() == 24
        })
        .await;
    assert!(received.iter().all(|r| r.verified));
    assert!(
        uploaded.elapsed() < Duration::from_secs(10),
        "the live receiver waited {:?} for a dead one",
        uploaded.elapsed()
    );
    let hanging = dead.received().len();
    assert!(
        (1..=16).contains(&hanging),
        "the dead receiver holds a bounded number of requests: {hanging}"
    );
}

async fn refused_or_failed_writes_emit_no_event(setup: Setup) {
    let receiver = Receiver::start().await;
    let app = spawn_delivering(setup, &[receiver.url()], &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let upload = |base64: String| json!({ "input": { "ownerType": "contract", "ownerId": "c-1", "filename": "a.pdf", "base64": base64 } });

    let refused = app.gql(UPLOAD, upload("%%%".into()), Some(&bearer)).await;
    assert_eq!(codes(&refused), ["BAD_USER_INPUT"]);
    for table in ["attachments", "outbox_events"] {
        let refusal = Refusal::install(&app, table, &acme).await;
        let failed = app
            .gql(UPLOAD, upload(STANDARD.encode(pdf())), Some(&bearer))
            .await;
        refusal.remove(&app).await;
        assert_eq!(
            codes(&failed),
            ["INTERNAL_SERVER_ERROR"],
            "{table}: {failed}"
        );
        assert_eq!(app.row_count(&acme).await, 0, "{table}: no row");
        assert!(app.stored_keys().is_empty(), "{table}: no object");
    }

    let kept = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "kept.pdf")
        .await;
    let refusal = Refusal::install(&app, "outbox_events", &acme).await;
    let failed = app
        .gql(DELETE, json!({ "id": kept["id"] }), Some(&bearer))
        .await;
    refusal.remove(&app).await;
    assert_eq!(codes(&failed), ["INTERNAL_SERVER_ERROR"], "{failed}");
    assert_eq!(
        app.row_count(&acme).await,
        1,
        "a delete without its event rolls back"
    );
    assert_eq!(app.stored_keys().len(), 1);

    receiver
        .wait_for("the one event", |received| !received.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "only the stored file has an event");
    assert!(received[0].verified);
    assert_eq!(received[0].body["type"], "file.stored");
    assert_eq!(received[0].body["data"]["file_id"], kept["id"]);
    assert_eq!(deliveries_of(app.app.db.read(), &acme).await.len(), 1);
}

async fn failed_deliveries_are_listed_and_retried(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Refuse);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = private_database_url(setup.db, dir.path()).await;
    let app = spawn_delivering(
        setup,
        &[receiver.url()],
        &["--webhook-max-attempts", "2", "--database-url", &database],
    )
    .await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let first = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "b.pdf")
        .await;
    let failed = wait_for_deliveries(
        app.app.db.read(),
        &acme,
        "two failed deliveries",
        |deliveries| {
            deliveries.len() == 2
                && deliveries
                    .iter()
                    .all(|d| d.status == DeliveryStatus::Failed)
        },
    )
    .await;
    assert!(failed.iter().all(|d| d.attempts == 2));
    let first_event = failed
        .iter()
        .find(|d| d.attachment_id.to_string() == first["id"])
        .expect("the first upload's delivery")
        .event_id
        .to_string();

    let events = |args: &[&str]| {
        let mut args: Vec<String> = std::iter::once("events")
            .chain(args.iter().copied())
            .map(ToString::to_string)
            .collect();
        args.extend(["--database-url".to_owned(), database.clone()]);
        run_attache(args)
    };
    let listed = events(&["list", "--failed"]).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.contains("failed"))
            .count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains(&first_event) && stdout.contains("HTTP 500"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("http://{}/hooks", receiver.addr)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(URL_TOKEN),
        "the receiver's query string stays hidden: {stdout}"
    );

    receiver.answer(Answer::Accept);
    let retried = events(&["retry", &first_event]).await;
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert!(String::from_utf8_lossy(&retried.stdout).starts_with("1 "));
    receiver
        .wait_for("the retried event", |received| {
            accepted(received).len() == 1
        })
        .await;
    assert_eq!(
        accepted(&receiver.received()),
        BTreeSet::from([first_event.clone()])
    );

    let unknown = events(&["retry", &uuid::Uuid::now_v7().to_string()]).await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("has no failed delivery"));

    let all = events(&["retry", "--all-failed"]).await;
    assert!(
        String::from_utf8_lossy(&all.stdout).starts_with("1 "),
        "{all:?}"
    );
    receiver
        .wait_for("every event", |received| accepted(received).len() == 2)
        .await;
    wait_for_deliveries(
        app.app.db.read(),
        &acme,
        "every delivery delivered",
        |deliveries| {
            deliveries
                .iter()
                .all(|d| d.status == DeliveryStatus::Delivered)
        },
    )
    .await;
    let listed = events(&["list", "--failed"]).await;
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "no failed deliveries"
    );
    assert!(receiver.received().iter().all(|r| r.verified));
}

async fn delivered_events_are_pruned_after_the_retention(setup: Setup) {
    let live = Receiver::start().await;
    let addr = free_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let database = private_database_url(setup.db, dir.path()).await;
    let app = spawn_delivering(
        setup,
        &[live.url(), url_at(addr)],
        &["--database-url", &database],
    )
    .await;
    let db = &app.app.db;
    let acme = tenant();
    app.upload(&app.token(&acme), &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    live.wait_for("the event", |received| accepted(received).len() == 1)
        .await;
    let later = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    assert_eq!(
        admin::prune(db, later).await.expect("prune"),
        0,
        "a receiver still waits"
    );

    let late = Receiver::start_on(addr).await;
    late.wait_for("the event", |received| accepted(received).len() == 1)
        .await;
    wait_for_deliveries(db.read(), &acme, "both delivered", |deliveries| {
        deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    let earlier = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    assert_eq!(
        admin::prune(db, earlier).await.expect("prune"),
        0,
        "too young"
    );
    assert_eq!(admin::prune(db, later).await.expect("prune"), 1);
    assert!(deliveries_of(db.read(), &acme).await.is_empty());
    use sea_orm::{EntityTrait, PaginatorTrait};
    assert_eq!(
        entity::outbox_event::Entity::find()
            .count(db.read())
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        entity::webhook_delivery::Entity::find()
            .count(db.read())
            .await
            .expect("count"),
        0
    );
}

async fn periodic_work_runs_on_one_replica_at_a_time(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let db = &app.app.db;
    let name = format!("test-{}", tenant());
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let ttl = Duration::from_millis(300);
    let acquire = |holder| attache::workers::maintenance::acquire(db, &name, holder, ttl);
    assert!(acquire(first).await.expect("lease"), "a free lease");
    assert!(!acquire(second).await.expect("lease"), "held by the first");
    assert!(
        acquire(first).await.expect("lease"),
        "renewed by its holder"
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(
        acquire(second).await.expect("lease"),
        "a lapsed lease is taken over"
    );
    assert!(!acquire(first).await.expect("lease"));
}

/// `attache serve` as a separate process, as a load balancer's replica runs.
struct Replica {
    child: std::process::Child,
    api: Api,
    log: Arc<Mutex<String>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Starts `attache serve ARGS` and waits until it listens.
    async fn start(args: Vec<String>) -> Self {
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_attache"))
                .arg("serve")
                .args(&args)
                .env_clear()
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "info,attache::workers=debug")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start attache serve");
            let stderr = child.stderr.take().expect("stderr");
            let log = Arc::new(Mutex::new(String::new()));
            let (listening, started) = std::sync::mpsc::channel();
            let lines = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("attache is listening")
                        && let Some((_, url)) = line.split_once("url=")
                    {
                        let base = url.split_whitespace().next().unwrap_or_default();
                        let _ = listening.send(base.trim_end_matches("/graphql").to_owned());
                    }
                    let mut log = lines.lock().expect("lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            let base_url = started
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!("attache serve did not start: {}", log.lock().expect("lock"))
                });
            Self {
                child,
                api: Api {
                    base_url,
                    client: http_client(),
                },
                log,
            }
        })
        .await
        .expect("join")
    }

    fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// SIGKILL: no shutdown, no clean-up, as a crashed host.
    async fn kill(mut self) {
        tokio::task::spawn_blocking(move || {
            let _ = self.child.kill();
            let _ = self.child.wait();
        })
        .await
        .expect("join");
    }

    /// SIGTERM, as an orchestrator stops a replica; its exit status and log.
    async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        tokio::task::spawn_blocking(move || {
            let pid = self.child.id().to_string();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill -TERM");
            assert!(sent.success());
            let started = Instant::now();
            loop {
                if let Some(status) = self.child.try_wait().expect("wait") {
                    return (status, self.log());
                }
                assert!(
                    started.elapsed() < PATIENCE,
                    "still running after SIGTERM: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("join")
    }
}

/// The flags of a replica: the same database, storage, keys and receivers as its peers.
fn replica_args(
    database: &str,
    storage: &Path,
    receivers: &[String],
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        database,
        "--storage-root",
        storage.to_str().expect("utf-8 path"),
        "--signing-key",
        SIGNING_KEY,
        "--jwt-secret",
        SECRET,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(webhook_flags(receivers, extra));
    args
}

fn bearer_for(tenant: &str) -> String {
    hs256(json!({ "sub": "user-1", "tenant_id": tenant, "exp": now() + 3600 }))
}

async fn two_replicas_deliver_each_event_exactly_once(setup: Setup) {
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let receivers = [first.url(), second.url()];
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database_url(setup.db, dir.path()).await;
    let storage = dir.path().join("uploads");
    let args = replica_args(&database, &storage, &receivers, &[]);
    let replicas = [
        Replica::start(args.clone()).await,
        Replica::start(args).await,
    ];
    let acme = tenant();
    let bearer = bearer_for(&acme);

    const FILES: usize = 200;
    const DELETES: usize = 50;
    let contents: Vec<Vec<u8>> = (0..FILES).map(|_| pdf()).collect();
    let ids: Vec<String> = futures::stream::iter(contents.iter().enumerate())
        .map(|(n, content)| {
            let (replicas, bearer) = (&replicas, &bearer);
            async move {
                let att = replicas[n % 2]
                    .api
                    .upload(
                        bearer,
                        content,
                        "contract",
                        Some("c-1"),
                        &format!("{n}.pdf"),
                    )
                    .await;
                att["id"].as_str().expect("id").to_owned()
            }
        })
        .buffered(8)
        .collect()
        .await;
    for (n, id) in ids.iter().take(DELETES).enumerate() {
        let body = replicas[(n + 1) % 2]
            .api
            .gql(DELETE, json!({ "id": id }), Some(&bearer))
            .await;
        assert_eq!(data(&body, "deleteAttachment"), id.as_str());
    }

    // A link signed by one replica opens on the other; so does the download route.
    let query = "query($id: ID!) { attachment(id: $id) { url downloadUrl } }";
    for (n, id) in ids.iter().enumerate().skip(DELETES).take(4) {
        let (signer, verifier) = (&replicas[n % 2].api, &replicas[(n + 1) % 2].api);
        let att = data(
            &signer.gql(query, json!({ "id": id }), Some(&bearer)).await,
            "attachment",
        );
        let url = att["url"].as_str().expect("url");
        assert!(url.starts_with(&signer.base_url), "{url}");
        let elsewhere = url.replacen(&signer.base_url, &verifier.base_url, 1);
        assert_eq!(fetch(&json!(elsewhere)).await, contents[n], "signed link");
        let download = att["downloadUrl"].as_str().expect("downloadUrl").replacen(
            &signer.base_url,
            &verifier.base_url,
            1,
        );
        let response = verifier
            .client
            .get(download)
            .bearer_auth(&bearer)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.expect("body"), contents[n]);
    }

    let events = FILES + DELETES;
    for receiver in [&first, &second] {
        let received = receiver
            .wait_for("every event", |received| accepted(received).len() == events)
            .await;
        assert!(received.iter().all(|r| r.verified && r.status == 200));
        let mut sent: HashMap<&str, usize> = HashMap::new();
        for request in &received {
            *sent.entry(request.id.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = sent.iter().filter(|(_, count)| **count > 1).collect();
        assert!(twice.is_empty(), "sent more than once: {twice:?}");
        assert_eq!(received.len(), events);
        for id in ids.iter().take(DELETES) {
            let stored = requests_for(&received, "file.stored", id);
            let deleted = requests_for(&received, "file.deleted", id);
            assert!(deleted[0].at > stored[0].at, "in order for {id}");
        }
        // A url made by whichever replica delivered opens on either.
        let request = &requests_for(&received, "file.stored", &ids[FILES - 1])[0];
        let url = request.body["data"]["url"].as_str().expect("url");
        for replica in &replicas {
            let origin = replicas
                .iter()
                .map(|replica| replica.api.base_url.as_str())
                .find(|origin| url.starts_with(origin))
                .expect("a replica's url");
            let url = url.replacen(origin, &replica.api.base_url, 1);
            assert_eq!(fetch(&json!(url)).await, contents[FILES - 1]);
        }
    }
    for replica in replicas {
        let (status, log) = replica.terminate().await;
        assert!(status.success(), "SIGTERM exits 0: {log}");
        assert!(
            log.contains("webhook delivered"),
            "both replicas deliver: {log}"
        );
        assert!(
            !log.contains(URL_TOKEN),
            "a receiver URL's query string was logged: {log}"
        );
    }
}

async fn a_killed_replica_s_delivery_is_completed_by_another(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::HangFirst);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database_url(setup.db, dir.path()).await;
    let storage = dir.path().join("uploads");
    // The lease is the request timeout plus 5 s.
    let args = replica_args(
        &database,
        &storage,
        &[receiver.url()],
        &["--webhook-timeout-seconds", "4"],
    );
    let doomed = Replica::start(args.clone()).await;
    let acme = tenant();
    let att = doomed
        .api
        .upload(&bearer_for(&acme), &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    receiver
        .wait_for("the first request", |received| received.len() == 1)
        .await;
    let killed_at = Instant::now();
    let survivor = Replica::start(args).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "the claim holds while its lease runs"
    );
    doomed.kill().await;

    let received = receiver
        .wait_for("the delivery by the survivor", |received| {
            accepted(received).len() == 1
        })
        .await;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].id, received[1].id, "the same webhook-id again");
    assert_eq!(received[1].body["data"]["file_id"], att["id"]);
    assert!(received.iter().all(|r| r.verified));
    assert!(killed_at.elapsed() < Duration::from_secs(20));
    let db = sea_orm::Database::connect(&database)
        .await
        .expect("connect");
    let deliveries = wait_for_deliveries(&db, &acme, "delivered", |deliveries| {
        deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    assert_eq!(deliveries.len(), 1);
    let (status, log) = survivor.terminate().await;
    assert!(status.success(), "{log}");
}

async fn sigterm_lets_deliveries_in_flight_finish(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Slow(Duration::from_millis(1500)));
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database_url(setup.db, dir.path()).await;
    let args = replica_args(
        &database,
        &dir.path().join("uploads"),
        &[receiver.url()],
        &[],
    );
    let replica = Replica::start(args).await;
    let acme = tenant();
    replica
        .api
        .upload(&bearer_for(&acme), &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    receiver
        .wait_for("the request in flight", |received| received.len() == 1)
        .await;
    let (status, log) = replica.terminate().await;
    assert!(status.success(), "SIGTERM exits 0: {log}");
    assert!(log.contains("attache stopped"), "{log}");
    let db = sea_orm::Database::connect(&database)
        .await
        .expect("connect");
    let deliveries = deliveries_of(&db, &acme).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0].status,
        DeliveryStatus::Delivered,
        "the delivery in flight finished and was recorded"
    );
    let received = receiver.received();
    assert!(received.len() == 1 && received[0].verified);
}

async fn replicas_starting_together_migrate_one_after_another(_setup: Setup) {
    let database = empty_postgres_database(&postgres_admin().await).await;
    let migrations = (0..3).map(|_| {
        run_attache(vec![
            "db".into(),
            "migrate".into(),
            "--database-url".into(),
            database.clone(),
        ])
    });
    for output in futures::future::join_all(migrations).await {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

crate::matrix!(every_store_path_emits_its_event_with_every_field);
/// Standard Webhooks' status codes: 410 Gone ends a delivery at once as `failed`;
/// a 503's `Retry-After` sets the next attempt instead of the backoff.
async fn gone_ends_a_delivery_and_retry_after_is_honoured(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Gone);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = private_database_url(setup.db, dir.path()).await;
    let app = spawn_delivering(
        setup,
        &[receiver.url()],
        &[
            "--webhook-backoff-base-ms",
            "60000",
            "--webhook-backoff-max-seconds",
            "120",
            "--database-url",
            &database,
        ],
    )
    .await;
    let acme = tenant();
    let bearer = app.token(&acme);
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "gone.pdf")
        .await;
    let failed = wait_for_deliveries(
        app.app.db.read(),
        &acme,
        "a failed delivery",
        |deliveries| deliveries.len() == 1 && deliveries[0].status == DeliveryStatus::Failed,
    )
    .await;
    assert_eq!(failed[0].attempts, 1, "410 is not retried");
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("410"),
        "{:?}",
        failed[0].last_error
    );

    receiver.answer(Answer::RetryAfterFirst(1));
    let other = tenant();
    app.upload(
        &app.token(&other),
        &pdf(),
        "contract",
        Some("c-1"),
        "later.pdf",
    )
    .await;
    wait_for_deliveries(app.app.db.read(), &other, "a delivery", |deliveries| {
        deliveries.len() == 1 && deliveries[0].status == DeliveryStatus::Delivered
    })
    .await;
    let received = receiver.received();
    let attempts: Vec<&Received> = received.iter().filter(|r| r.status != 410).collect();
    assert_eq!(attempts.len(), 2, "one 503, then the delivery");
    let waited = attempts[1].at - attempts[0].at;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(30),
        "Retry-After: 1 instead of a 60 s backoff: {waited:?}"
    );
}

crate::matrix!(db:
    gone_ends_a_delivery_and_retry_after_is_honoured,
    a_failing_receiver_is_retried_with_backoff_and_in_order,
    a_receiver_down_during_uploads_gets_everything_later,
    a_dead_receiver_holds_back_no_other,
    refused_or_failed_writes_emit_no_event,
    failed_deliveries_are_listed_and_retried,
    delivered_events_are_pruned_after_the_retention,
    periodic_work_runs_on_one_replica_at_a_time,
    sigterm_lets_deliveries_in_flight_finish,
);
crate::matrix!(postgres:
    two_replicas_deliver_each_event_exactly_once,
    a_killed_replica_s_delivery_is_completed_by_another,
    replicas_starting_together_migrate_one_after_another,
);
