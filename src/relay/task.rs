//! The relay task: connects, keeps subscriptions in line with local interest, writes local
//! changes and heartbeats, trims retention, and recovers from outages.
//!
//! It is one loop over one connection. Each wake-up does one thing to completion (a write, a
//! subscription change, a heartbeat, a trim), so requests never interleave and at most one
//! pipeline is in flight: while it is, new flushes gather in the queue and the next write
//! takes them all (up to [`MAX_FLUSHES_PER_WRITE`]), which is what batches writes under load.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec;
use super::error::RelayError;
use super::link::{self, GROUPS_PER_REQUEST, GroupWrite, Link};
use super::local::Local;
use super::state::{Flush, Relay, settle};
use crate::model::{DeviceId, GroupId, Position, now_ms};

/// Most queued flushes folded into one write pipeline.
const MAX_FLUSHES_PER_WRITE: usize = 1024;

/// First pause before reconnecting; doubles up to the configured cap.
const BACKOFF_START: Duration = Duration::from_millis(100);

impl Relay {
    /// Runs the relay until `shutdown`: connects, relays, and recovers from outages. Returns at
    /// once if called twice.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(events) = events {
            run(self, events, shutdown).await;
        }
    }
}

/// Runs the relay of `relay` until `shutdown`.
async fn run(relay: Arc<Relay>, events: mpsc::Receiver<Flush>, shutdown: CancellationToken) {
    let backoff = Backoff::new(relay.settings.backoff_max);
    let mut worker = Worker {
        relay,
        events,
        local: Local::default(),
        backoff,
        down_since: None,
        connected_before: false,
        subscribed: HashSet::new(),
        expiry: HashMap::new(),
    };
    worker.run(shutdown).await;
}

/// How a connected session ended.
enum Ended {
    Shutdown,
    Lost(RelayError),
}

struct Worker {
    relay: Arc<Relay>,
    events: mpsc::Receiver<Flush>,
    /// What this instance is the source of.
    local: Local,
    backoff: Backoff,
    /// When Redis became unavailable, while it is (a failure is logged once per outage).
    down_since: Option<Instant>,
    /// Whether a connection was ever made: the next one is a reconnection.
    connected_before: bool,
    /// Group channels subscribed on the current connection.
    subscribed: HashSet<GroupId>,
    /// When each group's key expiry was last refreshed on the current connection.
    expiry: HashMap<GroupId, Instant>,
}

/// Changes of one group gathered for one write.
#[derive(Debug, Default)]
struct Changes {
    updated: HashSet<DeviceId>,
    offline: HashSet<DeviceId>,
}

impl Worker {
    async fn run(&mut self, shutdown: CancellationToken) {
        loop {
            let error = match self.connect(&shutdown).await {
                None => return,
                Some(Ok(link)) => match self.serve(link, &shutdown).await {
                    Ended::Shutdown => return,
                    Ended::Lost(error) => error,
                },
                Some(Err(error)) => error,
            };
            self.went_down(&error);
            if !self.pause(&shutdown).await {
                return;
            }
        }
    }

