//! `attache backup create | list | restore` on every database and store: back up,
//! change the data, restore, and the attachments table is back exactly; `--keep`
//! prunes, a failed snapshot leaves nothing, SQLite refuses a restore under a
//! running server, and `storage sweep` leaves `backups/` alone.

use std::path::PathBuf;
use std::time::Duration;

use entity::attachment;
use sea_orm::{ConnectionTrait, Database, EntityTrait, QueryOrder};
use serde_json::json;

use crate::helpers::{
    DELETE, Db, SECRET, Setup, TestApp, Uploaded, data, pdf, png, private_database_url,
    run_attache, s3_flags, sha256_hex, spawn_attache, tenant,
};

/// An app on a database of its own (a restore rewrites all of it).
struct Scene {
    app: TestApp,
    database_url: String,
    uploads: PathBuf,
}

/// What a command did: success, stdout, stderr.
struct Ran {
    ok: bool,
    out: String,
    err: String,
}

impl Scene {
    async fn new(setup: Setup) -> Self {
        Self::with(setup, &[]).await
    }

    /// A scene whose server runs with `extra` flags.
    async fn with(setup: Setup, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = private_database_url(setup.db, dir.path()).await;
        let uploads = dir.path().join("uploads");
        let app = TestApp::spawn_at(setup, dir, &database_url, &uploads, extra).await;
        Self {
            app,
            database_url,
            uploads,
        }
    }

    /// The flags that point a command at a database (when given) and this scene's
    /// storage.
    fn flags(&self, database_url: Option<&str>) -> Vec<String> {
        let mut flags = vec![
            "--storage-root".to_owned(),
            self.uploads.display().to_string(),
        ];
        if let Some(url) = database_url {
            flags.extend(["--database-url".to_owned(), url.to_owned()]);
        }
        if let Some(s3) = &self.app.s3 {
            flags.extend(s3_flags(&s3.endpoint));
        }
        if let Some(garage) = &self.app.garage {
            flags.extend(garage.flags());
        }
        flags
    }

