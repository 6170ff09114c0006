//! Moving files from the local disk into the bucket (`storage migrate`, automatic
//! migration), `storage sweep`, and a download whose object is lost.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use entity::{attachment, storage_migration};
use sea_orm::{EntityTrait, PaginatorTrait, QueryOrder};
use serde_json::{Value, json};

use crate::helpers::{
    DELETE, Db, GET, S3_BUCKET, S3Server, SECRET, Setup, Store, TestApp, Uploaded, data, pdf, png,
    private_database_url, run_attache, s3_flags, sha256_hex, spawn_attache, tenant,
};

/// Files of two tenants in all four collections, on the local disk of an fs app
/// with a database of its own, and an empty bucket to move them into.
struct Scene {
    local: TestApp,
    database_url: String,
    s3: S3Server,
    _s3_dir: tempfile::TempDir,
    /// Every uploaded file: its storage key and bytes.
    files: Vec<(String, Vec<u8>)>,
}

impl Scene {
    async fn new(db: Db, per_collection: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = private_database_url(db, dir.path()).await;
        let uploads = dir.path().join("uploads");
        let setup = Setup {
            db,
            store: Store::Fs,
        };
        let local = TestApp::spawn_at(setup, dir, &database_url, &uploads, &[]).await;
        let mut files = Vec::new();
        for tenant in [tenant(), tenant()] {
            let token = local.token(&tenant);
            for (owner_type, owner_id, content) in [
                ("contract", Some("c-1"), pdf as fn() -> Vec<u8>),
                ("customer", Some("cu-9"), png),
                ("invoice_logo", None, png),
                ("invoice_reference", None, pdf),
            ] {
                let input: Vec<Value> = (0..per_collection)
                    .map(|n| {
                        let mut bytes = content();
                        bytes.extend(format!("\n{n}").as_bytes());
                        json!({ "ownerType": owner_type, "ownerId": owner_id,
                                "filename": format!("f{n}"), "base64": STANDARD.encode(&bytes) })
                    })
                    .collect();
                for chunk in input.chunks(20) {
                    let body = local
                        .gql(BATCH, json!({ "input": chunk }), Some(&token))
                        .await;
                    for (item, stored) in chunk
                        .iter()
                        .zip(data(&body, "uploadAttachments").as_array().expect("list"))
                    {
                        let bytes = STANDARD
                            .decode(item["base64"].as_str().expect("b64"))
                            .expect("decode");
                        files.push((key_of(&local, stored).await, bytes));
                    }
                }
            }
        }
        let s3_dir = tempfile::tempdir().expect("tempdir");
        let s3 = S3Server::start(s3_dir.path()).await;
        Self {
            local,
            database_url,
            s3,
            _s3_dir: s3_dir,
            files,
        }
    }

    /// A server on this scene's database with its files bound for a bucket of its
    /// own (`AUTO_MIGRATE_STORAGE`), the local folder as their source.
    async fn migrating_server(&self, db: Db, extra: &[&str]) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = Setup {
            db,
            store: Store::S3,
        };
        let mut flags = vec!["--auto-migrate-storage", "true"];
        flags.extend(extra);
        TestApp::spawn_at(
            setup,
            dir,
            &self.database_url,
            &self.local.storage_root,
            &flags,
        )
        .await
    }

    fn bucket(&self) -> PathBuf {
        self.s3.root.join(S3_BUCKET)
    }

    /// `attache storage migrate ARGS` against this scene's database, folder and bucket.
    fn migrate_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "storage".into(),
            "migrate".into(),
            "--database-url".into(),
            self.database_url.clone(),
            "--storage-root".into(),
            self.local.storage_root.display().to_string(),
        ];
        args.extend(s3_flags(&self.s3.endpoint));
        args.extend(extra.iter().map(ToString::to_string));
        args
    }

    async fn migrate(&self, extra: &[&str]) -> (bool, String) {
        let output = run_attache(self.migrate_args(extra)).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    async fn tracked(&self) -> u64 {
        storage_migration::Entity::find()
            .count(self.local.app.db.read())
            .await
            .expect("count tracking rows")
    }

    async fn rows(&self) -> Vec<attachment::Model> {
        attachment::Entity::find()
            .order_by_asc(attachment::Column::Id)
            .all(self.local.app.db.read())
            .await
            .expect("rows")
    }

    /// Every file is in the scene's bucket under its key, byte for byte.
    fn assert_all_in_bucket(&self) {
        self.assert_all_in(&self.bucket());
    }

    /// Every file is in the bucket folder `bucket` under its key, byte for byte.
    fn assert_all_in(&self, bucket: &Path) {
        for (key, bytes) in &self.files {
            let landed = std::fs::read(bucket.join(key))
                .unwrap_or_else(|err| panic!("{key} is not in the bucket: {err}"));
            assert_eq!(sha256_hex(&landed), sha256_hex(bytes), "{key}");
        }
    }
}

