//! [`App`]: everything a request, a command or a test needs, built once from
//! [`Config`] by the same code path everywhere.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{JwtVerifier, LinkSigner, TokenMinter};
use crate::collections::Collections;
use crate::config::{Config, ConfigError, Secret, StorageBackend};
use crate::count_slots::CountSlots;
use crate::db::Database;
use crate::error::{AppError, AppResult, RETRY_AFTER_SECONDS};
use crate::events::Webhooks;
use crate::recent_urls::RecentUrls;
use crate::storage::Storage;
pub use crate::upload_slots::UploadSlot;
use crate::upload_slots::UploadSlots;

/// Per tenant, a usage estimate and when it was read.
pub type UsageEstimates = std::sync::Mutex<
    std::collections::HashMap<String, (crate::error::QuotaUsage, std::time::Instant)>,
>;

pub struct App {
    pub config: Config,
    /// The one door to the database: reads, group commits and transactions.
    pub db: Database,
    pub storage: Storage,
    /// `AUTO_MIGRATE_STORAGE` on s3: the local folder that downloads fall back to
    /// until the background migration has copied a file into the bucket.
    pub local_fallback: Option<Storage>,
    /// Set when shutdown begins: `/readyz` answers 503 while requests drain.
    pub draining: std::sync::atomic::AtomicBool,
    /// Set once the background migration has verified every file in the bucket.
    pub migration_done: std::sync::atomic::AtomicBool,
    pub verifier: JwtVerifier,
    /// Present in development mode only: mints the token `serve` prints.
    pub dev_minter: Option<TokenMinter>,
    pub links: LinkSigner,
    pub collections: Collections,
    /// Origin of every absolute URL attache hands out, without a trailing `/`.
    pub public_base_url: String,
    /// Bounds the upload requests read into memory at once, and the stores they
    /// start (see [`UploadSlot`]), shared fairly among tenants.
    pub upload_slots: Arc<UploadSlots>,
    /// Where events go and how they are delivered.
    pub webhooks: Webhooks,
    /// Browser URLs made lately, handed out again so that browsers' caches work.
    pub recent_urls: RecentUrls,
    /// A share of the database for each tenant's counts.
    pub count_slots: CountSlots,
    /// Whether some tenant has a quota of its own, as last counted (every minute):
    /// without one and without `TENANT_QUOTA_*`, uploads skip the quota's early read.
    pub own_quotas_exist: std::sync::atomic::AtomicBool,
    /// Tenants' usage as this process last read it plus what it stored since, for
    /// the quota's early refusal (`quotas::check`, which keeps it).
    pub usage_estimates: UsageEstimates,
}

pub type SharedApp = Arc<App>;

impl App {
    /// Validates the configuration, connects to the database and builds storage.
    /// Migrations and the storage probe are the caller's to run.
    pub async fn build(config: Config, public_base_url: String) -> Result<App, ConfigError> {
        config.validate()?;
        let collections = Collections::load(config.collections_file.as_deref())?;
        let (verifier, dev_minter) = match JwtVerifier::from_config(&config.auth)? {
            Some(verifier) => (verifier, None),
            None => {
                let secret = random_secret();
                let verifier = JwtVerifier::hmac(secret.expose().as_bytes(), &config.auth);
                (verifier, Some(TokenMinter::new(&secret, &config.auth)))
            }
        };
        let links = match &config.urls.signing_key {
            Some(key) => LinkSigner::new(key.expose().as_bytes()),
            None => {
                tracing::warn!(
                    "SIGNING_KEY is not set: signed links use a random key and die at restart"
                );
                LinkSigner::new(random_secret().expose().as_bytes())
            }
        };
        let webhooks = Webhooks::from_config(&config.events)?;
        crate::telemetry::prometheus();
        let fsync_files = config.storage.files_synced(Some(&config.database));
        let storage = Storage::from_config(&config.storage, fsync_files)?;
        crate::telemetry::storage_backend(storage.backend_label());
        let local_fallback = match (config.auto_migrate_storage, storage.backend()) {
            (true, StorageBackend::S3) => {
                Some(Storage::local_source(&config.storage.storage_root)?)
            }
            _ => None,
        };
        let db = Database::open(&config.database).await?;
        let permits = config.limits.concurrent_uploads();
        Ok(App {
            db,
            storage,
            local_fallback,
            migration_done: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            verifier,
            dev_minter,
            links,
            collections,
            public_base_url,
            upload_slots: UploadSlots::new(permits),
            webhooks,
            recent_urls: RecentUrls::default(),
            count_slots: CountSlots::default(),
            own_quotas_exist: std::sync::atomic::AtomicBool::new(true),
            usage_estimates: UsageEstimates::default(),
            config,
        })
    }
}

fn random_secret() -> Secret {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
        .parse()
        .unwrap_or_else(|_| unreachable!("a hex string is never empty"))
}

impl App {
    /// A slot among the `MAX_CONCURRENT_UPLOADS` uploads held in memory at once, for
    /// an upload of `tenant`; after `UPLOAD_QUEUE_TIMEOUT_SECONDS` of waiting, a clear
    /// "busy" instead of a longer queue.
    pub async fn upload_permit(&self, tenant: &str) -> AppResult<UploadSlot> {
        let wait = Duration::from_secs(self.config.limits.upload_queue_timeout_seconds);
        self.upload_slots
            .take(tenant, wait)
            .await
            .ok_or(AppError::Overloaded(RETRY_AFTER_SECONDS))
    }
}
