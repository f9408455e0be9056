//! The JSON Web Key Set: public keys of RS256/ES256 tokens, by `kid`, from a file or a URL.
//!
//! The set is loaded before the server listens (a failure stops the start: a server that
//! cannot check tokens would refuse everyone). It is then re-read:
//! - every `--jwks-refresh-secs` (default 300 s), so keys the provider removed stop working;
//! - when a token names a `kid` the set does not hold (the provider rotated its keys), at most
//!   once per `--jwks-min-refresh-secs` (default 30 s), so tokens with made-up `kid`s cannot
//!   turn the server into a load generator against the provider. Concurrent requests share
//!   one re-read.
//!
//! A failed re-read keeps the keys already held. Bounds: a fetch takes at most
//! [`FETCH_TIMEOUT`], a document at most [`MAX_JWKS_BYTES`], a set at most [`MAX_KEYS`] usable
//! keys. Keys for encryption (`use: enc`), of unknown types or without a `kid` are skipped.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::claims::clip;
use super::token_error::TokenError;
use crate::config::AuthConfig;

/// Asymmetric algorithms a key of the key set may be used with.
pub(super) const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Largest key-set document read, in bytes.
pub(super) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Most usable keys kept from one document.
pub(super) const MAX_KEYS: usize = 64;

/// Time for one fetch of a key-set URL, connection included.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL is unusable.
    #[error("{0}")]
    Url(String),
    /// Reading the file failed.
    #[error("reading {path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// Fetching the URL failed.
    #[error("fetching the key set: {0}")]
    Fetch(String),
    /// The document is not a key set.
    #[error("the key set is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    /// Larger than [`MAX_JWKS_BYTES`].
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// No key Beacon can use.
    #[error("the key set holds no usable signing key (RSA or EC P-256/P-384 with a kid)")]
    Empty,
}

/// A public key and the one algorithm it verifies.
pub(super) struct VerifyKey {
    /// The key.
    pub key: DecodingKey,
    /// Its algorithm: from the key's `alg`, else RS256 for RSA, ES256/ES384 by curve.
    pub alg: Algorithm,
}

/// Where the keys come from.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Url(String),
}

/// Keys by `kid`, swapped whole on each successful read.
type Keys = Arc<HashMap<String, Arc<VerifyKey>>>;

/// A cached, refreshed key set. Cheap to share by reference; owned by the verifier.
pub(super) struct Jwks {
    source: Source,
    /// Current keys. A std lock: held only to clone or swap an `Arc`, never across an await.
    keys: RwLock<Keys>,
    /// Time of the last read caused by an unknown `kid`; the async lock also makes
    /// concurrent re-reads wait for the one in flight instead of starting their own.
    last_forced: Mutex<Option<Instant>>,
    min_refresh: Duration,
    refresh: Duration,
    client: Option<reqwest::Client>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("keys", &self.current().len())
            .finish()
    }
}

impl Jwks {
    /// The key set `config` names, if any (empty until [`Jwks::load`]).
    pub(super) fn from_config(config: &AuthConfig) -> Option<Self> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(url)) if !url.is_empty() => Source::Url(url.clone()),
            _ => return None,
        };
        let client = match source {
            Source::Url(_) => reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT / 2)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok(),
            Source::File(_) => None,
        };
        Some(Jwks {
            source,
            keys: RwLock::new(Arc::default()),
            last_forced: Mutex::new(None),
            min_refresh: Duration::from_secs(config.jwks_min_refresh_secs),
            refresh: Duration::from_secs(config.jwks_refresh_secs.max(1)),
            client,
        })
    }

    fn current(&self) -> Keys {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            // A writer only swaps an Arc and cannot panic midway; take the value anyway.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the set now and replaces the keys held. On failure the old keys stay.
    pub(super) async fn load(&self) -> Result<usize, JwksError> {
        let body = match &self.source {
            Source::File(path) => read_file(path).await?,
            Source::Url(url) => self.fetch(url).await?,
        };
        let keys = parse(&body)?;
        let count = keys.len();
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut held) => *held = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        info!(keys = count, source = ?self.source, "loaded the JSON Web Key Set");
        Ok(count)
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, JwksError> {
        check_url(url)?;
        let Some(client) = &self.client else {
            return Err(JwksError::Fetch("no HTTP client could be built".into()));
        };
        let mut response = client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Fetch(format!("HTTP {}", response.status())));
        }
        if response.content_length().unwrap_or(0) > MAX_JWKS_BYTES as u64 {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The key named `kid`, re-reading the set first when it is unknown and the last such
    /// re-read is older than `--jwks-min-refresh-secs`.
    pub(super) async fn key(&self, kid: &str) -> Result<Arc<VerifyKey>, TokenError> {
        if let Some(key) = self.current().get(kid) {
            return Ok(key.clone());
        }
        {
            let mut last = self.last_forced.lock().await;
            // Another request may have re-read the set while this one waited for the lock.
            if let Some(key) = self.current().get(kid) {
                return Ok(key.clone());
            }
            let due = last.is_none_or(|at| at.elapsed() >= self.min_refresh);
            if due {
                *last = Some(Instant::now());
                debug!(kid = clip(kid), "unknown kid: re-reading the key set");
                if let Err(error) = self.load().await {
                    warn!(%error, "re-reading the key set failed; keeping the keys held");
                }
            }
        }
        self.key_now(kid)
    }

    /// The key named `kid` among the keys held now.
    pub(super) fn key_now(&self, kid: &str) -> Result<Arc<VerifyKey>, TokenError> {
        let keys = self.current();
        if keys.is_empty() {
            return Err(TokenError::NoKeys);
        }
        keys.get(kid)
            .cloned()
            .ok_or_else(|| TokenError::UnknownKid(clip(kid).to_owned()))
    }

    /// Re-reads the set every refresh period until `shutdown`.
    pub(super) async fn run_refresher(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.refresh, self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(error) = self.load().await {
                        warn!(%error, "refreshing the key set failed; keeping the keys held");
                    }
                }
            }
        }
    }
}

