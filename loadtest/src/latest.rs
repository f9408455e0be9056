//! The latest-state check: does every subscriber end up holding every device's latest fix?
//!
//! Position is state, not an event log: a subscriber may miss intermediate fixes, but once
//! devices stop sending and a few ticks pass, it must hold each device's last one. Fix times
//! identify fixes (a device never stamps two fixes with the same `ts`), and are stored as
//! `u32` milliseconds after the run's base time, `0` meaning "nothing yet".
//!
//! Device `d` is in group `d % groups` at slot `d / groups`; a subscriber of a group keeps one
//! `u32` per slot, so a view costs 4 bytes per device of its group.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// Marks a device left out of the check (its connection dropped before sending stopped).
pub(crate) const EXCLUDED: u32 = u32::MAX;

/// How devices are dealt over groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of devices.
    pub(crate) devices: u32,
    /// Number of groups.
    pub(crate) groups: u32,
}

impl Layout {
    /// Group of device `d`.
    pub(crate) fn group_of(&self, d: u32) -> u32 {
        d % self.groups
    }

    /// Position of device `d` inside its group.
    pub(crate) fn slot_of(&self, d: u32) -> u32 {
        d / self.groups
    }

    /// Number of devices in group `g`.
    pub(crate) fn group_len(&self, g: u32) -> u32 {
        if g >= self.groups || g >= self.devices {
            return 0;
        }
        (self.devices - g).div_ceil(self.groups)
    }

    /// Device at `slot` of group `g`.
    pub(crate) fn device_at(&self, g: u32, slot: u32) -> u32 {
        slot * self.groups + g
    }
}

/// What one subscriber holds for the devices of its group.
#[derive(Debug)]
pub struct View {
    /// The group watched.
    pub(crate) group: u32,
    /// Latest fix time offset held per slot (0 = none).
    slots: Mutex<Vec<u32>>,
    /// Cleared when the connection ends; closed subscribers are not checked.
    open: AtomicBool,
}

impl View {
    /// An empty view of group `group`.
    pub fn new(layout: &Layout, group: u32) -> View {
        View {
            group,
            slots: Mutex::new(vec![0; layout.group_len(group) as usize]),
            open: AtomicBool::new(true),
        }
    }

    /// Applies received records `(slot, ts offset)` as a plain client would (the last one
    /// received wins) and tells, per record, how it compares with what was held:
    /// `Greater` a newer fix, `Equal` the same fix again, `Less` an older one.
    pub(crate) fn apply(&self, records: &[(u32, u32)], compared: &mut Vec<std::cmp::Ordering>) {
        compared.clear();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for &(slot, ts) in records {
            match slots.get_mut(slot as usize) {
                Some(held) => {
                    compared.push(ts.cmp(held));
                    *held = ts;
                }
                None => compared.push(std::cmp::Ordering::Greater),
            }
        }
    }

    /// Marks the subscriber's connection as ended.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Relaxed);
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
}

/// Outcome of a latest-state check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Open subscribers checked.
    pub subscribers: u64,
    /// (subscriber, device) pairs checked.
    pub pairs: u64,
    /// Pairs where the subscriber held no fix at all of a device that sent one.
    pub missing: u64,
    /// Pairs where the subscriber held an older fix than the device's last.
    pub stale: u64,
    /// Pairs where the subscriber held a fix newer than the device's last (should not happen).
    pub ahead: u64,
}

impl CheckResult {
    /// Pairs that do not match.
    pub(crate) fn mismatches(&self) -> u64 {
        self.missing + self.stale + self.ahead
    }

    /// Adds another worker's result.
    pub(crate) fn merge(&mut self, o: &CheckResult) {
        self.subscribers += o.subscribers;
        self.pairs += o.pairs;
        self.missing += o.missing;
        self.stale += o.stale;
        self.ahead += o.ahead;
    }
}

/// Compares every open view against the devices' last sent fix times (`expected[d]`;
/// `0` = never sent, [`EXCLUDED`] = dropped, both skipped).
pub(crate) fn check(
    layout: &Layout,
    views: &[std::sync::Arc<View>],
    expected: &[u32],
) -> CheckResult {
    let mut r = CheckResult::default();
    for view in views.iter().filter(|v| v.is_open()) {
        r.subscribers += 1;
        let slots = view.slots.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, &held) in slots.iter().enumerate() {
            let d = layout.device_at(view.group, slot as u32) as usize;
            let want = expected.get(d).copied().unwrap_or(0);
            if want == 0 || want == EXCLUDED {
                continue;
            }
            r.pairs += 1;
            if held == 0 {
                r.missing += 1;
            } else if held < want {
                r.stale += 1;
            } else if held > want {
                r.ahead += 1;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn layout_deals_devices_round_robin() {
        let l = Layout {
            devices: 10,
            groups: 3,
        };
        assert_eq!(
            (
                l.group_len(0),
                l.group_len(1),
                l.group_len(2),
                l.group_len(3)
            ),
            (4, 3, 3, 0)
        );
        for d in 0..10 {
            assert_eq!(l.device_at(l.group_of(d), l.slot_of(d)), d);
            assert!(l.slot_of(d) < l.group_len(l.group_of(d)));
        }
        let few = Layout {
            devices: 2,
            groups: 5,
        };
        assert_eq!((few.group_len(1), few.group_len(2)), (1, 0));
    }

    #[test]
    fn check_counts_missing_stale_and_ahead() {
        let l = Layout {
            devices: 4,
            groups: 1,
        };
        let a = Arc::new(View::new(&l, 0));
        let b = Arc::new(View::new(&l, 0));
        let closed = Arc::new(View::new(&l, 0));
        closed.close();
        // Devices 0..4 last sent 10, 20, never, dropped.
        let expected = [10, 20, 0, EXCLUDED];
        let mut cmp = Vec::new();
        a.apply(&[(0, 10), (1, 20), (3, 5)], &mut cmp);
        b.apply(&[(0, 12), (1, 19)], &mut cmp);
        let r = check(&l, &[a.clone(), b, closed], &expected);
        assert_eq!(
            r,
            CheckResult {
                subscribers: 2,
                pairs: 4,
                missing: 0,
                stale: 1,
                ahead: 1
            }
        );
        assert_eq!(r.mismatches(), 2);
        let empty = Arc::new(View::new(&l, 0));
        let r = check(&l, &[empty], &expected);
        assert_eq!((r.pairs, r.missing), (2, 2));
    }

    #[test]
    fn records_compare_with_what_was_held() {
        use std::cmp::Ordering::*;
        let l = Layout {
            devices: 1,
            groups: 1,
        };
        let v = View::new(&l, 0);
        let mut cmp = Vec::new();
        v.apply(&[(0, 10), (0, 10), (0, 9), (0, 11), (7, 1)], &mut cmp);
        assert_eq!(cmp, vec![Greater, Equal, Less, Greater, Greater]);
    }
}
