//! Storage on both backends: no overwrite, local paths, public URLs, direct uploads,
//! an S3 outage, fail-fast startup, `attache storage check` and the sweep of
//! unfinished multipart uploads.

use attache::storage::StorageKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::json;

use crate::helpers::{
    CREATE_DIRECT, S3_ACCESS_KEY, S3_BUCKET, S3Server, Setup, Store, TestApp, UPLOAD, Uploaded,
    announce, announce_and_put, codes, complete_direct, data, declaration, direct_upload, fetch,
    multipart_head, pdf, post_multipart, put_to, s3_flags, sha256_hex, tenant, upload_file_form,
};
use crate::helpers::{Fault, SECRET, run_attache};

async fn objects_are_never_overwritten(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let key = StorageKey::from_stored(format!("{}/contracts/c-1/fixed.pdf", tenant()));
    app.app
        .storage
        .put_new(&key, Bytes::from_static(b"first"), "text/plain")
        .await
        .expect("first write");
    let second = app
        .app
        .storage
        .put_new(&key, Bytes::from_static(b"second"), "text/plain")
        .await;
    assert_eq!(
        second.expect_err("a collision is an error").kind(),
        opendal::ErrorKind::ConditionNotMatch
    );
    assert_eq!(
        app.app.storage.read_all(&key).await.expect("read"),
        b"first"[..]
    );
}

async fn tools_get_a_real_local_path(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        tenant: acme,
        content,
        id,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    let id = id.parse().expect("uuid");
    let row = attache::attachments::find(
        &app.app,
        &attache::ids::SafeId::parse(&acme).expect("tenant"),
        id,
    )
    .await
    .expect("find")
    .expect("row");
    let local = app
        .app
        .storage
        .local_path(&StorageKey::from_stored(row.storage_key.clone()))
        .await
        .expect("local path");
    let path = local.path().to_owned();
    assert_eq!(std::fs::read(&path).expect("read the path"), content);
    drop(local);
    match setup.store {
        Store::Fs => assert!(
            path.exists() && path.starts_with(&app.storage_root),
            "the file itself"
        ),
        Store::S3 | Store::Garage => {
            assert!(!path.exists(), "the temporary copy is removed on drop")
        }
    }
}

