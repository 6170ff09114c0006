//! Upload and download benchmark: `cargo bench --bench upload_download`.
//!
//! Starts the release `attache serve` as a child process (SQLite, local disk), then:
//! 1. uploads 10 KiB, 1 MiB and 10 MiB files through `uploadAttachment` one at a time
//!    and downloads each through the bearer route: p50/p99 latency and MB/s;
//! 2. on a fresh server, sends a burst of concurrent 10 MiB uploads: the server's peak
//!    RSS per in-flight upload (at most `MAX_CONCURRENT_UPLOADS` are read at once);
//! 3. on a fresh server over the same data, downloads 10 MiB files concurrently: the
//!    growth of peak RSS, which must not follow the file size;
//! 4. a concurrency sweep: 10 KiB and 1 MiB uploads from 1, 2, 4, 8 and 16 clients in
//!    closed loops, requests per second and p50/p99 (throughput must not fall as
//!    clients are added);
//! 5. the listing `attachments(first: 20)` with every field and `url`, from 1 and 8
//!    clients: requests per second and p50/p99;
//! 6. a table of peak RSS per in-flight upload by backend (fs, S3 through s3s-fs),
//!    path (base64 in JSON, multipart, direct upload) and file size (10 and
//!    256 MiB), 8 uploads at once, a fresh server per row.
//!
//! The client runs in this process, on the same cores as the server: compare runs
//! of one machine, not absolute figures.
//!
//! 7. one multipart upload of 1 GiB on fs, verified, with the server's peak RSS.
//!
//! `BENCH_QUICK=1` runs fewer iterations (and 64 MiB instead of 256, 256 MiB instead
//! of 1 GiB); `BENCH_ONLY=memory` runs step 6 alone, `BENCH_ONLY=large` step 7;
//! `BENCH_BACKENDS=fs` (or `s3`) limits step 6 to one backend.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;

use sha2::Digest;

use common::{
    MIB, PERMITS, Server, human, percentile, token, upload_body, upload_content, upload_json,
};

async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: Vec<u8>,
) -> (Duration, String) {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /graphql");
    let answer: serde_json::Value = response.json().await.expect("JSON");
    let elapsed = started.elapsed();
    let url = answer["data"]["uploadAttachment"]["downloadUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("upload failed: {answer}"))
        .to_owned();
    (elapsed, url)
}

async fn download(client: &reqwest::Client, url: &str, token: &str) -> (Duration, usize) {
    let started = Instant::now();
    let mut response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let mut bytes = 0;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        bytes += chunk.len();
    }
    (started.elapsed(), bytes)
}

