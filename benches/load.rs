//! Load benchmark: `cargo bench --bench load`.
//!
//! Starts the release `attache serve` (local disk; SQLite, then PostgreSQL when
//! `TEST_DATABASE_URL` is set) and runs `LOAD_CLIENTS` (200) concurrent clients for
//! `LOAD_SECONDS` (60) of mixed traffic: uploads of 10 KiB and 1 MiB, listings,
//! downloads and deletes. Then it cuts every client off mid-flight, lets the server
//! settle, and compares the files on disk with the rows. It prints requests, errors
//! and p50/p99 per operation and the server's peak RSS, and exits non-zero when a
//! request failed or a file and its row disagree (orphans or missing objects).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, EntityTrait};
use serde_json::Value;

use common::{MIB, PERMITS, Server, human, percentile, token, upload_body};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Operation {
    UploadSmall,
    UploadLarge,
    List,
    Download,
    Delete,
}

impl Operation {
    /// Weighted mix: mostly small uploads, listings and downloads.
    fn pick(roll: u32) -> Self {
        match roll % 100 {
            0..35 => Self::UploadSmall,
            35..40 => Self::UploadLarge,
            40..70 => Self::List,
            70..90 => Self::Download,
            _ => Self::Delete,
        }
    }

    fn label(self) -> String {
        match self {
            Self::UploadSmall => format!("upload {}", human(10 * 1024)),
            Self::UploadLarge => format!("upload {}", human(MIB)),
            Self::List => "list first:20".to_owned(),
            Self::Download => "download".to_owned(),
            Self::Delete => "delete".to_owned(),
        }
    }
}

/// What every client records, shared.
#[derive(Default)]
struct Tally {
    times: BTreeMap<Operation, Vec<Duration>>,
    errors: BTreeMap<Operation, Vec<String>>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Download URLs of uploaded files, shared by all clients.
    stored: Arc<Mutex<Vec<(String, String)>>>,
}

impl Client {
    async fn run(&self, operation: Operation, seed: usize) -> Result<(), String> {
        match operation {
            Operation::UploadSmall | Operation::UploadLarge => {
                let size = if operation == Operation::UploadSmall {
                    10 * 1024
                } else {
                    MIB
                };
                let answer = self.graphql(upload_body(size, seed)).await?;
                let stored = &answer["data"]["uploadAttachment"];
                let (id, url) = (stored["id"].as_str(), stored["downloadUrl"].as_str());
                let (Some(id), Some(url)) = (id, url) else {
                    return Err(format!("upload: {answer}"));
                };
                self.lock().push((id.to_owned(), url.to_owned()));
                Ok(())
            }
            Operation::List => {
                let query = serde_json::json!({ "query": "{ attachments(ownerType: \"contract\", ownerId: \"bench\", first: 20) { totalCount nodes { id filename url } } }" });
                let answer = self.graphql(query.to_string().into_bytes()).await?;
                match answer["data"]["attachments"]["nodes"].is_array() {
                    true => Ok(()),
                    false => Err(format!("list: {answer}")),
                }
            }
            Operation::Download => {
                let picked = {
                    let stored = self.lock();
                    stored.get(seed % stored.len().max(1)).cloned()
                };
                let Some((_, url)) = picked else {
                    return Ok(());
                };
                let response = self
                    .http
                    .get(&url)
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .map_err(|err| format!("download: {err}"))?;
                // A file deleted by another client meanwhile is a fair 404.
                match response.status().as_u16() {
                    200 => response
                        .bytes()
                        .await
                        .map(drop)
                        .map_err(|err| format!("download body: {err}")),
                    404 => Ok(()),
                    status => Err(format!("download: HTTP {status}")),
                }
            }
            Operation::Delete => {
                let picked = {
                    let mut stored = self.lock();
                    let len = stored.len();
                    (len > 0).then(|| stored.swap_remove(seed % len))
                };
                let Some((id, _)) = picked else { return Ok(()) };
                let query = serde_json::json!({
                    "query": "mutation($id: ID!) { deleteAttachment(id: $id) }",
                    "variables": { "id": id },
                });
                let answer = self.graphql(query.to_string().into_bytes()).await?;
                match answer["data"]["deleteAttachment"].is_string() {
                    true => Ok(()),
                    false => Err(format!("delete: {answer}")),
                }
            }
        }
    }

