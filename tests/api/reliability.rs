//! Nothing half-made: clients that go away mid-request, a server killed during a
//! burst of uploads, a clear "busy" instead of an endless queue, connections that
//! the database dropped, and a burst on a small database pool.

use std::path::Path;
use std::time::Duration;

use attache::storage::StorageKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use entity::{attachment, storage_deletion};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::{
    Api, DELETE, S3Server, Served, Setup, TestApp, UPLOAD, data, hs256, http_client, keys_under,
    now, pdf, postgres_admin, private_database_url, run_attache, s3_flags, sha256_hex, tenant,
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

/// Every row of `tenant` names a stored object with its bytes, every object under
/// the tenant's folder has a row, and no upload of the tenant left its intent
/// behind (half-made: an object the maintenance would remove).
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
        .all(app.app.db.read())
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
    let mut intents = Vec::new();
    for _ in 0..100 {
        intents = storage_deletion::Entity::find()
            .filter(storage_deletion::Column::StorageKey.starts_with(format!("{tenant}/")))
            .all(app.app.db.read())
            .await
            .expect("entries");
        if intents.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(intents.is_empty(), "entries left: {intents:?}");
}

/// The stored keys under `root/tenant/`.
fn tenant_keys(root: &Path, tenant: &str) -> Vec<String> {
    keys_under(root, &root.join(tenant))
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
    let waited = std::time::Instant::now();
    while app.app.upload_slots.free() > 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the slow client never took the slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = std::time::Instant::now();
    let content = large_pdf(100 * 1024);
    let request = json!({ "query": UPLOAD, "variables": { "input": {
        "ownerType": "contract", "ownerId": "c-1", "filename": "busy.pdf",
        "base64": STANDARD.encode(&content) }}});
    let post = || {
        app.client
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .json(&request)
            .send()
    };
    let response = post().await.expect("POST");
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
    let retried = post().await.expect("POST");
    assert_eq!(retried.status(), 200, "the slot is free again");
    let body: Value = retried.json().await.expect("json");
    assert!(data(&body, "uploadAttachment")["id"].is_string());
    assert_files_equal_rows(&app, &acme).await;
}

async fn a_server_killed_during_uploads_leaves_rows_with_objects(_setup: Setup) {
    let mut server = Served::start(&[]).await;
    let (database_url, root, base) = (
        server.database_url(),
        server.storage_root(),
        server.base_url.clone(),
    );
    let client = http_client();
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
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reap");
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
    let sweep = [
        "storage",
        "sweep",
        "--database-url",
        &database_url,
        "--storage-root",
        &root.display().to_string(),
        "--older-than",
        "0s",
    ]
    .map(str::to_owned)
    .to_vec();
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

/// The every-minute maintenance finishes what a crash left: the object of an
/// upload whose intent is older than the grace is removed; one in flight (a young
/// intent) stays, and so does one recorded by a replica whose uploads last longer
/// (its intent's deadline is to come: a replica with a shorter
/// BODY_TIMEOUT_SECONDS took such an upload's object while it arrived); and an
/// object a row names stays whatever entry asks for its removal, which goes ("no
/// removal takes an object that a row names").
async fn the_maintenance_removes_what_a_crash_left_and_nothing_a_row_names(setup: Setup) {
    use sea_orm::{ActiveValue::Set, QueryTrait};
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let token = app.token(&acme);
    let stored = app
        .upload(&token, &pdf(), "contract", Some("c-1"), "kept.pdf")
        .await;
    let named = TestApp::contract_key(&acme, "c-1", &stored);
    let [crashed, in_flight, slow_elsewhere] =
        [0, 1, 2].map(|_| format!("{acme}/contracts/c-1/{}.pdf", uuid::Uuid::now_v7()));
    for key in [&crashed, &in_flight, &slow_elsewhere] {
        app.app
            .storage
            .put_new(
                &StorageKey::from_stored(key.clone()),
                Bytes::from(pdf()),
                "application/pdf",
            )
            .await
            .expect("an object written before its row");
    }
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::hours(2);
    let intents = [
        (&crashed, old, None),
        (&named, old, None),
        (&in_flight, now, None),
        (&slow_elsewhere, old, Some(now + chrono::Duration::hours(1))),
    ]
    .map(|(key, created_at, deadline)| {
        storage_deletion::Entity::insert(storage_deletion::ActiveModel {
            storage_key: Set(key.clone()),
            attempts: Set(0),
            created_at: Set(created_at),
            intent: Set(true),
            remove_after: Set(deadline),
        })
        .build(app.app.db.backend())
    });
    app.app
        .db
        .commit(intents.to_vec())
        .await
        .expect("the intents");

    attache::workers::maintenance::pass(&app.app, &Default::default()).await;
    let keys = app.stored_keys();
    assert!(
        !keys.contains(&crashed),
        "the crash's object is removed: {keys:?}"
    );
    assert!(
        keys.contains(&in_flight),
        "an upload in flight keeps its object"
    );
    assert!(
        keys.contains(&slow_elsewhere),
        "an upload whose replica gives it longer keeps its object"
    );
    assert!(keys.contains(&named), "the row's object stays");
    let route = stored["downloadUrl"].as_str().expect("downloadUrl");
    let download = app.get_with(route, &token).await;
    assert_eq!(download.status(), 200);
    let left: Vec<String> = storage_deletion::Entity::find()
        .all(app.app.db.read())
        .await
        .expect("entries")
        .into_iter()
        .map(|entry| entry.storage_key)
        .collect();
    assert!(
        !left.contains(&crashed) && !left.contains(&named),
        "{left:?}"
    );
    assert!(
        left.contains(&in_flight) && left.contains(&slow_elsewhere),
        "{left:?}"
    );
}

/// The spool of a base64 upload that a killed process left in the staging folder
/// on fs has no intent (it is written before the upload is parsed): the maintenance
/// removes it once it has been unwritten for longer than any upload can last, and
/// leaves a young spool and a direct upload's object, which waits for its
/// completion, alone. Before, only `storage sweep` found such a spool, and every
/// kill during a large upload left one for good.
async fn the_maintenance_removes_a_killed_uploads_spool(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let content = pdf();
    let declared = crate::helpers::declaration(&content, "application/pdf");
    let (direct, status) =
        crate::helpers::announce_and_put(&app, &bearer, declared, content.clone()).await;
    assert_eq!(status, 200, "PUT to uploadUrl");
    let staging = app.storage_root.join(StorageKey::STAGING);
    let direct_object = staging.join(direct["id"].as_str().expect("id"));
    let [abandoned, young] = [0, 1].map(|_| staging.join(uuid::Uuid::now_v7().to_string()));
    for spool in [&abandoned, &young] {
        std::fs::write(spool, b"half of a base64 upload").expect("a spool");
    }
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for old in [&abandoned, &direct_object] {
        std::fs::File::options()
            .write(true)
            .open(old)
            .and_then(|file| file.set_modified(long_ago))
            .expect("made old");
    }
    attache::workers::maintenance::pass(&app.app, &Default::default()).await;
    assert!(!abandoned.exists(), "the killed upload's spool is removed");
    assert!(young.exists(), "a spool still written stays");
    assert!(direct_object.exists(), "a direct upload's object stays");
    let done = crate::helpers::complete_direct(&app, &bearer, &direct).await;
    assert_eq!(
        data(&done, "completeDirectUpload")["id"],
        direct["id"],
        "{done}"
    );
}

/// A completion retried after its upload landed records its intent for the file
/// again until it sees the row; a delete meanwhile goes through (it answered
/// INTERNAL_SERVER_ERROR on the intent's primary key) and its file goes with it.
async fn a_delete_goes_through_a_late_intent_of_its_file(setup: Setup) {
    use sea_orm::{ActiveValue::Set, QueryTrait};
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let token = app.token(&acme);
    let stored = app
        .upload(&token, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let key = TestApp::contract_key(&acme, "c-1", &stored);
    let intent = storage_deletion::Entity::insert(storage_deletion::ActiveModel {
        storage_key: Set(key.clone()),
        attempts: Set(0),
        created_at: Set(chrono::Utc::now()),
        intent: Set(true),
        remove_after: Set(None),
    })
    .build(app.app.db.backend());
    app.app.db.commit(vec![intent]).await.expect("the intent");

    let deleted = app
        .gql(DELETE, json!({ "id": stored["id"] }), Some(&token))
        .await;
    assert!(deleted.get("errors").is_none(), "{deleted}");
    assert_eq!(data(&deleted, "deleteAttachment"), stored["id"]);
    assert!(
        !app.stored_keys().contains(&key),
        "the file goes with its row"
    );
    let left = storage_deletion::Entity::find_by_id(key)
        .one(app.app.db.read())
        .await
        .expect("entries");
    assert!(left.is_none(), "no entry is left: {left:?}");
}

/// The folders in `tmp`, and the files in it and in them.
fn temporary_files(tmp: &Path) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let (folders, mut files): (Vec<_>, Vec<_>) = std::fs::read_dir(tmp)
        .expect("TMPDIR")
        .flatten()
        .map(|entry| entry.path())
        .partition(|path| path.is_dir());
    files.extend(
        folders
            .iter()
            .flat_map(|folder| std::fs::read_dir(folder).expect("a folder").flatten())
            .map(|entry| entry.path()),
    );
    (folders, files)
}

/// What an upload keeps in `TMPDIR` while it arrives (a base64 spool beside S3)
/// outlives a kill; the next start removes it. It stayed for good, each up to
/// `MAX_UPLOAD_BYTES`, on the volume a read-only root filesystem asks for.
async fn a_killed_servers_temporary_files_go_at_the_next_start(_setup: Setup) {
    let s3_dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(s3_dir.path()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let tmpdir = tmp.path().display().to_string();
    let flags = s3_flags(&s3.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = [("TMPDIR", tmpdir.as_str())];
    let served = Served::start_with_env(&flags, &env).await;
    let token = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));
    let host = served.base_url.trim_start_matches("http://").to_owned();
    let (head, body) = upload_request(&host, &token, &large_pdf(4 * 1024 * 1024));
    let mut socket = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    socket.write_all(&head).await.expect("head");
    socket
        .write_all(&body[..body.len() / 2])
        .await
        .expect("half the body");
    let started = std::time::Instant::now();
    let spooled = loop {
        let (_, files) = temporary_files(tmp.path());
        if let Some(file) = files
            .into_iter()
            .find(|file| std::fs::metadata(file).is_ok_and(|meta| meta.len() > 1024 * 1024))
        {
            break file;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no spool in TMPDIR: {:?}",
            temporary_files(tmp.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    served.kill().await;
    drop(socket);
    assert!(spooled.exists(), "a kill leaves the spool");

    let next = Served::start_with_env(&flags, &env).await;
    assert!(
        !spooled.exists(),
        "the next start removed it: {}",
        next.log()
    );
    let (folders, files) = temporary_files(tmp.path());
    assert_eq!(
        folders.len(),
        1,
        "the new server's folder alone: {folders:?}"
    );
    assert!(files.is_empty(), "{files:?}");
    assert!(
        next.log()
            .contains("removed the temporary files of an ended attache process"),
        "{}",
        next.log()
    );
}

async fn fsync_files_stores_uploads_durably(setup: Setup) {
    let app = TestApp::spawn_with(
        setup,
        &["--fsync-files", "true", "--sqlite-synchronous", "full"],
    )
    .await;
    let acme = tenant();
    let token = app.token(&acme);
    app.upload(&token, &pdf(), "contract", Some("c-1"), "synced.pdf")
        .await;
    assert_files_equal_rows(&app, &acme).await;
}

/// PostgreSQL drops every connection of attache's pool (a restart, a proxy's idle
/// timeout): a connection that has sat idle is pinged before use and replaced, so
/// the next upload and listing succeed and nothing of the first upload is lost.
async fn connections_the_database_dropped_are_replaced(setup: Setup) {
    use sea_orm::ConnectionTrait;
    let (app, database_url) = TestApp::spawn_alone(setup, &[]).await;
    let acme = tenant();
    let token = app.token(&acme);
    app.upload(&token, &pdf(), "contract", Some("c-1"), "before.pdf")
        .await;
    let database = database_url.rsplit('/').next().expect("database name");
    let dropped = postgres_admin()
        .await
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ))
        .await
        .expect("terminate the server's connections");
    assert!(dropped.rows_affected() > 0, "the pool had connections");
    // Idle past the ping's threshold (1 s): the dead connections are found out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.upload(&token, &pdf(), "contract", Some("c-1"), "after.pdf")
        .await;
    let listed = app
        .gql(
            r#"{ attachments(ownerType: "contract", ownerId: "c-1", first: 10) { edges { node { filename } } } }"#,
            json!({}),
            Some(&token),
        )
        .await;
    let names: Vec<_> = data(&listed, "attachments")["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|edge| edge["node"]["filename"].clone())
        .collect();
    assert_eq!(names, [json!("after.pdf"), json!("before.pdf")], "{listed}");
    assert_files_equal_rows(&app, &acme).await;
}

/// Another process holding SQLite's write lock past the busy timeout (a recount, a
/// command's write) fails the uploads waiting meanwhile together, in one more wait
/// of the timeout (10 s), not in one more for each of them (the writer's turn held
/// all along); once the lock is free, uploads are stored again.
async fn a_held_sqlite_lock_fails_the_waiting_uploads_together(setup: Setup) {
    use sea_orm::sqlx;
    let (app, database_url) = TestApp::spawn_alone(setup, &[]).await;
    let acme = tenant();
    let token = app.token(&acme);
    let mut holder = crate::helpers::hold_sqlite_write_lock(&database_url).await;

    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..4).map(|n| {
        let input = json!({ "input": {
            "ownerType": "contract", "ownerId": "c-1", "filename": format!("{n}.pdf"),
            "base64": STANDARD.encode(pdf()) }});
        let token = &token;
        let app = &app;
        async move { app.gql(UPLOAD, input, Some(token)).await }
    }))
    .await;
    let waited = started.elapsed();
    for answer in &answers {
        assert!(answer.get("errors").is_some(), "{answer}");
    }
    // The first upload's turn and the others' together: 20 s; alone, each of the
    // other three would have waited 10 s more.
    assert!(waited < Duration::from_secs(30), "answered in {waited:?}");

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("the lock given up");
    app.upload(&token, &pdf(), "contract", Some("c-1"), "after.pdf")
        .await;
    assert_files_equal_rows(&app, &acme).await;
}

/// A pool of two PostgreSQL connections (`DATABASE_MAX_CONNECTIONS=2`) serves a
/// burst of uploads and listings from several tenants: queries wait for a
/// connection instead of failing, and PostgreSQL never sees more than two of the
/// server's (with the default of 10, the same burst opens more).
async fn a_small_database_pool_serves_a_burst(setup: Setup) {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = private_database_url(setup.db, dir.path()).await;
    let uploads = dir.path().join("uploads");
    let pool = ["--database-max-connections", "2"];
    let app = TestApp::spawn_at(setup, dir, &database_url, &uploads, &pool).await;
    let tenants: Vec<String> = (0..4).map(|_| tenant()).collect();
    let tokens: Vec<String> = tenants.iter().map(|t| app.token(t)).collect();
    let database = database_url.rsplit('/').next().expect("database name");
    let admin = postgres_admin().await;
    let count = format!("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{database}'");
    let busiest = std::sync::atomic::AtomicI64::new(0);
    let burst_over = std::sync::atomic::AtomicBool::new(false);
    let watch = async {
        while !burst_over.load(std::sync::atomic::Ordering::Relaxed) {
            let row = admin
                .query_one_raw(sea_orm::Statement::from_string(
                    admin.get_database_backend(),
                    count.clone(),
                ))
                .await
                .expect("count the server's connections")
                .expect("a row");
            let open: i64 = row.try_get("", "n").expect("n");
            busiest.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let burst = async {
        let stores = (0..32).map(|i| {
            let token = &tokens[i % tokens.len()];
            let (app, content) = (&app, pdf());
            async move {
                app.upload(
                    token,
                    &content,
                    "contract",
                    Some("c-1"),
                    &format!("{i}.pdf"),
                )
                .await
            }
        });
        let lists = (0..32).map(|i| {
            app.gql(
                r#"{ attachments(ownerType: "contract", ownerId: "c-1", first: 50) { totalCount } }"#,
                json!({}),
                Some(&tokens[i % tokens.len()]),
            )
        });
        let (_, listed) = futures::future::join(
            futures::future::join_all(stores),
            futures::future::join_all(lists),
        )
        .await;
        burst_over.store(true, std::sync::atomic::Ordering::Relaxed);
        listed
    };
    let ((), listed) = futures::future::join(watch, burst).await;
    for answer in &listed {
        assert!(answer.get("errors").is_none(), "{answer}");
    }
    let busiest = busiest.into_inner();
    assert!((1..=2).contains(&busiest), "{busiest} connections at once");
    for (tenant, token) in tenants.iter().zip(&tokens) {
        let listed = app
            .gql(
                r#"{ attachments(ownerType: "contract", ownerId: "c-1", first: 50) { totalCount } }"#,
                json!({}),
                Some(token),
            )
            .await;
        assert_eq!(data(&listed, "attachments")["totalCount"], 8, "{listed}");
        assert_files_equal_rows(&app, tenant).await;
    }
}

crate::matrix!(postgres: connections_the_database_dropped_are_replaced, a_small_database_pool_serves_a_burst);
crate::matrix!(db: the_maintenance_removes_a_killed_uploads_spool);

crate::matrix!(
    fsync_files_stores_uploads_durably,
    the_maintenance_removes_what_a_crash_left_and_nothing_a_row_names,
    a_delete_goes_through_a_late_intent_of_its_file,
    clients_that_disconnect_leave_no_orphan,
    a_busy_server_answers_503_with_retry_after,
);
crate::matrix!(
    once: a_server_killed_during_uploads_leaves_rows_with_objects,
    a_killed_servers_temporary_files_go_at_the_next_start,
    a_held_sqlite_lock_fails_the_waiting_uploads_together,
);

/// Files are as durable as the rows that name them: with SQLite's synced commits
/// (as on PostgreSQL) a new file is synced without FSYNC_FILES, and so are the new
/// folders of a tenant's first upload, each into its parent (only the file and its
/// own folder were: a power loss could take a new folder, and the synced file in it).
/// Seen with strace attached to the server.
#[tokio::test]
async fn new_files_and_their_new_folders_are_synced() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but strace is missing"
        );
        crate::helpers::say("SKIPPED: the file sync test, because strace is not installed");
        return;
    }
    let served = Served::start(&["--sqlite-synchronous", "full"]).await;
    let trace = served.storage_root().with_extension("strace");
    let mut strace = tokio::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .args(["-p", &served.child.id().to_string()])
        .kill_on_drop(true)
        .spawn()
        .expect("strace starts");
    // Attached once every thread of the server names a tracer.
    let pid = served.child.id();
    let traced = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
        tasks.flatten().all(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status.lines().any(|line| {
                line.starts_with("TracerPid:") && line.split_whitespace().nth(1) != Some("0")
            })
        })
    };
    for _ in 0..100 {
        if traced() {
            break;
        }
        if let Ok(Some(status)) = strace.try_wait() {
            panic!("strace could not attach to the server ({status}): ptrace is refused here");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(traced(), "strace attached to every thread of the server");
    let api = Api {
        base_url: served.base_url.clone(),
        client: http_client(),
    };
    let acme = tenant();
    let token = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }));
    let input = json!({ "input": { "ownerType": "contract", "ownerId": "new-owner",
        "filename": "c.pdf", "base64": STANDARD.encode(pdf()) }});
    let stored = data(
        &api.gql(UPLOAD, input, Some(&token)).await,
        "uploadAttachment",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = strace.start_kill();
    let _ = strace.wait().await;
    let trace = std::fs::read_to_string(&trace).expect("the trace");
    let root = served.storage_root().canonicalize().expect("root");
    let root = root.display();
    let id = stored["id"].as_str().expect("id");
    for (what, synced) in [
        (
            "the file",
            format!("{root}/{acme}/contracts/new-owner/{id}.pdf>"),
        ),
        ("its folder", format!("{root}/{acme}/contracts/new-owner>")),
        (
            "the owner's new folder in its parent",
            format!("{root}/{acme}/contracts>"),
        ),
        (
            "the tenant's new folder in its parent",
            format!("{root}/{acme}>"),
        ),
        ("the tenant's folder in the root", format!("{root}>")),
    ] {
        assert!(
            trace.contains(&synced),
            "{what} ({synced}) is synced:\n{trace}"
        );
    }
}

