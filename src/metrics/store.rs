//! Metrics of the durable store (`beacon_store_*`), registered with the server's others.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Metrics of the store, registered with the server's others.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Accepted fixes written (each an upsert of the device's last-known row per group, and a
    /// history point when downsampling keeps it).
    pub written: Counter,
    /// History points added.
    pub track_points: Counter,
    /// Fixes dropped because the queue was full or the store closed.
    pub dropped: Counter,
    /// Failed transactions.
    pub errors: Counter,
    /// Fixes waiting for the writer.
    pub queued: Gauge,
    /// Time to write one batch, in seconds.
    pub batch_seconds: Histogram,
}

impl StoreMetrics {
    /// Registers the store's metrics in `registry` (`beacon_store_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = StoreMetrics {
            written: Counter::default(),
            track_points: Counter::default(),
            dropped: Counter::default(),
            errors: Counter::default(),
            queued: Gauge::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        };
        let store = registry.sub_registry_with_prefix("store");
        store.register(
            "positions_written",
            "Accepted fixes written to the store",
            metrics.written.clone(),
        );
        store.register(
            "track_points",
            "Points added to the track history",
            metrics.track_points.clone(),
        );
        store.register(
            "dropped",
            "Positions dropped because the store queue was full",
            metrics.dropped.clone(),
        );
        store.register(
            "errors",
            "Store transactions that failed",
            metrics.errors.clone(),
        );
        store.register(
            "queued_positions",
            "Positions waiting for the store writer",
            metrics.queued.clone(),
        );
        store.register(
            "batch_seconds",
            "Time to write one batch to the store",
            metrics.batch_seconds.clone(),
        );
        metrics
    }
}
