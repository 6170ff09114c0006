//! S3 where users run it: objects served with their detected type on every write
//! path, a replayed direct-upload URL that cannot touch a stored file on any store,
//! and presigned URLs that name the public endpoint (issue 22).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::{
    COMPLETE_DIRECT, FORWARD_TO_S3, S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, Setup, TestApp,
    announce_and_put, data, declaration, fetch, pdf, png, put_to, sha256_hex, tenant,
    upload_file_form,
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
    let multipart: Value = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&bearer)
        .header("apollo-require-preflight", "1")
        .multipart(form)
        .send()
        .await
        .expect("multipart")
        .json()
        .await
        .expect("JSON");
    let id = data(&multipart, "uploadAttachmentFile")["id"].clone();
    let got = app
        .gql(crate::helpers::GET, json!({ "id": id }), Some(&bearer))
        .await;
    seen.push(("multipart", data(&got, "attachment"), text, "text/plain"));

    let direct_content = pdf();
    let (direct, status) = announce_and_put(
        &app,
        &bearer,
        declaration(&direct_content, "application/pdf"),
        direct_content.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let done = app
        .gql(
            COMPLETE_DIRECT,
            json!({ "id": direct["id"] }),
            Some(&bearer),
        )
        .await;
    seen.push((
        "direct",
        data(&done, "completeDirectUpload"),
        direct_content,
        "application/pdf",
    ));

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
    let endpoint = &app.s3.as_ref().expect("an S3 cell").endpoint;
    let builder = opendal::services::S3::default()
        .bucket(S3_BUCKET)
        .region("us-east-1")
        .endpoint(endpoint)
        .access_key_id(S3_ACCESS_KEY)
        .secret_access_key(S3_SECRET_KEY)
        .disable_config_load()
        .disable_ec2_metadata();
    opendal::Operator::new(builder).expect("operator")
}

async fn a_replayed_upload_url_never_changes_a_stored_file(setup: Setup) {
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
    assert_eq!(status, 200);
    let done = app
        .gql(
            COMPLETE_DIRECT,
            json!({ "id": direct["id"] }),
            Some(&bearer),
        )
        .await;
    let att = data(&done, "completeDirectUpload");
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
    let internal = &app.s3.as_ref().expect("S3").endpoint;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let att = app
        .upload(&bearer, &content, "contract", Some("c-1"), "a.pdf")
        .await;
    let url = att["url"].as_str().expect("url");
    assert!(
        url.starts_with(&public) && !url.contains(internal.as_str()),
        "{url}"
    );
    assert_eq!(fetch(&att["url"]).await, content);

    let direct_content = pdf();
    let (direct, status) = announce_and_put(
        &app,
        &bearer,
        declaration(&direct_content, "application/pdf"),
        direct_content.clone(),
    )
    .await;
    let upload_url = direct["uploadUrl"].as_str().expect("uploadUrl");
    assert!(upload_url.starts_with(&public), "{upload_url}");
    assert_eq!(status, 200, "the PUT through the public endpoint");
    let done = app
        .gql(
            COMPLETE_DIRECT,
            json!({ "id": direct["id"] }),
            Some(&bearer),
        )
        .await;
    assert_eq!(
        fetch(&data(&done, "completeDirectUpload")["url"]).await,
        direct_content
    );
}

crate::matrix!(a_replayed_upload_url_never_changes_a_stored_file);
crate::matrix!(s3: every_write_path_serves_the_detected_type, presigned_urls_name_the_public_endpoint);