    async fn graphql(&self, body: Vec<u8>) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|err| format!("POST: {err}"))?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|err| format!("HTTP {status}: {err}"))?;
        match answer.get("errors") {
            Some(errors) => Err(format!("HTTP {status}: {errors}")),
            None => Ok(answer),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Files under `root` (the probe folder left out).
fn stored_keys(root: &Path) -> HashSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut HashSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if let Ok(key) = path.strip_prefix(root) {
                out.insert(key.to_string_lossy().into_owned());
            }
        }
    }
    let mut keys = HashSet::new();
    walk(root, root, &mut keys);
    keys.retain(|key| !key.starts_with(".attache-probe"));
    keys
}

/// One run against one database; whether it was clean.
async fn run(label: &str, database_url: &str, clients: usize, seconds: u64) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        dir.path(),
        &[
            ("DATABASE_URL", database_url.to_owned()),
            (
                "STORAGE_ROOT",
                dir.path().join("uploads").display().to_string(),
            ),
        ],
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for number in 0..clients {
        let client = Client {
            http: http.clone(),
            base: server.base.clone(),
            token: token(),
            stored: stored.clone(),
        };
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut seed = number * 1_000_003;
            while Instant::now() < deadline {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let operation = Operation::pick(u32::try_from(seed >> 33).unwrap_or(0));
                let started = Instant::now();
                let outcome = client.run(operation, seed).await;
                let mut tally = tally
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match outcome {
                    Ok(()) => tally
                        .times
                        .entry(operation)
                        .or_default()
                        .push(started.elapsed()),
                    Err(err) => tally.errors.entry(operation).or_default().push(err),
                }
            }
            // Past the deadline: keep sending until cut off.
            loop {
                let _ = client.run(Operation::UploadSmall, seed).await;
                seed += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds) + Duration::from_millis(300)).await;
    // Cut every client off mid-flight: their connections close under the server.
    tasks.shutdown().await;
    drop(http);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = server.memory_kib("VmHWM:");

    let db = Database::connect(database_url).await.expect("connect");
    let rows: HashSet<String> = entity::attachment::Entity::find()
        .all(&db)
        .await
        .expect("rows")
        .into_iter()
        .map(|row| row.storage_key)
        .collect();
    let intents = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM storage_deletions",
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get::<i64>("", "n").ok())
        .unwrap_or_default();
    drop(server);
    let files = stored_keys(&dir.path().join("uploads"));
    let orphans = files.difference(&rows).count();
    let missing = rows.difference(&files).count();

    let tally = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let requests: usize = tally.times.values().map(Vec::len).sum();
    let errors: usize = tally.errors.values().map(Vec::len).sum();
    println!("\n{label}: {clients} clients, {seconds} s of mixed traffic");
    println!(
        "  requests {requests} ({:.0}/s), errors {errors}",
        requests as f64 / seconds as f64
    );
    for (operation, times) in &tally.times {
        let mut times = times.clone();
        times.sort();
        println!(
            "  {:<16} n={:<6} p50 {:>8.2} ms  p99 {:>8.2} ms",
            operation.label(),
            times.len(),
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
        );
    }
    for (operation, failures) in &tally.errors {
        println!(
            "  errors of {}: {} (first: {})",
            operation.label(),
            failures.len(),
            failures[0]
        );
    }
    println!(
        "  peak RSS {:.1} MiB (MAX_CONCURRENT_UPLOADS={PERMITS})",
        peak as f64 / 1024.0
    );
    println!(
        "  after the cut-off: {} files, {} rows, {orphans} orphans, {missing} missing objects, {intents} pending entries",
        files.len(),
        rows.len()
    );
    errors == 0 && orphans == 0 && missing == 0
}

/// A PostgreSQL database of its own, next to `admin_url`'s.
async fn fresh_postgres(admin_url: &str) -> String {
    let admin = Database::connect(admin_url).await.expect("connect");
    let name = format!("attache_load_{}", std::process::id());
    let _ = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\""))
        .await;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create the load database");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url, |(base, _)| base);
    format!("{base}/{name}")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let clients = usize::try_from(number("LOAD_CLIENTS", 200)).unwrap_or(200);
    let seconds = number("LOAD_SECONDS", 60);
    println!("attache load benchmark (release build, local disk)");
    let sqlite_dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        sqlite_dir.path().join("load.db").display()
    );
    let mut clean = run("SQLite", &sqlite, clients, seconds).await;
    match std::env::var("TEST_DATABASE_URL") {
        Ok(admin) => {
            let postgres = fresh_postgres(&admin).await;
            clean &= run("PostgreSQL", &postgres, clients, seconds).await;
        }
        Err(_) => println!("\nPostgreSQL: SKIPPED, because TEST_DATABASE_URL is not set"),
    }
    if clean {
        std::process::ExitCode::SUCCESS
    } else {
        println!("\nFAILED: errors, orphans or missing objects above");
        std::process::ExitCode::FAILURE
    }
}