const BATCH: &str =
    "mutation($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { id } }";

async fn key_of(app: &TestApp, stored: &Value) -> String {
    let id = uuid::Uuid::parse_str(stored["id"].as_str().expect("id")).expect("uuid");
    attachment::Entity::find_by_id(id)
        .one(app.app.db.read())
        .await
        .expect("row")
        .expect("exists")
        .storage_key
}

/// The number after `label ` in a summary line such as `copied 3, skipped 1, ...`.
fn count(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .rev()
        .find(|line| line.contains(" bytes, "))
        .unwrap_or_else(|| panic!("no summary line in {summary}"));
    let after = line
        .split(&format!("{label} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no `{label}` in {line}"));
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after `{label}` in {line}"))
}

async fn a_dry_run_writes_nothing_and_a_run_moves_every_file_once(setup: Setup) {
    let scene = Scene::new(setup.db, 2).await;
    let before = scene.rows().await;
    assert_eq!(before.len(), 16);

    let (ok, out) = scene.migrate(&["--dry-run"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("would copy ").count(),
        17,
        "a line per file and the summary: {out}"
    );
    assert!(
        std::fs::read_dir(scene.bucket())
            .expect("bucket")
            .next()
            .is_none(),
        "bucket empty"
    );
    assert_eq!(scene.tracked().await, 0);

    // A corrupt object already in the bucket (same size, other bytes) is replaced.
    let (corrupt_key, original) = &scene.files[3];
    let planted = scene.bucket().join(corrupt_key);
    std::fs::create_dir_all(planted.parent().expect("parent")).expect("mkdir");
    std::fs::write(&planted, vec![b'x'; original.len()]).expect("plant");

    let (ok, out) = scene.migrate(&["--batch-size", "5"]).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "copied"), 16, "{out}");
    scene.assert_all_in_bucket();
    assert_eq!(scene.tracked().await, 16);
    let tracked = storage_migration::Entity::find()
        .all(scene.local.app.db.read())
        .await
        .expect("tracking rows");
    for row in &tracked {
        let file = scene.files.iter().find(|(key, _)| key == &row.file_path);
        let (_, bytes) = file.expect("a tracking row per uploaded key");
        assert_eq!(row.sha256, sha256_hex(bytes));
        assert!(row.source.starts_with("fs:") && row.destination.starts_with("s3://"));
    }
    assert_eq!(scene.rows().await, before, "attachment rows are untouched");

    let (ok, out) = scene.migrate(&[]).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "copied"), 0, "{out}");
    assert_eq!(count(&out, "skipped"), 16, "{out}");
    assert_eq!(scene.tracked().await, 16);

    // Another destination (here a prefix; a bucket alike) is copied into afresh: the
    // records of the first say nothing about it. Then it is the one recorded.
    let elsewhere = ["--s3-prefix", "moved"];
    let (ok, out) = scene.migrate(&elsewhere).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "copied"), 16, "{out}");
    for (key, bytes) in &scene.files {
        let copy = scene.bucket().join("moved").join(key);
        assert_eq!(&std::fs::read(&copy).expect("copied"), bytes, "{key}");
    }
    let (ok, out) = scene.migrate(&elsewhere).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "skipped"), 16, "{out}");
    assert_eq!(scene.tracked().await, 16, "one record per key");
}

async fn a_missing_local_file_is_reported_and_fails_the_run(setup: Setup) {
    let scene = Scene::new(setup.db, 1).await;
    let (lost, _) = &scene.files[0];
    std::fs::remove_file(scene.local.storage_root.join(lost)).expect("remove");
    let (ok, out) = scene.migrate(&[]).await;
    assert!(!ok, "the exit status says a file is missing: {out}");
    assert!(out.contains(&format!("missing: {lost}")), "{out}");
    assert_eq!(count(&out, "missing"), 1, "{out}");
    assert_eq!(count(&out, "copied"), 7, "{out}");
    assert_eq!(
        scene.tracked().await,
        7,
        "no tracking row for the missing file"
    );

    // A file only in the bucket (uploaded there after the switch) is no loss: a dry
    // run says a run would record it, and a run does.
    let (_, bytes) = &scene.files[0];
    let in_bucket = scene.bucket().join(lost);
    std::fs::create_dir_all(in_bucket.parent().expect("parent")).expect("mkdir");
    std::fs::write(&in_bucket, bytes).expect("the bucket's copy");
    let (ok, out) = scene.migrate(&["--dry-run"]).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "already there"), 1, "{out}");
    assert_eq!(count(&out, "missing"), 0, "{out}");
    assert_eq!(scene.tracked().await, 7, "a dry run records nothing");
    let (ok, out) = scene.migrate(&[]).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "already there"), 1, "{out}");
    assert_eq!(scene.tracked().await, 8);
}

