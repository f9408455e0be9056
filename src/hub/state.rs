//! The hub's state and subscriptions: the types every other part of the hub works on, looking
//! groups up, and subscribing to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::due::DueQueue;
use super::pending::Pending;
use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::model::{DeviceId, Fix, GroupId, Position};
use crate::outbox::Outbox;
use crate::protocol::Codec;

/// Watches the hub's local changes. Calls are made from the ticker and from sessions, outside
/// every hub lock; implementations must not block (push into a bounded queue of their own).
pub trait HubObserver: Send + Sync + std::fmt::Debug {
    /// After a flush of `group`: the fixes received by this instance and the devices that went
    /// offline here since the previous flush. Either list may be empty, not both.
    fn flushed(&self, group: &GroupId, updates: &[Position], offline: &[DeviceId]) {
        let _ = (group, updates, offline);
    }

    /// Every fix accepted here, as [`Hub::publish`] receives it, before any coalescing: the
    /// device, the groups it was published to, the fix and its receive time (ms). Called on the
    /// publisher's path (a session or an ingest request), outside every group lock, for fixes
    /// older than the held position too. Must return at once (a `try_send`-like push).
    fn published(&self, device: &DeviceId, groups: &[GroupId], fix: &Fix, rts: i64) {
        let _ = (device, groups, fix, rts);
    }

    /// `group` gained its first local subscriber (`watched`) or lost its last (`!watched`).
    fn interest(&self, group: &GroupId, watched: bool) {
        let _ = (group, watched);
    }
}

/// The sending side of one connection, as the hub sees it.
#[derive(Clone, Debug)]
pub struct Outlet {
    /// Unique per connection.
    pub id: u64,
    /// The connection's codec: which encoding of a batch it gets.
    pub codec: Codec,
    /// Bounded queue into the connection's writer; remembers dropped frames so the session
    /// can resync.
    pub outbox: Arc<Outbox>,
}

/// State shared by every connection and HTTP handler.
#[derive(Debug)]
pub struct Hub {
    pub(super) groups: DashMap<GroupId, Arc<Group>>,
    /// Open device sockets per device id and group: a device is online in a group while it
    /// holds a socket in that group. A device has at most the groups of its identity (64), so
    /// a short list beats a map.
    pub(super) sockets: DashMap<DeviceId, Vec<(GroupId, u32)>>,
    /// Groups with changes, by when they are due to be flushed.
    pub(super) due: Mutex<DueQueue<Arc<Group>>>,
    /// Groups with changes from other instances, fanned out without waiting for the tick.
    pub(super) remote: Mutex<Vec<Arc<Group>>>,
    /// Wakes the ticker: a group became due earlier than the ticker planned, or remote
    /// changes arrived.
    pub(super) wake: Notify,
    next_outlet: AtomicU64,
    observers: RwLock<Vec<Arc<dyn HubObserver>>>,
    pub(super) config: HubConfig,
    pub(super) metrics: Arc<Metrics>,
}

/// One group: its id, and its state behind its own lock.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) id: GroupId,
    pub(super) state: Mutex<GroupState>,
}

