//! Establishing who a client is and what it may do, for sockets and HTTP routes alike.
//!
//! - With `--auth none` identity comes from the query string (`?id=&groups=&role=`): anyone
//!   may claim anything, so the server only listens on loopback unless `--insecure`.
//! - With `--auth jwt` a signed token is required, from `Authorization: Bearer <jwt>`,
//!   `?access_token=<jwt>` (browsers cannot set headers on a WebSocket) or the password of
//!   `Authorization: Basic` (apps such as OwnTracks only offer a user and a password).
//!   `jwt` checks it (HS256 with a secret; RS256/ES256 against a key set from `jwks`).
//!
//! Every route asks the same two questions through this module: [`Authenticator::identify`]
//! (who is this?), then [`check_group`] or [`check_publish`] (may it do this?). Refusals are
//! [`AuthError`]s, which map to the HTTP status the protocol fixes for a refused upgrade:
//! 400 for a malformed query, 401 for a missing or bad token, 403 for a forbidden role or
//! group. Each refusal is counted by reason and logged at debug level, never with the token.
//!
//! Browser origins are checked by `origin`, here too because they answer "may this page act
//! for the user?".

mod claims;
mod error;
mod jwks;
mod jwt;
pub(crate) mod origin;
mod token_error;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::Engine;
use serde::Deserialize;
use tracing::debug;

use crate::config::{AuthConfig, AuthMode};
use crate::metrics::Metrics;
use crate::model::{DeviceId, GroupId, Identity, Role};

pub use claims::{MAX_GROUPS, MAX_TOKEN_BYTES};
use claims::{clip, group_list};
pub use error::{AuthError, SetupError};
pub use jwt::{MintError, MintRequest, mint_hs256};
pub use token_error::TokenError;

/// Identity fields a client may put in the query string.
#[derive(Debug, Default, Deserialize)]
pub struct IdentityQuery {
    /// Device or viewer id (auth `none`).
    pub id: Option<String>,
    /// Comma-separated group ids (auth `none`); default `default`.
    pub groups: Option<String>,
    /// `device` or `viewer` (auth `none`); default `device`.
    pub role: Option<String>,
    /// A token, for browsers that cannot set headers.
    pub access_token: Option<String>,
}

/// Turns request credentials into an [`Identity`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: AuthConfig,
    verifier: jwt::Verifier,
    origins: origin::OriginPolicy,
    metrics: Option<Arc<Metrics>>,
}

impl Authenticator {
    /// An authenticator for `config`, counting refusals in `metrics` when given. Nothing is
    /// loaded yet: [`Authenticator::prepare`] checks the settings and loads the key set.
    pub fn new(config: AuthConfig, metrics: Option<Arc<Metrics>>) -> Self {
        Authenticator {
            inner: Arc::new(Inner {
                verifier: jwt::Verifier::new(&config),
                origins: origin::OriginPolicy::new(&config.allowed_origins),
                config,
                metrics,
            }),
        }
    }

    /// The settings this authenticator was built from.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// The browser-origin policy.
    pub fn origins(&self) -> &origin::OriginPolicy {
        &self.inner.origins
    }

    /// Checks the settings and loads the key set (once; later loads happen on demand and in
    /// [`Authenticator::run_refresher`]). Call before serving.
    pub async fn prepare(&self) -> Result<(), SetupError> {
        self.inner.origins.check()?;
        if self.inner.config.mode == AuthMode::Jwt {
            self.inner.verifier.prepare().await?;
        }
        Ok(())
    }

    /// Re-reads the key set every `--jwks-refresh-secs` until `shutdown`, so keys removed by
    /// the provider stop being accepted. Returns at once when no key set is configured.
    pub async fn run_refresher(self, shutdown: tokio_util::sync::CancellationToken) {
        if self.inner.config.mode == AuthMode::Jwt
            && let Some(jwks) = self.inner.verifier.jwks()
        {
            jwks.run_refresher(shutdown).await;
        }
    }

