//! attache as a process of its own: `attache serve` on a free port, or any
//! `attache` command run to completion.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Api, SECRET, SIGNING_KEY, http_client, say};

/// A real `attache serve` process on a free port, killed on drop; its log goes to a
/// file. [`Served::start`] gives it a SQLite database and a storage folder of its
/// own; [`Served::replica`] runs it on the database and storage its flags name, as
/// a load balancer's replica runs. Its [`Api`] methods are at hand through `Deref`.
pub struct Served {
    pub child: std::process::Child,
    pub api: Api,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Served {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The longest a server may take to answer after its start, or to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(30);

/// How a [`Served`] starts: `attache serve` with `--listen-addr` and then these.
struct Launch<'a> {
    args: &'a [String],
    /// A SQLite database, a storage folder and the tests' keys in the server's own
    /// folder, before `args`.
    own_storage: bool,
    /// The storage folder a ramfs (see [`Served::start_on_ramfs`]).
    on_ramfs: bool,
    rust_log: &'static str,
    /// Environment variables beyond `PATH`, `NO_COLOR` and `RUST_LOG`.
    env: &'a [(&'a str, &'a str)],
}

impl Served {
    /// A server with a database and storage of its own and `extra` flags.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[]).await
    }

    /// Like [`Served::start`], with environment variables `env` besides.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(Launch {
            args: &strings(extra),
            own_storage: true,
            on_ramfs: false,
            rust_log: "debug,sqlx=warn",
            env,
        })
        .await
    }

    /// Like [`Served::start`], with its storage folder a ramfs (a filesystem that
    /// refuses `O_DIRECT`) in a mount namespace of its own: the mount dies with the
    /// server, and the test's view of the folder stays empty. `None`, said loudly,
    /// without root; in CI (root) it always runs.
    pub async fn start_on_ramfs(extra: &[&str]) -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
        if !root {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but the tests do not run as root: the ramfs test must not skip in CI"
            );
            say("SKIPPED: the ramfs storage test, because mounting needs root");
            return None;
        }
        Some(
            Self::launch(Launch {
                args: &strings(extra),
                own_storage: true,
                on_ramfs: true,
                rust_log: "debug,sqlx=warn",
                env: &[],
            })
            .await,
        )
    }

    /// `attache serve ARGS` (every flag but `--listen-addr`: the database, storage
    /// and keys it shares with its peers), as a load balancer's replica runs; its
    /// log has the workers' debug lines.
    pub async fn replica(args: &[String]) -> Self {
        Self::launch(Launch {
            args,
            own_storage: false,
            on_ramfs: false,
            rust_log: "info,attache::workers=debug",
            env: &[],
        })
        .await
    }

    /// Starts the server and waits until it answers (or exits); again on another
    /// port when the one picked was taken in the meantime (another test's client
    /// connections use ephemeral ports too).
    async fn launch(launch: Launch<'_>) -> Self {
        let mut attempts = 0;
        loop {
            let mut served = Self::launch_once(&launch).await;
            let exited = served.child.try_wait().expect("wait").is_some();
            attempts += 1;
            if !(exited && served.log().contains("LISTEN_ADDR") && attempts < 5) {
                return served;
            }
        }
    }

    async fn launch_once(launch: &Launch<'_>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = dir.path().join("attache.log");
        let attache = env!("CARGO_BIN_EXE_attache");
        let mut command = if launch.on_ramfs {
            let mut wrapper = std::process::Command::new("unshare");
            wrapper
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mkdir -p "$1" && mount -t ramfs ramfs "$1" && shift && exec "$@""#)
                .arg("sh")
                .arg(dir.path().join("up"))
                .arg(attache);
            wrapper
        } else {
            std::process::Command::new(attache)
        };
        command
            .arg("serve")
            .args(["--listen-addr", &format!("127.0.0.1:{port}")]);
        if launch.own_storage {
            command
                .args(["--database-url", &Self::database_url_in(dir.path())])
                .args([
                    "--storage-root",
                    &dir.path().join("up").display().to_string(),
                ])
                .args(["--jwt-secret", SECRET, "--signing-key", SIGNING_KEY]);
        }
        let mut child = command
            .args(launch.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", launch.rust_log)
            .envs(launch.env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start attache serve");
        let base_url = format!("http://127.0.0.1:{port}");
        let client = http_client();
        let started = Instant::now();
        loop {
            if client
                .get(format!("{base_url}/healthz"))
                .send()
                .await
                .is_ok()
                || child.try_wait().is_ok_and(|status| status.is_some())
            {
                break;
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "attache serve did not start in {PATIENCE:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            api: Api { base_url, client },
            log,
            dir,
        }
    }

    fn database_url_in(dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", dir.join("a.db").display())
    }

    /// The database of a server of [`Served::start`].
    pub fn database_url(&self) -> String {
        Self::database_url_in(self.dir.path())
    }

    /// The storage folder of a server of [`Served::start`].
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("up")
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
    }

    /// Waits for the exit (at most [`PATIENCE`]); its status.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        panic!("attache serve did not exit after SIGTERM: {}", self.log());
    }

    /// SIGTERM, as an orchestrator stops a replica; its exit status and log.
    pub async fn shut_down(mut self) -> (std::process::ExitStatus, String) {
        self.terminate();
        let status = self.exit_status().await;
        (status, self.log())
    }

    /// SIGKILL: no shutdown, no clean-up, as a crashed host.
    pub async fn kill(self) {
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .expect("join");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read the log")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// Runs `attache ARGS` to completion, off the runtime (the S3 server lives in it);
/// a command still running after 30 s is killed and fails the test.
pub async fn run_attache(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let child = attache_command(&args, std::process::Stdio::piped)
            .spawn()
            .expect("run attache");
        output_within(
            child,
            Duration::from_secs(30),
            &format!("`attache {args:?}`"),
        )
    })
    .await
    .expect("join")
}

/// The output of `child` once it exits; one still running after `limit` is killed
/// and fails the test, its stderr shown.
pub fn output_within(
    mut child: std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{what} still ran after {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Starts `attache ARGS` without waiting for it.
pub fn spawn_attache(args: Vec<String>) -> std::process::Child {
    attache_command(&args, std::process::Stdio::null)
        .spawn()
        .expect("start attache")
}

/// `attache ARGS` in an empty environment, its stdout and stderr set by `output`.
fn attache_command(args: &[String], output: fn() -> std::process::Stdio) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_attache"));
    command
        .args(args)
        .env_clear()
        .env("NO_COLOR", "1")
        .stdout(output())
        .stderr(output());
    command
}
