//! Events end to end (SPEC 10): a real webhook receiver in the test process verifies
//! every Standard Webhooks signature and records what it gets, while attache runs in
//! process or as several `attache serve` processes on one PostgreSQL database.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use attache::events::admin;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Datelike;
use entity::outbox_event::EventType;
use entity::webhook_delivery::DeliveryStatus::{self, Delivered, Failed};
use futures::StreamExt;
use serde_json::json;

use crate::helpers::webhooks::{
    Answer, Received, Receiver, URL_TOKEN, accepted, deliveries_of, drain_deliveries, requests_for,
    spawn_delivering, statuses, url_at, wait_for_deliveries, webhook_flags,
};
use crate::helpers::{
    Api, DELETE, Refusal, SECRET, SIGNING_KEY, Served, Setup, TestApp, UPLOAD, Uploaded,
    announce_and_put, codes, complete_direct, data, database_url, declaration,
    empty_postgres_database, fetch, free_addr, pdf, png, post_multipart, postgres_admin,
    private_database_url, run_attache, sha256_hex, tenant, token_for, upload_file_form,
};

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
    let Uploaded {
        tenant: acme,
        bearer,
        content,
        id,
        ..
    } = app.upload_contract_pdf("Übergabeprotokoll.pdf").await;
    let mut stored = vec![Stored {
        id,
        owner_type: "contract",
        owner_id: Some("c-1"),
        filename: "Übergabeprotokoll.pdf",
        content_type: "application/pdf",
        content,
    }];

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
    let form = upload_file_form("customer", "k-2", &scan, "Scan.pdf", "application/pdf");
    let (_, body) = post_multipart(&app.base_url, &bearer, form).await;
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
    let body = complete_direct(&app, &bearer, &announced).await;
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
    let Uploaded {
        tenant: acme,
        bearer,
        id,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    let id = id.as_str();
    app.gql(DELETE, json!({ "id": id }), Some(&bearer)).await;

    let received = receiver
        .wait_for("both events, each on its third attempt", |received| {
            accepted(received).len() == 2
        })
        .await;
    assert!(received.iter().all(|r| r.verified));
    let stored = requests_for(&received, "file.stored", id);
    let answered: Vec<u16> = stored.iter().map(|r| r.status).collect();
    assert_eq!(answered, [500, 500, 200]);
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
    let deliveries = drain_deliveries(app.app.db.read(), &acme).await;
    assert_eq!(statuses(&deliveries), [Delivered, Delivered]);
    for delivery in deliveries {
        assert_eq!(delivery.attempts, 3);
        assert!(delivery.delivered_at.is_some());
    }
}