    /// `attache ARGS` against this scene's storage and `database_url`, when given.
    async fn attache(&self, args: &[&str], database_url: Option<&str>) -> Ran {
        let mut command: Vec<String> = args.iter().map(ToString::to_string).collect();
        command.extend(self.flags(database_url));
        let output = run_attache(command).await;
        Ran {
            ok: output.status.success(),
            out: String::from_utf8_lossy(&output.stdout).into_owned(),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `attache backup ARGS` on a terminal of its own (`script`), typing `typed`;
    /// what the terminal showed, both streams together.
    async fn on_a_terminal(&self, args: &[&str], typed: &str) -> Ran {
        let quoted = |arg: &str| format!("'{}'", arg.replace('\'', r"'\''"));
        let command_line: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_attache"))
            .chain(["backup"])
            .chain(args.iter().copied())
            .map(quoted)
            .chain(
                self.flags(Some(&self.database_url))
                    .iter()
                    .map(|flag| quoted(flag)),
            )
            .collect();
        let mut script = tokio::process::Command::new("script")
            .args(["-qec", &command_line.join(" "), "/dev/null"])
            .env_clear()
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        let mut stdin = script.stdin.take().expect("stdin");
        tokio::io::AsyncWriteExt::write_all(&mut stdin, typed.as_bytes())
            .await
            .expect("typed");
        let output = tokio::time::timeout(Duration::from_secs(30), script.wait_with_output())
            .await
            .expect("done within 30 s")
            .expect("output");
        Ran {
            ok: output.status.success(),
            out: String::from_utf8_lossy(&output.stdout).into_owned(),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `attache backup ARGS` against this scene.
    async fn backup(&self, args: &[&str]) -> Ran {
        self.backup_of(&self.database_url, args).await
    }

    /// `attache backup ARGS` with another `DATABASE_URL` (`list` takes none).
    async fn backup_of(&self, database_url: &str, args: &[&str]) -> Ran {
        let database_url = (args.first() != Some(&"list")).then_some(database_url);
        self.attache(&[&["backup"], args].concat(), database_url)
            .await
    }

    /// `backup create`, which must succeed; returns the name it printed.
    async fn create(&self, extra: &[&str]) -> String {
        let args: Vec<&str> = std::iter::once("create")
            .chain(extra.iter().copied())
            .collect();
        let ran = self.backup(&args).await;
        assert!(ran.ok, "backup create: {}{}", ran.out, ran.err);
        let name = ran.out.trim().to_owned();
        assert!(
            !name.contains('\n'),
            "the name alone on stdout: {}",
            ran.out
        );
        name
    }

    /// Every attachment row, read through a connection of its own (a SQLite
    /// restore replaces the file under the app's pool).
    async fn rows(&self) -> Vec<attachment::Model> {
        let db = Database::connect(&self.database_url)
            .await
            .expect("connect");
        let rows = attachment::Entity::find()
            .order_by_asc(attachment::Column::Id)
            .all(&db)
            .await
            .expect("rows");
        db.close().await.expect("close");
        rows
    }

    /// The keys under `backups/` in storage.
    fn stored_backups(&self) -> Vec<String> {
        let mut keys = self.app.stored_keys();
        keys.retain(|key| key.starts_with("backups/"));
        keys
    }

    /// Storage holds the backup `name` and no other.
    fn assert_only_backup(&self, name: &str, why: &str) {
        assert_eq!(
            self.stored_backups(),
            vec![format!("backups/{name}")],
            "{why}"
        );
    }
}

fn extension(setup: Setup) -> &'static str {
    match setup.db {
        Db::Sqlite => ".sqlite",
        Db::Postgres => ".pgdump",
    }
}

async fn backup_change_restore_brings_the_table_back_exactly(setup: Setup) {
    let scene = Scene::new(setup).await;
    let acme = tenant();
    let token = scene.app.token(&acme);
    let contract = scene
        .app
        .upload(&token, &pdf(), "contract", Some("c-1"), "contract.pdf")
        .await;
    scene
        .app
        .upload(&token, &png(), "customer", Some("cu-9"), "logo.png")
        .await;
    scene
        .app
        .upload(&token, &pdf(), "invoice_reference", None, "ref.pdf")
        .await;
    let before = scene.rows().await;
    assert_eq!(before.len(), 3);

    let name = scene.create(&[]).await;
    assert!(
        name.starts_with("attache-") && name.ends_with(extension(setup)),
        "{name}"
    );
    scene.assert_only_backup(&name, "the backup is stored");
    let listed = scene.backup(&["list"]).await;
    assert!(listed.ok, "{}", listed.err);
    assert!(listed.out.starts_with("NAME"), "{}", listed.out);
    assert!(listed.out.contains(&name), "{}", listed.out);

    scene
        .app
        .upload(&token, &pdf(), "contract", Some("c-2"), "later.pdf")
        .await;
    let deleted = scene
        .app
        .gql(DELETE, json!({ "id": contract["id"] }), Some(&token))
        .await;
    assert_eq!(data(&deleted, "deleteAttachment"), contract["id"]);
    let changed = scene.rows().await;
    assert_ne!(changed, before);

    // From a terminal a restore asks first; anything but yes changes nothing.
    let declined = scene.on_a_terminal(&["restore", &name], "n\n").await;
    assert!(!declined.ok, "declined: {}", declined.out);
    assert!(
        declined.out.contains("Go ahead? [y/N]") && declined.out.contains("nothing restored"),
        "{}",
        declined.out
    );
    assert_eq!(scene.rows().await, changed);

    // From a script, `attache backup restore NAME` (SPEC 9) goes ahead.
    let restored = scene.backup(&["restore", &name]).await;
    assert!(restored.ok, "{}{}", restored.out, restored.err);
    assert!(
        restored.out.contains(&format!("restored {name}"))
            && restored.out.contains("3 attachments"),
        "{}",
        restored.out
    );
    assert_eq!(scene.rows().await, before, "the table is back exactly");
    scene.assert_only_backup(&name, "a restore keeps the backup");
    // Without DELETED_FILES_RETENTION the deleted contract's file went with its row:
    // the restore says so.
    let key = TestApp::contract_key(&acme, "c-1", &contract);
    assert!(
        restored.out.contains("files: 2 present, 1 missing")
            && restored.out.contains(&format!("missing: {key}")),
        "{}",
        restored.out
    );
}

/// With DELETED_FILES_RETENTION, a backup restored after a delete finds the file:
/// it downloads with its sha256.
async fn a_restore_within_the_retention_brings_files_back_whole(setup: Setup) {
    let scene = Scene::with(setup, &["--deleted-files-retention", "1h"]).await;
    let acme = tenant();
    let token = scene.app.token(&acme);
    let contract = scene
        .app
        .upload(&token, &pdf(), "contract", Some("c-1"), "contract.pdf")
        .await;
    let name = scene.create(&[]).await;
    let deleted = scene
        .app
        .gql(DELETE, json!({ "id": contract["id"] }), Some(&token))
        .await;
    assert_eq!(data(&deleted, "deleteAttachment"), contract["id"]);
    // On a terminal, --yes goes ahead without the question.
    let restored = scene.on_a_terminal(&["restore", &name, "--yes"], "").await;
    assert!(restored.ok, "{}{}", restored.out, restored.err);
    assert!(!restored.out.contains("Go ahead?"), "{}", restored.out);
    assert!(
        restored.out.contains("files: 1 present, 0 missing"),
        "{}",
        restored.out
    );
    let key = TestApp::contract_key(&acme, "c-1", &contract);
    let stored = attache::storage::StorageKey::from_stored(key);
    let bytes = scene
        .app
        .app
        .storage
        .read_all(&stored)
        .await
        .expect("the file is back");
    assert_eq!(
        sha256_hex(&bytes),
        contract["sha256"].as_str().expect("sha256")
    );
}

/// A deleted attachment's file stays for DELETED_FILES_RETENTION, then the
/// maintenance removes it; `0` removes it at once (erasure requests).
async fn deleted_files_stay_for_the_retention(setup: Setup) {
    for (retention, kept) in [("1s", true), ("0", false)] {
        let app = TestApp::spawn_with(setup, &["--deleted-files-retention", retention]).await;
        let Uploaded {
            tenant: acme,
            bearer: token,
            att,
            ..
        } = app.upload_contract_pdf("gone.pdf").await;
        let key = TestApp::contract_key(&acme, "c-1", &att);
        let deleted = app
            .gql(DELETE, json!({ "id": att["id"] }), Some(&token))
            .await;
        assert_eq!(data(&deleted, "deleteAttachment"), att["id"]);
        assert_eq!(
            app.stored_keys().contains(&key),
            kept,
            "retention {retention}"
        );
        if kept {
            // Not before its time, whatever the sweep's threshold.
            attache::attachments::sweep::run(&app.app, std::time::Duration::ZERO, false)
                .await
                .expect("sweep");
            assert!(app.stored_keys().contains(&key), "the sweep keeps it");
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
            attache::workers::maintenance::pass(&app.app, &Default::default()).await;
            assert!(
                !app.stored_keys().contains(&key),
                "the maintenance removes it after"
            );
        }
    }
}

async fn keep_prunes_older_backups_and_sweep_leaves_them(setup: Setup) {
    let scene = Scene::new(setup).await;
    let first = scene.create(&[]).await;
    // Names tell the second; the next one must be taken in another.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ran = scene.backup(&["create", "--keep", "1"]).await;
    assert!(ran.ok, "{}{}", ran.out, ran.err);
    let second = ran.out.trim().to_owned();
    assert!(second > first, "names sort by time: {first} {second}");
    assert!(
        ran.err
            .contains(&format!("removed the older backup {first}")),
        "{}",
        ran.err
    );
    let listed = scene.backup(&["list"]).await;
    assert!(listed.out.contains(&second) && !listed.out.contains(&first));
    scene.assert_only_backup(&second, "--keep 1 keeps the newest");

    // A mistyped DATABASE_URL makes no backup to count against `--keep`.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let empty = elsewhere.path().join("empty.db");
    std::fs::write(&empty, b"").expect("an empty SQLite file");
    let wrong = format!("sqlite://{}?mode=rwc", empty.display());
    let ran = scene.backup_of(&wrong, &["create", "--keep", "1"]).await;
    assert!(
        !ran.ok && ran.err.contains("holds no attache tables"),
        "{}",
        ran.err
    );
    scene.assert_only_backup(&second, "a refused --keep removes nothing");

    let swept = scene
        .attache(
            &["storage", "sweep", "--older-than", "0s"],
            Some(&scene.database_url),
        )
        .await;
    assert!(swept.ok, "{}", swept.err);
    scene.assert_only_backup(&second, "sweep never touches backups/");
}

/// A backup appears only whole: while its bytes still come (and so after a kill), no
/// listing shows it, so a truncated backup is never restored or counted by `--keep`.
/// On fs it is written as `.partial-<name>` and linked into place; before, a killed
/// `backup create` left a truncated backup under its real name.
async fn a_backup_appears_only_whole(setup: Setup) {
    let scene = Scene::new(setup).await;
    let name = format!("attache-20260101T000000Z{}", extension(setup));
    let key = attache::storage::StorageKey::backup(&name);
    let (sender, body) = futures::channel::mpsc::unbounded::<Result<bytes::Bytes, String>>();
    sender
        .unbounded_send(Ok(bytes::Bytes::from(vec![0u8; 1 << 20])))
        .expect("send");
    let writing = scene
        .app
        .app
        .storage
        .put_large(&key, body, "application/octet-stream");
    tokio::pin!(writing);
    let waiting = tokio::time::timeout(Duration::from_millis(500), &mut writing).await;
    assert!(waiting.is_err(), "the writer waits for more bytes");
    let listed = scene.backup(&["list"]).await;
    assert!(listed.ok && !listed.out.contains(&name), "{}", listed.out);
    drop(sender);
    assert_eq!(writing.await.expect("written"), 1 << 20);
    let listed = scene.backup(&["list"]).await;
    assert!(listed.out.contains(&name), "{}{}", listed.out, listed.err);
}

async fn a_failed_snapshot_leaves_no_backup_and_shows_no_password(setup: Setup) {
    let scene = Scene::new(setup).await;
    let password = "pw-never-shown-0451";
    let broken = match setup.db {
        Db::Sqlite => format!(
            "sqlite://{}?mode=rwc",
            scene.uploads.join("no/such/folder/attache.db").display()
        ),
        Db::Postgres => {
            let (base, _) = scene.database_url.rsplit_once('/').expect("url");
            let base = base.replacen("://postgres@", &format!("://postgres:{password}@"), 1);
            format!("{base}/attache_no_such_database")
        }
    };
    let ran = scene.backup_of(&broken, &["create"]).await;
    assert!(!ran.ok, "{}", ran.out);
    assert!(ran.out.is_empty(), "no name printed: {}", ran.out);
    // Refused before any snapshot: a backup is of the server's database only.
    assert!(ran.err.contains("does not exist"), "{}", ran.err);
    assert!(!ran.err.contains(password), "{}", ran.err);
    assert!(scene.stored_backups().is_empty(), "no half-written backup");
    let listed = scene.backup(&["list"]).await;
    assert!(listed.ok && listed.out.is_empty(), "{}", listed.out);
    assert!(listed.err.contains("no backups"), "{}", listed.err);
}

async fn a_sqlite_restore_refuses_while_a_server_uses_the_file(setup: Setup) {
    let scene = Scene::new(setup).await;
    let name = scene.create(&[]).await;
    let mut serve: Vec<String> = [
        "serve",
        "--listen-addr",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
    ]
    .map(ToString::to_string)
    .to_vec();
    serve.extend(scene.flags(Some(&scene.database_url)));
    let mut server = spawn_attache(serve.clone());
    // The server writes its process id into the lock once it holds it.
    let database = attache::db::sqlite_file(&scene.database_url).expect("a SQLite file");
    let lock = PathBuf::from(format!("{}.lock", database.display()));
    let mut waited = 0;
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != server.id().to_string() {
        assert!(server.try_wait().expect("wait").is_none(), "serve exited");
        assert!(waited < 300, "serve did not claim the database");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }

    let refused = scene.backup(&["restore", &name, "--yes"]).await;
    assert!(!refused.ok);
    let line = refused.err.trim();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.starts_with("error: refusing to restore: ")
            && line.contains("in use")
            && line.contains(&format!("(pid {})", server.id())),
        "{line}"
    );
    let second = run_attache(serve).await;
    assert!(!second.status.success(), "a second server is refused too");
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    assert!(
        server.try_wait().expect("wait").is_none(),
        "the server runs on"
    );

    server.kill().expect("stop the server");
    server.wait().expect("reap");
    // Asked on a terminal, `y` goes ahead.
    let restored = scene.on_a_terminal(&["restore", &name], "y\n").await;
    assert!(restored.ok, "{}{}", restored.out, restored.err);
    assert!(restored.out.contains("Go ahead? [y/N]"), "{}", restored.out);
}

async fn a_backup_larger_than_a_part_streams_in_parts_and_restores(setup: Setup) {
    use sea_orm::{ConnectionTrait, Statement};
    let scene = Scene::new(setup).await;
    // Random bytes, so the custom format's compression cannot shrink them below
    // one 8 MiB part: the upload is multipart.
    let ballast: Vec<u8> = (0..(9 << 20) / 16)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    let db = Database::connect(&scene.database_url)
        .await
        .expect("connect");
    let (blob, insert) = match setup.db {
        Db::Sqlite => ("BLOB", "INSERT INTO ballast (b) VALUES (?)"),
        Db::Postgres => ("BYTEA", "INSERT INTO ballast (b) VALUES ($1)"),
    };
    let backend = db.get_database_backend();
    db.execute_unprepared(&format!("CREATE TABLE ballast (b {blob} NOT NULL)"))
        .await
        .expect("create");
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        insert,
        [ballast.clone().into()],
    ))
    .await
    .expect("insert");
    let name = scene.create(&[]).await;
    let stored = std::fs::metadata(scene.app.storage_root.join("backups").join(&name))
        .expect("the backup object")
        .len();
    assert!(stored > 8 << 20, "{stored} bytes: more than one part");

