//! Metrics of geofences and proximity rules (`beacon_geofence_*`), registered with the server's
//! others.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Metrics of geofences and proximity rules.
#[derive(Clone, Debug)]
pub struct GeofenceMetrics {
    /// Fixes judged against a group's fences or proximity rule.
    pub fixes_judged: Counter,
    /// Fixes not judged: older than the device's latest.
    pub fixes_old: Counter,
    /// Fixes not judged because the group's bound on tracked devices was reached.
    pub devices_full: Counter,
    /// Geofences held, all groups together.
    pub fences: Gauge,
    /// State writes that failed (`--data-dir`).
    pub disk_errors: Counter,
    /// Changes not shared with other instances: the queue to Redis was full.
    pub share_dropped: Counter,
    /// Other instances' changes taken here (definitions, device states, pairs).
    pub share_applied: Counter,
    /// Fences judged exactly, all fixes together: the spatial index's candidates (divided by
    /// `fixes_judged`, what a fix costs).
    pub fences_judged: Counter,
    /// State writes for `--data-dir` dropped: the writer's queue was full.
    pub disk_dropped: Counter,
    events: Family<Labels, Counter>,
}

impl GeofenceMetrics {
    /// Registers the family in `registry` (`beacon_geofence_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = GeofenceMetrics {
            fixes_judged: Counter::default(),
            fixes_old: Counter::default(),
            devices_full: Counter::default(),
            fences: Gauge::default(),
            disk_errors: Counter::default(),
            share_dropped: Counter::default(),
            share_applied: Counter::default(),
            fences_judged: Counter::default(),
            disk_dropped: Counter::default(),
            events: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("geofence");
        r.register(
            "fixes_judged",
            "Accepted fixes judged against a group's geofences or proximity rule",
            metrics.fixes_judged.clone(),
        );
        r.register(
            "fixes_old",
            "Fixes not judged because they are older than the device's latest",
            metrics.fixes_old.clone(),
        );
        r.register(
            "devices_full",
            "Fixes not judged because the group tracks as many devices as allowed",
            metrics.devices_full.clone(),
        );
        r.register("fences", "Geofences held", metrics.fences.clone());
        r.register(
            "disk_errors",
            "Geofence state writes to --data-dir that failed",
            metrics.disk_errors.clone(),
        );
        r.register(
            "share_dropped",
            "Geofence changes not shared with other instances: the queue to Redis was full",
            metrics.share_dropped.clone(),
        );
        r.register(
            "share_applied",
            "Other instances' geofence changes taken here",
            metrics.share_applied.clone(),
        );
        r.register(
            "fences_judged",
            "Fences judged exactly against fixes: the spatial index's candidates",
            metrics.fences_judged.clone(),
        );
        r.register(
            "disk_dropped",
            "Geofence state writes for --data-dir dropped: the writer's queue was full",
            metrics.disk_dropped.clone(),
        );
        r.register(
            "events",
            "Events made by geofences and proximity rules, by kind",
            metrics.events.clone(),
        );
        metrics
    }

    /// The counter of events of `kind`.
    pub fn event(&self, kind: &'static str) -> Counter {
        self.events.get_or_create_owned(&vec![("kind", kind)])
    }
}
