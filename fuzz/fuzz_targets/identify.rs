//! Fuzzes what a client controls before it is let in: the query string, the `Authorization`
//! header (a token, or Basic credentials) and, through tokens signed with the test secret, the
//! claims. Whatever the input, identification must return (never panic) and an identity it
//! returns must satisfy the protocol's id rules and group bounds.
//!
//! Input layout: `query \n authorization-header \n claims-json`; missing parts are empty.

#![no_main]

use std::sync::LazyLock;

use beacon::auth::{Authenticator, IdentityQuery, MAX_GROUPS};
use beacon::config::AuthMode;
use beacon::model::{Identity, id_problem};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzzing-secret-fuzzing-secret-fuzzing";

struct Targets {
    none: Authenticator,
    jwt: Authenticator,
}

static TARGETS: LazyLock<Targets> = LazyLock::new(|| {
    let mut config = beacon::Config::default().auth;
    config.mode = AuthMode::None;
    let none = Authenticator::new(config.clone(), None);
    config.mode = AuthMode::Jwt;
    config.jwt_secret = Some(SECRET.into());
    config.jwt_groups_claim = "cognito:groups".into();
    let jwt = Authenticator::new(config, None);
    Targets { none, jwt }
});

fn check(identity: &Identity) {
    assert!(id_problem(identity.id.as_str()).is_none());
    assert!(!identity.groups.is_empty() && identity.groups.len() <= MAX_GROUPS);
    for group in &identity.groups {
        assert!(id_problem(group.as_str()).is_none());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let query_bytes = parts.next().unwrap_or_default();
    let header_bytes = parts.next().unwrap_or_default();
    let claims_bytes = parts.next().unwrap_or_default();

    // As axum's `Query` extractor parses it; a query it refuses never reaches `identify`.
    let Ok(query) = serde_urlencoded::from_bytes::<IdentityQuery>(query_bytes) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(header_bytes) {
        headers.insert(AUTHORIZATION, value);
    }
    let targets = &*TARGETS;
    for auth in [&targets.none, &targets.jwt] {
        if let Ok(identity) = auth.identify_now(&headers, &query) {
            check(&identity);
        }
    }

    // Claims behind a valid signature reach the claims reader.
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims_bytes) {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        if let Ok(token) = jsonwebtoken::encode(&header, &claims, &key)
            && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(AUTHORIZATION, value);
            if let Ok(identity) = targets.jwt.identify_now(&headers, &query) {
                check(&identity);
            }
        }
    }
});