    db.execute_unprepared("DELETE FROM ballast")
        .await
        .expect("delete");
    db.close().await.expect("close");
    let restored = scene.backup(&["restore", &name, "--yes"]).await;
    assert!(restored.ok, "{}{}", restored.out, restored.err);
    let db = Database::connect(&scene.database_url)
        .await
        .expect("connect");
    let row = db
        .query_one_raw(Statement::from_string(backend, "SELECT b FROM ballast"))
        .await
        .expect("select")
        .expect("the row is back");
    let back: Vec<u8> = row.try_get("", "b").expect("bytes");
    assert!(back == ballast, "every byte is back");
}

/// A PostgreSQL backup taken before quotas restores and serves: `pg_restore
/// --clean` drops only what the backup holds, so `tenant_usage` stays with a later
/// state while the migration that made it runs again. It once failed there on a
/// duplicate key, and no server could start; now the usage is counted anew.
async fn a_backup_from_before_quotas_restores_and_serves(setup: Setup) {
    let scene = Scene::new(setup).await;
    let acme = tenant();
    let token = scene.app.token(&acme);
    scene
        .app
        .upload(&token, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let db = Database::connect(&scene.database_url)
        .await
        .expect("connect");
    db.execute_unprepared(
        "DROP TABLE tenant_usage; \
         DELETE FROM seaql_migrations WHERE version LIKE '%_create_tenant_usage'",
    )
    .await
    .expect("the database as it was before quotas");
    let name = scene.create(&[]).await;
    let migrate = |why: &'static str| {
        let scene = &scene;
        async move {
            let args = ["db", "migrate", "--database-url", &scene.database_url];
            let ran = run_attache(args.map(str::to_owned).to_vec()).await;
            assert!(ran.status.success(), "{why}: {ran:?}");
        }
    };
    migrate("quotas come").await;
    scene
        .app
        .upload(&token, &pdf(), "contract", Some("c-2"), "b.pdf")
        .await;

    let restored = scene.backup(&["restore", &name]).await;
    assert!(restored.ok, "{}{}", restored.out, restored.err);
    migrate("quotas come again over the rows left").await;
    let usage = scene
        .app
        .gql("{ usage { files } }", json!({}), Some(&token))
        .await;
    assert_eq!(data(&usage, "usage")["files"], 1, "{usage}");
    db.close().await.expect("close");
}

