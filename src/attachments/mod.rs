//! Create, find, list, stream and delete attachments: the only module that touches
//! both the database and storage. Objects are written before their rows commit and
//! removed again when the rows fail; a deleted row leaves a `storage_deletions`
//! entry until its object is gone. Every row written or deleted writes its event
//! (`file.stored`, `file.deleted`) in the same transaction.

pub mod direct;
pub mod upload;

use std::ops::Range;

use bytes::Bytes;
use chrono::Utc;
use entity::outbox_event::EventType;
use entity::{attachment, storage_deletion};
use futures::Stream;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{AppError, AppResult};
use crate::events;
use crate::ids::SafeId;
use crate::storage::StorageKey;
pub use upload::{Draft, Target, ValidUpload};

/// Stores every upload or none: objects first, then one transaction for all rows.
pub async fn create(
    app: &App,
    principal: &Principal,
    uploads: Vec<ValidUpload>,
) -> AppResult<Vec<attachment::Model>> {
    let mut rows = Vec::with_capacity(uploads.len());
    for upload in uploads {
        let id = Uuid::now_v7();
        let target = &upload.target;
        let key = StorageKey::for_attachment(
            &target.collection.key,
            &principal.tenant,
            target.owner_id.as_ref(),
            id,
            upload.media,
        );
        let row = attachment::Model {
            id,
            tenant_id: principal.tenant.to_string(),
            owner_type: target.owner_type.clone(),
            owner_id: target.owner_id.as_ref().map(ToString::to_string),
            filename: upload.filename,
            content_type: upload.media.mime().to_owned(),
            byte_size: i64::try_from(upload.bytes.len()).unwrap_or(i64::MAX),
            sha256: upload.sha256,
            storage_key: key.into_string(),
            created_by: principal.subject.clone(),
            created_at: Utc::now(),
        };
        if let Err(err) = app
            .storage
            .put_new(
                &StorageKey::from_stored(row.storage_key.clone()),
                upload.bytes,
            )
            .await
        {
            remove_objects(app, &rows).await;
            return Err(AppError::StorageUnavailable(err));
        }
        rows.push(row);
    }
    let inserted = insert_rows(app, &rows).await;
    if let Err(err) = inserted {
        remove_objects(app, &rows).await;
        return Err(err.into());
    }
    Ok(rows)
}

/// The rows and their `file.stored` events, in one transaction.
async fn insert_rows(app: &App, rows: &[attachment::Model]) -> Result<(), sea_orm::DbErr> {
    let txn = app.db.begin().await?;
    for row in rows {
        insert_stored(app, &txn, row).await?;
    }
    txn.commit().await
}

/// Inserts an attachment row and its `file.stored` event in the caller's transaction.
async fn insert_stored(
    app: &App,
    txn: &sea_orm::DatabaseTransaction,
    row: &attachment::Model,
) -> Result<(), sea_orm::DbErr> {
    row.clone()
        .into_active_model()
        .reset_all()
        .insert(txn)
        .await?;
    events::record(txn, &app.webhooks, EventType::Stored, row).await
}

/// Best effort clean-up of objects whose rows never committed.
async fn remove_objects(app: &App, rows: &[attachment::Model]) {
    for row in rows {
        if let Err(err) = app
            .storage
            .delete(&StorageKey::from_stored(row.storage_key.clone()))
            .await
        {
            tracing::error!(key = %row.storage_key, error = %err, "cannot remove an object whose row failed; `storage sweep` will");
        }
    }
}

/// The attachment `id` of the caller's tenant; another tenant's is `None` too.
pub async fn find(app: &App, tenant: &SafeId, id: Uuid) -> AppResult<Option<attachment::Model>> {
    Ok(attachment::Entity::find_by_id(id)
        .filter(attachment::Column::TenantId.eq(tenant.as_str()))
        .one(&app.db)
        .await?)
}

/// The attachment stored under `key`: only for public URLs (`URL_MODE=public`).
pub async fn find_by_key(app: &App, key: &str) -> AppResult<Option<attachment::Model>> {
    Ok(attachment::Entity::find()
        .filter(attachment::Column::StorageKey.eq(key))
        .one(&app.db)
        .await?)
}

