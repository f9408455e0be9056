//! Geofences and proximity rules: judged on every fix accepted here, as it arrives, making
//! `geofence.*` and `proximity.*` events ([`docs/geofences.md`](../../docs/geofences.md)).
//!
//! [`Geofences`] is a hub observer: [`HubObserver::published`] hears every accepted fix before
//! any coalescing (a burst of an offline backlog, a list in one request: each point), and judges
//! it against the rules of each of its groups. A group with no fence and no proximity rule is
//! not in the map: its fixes cost one map lookup. Each group's rules and state sit behind their
//! own mutex, held only for the judging; the events go out after it is released, through the
//! event sink ([`EventSink`], the event bus: the log, local subscribers, other instances).
//!
//! Work per fix does not grow with the number of fences: each group keeps an R-tree of its
//! fences' boxes (grown by their hysteresis margin), and a fix is judged only against the fences
//! whose box holds it plus the device's active states (inside, or a change pending), so an exit
//! fires wherever the device went. Outside states are not kept: a device remembers when it was
//! last judged ([`Geofences::stamp`]) and a fence when it was made, and a fence without a state
//! for a device judged after it is one the device is far outside of. Polygons have at most
//! `--max-geofence-vertices` positions, and proximity looks at most at
//! [`proximity::MAX_CANDIDATES`] neighbours. A group holds at most `--max-geofences-per-group`
//! fences, tracks at most [`MAX_DEVICES_PER_GROUP`] devices, and at most [`MAX_GROUPS`] groups
//! hold rules.
//!
//! With `--data-dir`, definitions and the devices' states are kept in `geofences.sqlite3`
//! (`disk.rs`) and loaded at start; judging only queues writes for the writer thread there,
//! flushed at shutdown ([`Geofences::close`]). With `--redis-url`, they are shared
//! with the other instances (`share.rs`): every change here is published, every change there
//! applied here ([`Geofences::run`]).
//!
//! # Layout
//! Files import one way, each only from those listed before it (and, outside this folder, from
//! `model`, `config`, `events`, `metrics` and `hub`):
//! 1. `shape.rs`: circles and polygons, validated; signed distance to the boundary. Pure.
//! 2. `fence.rs`: a fence's definition and the per-device state machine. Pure.
//! 3. `proximity.rs`: near pairs over an R-tree. Pure.
//! 4. `disk.rs`: the SQLite file and its writer thread.
//! 5. `share.rs`: the messages between instances and the Redis connection that carries them.
//! 6. this file: [`Geofences`], the map of groups, the observer, what routes call, applying
//!    other instances' changes.
//!
//! Errors: [`RuleError`] for what routes refuse; disk and Redis failures are logged where they
//! are handled (here and in `share.rs`) and counted.

mod disk;
mod fence;
mod proximity;
mod shape;
mod share;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use dashmap::DashMap;
use rstar::RTree;
use rstar::primitives::{GeomWithData, Rectangle};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::events::event_id;
use crate::hub::{Hub, HubObserver};
use crate::metrics::GeofenceMetrics;
use crate::model::{DeviceId, Event, Fix, GroupId};

use disk::{Disk, Write, Writer};
pub(crate) use fence::FenceBody;
use fence::{Fence, FenceError, FenceRules, Member};
use proximity::Proximity;
pub(crate) use proximity::ProximityRule;
use shape::ShapeBounds;
use share::Shared;

/// Most groups holding fences or a proximity rule.
pub(crate) const MAX_GROUPS: usize = 10_000;

/// Most devices one group's rules keep state for; fixes of further devices are not judged
/// (counted in `beacon_geofence_devices_full_total`).
pub(crate) const MAX_DEVICES_PER_GROUP: usize = 100_000;

/// Where events go: the event bus's `record` (kept, sent to subscribers, shared).
pub(crate) type EventSink = Box<dyn Fn(&Event) -> bool + Send + Sync>;

/// Why a route's request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuleError {
    /// A bad definition (400); the message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// No such fence (404).
    #[error("no geofence {0:?} in this group")]
    NotFound(String),
    /// A bound reached (409).
    #[error("{0}")]
    Full(String),
}

impl From<FenceError> for RuleError {
    fn from(e: FenceError) -> Self {
        RuleError::Invalid(e.to_string())
    }
}

/// One device's state in a group with rules.
#[derive(Debug, Default)]
struct DeviceState {
    /// Newest fix time judged (or restored); older fixes change nothing.
    latest_ts: i64,
    /// Where its newest judged fix was, `(lat, lon)`.
    at: Option<(f64, f64)>,
    /// Its *active* states ([`Member::active`]: inside, or a change pending), by fence id:
    /// the fences judged for it wherever it is. A fence it has no state against and that was
    /// made before `seen` is one it is far outside of.
    members: HashMap<String, Member>,
    /// Stamp ([`Geofences::stamp`]) of its newest judged fix; 0: never judged.
    seen: i64,
}

/// An entry of a group's spatial index: a fence's grown box and its id.
type IndexEntry = GeomWithData<Rectangle<[f64; 2]>, String>;

/// A group's rules and state.
#[derive(Debug, Default)]
struct GroupRules {
    fences: BTreeMap<String, Arc<Fence>>,
    /// Every fence's box grown by its hysteresis margin ([`Fence::bbox`]): a fix is judged
    /// against the fences whose box holds it, plus its active states, so the cost of a fix
    /// does not grow with the number of fences.
    index: RTree<IndexEntry>,
    /// Newest `created` stamp of the fences (kept when fences go).
    newest_created: i64,
    proximity: Option<Proximity>,
    devices: HashMap<DeviceId, DeviceState>,
    /// Set when the group left the map; a writer holding it must look it up again.
    removed: bool,
}

impl GroupRules {
    fn is_empty(&self) -> bool {
        self.fences.is_empty() && self.proximity.is_none()
    }

    /// Keeps `fence`, replacing the one with its id, in the map and the index.
    fn insert_fence(&mut self, fence: Arc<Fence>) {
        self.remove_fence(&fence.id);
        self.index.insert(index_entry(&fence));
        self.newest_created = self.newest_created.max(fence.created);
        self.fences.insert(fence.id.clone(), fence);
    }

    /// Removes fence `id` from the map and the index.
    fn remove_fence(&mut self, id: &str) -> Option<Arc<Fence>> {
        let fence = self.fences.remove(id)?;
        self.index.remove(&index_entry(&fence));
        Some(fence)
    }

