//! Browser origins: which web pages may talk to the server on a user's behalf.
//!
//! A browser lets any page open a WebSocket to any server and sends the page's `Origin`;
//! without a check, a page on another site could use a visitor's access to a Beacon (cross-site
//! WebSocket hijacking), e.g. one on `127.0.0.1` with `--auth none`. So every request that
//! carries an `Origin` header (browsers send it on WebSocket handshakes, on cross-origin
//! requests and on POSTs) must come from an allowed origin, or it is refused with 403:
//! - the server's own origin: the origin's host and port equal the `Host` header (the page
//!   was served by this server, like the embedded map);
//! - and, with `--allowed-origins`, the origins of the list, exactly (scheme, host and port;
//!   case-insensitive). `*` in the list allows any origin.
//!
//! Requests without `Origin` (devices, apps, command-line tools, same-origin GETs) are not
//! affected. REST routes answer CORS for the listed origins (methods GET and POST; headers
//! `Authorization` and `Content-Type`; no credentials, since tokens are not cookies).
//!
//! DNS rebinding: a foreign page can make its own domain name resolve to 127.0.0.1 and then
//! read a local server as if same-origin (no `Origin` is sent). With `--auth none` (and no
//! `--insecure`), where nothing else stands in the way, requests must therefore name the
//! server by an IP address or `localhost` in `Host`, or they are refused with 403.

use std::time::Duration;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::SetupError;

/// How long a browser may cache a CORS preflight answer.
pub(crate) const CORS_MAX_AGE: Duration = Duration::from_secs(600);

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
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        if host.is_some_and(|host| same_origin(&origin, &host.to_ascii_lowercase())) {
            return true;
        }
        match &self.allowed {
            Allowed::Any => true,
            Allowed::List(list) => list.contains(&origin),
            Allowed::SameOrigin => false,
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

/// Whether `Host` names the server by an IP address or `localhost` (no DNS name that a
/// foreign site could point at 127.0.0.1). A request without `Host` (HTTP/1.0) passes.
pub(crate) fn host_is_local_name(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
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
        // The server's own pages stay allowed.
        assert!(policy.allows(&headers(Some("https://api.example"), "api.example")));
        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows(&headers(Some("https://anything.example"), "api.example")));
    }

    #[test]
    fn local_host_names() {
        for (host, local) in [
            ("localhost:8080", true),
            ("127.0.0.1:8080", true),
            ("[::1]:8080", true),
            ("192.0.2.1", true),
            ("app.localhost", true),
            ("rebind.evil.example:8080", false),
            ("evil.example", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(HOST, host.parse().unwrap());
            assert_eq!(host_is_local_name(&h), local, "{host}");
        }
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