async fn a_migration_killed_part_way_is_completed_by_the_next_run(setup: Setup) {
    let scene = Scene::new(setup.db, 40).await;
    let total = scene.files.len() as u64;
    assert_eq!(total, 320);
    let args = scene.migrate_args(&["--concurrency", "1", "--batch-size", "10"]);
    let mut child = spawn_attache(args);
    let mut waited = 0;
    while scene.tracked().await < 40 {
        assert!(waited < 600, "the migration makes no progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished too early"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let after_kill = scene.tracked().await;
    assert!(
        after_kill < total,
        "killed part way ({after_kill} of {total})"
    );

    let (ok, out) = scene.migrate(&[]).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "skipped"), after_kill, "{out}");
    assert_eq!(
        count(&out, "copied") + count(&out, "already there"),
        total - after_kill,
        "{out}"
    );
    assert_eq!(scene.tracked().await, total, "one tracking row per file");
    scene.assert_all_in_bucket();
}

async fn two_migrations_at_once_copy_each_file_once(setup: Setup) {
    let scene = Scene::new(setup.db, 10).await;
    let first = run_attache(scene.migrate_args(&["--concurrency", "2"]));
    let second = run_attache(scene.migrate_args(&["--concurrency", "2"]));
    let (first, second) = tokio::join!(first, second);
    let mut copied = 0;
    for output in [first, second] {
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{out}");
        copied += count(&out, "copied");
        assert_eq!(
            count(&out, "already there"),
            0,
            "never the same file twice: {out}"
        );
    }
    assert_eq!(copied, scene.files.len() as u64);
    assert_eq!(scene.tracked().await, scene.files.len() as u64);
    scene.assert_all_in_bucket();
}

