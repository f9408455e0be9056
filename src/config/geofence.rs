//! Geofences and proximity rules: the bounds of a definition and the defaults of the noise
//! settings a fence may override.

use clap::Args;

/// Bounds and defaults of geofences (`src/geofence/`, docs/geofences.md).
#[derive(Clone, Debug, Args)]
pub struct GeofenceConfig {
    /// Most geofences one group may hold; a further `POST` is refused with 409. Default 10000.
    /// A fix is judged only against the fences whose box (grown by the hysteresis margin)
    /// holds it and those it is inside of, found in a per-group R-tree, so the work per fix
    /// does not grow with this; it bounds memory and the tree's depth. Range 1-100000.
    #[arg(long, env = "BEACON_MAX_GEOFENCES_PER_GROUP", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_geofences_per_group: u32,

    /// Most positions of one polygon fence, all rings together. Default 1000. Range 4-100000.
    #[arg(long, env = "BEACON_MAX_GEOFENCE_VERTICES", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(4..=100_000))]
    pub max_geofence_vertices: u32,

    /// Most device ids in one fence's `devices` list. Default 1000. Range 1-100000.
    #[arg(long, env = "BEACON_MAX_GEOFENCE_DEVICES", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_geofence_devices: u32,

    /// Largest circle fence radius, metres. Default 100000 (100 km); the smallest is 1 m.
    /// Range 1-1000000.
    #[arg(long, env = "BEACON_MAX_GEOFENCE_RADIUS_M", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_geofence_radius_m: u32,

    /// Default accuracy gate: a fix whose `acc` is worse (larger) than this many metres does
    /// not change a device's side of a fence (`max_acc_m` per fence). Default 100.
    #[arg(long, env = "BEACON_GEOFENCE_MAX_ACC_M", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub geofence_max_acc_m: u32,

    /// Default hysteresis: leaving a fence needs a fix this many metres outside its boundary
    /// (`hysteresis_m` per fence). Default 20.
    #[arg(long, env = "BEACON_GEOFENCE_HYSTERESIS_M", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub geofence_hysteresis_m: u32,

    /// Default debounce: a change of side is confirmed by the first fix at least this many
    /// seconds (fix time) after the first fix on the new side (`debounce_s` per fence).
    /// Default 10.
    #[arg(long, env = "BEACON_GEOFENCE_DEBOUNCE_S", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=3_600))]
    pub geofence_debounce_s: u32,
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let g = Config::default().geofences;
        assert_eq!(g.max_geofences_per_group, 10_000);
        assert_eq!(g.max_geofence_vertices, 1000);
        assert_eq!(g.max_geofence_devices, 1000);
        assert_eq!(g.max_geofence_radius_m, 100_000);
        assert_eq!(g.geofence_max_acc_m, 100);
        assert_eq!(g.geofence_hysteresis_m, 20);
        assert_eq!(g.geofence_debounce_s, 10);
    }
}