    /// Establishes the identity of a request from its headers and query. With a key set, a
    /// token naming an unknown `kid` causes one re-read of the set (rate-limited) before it
    /// is refused.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        query: &IdentityQuery,
    ) -> Result<Identity, AuthError> {
        let result = match self.inner.config.mode {
            AuthMode::None => identity_from_query(query),
            AuthMode::Jwt => match token_from(headers, query) {
                Ok(token) => self.inner.verifier.verify(token).await,
                Err(e) => Err(e),
            },
        };
        self.count(result)
    }

    /// Like [`Authenticator::identify`], but never waits for the key set: a token naming an
    /// unknown `kid` is refused at once. For callers that cannot await.
    pub fn identify_now(
        &self,
        headers: &HeaderMap,
        query: &IdentityQuery,
    ) -> Result<Identity, AuthError> {
        let result = match self.inner.config.mode {
            AuthMode::None => identity_from_query(query),
            AuthMode::Jwt => {
                token_from(headers, query).and_then(|token| self.inner.verifier.verify_now(token))
            }
        };
        self.count(result)
    }

    /// Who may read `group` over REST: with tokens, an identity holding the group (`Some`);
    /// with `--auth none`, anyone (`None`), since identities are only claims there.
    pub async fn authorize_group_read(
        &self,
        headers: &HeaderMap,
        query: &IdentityQuery,
        group: &str,
    ) -> Result<Option<Identity>, AuthError> {
        if self.inner.config.mode == AuthMode::None {
            return Ok(None);
        }
        let identity = self.identify(headers, query).await?;
        self.count(check_group(&identity, group).map(|()| Some(identity)))
    }

    /// Counts and logs a refusal on its way out.
    fn count<T>(&self, result: Result<T, AuthError>) -> Result<T, AuthError> {
        if let Err(e) = &result {
            if let Some(metrics) = &self.inner.metrics {
                metrics.security.auth_refused(e.reason()).inc();
            }
            debug!(reason = e.reason(), error = %e, "refused credentials");
        }
        result
    }
}

/// May `identity` watch or read `group`? 403 when the group is not one of its own.
pub fn check_group(identity: &Identity, group: &str) -> Result<(), AuthError> {
    if identity.may_use(group) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(format!(
            "group {:?} is not one of this identity's groups",
            clip(group)
        )))
    }
}

/// May `identity` publish positions? 403 for viewers.
pub fn check_publish(identity: &Identity) -> Result<(), AuthError> {
    match identity.role {
        Role::Device => Ok(()),
        Role::Viewer => Err(AuthError::Forbidden(
            "viewers may not publish positions".into(),
        )),
        Role::Admin => Err(AuthError::Forbidden(
            "admins may not publish positions".into(),
        )),
    }
}

/// Refuses `--auth none` on a non-loopback address unless `--insecure` was given.
pub fn check_listen(config: &AuthConfig, addr: SocketAddr) -> Result<(), SetupError> {
    if config.mode == AuthMode::None && !addr.ip().is_loopback() && !config.insecure {
        return Err(SetupError::Config(format!(
            "refusing to listen on {addr} with --auth none: without tokens anyone who can \
             reach this address can read and write every position. Use --auth jwt (with \
             --jwt-secret or a JWKS), listen on 127.0.0.1, or pass --insecure if a trusted \
             proxy in front does the authentication"
        )));
    }
    Ok(())
}

/// The token of a request: `Authorization: Bearer`, then the password of `Authorization:
/// Basic`, then `?access_token=`.
pub fn token_from<'a>(
    headers: &'a HeaderMap,
    query: &'a IdentityQuery,
) -> Result<std::borrow::Cow<'a, str>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| TokenError::Malformed("the Authorization header is not text"))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Ok(rest.into());
        }
        if scheme.eq_ignore_ascii_case("basic") && rest.len() <= MAX_TOKEN_BYTES * 2 {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| TokenError::Malformed("Basic credentials are not base64"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| TokenError::Malformed("Basic credentials are not text"))?;
            return match text.split_once(':') {
                Some((_, password)) if !password.is_empty() => Ok(password.to_owned().into()),
                _ => Err(TokenError::Missing.into()),
            };
        }
        return Err(TokenError::Malformed("the Authorization header must be Bearer <jwt>").into());
    }
    match query.access_token.as_deref() {
        Some(token) if !token.is_empty() => Ok(token.into()),
        _ => Err(TokenError::Missing.into()),
    }
}

