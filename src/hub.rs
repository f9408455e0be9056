//! The hub: latest state of every group, presence, and the tick-driven fan-out.
//!
//! # Design
//! - Groups live in a [`DashMap`] (sharded locks); each group's state sits behind its own
//!   `std::sync::Mutex`. No lock is global, and no lock is ever held across an `.await`: every
//!   critical section is a few map operations, so a blocking mutex is cheaper than an async one
//!   (the reasoning of mini-redis's `db.rs`).
//! - Publishing a fix updates the group's latest position and marks the device as changed.
//!   Nothing is sent then. Once per tick, the ticker turns each changed group into one `batch`
//!   holding the latest fix of every changed device (coalescing), encodes it once per codec in
//!   use, and hands the same bytes to every subscriber (see [`crate::outbox`]: written to the
//!   socket at once where possible, else queued).
//! - Ticks are per group: a busy group is flushed one tick after its previous flush, so groups
//!   go out at different moments and the fan-out spreads over the tick. A group that has been
//!   quiet for at least one tick is flushed at once, so a lone update sees no batching delay.
//! - Queues are bounded. A full queue means the client is not reading: the batch is dropped for
//!   it and the connection is flagged `lagged`; once it drains, the session sends a fresh
//!   snapshot instead (position is state, so nothing of value is lost).
//! - Other components (the Redis relay, the durable store) watch the hub through
//!   [`HubObserver`]: after each flush they are told what changed *locally* (fixes received by
//!   this instance, devices whose socket closed here), and when a group gains its first or loses
//!   its last local subscriber. State that arrives from elsewhere enters through
//!   [`Hub::merge_remote`], which fans it out locally but never reports it to observers, so
//!   nothing echoes between instances. Remote changes are fanned out at once rather than on the
//!   next tick (they were coalesced over a tick where they came from); local changes pending in
//!   the same group still wait for the tick. Presence of devices whose socket is on another
//!   instance lasts from the last time that instance vouched for them ([`Hub::remote_seen`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::model::{DeviceId, Fix, GroupId, Position, now_ms};
use crate::outbox::{Outbox, Prepared, Push};
use crate::protocol::{Codec, PositionRecord, ServerMessage};

/// How often presence and retention are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Watches the hub's local changes. Calls are made from the ticker and from sessions, outside
/// every hub lock; implementations must not block (push into a bounded queue of their own).
pub trait HubObserver: Send + Sync + std::fmt::Debug {
    /// After a flush of `group`: the fixes received by this instance and the devices that went
    /// offline here since the previous flush. Either list may be empty, not both.
    fn flushed(&self, group: &GroupId, updates: &[Position], offline: &[DeviceId]) {
        let _ = (group, updates, offline);
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
    groups: DashMap<GroupId, Arc<Group>>,
    /// Open device sockets per device id: a device is online while this is above zero.
    sockets: DashMap<DeviceId, u32>,
    /// Groups with changes, by when they are due to be flushed.
    due: Mutex<DueQueue>,
    /// Groups with changes from other instances, fanned out without waiting for the tick.
    remote: Mutex<Vec<Arc<Group>>>,
    /// Wakes the ticker: a group became due earlier than the ticker planned, or remote
    /// changes arrived.
    wake: Notify,
    next_outlet: AtomicU64,
    observers: RwLock<Vec<Arc<dyn HubObserver>>>,
    config: HubConfig,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Group {
    id: GroupId,
    state: Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    positions: HashMap<DeviceId, Position>,
    /// Devices whose position changed since the last batch.
    changed: HashSet<DeviceId>,
    /// Devices that went offline since the last batch.
    offline: Vec<DeviceId>,
    /// The part of `changed` that this instance received (for observers).
    local_changed: HashSet<DeviceId>,
    /// The part of `offline` that happened here (a socket closed on this instance).
    local_offline: Vec<DeviceId>,
    /// When another instance last confirmed a device online (ms), for devices whose socket is
    /// elsewhere: their presence lasts a stale window from the later of this and `rts`.
    seen: HashMap<DeviceId, i64>,
    /// Whether the group sits in the hub's due queue.
    queued: bool,
    /// Whether the group sits in the hub's list of remote changes to fan out at once.
    remote_queued: bool,
    /// When the last batch was built.
    last_flush: Option<Instant>,
    subscribers: HashMap<u64, Outlet>,
    /// Subscribers per codec, so a batch is encoded only in codecs someone uses.
    codecs: [usize; Codec::ALL.len()],
    /// Set when the sweeper removed the group from the map; a late writer must look it up again.
    removed: bool,
}

impl GroupState {
    fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.offline.is_empty()
    }
}

fn lock(group: &Group) -> MutexGuard<'_, GroupState> {
    // A poisoned lock means a panic inside a critical section, which only holds map operations;
    // the state is still consistent enough to keep serving, so take it rather than cascade.
    group.state.lock().unwrap_or_else(|e| e.into_inner())
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

