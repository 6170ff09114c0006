//! Direct uploads (SPEC 6): the client declares a file, PUTs its bytes to a presigned
//! S3 URL (or attache's signed upload route on fs), then asks attache to complete it.
//! Completion reads the object back and runs the same checks as every other upload;
//! a mismatch removes the object. Unfinished uploads expire and are swept.

use bytes::Bytes;
use chrono::Utc;
use entity::{attachment, direct_upload};
use futures::Stream;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::app::{App, SharedApp, UploadSlot};
use crate::attachments::upload::{self, Draft, StreamCheck, Streamed, Target, sanitize_filename};
use crate::attachments::urls;
use crate::auth::{Access, Principal};
use crate::config::StorageBackend;
use crate::db::Writes;
use crate::error::{AppError, AppResult};
use crate::ids::SafeId;
use crate::media::MediaType;
use crate::quotas;
use crate::storage::{StorageKey, StreamWriteError};

/// What the client declares before sending the bytes.
pub struct Declaration<'a> {
    pub filename: &'a str,
    pub content_type: &'a str,
    pub byte_size: i64,
    pub sha256: &'a str,
}

/// An announced direct upload: where to PUT and with which headers.
pub struct Announced {
    pub id: Uuid,
    pub upload_url: String,
    pub headers: Vec<(String, String)>,
    pub expires_at: chrono::DateTime<Utc>,
}

/// Checks the declaration as far as it can be before the bytes exist, records it and
/// returns the URL to PUT to.
pub async fn announce(
    app: &App,
    principal: &Principal,
    target: Target,
    declared: Declaration<'_>,
) -> AppResult<Announced> {
    let byte_size = u64::try_from(declared.byte_size).unwrap_or(0);
    if byte_size == 0 {
        return Err(AppError::bad_input("byteSize must be positive"));
    }
    target.check_size(byte_size, app.config.limits.max_upload_bytes)?;
    // The name as it is stored (cut to 255 bytes), so that its extension says the
    // same here as on the other upload paths.
    let filename = sanitize_filename(declared.filename);
    let media = target.accept_declared(MediaType::declared(declared.content_type, &filename))?;
    let sha256 = upload::parse_sha256(declared.sha256)?;
    // The declared size is reserved now, released if the upload never completes.
    let tenant = principal.tenant.as_str();
    quotas::check(app, tenant, declared.byte_size, 1).await?;
    let id = Uuid::now_v7();
    // The client writes to a staging key; completion stores the verified bytes under
    // the attachment's own key, which no URL ever names.
    let key = StorageKey::staging(id);
    let ttl = app.config.url_ttl();
    let now = Utc::now();
    let expires_at = crate::events::later(now, ttl);
    let presigned = app
        .storage
        .presign_write(&key, ttl, media.mime(), byte_size)
        .await
        .unwrap_or_else(|err| {
            // As for downloads (`urls::browser_url`): credentials that expire before
            // `ttl` cannot sign for that long; attache's own route takes the bytes.
            tracing::warn!(error = %err, "cannot presign a direct upload; attache's upload route instead");
            None
        });
    let (upload_url, mut headers) = match presigned {
        Some(presigned) => (presigned.url, presigned.headers),
        None => (
            urls::upload_link(app, id, principal.tenant.as_str(), ttl),
            Vec::new(),
        ),
    };
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("Content-Type".to_owned(), media.mime().to_owned()));
    }
    let announced = direct_upload::Model {
        id,
        tenant_id: principal.tenant.to_string(),
        owner_type: target.owner_type,
        owner_id: target.owner_id.map(|owner| owner.to_string()),
        filename,
        content_type: media.mime().to_owned(),
        byte_size: declared.byte_size,
        sha256,
        storage_key: key.into_string(),
        created_by: principal.subject.clone(),
        created_at: now,
        expires_at,
    }
    .into_active_model()
    .reset_all();
    let mut writes = Writes::new(app.db.backend());
    writes.insert(announced);
    quotas::grow(
        &mut writes,
        &app.config.quotas,
        tenant,
        declared.byte_size,
        1,
    );
    if let Err(err) = app.db.commit_shared(tenant, writes).await {
        return Err(quotas::refusal_or(app, tenant, err, declared.byte_size, 1).await);
    }
    Ok(Announced {
        id,
        upload_url,
        headers,
        expires_at,
    })
}

/// A pending direct upload that attache's signed upload route on fs may fill.
pub struct Receiving {
    id: Uuid,
    tenant: SafeId,
    key: StorageKey,
    declared: u64,
    content_type: String,
}

