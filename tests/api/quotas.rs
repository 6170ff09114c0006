//! Tenant quotas (issue 27): every upload path refused at the limit with nothing
//! stored, no overshoot under concurrency, reservations of direct uploads released,
//! deletes that free space at once, `usage`, the warning event and gauge, and the
//! recount that repairs a usage altered by hand.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use entity::outbox_event::{self, EventType};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{
    Api, CREATE_DIRECT, DELETE, SECRET, SIGNING_KEY, Served, Setup, TestApp, UPLOAD,
    announce_and_put, codes, complete_direct, data, database_url, declaration, has, hs256,
    keys_under, now, pdf, post_multipart, run_attache, scrape, tenant, token_for, total,
    upload_file_form,
};

const USAGE: &str = "{ usage { bytes files quotaBytes quotaFiles } }";
const UPLOAD_MANY: &str =
    "mutation($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { id } }";

fn input(name: &str, content: &[u8]) -> Value {
    json!({ "ownerType": "contract", "ownerId": "c-1", "filename": name, "base64": STANDARD.encode(content) })
}

/// A base64 upload's whole answer, refused or not.
async fn try_upload(app: &Api, bearer: &str, name: &str, content: &[u8]) -> Value {
    app.gql(
        UPLOAD,
        json!({ "input": input(name, content) }),
        Some(bearer),
    )
    .await
}

/// `createDirectUpload` of `content` as a PDF: its whole answer.
async fn try_announce(app: &Api, bearer: &str, content: &[u8]) -> Value {
    let declared = declaration(content, "application/pdf");
    app.gql(CREATE_DIRECT, json!({ "input": declared }), Some(bearer))
        .await
}

async fn usage(app: &Api, bearer: &str) -> Value {
    data(&app.gql(USAGE, json!({}), Some(bearer)).await, "usage")
}

/// Asserts a QUOTA_EXCEEDED refusal that says how to fix it and carries the usage.
fn assert_refused(body: &Value, files: i64) {
    assert_eq!(codes(body), vec!["QUOTA_EXCEEDED"], "{body}");
    let error = &body["errors"][0];
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("delete files or ask for a larger quota"),
        "{body}"
    );
    assert_eq!(error["extensions"]["usage"]["files"], files, "{body}");
    assert_eq!(error["extensions"]["requested"]["files"], 1, "{body}");
    assert_eq!(
        error["extensions"]["requested"]["bytes"],
        pdf().len(),
        "{body}"
    );
}

async fn every_path_is_refused_at_the_limit_with_nothing_stored(setup: Setup) {
    let content = pdf();
    let size = content.len();
    // Room for two of these PDFs by bytes, whatever the files quota says.
    let quota = (2 * size).to_string();
    let app = TestApp::spawn_with(setup, &["--tenant-quota-bytes", &quota]).await;
    let acme = tenant();
    let bearer = app.token(&acme);

    // A batch that does not fit is refused whole.
    let three = json!({ "input": [input("a.pdf", &content), input("b.pdf", &content), input("c.pdf", &content)] });
    let refused = app.gql(UPLOAD_MANY, three, Some(&bearer)).await;
    assert_eq!(codes(&refused), vec!["QUOTA_EXCEEDED"], "{refused}");
    let error = &refused["errors"][0];
    assert_eq!(
        error["extensions"]["requested"],
        json!({ "bytes": 3 * size, "files": 3 }),
        "{refused}"
    );
    // Deleting files would not make room: the message does not suggest it.
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("this upload of {} bytes in 3 file(s)", 3 * size))
            && message.contains("larger than the whole quota: ask for a larger quota"),
        "{message}"
    );
    assert_eq!(app.row_count(&acme).await, 0);
    assert!(app.stored_keys().is_empty());

    app.upload(&bearer, &content, "contract", Some("c-1"), "a.pdf")
        .await;
    assert_eq!(
        usage(&app, &bearer).await,
        json!({ "bytes": size as f64, "files": 1, "quotaBytes": (2 * size) as f64, "quotaFiles": null })
    );

    // A direct upload reserves its declared size: the next upload no longer fits.
    let created = try_announce(&app, &bearer, &content).await;
    let direct = data(&created, "createDirectUpload");
    assert_eq!(usage(&app, &bearer).await["bytes"], (2 * size) as f64);
    let base64 = try_upload(&app, &bearer, "b.pdf", &content).await;
    assert_refused(&base64, 2);
    let form = upload_file_form("contract", "c-1", &content, "m.pdf", "application/pdf");
    let (_, multipart) = post_multipart(&app.url(""), &bearer, form).await;
    assert_refused(&multipart, 2);
    let another = try_announce(&app, &bearer, &content).await;
    assert_refused(&another, 2);
    assert_eq!(app.row_count(&acme).await, 1, "no row of a refused upload");
    assert_eq!(app.stored_keys().len(), 1, "no object of a refused upload");

    // The reserved direct upload completes without counting twice.
    let status = crate::helpers::put_to(&app, &direct, content.clone()).await;
    assert_eq!(status, 200);
    let done = complete_direct(&app, &bearer, &direct).await;
    data(&done, "completeDirectUpload");
    assert_eq!(usage(&app, &bearer).await["bytes"], (2 * size) as f64);
    assert_eq!(app.row_count(&acme).await, 2);

    // Another tenant has its own room.
    let other = app.token(&tenant());
    app.upload(&other, &content, "contract", Some("c-1"), "a.pdf")
        .await;
}