    /// The fences a fix at `(lat, lon)` of a device in `state` is judged against, in id order:
    /// those whose box holds the point and those the device is inside of or changing sides
    /// with.
    fn candidates(&self, members: &HashMap<String, Member>, lat: f64, lon: f64) -> Vec<Arc<Fence>> {
        let mut found: Vec<Arc<Fence>> = self
            .index
            .locate_all_at_point(&[lon, lat])
            .filter_map(|e| self.fences.get(&e.data))
            .chain(members.keys().filter_map(|id| self.fences.get(id)))
            .cloned()
            .collect();
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        found.dedup_by(|a, b| a.id == b.id);
        found
    }
}

fn index_entry(fence: &Fence) -> IndexEntry {
    let [w, s, e, n] = fence.bbox;
    GeomWithData::new(Rectangle::from_corners([w, s], [e, n]), fence.id.clone())
}

/// Geofences and proximity rules of every group, with their state.
pub(crate) struct Geofences {
    groups: DashMap<GroupId, Arc<Mutex<GroupRules>>>,
    rules: FenceRules,
    max_fences: usize,
    /// The `--data-dir` file's writer thread.
    disk: Option<Writer>,
    /// Set once at start ([`Geofences::start`]); events made before are dropped.
    sink: OnceLock<EventSink>,
    metrics: GeofenceMetrics,
    /// Changes for the other instances, with Redis (`share.rs`).
    outgoing: Option<mpsc::Sender<Shared>>,
    /// The other end, taken by [`Geofences::run`].
    incoming: Mutex<Option<mpsc::Receiver<Shared>>>,
    /// `--redis-prefix`.
    prefix: String,
    /// The last stamp handed out ([`Geofences::stamp`]).
    clock: AtomicI64,
    /// Judge every fence of a group for every fix, not only the index's candidates: the
    /// reference the index is tested against.
    scan_all: bool,
}

impl std::fmt::Debug for Geofences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geofences")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

fn lock(rules: &Mutex<GroupRules>) -> MutexGuard<'_, GroupRules> {
    // Critical sections hold map updates only; a poisoned lock still holds consistent state.
    rules.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new fence id: `gf_` and 16 random hex digits.
fn new_id() -> String {
    format!("gf_{:016x}", rand::random::<u64>())
}

impl Geofences {
    /// Rules from `config`, kept in `dir` (and loaded from it) when set. Judges nothing until
    /// [`Geofences::start`].
    pub(crate) fn new(config: &Config, metrics: GeofenceMetrics) -> Self {
        let dir = config.data_dir.as_deref();
        // Not over a Redis Cluster, like the event bus (docs/redis.md, "Events and profiles").
        let redis = config.redis_url.is_some() && !config.redis.redis_cluster;
        let prefix = config.redis.redis_prefix.clone();
        let config = &config.geofences;
        let rules = FenceRules {
            shape: ShapeBounds {
                max_vertices: config.max_geofence_vertices as usize,
                max_radius_m: f64::from(config.max_geofence_radius_m),
            },
            max_devices: config.max_geofence_devices as usize,
            max_acc_m: f64::from(config.geofence_max_acc_m),
            hysteresis_m: f64::from(config.geofence_hysteresis_m),
            debounce_s: u64::from(config.geofence_debounce_s),
        };
        let mut this = Geofences {
            groups: DashMap::new(),
            rules,
            max_fences: config.max_geofences_per_group as usize,
            disk: None,
            sink: OnceLock::new(),
            metrics,
            outgoing: None,
            incoming: Mutex::new(None),
            prefix,
            clock: AtomicI64::new(0),
            scan_all: false,
        };
        if redis {
            let (tx, rx) = mpsc::channel(share::QUEUE);
            this.outgoing = Some(tx);
            this.incoming = Mutex::new(Some(rx));
        }
        if let Some(dir) = dir {
            match Disk::open(dir) {
                Ok(disk) => {
                    this.load(&disk);
                    match Writer::start(disk, this.metrics.clone()) {
                        Ok(writer) => this.disk = Some(writer),
                        Err(e) => {
                            warn!(error = %e, "geofence writer not started; state kept in memory only");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "geofence store unusable; geofences kept in memory only");
                }
            }
        }
        this
    }

    /// Loads what `disk` holds.
    fn load(&self, disk: &Disk) {
        let loaded = match disk.load() {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!(error = %e, "stored geofences unreadable; starting without them");
                return;
            }
        };
        let group_of = |g: &str| GroupId::parse(g).ok();
        for (group, id, json, created) in loaded.fences {
            let Some(group) = group_of(&group) else {
                continue;
            };
            let fence = serde_json::from_str::<FenceBody>(&json)
                .map_err(|e| e.to_string())
                .and_then(|body| {
                    Fence::new(id.clone(), body, &self.rules).map_err(|e| e.to_string())
                });
            match fence {
                Ok(mut fence) => {
                    fence.created = created;
                    self.clock.fetch_max(created, Ordering::Relaxed);
                    lock(&self.entry(&group)).insert_fence(Arc::new(fence));
                    self.metrics.fences.inc();
                }
                Err(e) => {
                    warn!(group = %group, id, error = %e, "stored geofence no longer valid; skipped")
                }
            }
        }
        for (group, rule) in loaded.proximity {
            if let Some(group) = group_of(&group)
                && rule.check().is_ok()
            {
                lock(&self.entry(&group)).proximity = Some(Proximity::new(rule));
            }
        }
        for (group, fence, device, member) in loaded.members {
            let (Some(group), Ok(device)) = (group_of(&group), DeviceId::parse(&device)) else {
                continue;
            };
            let entry = self.entry(&group);
            let mut rules = lock(&entry);
            let Some(created) = rules.fences.get(&fence).map(|f| f.created) else {
                continue;
            };
            let state = rules.devices.entry(device).or_default();
            state.latest_ts = state.latest_ts.max(member.ts);
            keep_member(state, fence, member, created);
        }
        for (group, device, stamp) in loaded.seen {
            let (Some(group), Ok(device)) = (group_of(&group), DeviceId::parse(&device)) else {
                continue;
            };
            let entry = self.entry(&group);
            let mut rules = lock(&entry);
            let state = rules.devices.entry(device).or_default();
            state.seen = state.seen.max(stamp);
            self.clock.fetch_max(stamp, Ordering::Relaxed);
        }
        for (group, a, b) in loaded.pairs {
            let (Some(group), Ok(a), Ok(b)) =
                (group_of(&group), DeviceId::parse(&a), DeviceId::parse(&b))
            else {
                continue;
            };
            if let Some(p) = lock(&self.entry(&group)).proximity.as_mut() {
                p.restore_pair(a, b);
            }
        }
        self.groups.retain(|_, rules| !lock(rules).is_empty());
        if !self.groups.is_empty() {
            info!(groups = self.groups.len(), "geofences loaded");
        }
    }

    /// The state of `group` while loading (created when missing).
    fn entry(&self, group: &GroupId) -> Arc<Mutex<GroupRules>> {
        self.groups
            .entry(group.clone())
            .or_insert_with(|| Arc::new(Mutex::new(GroupRules::default())))
            .clone()
    }