crate::matrix!(s3: a_backup_larger_than_a_part_streams_in_parts_and_restores);
/// A `DATABASE_URL` in the server's driver's spellings (`ssl-mode`,
/// `statement-cache-capacity`, `options[...]`), on which `serve` runs, backs up and
/// restores: the tools refused it ("invalid URI query parameter"), so every backup
/// failed; a space reaches them as `%20` (libpq reads a `+` as a plus).
async fn a_url_the_server_takes_backs_up(setup: Setup) {
    let scene = Scene::new(setup).await;
    let separator = if scene.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{separator}ssl-mode=disable&statement-cache-capacity=100\
         &options[search_path]=public&application_name=attache%20tests",
        scene.database_url
    );
    let created = scene.backup_of(&url, &["create"]).await;
    assert!(created.ok, "{}{}", created.out, created.err);
    let name = created.out.trim();
    let restored = scene.backup_of(&url, &["restore", name, "--yes"]).await;
    assert!(restored.ok, "{}{}", restored.out, restored.err);
}

crate::matrix!(
    postgres: a_backup_from_before_quotas_restores_and_serves,
    a_url_the_server_takes_backs_up,
);
crate::matrix!(
    deleted_files_stay_for_the_retention,
    a_restore_within_the_retention_brings_files_back_whole,
    backup_change_restore_brings_the_table_back_exactly,
    keep_prunes_older_backups_and_sweep_leaves_them,
    a_failed_snapshot_leaves_no_backup_and_shows_no_password,
    a_backup_appears_only_whole,
);
/// A `backup create` or `restore` killed mid-way left its temporary file beside the
/// database for good (a snapshot is the database's size, and it went only when
/// dropped): the next run removes those an hour old, and leaves one still written.
async fn a_killed_runs_files_go_with_the_next_run(setup: Setup) {
    let scene = Scene::new(setup).await;
    let database = attache::db::sqlite_file(&scene.database_url).expect("a SQLite file");
    let folder = database.parent().expect("its folder");
    let written = |name: &str, age: Duration| {
        let path = folder.join(name);
        std::fs::write(&path, b"a run's copy of the database").expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        let when = std::time::SystemTime::now() - age;
        file.set_modified(when).expect("set its time");
        path
    };
    let hours = Duration::from_secs(2 * 3600);
    let killed = [
        written(".attache-backup-KiLLed", hours),
        written(".attache-backup-KiLLed-journal", hours),
        written(".attache-restore-KiLLed", hours),
    ];
    let running = written(".attache-backup-RunNiNg", Duration::ZERO);
    scene.create(&[]).await;
    for path in &killed {
        assert!(!path.exists(), "{} was left", path.display());
    }
    assert!(running.exists(), "a run's file still written stays");
}