/// The later events of an attachment wait as long as the earlier one a receiver
/// keeps refusing: left due, every claim walked them and their held-back check
/// (50,000 such rows made a claim 102 ms).
async fn held_back_deliveries_wait_with_the_one_before(setup: Setup) {
    use entity::webhook_delivery;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    let receiver = Receiver::start().await;
    receiver.answer(Answer::FailFirst(1000));
    let app = spawn_delivering(
        setup,
        &[receiver.url()],
        &["--webhook-backoff-base-ms", "300"],
    )
    .await;
    let Uploaded { bearer, id, .. } = app.upload_contract_pdf("a.pdf").await;
    app.gql(DELETE, json!({ "id": id }), Some(&bearer)).await;
    let attachment = uuid::Uuid::parse_str(&id).expect("uuid");
    let deliveries = || {
        webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::AttachmentId.eq(attachment))
            .order_by_asc(webhook_delivery::Column::EventSeq)
            .all(app.app.db.read())
    };
    let started = Instant::now();
    loop {
        let rows = deliveries().await.expect("deliveries");
        if rows.len() == 2 && rows[0].attempts >= 2 {
            // One read: both rows as of one moment.
            assert!(
                rows[1].next_attempt_at >= rows[0].next_attempt_at,
                "file.deleted is due no sooner than file.stored is retried: {rows:?}"
            );
            assert_eq!(rows[1].attempts, 0, "never sent before file.stored");
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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

    // Deleted before its file.stored went out: that event carries no link to it.
    let deleted = ids.first().expect("an upload").clone();
    let answer = app
        .gql(DELETE, json!({ "id": deleted }), Some(&bearer))
        .await;
    assert_eq!(data(&answer, "deleteAttachment"), deleted.as_str());

    let receiver = Receiver::start_on(addr).await;
    let received = receiver
        .wait_for("every event once the receiver is up", |received| {
            accepted(received).len() == 5
        })
        .await;
    assert!(received.iter().all(|r| r.verified));
    let stored: Vec<&Received> = received
        .iter()
        .filter(|r| r.body["type"] == "file.stored")
        .collect();
    let files: BTreeSet<String> = stored
        .iter()
        .map(|r| {
            r.body["data"]["file_id"]
                .as_str()
                .expect("file_id")
                .to_owned()
        })
        .collect();
    assert_eq!(files, ids);
    for event in stored {
        let gone = event.body["data"]["file_id"] == deleted.as_str();
        assert_eq!(
            event.body["data"].get("url").is_none(),
            gone,
            "a url only for files still there: {}",
            event.body
        );
    }
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

/// A receiver that is down gets a probe per pause, not an attempt per delivery:
/// backoff was per delivery, so 150,000 pending to a closed port made 3,500 attempts
/// and WARN lines a second. Once it answers, everything goes out.
async fn a_receiver_that_is_down_is_paused_and_probed(_: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Unavailable);
    let flags = webhook_flags(&[receiver.url()], &[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let served = Served::start(&flags).await;
    let paused = || async {
        let text = crate::helpers::metrics_text(&served.base_url).await;
        text.lines()
            .find_map(|line| line.strip_prefix("attache_webhook_receivers_paused "))
            .map(ToOwned::to_owned)
    };
    let bearer = token_for(&tenant());
    const FILES: usize = 40;
    upload_pdfs(&served, &bearer, FILES).await;
    // Backoff 100 ms doubling to 1 s: each delivery would be tried every second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = receiver.received().len();
    // Up to 16 in flight when the fifth failure pauses it, then one probe per pause
    // (0.1, 0.2, 0.4, 0.8, 1, 1 s).
    assert!(
        refused <= 16 + 8,
        "{refused} attempts in 4 s to a receiver that is down"
    );
    assert_eq!(paused().await.as_deref(), Some("1"));

    receiver.answer(Answer::Accept);
    receiver
        .wait_for("every event once the receiver answers", |received| {
            accepted(received).len() == FILES
        })
        .await;
    assert_eq!(paused().await.as_deref(), Some("0"));
    let log = served.log();
    let said = |what: &str| log.lines().filter(|line| line.contains(what)).count();
    assert_eq!(said("its deliveries are paused"), 1, "{log}");
    assert_eq!(said("answers again; its deliveries resume"), 1, "{log}");
    assert!(
        said("webhook delivery failed; retrying") <= refused,
        "one WARN per attempt at most: {log}"
    );
    assert!(!log.contains(URL_TOKEN), "{log}");
}

/// A receiver whose handler of one event type fails (HTTP 500) is up: its other
/// events go out at once and it is never paused. Counted as down, it was paused,
/// and its probes (retries of the failing type) held every event back for up to the
/// backoff's cap.
async fn a_receiver_failing_one_event_type_is_not_paused(_: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::FailType("file.deleted"));
    let flags = webhook_flags(&[receiver.url()], &[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let served = Served::start(&flags).await;
    let bearer = token_for(&tenant());
    let ids = upload_pdfs(&served, &bearer, 12).await;
    for id in &ids {
        served.gql(DELETE, json!({ "id": id }), Some(&bearer)).await;
    }
    upload_pdfs(&served, &bearer, 12).await;
    receiver
        .wait_for("every file.stored", |received| {
            let stored = received
                .iter()
                .filter(|r| r.status == 200 && r.body["type"] == "file.stored");
            stored.count() == 24
        })
        .await;
    let log = served.log();
    assert!(!log.contains("its deliveries are paused"), "{log}");
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

    // Every event the writes made is delivered by now: an extra one would show.
    drain_deliveries(app.app.db.read(), &acme).await;
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
    let Uploaded {
        tenant: acme,
        bearer,
        att: first,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "b.pdf")
        .await;
    let failed = drain_deliveries(app.app.db.read(), &acme).await;
    assert_eq!(statuses(&failed), [Failed, Failed]);
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
    let delivered = drain_deliveries(app.app.db.read(), &acme).await;
    assert_eq!(statuses(&delivered), [Delivered, Delivered]);
    let listed = events(&["list", "--failed"]).await;
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "no failed deliveries"
    );
    assert!(receiver.received().iter().all(|r| r.verified));
}

/// The later events of an attachment whose delivery failed for good are parked (never
/// due) until that one is sent again, then go out in order: left due, every claim
/// walked them and their held-back check, for ever.
async fn deliveries_behind_one_failed_for_good_wait_parked(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Gone);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = private_database_url(setup.db, dir.path()).await;
    let app = spawn_delivering(setup, &[receiver.url()], &["--database-url", &database]).await;
    let Uploaded {
        tenant: acme,
        bearer,
        id,
        ..
    } = app.upload_contract_pdf("gone.pdf").await;
    app.gql(DELETE, json!({ "id": id }), Some(&bearer)).await;
    let parked = wait_for_deliveries(app.app.db.read(), &acme, "file.stored failed", |rows| {
        rows.iter()
            .any(|row| row.event_type == EventType::Stored && row.status == Failed)
    })
    .await;
    let deleted = parked
        .iter()
        .find(|row| row.event_type == EventType::Deleted)
        .expect("the file.deleted delivery");
    assert_eq!(deleted.status, DeliveryStatus::Pending);
    assert_eq!(deleted.attempts, 0, "never sent before file.stored");
    assert!(
        deleted.next_attempt_at.year() >= 9999,
        "parked, not due: {deleted:?}"
    );

    receiver.answer(Answer::Accept);
    let stored = parked
        .iter()
        .find(|row| row.event_type == EventType::Stored)
        .expect("file.stored")
        .event_id
        .to_string();
    let mut args = vec!["events".to_owned(), "retry".to_owned(), stored.clone()];
    args.extend(["--database-url".to_owned(), database.clone()]);
    let retried = run_attache(args).await;
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let delivered = drain_deliveries(app.app.db.read(), &acme).await;
    assert_eq!(statuses(&delivered), [Delivered, Delivered]);
    let received: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].id, stored,
        "file.stored first, then file.deleted"
    );
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
    let acme = app.upload_contract_pdf("a.pdf").await.tenant;
    live.wait_for("the event", |received| accepted(received).len() == 1)
        .await;
    let later = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    assert_eq!(
        admin::prune(db, later, None).await.expect("prune"),
        0,
        "a receiver still waits"
    );

    let late = Receiver::start_on(addr).await;
    late.wait_for("the event", |received| accepted(received).len() == 1)
        .await;
    let delivered = drain_deliveries(db.read(), &acme).await;
    assert_eq!(statuses(&delivered), [Delivered, Delivered]);
    let earlier = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    assert_eq!(
        admin::prune(db, earlier, None).await.expect("prune"),
        0,
        "too young"
    );
    assert_eq!(admin::prune(db, later, None).await.expect("prune"), 1);
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
    // Long enough that the three calls below land inside it on a loaded machine (a
    // commit can wait behind another test's checkpoint).
    let ttl = Duration::from_secs(3);
    let acquire = |holder| attache::workers::maintenance::acquire(db, &name, holder, ttl);
    assert!(acquire(first).await.expect("lease"), "a free lease");
    assert!(!acquire(second).await.expect("lease"), "held by the first");
    assert!(
        acquire(first).await.expect("lease"),
        "renewed by its holder"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(
        acquire(second).await.expect("lease"),
        "a lapsed lease is taken over"
    );
    assert!(!acquire(first).await.expect("lease"));
}

/// The flags of a replica (see [`Served::replica`]): the same database, storage, keys and receivers as its peers.
fn replica_args(
    database: &str,
    storage: &Path,
    receivers: &[String],
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
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

async fn two_replicas_deliver_each_event_exactly_once(setup: Setup) {
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let receivers = [first.url(), second.url()];
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database_url(setup.db, dir.path()).await;
    let storage = dir.path().join("uploads");
    let args = replica_args(&database, &storage, &receivers, &[]);
    let replicas = [Served::replica(&args).await, Served::replica(&args).await];
    let acme = tenant();
    let bearer = token_for(&acme);

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
        let (status, log) = replica.shut_down().await;
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
    let doomed = Served::replica(&args).await;
    let Uploaded {
        tenant: acme, att, ..
    } = doomed.upload_contract_pdf("a.pdf").await;
    receiver
        .wait_for("the first request", |received| received.len() == 1)
        .await;
    let killed_at = Instant::now();
    let survivor = Served::replica(&args).await;
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
    let deliveries = drain_deliveries(&db, &acme).await;
    assert_eq!(statuses(&deliveries), [Delivered]);
    let (status, log) = survivor.shut_down().await;
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
    let replica = Served::replica(&args).await;
    let acme = replica.upload_contract_pdf("a.pdf").await.tenant;
    receiver
        .wait_for("the request in flight", |received| received.len() == 1)
        .await;
    let (status, log) = replica.shut_down().await;
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
    let acme = app.upload_contract_pdf("gone.pdf").await.tenant;
    let failed = drain_deliveries(app.app.db.read(), &acme).await;
    assert_eq!(statuses(&failed), [Failed]);
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
    let other = app.upload_contract_pdf("later.pdf").await.tenant;
    let delivered = drain_deliveries(app.app.db.read(), &other).await;
    assert_eq!(statuses(&delivered), [Delivered]);
    let received = receiver.received();
    let attempts: Vec<&Received> = received.iter().filter(|r| r.status != 410).collect();
    assert_eq!(attempts.len(), 2, "one 503, then the delivery");
    let waited = attempts[1].at - attempts[0].at;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(30),
        "Retry-After: 1 instead of a 60 s backoff: {waited:?}"
    );
}

/// A receiver that refuses `tenant.quota_warning` (a type it does not know) for good
/// still gets the later events of the upload that crossed the threshold.
async fn a_refused_tenant_event_holds_back_no_file_event(setup: Setup) {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::RefuseType("tenant.quota_warning"));
    // A database of its own: `events list` shows every delivery of the database.
    let dir = tempfile::tempdir().expect("tempdir");
    let database = private_database_url(setup.db, dir.path()).await;
    let flags = ["--tenant-quota-files", "2", "--database-url", &database];
    let app = spawn_delivering(setup, &[receiver.url()], &flags).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let ids: Vec<String> = upload_pdfs(&app, &bearer, 2).await.into_iter().collect();
    let warned = receiver
        .wait_for("the warning, refused", |received| {
            received
                .iter()
                .any(|r| r.body["type"] == "tenant.quota_warning" && r.status == 400)
        })
        .await;
    let crossing = warned
        .iter()
        .find(|r| r.body["type"] == "tenant.quota_warning")
        .map(|r| {
            r.body["data"]["file_id"]
                .as_str()
                .expect("file_id")
                .to_owned()
        })
        .expect("the warning");
    assert!(ids.contains(&crossing), "{crossing}");
    // Retried until a 2xx, never `failed`: `events list --stuck` shows it.
    let listed = run_attache(vec![
        "events".into(),
        "list".into(),
        "--stuck".into(),
        "--database-url".into(),
        database.clone(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    let stuck: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("tenant.quota_warning"))
        .collect();
    assert!(
        stuck.len() == 1 && stuck[0].contains("pending") && stuck[0].contains("HTTP 400"),
        "{stdout}"
    );
    // Columns stay under their heads past the longest type (tools cut by column).
    let head = stdout.lines().next().unwrap_or_default();
    assert_eq!(
        head.find("ATTACHMENT"),
        stuck[0].find(crossing.as_str()),
        "{stdout}"
    );
    let answer = app
        .gql(DELETE, json!({ "id": crossing }), Some(&bearer))
        .await;
    assert_eq!(data(&answer, "deleteAttachment"), crossing.as_str());
    receiver
        .wait_for("the file.deleted of the upload that crossed", |received| {
            requests_for(received, "file.deleted", &crossing)
                .iter()
                .any(|r| r.status == 200)
        })
        .await;
}

/// `events list --limit` up to its documented 100,000, on both databases: the list
/// bound one parameter per delivery in one query, past SQLite's 32,766 and
/// PostgreSQL's 65,535 ("too many SQL variables").
async fn a_long_list_of_deliveries_is_listed_whole(setup: Setup) {
    use sea_orm::ConnectionTrait;
    const EVENTS: usize = 70_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let database = private_database_url(setup.db, dir.path()).await;
    let with_database = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
        args.extend(["--database-url".to_owned(), database.clone()]);
        args
    };
    let migrated = run_attache(with_database(&["db", "migrate"])).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let (uuid, now) = match setup.db {
        crate::helpers::Db::Sqlite => (
            "randomblob(16)",
            "strftime('%Y-%m-%dT%H:%M:%S.000000+00:00', 'now')",
        ),
        crate::helpers::Db::Postgres => ("gen_random_uuid()", "now()"),
    };
    let db = sea_orm::Database::connect(&database)
        .await
        .expect("connect");
    db.execute_unprepared(&format!(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {EVENTS}) \
         INSERT INTO outbox_events (id, event_type, attachment_id, tenant_id, storage_key, payload, created_at) \
         SELECT {uuid}, 'file.stored', {uuid}, 't1', 't1/k', '{{}}', {now} FROM g"
    ))
    .await
    .expect("events");
    db.execute_unprepared(
        "INSERT INTO webhook_deliveries (event_seq, attachment_id, receiver, status, attempts, next_attempt_at) \
         SELECT seq, attachment_id, 'http://127.0.0.1:9/hooks', 'failed', 1, created_at FROM outbox_events",
    )
    .await
    .expect("deliveries");
    for which in [&["events", "list"][..], &["events", "list", "--failed"]] {
        let mut args = which.to_vec();
        args.extend(["--limit", "100000"]);
        // Megabytes of output: read as it comes (`run_attache` reads it at the end).
        let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_attache"))
            .args(with_database(&args))
            .env_clear()
            .env("NO_COLOR", "1")
            .output();
        let listed = tokio::time::timeout(Duration::from_secs(60), listed)
            .await
            .expect("listed within a minute")
            .expect("run attache");
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let stdout = String::from_utf8_lossy(&listed.stdout);
        let rows = stdout.lines().filter(|line| line.contains("file.stored"));
        assert_eq!(rows.count(), EVENTS, "{which:?}");
    }
}

crate::matrix!(
    once: a_receiver_that_is_down_is_paused_and_probed,
    a_receiver_failing_one_event_type_is_not_paused,
);
crate::matrix!(db:
    a_refused_tenant_event_holds_back_no_file_event,
    gone_ends_a_delivery_and_retry_after_is_honoured,
    a_failing_receiver_is_retried_with_backoff_and_in_order,
    a_receiver_down_during_uploads_gets_everything_later,
    a_dead_receiver_holds_back_no_other,
    refused_or_failed_writes_emit_no_event,
    failed_deliveries_are_listed_and_retried,
    delivered_events_are_pruned_after_the_retention,
    periodic_work_runs_on_one_replica_at_a_time,
    sigterm_lets_deliveries_in_flight_finish,
    a_long_list_of_deliveries_is_listed_whole,
    held_back_deliveries_wait_with_the_one_before,
    deliveries_behind_one_failed_for_good_wait_parked,
);
crate::matrix!(postgres:
    two_replicas_deliver_each_event_exactly_once,
    a_killed_replica_s_delivery_is_completed_by_another,
    replicas_starting_together_migrate_one_after_another,
);
