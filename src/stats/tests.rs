//! The statistics over synthetic tracks whose ground truth is known.

use geo::{Destination, Haversine, Point};

use super::*;

const T0: i64 = 1_763_780_000_000;

/// Builds a track second by second, with deterministic position noise.
struct Builder {
    at: Point<f64>,
    ts: i64,
    seed: u64,
    fixes: Vec<Fix>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            at: Point::new(13.4, 52.5),
            ts: T0,
            seed: 7,
            fixes: Vec::new(),
        }
    }

    /// A pseudo-random number in [-1, 1).
    fn noise(&mut self) -> f64 {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.seed >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Emits the current place moved by up to `jitter_m` in a random direction.
    fn fix(&mut self, jitter_m: f64) {
        let bearing = (self.noise() + 1.0) * 180.0;
        let off = self.noise().abs() * jitter_m;
        let p = Haversine.destination(self.at, bearing, off);
        let mut fix = Fix::new(p.y(), p.x(), self.ts);
        fix.acc = Some(8.0);
        self.fixes.push(fix);
    }

    /// `secs` seconds heading `bearing` at `speed` m/s, one fix every `every` seconds.
    fn drive(&mut self, secs: i64, bearing: f64, speed: f64, every: i64, jitter_m: f64) {
        for _ in 0..secs / every {
            self.at = Haversine.destination(self.at, bearing, speed * every as f64);
            self.ts += every * 1000;
            self.fix(jitter_m);
        }
    }

    /// `secs` seconds parked, one fix a second, wandering by up to `jitter_m`.
    fn park(&mut self, secs: i64, jitter_m: f64) {
        for _ in 0..secs {
            self.ts += 1000;
            self.fix(jitter_m);
        }
    }

    /// Replaces the fix at `second` (from the start) by one `metres` away to the east.
    fn spike(&mut self, second: i64, metres: f64) {
        let fix = self
            .fixes
            .iter_mut()
            .find(|f| f.ts == T0 + second * 1000)
            .expect("a fix at that second");
        let p = Haversine.destination(Point::new(fix.lon, fix.lat), 90.0, metres);
        fix.lat = p.y();
        fix.lon = p.x();
    }

    fn stats(&self, rules: Rules) -> Summary {
        let mut stats = Stats::new(rules);
        for fix in &self.fixes {
            stats.push(fix);
        }
        stats.finish()
    }
}

fn within(value: f64, truth: f64, share: f64) -> bool {
    (value - truth).abs() <= truth * share
}

/// A drive, a stop with jitter, a second drive, with injected outliers.
fn day() -> Builder {
    let mut b = Builder::new();
    b.fix(3.0);
    b.drive(600, 0.0, 15.0, 1, 3.0); // 9 km north
    b.park(900, 15.0);
    b.drive(600, 90.0, 20.0, 1, 3.0); // 12 km east
    b.spike(300, 5_000.0);
    b.spike(1_000, 2_000.0);
    b.spike(1_800, -4_000.0);
    // A fix far off, reported as inaccurate.
    b.spike(1_200, 800.0);
    let fix = b.fixes.iter_mut().find(|f| f.ts == T0 + 1_200_000).unwrap();
    fix.acc = Some(900.0);
    b
}

