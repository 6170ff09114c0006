//! The real app on 127.0.0.1:0 in the test process, with a fresh database and
//! fresh storage, and the HTTP client tests talk to it with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attache::app::App;
use attache::config::Config;
use attache::workers::Dispatcher;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{
    FORWARD_TO_S3, GarageServer, S3_BUCKET, S3Server, SECRET, SIGNING_KEY, Setup, Store, UPLOAD,
    data, database_url, forwarder, keys_under, pdf, private_database_url, s3_flags, token_for,
};

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

    /// Starts the app, with `extra` flags, on a database of its own (a recount or a
    /// gauge sees every tenant of its database; a test may lock it); returns the
    /// database's URL too, for commands and connections of the test's own.
    pub async fn spawn_alone(setup: Setup, extra: &[&str]) -> (Self, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = dir.path().join("uploads");
        let url = private_database_url(setup.db, dir.path()).await;
        (Self::spawn_at(setup, dir, &url, &uploads, extra).await, url)
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
        for (step, answered) in app.storage.check_steps().await {
            answered.unwrap_or_else(|err| panic!("storage answers {step}: {err}"));
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        if let Some(dispatcher) = Dispatcher::new(app.clone()).expect("the events dispatcher") {
            tokio::spawn(dispatcher.run(shutdown.clone()));
        }
        let served = app.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = attache::http::serve(listener, None, served, stop.cancelled_owned()).await;
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
        token_for(tenant)
    }

    /// The key a PDF of the `contract` collection gets: `{tenant}/contracts/{owner}/{id}.pdf`.
    pub fn contract_key(tenant: &str, owner: &str, att: &Value) -> String {
        format!(
            "{tenant}/contracts/{owner}/{}.pdf",
            att["id"].as_str().expect("id")
        )
    }

    /// Whether files go to an S3 server (s3s or Garage), not the local disk.
    pub fn on_s3(&self) -> bool {
        self.s3.is_some() || self.garage.is_some()
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

/// A contract PDF stored for a tenant of its own: where a test that starts from
/// one uploaded file starts.
pub struct Uploaded {
    pub tenant: String,
    /// A token of `tenant`.
    pub bearer: String,
    pub content: Vec<u8>,
    /// The attachment as `uploadAttachment` answered ([`UPLOAD`]'s fields).
    pub att: Value,
    pub id: String,
    /// The signed link.
    pub url: String,
}

impl Api {
    /// A fresh tenant, its token, and a new [`pdf`] uploaded through
    /// `uploadAttachment` as `contract` `c-1`, named `filename`.
    pub async fn upload_contract_pdf(&self, filename: &str) -> Uploaded {
        let tenant = tenant();
        let bearer = token_for(&tenant);
        let content = pdf();
        let att = self
            .upload(&bearer, &content, "contract", Some("c-1"), filename)
            .await;
        let field = |name: &str| att[name].as_str().expect(name).to_owned();
        let (id, url) = (field("id"), field("url"));
        Uploaded {
            tenant,
            bearer,
            content,
            att,
            id,
            url,
        }
    }
}

impl Api {
    /// A GET of `url` with `bearer`'s token.
    pub async fn get_with(&self, url: &str, bearer: &str) -> reqwest::Response {
        self.client
            .get(url)
            .bearer_auth(bearer)
            .send()
            .await
            .expect("GET")
    }

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

    /// Asserts that `att`'s object is lost to its download route: GET, a Range GET
    /// and HEAD answer 404 in JSON before any byte of a file, and the body says
    /// `NOT_FOUND` with the attachment's id and that the object is missing.
    pub async fn assert_download_lost(&self, att: &Value, bearer: &str) {
        let route = att["downloadUrl"].as_str().expect("downloadUrl");
        for request in [
            self.client.get(route),
            self.client.get(route).header("range", "bytes=0-9"),
            self.client.head(route),
        ] {
            let response = request.bearer_auth(bearer).send().await.expect("request");
            assert_eq!(response.status(), 404);
            let content_type = response.headers()["content-type"].to_str().expect("ascii");
            assert!(
                content_type.starts_with("application/json"),
                "{content_type}"
            );
        }
        let response = self.client.get(route).bearer_auth(bearer).send().await;
        let body: Value = response.expect("GET").json().await.expect("a JSON body");
        let error = &body["errors"][0];
        assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{body}");
        assert_eq!(error["extensions"]["attachmentId"], att["id"]);
        let message = error["message"].as_str().expect("message");
        assert!(message.contains("missing"), "{message}");
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
/// Everything it talks to is on loopback, so a proxy the machine sets is ignored.
pub fn http_client() -> reqwest::Client {
    http_client_with(reqwest::Client::builder())
}

/// A client built from `builder` (a timeout, say), with [`http_client`]'s setup.
pub fn http_client_with(builder: reqwest::ClientBuilder) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    builder.no_proxy().build().expect("an HTTP client")
}
