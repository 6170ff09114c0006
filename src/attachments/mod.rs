//! Create, find, list, stream and delete attachments: the only module that touches
//! both the database and storage. Objects are written before their rows commit and
//! removed again when the rows fail; a deleted row leaves a `storage_deletions`
//! entry until its object is gone. Every row written or deleted writes its event
//! (`file.stored`, `file.deleted`) in the same transaction.

pub mod base64_stream;
pub mod direct;
pub mod migrate;
pub mod spool;
pub mod sweep;
pub mod upload;
pub mod urls;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::outbox_event::EventType;
use entity::{attachment, storage_deletion, storage_migration};
use futures::Stream;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select,
    Statement,
};
use uuid::Uuid;

use crate::app::{App, SharedApp, UploadSlot};
use crate::auth::Principal;
use crate::db::{self, Writes};
use crate::error::{AppError, AppResult};
use crate::events;
use crate::ids::SafeId;
use crate::media::MediaType;
use crate::quotas;
use crate::storage::{OpenObject, Storage, StorageKey, StreamWriteError};
pub use spool::FileContent;
pub use upload::{Draft, StreamCheck, Target, ValidUpload};

/// Runs `work` to its end even if the request that started it is dropped (a client
/// that disconnects, a timeout): once storage is touched, the object, its row and
/// the clean-up on failure all happen, so nothing is left half-made.
async fn uncancellable<T, F>(work: F) -> AppResult<T>
where
    F: Future<Output = AppResult<T>> + Send + 'static,
    T: Send + 'static,
{
    // The task keeps the request's span, so its log lines carry the request id.
    tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .map_err(|err| {
            AppError::Internal(anyhow::Error::new(err).context("a storage task failed"))
        })?
}

/// Stores every upload or none, whatever the client does meanwhile: the keys are
/// recorded as intents, the objects written, then one transaction inserts the rows
/// and drops the intents. A crash in between leaves intents, and their objects are
/// removed later ([`retry_deletions`]); a row never names a missing object.
pub async fn create(
    app: &SharedApp,
    principal: &Principal,
    slot: Option<UploadSlot>,
    uploads: Vec<ValidUpload>,
) -> AppResult<Vec<attachment::Model>> {
    // A batch of no files stores nothing (and an INSERT of no rows is no SQL).
    if uploads.is_empty() {
        return Ok(Vec::new());
    }
    let app = SharedApp::clone(app);
    let principal = principal.clone();
    uncancellable(async move {
        let _slot = slot;
        store(&app, &principal, uploads).await
    })
    .await
}

async fn store(
    app: &App,
    principal: &Principal,
    uploads: Vec<ValidUpload>,
) -> AppResult<Vec<attachment::Model>> {
    let planned: Vec<(attachment::Model, Option<String>, FileContent)> = uploads
        .into_iter()
        .map(|upload| {
            let size = i64::try_from(upload.content.size()).unwrap_or(i64::MAX);
            let row = new_row(
                principal,
                &upload.target,
                &upload.filename,
                upload.media,
                size,
            );
            (row, upload.sha256, upload.content)
        })
        .collect();
    let keys: Vec<String> = planned
        .iter()
        .map(|(row, _, _)| row.storage_key.clone())
        .collect();
    let added = totals(planned.iter().map(|(row, _, _)| row));
    let near = begin_store(app, principal.tenant.as_str(), added, &keys).await?;
    let mut rows = Vec::with_capacity(planned.len());
    for (row, sha256, content) in planned {
        let key = StorageKey::from_stored(row.storage_key.clone());
        let (written, sha256) = match (content, sha256) {
            (FileContent::Spooled(spooled), _) => {
                let stored = app
                    .storage
                    .put_spooled(&key, spooled.path(), &row.content_type);
                (stored.await, spooled.sha256().to_owned())
            }
            (FileContent::Memory(bytes), sha256) => {
                let write = app.storage.put_new(&key, bytes.clone(), &row.content_type);
                // The write starts (on the blocking pool for a large file) before the hash.
                match sha256 {
                    Some(sha256) => (write.await, sha256),
                    None => futures::join!(write, async { upload::sha256_hex(&bytes) }),
                }
            }
        };
        if let Err(err) = written {
            discard(app, &keys).await;
            return Err(AppError::StorageUnavailable(err));
        }
        rows.push(attachment::Model { sha256, ..row });
    }
    finish_store(app, rows, &keys, near).await
}

