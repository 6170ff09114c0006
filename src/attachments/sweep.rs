//! `storage sweep`: removes what a crash or an abandoned upload left in storage.
//! Objects under the collections' layouts that no row references (a crash between
//! the object write and the row commit), staging objects no direct upload names,
//! expired direct uploads, objects whose deletion is still pending, and S3
//! multipart uploads a crash left unfinished. Only objects and uploads older than
//! a threshold are touched, so an upload in flight (object written, row not yet
//! committed; parts still arriving) is never swept: an upload's intent and its
//! unfinished S3 upload count from the upload's start, so below the intent grace
//! only `--older-than 0s` (a stopped server) takes them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use entity::{attachment, direct_upload, storage_deletion};
use futures::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::storage::StorageKey;

/// Why an object is (or would be) removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No row references it.
    Orphan,
    /// A direct upload that expired without completion.
    ExpiredUpload,
    /// Its row was deleted; its removal had failed before.
    PendingDeletion,
    /// The parts of an S3 multipart upload that never finished (a crash mid-upload).
    UnfinishedUpload,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Orphan => "orphan",
            Self::ExpiredUpload => "expired direct upload",
            Self::PendingDeletion => "pending deletion",
            Self::UnfinishedUpload => "unfinished multipart upload",
        })
    }
}

/// One object the sweep removed (or, on a dry run, would remove).
#[derive(Clone, Debug)]
pub struct Swept {
    pub key: String,
    pub reason: Reason,
}

/// Sweeps storage; `older_than` is the youngest age of an orphan it may remove.
pub async fn run(app: &App, older_than: Duration, dry_run: bool) -> AppResult<Vec<Swept>> {
    let mut swept = Vec::new();
    let cutoff = ago(older_than);
    for key in orphans(app, cutoff).await? {
        if !dry_run {
            app.storage
                .delete(&StorageKey::from_stored(key.clone()))
                .await
                .map_err(AppError::StorageUnavailable)?;
        }
        swept.push(Swept {
            key,
            reason: Reason::Orphan,
        });
    }
    let expired = match dry_run {
        true => super::direct::expired(app, chrono::Utc::now(), super::Batches::All)
            .await?
            .into_iter()
            .map(|pending| pending.storage_key)
            .collect(),
        false => super::in_batches(None, || super::direct::expire(app)).await?,
    };
    swept.extend(expired.into_iter().map(|key| Swept {
        key,
        reason: Reason::ExpiredUpload,
    }));
    // An upload's intent and its unfinished S3 upload are as old as the upload, not
    // as its last bytes: one younger than the intent grace may still be receiving
    // them (an orphan's age is its last write's, so `older_than` is enough there).
    let in_flight_for = match older_than.is_zero() {
        true => Duration::ZERO,
        false => super::intent_grace(app.config.connections.body_timeout())
            .to_std()
            .map_or(older_than, |grace| grace.max(older_than)),
    };
    let uploads_before = ago(in_flight_for);
    let recorded_before = chrono::DateTime::<chrono::Utc>::from(uploads_before);
    let intents = match older_than.is_zero() {
        true => super::Abandoned::RecordedBefore(recorded_before),
        false => super::Abandoned::After(recorded_before),
    };
    let deleted = match dry_run {
        true => super::pending_deletions(app, intents, super::Batches::All).await?,
        false => super::in_batches(None, || super::retry_deletions(app, intents)).await?,
    };
    swept.extend(deleted.into_iter().map(|key| Swept {
        key,
        reason: Reason::PendingDeletion,
    }));
    swept.extend(abort_unfinished(app, uploads_before, dry_run).await?);
    Ok(swept)
}

/// The spools of base64 uploads that a killed process left in the staging folder
/// on fs, removed; their keys. A spool is written before its upload is parsed, so
/// no intent names it: it counts as abandoned once unwritten for longer than any
/// upload can last on any replica ([`crate::config::MAX_BODY_TIMEOUT_SECONDS`]), and
/// named by no row (a direct upload's object waits for its completion).
pub async fn abandoned_spools(app: &App) -> AppResult<Vec<String>> {
    let longest_body = Duration::from_secs(crate::config::MAX_BODY_TIMEOUT_SECONDS);
    let longest = super::intent_grace(longest_body)
        .to_std()
        .unwrap_or(longest_body);
    let unwritten = app
        .storage
        .staging_unwritten_for(longest)
        .await
        .map_err(AppError::StorageUnavailable)?;
    let keys: Vec<String> = unwritten.into_iter().map(StorageKey::into_string).collect();
    let mut removed = Vec::new();
    // In batches: a direct upload's object waits days for its completion, so the
    // folder may hold more old files than one query can name.
    for batch in keys.chunks(crate::db::VALUES_PER_LOOKUP) {
        let known = referenced(app, batch).await?;
        for key in batch.iter().filter(|key| !known.contains(*key)) {
            app.storage
                .delete(&StorageKey::from_stored(key.clone()))
                .await
                .map_err(AppError::StorageUnavailable)?;
            removed.push(key.clone());
        }
    }
    Ok(removed)
}

