//! The test harness: the real app on 127.0.0.1:0 with a fresh database (SQLite, or
//! PostgreSQL when TEST_DATABASE_URL is set) and fresh storage (a temporary folder,
//! or an in-process S3 server that checks SigV4 signatures), a real HTTP client,
//! tokens minted the way an identity provider would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attache::app::App;
use attache::config::Config;
use attache::workers::Dispatcher;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::OnceCell;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Which storage backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Fs,
    /// s3s-fs in the test process: objects are files the test can read.
    S3,
    /// Garage, a real S3 server in a process of its own (tests/garage/start.sh).
    Garage,
}

/// One cell of the test matrix.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub db: Db,
    pub store: Store,
}

impl Setup {
    /// `None`, said loudly, when the cell cannot run here; in CI (`CI` set) every cell runs.
    pub fn available(db: Db, store: Store) -> Option<Self> {
        if db == Db::Postgres && std::env::var_os("TEST_DATABASE_URL").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but TEST_DATABASE_URL is not: PostgreSQL tests must not skip in CI"
            );
            say("SKIPPED: a PostgreSQL test, because TEST_DATABASE_URL is not set");
            return None;
        }
        if db == Db::Postgres {
            static ANNOUNCED: std::sync::Once = std::sync::Once::new();
            ANNOUNCED.call_once(|| {
                say("PostgreSQL: the postgres cells run against TEST_DATABASE_URL");
            });
        }
        if store == Store::Garage && !garage_installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but Garage is not installed: Garage tests must not skip in CI"
            );
            say(
                "SKIPPED: a Garage test, because `garage` is not installed (tests/garage/README.md)",
            );
            return None;
        }
        Some(Self { db, store })
    }
}

/// A line on the test run's own stderr, past libtest's capture of `eprintln!`, so
/// that `cargo test` shows it whether the test passes or not.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether the `garage` binary is on PATH or in ~/.cargo/bin (tests/garage/start.sh
/// looks in both).
fn garage_installed() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("garage").is_file()));
    let in_cargo = std::env::var_os("HOME")
        .is_some_and(|home| Path::new(&home).join(".cargo/bin/garage").is_file());
    on_path || in_cargo
}

/// Runs each named `async fn(Setup)` on every database and storage backend;
/// `s3:` on the S3 cells only, `garage:` on Garage (a second real S3 server, for
/// tests that reach storage through S3 alone), `db:` on both databases with fs,
/// `postgres:` on PostgreSQL only (several servers on one database), `once:` a
/// single time (tests of the binary).
#[macro_export]
macro_rules! matrix {
    (s3: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite_s3_only, Sqlite, S3, $($name),*);
        $crate::matrix!(@cell postgres_s3_only, Postgres, S3, $($name),*);
    };
    (garage: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite_garage, Sqlite, Garage, $($name),*);
        $crate::matrix!(@cell postgres_garage, Postgres, Garage, $($name),*);
    };
    (once: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell once, Sqlite, S3, $($name),*);
    };
    (db: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite, Sqlite, Fs, $($name),*);
        $crate::matrix!(@cell postgres, Postgres, Fs, $($name),*);
    };
    (postgres: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell postgres_only, Postgres, Fs, $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite_fs, Sqlite, Fs, $($name),*);
        $crate::matrix!(@cell postgres_fs, Postgres, Fs, $($name),*);
        $crate::matrix!(@cell sqlite_s3, Sqlite, S3, $($name),*);
        $crate::matrix!(@cell postgres_s3, Postgres, S3, $($name),*);
    };
    (@cell $module:ident, $db:ident, $store:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $crate::helpers::{Db, Setup, Store};
                    if let Some(setup) = Setup::available(Db::$db, Store::$store) {
                        super::$name(setup).await;
                    }
                }
            )*
        }
    };
}

pub const S3_ACCESS_KEY: &str = "attache-test-access";
pub const S3_SECRET_KEY: &str = "attache-test-secret-0123456789";
pub const S3_BUCKET: &str = "attache";