/// Stores one file that streams in (a multipart part), checked on the way by
/// `check` and never held whole: the intent, the object written as it arrives (at
/// most [`StreamCheck::limit`] bytes, or exactly `size` when announced), then the
/// checks that needed every byte, then the row, as [`create`] does for files
/// already in memory. A refusal at the end removes the object.
pub async fn create_streamed<S>(
    app: &SharedApp,
    principal: &Principal,
    slot: Option<UploadSlot>,
    check: StreamCheck,
    size: Option<u64>,
    body: S,
) -> AppResult<attachment::Model>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let app = SharedApp::clone(app);
    let principal = principal.clone();
    uncancellable(async move {
        let _slot = slot;
        store_streamed(&app, &principal, check, size, body).await
    })
    .await
}

async fn store_streamed<S>(
    app: &App,
    principal: &Principal,
    mut check: StreamCheck,
    size: Option<u64>,
    body: S,
) -> AppResult<attachment::Model>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    // Unannounced, the size counts against the quota when the row commits.
    let announced = i64::try_from(size.unwrap_or(0)).unwrap_or(i64::MAX);
    let row = new_row(
        principal,
        check.target(),
        check.filename(),
        check.media(),
        announced,
    );
    let keys = [row.storage_key.clone()];
    let near = begin_store(app, &row.tenant_id, (announced, 1), &keys).await?;
    let key = StorageKey::from_stored(row.storage_key.clone());
    let limit = size.unwrap_or_else(|| check.limit());
    let too_large = check.too_large();
    let body = futures::StreamExt::inspect(body, |chunk| {
        if let Ok(chunk) = chunk {
            check.update(chunk);
        }
    });
    let written = app
        .storage
        .put_stream(&key, body, limit, &row.content_type)
        .await;
    let checked = match written {
        Ok(written) if size.is_none_or(|size| size == written) => {
            check.finish().map(|streamed| (streamed, written))
        }
        Ok(written) => Err(AppError::bad_input(format!(
            "the file part ended after {written} of its {} bytes",
            size.unwrap_or_default()
        ))),
        Err(StreamWriteError::TooLarge) => Err(too_large),
        Err(StreamWriteError::Storage(err)) => Err(AppError::StorageUnavailable(err)),
        Err(StreamWriteError::Body(err)) => {
            Err(AppError::bad_input(format!("the file part broke: {err}")))
        }
    };
    let (streamed, written) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            discard(app, &keys).await;
            return Err(err);
        }
    };
    let row = attachment::Model {
        sha256: streamed.sha256,
        byte_size: i64::try_from(written).unwrap_or(i64::MAX),
        ..row
    };
    // Unannounced, the early check could not tell whether this file takes the
    // tenant past the warning threshold: the warning is decided on what was written.
    let mut rows = finish_store(app, vec![row], &keys, near || size.is_none()).await?;
    rows.pop()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a stored upload has no row")))
}

/// Before any byte is written: the quota's early refusal for `bytes` in `files`
/// files of `tenant`, then the intents of `keys`; whether the tenant may now be
/// near its quota ([`quotas::check`]).
async fn begin_store(
    app: &App,
    tenant: &str,
    (bytes, files): (i64, i64),
    keys: &[String],
) -> AppResult<bool> {
    let near = quotas::check(app, tenant, bytes, files).await?;
    record_intents(app, keys).await?;
    Ok(near)
}

