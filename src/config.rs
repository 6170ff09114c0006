//! Typed settings: every one an environment variable and the same-named flag (SPEC 2).
//! Secrets are wrapped in [`Secret`] so that no `Debug` print shows them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The longest age a setting or flag may name: a date that far ahead is still one
/// the database keeps (SQLite's text of a year past 9999 would sort before today's).
/// A year as `humantime` counts it: 365.25 days.
pub const MAX_AGE: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration such as `7d` or `12h`; a bare `0` is none.
fn parse_retention(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" => Ok(Duration::ZERO),
        text => parse_age(text),
    }
}

/// A duration such as `24h` or `7d`, at most [`MAX_AGE`] (100 years).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(text.trim())
        .map_err(|err| format!("{err} (a duration such as 30m, 12h or 7d)"))?;
    match age <= MAX_AGE {
        true => Ok(age),
        false => Err(format!("{text} is longer than 100 years, the most allowed")),
    }
}

/// A tenant claim: not one that a token already holds for another purpose, which
/// `attache token` would write twice and verification read as a date, an issuer or
/// the scopes.
fn parse_tenant_claim(text: &str) -> Result<String, String> {
    const TAKEN: [&str; 7] = ["exp", "nbf", "iat", "iss", "aud", "jti", "scope"];
    match text {
        "" => Err("is empty: name the claim that holds the tenant".into()),
        taken if TAKEN.contains(&taken) => Err(format!(
            "`{taken}` has another meaning in a token: name a claim of its own (tenant_id, say)"
        )),
        claim => Ok(claim.to_owned()),
    }
}

/// A database URL of a kind attache speaks; the driver's own complaint about
/// another would quote the text back.
fn parse_database_url(text: &str) -> Result<String, String> {
    const SCHEMES: [&str; 3] = ["sqlite:", "postgres://", "postgresql://"];
    let scheme_first = text.trim_start().to_ascii_lowercase();
    match SCHEMES
        .iter()
        .any(|scheme| scheme_first.starts_with(scheme))
    {
        true => Ok(text.to_owned()),
        false => Err(
            "expected sqlite://PATH?mode=rwc or postgres://USER:PASSWORD@HOST:5432/DATABASE".into(),
        ),
    }
}

/// A required claim's value: an empty one would refuse every token that carries a
/// real one, so it is refused at the start.
fn parse_claim_value(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("is empty: unset it, or name the value tokens carry".into()),
        _ => Ok(text.to_owned()),
    }
}

/// A size in bytes: a plain number, or one with a unit (`500MB`, `5GiB`; `k`, `M`,
/// `G`, `T` are powers of 1000, `Ki`, `Mi`, `Gi`, `Ti` of 1024; a trailing `B` is
/// optional).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size: write bytes, or a number with kB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    // Whole numbers exactly (a float rounds past 2^53); a fraction (`1.5GiB`) to the
    // nearest byte.
    let bytes = match number.parse::<u64>() {
        Ok(whole) => whole.checked_mul(factor),
        Err(_) => {
            let value: f64 = number
                .parse()
                .map_err(|_| format!("`{text}` is not a size: it must start with a number"))?;
            let bytes = (value * factor as f64).round();
            (bytes < u64::MAX as f64).then_some(bytes as u64)
        }
    };
    match bytes {
        Some(bytes) if (1..=i64::MAX as u64).contains(&bytes) => Ok(bytes),
        _ => Err(format!(
            "`{text}` is out of range: at least 1 byte, at most 8 EiB"
        )),
    }
}

/// `S3_PREFIX`, checked: public URLs name it unescaped, so it keeps to the
/// alphabet of storage keys.
fn parse_s3_prefix(text: &str) -> Result<String, String> {
    let prefix = text.trim_matches('/');
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|byte| {
                byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'~' | b'=')
            })
    };
    if prefix.is_empty() || prefix.split('/').all(segment_ok) {
        return Ok(text.to_owned());
    }
    Err(format!(
        "`{text}` is not a key prefix: use letters, digits, `.`, `_`, `-`, `~` and `=` \
         between slashes, for example attache/production"
    ))
}

/// The shortest HMAC key accepted for client tokens and signed links: 256 bits.
const MIN_KEY_BYTES: usize = 32;

