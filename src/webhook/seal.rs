//! Secrets at rest: with `--webhook-secret-key-file`, every endpoint's secret is sealed before
//! it is written to `DIR/webhooks.json` or to Redis, so a copy of either alone cannot forge
//! signatures.
//!
//! A sealed secret is `sealed_v1:` + base64(nonce ‖ ciphertext ‖ tag): ChaCha20-Poly1305
//! (`ring`) under the 32-byte key of the file, a fresh random 96-bit nonce per sealing, and the
//! endpoint's id as associated data, so a sealed secret copied onto another endpoint does not
//! open. Without a key, secrets are stored as they are (`whsec_...`): a dump of the file or of
//! Redis then holds them (`docs/webhooks.md`, "Secrets at rest").

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::state::Endpoint;

/// Prefix of a sealed secret (a plain one starts with `whsec_`).
pub(crate) const SEALED_PREFIX: &str = "sealed_v1:";

/// Bytes of the key in `--webhook-secret-key-file` (before base64).
pub(crate) const KEY_BYTES: usize = 32;

/// Largest key file read, in bytes: a base64 key with a line end is 45.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// Why the stored secrets cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// The key file is unreadable or does not hold a key.
    #[error(
        "--webhook-secret-key-file {path}: {reason} (it must hold the base64 of {KEY_BYTES} random bytes, e.g. from `openssl rand -base64 32`)"
    )]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Sealed secrets were found and no key was given.
    #[error(
        "{count} webhook secret(s) in {place} are sealed and no --webhook-secret-key-file is given; start with the key they were sealed with"
    )]
    NoKey {
        /// How many.
        count: usize,
        /// Where (the file, Redis).
        place: String,
    },
    /// Sealed secrets were found that the given key does not open.
    #[error(
        "{count} webhook secret(s) in {place} do not open with the key of --webhook-secret-key-file (sealed with another key, or damaged); start with the key they were sealed with"
    )]
    WrongKey {
        /// How many.
        count: usize,
        /// Where (the file, Redis).
        place: String,
    },
}

/// One secret that could not be opened: no key, or not this key.
#[derive(Debug, PartialEq)]
pub(crate) enum Unopened {
    /// Sealed, and no key is given.
    NoKey,
    /// Sealed with another key, or damaged.
    WrongKey,
}

/// The key of `--webhook-secret-key-file`, or none.
pub(crate) struct Sealer {
    key: Option<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Sealer")
            .field("key", &self.key.is_some())
            .finish()
    }
}

impl Sealer {
    /// No key: secrets are stored as they are.
    pub(crate) fn none() -> Self {
        Sealer { key: None }
    }

    /// The key held (base64, surrounding white space ignored) in `path`.
    pub(crate) fn from_file(path: &Path) -> Result<Self, SealError> {
        let bad = |reason: String| SealError::KeyFile {
            path: path.to_owned(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if size > MAX_KEY_FILE_BYTES {
            return Err(bad(format!("{size} bytes is too long for a key")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| bad("not base64".into()))?;
        Self::from_key(&bytes).ok_or_else(|| bad(format!("{} bytes, not {KEY_BYTES}", bytes.len())))
    }

    /// A sealer with `key`; `None` unless it is [`KEY_BYTES`] long.
    pub(crate) fn from_key(key: &[u8]) -> Option<Self> {
        if key.len() != KEY_BYTES {
            return None;
        }
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(Sealer {
            key: Some(LessSafeKey::new(unbound)),
        })
    }

    /// Whether a key is given.
    pub(crate) fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// `secret` as stored for endpoint `id`: sealed with a key, as it is without.
    pub(crate) fn seal(&self, secret: &str, id: &str) -> String {
        let Some(key) = &self.key else {
            return secret.to_owned();
        };
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut sealed = secret.as_bytes().to_vec();
        // Sealing fails only for inputs of hundreds of gigabytes.
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(id.as_bytes()),
                &mut sealed,
            )
            .is_err()
        {
            return secret.to_owned();
        }
        let mut stored = nonce_bytes.to_vec();
        stored.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(stored))
    }

    /// The secret of endpoint `id` from its stored form: a plain secret as it is (stored before
    /// the key was given: sealed at the next write), a sealed one opened with the key.
    pub(crate) fn open(&self, stored: &str, id: &str) -> Result<String, Unopened> {
        let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let key = self.key.as_ref().ok_or(Unopened::NoKey)?;
        let mut bytes = STANDARD.decode(encoded).map_err(|_| Unopened::WrongKey)?;
        if bytes.len() < NONCE_LEN {
            return Err(Unopened::WrongKey);
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN])
            .map_err(|_| Unopened::WrongKey)?;
        let opened = key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut bytes[NONCE_LEN..])
            .map_err(|_| Unopened::WrongKey)?;
        String::from_utf8(opened.to_vec()).map_err(|_| Unopened::WrongKey)
    }

