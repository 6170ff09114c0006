//! What operators rely on: `/metrics` in Prometheus text, request ids in the log and
//! the response, logs without secrets, a graceful SIGTERM, `/readyz` on a vanished
//! storage folder.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prom_text_format_parser::{Scrape, ValueType};
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, SIGNING_KEY, Served, Setup, Store, TestApp, UPLOAD, Uploaded, data, has, hs256,
    http_client, metrics_text, now, pdf, scrape, tenant, total, total_of,
};

async fn metrics_parse_and_move_with_uploads_and_downloads(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let before = scrape(&app).await;
    let download_route = [("route", "/api/attachments/{id}/download")];
    let Uploaded {
        bearer: token, att, ..
    } = app.upload_contract_pdf("m.pdf").await;
    let download = app
        .client
        .get(att["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(download.status(), 200);
    let after = scrape(&app).await;
    for (name, labels) in [
        ("attache_http_requests_total", &download_route[..]),
        (
            "attache_http_requests_total",
            &[("route", "/graphql"), ("status", "200")][..],
        ),
        ("attache_upload_bytes_total", &[][..]),
        ("attache_graphql_operations_total", &[("outcome", "OK")][..]),
    ] {
        assert!(
            total(&after, name, labels) > total(&before, name, labels),
            "{name} {labels:?} moved"
        );
    }
    let backend = match setup.store {
        Store::Fs => "fs",
        Store::S3 | Store::Garage => "s3",
    };
    let timed_write = total_of(
        &after,
        "attache_storage_operation_duration_seconds",
        &[("backend", backend), ("operation", "write")],
        ValueType::Count,
    );
    assert!(timed_write > 0.0, "a {backend} write was timed");
    for name in ["attache_db_pool_connections", "attache_outbox_backlog"] {
        assert!(has(&after, name), "{name}");
    }
    let id = att["id"].as_str().expect("id");
    let labels = after
        .metrics
        .iter()
        .flat_map(|metric| &metric.samples)
        .flat_map(|sample| sample.labels.iter());
    for label in labels {
        assert!(!label.value.contains(id), "no raw path or id in a label");
    }
}

async fn a_request_id_is_returned_and_a_bad_one_replaced(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let answer = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-42.a_b")
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.headers()["x-request-id"], "req-42.a_b");
    let answer = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", format!("two words {}", "x".repeat(200)))
        .send()
        .await
        .expect("GET");
    let made = answer.headers()["x-request-id"].to_str().expect("ascii");
    assert_eq!(made.len(), 32, "a new id: {made}");
}

async fn readyz_answers_503_while_draining(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    assert_eq!(app.status_of("/readyz").await, 200);
    app.app
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(app.status_of("/readyz").await, 503);
    assert_eq!(
        app.status_of("/healthz").await,
        200,
        "the process still answers"
    );
}

/// Anyone may call `/readyz` and `/metrics`: a flood of them reads the database and
/// the bucket (billed per request on S3) once a second, not once a call (200 lists
/// without it).
async fn health_check_floods_read_storage_once_a_second(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let backend = match setup.store {
        Store::Fs => "fs",
        Store::S3 | Store::Garage => "s3",
    };
    let lists = |scrape: &Scrape| {
        total_of(
            scrape,
            "attache_storage_operation_duration_seconds",
            &[("backend", backend), ("operation", "list")],
            ValueType::Count,
        )
    };
    let before = lists(&scrape(&app).await);
    let started = std::time::Instant::now();
    for _ in 0..8 {
        let checks = (0..50).map(|i| {
            let path = if i % 2 == 0 { "/readyz" } else { "/metrics" };
            app.client.get(app.url(path)).send()
        });
        for answer in futures::future::join_all(checks).await {
            assert_eq!(answer.expect("an answer").status(), 200);
        }
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    // The histogram is the test process's: other tests' servers list their
    // storage meanwhile too (a start, a readiness check), a few times a second.
    let listed = lists(&scrape(&app).await) - before;
    assert!(
        (1.0..50.0).contains(&listed),
        "200 readiness checks in {seconds} s listed the storage {listed} times"
    );
}

async fn readyz_fails_when_the_storage_folder_vanishes(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    assert_eq!(app.status_of("/readyz").await, 200);
    std::fs::remove_dir_all(&app.storage_root).expect("remove the storage folder");
    unready_a_second_later(&app, "storage", "the folder removed").await;
}

/// `/readyz` a second later (readiness is read at most once a second): 503, with
/// `part` unavailable.
async fn unready_a_second_later(app: &TestApp, part: &str, what: &str) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 503, "{what}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body[part], "unavailable", "{what}: {body}");
}

/// Readiness reads a table of attache's: the `SELECT 1` it ran answered for a
/// PostgreSQL database dropped and created again empty under the server, whose
/// every request then failed while the load balancer kept sending them.
async fn readyz_fails_when_the_database_is_replaced_by_an_empty_one(setup: Setup) {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = crate::helpers::private_database_url(setup.db, dir.path()).await;
    let app = TestApp::spawn_with(setup, &["--database-url", &url]).await;
    assert_eq!(app.status_of("/readyz").await, 200);
    let name = url.rsplit('/').next().expect("a database name");
    let admin = crate::helpers::postgres_admin().await;
    for statement in [
        format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        admin
            .execute_unprepared(&statement)
            .await
            .expect(&statement);
    }
    // The pool reconnects meanwhile: to a database without attache's tables.
    for check in ["first check", "second check", "third check"] {
        unready_a_second_later(&app, "database", check).await;
    }
}

async fn a_full_run_logs_request_ids_and_no_secret(_setup: Setup) {
    let webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut served = Served::start(&[
        "--log-format",
        "json",
        "--webhook-urls",
        "http://127.0.0.1:9/hook?token=receiver-token-123",
        "--webhook-secret",
        webhook_secret,
    ])
    .await;
    let client = http_client();
    let acme = tenant();
    let token = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }));
    let marker = format!("file-content-marker-{}", uuid::Uuid::new_v4());
    let mut content = pdf();
    content.extend(marker.as_bytes());
    let body: Value = client
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(&token)
        .header("x-request-id", "req-full-run-1")
        .json(&json!({ "query": UPLOAD, "variables": { "input": {
            "ownerType": "contract", "ownerId": "c-1", "filename": "s.pdf",
            "base64": STANDARD.encode(&content) }}}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("json");
    let att = data(&body, "uploadAttachment");
    let url = att["url"].as_str().expect("url");
    let signature = url.rsplit("signature=").next().expect("a signed link");
    assert_eq!(client.get(url).send().await.expect("GET").status(), 200);
    let bearer = client
        .get(att["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(bearer.status(), 200);
    let refused = client
        .get(format!("{}/graphql?query={{__typename}}", served.base_url))
        .header("authorization", "Bearer not-a-token")
        .header("apollo-require-preflight", "1")
        .send()
        .await
        .expect("GET");
    assert_eq!(refused.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await; // a webhook attempt or two
    served.terminate();
    assert!(served.exit_status().await.success());
    let log = served.log();
    for line in log.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|err| panic!("LOG_FORMAT=json: not JSON ({err}): {line}"));
    }
    assert!(
        log.contains("req-full-run-1"),
        "the request id is in the log"
    );
    assert!(
        log.lines()
            .any(|line| line.contains("\"graphql_errors\":\"UNAUTHENTICATED\"")),
        "the summary line of a refused request names its GraphQL error code"
    );
    // The receiver is logged (a failed attempt), so its token's absence below counts.
    assert!(log.contains("127.0.0.1:9/hook"), "the receiver, redacted");
    for secret in [
        token.as_str(),
        SECRET,
        SIGNING_KEY,
        signature,
        webhook_secret,
        "receiver-token-123",
        marker.as_str(),
        &STANDARD.encode(&content)[..40],
    ] {
        assert!(!log.contains(secret), "the log shows a secret: {secret}");
    }
}

async fn sigterm_lets_a_large_upload_finish(_setup: Setup) {
    let mut served = Served::start(&[]).await;
    let acme = tenant();
    let token = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }));
    let mut content = pdf();
    content.resize(8 * 1024 * 1024, b'%');
    let body = serde_json::to_vec(&json!({ "query": UPLOAD, "variables": { "input": {
        "ownerType": "contract", "ownerId": "c-1", "filename": "big.pdf",
        "base64": STANDARD.encode(&content) }}}))
    .expect("json");
    let host = served.base_url.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let half = body.len() / 2;
    let mut socket = std::net::TcpStream::connect(&host).expect("connect");
    socket.write_all(head.as_bytes()).expect("head");
    socket.write_all(&body[..half]).expect("half the body");
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::task::spawn_blocking(move || {
        socket
            .write_all(&body[half..])
            .expect("the rest of the body");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).expect("the answer");
        answer
    })
    .await
    .expect("join");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    let (_, json) = answer.split_once("\r\n\r\n").expect("a body");
    let body: Value = serde_json::from_str(json).expect("a JSON body");
    let stored = data(&body, "uploadAttachment");
    assert_eq!(stored["sha256"], crate::helpers::sha256_hex(&content));
    assert!(served.exit_status().await.success(), "exit 0 after SIGTERM");
}

