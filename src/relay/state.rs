//! The relay's shared state: the hub observer that feeds the task, the signals between them,
//! the settings, and the reads that new subscribers and REST routes make.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tracing::debug;

use super::error::RelayError;
use super::inbound::Inbound;
use super::keys::Names;
use super::link;
use crate::config::Config;
use crate::hub::{Hub, HubObserver};
use crate::metrics::Metrics;
use crate::model::{DeviceId, GroupId, Position, now_ms};

/// Where this instance stands with Redis, for `/readyz`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RedisHealth {
    /// The first connection attempt has not finished yet.
    #[default]
    Connecting,
    /// Connected: fan-out and state are shared with the other instances.
    Up,
    /// Unreachable: local clients are served, other instances are not seen.
    Down,
}

/// Timing and bounds of the relay, derived from the configuration.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// Bound on connecting and on every request; also how long a new subscriber waits.
    pub(super) timeout: Duration,
    /// Cap of the reconnection backoff.
    pub(super) backoff_max: Duration,
    /// The hub's stale window, ms.
    pub(super) stale_ms: i64,
    /// The hub's retention window, ms.
    pub(super) retention_ms: i64,
    /// How often this instance vouches for its connected devices: a quarter of the stale
    /// window, within 250 ms-30 s, so three heartbeats can be lost before a device goes stale.
    pub(super) heartbeat: Duration,
    /// How often retention is trimmed in Redis and key expiry refreshed: a quarter of the
    /// retention window, within 1-60 s.
    pub(super) maintenance: Duration,
    /// Capacity of the flush queue.
    pub(super) queue: usize,
}

impl Settings {
    pub(super) fn new(config: &Config) -> Self {
        let stale = Duration::from_secs(config.hub.stale_secs);
        let retention = Duration::from_secs(config.hub.retention_secs);
        Settings {
            timeout: config.redis.timeout(),
            backoff_max: config.redis.backoff_max(),
            stale_ms: stale.as_millis() as i64,
            retention_ms: retention.as_millis() as i64,
            heartbeat: (stale / 4).clamp(Duration::from_millis(250), Duration::from_secs(30)),
            maintenance: (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            queue: usize::try_from(config.redis.redis_queue).unwrap_or(usize::MAX),
        }
    }

    /// Expiry of a group's keys: retention plus two maintenance rounds, so keys written by a
    /// live instance never lapse between refreshes, and those of a dead one go eventually.
    pub(super) fn key_ttl_ms(&self) -> i64 {
        self.retention_ms + 2 * self.maintenance.as_millis() as i64
    }
}

/// One group's local changes of one flush, queued for the relay task.
#[derive(Debug)]
pub(super) struct Flush {
    pub(super) group: GroupId,
    pub(super) updates: Vec<Position>,
    pub(super) offline: Vec<DeviceId>,
}

/// What the relay task and the rest of the server tell each other.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub(super) health: RedisHealth,
    /// Groups subscribed and loaded on the current connection: their hub state is complete.
    pub(super) live: HashSet<GroupId>,
    /// New subscribers waiting for a group to become live.
    pub(super) waiters: HashMap<GroupId, watch::Sender<bool>>,
    /// Groups whose local interest changed since the task last looked.
    pub(super) changed: HashSet<GroupId>,
    /// Groups with a dropped flush, to rewrite from the hub.
    pub(super) resync: HashSet<GroupId>,
    /// The connection while up, for reads made outside the task.
    pub(super) conn: Option<link::Conn>,
}

#[derive(Debug, Default)]
pub(super) struct Signals {
    pub(super) book: Mutex<Book>,
    /// Wakes the relay task: interest changed or someone waits for a group.
    pub(super) wake: Notify,
}

impl Signals {
    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        // Only map operations run under this lock; a poisoned one is still consistent.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the groups whose interest changed, and lists those with waiters.
    pub(super) fn take_changes(&self) -> (HashSet<GroupId>, HashSet<GroupId>) {
        let mut book = self.book();
        let changed = std::mem::take(&mut book.changed);
        (changed, book.waiters.keys().cloned().collect())
    }

    pub(super) fn take_resync(&self) -> Vec<GroupId> {
        self.book().resync.drain().collect()
    }

    /// `group`'s state is complete: release whoever waits for it.
    pub(super) fn mark_live(&self, group: &GroupId) {
        let mut book = self.book();
        book.live.insert(group.clone());
        if let Some(waiter) = book.waiters.remove(group) {
            waiter.send_replace(true);
        }
    }

    pub(super) fn unmark_live(&self, group: &GroupId) {
        self.book().live.remove(group);
    }

    pub(super) fn set_up(&self, conn: link::Conn) {
        let mut book = self.book();
        book.health = RedisHealth::Up;
        book.conn = Some(conn);
    }