    /// One connection attempt, keeping local state current meanwhile. `None` on shutdown.
    async fn connect(&mut self, shutdown: &CancellationToken) -> Option<Result<Link, RelayError>> {
        let relay = self.relay.clone();
        let connecting = Link::connect(
            &relay.target,
            relay.settings.timeout,
            relay.inbound.clone(),
            relay.metrics.clone(),
        );
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                attempt = &mut connecting => return Some(attempt),
                Some(flush) = self.events.recv() => self.keep(flush),
            }
        }
    }

    /// Waits out the backoff, keeping local state current meanwhile. False on shutdown.
    async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(self.backoff.next_delay());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = &mut sleep => return true,
                Some(flush) = self.events.recv() => self.keep(flush),
            }
        }
    }

    /// Records a flush while Redis is unavailable; it goes out with the republish.
    fn keep(&mut self, flush: Flush) {
        self.local
            .apply(&flush.group, &flush.updates, &flush.offline);
    }

    async fn serve(&mut self, mut link: Link, shutdown: &CancellationToken) -> Ended {
        self.came_up(&link);
        if let Err(error) = self.resume(&mut link).await {
            return Ended::Lost(error);
        }
        let settings = self.relay.settings.clone();
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + settings.heartbeat, settings.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut maintenance = tokio::time::interval(settings.maintenance);
        maintenance.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let relay = self.relay.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Best effort: what is queued still goes out, within the timeout.
                    if let Err(error) = self.write(&mut link, None, false).await {
                        debug!(%error, "could not write the last changes to Redis");
                    }
                    return Ended::Shutdown;
                }
                _ = link.lost() => Err(RelayError::Lost),
                // Timers before the queue: a queue that never empties must not starve the
                // heartbeat (devices would go stale elsewhere) or the trim.
                _ = heartbeat.tick() => self.heartbeat(&mut link).await,
                _ = maintenance.tick() => self.maintain(&mut link).await,
                _ = relay.signals.wake.notified() => self.reconcile(&mut link, false).await,
                Some(flush) = self.events.recv() => self.write(&mut link, Some(flush), false).await,
            };
            if let Err(error) = step {
                return Ended::Lost(error);
            }
        }
    }

    /// After connecting: subscribe and load every group with local interest, then republish
    /// local state and vouch for local sockets, so every instance converges.
    async fn resume(&mut self, link: &mut Link) -> Result<(), RelayError> {
        self.reconcile(link, true).await?;
        let stale_before = now_ms() - self.relay.settings.stale_ms;
        let groups = self.local.republish(&self.relay.hub, stale_before);
        for chunk in groups.chunks(GROUPS_PER_REQUEST) {
            let mut requests = link.requests();
            let publish = link.publish_command();
            let mut published = (0, 0);
            for (group, positions) in chunk {
                let refs: Vec<&Position> = positions.iter().collect();
                let write = GroupWrite {
                    records: refs.iter().map(|p| (*p, codec::encode_record(p))).collect(),
                    vouched: refs.iter().map(|p| (p.device.as_str(), p.rts)).collect(),
                    messages: codec::encode_messages(&self.relay.instance, &refs, &[], &[]),
                    ttl_ms: self.ttl_due(group),
                };
                published.0 += write.messages.len() as u64;
                published.1 += write.messages.iter().map(|m| m.len() as u64).sum::<u64>();
                link::write_group(&mut requests, publish, &self.relay.names, group, &write);
            }
            link.send(requests).await?;
            self.count_published(published);
        }
        self.write(link, None, true).await
    }

    /// Writes queued flushes (starting with `first`), groups marked for resync, and with
    /// `heartbeat` the presence of local sockets: one pipeline, one message per group.
    async fn write(
        &mut self,
        link: &mut Link,
        first: Option<Flush>,
        heartbeat: bool,
    ) -> Result<(), RelayError> {
        let mut changes: HashMap<GroupId, Changes> = HashMap::new();
        let mut next = first;
        for _ in 0..MAX_FLUSHES_PER_WRITE {
            let flush = match next.take() {
                Some(flush) => flush,
                None => match self.events.try_recv() {
                    Ok(flush) => flush,
                    Err(_) => break,
                },
            };
            self.local
                .apply(&flush.group, &flush.updates, &flush.offline);
            let c = changes.entry(flush.group).or_default();
            for p in flush.updates {
                c.offline.remove(&p.device);
                c.updated.insert(p.device);
            }
            c.offline.extend(flush.offline);
        }
        let hub = self.relay.hub.clone();
        for group in self.relay.signals.take_resync() {
            // A flush of this group was dropped: take what the hub holds of local sockets.
            let c = changes.entry(group.clone()).or_default();
            for p in hub.positions(group.as_str()) {
                if hub.has_socket_in(p.device.as_str(), group.as_str())
                    && self.local.upsert(&group, &p)
                {
                    c.updated.insert(p.device);
                }
            }
        }
        let connected: HashMap<GroupId, Vec<DeviceId>> = if heartbeat {
            self.local.connected(&hub).into_iter().collect()
        } else {
            HashMap::new()
        };
        for group in connected.keys() {
            changes.entry(group.clone()).or_default();
        }
        changes.retain(|g, c| {
            !c.updated.is_empty() || !c.offline.is_empty() || connected.contains_key(g)
        });
        if changes.is_empty() {
            if heartbeat {
                // Nothing to say, but a silent dead connection must still be noticed.
                let mut ping = link.requests();
                ping.group().cmd("PING");
                link.send(ping).await?;
            }
            return Ok(());
        }

        let now = now_ms();
        let mut requests = link.requests();
        let publish = link.publish_command();
        let mut published = (0, 0);
        let no_ids = Vec::new();
        for (group, c) in &changes {
            let ttl_ms = self.ttl_due(group);
            let updates: Vec<&Position> = c
                .updated
                .iter()
                .filter_map(|d| self.local.get(group, d))
                .collect();
            let offline: Vec<DeviceId> = c
                .offline
                .iter()
                .filter(|d| self.local.get(group, d).is_none_or(|p| !p.online))
                .cloned()
                .collect();
            let vouched_now: Vec<DeviceId> = connected
                .get(group)
                .unwrap_or(&no_ids)
                .iter()
                .filter(|d| !c.updated.contains(*d))
                .cloned()
                .collect();
            let stored: Vec<&Position> = c
                .updated
                .iter()
                .chain(&c.offline)
                .filter_map(|d| self.local.get(group, d))
                .collect();
            let mut vouched: Vec<(&str, i64)> =
                stored.iter().map(|p| (p.device.as_str(), now)).collect();
            vouched.extend(vouched_now.iter().map(|d| (d.as_str(), now)));
            let write = GroupWrite {
                records: stored
                    .iter()
                    .map(|p| (*p, codec::encode_record(p)))
                    .collect(),
                vouched,
                messages: codec::encode_messages(
                    &self.relay.instance,
                    &updates,
                    &offline,
                    &vouched_now,
                ),
                ttl_ms,
            };
            published.0 += write.messages.len() as u64;
            published.1 += write.messages.iter().map(|m| m.len() as u64).sum::<u64>();
            link::write_group(&mut requests, publish, &self.relay.names, group, &write);
        }
        link.send(requests).await?;
        self.count_published(published);
        Ok(())
    }

    /// Whether `group`'s key expiry is due for a refresh in this write: once per maintenance
    /// interval per connection (the trim refreshes it too).
    fn ttl_due(&mut self, group: &GroupId) -> Option<i64> {
        let interval = self.relay.settings.maintenance;
        match self.expiry.get(group) {
            Some(at) if at.elapsed() < interval => None,
            _ => {
                self.expiry.insert(group.clone(), Instant::now());
                Some(self.relay.settings.key_ttl_ms())
            }
        }
    }

    fn count_published(&self, (messages, bytes): (u64, u64)) {
        let relay = &self.relay.metrics.relay;
        relay.published_messages.inc_by(messages);
        relay.published_bytes.inc_by(bytes);
    }

    async fn heartbeat(&mut self, link: &mut Link) -> Result<(), RelayError> {
        self.reconcile(link, true).await?;
        self.write(link, None, true).await
    }

    /// Brings subscriptions in line with local interest: groups with a local subscriber or a
    /// waiting new one are subscribed (and loaded), the others unsubscribed. `full` checks
    /// every group (each heartbeat, and after connecting) instead of those that changed.
    async fn reconcile(&mut self, link: &mut Link, full: bool) -> Result<(), RelayError> {
        let signals = self.relay.signals.clone();
        let (changed, waiting) = signals.take_changes();
        if !full && changed.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        let watched: HashSet<GroupId> = self.relay.hub.watched_groups().into_iter().collect();
        let candidates: HashSet<GroupId> = if full {
            let mut all = self.subscribed.clone();
            all.extend(watched.iter().cloned());
            all.extend(waiting.iter().cloned());
            all
        } else {
            changed.union(&waiting).cloned().collect()
        };
        let mut join = Vec::new();
        let mut leave = Vec::new();
        for group in candidates {
            let wanted = watched.contains(&group) || waiting.contains(&group);
            match (wanted, self.subscribed.contains(&group)) {
                (true, false) => join.push(group),
                (false, true) => leave.push(group),
                (true, true) => signals.mark_live(&group),
                (false, false) => {}
            }
        }
        for chunk in leave.chunks(GROUPS_PER_REQUEST) {
            for group in chunk {
                signals.unmark_live(group);
                self.subscribed.remove(group);
            }
            link.unsubscribe(&self.channels(chunk)).await?;
        }
        for chunk in join.chunks(GROUPS_PER_REQUEST) {
            self.join(link, chunk).await?;
        }
        self.relay
            .metrics
            .relay
            .subscribed_groups
            .set(self.subscribed.len() as i64);
        Ok(())
    }

    /// Subscribes to `groups`, then loads their shared state and merges it into the hub. A
    /// message that arrives in between is applied as it comes; the merge keeps the newer fix
    /// of each device, so nothing falls into the gap.
    async fn join(&mut self, link: &mut Link, groups: &[GroupId]) -> Result<(), RelayError> {
        let relay = self.relay.clone();
        relay.inbound.begin_loading(groups);
        link.subscribe(&self.channels(groups)).await?;
        self.subscribed.extend(groups.iter().cloned());
        let loaded = link.load(&relay.names, groups).await?;
        let now = now_ms();
        for (group, rows) in groups.iter().zip(loaded) {
            let news = relay.inbound.end_loading(group);
            // This instance is the source of its own devices: what it holds is newer.
            let rows: link::Loaded = rows
                .into_iter()
                .filter(|(p, _)| {
                    self.local
                        .get(group, &p.device)
                        .is_none_or(|mine| (mine.fix.ts, mine.rts) < (p.fix.ts, p.rts))
                })
                .collect();
            let (positions, vouched) = settle(rows, &news, now, &relay.settings);
            if !positions.is_empty() {
                relay.hub.merge_remote(group, &positions, &[]);
            }
            if !vouched.is_empty() {
                relay.hub.remote_seen(group, &vouched);
            }
            relay.signals.mark_live(group);
        }
        Ok(())
    }

    fn channels(&self, groups: &[GroupId]) -> Vec<String> {
        groups
            .iter()
            .map(|g| self.relay.names.channel(g.as_str()))
            .collect()
    }

    /// Trims retention in Redis for the groups this instance writes to (and refreshes their
    /// keys' expiry), and prunes local state the same way.
    async fn maintain(&mut self, link: &mut Link) -> Result<(), RelayError> {
        let settings = &self.relay.settings;
        let now = now_ms();
        let cutoff = now - settings.retention_ms;
        let ttl = settings.key_ttl_ms();
        self.local.prune(&self.relay.hub, cutoff);
        let groups: Vec<GroupId> = self.local.groups().cloned().collect();
        let known: HashSet<&GroupId> = groups.iter().collect();
        self.expiry.retain(|g, _| known.contains(g));
        for chunk in groups.chunks(GROUPS_PER_REQUEST) {
            let mut requests = link.requests();
            for group in chunk {
                link::trim_group(&mut requests, &self.relay.names, group, cutoff, ttl);
            }
            link.send(requests).await?;
            for group in chunk {
                self.expiry.insert(group.clone(), Instant::now());
            }
        }
        Ok(())
    }

    fn came_up(&mut self, link: &Link) {
        self.backoff.reset();
        self.relay.signals.set_up(link.connection());
        let metrics = &self.relay.metrics.relay;
        metrics.up.set(1);
        if self.connected_before {
            metrics.reconnects.inc();
        }
        self.connected_before = true;
        match self.down_since.take() {
            Some(since) => info!(
                down_ms = since.elapsed().as_millis() as u64,
                "Redis reachable again: resubscribing and republishing local state"
            ),
            None => info!(instance = %self.relay.instance, "connected to Redis"),
        }
    }

    fn went_down(&mut self, error: &RelayError) {
        self.subscribed.clear();
        self.expiry.clear();
        self.relay.inbound.abandon_loading();
        self.relay.signals.set_down();
        let metrics = &self.relay.metrics.relay;
        metrics.up.set(0);
        metrics.subscribed_groups.set(0);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            warn!(%error, "Redis unavailable: serving local clients only, reconnecting with backoff");
        } else {
            debug!(%error, "Redis still unavailable");
        }
    }
}

/// Capped exponential backoff with jitter: each pause is between half and all of a base that
/// starts at [`BACKOFF_START`] and doubles up to the cap, so restarted instances spread out.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            base: BACKOFF_START.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.base = BACKOFF_START.min(self.max);
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        base / 2 + base.mul_f64(rand::random::<f64>() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(1000));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= BACKOFF_START);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1000)));
        assert!(delays[9] >= Duration::from_millis(500), "reaches the cap");
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_START);
    }
}
