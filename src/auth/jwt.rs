//! Verifying JSON Web Tokens and turning their claims into an [`Identity`]; minting HS256
//! tokens for `beacon token`.
//!
//! Which key checks a token is decided by the server, never by the token alone:
//! - `HS256` tokens are checked with `--jwt-secret`, and refused when there is none;
//! - `RS*`, `PS*` and `ES256`/`ES384` tokens must name a `kid` of the key set, and their `alg`
//!   must be the one that key is for (so a token cannot pick a weaker algorithm, nor have a
//!   public key used as an HMAC secret);
//! - anything else (`none`, `EdDSA`, ...) is refused.
//!
//! Claims: `exp` is required; `nbf` is honoured when present; `iss` and `aud` are required
//! and checked when configured. `--jwt-leeway-secs` (default 30 s) is allowed for clock skew
//! on `exp` and `nbf`, and the identity expires at `exp` plus that leeway. The id claim
//! (default `sub`) and the groups must pass the protocol's id rules.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::claims::{MAX_GROUPS, MAX_TOKEN_BYTES, clip, group_list};
use super::error::{AuthError, SetupError};
use super::jwks::{ASYMMETRIC, Jwks};
use super::token_error::TokenError;
use crate::config::AuthConfig;
use crate::model::{DeviceId, Identity, Role};

/// Shortest HS256 secret accepted, in bytes (the size of the hash, as RFC 7518 asks).
pub(super) const MIN_SECRET_BYTES: usize = 32;

/// Names of the claims Beacon reads, from the configuration.
#[derive(Clone, Debug)]
struct ClaimNames {
    id: String,
    groups: String,
    role: String,
    default_role: Role,
}

/// Checks tokens against the configured secret and key set.
pub(super) struct Verifier {
    hmac: Option<DecodingKey>,
    secret_len: usize,
    jwks: Option<Jwks>,
    claims: ClaimNames,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("jwks", &self.jwks)
            .field("claims", &self.claims)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `config`; the key set is empty until [`Verifier::prepare`].
    pub(super) fn new(config: &AuthConfig) -> Self {
        let secret = config.jwt_secret.as_deref().filter(|s| !s.is_empty());
        Verifier {
            hmac: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            secret_len: secret.map_or(0, str::len),
            jwks: Jwks::from_config(config),
            claims: ClaimNames {
                id: config.jwt_id_claim.clone(),
                groups: config.jwt_groups_claim.clone(),
                role: config.jwt_role_claim.clone(),
                default_role: config.jwt_default_role,
            },
            issuer: config.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: config.jwt_audience.clone().filter(|s| !s.is_empty()),
            leeway_secs: config.jwt_leeway_secs,
        }
    }

    /// The key set, when one is configured.
    pub(super) fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    /// Checks the settings and loads the key set.
    pub(super) async fn prepare(&self) -> Result<(), SetupError> {
        if self.hmac.is_none() && self.jwks.is_none() {
            return Err(SetupError::Config(
                "--auth jwt needs --jwt-secret, --jwks-file or --jwks-url".into(),
            ));
        }
        if self.hmac.is_some() && self.secret_len < MIN_SECRET_BYTES {
            return Err(SetupError::Config(format!(
                "--jwt-secret must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand \
                 -base64 48`); it has {}",
                self.secret_len
            )));
        }
        if let Some(jwks) = &self.jwks {
            jwks.load().await?;
        }
        Ok(())
    }

    /// Verifies `token`, re-reading the key set once (rate-limited) for an unknown `kid`.
    pub(super) async fn verify(&self, token: impl AsRef<str>) -> Result<Identity, AuthError> {
        let token = token.as_ref();
        let header = self.header(token)?;
        if header.alg == Algorithm::HS256 {
            return self.verify_hmac(token);
        }
        let (jwks, kid) = self.asymmetric(&header)?;
        let key = jwks.key(kid).await?;
        self.check(token, &key.key, key.alg)
    }