crate::matrix!(
    metrics_parse_and_move_with_uploads_and_downloads,
    a_request_id_is_returned_and_a_bad_one_replaced,
    readyz_answers_503_while_draining,
    health_check_floods_read_storage_once_a_second,
);
/// A database failure is logged with the place of the call that failed, so the
/// log names the step; the client sees INTERNAL_SERVER_ERROR and nothing more.
async fn a_database_failure_names_its_step_in_the_log(_: Setup) {
    use sea_orm::ConnectionTrait;
    let served = Served::start(&[]).await;
    let acme = tenant();
    let db = sea_orm::Database::connect(&served.database_url())
        .await
        .expect("connect");
    db.execute_unprepared(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON attachments WHEN NEW.tenant_id = '{acme}' \
         BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;"
    ))
    .await
    .expect("install the trigger");
    let token = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }));
    let body: Value = http_client()
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(&token)
        .json(&json!({ "query": UPLOAD, "variables": { "input": {
            "ownerType": "contract", "ownerId": "c-1", "filename": "a.pdf",
            "base64": STANDARD.encode(pdf()) }}}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INTERNAL_SERVER_ERROR",
        "{body}"
    );
    assert!(
        !body.to_string().contains("trigger"),
        "no internals: {body}"
    );
    let log = served.log();
    let failure = log
        .lines()
        .find(|line| line.contains("database failure"))
        .unwrap_or_else(|| panic!("no database failure logged: {log}"));
    assert!(failure.contains("at=src/"), "the step is named: {failure}");
}

