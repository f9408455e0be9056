//! Server targets: URL normalisation, resolution, and the loopback-only guard.
//!
//! A load test sends a lot of traffic; by default it may only go to this machine. Every
//! address a host name resolves to must be in 127.0.0.0/8 or be ::1, otherwise the run is
//! refused unless `--allow-remote` is given.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use tokio_tungstenite::tungstenite::http::Uri;

use crate::config::Target;

/// The WebSocket path appended to a base URL.
pub(crate) const WS_PATH: &str = "/v1/ws";

/// A base URL split into what the harness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    /// `ws://host:port/.../v1/ws`, without query.
    pub ws_url: String,
    /// Host name or address literal, without IPv6 brackets.
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
}

/// Normalises `ws://127.0.0.1:8080`, `http://localhost:8080/`, `127.0.0.1:8080` or a full
/// `ws://…/v1/ws` into a WebSocket endpoint URL.
pub(crate) fn parse_url(raw: &str) -> anyhow::Result<ParsedUrl> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("ws://{raw}")
    };
    let uri: Uri = with_scheme
        .parse()
        .with_context(|| format!("`{raw}` is not a URL (example: ws://127.0.0.1:8080)"))?;
    match uri.scheme_str() {
        Some("ws") | Some("http") => {}
        Some("wss") | Some("https") => {
            bail!(
                "`{raw}`: TLS targets are not supported; point the harness at the plain ws:// listener"
            )
        }
        other => bail!("`{raw}`: unsupported scheme {other:?} (use ws://)"),
    }
    if uri.query().is_some() {
        bail!("`{raw}`: give a base URL without a query; the harness builds the query itself");
    }
    let host = uri
        .host()
        .with_context(|| format!("`{raw}` has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with(WS_PATH) {
        path.to_string()
    } else {
        format!("{path}{WS_PATH}")
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(ParsedUrl {
        ws_url: format!("ws://{authority}{path}"),
        host,
        port,
    })
}

/// Whether an address is on this machine's loopback: 127.0.0.0/8, ::1, or ::ffff:127.x.x.x.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Resolves a base URL and applies the loopback guard.
pub(crate) async fn resolve(raw: &str, allow_remote: bool) -> anyhow::Result<Target> {
    let parsed = parse_url(raw)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
        .await
        .with_context(|| format!("cannot resolve `{}`", parsed.host))?
        .collect();
    check_addresses(raw, &addrs, allow_remote)?;
    // Prefer IPv4: source-address spreading (127.0.0.x) only exists there.
    let addr = addrs
        .iter()
        .copied()
        .find(SocketAddr::is_ipv4)
        .or_else(|| addrs.first().copied())
        .with_context(|| format!("`{}` resolved to no address", parsed.host))?;
    Ok(Target {
        url: parsed.ws_url,
        addr,
        loopback: is_loopback(addr.ip()),
    })
}

/// Refuses a target whose resolved addresses leave the machine, unless allowed.
pub(crate) fn check_addresses(
    raw: &str,
    addrs: &[SocketAddr],
    allow_remote: bool,
) -> anyhow::Result<()> {
    if addrs.is_empty() {
        bail!("`{raw}` resolved to no address");
    }
    if allow_remote {
        return Ok(());
    }
    if let Some(remote) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        bail!(
            "refusing to load-test `{raw}`: it resolves to {}, which is not a loopback address \
             (127.0.0.0/8 or ::1). Load tests stay on this machine unless you pass --allow-remote \
             for a server you own.",
            remote.ip()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_the_ws_path() {
        let p = parse_url("ws://127.0.0.1:8080").unwrap();
        assert_eq!(p.ws_url, "ws://127.0.0.1:8080/v1/ws");
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 8080));
        assert_eq!(
            parse_url("http://localhost:9/").unwrap().ws_url,
            "ws://localhost:9/v1/ws"
        );
        assert_eq!(
            parse_url("127.0.0.1:7").unwrap().ws_url,
            "ws://127.0.0.1:7/v1/ws"
        );
        assert_eq!(
            parse_url("ws://127.0.0.1:7/v1/ws").unwrap().ws_url,
            "ws://127.0.0.1:7/v1/ws"
        );
        assert_eq!(
            parse_url("ws://127.0.0.1:7/beacon").unwrap().ws_url,
            "ws://127.0.0.1:7/beacon/v1/ws"
        );
        let v6 = parse_url("ws://[::1]:8080").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.ws_url, "ws://[::1]:8080/v1/ws");
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(parse_url("wss://127.0.0.1:8080").is_err());
        assert!(parse_url("ftp://127.0.0.1").is_err());
        assert!(parse_url("ws://127.0.0.1:8080/v1/ws?id=x").is_err());
    }

    #[test]
    fn loopback_means_127_slash_8_and_colon_colon_1() {
        for ip in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.2"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "::",
            "fe80::1",
            "0.0.0.0",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn remote_addresses_need_permission() {
        let local: Vec<SocketAddr> =
            vec!["127.0.0.1:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        assert!(check_addresses("x", &local, false).is_ok());
        let mixed: Vec<SocketAddr> = vec![
            "127.0.0.1:80".parse().unwrap(),
            "192.0.2.7:80".parse().unwrap(),
        ];
        let err = check_addresses("x", &mixed, false).unwrap_err().to_string();
        assert!(
            err.contains("192.0.2.7") && err.contains("--allow-remote"),
            "{err}"
        );
        assert!(check_addresses("x", &mixed, true).is_ok());
        assert!(check_addresses("x", &[], true).is_err());
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let t = resolve("ws://localhost:8080", false).await.unwrap();
        assert!(t.loopback);
        assert_eq!(t.addr.port(), 8080);
    }
}