async fn a_delete_frees_its_space_at_once(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--tenant-quota-files", "1"]).await;
    let bearer = app.token(&tenant());
    let first = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let refused = try_upload(&app, &bearer, "b.pdf", &pdf()).await;
    assert_refused(&refused, 1);
    let deleted = app
        .gql(DELETE, json!({ "id": first["id"] }), Some(&bearer))
        .await;
    assert!(deleted.get("errors").is_none(), "{deleted}");
    assert_eq!(usage(&app, &bearer).await["files"], 0);
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "b.pdf")
        .await;
}

/// Twenty uploads at once against room for five: exactly five are stored, on
/// SQLite (one writer) and PostgreSQL (row locks), whoever wins the race.
async fn concurrent_uploads_never_overshoot(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--tenant-quota-files", "5"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let attempts = (0..20).map(|i| {
        let (app, bearer, content) = (&app, &bearer, &content);
        async move { try_upload(app, bearer, &format!("{i}.pdf"), content).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let stored = answers.iter().filter(|a| a.get("errors").is_none()).count();
    let refused = answers
        .iter()
        .filter(|a| codes(a) == vec!["QUOTA_EXCEEDED"])
        .count();
    assert_eq!((stored, refused), (5, 15), "{answers:?}");
    assert_eq!(app.row_count(&acme).await, 5);
    assert_eq!(app.stored_keys().len(), 5, "no object of a refused upload");
    assert_eq!(usage(&app, &bearer).await["files"], 5);
    // The database itself refuses what passes the limit, whatever a read saw before.
    let mut past = attache::db::Writes::new(app.app.db.backend());
    attache::quotas::grow(&mut past, &app.app.config.quotas, &acme, 0, 1);
    let refused = app
        .app
        .db
        .commit(past.statements())
        .await
        .expect_err("the CHECK");
    assert!(attache::quotas::is_refusal(&refused), "{refused}");
}

async fn an_expired_direct_upload_releases_its_reservation(setup: Setup) {
    let (app, _) = TestApp::spawn_alone(
        setup,
        &["--url-ttl-seconds", "2", "--tenant-quota-files", "1"],
    )
    .await;
    let bearer = app.token(&tenant());
    let content = pdf();
    let (_, status) = announce_and_put(
        &app,
        &bearer,
        declaration(&content, "application/pdf"),
        content.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(usage(&app, &bearer).await["files"], 1, "reserved");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    attache::attachments::direct::expire(&app.app)
        .await
        .expect("sweep");
    assert_eq!(usage(&app, &bearer).await["files"], 0, "released");
    app.upload(&bearer, &content, "contract", Some("c-1"), "a.pdf")
        .await;
}

/// A tenant exempted with the largest quota a command takes still deletes, its
/// expired direct uploads and every other tenant's are still released, and the gauge
/// still reads: the 80 % test once overflowed PostgreSQL's BIGINT there, failing
/// each of them, and one such row held back every tenant's expiry.
async fn the_largest_quota_still_deletes_and_expires(setup: Setup) {
    let (app, url) = TestApp::spawn_alone(setup, &["--url-ttl-seconds", "2"]).await;
    let (acme, globex) = (tenant(), tenant());
    let exempt = run_attache(
        [
            "tenant",
            "quota",
            "set",
            &acme,
            "--bytes",
            "8000000TiB",
            "--files",
            "2147483647",
            "--database-url",
            &url,
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    assert!(exempt.status.success(), "{exempt:?}");
    let bearer = app.token(&acme);
    let stored = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let deleted = app
        .gql(DELETE, json!({ "id": stored["id"] }), Some(&bearer))
        .await;
    assert!(deleted.get("errors").is_none(), "{deleted}");

    let other = app.token(&globex);
    for bearer in [&bearer, &other] {
        let content = pdf();
        let declared = declaration(&content, "application/pdf");
        let (_, status) = announce_and_put(&app, bearer, declared, content).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    attache::attachments::direct::expire(&app.app)
        .await
        .expect("expiry");
    assert_eq!(usage(&app, &bearer).await["files"], 0, "acme released");
    assert_eq!(usage(&app, &other).await["files"], 0, "globex released");
    assert_eq!(gauge(&app).await, 0.0);
}

async fn usage_is_the_callers_tenant_and_needs_read_scope(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let (acme, globex) = (tenant(), tenant());
    let bearer = app.token(&acme);
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    assert_eq!(
        usage(&app, &bearer).await,
        json!({ "bytes": pdf().len() as f64, "files": 1, "quotaBytes": null, "quotaFiles": null })
    );
    assert_eq!(usage(&app, &app.token(&globex)).await["files"], 0);
    let write_only = hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600,
        "scope": "attachments:write" }));
    let refused = app.gql(USAGE, json!({}), Some(&write_only)).await;
    assert_eq!(codes(&refused), vec!["FORBIDDEN"], "{refused}");
}

/// Passing 80 % records one `tenant.quota_warning` per crossing, and the gauge
/// counts the tenant while it is past.
async fn passing_80_percent_warns_once_per_crossing(setup: Setup) {
    // A database of its own: the gauge counts every tenant of the database.
    let (app, _) = TestApp::spawn_alone(setup, &["--tenant-quota-files", "5"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = format!("{i}.pdf");
        ids.push(
            app.upload(&bearer, &pdf(), "contract", Some("c-1"), &name)
                .await["id"]
                .clone(),
        );
    }
    let warnings = || async {
        outbox_event::Entity::find()
            .filter(outbox_event::Column::TenantId.eq(acme.as_str()))
            .filter(outbox_event::Column::EventType.eq(EventType::QuotaWarning))
            .all(app.app.db.read())
            .await
            .expect("events")
    };
    let first = warnings().await;
    assert_eq!(
        first.len(),
        1,
        "the fourth upload crossed 80 %; the fifth did not again"
    );
    assert_eq!(
        first[0].attachment_id.to_string(),
        ids[3].as_str().expect("id")
    );
    let payload: Value = serde_json::from_str(&first[0].payload).expect("JSON");
    assert_eq!(payload["files"], 4);
    assert_eq!(payload["quota_files"], 5);
    assert_eq!(gauge(&app).await, 1.0);

    for id in &ids[..3] {
        app.gql(DELETE, json!({ "id": id }), Some(&bearer)).await;
    }
    assert_eq!(gauge(&app).await, 0.0, "back under 80 %");
    for i in 5..7 {
        let name = format!("{i}.pdf");
        app.upload(&bearer, &pdf(), "contract", Some("c-1"), &name)
            .await;
    }
    assert_eq!(
        warnings().await.len(),
        2,
        "a second crossing, a second warning"
    );
}

/// A multipart upload (its size unknown until its part is read) that takes the
/// tenant past 80 % warns like the other paths: its early check counted 0 bytes, so
/// only the tenant's next upload warned, if one came.
async fn a_multipart_upload_past_80_percent_warns(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--tenant-quota-bytes", "1000"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = vec![b'a'; 850];
    let form = upload_file_form("contract", "c-1", &content, "n.txt", "text/plain");
    let (_, stored) = post_multipart(&app.url(""), &bearer, form).await;
    assert!(stored.get("errors").is_none(), "{stored}");
    let warnings = outbox_event::Entity::find()
        .filter(outbox_event::Column::TenantId.eq(acme.as_str()))
        .filter(outbox_event::Column::EventType.eq(EventType::QuotaWarning))
        .all(app.app.db.read())
        .await
        .expect("events");
    assert_eq!(warnings.len(), 1, "the upload that crossed 80 % warned");
}

/// A warning is decided under the tenant's row lock: a delete that brought the tenant
/// back under 80 % after its usage was read, before it was marked warned, made a
/// warning at a level already left, and the next real crossing then went
/// unannounced. The test holds the row lock and lowers the usage as that delete does.
async fn a_warning_is_decided_under_the_row_lock(setup: Setup) {
    use sea_orm::TransactionTrait;
    let (app, url) = TestApp::spawn_alone(setup, &["--tenant-quota-files", "5"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let mut last = Value::Null;
    for i in 0..4 {
        let name = format!("{i}.pdf");
        last = app
            .upload(&bearer, &pdf(), "contract", Some("c-1"), &name)
            .await;
    }
    let id = uuid::Uuid::parse_str(last["id"].as_str().expect("id")).expect("uuid");
    let row = entity::attachment::Entity::find_by_id(id)
        .one(app.app.db.read())
        .await
        .expect("read")
        .expect("the fourth upload");
    let other = sea_orm::Database::connect(&url).await.expect("connect");
    other
        .execute_unprepared(&format!(
            "UPDATE tenant_usage SET warned = false WHERE tenant_id = '{acme}'"
        ))
        .await
        .expect("as before the fourth upload's warning");
    let held = other.begin().await.expect("begin");
    held.execute_unprepared(&format!(
        "SELECT 1 FROM tenant_usage WHERE tenant_id = '{acme}' FOR UPDATE"
    ))
    .await
    .expect("the row lock");
    let warning = tokio::spawn({
        let app = app.app.clone();
        async move { attache::quotas::warn_if_near(&app, &row).await }
    });
    // It read 80 %, and now waits for the row (seen as a lock wait in this test's own
    // database, so the test cannot pass by lowering the usage before the warning read
    // it; pg_locks would also count other tests' waits, and a row-lock wait has no
    // database there).
    let started = std::time::Instant::now();
    loop {
        let waiting = other
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ))
            .await
            .expect("pg_locks")
            .and_then(|row| row.try_get::<i64>("", "n").ok())
            .unwrap_or_default();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the warning never waited for the row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    held.execute_unprepared(&format!(
        "UPDATE tenant_usage SET files = 3 WHERE tenant_id = '{acme}'"
    ))
    .await
    .expect("a delete's usage");
    held.commit().await.expect("commit");
    warning.await.expect("join").expect("warn_if_near");
    let warnings = outbox_event::Entity::find()
        .filter(outbox_event::Column::TenantId.eq(acme.as_str()))
        .filter(outbox_event::Column::EventType.eq(EventType::QuotaWarning))
        .count(app.app.db.read())
        .await
        .expect("events");
    assert_eq!(warnings, 1, "the fourth upload's own warning alone");
}

/// `attache_tenants_near_quota` as `/metrics` shows it (it must be there), a second
/// after the last scrape: the figures it reads from the database are read at most
/// once a second.
async fn gauge(app: &TestApp) -> f64 {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let scrape = scrape(app).await;
    assert!(has(&scrape, "attache_tenants_near_quota"), "the gauge");
    total(&scrape, "attache_tenants_near_quota", &[])
}

/// `attache tenant usage --recompute` corrects a usage row altered by hand, and the
/// quota commands set and unset a tenant's own limits.
async fn the_recount_repairs_usage_and_quotas_are_set_by_command(setup: Setup) {
    let (app, url) = TestApp::spawn_alone(setup, &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let txn = app.app.db.begin().await.expect("begin");
    txn.execute_unprepared(&format!(
        "UPDATE tenant_usage SET bytes = 999999, files = 42 WHERE tenant_id = '{acme}'"
    ))
    .await
    .expect("alter by hand");
    txn.commit().await.expect("commit");

    let database = ["--database-url".to_owned(), url.clone()];
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        all.extend(database.iter().cloned());
        run_attache(all)
    };
    let fixed = run(&["tenant", "usage", "--recompute"]).await;
    let said = String::from_utf8_lossy(&fixed.stdout);
    assert!(fixed.status.success(), "{fixed:?}");
    assert!(
        said.contains(&format!(
            "{acme}: corrected 999999 bytes / 42 files to {} bytes / 1 files",
            pdf().len()
        )),
        "{said}"
    );
    assert_eq!(usage(&app, &bearer).await["files"], 1);
    let again = run(&["tenant", "usage", "--recompute", &acme]).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to correct"));

    let set = run(&[
        "tenant", "quota", "set", &acme, "--files", "1", "--bytes", "1MiB",
    ])
    .await;
    assert!(set.status.success(), "{set:?}");
    assert_eq!(
        usage(&app, &bearer).await,
        json!({ "bytes": pdf().len() as f64, "files": 1, "quotaBytes": 1_048_576.0, "quotaFiles": 1 })
    );
    let refused = try_upload(&app, &bearer, "b.pdf", &pdf()).await;
    assert_refused(&refused, 1);
    let listed = run(&["tenant", "list"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with(acme.as_str()) && line.contains("100%")),
        "{listed}"
    );
    let unset = run(&["tenant", "quota", "unset", &acme]).await;
    assert!(String::from_utf8_lossy(&unset.stdout).contains("back on the default quota"));
    app.upload(&bearer, &pdf(), "contract", Some("c-1"), "b.pdf")
        .await;
    let bad = run(&["tenant", "quota", "set", &acme]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("say --bytes, --files or both"));

    // Limits as written: a byte count past 2^53 was rounded through a float, and a
    // file count past GraphQL's 32-bit `Int` was shown as 2147483647.
    let too_many = run(&["tenant", "quota", "set", &acme, "--files", "2147483648"]).await;
    let said = String::from_utf8_lossy(&too_many.stderr);
    assert!(!too_many.status.success());
    assert!(
        said.contains("--files: invalid value '2147483648'"),
        "{said}"
    );
    let exact = run(&[
        "tenant",
        "quota",
        "set",
        &acme,
        "--bytes",
        "9007199254740993",
        "--files",
        "2147483647",
    ])
    .await;
    assert!(exact.status.success(), "{exact:?}");
    let listed = run(&["tenant", "list"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.lines().any(|line| line.starts_with(acme.as_str())
            && line.contains("9007199254740993")
            && line.contains("2147483647")),
        "{listed}"
    );
}

/// `tenant usage --recompute` while uploads, direct uploads and deletes commit finds
/// nothing to correct, and leaves nothing wrong. On PostgreSQL it read the tables in
/// several snapshots: an upload that committed between the count and the read of
/// the usage was "corrected" away, leaving the usage too low.
async fn a_recount_under_load_finds_and_leaves_nothing_wrong(setup: Setup) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (app, _) = TestApp::spawn_alone(setup, &[]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let done = AtomicBool::new(false);
    let workers = (0..3).map(|worker| {
        let (app, bearer) = (&app, &bearer);
        async move {
            for i in 0..15 {
                let stored = try_upload(app, bearer, &format!("{worker}-{i}.pdf"), &pdf()).await;
                let id = data(&stored, "uploadAttachment")["id"].clone();
                if i % 3 == 0 {
                    let deleted = app.gql(DELETE, json!({ "id": id }), Some(bearer)).await;
                    assert!(deleted.get("errors").is_none(), "{deleted}");
                }
            }
        }
    });
    let direct = async {
        for _ in 0..5 {
            let content = pdf();
            let declared = declaration(&content, "application/pdf");
            let (direct, status) = announce_and_put(&app, &bearer, declared, content).await;
            assert_eq!(status, 200);
            let completed = complete_direct(&app, &bearer, &direct).await;
            assert!(completed.get("errors").is_none(), "{completed}");
        }
    };
    let load = async {
        futures::join!(futures::future::join_all(workers), direct);
        done.store(true, Ordering::Relaxed);
    };
    let recounts = async {
        let (mut corrected, mut rounds) = (Vec::new(), 0);
        while !done.load(Ordering::Relaxed) {
            let found = attache::quotas::recompute(&app.app.db, Some(&acme)).await;
            corrected.extend(found.expect("recount"));
            rounds += 1;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (corrected, rounds)
    };
    let ((), (corrected, rounds)) = futures::join!(load, recounts);
    assert!(rounds > 5, "{rounds} recounts ran beside the load");
    assert!(corrected.is_empty(), "under load: {corrected:?}");
    let after = attache::quotas::recompute(&app.app.db, Some(&acme)).await;
    assert_eq!(after.expect("recount"), vec![], "after the load");
    let files = app.row_count(&acme).await;
    assert_eq!(files, 3 * 10 + 5);
    assert_eq!(usage(&app, &bearer).await["files"], files);
}

/// The same race between two replicas on one PostgreSQL database: the row lock of
/// the usage row, not a lock in either process, decides.
async fn two_replicas_never_overshoot(setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database_url(setup.db, dir.path()).await;
    let storage = dir.path().join("uploads");
    let args: Vec<String> = [
        "--database-url",
        &database,
        "--storage-root",
        storage.to_str().expect("utf-8 path"),
        "--signing-key",
        SIGNING_KEY,
        "--jwt-secret",
        SECRET,
        "--tenant-quota-files",
        "5",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let replicas = [Served::replica(&args).await, Served::replica(&args).await];
    let acme = tenant();
    let bearer = token_for(&acme);
    let content = pdf();
    let attempts = (0..20).map(|i| {
        let (replica, bearer, content) = (&replicas[i % 2], &bearer, &content);
        async move { try_upload(replica, bearer, &format!("{i}.pdf"), content).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let stored = answers.iter().filter(|a| a.get("errors").is_none()).count();
    assert_eq!(stored, 5, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.get("errors").is_none() || codes(a) == vec!["QUOTA_EXCEEDED"]),
        "{answers:?}"
    );
    assert_eq!(keys_under(&storage, &storage.join(&acme)).len(), 5);
    assert_eq!(usage(&replicas[0], &bearer).await["files"], 5);
}

crate::matrix!(
    postgres: two_replicas_never_overshoot,
    a_warning_is_decided_under_the_row_lock,
);

crate::matrix!(db:
    every_path_is_refused_at_the_limit_with_nothing_stored,
    a_delete_frees_its_space_at_once,
    concurrent_uploads_never_overshoot,
    an_expired_direct_upload_releases_its_reservation,
    the_largest_quota_still_deletes_and_expires,
    usage_is_the_callers_tenant_and_needs_read_scope,
    passing_80_percent_warns_once_per_crossing,
    a_multipart_upload_past_80_percent_warns,
    the_recount_repairs_usage_and_quotas_are_set_by_command,
    a_recount_under_load_finds_and_leaves_nothing_wrong,
);