/// Once every object is written: the rows, their events and usage in one
/// transaction (the objects removed when it fails), then the metrics and the
/// quota warning.
async fn finish_store(
    app: &App,
    rows: Vec<attachment::Model>,
    keys: &[String],
    near: bool,
) -> AppResult<Vec<attachment::Model>> {
    if let Err(err) = insert_rows(app, &rows, keys).await
        && !landed(app, &rows, &err).await
    {
        discard(app, keys).await;
        let tenant = rows
            .first()
            .map(|row| row.tenant_id.as_str())
            .unwrap_or_default();
        let (bytes, files) = totals(rows.iter());
        return Err(quotas::refusal_or(app, tenant, err, bytes, files).await);
    }
    if let Some(first) = rows.first() {
        let (bytes, files) = totals(rows.iter());
        quotas::grew(app, &first.tenant_id, bytes, files);
    }
    for row in &rows {
        crate::telemetry::upload(u64::try_from(row.byte_size).unwrap_or_default());
    }
    if let Some(last) = rows.last().filter(|_| near) {
        warn_if_near(app, last).await;
    }
    Ok(rows)
}

/// Whether the rows of a commit that answered `err` are there all the same: its
/// answer was lost (a connection broken after COMMIT reached the server). The
/// upload then stands, and the client is not told to retry into a second copy.
/// They commit together, so the first row tells.
async fn landed(app: &App, rows: &[attachment::Model], err: &sea_orm::DbErr) -> bool {
    let Some(first) = rows.first() else {
        return false;
    };
    let select = attachment::Entity::find_by_id(first.id);
    let landed = matches!(app.db.read().model(select).await, Ok(Some(_)));
    if landed {
        tracing::warn!(attachment = %first.id, error = %err, "a commit answered an error, yet its rows are there: the upload stands");
    }
    landed
}

/// Now, to the microsecond, as PostgreSQL's `timestamptz` keeps it: the `createdAt`
/// a mutation answers is then the one every later read gives (Apollo's cache
/// compares them).
pub(crate) fn stored_now() -> DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(Utc::now(), 6)
}

/// The bytes and files that `rows` add to their tenant's usage.
fn totals<'a>(rows: impl Iterator<Item = &'a attachment::Model>) -> (i64, i64) {
    rows.fold((0, 0), |(bytes, files), row| {
        (bytes.saturating_add(row.byte_size), files + 1)
    })
}

/// [`quotas::warn_if_near`] after a stored upload; its failure is logged, the upload
/// stands.
async fn warn_if_near(app: &App, row: &attachment::Model) {
    if let Err(err) = quotas::warn_if_near(app, row).await {
        tracing::warn!(error = %err, tenant = %row.tenant_id, "cannot record the quota warning");
    }
}

/// The row a checked upload becomes: a new UUIDv7 and the key its collection lays
/// out; its sha256 is the caller's to fill in.
fn new_row(
    principal: &Principal,
    target: &Target,
    filename: &str,
    media: MediaType,
    byte_size: i64,
) -> attachment::Model {
    let id = Uuid::now_v7();
    let key = StorageKey::for_attachment(
        &target.collection.key,
        &principal.tenant,
        target.owner_id.as_ref(),
        id,
        media,
    );
    attachment::Model {
        id,
        tenant_id: principal.tenant.to_string(),
        owner_type: target.owner_type.clone(),
        owner_id: target.owner_id.as_ref().map(ToString::to_string),
        filename: filename.to_owned(),
        content_type: media.mime().to_owned(),
        byte_size,
        sha256: String::new(),
        storage_key: key.into_string(),
        created_by: principal.subject.clone(),
        created_at: stored_now(),
    }
}

/// Records the keys about to be written, before any byte reaches storage.
async fn record_intents(app: &App, keys: &[String]) -> Result<(), sea_orm::DbErr> {
    let now = Utc::now();
    // This replica's own bound on its uploads: another replica with a shorter
    // BODY_TIMEOUT_SECONDS must not take the object of an upload still arriving here.
    let deadline = now + intent_grace(app.config.connections.body_timeout());
    let intents = keys.iter().map(|key| storage_deletion::ActiveModel {
        storage_key: sea_orm::Set(key.clone()),
        attempts: sea_orm::Set(0),
        created_at: sea_orm::Set(now),
        intent: sea_orm::Set(true),
        remove_after: sea_orm::Set(Some(deadline)),
    });
    let insert = storage_deletion::Entity::insert_many(intents).into_query();
    app.db.commit(vec![app.db.backend().build(&insert)]).await
}

