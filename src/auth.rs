//! Establishing who a client is, for sockets and HTTP routes alike.
//!
//! With `--auth none` identity comes from the query string (`?id=&groups=&role=`). Refusals are
//! [`AuthError`]s, which map to the HTTP status the protocol fixes for a refused upgrade:
//! 400 for a malformed query, 401 for a missing or bad token, 403 for a forbidden role.

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::config::{AuthConfig, AuthMode};
use crate::model::{DeviceId, GroupId, Identity, Role};

/// Most groups one identity may name. Each group costs a subscription and a snapshot at
/// connect, so the bound keeps a connect cheap.
pub const MAX_GROUPS: usize = 64;

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

/// Why a client was refused before it got in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The query is malformed (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or bad credentials (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The identity may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A short machine-readable name for the refusal.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::BadRequest(_) => "bad_request",
            AuthError::Unauthorized(_) => "unauthorized",
            AuthError::Forbidden(_) => "forbidden",
        }
    }
}

/// Turns request credentials into an [`Identity`].
#[derive(Clone, Debug)]
pub struct Authenticator {
    config: AuthConfig,
}

impl Authenticator {
    /// An authenticator for `config`.
    pub fn new(config: AuthConfig) -> Self {
        Authenticator { config }
    }

    /// Establishes the identity of a request from its headers and query.
    pub fn identify(
        &self,
        _headers: &HeaderMap,
        query: &IdentityQuery,
    ) -> Result<Identity, AuthError> {
        match self.config.mode {
            AuthMode::None => identity_from_query(query),
            AuthMode::Jwt => Err(AuthError::Unauthorized(
                "JWT authentication is not available in this build".into(),
            )),
        }
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
            AuthError::BadRequest(format!("role must be device or viewer, not {r:?}"))
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
    let mut groups: Vec<GroupId> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let group = GroupId::parse(name)
            .map_err(|why| AuthError::BadRequest(format!("group {name:?} {why}")))?;
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    if groups.is_empty() {
        return Err(AuthError::BadRequest(
            "groups must name at least one group".into(),
        ));
    }
    if groups.len() > MAX_GROUPS {
        return Err(AuthError::BadRequest(format!(
            "at most {MAX_GROUPS} groups per identity"
        )));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (query(Some("a"), None, Some("admin")), "role must be"),
        ] {
            let err = identity_from_query(&q).unwrap_err();
            assert!(matches!(err, AuthError::BadRequest(_)));
            assert!(err.to_string().contains(needle), "{err}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
        let err = identity_from_query(&query(Some("a"), Some(&many.join(",")), None)).unwrap_err();
        assert!(err.to_string().contains("at most 64"));
    }
}