    /// `endpoint` as stored (its secret sealed with a key).
    pub(crate) fn stored(&self, endpoint: &Endpoint) -> Endpoint {
        Endpoint {
            secret: self.seal(&endpoint.secret, &endpoint.id),
            ..endpoint.clone()
        }
    }

    /// `endpoint` from its stored form, its secret opened.
    pub(crate) fn opened(&self, mut endpoint: Endpoint) -> Result<Endpoint, Unopened> {
        endpoint.secret = self.open(&endpoint.secret, &endpoint.id)?;
        Ok(endpoint)
    }

    /// Opens every endpoint of `stored` (found in `place`), or says why they cannot all be.
    pub(crate) fn open_all(
        &self,
        stored: Vec<Endpoint>,
        place: &str,
    ) -> Result<Vec<Endpoint>, SealError> {
        let mut opened = Vec::with_capacity(stored.len());
        let (mut no_key, mut wrong_key) = (0, 0);
        for endpoint in stored {
            match self.opened(endpoint) {
                Ok(endpoint) => opened.push(endpoint),
                Err(Unopened::NoKey) => no_key += 1,
                Err(Unopened::WrongKey) => wrong_key += 1,
            }
        }
        let place = place.to_owned();
        if no_key > 0 {
            return Err(SealError::NoKey {
                count: no_key,
                place,
            });
        }
        if wrong_key > 0 {
            return Err(SealError::WrongKey {
                count: wrong_key,
                place,
            });
        }
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn sealed_secrets_open_with_the_key_and_id_only() {
        let sealer = Sealer::from_key(&[7; KEY_BYTES]).unwrap();
        let stored = sealer.seal(SECRET, "wh_1");
        assert!(stored.starts_with(SEALED_PREFIX));
        assert!(!stored.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_ne!(
            stored,
            sealer.seal(SECRET, "wh_1"),
            "a fresh nonce each time"
        );
        assert_eq!(sealer.open(&stored, "wh_1").as_deref(), Ok(SECRET));
        assert_eq!(sealer.open(&stored, "wh_2"), Err(Unopened::WrongKey));
        let other = Sealer::from_key(&[8; KEY_BYTES]).unwrap();
        assert_eq!(other.open(&stored, "wh_1"), Err(Unopened::WrongKey));
        assert_eq!(Sealer::none().open(&stored, "wh_1"), Err(Unopened::NoKey));
        let mut damaged = stored.clone();
        damaged.pop();
        damaged.push('A');
        assert!(sealer.open(&damaged, "wh_1").is_err());
        assert_eq!(
            sealer.open("sealed_v1:AAAA", "wh_1"),
            Err(Unopened::WrongKey)
        );
    }

    #[test]
    fn without_a_key_secrets_stay_plain_and_plain_ones_still_open() {
        assert_eq!(Sealer::none().seal(SECRET, "wh_1"), SECRET);
        let sealer = Sealer::from_key(&[7; KEY_BYTES]).unwrap();
        assert_eq!(sealer.open(SECRET, "wh_1").as_deref(), Ok(SECRET));
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", STANDARD.encode([1u8; KEY_BYTES]))).unwrap();
        assert!(Sealer::from_file(&path).unwrap().has_key());
        std::fs::write(&path, STANDARD.encode([1u8; 16])).unwrap();
        let e = Sealer::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("16 bytes, not 32"), "{e}");
        std::fs::write(&path, "not a key!").unwrap();
        assert!(
            Sealer::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
        let e = Sealer::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(e.to_string().contains("--webhook-secret-key-file"), "{e}");
    }
}