    /// Redis is gone: nothing is live, and nobody waits for it.
    pub(super) fn set_down(&self) {
        let mut book = self.book();
        book.health = RedisHealth::Down;
        book.conn = None;
        book.live.clear();
        for (_, waiter) in book.waiters.drain() {
            waiter.send_replace(true);
        }
    }
}

/// The hub observer: copies local changes into the relay's queue, never blocking.
#[derive(Debug)]
struct Tap {
    tx: mpsc::Sender<Flush>,
    signals: Arc<Signals>,
    metrics: Arc<Metrics>,
}

impl HubObserver for Tap {
    fn flushed(&self, group: &GroupId, updates: &[Position], offline: &[DeviceId]) {
        let flush = Flush {
            group: group.clone(),
            updates: updates.to_vec(),
            offline: offline.to_vec(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(flush) {
            self.metrics.relay.dropped.inc();
            self.signals.book().resync.insert(group.clone());
        }
    }

    fn interest(&self, group: &GroupId, _watched: bool) {
        self.signals.book().changed.insert(group.clone());
        self.signals.wake.notify_one();
    }
}

/// The relay of one instance. Created by [`Relay::from_config`], driven by [`Relay::run`].
#[derive(Debug)]
pub(crate) struct Relay {
    /// Random per process start; tags every message this instance publishes.
    pub(super) instance: String,
    pub(super) names: Names,
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: Settings,
    pub(super) target: link::Target,
    pub(super) inbound: Arc<Inbound>,
    pub(super) signals: Arc<Signals>,
    /// The queue's receiving end, taken by [`Relay::run`].
    pub(super) events: Mutex<Option<mpsc::Receiver<Flush>>>,
}

impl Relay {
    /// The relay for `config` (none without `--redis-url`), registered as an observer of
    /// `hub`. Nothing connects until [`Relay::run`].
    pub(crate) fn from_config(
        config: &Config,
        hub: &Arc<Hub>,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Arc<Relay>>, RelayError> {
        let Some(url) = config.redis_url.as_deref() else {
            return Ok(None);
        };
        let target =
            link::Target::parse(url, config.redis.redis_cluster).map_err(RelayError::Url)?;
        let settings = Settings::new(config);
        let instance = format!("{:016x}", rand::random::<u64>());
        let names = Names::new(&config.redis.redis_prefix);
        let signals = Arc::new(Signals::default());
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        hub.add_observer(Arc::new(Tap {
            tx,
            signals: signals.clone(),
            metrics: metrics.clone(),
        }));
        Ok(Some(Arc::new(Relay {
            inbound: Arc::new(Inbound::new(
                hub.clone(),
                metrics.clone(),
                names.clone(),
                instance.clone(),
            )),
            instance,
            names,
            hub: hub.clone(),
            metrics: metrics.clone(),
            settings,
            target,
            signals,
            events: Mutex::new(Some(rx)),
        })))
    }

    /// Where the instance stands with Redis.
    pub(crate) fn health(&self) -> RedisHealth {
        self.signals.book().health
    }

    /// Waits until the hub holds the shared state of every one of `groups`, so a new
    /// subscriber's snapshots include devices of other instances. All groups are requested at
    /// once and waited for under one deadline (the Redis timeout). Returns at once for groups
    /// already live, and when Redis is down.
    pub(crate) async fn ready(&self, groups: &[GroupId]) {
        let waits: Vec<watch::Receiver<bool>> = {
            let mut book = self.signals.book();
            if book.health == RedisHealth::Down {
                return;
            }
            let mut waits = Vec::new();
            for group in groups {
                if book.live.contains(group) {
                    continue;
                }
                waits.push(
                    book.waiters
                        .entry(group.clone())
                        .or_insert_with(|| watch::channel(false).0)
                        .subscribe(),
                );
                book.changed.insert(group.clone());
            }
            waits
        };
        if waits.is_empty() {
            return;
        }
        self.signals.wake.notify_one();
        let all = async {
            for mut done in waits {
                let _ = done.wait_for(|ready| *ready).await;
            }
        };
        let _ = tokio::time::timeout(self.settings.timeout, all).await;
    }

    /// The positions of `group` across instances: the hub's when the group is live here (or
    /// Redis is down), otherwise the hub's merged with the shared state read from Redis.
    pub(crate) async fn positions(&self, group: &str) -> Vec<Position> {
        let here = self.hub.positions(group);
        let conn = {
            let book = self.signals.book();
            if book.health != RedisHealth::Up || book.live.contains(group) {
                return here;
            }
            book.conn.clone()
        };
        let (Some(mut conn), Ok(group)) = (conn, GroupId::parse(group)) else {
            return here;
        };
        let loaded = link::load(
            &mut conn,
            &self.names,
            std::slice::from_ref(&group),
            self.settings.timeout,
            &self.metrics,
        )
        .await;
        match loaded {
            Ok(mut loaded) => {
                let rows = loaded.pop().unwrap_or_default();
                let (shared, _) = settle(rows, &HashMap::new(), now_ms(), &self.settings);
                merge_views(here, shared)
            }
            Err(error) => {
                debug!(%group, %error, "could not read a group's shared state");
                here
            }
        }
    }
}

/// Turns a group's loaded rows into positions to merge and devices to vouch for. Rows past
/// retention are dropped; a device is online when its record says so and someone vouched for
/// it within the stale window; presence news noted during the load overrides both.
pub(super) fn settle(
    rows: link::Loaded,
    news: &HashMap<DeviceId, bool>,
    now: i64,
    settings: &Settings,
) -> (Vec<Position>, Vec<(DeviceId, i64)>) {
    let mut positions = Vec::with_capacity(rows.len());
    let mut vouched = Vec::new();
    for (mut p, seen) in rows {
        if seen < now - settings.retention_ms {
            continue;
        }
        p.online = match news.get(&p.device) {
            Some(online) => *online,
            None => p.online && seen >= now - settings.stale_ms,
        };
        if p.online {
            vouched.push((p.device.clone(), seen.max(p.rts)));
        }
        positions.push(p);
    }
    (positions, vouched)
}

/// The union of this instance's view and the shared one, the newer fix of each device winning
/// (this instance's on a tie: it knows about its own sockets).
fn merge_views(here: Vec<Position>, shared: Vec<Position>) -> Vec<Position> {
    let mut by_device: HashMap<DeviceId, Position> =
        shared.into_iter().map(|p| (p.device.clone(), p)).collect();
    for p in here {
        match by_device.get(&p.device) {
            Some(other) if (other.fix.ts, other.rts) > (p.fix.ts, p.rts) => {}
            _ => {
                by_device.insert(p.device.clone(), p);
            }
        }
    }
    by_device.into_values().collect()
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

    fn settings() -> Settings {
        let mut config = Config::default();
        config.hub.stale_secs = 10;
        config.hub.retention_secs = 100;
        Settings::new(&config)
    }

    #[test]
    fn loaded_presence_needs_a_recent_voucher() {
        let now = 1_000_000;
        let rows = vec![
            (at("fresh", now - 50_000, true), now - 1_000),
            (at("silent", now - 50_000, true), now - 20_000),
            (at("gone", now - 5_000, false), now - 5_000),
            (at("expired", now - 200_000, true), now - 150_000),
            (at("noted", now - 1_000, true), now - 1_000),
        ];
        let news = HashMap::from([(DeviceId::parse("noted").unwrap(), false)]);
        let (positions, vouched) = settle(rows, &news, now, &settings());
        let online = |id: &str| {
            positions
                .iter()
                .find(|p| p.device.as_str() == id)
                .map(|p| p.online)
        };
        assert_eq!(online("fresh"), Some(true), "vouched for a second ago");
        assert_eq!(
            online("silent"),
            Some(false),
            "nobody vouched within the stale window"
        );
        assert_eq!(online("gone"), Some(false));
        assert_eq!(online("expired"), None, "past retention");
        assert_eq!(online("noted"), Some(false), "news during the load wins");
        assert_eq!(
            vouched,
            vec![(DeviceId::parse("fresh").unwrap(), now - 1_000)]
        );
    }

    #[test]
    fn the_newer_fix_wins_and_ties_stay_local() {
        let here = vec![at("a", 10, true), at("b", 30, false)];
        let shared = vec![at("a", 20, true), at("b", 30, true), at("c", 5, true)];
        let mut merged = merge_views(here, shared);
        merged.sort_by(|x, y| x.device.cmp(&y.device));
        let summary: Vec<(&str, i64, bool)> = merged
            .iter()
            .map(|p| (p.device.as_str(), p.fix.ts, p.online))
            .collect();
        assert_eq!(summary, [("a", 20, true), ("b", 30, false), ("c", 5, true)]);
    }

    #[test]
    fn timing_follows_the_hub_windows() {
        let s = settings();
        assert_eq!(s.heartbeat, Duration::from_millis(2_500));
        assert_eq!(s.maintenance, Duration::from_secs(25));
        assert_eq!(s.key_ttl_ms(), 150_000);
        let defaults = Settings::new(&Config::default());
        assert_eq!(defaults.heartbeat, Duration::from_secs(30));
        assert_eq!(defaults.maintenance, Duration::from_secs(60));
    }
}