/// Whether an upload's intent is recorded for `key`.
async fn intent_recorded(app: &App, key: &str) -> AppResult<bool> {
    let select = storage_deletion::Entity::find_by_id(key.to_owned())
        .filter(storage_deletion::Column::Intent.eq(true));
    Ok(select.one(app.db.read()).await?.is_some())
}

/// Drops the intents of `keys` and leaves their objects alone: for a claim that
/// found its work already done.
async fn forget_intents(app: &App, keys: &[String]) -> AppResult<()> {
    let forget = storage_deletion::Entity::delete_many()
        .filter(storage_deletion::Column::StorageKey.is_in(keys.iter().map(String::as_str)))
        .filter(storage_deletion::Column::Intent.eq(true));
    Ok(app.db.commit(vec![forget.build(app.db.backend())]).await?)
}

/// One transaction: the rows, their `file.stored` events, and the end of their
/// keys' intents.
async fn insert_rows(
    app: &App,
    rows: &[attachment::Model],
    keys: &[String],
) -> Result<(), sea_orm::DbErr> {
    let mut writes = Writes::new(app.db.backend());
    for row in rows {
        stored_writes(app, &mut writes, row)?;
    }
    intents_done(&mut writes, keys);
    let Some(first) = rows.first() else {
        return app.db.commit(writes.statements()).await;
    };
    let (bytes, files) = totals(rows.iter());
    quotas::grow(
        &mut writes,
        &app.config.quotas,
        &first.tenant_id,
        bytes,
        files,
    );
    // Every upload of the tenant changes its usage row: they share transactions.
    app.db.commit_shared(&first.tenant_id, writes).await
}

/// Ends the intents of `keys`: their objects belong to rows now.
fn intents_done(writes: &mut Writes, keys: &[String]) {
    let keys = keys.iter().map(|key| key.as_str().into());
    writes.delete_where_in(storage_deletion::Column::StorageKey, keys);
}

/// Adds an attachment row and its `file.stored` event to `writes`.
fn stored_writes(
    app: &App,
    writes: &mut Writes,
    row: &attachment::Model,
) -> Result<(), sea_orm::DbErr> {
    writes.insert(row.clone().into_active_model().reset_all());
    if app.local_fallback.is_some() {
        // Files are moving into the bucket (`AUTO_MIGRATE_STORAGE`), and this one is
        // there already: recorded as such, its `url` is the bucket's at once, not a
        // signed link to the route until the next migration pass.
        let migrated = storage_migration::Model {
            file_path: row.storage_key.clone(),
            migrated_at: row.created_at,
            source: "upload".to_owned(),
            destination: app.storage.location().to_owned(),
            byte_size: row.byte_size,
            sha256: row.sha256.clone(),
            attempts: 0,
        };
        writes.insert(migrated.into_active_model());
    }
    events::record(writes, &app.webhooks, EventType::Stored, row)
}

/// After a failed upload: removes whatever objects were written, and their intents;
/// what cannot be removed now stays recorded and is retried.
async fn discard(app: &App, keys: &[String]) {
    for key in keys {
        remove_object(app, key).await;
    }
}

/// The attachment `id` of the caller's tenant; another tenant's is `None` too.
pub async fn find(app: &App, tenant: &SafeId, id: Uuid) -> AppResult<Option<attachment::Model>> {
    let select =
        attachment::Entity::find_by_id(id).filter(attachment::Column::TenantId.eq(tenant.as_str()));
    Ok(app.db.read().model(select).await?)
}

/// The attachment stored under `key`: for public URLs (`URL_MODE=public`), and so
/// that no removal takes an object a row names.
pub async fn find_by_key(app: &App, key: &str) -> AppResult<Option<attachment::Model>> {
    let select = attachment::Entity::find().filter(attachment::Column::StorageKey.eq(key));
    Ok(app.db.read().model(select).await?)
}

/// One page of a listing, newest first.
pub struct Page {
    pub rows: Vec<attachment::Model>,
    pub has_next_page: bool,
}