async fn public_urls_need_no_signature(setup: Setup) {
    let cdn = "https://cdn.example.com/files/";
    let app = TestApp::spawn_with(
        setup,
        &["--url-mode", "public", "--s3-public-base-url", cdn],
    )
    .await;
    let Uploaded {
        tenant: acme,
        content,
        att,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    let key = TestApp::contract_key(&acme, "c-1", &att);
    let url = att["url"].as_str().expect("url");
    match setup.store {
        Store::S3 | Store::Garage => {
            assert_eq!(url, format!("https://cdn.example.com/files/{key}"))
        }
        Store::Fs => {
            assert_eq!(url, app.url(&format!("/media/{key}")));
            let response = reqwest::get(url).await.expect("GET");
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-content-type-options"], "nosniff");
            assert_eq!(
                response.bytes().await.expect("body").as_ref(),
                content.as_slice()
            );
            let missing = reqwest::get(app.url(&format!("/media/{acme}/contracts/c-1/nope.pdf")))
                .await
                .expect("GET");
            assert_eq!(missing.status(), 404);
        }
    }
    let signed = TestApp::spawn(setup).await;
    let media = reqwest::get(signed.url(&format!("/media/{key}")))
        .await
        .expect("GET");
    assert_eq!(
        media.status(),
        404,
        "no /media route unless URL_MODE=public"
    );
}

async fn direct_uploads_end_to_end(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let (direct, status) = announce_and_put(
        &app,
        &bearer,
        declaration(&content, "application/pdf"),
        content.clone(),
    )
    .await;
    assert_eq!(status, 200, "PUT to uploadUrl");
    assert_eq!(
        app.row_count(&acme).await,
        0,
        "no attachment before completion"
    );

    let other = complete_direct(&app, &app.token(&tenant()), &direct).await;
    assert_eq!(
        codes(&other),
        vec!["NOT_FOUND"],
        "another tenant cannot complete it"
    );

    let done = complete_direct(&app, &bearer, &direct).await;
    let att = data(&done, "completeDirectUpload");
    assert_eq!(att["id"], direct["id"]);
    assert_eq!(att["sha256"], sha256_hex(&content));
    assert_eq!(att["contentType"], "application/pdf");
    assert_eq!(
        app.stored_keys(),
        vec![TestApp::contract_key(&acme, "c-7", &direct)]
    );
    assert_eq!(fetch(&att["url"]).await, content);

    let again = data(
        &complete_direct(&app, &bearer, &direct).await,
        "completeDirectUpload",
    );
    for field in ["id", "sha256", "byteSize", "contentType"] {
        assert_eq!(
            again[field], att[field],
            "a retried completion answers with the attachment it made"
        );
    }
    assert_eq!(app.row_count(&acme).await, 1, "completes once");
    // The URL names a staging key: whatever the store does with a replay, the file
    // stays as it was (providers.rs replays it on every store).
    put_to(&app, &direct, pdf()).await;
    assert_eq!(fetch(&att["url"]).await, content);

    // A type that declares nothing (a browser's `File.type` for an extension it does
    // not map) goes by the name, as on the other paths: it was refused before a byte.
    for declared in ["application/octet-stream", ""] {
        let (direct, status) = announce_and_put(
            &app,
            &bearer,
            declaration(&content, declared),
            content.clone(),
        )
        .await;
        assert_eq!(status, 200, "{declared:?}");
        let done = complete_direct(&app, &bearer, &direct).await;
        assert_eq!(
            data(&done, "completeDirectUpload")["contentType"],
            "application/pdf"
        );
    }
}

/// `pdf()` with a comment line of `size` bytes inside: a PDF whose copy takes a while.
fn padded_pdf(size: usize) -> Vec<u8> {
    let mut content = pdf();
    let comment = format!("%{}\n", "x".repeat(size));
    content.splice(9..9, comment.into_bytes());
    content
}

/// Completions of one direct upload sent at once (a client's retry after a timeout,
/// a double click) make one attachment, whose file stays: each answers with that
/// attachment or asks for a retry, and a retry gets the attachment. Before, a loser
/// could remove the winner's file, or refuse the upload under it.
async fn concurrent_completions_make_one_attachment(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    for round in 0..4 {
        let content = padded_pdf(2 * 1024 * 1024);
        let declared = declaration(&content, "application/pdf");
        let (direct, status) = announce_and_put(&app, &bearer, declared, content.clone()).await;
        assert_eq!(status, 200, "PUT to uploadUrl");
        let answers =
            futures::future::join_all((0..4).map(|_| complete_direct(&app, &bearer, &direct)))
                .await;
        for answer in &answers {
            match codes(answer).as_slice() {
                [] => assert_eq!(
                    data(answer, "completeDirectUpload")["id"],
                    direct["id"],
                    "round {round}"
                ),
                [code] if code == "STORAGE_UNAVAILABLE" => {
                    let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
                    assert!(message.contains("under way"), "round {round}: {answer}");
                }
                _ => panic!("round {round}: {answer}"),
            }
        }
        let again = complete_direct(&app, &bearer, &direct).await;
        let att = data(&again, "completeDirectUpload");
        assert_eq!(att["id"], direct["id"], "round {round}");
        assert_eq!(
            fetch(&att["url"]).await,
            content,
            "round {round}: the file stays"
        );
    }
    assert_eq!(app.row_count(&acme).await, 4);
    let mut keys = app.stored_keys();
    keys.retain(|key| !key.starts_with(".attache-staging"));
    assert_eq!(keys.len(), 4, "one object per attachment: {keys:?}");
}

/// A request whose body stops after its first bytes until `finish` sends the rest.
struct PausedBody {
    sender: futures::channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    rest: Vec<u8>,
    sent: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl PausedBody {
    /// Sends `request` with the first `first` bytes of `body`.
    async fn start(request: reqwest::RequestBuilder, body: &[u8], first: usize) -> Self {
        let (first, rest) = body.split_at(first);
        let (mut sender, stream) = futures::channel::mpsc::channel(4);
        futures::SinkExt::send(&mut sender, Ok(first.to_vec()))
            .await
            .expect("queue the first bytes");
        let sent = request.body(reqwest::Body::wrap_stream(stream)).send();
        Self {
            sender,
            rest: rest.to_vec(),
            sent: tokio::spawn(sent),
        }
    }

    /// A direct upload's PUT of `content`, paused after 600 KiB.
    async fn put(app: &TestApp, direct: &serde_json::Value, content: &[u8]) -> Self {
        let url = direct["uploadUrl"].as_str().expect("uploadUrl");
        Self::start(app.client.put(url), content, 600 * 1024).await
    }

    /// Sends the rest of the body; the answer.
    async fn finish(mut self) -> reqwest::Response {
        futures::SinkExt::send(&mut self.sender, Ok(self.rest))
            .await
            .expect("queue the rest");
        drop(self.sender);
        self.sent.await.expect("the request's task").expect("sent")
    }
}

/// On fs attache's upload route takes the PUT: a completion sent while the body is
/// still coming says the file is not there yet, and the upload completes once the
/// body has come whole. Before, the completion saw the half-written file, refused
/// the upload and removed it, while the PUT still answered 200.
async fn a_direct_upload_is_seen_only_whole(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let content = padded_pdf(1024 * 1024);
    let direct = announce(&app, &bearer, declaration(&content, "application/pdf")).await;
    let paused = PausedBody::put(&app, &direct, &content).await;
    let started = std::time::Instant::now();
    while app.stored_keys().is_empty() {
        assert!(started.elapsed().as_secs() < 20, "the PUT never began");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let early = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(codes(&early), vec!["BAD_USER_INPUT"], "{early}");
    let message = early["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("yet"), "{early}");

    let put = paused.finish().await;
    assert_eq!(put.status(), 200);
    let done = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(
        fetch(&data(&done, "completeDirectUpload")["url"]).await,
        content
    );
    let keys = app.stored_keys();
    assert_eq!(keys.len(), 1, "the attachment's file alone: {keys:?}");
}

/// A body that outlives its direct upload (expired while it came) leaves no file:
/// the PUT answers 404 and removes what it linked, which no row names, whether the
/// maintenance removed the expired upload meanwhile or not yet (the PUT answered 200,
/// and the completion then refused the expired upload).
async fn a_body_that_outlives_its_upload_leaves_nothing(setup: Setup) {
    let (app, _) = TestApp::spawn_alone(setup, &["--url-ttl-seconds", "2"]).await;
    let bearer = app.token(&tenant());
    for maintenance_ran in [true, false] {
        let content = padded_pdf(1024 * 1024);
        let direct = announce(&app, &bearer, declaration(&content, "application/pdf")).await;
        let paused = PausedBody::put(&app, &direct, &content).await;
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        if maintenance_ran {
            attache::attachments::direct::expire(&app.app)
                .await
                .expect("expire");
        }
        let put = paused.finish().await;
        assert_eq!(put.status(), 404, "maintenance ran: {maintenance_ran}");
        let keys = app.stored_keys();
        assert!(keys.is_empty(), "nothing left: {keys:?}");
    }
}

/// A sweep beside a running server leaves an upload that is still receiving its file
/// alone, whatever `--older-than` says: its intent (and its unfinished S3 upload)
/// count from the upload's start, and an intent older than `--older-than` took the
/// file it was writing, so the row committed naming a missing file.
async fn a_sweep_leaves_an_upload_in_flight_alone(setup: Setup) {
    // A database of its own: the sweep reads (and expires) every tenant's rows.
    let (app, _) = TestApp::spawn_alone(setup, &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    // Past one 8 MiB part before the pause: on S3 its multipart upload has begun.
    let content = padded_pdf(19 * 512 * 1024);
    let boundary = "attache-sweep-boundary";
    let operations = json!({
        "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id url } }",
        "variables": { "input": { "ownerType": "contract", "ownerId": "c-1", "file": null } },
    });
    let mut body = multipart_head(boundary, &operations, "big.pdf", "application/pdf");
    let first = body.len() + 17 * 512 * 1024;
    body.extend_from_slice(&content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let request = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&bearer)
        .header("apollo-require-preflight", "1")
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        );
    let paused = PausedBody::start(request, &body, first).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Its intent carries this server's own deadline (15 minutes plus its
    // BODY_TIMEOUT_SECONDS), which a replica whose uploads are shorter honours.
    let intents = {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::storage_deletion::Entity::find()
            .filter(entity::storage_deletion::Column::Intent.eq(true))
            .all(app.app.db.read())
            .await
            .expect("intents")
    };
    let soonest = chrono::Utc::now() + chrono::Duration::minutes(15);
    assert!(
        !intents.is_empty()
            && intents.iter().all(|intent| intent
                .remove_after
                .is_some_and(|deadline| deadline > soonest)),
        "{intents:?}"
    );
    let swept =
        attache::attachments::sweep::run(&app.app, std::time::Duration::from_secs(1), false)
            .await
            .expect("sweep");
    assert!(swept.is_empty(), "nothing to sweep: {swept:?}");
    let answer: serde_json::Value = paused.finish().await.json().await.expect("JSON");
    let stored = data(&answer, "uploadAttachmentFile");
    assert_eq!(fetch(&stored["url"]).await, content, "the file is whole");
}

/// A completion that storage fails keeps the direct upload: once storage is back, a
/// retry completes it. Before, the failure removed the upload and the retry got
/// NOT_FOUND. (An empty folder where the attachment's file goes makes the disk refuse
/// the copy, even for root; the failed copy's cleanup removes it.)
async fn a_storage_failure_in_completion_keeps_the_upload(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let declared = declaration(&content, "application/pdf");
    let (direct, status) = announce_and_put(&app, &bearer, declared, content.clone()).await;
    assert_eq!(status, 200, "PUT to uploadUrl");
    let key = TestApp::contract_key(&acme, "c-7", &direct);
    std::fs::create_dir_all(app.storage_root.join(&key)).expect("block the key");
    let failed = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(codes(&failed), vec!["STORAGE_UNAVAILABLE"], "{failed}");
    assert_eq!(app.row_count(&acme).await, 0);
    let done = complete_direct(&app, &bearer, &direct).await;
    let att = data(&done, "completeDirectUpload");
    assert_eq!(fetch(&att["url"]).await, content);
    assert_eq!(app.stored_keys(), vec![key]);
}

async fn lying_direct_uploads_are_refused_and_removed(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let mut wrong_sha = declaration(&content, "application/pdf");
    wrong_sha["sha256"] = json!(sha256_hex(b"other bytes"));
    let mut wrong_size = declaration(&content, "application/pdf");
    wrong_size["byteSize"] = json!(content.len() + 10);
    for (case, declared, code) in [
        ("checksum", wrong_sha, "CHECKSUM_MISMATCH"),
        (
            "type",
            declaration(&content, "image/png"),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("size", wrong_size, "BAD_USER_INPUT"),
    ] {
        let (direct, status) = announce_and_put(&app, &bearer, declared, content.clone()).await;
        // On S3 the declared length is signed into the URL: the store refuses the PUT.
        // On fs attache's route refuses a body shorter than declared.
        let expected = match (case, app.on_s3()) {
            ("size", true) => 403,
            ("size", false) => 400,
            _ => 200,
        };
        assert_eq!(status, expected, "{case}: PUT");
        let done = complete_direct(&app, &bearer, &direct).await;
        assert_eq!(codes(&done), vec![code], "{case}: {done}");
        assert!(
            app.stored_keys().is_empty(),
            "{case}: object left behind {:?}",
            app.stored_keys()
        );
    }
    assert_eq!(app.row_count(&acme).await, 0);

    for (case, declared, code) in [
        (
            "unknown owner type",
            json!({ "ownerType": "x", "ownerId": "c", "filename": "a", "contentType": "application/pdf", "byteSize": 1, "sha256": sha256_hex(b"a") }),
            "BAD_USER_INPUT",
        ),
        (
            "type not accepted",
            declaration(&content, "application/zip"),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "too large",
            json!({ "ownerType": "invoice_logo", "filename": "a.png", "contentType": "image/png", "byteSize": 3 * 1024 * 1024, "sha256": sha256_hex(b"a") }),
            "PAYLOAD_TOO_LARGE",
        ),
    ] {
        let created = app
            .gql(CREATE_DIRECT, json!({ "input": declared }), Some(&bearer))
            .await;
        assert_eq!(codes(&created), vec![code], "{case}: {created}");
    }
}

async fn expired_direct_uploads_are_swept(setup: Setup) {
    // A database of its own: the expiry sweeps every tenant's expired uploads.
    let (app, _) = TestApp::spawn_alone(setup, &["--url-ttl-seconds", "3"]).await;
    let bearer = app.token(&tenant());
    let content = pdf();
    let (direct, status) = announce_and_put(
        &app,
        &bearer,
        declaration(&content, "application/pdf"),
        content,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.stored_keys().len(), 1);
    // Long enough for the PUT on a loaded machine, short enough to wait out.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let late = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(codes(&late), vec!["NOT_FOUND"], "expired");
    attache::attachments::direct::expire(&app.app)
        .await
        .expect("sweep");
    assert!(
        app.stored_keys().is_empty(),
        "the expired upload's object is removed"
    );
}

async fn a_storage_outage_is_storage_unavailable(setup: Setup) {
    let mut app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    app.s3.as_ref().expect("s3").stop();
    let input = json!({ "input": { "ownerType": "contract", "ownerId": "c-1", "filename": "a.pdf",
        "base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pdf()) }});
    let body = app.gql(UPLOAD, input.clone(), Some(&bearer)).await;
    assert_eq!(codes(&body), vec!["STORAGE_UNAVAILABLE"], "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains(S3_ACCESS_KEY) && !message.contains("127.0.0.1"),
        "leaks internals: {message}"
    );
    assert_eq!(app.row_count(&acme).await, 0);
    assert_eq!(app.status_of("/readyz").await, 503);

    app.s3.as_mut().expect("s3").restart().await;
    let mut stored = None;
    for _ in 0..5 {
        let body = app.gql(UPLOAD, input.clone(), Some(&bearer)).await;
        if body.get("errors").is_none() {
            stored = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        stored.is_some(),
        "the server serves again once storage returns"
    );
    assert_eq!(app.row_count(&acme).await, 1);
    assert_eq!(app.stored_keys().len(), 1);
}

async fn bad_bucket_settings_fail_fast_in_one_line(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3")).await;
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let serve = |overrides: &[(&str, &str)]| {
        let mut args = vec![
            "serve".to_owned(),
            "--database-url".to_owned(),
            database.clone(),
        ];
        args.extend([
            "--listen-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--jwt-secret".to_owned(),
            SECRET.to_owned(),
        ]);
        let mut flags = s3_flags(&s3.endpoint);
        for (flag, value) in overrides {
            let at = flags.iter().position(|f| f == flag).expect("known flag");
            flags[at + 1] = (*value).to_owned();
        }
        args.extend(flags);
        args
    };
    for (case, overrides, variable) in [
        (
            "wrong secret",
            vec![("--s3-secret-key", "wrong-secret")],
            "S3_SECRET_KEY",
        ),
        (
            "missing bucket",
            vec![("--s3-bucket-name", "no-such-bucket")],
            "S3_BUCKET_NAME",
        ),
        (
            "unreachable endpoint",
            vec![("--s3-endpoint-url", "http://127.0.0.1:9")],
            "S3_ENDPOINT_URL",
        ),
    ] {
        let started = std::time::Instant::now();
        let output = run_attache(serve(&overrides)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("error:"))
            .collect();
        assert!(!output.status.success(), "{case}: exits non-zero");
        assert_eq!(lines.len(), 1, "{case}: one error line in {stderr}");
        assert!(
            lines[0].contains(variable),
            "{case}: names {variable}: {}",
            lines[0]
        );
        assert!(
            lines[0].contains("(step ") && lines[0].contains("attache storage check"),
            "{case}: says which step failed and how to see more: {}",
            lines[0]
        );
        assert!(started.elapsed().as_secs() < 15, "{case}: within seconds");
    }
    let no_bucket = run_attache(vec![
        "serve".into(),
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--storage-backend".into(),
        "s3".into(),
    ])
    .await;
    assert!(String::from_utf8_lossy(&no_bucket.stderr).contains("S3_BUCKET_NAME"));
    let mut public = serve(&[]);
    public.extend(["--url-mode".to_owned(), "public".to_owned()]);
    let public = run_attache(public).await;
    assert!(String::from_utf8_lossy(&public.stderr).contains("S3_PUBLIC_BASE_URL"));
}

async fn storage_check_says_what_works(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3")).await;
    let mut good = vec!["storage".to_owned(), "check".to_owned()];
    good.extend(s3_flags(&s3.endpoint));
    let output = run_attache(good.clone()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for step in [
        "list",
        "write",
        "conditional write",
        "read",
        "stat",
        "presigned PUT/GET",
        "streamed write",
        "delete",
    ] {
        assert!(
            stdout.contains(&format!("{step:<17} ok")),
            "{step}: {stdout}"
        );
    }
    let mut bad = good.clone();
    let at = bad
        .iter()
        .position(|f| f == "--s3-bucket-name")
        .expect("flag");
    bad[at + 1] = "missing".to_owned();
    let output = run_attache(bad).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("{:<17} FAILED", "list")));
    assert_eq!(
        files_under(&s3.root.join(S3_BUCKET)),
        0,
        "the probe cleans up"
    );

    let folder = dir.path().join("files");
    let fs = run_attache(vec![
        "storage".into(),
        "check".into(),
        "--storage-root".into(),
        folder.display().to_string(),
    ])
    .await;
    assert!(
        fs.status.success(),
        "{}",
        String::from_utf8_lossy(&fs.stdout)
    );
}

fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    if entry.path().is_dir() {
                        files_under(&entry.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A direct upload and a multipart part larger than every buffer (the 64 KiB head,
/// the 8 MiB parts of an S3 multipart upload) are checked and stored as they
/// stream; a corrupted one and one that is not text throughout are refused, with
/// nothing left in storage.
/// The app with contracts (PDF or text) of up to `2 * size` bytes, and requests as
/// large, with `flags`.
async fn spawn_for_large_files(setup: Setup, size: usize, flags: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let collections = dir.path().join("collections.toml");
    std::fs::write(
        &collections,
        format!(
            "[contract]\nkey = \"{{tenant}}/contracts/{{owner}}/{{id}}{{ext}}\"\nmax_bytes = {}\naccept = [\"pdf\", \"txt\"]\n",
            2 * size
        ),
    )
    .expect("write collections");
    // Base64 takes a third more: the request may be twice the file.
    let max = (4 * size).to_string();
    let mut all = vec![
        "--collections-file",
        collections.to_str().expect("utf-8"),
        "--max-upload-bytes",
        &max,
        "--max-request-bytes",
        &max,
    ];
    all.extend(flags);
    // The collections are read at the start: the folder may go after it.
    TestApp::spawn_with(setup, &all).await
}

/// A PDF of `size` bytes after its header, which compress to nothing.
fn large_pdf(size: usize, seed: u32) -> Vec<u8> {
    let mut content = b"%PDF-1.7\n".to_vec();
    let mut state = seed;
    content.extend((0..size).map(|_| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    }));
    content
}

async fn large_files_stream_through(setup: Setup) {
    const SIZE: usize = 24 * 1024 * 1024;
    let app = spawn_for_large_files(setup, SIZE, &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = large_pdf(SIZE, 7);

    let (direct, att) = direct_upload(&app, &bearer, &content).await;
    assert_eq!(att["sha256"], sha256_hex(&content));
    let key = TestApp::contract_key(&acme, "c-7", &direct);
    assert_eq!(app.stored_keys(), vec![key.clone()]);
    let stored = app
        .app
        .storage
        .digest(&StorageKey::from_stored(key))
        .await
        .expect("read back")
        .expect("stored");
    assert_eq!(
        (stored.size, stored.sha256),
        (content.len() as u64, sha256_hex(&content))
    );

    // Corrupted after its checksum was declared: one byte differs near the end.
    let declared = declaration(&content, "application/pdf");
    let mut corrupted = content.clone();
    corrupted[SIZE - 3] ^= 0xff;
    let (direct, status) = announce_and_put(&app, &bearer, declared, corrupted).await;
    assert_eq!(status, 200);
    let refused = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(codes(&refused), vec!["CHECKSUM_MISMATCH"], "{refused}");

    // Text for its first megabytes, then a NUL: not text throughout.
    let mut text = "Vertrag, Seite 1\n".repeat(SIZE / 17).into_bytes();
    let at = text.len() - 100;
    text[at] = 0;
    let mut declared = declaration(&text, "text/plain");
    declared["filename"] = json!("Vertrag.txt");
    let (direct, status) = announce_and_put(&app, &bearer, declared, text.clone()).await;
    assert_eq!(status, 200);
    let refused = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(codes(&refused), vec!["UNSUPPORTED_MEDIA_TYPE"], "{refused}");

    // The same through a multipart part: stored as it streams from the request's
    // temporary file, and refused, with nothing left, when not text throughout.
    let form = upload_file_form("contract", "c-8", &content, "big.pdf", "application/pdf");
    let (status, stored) = post_multipart(&app.url(""), &bearer, form).await;
    assert_eq!(status, 200, "{stored}");
    let att = data(&stored, "uploadAttachmentFile");
    assert_eq!(att["sha256"], sha256_hex(&content));
    let form = upload_file_form("contract", "c-8", &text, "Vertrag.txt", "text/plain");
    let (_, refused) = post_multipart(&app.url(""), &bearer, form).await;
    assert_eq!(codes(&refused), vec!["UNSUPPORTED_MEDIA_TYPE"], "{refused}");

    // The same as base64 in a JSON body: decoded into storage as it arrives; a
    // corrupted text and a body cut off midway leave nothing (on fs, not even the
    // spooled file among the staging keys).
    let encoded = STANDARD.encode(&content);
    let upload = |base64: &str| {
        json!({ "input": {
            "ownerType": "contract", "ownerId": "c-9", "filename": "big.pdf", "base64": base64,
        }})
    };
    let stored = app.gql(UPLOAD, upload(&encoded), Some(&bearer)).await;
    let att = data(&stored, "uploadAttachment");
    assert_eq!(att["sha256"], sha256_hex(&content), "{stored:.300}");
    assert_eq!(fetch(&att["url"]).await, content);
    let mut corrupted = encoded.clone();
    corrupted.replace_range(SIZE..SIZE + 1, "!");
    let refused = app.gql(UPLOAD, upload(&corrupted), Some(&bearer)).await;
    assert_eq!(codes(&refused), vec!["BAD_USER_INPUT"], "{refused:.300}");
    // Text through its first megabytes, then a NUL: sniffed beside the spool's
    // write to its end, and refused.
    let not_text = json!({ "input": {
        "ownerType": "contract", "ownerId": "c-9", "filename": "Vertrag.txt",
        "contentType": "text/plain", "base64": STANDARD.encode(&text),
    }});
    let refused = app.gql(UPLOAD, not_text, Some(&bearer)).await;
    assert_eq!(
        codes(&refused),
        vec!["UNSUPPORTED_MEDIA_TYPE"],
        "{refused:.300}"
    );
    let body = json!({ "query": UPLOAD, "variables": upload(&encoded) }).to_string();
    send_half_and_hang_up(&app, &bearer, "application/json", body.as_bytes()).await;
    // And a multipart part cut off midway, while it streams into storage.
    let boundary = "attache-cut-boundary";
    let operations = json!({
        "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id } }",
        "variables": { "input": { "ownerType": "contract", "ownerId": "c-8", "file": null } },
    });
    let mut body = multipart_head(boundary, &operations, "big.pdf", "application/pdf");
    body.extend_from_slice(&content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let multipart = format!("multipart/form-data; boundary={boundary}");
    send_half_and_hang_up(&app, &bearer, &multipart, &body).await;
    // And a direct upload's PUT cut off midway: its completion is refused.
    let direct = announce(&app, &bearer, declaration(&content, "application/pdf")).await;
    let headers: Vec<(String, String)> = direct["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|header| {
            (
                header["name"].as_str().unwrap_or_default().to_owned(),
                header["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    half_a_request(
        "PUT",
        direct["uploadUrl"].as_str().expect("uploadUrl"),
        &headers,
        &content,
    )
    .await;
    let refused = complete_direct(&app, &bearer, &direct).await;
    assert!(
        !codes(&refused).is_empty(),
        "a cut-off PUT completes nothing: {refused:.300}"
    );

    assert_eq!(app.row_count(&acme).await, 3);
    let mut left = app.stored_keys();
    for _ in 0..50 {
        if left.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = app.stored_keys();
    }
    assert_eq!(left.len(), 3, "nothing left of the refused ones: {left:?}");
    assert!(app.status_of("/healthz").await == 200, "still serving");
}

/// POSTs the first half of `body` (of `content_type`) to `/graphql` as a request of
/// its full length, then closes the connection.
async fn send_half_and_hang_up(app: &TestApp, bearer: &str, content_type: &str, body: &[u8]) {
    let headers = [
        ("Content-Type".to_owned(), content_type.to_owned()),
        ("apollo-require-preflight".to_owned(), "1".to_owned()),
        ("Authorization".to_owned(), format!("Bearer {bearer}")),
    ];
    half_a_request("POST", &app.url("/graphql"), &headers, body).await;
}

/// Sends `method` to `url` with `headers` and the first half of `body`, announced
/// whole, then closes the connection.
async fn half_a_request(method: &str, url: &str, headers: &[(String, String)], body: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let rest = url.trim_start_matches("http://");
    let (address, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    tcp.write_all(head.as_bytes()).await.expect("send the head");
    tcp.write_all(&body[..body.len() / 2])
        .await
        .expect("send half");
    tcp.flush().await.expect("flush");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(tcp);
}

/// A stream of unknown length (a multipart part, a backup) goes straight into its
/// file on fs; on S3 a part at a time, each spooled to a temporary file first. 21
/// MiB in odd pieces (three parts) arrives byte for byte; one that passes its
/// limit in its third part, one that breaks in its third, and one shorter than the
/// length it announced leave no object and no open upload.
async fn streams_store_all_or_nothing(setup: Setup) {
    use attache::storage::StreamWriteError;
    use futures::StreamExt;
    use futures::stream::iter;

    let (app, _) = TestApp::spawn_alone(setup, &[]).await;
    let storage = &app.app.storage;
    let mut state: u32 = 11;
    let content: Vec<u8> = (0..21 * 1024 * 1024 + 5)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    let pieces = |content: &[u8]| -> Vec<Result<Bytes, std::io::Error>> {
        content
            .chunks(100_003)
            .map(|piece| Ok(Bytes::copy_from_slice(piece)))
            .collect()
    };
    let key = |name: &str| StorageKey::from_stored(format!("{}/c-1/{name}.pdf", tenant()));
    let whole = key("whole");
    let size = content.len() as u64;

    let written = storage
        .put_stream(&whole, iter(pieces(&content)), size, "application/pdf")
        .await
        .expect("stored");
    assert_eq!(written, size);
    let digest = storage
        .digest(&whole)
        .await
        .expect("read back")
        .expect("stored");
    assert_eq!((digest.size, digest.sha256), (size, sha256_hex(&content)));

    let limit = 20 * 1024 * 1024;
    let too_large = storage
        .put_stream(
            &key("large"),
            iter(pieces(&content)),
            limit,
            "application/pdf",
        )
        .await;
    assert!(
        matches!(too_large, Err(StreamWriteError::TooLarge)),
        "{too_large:?}"
    );
    let mut broken = pieces(&content[..17 * 1024 * 1024]);
    broken.push(Err(std::io::Error::other("the client went away")));
    let broken = storage
        .put_stream(&key("broken"), iter(broken), size, "application/pdf")
        .await;
    assert!(
        matches!(broken, Err(StreamWriteError::Body(_))),
        "{broken:?}"
    );
    let short = iter(pieces(&content[..3 * 1024 * 1024]));
    let short = storage
        .put_exact(&key("short"), short, size, "application/pdf")
        .await;
    assert!(matches!(short, Err(StreamWriteError::Body(_))), "{short:?}");

    assert_eq!(app.stored_keys(), vec![whole.as_str().to_owned()]);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    let open = storage.unfinished_uploads(later).await.expect("list");
    assert!(open.is_empty(), "no upload is left open: {open:?}");

    // A stream that stalls after two parts: they are in the store already, not
    // waiting on the disk for the rest (Garage lists the upload; s3s cannot).
    let stalled = iter(pieces(&content[..17 * 1024 * 1024])).chain(futures::stream::pending());
    let stalled_key = key("stalled");
    let stalled = storage.put_stream(&stalled_key, stalled, size, "application/pdf");
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), stalled).await;
    assert!(waited.is_err(), "the stream was still open");
    if app.garage.is_some() {
        let open = storage.unfinished_uploads(later).await.expect("list");
        assert_eq!(open.len(), 1, "{open:?}");
        for (_, upload) in &open {
            storage.abort_upload(upload).await.expect("abort");
        }
    }
}

/// A direct upload's link stays valid after completion removed what it wrote (S3's
/// presigned PUT): a client that sends it again leaves an object that no row or
/// quota knows, which the completion recorded for removal once the link is dead (it
/// stayed for good). Through attache's own route (fs) the link takes nothing more.
async fn a_replayed_direct_upload_leaves_nothing_for_good(setup: Setup) {
    use entity::storage_deletion;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryTrait};
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let content = pdf();
    let (direct, _) = direct_upload(&app, &bearer, &content).await;
    let replayed = put_to(&app, &direct, content.clone()).await;
    let staging = format!(".attache-staging/{}", direct["id"].as_str().expect("id"));
    let entry = storage_deletion::Entity::find_by_id(staging.clone())
        .one(app.app.db.read())
        .await
        .expect("read")
        .expect("the staging key's removal is recorded");
    let later = entry.remove_after.expect("a time to remove it");
    assert!(
        later > chrono::Utc::now() + chrono::Duration::minutes(30),
        "{later}"
    );
    match app.on_s3() {
        true => {
            assert_eq!(replayed, 200, "S3 takes the presigned PUT again");
            assert!(app.stored_keys().contains(&staging));
        }
        false => assert_ne!(replayed, 200, "attache's route takes nothing more"),
    }
    // The link is dead: the maintenance removes what the replay left, and its entry.
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let aged = storage_deletion::Entity::update_many()
        .col_expr(storage_deletion::Column::RemoveAfter, Expr::value(past))
        .filter(storage_deletion::Column::StorageKey.eq(staging.clone()))
        .build(app.app.db.backend());
    app.app.db.commit(vec![aged]).await.expect("aged");
    attache::workers::maintenance::pass(&app.app, &Default::default()).await;
    assert!(!app.stored_keys().contains(&staging));
    let left = storage_deletion::Entity::find_by_id(staging)
        .one(app.app.db.read())
        .await
        .expect("read");
    assert!(left.is_none(), "{left:?}");
}

/// A flood of direct uploads that never complete is cleared by one maintenance pass
/// (batches until none is left, within the pass's time): one batch of 500 a minute
/// fell behind, holding every other tenant's abandoned reservations behind it.
async fn one_pass_clears_a_backlog_of_expired_direct_uploads(setup: Setup) {
    use entity::direct_upload;
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    // A database of its own: another server's maintenance expires them otherwise.
    let (app, _) = TestApp::spawn_alone(setup, &["--url-ttl-seconds", "1"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let announce_twenty: String = (0..20)
        .map(|i| format!("a{i}: createDirectUpload(input: $i) {{ id }} "))
        .collect();
    let query = format!("mutation($i: DirectUploadInput!) {{ {announce_twenty} }}");
    let declared = declaration(&pdf(), "application/pdf");
    for _ in 0..60 {
        let body = app
            .gql(&query, json!({ "i": declared }), Some(&bearer))
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    let pending = || {
        direct_upload::Entity::find()
            .filter(direct_upload::Column::TenantId.eq(acme.clone()))
            .count(app.app.db.read())
    };
    assert_eq!(pending().await.expect("count"), 1200);
    // And 600 objects of deleted rows whose removal is due.
    let deleted = (0..600).map(|_| {
        use sea_orm::QueryTrait;
        entity::storage_deletion::Entity::insert(due_deletion(&acme)).build(app.app.db.backend())
    });
    app.app
        .db
        .commit(deleted.collect())
        .await
        .expect("pending deletions");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // A dry run says all it would remove: it said the first batch of 500 of each.
    let would = attache::attachments::sweep::run(&app.app, std::time::Duration::ZERO, true)
        .await
        .expect("dry run");
    let count = |reason| would.iter().filter(|swept| swept.reason == reason).count();
    use attache::attachments::sweep::Reason;
    assert_eq!(count(Reason::ExpiredUpload), 1200);
    assert_eq!(count(Reason::PendingDeletion), 600);
    assert_eq!(
        pending().await.expect("count"),
        1200,
        "a dry run removes nothing"
    );
    attache::workers::maintenance::pass(&app.app, &Default::default()).await;
    assert_eq!(
        pending().await.expect("count"),
        0,
        "one pass clears them all"
    );
}

/// A due removal of a deleted row's object, as a deletion records it.
fn due_deletion(tenant: &str) -> entity::storage_deletion::ActiveModel {
    use sea_orm::Set;
    entity::storage_deletion::ActiveModel {
        storage_key: Set(format!(
            "{tenant}/contracts/c-1/{}.pdf",
            uuid::Uuid::now_v7()
        )),
        attempts: Set(0),
        created_at: Set(chrono::Utc::now()),
        intent: Set(false),
        remove_after: Set(None),
    }
}

crate::matrix!(
    a_replayed_direct_upload_leaves_nothing_for_good,
    a_sweep_leaves_an_upload_in_flight_alone,
    large_files_stream_through,
    streams_store_all_or_nothing,
    objects_are_never_overwritten,
    tools_get_a_real_local_path,
    public_urls_need_no_signature,
    direct_uploads_end_to_end,
    concurrent_completions_make_one_attachment,
    lying_direct_uploads_are_refused_and_removed,
    expired_direct_uploads_are_swept,
);

async fn the_prefix_is_joined_inside_the_bucket(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--s3-prefix", "/files/prod/"]).await;
    let Uploaded {
        tenant: acme,
        content,
        att,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    let key = format!("files/prod/{}", TestApp::contract_key(&acme, "c-1", &att));
    assert_eq!(app.stored_keys(), vec![key]);
    assert_eq!(fetch(&att["url"]).await, content);
}

/// A throttled or briefly failing store costs a retry, not the upload: each request
/// of a multipart upload fails once or twice (503 `SlowDown`, 500
/// `InternalError`, as B2 and AWS answer under load), and the file is stored whole;
/// so is a small file whose PUT was throttled, and a download whose stat and read
/// were (OpenDAL's calls, retried by its layer). A part the store keeps failing
/// fails its upload after three tries, leaving no object and no row. Before, one
/// failed request failed the upload.
async fn a_throttled_store_costs_a_retry_not_the_upload(setup: Setup) {
    const SIZE: usize = 11 * 1024 * 1024;
    let app = spawn_for_large_files(setup, SIZE, &["--s3-part-size-bytes", "5242880"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let faults = app.s3.as_ref().expect("an s3s cell").faults.clone();
    let fail = |method: http::Method, query: &'static str, times: usize, status: u16| Fault {
        method,
        query,
        times,
        status,
        code: if status == 503 {
            "SlowDown"
        } else {
            "InternalError"
        },
    };
    faults.add(fail(http::Method::POST, "uploads", 1, 500));
    faults.add(fail(http::Method::PUT, "partNumber", 2, 503));
    faults.add(fail(http::Method::POST, "uploadId", 1, 503));
    faults.add(fail(http::Method::PUT, "", 1, 503));
    let content = large_pdf(SIZE, 11);
    let upload = |content: &[u8], owner: &str| {
        json!({ "input": {
            "ownerType": "contract", "ownerId": owner, "filename": "big.pdf",
            "base64": STANDARD.encode(content),
        }})
    };
    let small = pdf();
    let mut stored = Vec::new();
    for (content, owner) in [(&content, "large"), (&small, "small")] {
        let answer = app.gql(UPLOAD, upload(content, owner), Some(&bearer)).await;
        let att = data(&answer, "uploadAttachment");
        assert_eq!(att["sha256"], sha256_hex(content), "{owner}");
        assert_eq!(&fetch(&att["url"]).await, content, "{owner}");
        stored.push(att);
    }
    assert_eq!(faults.answered(), 5, "every fault was met and outlived");
    // Through attache's route, the object's stat and its read are throttled once.
    faults.add(fail(http::Method::HEAD, "", 1, 503));
    faults.add(fail(http::Method::GET, "", 1, 503));
    let download = app
        .client
        .get(stored[1]["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.expect("body"), small);
    assert_eq!(faults.answered(), 7);

    let before = app.stored_keys();
    faults.add(fail(http::Method::PUT, "partNumber", 3, 500));
    let failed = app
        .gql(UPLOAD, upload(&content, "failed"), Some(&bearer))
        .await;
    assert_eq!(codes(&failed), vec!["STORAGE_UNAVAILABLE"], "{failed:.300}");
    assert_eq!(faults.answered(), 10, "three tries of the part");
    assert_eq!(app.stored_keys(), before, "no object of the failed upload");
    assert_eq!(app.row_count(&acme).await, 2);
}

crate::matrix!(
    s3: a_storage_outage_is_storage_unavailable,
    a_throttled_store_costs_a_retry_not_the_upload,
    the_prefix_is_joined_inside_the_bucket,
    a_crash_mid_upload_leaves_parts_the_sweep_aborts,
);

crate::matrix!(
    db: a_storage_failure_in_completion_keeps_the_upload,
    one_pass_clears_a_backlog_of_expired_direct_uploads,
    a_direct_upload_is_seen_only_whole,
    a_body_that_outlives_its_upload_leaves_nothing,
);

crate::matrix!(once: bad_bucket_settings_fail_fast_in_one_line, storage_check_says_what_works);
/// `storage check` on Garage, which ignores `If-None-Match`: every step passes and
/// the log says the store overwrites (attache does not depend on it).
async fn the_probe_runs_every_operation_attache_uses(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let garage = app.garage.as_ref().expect("a Garage cell");
    let mut args = vec!["storage".to_owned(), "check".to_owned()];
    args.extend(garage.flags());
    let output = run_attache(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    for step in [
        "conditional write",
        "presigned PUT/GET",
        "streamed write",
        "delete",
    ] {
        assert!(
            stdout.contains(&format!("{step:<17} ok")),
            "{step}: {stdout}"
        );
    }
    assert!(stderr.contains("ignores If-None-Match"), "{stderr}");
}

/// A multipart upload cut off by a crash (its writer dropped after its first parts,
/// without an abort) leaves parts that no listing of objects shows, while one whose
/// stream breaks is aborted at once. `storage sweep`
/// finds them through the S3 API: a younger one than its threshold stays, an older
/// one is aborted, and the store then lists none. On s3s, which cannot list them,
/// the sweep goes on without.
async fn a_crash_mid_upload_leaves_parts_the_sweep_aborts(setup: Setup) {
    use attache::attachments::sweep::{self, Reason};
    use std::time::{Duration, SystemTime};

    // A database of its own: the sweep goes through every tenant's rows.
    let (app, _) = TestApp::spawn_alone(setup, &[]).await;
    let key = format!("{}/contracts/c-1/{}.pdf", tenant(), uuid::Uuid::now_v7());
    // 20 MiB announced, 18 sent: two 8 MiB parts go up, the third waits for more.
    let part = Bytes::from(vec![7u8; 9 * 1024 * 1024]);
    let body = futures::StreamExt::chain(
        futures::stream::iter([Ok::<_, std::io::Error>(part.clone()), Ok(part.clone())]),
        futures::stream::pending(),
    );
    let cut_off = tokio::time::timeout(
        Duration::from_secs(5),
        app.app.storage.put_exact(
            &StorageKey::from_stored(key.clone()),
            Box::pin(body),
            20 * 1024 * 1024,
            "application/pdf",
        ),
    )
    .await;
    assert!(
        cut_off.is_err(),
        "the upload was still waiting for its last part"
    );
    let unfinished = || {
        app.app
            .storage
            .unfinished_uploads(SystemTime::now() + Duration::from_secs(60))
    };
    if app.garage.is_none() {
        // s3s has no ListMultipartUploads: nothing to list, and the sweep goes on.
        assert!(unfinished().await.expect("no error").is_empty());
        let swept = sweep::run(&app.app, Duration::ZERO, false)
            .await
            .expect("sweep");
        assert!(swept.is_empty(), "{swept:?}");
        // Nor do credentials that may not list them (no s3:ListBucketMultipartUploads)
        // stop it: the orphans it removed before are said, not lost in an error.
        let faults = &app.s3.as_ref().expect("an s3s cell").faults;
        faults.add(Fault {
            method: http::Method::GET,
            query: "uploads",
            times: 1,
            status: 403,
            code: "AccessDenied",
        });
        let swept = sweep::run(&app.app, Duration::ZERO, false)
            .await
            .expect("a sweep without the permission");
        assert!(swept.is_empty(), "{swept:?}");
        assert_eq!(faults.answered(), 1);
        return;
    }
    let listed = unfinished().await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|(key, _)| key.as_str())
            .collect::<Vec<_>>(),
        vec![key.as_str()],
        "the cut-off upload is open"
    );
    assert!(app.stored_keys().is_empty(), "no object shows it");

    let young = sweep::run(&app.app, Duration::from_secs(3600), false)
        .await
        .expect("sweep");
    assert!(young.is_empty(), "younger than the threshold: {young:?}");
    assert_eq!(unfinished().await.expect("list").len(), 1);

    let swept = sweep::run(&app.app, Duration::ZERO, false)
        .await
        .expect("sweep");
    assert_eq!(
        swept
            .iter()
            .map(|swept| (swept.key.as_str(), swept.reason))
            .collect::<Vec<_>>(),
        vec![(key.as_str(), Reason::UnfinishedUpload)]
    );
    assert!(
        unfinished().await.expect("list").is_empty(),
        "its parts are gone"
    );

    // A stream that breaks after its first part: the upload is aborted at once.
    let broken =
        futures::stream::iter([Ok(part), Err(std::io::Error::other("the client went away"))]);
    let refused = app
        .app
        .storage
        .put_exact(
            &StorageKey::from_stored(key.clone()),
            broken,
            20 * 1024 * 1024,
            "application/pdf",
        )
        .await;
    assert!(refused.is_err(), "a broken stream stores nothing");
    assert!(
        unfinished().await.expect("list").is_empty(),
        "its parts went with it"
    );
    assert!(app.stored_keys().is_empty(), "and no object");
}

crate::matrix!(
    garage: the_probe_runs_every_operation_attache_uses,
    streams_store_all_or_nothing,
    a_crash_mid_upload_leaves_parts_the_sweep_aborts,
    tools_get_a_real_local_path,
    public_urls_need_no_signature,
    direct_uploads_end_to_end,
    lying_direct_uploads_are_refused_and_removed,
    expired_direct_uploads_are_swept,
);