/// The value of `--s3-public-endpoint-url` that [`TestApp::spawn_with`] replaces
/// with the origin of a forwarder to the app's S3 server.
pub const FORWARD_TO_S3: &str = "forward-to-s3";

/// Forwards every connection on a new port to `target`, byte for byte: the public
/// side of a proxy in front of the store. Its origin.
pub async fn forwarder(target: SocketAddr) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the forwarder");
    let addr = listener.local_addr().expect("forwarder addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A real S3 endpoint in the test process (s3s-fs), checking SigV4 signatures and
/// presigned URLs with [`S3_ACCESS_KEY`] / [`S3_SECRET_KEY`]. A bucket is a folder.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
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
        let addr = listener.local_addr().expect("S3 addr");
        let filesystem = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(filesystem);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
        ));
        let service = builder.build();
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
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding the S3 server: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot rebind the S3 server: {err}"),
            }
        };
        *self = Self::serve(&self.root.clone(), listener);
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

pub const SECRET: &str = "test-secret-with-enough-entropy-0123456789";
pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef";

/// A running attache as its clients see it: an origin and an HTTP client.
pub struct Api {
    pub base_url: String,
    pub client: reqwest::Client,
}

/// A running attache in the test process and what a test needs to talk to it; its
/// [`Api`] methods are at hand through `Deref`.
pub struct TestApp {
    pub api: Api,
    /// The origin of the forwarder in front of the S3 server, when the app was
    /// started with `--s3-public-endpoint-url` [`FORWARD_TO_S3`].
    pub public_s3_endpoint: Option<String>,
    pub garage: Option<GarageServer>,
    pub app: Arc<App>,
    /// Where objects end up as files: the fs root, or the S3 server's bucket folder.
    pub storage_root: PathBuf,
    pub s3: Option<S3Server>,
    shutdown: tokio_util::sync::CancellationToken,
    _dir: TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh database URL: a SQLite file in `dir`, or a PostgreSQL database of this run.
pub async fn database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("attache.db").display()),
        Db::Postgres => postgres_database().await.clone(),
    }
}

/// One PostgreSQL database per test run, created fresh; tests keep apart by tenant.
/// Every database of the run is dropped once the run's process ends.
async fn postgres_database() -> &'static String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(|| async {
        let admin = postgres_admin().await;
        drop_previous_databases(&admin).await;
        drop_this_runs_databases_at_exit();
        create_postgres_database(&admin).await
    })
    .await
}

/// A watcher process that waits for this test process to end, then drops every
/// database it made (`attache_test_<pid>_*`): no test database outlives its run,
/// however the run ends. `.ci/run` checks that none is left.
fn drop_this_runs_databases_at_exit() {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        psql "$2" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'attache\_test\_$1\_%'" |
        while read -r name; do
            psql "$2" -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1
        done
    "#;
    let watcher = std::process::Command::new("sh")
        .args([
            "-c",
            script,
            "sh",
            &std::process::id().to_string(),
            &admin_url,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(err) = watcher {
        say(&format!(
            "cannot start the watcher that drops this run's test databases: {err}"
        ));
    }
}

pub async fn postgres_admin() -> sea_orm::DatabaseConnection {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    Database::connect(&admin_url)
        .await
        .expect("connect to TEST_DATABASE_URL")
}

/// A new, migrated PostgreSQL database; the next run drops it.
async fn create_postgres_database(admin: &sea_orm::DatabaseConnection) -> String {
    let url = empty_postgres_database(admin).await;
    let config = attache::config::DatabaseConfig {
        database_url: url.clone(),
        sqlite_synchronous: attache::config::SqliteSync::Normal,
    };
    attache::db::Database::open(&config)
        .await
        .expect("connect to the test database")
        .migrate()
        .await
        .expect("migrate the test database");
    url
}

/// A new PostgreSQL database without tables; the next run drops it.
pub async fn empty_postgres_database(admin: &sea_orm::DatabaseConnection) -> String {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let name = format!("attache_test_{}_{stamp}_{unique}", std::process::id());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create the test database");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A database of its own, for a test whose work would disturb the tests sharing
/// one (pruning every old event): a SQLite file in `dir`, or a new PostgreSQL database.
pub async fn private_database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => database_url(db, dir).await,
        Db::Postgres => {
            postgres_database().await;
            create_postgres_database(&postgres_admin().await).await
        }
    }
}

/// Removes the databases of earlier runs; one still in use by another run stays.
async fn drop_previous_databases(admin: &sea_orm::DatabaseConnection) {
    use sea_orm::{DbBackend, Statement};
    let rows = admin
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname LIKE 'attache_test_%'",
        ))
        .await
        .unwrap_or_default();
    for row in rows {
        if let Ok(name) = row.try_get::<String>("", "datname") {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                .await;
        }
    }
}