/// The attachments of an owner type (and optionally one owner) of a tenant.
fn scope(tenant: &SafeId, owner_type: &str, owner_id: Option<&SafeId>) -> Condition {
    let mut scope = Condition::all()
        .add(attachment::Column::TenantId.eq(tenant.as_str()))
        .add(attachment::Column::OwnerType.eq(owner_type));
    if let Some(owner_id) = owner_id {
        scope = scope.add(attachment::Column::OwnerId.eq(owner_id.as_str()));
    }
    scope
}

/// The rows of `scope` after the cursor `after`, newest first, one more than
/// `first` (whether a next page exists): a range of the tenant+owner index, or of
/// the tenant+owner-type one without an owner, read backwards, never a sort.
fn page(scope: Condition, first: u64, after: Option<Uuid>) -> Select<attachment::Entity> {
    let mut query = attachment::Entity::find().filter(scope);
    if let Some(after) = after {
        query = query.filter(attachment::Column::Id.lt(after));
    }
    query.order_by_desc(attachment::Column::Id).limit(first + 1)
}

/// Lists an owner type (and optionally one owner) of the caller's tenant, newest
/// first, after the cursor `after`.
pub async fn list(
    app: &App,
    tenant: &SafeId,
    target: &Target,
    first: u64,
    after: Option<Uuid>,
) -> AppResult<Page> {
    // At most `first + 1` rows read: on the request's thread.
    let mut rows = app
        .db
        .read()
        .models(page(
            scope(tenant, &target.owner_type, target.owner_id.as_ref()),
            first,
            after,
        ))
        .await?;
    let has_next_page = rows.len() as u64 > first;
    rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    Ok(Page {
        rows,
        has_next_page,
    })
}

/// How many attachments [`list`] pages through, on every page.
pub async fn count(app: &App, tenant: &SafeId, target: &Target) -> AppResult<u64> {
    // Every row of the scope is counted: kept on sqlx's thread, off the request's,
    // and within the tenant's share of the database ([`crate::count_slots`]).
    let count = attachment::Entity::find()
        .filter(scope(tenant, &target.owner_type, target.owner_id.as_ref()))
        .count(app.db.read());
    Ok(app.count_slots.run(tenant.as_str(), count).await?)
}

/// The store that holds an attachment's object with the row's size, and the object
/// opened there: storage, or the local copy while files move to the bucket
/// (`AUTO_MIGRATE_STORAGE`). Checked before any header goes out, so a lost object
/// is a clear error, never a truncated 200. An object gone with its row (a delete
/// that committed after `row` was read) is a plain not-found, not lost data.
pub async fn locate<'a>(
    app: &'a App,
    row: &attachment::Model,
) -> AppResult<(&'a Storage, OpenObject)> {
    let key = StorageKey::from_stored(row.storage_key.clone());
    let expected = u64::try_from(row.byte_size).unwrap_or_default();
    for store in std::iter::once(&app.storage).chain(app.local_fallback.as_ref()) {
        match store.open(&key).await {
            Ok(Some(object)) if object.size() == expected => return Ok((store, object)),
            Ok(Some(object)) => tracing::error!(
                key = %key, size = object.size(), expected, location = store.location(),
                "a stored object has another size than its row"
            ),
            Ok(None) => {}
            Err(err) => return Err(AppError::StorageUnavailable(err)),
        }
    }
    Err(missing(app, row).await)
}

/// The error of an object found missing: lost data while its row remains, a plain
/// not-found when the row went with it (a delete that committed meanwhile).
pub async fn missing(app: &App, row: &attachment::Model) -> AppError {
    let row_remains = app
        .db
        .read()
        .model(attachment::Entity::find_by_id(row.id))
        .await;
    match row_remains {
        Ok(Some(_)) => AppError::ObjectMissing(row.id),
        Ok(None) => AppError::not_found(),
        Err(err) => err.into(),
    }
}

