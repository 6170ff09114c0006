//! What the benchmarks share: the release `attache serve` as a child process, a
//! token, percentiles.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
pub const PERMITS: usize = 8;
pub const MIB: usize = 1024 * 1024;

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts in `dir` (SQLite and uploads there by default), with `env` on top.
    pub fn start_with(dir: &Path, env: &[(&str, String)]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_attache"))
            .arg("serve")
            .current_dir(dir)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("JWT_SECRET", SECRET)
            .env("SIGNING_KEY", SECRET)
            .env("MAX_CONCURRENT_UPLOADS", PERMITS.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("start attache serve");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("attache serve did not listen within 30 s");
    }

    /// A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|line| {
                line.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .expect("memory field")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({ "sub": "bench", "tenant_id": "bench", "exp": now + 3600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

pub fn human(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / 1024)
    }
}

/// The JSON body of an `uploadAttachment` of `size` bytes of text, built once.
pub fn upload_body(size: usize, seed: usize) -> Vec<u8> {
    upload_json(&upload_content(size, seed))
}

/// `size` bytes of text, different for each `seed`.
pub fn upload_content(size: usize, seed: usize) -> Vec<u8> {
    let line =
        format!("attache benchmark line {seed:08}, the quick brown fox jumps over the lazy dog\n");
    line.bytes().cycle().take(size).collect()
}

/// The JSON body of an `uploadAttachment` of `content`.
pub fn upload_json(content: &[u8]) -> Vec<u8> {
    json!({
        "query": "mutation($input: UploadAttachmentInput!) { uploadAttachment(input: $input) { id downloadUrl sha256 } }",
        "variables": { "input": { "ownerType": "contract", "ownerId": "bench", "filename": "bench.txt",
                                  "base64": STANDARD.encode(content) } }
    })
    .to_string()
    .into_bytes()
}