/// A tenant id no other test uses, so tests can share a database.
pub fn tenant() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

impl TestApp {
    pub async fn spawn(setup: Setup) -> Self {
        Self::spawn_with(setup, &[]).await
    }

    /// Starts the app with `extra` flags of `attache serve` on top of the test defaults.
    pub async fn spawn_with(setup: Setup, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = dir.path().join("uploads");
        let url = database_url(setup.db, dir.path()).await;
        Self::spawn_at(setup, dir, &url, &uploads, extra).await
    }

    /// Starts the app on `database_url` (unless `extra` names one) with `STORAGE_ROOT`
    /// at `uploads`; with S3, a fresh bucket is started in `dir`.
    pub async fn spawn_at(
        setup: Setup,
        dir: TempDir,
        database_url: &str,
        uploads: &Path,
        extra: &[&str],
    ) -> Self {
        let mut args: Vec<String> = [
            "attache",
            "--storage-root",
            uploads.to_str().expect("utf-8 path"),
            "--signing-key",
            SIGNING_KEY,
            "--listen-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if !extra.contains(&"--jwt-public-key-file") {
            args.extend(["--jwt-secret".to_owned(), SECRET.to_owned()]);
        }
        if !extra.contains(&"--database-url") {
            args.extend(["--database-url".to_owned(), database_url.to_owned()]);
        }
        let mut public_s3_endpoint = None;
        let mut garage = None;
        let (s3, storage_root) = match setup.store {
            Store::Fs => (None, uploads.to_owned()),
            Store::Garage => {
                let server = GarageServer::start(&dir.path().join("garage")).await;
                args.extend(server.flags());
                if extra.contains(&FORWARD_TO_S3) {
                    public_s3_endpoint = Some(forwarder(server.addr).await);
                }
                garage = Some(server);
                (None, dir.path().join("garage"))
            }
            Store::S3 => {
                let server = S3Server::start(&dir.path().join("s3")).await;
                args.extend(s3_flags(&server.endpoint));
                if extra.contains(&FORWARD_TO_S3) {
                    public_s3_endpoint = Some(forwarder(server.addr).await);
                }
                let bucket = server.root.join(S3_BUCKET);
                (Some(server), bucket)
            }
        };
        args.extend(extra.iter().map(|arg| match (*arg, &public_s3_endpoint) {
            (FORWARD_TO_S3, Some(public)) => public.clone(),
            (arg, _) => arg.to_owned(),
        }));
        let config = TestCli::try_parse_from(&args)
            .expect("test configuration")
            .config;
        let mut app = Self::start(config, storage_root, s3, dir).await;
        app.public_s3_endpoint = public_s3_endpoint;
        app.garage = garage;
        app
    }

