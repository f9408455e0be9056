//! The second stage: kept fixes become distance, moving time, speeds, stops and trips.
//!
//! Fixes are grouped into **clusters**: consecutive fixes within `stop_radius_m` of the
//! cluster's centre (the running mean of its fixes). While a cluster grows, the distance and
//! time between its fixes are held aside. When a fix lands outside, the cluster closes:
//! - it lasted `stop_min_s` or longer: a **stop**. What was held aside is dropped, so a parked
//!   phone's jitter adds no distance and no moving time, and the trip before it ends there;
//! - it was shorter (a red light, a slow bend, or simply a few fixes of driving, since at speed
//!   every cluster is short): what was held aside counts.
//!
//! The step from the last fix of a cluster to the fix outside always counts: it is movement.
//! Around a stop, distance is measured from and to the stop's centre (the way into the radius
//! and out of it counts as the straight line to the centre), so a trip is the path between the
//! centres of the stops it joins; the way in and out adds distance but no moving time (that time
//! is part of the stop) and no speed, at most about `stop_radius_m` each way per stop.
//!
//! A **break** is a step that cannot be measured honestly: longer than `gap_s` while leaving the
//! cluster (the device went somewhere while it sent nothing), or faster than the speed limit
//! (two spikes in a row that the outlier filter could not judge). A break adds no distance, no
//! moving time and no speed; the trip before it ends at its first fix, a new one can start at
//! its second. A long silence *inside* the radius is no break: a parked tracker that stops
//! sending is still parked, and the silence is part of the stop.
//!
//! Speeds are measured over windows of at least [`SPEED_WINDOW_S`] of counted movement, not
//! per fix: over one second, a few metres of position noise are a few m/s of made-up speed.
//! `spd_min` and `spd_max` are the slowest and fastest of these windows.

use super::{Rules, Sample, Stop, Trip, distance_m, round_coord};

/// Shortest stretch of counted movement one speed is measured over, in seconds.
pub const SPEED_WINDOW_S: f64 = 5.0;

/// Most trips and most stops listed in one answer; past it, `truncated` is set (totals still
/// count everything). A day has at most 1,440 one-minute stops.
pub const MAX_LISTED: usize = 2_000;

/// Consecutive fixes within the stop radius of their running centre.
#[derive(Debug, Clone, Copy)]
struct Cluster {
    first: Sample,
    last: Sample,
    /// Sums of the fixes' offsets from `first`, in degrees (longitude wrapped), for the centre.
    sum_dlat: f64,
    sum_dlon: f64,
    count: u32,
    /// Distance (m) and time (s) between the cluster's fixes, held until it closes.
    held_m: f64,
    held_s: f64,
}

fn wrap_lon(delta: f64) -> f64 {
    if delta > 180.0 {
        delta - 360.0
    } else if delta < -180.0 {
        delta + 360.0
    } else {
        delta
    }
}

impl Cluster {
    fn new(at: Sample) -> Self {
        Cluster {
            first: at,
            last: at,
            sum_dlat: 0.0,
            sum_dlon: 0.0,
            count: 1,
            held_m: 0.0,
            held_s: 0.0,
        }
    }

    fn centre(&self) -> (f64, f64) {
        let n = f64::from(self.count);
        let lon = self.first.lon + self.sum_dlon / n;
        let lon = if lon > 180.0 {
            lon - 360.0
        } else if lon < -180.0 {
            lon + 360.0
        } else {
            lon
        };
        (self.first.lat + self.sum_dlat / n, lon)
    }

    fn distance_from_centre(&self, to: &Sample) -> f64 {
        let (lat, lon) = self.centre();
        distance_m(
            &Sample {
                lat,
                lon,
                ts: 0,
                acc: None,
            },
            to,
        )
    }

    fn add(&mut self, at: Sample, metres: f64, secs: f64) {
        self.sum_dlat += at.lat - self.first.lat;
        self.sum_dlon += wrap_lon(at.lon - self.first.lon);
        self.count = self.count.saturating_add(1);
        self.held_m += metres;
        self.held_s += secs;
        self.last = at;
    }

    fn duration_s(&self) -> f64 {
        (self.last.ts - self.first.ts) as f64 / 1000.0
    }
}

/// Speeds measured over windows of counted movement.
#[derive(Debug, Default, Clone, Copy)]
struct SpeedWindows {
    open_m: f64,
    open_s: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl SpeedWindows {
    fn sample(&mut self, speed: f64) {
        self.min = Some(self.min.map_or(speed, |m| m.min(speed)));
        self.max = Some(self.max.map_or(speed, |m| m.max(speed)));
    }

    fn add(&mut self, metres: f64, secs: f64) {
        self.open_m += metres;
        self.open_s += secs;
        if self.open_s >= SPEED_WINDOW_S {
            self.sample(self.open_m / self.open_s);
            self.open_m = 0.0;
            self.open_s = 0.0;
        }
    }

    /// Movement ended: a short remainder is measured only when nothing else was.
    fn close(&mut self) {
        if self.open_s > 0.0 && self.max.is_none() {
            self.sample(self.open_m / self.open_s);
        }
        self.open_m = 0.0;
        self.open_s = 0.0;
    }
}

/// A trip being driven.
#[derive(Debug, Clone, Copy)]
struct OpenTrip {
    start: Sample,
    distance_m: f64,
    moving_s: f64,
    speeds: SpeedWindows,
}

/// The second stage. See the module doc.
#[derive(Debug)]
pub(super) struct Motion {
    rules: Rules,
    cluster: Option<Cluster>,
    trip: Option<OpenTrip>,
    /// Speeds over the whole range.
    speeds: SpeedWindows,
    pub(super) distance_m: f64,
    pub(super) moving_s: f64,
    pub(super) breaks: u64,
    pub(super) trips: Vec<Trip>,
    pub(super) stops: Vec<Stop>,
    pub(super) truncated: bool,
}

impl Motion {
    pub(super) fn new(rules: Rules) -> Self {
        Motion {
            rules,
            cluster: None,
            trip: None,
            speeds: SpeedWindows::default(),
            distance_m: 0.0,
            moving_s: 0.0,
            breaks: 0,
            trips: Vec::new(),
            stops: Vec::new(),
            truncated: false,
        }
    }