#[test]
fn a_day_with_two_drives_and_a_stop() {
    let s = day().stats(Rules::default());
    assert_eq!(s.points, 2101);
    assert_eq!(s.outliers, 4);
    assert!(within(s.distance_m, 21_000.0, 0.03), "{}", s.distance_m);
    assert!(within(s.moving_s, 1_200.0, 0.03), "{}", s.moving_s);
    assert_eq!(s.stops.len(), 1, "{:?}", s.stops);
    let stop = &s.stops[0];
    assert!(within(stop.duration_s, 900.0, 0.02), "{stop:?}");
    assert_eq!(s.trips.len(), 2, "{:?}", s.trips);
    assert!(
        within(s.trips[0].distance_m, 9_000.0, 0.03),
        "{:?}",
        s.trips[0]
    );
    assert!(
        within(s.trips[1].distance_m, 12_000.0, 0.03),
        "{:?}",
        s.trips[1]
    );
    assert_eq!(s.trips[0].start, T0);
    assert!(
        s.trips[0].end <= stop.start + 1000 && s.trips[1].start >= stop.end - 1000,
        "{s:#?}"
    );
    // The outliers are 2-5 km jumps in a second: the top speed stays the real one.
    let max = s.spd_max.unwrap();
    assert!((19.0..=21.0).contains(&max), "{max}");
    let min = s.spd_min.unwrap();
    assert!(min > 5.0, "{min}");
    let avg = s.spd_avg.unwrap();
    assert!((avg - s.distance_m / s.moving_s).abs() < 0.01);
    assert_eq!(s.breaks, 0);
    assert!(!s.truncated);
}

#[test]
fn parked_jitter_adds_no_distance() {
    let mut b = Builder::new();
    b.fix(20.0);
    b.park(3_600, 20.0);
    let s = b.stats(Rules::default());
    assert_eq!(s.distance_m, 0.0);
    assert_eq!(s.moving_s, 0.0);
    assert_eq!((s.spd_min, s.spd_avg, s.spd_max), (None, None, None));
    assert!(s.trips.is_empty());
    assert_eq!(s.stops.len(), 1);
    assert_eq!(s.stops[0].duration_s, 3_600.0);
    // Without the stop rule, the same jitter would have summed to kilometres.
    let rules = Rules {
        stop_radius_m: 5.0,
        ..Rules::default()
    };
    assert!(b.stats(rules).distance_m > 1_000.0);
}

#[test]
fn a_gap_is_not_driven_through() {
    let mut b = Builder::new();
    b.fix(2.0);
    b.drive(300, 0.0, 10.0, 1, 2.0); // 3 km
    // An hour of silence, then the device reappears 40 km east and drives on.
    b.at = Haversine.destination(b.at, 90.0, 40_000.0);
    b.ts += 3_600_000;
    b.fix(2.0);
    b.drive(300, 0.0, 10.0, 1, 2.0); // 3 km
    let s = b.stats(Rules::default());
    assert!(within(s.distance_m, 6_000.0, 0.03), "{}", s.distance_m);
    assert!(within(s.moving_s, 600.0, 0.03), "{}", s.moving_s);
    assert_eq!(s.breaks, 1);
    assert_eq!(s.trips.len(), 2);
    assert!(s.spd_max.unwrap() < 11.0);
}

#[test]
fn a_silent_parked_tracker_is_one_stop() {
    let mut b = Builder::new();
    b.fix(2.0);
    b.drive(120, 0.0, 10.0, 1, 2.0);
    // Two hours without a fix at the same place, then on again.
    b.ts += 7_200_000;
    b.fix(5.0);
    b.park(10, 5.0);
    b.drive(120, 180.0, 10.0, 1, 2.0);
    let s = b.stats(Rules::default());
    assert_eq!(s.breaks, 0);
    assert_eq!(s.stops.len(), 1);
    assert!(s.stops[0].duration_s > 7_200.0);
    assert_eq!(s.trips.len(), 2, "{s:#?}");
    assert!(within(s.distance_m, 2_400.0, 0.03), "{}", s.distance_m);
}

#[test]
fn a_sparse_tracker_still_counts_its_drive() {
    // One fix every 5 minutes (a battery-saving phone), driving at 15 m/s for an hour.
    let mut b = Builder::new();
    b.fix(5.0);
    b.drive(3_600, 45.0, 15.0, 300, 5.0);
    let s = b.stats(Rules::default());
    assert!(within(s.distance_m, 54_000.0, 0.01), "{}", s.distance_m);
    assert_eq!(s.moving_s, 3_600.0);
    assert_eq!(s.trips.len(), 1);
    assert!(within(s.spd_max.unwrap(), 15.0, 0.01));
}

