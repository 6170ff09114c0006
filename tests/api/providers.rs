//! S3 where users run it: objects served with their detected type on every write
//! path, a replayed direct-upload URL that cannot touch a stored file on any store,
//! and presigned URLs that name the public endpoint (issue 22).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::{
    FORWARD_TO_S3, GarageServer, S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, Setup, Store, TestApp,
    Uploaded, announce, complete_direct, data, declaration, direct_upload, fetch, parse_config,
    pdf, png, post_multipart, private_database_url, put_to, run_attache, s3_flags, sha256_hex,
    tenant, upload_file_form,
};

const UPLOAD_BATCH: &str = "mutation($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { id contentType url } }";

/// The `Content-Type` a presigned `url` answers, and its body.
async fn served(url: &Value) -> (String, Vec<u8>) {
    let response = reqwest::get(url.as_str().expect("url")).await.expect("GET");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    (content_type, response.bytes().await.expect("body").to_vec())
}

async fn every_write_path_serves_the_detected_type(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let mut seen: Vec<(&str, Value, Vec<u8>, &str)> = Vec::new();

    let content = pdf();
    let one = app
        .upload(&bearer, &content, "contract", Some("c-1"), "a.bin")
        .await;
    seen.push(("base64", one, content, "application/pdf"));

    let logo = png();
    let batch = app
        .gql(
            UPLOAD_BATCH,
            json!({ "input": [{ "ownerType": "invoice_logo", "filename": "logo", "base64": STANDARD.encode(&logo) }] }),
            Some(&bearer),
        )
        .await;
    seen.push((
        "batch",
        data(&batch, "uploadAttachments")[0].clone(),
        logo,
        "image/png",
    ));

    let text = b"plain words\n".to_vec();
    let form = upload_file_form("contract", "c-1", &text, "notes.txt", "text/plain");
    let (_, multipart) = post_multipart(&app.base_url, &bearer, form).await;
    let id = data(&multipart, "uploadAttachmentFile")["id"].clone();
    let got = app
        .gql(crate::helpers::GET, json!({ "id": id }), Some(&bearer))
        .await;
    seen.push(("multipart", data(&got, "attachment"), text, "text/plain"));

    let direct_content = pdf();
    let (_, attachment) = direct_upload(&app, &bearer, &direct_content).await;
    seen.push(("direct", attachment, direct_content, "application/pdf"));

    for (path, attachment, content, expected) in seen {
        let (content_type, body) = served(&attachment["url"]).await;
        assert!(content_type.starts_with(expected), "{path}: {content_type}");
        assert_eq!(body, content, "{path}");
    }

    // An object stored without a type (before this fix, or by another tool) is still
    // served as the row says.
    let old = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "old.pdf")
        .await;
    let key = TestApp::contract_key(&acme, "c-1", &old);
    let bytes = app
        .app
        .storage
        .read_all(&attache::storage::StorageKey::from_stored(key.clone()))
        .await
        .expect("read");
    let raw = raw_operator(&app);
    raw.delete(&key).await.expect("delete");
    raw.write(&key, bytes.clone())
        .await
        .expect("write without a type");
    let (content_type, body) = served(&old["url"]).await;
    assert!(
        content_type.starts_with("application/pdf"),
        "{content_type}"
    );
    assert_eq!(body, bytes.to_vec());
}

/// An operator on the test bucket that writes what it is given, nothing more.
fn raw_operator(app: &TestApp) -> opendal::Operator {
    operator_for(&app.app.config.storage)
}

fn operator_for(storage: &attache::config::StorageConfig) -> opendal::Operator {
    let secret = |value: &Option<attache::config::Secret>| {
        value.as_ref().expect("S3 keys").expose().to_owned()
    };
    let builder = opendal::services::S3::default()
        .bucket(storage.s3_bucket_name.as_deref().expect("a bucket"))
        .region(storage.region())
        .endpoint(storage.s3_endpoint_url.as_deref().expect("an endpoint"))
        .access_key_id(&secret(&storage.s3_access_key))
        .secret_access_key(&secret(&storage.s3_secret_key))
        .disable_config_load()
        .disable_ec2_metadata();
    opendal::Operator::new(builder).expect("operator")
}