/// Deletes the row, then the object (or, with `DELETED_FILES_RETENTION`, keeps it
/// that long), to the end even if the client goes away. The row's deletion records
/// the object in `storage_deletions` and the `file.deleted` event in the same
/// transaction, so a failed removal is retried by [`retry_deletions`] and never
/// forgotten.
pub async fn delete(app: &SharedApp, tenant: &SafeId, id: Uuid) -> AppResult<Uuid> {
    let app = SharedApp::clone(app);
    let tenant = tenant.clone();
    uncancellable(async move { delete_row(&app, &tenant, id).await }).await
}

async fn delete_row(app: &App, tenant: &SafeId, id: Uuid) -> AppResult<Uuid> {
    let row = find(app, tenant, id)
        .await?
        .ok_or_else(AppError::not_found)?;
    let txn = app.db.begin().await?;
    let deleted = attachment::Entity::delete_by_id(row.id)
        .filter(attachment::Column::TenantId.eq(tenant.as_str()))
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(AppError::not_found());
    }
    let backend = txn.get_database_backend();
    // Kept for DELETED_FILES_RETENTION, so a backup restored meanwhile finds it.
    let retention = app.config.deleted_files_retention;
    let remove_after = (!retention.is_zero())
        .then(|| chrono::Duration::from_std(retention).ok())
        .flatten()
        .and_then(|retention| Utc::now().checked_add_signed(retention));
    let mut writes = Writes::new(backend);
    writes.statement(removal_after_statement(
        backend,
        &row.storage_key,
        remove_after,
    ));
    events::record(&mut writes, &app.webhooks, EventType::Deleted, &row)?;
    writes.statement(quotas::shrink(
        backend,
        &app.config.quotas,
        &row.tenant_id,
        row.byte_size,
        1,
    ));
    db::execute_all(&txn, writes.statements()).await?;
    txn.commit().await?;
    if remove_after.is_none() {
        remove_object(app, &row.storage_key).await;
    }
    Ok(row.id)
}

/// The statement that records, inside the caller's transaction, an object that must
/// be removed once the transaction commits (or once `remove_after` has passed, when
/// given); [`remove_object`] or [`retry_deletions`] removes it. An entry already there
/// becomes this one: a completion retried after its upload landed records its intent
/// again until it sees that, and a delete in between must not fail on it.
fn removal_after_statement(
    backend: DbBackend,
    key: &str,
    remove_after: Option<DateTime<Utc>>,
) -> Statement {
    let entry = storage_deletion::ActiveModel {
        storage_key: sea_orm::Set(key.to_owned()),
        attempts: sea_orm::Set(0),
        created_at: sea_orm::Set(Utc::now()),
        intent: sea_orm::Set(false),
        remove_after: sea_orm::Set(remove_after),
    };
    let replace = OnConflict::column(storage_deletion::Column::StorageKey)
        .update_columns([
            storage_deletion::Column::Attempts,
            storage_deletion::Column::CreatedAt,
            storage_deletion::Column::Intent,
            storage_deletion::Column::RemoveAfter,
        ])
        .to_owned();
    backend.build(
        &storage_deletion::Entity::insert(entry)
            .on_conflict(replace)
            .into_query(),
    )
}

/// Removes one object and its `storage_deletions` entry; on failure, counts the
/// attempt. Whether the object is gone. An object that a row names is kept, whoever
/// asked for its removal (a completion that lost a race, an upload whose commit
/// landed although its answer was lost, a backup restored before a retained
/// delete): only its entry goes.
async fn remove_object(app: &App, key: &str) -> bool {
    let backend = app.db.backend();
    let entry_done = || storage_deletion::Entity::delete_by_id(key.to_owned()).build(backend);
    match find_by_key(app, key).await {
        Ok(None) => {}
        Ok(Some(row)) => {
            tracing::warn!(key, attachment = %row.id, "kept an object that a row names; its removal entry is dropped");
            if let Err(err) = app.db.commit(vec![entry_done()]).await {
                tracing::warn!(key, error = %err, "cannot drop the removal entry of a kept object");
            }
            return false;
        }
        Err(err) => {
            tracing::warn!(key, error = %err, "cannot check whether a row names an object; its removal will be retried");
            return false;
        }
    }
    match delete_everywhere(app, &StorageKey::from_stored(key.to_owned())).await {
        Ok(()) => {
            if let Err(err) = app.db.commit(vec![entry_done()]).await {
                tracing::warn!(key, error = %err, "object removed, but its deletion entry stays; it will be retried");
            }
            true
        }
        Err(err) => {
            tracing::warn!(key, error = %err, "cannot remove object yet; it will be retried");
            let attempt = storage_deletion::Entity::update_many()
                .col_expr(
                    storage_deletion::Column::Attempts,
                    Expr::col(storage_deletion::Column::Attempts).add(1),
                )
                .filter(storage_deletion::Column::StorageKey.eq(key))
                .build(backend);
            if let Err(err) = app.db.commit(vec![attempt]).await {
                tracing::warn!(key, error = %err, "cannot count a deletion attempt");
            }
            false
        }
    }
}