/// A fresh server's `/metrics`: `# HELP` and `# TYPE` on every family (what
/// `promtool check metrics` asks), and every series without labels, the storage
/// errors and the webhook outcomes there at zero before anything happened.
async fn every_family_is_described_and_present_from_the_start(_: Setup) {
    let served = Served::start(&[]).await;
    let text = metrics_text(&served.base_url).await;
    let described = |kind: &str, family: &str| {
        text.lines()
            .any(|line| line.starts_with(&format!("# {kind} {family} ")))
    };
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| described("TYPE", base))
            })
            .unwrap_or(name);
        assert!(
            described("HELP", family) && described("TYPE", family),
            "{family}: {text}"
        );
    }
    for series in [
        "attache_upload_bytes_total 0",
        "attache_outbox_backlog 0",
        "attache_storage_migration_files_left 0",
        "attache_storage_errors_total{backend=\"fs\",operation=\"write\"} 0",
        "attache_webhook_attempts_total{outcome=\"failed\"} 0",
        "attache_webhook_receivers_paused 0",
        "attache_http_connections_closed_for_room_total 0",
        "attache_upload_size_bytes_count 0",
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "{series} in {text}"
        );
    }
    assert!(Scrape::parse(&text).is_ok());
}

/// A streamed write that the store fails counts in `attache_storage_errors_total`:
/// only the writes of small whole files did, so a full disk under large uploads
/// (multipart files, spooled base64, direct PUTs) showed no storage error at all.
async fn a_failed_streamed_write_counts_as_a_storage_error(_: Setup) {
    let served = Served::start(&[]).await;
    let bearer = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));
    let write_errors = || async {
        let text = metrics_text(&served.base_url).await;
        let scrape = Scrape::parse(&text).expect("Prometheus text");
        let labels = [("backend", "fs"), ("operation", "write")];
        total(&scrape, "attache_storage_errors_total", &labels)
    };
    let content = pdf();
    let direct = crate::helpers::announce(
        &served,
        &bearer,
        crate::helpers::declaration(&content, "application/pdf"),
    )
    .await;
    // The staging folder becomes a file: the PUT's streamed write cannot land.
    let staging = served.storage_root().join(".attache-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::write(&staging, b"in the way").expect("a file in the way");
    let before = write_errors().await;
    let status = crate::helpers::put_to(&served, &direct, content).await;
    assert_eq!(status, 503, "the store failed the PUT");
    assert_eq!(write_errors().await, before + 1.0);
}

