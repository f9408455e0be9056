//! Metrics of the Redis relay (`beacon_relay_*`), registered with the server's others.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Handles on the relay's metrics (all zero on an instance without `--redis-url`).
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Messages published to group channels.
    pub published_messages: Counter,
    /// Bytes of messages published.
    pub published_bytes: Counter,
    /// Messages received from other instances (own messages excluded).
    pub received_messages: Counter,
    /// Bytes of messages received from other instances.
    pub received_bytes: Counter,
    /// Messages received from Redis and refused (undecodable, wrong version, out of range).
    pub rejected: Counter,
    /// Group flushes dropped because the queue to the Redis writer was full.
    pub dropped: Counter,
    /// Commands sent to Redis (every command of a pipeline counts).
    pub commands: Counter,
    /// Connections to Redis re-established after a loss.
    pub reconnects: Counter,
    /// 1 while connected to Redis, else 0.
    pub up: Gauge,
    /// Group channels this instance is subscribed to.
    pub subscribed_groups: Gauge,
}

impl RelayMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = RelayMetrics::default();
        let counters = [
            (
                "relay_published_messages",
                "Messages published to Redis group channels",
                &m.published_messages,
            ),
            (
                "relay_published_bytes",
                "Bytes of messages published to Redis",
                &m.published_bytes,
            ),
            (
                "relay_received_messages",
                "Messages received from other instances through Redis",
                &m.received_messages,
            ),
            (
                "relay_received_bytes",
                "Bytes of messages received from other instances",
                &m.received_bytes,
            ),
            (
                "relay_rejected",
                "Messages or records from Redis refused as invalid",
                &m.rejected,
            ),
            (
                "relay_dropped",
                "Group flushes dropped because the queue to the Redis writer was full",
                &m.dropped,
            ),
            (
                "redis_commands",
                "Commands sent to Redis, pipelined ones included",
                &m.commands,
            ),
            (
                "redis_reconnects",
                "Connections to Redis re-established after a loss",
                &m.reconnects,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register("redis_up", "1 while connected to Redis", m.up.clone());
        registry.register(
            "relay_subscribed_groups",
            "Group channels this instance is subscribed to",
            m.subscribed_groups.clone(),
        );
        m
    }
}
