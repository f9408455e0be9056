//! Metrics of refusals: credentials, origins, limits and policy closes, by reason.
//!
//! Every handle is resolved when the registry is built, so counting a refusal is one atomic
//! add with no allocation, even under a flood of bad requests.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Reasons of `beacon_auth_refused_total`: why a token was refused, then route-level
/// refusals. Every reason the auth checks give must be here (their tests check it); any other
/// counts as `unauthorized`.
pub const AUTH_REASONS: [&str; 15] = [
    "missing",
    "malformed",
    "algorithm",
    "unknown_kid",
    "no_keys",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "claims",
    "bad_request",
    "unauthorized",
    "forbidden",
    "origin",
];

/// Refusals and policy closes.
#[derive(Debug)]
pub struct SecurityMetrics {
    auth_refused: [Counter; AUTH_REASONS.len()],
    /// Upgrades refused with 401.
    pub refused_unauthorized: Counter,
    /// Upgrades refused with 403.
    pub refused_forbidden: Counter,
    /// Upgrades refused because the client address holds its maximum of connections.
    pub refused_per_ip: Counter,
    /// Messages refused by the rate limit.
    pub rate_limited: Counter,
    /// Sockets closed with 1008 after repeated rate-limit refusals.
    pub closed_rate_limited: Counter,
    /// Sockets closed with 1008 when their token expired.
    pub closed_expired: Counter,
    /// Sockets closed after staying silent past the idle timeout.
    pub closed_idle: Counter,
    /// WebSocket pings sent.
    pub pings: Counter,
    /// Plain HTTP connections closed at accept: their address held its maximum.
    pub http_refused_per_ip: Counter,
}

impl SecurityMetrics {
    /// Registers the metrics in `registry`; upgrade refusals join the existing
    /// `connections_refused` family.
    pub fn new(registry: &mut Registry, connections_refused: &Family<Labels, Counter>) -> Self {
        let auth = Family::<Labels, Counter>::default();
        registry.register(
            "auth_refused",
            "Requests refused for their credentials, group, role or origin, by reason",
            auth.clone(),
        );
        let closes = Family::<Labels, Counter>::default();
        registry.register(
            "policy_closes",
            "WebSockets closed by the server for policy, by reason",
            closes.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let upgrade = |reason| connections_refused.get_or_create_owned(&vec![("reason", reason)]);
        let close = |reason| closes.get_or_create_owned(&vec![("reason", reason)]);
        SecurityMetrics {
            auth_refused: AUTH_REASONS.map(|r| auth.get_or_create_owned(&vec![("reason", r)])),
            refused_unauthorized: upgrade("unauthorized"),
            refused_forbidden: upgrade("forbidden"),
            refused_per_ip: upgrade("per_ip"),
            rate_limited: counter(
                registry,
                "rate_limited",
                "Client messages refused by the per-connection rate limit",
            ),
            closed_rate_limited: close("rate_limited"),
            closed_expired: close("expired"),
            closed_idle: close("idle"),
            pings: counter(registry, "pings", "WebSocket pings sent to clients"),
            http_refused_per_ip: counter(
                registry,
                "http_connections_refused_per_ip",
                "Connections closed at accept because their address held its maximum of HTTP connections",
            ),
        }
    }

    /// The refusal counter for `reason` (one of [`AUTH_REASONS`]);
    /// unknown reasons count as `unauthorized`.
    pub fn auth_refused(&self, reason: &str) -> &Counter {
        let index = AUTH_REASONS
            .iter()
            .position(|r| *r == reason)
            .or_else(|| AUTH_REASONS.iter().position(|r| *r == "unauthorized"))
            .unwrap_or_default();
        &self.auth_refused[index]
    }
}