impl Group {
    /// An empty group.
    pub(super) fn new(id: GroupId) -> Self {
        Group {
            id,
            state: Mutex::new(GroupState::default()),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct GroupState {
    pub(super) positions: HashMap<DeviceId, Position>,
    /// Changes since the last batch: every one for subscribers, the local ones for observers.
    pub(super) pending: Pending,
    /// When another instance last confirmed a device online (ms), for devices whose socket is
    /// elsewhere: their presence lasts a stale window from the later of this and `rts`.
    pub(super) seen: HashMap<DeviceId, i64>,
    /// Whether the group sits in the hub's due queue.
    pub(super) queued: bool,
    /// Whether the group sits in the hub's list of remote changes to fan out at once.
    pub(super) remote_queued: bool,
    /// When the last batch was built.
    pub(super) last_flush: Option<Instant>,
    pub(super) subscribers: HashMap<u64, Outlet>,
    /// Subscribers per codec, so a batch is encoded only in codecs someone uses.
    pub(super) codecs: [usize; Codec::ALL.len()],
    /// Set when the sweeper removed the group from the map; a late writer must look it up again.
    pub(super) removed: bool,
}

/// Locks a group's state.
pub(super) fn lock(group: &Group) -> MutexGuard<'_, GroupState> {
    // A poisoned lock means a panic inside a critical section, which only holds map operations;
    // the state is still consistent enough to keep serving, so take it rather than cascade.
    group.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks the list of groups with remote changes.
pub(super) fn lock_list(list: &Mutex<Vec<Arc<Group>>>) -> MutexGuard<'_, Vec<Arc<Group>>> {
    list.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks the due queue.
pub(super) fn lock_due(due: &Mutex<DueQueue<Arc<Group>>>) -> MutexGuard<'_, DueQueue<Arc<Group>>> {
    due.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        Hub {
            groups: DashMap::new(),
            sockets: DashMap::new(),
            due: Mutex::new(DueQueue::default()),
            remote: Mutex::new(Vec::new()),
            wake: Notify::new(),
            next_outlet: AtomicU64::new(1),
            observers: RwLock::new(Vec::new()),
            config,
            metrics,
        }
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Adds an observer of local changes.
    pub fn add_observer(&self, observer: Arc<dyn HubObserver>) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(observer);
    }

    /// Calls `f` on each observer under the list's read lock: no copy of the list, for the
    /// publish path. `f` must not add observers (it would wait for itself).
    pub(super) fn each_observer(&self, mut f: impl FnMut(&dyn HubObserver)) {
        let observers = self.observers.read().unwrap_or_else(|e| e.into_inner());
        for observer in observers.iter() {
            f(observer.as_ref());
        }
    }

    /// The observers, copied out so that none is called under the list's lock.
    pub(super) fn observers(&self) -> Vec<Arc<dyn HubObserver>> {
        self.observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Groups that have at least one local subscriber.
    pub fn watched_groups(&self) -> Vec<GroupId> {
        let groups: Vec<Arc<Group>> = self.groups.iter().map(|e| e.value().clone()).collect();
        groups
            .into_iter()
            .filter(|g| !lock(g).subscribers.is_empty())
            .map(|g| g.id.clone())
            .collect()
    }

    /// A new outlet id, unique within this hub.
    pub fn next_outlet_id(&self) -> u64 {
        self.next_outlet.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` on the state of `group`, creating the group when needed.
    pub(super) fn with_group<R>(
        &self,
        group: &GroupId,
        mut f: impl FnMut(&Arc<Group>, &mut GroupState) -> R,
    ) -> R {
        loop {
            let g = self
                .groups
                .entry(group.clone())
                .or_insert_with(|| Arc::new(Group::new(group.clone())))
                .clone();
            let mut state = lock(&g);
            if state.removed {
                continue;
            }
            return f(&g, &mut state);
        }
    }

    /// Runs `f` on the state of `group` if the group exists.
    pub(super) fn with_existing<R>(
        &self,
        group: &str,
        f: impl FnOnce(&mut GroupState) -> R,
    ) -> Option<R> {
        let g = self.groups.get(group)?.clone();
        let mut state = lock(&g);
        if state.removed {
            return None;
        }
        Some(f(&mut state))
    }

    /// Whether `device` holds at least one open socket here, in any group.
    pub fn has_socket(&self, device: &str) -> bool {
        self.sockets
            .get(device)
            .is_some_and(|groups| groups.iter().any(|(_, n)| *n > 0))
    }

    /// Whether `device` holds an open socket here in `group`: what keeps it online there.
    pub fn has_socket_in(&self, device: &str, group: &str) -> bool {
        self.sockets
            .get(device)
            .is_some_and(|groups| groups.iter().any(|(g, n)| *n > 0 && g.as_str() == group))
    }

    /// Subscribes `outlet` to `group` and returns the group's current state, atomically: every
    /// change after the returned snapshot reaches the outlet's queue.
    pub fn subscribe(&self, group: &GroupId, outlet: &Outlet) -> Vec<Position> {
        let (positions, first) = self.with_group(group, |_, state| {
            let first = state.subscribers.is_empty();
            if state
                .subscribers
                .insert(outlet.id, outlet.clone())
                .is_none()
            {
                state.codecs[outlet.codec.index()] += 1;
            }
            (state.positions.values().cloned().collect(), first)
        });
        if first {
            self.observers()
                .iter()
                .for_each(|o| o.interest(group, true));
        }
        positions
    }

    /// Removes `outlet_id` from `group`. Returns whether it was subscribed.
    pub fn unsubscribe(&self, group: &str, outlet_id: u64) -> bool {
        let removed = self.with_existing(group, |state| {
            let outlet = state.subscribers.remove(&outlet_id)?;
            state.codecs[outlet.codec.index()] -= 1;
            Some(state.subscribers.is_empty())
        });
        match removed.flatten() {
            Some(last) => {
                if last && let Ok(group) = GroupId::parse(group) {
                    self.observers()
                        .iter()
                        .for_each(|o| o.interest(&group, false));
                }
                true
            }
            None => false,
        }
    }

    /// Current positions of `group` (empty when unknown).
    pub fn positions(&self, group: &str) -> Vec<Position> {
        self.with_existing(group, |state| state.positions.values().cloned().collect())
            .unwrap_or_default()
    }
}