/// Identity from `?id=&groups=&role=`, as the protocol defines it for auth `none`.
pub fn identity_from_query(query: &IdentityQuery) -> Result<Identity, AuthError> {
    let id = query
        .id
        .as_deref()
        .ok_or_else(|| AuthError::BadRequest("id is required in the query (?id=...)".into()))?;
    let id = DeviceId::parse(id).map_err(|why| AuthError::BadRequest(format!("id {why}")))?;
    let role = match query.role.as_deref() {
        None | Some("") => Role::Device,
        Some(r) => Role::parse(r).ok_or_else(|| {
            AuthError::BadRequest(format!(
                "role must be device, viewer or admin, not {:?}",
                clip(r)
            ))
        })?,
    };
    let groups = parse_groups(query.groups.as_deref().unwrap_or("default"))?;
    Ok(Identity {
        id,
        groups,
        role,
        expires_at_ms: None,
    })
}

/// Parses a comma-separated list of group ids (duplicates removed, order kept).
pub fn parse_groups(list: &str) -> Result<Vec<GroupId>, AuthError> {
    group_list(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .map_err(AuthError::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn query(id: Option<&str>, groups: Option<&str>, role: Option<&str>) -> IdentityQuery {
        IdentityQuery {
            id: id.map(Into::into),
            groups: groups.map(Into::into),
            role: role.map(Into::into),
            access_token: None,
        }
    }

    #[test]
    fn defaults() {
        let identity = identity_from_query(&query(Some("bus-1"), None, None)).unwrap();
        assert_eq!(identity.role, Role::Device);
        assert_eq!(identity.groups.len(), 1);
        assert_eq!(identity.groups[0].as_str(), "default");
    }

    #[test]
    fn refusals() {
        for (q, needle) in [
            (query(None, None, None), "id is required"),
            (query(Some("a b"), None, None), "id may only"),
            (query(Some("a"), Some("x,,y z"), None), "group \"y z\""),
            (query(Some("a"), Some(","), None), "at least one"),
            (query(Some("a"), None, Some("root")), "role must be"),
        ] {
            let err = identity_from_query(&q).unwrap_err();
            assert!(matches!(err, AuthError::BadRequest(_)));
            assert!(err.to_string().contains(needle), "{err}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
        let err = identity_from_query(&query(Some("a"), Some(&many.join(",")), None)).unwrap_err();
        assert!(err.to_string().contains("at most 64"));
    }

    #[test]
    fn tokens_come_from_bearer_basic_or_query() {
        let mut headers = HeaderMap::new();
        let mut q = query(None, None, None);
        assert!(matches!(
            token_from(&headers, &q),
            Err(AuthError::Token(TokenError::Missing))
        ));
        q.access_token = Some("from-query".into());
        assert_eq!(token_from(&headers, &q).unwrap(), "from-query");
        headers.insert(
            header::AUTHORIZATION,
            "bearer  abc.def.ghi".parse().unwrap(),
        );
        assert_eq!(token_from(&headers, &q).unwrap(), "abc.def.ghi");
        let basic = base64::engine::general_purpose::STANDARD.encode("phone:xyz.abc.def");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(token_from(&headers, &q).unwrap(), "xyz.abc.def");
        headers.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert!(matches!(
            token_from(&headers, &q),
            Err(AuthError::Token(TokenError::Malformed(_)))
        ));
    }

    #[test]
    fn authorization_helpers() {
        let mut identity = identity_from_query(&query(Some("v"), Some("a,b"), None)).unwrap();
        assert!(check_group(&identity, "b").is_ok());
        assert_eq!(
            check_group(&identity, "c").unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert!(check_publish(&identity).is_ok());
        identity.role = Role::Viewer;
        assert_eq!(
            check_publish(&identity).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn auth_none_stays_on_loopback() {
        let mut config = crate::Config::default().auth;
        config.mode = AuthMode::None;
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = check_listen(&config, public).unwrap_err();
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert!(check_listen(&config, "127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(check_listen(&config, "[::1]:8080".parse().unwrap()).is_ok());
        config.insecure = true;
        assert!(check_listen(&config, public).is_ok());
        config.insecure = false;
        config.mode = AuthMode::Jwt;
        assert!(check_listen(&config, public).is_ok());
    }
}
