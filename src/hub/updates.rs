//! Updates: what a fix, a merge from another instance, or a socket opening or closing does to
//! a group's state, and queuing the group for its next batch.
//!
//! Nothing is sent here. Local changes queue the group in the due queue (a tick after its
//! previous batch, or at once when it was quiet); remote ones in the list of changes the
//! ticker fans out at once.

use std::sync::Arc;

use tokio::time::Instant;

use super::pending::Origin;
use super::state::{Group, GroupState, Hub, lock, lock_due, lock_list};
use crate::model::{DeviceId, Fix, GroupId, Position};

impl Hub {
    /// Records a new fix of `device` in each of `groups`. A fix older than the one held does
    /// not replace it (position is state: the newest fix wins), but observers hear every fix
    /// ([`HubObserver::published`](super::state::HubObserver::published)), older ones included,
    /// so the history gets them all.
    pub fn publish(&self, device: &DeviceId, groups: &[GroupId], fix: &Fix, rts: i64) {
        self.each_observer(|o| o.published(device, groups, fix, rts));
        for group in groups {
            self.with_group(group, |g, state| {
                let held = state.positions.get(device);
                if held.is_some_and(|p| p.fix.ts > fix.ts) {
                    return;
                }
                state.positions.insert(
                    device.clone(),
                    Position {
                        device: device.clone(),
                        fix: fix.clone(),
                        rts,
                        online: true,
                    },
                );
                state.pending.changed(device, Origin::Local);
                self.mark_dirty(g, state);
            });
        }
    }

    /// Merges state received from another instance (or loaded at start): each position replaces
    /// the held one when its fix is newer (or, for the same fix, when its presence changed), and
    /// `offline` devices go offline unless they hold a socket here. A device that stops being
    /// online either way is listed in the next batch's `offline`. Fanned out to local
    /// subscribers; never reported to observers, except that a device holding a socket here is
    /// kept online and that is reported as local news.
    pub fn merge_remote(&self, group: &GroupId, updates: &[Position], offline: &[DeviceId]) {
        self.with_group(group, |g, state| {
            let mut news = false;
            for p in updates {
                let newer = match state.positions.get(&p.device) {
                    Some(held) => {
                        (p.fix.ts, p.rts) > (held.fix.ts, held.rts)
                            || (p.fix.ts == held.fix.ts && p.online != held.online)
                    }
                    None => true,
                };
                if newer {
                    let mut p = p.clone();
                    let mut origin = Origin::Remote;
                    if !p.online && self.has_socket_in(p.device.as_str(), group.as_str()) {
                        // The device holds a socket here: its presence is this instance's news,
                        // flushed (and reported) on the tick like any local change.
                        p.online = true;
                        origin = Origin::Local;
                        self.mark_dirty(g, state);
                    }
                    let was_online = state.positions.get(&p.device).is_some_and(|h| h.online);
                    if was_online && !p.online {
                        state.pending.went_offline(&p.device, Origin::Remote);
                    }
                    state.pending.changed(&p.device, origin);
                    state.positions.insert(p.device.clone(), p);
                    news = true;
                }
            }
            for device in offline {
                if !self.has_socket_in(device.as_str(), group.as_str()) {
                    news |= self.set_offline(g, state, device, Origin::Remote);
                }
            }
            if news {
                self.mark_remote(g, state);
            }
        });
    }

    /// Records that other instances saw devices online at the given times (ms since the
    /// epoch), so a device holding a socket elsewhere stays online here without moving: its
    /// presence lasts a stale window from the later of that time and its fix's `rts`. A held
    /// position that is offline comes back online (the instance holding its socket says so).
    /// Devices without a held position are ignored. Fanned out locally; never reported to
    /// observers.
    pub fn remote_seen(&self, group: &GroupId, devices: &[(DeviceId, i64)]) {
        self.with_group(group, |g, state| {
            let mut news = false;
            for (device, at) in devices {
                let Some(p) = state.positions.get_mut(device) else {
                    continue;
                };
                let revived = !p.online;
                p.online = true;
                let seen = state.seen.entry(device.clone()).or_insert(*at);
                *seen = (*seen).max(*at);
                if revived {
                    state.pending.changed(device, Origin::Remote);
                    news = true;
                }
            }
            if news {
                self.mark_remote(g, state);
            }
        });
    }

