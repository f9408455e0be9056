//! Browser origins: which web pages may talk to the server on a user's behalf.
//!
//! A browser lets any page open a WebSocket to any server and sends the page's `Origin`;
//! without a check, a page on another site could use a visitor's access to a Beacon (cross-site
//! WebSocket hijacking), e.g. one on `127.0.0.1` with `--auth none`. So every request that
//! carries an `Origin` header (browsers send it on WebSocket handshakes, on cross-origin
//! requests and on POSTs) must come from an allowed origin, or it is refused with 403:
//! - `--allowed-origins` set: the origin must be one of the list, exactly (scheme, host and
//!   port; case-insensitive). `*` in the list allows any origin.
//! - unset: the origin's host and port must equal the `Host` header (the page was served by
//!   this server).
//!
//! Requests without `Origin` (devices, apps, command-line tools, same-origin GETs) are not
//! affected. REST routes answer CORS for the listed origins (methods GET and POST; headers
//! `Authorization` and `Content-Type`; no credentials, since tokens are not cookies).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::debug;

use super::SetupError;
use crate::server::AppState;

/// How long a browser may cache a CORS preflight answer.
pub const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Which origins may act on the server.
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    allowed: Allowed,
    /// Entries of `--allowed-origins` that are not origins, reported by [`OriginPolicy::check`].
    invalid: Vec<String>,
}

#[derive(Clone, Debug)]
enum Allowed {
    SameOrigin,
    Any,
    List(Vec<String>),
}

impl OriginPolicy {
    /// The policy for `--allowed-origins` (empty: same origin only).
    pub fn new(list: &[String]) -> Self {
        let entries: Vec<String> = list
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        let invalid = entries
            .iter()
            .filter(|o| *o != "*" && *o != "null" && !looks_like_origin(o))
            .cloned()
            .collect();
        let allowed = if entries.is_empty() {
            Allowed::SameOrigin
        } else if entries.iter().any(|o| o == "*") {
            Allowed::Any
        } else {
            Allowed::List(entries)
        };
        OriginPolicy { allowed, invalid }
    }

    /// Refuses entries that are not origins (a path, a missing scheme...).
    pub fn check(&self) -> Result<(), SetupError> {
        match self.invalid.first() {
            None => Ok(()),
            Some(bad) => Err(SetupError::Config(format!(
                "--allowed-origins: {bad:?} is not an origin (scheme://host[:port], or *)"
            ))),
        }
    }

    /// Whether a request with these headers may proceed.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        match &self.allowed {
            Allowed::Any => true,
            Allowed::List(list) => list.contains(&origin),
            Allowed::SameOrigin => {
                let host = headers.get(HOST).and_then(|h| h.to_str().ok());
                host.is_some_and(|host| same_origin(&origin, &host.to_ascii_lowercase()))
            }
        }
    }

    /// CORS for REST routes: the listed origins (or any, with `*`); none when unset.
    pub fn cors(&self) -> CorsLayer {
        let layer = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE])
            .max_age(CORS_MAX_AGE);
        match &self.allowed {
            Allowed::SameOrigin => CorsLayer::new(),
            Allowed::Any => layer.allow_origin(AllowOrigin::any()),
            Allowed::List(list) => layer.allow_origin(AllowOrigin::list(
                list.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
            )),
        }
    }
}

fn looks_like_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' '])
}

/// Whether `origin` (`scheme://host[:port]`) names the server reached as `host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if authority == host {
        return true;
    }
    // A default port may be spelled out on one side only.
    let default = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    authority.strip_suffix(default) == Some(host) || host.strip_suffix(default) == Some(authority)
}

/// Middleware: refuses a request whose `Origin` the policy does not allow (403).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.auth.origins().allows(request.headers()) {
        return next.run(request).await;
    }
    state.metrics.security.auth_refused("origin").inc();
    debug!(
        origin = ?request.headers().get(ORIGIN),
        path = request.uri().path(),
        "refused a request from a foreign origin"
    );
    crate::http::error_response(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this origin is not allowed (see --allowed-origins)".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_when_unset() {
        let policy = OriginPolicy::new(&[]);
        assert!(policy.allows(&headers(None, "beacon.example")));
        assert!(policy.allows(&headers(Some("https://beacon.example"), "beacon.example")));
        assert!(policy.allows(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")));
        assert!(policy.allows(&headers(
            Some("https://Beacon.Example"),
            "beacon.example:443"
        )));
        assert!(!policy.allows(&headers(Some("https://evil.example"), "beacon.example")));
        assert!(!policy.allows(&headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080")));
        assert!(!policy.allows(&headers(Some("null"), "beacon.example")));
    }

    #[test]
    fn listed_origins_exactly() {
        let policy = OriginPolicy::new(&["https://map.example/".into(), "http://a.test:81".into()]);
        assert!(policy.check().is_ok());
        assert!(policy.allows(&headers(Some("https://map.example"), "api.example")));
        assert!(policy.allows(&headers(Some("http://a.test:81"), "api.example")));
        assert!(!policy.allows(&headers(Some("http://map.example"), "api.example")));
        assert!(!policy.allows(&headers(Some("https://map.example.evil"), "api.example")));
        // Listing origins turns same-origin off: the list is the whole truth.
        assert!(!policy.allows(&headers(Some("https://api.example"), "api.example")));
        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows(&headers(Some("https://anything.example"), "api.example")));
    }

    #[test]
    fn malformed_entries_are_refused_at_start() {
        for bad in [
            "map.example",
            "https://map.example/path",
            "ftp://x",
            "https://",
        ] {
            assert!(OriginPolicy::new(&[bad.into()]).check().is_err(), "{bad}");
        }
    }
}
