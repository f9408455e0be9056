//! Proximity: which pairs of a group's devices are near one another. Pure: no I/O, no clock.
//!
//! Each device's latest judged fix sits in an R-tree ([`rstar`]) keyed by `[lon, lat]`. A fix
//! looks up the devices inside a box of `exit_m` around it (at most [`MAX_CANDIDATES`] of
//! them, so one fix in a dense crowd costs a bounded amount of work), measures each by
//! haversine, and compares with the pairs already near: closer than `enter_m` and not near is
//! one `proximity.enter`; a near peer farther than `exit_m` is one `proximity.exit`. A pair is
//! one entry whichever device moved, so each transition is one event, not one per direction.
//! Moving a device in the tree is a removal and an insertion, `O(log n)`.

use std::collections::{HashMap, HashSet};

use geo::{Distance, Haversine, Point};
use rstar::primitives::GeomWithData;
use rstar::{AABB, RTree};
use serde::{Deserialize, Serialize};

use crate::model::DeviceId;

/// Largest `enter_m` / `exit_m`, metres.
pub(crate) const MAX_PROXIMITY_M: f64 = 100_000.0;

/// Most devices one fix is compared with (the tree's hits inside the `exit_m` box): the bound
/// on one fix's work in a crowd. Past it, further neighbours wait for their own fixes.
pub(crate) const MAX_CANDIDATES: usize = 256;

/// Most peers one device is near at once; further enters wait until some pair separates.
pub(crate) const MAX_NEAR_PER_DEVICE: usize = 256;

/// A group's rule: `PUT /v1/groups/{group}/proximity`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProximityRule {
    /// Closer than this: near.
    pub(crate) enter_m: f64,
    /// Farther than this: no longer near.
    pub(crate) exit_m: f64,
}

impl ProximityRule {
    /// Checks the rule; the message names the problem.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, v) in [("enter_m", self.enter_m), ("exit_m", self.exit_m)] {
            if !v.is_finite() || !(1.0..=MAX_PROXIMITY_M).contains(&v) {
                return Err(format!("{name} must be from 1 to {MAX_PROXIMITY_M} metres"));
            }
        }
        if self.exit_m < self.enter_m {
            return Err("exit_m must be at least enter_m".into());
        }
        Ok(())
    }
}

type Entry = GeomWithData<[f64; 2], DeviceId>;

/// A pair became near or separated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Transition {
    /// `true`: `proximity.enter`; `false`: `proximity.exit`.
    pub(crate) enter: bool,
    pub(crate) peer: DeviceId,
    /// Haversine distance between the two latest fixes, metres.
    pub(crate) distance_m: f64,
}

/// A group's proximity state.
#[derive(Debug)]
pub(crate) struct Proximity {
    pub(crate) rule: ProximityRule,
    tree: RTree<Entry>,
    /// Each device's place in the tree, `[lon, lat]`.
    at: HashMap<DeviceId, [f64; 2]>,
    /// Pairs near one another, both ways.
    near: HashMap<DeviceId, HashSet<DeviceId>>,
}

impl Proximity {
    /// No device placed, no pair near.
    pub(crate) fn new(rule: ProximityRule) -> Self {
        Proximity {
            rule,
            tree: RTree::new(),
            at: HashMap::new(),
            near: HashMap::new(),
        }
    }

    /// Marks `a` and `b` near (state loaded from disk).
    pub(crate) fn restore_pair(&mut self, a: DeviceId, b: DeviceId) {
        self.near.entry(a.clone()).or_default().insert(b.clone());
        self.near.entry(b).or_default().insert(a);
    }

    /// Every pair near one another, each once (smaller id first).
    #[cfg(test)]
    pub(crate) fn pairs(&self) -> Vec<(DeviceId, DeviceId)> {
        let mut pairs: Vec<_> = self
            .near
            .iter()
            .flat_map(|(a, peers)| {
                peers
                    .iter()
                    .filter(move |b| a < *b)
                    .map(move |b| (a.clone(), b.clone()))
            })
            .collect();
        pairs.sort();
        pairs
    }

    /// Whether `a` and `b` are near.
    pub(crate) fn is_near(&self, a: &DeviceId, b: &DeviceId) -> bool {
        self.near.get(a).is_some_and(|s| s.contains(b))
    }

