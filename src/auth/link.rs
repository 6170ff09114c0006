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
    /// Keyed once; each link starts from a copy.
    keyed: HmacSha256,
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
        let keyed = HmacSha256::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { keyed }
    }

    fn mac(&self, purpose: LinkPurpose, id: Uuid, tenant: &str, expires: i64) -> HmacSha256 {
        let mut mac = self.keyed.clone();
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
        let expires = canonical_expiry(expires).ok_or_else(|| refused("malformed signed link"))?;
        if !is_canonical_signature(signature) {
            return Err(refused("invalid link signature"));
        }
        let id = canonical_id(id).ok_or_else(|| refused("invalid link signature"))?;
        let tenant = SafeId::tenant(tenant).ok_or_else(|| refused("invalid link signature"))?;
        let now = chrono::Utc::now().timestamp();
        match self.verify(purpose, id, tenant.as_str(), expires, signature, now) {
            Ok(()) => Ok((id, tenant)),
            Err(LinkFault::Expired) => Err(refused(
                "this link has expired: ask attache for the attachment's url again",
            )),
            Err(LinkFault::BadSignature) => Err(refused("invalid link signature")),
        }
    }
}

/// The expiry as attache writes it: ASCII digits, no sign, no leading zero. Another
/// spelling of the same number would be another URL for one signature: refused.
fn canonical_expiry(value: &str) -> Option<i64> {
    let digits = !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
    let leading_zero = value.len() > 1 && value.starts_with('0');
    if !digits || leading_zero {
        return None;
    }
    value.parse().ok()
}

/// A signature as [`LinkSigner::sign`] writes it: 64 lowercase hex digits.
fn is_canonical_signature(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// The id as links name it: the lowercase hyphenated form. Uppercase, simple, braced
/// or `urn:uuid:` spellings of the same UUID are refused.
fn canonical_id(value: &str) -> Option<Uuid> {
    let id = Uuid::parse_str(value).ok()?;
    (id.hyphenated().to_string() == value).then_some(id)
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

    fn authorize(
        signer: &LinkSigner,
        id: &str,
        expires: &str,
        signature: &str,
    ) -> Result<(Uuid, SafeId), AppError> {
        let query = LinkQuery {
            tenant: Some("acme".into()),
            expires: Some(expires.into()),
            signature: Some(signature.into()),
        };
        signer.authorize(LinkPurpose::Download, id, &query)
    }

    #[test]
    fn authorize_accepts_only_the_canonical_link() {
        let signer = LinkSigner::new(b"key");
        let id = Uuid::now_v7();
        let expires = chrono::Utc::now().timestamp() + 3600;
        let signature = signer.sign(LinkPurpose::Download, id, "acme", expires);
        let (path, digits) = (id.to_string(), expires.to_string());
        assert!(authorize(&signer, &path, &digits, &signature).is_ok());

        for expiry in [
            format!("+{digits}"),
            format!("0{digits}"),
            format!("000{digits}"),
            format!(" {digits}"),
            format!("{digits} "),
            format!("{digits}.0"),
            String::new(),
        ] {
            let refused = authorize(&signer, &path, &expiry, &signature);
            assert!(
                matches!(refused, Err(AppError::Forbidden(_))),
                "expires={expiry:?}"
            );
        }
        for other in [
            signature.to_uppercase(),
            format!("{signature}00"),
            signature[..62].to_owned(),
            format!(" {}", &signature[1..]),
        ] {
            let refused = authorize(&signer, &path, &digits, &other);
            assert!(
                matches!(refused, Err(AppError::Forbidden(_))),
                "signature={other:?}"
            );
        }
        for spelling in [
            path.to_uppercase(),
            id.simple().to_string(),
            id.urn().to_string(),
            id.braced().to_string(),
            format!(" {path}"),
        ] {
            let refused = authorize(&signer, &spelling, &digits, &signature);
            assert!(
                matches!(refused, Err(AppError::Forbidden(_))),
                "id={spelling:?}"
            );
        }
    }

    #[test]
    fn zero_is_the_one_expiry_that_starts_with_a_zero() {
        assert_eq!(canonical_expiry("0"), Some(0));
        assert_eq!(canonical_expiry("10"), Some(10));
        assert_eq!(canonical_expiry("00"), None);
        assert_eq!(canonical_expiry("-1"), None);
        assert_eq!(canonical_expiry("99999999999999999999"), None);
    }
}
