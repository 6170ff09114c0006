//! Client tokens (SPEC 5): the algorithm is pinned to the family of the configured
//! key (HS with `JWT_SECRET`, RS/PS, ES or EdDSA with `JWT_PUBLIC_KEY_FILE`), so
//! `alg: none` and HS/RS confusion cannot pass.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::config::{AuthConfig, ConfigError, Secret};
use crate::error::AppError;
use crate::ids::SafeId;

const HMAC_FAMILY: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    scope: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Verifies bearer tokens and turns them into a [`Principal`].
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
}

impl JwtVerifier {
    /// The verifier of the configured key; `None` when neither `JWT_SECRET` nor
    /// `JWT_PUBLIC_KEY_FILE` is set (development mode).
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        if let Some(secret) = &config.jwt_secret {
            return Ok(Some(Self::hmac(secret.expose().as_bytes(), config)));
        }
        let Some(path) = &config.jwt_public_key_file else {
            return Ok(None);
        };
        let fail = |message: String| ConfigError::new("JWT_PUBLIC_KEY_FILE", message);
        let pem = std::fs::read(path)
            .map_err(|err| fail(format!("cannot read {}: {err}", path.display())))?;
        let (key, family): (DecodingKey, &[Algorithm]) =
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                let rsa = &[
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ];
                (key, rsa)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, &[Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (key, &[Algorithm::EdDSA])
            } else {
                return Err(fail(format!(
                    "{} is not a PEM RSA, EC or Ed25519 public key",
                    path.display()
                )));
            };
        Ok(Some(Self::new(key, family, config)))
    }

    /// A verifier of HS256/384/512 tokens signed with `secret`.
    pub fn hmac(secret: &[u8], config: &AuthConfig) -> Self {
        Self::new(DecodingKey::from_secret(secret), &HMAC_FAMILY, config)
    }

    fn new(key: DecodingKey, algorithms: &[Algorithm], config: &AuthConfig) -> Self {
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
        Self {
            key,
            validation,
            tenant_claim: config.tenant_claim.clone(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AppError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| {
                tracing::debug!(error = %err, "token refused");
                AppError::Unauthenticated(format!("invalid token: {}", describe(err.kind())))
            })?;
        let claims = data.claims;
        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| AppError::Unauthenticated("the token has no `sub` claim".into()))?;
        let tenant = claims
            .other
            .get(&self.tenant_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                AppError::Unauthenticated(format!("the token has no `{}` claim", self.tenant_claim))
            })?;
        let tenant = SafeId::parse(tenant).ok_or_else(|| {
            AppError::Unauthenticated(format!(
                "the token's `{}` claim is not a valid tenant id",
                self.tenant_claim
            ))
        })?;
        Ok(Principal::new(tenant, subject, claims.scope.as_deref()))
    }
}

/// A short reason a client can act on, without echoing the token.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as Kind;
    match kind {
        Kind::ExpiredSignature => "expired",
        Kind::ImmatureSignature => "not valid yet (nbf)",
        Kind::InvalidIssuer => "wrong issuer",
        Kind::InvalidAudience => "wrong audience",
        Kind::InvalidAlgorithm | Kind::InvalidAlgorithmName => "algorithm not accepted",
        Kind::InvalidSignature => "bad signature",
        Kind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed",
    }
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
        tenant_claim.insert(self.tenant_claim.clone(), Value::String(tenant.to_string()));
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
