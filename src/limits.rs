//! Abuse resistance that is not about identity: message rates and connections per address.
//!
//! - [`TokenBucket`]: one per connection, `--rate-per-sec` refill and `--rate-burst` size. It
//!   is plain arithmetic on two numbers: no allocation, no lock, no timer.
//! - [`IpConnections`]: open WebSockets per client address, at most
//!   `--max-connections-per-ip`. IPv6 addresses count by their /64, since one host commonly
//!   holds a whole /64. The map holds only addresses with open connections, so it is bounded
//!   by `--max-connections`.
//! - [`client_ip`]: the address a limit applies to: the peer, or with `--trust-proxy` the last
//!   `X-Forwarded-For` entry.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;

/// A token bucket: `burst` tokens at most, refilled at `per_sec` tokens per second.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst.max(1)),
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec.max(1)),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Key of a client address: IPv4 as is (IPv4-mapped IPv6 included), IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Open connections per client address.
#[derive(Debug)]
pub(crate) struct IpConnections {
    max: usize,
    /// A std mutex: held for one hash-map operation, never across an await.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`IpConnections`]; gives it back on drop.
#[derive(Debug)]
pub(crate) struct IpPermit {
    held: Option<(Arc<IpConnections>, IpAddr)>,
}

impl IpConnections {
    /// At most `max` connections per address; 0 means no bound.
    pub(crate) fn new(max: usize) -> Self {
        IpConnections {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, or `None` when the address is at its bound.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<IpPermit> {
        let (Some(ip), true) = (ip, self.max > 0) else {
            return Some(IpPermit { held: None });
        };
        let ip = key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpPermit {
            held: Some((self.clone(), ip)),
        })
    }

    /// Open connections counted for `ip`.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Some((owner, ip)) = self.held.take() {
            let mut counts = owner.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = counts.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// The client address of a request: with `trust_proxy`, the last `X-Forwarded-For` entry
/// (what the proxy in front saw); otherwise, or when that entry is not an address, the peer.
pub(crate) fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trust_proxy: bool,
) -> Option<IpAddr> {
    if trust_proxy {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if let Some(entry) = last {
            if let Ok(ip) = entry.parse::<IpAddr>() {
                return Some(ip);
            }
            if let Ok(addr) = entry.parse::<SocketAddr>() {
                return Some(addr.ip());
            }
        }
    }
    peer.map(|p| p.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert_eq!((0..8).filter(|_| bucket.try_take(start)).count(), 5);
        // 10/s: one token per 100 ms.
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(110)));
        assert!(!bucket.try_take(start + Duration::from_millis(120)));
        // Long silence refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| bucket.try_take(later)).count(), 5);
    }

    #[test]
    fn per_address_bound() {
        let limits = Arc::new(IpConnections::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limits.try_acquire(Some(a)).unwrap();
        let _p2 = limits.try_acquire(Some(a)).unwrap();
        assert!(limits.try_acquire(Some(a)).is_none());
        assert!(limits.try_acquire(Some(b)).is_some());
        drop(p1);
        assert_eq!(limits.count(a), 1);
        assert!(limits.try_acquire(Some(a)).is_some());
        // No address known, or no bound: always a place.
        assert!(limits.try_acquire(None).is_some());
        let open = Arc::new(IpConnections::new(0));
        let _held: Vec<_> = (0..10)
            .map(|_| open.try_acquire(Some(a)).unwrap())
            .collect();
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let limits = Arc::new(IpConnections::new(1));
        let _p = limits
            .try_acquire(Some("2001:db8::1".parse().unwrap()))
            .unwrap();
        assert!(
            limits
                .try_acquire(Some("2001:db8::ffff:2".parse().unwrap()))
                .is_none()
        );
        assert!(
            limits
                .try_acquire(Some("2001:db8:0:1::1".parse().unwrap()))
                .is_some()
        );
        let _v4 = limits
            .try_acquire(Some("192.0.2.7".parse().unwrap()))
            .unwrap();
        assert!(
            limits
                .try_acquire(Some("::ffff:192.0.2.7".parse().unwrap()))
                .is_none()
        );
        // Only addresses with open connections are held.
        assert_eq!(limits.counts.lock().unwrap().len(), 2);
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6, 198.51.100.4".parse().unwrap());
        let ip = |h: &HeaderMap, trust| client_ip(Some(peer), h, trust).unwrap().to_string();
        assert_eq!(ip(&headers, false), "10.1.1.1");
        assert_eq!(ip(&headers, true), "198.51.100.4");
        headers.append("x-forwarded-for", "203.0.113.9:443".parse().unwrap());
        assert_eq!(ip(&headers, true), "203.0.113.9");
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(ip(&headers, true), "10.1.1.1");
    }
}
