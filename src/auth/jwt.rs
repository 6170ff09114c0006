//! Client tokens (SPEC 5): the algorithm is pinned to the family of the configured
//! key (HS with `JWT_SECRET`, RS/PS, ES or EdDSA with `JWT_PUBLIC_KEY_FILE`), so
//! `alg: none` and HS/RS confusion cannot pass.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::config::{AuthConfig, ConfigError, Secret};
use crate::error::AppError;
use crate::ids::SafeId;

const HMAC_FAMILY: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// `scope` stays among `other`: a JSON null there is no absent claim (see [`scope_claim`]).
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Verifies bearer tokens and turns them into a [`Principal`].
pub struct JwtVerifier {
    /// Every key a token may be signed with, tried in turn: the current one, and
    /// during a rotation the other (`JWT_PREVIOUS_SECRET`, or another key in
    /// `JWT_PUBLIC_KEY_FILE`), so that no client is cut off when keys change.
    keys: Vec<VerifyingKey>,
    tenant_claim: String,
}

/// A key and what a token signed with it must meet: the algorithms of the key's
/// family (so `alg: none` and HS/RS confusion cannot pass), the claims required.
struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

const RSA_FAMILY: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl JwtVerifier {
    /// The verifier of the configured keys; `None` when neither `JWT_SECRET` nor
    /// `JWT_PUBLIC_KEY_FILE` is set (development mode).
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        if let Some(secret) = &config.jwt_secret {
            let secrets = std::iter::once(secret).chain(&config.jwt_previous_secret);
            let keys = secrets.map(|secret| DecodingKey::from_secret(secret.expose().as_bytes()));
            return Ok(Some(Self::new(
                keys.map(|key| (key, HMAC_FAMILY.as_slice())),
                config,
            )));
        }
        let Some(path) = &config.jwt_public_key_file else {
            return Ok(None);
        };
        let fail = |message: String| ConfigError::new("JWT_PUBLIC_KEY_FILE", message);
        let text = std::fs::read_to_string(path)
            .map_err(|err| fail(format!("cannot read {}: {err}", path.display())))?;
        let blocks = pem_blocks(&text);
        if blocks.is_empty() {
            return Err(fail(format!("{} holds no PEM key", path.display())));
        }
        let mut keys = Vec::with_capacity(blocks.len());
        for (number, block) in blocks.iter().enumerate() {
            let key = public_key(block)
                .map_err(|why| fail(format!("key {} of {}: {why}", number + 1, path.display())))?;
            keys.push(key);
        }
        Ok(Some(Self::new(keys, config)))
    }

    /// A verifier of HS256/384/512 tokens signed with `secret`.
    pub fn hmac(secret: &[u8], config: &AuthConfig) -> Self {
        let key = DecodingKey::from_secret(secret);
        Self::new([(key, HMAC_FAMILY.as_slice())], config)
    }

    fn new<'a>(
        keys: impl IntoIterator<Item = (DecodingKey, &'a [Algorithm])>,
        config: &AuthConfig,
    ) -> Self {
        let keys = keys
            .into_iter()
            .map(|(key, algorithms)| VerifyingKey {
                key,
                validation: validation(algorithms, config),
            })
            .collect();
        Self {
            keys,
            tenant_claim: config.tenant_claim.clone(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AppError> {
        check_header(token)?;
        let claims = self.verified_claims(token).map_err(|err| {
            tracing::debug!(error = %err, "token refused");
            AppError::Unauthenticated(format!("invalid token: {}", describe(err.kind())))
        })?;
        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| AppError::Unauthenticated("the token has no `sub` claim".into()))?;
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(AppError::Unauthenticated(format!(
                "the token's `sub` claim is longer than {MAX_SUBJECT_BYTES} bytes"
            )));
        }
        // It is stored as `createdBy`: PostgreSQL's text refuses NUL, and no log line
        // or client should receive another control character from it.
        if subject.chars().any(char::is_control) {
            return Err(AppError::Unauthenticated(
                "the token's `sub` claim holds control characters".into(),
            ));
        }
        // `sub` is read above, out of `other`: a tenant per subject is a tenant too.
        let tenant = match self.tenant_claim.as_str() {
            "sub" => Some(subject.as_str()),
            claim => match claims.other.get(claim) {
                Some(Value::String(tenant)) => Some(tenant.as_str()),
                Some(_) => {
                    return Err(AppError::Unauthenticated(format!(
                        "the token's `{claim}` claim is not a string"
                    )));
                }
                None => None,
            },
        };
        let tenant = tenant.ok_or_else(|| {
            AppError::Unauthenticated(format!("the token has no `{}` claim", self.tenant_claim))
        })?;
        let tenant = SafeId::tenant(tenant).ok_or_else(|| {
            AppError::Unauthenticated(format!(
                "the token's `{}` claim is not a valid tenant id: letters, digits, `-` and \
                 `_`, at most 64, not `{}`",
                self.tenant_claim,
                SafeId::RESERVED_TENANT
            ))
        })?;
        let scope = scope_claim(claims.other.get("scope"));
        Ok(Principal::new(tenant, subject, scope))
    }
}