impl Receiving {
    /// The tenant's pending, unexpired upload `id`, once its link is checked; refused
    /// when the body announces more bytes than were declared, before it is read.
    pub async fn find(
        app: &App,
        id: Uuid,
        tenant: &SafeId,
        announced: Option<u64>,
    ) -> AppResult<Self> {
        let pending = unexpired_upload(app, tenant, id)
            .await?
            .ok_or_else(|| AppError::NotFound("no such direct upload".into()))?;
        let receiving = Self {
            id,
            tenant: tenant.clone(),
            key: StorageKey::from_stored(pending.storage_key),
            declared: u64::try_from(pending.byte_size).unwrap_or_default(),
            content_type: pending.content_type,
        };
        match announced.is_some_and(|announced| announced > receiving.declared) {
            true => Err(receiving.too_large()),
            false => Ok(receiving),
        }
    }

    /// Streams the body into storage, refusing more or fewer bytes than were
    /// declared; a completion sees the file only once it is whole.
    pub async fn store<S, E>(self, app: &App, body: S) -> AppResult<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // On fs the body goes to a key of its own first, linked into place once
        // whole; the intent of that key lets maintenance remove what a kill leaves.
        let partial = StorageKey::staging(Uuid::now_v7());
        let intent = [partial.as_str().to_owned()];
        let on_fs = app.storage.backend() == StorageBackend::Fs;
        if on_fs {
            super::record_intents(app, &intent).await?;
        }
        let stored = app
            .storage
            .put_whole(&self.key, &partial, body, self.declared, &self.content_type)
            .await;
        if on_fs && let Err(err) = super::forget_intents(app, &intent).await {
            tracing::warn!(key = %partial, error = %err, "cannot forget an upload's intent; maintenance will");
        }
        match stored {
            Ok(_) => self.kept(app).await,
            Err(StreamWriteError::TooLarge) => Err(self.too_large()),
            Err(StreamWriteError::Body(reason)) => Err(AppError::bad_input(reason)),
            Err(StreamWriteError::Storage(err))
                if err.kind() == opendal::ErrorKind::ConditionNotMatch =>
            {
                Err(AppError::bad_input(
                    "this direct upload has already received its file",
                ))
            }
            Err(StreamWriteError::Storage(err)) => Err(err.into()),
        }
    }

    /// After the file landed: its upload must still be there and unexpired (a
    /// completion would refuse it), or a completion have made its attachment since.
    /// A body that outlived its upload (expired or refused meanwhile, whether or not
    /// the maintenance removed it yet) leaves a file that no row names: it goes again.
    async fn kept(&self, app: &App) -> AppResult<()> {
        let pending = unexpired_upload(app, &self.tenant, self.id).await?;
        if pending.is_some() || super::find(app, &self.tenant, self.id).await?.is_some() {
            return Ok(());
        }
        super::remove_object(app, self.key.as_str()).await;
        Err(AppError::NotFound(
            "the direct upload expired or was refused while its body arrived".into(),
        ))
    }

    fn too_large(&self) -> AppError {
        AppError::PayloadTooLarge(format!(
            "the body exceeds the declared {} bytes",
            self.declared
        ))
    }
}

/// Reads the uploaded object back, checks it against the declaration with the checks
/// of every upload, and turns it into an attachment. A mismatch removes the object.
/// Runs to its end even if the client goes away.
pub async fn complete(
    app: &SharedApp,
    principal: &Principal,
    slot: Option<UploadSlot>,
    id: Uuid,
) -> AppResult<attachment::Model> {
    let app = SharedApp::clone(app);
    let principal = principal.clone();
    super::uncancellable(async move {
        // The copy holds a part of the object in memory: counted like any upload,
        // in the slot the request took for its body, else one of its own (a
        // second one for the same request could wait for ever with one slot).
        let _slot = match slot {
            Some(slot) => slot,
            None => app.upload_permit(principal.tenant.as_str()).await?,
        };
        complete_now(&app, &principal, id).await
    })
    .await
}

