//! Tokens minted the way an identity provider would, with the tests' keys.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const SECRET: &str = "test-secret-with-enough-entropy-0123456789";
pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token of `tenant`'s user for an hour, as the identity provider of the tests
/// mints it.
pub fn token_for(tenant: &str) -> String {
    hs256(json!({ "sub": "user-1", "tenant_id": tenant, "exp": now() + 3600 }))
}

/// A token signed with the tests' HS256 secret.
pub fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn sign(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).expect("sign a token")
}