    /// A device socket opened: the device is online in each of the socket's groups.
    pub fn device_connected(&self, device: &DeviceId, groups: &[GroupId]) {
        let firsts: Vec<&GroupId> = {
            let mut held = self.sockets.entry(device.clone()).or_default();
            groups
                .iter()
                .filter(|group| match held.iter_mut().find(|(g, _)| g == *group) {
                    Some((_, n)) => {
                        *n += 1;
                        *n == 1
                    }
                    None => {
                        held.push(((*group).clone(), 1));
                        true
                    }
                })
                .collect()
        };
        for group in firsts {
            if let Some(g) = self.groups.get(group.as_str()).map(|g| g.clone()) {
                let mut state = lock(&g);
                if let Some(p) = state.positions.get_mut(device)
                    && !p.online
                {
                    p.online = true;
                    state.pending.changed(device, Origin::Local);
                    self.mark_dirty(&g, &mut state);
                }
            }
        }
    }

    /// A device socket closed: in each group where it held its last socket, the device goes
    /// offline.
    pub fn device_disconnected(&self, device: &DeviceId, groups: &[GroupId]) {
        let lasts: Vec<&GroupId> = match self.sockets.get_mut(device) {
            Some(mut held) => {
                let lasts = groups
                    .iter()
                    .filter(|group| match held.iter_mut().find(|(g, _)| g == *group) {
                        Some((_, n)) if *n > 0 => {
                            *n -= 1;
                            *n == 0
                        }
                        _ => false,
                    })
                    .collect();
                held.retain(|(_, n)| *n > 0);
                lasts
            }
            None => Vec::new(),
        };
        self.sockets.remove_if(device, |_, held| held.is_empty());
        for group in lasts {
            if let Some(g) = self.groups.get(group.as_str()).map(|g| g.clone()) {
                let mut state = lock(&g);
                self.set_offline(&g, &mut state, device, Origin::Local);
            }
        }
    }

    /// Marks `device` offline in one group, to go out on the group's tick. Returns whether it
    /// was online.
    pub(super) fn set_offline(
        &self,
        g: &Arc<Group>,
        state: &mut GroupState,
        device: &DeviceId,
        origin: Origin,
    ) -> bool {
        match state.positions.get_mut(device) {
            Some(p) if p.online => {
                p.online = false;
                state.pending.went_offline(device, origin);
                self.mark_dirty(g, state);
                true
            }
            _ => false,
        }
    }

    /// Queues `group` to be flushed one tick after its previous flush, or at once when it has
    /// been quiet for a tick.
    fn mark_dirty(&self, g: &Arc<Group>, state: &mut GroupState) {
        if state.queued {
            return;
        }
        state.queued = true;
        let now = Instant::now();
        let at = state
            .last_flush
            .map_or(now, |last| (last + self.config.tick()).max(now));
        let earliest = lock_due(&self.due).push(at, g.clone());
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Queues the remote changes of `group` to be fanned out at once. They were coalesced over
    /// a tick on the instance they come from; waiting for this instance's tick as well would
    /// delay them by up to a second tick. Local changes still wait for the tick, so with several
    /// instances a subscriber gets per tick one batch per group from each instance that had
    /// changes, and each instance still publishes one message per group per tick.
    fn mark_remote(&self, g: &Arc<Group>, state: &mut GroupState) {
        if state.remote_queued {
            return;
        }
        state.remote_queued = true;
        lock_list(&self.remote).push(g.clone());
        self.wake.notify_one();
    }
}