/// A misconfiguration found at startup: one line that names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A key of `variable` too short to resist guessing is refused, by `serve` and by
    /// `attache token` alike (which would mint tokens `serve` then refuses to check).
    pub fn long_enough(&self, variable: &'static str) -> Result<(), ConfigError> {
        if self.0.len() >= MIN_KEY_BYTES {
            return Ok(());
        }
        Err(ConfigError::new(
            variable,
            format!(
                "has {} bytes; at least {MIN_KEY_BYTES} are needed (`openssl rand -hex 32` makes one)",
                self.0.len()
            ),
        ))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self(value.to_owned()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// SQLite (`sqlite://file.db?mode=rwc`) or PostgreSQL (`postgres://...`) URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://attache.db?mode=rwc",
        hide_env_values = true,
        value_parser = parse_database_url
    )]
    pub database_url: String,
    /// SQLite only: `normal` (a commit survives a crash of the process) or `full` (it
    /// also survives a power loss, at the cost of a sync per commit).
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value = "normal")]
    pub sqlite_synchronous: SqliteSync,
    /// PostgreSQL only: the most connections the pool opens; a query beyond them
    /// waits for one. Every replica opens its own, so their sum must stay below the
    /// server's `max_connections`. At least 2: a storage migration's lock holds one
    /// for the whole run (or its wait), and the run needs another.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_max_connections: u32,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` as the environment says it (text when unset or unreadable), for
    /// the commands that take no flag for it and for a command line that does not parse.
    pub fn from_env() -> Self {
        std::env::var("LOG_FORMAT")
            .ok()
            .and_then(|value| Self::from_str(&value, true).ok())
            .unwrap_or(Self::Text)
    }
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSync {
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    Fs,
    S3,
}

#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Where files live: `fs` (local disk) or `s3` (an S3-compatible bucket).
    #[arg(long, env = "STORAGE_BACKEND", value_enum, default_value = "fs")]
    pub storage_backend: StorageBackend,
    /// Root folder of the `fs` backend (and the source of `storage migrate`).
    #[arg(long, env = "STORAGE_ROOT", default_value = "./uploads")]
    pub storage_root: PathBuf,
    /// Bucket name; required when STORAGE_BACKEND=s3.
    #[arg(long, env = "S3_BUCKET_NAME")]
    pub s3_bucket_name: Option<String>,
    /// Endpoint of an S3-compatible service (default: AWS).
    #[arg(long, env = "S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// Which S3-compatible service: sets the region and addressing style it needs
    /// (each overridable): `aws`, `r2`, `scaleway`, `b2`, `minio`, `garage`, `other`.
    #[arg(long, env = "S3_PROVIDER", value_enum, default_value = "other")]
    pub s3_provider: S3Provider,
    /// Region [default: `auto` with S3_PROVIDER=r2, `garage` with garage, the region
    /// S3_ENDPOINT_URL names with scaleway or b2 (else `fr-par` for scaleway), else
    /// us-east-1].
    #[arg(long, env = "S3_REGION")]
    pub s3_region: Option<String>,
    /// `path` (endpoint/bucket/key) or `virtual` (bucket.endpoint/key) [default:
    /// `virtual` with S3_PROVIDER=aws, else `path`].
    #[arg(long, env = "S3_ADDRESSING_STYLE", value_enum)]
    pub s3_addressing_style: Option<AddressingStyle>,
    /// The origin presigned URLs name, when clients reach the store by another name
    /// than attache does (`http://minio:9000` inside, `https://files.example.com`
    /// outside). attache itself keeps talking to S3_ENDPOINT_URL.
    #[arg(long, env = "S3_PUBLIC_ENDPOINT_URL")]
    pub s3_public_endpoint_url: Option<String>,
    /// Access key id; when both keys are unset, the ambient AWS configuration is used.
    #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<Secret>,
    /// Secret access key.
    #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<Secret>,
    /// Key prefix inside the bucket, joined with `/`: letters, digits, `.`, `_`, `-`,
    /// `~`, `=` in each segment, so that every URL names it as it is.
    #[arg(long, env = "S3_PREFIX", default_value = "", value_parser = parse_s3_prefix)]
    pub s3_prefix: String,
    /// Size of the parts of a large object's S3 multipart upload, each streamed from
    /// its source, none held in memory; 5 MiB to 5 GiB (S3's limits); at most 10,000 parts.
    #[arg(long, env = "S3_PART_SIZE_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(5 * 1024 * 1024..=5 * 1024 * 1024 * 1024))]
    pub s3_part_size_bytes: u64,
    /// fs only: sync each new file (and its folders) to disk before its row commits,
    /// so a stored upload also survives a power loss. Unset: as durable as the rows,
    /// synced on PostgreSQL and with SQLITE_SYNCHRONOUS=full ([`Self::files_synced`]).
    #[arg(long, env = "FSYNC_FILES", action = clap::ArgAction::Set)]
    pub fsync_files: Option<bool>,
}

