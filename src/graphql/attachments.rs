//! The attachment domain of the schema: the `Attachment` type, its queries and its
//! mutations. Resolvers parse input and call `crate::attachments`; they import
//! neither sea-orm nor OpenDAL.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ErrorExtensions, ID, InputObject, Object, ResultExt, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use entity::attachment;
use std::sync::Arc;
use uuid::Uuid;

use crate::app::{App, SharedApp, UploadSlot};
use crate::attachments::urls;
use crate::attachments::{self, Draft, StreamCheck, Target, ValidUpload, direct, upload};
use crate::auth::{Access, Principal};
use crate::error::{AppError, AppResult};
use crate::graphql::bounds::{FileCount, ListField};
use crate::graphql::context::{app, principal, upload_slot};
use crate::graphql::file_parts::{self, FileArgument, Part, Parts};
use crate::graphql::large_strings;
use crate::ids::SafeId;

/// Largest page of `attachments`.
const MAX_PAGE: i32 = 100;
/// The page a listing gets without `first`.
const DEFAULT_PAGE: i32 = 20;

pub struct Attachment(attachment::Model);

// Fields resolve one after another: none waits on I/O in normal operation, and a
// page of 20 then costs a loop instead of 20 sets of concurrent futures.
#[Object(serial)]
impl Attachment {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn owner_type(&self) -> &str {
        &self.0.owner_type
    }

    async fn owner_id(&self) -> Option<&str> {
        self.0.owner_id.as_deref()
    }

    async fn filename(&self) -> &str {
        &self.0.filename
    }

    async fn content_type(&self) -> &str {
        &self.0.content_type
    }

    async fn byte_size(&self) -> i64 {
        self.0.byte_size
    }

    async fn sha256(&self) -> &str {
        &self.0.sha256
    }

    /// Absolute URL a browser can GET without headers: presigned S3 URL, public URL, or signed download link.
    async fn url(
        &self,
        ctx: &Context<'_>,
        ttl_seconds: Option<i32>,
    ) -> async_graphql::Result<String> {
        let app = app(ctx)?;
        let ttl = urls::clamp_ttl(app, ttl_seconds.map(i64::from));
        urls::browser_url(app, &self.0, ttl).await.extend()
    }

