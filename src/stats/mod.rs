//! Statistics of a device's history: distance, moving time, speeds, trips and stops.
//!
//! Pure computation, no I/O: fixes go in one at a time, oldest first, and a [`Summary`] comes
//! out, in one pass and in memory bounded by the listed trips and stops ([`MAX_LISTED`]), never
//! by the number of fixes. The route (`stats_route`) feeds it from the store.
//!
//! Two stages, each in its own file (the reasoning is in `docs/statistics.md`):
//! - `outliers.rs`: fixes with a bad accuracy or an impossible speed from both neighbours are
//!   dropped before anything is summed;
//! - `motion.rs`: the kept fixes become counted movement, stops (parked jitter adds nothing),
//!   breaks (a gap is not driven through at a made-up speed) and trips.
//!
//! Distances are great-circle distances (`geo`'s haversine, mean Earth radius). Speeds are m/s;
//! `spd_avg` is `distance_m / moving_s`.
//!
//! Files: `mod.rs` (this face: the rules, the answer types, [`Stats`]), `motion.rs`,
//! `outliers.rs` (neither imports the other).

mod motion;
mod outliers;

pub use self::motion::{MAX_LISTED, SPEED_WINDOW_S};

use geo::{Distance, Haversine, Point};
use serde::Serialize;

use crate::model::Fix;

/// One fix as the statistics see it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    lat: f64,
    lon: f64,
    /// Fix time, ms since the epoch.
    ts: i64,
    /// Accuracy radius, m.
    acc: Option<f64>,
}

/// Great-circle distance in metres.
fn distance_m(a: &Sample, b: &Sample) -> f64 {
    Haversine.distance(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat))
}

/// `x` to `decimals` places, as the shortest decimal that prints back: `13.4005`, never
/// `13.400500000000001`. Dividing the rounded integer by an exact power of ten gives the double
/// nearest the decimal, which is the one that prints shortest.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let rounded = (x * scale).round() / scale;
    if rounded.is_finite() { rounded } else { x }
}

/// A coordinate to 7 decimal places (about 1 cm), the precision fixes are kept at.
pub fn round_coord(x: f64) -> f64 {
    round_to(x, 7)
}

/// One tunable rule of the statistics: its query parameter, default and bounds.
#[derive(Debug, Clone, Copy)]
pub struct RuleSpec {
    /// Query parameter name.
    pub name: &'static str,
    /// Value when the query names none.
    pub default: f64,
    /// Smallest value accepted.
    pub min: f64,
    /// Largest value accepted.
    pub max: f64,
}

/// The tunable rules, in the order of [`Rules`]' fields. Defaults and bounds are explained in
/// `docs/statistics.md`.
pub const RULES: [RuleSpec; 5] = [
    RuleSpec {
        name: "stop_min_s",
        default: 180.0,
        min: 30.0,
        max: 86_400.0,
    },
    RuleSpec {
        name: "stop_radius_m",
        default: 50.0,
        min: 5.0,
        max: 1_000.0,
    },
    RuleSpec {
        name: "trip_min_m",
        default: 200.0,
        min: 0.0,
        max: 1_000_000.0,
    },
    RuleSpec {
        name: "gap_s",
        default: 900.0,
        min: 10.0,
        max: 86_400.0,
    },
    RuleSpec {
        name: "max_acc_m",
        default: 100.0,
        min: 5.0,
        max: 10_000.0,
    },
];

/// Fastest plausible ground speed, m/s (360 km/h: a high-speed train, not an aircraft). A fix
/// reached and left faster is dropped; a step faster is never counted.
pub const MAX_SPEED_MPS: f64 = 100.0;

/// The rules one computation follows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// A cluster of fixes within `stop_radius_m` lasting this long (s) is a stop.
    pub stop_min_s: f64,
    /// Radius (m) fixes must stay within, around their centre, to be one stop.
    pub stop_radius_m: f64,
    /// Shorter trips (m) are not listed (their distance still counts in the totals).
    pub trip_min_m: f64,
    /// A step longer than this (s) that leaves the stop radius is a break, not driven.
    pub gap_s: f64,
    /// Fixes with a worse accuracy radius (m) are dropped.
    pub max_acc_m: f64,
    /// See [`MAX_SPEED_MPS`].
    pub max_speed_mps: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            stop_min_s: RULES[0].default,
            stop_radius_m: RULES[1].default,
            trip_min_m: RULES[2].default,
            gap_s: RULES[3].default,
            max_acc_m: RULES[4].default,
            max_speed_mps: MAX_SPEED_MPS,
        }
    }
}

impl Rules {
    /// Sets the rule named `name` from its query text; the error names the rule and its bounds.
    /// Returns `Ok(false)` when `name` is no rule.
    pub fn set(&mut self, name: &str, text: &str) -> Result<bool, String> {
        let Some(index) = RULES.iter().position(|r| r.name == name) else {
            return Ok(false);
        };
        let spec = RULES[index];
        let value = match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && (spec.min..=spec.max).contains(&v) => v,
            _ => {
                return Err(format!(
                    "{} must be a number from {} to {}",
                    spec.name, spec.min, spec.max
                ));
            }
        };
        let field = match index {
            0 => &mut self.stop_min_s,
            1 => &mut self.stop_radius_m,
            2 => &mut self.trip_min_m,
            3 => &mut self.gap_s,
            _ => &mut self.max_acc_m,
        };
        *field = value;
        Ok(true)
    }
}