/// Every file downloads with its bytes through `url` (no headers) and
/// `downloadUrl` (bearer); returns the `url`s.
async fn download_all(app: &TestApp, tokens: &[(String, String)]) -> Vec<String> {
    let mut urls = Vec::new();
    for (tenant, token) in tokens {
        let list = "query { contract: attachments(ownerType: \"contract\", first: 100) { nodes { sha256 url downloadUrl } } logo: attachments(ownerType: \"invoice_logo\", first: 100) { nodes { sha256 url downloadUrl } } }";
        let body = app.gql(list, json!({}), Some(token)).await;
        for field in ["contract", "logo"] {
            let nodes = data(&body, field)["nodes"]
                .as_array()
                .expect("nodes")
                .clone();
            assert!(!nodes.is_empty(), "{tenant} has {field} files");
            for node in nodes {
                let url = node["url"].as_str().expect("url").to_owned();
                let plain = app.client.get(&url).send().await.expect("GET url");
                assert_eq!(plain.status(), 200, "{url}");
                let bytes = plain.bytes().await.expect("bytes");
                assert_eq!(sha256_hex(&bytes), node["sha256"], "{url}");
                let authed = app
                    .client
                    .get(node["downloadUrl"].as_str().expect("downloadUrl"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("GET downloadUrl");
                assert_eq!(authed.status(), 200);
                assert_eq!(
                    sha256_hex(&authed.bytes().await.expect("bytes")),
                    node["sha256"]
                );
                urls.push(url);
            }
        }
    }
    urls
}

async fn automatic_migration_serves_every_file_before_during_and_after(setup: Setup) {
    let scene = Scene::new(setup.db, 3).await;
    let on_s3 = scene.migrating_server(setup.db, &[]).await;
    let rows = scene.rows().await;
    let mut tenants: Vec<String> = rows.iter().map(|row| row.tenant_id.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let tenants: Vec<(String, String)> = tenants
        .into_iter()
        .map(|tenant| {
            let token = on_s3.token(&tenant);
            (tenant, token)
        })
        .collect();

    for url in download_all(&on_s3, &tenants).await {
        assert!(
            url.contains("/api/attachments/"),
            "not yet copied: a signed link to the route: {url}"
        );
    }
    let migration = tokio::spawn(attache::workers::migration::run(
        on_s3.app.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    while !migration.is_finished() {
        download_all(&on_s3, &tenants).await;
    }
    migration.await.expect("the background migration ends");
    for url in download_all(&on_s3, &tenants).await {
        assert!(
            url.contains("X-Amz-Signature"),
            "copied: a presigned URL: {url}"
        );
    }
    scene.assert_all_in(&on_s3.storage_root);
}

/// With `URL_MODE=public`, a file not yet copied gets a signed link to the download
/// route (its public URL would find nothing in the bucket), and its public URL once
/// copied.
async fn public_urls_wait_for_the_copy(setup: Setup) {
    let scene = Scene::new(setup.db, 1).await;
    let cdn = "https://cdn.example.com";
    let public = ["--url-mode", "public", "--s3-public-base-url", cdn];
    let on_s3 = scene.migrating_server(setup.db, &public).await;
    let rows = scene.rows().await;
    let row = rows.first().expect("a row");
    let token = on_s3.token(&row.tenant_id);
    let url = || async {
        let body = on_s3.gql(GET, json!({ "id": row.id }), Some(&token)).await;
        data(&body, "attachment")["url"]
            .as_str()
            .expect("url")
            .to_owned()
    };
    let before = url().await;
    assert!(before.contains("/api/attachments/"), "{before}");
    let plain = on_s3.client.get(&before).send().await.expect("GET url");
    assert_eq!(plain.status(), 200, "{before}");
    // Uploaded meanwhile, so in the bucket already: its public URL at once.
    let new = on_s3.upload_contract_pdf("new.pdf").await;
    let key = TestApp::contract_key(&new.tenant, "c-1", &new.att);
    assert_eq!(new.att["url"], format!("{cdn}/{key}"), "{}", new.att);
    attache::workers::migration::run(
        on_s3.app.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let after = url().await;
    assert_eq!(after, format!("{cdn}/{}", row.storage_key));
}

/// Deleting during an automatic migration leaves the file nowhere: not in the local
/// folder (before, a delete removed only the bucket's copy, and the local file stayed
/// for good) and not in the bucket (a copy that lands after its row's delete is
/// removed again).
async fn deletes_during_an_automatic_migration_leave_no_file(setup: Setup) {
    let scene = Scene::new(setup.db, 5).await;
    let on_s3 = scene.migrating_server(setup.db, &[]).await;
    let rows = scene.rows().await;
    let delete = |row: &attachment::Model| {
        let token = on_s3.token(&row.tenant_id);
        let id = row.id;
        let on_s3 = &on_s3;
        async move {
            let deleted = on_s3.gql(DELETE, json!({ "id": id }), Some(&token)).await;
            assert_eq!(data(&deleted, "deleteAttachment"), json!(id));
        }
    };
    for row in &rows[..5] {
        delete(row).await;
        let local = scene.local.storage_root.join(&row.storage_key);
        assert!(!local.exists(), "a delete removes the local file too");
    }
    let migration = tokio::spawn(attache::workers::migration::run(
        on_s3.app.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    for row in &rows[5..15] {
        delete(row).await;
    }
    migration.await.expect("the background migration ends");
    for row in &rows[..15] {
        let key = &row.storage_key;
        assert!(
            !scene.local.storage_root.join(key).exists(),
            "{key} stays on disk"
        );
        assert!(
            !on_s3.storage_root.join(key).exists(),
            "{key} stays in the bucket"
        );
    }
    for row in &rows[15..] {
        let key = &row.storage_key;
        assert!(on_s3.storage_root.join(key).exists(), "{key} was migrated");
    }
}

/// The documented way without downtime runs `storage migrate` beside the server on
/// the local disk, whose deletes remove its own file alone: the next run removes
/// the bucket's copy and its record (they stayed for good), and leaves the copy of a
/// deletion that `DELETED_FILES_RETENTION` still keeps.
async fn a_run_removes_the_copies_of_files_deleted_since(setup: Setup) {
    let scene = Scene::new(setup.db, 1).await;
    let (ok, out) = scene.migrate(&[]).await;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "copied"), 8, "{out}");
    let rows = scene.rows().await;
    let (gone, kept) = (&rows[0], &rows[1]);
    let token = scene.local.token(&gone.tenant_id);
    let deleted = scene
        .local
        .gql(DELETE, json!({ "id": gone.id }), Some(&token))
        .await;
    assert_eq!(data(&deleted, "deleteAttachment"), json!(gone.id));
    // A deletion kept for a restore: its entry names the key until it is due.
    let retained = entity::storage_deletion::ActiveModel {
        storage_key: sea_orm::Set(kept.storage_key.clone()),
        attempts: sea_orm::Set(0),
        created_at: sea_orm::Set(chrono::Utc::now()),
        intent: sea_orm::Set(false),
        remove_after: sea_orm::Set(Some(chrono::Utc::now() + chrono::Duration::days(7))),
    };
    let remove_row = attachment::Entity::delete_by_id(kept.id);
    let backend = scene.local.app.db.backend();
    scene
        .local
        .app
        .db
        .commit(vec![
            sea_orm::QueryTrait::build(
                &entity::storage_deletion::Entity::insert(retained),
                backend,
            ),
            sea_orm::QueryTrait::build(&remove_row, backend),
        ])
        .await
        .expect("a retained deletion");
    assert!(
        scene.bucket().join(&gone.storage_key).exists(),
        "copied before the delete"
    );

    let (ok, out) = scene.migrate(&[]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("(copies of deleted files removed: 1)"),
        "{out}"
    );
    assert!(
        !scene.bucket().join(&gone.storage_key).exists(),
        "the deleted file's copy is gone"
    );
    assert!(
        scene.bucket().join(&kept.storage_key).exists(),
        "a retained deletion keeps its copy"
    );
    assert_eq!(scene.tracked().await, 7);
    let (ok, out) = scene.migrate(&[]).await;
    assert!(ok, "{out}");
    assert!(!out.contains("deleted files removed"), "once: {out}");
    assert_eq!(count(&out, "skipped"), 6, "{out}");
}

async fn serve_runs_the_automatic_migration(setup: Setup) {
    let scene = Scene::new(setup.db, 2).await;
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--database-url".into(),
        scene.database_url.clone(),
        "--storage-root".into(),
        scene.local.storage_root.display().to_string(),
        "--auto-migrate-storage".into(),
        "true".into(),
        "--jwt-secret".into(),
        SECRET.into(),
    ];
    args.extend(s3_flags(&scene.s3.endpoint));
    let mut server = spawn_attache(args);
    let mut waited = 0;
    while scene.tracked().await < scene.files.len() as u64 {
        assert!(waited < 300, "the background migration did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    server.kill().expect("stop the server");
    server.wait().expect("reap");
    scene.assert_all_in_bucket();
}

async fn a_lost_object_is_a_clear_404_not_a_truncated_200(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        tenant: acme,
        bearer: token,
        att,
        ..
    } = app.upload_contract_pdf("lost.pdf").await;
    let key = TestApp::contract_key(&acme, "c-1", &att);
    std::fs::remove_file(app.storage_root.join(&key)).expect("lose the object");
    app.assert_download_lost(&att, &token).await;
}

/// A download that read the row just before a delete committed finds the object
/// gone with it: a plain not-found, not lost data.
async fn an_object_deleted_with_its_row_is_not_lost_data(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        bearer: token, id, ..
    } = app.upload_contract_pdf("gone.pdf").await;
    let id = uuid::Uuid::parse_str(&id).expect("uuid");
    let read_before = attachment::Entity::find_by_id(id)
        .one(app.app.db.read())
        .await
        .expect("query")
        .expect("the row");
    let deleted = app.gql(DELETE, json!({ "id": id }), Some(&token)).await;
    assert_eq!(data(&deleted, "deleteAttachment"), json!(id));
    match attache::attachments::locate(&app.app, &read_before).await {
        Err(attache::error::AppError::NotFound(_)) => {}
        Err(other) => panic!("a deleted attachment is not found, not: {other}"),
        Ok(_) => panic!("the object was deleted"),
    }
}

/// Writes `bytes` at `key` under `root`, last modified `age` ago.
fn plant(root: &Path, key: &str, bytes: &[u8], age: Duration) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, bytes).expect("plant");
    let modified = std::time::SystemTime::now() - age;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_modified(modified))
        .expect("set the modification time");
}

async fn sweep_removes_old_orphans_and_keeps_everything_else(setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = private_database_url(setup.db, dir.path()).await;
    let uploads = dir.path().join("uploads");
    let app = TestApp::spawn_at(setup, dir, &database_url, &uploads, &[]).await;
    let Uploaded {
        tenant: acme,
        bearer: token,
        att: kept,
        ..
    } = app.upload_contract_pdf("kept.pdf").await;
    let kept_key = TestApp::contract_key(&acme, "c-1", &kept);
    // Referenced, yet old: a sweep keeps it whatever its age.
    plant(
        &app.storage_root,
        &kept_key,
        &std::fs::read(app.storage_root.join(&kept_key)).expect("read"),
        Duration::from_secs(7200),
    );
    let two_hours = Duration::from_secs(7200);
    let old_orphan = format!("{acme}/contracts/c-1/{}.pdf", uuid::Uuid::now_v7());
    let young_orphan = format!("{acme}/invoices/logos/{}.png", uuid::Uuid::now_v7());
    plant(&app.storage_root, &old_orphan, &pdf(), two_hours);
    plant(&app.storage_root, &young_orphan, &png(), Duration::ZERO);
    plant(
        &app.storage_root,
        "backups/2026-01-01T00-00-00Z.sqlite",
        b"backup",
        two_hours,
    );
    plant(
        &app.storage_root,
        "notes/readme.txt",
        b"not ours",
        two_hours,
    );

    let mut args: Vec<String> = vec![
        "storage".into(),
        "sweep".into(),
        "--database-url".into(),
        database_url.clone(),
        "--storage-root".into(),
        uploads.display().to_string(),
    ];
    if let Some(s3) = &app.s3 {
        args.extend(s3_flags(&s3.endpoint));
    }
    args.extend(["--older-than".into(), "1h".into()]);
    let before = app.stored_keys();
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    let output = run_attache(dry).await;
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        out.contains(&format!("would remove {old_orphan} (orphan)")),
        "{out}"
    );
    assert!(out.contains("would remove 1 objects"), "{out}");
    assert_eq!(app.stored_keys(), before, "a dry run removes nothing");

    // A database that is not the server's (DATABASE_URL left unset names a new
    // attache.db): every object would look like an orphan, so nothing is swept.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let missing = elsewhere.path().join("attache.db");
    let empty = elsewhere.path().join("empty.db");
    std::fs::write(&empty, b"").expect("an empty SQLite file");
    for (url, said) in [
        (&missing, "does not exist"),
        (&empty, "holds no attache tables"),
    ] {
        let mut wrong = args.clone();
        wrong[3] = format!("sqlite://{}?mode=rwc", url.display());
        let output = run_attache(wrong).await;
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{err}");
        assert!(err.contains("DATABASE_URL") && err.contains(said), "{err}");
        assert_eq!(app.stored_keys(), before, "nothing is swept: {err}");
    }
    assert!(!missing.exists(), "no database is created");

    let output = run_attache(args.clone()).await;
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains(&format!("removed {old_orphan} (orphan)")),
        "{out}"
    );
    let after = app.stored_keys();
    assert!(!after.contains(&old_orphan));
    for key in [&kept_key, &young_orphan] {
        assert!(after.contains(key), "{key} stays: {after:?}");
    }
    for key in ["backups/2026-01-01T00-00-00Z.sqlite", "notes/readme.txt"] {
        assert!(
            after.iter().any(|stored| stored == key),
            "{key} stays: {after:?}"
        );
    }
    let download = app
        .client
        .get(kept["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        download.status(),
        200,
        "the referenced file still downloads"
    );

    args.truncate(args.len() - 2);
    args.extend(["--older-than".into(), "0s".into()]);
    let output = run_attache(args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !app.stored_keys().contains(&young_orphan),
        "0s sweeps young orphans too"
    );
}

crate::matrix!(
    s3: a_dry_run_writes_nothing_and_a_run_moves_every_file_once,
    a_missing_local_file_is_reported_and_fails_the_run,
    a_migration_killed_part_way_is_completed_by_the_next_run,
    automatic_migration_serves_every_file_before_during_and_after,
    public_urls_wait_for_the_copy,
    deletes_during_an_automatic_migration_leave_no_file,
    a_run_removes_the_copies_of_files_deleted_since,
);
crate::matrix!(once: serve_runs_the_automatic_migration);
// SQLite: one process owns the database (docs/operations.md), so only PostgreSQL runs two.
crate::matrix!(postgres: two_migrations_at_once_copy_each_file_once);
crate::matrix!(
    a_lost_object_is_a_clear_404_not_a_truncated_200,
    an_object_deleted_with_its_row_is_not_lost_data,
    sweep_removes_old_orphans_and_keeps_everything_else,
);