    /// A new stamp: the wall clock in microseconds, and always above every stamp handed out or
    /// loaded before, so "made before" and "judged after" compare without ties. Comparable
    /// between instances as far as their clocks agree.
    fn stamp(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut next = now;
        // `fetch_update` with a closure that always answers `Some` cannot fail.
        let _ = self
            .clock
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                next = now.max(last.saturating_add(1));
                Some(next)
            });
        next
    }

    /// Queues `writes` for the disk, when kept there, without waiting: the writer thread
    /// commits them in order. A full queue drops them (logged, counted).
    fn write<S: AsRef<str>>(&self, writes: &[Write<S>]) {
        let Some(disk) = &self.disk else {
            return;
        };
        if writes.is_empty() {
            return;
        }
        if !disk.send(writes.iter().map(Write::to_owned_write).collect()) {
            self.metrics.disk_dropped.inc();
            warn!(
                rows = writes.len(),
                "geofence writer queue full; state not written"
            );
        }
    }

    /// Commits what is queued for the disk and stops the writer (blocking): at shutdown, after
    /// the last fix was judged.
    pub(crate) fn close(&self) {
        if let Some(disk) = &self.disk {
            disk.close();
            info!("geofence state flushed");
        }
    }

    /// Runs `f` on the group's rules, created when missing and the bound on groups allows.
    fn change<R>(
        &self,
        group: &GroupId,
        mut f: impl FnMut(&mut GroupRules) -> Result<R, RuleError>,
    ) -> Result<R, RuleError> {
        loop {
            let rules = match self.groups.get(group).map(|r| r.clone()) {
                Some(rules) => rules,
                None if self.groups.len() >= MAX_GROUPS => {
                    return Err(RuleError::Full(format!(
                        "at most {MAX_GROUPS} groups may hold geofences or proximity rules"
                    )));
                }
                None => self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(GroupRules::default())))
                    .clone(),
            };
            let mut rules = lock(&rules);
            if rules.removed {
                continue;
            }
            return f(&mut rules);
        }
    }

    /// Drops `group` from the map when it holds no rule any more.
    fn forget_if_empty(&self, group: &GroupId) {
        self.groups.remove_if(group, |_, rules| {
            let mut rules = lock(rules);
            rules.removed = rules.is_empty();
            rules.removed
        });
    }

    /// `{"geofences": [...]}` of `group`.
    pub(crate) fn list(&self, group: &str) -> Value {
        let fences: Vec<Value> = self
            .groups
            .get(group)
            .map(|rules| lock(&rules).fences.values().map(|f| f.to_json()).collect())
            .unwrap_or_default();
        serde_json::json!({ "geofences": fences })
    }

    /// One fence of `group`.
    pub(crate) fn get(&self, group: &str, id: &str) -> Result<Value, RuleError> {
        self.groups
            .get(group)
            .and_then(|rules| lock(&rules).fences.get(id).map(|f| f.to_json()))
            .ok_or_else(|| RuleError::NotFound(id.to_owned()))
    }

    /// Creates a fence in `group`; its stored form.
    pub(crate) fn create(&self, group: &GroupId, body: FenceBody) -> Result<Value, RuleError> {
        let fence = Fence::new(new_id(), body, &self.rules)?;
        self.put_fence(group, fence, Put::Create)
    }

    /// Replaces fence `id` of `group`. Devices keep their side (the next fix is judged against
    /// the new shape and settings); devices the new `devices` list leaves out are forgotten
    /// without an event.
    pub(crate) fn replace(
        &self,
        group: &GroupId,
        id: &str,
        body: FenceBody,
    ) -> Result<Value, RuleError> {
        let fence = Fence::new(id.to_owned(), body, &self.rules)?;
        self.put_fence(group, fence, Put::Replace)
    }

    /// Keeps `fence` in `group` as `put` says; shares it unless it came from elsewhere.
    fn put_fence(&self, group: &GroupId, fence: Fence, put: Put) -> Result<Value, RuleError> {
        let fence = Arc::new(fence);
        let json = fence.to_json();
        let def = stored(&json);
        let mut kept_created = 0;
        let result = self.change(group, |rules| {
            let held = rules.fences.get(&fence.id);
            if put == Put::Replace && held.is_none() {
                return Err(RuleError::NotFound(fence.id.clone()));
            }
            if put == Put::Remote && held.is_some_and(|f| stored(&f.to_json()) == def) {
                return Ok(None);
            }
            if held.is_none() && rules.fences.len() >= self.max_fences {
                return Err(RuleError::Full(format!(
                    "a group may hold at most {} geofences",
                    self.max_fences
                )));
            }
            let created = held.is_none();
            // A new stamp unless a replacement judges the same devices: devices far outside
            // stay known to be, and a device the fence newly covers has its first fix.
            let stamp = match (put, held) {
                (Put::Remote, _) if fence.created > 0 => fence.created,
                (_, Some(held)) if held.devices == fence.devices => held.created,
                _ => self.stamp(),
            };
            kept_created = stamp;
            let mut writes = vec![Write::Fence {
                group: group.as_str(),
                id: &fence.id,
                json: def.to_string(),
                created: stamp,
            }];
            let mut dropped = Vec::new();
            for (device, state) in rules.devices.iter_mut() {
                if !fence.covers(device) && state.members.remove(&fence.id).is_some() {
                    dropped.push(device.clone());
                }
            }
            writes.extend(dropped.iter().map(|d| Write::DeleteMember {
                group: group.as_str(),
                fence: &fence.id,
                device: d.as_str(),
            }));
            self.write(&writes);
            let mut kept = (*fence).clone();
            kept.created = stamp;
            rules.insert_fence(Arc::new(kept));
            Ok(Some(created))
        });
        match result {
            Ok(Some(created)) => {
                if created {
                    self.metrics.fences.inc();
                }
                if put == Put::Remote {
                    self.metrics.share_applied.inc();
                } else {
                    self.share(Shared::Fence {
                        group: group.as_str().to_owned(),
                        id: fence.id.clone(),
                        def,
                        created: kept_created,
                    });
                }
                info!(group = %group, id = %fence.id, name = %fence.name, created, "geofence kept");
                Ok(json)
            }
            Ok(None) => Ok(json),
            Err(e) => {
                self.forget_if_empty(group);
                Err(e)
            }
        }
    }

    /// Deletes fence `id` of `group` at `now_ms`: each device inside gets a `geofence.exit`
    /// with `reason: "deleted"`.
    pub(crate) fn delete(&self, group: &GroupId, id: &str, now_ms: i64) -> Result<(), RuleError> {
        let (devices, unseen) = self.remove_fence(group, id, now_ms)?;
        self.share(Shared::Delete {
            group: group.as_str().to_owned(),
            id: id.to_owned(),
            at: now_ms,
        });
        if self.outgoing.is_some() {
            // Their states in Redis go too; the other instances drop theirs on `Delete`.
            for device in devices {
                self.share(Shared::Forget {
                    group: group.as_str().to_owned(),
                    fence: id.to_owned(),
                    device: device.as_str().to_owned(),
                });
            }
            for device in unseen {
                self.share(Shared::Unseen {
                    group: group.as_str().to_owned(),
                    device: device.as_str().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Removes fence `id` of `group`, deleted at `at`: exits for the devices inside. Returns
    /// the devices that may have a state against it (in memory, or kept since they left it),
    /// and, when it was the group's last fence, the devices whose judged stamp was dropped.
    fn remove_fence(
        &self,
        group: &GroupId,
        id: &str,
        at: i64,
    ) -> Result<(Vec<DeviceId>, Vec<DeviceId>), RuleError> {
        let rules = self
            .groups
            .get(group)
            .map(|r| r.clone())
            .ok_or_else(|| RuleError::NotFound(id.to_owned()))?;
        let (events, known, unseen) = {
            let mut rules = lock(&rules);
            let fence = rules
                .remove_fence(id)
                .ok_or_else(|| RuleError::NotFound(id.to_owned()))?;
            self.metrics.fences.dec();
            self.write(&[Write::DeleteFence {
                group: group.as_str(),
                id,
            }]);
            let mut events = Vec::new();
            let mut known = Vec::new();
            for (device, state) in rules.devices.iter_mut() {
                let Some(member) = state.members.remove(id) else {
                    if state.seen > fence.created {
                        known.push(device.clone());
                    }
                    continue;
                };
                known.push(device.clone());
                if member.inside {
                    let mut event =
                        fence_event(group, device, &fence, "geofence.exit", at, state.at);
                    event.reason = Some("deleted".into());
                    event.id =
                        event_id("geofence.exit", device, group, at, &format!("{id}:deleted"));
                    events.push(event);
                }
            }
            let mut unseen = Vec::new();
            if rules.fences.is_empty() {
                // No fence left to be far outside of: the stamps go with the last one.
                for (device, state) in rules.devices.iter_mut() {
                    if state.seen > 0 {
                        state.seen = 0;
                        unseen.push(device.clone());
                    }
                }
                self.write(&[Write::DeleteSeen {
                    group: group.as_str(),
                }]);
            }
            (events, known, unseen)
        };
        self.forget_if_empty(group);
        info!(group = %group, id, exits = events.len(), "geofence deleted");
        self.emit(&events);
        Ok((known, unseen))
    }

    /// Sets `group`'s proximity rule (pairs near now stay near).
    pub(crate) fn set_proximity(
        &self,
        group: &GroupId,
        rule: ProximityRule,
    ) -> Result<Value, RuleError> {
        rule.check().map_err(RuleError::Invalid)?;
        self.keep_proximity(group, rule)?;
        self.share(Shared::Proximity {
            group: group.as_str().to_owned(),
            rule: Some(rule),
        });
        info!(group = %group, enter_m = rule.enter_m, exit_m = rule.exit_m, "proximity rule set");
        Ok(serde_json::json!({ "enter_m": rule.enter_m, "exit_m": rule.exit_m }))
    }

    fn keep_proximity(&self, group: &GroupId, rule: ProximityRule) -> Result<(), RuleError> {
        self.change(group, |rules| {
            self.write(&[Write::Proximity {
                group: group.as_str(),
                rule: Some(rule),
            }]);
            match rules.proximity.as_mut() {
                Some(p) => p.rule = rule,
                None => rules.proximity = Some(Proximity::new(rule)),
            }
            Ok(())
        })
    }

    /// `group`'s proximity rule.
    pub(crate) fn proximity(&self, group: &str) -> Option<ProximityRule> {
        self.groups
            .get(group)
            .and_then(|rules| lock(&rules).proximity.as_ref().map(|p| p.rule))
    }

    /// Switches `group`'s proximity rule off (no events). Returns whether there was one.
    pub(crate) fn clear_proximity(&self, group: &GroupId) -> bool {
        let had = self.drop_proximity(group);
        if had {
            self.share(Shared::Proximity {
                group: group.as_str().to_owned(),
                rule: None,
            });
            info!(group = %group, "proximity rule removed");
        }
        had
    }

    fn drop_proximity(&self, group: &GroupId) -> bool {
        let Some(rules) = self.groups.get(group).map(|r| r.clone()) else {
            return false;
        };
        let had = {
            let mut rules = lock(&rules);
            let had = rules.proximity.take().is_some();
            if had {
                self.write(&[Write::Proximity {
                    group: group.as_str(),
                    rule: None,
                }]);
            }
            had
        };
        self.forget_if_empty(group);
        had
    }

    /// Queues `message` for the other instances (with Redis).
    fn share(&self, message: Shared) {
        if let Some(tx) = &self.outgoing
            && tx.try_send(message).is_err()
        {
            self.metrics.share_dropped.inc();
            warn!("geofence queue to Redis full; change not shared");
        }
    }

    /// Shares this instance's changes and applies the others' until `shutdown`, through Redis
    /// at `url` (`share.rs`). Returns at once without Redis.
    pub(crate) async fn run(self: Arc<Self>, url: String, shutdown: CancellationToken) {
        let taken = self.incoming.lock().map(|mut rx| rx.take()).ok().flatten();
        let Some(outgoing) = taken else {
            return;
        };
        let keys = share::Keys::new(&self.prefix);
        let this = self.clone();
        share::run(url, keys, outgoing, move |m| this.apply(m), shutdown).await;
    }

    /// Applies a change from Redis (another instance's, our own echo, or the stored state).
    fn apply(&self, message: Shared) {
        let group_of = |g: &str| GroupId::parse(g).ok();
        match message {
            Shared::Fence {
                group,
                id,
                def,
                created,
            } => {
                let Some(group) = group_of(&group) else {
                    return;
                };
                let fence = serde_json::from_value::<FenceBody>(def)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        Fence::new(id.clone(), b, &self.rules).map_err(|e| e.to_string())
                    });
                match fence {
                    Ok(mut fence) if valid_id(&id) => {
                        fence.created = created;
                        if let Err(e) = self.put_fence(&group, fence, Put::Remote) {
                            warn!(group = %group, id, error = %e, "shared geofence not kept");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(group = %group, id, error = %e, "shared geofence invalid here"),
                }
            }
            Shared::Delete { group, id, at } => {
                if let Some(group) = group_of(&group) {
                    // Err: already gone (deleted here).
                    if self.remove_fence(&group, &id, at).is_ok() {
                        self.metrics.share_applied.inc();
                    }
                }
            }
            Shared::Proximity { group, rule } => {
                let Some(group) = group_of(&group) else {
                    return;
                };
                match rule {
                    Some(rule) if rule.check().is_ok() => {
                        if self.proximity(group.as_str()) != Some(rule) {
                            match self.keep_proximity(&group, rule) {
                                Ok(()) => {
                                    self.metrics.share_applied.inc();
                                }
                                Err(e) => {
                                    warn!(group = %group, error = %e, "shared proximity rule not kept");
                                }
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        if self.drop_proximity(&group) {
                            self.metrics.share_applied.inc();
                        }
                    }
                }
            }
            Shared::Member {
                group,
                fence,
                device,
                state,
            } => {
                let (Some(group), Ok(device)) = (group_of(&group), DeviceId::parse(&device)) else {
                    return;
                };
                self.apply_member(&group, &fence, &device, state);
            }
            Shared::Place {
                group,
                device,
                lat,
                lon,
                ts,
            } => {
                let (Some(group), Ok(device)) = (group_of(&group), DeviceId::parse(&device)) else {
                    return;
                };
                if !(lat.is_finite() && lon.is_finite()) {
                    return;
                }
                let Some(rules) = self.groups.get(&group).map(|r| r.clone()) else {
                    return;
                };
                let mut rules = lock(&rules);
                let rules = &mut *rules;
                let Some(p) = rules.proximity.as_mut() else {
                    return;
                };
                if !rules.devices.contains_key(&device)
                    && rules.devices.len() >= MAX_DEVICES_PER_GROUP
                {
                    return;
                }
                let state = rules.devices.entry(device.clone()).or_default();
                // Our own echo (same time) or an older fix: nothing to learn.
                if ts <= state.latest_ts {
                    return;
                }
                state.latest_ts = ts;
                state.at = Some((lat, lon));
                p.place(&device, lat, lon);
                self.metrics.share_applied.inc();
            }
            // The fence is gone already (its `Delete` came first), with the group's stamps
            // when it was the last one.
            Shared::Forget { .. } | Shared::Unseen { .. } => {}
            Shared::Seen {
                group,
                device,
                stamp,
            } => {
                let (Some(group), Ok(device)) = (group_of(&group), DeviceId::parse(&device)) else {
                    return;
                };
                let Some(rules) = self.groups.get(&group).map(|r| r.clone()) else {
                    return;
                };
                let mut rules = lock(&rules);
                if !rules.devices.contains_key(&device)
                    && rules.devices.len() >= MAX_DEVICES_PER_GROUP
                {
                    return;
                }
                let state = rules.devices.entry(device.clone()).or_default();
                if stamp <= state.seen {
                    return;
                }
                state.seen = stamp;
                self.clock.fetch_max(stamp, Ordering::Relaxed);
                self.metrics.share_applied.inc();
                self.write(&[Write::Seen {
                    group: group.as_str(),
                    device: device.as_str(),
                    stamp,
                }]);
            }
            Shared::Pair { group, a, b, near } => {
                let (Some(group), Ok(a), Ok(b)) =
                    (group_of(&group), DeviceId::parse(&a), DeviceId::parse(&b))
                else {
                    return;
                };
                let Some(rules) = self.groups.get(&group).map(|r| r.clone()) else {
                    return;
                };
                let mut rules = lock(&rules);
                let Some(p) = rules.proximity.as_mut() else {
                    return;
                };
                if p.is_near(&a, &b) == near {
                    return;
                }
                if near {
                    p.restore_pair(a.clone(), b.clone());
                } else {
                    p.unpair(&a, &b);
                }
                self.write(&[Write::Pair {
                    group: group.as_str(),
                    a: a.as_str(),
                    b: b.as_str(),
                    near,
                }]);
                self.metrics.share_applied.inc();
            }
        }
    }

    /// Takes another instance's state of `device` against `fence` when it is newer.
    fn apply_member(&self, group: &GroupId, fence: &str, device: &DeviceId, member: Member) {
        let Some(rules) = self.groups.get(group).map(|r| r.clone()) else {
            return;
        };
        let mut rules = lock(&rules);
        if !rules.fences.get(fence).is_some_and(|f| f.covers(device)) {
            return;
        }
        if !rules.devices.contains_key(device) && rules.devices.len() >= MAX_DEVICES_PER_GROUP {
            return;
        }
        let created = rules.fences.get(fence).map_or(0, |f| f.created);
        let state = rules.devices.entry(device.clone()).or_default();
        if state.members.get(fence).is_some_and(|m| m.ts >= member.ts) {
            return;
        }
        keep_member(state, fence.to_owned(), member, created);
        state.latest_ts = state.latest_ts.max(member.ts);
        self.metrics.share_applied.inc();
        self.write(&[Write::Member {
            group: group.as_str(),
            fence,
            device: device.as_str(),
            member,
        }]);
    }

    /// Starts judging: events go to `sink` from now on. Called once, after the hub holds its
    /// loaded state and before the observer is added.
    ///
    /// Each device's newest fix time is raised to that of its last-known position in `hub`
    /// (loaded from the store with `--data-dir`), so a fix uploaded late after a restart is
    /// still older than the device's latest.
    pub(crate) fn start(&self, sink: EventSink, hub: &Hub) {
        if self.sink.set(sink).is_err() {
            warn!("geofences started twice; the first sink stays");
        }
        let groups: Vec<(GroupId, Arc<Mutex<GroupRules>>)> = self
            .groups
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (group, rules) in groups {
            let positions = hub.positions(group.as_str());
            let mut rules = lock(&rules);
            for position in positions {
                if let Some(state) = rules.devices.get_mut(&position.device) {
                    state.latest_ts = state.latest_ts.max(position.fix.ts);
                }
            }
        }
    }

    /// Sends `events` to the sink, counting them.
    fn emit(&self, events: &[Event]) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        for event in events {
            if sink(event) {
                self.metrics.event(event.kind).inc();
                info!(device = %event.device, group = %event.group, kind = event.kind,
                      geofence = event.geofence.as_deref(), peer = event.peer.as_deref(), "event");
            }
        }
    }

    /// Judges `fix` of `device` against `group`'s rules; the events it makes.
    fn judge(
        &self,
        group: &GroupId,
        rules: &Mutex<GroupRules>,
        device: &DeviceId,
        fix: &Fix,
    ) -> Vec<Event> {
        let mut rules = lock(rules);
        let rules = &mut *rules;
        if !rules.devices.contains_key(device) && rules.devices.len() >= MAX_DEVICES_PER_GROUP {
            self.metrics.devices_full.inc();
            return Vec::new();
        }
        let state = rules.devices.entry(device.clone()).or_default();
        if fix.ts < state.latest_ts {
            self.metrics.fixes_old.inc();
            return Vec::new();
        }
        self.metrics.fixes_judged.inc();
        state.latest_ts = fix.ts;
        state.at = Some((fix.lat, fix.lon));
        let last_seen = state.seen;
        let stamp = self.stamp();
        state.seen = stamp;
        // Judged for the first time since the group's newest fence: kept, so that a restart
        // (or another instance) knows which fences this device is far outside of.
        let seen_news = last_seen <= rules.newest_created;
        let candidates: Vec<Arc<Fence>> = if self.scan_all {
            rules.fences.values().cloned().collect()
        } else {
            let state = &rules.devices[device];
            let found = rules.candidates(&state.members, fix.lat, fix.lon);
            self.metrics.fences_judged.inc_by(found.len() as u64);
            found
        };
        // Present: inserted above.
        let Some(state) = rules.devices.get_mut(device) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        let mut changed: Vec<(String, Member)> = Vec::new();
        for fence in &candidates {
            if !fence.covers(device) {
                continue;
            }
            let id = &fence.id;
            let mut member = state.members.get(id).copied().or_else(|| {
                // Judged since the fence was made, yet without a state: far outside.
                (last_seen > fence.created).then(Fence::far_outside)
            });
            let (changes, dirty) = fence.judge(&mut member, fix);
            if let Some(member) = member
                && dirty
            {
                keep_member(state, id.clone(), member, fence.created);
                changed.push((id.clone(), member));
            }
            for change in changes {
                let kind = change.kind.event_kind();
                let mut event = fence_event(
                    group,
                    device,
                    fence,
                    kind,
                    change.ts,
                    Some((change.lat, change.lon)),
                );
                event.id = event_id(kind, device, group, change.ts, id);
                events.push(event);
            }
        }
        let mut pairs = Vec::new();
        let placed = rules.proximity.is_some();
        if let Some(p) = rules.proximity.as_mut() {
            for t in p.judge(device, fix.lat, fix.lon) {
                let kind = if t.enter {
                    "proximity.enter"
                } else {
                    "proximity.exit"
                };
                let (a, b) = if device <= &t.peer {
                    (device, &t.peer)
                } else {
                    (&t.peer, device)
                };
                events.push(Event {
                    id: event_id(kind, a, group, fix.ts, b.as_str()),
                    kind,
                    device: device.clone(),
                    group: group.clone(),
                    ts: fix.ts,
                    lat: Some(fix.lat),
                    lon: Some(fix.lon),
                    alarm: None,
                    region: None,
                    geofence: None,
                    geofence_name: None,
                    peer: Some(t.peer.as_str().to_owned()),
                    distance_m: Some((t.distance_m * 10.0).round() / 10.0),
                    reason: None,
                });
                pairs.push((t.peer, t.enter));
            }
        }
        if self.disk.is_some() && (!changed.is_empty() || !pairs.is_empty() || seen_news) {
            let mut writes: Vec<Write<&str>> = changed
                .iter()
                .map(|(fence, member)| Write::Member {
                    group: group.as_str(),
                    fence,
                    device: device.as_str(),
                    member: *member,
                })
                .collect();
            if seen_news {
                writes.push(Write::Seen {
                    group: group.as_str(),
                    device: device.as_str(),
                    stamp,
                });
            }
            writes.extend(pairs.iter().map(|(peer, near)| Write::Pair {
                group: group.as_str(),
                a: device.as_str(),
                b: peer.as_str(),
                near: *near,
            }));
            self.write(&writes);
        }
        if self.outgoing.is_some() {
            if placed {
                self.share(Shared::Place {
                    group: group.as_str().to_owned(),
                    device: device.as_str().to_owned(),
                    lat: fix.lat,
                    lon: fix.lon,
                    ts: fix.ts,
                });
            }
            if seen_news {
                self.share(Shared::Seen {
                    group: group.as_str().to_owned(),
                    device: device.as_str().to_owned(),
                    stamp,
                });
            }
            for (fence, member) in &changed {
                self.share(Shared::Member {
                    group: group.as_str().to_owned(),
                    fence: fence.clone(),
                    device: device.as_str().to_owned(),
                    state: *member,
                });
            }
            for (peer, near) in &pairs {
                self.share(Shared::Pair {
                    group: group.as_str().to_owned(),
                    a: device.as_str().to_owned(),
                    b: peer.as_str().to_owned(),
                    near: *near,
                });
            }
        }
        events
    }
}

/// Keeps `member`, the state of the device of `state` against the fence `id` made at
/// `created`: in memory when active; otherwise the device is known to be far outside.
fn keep_member(state: &mut DeviceState, id: String, member: Member, created: i64) {
    if member.active() {
        state.members.insert(id, member);
    } else {
        state.members.remove(&id);
        state.seen = state.seen.max(created.saturating_add(1));
    }
}

/// The stored form of a fence: its definition without the id.
fn stored(json: &Value) -> Value {
    let mut json = json.clone();
    if let Some(map) = json.as_object_mut() {
        map.remove("id");
        map.retain(|_, v| !v.is_null());
    }
    json
}

/// Whether `id` is a fence id this server makes (`gf_` and hex digits).
fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .strip_prefix("gf_")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How a fence is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Put {
    /// A new fence from a route.
    Create,
    /// A replacement from a route: the fence must exist.
    Replace,
    /// From another instance: created or replaced, not shared again.
    Remote,
}

/// A `geofence.*` event of `device` about `fence`.
fn fence_event(
    group: &GroupId,
    device: &DeviceId,
    fence: &Fence,
    kind: &'static str,
    ts: i64,
    at: Option<(f64, f64)>,
) -> Event {
    Event {
        id: String::new(),
        kind,
        device: device.clone(),
        group: group.clone(),
        ts,
        lat: at.map(|a| a.0),
        lon: at.map(|a| a.1),
        alarm: None,
        region: None,
        geofence: Some(fence.id.clone()),
        geofence_name: Some(fence.name.clone()),
        peer: None,
        distance_m: None,
        reason: None,
    }
}

impl HubObserver for Geofences {
    fn published(&self, device: &DeviceId, groups: &[GroupId], fix: &Fix, _rts: i64) {
        for group in groups {
            // The one lookup a group without rules costs.
            let Some(rules) = self.groups.get(group).map(|r| r.clone()) else {
                continue;
            };
            let events = self.judge(group, &rules, device, fix);
            self.emit(&events);
        }
    }
}

/// The judging as a library call, for `benches/geofence.rs`: one group's fences in memory,
/// events counted and dropped. Not an API.
#[doc(hidden)]
pub mod bench {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{FenceBody, Geofences};
    use crate::config::Config;
    use crate::hub::{Hub, HubObserver};
    use crate::metrics::Metrics;
    use crate::model::{DeviceId, Fix, GroupId};

    /// Geofences of the group `fleet`, with the default configuration.
    #[derive(Debug)]
    pub struct Engine {
        geofences: Geofences,
        group: [GroupId; 1],
        events: Arc<AtomicU64>,
    }

    impl Engine {
        /// An engine without fences.
        pub fn new() -> Engine {
            let config = Config::default();
            let metrics = Arc::new(Metrics::new());
            let geofences = Geofences::new(&config, metrics.geofence.clone());
            let hub = Hub::new(config.hub.clone(), metrics);
            let events = Arc::new(AtomicU64::new(0));
            let count = events.clone();
            geofences.start(
                Box::new(move |_| {
                    count.fetch_add(1, Ordering::Relaxed);
                    true
                }),
                &hub,
            );
            Engine {
                geofences,
                // A constant, valid id.
                group: [GroupId::parse("fleet").unwrap_or_else(|_| unreachable!())],
                events,
            }
        }

        /// Adds a fence from its JSON body (as `POST .../geofences` takes it).
        pub fn add(&self, body: serde_json::Value) -> Result<(), String> {
            let body: FenceBody = serde_json::from_value(body).map_err(|e| e.to_string())?;
            self.geofences
                .create(&self.group[0], body)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }

        /// Judges `fix` of `device`, as the hub's observer hears it.
        pub fn judge(&self, device: &DeviceId, fix: &Fix) {
            self.geofences.published(device, &self.group, fix, fix.ts);
        }

        /// Events made so far.
        pub fn events(&self) -> u64 {
            self.events.load(Ordering::Relaxed)
        }

        /// Fences judged exactly so far (the index's candidates).
        pub fn fences_judged(&self) -> u64 {
            self.geofences.metrics.fences_judged.get()
        }
    }

    impl Default for Engine {
        fn default() -> Self {
            Engine::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// Geofences over `dir` (if any), collecting their events.
    fn engine(dir: Option<&std::path::Path>) -> (Geofences, Arc<Mutex<Vec<Event>>>) {
        let config = Config {
            data_dir: dir.map(|d| d.to_owned()),
            ..Config::default()
        };
        let metrics = Metrics::new();
        let geofences = Geofences::new(&config, metrics.geofence.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let hub = Hub::new(config.hub.clone(), Arc::new(metrics));
        geofences.start(
            Box::new(move |e| {
                sink.lock().unwrap().push(e.clone());
                true
            }),
            &hub,
        );
        (geofences, seen)
    }

    fn body() -> FenceBody {
        serde_json::from_value(serde_json::json!({
            "name": "yard",
            "geometry": {"type": "Circle", "center": [0.0, 0.0], "radius_m": 100.0},
            "debounce_s": 0,
        }))
        .unwrap()
    }

    /// A fix `m` metres north of (0, 0) at `s` seconds.
    fn at(m: f64, s: i64) -> Fix {
        Fix::new(m / 111_195.0, 0.0, s * 1000)
    }

    fn kinds(seen: &Mutex<Vec<Event>>) -> Vec<&'static str> {
        seen.lock().unwrap().iter().map(|e| e.kind).collect()
    }

    #[test]
    fn fixes_make_events_and_deletion_exits_the_devices_inside() {
        let (g, seen) = engine(None);
        let (group, van, bike) = (
            GroupId::parse("g").unwrap(),
            DeviceId::parse("van").unwrap(),
            DeviceId::parse("bike").unwrap(),
        );
        let groups = [group.clone()];
        let id = g.create(&group, body()).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (m, s) in [(500.0, 0), (0.0, 1), (500.0, 2), (0.0, 3)] {
            g.published(&van, &groups, &at(m, s), 0);
        }
        // Older than the van's latest: ignored.
        g.published(&van, &groups, &at(500.0, 2), 0);
        g.published(&bike, &groups, &at(500.0, 0), 0);
        assert_eq!(
            kinds(&seen),
            ["geofence.enter", "geofence.exit", "geofence.enter"]
        );
        g.delete(&group, &id, 99_000).unwrap();
        let events = seen.lock().unwrap();
        let last = events.last().unwrap();
        assert_eq!((last.kind, last.ts), ("geofence.exit", 99_000));
        assert_eq!(last.reason.as_deref(), Some("deleted"));
        assert_eq!(last.device, van);
        assert_eq!(events.len(), 4, "the bike was outside");
        assert!(g.groups.is_empty(), "a group without rules leaves the map");
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupId::parse("g").unwrap();
        let van = DeviceId::parse("van").unwrap();
        let groups = [group.clone()];
        {
            let (g, seen) = engine(Some(dir.path()));
            g.create(&group, body()).unwrap();
            g.set_proximity(
                &group,
                ProximityRule {
                    enter_m: 10.0,
                    exit_m: 20.0,
                },
            )
            .unwrap();
            g.published(&van, &groups, &at(500.0, 0), 0);
            g.published(&van, &groups, &at(0.0, 1), 0);
            assert_eq!(kinds(&seen), ["geofence.enter"]);
        }
        let (g, seen) = engine(Some(dir.path()));
        assert_eq!(g.list("g")["geofences"].as_array().unwrap().len(), 1);
        assert!(g.proximity("g").is_some());
        g.published(&van, &groups, &at(0.0, 0), 0);
        g.published(&van, &groups, &at(5.0, 2), 0);
        assert!(
            kinds(&seen).is_empty(),
            "no second enter, the old fix skipped"
        );
        g.published(&van, &groups, &at(500.0, 3), 0);
        assert_eq!(kinds(&seen), ["geofence.exit"]);
    }

    /// A fix at `(lat, lon)` at `s` seconds.
    fn fix_at(lat: f64, lon: f64, s: i64) -> Fix {
        Fix::new(lat, lon, s * 1000)
    }

    #[test]
    fn an_exit_fires_far_from_every_fence() {
        let (g, seen) = engine(None);
        let group = GroupId::parse("g").unwrap();
        let van = DeviceId::parse("van").unwrap();
        let groups = [group.clone()];
        let fence: FenceBody = serde_json::from_value(serde_json::json!({
            "name": "depot",
            "geometry": {"type": "Polygon", "coordinates": [[
                [13.0, 52.5], [13.01, 52.5], [13.01, 52.51], [13.0, 52.51], [13.0, 52.5]]]},
            "debounce_s": 10, "hysteresis_m": 50,
        }))
        .unwrap();
        g.create(&group, fence).unwrap();
        g.published(&van, &groups, &fix_at(52.505, 13.005, 0), 0);
        // 50 km away, outside every box: the state inside is judged all the same.
        g.published(&van, &groups, &fix_at(52.95, 13.005, 100), 0);
        assert!(kinds(&seen).is_empty(), "the debounce holds it");
        g.published(&van, &groups, &fix_at(52.96, 13.005, 110), 0);
        assert_eq!(kinds(&seen), ["geofence.exit"]);
        assert_eq!(seen.lock().unwrap()[0].ts, 100_000, "the first fix outside");
        // Far outside now: no state kept, yet coming straight back is an enter.
        let rules = g.groups.get(&group).unwrap().clone();
        assert!(lock(&rules).devices[&van].members.is_empty());
        g.published(&van, &groups, &fix_at(52.505, 13.005, 200), 0);
        g.published(&van, &groups, &fix_at(52.505, 13.005, 210), 0);
        assert_eq!(kinds(&seen), ["geofence.exit", "geofence.enter"]);
    }

    #[test]
    fn a_fence_made_after_a_device_was_seen_takes_its_first_fix_silently() {
        let (g, seen) = engine(None);
        let group = GroupId::parse("g").unwrap();
        let van = DeviceId::parse("van").unwrap();
        let groups = [group.clone()];
        let mut other = body();
        other.geometry = shape::GeometryBody::Circle {
            center: vec![10.0, 10.0],
            radius_m: 100.0,
        };
        g.create(&group, other).unwrap();
        g.published(&van, &groups, &at(0.0, 0), 0);
        g.create(&group, body()).unwrap();
        g.published(&van, &groups, &at(0.0, 1), 0);
        assert!(kinds(&seen).is_empty(), "the first fix sets the side");
        g.published(&van, &groups, &at(500.0, 2), 0);
        assert_eq!(kinds(&seen), ["geofence.exit"]);
    }

    /// What an event says, without the fence's random id.
    fn summary(e: &Event) -> (String, &'static str, i64, String, String, String) {
        (
            e.device.as_str().to_owned(),
            e.kind,
            e.ts,
            e.geofence_name.clone().unwrap_or_default(),
            format!("{:?}", e.lat),
            format!("{:?}", e.lon),
        )
    }

    /// The spatial index judges exactly what a scan of every fence judges: random fences
    /// (circles and polygons, some for two devices only, made, replaced and deleted as devices
    /// move) and random walks with jumps, from a fixed seed.
    #[test]
    fn the_index_judges_like_a_scan_of_every_fence() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(15);
        let (indexed, by_index) = engine(None);
        let (mut scanning, by_scan) = engine(None);
        scanning.scan_all = true;
        let group = GroupId::parse("g").unwrap();
        let groups = [group.clone()];
        let devices: Vec<DeviceId> = (0..12)
            .map(|i| DeviceId::parse(&format!("d{i}")).unwrap())
            .collect();
        // About 4 km × 4 km around (52.5, 13.4).
        let (lat0, lon0, span) = (52.5, 13.4, 0.04);
        let fence_body = |rng: &mut StdRng, n: usize| -> FenceBody {
            let lat = lat0 + rng.random_range(0.0..span);
            let lon = lon0 + rng.random_range(0.0..span);
            let geometry = if rng.random_bool(0.5) {
                serde_json::json!({"type": "Circle", "center": [lon, lat],
                                   "radius_m": rng.random_range(20.0..400.0)})
            } else {
                let (h, w) = (
                    rng.random_range(0.001..0.006),
                    rng.random_range(0.001..0.006),
                );
                serde_json::json!({"type": "Polygon", "coordinates": [[
                    [lon, lat], [lon + w, lat], [lon + w * 0.5, lat + h], [lon, lat]]]})
            };
            let devices = rng.random_bool(0.2).then(|| vec!["d0", "d1"]);
            serde_json::from_value(serde_json::json!({
                "name": format!("f{n}"),
                "geometry": geometry,
                "hysteresis_m": rng.random_range(0.0..60.0),
                "debounce_s": if rng.random_bool(0.5) { 0 } else { 5 },
                "dwell_s": rng.random_bool(0.3).then_some(20),
                "devices": devices,
            }))
            .unwrap()
        };
        let mut ids: Vec<(String, String)> = Vec::new();
        let mut places: Vec<(f64, f64)> = devices
            .iter()
            .map(|_| (lat0 + span / 2.0, lon0 + span / 2.0))
            .collect();
        let mut s = 0;
        for round in 0..30 {
            // Fences come, change and go between the walks.
            for _ in 0..if round == 0 { 40 } else { 3 } {
                let body = fence_body(&mut rng, ids.len());
                let a = indexed.create(&group, body.clone()).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let b = scanning.create(&group, body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                ids.push((a, b));
            }
            if round % 4 == 3 && !ids.is_empty() {
                let i = rng.random_range(0..ids.len());
                let body = fence_body(&mut rng, 1000 + i);
                indexed.replace(&group, &ids[i].0, body.clone()).unwrap();
                scanning.replace(&group, &ids[i].1, body).unwrap();
            }
            if round % 5 == 4 && !ids.is_empty() {
                let (a, b) = ids.swap_remove(rng.random_range(0..ids.len()));
                indexed.delete(&group, &a, s * 1000).unwrap();
                scanning.delete(&group, &b, s * 1000).unwrap();
            }
            for _ in 0..200 {
                s += rng.random_range(1..4);
                let d = rng.random_range(0..devices.len());
                let (lat, lon) = &mut places[d];
                if rng.random_bool(0.05) {
                    // A jump anywhere (a phone switched on again, a sparse tracker).
                    *lat = lat0 + rng.random_range(-0.01..span + 0.01);
                    *lon = lon0 + rng.random_range(-0.01..span + 0.01);
                } else {
                    *lat += rng.random_range(-0.0008..0.0008);
                    *lon += rng.random_range(-0.0008..0.0008);
                }
                let fix = fix_at(*lat, *lon, s);
                indexed.published(&devices[d], &groups, &fix, 0);
                scanning.published(&devices[d], &groups, &fix, 0);
            }
        }
        let sorted = |events: &Mutex<Vec<Event>>| {
            let mut list: Vec<_> = events.lock().unwrap().iter().map(summary).collect();
            list.sort();
            list
        };
        let (a, b) = (sorted(&by_index), sorted(&by_scan));
        assert!(a.len() > 100, "the walk makes events: {}", a.len());
        for kind in ["geofence.enter", "geofence.exit", "geofence.dwell"] {
            assert!(a.iter().any(|e| e.1 == kind), "no {kind}");
        }
        assert_eq!(a, b);
        let judged = indexed.metrics.fences_judged.get();
        let scanned = scanning.metrics.fences_judged.get();
        assert_eq!(scanned, 0, "the scan does not count candidates");
        assert!(
            judged < 6000 * 20,
            "the index judged {judged} fences for 6000 fixes"
        );
    }
}