    async fn start(
        config: Config,
        storage_root: PathBuf,
        s3: Option<S3Server>,
        dir: TempDir,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let base_url = config.public_base_url(addr).expect("base url");
        let app = Arc::new(
            App::build(config, base_url.clone())
                .await
                .expect("build the app"),
        );
        app.db.migrate().await.expect("migrate");
        app.storage.check().await.expect("storage answers");
        let shutdown = tokio_util::sync::CancellationToken::new();
        if let Some(dispatcher) = Dispatcher::new(app.clone()).expect("the events dispatcher") {
            tokio::spawn(dispatcher.run(shutdown.clone()));
        }
        let served = app.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = attache::http::serve(listener, served, stop.cancelled_owned()).await;
        });
        Self {
            public_s3_endpoint: None,
            garage: None,
            api: Api {
                base_url,
                client: http_client(),
            },
            app,
            storage_root,
            s3,
            shutdown,
            _dir: dir,
        }
    }

    /// An HS256 token for `tenant`, as the identity provider of the tests mints it.
    pub fn token(&self, tenant: &str) -> String {
        hs256(json!({ "sub": "user-1", "tenant_id": tenant, "exp": now() + 3600 }))
    }

    /// The key a PDF of the `contract` collection gets: `{tenant}/contracts/{owner}/{id}.pdf`.
    pub fn contract_key(tenant: &str, owner: &str, att: &Value) -> String {
        format!(
            "{tenant}/contracts/{owner}/{}.pdf",
            att["id"].as_str().expect("id")
        )
    }

    /// Every stored object under the storage root, as relative keys.
    pub fn stored_keys(&self) -> Vec<String> {
        let mut keys = match &self.garage {
            Some(_) => self.listed_keys(),
            None => keys_under(&self.storage_root, &self.storage_root),
        };
        keys.retain(|key| !key.starts_with(".attache-probe"));
        keys
    }

    /// Every object as the app's storage lists it (Garage keeps no plain files).
    fn listed_keys(&self) -> Vec<String> {
        use futures::TryStreamExt;
        let storage = &self.app.storage;
        let listed = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { storage.list().await?.try_collect::<Vec<_>>().await })
        });
        let mut keys: Vec<String> = listed
            .expect("list the bucket")
            .into_iter()
            .map(|object| object.key)
            .collect();
        keys.sort();
        keys
    }

    /// How many attachment rows `tenant` has.
    pub async fn row_count(&self, tenant: &str) -> u64 {
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        entity::attachment::Entity::find()
            .filter(entity::attachment::Column::TenantId.eq(tenant))
            .count(self.app.db.read())
            .await
            .expect("count rows")
    }
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The status of a GET of `path` without headers.
    pub async fn status_of(&self, path: &str) -> u16 {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        response.status().as_u16()
    }

    /// POSTs a GraphQL request as JSON; returns the JSON body.
    pub async fn gql(&self, query: &str, variables: Value, bearer: Option<&str>) -> Value {
        let mut request = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("POST /graphql");
        assert_eq!(response.status(), 200, "GraphQL answers HTTP 200");
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        response.json().await.expect("JSON body")
    }

    /// Uploads `content` through `uploadAttachment`; panics on any GraphQL error.
    pub async fn upload(
        &self,
        bearer: &str,
        content: &[u8],
        owner_type: &str,
        owner_id: Option<&str>,
        filename: &str,
    ) -> Value {
        let body = self
            .gql(
                UPLOAD,
                json!({ "input": {
                    "ownerType": owner_type, "ownerId": owner_id, "filename": filename,
                    "base64": STANDARD.encode(content),
                }}),
                Some(bearer),
            )
            .await;
        data(&body, "uploadAttachment")
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

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

/// `attache serve`'s settings from command-line style `args` (the first is the name).
pub fn parse_config(args: &[String]) -> Result<Config, clap::Error> {
    TestCli::try_parse_from(args).map(|cli| cli.config)
}

/// A client for tests; TLS (unused on loopback) needs the process's ring provider.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token signed with the tests' HS256 secret.
pub fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn sign(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).expect("sign a token")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The field of a response that must have no errors.
pub fn data(body: &Value, field: &str) -> Value {
    assert!(
        body.get("errors").is_none_or(Value::is_null),
        "{field}: {body}"
    );
    body["data"][field].clone()
}

/// The `extensions.code` of every error.
pub fn codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    error["extensions"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

pub const UPLOAD: &str = "mutation($input: UploadAttachmentInput!) { uploadAttachment(input: $input) { id ownerType ownerId filename contentType byteSize sha256 url downloadUrl createdAt createdBy } }";
pub const GET: &str =
    "query($id: ID!) { attachment(id: $id) { id filename sha256 url downloadUrl } }";
pub const DELETE: &str = "mutation($id: ID!) { deleteAttachment(id: $id) }";

/// A small well-formed PDF, different at every call.
pub fn pdf() -> Vec<u8> {
    format!(
        "%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n% {}\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// A 1x1 PNG.
pub fn png() -> Vec<u8> {
    STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
        .expect("png fixture")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A real `attache serve` process on a free port, with a SQLite database and a
/// storage folder of its own; its log goes to a file.
pub struct Served {
    pub child: std::process::Child,
    pub base: String,
    log: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Served {
    pub async fn start(extra: &[&str]) -> Self {
        Self::launch(extra, false).await
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
        Some(Self::launch(extra, true).await)
    }

    /// Starts the server; again on another port when the one picked was taken in
    /// the meantime (another test's client connections use ephemeral ports too).
    async fn launch(extra: &[&str], on_ramfs: bool) -> Self {
        let mut attempts = 0;
        loop {
            let mut served = Self::launch_once(extra, on_ramfs).await;
            let exited = served.child.try_wait().expect("wait").is_some();
            attempts += 1;
            if !(exited && served.log().contains("LISTEN_ADDR") && attempts < 5) {
                return served;
            }
        }
    }

    async fn launch_once(extra: &[&str], on_ramfs: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = dir.path().join("attache.log");
        let attache = env!("CARGO_BIN_EXE_attache");
        let mut command = if on_ramfs {
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
        let child = command
            .arg("serve")
            .args(["--listen-addr", &format!("127.0.0.1:{port}")])
            .args([
                "--database-url",
                &format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display()),
            ])
            .args([
                "--storage-root",
                &dir.path().join("up").display().to_string(),
            ])
            .args(["--jwt-secret", SECRET, "--signing-key", SIGNING_KEY])
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug,sqlx=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start attache serve");
        let base = format!("http://127.0.0.1:{port}");
        let client = http_client();
        let mut child = child;
        for _ in 0..200 {
            if client.get(format!("{base}/healthz")).send().await.is_ok()
                || child.try_wait().is_ok_and(|status| status.is_some())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base,
            log,
            dir,
        }
    }

    fn database_url_in(dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", dir.join("a.db").display())
    }

    pub fn database_url(&self) -> String {
        Self::database_url_in(self.dir.path())
    }

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

    /// Waits for the exit (at most 20 s); its status.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        panic!("attache serve did not exit after SIGTERM");
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

/// Runs `attache ARGS` to completion, off the runtime (the S3 server lives in it);
/// a command still running after 30 s is killed and fails the test.
pub async fn run_attache(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut child = attache_command(&args, std::process::Stdio::piped)
            .spawn()
            .expect("run attache");
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed().as_secs() > 30 {
                let _ = child.kill();
                let output = child.wait_with_output().expect("output");
                panic!(
                    "`attache {args:?}` still ran after 30 s: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("join")
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

pub const CREATE_DIRECT: &str = "mutation($input: DirectUploadInput!) { createDirectUpload(input: $input) { id uploadUrl headers { name value } expiresAt } }";
pub const COMPLETE_DIRECT: &str = "mutation($id: ID!) { completeDirectUpload(id: $id) { id filename contentType byteSize sha256 url } }";

pub fn declaration(content: &[u8], content_type: &str) -> Value {
    json!({ "ownerType": "contract", "ownerId": "c-7", "filename": "Direkt.pdf", "contentType": content_type,
            "byteSize": content.len(), "sha256": sha256_hex(content) })
}

/// `createDirectUpload`, then the client's PUT with the given headers.
pub async fn announce_and_put(
    app: &TestApp,
    bearer: &str,
    declared: Value,
    body: Vec<u8>,
) -> (Value, u16) {
    let created = app
        .gql(CREATE_DIRECT, json!({ "input": declared }), Some(bearer))
        .await;
    let direct = data(&created, "createDirectUpload");
    let status = put_to(app, &direct, body).await;
    (direct, status)
}

/// A PDF's direct upload from start to end: announced, PUT (which must succeed) and
/// completed; the direct upload and the attachment it became.
pub async fn direct_upload(app: &TestApp, bearer: &str, content: &[u8]) -> (Value, Value) {
    let declared = declaration(content, "application/pdf");
    let (direct, status) = announce_and_put(app, bearer, declared, content.to_vec()).await;
    assert_eq!(status, 200, "PUT to uploadUrl");
    let done = app
        .gql(COMPLETE_DIRECT, json!({ "id": direct["id"] }), Some(bearer))
        .await;
    let attachment = data(&done, "completeDirectUpload");
    (direct, attachment)
}

/// POSTs a GraphQL multipart request (with the preflight header of SPEC 6's CSRF
/// rule) to `base`; its status and JSON body.
pub async fn post_multipart(
    base: &str,
    bearer: &str,
    form: reqwest::multipart::Form,
) -> (u16, Value) {
    let response = http_client()
        .post(format!("{base}/graphql"))
        .bearer_auth(bearer)
        .header("apollo-require-preflight", "1")
        .multipart(form)
        .send()
        .await
        .expect("POST multipart");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The client's PUT to a direct upload's `uploadUrl`, with its `headers`.
pub async fn put_to(app: &TestApp, direct: &Value, body: Vec<u8>) -> u16 {
    let mut put = app
        .client
        .put(direct["uploadUrl"].as_str().expect("uploadUrl"))
        .body(body);
    for header in direct["headers"].as_array().expect("headers") {
        put = put.header(
            header["name"].as_str().expect("name"),
            header["value"].as_str().expect("value"),
        );
    }
    put.send().await.expect("PUT").status().as_u16()
}

/// The body of a GET of `url` without headers.
pub async fn fetch(url: &Value) -> Vec<u8> {
    let response = reqwest::get(url.as_str().expect("url")).await.expect("GET");
    response.bytes().await.expect("body").to_vec()
}

/// A GraphQL multipart request of `uploadAttachmentFile` carrying `content`.
pub fn upload_file_form(
    owner_type: &str,
    owner_id: &str,
    content: &[u8],
    filename: &str,
    mime: &str,
) -> reqwest::multipart::Form {
    let operations = json!({
        "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id filename contentType sha256 } }",
        "variables": { "input": { "ownerType": owner_type, "ownerId": owner_id, "file": null } }
    });
    reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text("map", json!({ "0": ["variables.input.file"] }).to_string())
        .part(
            "0",
            reqwest::multipart::Part::bytes(content.to_vec())
                .file_name(filename.to_owned())
                .mime_str(mime)
                .expect("mime"),
        )
}

/// A trigger that makes every insert into `table` fail for one tenant: a database
/// failure in the middle of a write, on SQLite and PostgreSQL alike.
pub struct Refusal {
    db: Db,
    name: String,
    table: &'static str,
}

impl Refusal {
    pub async fn install(app: &TestApp, table: &'static str, tenant: &str) -> Self {
        let db = if app.app.db.backend() == sea_orm::DbBackend::Postgres {
            Db::Postgres
        } else {
            Db::Sqlite
        };
        let name = format!("refuse_{table}_{tenant}");
        let trigger = match db {
            Db::Sqlite => format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.tenant_id = '{tenant}' \
                 BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;"
            ),
            Db::Postgres => format!(
                "CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN \
                 IF NEW.tenant_id = '{tenant}' THEN RAISE EXCEPTION 'refused by test trigger'; END IF; RETURN NEW; END; $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();"
            ),
        };
        let txn = app.app.db.begin().await.expect("begin");
        txn.execute_unprepared(&trigger)
            .await
            .expect("install trigger");
        txn.commit().await.expect("install trigger");
        Self { db, name, table }
    }

    /// Drops the trigger (a shared PostgreSQL database outlives the test).
    pub async fn remove(self, app: &TestApp) {
        let Self { db, name, table } = self;
        let cleanup = match db {
            Db::Sqlite => format!("DROP TRIGGER {name};"),
            Db::Postgres => format!("DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}();"),
        };
        let txn = app.app.db.begin().await.expect("begin");
        txn.execute_unprepared(&cleanup)
            .await
            .expect("remove trigger");
        txn.commit().await.expect("remove trigger");
    }
}