    /// Forgets that `a` and `b` are near.
    pub(crate) fn unpair(&mut self, a: &DeviceId, b: &DeviceId) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(set) = self.near.get_mut(x) {
                set.remove(y);
                if set.is_empty() {
                    self.near.remove(x);
                }
            }
        }
    }

    /// Moves `device` to `(lat, lon)` without judging (another instance judged that fix).
    pub(crate) fn place(&mut self, device: &DeviceId, lat: f64, lon: f64) {
        let here = [lon, lat];
        if let Some(old) = self.at.insert(device.clone(), here) {
            self.tree.remove(&Entry::new(old, device.clone()));
        }
        self.tree.insert(Entry::new(here, device.clone()));
    }

    /// Moves `device` to `(lat, lon)` and returns the transitions this causes.
    pub(crate) fn judge(&mut self, device: &DeviceId, lat: f64, lon: f64) -> Vec<Transition> {
        self.place(device, lat, lon);

        let point = Point::new(lon, lat);
        let mut out = Vec::new();
        // Near peers first: each is measured directly, wherever it is now.
        let peers: Vec<DeviceId> = self
            .near
            .get(device)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for peer in peers {
            let Some(&[plon, plat]) = self.at.get(&peer) else {
                // Its place is unknown (restored after a restart): judged on its next fix.
                continue;
            };
            let d = Haversine.distance(point, Point::new(plon, plat));
            if d > self.rule.exit_m {
                self.unpair(device, &peer);
                out.push(Transition {
                    enter: false,
                    peer,
                    distance_m: d,
                });
            }
        }
        // Then the neighbours inside the exit box (which holds the enter circle).
        let dlat = self.rule.exit_m / 111_000.0;
        let dlon = dlat / lat.to_radians().cos().max(0.01);
        let envelope = AABB::from_corners([lon - dlon, lat - dlat], [lon + dlon, lat + dlat]);
        let mut entered = Vec::new();
        for entry in self.tree.locate_in_envelope(&envelope).take(MAX_CANDIDATES) {
            let peer = &entry.data;
            if peer == device || self.near.get(device).is_some_and(|s| s.contains(peer)) {
                continue;
            }
            let [plon, plat] = *entry.geom();
            let d = Haversine.distance(point, Point::new(plon, plat));
            if d < self.rule.enter_m {
                entered.push((peer.clone(), d));
            }
        }
        for (peer, d) in entered {
            let full =
                |x: &DeviceId| self.near.get(x).map_or(0, HashSet::len) >= MAX_NEAR_PER_DEVICE;
            if full(device) || full(&peer) {
                continue;
            }
            self.restore_pair(device.clone(), peer.clone());
            out.push(Transition {
                enter: true,
                peer,
                distance_m: d,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    /// Degrees of latitude for `m` metres.
    fn north(m: f64) -> f64 {
        m / 111_195.0
    }

    #[test]
    fn one_event_per_pair_and_transition_with_hysteresis() {
        let mut p = Proximity::new(ProximityRule {
            enter_m: 50.0,
            exit_m: 100.0,
        });
        assert!(p.judge(&id("a"), 10.0, 10.0).is_empty());
        assert!(p.judge(&id("b"), 10.0 + north(500.0), 10.0).is_empty());
        let t = p.judge(&id("b"), 10.0 + north(40.0), 10.0);
        assert_eq!(t.len(), 1);
        assert!(t[0].enter && t[0].peer == id("a"));
        assert!((t[0].distance_m - 40.0).abs() < 0.5);
        // The other device moving closer is no second enter.
        assert!(p.judge(&id("a"), 10.0 + north(10.0), 10.0).is_empty());
        // Between enter_m and exit_m: still near.
        assert!(p.judge(&id("b"), 10.0 + north(90.0), 10.0).is_empty());
        let t = p.judge(&id("a"), 10.0 - north(20.0), 10.0);
        assert_eq!(t.len(), 1);
        assert!(!t[0].enter && t[0].peer == id("b"));
        assert!(p.judge(&id("b"), 10.0 + north(200.0), 10.0).is_empty());
        assert!(p.pairs().is_empty());
    }

    #[test]
    fn rules_are_checked() {
        let rule = |enter_m, exit_m| ProximityRule { enter_m, exit_m }.check();
        assert!(rule(50.0, 100.0).is_ok());
        assert!(rule(50.0, 50.0).is_ok());
        assert!(rule(100.0, 50.0).unwrap_err().contains("exit_m"));
        assert!(rule(0.0, 50.0).unwrap_err().contains("enter_m"));
        assert!(rule(50.0, f64::INFINITY).is_err());
    }
}