/// One page of a listing, newest first.
pub struct Page {
    pub rows: Vec<attachment::Model>,
    pub has_next_page: bool,
    pub total_count: u64,
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
    let mut scope = Condition::all()
        .add(attachment::Column::TenantId.eq(tenant.as_str()))
        .add(attachment::Column::OwnerType.eq(target.owner_type.as_str()));
    if let Some(owner_id) = &target.owner_id {
        scope = scope.add(attachment::Column::OwnerId.eq(owner_id.as_str()));
    }
    let total_count = attachment::Entity::find()
        .filter(scope.clone())
        .count(&app.db)
        .await?;
    let mut query = attachment::Entity::find().filter(scope);
    if let Some(after) = after {
        query = query.filter(attachment::Column::Id.lt(after));
    }
    let mut rows = query
        .order_by_desc(attachment::Column::Id)
        .limit(first + 1)
        .all(&app.db)
        .await?;
    let has_next_page = rows.len() as u64 > first;
    rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    Ok(Page {
        rows,
        has_next_page,
        total_count,
    })
}

/// Streams `range` of an attachment's object.
pub async fn read(
    app: &App,
    row: &attachment::Model,
    range: Range<u64>,
) -> AppResult<impl Stream<Item = std::io::Result<Bytes>> + Send + use<>> {
    Ok(app
        .storage
        .stream(
            &StorageKey::from_stored(row.storage_key.clone()),
            range.into(),
        )
        .await?)
}

/// Deletes the row, then the object. The row's deletion records the object in
/// `storage_deletions` and the `file.deleted` event in the same transaction, so a
/// failed removal is retried by [`retry_deletions`] and never forgotten.
pub async fn delete(app: &App, tenant: &SafeId, id: Uuid) -> AppResult<Uuid> {
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
    schedule_removal(&txn, &row.storage_key).await?;
    events::record(&txn, &app.webhooks, EventType::Deleted, &row).await?;
    txn.commit().await?;
    remove_object(app, &row.storage_key).await;
    Ok(row.id)
}

/// Records, inside the caller's transaction, an object that must be removed once the
/// transaction commits; [`remove_object`] or [`retry_deletions`] removes it.
async fn schedule_removal(
    txn: &sea_orm::DatabaseTransaction,
    key: &str,
) -> Result<(), sea_orm::DbErr> {
    storage_deletion::ActiveModel {
        storage_key: sea_orm::Set(key.to_owned()),
        attempts: sea_orm::Set(0),
        created_at: sea_orm::Set(Utc::now()),
    }
    .insert(txn)
    .await
    .map(drop)
}

/// Removes one object and its `storage_deletions` entry; on failure, counts the attempt.
async fn remove_object(app: &App, key: &str) {
    let entry = storage_deletion::Entity::find_by_id(key.to_owned());
    match app
        .storage
        .delete(&StorageKey::from_stored(key.to_owned()))
        .await
    {
        Ok(()) => {
            if let Err(err) = storage_deletion::Entity::delete_by_id(key.to_owned())
                .exec(&app.db)
                .await
            {
                tracing::warn!(key, error = %err, "object removed, but its deletion entry stays; it will be retried");
            }
        }
        Err(err) => {
            tracing::warn!(key, error = %err, "cannot remove object yet; it will be retried");
            if let Ok(Some(found)) = entry.one(&app.db).await {
                let attempts = found.attempts.saturating_add(1);
                let mut active = found.into_active_model();
                active.attempts = sea_orm::Set(attempts);
                if let Err(err) = active.update(&app.db).await {
                    tracing::warn!(key, error = %err, "cannot count a deletion attempt");
                }
            }
        }
    }
}

/// Retries the removal of every object still recorded in `storage_deletions`.
pub async fn retry_deletions(app: &App) -> AppResult<()> {
    let pending = storage_deletion::Entity::find()
        .order_by_asc(storage_deletion::Column::CreatedAt)
        .limit(500)
        .all(&app.db)
        .await?;
    for entry in pending {
        remove_object(app, &entry.storage_key).await;
    }
    Ok(())
}
