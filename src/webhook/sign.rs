//! Secrets, ids and signatures of the Standard Webhooks scheme.
//!
//! A secret is `whsec_` plus the base64 of [`SECRET_BYTES`] random bytes; the signing key is
//! those bytes. The signature of a message is `v1,` plus the base64 of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Prefix of every secret.
pub(crate) const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a secret (the HMAC key).
pub(crate) const SECRET_BYTES: usize = 32;

/// A new secret: `whsec_` + base64 of [`SECRET_BYTES`] random bytes.
pub(crate) fn new_secret() -> String {
    let key: [u8; SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// A new endpoint id: `wh_` + 128 random bits in hex.
pub(crate) fn new_endpoint_id() -> String {
    format!("wh_{:032x}", rand::random::<u128>())
}

/// A random token that marks this instance's claim of one delivery in Redis.
pub(crate) fn new_claim_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The `webhook-id` of `event` sent to `endpoint`: the same on every attempt and on every
/// instance, different for each endpoint. `msg_` + the first 128 bits of a SHA-256 of both.
pub(crate) fn message_id(event: &str, endpoint: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(event.as_bytes());
    hash.update([0]);
    hash.update(endpoint.as_bytes());
    let digest = hash.finalize();
    let mut id = String::with_capacity(36);
    id.push_str("msg_");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The HMAC key of `secret`, when it is a well-formed secret.
fn key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    STANDARD.decode(encoded).ok()
}

/// The `webhook-signature` header of a message: `v1,` + base64(HMAC-SHA256(key,
/// `{id}.{timestamp}.{body}`)). `None` for a malformed secret (never one of ours).
pub(crate) fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hold_enough_randomness_and_differ() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(key(&a).unwrap().len(), SECRET_BYTES);
    }

    #[test]
    fn message_ids_are_stable_per_event_and_endpoint() {
        assert_eq!(message_id("ev_1", "wh_a"), message_id("ev_1", "wh_a"));
        assert_ne!(message_id("ev_1", "wh_a"), message_id("ev_1", "wh_b"));
        assert_ne!(message_id("ev_1", "wh_a"), message_id("ev_2", "wh_a"));
        assert_eq!(message_id("ev_1", "wh_a").len(), 36);
    }

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(signature_of_bad_secret(), None);
    }

    fn signature_of_bad_secret() -> Option<String> {
        signature("nope", "msg", 1, "{}")
    }
}
