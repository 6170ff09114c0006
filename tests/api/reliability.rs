//! Nothing half-made: clients that go away mid-request, a server killed during a
//! burst of uploads, and a clear "busy" instead of an endless queue.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use entity::attachment;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::{
    SECRET, SIGNING_KEY, Setup, TestApp, UPLOAD, hs256, http_client, now, pdf, run_attache,
    sha256_hex, tenant,
};

/// A PDF of about `size` bytes, different at every call.
fn large_pdf(size: usize) -> Vec<u8> {
    let mut bytes = pdf();
    bytes.resize(size, b'%');
    bytes
}

/// The raw bytes of an `uploadAttachment` POST.
fn upload_request(host: &str, token: &str, content: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::to_vec(&json!({
        "query": UPLOAD,
        "variables": { "input": {
            "ownerType": "contract", "ownerId": "c-1", "filename": "x.pdf",
            "base64": STANDARD.encode(content),
        }},
    }))
    .expect("json");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head.into_bytes(), body)
}

/// Every row of `tenant` names a stored object with its bytes, and every object
/// under the tenant's folder has a row.
async fn assert_files_equal_rows(app: &TestApp, tenant: &str) {
    let mut stable = 0;
    for _ in 0..100 {
        let keys = tenant_keys(&app.storage_root, tenant);
        if keys.len() as u64 == app.row_count(tenant).await {
            stable += 1;
            if stable == 3 {
                break;
            }
        } else {
            stable = 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = attachment::Entity::find()
        .filter(attachment::Column::TenantId.eq(tenant))
        .all(&app.app.db)
        .await
        .expect("rows");
    let keys = tenant_keys(&app.storage_root, tenant);
    for row in &rows {
        let bytes = std::fs::read(app.storage_root.join(&row.storage_key))
            .unwrap_or_else(|err| panic!("row {} has no object: {err}", row.id));
        assert_eq!(sha256_hex(&bytes), row.sha256);
    }
    let mut row_keys: Vec<String> = rows.into_iter().map(|row| row.storage_key).collect();
    row_keys.sort();
    assert_eq!(keys, row_keys, "files = rows");
}

/// The stored keys under `root/tenant/`.
fn tenant_keys(root: &Path, tenant: &str) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if let Ok(key) = path.strip_prefix(root) {
                out.push(key.to_string_lossy().into_owned());
            }
        }
    }
    let mut keys = Vec::new();
    walk(&root.join(tenant), root, &mut keys);
    keys.sort();
    keys
}

async fn clients_that_disconnect_leave_no_orphan(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let token = app.token(&acme);
    let host = app.base_url.trim_start_matches("http://").to_owned();
    for round in 0..60 {
        let (head, body) = upload_request(&host, &token, &large_pdf(150 * 1024));
        let mut socket = tokio::net::TcpStream::connect(&host)
            .await
            .expect("connect");
        socket.write_all(&head).await.expect("head");
        match round % 4 {
            // During the body.
            0 => socket
                .write_all(&body[..body.len() / 2])
                .await
                .expect("half"),
            // Right after the body.
            1 => socket.write_all(&body).await.expect("body"),
            // A moment later, while the server decodes, writes or commits.
            _ => {
                socket.write_all(&body).await.expect("body");
                tokio::time::sleep(Duration::from_millis(round % 30)).await;
            }
        }
        drop(socket);
    }
    // An upload that stays to the end still works.
    app.upload(&token, &pdf(), "contract", Some("c-1"), "kept.pdf")
        .await;
    assert_files_equal_rows(&app, &acme).await;
}

async fn a_busy_server_answers_503_with_retry_after(setup: Setup) {
    let app = TestApp::spawn_with(
        setup,
        &[
            "--max-concurrent-uploads",
            "1",
            "--upload-queue-timeout-seconds",
            "1",
        ],
    )
    .await;
    let acme = tenant();
    let token = app.token(&acme);
    let host = app.base_url.trim_start_matches("http://").to_owned();
    // A slow client holds the only upload slot: headers sent, body trickling.
    let (head, body) = upload_request(&host, &token, &large_pdf(200 * 1024));
    let mut slow = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    slow.write_all(&head).await.expect("head");
    slow.write_all(&body[..1024]).await.expect("a little body");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    let content = large_pdf(100 * 1024);
    let request = json!({ "query": UPLOAD, "variables": { "input": {
        "ownerType": "contract", "ownerId": "c-1", "filename": "busy.pdf",
        "base64": STANDARD.encode(&content) }}});
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&request)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "a bounded wait");
    assert_eq!(response.headers()["retry-after"], "2");
    let body: Value = response.json().await.expect("a GraphQL-shaped body");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "STORAGE_UNAVAILABLE"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("busy")
    );

    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retried = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&request)
        .send()
        .await
        .expect("POST");
    assert_eq!(retried.status(), 200, "the slot is free again");
    assert_files_equal_rows(&app, &acme).await;
}

/// A free port on loopback for a server started as a process.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

async fn a_server_killed_during_uploads_leaves_rows_with_objects(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let root = dir.path().join("uploads");
    let port = free_port();
    let config = [
        "--database-url".to_owned(),
        database_url.clone(),
        "--storage-root".to_owned(),
        root.display().to_string(),
    ];
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_attache"))
        .arg("serve")
        .args(&config)
        .args(["--listen-addr", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", SECRET, "--signing-key", SIGNING_KEY])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start attache serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acme = tenant();
    let token = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }));
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        burst.spawn(async move {
            loop {
                let request = json!({ "query": UPLOAD, "variables": { "input": {
                    "ownerType": "contract", "ownerId": "c-1", "filename": "burst.pdf",
                    "base64": STANDARD.encode(large_pdf(64 * 1024)) }}});
                let sent = client
                    .post(format!("{base}/graphql"))
                    .bearer_auth(&token)
                    .json(&request)
                    .send()
                    .await;
                if sent.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill().expect("SIGKILL");
    server.wait().expect("reap");
    while burst.join_next().await.is_some() {}

    let db = sea_orm::Database::connect(&database_url)
        .await
        .expect("connect");
    let rows = attachment::Entity::find().all(&db).await.expect("rows");
    assert!(!rows.is_empty(), "some uploads were stored before the kill");
    for row in &rows {
        let bytes = std::fs::read(root.join(&row.storage_key))
            .unwrap_or_else(|err| panic!("row {} has no object: {err}", row.id));
        assert_eq!(sha256_hex(&bytes), row.sha256, "{}", row.storage_key);
    }
    let mut sweep = vec!["storage".to_owned(), "sweep".to_owned()];
    sweep.extend(config);
    sweep.extend(["--older-than".to_owned(), "0s".to_owned()]);
    let output = run_attache(sweep).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let keys = tenant_keys(&root, &acme);
    let mut row_keys: Vec<String> = rows.into_iter().map(|row| row.storage_key).collect();
    row_keys.sort();
    assert_eq!(keys, row_keys, "after the sweep, files = rows");
}

crate::matrix!(
    clients_that_disconnect_leave_no_orphan,
    a_busy_server_answers_503_with_retry_after,
);
crate::matrix!(once: a_server_killed_during_uploads_leaves_rows_with_objects);
