//! What this instance is the source of.
//!
//! The relay keeps its own copy of the latest position of every device whose fix (or socket)
//! arrived here, per group, fed by the hub's flushes. It is what the instance writes to Redis,
//! what its presence heartbeat vouches for, and what it republishes after Redis comes back
//! (it is kept up to date during an outage, so nothing that happened meanwhile is lost). It is
//! bounded like the hub: one entry per local device and group, pruned past retention.

use std::collections::HashMap;

use crate::hub::Hub;
use crate::model::{DeviceId, GroupId, Position};

/// Latest local positions per group.
#[derive(Debug, Default)]
pub(super) struct Local {
    groups: HashMap<GroupId, HashMap<DeviceId, Position>>,
}

impl Local {
    /// Applies one flush of `group`: new positions, and devices whose socket closed here.
    pub(super) fn apply(&mut self, group: &GroupId, updates: &[Position], offline: &[DeviceId]) {
        let devices = self.groups.entry(group.clone()).or_default();
        for p in updates {
            devices.insert(p.device.clone(), p.clone());
        }
        for d in offline {
            if let Some(p) = devices.get_mut(d) {
                p.online = false;
            }
        }
    }

    /// Records `position` unless a newer fix of the device is held.
    pub(super) fn upsert(&mut self, group: &GroupId, position: &Position) -> bool {
        let devices = self.groups.entry(group.clone()).or_default();
        match devices.get(&position.device) {
            Some(held) if (held.fix.ts, held.rts) > (position.fix.ts, position.rts) => false,
            _ => {
                devices.insert(position.device.clone(), position.clone());
                true
            }
        }
    }

    /// The held position of `device` in `group`.
    pub(super) fn get(&self, group: &GroupId, device: &DeviceId) -> Option<&Position> {
        self.groups.get(group)?.get(device)
    }

    /// Groups with at least one local device.
    pub(super) fn groups(&self) -> impl Iterator<Item = &GroupId> {
        self.groups.keys()
    }

    /// Per group, the local devices that hold a socket here in that group now: what the
    /// heartbeat vouches for.
    pub(super) fn connected(&self, hub: &Hub) -> Vec<(GroupId, Vec<DeviceId>)> {
        self.groups
            .iter()
            .filter_map(|(group, devices)| {
                let ids: Vec<DeviceId> = devices
                    .values()
                    .filter(|p| p.online && hub.has_socket_in(p.device.as_str(), group.as_str()))
                    .map(|p| p.device.clone())
                    .collect();
                (!ids.is_empty()).then(|| (group.clone(), ids))
            })
            .collect()
    }

    /// Everything to republish after a reconnection, per group. A device another instance has
    /// since reported a newer fix of is forgotten (that instance is its source now); presence
    /// is recomputed: online while it holds a socket here, or, without one (an HTTP client),
    /// while its last fix is within the stale window.
    pub(super) fn republish(
        &mut self,
        hub: &Hub,
        stale_before: i64,
    ) -> Vec<(GroupId, Vec<Position>)> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (group, devices) in &mut self.groups {
            let held: HashMap<DeviceId, Position> = hub
                .positions(group.as_str())
                .into_iter()
                .map(|p| (p.device.clone(), p))
                .collect();
            devices.retain(|d, p| {
                held.get(d)
                    .is_none_or(|h| (h.fix.ts, h.rts) <= (p.fix.ts, p.rts))
            });
            for p in devices.values_mut() {
                p.online = hub.has_socket_in(p.device.as_str(), group.as_str())
                    || p.online && p.rts >= stale_before;
            }
            if !devices.is_empty() {
                out.push((group.clone(), devices.values().cloned().collect()));
            }
        }
        out
    }

    /// Forgets positions received before `expired_before` of devices without a socket here,
    /// and groups left empty.
    pub(super) fn prune(&mut self, hub: &Hub, expired_before: i64) {
        for (group, devices) in &mut self.groups {
            devices.retain(|d, p| {
                p.rts >= expired_before || hub.has_socket_in(d.as_str(), group.as_str())
            });
        }
        self.groups.retain(|_, devices| !devices.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Fix;

    fn at(id: &str, ts: i64, online: bool) -> Position {
        Position {
            device: DeviceId::parse(id).unwrap(),
            fix: Fix::new(1.0, 2.0, ts),
            rts: ts,
            online,
        }
    }

    #[test]
    fn offline_keeps_the_last_position() {
        let g = GroupId::parse("g").unwrap();
        let mut local = Local::default();
        local.apply(&g, &[at("a", 10, true), at("b", 10, true)], &[]);
        local.apply(&g, &[], &[DeviceId::parse("a").unwrap()]);
        let a = local.get(&g, &DeviceId::parse("a").unwrap()).unwrap();
        assert!(!a.online);
        assert_eq!(a.fix.ts, 10);
        assert!(!local.upsert(&g, &at("b", 5, true)), "older fix ignored");
        assert!(local.upsert(&g, &at("b", 20, true)));
        assert_eq!(
            local
                .get(&g, &DeviceId::parse("b").unwrap())
                .unwrap()
                .fix
                .ts,
            20
        );
    }
}