/// An S3-compatible service whose needs attache knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum S3Provider {
    Aws,
    R2,
    Scaleway,
    B2,
    Minio,
    Garage,
    Other,
}

/// Where the bucket goes in a request's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddressingStyle {
    Path,
    Virtual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UrlMode {
    Signed,
    Public,
}

#[derive(Debug, Clone, Args)]
pub struct UrlConfig {
    /// `signed`: presigned S3 URLs or signed download links; `public`: unsigned URLs.
    #[arg(long, env = "URL_MODE", value_enum, default_value = "signed")]
    pub url_mode: UrlMode,
    /// Base of unsigned URLs on s3 when URL_MODE=public (custom domain, CDN, public R2 URL).
    #[arg(long, env = "S3_PUBLIC_BASE_URL")]
    pub s3_public_base_url: Option<String>,
    /// Lifetime of a signed URL, in seconds.
    #[arg(long, env = "URL_TTL_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub url_ttl_seconds: u64,
    /// Longest lifetime `url(ttlSeconds:)` may ask for, in seconds: a link opens
    /// without a token, so it may outlive the token that made it by this much.
    #[arg(long, env = "MAX_URL_TTL_SECONDS", default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub max_url_ttl_seconds: u64,
    /// HMAC key for signed links; random at startup when unset (links then die at restart).
    #[arg(long, env = "SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<Secret>,
}

#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// HS256 secret for client tokens.
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key_file"
    )]
    pub jwt_secret: Option<Secret>,
    /// The secret before JWT_SECRET, still accepted (never used to mint) while
    /// tokens signed with it expire: a rotation without a cutover.
    #[arg(
        long,
        env = "JWT_PREVIOUS_SECRET",
        hide_env_values = true,
        requires = "jwt_secret",
        conflicts_with = "jwt_public_key_file"
    )]
    pub jwt_previous_secret: Option<Secret>,
    /// PEM public key for RS256 / ES256 / EdDSA tokens (instead of JWT_SECRET); the
    /// file may hold several keys (during a rotation), each accepted.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, checked when set.
    #[arg(long, env = "JWT_ISSUER", value_parser = parse_claim_value)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, checked when set.
    #[arg(long, env = "JWT_AUDIENCE", value_parser = parse_claim_value)]
    pub jwt_audience: Option<String>,
    /// Claim that names the tenant (`sub` for a tenant per subject; not another
    /// registered claim, nor `scope`).
    #[arg(long, env = "TENANT_CLAIM", default_value = "tenant_id", value_parser = parse_tenant_claim)]
    pub tenant_claim: String,
}

impl AuthConfig {
    /// Neither a secret nor a public key: `serve` makes a secret of its own and hands
    /// out development tokens.
    pub fn is_development(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key_file.is_none()
    }
}

/// The longest `BODY_TIMEOUT_SECONDS` may be: what bounds an upload's life on any
/// replica, whatever its own setting.
pub const MAX_BODY_TIMEOUT_SECONDS: u64 = 3600;

/// The largest file any setting may allow: GraphQL's `Int` (SPEC's `byteSize: Int!`)
/// is 32 bits, and a larger size breaks the clients and gateways that check it.
/// (S3's 10,000 parts of at least 5 MiB hold it many times over.)
pub const MOST_FILE_BYTES: u64 = i32::MAX as u64;

/// The most files a quota may allow: `usage.quotaFiles` is a GraphQL `Int` (32
/// bits), and a limit the API cannot show would be shown as another.
pub const MOST_QUOTA_FILES: u64 = i32::MAX as u64;

#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Largest decoded file accepted; a collection's own limit applies when lower. At
    /// most 2147483647 (2 GiB - 1): `byteSize` is a GraphQL `Int`, 32 bits.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 10 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=MOST_FILE_BYTES))]
    pub max_upload_bytes: u64,
    /// Largest GraphQL request body, and the most bytes of arguments a request's fields
    /// and directives read, a variable counted at each use [default:
    /// ceil(MAX_UPLOAD_BYTES*4/3) + 1 MiB].
    #[arg(long, env = "MAX_REQUEST_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_bytes: Option<u64>,
    /// Most files one request may store or announce, whatever its aliases, batch
    /// arrays or multipart parts.
    #[arg(long, env = "MAX_BATCH_FILES", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_batch_files: u64,
    /// Upload requests read and processed at once; more wait their turn (bounds memory)
    /// [default: twice the cores the process may use, at least 8 and at most 64].
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_concurrent_uploads: Option<u64>,
    /// Seconds an upload waits for a free slot before it is answered 503 with
    /// Retry-After.
    #[arg(long, env = "UPLOAD_QUEUE_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upload_queue_timeout_seconds: u64,
}