/// The time `age` ago (the epoch, for an age past it).
fn ago(age: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Aborts the multipart uploads begun before `cutoff` under the collections' layouts
/// and the staging keys (never a backup's), which no upload in flight can still be
/// sending: their parts are stored, and billed, under no object.
async fn abort_unfinished(app: &App, cutoff: SystemTime, dry_run: bool) -> AppResult<Vec<Swept>> {
    let unfinished = app
        .storage
        .unfinished_uploads(cutoff)
        .await
        .map_err(AppError::StorageUnavailable)?;
    let mut swept = Vec::new();
    for (key, upload) in unfinished {
        if !app.collections.covers(key.as_str()) && !StorageKey::is_staging(key.as_str()) {
            continue;
        }
        if !dry_run {
            app.storage
                .abort_upload(&upload)
                .await
                .map_err(AppError::StorageUnavailable)?;
        }
        swept.push(Swept {
            key: key.into_string(),
            reason: Reason::UnfinishedUpload,
        });
    }
    Ok(swept)
}

/// Objects of the collections' layouts and direct uploads' staging keys (a replayed
/// upload URL writes one after completion), last modified before `cutoff`, that no
/// attachment, direct upload or pending deletion names.
async fn orphans(app: &App, cutoff: SystemTime) -> AppResult<Vec<String>> {
    let listing = app
        .storage
        .list()
        .await
        .map_err(AppError::StorageUnavailable)?;
    let mut candidates = Box::pin(listing.filter_map(|object| {
        std::future::ready(match object {
            Ok(object)
                if !app.collections.covers(&object.key) && !StorageKey::is_staging(&object.key) =>
            {
                None
            }
            other => Some(other),
        })
    }))
    .chunks(crate::db::VALUES_PER_LOOKUP);
    let mut orphans = Vec::new();
    while let Some(chunk) = candidates.next().await {
        let mut old = Vec::with_capacity(chunk.len());
        for object in chunk {
            let object = object.map_err(AppError::StorageUnavailable)?;
            // Both listers give the time; one that did not would count as young.
            if object.modified.unwrap_or_else(SystemTime::now) < cutoff {
                old.push(object.key);
            }
        }
        let known = referenced(app, &old).await?;
        orphans.extend(old.into_iter().filter(|key| !known.contains(key)));
    }
    Ok(orphans)
}

/// Which of `keys` a row still names: an attachment, a direct upload in progress,
/// or a pending deletion or upload intent (removed by its own step).
///
/// Each read sees the latest commit, and a commit moves a key from one table to
/// another (an intent or a direct upload becomes an attachment, an attachment or a
/// direct upload a deletion), so the tables are read in the order keys move through
/// them, deletions last again: a key that moves between two reads is found by the
/// later one, never missed by both.
async fn referenced(app: &App, keys: &[String]) -> AppResult<HashSet<String>> {
    let mut known = HashSet::new();
    if keys.is_empty() {
        return Ok(known);
    }
    let deletions =
        || keys_in::<storage_deletion::Entity>(app, storage_deletion::Column::StorageKey, keys);
    known.extend(deletions().await?);
    known.extend(
        keys_in::<direct_upload::Entity>(app, direct_upload::Column::StorageKey, keys).await?,
    );
    known.extend(keys_in::<attachment::Entity>(app, attachment::Column::StorageKey, keys).await?);
    known.extend(deletions().await?);
    Ok(known)
}

/// The values of the key column `column` of table `E` that are among `keys`.
async fn keys_in<E: EntityTrait>(
    app: &App,
    column: E::Column,
    keys: &[String],
) -> Result<Vec<String>, sea_orm::DbErr> {
    E::find()
        .select_only()
        .column(column)
        .filter(column.is_in(keys.iter().cloned()))
        .into_tuple::<String>()
        .all(app.db.read())
        .await
}
