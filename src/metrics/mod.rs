//! Prometheus metrics.
//!
//! Each server owns its own [`Registry`] (no global recorder), so several servers in one test
//! process keep separate figures. Hot paths hold pre-resolved handles: incrementing a counter is
//! one atomic add, with no label lookup.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::Role;
use crate::protocol::ErrorCode;

mod geofence;
mod relay;
mod security;
mod stats;
mod store;
mod webhook;

pub use geofence::GeofenceMetrics;
pub use relay::RelayMetrics;
pub use security::{AUTH_REASONS, SecurityMetrics};
pub use stats::StatsMetrics;
pub use store::StoreMetrics;
pub use webhook::{WEBHOOK_OUTCOMES, WebhookMetrics};

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the server exports, with handles ready for the hot paths.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_device: Gauge,
    connections_viewer: Gauge,
    connections_admin: Gauge,
    /// Upgrades refused because the server was full.
    pub refused_full: Counter,
    /// Upgrades refused for a bad query, token, origin or role.
    pub refused_bad_request: Counter,
    /// Client messages by type.
    pub msg_in_pos: Counter,
    /// `sub` messages received.
    pub msg_in_sub: Counter,
    /// `unsub` messages received.
    pub msg_in_unsub: Counter,
    /// `ping` messages received.
    pub msg_in_ping: Counter,
    /// Fixes received over HTTP.
    pub msg_in_http: Counter,
    /// Fixes from phone apps answered 200 but dropped: too old for the history retention.
    pub ingest_too_old: Counter,
    /// Bytes received in client frames.
    pub bytes_in: Counter,
    /// Frames written to clients.
    pub frames_out: Counter,
    /// Bytes of frames written to clients.
    pub bytes_out: Counter,
    /// Batches built (one per group per tick with changes).
    pub batches: Counter,
    /// Encodings done (one per batch per codec in use).
    pub encodes: Counter,
    /// Frames dropped for a client whose queue was full.
    pub drops: Counter,
    /// Fresh snapshots sent to a client after drops.
    pub resyncs: Counter,
    /// Clients closed with 1013.
    pub slow_closes: Counter,
    errors: [Counter; ErrorCode::ALL.len()],
    /// Groups held in memory.
    pub groups: Gauge,
    /// Positions held in memory, summed over groups.
    pub positions: Gauge,
    /// Time to build, encode and fan out one tick, in seconds.
    pub tick_seconds: Histogram,
    /// Refusals by reason and policy closes.
    pub security: SecurityMetrics,
    /// The durable store's figures (`beacon_store_*`).
    pub store: StoreMetrics,
    /// The statistics routes' figures (`beacon_stats_*`).
    pub stats: StatsMetrics,
    /// The Redis relay's metrics.
    pub relay: RelayMetrics,
    /// Webhook deliveries (`beacon_webhook_*`).
    pub webhook: WebhookMetrics,
    /// Geofences and proximity rules.
    pub geofence: GeofenceMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `beacon_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("beacon");

        let connections = Family::<Labels, Gauge>::default();
        registry.register(
            "connections",
            "Open WebSocket connections by role",
            connections.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "WebSocket upgrades refused, by reason",
            refused.clone(),
        );
        let msg_in = Family::<Labels, Counter>::default();
        registry.register(
            "messages_in",
            "Client messages received, by type",
            msg_in.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "errors",
            "Client messages refused, by protocol error code",
            errors.clone(),
        );

        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let tick_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "tick_seconds",
            "Time the ticker takes to build, encode and fan out the groups due at one wake-up",
            tick_seconds.clone(),
        );

        let role = |r: Role| connections.get_or_create_owned(&vec![("role", r.as_str())]);
        let refused_by = |reason| refused.get_or_create_owned(&vec![("reason", reason)]);
        let msg = |kind| msg_in.get_or_create_owned(&vec![("type", kind)]);
        Metrics {
            connections_device: role(Role::Device),
            connections_viewer: role(Role::Viewer),
            connections_admin: role(Role::Admin),
            refused_full: refused_by("full"),
            refused_bad_request: refused_by("bad_request"),
            msg_in_pos: msg("pos"),
            msg_in_sub: msg("sub"),
            msg_in_unsub: msg("unsub"),
            msg_in_ping: msg("ping"),
            msg_in_http: msg("http_pos"),
            ingest_too_old: counter(
                &mut registry,
                "ingest_too_old",
                "Phone-app fixes answered 200 but dropped: older than the history retention",
            ),
            bytes_in: counter(&mut registry, "bytes_in", "Bytes of client frames received"),
            frames_out: counter(&mut registry, "frames_out", "Frames written to clients"),
            bytes_out: counter(
                &mut registry,
                "bytes_out",
                "Bytes of frames written to clients",
            ),
            batches: counter(
                &mut registry,
                "batches",
                "Batches built, one per group per tick",
            ),
            encodes: counter(
                &mut registry,
                "encodes",
                "Batch encodings, one per codec in use",
            ),
            drops: counter(
                &mut registry,
                "drops",
                "Frames dropped for clients whose queue was full",
            ),
            resyncs: counter(&mut registry, "resyncs", "Fresh snapshots sent after drops"),
            slow_closes: counter(
                &mut registry,
                "slow_closes",
                "Clients closed with 1013 (slow consumer)",
            ),
            errors: ErrorCode::ALL
                .map(|code| errors.get_or_create_owned(&vec![("code", code.as_str())])),
            groups: gauge(&mut registry, "groups", "Groups held in memory"),
            positions: gauge(
                &mut registry,
                "positions",
                "Positions held in memory, summed over groups",
            ),
            tick_seconds,
            security: SecurityMetrics::new(&mut registry, &refused),
            store: StoreMetrics::register(&mut registry),
            stats: StatsMetrics::register(&mut registry),
            relay: RelayMetrics::register(&mut registry),
            webhook: WebhookMetrics::register(&mut registry),
            geofence: GeofenceMetrics::register(&mut registry),
            registry,
        }
    }

    /// The open-connections gauge for `role`.
    pub fn connections(&self, role: Role) -> &Gauge {
        match role {
            Role::Device => &self.connections_device,
            Role::Viewer => &self.connections_viewer,
            Role::Admin => &self.connections_admin,
        }
    }

    /// The refusal counter for `code`.
    pub fn error(&self, code: ErrorCode) -> &Counter {
        let index = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .unwrap_or_default();
        &self.errors[index]
    }

    /// Renders every metric in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}
