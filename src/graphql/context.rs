//! What resolvers may ask of the request: the app and the verified caller. Resolvers
//! never read headers; the HTTP layer verifies the token once and puts the
//! verified [`Principal`] here.

use async_graphql::{Context, ErrorExtensions};

use crate::app::{SharedApp, UploadSlot};
use crate::auth::{Access, Principal};
use crate::error::AppError;

pub fn app<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a SharedApp> {
    ctx.data::<SharedApp>()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("schema built without the app")).extend())
}

/// The verified caller, allowed `access`; FORBIDDEN otherwise. The HTTP layer
/// answers UNAUTHENTICATED before a request without a valid token gets here.
pub fn principal<'a>(ctx: &Context<'a>, access: Access) -> async_graphql::Result<&'a Principal> {
    let principal = ctx.data_opt::<Principal>().ok_or_else(|| {
        AppError::Unauthenticated("an `Authorization: Bearer <token>` header is required".into())
            .extend()
    })?;
    principal.require(access).map_err(|err| err.extend())?;
    Ok(principal)
}

/// The upload slot the request holds, if it took one (a body past 64 KiB): each
/// store the request starts holds it too, so a client that hangs up frees it only
/// once they end.
pub fn upload_slot(ctx: &Context<'_>) -> Option<UploadSlot> {
    ctx.data_opt::<UploadSlot>().cloned()
}