async fn complete_now(app: &App, principal: &Principal, id: Uuid) -> AppResult<attachment::Model> {
    let Some(pending) = pending(app, principal, id).await? else {
        return completed(app, principal, id).await;
    };
    let staged = StorageKey::from_stored(pending.storage_key.clone());
    let declared = u64::try_from(pending.byte_size).unwrap_or_default();
    let stored = match app.storage.size(&staged).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            let err = AppError::bad_input("no file has been uploaded to uploadUrl yet");
            return unless_completed(app, principal, id, err).await;
        }
        Err(err) => return unless_completed(app, principal, id, err.into()).await,
    };
    let started = if stored == declared {
        start_check(app, &pending, &staged, stored).await
    } else {
        Err(AppError::bad_input(format!(
            "the uploaded file has {stored} bytes, not the declared {declared}"
        )))
    };
    let check = match started {
        Ok(check) => check,
        Err(_) if self::pending(app, principal, id).await?.is_none() => {
            return completed(app, principal, id).await;
        }
        Err(err) => return Err(refused_if_the_file_is(app, &pending, err).await),
    };
    let key = StorageKey::for_attachment(
        &check.target().collection.key,
        &principal.tenant,
        check.target().owner_id.as_ref(),
        pending.id,
        check.media(),
    );
    // Announced before staging keys existed: the object is already where it belongs.
    let restaged = key.as_str() != staged.as_str();
    let new_keys = [key.as_str().to_owned()];
    let verified = if restaged {
        if !claim(app, principal, id, key.as_str()).await? {
            return completed(app, principal, id).await;
        }
        copy_checked(app, (&staged, stored), &key, &new_keys, check).await
    } else {
        read_checked(app, &key, check).await
    };
    let streamed = match verified {
        Ok(streamed) => streamed,
        Err(err) => return Err(refused_if_the_file_is(app, &pending, err).await),
    };
    let row = attachment::Model {
        id: pending.id,
        tenant_id: pending.tenant_id.clone(),
        owner_type: pending.owner_type.clone(),
        owner_id: pending.owner_id.clone(),
        filename: pending.filename.clone(),
        content_type: streamed.media.mime().to_owned(),
        byte_size: pending.byte_size,
        sha256: streamed.sha256,
        storage_key: key.into_string(),
        created_by: principal.subject.clone(),
        created_at: super::stored_now(),
    };
    let staging = restaged.then_some(pending.storage_key.as_str());
    if let Err(err) = commit_completion(app, &pending, &row, staging).await {
        // A commit whose answer was lost may have landed: its row then keeps the
        // object (removal spares what a row names) and is the answer. (On
        // PostgreSQL a commit that lands only after this check still loses its
        // object: the connection broke in the middle of COMMIT, which no check
        // before the removal can see.)
        if restaged {
            super::discard(app, &new_keys).await;
        }
        return match completed(app, principal, id).await {
            Ok(landed) => Ok(landed),
            _ => Err(err),
        };
    }
    if restaged {
        super::remove_now(app, &pending.storage_key).await;
    }
    crate::telemetry::upload(u64::try_from(row.byte_size).unwrap_or_default());
    super::warn_if_near(app, &row).await;
    Ok(row)
}

/// The caller's direct upload `id`, unless it has gone (completed, refused or
/// expired). The caller's: its announcer's, or any of a token that may read (a
/// completion answers the file, so a write-only token completes its own alone).
async fn pending(
    app: &App,
    principal: &Principal,
    id: Uuid,
) -> AppResult<Option<direct_upload::Model>> {
    Ok(unexpired_upload(app, &principal.tenant, id)
        .await?
        .filter(|pending| seen_by(principal, &pending.created_by)))
}

/// The row of `tenant`'s direct upload `id` while it has not expired: an expired
/// one, which the maintenance removes in its time, can be neither filled nor
/// completed.
async fn unexpired_upload(
    app: &App,
    tenant: &SafeId,
    id: Uuid,
) -> AppResult<Option<direct_upload::Model>> {
    Ok(direct_upload::Entity::find_by_id(id)
        .filter(direct_upload::Column::TenantId.eq(tenant.as_str()))
        .filter(direct_upload::Column::ExpiresAt.gt(Utc::now()))
        .one(app.db.read())
        .await?)
}

/// Whether `principal` may see what `created_by` made: its maker, or a reader.
fn seen_by(principal: &Principal, created_by: &str) -> bool {
    created_by == principal.subject || principal.may(Access::Read)
}

/// The answer to a completion of a direct upload that has gone: its attachment when
/// an earlier completion made one, so that a client may retry one whose answer it
/// lost. Only to the one who made it or may read it anyway: a write-only token must
/// not read any attachment whose id it knows by "completing" it.
async fn completed(app: &App, principal: &Principal, id: Uuid) -> AppResult<attachment::Model> {
    super::find(app, &principal.tenant, id)
        .await?
        .filter(|row| seen_by(principal, &row.created_by))
        .ok_or_else(gone)
}