/// The server's own disk failing while an upload arrives is the server's error, said
/// and logged as a storage failure, and nothing is stored: a multipart part kept in
/// a temporary folder that is gone (it was "the file part is missing: the request
/// body broke", BAD_USER_INPUT, logged nowhere), and a large base64 file whose staging
/// folder on fs cannot be made (it was INTERNAL_SERVER_ERROR).
#[tokio::test]
async fn a_failing_server_disk_is_not_the_clients_fault() {
    let temporary = tempfile::tempdir().expect("dir");
    let temp_path = temporary.path().to_str().expect("utf-8").to_owned();
    let served = Served::start_with_env(&[], &[("TMPDIR", &temp_path)]).await;
    drop(temporary);
    let staging = served.storage_root().join(".attache-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::write(&staging, b"not a folder").expect("a file where the folder goes");
    let bearer = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));

    // One part for two variables is kept in a temporary file for both.
    let form = crate::helpers::two_files_form("id", json!({ "0": ["variables.a", "variables.b"] }))
        .part(
            "0",
            crate::helpers::file_part(&pdf(), "c.pdf", "application/pdf"),
        );
    let (_, body) = crate::helpers::post_multipart(&served.base_url, &bearer, form).await;
    assert_eq!(
        crate::helpers::codes(&body),
        ["STORAGE_UNAVAILABLE", "STORAGE_UNAVAILABLE"],
        "{body}"
    );

    let api = Api {
        base_url: served.base_url.clone(),
        client: http_client(),
    };
    let content = large_pdf(3 * 1024 * 1024);
    let input = json!({ "input": { "ownerType": "contract", "ownerId": "c",
        "filename": "big.pdf", "base64": STANDARD.encode(&content) }});
    let body = api.gql(UPLOAD, input, Some(&bearer)).await;
    assert_eq!(
        crate::helpers::codes(&body),
        ["STORAGE_UNAVAILABLE"],
        "{body}"
    );

    let log = served.log();
    assert!(
        log.contains("TMPDIR"),
        "the temporary folder is named in the log"
    );
    assert!(
        log.contains("cannot keep an upload while it arrives"),
        "{log}"
    );
    let listed = api
        .gql(
            "{ attachments(ownerType: \"contract\", ownerId: \"c\") { totalCount } }",
            json!({}),
            Some(&bearer),
        )
        .await;
    assert_eq!(data(&listed, "attachments")["totalCount"], 0, "{listed}");
}