/// A place, rounded to 7 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatLon {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

impl LatLon {
    fn of(s: &Sample) -> Self {
        LatLon {
            lat: round_coord(s.lat),
            lon: round_coord(s.lon),
        }
    }
}

/// One trip: movement between two stops (or breaks, or the ends of the range).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trip {
    /// Fix time it left, ms.
    pub start: i64,
    /// Fix time it arrived, ms.
    pub end: i64,
    /// Counted distance, m.
    pub distance_m: f64,
    /// `end - start`, s (waits shorter than a stop included).
    pub duration_s: f64,
    /// Distance over moving time, m/s.
    pub spd_avg: Option<f64>,
    /// Fastest speed window, m/s.
    pub spd_max: Option<f64>,
    /// Where it left.
    pub from: LatLon,
    /// Where it arrived.
    pub to: LatLon,
}

/// One stop: fixes within the stop radius for at least the minimum stop time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stop {
    /// First fix time of the stop, ms.
    pub start: i64,
    /// Last fix time of the stop, ms.
    pub end: i64,
    /// Centre, latitude.
    pub lat: f64,
    /// Centre, longitude.
    pub lon: f64,
    /// `end - start`, s.
    pub duration_s: f64,
}

/// What the statistics of a range come to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Fixes read.
    pub points: u64,
    /// Fixes dropped as outliers (bad accuracy, impossible speed).
    pub outliers: u64,
    /// Counted distance, m.
    pub distance_m: f64,
    /// Counted moving time, s.
    pub moving_s: f64,
    /// Slowest speed window, m/s.
    pub spd_min: Option<f64>,
    /// `distance_m / moving_s`, m/s.
    pub spd_avg: Option<f64>,
    /// Fastest speed window, m/s.
    pub spd_max: Option<f64>,
    /// Steps not counted because they were too long or too fast to measure.
    pub breaks: u64,
    /// Trips at least `trip_min_m` long, oldest first.
    pub trips: Vec<Trip>,
    /// Stops, oldest first.
    pub stops: Vec<Stop>,
    /// Whether more than [`MAX_LISTED`] trips or stops were found (the lists hold the first).
    pub truncated: bool,
}

/// The streaming computation: [`Stats::push`] every fix, oldest first, then
/// [`Stats::finish`].
#[derive(Debug)]
pub struct Stats {
    points: u64,
    last_ts: Option<i64>,
    filter: outliers::OutlierFilter,
    motion: motion::Motion,
}

impl Stats {
    /// A computation under `rules`.
    pub fn new(rules: Rules) -> Self {
        Stats {
            points: 0,
            last_ts: None,
            filter: outliers::OutlierFilter::new(rules.max_acc_m, rules.max_speed_mps),
            motion: motion::Motion::new(rules),
        }
    }

    /// Takes the next fix. Fixes must come oldest first; one that does not (or repeats a fix
    /// time) is counted as read and otherwise ignored.
    pub fn push(&mut self, fix: &Fix) {
        self.points += 1;
        if self.last_ts.is_some_and(|last| fix.ts <= last) {
            return;
        }
        self.last_ts = Some(fix.ts);
        let sample = Sample {
            lat: fix.lat,
            lon: fix.lon,
            ts: fix.ts,
            acc: fix.acc,
        };
        let motion = &mut self.motion;
        self.filter.push(sample, &mut |kept| motion.push(kept));
    }

    /// The summary of everything pushed.
    pub fn finish(mut self) -> Summary {
        let motion = &mut self.motion;
        self.filter.finish(&mut |kept| motion.push(kept));
        self.motion.finish();
        let m = self.motion;
        let (spd_min, spd_max) = m.speed_range();
        let speed = |v: Option<f64>| v.map(|v| round_to(v, 2));
        Summary {
            points: self.points,
            outliers: self.filter.dropped,
            distance_m: round_to(m.distance_m, 1),
            moving_s: round_to(m.moving_s, 3),
            spd_min: speed(spd_min),
            spd_avg: speed((m.moving_s > 0.0).then(|| m.distance_m / m.moving_s)),
            spd_max: speed(spd_max),
            breaks: m.breaks,
            trips: m
                .trips
                .into_iter()
                .map(|t| Trip {
                    distance_m: round_to(t.distance_m, 1),
                    duration_s: round_to(t.duration_s, 3),
                    spd_avg: speed(t.spd_avg),
                    spd_max: speed(t.spd_max),
                    ..t
                })
                .collect(),
            stops: m
                .stops
                .into_iter()
                .map(|s| Stop {
                    duration_s: round_to(s.duration_s, 3),
                    ..s
                })
                .collect(),
            truncated: m.truncated,
        }
    }
}

#[cfg(test)]
mod tests;