/// `err`, unless the direct upload has gone meanwhile: a completion that ended took
/// the staged object with it, and its attachment is the answer.
async fn unless_completed(
    app: &App,
    principal: &Principal,
    id: Uuid,
    err: AppError,
) -> AppResult<attachment::Model> {
    match pending(app, principal, id).await? {
        Some(_) => Err(err),
        None => completed(app, principal, id).await,
    }
}

fn gone() -> AppError {
    AppError::NotFound("no such direct upload, or it has expired".into())
}

/// Claims the completion of direct upload `id` by recording the intent of its
/// attachment's `key`: the key is the primary key of `storage_deletions`, so one
/// completion at a time holds it, and a commit ends it together with the direct
/// upload's row. `false` when the direct upload has gone meanwhile (another
/// completion made the attachment first): the intent goes again, the object stays.
/// A completion cut short (a kill, a database outage) holds its claim until the
/// maintenance removes abandoned intents.
async fn claim(app: &App, principal: &Principal, id: Uuid, key: &str) -> AppResult<bool> {
    let keys = [key.to_owned()];
    if let Err(err) = super::record_intents(app, &keys).await {
        let held = super::intent_recorded(app, key).await?;
        return match (held, pending(app, principal, id).await?) {
            (_, None) => Ok(false),
            (true, Some(_)) => {
                let minutes =
                    super::intent_grace(app.config.connections.body_timeout()).num_minutes();
                Err(AppError::InProgress(format!(
                    "another completeDirectUpload of this upload is under way: retry shortly \
                     (one cut short holds it for up to {minutes} minutes)"
                )))
            }
            (false, Some(_)) => Err(err.into()),
        };
    }
    let still_pending = pending(app, principal, id).await;
    if matches!(still_pending, Ok(Some(_))) {
        return Ok(true);
    }
    super::forget_intents(app, &keys).await?;
    still_pending.map(|_| false)
}

/// Refuses the direct upload when `err` is about its file, which no retry can
/// change; a failure of storage or of the database keeps it for a retry.
async fn refused_if_the_file_is(
    app: &App,
    pending: &direct_upload::Model,
    err: AppError,
) -> AppError {
    match err {
        AppError::BadUserInput(_)
        | AppError::UnsupportedMediaType(_)
        | AppError::ChecksumMismatch(_)
        | AppError::PayloadTooLarge(_) => refuse(app, pending, err).await,
        err => err,
    }
}

/// The checks of the staged object that its size and first bytes allow.
async fn start_check(
    app: &App,
    pending: &direct_upload::Model,
    staged: &StorageKey,
    size: u64,
) -> AppResult<StreamCheck> {
    let head = app
        .storage
        .read_head(staged, size.min(crate::media::HEAD_BYTES as u64))
        .await?;
    let draft = Draft {
        owner_type: &pending.owner_type,
        owner_id: pending.owner_id.as_deref(),
        filename: &pending.filename,
        declared_type: Some(&pending.content_type),
        sha256: Some(&pending.sha256),
    };
    let max = app.config.limits.max_upload_bytes;
    StreamCheck::start(&app.collections, draft, Some(size), &head, max)
}

/// Copies the staged object to its attachment's key, checking every byte on the way
/// (the very bytes checked are the ones stored: nothing a replayed URL writes to the
/// staging key meanwhile can take their place); a refusal leaves nothing at `key`.
/// The caller holds the key's intent ([`claim`]).
async fn copy_checked(
    app: &App,
    (staged, size): (&StorageKey, u64),
    key: &StorageKey,
    new_keys: &[String],
    mut check: StreamCheck,
) -> AppResult<Streamed> {
    let content_type = check.media().mime();
    let copied = app
        .storage
        .copy_new(staged, key, size, content_type, |chunk| check.update(chunk))
        .await;
    let checked = match copied {
        Ok(_) => check.finish(),
        Err(StreamWriteError::Storage(err)) => Err(AppError::StorageUnavailable(err)),
        Err(err) => Err(AppError::StorageUnavailable(opendal::Error::new(
            opendal::ErrorKind::Unexpected,
            err.to_string(),
        ))),
    };
    if checked.is_err() {
        super::discard(app, new_keys).await;
    }
    checked
}

/// Checks every byte of an object already under its attachment's key.
async fn read_checked(app: &App, key: &StorageKey, mut check: StreamCheck) -> AppResult<Streamed> {
    app.storage
        .inspect(key, |chunk| check.update(chunk))
        .await?;
    check.finish()
}

/// Discards a refused direct upload (its reservation with it) and returns why.
async fn refuse(app: &App, pending: &direct_upload::Model, err: AppError) -> AppError {
    if let Err(cleanup) = discard(app, pending, None).await {
        tracing::warn!(id = %pending.id, error = %cleanup, "cannot discard a refused direct upload yet");
    }
    err
}