/// The summary line of the request `id` in `served`'s log, once it is there (a
/// request dropped unanswered is summed up when the server notices).
async fn summary_of(served: &Served, id: &str) -> String {
    let summed_up = || {
        served
            .log()
            .lines()
            .find(|line| line.contains(id) && line.contains("status="))
            .map(str::to_owned)
    };
    let started = std::time::Instant::now();
    while summed_up().is_none() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    summed_up().unwrap_or_else(|| panic!("no summary of {id}: {}", served.log()))
}

/// A request whose client leaves while the server still works on it (here, an
/// upload waiting for SQLite's write lock) is summed up in the log and counted as
/// 499: it was in neither, so the slow requests of an incident, which clients and
/// load balancers give up on, vanished from both.
async fn a_request_whose_client_leaves_is_logged_and_counted(_: Setup) {
    use sea_orm::sqlx;
    let served = Served::start(&[]).await;
    let acme = tenant();
    let bearer = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }));
    let mut holder = crate::helpers::hold_sqlite_write_lock(&served.database_url()).await;
    let input = json!({ "input": {
        "ownerType": "contract", "ownerId": "c-1", "filename": "a.pdf",
        "base64": STANDARD.encode(pdf()) }});
    let upload = json!({ "query": UPLOAD, "variables": input });
    let gave_up = http_client()
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(&bearer)
        .header("x-request-id", "left-early")
        .timeout(Duration::from_secs(1))
        .json(&upload)
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up: {gave_up:?}");
    let line = summary_of(&served, "left-early").await;
    assert!(line.contains("status=499"), "{line}");
    assert!(line.contains("the client closed the connection"), "{line}");
    assert!(line.contains(&format!("tenant={acme}")), "{line}");
    let text = metrics_text(&served.base_url).await;
    let scrape = Scrape::parse(&text).expect("Prometheus text");
    let labels = [("route", "/graphql"), ("method", "POST"), ("status", "499")];
    assert_eq!(total(&scrape, "attache_http_requests_total", &labels), 1.0);
    assert!(
        text.lines()
            .any(|line| line == "attache_http_requests_in_flight 1"),
        "only the scrape itself is in flight: {text}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("the lock given up");
    let stored = served.gql(UPLOAD, input, Some(&bearer)).await;
    assert!(stored["errors"].is_null(), "{stored}");
}

/// A client that leaves while it still sends its body is summed up as 499 too, not
/// as a 400 of its own mistake nor as a refused operation.
async fn a_client_that_leaves_mid_body_is_summed_up_as_gone(_: Setup) {
    use std::io::Write;
    let served = Served::start(&[]).await;
    let bearer = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));
    let host = served.base_url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&host).expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {bearer}\r\nx-request-id: gone-mid-body\r\n\
         Content-Length: 1000\r\n\r\n{{\"query\":\""
    );
    stream
        .write_all(head.as_bytes())
        .expect("a head and a start");
    std::thread::sleep(Duration::from_millis(200));
    drop(stream);
    let line = summary_of(&served, "gone-mid-body").await;
    assert!(line.contains("status=499"), "{line}");

    // The same on the signed upload route of a direct upload.
    let content = pdf();
    let declared = crate::helpers::declaration(&content, "application/pdf");
    let direct = crate::helpers::announce(&served, &bearer, declared).await;
    let url = direct["uploadUrl"].as_str().expect("uploadUrl");
    let target = url
        .strip_prefix(&served.base_url)
        .expect("a route of this server");
    let mut stream = std::net::TcpStream::connect(&host).expect("connect");
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/pdf\r\n\
         x-request-id: put-gone-mid-body\r\nContent-Length: {}\r\n\r\n",
        content.len()
    );
    stream.write_all(head.as_bytes()).expect("a head");
    stream
        .write_all(&content[..content.len() / 2])
        .expect("half the file");
    std::thread::sleep(Duration::from_millis(200));
    drop(stream);
    let line = summary_of(&served, "put-gone-mid-body").await;
    assert!(line.contains("status=499"), "{line}");
    let scrape = Scrape::parse(&metrics_text(&served.base_url).await).expect("Prometheus text");
    let refused = [("operation", "other"), ("outcome", "BAD_USER_INPUT")];
    assert_eq!(
        total(&scrape, "attache_graphql_operations_total", &refused),
        0.0
    );
}

