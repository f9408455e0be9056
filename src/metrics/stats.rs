//! Metrics of the statistics routes (`beacon_stats_*`), registered with the server's others.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Metrics of the statistics computed from the history.
#[derive(Clone, Debug)]
pub struct StatsMetrics {
    /// Devices whose statistics were computed (one per device answer, one per device of a
    /// group page).
    pub computed: Counter,
    /// History points read to compute them.
    pub points_read: Counter,
    /// Time to compute one device's statistics (the store read included), in seconds.
    pub seconds: Histogram,
}

impl StatsMetrics {
    /// Registers the statistics' metrics in `registry` (`beacon_stats_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = StatsMetrics {
            computed: Counter::default(),
            points_read: Counter::default(),
            // 100 µs to about 3 s.
            seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        };
        let stats = registry.sub_registry_with_prefix("stats");
        stats.register(
            "computed",
            "Device statistics computed from the history",
            metrics.computed.clone(),
        );
        stats.register(
            "points_read",
            "History points read for statistics",
            metrics.points_read.clone(),
        );
        stats.register(
            "seconds",
            "Time to compute one device's statistics, store read included",
            metrics.seconds.clone(),
        );
        metrics
    }
}