/// Bounds on one GraphQL request, each checked before the work grows with it: the
/// text is scanned before it is parsed, the parsed document measured before it is
/// validated, the batch counted before anything runs.
#[derive(Debug, Clone, Args)]
pub struct QueryLimits {
    /// Deepest selection nesting an operation may have (fragments expanded).
    #[arg(long, env = "MAX_QUERY_DEPTH", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=256))]
    pub max_query_depth: u32,
    /// Complexity budget of a request, batch arrays included: every field of the
    /// operations that run costs 1 (aliases, `__typename` and introspection too), each
    /// operation 1 more.
    #[arg(long, env = "MAX_QUERY_COMPLEXITY", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub max_query_complexity: u32,
    /// Deepest nesting of brackets in a query text (selections, arguments, list and
    /// object values, list types), checked before parsing, and of fragments spread
    /// inside fragments.
    #[arg(long, env = "MAX_QUERY_NESTING", default_value_t = 32, value_parser = clap::value_parser!(u32).range(4..=256))]
    pub max_query_nesting: u32,
    /// Most tokens in a query text (a string literal counts as one). Checked before
    /// parsing.
    #[arg(long, env = "MAX_QUERY_TOKENS", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(100..=10_000_000))]
    pub max_query_tokens: u32,
    /// Most fields (with their directives and argument values, a list's every item)
    /// after expanding every fragment spread, with multiplicity, summed over every
    /// operation and fragment of a request. Checked before validation.
    #[arg(long, env = "MAX_EXPANDED_FIELDS", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub max_expanded_fields: u32,
    /// Most rows a request may list, batch arrays included: each `attachments` counts
    /// its `first` (20 when not given), each `totalCount` 100 (a count reads every
    /// row of its scope). Checked before anything runs.
    #[arg(long, env = "MAX_QUERY_ROWS", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(200..=10_000_000))]
    pub max_query_rows: u32,
    /// Most operations in one batch array.
    #[arg(long, env = "MAX_BATCH_OPERATIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_batch_operations: u32,
    /// Most JSON values in a request's body, or in each of a multipart body's
    /// `operations` and `map`: every number, string, key, list and object.
    /// Counted before anything is parsed.
    #[arg(long, env = "MAX_JSON_VALUES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=100_000_000))]
    pub max_json_values: u64,
}

impl Default for QueryLimits {
    /// The documented defaults of the `#[arg]`s above, whatever the environment says:
    /// for code that runs the bounds outside `serve` (tests, the fuzz target).
    fn default() -> Self {
        use clap::FromArgMatches;
        let command =
            Self::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["defaults"]);
        Self::from_arg_matches(&matches).expect("the documented defaults are valid")
    }
}

/// Bounds on connections and on how slowly a client may send or read.
#[derive(Debug, Clone, Args)]
pub struct ConnectionLimits {
    /// Most open client connections; more wait in the listen backlog. Lowered to fit
    /// the open-file limit, which is raised to its hard limit at start.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..=1_000_000))]
    pub max_connections: u32,
    /// Seconds a connection may take to send a request's headers, counted from the
    /// moment it waits for one: also the idle timeout of keep-alive connections.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request body may go without a byte, the first one included.
    #[arg(long, env = "BODY_IDLE_TIMEOUT_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_idle_timeout_seconds: u64,
    /// Slowest average a request body may arrive at, in bytes per second, once
    /// BODY_IDLE_TIMEOUT_SECONDS have passed.
    #[arg(long, env = "MIN_BODY_BYTES_PER_SECOND", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub min_body_bytes_per_second: u64,
    /// Seconds a whole GraphQL request body may be waited for, the files of a
    /// multipart body included (time spent storing an earlier file does not count):
    /// a client that trickles holds an upload slot no longer.
    #[arg(long, env = "BODY_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=MAX_BODY_TIMEOUT_SECONDS))]
    pub body_timeout_seconds: u64,
    /// Seconds a response may wait for the client to read before the connection is
    /// closed: a stalled download holds no buffer for longer.
    #[arg(long, env = "SEND_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub send_timeout_seconds: u64,
    /// Slowest a client may read a response, in bytes per second of waiting for it,
    /// once the response's writes have waited SEND_TIMEOUT_SECONDS in all (0: no
    /// floor): a client that reads a byte now and then holds its connection no longer.
    #[arg(long, env = "MIN_SEND_BYTES_PER_SECOND", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub min_send_bytes_per_second: u64,
}