    fn observers(&self) -> Vec<Arc<dyn HubObserver>> {
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
    fn with_group<R>(
        &self,
        group: &GroupId,
        mut f: impl FnMut(&Arc<Group>, &mut GroupState) -> R,
    ) -> R {
        loop {
            let g = self
                .groups
                .entry(group.clone())
                .or_insert_with(|| {
                    Arc::new(Group {
                        id: group.clone(),
                        state: Mutex::new(GroupState::default()),
                    })
                })
                .clone();
            let mut state = lock(&g);
            if state.removed {
                continue;
            }
            return f(&g, &mut state);
        }
    }

    /// Runs `f` on the state of `group` if the group exists.
    fn with_existing<R>(&self, group: &str, f: impl FnOnce(&mut GroupState) -> R) -> Option<R> {
        let g = self.groups.get(group)?.clone();
        let mut state = lock(&g);
        if state.removed {
            return None;
        }
        Some(f(&mut state))
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

    /// Records a new fix of `device` in each of `groups`. A fix older than the one held is
    /// ignored (position is state: the newest fix wins). `online` says whether the device
    /// counts as online by this report (always true for sockets and fresh HTTP reports).
    pub fn publish(&self, device: &DeviceId, groups: &[GroupId], fix: &Fix, rts: i64) {
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
                state.changed.insert(device.clone());
                state.local_changed.insert(device.clone());
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
                    if !p.online && self.has_socket(p.device.as_str()) {
                        // The device holds a socket here: its presence is this instance's news,
                        // flushed (and reported) on the tick like any local change.
                        p.online = true;
                        state.local_changed.insert(p.device.clone());
                        self.mark_dirty(g, state);
                    }
                    let was_online = state.positions.get(&p.device).is_some_and(|h| h.online);
                    if was_online && !p.online {
                        state.offline.push(p.device.clone());
                    }
                    state.changed.insert(p.device.clone());
                    state.positions.insert(p.device.clone(), p);
                    news = true;
                }
            }
            let went_offline = state.offline.len();
            for device in offline {
                if !self.has_socket(device.as_str()) {
                    self.set_offline(g, state, device, false);
                }
            }
            if news || state.offline.len() > went_offline {
                self.mark_remote(g, state);
            }
        });
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
                    state.changed.insert(device.clone());
                    news = true;
                }
            }
            if news {
                self.mark_remote(g, state);
            }
        });
    }

    /// A device socket opened: the device is online in all its groups.
    pub fn device_connected(&self, device: &DeviceId, groups: &[GroupId]) {
        let first = {
            let mut count = self.sockets.entry(device.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if !first {
            return;
        }
        for group in groups {
            if let Some(g) = self.groups.get(group.as_str()).map(|g| g.clone()) {
                let mut state = lock(&g);
                if let Some(p) = state.positions.get_mut(device)
                    && !p.online
                {
                    p.online = true;
                    state.changed.insert(device.clone());
                    state.local_changed.insert(device.clone());
                    self.mark_dirty(&g, &mut state);
                }
            }
        }
    }

    /// A device socket closed: once its last socket is gone, the device goes offline.
    pub fn device_disconnected(&self, device: &DeviceId, groups: &[GroupId]) {
        let last = match self.sockets.get_mut(device) {
            Some(mut count) => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            None => false,
        };
        if !last {
            return;
        }
        self.sockets.remove_if(device, |_, count| *count == 0);
        for group in groups {
            if let Some(g) = self.groups.get(group.as_str()).map(|g| g.clone()) {
                let mut state = lock(&g);
                self.set_offline(&g, &mut state, device, true);
            }
        }
    }

    /// Marks `device` offline in one group; `local` when it happened on this instance.
    fn set_offline(&self, g: &Arc<Group>, state: &mut GroupState, device: &DeviceId, local: bool) {
        if let Some(p) = state.positions.get_mut(device)
            && p.online
        {
            p.online = false;
            state.offline.push(device.clone());
            if local {
                state.local_offline.push(device.clone());
            }
            self.mark_dirty(g, state);
        }
    }

    /// Whether `device` holds at least one open socket here.
    pub fn has_socket(&self, device: &str) -> bool {
        self.sockets.get(device).is_some_and(|c| *c > 0)
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

    /// Flushes each group with changes when it is due, until `shutdown`.
    ///
    /// Each group has its own tick: a busy group is flushed one tick after its previous flush,
    /// a quiet one at once. Groups that got busy at different moments thus go out at
    /// different moments, and the fan-out work spreads over the tick instead of coming all at
    /// once. Groups due together are spread over the runtime's worker threads (each write is a
    /// system call). When the ticker falls behind, a group is flushed as soon as it can be and
    /// its next flush is a tick after that: under load, batches grow instead of queueing up.
    pub async fn run_ticker(self: Arc<Self>, shutdown: CancellationToken) {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        loop {
            let next = lock_due(&self.due).next_at();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = sleep => {}
                () = self.wake.notified() => {}
            }
            let started = Instant::now();
            let groups = lock_due(&self.due).take_until(started);
            if !groups.is_empty() {
                self.flush_spread(groups, workers).await;
                self.metrics
                    .tick_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            self.flush_remote();
        }
    }

    /// Flushes `groups` in up to `workers` tasks at once, this one included.
    async fn flush_spread(self: &Arc<Self>, mut groups: Vec<Arc<Group>>, workers: usize) {
        if workers < 2 || groups.len() < 2 {
            self.flush(&groups);
            return;
        }
        let share = groups.len().div_ceil(workers);
        let mut others = tokio::task::JoinSet::new();
        while groups.len() > share {
            let chunk = groups.split_off(groups.len() - share);
            let hub = self.clone();
            others.spawn(async move { hub.flush(&chunk) });
        }
        self.flush(&groups);
        while others.join_next().await.is_some() {}
    }

    /// Flushes every group with pending changes now. The server calls it once at shutdown,
    /// after the ticker stopped, so observers see the last changes.
    pub fn flush_pending(&self) {
        let groups = lock_due(&self.due).take_all();
        self.flush(&groups);
    }

    /// Builds, encodes and fans out one batch per group with changes.
    fn flush(&self, groups: &[Arc<Group>]) {
        for g in groups {
            self.flush_group(g);
        }
    }

    fn flush_group(&self, g: &Arc<Group>) {
        let (updates, offline, codecs, local) = {
            let mut state = lock(g);
            state.queued = false;
            if !state.has_changes() {
                return;
            }
            state.last_flush = Some(Instant::now());
            let changed = std::mem::take(&mut state.changed);
            let updates: Vec<Position> = changed
                .iter()
                .filter_map(|d| state.positions.get(d).cloned())
                .collect();
            let mut offline = std::mem::take(&mut state.offline);
            // A device that came back within the tick is not offline any more.
            offline.retain(|d| state.positions.get(d).is_some_and(|p| !p.online));
            offline.dedup();
            let local_changed = std::mem::take(&mut state.local_changed);
            let mut local_offline = std::mem::take(&mut state.local_offline);
            local_offline.retain(|d| offline.contains(d));
            let local_updates: Vec<Position> = updates
                .iter()
                .filter(|p| local_changed.contains(&p.device))
                .cloned()
                .collect();
            (
                updates,
                offline,
                state.codecs,
                (local_updates, local_offline),
            )
        };
        let (local_updates, local_offline) = local;
        if !local_updates.is_empty() || !local_offline.is_empty() {
            for observer in self.observers() {
                observer.flushed(&g.id, &local_updates, &local_offline);
            }
        }
        self.fan_out(g, &updates, &offline, codecs);
    }

    /// Fans out the changes other instances made (see `mark_remote`), leaving this
    /// instance's own changes for its tick.
    fn flush_remote(&self) {
        let groups = std::mem::take(&mut *lock_list(&self.remote));
        for g in &groups {
            let (updates, offline, codecs) = {
                let mut guard = lock(g);
                let state = &mut *guard;
                state.remote_queued = false;
                let local = &state.local_changed;
                let remote: Vec<DeviceId> = state
                    .changed
                    .iter()
                    .filter(|d| !local.contains(*d))
                    .cloned()
                    .collect();
                let local_offline = &state.local_offline;
                let (keep, mut offline): (Vec<DeviceId>, Vec<DeviceId>) = state
                    .offline
                    .drain(..)
                    .partition(|d| local_offline.contains(d));
                state.offline = keep;
                for d in &remote {
                    state.changed.remove(d);
                }
                let updates: Vec<Position> = remote
                    .iter()
                    .filter_map(|d| state.positions.get(d).cloned())
                    .collect();
                offline.retain(|d| state.positions.get(d).is_some_and(|p| !p.online));
                offline.dedup();
                (updates, offline, state.codecs)
            };
            if !updates.is_empty() || !offline.is_empty() {
                self.fan_out(g, &updates, &offline, codecs);
            }
        }
    }

    /// Encodes one batch per codec in use and hands it to every subscriber of `g`: written
    /// directly to the socket where possible, else queued (see [`crate::outbox`]).
    fn fan_out(
        &self,
        g: &Arc<Group>,
        updates: &[Position],
        offline: &[DeviceId],
        codecs: [usize; Codec::ALL.len()],
    ) {
        self.metrics.batches.inc();
        let records: Vec<PositionRecord<'_>> = updates.iter().map(PositionRecord::from).collect();
        let offline: Vec<&str> = offline.iter().map(DeviceId::as_str).collect();
        let message = ServerMessage::Batch {
            group: g.id.as_str(),
            updates: &records,
            offline: &offline,
        };
        let frames: [Option<Prepared>; 2] = Codec::ALL.map(|codec| {
            (codecs[codec.index()] > 0).then(|| {
                self.metrics.encodes.inc();
                Prepared::new(message.encode(codec))
            })
        });

        // Writing takes a system call per subscriber: do it outside the group's lock, so
        // publishers to the group never wait for the fan-out.
        let outlets: Vec<Outlet> = lock(g).subscribers.values().cloned().collect();
        let (mut sent, mut sent_bytes) = (0, 0);
        let mut closed = Vec::new();
        for outlet in &outlets {
            let Some(frame) = &frames[outlet.codec.index()] else {
                continue;
            };
            match outlet.outbox.push(frame) {
                Push::Sent => {
                    sent += 1;
                    sent_bytes += frame.frame().len() as u64;
                }
                Push::Queued => {}
                Push::Full => {
                    self.metrics.drops.inc();
                }
                Push::Closed => closed.push(outlet.id),
            }
        }
        self.metrics.frames_out.inc_by(sent);
        self.metrics.bytes_out.inc_by(sent_bytes);
        if closed.is_empty() {
            return;
        }
        let mut state = lock(g);
        let mut removed_some = false;
        for id in closed {
            if let Some(outlet) = state.subscribers.remove(&id) {
                state.codecs[outlet.codec.index()] -= 1;
                removed_some = true;
            }
        }
        let abandoned = removed_some && state.subscribers.is_empty();
        drop(state);
        if abandoned {
            self.observers()
                .iter()
                .for_each(|o| o.interest(&g.id, false));
        }
    }

    /// Marks stale HTTP devices offline, forgets positions past retention, and drops empty
    /// groups, every second until `shutdown`.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.sweep(now_ms()),
            }
        }
    }

    /// One sweep at time `now` (ms).
    pub fn sweep(&self, now: i64) {
        let stale_before = now - (self.config.stale_secs as i64) * 1000;
        let expired_before = now - (self.config.retention_secs as i64) * 1000;
        let groups: Vec<Arc<Group>> = self.groups.iter().map(|e| e.value().clone()).collect();
        let mut positions = 0;
        for g in &groups {
            let mut guard = lock(g);
            let state = &mut *guard;
            // Last sign of life: the fix's receive time, or a later confirmation from the
            // instance that holds the device's socket.
            let seen = &state.seen;
            let last = |p: &Position| seen.get(&p.device).map_or(p.rts, |s| p.rts.max(*s));
            state.positions.retain(|_, p| {
                last(p) >= expired_before || p.online && self.has_socket(p.device.as_str())
            });
            let stale: Vec<DeviceId> = state
                .positions
                .values()
                .filter(|p| {
                    p.online && last(p) < stale_before && !self.has_socket(p.device.as_str())
                })
                .map(|p| p.device.clone())
                .collect();
            let positions_held = &state.positions;
            state.seen.retain(|d, _| positions_held.contains_key(d));
            for device in &stale {
                self.set_offline(g, state, device, false);
            }
            positions += state.positions.len();
        }
        self.groups.retain(|_, g| {
            let mut state = lock(g);
            let empty = state.positions.is_empty()
                && state.subscribers.is_empty()
                && !state.has_changes()
                && !state.queued
                && !state.remote_queued;
            if empty {
                state.removed = true;
            }
            !empty
        });
        self.metrics.groups.set(self.groups.len() as i64);
        self.metrics.positions.set(positions as i64);
    }
}