    /// The slowest and fastest speed windows, m/s.
    pub(super) fn speed_range(&self) -> (Option<f64>, Option<f64>) {
        (self.speeds.min, self.speeds.max)
    }

    /// Takes the next kept fix (fix times increasing).
    pub(super) fn push(&mut self, at: Sample) {
        let Some(mut cluster) = self.cluster else {
            self.cluster = Some(Cluster::new(at));
            return;
        };
        let prev = cluster.last;
        let secs = (at.ts - prev.ts) as f64 / 1000.0;
        if secs <= 0.0 {
            // A repeated fix time: nothing to measure.
            return;
        }
        let metres = distance_m(&prev, &at);
        let inside = cluster.distance_from_centre(&at) <= self.rules.stop_radius_m;
        let too_fast = metres / secs > self.rules.max_speed_mps;
        if inside && !too_fast {
            cluster.add(at, metres, secs);
            self.cluster = Some(cluster);
            return;
        }
        let stop_centre = self.close_cluster(&cluster);
        if too_fast || secs > self.rules.gap_s {
            self.breaks += 1;
            self.end_trip(prev);
        } else if let Some(centre) = stop_centre {
            // Leaving a stop: measured from its centre, so the way out of the radius counts.
            // Its time is in the stop, so only the last step is timed (and makes speed).
            self.count(metres, secs, centre);
            self.add_untimed((distance_m(&centre, &at) - metres).max(0.0));
        } else {
            self.count(metres, secs, prev);
        }
        self.cluster = Some(Cluster::new(at));
    }

    /// The end of the data.
    pub(super) fn finish(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            self.close_cluster(&cluster);
            if self.trip.is_some() {
                self.end_trip(cluster.last);
            }
        }
        self.speeds.close();
    }

    /// Counted movement from `from` on.
    fn count(&mut self, metres: f64, secs: f64, from: Sample) {
        self.distance_m += metres;
        self.moving_s += secs;
        self.speeds.add(metres, secs);
        let trip = self.trip.get_or_insert(OpenTrip {
            start: from,
            distance_m: 0.0,
            moving_s: 0.0,
            speeds: SpeedWindows::default(),
        });
        trip.distance_m += metres;
        trip.moving_s += secs;
        trip.speeds.add(metres, secs);
    }

    /// Distance into or out of a stop, whose time is part of the stop: it adds to the open trip
    /// (if any) and the total, never to moving time or speed.
    fn add_untimed(&mut self, metres: f64) {
        if let Some(trip) = &mut self.trip {
            trip.distance_m += metres;
            self.distance_m += metres;
        }
    }

    /// Closes `cluster`: a stop (its centre is returned) or counted movement.
    fn close_cluster(&mut self, cluster: &Cluster) -> Option<Sample> {
        if cluster.duration_s() >= self.rules.stop_min_s {
            let (lat, lon) = cluster.centre();
            let centre = Sample {
                lat,
                lon,
                ts: cluster.first.ts,
                acc: None,
            };
            // Arriving: the way in to the centre counts (its time is in the stop).
            self.add_untimed(distance_m(&cluster.first, &centre));
            self.end_trip(centre);
            self.list_stop(Stop {
                start: cluster.first.ts,
                end: cluster.last.ts,
                lat: round_coord(lat),
                lon: round_coord(lon),
                duration_s: cluster.duration_s(),
            });
            return Some(Sample {
                ts: cluster.last.ts,
                ..centre
            });
        }
        if cluster.held_s > 0.0 {
            self.count(cluster.held_m, cluster.held_s, cluster.first);
        }
        None
    }

    fn list_stop(&mut self, stop: Stop) {
        if self.stops.len() < MAX_LISTED {
            self.stops.push(stop);
        } else {
            self.truncated = true;
        }
    }

    /// The open trip, if any, ends at `at`; it is listed when long enough.
    fn end_trip(&mut self, at: Sample) {
        self.speeds.close();
        let Some(mut trip) = self.trip.take() else {
            return;
        };
        if trip.distance_m < self.rules.trip_min_m {
            return;
        }
        if self.trips.len() >= MAX_LISTED {
            self.truncated = true;
            return;
        }
        trip.speeds.close();
        self.trips.push(Trip {
            start: trip.start.ts,
            end: at.ts,
            distance_m: trip.distance_m,
            duration_s: (at.ts - trip.start.ts) as f64 / 1000.0,
            spd_avg: (trip.moving_s > 0.0).then(|| trip.distance_m / trip.moving_s),
            spd_max: trip.speeds.max,
            from: super::LatLon::of(&trip.start),
            to: super::LatLon::of(&at),
        });
    }
}