/// A direct upload's URL takes the declared length and no more: on S3 the length is
/// signed into the presigned PUT, so the store refuses any other; on fs attache's
/// route refuses more. A URL announced for a few bytes cannot fill the bucket.
async fn an_upload_url_takes_only_the_declared_length(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let content = pdf();
    let direct = announce(&app, &bearer, declaration(&content, "application/pdf")).await;
    if app.on_s3() {
        let signed = direct["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .any(|header| {
                header["name"] == "content-length"
                    && header["value"].as_str() == Some(content.len().to_string().as_str())
            });
        assert!(signed, "the length is one of the headers to send: {direct}");
    }
    let mut longer = content.clone();
    longer.extend_from_slice(&[b' '; 1000]);
    let status = put_to(&app, &direct, longer).await;
    assert!((400..500).contains(&status), "a longer body: {status}");
    if app.on_s3() {
        let shorter = content[..content.len() - 1].to_vec();
        assert_eq!(put_to(&app, &direct, shorter).await, 403, "a shorter body");
    }
    assert!(app.stored_keys().is_empty(), "{:?}", app.stored_keys());
    assert_eq!(put_to(&app, &direct, content.clone()).await, 200);
    let done = complete_direct(&app, &bearer, &direct).await;
    assert_eq!(
        data(&done, "completeDirectUpload")["byteSize"],
        content.len(),
        "{done}"
    );
}

async fn a_replayed_upload_url_never_changes_a_stored_file(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let (direct, att) = direct_upload(&app, &bearer, &content).await;
    let key = TestApp::contract_key(&acme, "c-7", &direct);

    let replay = b"%PDF-1.4 other bytes entirely".to_vec();
    let status = put_to(&app, &direct, replay).await;
    eprintln!("the replayed PUT answered {status}");
    let stored = app
        .app
        .storage
        .read_all(&attache::storage::StorageKey::from_stored(key.clone()))
        .await
        .expect("the stored file");
    assert_eq!(stored.to_vec(), content, "the stored file is untouched");
    assert_eq!(fetch(&att["url"]).await, content);
    let download = app
        .client
        .get(app.url(&format!(
            "/api/attachments/{}/download",
            att["id"].as_str().expect("id")
        )))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(
        sha256_hex(&download.bytes().await.expect("body")),
        sha256_hex(&content)
    );

    // What a replay left in staging is swept like any orphan.
    attache::attachments::sweep::run(&app.app, std::time::Duration::ZERO, false)
        .await
        .expect("sweep");
    assert_eq!(app.stored_keys(), vec![key]);
}

async fn presigned_urls_name_the_public_endpoint(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--s3-public-endpoint-url", FORWARD_TO_S3]).await;
    let public = app.public_s3_endpoint.clone().expect("a forwarder");
    let internal = app
        .app
        .config
        .storage
        .s3_endpoint_url
        .clone()
        .expect("an endpoint");
    let Uploaded {
        bearer,
        content,
        att,
        url,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    assert!(
        url.starts_with(&public) && !url.contains(internal.as_str()),
        "{url}"
    );
    assert_eq!(fetch(&att["url"]).await, content);

    // Through the forwarder: the PUT must succeed there, then the download.
    let direct_content = pdf();
    let (direct, attachment) = direct_upload(&app, &bearer, &direct_content).await;
    let upload_url = direct["uploadUrl"].as_str().expect("uploadUrl");
    assert!(upload_url.starts_with(&public), "{upload_url}");
    assert_eq!(fetch(&attachment["url"]).await, direct_content);
}

/// Every provider block of docs/deployment.md, read as `attache serve` reads its
/// environment: each variable a real setting, each value accepted, the preset's
/// region and addressing style as the block's comment says.
#[test]
fn deployment_provider_blocks_are_valid_settings() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deployment.md"))
            .expect("docs/deployment.md");
    let mut providers = Vec::new();
    for block in readme.split("```sh provider=").skip(1) {
        let (name, rest) = block.split_once('\n').expect("a block");
        let body = rest.split("```").next().expect("a closed block");
        let command = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" ")
            .replace('\\', " ");
        let mut args = vec!["attache".to_owned()];
        for word in command.split_whitespace() {
            if word == "attache" {
                break;
            }
            let (variable, value) = word.split_once('=').expect("NAME=value");
            args.push(format!(
                "--{}",
                variable.to_ascii_lowercase().replace('_', "-")
            ));
            args.push(value.to_owned());
        }
        let config = crate::helpers::parse_config(&args)
            .unwrap_or_else(|err| panic!("provider={name}: {err}"));
        config
            .validate()
            .unwrap_or_else(|err| panic!("provider={name}: {err}"));
        let storage = &config.storage;
        let comment = body
            .lines()
            .find(|line| line.starts_with('#'))
            .unwrap_or_default();
        if let Some(region) = comment.split("region: ").nth(1) {
            let region = region.split([';', ' ']).next().unwrap_or_default();
            assert_eq!(storage.region(), region, "provider={name}");
        }
        let style = match storage.addressing_style() {
            attache::config::AddressingStyle::Path => "addressing: path",
            attache::config::AddressingStyle::Virtual => "addressing: virtual",
        };
        assert!(comment.contains(style), "provider={name}: {comment}");
        providers.push(name.to_owned());
    }
    assert_eq!(
        providers,
        ["aws", "r2", "scaleway", "b2", "minio", "garage"]
    );
}

