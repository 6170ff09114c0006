//! S3 for tests: an in-process s3s-fs server, a throwaway Garage, a forwarder in
//! front of either, and the files a bucket folder holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::bind_patiently;

pub const S3_ACCESS_KEY: &str = "attache-test-access";
pub const S3_SECRET_KEY: &str = "attache-test-secret-0123456789";
pub const S3_BUCKET: &str = "attache";

/// The value of `--s3-public-endpoint-url` that [`TestApp::spawn_with`] replaces
/// with the origin of a forwarder to the app's S3 server.
pub const FORWARD_TO_S3: &str = "forward-to-s3";

/// Forwards every connection on a new port to `target`, byte for byte: the public
/// side of a proxy in front of the store. Its origin.
pub async fn forwarder(target: SocketAddr) -> String {
    stalling_forwarder(target).await.0
}

/// Forwards every connection on a new port to `target` until `stalled` is set:
/// from then on nothing more goes through, either way, on new connections or open
/// ones, which stay open: a store whose network stalls. Its origin and the switch.
pub async fn stalling_forwarder(
    target: SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stalled = std::sync::Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the forwarder");
    let addr = listener.local_addr().expect("forwarder addr");
    let flag = stalled.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (from_client, to_client) = inbound.into_split();
            let (from_store, to_store) = outbound.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(from_client) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(to_store) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(from_store), Box::new(to_client)),
            ] {
                let stalled = flag.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(read) = from.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        if stalled.load(Ordering::Relaxed) {
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    (format!("http://{addr}"), stalled)
}

/// A real S3 endpoint in the test process (s3s-fs), checking SigV4 signatures and
/// presigned URLs with [`S3_ACCESS_KEY`] / [`S3_SECRET_KEY`]. A bucket is a folder.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    pub addr: SocketAddr,
    /// Failures it answers in place of the store, as a test sets them.
    pub faults: std::sync::Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

/// Requests of one kind that the server fails instead of serving, having read
/// their body: a throttled or failing store.
pub struct Fault {
    pub method: http::Method,
    /// A query parameter the requests carry (`partNumber`, `uploads`, `uploadId`),
    /// or "" for requests with no query.
    pub query: &'static str,
    /// How many of them fail.
    pub times: usize,
    pub status: u16,
    /// The S3 error code of the answer (`SlowDown`, `InternalError`).
    pub code: &'static str,
}

/// The faults an [`S3Server`] is to answer, and how many it has.
#[derive(Default)]
pub struct Faults {
    pending: std::sync::Mutex<Vec<Fault>>,
    answered: std::sync::atomic::AtomicUsize,
}

impl Faults {
    pub fn add(&self, fault: Fault) {
        self.pending.lock().expect("faults").push(fault);
    }

    /// Faults answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The status and code to fail a request with, if one of its kind is due.
    fn take(&self, method: &http::Method, query: Option<&str>) -> Option<(u16, &'static str)> {
        let mut pending = self.pending.lock().expect("faults");
        let carries = |name: &str| match query {
            None => name.is_empty(),
            Some(query) => {
                !name.is_empty()
                    && query
                        .split('&')
                        .any(|pair| pair.split('=').next() == Some(name))
            }
        };
        let fault = pending
            .iter_mut()
            .find(|fault| fault.times > 0 && fault.method == method && carries(fault.query))?;
        fault.times -= 1;
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some((fault.status, fault.code))
    }
}

impl S3Server {
    pub async fn start(root: &Path) -> Self {
        std::fs::create_dir_all(root.join(S3_BUCKET)).expect("bucket folder");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind S3");
        Self::serve(root, listener)
    }

    fn serve(root: &Path, listener: tokio::net::TcpListener) -> Self {
        Self::serve_with(root, listener, Default::default())
    }

    fn serve_with(
        root: &Path,
        listener: tokio::net::TcpListener,
        faults: std::sync::Arc<Faults>,
    ) -> Self {
        let addr = listener.local_addr().expect("S3 addr");
        let filesystem = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(filesystem);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
        ));
        let store = builder.build();
        let injected = faults.clone();
        let service = hyper::service::service_fn(
            move |request: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                let faults = injected.clone();
                async move {
                    let due = faults.take(request.method(), request.uri().query());
                    let Some((status, code)) = due else {
                        return hyper::service::Service::call(&store, request).await;
                    };
                    // The whole body is read first: the client must send it again.
                    let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                    let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
                    );
                    let mut answer = http::Response::new(s3s::Body::from(body));
                    *answer.status_mut() = http::StatusCode::from_u16(status).expect("a status");
                    Ok(answer)
                }
            },
        );
        let task = tokio::spawn(async move {
            // Dropping the set (on abort) closes every open connection too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                connections.spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            root: root.to_owned(),
            addr,
            faults,
            task,
        }
    }

    /// An outage: the port closes and every connection drops.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// The end of an outage: the same endpoint answers again.
    pub async fn restart(&mut self) {
        self.task.abort();
        let listener = bind_patiently(self.addr, "the S3 server", 50).await;
        *self = Self::serve_with(&self.root.clone(), listener, self.faults.clone());
    }
}

/// A throwaway single-node Garage (tests/garage/start.sh), killed on drop.
pub struct GarageServer {
    pub endpoint: String,
    pub addr: SocketAddr,
    access_key: String,
    secret_key: String,
    bucket: String,
    pid: u32,
}

impl GarageServer {
    pub async fn start(dir: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/garage/start.sh");
        let output = tokio::process::Command::new("bash")
            .arg(script)
            .arg(dir)
            .env("GARAGE_WATCH_PID", std::process::id().to_string())
            // What S3_PROVIDER=garage assumes: Garage's own default region.
            .env("GARAGE_REGION", "garage")
            .output()
            .await
            .expect("run tests/garage/start.sh");
        assert!(
            output.status.success(),
            "Garage did not start (is it installed? see tests/garage/README.md): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {stdout}"))
                .to_owned()
        };
        let endpoint = value("GARAGE_ENDPOINT");
        Self {
            addr: endpoint
                .trim_start_matches("http://")
                .parse()
                .expect("Garage's address"),
            endpoint,
            access_key: value("GARAGE_ACCESS_KEY"),
            secret_key: value("GARAGE_SECRET_KEY"),
            bucket: value("GARAGE_BUCKET"),
            pid: value("GARAGE_PID").parse().expect("pid"),
        }
    }

    /// The `attache serve` flags of this bucket.
    pub fn flags(&self) -> Vec<String> {
        [
            "--storage-backend",
            "s3",
            "--s3-provider",
            "garage",
            "--s3-bucket-name",
            &self.bucket,
            "--s3-endpoint-url",
            &self.endpoint,
            "--s3-access-key",
            &self.access_key,
            "--s3-secret-key",
            &self.secret_key,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
/// The files under `dir`, as keys relative to `root`, sorted.
pub fn keys_under(root: &Path, dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if let Ok(key) = path.strip_prefix(root) {
                out.push(key.to_string_lossy().into_owned());
            }
        }
    }
    let mut keys = Vec::new();
    walk(dir, root, &mut keys);
    keys.sort();
    keys
}

/// The flags that point attache at an in-process S3 server.
pub fn s3_flags(endpoint: &str) -> Vec<String> {
    [
        "--storage-backend",
        "s3",
        "--s3-bucket-name",
        S3_BUCKET,
        "--s3-endpoint-url",
        endpoint,
        "--s3-access-key",
        S3_ACCESS_KEY,
        "--s3-secret-key",
        S3_SECRET_KEY,
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}