impl ConnectionLimits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.body_idle_timeout_seconds)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_seconds)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_seconds)
    }
}

impl LimitsConfig {
    /// `MAX_CONCURRENT_UPLOADS`, or two per core by default: an upload uses one core
    /// at a time and waits for its client and the disk in between, so fewer slots
    /// than cores would leave cores idle; 64 at most keeps the memory they hold (a
    /// few MiB each) bounded on big machines.
    pub fn concurrent_uploads(&self) -> usize {
        match self.max_concurrent_uploads {
            Some(slots) => usize::try_from(slots).unwrap_or(usize::MAX),
            None => std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .saturating_mul(2)
                .clamp(8, 64),
        }
    }

    pub fn request_bytes(&self) -> u64 {
        self.max_request_bytes.unwrap_or_else(|| {
            self.max_upload_bytes
                .saturating_mul(4)
                .div_ceil(3)
                .saturating_add(1024 * 1024)
        })
    }
}

/// Events (SPEC 10): where they go, how they are signed, how deliveries are retried
/// and how long delivered events are kept.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Comma-separated receivers of events (http or https URLs); each gets every event.
    #[arg(
        long,
        env = "WEBHOOK_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_urls: Vec<String>,
    /// Standard Webhooks signing secret (`whsec_` + base64); required with WEBHOOK_URLS.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// Seconds a receiver has to answer one delivery.
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout_seconds: u64,
    /// Attempts before a delivery is marked failed (`attache events retry` revives it);
    /// unset, a delivery is retried until a 2xx (SPEC 10).
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_max_attempts: Option<u32>,
    /// Delay before the first retry, in milliseconds; it doubles at every failure.
    #[arg(long, env = "WEBHOOK_BACKOFF_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_backoff_base_ms: u64,
    /// Longest delay between two attempts, in seconds.
    #[arg(long, env = "WEBHOOK_BACKOFF_MAX_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_backoff_max_seconds: u64,
    /// How often the dispatcher looks for due deliveries, in milliseconds.
    #[arg(long, env = "EVENTS_POLL_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=1000))]
    pub events_poll_interval_ms: u64,
    /// Days a fully delivered event is kept before it is pruned.
    #[arg(long, env = "EVENTS_RETENTION_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub events_retention_days: u32,
}

/// The quota of every tenant without one of its own (`attache tenant quota set`).
#[derive(Debug, Clone, Copy, Args)]
pub struct QuotaConfig {
    /// Bytes each tenant may store (`5GiB`, `500MB` or a number); unset: unlimited.
    #[arg(long, env = "TENANT_QUOTA_BYTES", value_parser = parse_byte_size)]
    pub tenant_quota_bytes: Option<u64>,
    /// Files each tenant may store; unset: unlimited.
    #[arg(long, env = "TENANT_QUOTA_FILES", value_parser = clap::value_parser!(u64).range(1..=MOST_QUOTA_FILES))]
    pub tenant_quota_files: Option<u64>,
}

/// Everything `attache serve` needs; commands flatten the parts they use.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// HTTP listen address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Origin used to build absolute URLs [default: http://<LISTEN_ADDR>, or
    /// http://localhost:PORT when listening on 0.0.0.0 or ::].
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub urls: UrlConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub query_limits: QueryLimits,
    #[command(flatten)]
    pub connections: ConnectionLimits,
    /// A second listen address for `/metrics` (and `/healthz`); when set, the main listener no
    /// longer serves it (keep it off the public network).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Comma-separated origins allowed by CORS; unset: no CORS headers.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    #[command(flatten)]
    pub events: EventsConfig,
    #[command(flatten)]
    pub quotas: QuotaConfig,
    /// With s3, copy not-yet-migrated files of STORAGE_ROOT into the bucket in the background at startup.
    #[arg(long, env = "AUTO_MIGRATE_STORAGE", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_migrate_storage: bool,
    /// How long a deleted attachment's file stays in storage, so that restoring a
    /// backup taken before the delete brings it back whole: `7d`, `12h`. The default,
    /// `0`, removes it with its row, as SPEC 8 says (and erasure requests need).
    #[arg(long, env = "DELETED_FILES_RETENTION", default_value = "0", value_parser = parse_retention)]
    pub deleted_files_retention: Duration,
    /// Seconds that requests in flight get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_seconds: u64,
    /// Log lines as `text` for people or `json` for machines.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// TOML file replacing the built-in collections.
    #[arg(long, env = "COLLECTIONS_FILE")]
    pub collections_file: Option<PathBuf>,
}