/// Operations refused before they run (no token here) count in
/// `attache_graphql_operations_total` as `other`, by code: with HTTP 200 for them,
/// a key rotation that locked every client out showed in no series. CORS preflights
/// are logged and counted like every request.
async fn refusals_and_preflights_are_counted(_: Setup) {
    let origin = "https://app.example";
    let served = Served::start(&["--cors-allowed-origins", origin]).await;
    let refused: Value = http_client()
        .post(format!("{}/graphql", served.base_url))
        .json(&json!({ "query": "query Usage { usage { bytes } }", "operationName": "Usage" }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );
    let preflight = http_client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/graphql", served.base_url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("x-request-id", "a-preflight")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    // Named in its document alone (Apollo Client sends `operationName`, curl does not).
    let bearer = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));
    let usage = served
        .gql("query Usage { usage { bytes } }", json!({}), Some(&bearer))
        .await;
    assert!(usage["errors"].is_null(), "{usage}");
    let scrape = Scrape::parse(&metrics_text(&served.base_url).await).expect("Prometheus text");
    let refusal = [("operation", "other"), ("outcome", "UNAUTHENTICATED")];
    assert_eq!(
        total(&scrape, "attache_graphql_operations_total", &refusal),
        1.0
    );
    let named = [("operation", "Usage"), ("outcome", "OK")];
    assert_eq!(
        total(&scrape, "attache_graphql_operations_total", &named),
        1.0
    );
    let preflights = [
        ("route", "/graphql"),
        ("method", "OPTIONS"),
        ("status", "200"),
    ];
    assert_eq!(
        total(&scrape, "attache_http_requests_total", &preflights),
        1.0
    );
    let line = summary_of(&served, "a-preflight").await;
    assert!(line.contains("status=200"), "{line}");
    assert!(
        line.contains("client=127.0.0.1"),
        "the peer's address: {line}"
    );
}

/// `/metrics` answers within Prometheus' scrape timeout (10 s) while the tables it
/// counts from are locked: its two reads waited 5 s each, one after the other, so
/// the scrape failed and every series of the incident was lost with it.
async fn metrics_answer_while_the_database_stalls(setup: Setup) {
    use sea_orm::sqlx::{self, Connection};
    let (app, database_url) = TestApp::spawn_alone(setup, &[]).await;
    let mut holder = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("a connection of another process");
    sqlx::raw_sql("BEGIN; LOCK TABLE webhook_deliveries, tenant_usage IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("the locks");
    let started = std::time::Instant::now();
    let scrape = scrape(&app).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "answered in {waited:?}");
    assert!(has(&scrape, "attache_http_requests_total"));
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("the locks given up");
}

/// A second SIGTERM ends a draining server at once (exit 143, as a shell says of a
/// process SIGTERM ended), as a second Ctrl-C does: it was ignored, and the server waited for its slowest client up to
/// `SHUTDOWN_GRACE_SECONDS`.
async fn a_second_sigterm_ends_the_server_at_once(_setup: Setup) {
    let mut served = Served::start(&["--shutdown-grace-seconds", "120"]).await;
    let token = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));
    let host = served.base_url.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 1000000\r\n\r\n{{\"query\":\""
    );
    let mut socket = std::net::TcpStream::connect(&host).expect("connect");
    socket
        .write_all(head.as_bytes())
        .expect("a body that stops");
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        served.child.try_wait().expect("wait").is_none(),
        "the first SIGTERM drains: {}",
        served.log()
    );
    served.terminate();
    let started = std::time::Instant::now();
    while served.child.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5 s after the second SIGTERM: {}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.exit_status().await.code(), Some(143));
    let log = served.log();
    assert!(log.contains("stop again to end at once"), "{log}");
    assert!(log.contains("stopped at once"), "{log}");
    drop(socket);
}

crate::matrix!(
    once: a_full_run_logs_request_ids_and_no_secret,
    sigterm_lets_a_large_upload_finish,
    a_second_sigterm_ends_the_server_at_once,
    every_family_is_described_and_present_from_the_start,
    a_database_failure_names_its_step_in_the_log,
    a_failed_streamed_write_counts_as_a_storage_error,
    a_request_whose_client_leaves_is_logged_and_counted,
    a_client_that_leaves_mid_body_is_summed_up_as_gone,
    refusals_and_preflights_are_counted,
);

crate::matrix!(postgres:
    metrics_answer_while_the_database_stalls,
    readyz_fails_when_the_database_is_replaced_by_an_empty_one,
);

crate::matrix!(db: readyz_fails_when_the_storage_folder_vanishes);
