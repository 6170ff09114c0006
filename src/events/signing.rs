//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, keyed with the base64 part of a `whsec_...` secret, so any
//! Standard Webhooks library verifies what attache sends.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::ConfigError;

/// The key of `WEBHOOK_SECRET`; never printed.
#[derive(Clone)]
pub struct WebhookSecret {
    /// Keyed once; each message starts from a copy.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// The key sizes the Standard Webhooks convention accepts.
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

impl WebhookSecret {
    /// `whsec_` followed by the base64 of the key; the error never echoes the value.
    pub fn parse(secret: &str) -> Result<Self, ConfigError> {
        let malformed = || {
            ConfigError::new(
                "WEBHOOK_SECRET",
                "must be `whsec_` followed by a base64 key (as Standard Webhooks libraries generate)",
            )
        };
        let encoded = secret.trim().strip_prefix("whsec_").ok_or_else(malformed)?;
        let key = STANDARD.decode(encoded).map_err(|_| malformed())?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(ConfigError::new(
                "WEBHOOK_SECRET",
                format!(
                    "its key has {} bytes; the Standard Webhooks convention asks for \
                     {MIN_KEY_BYTES} to {MAX_KEY_BYTES} (`whsec_` + the base64 of \
                     `openssl rand 32`)",
                    key.len()
                ),
            ));
        }
        let keyed = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| malformed())?;
        Ok(Self { keyed })
    }

    /// The `webhook-signature` header value of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn signs_the_published_test_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_malformed_secrets_without_echoing_them() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
        ] {
            let Err(err) = WebhookSecret::parse(bad) else {
                panic!("{bad:?} was accepted");
            };
            assert_eq!(err.variable, "WEBHOOK_SECRET");
            assert!(bad.len() <= 6 || !err.to_string().contains(bad), "{err}");
        }
    }
}