/// The removal, once `pending`'s link can write no more, of its staging object: a
/// presigned PUT stays valid after completion or refusal removed what it wrote, and
/// one sent again (or begun just before the expiry) would leave an object that no
/// row, quota or pass knows of. An upload begun at the expiry may last as long as
/// any upload ([`super::intent_grace`]), and an hour at least (a large PUT to S3).
fn staging_removal(app: &App, pending: &direct_upload::Model) -> sea_orm::Statement {
    let longest = super::intent_grace(app.config.connections.body_timeout());
    let replayable_until = pending.expires_at + longest.max(chrono::Duration::hours(1));
    let key = &pending.storage_key;
    super::removal_after_statement(app.db.backend(), key, Some(replayable_until))
}

/// One transaction: the direct upload claimed (it must not have expired), the
/// attachment row and its event, the end of the stored key's intent, and the
/// staging object recorded for removal once its link is dead (the caller removes it
/// at once as well).
async fn commit_completion(
    app: &App,
    pending: &direct_upload::Model,
    row: &attachment::Model,
    staging: Option<&str>,
) -> AppResult<()> {
    let txn = app.db.begin().await?;
    let claimed = direct_upload::Entity::delete_many()
        .filter(direct_upload::Column::Id.eq(pending.id))
        .filter(direct_upload::Column::ExpiresAt.gt(Utc::now()))
        .exec(&txn)
        .await?;
    if claimed.rows_affected == 0 {
        return Err(gone());
    }
    let backend = txn.get_database_backend();
    let mut writes = Writes::new(backend);
    super::stored_writes(app, &mut writes, row)?;
    if staging.is_some() {
        super::intents_done(&mut writes, std::slice::from_ref(&row.storage_key));
        writes.statement(staging_removal(app, pending));
    }
    crate::db::execute_all(&txn, writes.statements()).await?;
    txn.commit().await?;
    Ok(())
}

/// Removes a refused or expired direct upload: the row is claimed first (for expiry,
/// only while `expires_at < expired_before`, so a completion that won the race keeps
/// its object), and its object is recorded for removal in the same transaction, so
/// it is never forgotten: removed at once, and again once its link is dead.
async fn discard(
    app: &App,
    pending: &direct_upload::Model,
    expired_before: Option<chrono::DateTime<Utc>>,
) -> AppResult<()> {
    let txn = app.db.begin().await?;
    let mut claim =
        direct_upload::Entity::delete_many().filter(direct_upload::Column::Id.eq(pending.id));
    if let Some(before) = expired_before {
        claim = claim.filter(direct_upload::Column::ExpiresAt.lt(before));
    }
    let claimed = claim.exec(&txn).await?;
    if claimed.rows_affected == 0 {
        return Ok(());
    }
    let backend = txn.get_database_backend();
    let removal = staging_removal(app, pending);
    let quotas = &app.config.quotas;
    let release = quotas::shrink(backend, quotas, &pending.tenant_id, pending.byte_size, 1);
    crate::db::execute_all(&txn, vec![removal, release]).await?;
    txn.commit().await?;
    super::remove_now(app, &pending.storage_key).await;
    Ok(())
}

/// Direct uploads whose link expired without completion, the oldest first: a batch,
/// or all of them (see [`super::Batches`]).
pub async fn expired(
    app: &App,
    now: chrono::DateTime<Utc>,
    batches: super::Batches,
) -> AppResult<Vec<direct_upload::Model>> {
    Ok(direct_upload::Entity::find()
        .filter(direct_upload::Column::ExpiresAt.lt(now))
        .order_by_asc(direct_upload::Column::ExpiresAt)
        .limit(batches.limit())
        .all(app.db.read())
        .await?)
}

/// Removes a batch of direct uploads whose link expired without completion; the keys
/// removed. One that cannot be removed does not hold back the others (they are read
/// oldest first, so it would come first on every pass): its error is returned once
/// the rest are done.
pub async fn expire(app: &App) -> AppResult<super::Batch> {
    let now = Utc::now();
    let mut first_error = None;
    let mut removed = Vec::new();
    let batch = expired(app, now, super::Batches::One).await?;
    let read = batch.len();
    for pending in batch {
        match discard(app, &pending, Some(now)).await {
            Ok(()) => removed.push(pending.storage_key),
            Err(err) => {
                tracing::warn!(id = %pending.id, error = %err, "cannot expire a direct upload yet");
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(super::Batch { read, removed }),
    }
}
