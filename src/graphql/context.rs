//! What resolvers may ask of the request: the app and the verified caller. Resolvers
//! never read headers; the HTTP layer verifies the token once and puts a [`Caller`] here.

use async_graphql::{Context, ErrorExtensions};

use crate::app::SharedApp;
use crate::auth::{Access, Principal};
use crate::error::AppError;

/// The outcome of the bearer token check, as the HTTP layer found it.
#[derive(Clone)]
pub enum Caller {
    Anonymous,
    Refused(String),
    Verified(Principal),
}

pub fn app<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a SharedApp> {
    ctx.data::<SharedApp>()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("schema built without the app")).extend())
}

/// The verified caller, allowed `access`; UNAUTHENTICATED or FORBIDDEN otherwise.
pub fn principal<'a>(ctx: &Context<'a>, access: Access) -> async_graphql::Result<&'a Principal> {
    let principal = match ctx.data_opt::<Caller>() {
        Some(Caller::Verified(principal)) => principal,
        Some(Caller::Refused(reason)) => {
            return Err(AppError::Unauthenticated(reason.clone()).extend());
        }
        _ => {
            return Err(AppError::Unauthenticated(
                "an `Authorization: Bearer <token>` header is required".into(),
            )
            .extend());
        }
    };
    principal.require(access).map_err(|err| err.extend())?;
    Ok(principal)
}
