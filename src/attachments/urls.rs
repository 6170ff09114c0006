//! The absolute URLs attache hands to clients: `url` opens without headers (presigned
//! S3 URL, signed link to the download route, or a public URL), `downloadUrl` needs
//! the bearer token, and direct uploads get a presigned or signed PUT.

use std::sync::atomic::Ordering;
use std::time::Duration;

use entity::attachment;
use uuid::Uuid;

use crate::app::App;
use crate::auth::link::LinkPurpose;
use crate::config::{StorageBackend, UrlMode};
use crate::disposition::{content_disposition, download_filename};
use crate::error::AppResult;
use crate::storage::StorageKey;

/// The requested lifetime, or the configured default, kept within 1 s and
/// `MAX_URL_TTL_SECONDS` (at most 7 days, S3's own limit).
pub fn clamp_ttl(app: &App, requested_seconds: Option<i64>) -> Duration {
    let urls = &app.config.urls;
    let max = i64::try_from(urls.max_url_ttl_seconds).unwrap_or(i64::MAX);
    let seconds = requested_seconds.map_or(urls.url_ttl_seconds, |seconds| {
        u64::try_from(seconds.clamp(1, max)).unwrap_or(1)
    });
    Duration::from_secs(seconds)
}

/// The authenticated download route of an attachment.
pub fn download_url(app: &App, id: Uuid) -> String {
    format!("{}/api/attachments/{id}/download", app.public_base_url)
}

/// A URL that works without headers until `ttl` has passed (for ever when public);
/// the same URL for a while ([`crate::recent_urls`]), so that browsers' caches keep
/// the file across queries.
pub async fn browser_url(app: &App, row: &attachment::Model, ttl: Duration) -> AppResult<String> {
    let urls = &app.config.urls;
    if let (UrlMode::Public, StorageBackend::Fs) = (urls.url_mode, app.storage.backend()) {
        return Ok(format!("{}/media/{}", app.public_base_url, row.storage_key));
    }
    // Not yet copied into the bucket: neither a public nor a presigned URL finds it,
    // the download route's fallback to the local copy does. Never kept: once the
    // copy is done, the next query gets the bucket's URL.
    if !in_bucket(app, row).await {
        return Ok(signed_link(
            app,
            LinkPurpose::Download,
            row.id,
            &row.tenant_id,
            ttl,
        ));
    }
    let made = bucket_or_route_url(app, row, ttl);
    app.recent_urls.get_or_make(row.id, ttl, made).await
}

/// The bucket's public URL, a presigned one, or a signed link to the route.
async fn bucket_or_route_url(
    app: &App,
    row: &attachment::Model,
    ttl: Duration,
) -> AppResult<String> {
    let urls = &app.config.urls;
    if urls.url_mode == UrlMode::Public {
        let base = urls
            .s3_public_base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let prefix = app.config.storage.s3_prefix.trim_matches('/');
        return Ok(match prefix {
            "" => format!("{base}/{}", row.storage_key),
            prefix => format!("{base}/{prefix}/{}", row.storage_key),
        });
    }
    let key = StorageKey::from_stored(row.storage_key.clone());
    let filename = download_filename(&row.filename, &row.content_type);
    let disposition = content_disposition(&filename, false);
    let presigned = app
        .storage
        .presign_read(&key, ttl, &row.content_type, &disposition)
        .await
        .unwrap_or_else(|err| {
            // Credentials of a role that expire before `ttl` has passed (a web
            // identity's last an hour) cannot sign for that long; the route can, and
            // reads the bucket with fresh ones.
            tracing::warn!(error = %err, "cannot presign a download; a signed link to the route instead");
            None
        });
    Ok(presigned
        .unwrap_or_else(|| signed_link(app, LinkPurpose::Download, row.id, &row.tenant_id, ttl)))
}

/// Whether a presigned URL would find the object: always, unless files are still
/// moving to the bucket and this one is not yet recorded as copied. When that cannot
/// be read, no: the route a signed link opens reads either place, and one row's
/// failed lookup does not fail a whole listing's page.
async fn in_bucket(app: &App, row: &attachment::Model) -> bool {
    if app.local_fallback.is_none() || app.migration_done.load(Ordering::Relaxed) {
        return true;
    }
    let bucket = app.storage.location();
    super::migrate::is_migrated(&app.db, &row.storage_key, bucket)
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, key = %row.storage_key, "cannot tell whether a file is in the bucket yet; a signed link to the route instead");
            false
        })
}

/// attache's own signed upload route, for direct uploads on fs.
pub fn upload_link(app: &App, id: Uuid, tenant: &str, ttl: Duration) -> String {
    signed_link(app, LinkPurpose::Upload, id, tenant, ttl)
}

fn signed_link(app: &App, purpose: LinkPurpose, id: Uuid, tenant: &str, ttl: Duration) -> String {
    let expires =
        chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let signature = app.links.sign(purpose, id, tenant, expires);
    let route = match purpose {
        LinkPurpose::Download => download_url(app, id),
        LinkPurpose::Upload => format!("{}/api/uploads/{id}", app.public_base_url),
    };
    format!("{route}?tenant={tenant}&expires={expires}&signature={signature}")
}
