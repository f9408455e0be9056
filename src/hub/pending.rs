//! The changes of one group waiting for its next batch, and the batch they become.
//!
//! A change is recorded once, with where it comes from ([`Origin`]): every change goes into
//! the next batch, and the local ones are also what observers hear. Both flushes take from the
//! same [`Pending`]: the tick takes everything ([`Pending::take`]), the fan-out of remote
//! changes takes what other instances made and leaves the local changes for the tick
//! ([`Pending::take_remote`]). Either way the taken changes become a [`Batch`] through
//! [`Changes::resolve`].

use std::collections::{HashMap, HashSet};

use crate::model::{DeviceId, Position};

/// Where a change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// This instance: a fix received here, a socket opened or closed here. Observers hear it.
    Local,
    /// Another instance, a load at start, or the sweeper: fanned out, never reported.
    Remote,
}

/// Devices that changed and devices that went offline.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Devices whose position (or presence) changed.
    pub(super) changed: HashSet<DeviceId>,
    /// Devices that went offline, in order (a device may be listed twice if it came back and
    /// went again).
    pub(super) offline: Vec<DeviceId>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.offline.is_empty()
    }

    /// The batch these changes make, from the group's current `positions`: the latest position
    /// of every changed device, and the devices that went offline and still are.
    pub(super) fn resolve(self, positions: &HashMap<DeviceId, Position>) -> Batch {
        Batch::new(&self.changed, self.offline, positions)
    }
}

/// The changes of one group since its last batch.
///
/// Two [`Changes`], taken whole with `std::mem::take` on the tick: `all` is what subscribers
/// get, and `local`, always a part of `all`, what observers hear.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Every change since the last batch.
    all: Changes,
    /// The part of `all` that happened on this instance.
    local: Changes,
}

impl Pending {
    /// Whether nothing changed since the last batch.
    pub(super) fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Records that `device` changed.
    pub(super) fn changed(&mut self, device: &DeviceId, origin: Origin) {
        self.all.changed.insert(device.clone());
        if origin == Origin::Local {
            self.local.changed.insert(device.clone());
        }
    }

    /// Records that `device` went offline.
    pub(super) fn went_offline(&mut self, device: &DeviceId, origin: Origin) {
        self.all.offline.push(device.clone());
        if origin == Origin::Local {
            self.local.offline.push(device.clone());
        }
    }

    /// Takes every change: `(all, local)`.
    pub(super) fn take(&mut self) -> (Changes, Changes) {
        let Pending { all, local } = std::mem::take(self);
        (all, local)
    }

    /// Takes the changes other instances made, leaving this instance's own for the tick. A
    /// device that went offline here stays pending whatever else said so.
    pub(super) fn take_remote(&mut self) -> (Vec<DeviceId>, Vec<DeviceId>) {
        let Pending { all, local } = self;
        let changed = all
            .changed
            .extract_if(|d| !local.changed.contains(d))
            .collect();
        let offline = all
            .offline
            .extract_if(.., |d| !local.offline.contains(d))
            .collect();
        (changed, offline)
    }
}

/// One batch of a group, owned, built under the group's lock and encoded outside it.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The latest position of every changed device.
    pub(super) updates: Vec<Position>,
    /// Devices that went offline and still are.
    pub(super) offline: Vec<DeviceId>,
}

impl Batch {
    /// The batch of `changed` and `offline` devices, from the group's current `positions`.
    pub(super) fn new<'a>(
        changed: impl IntoIterator<Item = &'a DeviceId>,
        mut offline: Vec<DeviceId>,
        positions: &HashMap<DeviceId, Position>,
    ) -> Batch {
        let updates = changed
            .into_iter()
            .filter_map(|d| positions.get(d).cloned())
            .collect();
        // A device that came back since it went offline is not offline any more.
        offline.retain(|d| positions.get(d).is_some_and(|p| !p.online));
        offline.dedup();
        Batch { updates, offline }
    }

    /// Whether the batch carries nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.offline.is_empty()
    }

    /// The part of this batch that `local` changes make: what observers hear.
    pub(super) fn part(&self, local: Changes) -> Batch {
        let Changes {
            changed,
            mut offline,
        } = local;
        offline.retain(|d| self.offline.contains(d));
        let updates = self
            .updates
            .iter()
            .filter(|p| changed.contains(&p.device))
            .cloned()
            .collect();
        Batch { updates, offline }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Fix;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    fn positions(online: &[(&str, bool)]) -> HashMap<DeviceId, Position> {
        online
            .iter()
            .map(|&(d, online)| {
                let p = Position {
                    device: id(d),
                    fix: Fix::new(1.0, 2.0, 3),
                    rts: 3,
                    online,
                };
                (id(d), p)
            })
            .collect()
    }

    fn names(devices: &[DeviceId]) -> Vec<&str> {
        let mut names: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
        names.sort_unstable();
        names
    }

    fn updated(batch: &Batch) -> Vec<&str> {
        let mut names: Vec<&str> = batch.updates.iter().map(|p| p.device.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn the_tick_takes_everything_and_observers_hear_the_local_part() {
        let mut pending = Pending::default();
        assert!(pending.is_empty());
        pending.changed(&id("here"), Origin::Local);
        pending.changed(&id("far"), Origin::Remote);
        pending.went_offline(&id("gone-here"), Origin::Local);
        pending.went_offline(&id("gone-far"), Origin::Remote);
        pending.went_offline(&id("back"), Origin::Local);
        assert!(!pending.is_empty());
        let held = positions(&[
            ("here", true),
            ("far", true),
            ("gone-here", false),
            ("gone-far", false),
            ("back", true),
        ]);

        let (all, local) = pending.take();
        assert!(pending.is_empty());
        let batch = all.resolve(&held);
        assert_eq!(updated(&batch), ["far", "here"]);
        assert_eq!(
            batch.offline,
            [id("gone-here"), id("gone-far")],
            "back is online"
        );
        let part = batch.part(local);
        assert_eq!(updated(&part), ["here"]);
        assert_eq!(part.offline, [id("gone-here")]);
    }

    #[test]
    fn remote_changes_are_taken_alone() {
        let mut pending = Pending::default();
        pending.changed(&id("here"), Origin::Local);
        pending.changed(&id("far"), Origin::Remote);
        pending.changed(&id("both"), Origin::Remote);
        pending.changed(&id("both"), Origin::Local);
        pending.went_offline(&id("gone-here"), Origin::Local);
        pending.went_offline(&id("gone-far"), Origin::Remote);
        // Went offline here, came back through another instance, went offline there: it
        // stays with the local change for the tick.
        pending.went_offline(&id("gone-here"), Origin::Remote);

        let (changed, offline) = pending.take_remote();
        assert_eq!(names(&changed), ["far"]);
        assert_eq!(offline, [id("gone-far")]);

        let (all, local) = pending.take();
        assert_eq!(
            names(&all.changed.into_iter().collect::<Vec<_>>()),
            ["both", "here"]
        );
        assert_eq!(all.offline, [id("gone-here"), id("gone-here")]);
        assert_eq!(local.offline, [id("gone-here")]);
    }

    #[test]
    fn a_batch_lists_a_device_offline_once() {
        let held = positions(&[("a", false)]);
        let batch = Batch::new([], vec![id("a"), id("a")], &held);
        assert_eq!(batch.offline, [id("a")]);
        assert!(Batch::new([], vec![id("unknown")], &held).is_empty());
    }
}