/// A filesystem that refuses `O_DIRECT` (ramfs) gets large files written the
/// ordinary way, every byte kept: attache runs with its storage folder on a ramfs
/// in a mount namespace of its own.
#[tokio::test]
async fn a_filesystem_without_o_direct_gets_ordinary_writes() {
    let Some(server) = Served::start_on_ramfs(&[]).await else {
        return;
    };
    let api = Api {
        base_url: server.base_url.clone(),
        client: http_client(),
    };
    let token = hs256(json!({ "sub": "u", "tenant_id": tenant(), "exp": now() + 600 }));
    // Past the O_DIRECT threshold with a tail, exactly on it, and small.
    for size in [4 * 1024 * 1024 + 4096 + 3, 4 * 1024 * 1024, 10 * 1024] {
        let content = large_pdf(size);
        let input = json!({ "input": {
            "ownerType": "contract", "ownerId": "c-1", "filename": "big.pdf",
            "base64": STANDARD.encode(&content) }});
        let body = api.gql(UPLOAD, input, Some(&token)).await;
        let stored = data(&body, "uploadAttachment");
        assert_eq!(stored["sha256"], sha256_hex(&content), "{size}");
        let url = stored["url"].as_str().expect("url");
        let fetched = api.client.get(url).send().await.expect("GET url");
        assert_eq!(fetched.status(), 200);
        assert!(
            fetched.bytes().await.expect("bytes") == content,
            "{size} bytes kept"
        );
    }
    let root = server.storage_root();
    assert!(
        keys_under(&root, &root).is_empty(),
        "the files are on the server's ramfs, not in the test's view of the folder"
    );
}