    /// Verifies `token` with the keys at hand, without re-reading the key set.
    pub(super) fn verify_now(&self, token: impl AsRef<str>) -> Result<Identity, AuthError> {
        let token = token.as_ref();
        let header = self.header(token)?;
        if header.alg == Algorithm::HS256 {
            return self.verify_hmac(token);
        }
        let (jwks, kid) = self.asymmetric(&header)?;
        let key = jwks.key_now(kid)?;
        self.check(token, &key.key, key.alg)
    }

    fn header(&self, token: &str) -> Result<Header, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("longer than 8 KiB"));
        }
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::from_jwt(&e))
    }

    fn verify_hmac(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.hmac {
            Some(key) => self.check(token, key, Algorithm::HS256),
            None => Err(TokenError::Algorithm("HS256 (no secret is configured)".into()).into()),
        }
    }

    fn asymmetric<'h>(&self, header: &'h Header) -> Result<(&Jwks, &'h str), TokenError> {
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg).into()));
        }
        let Some(jwks) = &self.jwks else {
            return Err(TokenError::Algorithm(
                format!("{:?} (no key set is configured)", header.alg).into(),
            ));
        };
        let kid = header
            .kid
            .as_deref()
            .ok_or(TokenError::Malformed("the header names no key (kid)"))?;
        Ok((jwks, kid))
    }

    /// Checks signature and registered claims with `key` for `alg`, then reads Beacon's.
    fn check(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Identity, AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        validation.validate_aud = false;
        if let Some(audience) = &self.audience {
            validation.validate_aud = true;
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| TokenError::from_jwt(&e))?;
        self.identity(&data.claims)
    }

    /// Beacon's identity from verified claims.
    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let names = &self.claims;
        let id = match claims.get(&names.id) {
            Some(Value::String(id)) => DeviceId::parse(id)
                .map_err(|why| TokenError::Claims(format!("{} {why}", clip(&names.id))))?,
            _ => {
                return Err(TokenError::Claims(format!(
                    "{} (a string) is required",
                    clip(&names.id)
                ))
                .into());
            }
        };
        let groups = match claims.get(&names.groups) {
            Some(Value::Array(items)) => {
                let mut strings = Vec::with_capacity(items.len().min(MAX_GROUPS + 1));
                for item in items.iter().take(MAX_GROUPS * 4) {
                    match item {
                        Value::String(s) => strings.push(s.as_str()),
                        _ => {
                            return Err(TokenError::Claims(format!(
                                "{} must hold strings",
                                clip(&names.groups)
                            ))
                            .into());
                        }
                    }
                }
                group_list(strings.into_iter())
            }
            Some(Value::String(list)) => {
                group_list(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
            }
            _ => Err(format!("{} is required", clip(&names.groups))),
        }
        .map_err(TokenError::Claims)?;
        let role = match claims.get(&names.role) {
            None | Some(Value::Null) => names.default_role,
            Some(Value::String(role)) => Role::parse(role).ok_or_else(|| {
                AuthError::Forbidden(format!(
                    "role {:?} is none of device, viewer or admin",
                    clip(role)
                ))
            })?,
            Some(Value::Array(roles)) => {
                let has = |name: &str| roles.iter().any(|r| r.as_str() == Some(name));
                if has("device") {
                    Role::Device
                } else if has("admin") {
                    Role::Admin
                } else if has("viewer") {
                    Role::Viewer
                } else {
                    return Err(AuthError::Forbidden(
                        "the token's roles include none of device, viewer or admin".into(),
                    ));
                }
            }
            Some(_) => {
                return Err(TokenError::Claims(format!(
                    "{} must be a string or a list",
                    clip(&names.role)
                ))
                .into());
            }
        };
        // `exp` is present and numeric: validation required it.
        let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0);
        let expires_at_ms = ((exp + self.leeway_secs as f64) * 1000.0).min(i64::MAX as f64) as i64;
        Ok(Identity {
            id,
            groups,
            role,
            expires_at_ms: Some(expires_at_ms),
        })
    }
}

