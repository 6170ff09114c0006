//! Who is calling: JWT verification ([`jwt`]), the tenant and scopes it grants
//! ([`Principal`]), and HMAC-signed download and upload links ([`link`]).

pub mod jwt;
pub mod link;

use std::collections::HashSet;

use crate::error::AppError;
use crate::ids::SafeId;

pub use jwt::{JwtVerifier, TokenMinter};
pub use link::LinkSigner;

/// What an operation needs from the token's optional `scope` claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn scope(self) -> &'static str {
        match self {
            Self::Read => "attachments:read",
            Self::Write => "attachments:write",
        }
    }
}

/// A verified caller: every read and write is confined to `tenant`.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: SafeId,
    pub subject: String,
    /// `None` when the token has no `scope` claim: then everything is allowed.
    scopes: Option<HashSet<String>>,
}

impl Principal {
    /// `scope` is the claim's text: a space-separated list (RFC 8693 §4.2), split on
    /// U+0020 only, so `"x\u{a0}attachments:read"` is one scope that grants nothing.
    pub fn new(tenant: SafeId, subject: String, scope: Option<&str>) -> Self {
        let scopes = scope.map(|scope| {
            scope
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Self {
            tenant,
            subject,
            scopes,
        }
    }

    /// FORBIDDEN unless the token's scopes (when it has any) grant `access`.
    pub fn require(&self, access: Access) -> Result<(), AppError> {
        if self.may(access) {
            return Ok(());
        }
        Err(AppError::Forbidden(format!(
            "this token lacks the scope {}",
            access.scope()
        )))
    }

    /// Whether the token's scopes (when it has any) grant `access`.
    pub fn may(&self, access: Access) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(access.scope()))
    }
}
