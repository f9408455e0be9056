//! Where a webhook may point: an `http` or `https` URL whose host resolves only to public
//! addresses, unless `--webhook-allow-private`. Checked when an endpoint is created and again
//! at every attempt after resolving the host here, the attempt then connecting to exactly the
//! checked address, so a name re-pointed at a private address meanwhile (DNS rebinding) is
//! refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// Longest webhook URL, in bytes.
pub(crate) const MAX_URL_BYTES: usize = 2048;

/// A refused or unusable target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    /// The URL itself is refused (the message says why).
    #[error("{0}")]
    Url(String),
    /// The host could not be resolved in time.
    #[error("the URL's host could not be resolved: {0}")]
    Unresolved(String),
    /// The host resolves to an address on loopback or a private network.
    #[error(
        "the URL's host resolves to {0}, a loopback, private, link-local or unspecified address (see --webhook-allow-private)"
    )]
    Private(IpAddr),
}

/// `text` as a webhook URL: at most [`MAX_URL_BYTES`], `http` or `https`, with a host, without
/// credentials or a fragment.
pub(crate) fn parse_url(text: &str) -> Result<Url, TargetError> {
    let bad = |why: &str| Err(TargetError::Url(why.to_owned()));
    if text.len() > MAX_URL_BYTES {
        return Err(TargetError::Url(format!(
            "url must be at most {MAX_URL_BYTES} bytes"
        )));
    }
    let Ok(url) = Url::parse(text) else {
        return bad("url must be an absolute http or https URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("url must use http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad("url must name a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("url must not carry credentials");
    }
    if url.fragment().is_some() {
        return bad("url must not have a fragment");
    }
    Ok(url)
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, unspecified,
/// shared (CGNAT), multicast, broadcast, documentation or reserved. IPv4 inside IPv6
/// (mapped, NAT64) is judged as IPv4.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = ip.octets();
        return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        || segments[..6] == [0, 0, 0, 0, 0, 0])
}

/// The address to connect to for `url`: its host resolved here (bounded by `timeout`), every
/// address checked unless `allow_private`, the first one taken.
pub(crate) async fn resolve(
    url: &Url,
    allow_private: bool,
    timeout: Duration,
) -> Result<SocketAddr, TargetError> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| TargetError::Url("url has no port".into()))?;
    let host = url
        .host_str()
        .ok_or_else(|| TargetError::Url("url must name a host".into()))?;
    // An IPv6 literal comes bracketed (`[::1]`).
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(e)) => return Err(TargetError::Unresolved(e.to_string())),
                Err(_) => return Err(TargetError::Unresolved("timed out".into())),
            }
        }
    };
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(TargetError::Private(bad.ip()));
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| TargetError::Unresolved("no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("https://example.com/hook?x=1").is_ok());
        assert!(parse_url("http://93.184.216.34:8080/").is_ok());
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("example.com/hook").is_err());
        assert!(parse_url("https://user:pw@example.com/").is_err());
        assert!(parse_url("https://example.com/#x").is_err());
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(parse_url(&long).is_err());
    }

    #[test]
    fn addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "224.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn resolution_checks_every_address() {
        let timeout = Duration::from_secs(5);
        let url = parse_url("http://127.0.0.1:9/").unwrap();
        assert!(matches!(
            resolve(&url, false, timeout).await,
            Err(TargetError::Private(_))
        ));
        assert_eq!(
            resolve(&url, true, timeout).await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        let url = parse_url("http://localhost:9/").unwrap();
        assert!(resolve(&url, false, timeout).await.is_err());
    }
}