/// What `beacon token` puts in a token.
#[derive(Clone, Debug)]
pub struct MintRequest<'a> {
    /// Device or viewer id.
    pub sub: &'a str,
    /// Group ids.
    pub groups: &'a [String],
    /// Role.
    pub role: Role,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
    /// `iss`, when set.
    pub issuer: Option<&'a str>,
    /// `aud`, when set.
    pub audience: Option<&'a str>,
    /// Name of the id claim (the id always goes in `sub` too).
    pub id_claim: &'a str,
    /// Name of the groups claim.
    pub groups_claim: &'a str,
    /// Name of the role claim.
    pub role_claim: &'a str,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The request does not make a token the server would accept.
    #[error("{0}")]
    Invalid(String),
    /// Signing failed.
    #[error("signing: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// Signs an HS256 token for `request` with `secret`. The claims are checked against the same
/// rules the server applies, so a minted token is one the server accepts.
pub fn mint_hs256(secret: &[u8], request: &MintRequest<'_>) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::Invalid(format!(
            "the secret must be at least {MIN_SECRET_BYTES} bytes"
        )));
    }
    DeviceId::parse(request.sub).map_err(|why| MintError::Invalid(format!("sub {why}")))?;
    group_list(request.groups.iter().map(String::as_str)).map_err(MintError::Invalid)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = Map::new();
    claims.insert("sub".into(), request.sub.into());
    claims.insert(request.id_claim.into(), request.sub.into());
    claims.insert(request.groups_claim.into(), request.groups.into());
    claims.insert(request.role_claim.into(), request.role.as_str().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(request.ttl_secs).into());
    if let Some(issuer) = request.issuer {
        claims.insert("iss".into(), issuer.into());
    }
    if let Some(audience) = request.audience {
        claims.insert("aud".into(), audience.into());
    }
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

    fn config() -> AuthConfig {
        let mut config = crate::Config::default().auth;
        config.mode = crate::config::AuthMode::Jwt;
        config.jwt_secret = Some(SECRET.into());
        config.jwt_leeway_secs = 0;
        config
    }

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn exp() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn claims_become_an_identity() {
        let verifier = Verifier::new(&config());
        let token = sign(serde_json::json!({
            "sub": "bus-1", "groups": ["a", "b", "a"], "role": "viewer", "exp": exp()
        }));
        let identity = verifier.verify_now(&token).unwrap();
        assert_eq!(identity.id.as_str(), "bus-1");
        assert_eq!(identity.groups.len(), 2);
        assert_eq!(identity.role, Role::Viewer);
        assert_eq!(identity.expires_at_ms, Some(exp() as i64 * 1000));
    }

    #[test]
    fn claim_names_and_shapes_are_configurable() {
        let mut config = config();
        config.jwt_groups_claim = "cognito:groups".into();
        config.jwt_role_claim = "roles".into();
        config.jwt_id_claim = "username".into();
        let verifier = Verifier::new(&config);
        let token = sign(serde_json::json!({
            "sub": "auth0|123", "username": "van-3", "cognito:groups": "fleet, depot",
            "roles": ["offline_access", "viewer", "device"], "exp": exp()
        }));
        let identity = verifier.verify_now(&token).unwrap();
        assert_eq!(identity.id.as_str(), "van-3");
        assert_eq!(identity.groups[1].as_str(), "depot");
        assert_eq!(identity.role, Role::Device);
        let no_role = sign(serde_json::json!({
            "username": "van-3", "cognito:groups": ["fleet"], "exp": exp()
        }));
        assert_eq!(verifier.verify_now(&no_role).unwrap().role, Role::Device);
    }

    #[test]
    fn bad_claims_are_refused() {
        let verifier = Verifier::new(&config());
        for (claims, reason) in [
            (serde_json::json!({"groups": ["a"], "exp": exp()}), "claims"),
            (
                serde_json::json!({"sub": "a b", "groups": ["a"], "exp": exp()}),
                "claims",
            ),
            (serde_json::json!({"sub": "a", "exp": exp()}), "claims"),
            (
                serde_json::json!({"sub": "a", "groups": [], "exp": exp()}),
                "claims",
            ),
            (
                serde_json::json!({"sub": "a", "groups": [1], "exp": exp()}),
                "claims",
            ),
            (
                serde_json::json!({"sub": "a", "groups": ["x/y"], "exp": exp()}),
                "claims",
            ),
            (serde_json::json!({"sub": "a", "groups": ["a"]}), "claims"),
            (
                serde_json::json!({"sub": "a", "groups": ["a"], "exp": exp(), "role": 3}),
                "claims",
            ),
            (
                serde_json::json!({"sub": "a", "groups": ["a"], "exp": exp(), "role": "root"}),
                "forbidden",
            ),
            (
                serde_json::json!({"sub": "a", "groups": ["a"], "exp": 1000}),
                "expired",
            ),
            (
                serde_json::json!({"sub": "a", "groups": ["a"], "exp": exp(), "nbf": exp()}),
                "not_yet_valid",
            ),
        ] {
            let err = verifier.verify_now(sign(claims.clone())).unwrap_err();
            assert_eq!(err.reason(), reason, "{claims}: {err}");
        }
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let mut config = config();
        config.jwt_issuer = Some("https://idp.example".into());
        config.jwt_audience = Some("beacon".into());
        let verifier = Verifier::new(&config);
        let base = serde_json::json!({"sub": "a", "groups": ["g"], "exp": exp()});
        let with = |extra: Value| {
            let mut claims = base.clone();
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            sign(claims)
        };
        let good = with(serde_json::json!({"iss": "https://idp.example", "aud": ["x", "beacon"]}));
        assert!(verifier.verify_now(good).is_ok());
        for (extra, reason) in [
            (serde_json::json!({"aud": "beacon"}), "issuer"),
            (
                serde_json::json!({"iss": "https://evil.example", "aud": "beacon"}),
                "issuer",
            ),
            (
                serde_json::json!({"iss": "https://idp.example"}),
                "audience",
            ),
            (
                serde_json::json!({"iss": "https://idp.example", "aud": "other"}),
                "audience",
            ),
        ] {
            let err = verifier.verify_now(with(extra.clone())).unwrap_err();
            assert_eq!(err.reason(), reason, "{extra}: {err}");
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let groups = vec!["fleet".to_owned()];
        let request = MintRequest {
            sub: "bus-9",
            groups: &groups,
            role: Role::Device,
            ttl_secs: 60,
            issuer: None,
            audience: None,
            id_claim: "sub",
            groups_claim: "groups",
            role_claim: "role",
        };
        let token = mint_hs256(SECRET.as_bytes(), &request).unwrap();
        let identity = Verifier::new(&config()).verify_now(&token).unwrap();
        assert_eq!(identity.id.as_str(), "bus-9");
        assert!(mint_hs256(b"short", &request).is_err());
        let bad = MintRequest {
            sub: "a b",
            ..request
        };
        assert!(mint_hs256(SECRET.as_bytes(), &bad).is_err());
    }

    #[test]
    fn algorithms_are_the_servers_choice() {
        let verifier = Verifier::new(&config());
        let good = sign(serde_json::json!({"sub": "a", "groups": ["g"], "exp": exp()}));
        let (_, rest) = good.split_once('.').unwrap();
        // {"alg":"none","typ":"JWT"} and {"alg":"RS256","kid":"k"}: no key set here.
        for header in [
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ",
        ] {
            let err = verifier.verify_now(format!("{header}.{rest}")).unwrap_err();
            assert!(matches!(err.reason(), "algorithm" | "malformed"), "{err}");
        }
        let err = verifier
            .verify_now("x".repeat(MAX_TOKEN_BYTES + 1))
            .unwrap_err();
        assert_eq!(err.reason(), "malformed");
    }
}
