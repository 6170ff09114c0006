//! Signed links (SPEC 7): an HMAC-SHA256 over purpose, id, tenant and expiry, so a
//! link does one thing to one file of one tenant until it expires, and nothing else.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::AppError;
use crate::ids::SafeId;

type HmacSha256 = Hmac<Sha256>;

/// The query of a signed link: `?tenant=..&expires=..&signature=..`. Strings, so that
/// a malformed value is a refused link (403) rather than a rejected request.
#[derive(Debug, Default, Deserialize)]
pub struct LinkQuery {
    pub tenant: Option<String>,
    pub expires: Option<String>,
    pub signature: Option<String>,
}

impl LinkQuery {
    /// Whether the request tries a signed link at all (else: the bearer token).
    pub fn is_present(&self) -> bool {
        self.tenant.is_some() || self.expires.is_some() || self.signature.is_some()
    }
}

pub struct LinkSigner {
    key: Vec<u8>,
}

/// What a link allows; a download link cannot be replayed as an upload link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPurpose {
    Download,
    Upload,
}

/// Why a signed link was refused; both answer 403.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkFault {
    Expired,
    BadSignature,
}

impl LinkSigner {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, purpose: LinkPurpose, id: Uuid, tenant: &str, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{purpose:?}\n{id}\n{tenant}\n{expires}").as_bytes());
        mac
    }

    /// The hex signature of a `purpose` link to `id` of `tenant`, valid until `expires` (unix seconds).
    pub fn sign(&self, purpose: LinkPurpose, id: Uuid, tenant: &str, expires: i64) -> String {
        hex::encode(
            self.mac(purpose, id, tenant, expires)
                .finalize()
                .into_bytes(),
        )
    }

    /// Checks expiry, then the signature in constant time.
    pub fn verify(
        &self,
        purpose: LinkPurpose,
        id: Uuid,
        tenant: &str,
        expires: i64,
        signature: &str,
        now: i64,
    ) -> Result<(), LinkFault> {
        if expires < now {
            return Err(LinkFault::Expired);
        }
        let given = hex::decode(signature).map_err(|_| LinkFault::BadSignature)?;
        let expected = self
            .mac(purpose, id, tenant, expires)
            .finalize()
            .into_bytes();
        if bool::from(expected.as_slice().ct_eq(&given)) {
            Ok(())
        } else {
            Err(LinkFault::BadSignature)
        }
    }
}

impl LinkSigner {
    /// Checks a link before anything is looked up: complete, unexpired, signed for
    /// `purpose`, `id` and its tenant. Every fault is FORBIDDEN; the tenant it
    /// returns scopes the lookup that follows.
    pub fn authorize(
        &self,
        purpose: LinkPurpose,
        id: &str,
        query: &LinkQuery,
    ) -> Result<(Uuid, SafeId), AppError> {
        let refused = |reason: &str| AppError::Forbidden(reason.to_owned());
        let (Some(tenant), Some(expires), Some(signature)) =
            (&query.tenant, &query.expires, &query.signature)
        else {
            return Err(refused("incomplete signed link"));
        };
        let expires: i64 = expires
            .parse()
            .map_err(|_| refused("malformed signed link"))?;
        let id = Uuid::parse_str(id).map_err(|_| refused("invalid link signature"))?;
        let tenant = SafeId::parse(tenant).ok_or_else(|| refused("invalid link signature"))?;
        let now = chrono::Utc::now().timestamp();
        match self.verify(purpose, id, tenant.as_str(), expires, signature, now) {
            Ok(()) => Ok((id, tenant)),
            Err(LinkFault::Expired) => Err(refused("this link has expired")),
            Err(LinkFault::BadSignature) => Err(refused("invalid link signature")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_id_tenant_and_expiry() {
        let signer = LinkSigner::new(b"key");
        let (id, acme, other) = (Uuid::now_v7(), "acme", "other");
        let signature = signer.sign(LinkPurpose::Download, id, acme, 1000);
        assert_eq!(
            signer.verify(LinkPurpose::Download, id, acme, 1000, &signature, 999),
            Ok(())
        );
        assert_eq!(
            signer.verify(LinkPurpose::Download, id, other, 1000, &signature, 999),
            Err(LinkFault::BadSignature)
        );
        assert_eq!(
            signer.verify(LinkPurpose::Download, id, acme, 1001, &signature, 999),
            Err(LinkFault::BadSignature)
        );
        assert_eq!(
            signer.verify(
                LinkPurpose::Download,
                Uuid::now_v7(),
                acme,
                1000,
                &signature,
                999
            ),
            Err(LinkFault::BadSignature)
        );
        assert_eq!(
            signer.verify(LinkPurpose::Download, id, acme, 1000, &signature, 1001),
            Err(LinkFault::Expired)
        );
        assert_eq!(
            signer.verify(LinkPurpose::Upload, id, acme, 1000, &signature, 999),
            Err(LinkFault::BadSignature)
        );
    }
}