/// `storage migrate` from disk into the cell's S3 server: every copy carries its
/// row's type, and its presigned URL answers it.
async fn migrated_copies_carry_their_type(setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = private_database_url(setup.db, dir.path()).await;
    let uploads = dir.path().join("uploads");
    let local = Setup {
        store: Store::Fs,
        ..setup
    };
    let bucket_dir = dir.path().join("bucket");
    let app = TestApp::spawn_at(local, dir, &database_url, &uploads, &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let files = [
        (pdf(), "a.pdf", "application/pdf"),
        (png(), "b.png", "image/png"),
    ];
    for (content, name, _) in &files {
        app.upload(&bearer, content, "contract", Some("c-1"), name)
            .await;
    }
    let (flags, _s3, _garage) = match setup.store {
        Store::Garage => {
            let garage = GarageServer::start(&bucket_dir).await;
            (garage.flags(), None, Some(garage))
        }
        _ => {
            let s3 = S3Server::start(&bucket_dir).await;
            (s3_flags(&s3.endpoint), Some(s3), None)
        }
    };
    let mut args: Vec<String> = vec![
        "storage".into(),
        "migrate".into(),
        "--database-url".into(),
        database_url.clone(),
        "--storage-root".into(),
        uploads.display().to_string(),
    ];
    args.extend(flags.iter().cloned());
    let output = run_attache(args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut serve = vec!["attache".to_owned()];
    serve.extend(flags);
    let config = parse_config(&serve).expect("settings");
    let raw = operator_for(&config.storage);
    let copied = raw
        .list(&format!("{acme}/contracts/c-1/"))
        .await
        .expect("list");
    assert_eq!(copied.len(), files.len(), "every file copied");
    for object in copied {
        let meta = raw.stat(object.path()).await.expect("stat");
        let (_, _, expected) = files
            .iter()
            .find(|(_, name, _)| object.path().ends_with(&name[1..]))
            .expect("a known extension");
        assert_eq!(meta.content_type(), Some(*expected), "{}", object.path());
    }
}

/// The container credentials endpoint of ECS (and of EKS Pod Identity): the S3
/// server's keys as a role's, a session token with them, expiring `lifetime` from
/// now; its URL.
async fn role_credentials(lifetime: chrono::Duration) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/credentials",
        listener.local_addr().expect("addr")
    );
    let answer = json!({
        "AccessKeyId": S3_ACCESS_KEY,
        "SecretAccessKey": S3_SECRET_KEY,
        "Token": "a-session-token",
        "Expiration": (chrono::Utc::now() + lifetime).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let router = axum::Router::new().route(
        "/credentials",
        axum::routing::get(move || {
            let answer = answer.clone();
            async move { axum::Json(answer) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (url, task)
}

/// Without `S3_ACCESS_KEY`, attache signs with a role's credentials, fetched over
/// HTTP as on ECS or EKS: presigned downloads and direct uploads work. Credentials
/// that expire before a URL would (a web identity's last an hour, as long as the
/// default `URL_TTL_SECONDS`) cannot sign it: the URL is a signed link to attache's
/// own route instead, and works as long.
async fn a_role_signs_and_no_url_outlives_its_credentials(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    let mut flags: Vec<String> = s3_flags(&s3.endpoint);
    let keys = flags
        .iter()
        .position(|flag| flag == "--s3-access-key")
        .expect("keys");
    flags.drain(keys..keys + 4);
    flags.extend(["--url-ttl-seconds".into(), "3600".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for (lifetime, presigned) in [
        (chrono::Duration::hours(6), true),
        (chrono::Duration::minutes(20), false),
    ] {
        let (credentials, _endpoint) = role_credentials(lifetime).await;
        let env = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials.as_str())];
        let served = crate::helpers::Served::start_with_env(&flags, &env).await;
        let case = format!("credentials for {lifetime}: {}", served.log());
        let Uploaded {
            bearer,
            content,
            att,
            ..
        } = served.upload_contract_pdf("a.pdf").await;
        let url = att["url"].as_str().expect("url");
        assert_eq!(
            url.contains("X-Amz-Security-Token"),
            presigned,
            "{url} {case}"
        );
        assert_eq!(
            url.contains("/api/attachments/"),
            !presigned,
            "{url} {case}"
        );
        assert_eq!(fetch(&att["url"]).await, content, "{case}");

        let direct_content = pdf();
        let (direct, attachment) = direct_upload(&served, &bearer, &direct_content).await;
        let upload_url = direct["uploadUrl"].as_str().expect("uploadUrl");
        assert_eq!(
            upload_url.contains("/api/uploads/"),
            !presigned,
            "{upload_url} {case}"
        );
        assert_eq!(fetch(&attachment["url"]).await, direct_content, "{case}");
    }
}

/// A store whose network stalls after the start: a download and an upload that
/// need it answer `STORAGE_UNAVAILABLE` (503) once `REQUEST_TIMEOUT` (30 s) has
/// passed, rather than waiting for ever and holding an upload slot.
async fn a_stalled_store_answers_unavailable_in_time(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    let (endpoint, stalled) = crate::helpers::stalling_forwarder(s3.addr).await;
    let flags = s3_flags(&endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let served = crate::helpers::Served::start(&flags).await;
    let Uploaded { bearer, att, .. } = served.upload_contract_pdf("a.pdf").await;
    stalled.store(true, std::sync::atomic::Ordering::Relaxed);
    let client = crate::helpers::http_client_with(
        reqwest::Client::builder().timeout(std::time::Duration::from_secs(120)),
    );
    let started = std::time::Instant::now();
    let download = client
        .get(att["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&bearer)
        .send();
    let input = json!({ "input": { "ownerType": "contract", "ownerId": "c-2",
        "filename": "b.pdf", "base64": STANDARD.encode(pdf()) } });
    let upload = served.gql(crate::helpers::UPLOAD, input, Some(&bearer));
    let both = async { tokio::join!(download, upload) };
    let (download, upload) = tokio::time::timeout(std::time::Duration::from_secs(150), both)
        .await
        .expect("answers, not a hang");
    let download = download.expect("an answer, not a hang");
    assert_eq!(download.status(), 503, "{}", served.log());
    assert_eq!(
        crate::helpers::codes(&upload),
        ["STORAGE_UNAVAILABLE"],
        "{upload}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(100),
        "{:?}",
        started.elapsed()
    );
}

crate::matrix!(once:
    a_role_signs_and_no_url_outlives_its_credentials,
    a_stalled_store_answers_unavailable_in_time,
);
crate::matrix!(
    a_replayed_upload_url_never_changes_a_stored_file,
    an_upload_url_takes_only_the_declared_length,
);
crate::matrix!(
    s3: every_write_path_serves_the_detected_type,
    presigned_urls_name_the_public_endpoint,
    migrated_copies_carry_their_type,
);
crate::matrix!(
    garage: a_replayed_upload_url_never_changes_a_stored_file,
    an_upload_url_takes_only_the_declared_length,
    migrated_copies_carry_their_type,
    every_write_path_serves_the_detected_type,
    presigned_urls_name_the_public_endpoint,
);