/// Removes an object whose removal is also recorded for later (`remove_after`): its
/// entry stays until then, whatever happens now.
async fn remove_now(app: &App, key: &str) {
    if let Err(err) = delete_everywhere(app, &StorageKey::from_stored(key.to_owned())).await {
        tracing::warn!(key, error = %err, "cannot remove object yet; its recorded removal will");
    }
}

/// Deletes `key` from storage and, while files move to the bucket
/// (`AUTO_MIGRATE_STORAGE`), from the local folder too: a file deleted before its
/// copy would otherwise stay on the disk, which an erasure request forbids. Both
/// are tried whatever the other answers: a bucket that fails for now (or races the
/// migration removing a copy of a deleted row) must not keep the local file until
/// the retry; the first error is the answer, and the removal is retried.
async fn delete_everywhere(app: &App, key: &StorageKey) -> opendal::Result<()> {
    let in_storage = app.storage.delete(key).await;
    let in_local_folder = match &app.local_fallback {
        Some(local) => local.delete(key).await,
        None => Ok(()),
    };
    in_storage.and(in_local_folder)
}

/// Most rows one step of the housekeeping reads at a time (pending removals, expired
/// direct uploads); [`in_batches`] runs batches until a short one.
pub const BATCH: u64 = 500;

/// One batch of a housekeeping step: how many rows it read, and the keys it removed.
pub struct Batch {
    pub read: usize,
    pub removed: Vec<String>,
}

/// How much of the housekeeping's work one read takes.
#[derive(Clone, Copy, Debug)]
pub enum Batches {
    /// One batch of [`BATCH`]: the work done, the next batch is read.
    One,
    /// Everything at once: what a dry run would remove.
    All,
}

impl Batches {
    fn limit(self) -> Option<u64> {
        match self {
            Self::One => Some(BATCH),
            Self::All => None,
        }
    }
}

/// Runs `step`, one batch of housekeeping, again while it read a whole batch and
/// removed something, until `until` when given; every key removed. One batch a
/// minute fell behind a flood of abandoned direct uploads.
pub async fn in_batches<F, Done>(
    until: Option<tokio::time::Instant>,
    mut step: F,
) -> AppResult<Vec<String>>
where
    F: FnMut() -> Done,
    Done: Future<Output = AppResult<Batch>>,
{
    let mut removed = Vec::new();
    loop {
        let batch = step().await?;
        let whole = batch.read as u64 >= BATCH && !batch.removed.is_empty();
        removed.extend(batch.removed);
        if !whole || until.is_some_and(|until| tokio::time::Instant::now() >= until) {
            return Ok(removed);
        }
    }
}

/// When an upload's intent counts as abandoned: its upload can no longer be in
/// flight.
#[derive(Clone, Copy, Debug)]
pub enum Abandoned {
    /// Recorded before this, and past the deadline that the replica which recorded
    /// it set (the longest its uploads can last, [`record_intents`]); one recorded
    /// without a deadline, by an earlier version, by the first rule alone.
    After(DateTime<Utc>),
    /// Recorded before this, whatever its deadline: a sweep of a stopped server.
    RecordedBefore(DateTime<Utc>),
}