    /// Absolute URL of the authenticated download route (needs the bearer token).
    async fn download_url(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(urls::download_url(app(ctx)?, self.0.id))
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
}

/// The listing's own fields; `totalCount` is counted only when a client asks for it.
pub struct AttachmentTotal {
    tenant: SafeId,
    target: Target,
}

#[Object]
impl AttachmentTotal {
    /// How many attachments match, on every page.
    async fn total_count(&self, ctx: &Context<'_>) -> async_graphql::Result<u64> {
        attachments::count(app(ctx)?, &self.tenant, &self.target)
            .await
            .extend()
    }
}

type AttachmentConnection = Connection<String, Attachment, AttachmentTotal>;

#[derive(Default)]
pub struct AttachmentQuery;

#[Object]
impl AttachmentQuery {
    /// One attachment of the caller's tenant; null when missing or another tenant's.
    async fn attachment(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<Attachment>> {
        let principal = principal(ctx, Access::Read)?;
        let Ok(id) = Uuid::parse_str(&id) else {
            return Ok(None);
        };
        let found = attachments::find(app(ctx)?, &principal.tenant, id)
            .await
            .extend()?;
        Ok(found.map(Attachment))
    }

    /// Newest first. Relay cursor pagination; first is at most 100.
    async fn attachments(
        &self,
        ctx: &Context<'_>,
        owner_type: String,
        owner_id: Option<String>,
        #[graphql(default_with = "Some(DEFAULT_PAGE)")] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<AttachmentConnection> {
        let principal = principal(ctx, Access::Read)?;
        let app = app(ctx)?;
        let target = Target::filter(&app.collections, &owner_type, owner_id.as_deref()).extend()?;
        let page = list(app, principal, &target, first, after.as_deref())
            .await
            .extend()?;
        let mut connection = Connection::with_additional_fields(
            after.is_some(),
            page.has_next_page,
            AttachmentTotal {
                tenant: principal.tenant.clone(),
                target,
            },
        );
        connection.edges.extend(
            page.rows
                .into_iter()
                .map(|row| Edge::new(encode_cursor(row.id), Attachment(row))),
        );
        Ok(connection)
    }
}

async fn list(
    app: &App,
    principal: &Principal,
    target: &Target,
    first: Option<i32>,
    after: Option<&str>,
) -> AppResult<attachments::Page> {
    let first = first.unwrap_or(DEFAULT_PAGE);
    if !(0..=MAX_PAGE).contains(&first) {
        return Err(AppError::bad_input(format!(
            "first must be between 0 and {MAX_PAGE}"
        )));
    }
    let after = after.map(decode_cursor).transpose()?;
    attachments::list(app, &principal.tenant, target, first as u64, after).await
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> AppResult<Uuid> {
    // 16 bytes in unpadded base64; anything longer is refused before it is decoded.
    const CURSOR_LENGTH: usize = 22;
    Some(cursor)
        .filter(|cursor| cursor.len() == CURSOR_LENGTH)
        .and_then(|cursor| URL_SAFE_NO_PAD.decode(cursor).ok())
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| {
            AppError::bad_input(
                "invalid cursor: `after` takes a `cursor` or the `pageInfo.endCursor` of a page of this listing",
            )
        })
}

#[derive(InputObject)]
pub struct UploadAttachmentInput {
    owner_type: String,
    owner_id: Option<String>,
    filename: String,
    content_type: Option<String>,
    base64: String,
    sha256: Option<String>,
}

#[derive(InputObject)]
pub struct UploadAttachmentFileInput {
    owner_type: String,
    owner_id: Option<String>,
    file: FileArgument,
    sha256: Option<String>,
}

#[derive(InputObject)]
pub struct DirectUploadInput {
    owner_type: String,
    owner_id: Option<String>,
    filename: String,
    content_type: String,
    byte_size: i64,
    sha256: String,
}

#[derive(SimpleObject)]
pub struct DirectUpload {
    id: ID,
    /// PUT the file's bytes here, with `headers`.
    upload_url: String,
    headers: Vec<HttpHeader>,
    expires_at: DateTime<Utc>,
}

#[derive(SimpleObject)]
pub struct HttpHeader {
    name: String,
    value: String,
}

impl UploadAttachmentInput {
    /// SPEC 4 in order: owner type, base64, then the checks of [`ValidUpload::check`].
    async fn validate(self, ctx: &Context<'_>, app: &App) -> AppResult<ValidUpload> {
        let draft = Draft {
            owner_type: &self.owner_type,
            owner_id: self.owner_id.as_deref(),
            filename: &self.filename,
            declared_type: self.content_type.as_deref(),
            sha256: self.sha256.as_deref(),
        };
        let content = async { large_strings::decode(ctx, &self.base64, upload::decode_base64) };
        ValidUpload::parse(
            &app.collections,
            draft,
            content,
            app.config.limits.max_upload_bytes,
        )
        .await
    }
}

/// The mutation fields that store or announce files, and how many each does: the
/// request-wide MAX_BATCH_FILES counts them before anything runs.
pub(super) const FILE_FIELDS: [(&str, FileCount); 5] = [
    ("uploadAttachment", FileCount::One),
    ("uploadAttachments", FileCount::EachOf("input")),
    ("uploadAttachmentFile", FileCount::One),
    ("createDirectUpload", FileCount::One),
    ("completeDirectUpload", FileCount::One),
];

/// The listing, whose rows the request-wide MAX_QUERY_ROWS counts before anything
/// runs: complexity counts a page of 100 rows as one field.
pub(super) const LISTING: ListField = ListField {
    name: "attachments",
    first: "first",
    default_first: DEFAULT_PAGE as u64,
    most_first: MAX_PAGE as u64,
    count: "totalCount",
    count_rows: COUNT_ROWS,
};

/// What a `totalCount` is charged in MAX_QUERY_ROWS: a count reads every row of its
/// scope's index, so it costs at least what a full page costs.
const COUNT_ROWS: u64 = 100;

#[derive(Default)]
pub struct AttachmentMutation;

#[Object]
impl AttachmentMutation {
    async fn upload_attachment(
        &self,
        ctx: &Context<'_>,
        input: UploadAttachmentInput,
    ) -> async_graphql::Result<Attachment> {
        let principal = principal(ctx, Access::Write)?;
        let app = app(ctx)?;
        let upload = input.validate(ctx, app).await.extend()?;
        store_one(app, principal, upload_slot(ctx), upload).await
    }