/// A backup is of attache's database only: `backup create` of one attache never set
/// up is refused (without `--keep` it succeeded), and a restore of a backup that
/// holds another database leaves the server's as it was (it replaced it, then
/// failed on the missing tables, saying its cause twice).
async fn a_backup_of_another_database_is_refused_both_ways(setup: Setup) {
    let scene = Scene::new(setup).await;
    let token = scene.app.token(&tenant());
    scene
        .app
        .upload(&token, &pdf(), "contract", Some("c-1"), "kept.pdf")
        .await;
    let before = scene.rows().await;
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let other = elsewhere.path().join("other.db");
    let other_url = format!("sqlite://{}?mode=rwc", other.display());
    let db = Database::connect(&other_url).await.expect("connect");
    db.execute_unprepared("CREATE TABLE t (x)")
        .await
        .expect("another app's table");
    db.close().await.expect("close");
    let refused = scene.backup_of(&other_url, &["create"]).await;
    assert!(
        !refused.ok && refused.err.contains("holds no attache tables"),
        "{}",
        refused.err
    );
    assert!(scene.stored_backups().is_empty(), "no backup was made");

    let name = "attache-20261201T000000Z.sqlite";
    let bytes = std::fs::read(&other).expect("the other database");
    scene
        .app
        .app
        .storage
        .put_new(
            &attache::storage::StorageKey::from_stored(format!("backups/{name}")),
            bytes::Bytes::from(bytes),
            "application/vnd.sqlite3",
        )
        .await
        .expect("a stranger's database under a backup's name");
    let restored = scene.backup(&["restore", name, "--yes"]).await;
    let line = restored.err.trim();
    assert!(!restored.ok, "{line}");
    assert!(
        line.contains("holds no attache database") && line.contains("left as it was"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    assert_eq!(scene.rows().await, before, "the database is as it was");
}

crate::matrix!(
    once: a_sqlite_restore_refuses_while_a_server_uses_the_file,
    a_backup_of_another_database_is_refused_both_ways,
    a_killed_runs_files_go_with_the_next_run,
);
crate::matrix!(
    garage: backup_change_restore_brings_the_table_back_exactly,
    keep_prunes_older_backups_and_sweep_leaves_them,
);