/// `value` as the base of the absolute URLs attache hands out, without its trailing
/// `/`: an http(s) URL with a host and nothing after its path, checked at startup
/// rather than found in the first link a client cannot open.
fn base_url(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    let parsed = url::Url::parse(value).map_err(|err| {
        ConfigError::new(
            variable,
            format!("is not a URL ({err}): write it whole, for example https://files.example.com"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::new(
            variable,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(ConfigError::new(
            variable,
            "must end with its path: no user, `?query` or `#fragment`",
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// One origin of `CORS_ALLOWED_ORIGINS` as browsers send it in `Origin`
/// (`https://app.example.com`, no path, lower case); `*` is refused, since a
/// browser app's origin is always known.
pub fn cors_origin(value: &str) -> Result<String, ConfigError> {
    const VARIABLE: &str = "CORS_ALLOWED_ORIGINS";
    let value = value.trim();
    if value.contains('*') {
        return Err(ConfigError::new(
            VARIABLE,
            "wildcards are not accepted: list your apps' origins, comma-separated, for \
             example https://app.example.com,https://staging.example.com",
        ));
    }
    if value.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            VARIABLE,
            format!("`{value}` holds a space: separate origins with commas"),
        ));
    }
    let parsed = url::Url::parse(value).map_err(|err| {
        ConfigError::new(
            VARIABLE,
            format!("`{value}` is not an origin ({err}): write it as https://app.example.com"),
        )
    })?;
    let origin = parsed.origin().ascii_serialization();
    if !matches!(parsed.scheme(), "http" | "https") || origin != value.trim_end_matches('/') {
        return Err(ConfigError::new(
            VARIABLE,
            format!("`{value}` is not an origin: write scheme, host and port only, as {origin}"),
        ));
    }
    Ok(origin)
}

impl Config {
    /// The origin of absolute URLs: PUBLIC_BASE_URL, else the address actually bound.
    pub fn public_base_url(&self, bound: SocketAddr) -> Result<String, ConfigError> {
        match &self.public_base_url {
            Some(url) => base_url("PUBLIC_BASE_URL", url),
            None if bound.ip().is_unspecified() => Ok(format!("http://localhost:{}", bound.port())),
            None => Ok(format!("http://{bound}")),
        }
    }

    /// Rules that span several variables; clap already checked each value alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.storage.validate()?;
        let keys = [
            ("JWT_SECRET", self.auth.jwt_secret.as_ref()),
            (
                "JWT_PREVIOUS_SECRET",
                self.auth.jwt_previous_secret.as_ref(),
            ),
            ("SIGNING_KEY", self.urls.signing_key.as_ref()),
        ];
        for (variable, key) in keys {
            if let Some(key) = key {
                key.long_enough(variable)?;
            }
        }
        if self.storage.storage_backend == StorageBackend::S3
            && self.urls.url_mode == UrlMode::Public
            && self.urls.s3_public_base_url.is_none()
        {
            return Err(ConfigError::new(
                "S3_PUBLIC_BASE_URL",
                "required when URL_MODE=public and STORAGE_BACKEND=s3",
            ));
        }
        if let Some(url) = &self.urls.s3_public_base_url {
            base_url("S3_PUBLIC_BASE_URL", url)?;
        }
        if self.urls.url_ttl_seconds > self.urls.max_url_ttl_seconds {
            return Err(ConfigError::new(
                "URL_TTL_SECONDS",
                format!(
                    "is {}, above MAX_URL_TTL_SECONDS ({}): lower it, or raise the cap",
                    self.urls.url_ttl_seconds, self.urls.max_url_ttl_seconds
                ),
            ));
        }
        let origins = self.cors_allowed_origins.iter();
        for origin in origins.filter(|origin| !origin.trim().is_empty()) {
            cors_origin(origin)?;
        }
        Ok(())
    }

    pub fn url_ttl(&self) -> Duration {
        Duration::from_secs(self.urls.url_ttl_seconds)
    }
}

impl StorageConfig {
    /// Whether new files are synced to disk: FSYNC_FILES, or when unset, whether the
    /// `database`'s commits survive a power loss. A row that outlives its file (a
    /// commit PostgreSQL synced, a file the kernel had not yet written) names a file
    /// that is gone. Knowing no database (`storage check`), the stricter: synced.
    pub fn files_synced(&self, database: Option<&DatabaseConfig>) -> bool {
        self.fsync_files.unwrap_or_else(|| {
            database.is_none_or(|database| {
                !database.database_url.starts_with("sqlite:")
                    || database.sqlite_synchronous == SqliteSync::Full
            })
        })
    }

    /// S3_REGION, or the provider's region: Scaleway's and Backblaze's endpoints
    /// name theirs (`s3.fr-par.scw.cloud`, `s3.us-west-004.backblazeb2.com`).
    pub fn region(&self) -> &str {
        let named_by_endpoint = |domain: &str| {
            let endpoint = self.s3_endpoint_url.as_deref()?;
            let host = endpoint.split("://").last()?.split(['/', ':']).next()?;
            host.strip_prefix("s3.")?.strip_suffix(domain)
        };
        match (&self.s3_region, self.s3_provider) {
            (Some(region), _) => region,
            (None, S3Provider::R2) => "auto",
            (None, S3Provider::Garage) => "garage",
            (None, S3Provider::Scaleway) => named_by_endpoint(".scw.cloud").unwrap_or("fr-par"),
            (None, S3Provider::B2) => named_by_endpoint(".backblazeb2.com").unwrap_or("us-east-1"),
            (None, _) => "us-east-1",
        }
    }

    /// S3_ADDRESSING_STYLE, or the provider's: AWS wants virtual-hosted requests;
    /// MinIO and Garage answer path-style ones unless a domain is configured for
    /// them, and R2, Scaleway and B2 answer both.
    pub fn addressing_style(&self) -> AddressingStyle {
        match (self.s3_addressing_style, self.s3_provider) {
            (Some(style), _) => style,
            (None, S3Provider::Aws) => AddressingStyle::Virtual,
            (None, _) => AddressingStyle::Path,
        }
    }

    /// For the commands that read what a server stored (`storage sweep`, `backup
    /// list` and `restore`): on fs its folder, which a mistyped STORAGE_ROOT would
    /// make empty, to be found holding nothing.
    pub fn require_existing_root(&self) -> Result<(), ConfigError> {
        if self.storage_backend == StorageBackend::Fs && !self.storage_root.is_dir() {
            return Err(ConfigError::new(
                "STORAGE_ROOT",
                format!(
                    "{} is not a folder: point STORAGE_ROOT at the folder the server stores \
                     its files in",
                    self.storage_root.display()
                ),
            ));
        }
        Ok(())
    }

    /// The S3 settings that go together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let storage = self;
        if storage.storage_backend == StorageBackend::S3 {
            if storage.s3_bucket_name.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::new(
                    "S3_BUCKET_NAME",
                    "required when STORAGE_BACKEND=s3",
                ));
            }
            if storage.s3_access_key.is_some() != storage.s3_secret_key.is_some() {
                let missing = if storage.s3_access_key.is_none() {
                    "S3_ACCESS_KEY"
                } else {
                    "S3_SECRET_KEY"
                };
                return Err(ConfigError::new(
                    missing,
                    "S3_ACCESS_KEY and S3_SECRET_KEY go together",
                ));
            }
        }
        // Read as URLs only when a request is signed, they failed there with the
        // store's words ("failed to lookup address", "invalid uri character").
        let endpoints = [
            ("S3_ENDPOINT_URL", &storage.s3_endpoint_url),
            ("S3_PUBLIC_ENDPOINT_URL", &storage.s3_public_endpoint_url),
        ];
        for (variable, url) in endpoints {
            if let Some(url) = url {
                base_url(variable, url)?;
            }
        }
        if storage
            .s3_region
            .as_deref()
            .is_some_and(|region| region.trim().is_empty())
        {
            return Err(ConfigError::new(
                "S3_REGION",
                "is empty: unset it, or name the bucket's region (us-east-1, say)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_age, parse_byte_size};

    /// A century is allowed as people write it (`humantime`'s years are 365.25
    /// days), a day more is not.
    #[test]
    fn ages_go_up_to_a_century() {
        assert!(parse_age("100y").is_ok());
        assert!(parse_age("36525d").is_ok());
        assert!(parse_age("36526d").is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("5GiB"), Ok(5 << 30));
        assert_eq!(parse_byte_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_byte_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_byte_size("2g"), Ok(2_000_000_000));
        // Whole numbers past 2^53, exactly: a float stored 9007199254740992.
        assert_eq!(
            parse_byte_size("9007199254740993"),
            Ok(9_007_199_254_740_993)
        );
        assert_eq!(parse_byte_size("9223372036854775807"), Ok(i64::MAX as u64));
        for bad in [
            "",
            "GiB",
            "5 parsecs",
            "0",
            "-1",
            "99999999999TiB",
            "9223372036854775808",
            "8EiB",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    /// One group of settings as `attache` parses it from `args`.
    fn parsed<A: clap::Args + clap::FromArgMatches>(args: &[&str]) -> Result<A, clap::Error> {
        let command = A::augment_args(clap::Command::new("attache"));
        let matches =
            command.try_get_matches_from(std::iter::once("attache").chain(args.iter().copied()))?;
        A::from_arg_matches(&matches)
    }

    /// S3 takes parts of 5 MiB to 5 GiB (but the last): other sizes fail at start.
    #[test]
    fn an_s3_part_size_is_one_s3_takes() {
        let parse = |size: &str| {
            parsed::<super::StorageConfig>(&["--s3-part-size-bytes", size])
                .map(|storage| storage.s3_part_size_bytes)
        };
        assert_eq!(parse("5242880").ok(), Some(5 << 20));
        assert_eq!(parse("5368709120").ok(), Some(5 << 30));
        for refused in ["0", "5242879", "5368709121"] {
            assert!(parse(refused).is_err(), "{refused}");
        }
    }

    /// Unset, FSYNC_FILES follows the database: files are synced where commits
    /// survive a power loss (PostgreSQL, SQLITE_SYNCHRONOUS=full); set, it is taken as
    /// it is.
    #[test]
    fn files_are_synced_as_the_rows_are_unless_set() {
        let synced = |args: &[&str]| {
            let config: super::Config = parsed(args).expect("parsed");
            config.storage.files_synced(Some(&config.database))
        };
        let postgres = ["--database-url", "postgres://postgres@127.0.0.1/attache"];
        assert!(synced(&postgres));
        assert!(!synced(&[]), "SQLite's normal commits survive a crash only");
        assert!(synced(&["--sqlite-synchronous", "full"]));
        assert!(!synced(
            &[&postgres[..], &["--fsync-files", "false"]].concat()
        ));
        assert!(synced(&["--fsync-files", "true"]));
        let alone: super::StorageConfig = parsed(&[]).expect("parsed");
        assert!(alone.files_synced(None), "no database known: the stricter");
    }

    /// Scaleway's and Backblaze's presets take the region their endpoint names.
    #[test]
    fn a_region_comes_from_the_provider_s_endpoint() {
        let region = |args: &[&str]| {
            let storage: super::StorageConfig = parsed(args).expect("parsed");
            storage.region().to_owned()
        };
        let scaleway = [
            "--s3-provider",
            "scaleway",
            "--s3-endpoint-url",
            "https://s3.nl-ams.scw.cloud",
        ];
        assert_eq!(region(&scaleway), "nl-ams");
        let b2 = [
            "--s3-provider",
            "b2",
            "--s3-endpoint-url",
            "https://s3.us-west-004.backblazeb2.com/",
        ];
        assert_eq!(region(&b2), "us-west-004");
        let mut set = b2.to_vec();
        set.extend(["--s3-region", "eu-central-003"]);
        assert_eq!(region(&set), "eu-central-003", "S3_REGION wins");
        assert_eq!(region(&["--s3-provider", "r2"]), "auto");
    }

    /// Unset, `MAX_CONCURRENT_UPLOADS` grows with the cores (two each, 8 to 64); set,
    /// it is taken as it is.
    #[test]
    fn upload_slots_follow_the_cores_unless_set() {
        let slots = |args: &[&str]| {
            parsed::<super::LimitsConfig>(args)
                .map(|limits| limits.concurrent_uploads())
                .expect("parsed")
        };
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        assert_eq!(slots(&[]), (2 * cores).clamp(8, 64));
        assert_eq!(slots(&["--max-concurrent-uploads", "3"]), 3);
        assert_eq!(slots(&["--max-concurrent-uploads", "1024"]), 1024);
    }
}