    /// All or nothing: either every file is stored or none is.
    async fn upload_attachments(
        &self,
        ctx: &Context<'_>,
        input: Vec<UploadAttachmentInput>,
    ) -> async_graphql::Result<Vec<Attachment>> {
        let principal = principal(ctx, Access::Write)?;
        let app = app(ctx)?;
        let mut uploads = Vec::with_capacity(input.len());
        for (index, file) in input.into_iter().enumerate() {
            let upload = file.validate(ctx, app).await.map_err(|err| {
                let mut error = err.extend().extend_with(|_, ext| ext.set("index", index));
                error.message = format!("file {index}: {}", error.message);
                error
            })?;
            uploads.push(upload);
        }
        let rows = attachments::create(app, principal, upload_slot(ctx), uploads)
            .await
            .extend()?;
        Ok(rows.into_iter().map(Attachment).collect())
    }

    /// Stores a file sent as a part of a `multipart/form-data` request.
    async fn upload_attachment_file(
        &self,
        ctx: &Context<'_>,
        input: UploadAttachmentFileInput,
    ) -> async_graphql::Result<Attachment> {
        let principal = principal(ctx, Access::Write)?;
        let app = app(ctx)?;
        let parts = ctx.data_opt::<Arc<Parts>>().ok_or_else(|| {
            AppError::bad_input("the file part is missing: send files in a multipart request")
                .extend()
        })?;
        let Part {
            filename,
            content_type,
            body,
        } = parts.take(input.file.0).await.extend()?;
        let max = app.config.limits.max_upload_bytes;
        let draft = Draft {
            owner_type: &input.owner_type,
            owner_id: input.owner_id.as_deref(),
            filename: &filename,
            declared_type: content_type.as_deref(),
            sha256: input.sha256.as_deref(),
        };
        let (head, body) = file_parts::head(body).await.extend()?;
        let check = StreamCheck::start(&app.collections, draft, None, &head, max).extend()?;
        let row = attachments::create_streamed(app, principal, upload_slot(ctx), check, None, body)
            .await
            .extend()?;
        Ok(Attachment(row))
    }

    /// Announces a file the client will PUT to `uploadUrl` itself.
    async fn create_direct_upload(
        &self,
        ctx: &Context<'_>,
        input: DirectUploadInput,
    ) -> async_graphql::Result<DirectUpload> {
        let principal = principal(ctx, Access::Write)?;
        let app = app(ctx)?;
        let target = Target::resolve(
            &app.collections,
            &input.owner_type,
            input.owner_id.as_deref(),
        )
        .extend()?;
        let declaration = direct::Declaration {
            filename: &input.filename,
            content_type: &input.content_type,
            byte_size: input.byte_size,
            sha256: &input.sha256,
        };
        let announced = direct::announce(app, principal, target, declaration)
            .await
            .extend()?;
        Ok(DirectUpload {
            id: ID(announced.id.to_string()),
            upload_url: announced.upload_url,
            headers: announced
                .headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            expires_at: announced.expires_at,
        })
    }

    /// Checks the uploaded file against its declaration and creates the attachment.
    async fn complete_direct_upload(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Attachment> {
        let principal = principal(ctx, Access::Write)?;
        let id = Uuid::parse_str(&id)
            .map_err(|_| AppError::NotFound("no such direct upload".into()).extend())?;
        let row = direct::complete(app(ctx)?, principal, upload_slot(ctx), id)
            .await
            .extend()?;
        Ok(Attachment(row))
    }

    /// Deletes the row and the stored file; returns the id.
    async fn delete_attachment(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ID> {
        let principal = principal(ctx, Access::Write)?;
        let id = Uuid::parse_str(&id).map_err(|_| AppError::not_found().extend())?;
        let deleted = attachments::delete(app(ctx)?, &principal.tenant, id)
            .await
            .extend()?;
        Ok(ID(deleted.to_string()))
    }
}

async fn store_one(
    app: &SharedApp,
    principal: &Principal,
    slot: Option<UploadSlot>,
    upload: ValidUpload,
) -> async_graphql::Result<Attachment> {
    let mut rows = attachments::create(app, principal, slot, vec![upload])
        .await
        .extend()?;
    rows.pop()
        .map(Attachment)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("create returned no row")).extend())
}