#[test]
fn two_spikes_in_a_row_do_not_make_speed() {
    let mut b = Builder::new();
    b.fix(1.0);
    b.drive(200, 0.0, 10.0, 1, 1.0);
    b.spike(100, 3_000.0);
    b.spike(101, 3_005.0);
    let s = b.stats(Rules::default());
    assert!(s.spd_max.unwrap() < 11.0, "{:?}", s.spd_max);
    assert!(within(s.distance_m, 2_000.0, 0.03), "{}", s.distance_m);
}

#[test]
fn short_trips_are_counted_but_not_listed() {
    let mut b = Builder::new();
    b.fix(1.0);
    b.park(300, 3.0);
    b.drive(15, 0.0, 10.0, 1, 1.0); // 150 m
    b.park(300, 3.0);
    let s = b.stats(Rules::default());
    assert!(s.trips.is_empty(), "{:?}", s.trips);
    assert_eq!(s.stops.len(), 2);
    assert!(within(s.distance_m, 150.0, 0.1), "{}", s.distance_m);
    let rules = Rules {
        trip_min_m: 50.0,
        ..Rules::default()
    };
    assert_eq!(b.stats(rules).trips.len(), 1);
}

#[test]
fn out_of_order_and_repeated_fixes_are_ignored() {
    let mut stats = Stats::new(Rules::default());
    stats.push(&Fix::new(52.0, 13.0, T0));
    stats.push(&Fix::new(52.001, 13.0, T0 + 10_000));
    stats.push(&Fix::new(53.0, 13.0, T0 + 10_000));
    stats.push(&Fix::new(54.0, 13.0, T0 + 5_000));
    let s = stats.finish();
    assert_eq!(s.points, 4);
    assert!(within(s.distance_m, 111.2, 0.01), "{}", s.distance_m);
}

#[test]
fn empty_range() {
    let s = Stats::new(Rules::default()).finish();
    assert_eq!((s.points, s.distance_m, s.moving_s), (0, 0.0, 0.0));
    assert!(s.trips.is_empty() && s.stops.is_empty());
}

#[test]
fn rules_are_read_within_bounds() {
    let mut rules = Rules::default();
    assert_eq!(rules.set("stop_min_s", "300"), Ok(true));
    assert_eq!(rules.set("stop_radius_m", " 20.5 "), Ok(true));
    assert_eq!(rules.set("trip_min_m", "0"), Ok(true));
    assert_eq!(rules.set("gap_s", "86400"), Ok(true));
    assert_eq!(rules.set("max_acc_m", "30"), Ok(true));
    assert_eq!(rules.set("format", "x"), Ok(false));
    assert_eq!(
        (
            rules.stop_min_s,
            rules.stop_radius_m,
            rules.trip_min_m,
            rules.gap_s,
            rules.max_acc_m
        ),
        (300.0, 20.5, 0.0, 86_400.0, 30.0)
    );
    for (name, text) in [
        ("stop_min_s", "29"),
        ("stop_min_s", "86401"),
        ("stop_radius_m", "4.9"),
        ("stop_radius_m", "NaN"),
        ("stop_radius_m", "inf"),
        ("trip_min_m", "-1"),
        ("gap_s", ""),
        ("max_acc_m", "ten"),
    ] {
        let err = rules.set(name, text).unwrap_err();
        assert!(err.starts_with(name) && err.contains(" from "), "{err}");
    }
}

#[test]
fn rounding_leaves_no_float_noise() {
    assert_eq!(round_coord(13.400500000000001).to_string(), "13.4005");
    assert_eq!(round_coord(0.1 + 0.2).to_string(), "0.3");
    assert_eq!(round_coord(-33.123456789).to_string(), "-33.1234568");
    assert_eq!(round_to(1234.56789, 1).to_string(), "1234.6");
}