/// `clients` closed loops POSTing `body` to `/graphql` for `duration`; every answer
/// must be HTTP 200 without `errors`. The latencies, sorted, and the requests/s.
async fn closed_loop(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: Bytes,
    clients: usize,
    duration: Duration,
) -> (Vec<Duration>, f64) {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, token, body) = (
                client.clone(),
                format!("{base}/graphql"),
                token.to_owned(),
                body.clone(),
            );
            tokio::spawn(async move {
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("POST /graphql");
                    assert_eq!(response.status(), 200);
                    let answer = response.bytes().await.expect("body");
                    times.push(sent.elapsed());
                    assert!(
                        !answer.windows(8).any(|window| window == b"\"errors\""),
                        "{}",
                        String::from_utf8_lossy(&answer)
                    );
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in loops {
        times.extend(task.await.expect("client loop"));
    }
    let per_second = times.len() as f64 / started.elapsed().as_secs_f64();
    times.sort();
    (times, per_second)
}

fn report_loop(label: &str, clients: usize, (times, per_second): (Vec<Duration>, f64)) {
    println!(
        "{label:<16} clients {clients:>2}  {per_second:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
    );
}

/// The listing that clients show: a page of 20 with every field and a `url` each.
const LISTING: &str = "query { attachments(ownerType: \"contract\", ownerId: \"bench\", first: 20) { edges { cursor node { id ownerType ownerId filename contentType byteSize sha256 url downloadUrl createdAt createdBy } } pageInfo { hasNextPage endCursor } } }";

fn report(label: &str, size: usize, mut times: Vec<Duration>) {
    times.sort();
    let total: Duration = times.iter().sum();
    let mb_per_s = (size * times.len()) as f64 / 1e6 / total.as_secs_f64();
    println!(
        "{label:<9} {:>7}  n={:<4} p50 {:>9.2} ms  p99 {:>9.2} ms  {:>8.1} MB/s",
        human(size),
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        mb_per_s
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let token = token();
    let ten_mib = 10 * MIB;

    println!("attache upload/download benchmark (release build, SQLite, local disk)\n");
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("memory") => return memory_by_path(dir.path(), &client, &token, quick).await,
        Ok("large") => return one_large_upload(dir.path(), &client, &token, quick).await,
        _ => {}
    }
    let server = Server::start_with(dir.path(), &[]);
    let mut large_paths = Vec::new();
    for (size, count) in [(10 * 1024, 200), (MIB, 40), (ten_mib, 12)] {
        let count = if quick { count / 4 } else { count };
        let mut uploads = Vec::new();
        let mut downloads = Vec::new();
        for seed in 0..count {
            let (elapsed, url) =
                upload(&client, &server.base, &token, upload_body(size, seed)).await;
            uploads.push(elapsed);
            let (elapsed, bytes) = download(&client, &url, &token).await;
            assert_eq!(bytes, size);
            downloads.push(elapsed);
            if size == ten_mib {
                large_paths.push(url.trim_start_matches(&server.base).to_owned());
            }
        }
        report("upload", size, uploads);
        report("download", size, downloads);
    }
    let rss = server.memory_kib("VmRSS:");
    println!(
        "\nserver RSS after the sequential runs: {:.1} MiB",
        rss as f64 / 1024.0
    );
    drop(server);

    let burst = 4 * PERMITS;
    let server = Server::start_with(dir.path(), &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.memory_kib("VmRSS:");
    let bodies: Vec<Vec<u8>> = (0..burst)
        .map(|seed| upload_body(ten_mib, 10_000 + seed))
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (client, token, base) = (client.clone(), token.clone(), server.base.clone());
            tokio::spawn(async move { upload(&client, &base, &token, body).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("upload task");
    }
    let elapsed = started.elapsed();
    let peak = server.memory_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    let per_upload = growth_mib / PERMITS.min(burst) as f64;
    println!(
        "\nburst of {burst} concurrent 10 MiB uploads (MAX_CONCURRENT_UPLOADS={PERMITS}): {:.2} s, {:.1} MB/s",
        elapsed.as_secs_f64(),
        (burst * ten_mib) as f64 / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "  server RSS {:.1} MiB -> peak {:.1} MiB: +{growth_mib:.1} MiB, {per_upload:.1} MiB per in-flight upload = {:.2}x the file",
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        per_upload / 10.0
    );
    drop(server);

    let server = Server::start_with(dir.path(), &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = server.memory_kib("VmRSS:");
    let rounds = if quick { 2 } else { 5 };
    let started = Instant::now();
    for _ in 0..rounds {
        let tasks: Vec<_> = large_paths
            .iter()
            .take(8)
            .map(|path| {
                let (client, token, url) = (
                    client.clone(),
                    token.clone(),
                    format!("{}{path}", server.base),
                );
                tokio::spawn(async move { download(&client, &url, &token).await.1 })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.expect("download task"), ten_mib);
        }
    }
    let elapsed = started.elapsed();
    let peak = server.memory_kib("VmHWM:");
    let files = rounds * large_paths.len().min(8);
    println!(
        "\n{files} downloads of 10 MiB, 8 at a time: {:.1} MB/s; server RSS {:.1} MiB -> peak {:.1} MiB (+{:.1} MiB for 80 MiB in flight)",
        (files * ten_mib) as f64 / 1e6 / elapsed.as_secs_f64(),
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(baseline) as f64 / 1024.0
    );

    drop(server);

    println!("\nconcurrency sweep, closed loops (every answer checked):");
    let server = Server::start_with(dir.path(), &[]);
    let seconds = Duration::from_secs(if quick { 1 } else { 4 });
    for (size, label) in [(10 * 1024, "upload 10 KiB"), (MIB, "upload 1 MiB")] {
        let body = Bytes::from(upload_body(size, 20_000));
        for clients in [1, 2, 4, 8, 16] {
            let run = closed_loop(
                &client,
                &server.base,
                &token,
                body.clone(),
                clients,
                seconds,
            );
            report_loop(label, clients, run.await);
        }
    }
    let listing = Bytes::from(serde_json::json!({ "query": LISTING }).to_string());
    for clients in [1, 8] {
        let run = closed_loop(
            &client,
            &server.base,
            &token,
            listing.clone(),
            clients,
            seconds,
        );
        report_loop("attachments(20)", clients, run.await);
    }
    drop(server);

    memory_by_path(dir.path(), &client, &token, quick).await;
    one_large_upload(dir.path(), &client, &token, quick).await;
}

/// How an upload reaches attache.
#[derive(Clone, Copy, Debug)]
enum UploadPath {
    Base64,
    Multipart,
    Direct,
}

/// Where the server under measure stores its files.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Fs,
    /// s3s-fs in this process: a real S3 endpoint that checks signatures.
    S3,
}

/// Peak RSS per in-flight upload for each backend, path and size: [`PERMITS`]
/// uploads at once on a fresh server, after a first round of small ones, the
/// growth of the peak over the idle RSS divided among them. A path that streams
/// holds about the same whatever the size.
async fn memory_by_path(dir: &std::path::Path, client: &reqwest::Client, token: &str, quick: bool) {
    let large = if quick { 64 * MIB } else { 256 * MIB };
    let limit = large + MIB;
    let collections = collections_file(dir, limit);
    let s3 = start_s3(&dir.join("s3")).await;
    println!(
        "
peak RSS per in-flight upload, {PERMITS} at once, a fresh server per row:"
    );
    println!(
        "| backend | path | file | idle RSS | peak RSS | per upload | beyond a 10 KiB upload | throughput |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for backend in [Backend::Fs, Backend::S3] {
        if !chosen("BENCH_BACKENDS", &format!("{backend:?}")) {
            continue;
        }
        let env = backend_env(backend, &s3, &collections, limit);
        for path in [
            UploadPath::Base64,
            UploadPath::Multipart,
            UploadPath::Direct,
        ] {
            if !chosen("BENCH_PATHS", &format!("{path:?}")) {
                continue;
            }
            // The 10 KiB row is the request without a file to speak of: what the
            // larger rows hold beyond it is what the file costs.
            let mut request_alone = 0.0;
            for size in [10 * 1024, 10 * MIB, large] {
                let server = Server::start_with(dir, &env);
                // A first round of small files starts what every request uses
                // (threads, connections, pools); the peak then counts from here.
                let base = server.base.clone();
                concurrent_uploads(path, client, &base, token, 10 * 1024, 20_000).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                reset_peak(&server);
                let idle = server.memory_kib("VmRSS:");
                let started = Instant::now();
                concurrent_uploads(path, client, &base, token, size, 30_000).await;
                let elapsed = started.elapsed();
                let peak = server.memory_kib("VmHWM:");
                let per_upload = peak.saturating_sub(idle) as f64 / 1024.0 / PERMITS as f64;
                if size < MIB {
                    request_alone = per_upload;
                }
                println!(
                    "| {backend:?} | {path:?} | {} | {:.1} MiB | {:.1} MiB | {per_upload:.1} MiB | {:.1} MiB | {:.0} MB/s |",
                    human(size),
                    idle as f64 / 1024.0,
                    peak as f64 / 1024.0,
                    per_upload - request_alone,
                    (size * PERMITS) as f64 / 1e6 / elapsed.as_secs_f64()
                );
            }
        }
    }
}

/// Whether the comma-separated list in the environment variable `list` (all when
/// unset) names `name`.
fn chosen(list: &str, name: &str) -> bool {
    std::env::var(list).map_or(true, |names| {
        names
            .split(',')
            .any(|one| one.trim().eq_ignore_ascii_case(name))
    })
}

/// Resets the server's peak RSS (VmHWM) to its current RSS, so that the next peak is
/// one of what runs from now on (`/proc/<pid>/clear_refs`, Linux 4.0 and later).
fn reset_peak(server: &Server) {
    std::fs::write(format!("/proc/{}/clear_refs", server.child.id()), "5")
        .expect("reset the peak RSS");
}

/// [`PERMITS`] uploads of `size` bytes at once along `path`, each checked.
async fn concurrent_uploads(
    path: UploadPath,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    size: usize,
    seed: usize,
) {
    let uploads: Vec<_> = (0..PERMITS)
        .map(|n| {
            let (client, token, base) = (client.clone(), token.to_owned(), base.to_owned());
            let content = upload_content(size, seed + n);
            tokio::spawn(async move { upload_by(path, &client, &base, &token, content).await })
        })
        .collect();
    for upload in uploads {
        upload.await.expect("upload task");
    }
}

/// A collections file whose `contract` takes text files of up to `limit` bytes.
fn collections_file(dir: &std::path::Path, limit: usize) -> std::path::PathBuf {
    let collections = dir.join("collections.toml");
    std::fs::write(
        &collections,
        format!(
            "[contract]\nkey = \"{{tenant}}/contracts/{{owner}}/{{id}}{{ext}}\"\nmax_bytes = {limit}\naccept = [\"txt\"]\n"
        ),
    )
    .expect("collections file");
    collections
}

/// The server's settings for `backend` (S3 at `s3`), with `collections` and files
/// of up to `limit` bytes.
fn backend_env(
    backend: Backend,
    s3: &str,
    collections: &std::path::Path,
    limit: usize,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("COLLECTIONS_FILE", collections.display().to_string()),
        ("MAX_UPLOAD_BYTES", limit.to_string()),
    ];
    if let Backend::S3 = backend {
        env.extend([
            ("STORAGE_BACKEND", "s3".to_owned()),
            ("S3_BUCKET_NAME", "bench".to_owned()),
            ("S3_ENDPOINT_URL", s3.to_owned()),
            ("S3_ACCESS_KEY", "bench-access".to_owned()),
            ("S3_SECRET_KEY", "bench-secret-key".to_owned()),
        ]);
    }
    env
}

/// One multipart upload of a file larger than any buffer (1 GiB on fs and 256 MiB
/// on S3; 256 and 64 MiB with `BENCH_QUICK`): stored and verified (its sha256) as
/// it streams, with its time and the server's peak RSS.
async fn one_large_upload(
    dir: &std::path::Path,
    client: &reqwest::Client,
    token: &str,
    quick: bool,
) {
    let s3 = start_s3(&dir.join("s3-large")).await;
    for backend in [Backend::Fs, Backend::S3] {
        if !chosen("BENCH_BACKENDS", &format!("{backend:?}")) {
            continue;
        }
        let size = match (backend, quick) {
            (Backend::Fs, false) => 1024 * MIB,
            (Backend::Fs, true) | (Backend::S3, false) => 256 * MIB,
            (Backend::S3, true) => 64 * MIB,
        };
        let limit = size + MIB;
        let env = backend_env(backend, &s3, &collections_file(dir, limit), limit);
        let server = Server::start_with(dir, &env);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = server.memory_kib("VmRSS:");
        let content = upload_content(size, 40_000);
        let started = Instant::now();
        upload_by(UploadPath::Multipart, client, &server.base, token, content).await;
        let elapsed = started.elapsed();
        let peak = server.memory_kib("VmHWM:");
        println!(
            "\none multipart upload of {} on {backend:?}, sha256 verified: {:.1} s, {:.0} MB/s; server RSS {:.1} MiB -> peak {:.1} MiB",
            human(size),
            elapsed.as_secs_f64(),
            size as f64 / 1e6 / elapsed.as_secs_f64(),
            idle as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}

/// An S3 endpoint (s3s-fs, bucket `bench`) on a free port of this process; its URL.
async fn start_s3(root: &std::path::Path) -> String {
    std::fs::create_dir_all(root.join("bench")).expect("bucket folder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind S3");
    let addr = listener.local_addr().expect("S3 address");
    let filesystem = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(filesystem);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        "bench-access",
        "bench-secret-key",
    ));
    let service = builder.build();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Uploads `content` (a text file) along `path`; panics unless it is stored.
async fn upload_by(
    path: UploadPath,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    content: Vec<u8>,
) {
    let expected = hex::encode(sha2::Sha256::digest(&content));
    let graphql = format!("{base}/graphql");
    let answer: serde_json::Value = match path {
        UploadPath::Base64 => {
            let body = upload_json(&content);
            let request = client
                .post(&graphql)
                .header("content-type", "application/json");
            send(request.bearer_auth(token).body(body)).await
        }
        UploadPath::Multipart => {
            let operations = serde_json::json!({
                "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id sha256 } }",
                "variables": { "input": { "ownerType": "contract", "ownerId": "bench", "file": null } }
            });
            let part = reqwest::multipart::Part::bytes(content)
                .file_name("bench.txt")
                .mime_str("text/plain")
                .expect("mime");
            let form = reqwest::multipart::Form::new()
                .text("operations", operations.to_string())
                .text("map", r#"{"0":["variables.input.file"]}"#)
                .part("0", part);
            let request = client
                .post(&graphql)
                .header("apollo-require-preflight", "1");
            send(request.bearer_auth(token).multipart(form)).await
        }
        UploadPath::Direct => {
            let declared = serde_json::json!({ "input": {
                "ownerType": "contract", "ownerId": "bench", "filename": "bench.txt",
                "contentType": "text/plain", "byteSize": content.len(),
                "sha256": hex::encode(sha2::Sha256::digest(&content)) } });
            let created = send(client.post(&graphql).bearer_auth(token).json(&serde_json::json!({
                "query": "mutation($input: DirectUploadInput!) { createDirectUpload(input: $input) { id uploadUrl headers { name value } } }",
                "variables": declared }))).await;
            let direct = &created["data"]["createDirectUpload"];
            let mut put = client
                .put(direct["uploadUrl"].as_str().expect("uploadUrl"))
                .body(content);
            for header in direct["headers"].as_array().expect("headers") {
                put = put.header(
                    header["name"].as_str().expect("name"),
                    header["value"].as_str().expect("value"),
                );
            }
            let status = put.send().await.expect("PUT").status();
            assert!(status.is_success(), "PUT answered {status}");
            send(
                client
                    .post(&graphql)
                    .bearer_auth(token)
                    .json(&serde_json::json!({
                "query": "mutation($id: ID!) { completeDirectUpload(id: $id) { id sha256 } }",
                "variables": { "id": direct["id"] } })),
            )
            .await
        }
    };
    assert!(answer["errors"].is_null(), "{path:?}: {answer}");
    let stored = answer["data"]
        .as_object()
        .and_then(|data| data.values().next())
        .map(|attachment| attachment["sha256"].clone());
    assert_eq!(
        stored.as_ref().and_then(|sha256| sha256.as_str()),
        Some(expected.as_str()),
        "{path:?}: the stored file is the one sent"
    );
}

async fn send(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("a JSON answer")
}