async fn read_file(path: &PathBuf) -> Result<Vec<u8>, JwksError> {
    let file_error = |error| JwksError::File {
        path: path.clone(),
        error,
    };
    let len = tokio::fs::metadata(path).await.map_err(file_error)?.len();
    if len > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge);
    }
    tokio::fs::read(path).await.map_err(file_error)
}

/// Only `https`, or `http` to a loopback host (tests, sidecars): a key set fetched in clear
/// over a network could be replaced by anyone on the path.
pub(super) fn check_url(url: &str) -> Result<(), JwksError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| JwksError::Url(format!("{url:?}: {e}")))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(JwksError::Url(format!(
            "--jwks-url must be https (or http to a loopback host), not {url:?}"
        ))),
    }
}

/// The usable keys of a key-set document, by `kid`.
pub(super) fn parse(body: &[u8]) -> Result<HashMap<String, Arc<VerifyKey>>, JwksError> {
    let set: JwkSet = serde_json::from_slice(body)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if keys.len() == MAX_KEYS {
            warn!(
                max = MAX_KEYS,
                "the key set holds more keys than kept; ignoring the rest"
            );
            break;
        }
        let Some(kid) = jwk.common.key_id.as_deref() else {
            debug!("skipping a key without kid");
            continue;
        };
        match usable(jwk) {
            Some(key) => {
                keys.insert(kid.to_owned(), Arc::new(key));
            }
            None => debug!(kid, "skipping a key Beacon cannot use for signatures"),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(keys)
}

fn usable(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let stated = match jwk.common.key_algorithm {
        Some(alg) => Some(alg.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    let alg = match (&jwk.algorithm, stated) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        (AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_), Some(alg)) => alg,
        _ => return None,
    };
    if !ASYMMETRIC.contains(&alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    // The algorithm must fit the key type (an EC key stated as RS256 is unusable).
    let family_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (alg, &ec.curve),
            (Algorithm::ES256, EllipticCurve::P256) | (Algorithm::ES384, EllipticCurve::P384)
        ),
        _ => false,
    };
    family_ok.then_some(VerifyKey { key, alg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(check_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:9000/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]/jwks").is_ok());
        assert!(check_url("http://idp.example/jwks").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn unusable_keys_are_skipped() {
        // An HMAC key, an encryption key, a key without kid, and one RSA signing key.
        use base64::Engine;
        // Any bytes make a well-formed modulus for parsing; nothing is verified here.
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "e", "use": "enc", "n": &n, "e": "AQAB"},
            {"kty": "RSA", "n": &n, "e": "AQAB"},
            {"kty": "RSA", "kid": "r", "use": "sig", "n": &n, "e": "AQAB"},
            {"kty": "RSA", "kid": "p", "alg": "PS256", "n": &n, "e": "AQAB"},
            {"kty": "RSA", "kid": "x", "alg": "ES256", "n": &n, "e": "AQAB"},
        ]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["p", "r"]);
        assert_eq!(keys["r"].alg, Algorithm::RS256);
        assert_eq!(keys["p"].alg, Algorithm::PS256);
        assert!(matches!(parse(br#"{"keys": []}"#), Err(JwksError::Empty)));
        assert!(matches!(parse(b"[]"), Err(JwksError::Parse(_))));
    }
}