/// Objects whose removal is pending, those tried fewest times first (one that keeps
/// failing does not hold back the others), then oldest: those of deleted rows, and those
/// of uploads whose intent is [`Abandoned`] and that never committed (younger ones
/// may still be in flight). A batch, or with `Batches::All` all of them in one read
/// (a dry run: pages read one after another would skip rows that the maintenance
/// removes meanwhile).
pub async fn pending_deletions(
    app: &App,
    intents: Abandoned,
    batches: Batches,
) -> AppResult<Vec<String>> {
    use storage_deletion::Column;
    let now = Utc::now();
    let due = || {
        Condition::any()
            .add(Column::RemoveAfter.is_null())
            .add(Column::RemoveAfter.lt(now))
    };
    let abandoned = match intents {
        Abandoned::After(before) => Condition::all()
            .add(Column::CreatedAt.lt(before))
            .add(due()),
        Abandoned::RecordedBefore(before) => Condition::all().add(Column::CreatedAt.lt(before)),
    };
    Ok(storage_deletion::Entity::find()
        .filter(
            Condition::any()
                .add(Condition::all().add(Column::Intent.eq(false)).add(due()))
                .add(Condition::all().add(Column::Intent.eq(true)).add(abandoned)),
        )
        .order_by_asc(storage_deletion::Column::Attempts)
        .order_by_asc(storage_deletion::Column::CreatedAt)
        .limit(batches.limit())
        .all(app.db.read())
        .await?
        .into_iter()
        .map(|entry| entry.storage_key)
        .collect())
}

/// Retries the removal of a batch of objects still recorded in `storage_deletions`
/// (see [`pending_deletions`]); the keys now gone among them.
pub async fn retry_deletions(app: &App, intents: Abandoned) -> AppResult<Batch> {
    let pending = pending_deletions(app, intents, Batches::One).await?;
    let read = pending.len();
    let mut removed = Vec::new();
    for key in pending {
        if remove_object(app, &key).await {
            removed.push(key);
        }
    }
    Ok(Batch { read, removed })
}

/// How old an upload's intent must be before its object counts as abandoned: longer
/// than any upload can last. Its body is waited for `BODY_TIMEOUT_SECONDS` at most
/// (up to an hour), and a quarter of an hour more covers the writes to storage in
/// between, which have timeouts of their own.
pub fn intent_grace(body_timeout: std::time::Duration) -> chrono::Duration {
    // BODY_TIMEOUT_SECONDS is at most an hour; a day bounds it here all the same.
    let body = i64::try_from(body_timeout.as_secs()).map_or(86_400, |secs| Ord::min(secs, 86_400));
    chrono::Duration::seconds(15 * 60 + body)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;

    /// An upload whose body may take an hour keeps its intent longer than that.
    #[test]
    fn the_intent_grace_outlasts_the_longest_body() {
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(intent_grace(hour), chrono::Duration::minutes(75));
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(intent_grace(minute), chrono::Duration::minutes(16));
    }

    /// Every page of a listing, of one owner or a whole owner type, first or after a
    /// cursor, is a range of an index read newest first: SQLite plans no sort, so a
    /// page costs the same however many rows the tenant has.
    #[tokio::test]
    async fn every_page_is_an_index_range_without_a_sort() {
        let tenant = SafeId::parse("acme").expect("id");
        let owner = SafeId::parse("c-1").expect("id");
        let mut cases = Vec::new();
        let mut queries = Vec::new();
        for owner in [Some(&owner), None] {
            for after in [None, Some(Uuid::now_v7())] {
                let scope = scope(&tenant, "contract", owner);
                queries.push(page(scope, 20, after).build(DbBackend::Sqlite));
                cases.push(format!("owner {owner:?}, after {after:?}"));
            }
        }
        let plans = crate::db::sqlite_plans(queries).await;
        for (case, plan) in cases.iter().zip(plans) {
            assert!(
                plan.iter().all(|step| !step.contains("B-TREE")),
                "{case}: {plan:?}"
            );
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX idx_attachments_tenant_")),
                "{case}: {plan:?}"
            );
        }
    }
}