impl JwtVerifier {
    /// The claims of `token` under the first key whose signature it bears; the
    /// first key's refusal when none fits. A key that does not fit the token (its
    /// signature, its family, or its curve: an ES256 token against a P-384 key)
    /// leaves it to the next; any other refusal (an expired token) is final, as
    /// its signature was checked first.
    fn verified_claims(&self, token: &str) -> jsonwebtoken::errors::Result<Claims> {
        use jsonwebtoken::errors::ErrorKind;
        let mut refused = None;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(data.claims),
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::InvalidSignature
                            | ErrorKind::InvalidAlgorithm
                            | ErrorKind::InvalidEcdsaKey
                            | ErrorKind::InvalidRsaKey(_)
                            | ErrorKind::InvalidKeyFormat
                    ) =>
                {
                    refused.get_or_insert(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(refused.unwrap_or_else(|| ErrorKind::InvalidSignature.into()))
    }
}

/// What a token signed with a key of `algorithms` must meet.
fn validation(algorithms: &[Algorithm], config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.to_vec();
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &config.jwt_issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.jwt_audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The PEM blocks of `text`, each from its `-----BEGIN` line to its `-----END` line.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN") {
        let from_begin = &rest[begin..];
        let Some(end) = from_begin.find("-----END") else {
            break;
        };
        let after_end = &from_begin[end + "-----END".len()..];
        let line_end = after_end.find('\n').map_or(after_end.len(), |at| at + 1);
        let length = end + "-----END".len() + line_end;
        blocks.push(&from_begin[..length]);
        rest = &from_begin[length..];
    }
    blocks
}

/// A PEM public key and the algorithms it verifies. jsonwebtoken reads a key's
/// contents only at each token, so a key it could never use is refused here, at the
/// start, instead of every token failing "bad signature": a private key (its public
/// half is wanted), an RSA key outside 2048 to 4096 bits (a shorter one can be
/// factored, a longer one the verifier cannot read), an EC key on a curve other
/// than P-256 (ES256) or P-384 (ES384).
fn public_key(pem: &str) -> Result<(DecodingKey, &'static [Algorithm]), String> {
    let tag = pem.lines().next().unwrap_or_default().trim();
    let public = [
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN RSA PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
    ];
    if !public.contains(&tag) {
        return Err(format!(
            "`{}` is not a public key or certificate: give the public half \
             (`openssl pkey -in KEY -pubout`)",
            crate::error::printable(tag)
        ));
    }
    let pem = pem.as_bytes();
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let bits = key
            .try_get_as_bytes()
            .ok()
            .and_then(|der| rsa::RsaPublicKey::from_pkcs1_der(der).ok())
            .map(|rsa| rsa.size() * 8);
        return match bits {
            Some(2048..=4096) => Ok((key, &RSA_FAMILY)),
            Some(bits) => Err(format!("an RSA key of {bits} bits: use 2048 to 4096")),
            None => Err("an RSA key the verifier cannot read (over 4096 bits?)".into()),
        };
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        let point = key.try_get_as_bytes().unwrap_or_default();
        if p256::ecdsa::VerifyingKey::from_sec1_bytes(point).is_ok() {
            return Ok((key, &[Algorithm::ES256]));
        }
        if p384::ecdsa::VerifyingKey::from_sec1_bytes(point).is_ok() {
            return Ok((key, &[Algorithm::ES384]));
        }
        return Err("an EC key on a curve other than P-256 (ES256) or P-384 (ES384)".into());
    }
    DecodingKey::from_ed_pem(pem)
        .map(|key| (key, [Algorithm::EdDSA].as_slice()))
        .map_err(|_| "not a PEM RSA, EC or Ed25519 public key".into())
}

/// RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` header names
/// extensions it does not understand, and attache understands none. The header is
/// read here rather than through jsonwebtoken, whose `Header` drops a `"crit": null`;
/// a header this cannot read is refused too, so no token passes one reading and not
/// the other.
fn check_header(token: &str) -> Result<(), AppError> {
    let malformed = || AppError::Unauthenticated("invalid token: malformed".into());
    let segment = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| malformed())?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if header.contains_key("crit") {
        return Err(AppError::Unauthenticated(
            "invalid token: unsupported critical header (crit)".into(),
        ));
    }
    Ok(())
}

/// The longest `sub` taken: it is stored with every attachment a token writes
/// (`createdBy`), and OpenID Connect caps a subject at 255 ASCII characters.
pub const MAX_SUBJECT_BYTES: usize = 255;

/// The optional `scope` claim (SPEC 5): absent, `None` (unrestricted); a string, the
/// scopes it names; `null` or any other JSON type names none, so it restricts
/// everything rather than nothing.
fn scope_claim(value: Option<&Value>) -> Option<&str> {
    match value {
        None => None,
        Some(Value::String(scope)) => Some(scope),
        Some(_) => Some(""),
    }
}

