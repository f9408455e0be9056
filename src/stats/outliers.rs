//! The first stage: fixes that cannot be trusted are dropped before anything is summed.
//!
//! Two rules, both streaming (the filter holds at most three fixes):
//! - **Accuracy.** A fix whose reported accuracy radius is worse than `max_acc_m` is dropped
//!   (a fix without an accuracy is kept: many trackers never send one).
//! - **Impossible speed from both neighbours.** A fix that could only be reached, and only be
//!   left, faster than `max_speed_mps` is a spike (a multipath jump, a cell-tower fix): dropped.
//!   The neighbours are the last kept fix and the next fix. The very first fix, which has no
//!   earlier neighbour, is dropped when it is impossibly far from both of the next two while
//!   those two agree; the very last, when it is impossibly far from the one before.
//!
//! What this cannot tell apart (two spikes in a row that agree with each other) is caught by
//! the next stage, which never counts a segment driven at an impossible speed.

use super::{Sample, distance_m};

/// The streaming outlier filter. See the module doc.
#[derive(Debug)]
pub(super) struct OutlierFilter {
    max_acc_m: f64,
    max_speed_mps: f64,
    /// Up to three fixes: when `started`, the first is the last one kept (already passed on).
    window: Vec<Sample>,
    /// Whether the first fix was judged (and the window's first entry was passed on).
    started: bool,
    /// Fixes dropped so far.
    pub(super) dropped: u64,
}

impl OutlierFilter {
    pub(super) fn new(max_acc_m: f64, max_speed_mps: f64) -> Self {
        OutlierFilter {
            max_acc_m,
            max_speed_mps,
            window: Vec::with_capacity(3),
            started: false,
            dropped: 0,
        }
    }

    /// Whether going from `a` to `b` needs more than the speed limit.
    fn impossible(&self, a: &Sample, b: &Sample) -> bool {
        let metres = distance_m(a, b);
        let secs = (b.ts - a.ts) as f64 / 1000.0;
        if secs <= 0.0 {
            // Same instant (or out of order): only a real displacement is impossible.
            return metres > 1.0;
        }
        metres / secs > self.max_speed_mps
    }

    /// Takes the next fix (fix times increasing); passes on every fix judged good.
    pub(super) fn push(&mut self, sample: Sample, keep: &mut impl FnMut(Sample)) {
        if sample.acc.is_some_and(|acc| acc > self.max_acc_m) {
            self.dropped += 1;
            return;
        }
        self.window.push(sample);
        if self.window.len() < 3 {
            return;
        }
        let (a, b, c) = (self.window[0], self.window[1], self.window[2]);
        if !self.started {
            if self.impossible(&a, &b) && self.impossible(&a, &c) && !self.impossible(&b, &c) {
                self.dropped += 1;
                self.window.remove(0);
                return;
            }
            self.started = true;
            keep(a);
        }
        if self.impossible(&a, &b) && self.impossible(&b, &c) {
            self.dropped += 1;
            self.window.remove(1);
        } else {
            keep(b);
            self.window.remove(0);
        }
    }

    /// The end of the data: judges what is still held.
    pub(super) fn finish(&mut self, keep: &mut impl FnMut(Sample)) {
        match (self.started, self.window.as_slice()) {
            (false, [a]) => keep(*a),
            (false, [a, b]) => {
                // Two fixes and nothing to tell which is wrong: both go on; the next stage does
                // not count an impossible segment.
                keep(*a);
                keep(*b);
            }
            (true, [a, b]) => {
                if self.impossible(a, b) {
                    self.dropped += 1;
                } else {
                    keep(*b);
                }
            }
            _ => {}
        }
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fix `north_m` metres north of 52°N 13°E at second `s`.
    fn at(s: i64, north_m: f64) -> Sample {
        Sample {
            lat: 52.0 + north_m / 111_195.0,
            lon: 13.0,
            ts: s * 1000,
            acc: None,
        }
    }

    fn run(samples: &[Sample]) -> (Vec<i64>, u64) {
        let mut filter = OutlierFilter::new(100.0, 100.0);
        let mut kept = Vec::new();
        for s in samples {
            filter.push(*s, &mut |k| kept.push(k.ts / 1000));
        }
        filter.finish(&mut |k| kept.push(k.ts / 1000));
        (kept, filter.dropped)
    }

    #[test]
    fn keeps_a_plausible_drive() {
        let drive: Vec<Sample> = (0..10).map(|s| at(s, s as f64 * 20.0)).collect();
        assert_eq!(run(&drive), ((0..10).collect(), 0));
    }

    #[test]
    fn drops_spikes_inside_at_the_start_and_at_the_end() {
        let mut track: Vec<Sample> = (0..10).map(|s| at(s, s as f64 * 10.0)).collect();
        track[0] = at(0, 5_000.0);
        track[4] = at(4, -3_000.0);
        track[9] = at(9, 9_000.0);
        let (kept, dropped) = run(&track);
        assert_eq!(kept, vec![1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn drops_bad_accuracy_but_keeps_unknown_accuracy() {
        let mut track: Vec<Sample> = (0..4).map(|s| at(s, 0.0)).collect();
        track[1].acc = Some(500.0);
        track[2].acc = Some(20.0);
        assert_eq!(run(&track), (vec![0, 2, 3], 1));
    }

    #[test]
    fn a_long_gap_is_not_a_spike() {
        // 50 km in an hour is 14 m/s: possible.
        let track = [
            at(0, 0.0),
            at(1, 5.0),
            at(3601, 50_000.0),
            at(3602, 50_010.0),
        ];
        assert_eq!(run(&track), (vec![0, 1, 3601, 3602], 0));
    }

    #[test]
    fn short_inputs() {
        assert_eq!(run(&[]), (vec![], 0));
        assert_eq!(run(&[at(0, 0.0)]), (vec![0], 0));
        assert_eq!(run(&[at(0, 0.0), at(1, 10_000.0)]), (vec![0, 1], 0));
    }
}