fn lock_list(list: &Mutex<Vec<Arc<Group>>>) -> MutexGuard<'_, Vec<Arc<Group>>> {
    list.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_due(due: &Mutex<DueQueue>) -> MutexGuard<'_, DueQueue> {
    due.lock().unwrap_or_else(|e| e.into_inner())
}

/// Groups waiting to be flushed, earliest first.
#[derive(Debug, Default)]
struct DueQueue {
    /// Keyed by when each group is due, then by a sequence number: of groups due at the same
    /// instant, the first queued is flushed first.
    groups: BTreeMap<(Instant, u64), Arc<Group>>,
    seq: u64,
}

impl DueQueue {
    /// Queues `group` for `at`; returns whether it is now the earliest.
    fn push(&mut self, at: Instant, group: Arc<Group>) -> bool {
        self.seq += 1;
        let key = (at, self.seq);
        self.groups.insert(key, group);
        self.groups
            .first_key_value()
            .is_some_and(|(k, _)| *k == key)
    }

    /// When the earliest group is due.
    fn next_at(&self) -> Option<Instant> {
        self.groups.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes every group due at or before `now`, earliest first.
    fn take_until(&mut self, now: Instant) -> Vec<Arc<Group>> {
        let mut groups = Vec::new();
        while let Some(entry) = self.groups.first_entry()
            && entry.key().0 <= now
        {
            groups.push(entry.remove());
        }
        groups
    }

    /// Takes every queued group, earliest first.
    fn take_all(&mut self) -> Vec<Arc<Group>> {
        std::mem::take(&mut self.groups).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn group(name: &str) -> GroupId {
        GroupId::parse(name).unwrap()
    }

    fn arc_group(name: &str) -> Arc<Group> {
        Arc::new(Group {
            id: group(name),
            state: Mutex::new(GroupState::default()),
        })
    }

    #[test]
    fn the_due_queue_gives_groups_back_earliest_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut due = DueQueue::default();
        assert!(due.push(t0 + ms(30), arc_group("c")));
        assert!(!due.push(t0 + ms(50), arc_group("d")));
        assert!(due.push(t0 + ms(10), arc_group("a")), "earlier: new head");
        assert!(
            !due.push(t0 + ms(10), arc_group("b")),
            "same instant: after a"
        );
        assert_eq!(due.next_at(), Some(t0 + ms(10)));
        let names = |groups: Vec<Arc<Group>>| -> Vec<String> {
            groups.iter().map(|g| g.id.to_string()).collect()
        };
        assert_eq!(names(due.take_until(t0 + ms(30))), ["a", "b", "c"]);
        assert_eq!(due.next_at(), Some(t0 + ms(50)));
        assert!(due.take_until(t0 + ms(49)).is_empty());
        due.push(t0 + ms(40), arc_group("e"));
        assert_eq!(names(due.take_all()), ["e", "d"]);
        assert_eq!(due.next_at(), None);
    }

    /// Waits for the next frame queued for `outbox` and returns when it came.
    async fn next_frame(outbox: &Outbox) -> Instant {
        tokio::time::timeout(Duration::from_secs(10), outbox.ready())
            .await
            .expect("a batch in time");
        outbox.pop().expect("a queued frame");
        Instant::now()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_group_keeps_its_own_tick() {
        let mut config = Config::default().hub;
        config.tick_ms = 400;
        let tick = config.tick();
        let hub = Arc::new(Hub::new(config, Arc::new(Metrics::new())));
        let stop = CancellationToken::new();
        let watch = |name: &str| {
            let outlet = Outlet {
                id: hub.next_outlet_id(),
                codec: Codec::Json,
                outbox: Arc::new(Outbox::new(8)),
            };
            hub.subscribe(&group(name), &outlet);
            outlet.outbox
        };
        let (a, b) = (watch("a"), watch("b"));
        tokio::spawn(hub.clone().run_ticker(stop.clone()));
        let device = DeviceId::parse("d").unwrap();
        let mut ts = now_ms();
        let mut publish = |name: &str| {
            ts += 1;
            hub.publish(&device, &[group(name)], &Fix::new(1.0, 2.0, ts), ts);
        };

        // Both groups are quiet: a first fix goes out at once, a second waits a tick.
        publish("a");
        let a_first = next_frame(&a).await;
        publish("a");
        tokio::time::sleep(tick / 2).await;
        publish("b");
        let b_first = next_frame(&b).await;
        publish("b");
        let a_second = next_frame(&a).await;
        let b_second = next_frame(&b).await;
        assert!(a_second - a_first >= tick, "a busy group waits a tick");
        // With one tick for all groups, b's second batch would have gone out with a's.
        assert!(
            b_second - b_first >= tick,
            "b's tick counts from b's own flush ({:?} after it)",
            b_second - b_first
        );
        stop.cancel();
    }
}