/// A short reason a client can act on, without echoing the token.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> std::borrow::Cow<'static, str> {
    use jsonwebtoken::errors::ErrorKind as Kind;
    // The claims required are the server's (exp, and iss and aud when configured).
    if let Kind::MissingRequiredClaim(claim) = kind {
        return format!("the required claim `{claim}` is missing").into();
    }
    let reason = match kind {
        Kind::ExpiredSignature => "expired",
        Kind::ImmatureSignature => "not valid yet (nbf)",
        Kind::InvalidIssuer => "wrong issuer",
        Kind::InvalidAudience => "wrong audience",
        Kind::InvalidAlgorithm | Kind::InvalidAlgorithmName => "algorithm not accepted",
        Kind::InvalidSignature => "bad signature",
        _ => "malformed",
    };
    reason.into()
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(flatten)]
    tenant: Map<String, Value>,
}

/// Mints HS256 tokens: `attache token` and the development token of `serve`.
pub struct TokenMinter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
}

impl TokenMinter {
    pub fn new(secret: &Secret, config: &AuthConfig) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            tenant_claim: config.tenant_claim.clone(),
        }
    }

    pub fn mint(
        &self,
        tenant: &SafeId,
        subject: &str,
        ttl: Duration,
        scope: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut tenant_claim = Map::new();
        // With `TENANT_CLAIM=sub` the subject is the tenant: one `sub` claim.
        let subject = match self.tenant_claim.as_str() {
            "sub" => tenant.as_str(),
            claim => {
                tenant_claim.insert(claim.to_owned(), Value::String(tenant.to_string()));
                subject
            }
        };
        let claims = MintedClaims {
            sub: subject,
            iat: now,
            exp: now + ttl.as_secs(),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            scope,
            tenant: tenant_claim,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Access;

    const SECRET: &[u8] = b"unit-test-secret";

    fn verifier() -> JwtVerifier {
        let config = AuthConfig {
            jwt_secret: None,
            jwt_previous_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            tenant_claim: "tenant_id".into(),
        };
        JwtVerifier::hmac(SECRET, &config)
    }

    fn token(header: &Header, claims: Value) -> String {
        jsonwebtoken::encode(header, &claims, &EncodingKey::from_secret(SECRET)).expect("encode")
    }

    fn claims(extra: Value) -> Value {
        let mut claims = serde_json::json!({
            "sub": "u",
            "tenant_id": "acme",
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        claims
    }

    fn access(extra: Value) -> (bool, bool) {
        let principal = verifier()
            .verify(&token(&Header::new(Algorithm::HS256), claims(extra)))
            .expect("a valid token");
        (
            principal.require(Access::Read).is_ok(),
            principal.require(Access::Write).is_ok(),
        )
    }

    #[test]
    fn a_key_file_is_read_block_by_block() {
        let text = "comment\n-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n\
                    -----BEGIN PUBLIC KEY-----\nBBB\n-----END PUBLIC KEY-----";
        assert_eq!(
            pem_blocks(text),
            vec![
                "-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n",
                "-----BEGIN PUBLIC KEY-----\nBBB\n-----END PUBLIC KEY-----",
            ]
        );
        assert!(pem_blocks("-----BEGIN PUBLIC KEY-----\nno end").is_empty());
    }

    #[test]
    fn a_null_or_odd_scope_restricts_like_an_empty_one() {
        use serde_json::json;
        assert_eq!(access(json!({})), (true, true), "no scope claim");
        assert_eq!(
            access(json!({ "scope": "attachments:read" })),
            (true, false)
        );
        assert_eq!(access(json!({ "scope": "" })), (false, false));
        for odd in [
            json!(null),
            json!(1),
            json!(["attachments:read"]),
            json!({}),
        ] {
            assert_eq!(access(json!({ "scope": odd })), (false, false), "{odd}");
        }
    }

    #[test]
    fn scopes_split_on_ascii_space_only() {
        use serde_json::json;
        assert_eq!(
            access(json!({ "scope": "x attachments:read  attachments:write" })),
            (true, true)
        );
        for separator in ["\u{a0}", "\t", "\n", "\u{2003}"] {
            let scope = format!("x{separator}attachments:read");
            assert_eq!(
                access(json!({ "scope": scope })),
                (false, false),
                "{scope:?}"
            );
        }
    }

    #[test]
    fn a_critical_header_is_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let refused = verifier().verify(&token(&header, claims(Value::Null)));
        assert!(
            matches!(&refused, Err(AppError::Unauthenticated(message))
                if message == "invalid token: unsupported critical header (crit)"),
            "{refused:?}"
        );

        let valid = token(&Header::new(Algorithm::HS256), claims(Value::Null));
        let (_, rest) = valid.split_once('.').expect("a JWT");
        let null_crit = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","crit":null}"#);
        let refused = verifier().verify(&format!("{null_crit}.{rest}"));
        assert!(matches!(refused, Err(AppError::Unauthenticated(_))));
        assert!(verifier().verify(&valid).is_ok());
    }
}
