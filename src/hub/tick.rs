//! The tick and the fan-out: taking a group's pending changes, encoding them once per codec,
//! and handing the same bytes to every subscriber.
//!
//! Two flushes take from a group's `Pending`: the tick takes every change and tells observers
//! the local part; the fan-out of remote changes takes only what other instances made, at
//! once. Both build their `Batch` the same way and share `fan_out`.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pending::{Batch, Changes};
use super::state::{Group, Hub, lock, lock_due, lock_list};
use crate::model::DeviceId;
use crate::outbox::{Prepared, Push};
use crate::protocol::{Codec, PositionRecord, ServerMessage};

impl Hub {
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
                    Some(at) => tokio::time::sleep_until(at).await,
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

    /// The tick of one group: every pending change goes out, and observers hear the local ones.
    fn flush_group(&self, g: &Arc<Group>) {
        let (batch, local, codecs) = {
            let mut guard = lock(g);
            let state = &mut *guard;
            state.queued = false;
            if state.pending.is_empty() {
                return;
            }
            state.last_flush = Some(Instant::now());
            let (all, local): (Changes, Changes) = state.pending.take();
            let batch = all.resolve(&state.positions);
            let local = batch.part(local);
            (batch, local, state.codecs)
        };
        if !local.is_empty() {
            for observer in self.observers() {
                observer.flushed(&g.id, &local.updates, &local.offline);
            }
        }
        self.fan_out(g, &batch, codecs);
    }

    /// Fans out the changes other instances made (see `mark_remote`), leaving this
    /// instance's own changes for its tick.
    fn flush_remote(&self) {
        let groups = std::mem::take(&mut *lock_list(&self.remote));
        for g in &groups {
            let (batch, codecs) = {
                let mut guard = lock(g);
                let state = &mut *guard;
                state.remote_queued = false;
                let (changed, offline) = state.pending.take_remote();
                (
                    Batch::new(&changed, offline, &state.positions),
                    state.codecs,
                )
            };
            if !batch.is_empty() {
                self.fan_out(g, &batch, codecs);
            }
        }
    }

    /// Encodes one batch per codec in use and hands it to every subscriber of `g`: written
    /// directly to the socket where possible, else queued (see [`crate::outbox`]).
    fn fan_out(&self, g: &Arc<Group>, batch: &Batch, codecs: [usize; Codec::ALL.len()]) {
        self.metrics.batches.inc();
        let records: Vec<PositionRecord<'_>> =
            batch.updates.iter().map(PositionRecord::from).collect();
        let offline: Vec<&str> = batch.offline.iter().map(DeviceId::as_str).collect();
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
        let outlets: Vec<_> = lock(g).subscribers.values().cloned().collect();
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
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, HubConfig};
    use crate::hub::state::{HubObserver, Outlet};
    use crate::metrics::Metrics;
    use crate::model::{Fix, GroupId, Position, now_ms};
    use crate::outbox::Outbox;

    fn group(name: &str) -> GroupId {
        GroupId::parse(name).unwrap()
    }

    fn config(tick_ms: u64) -> HubConfig {
        let mut config = Config::default().hub;
        config.tick_ms = tick_ms;
        config
    }

    /// Subscribes a JSON outlet to `name` and returns its queue.
    fn watch(hub: &Hub, name: &str) -> Arc<Outbox> {
        let outlet = Outlet {
            id: hub.next_outlet_id(),
            codec: Codec::Json,
            outbox: Arc::new(Outbox::new(8)),
        };
        hub.subscribe(&group(name), &outlet);
        outlet.outbox
    }

    /// Waits for the next frame queued for `outbox` and returns when it came.
    async fn next_frame(outbox: &Outbox) -> Instant {
        tokio::time::timeout(Duration::from_secs(10), outbox.ready())
            .await
            .expect("a batch in time");
        outbox.pop().expect("a queued frame");
        Instant::now()
    }

    /// Publishes fixes of one device with rising fix times.
    struct Device {
        id: DeviceId,
        ts: i64,
    }

    impl Device {
        fn new() -> Self {
            Device {
                id: DeviceId::parse("d").unwrap(),
                ts: now_ms(),
            }
        }

        fn publish(&mut self, hub: &Hub, name: &str) {
            self.ts += 1;
            hub.publish(
                &self.id,
                &[group(name)],
                &Fix::new(1.0, 2.0, self.ts),
                self.ts,
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_group_keeps_its_own_tick() {
        let hub = Arc::new(Hub::new(config(400), Arc::new(Metrics::new())));
        let tick = hub.config().tick();
        let stop = CancellationToken::new();
        let (a, b) = (watch(&hub, "a"), watch(&hub, "b"));
        tokio::spawn(hub.clone().run_ticker(stop.clone()));
        let mut device = Device::new();

        // Both groups are quiet: a first fix goes out at once, a second waits a tick.
        let start = Instant::now();
        device.publish(&hub, "a");
        let a_first = next_frame(&a).await;
        assert_eq!(a_first, start, "a quiet group goes out at once");
        device.publish(&hub, "a");
        tokio::time::sleep(tick / 2).await;
        device.publish(&hub, "b");
        let b_first = next_frame(&b).await;
        assert_eq!(b_first, start + tick / 2);
        device.publish(&hub, "b");
        let a_second = next_frame(&a).await;
        let b_second = next_frame(&b).await;
        assert_eq!(a_second - a_first, tick, "a busy group waits a tick");
        // With one tick for all groups, b's second batch would have gone out with a's.
        assert_eq!(
            b_second - b_first,
            tick,
            "b's tick counts from b's own flush"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_quiet_for_a_tick_goes_out_at_once_again() {
        let hub = Arc::new(Hub::new(config(100), Arc::new(Metrics::new())));
        let tick = hub.config().tick();
        let stop = CancellationToken::new();
        let a = watch(&hub, "a");
        tokio::spawn(hub.clone().run_ticker(stop.clone()));
        let mut device = Device::new();

        device.publish(&hub, "a");
        let first = next_frame(&a).await;
        // Quiet for three ticks: the next fix sees no batching delay.
        tokio::time::sleep(tick * 3).await;
        device.publish(&hub, "a");
        assert_eq!(next_frame(&a).await, first + tick * 3);
        // Quiet for less than a tick: it waits for the rest of the tick.
        tokio::time::sleep(tick / 4).await;
        device.publish(&hub, "a");
        assert_eq!(next_frame(&a).await, first + tick * 4);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn fixes_within_a_tick_coalesce_into_one_batch_with_the_latest() {
        let hub = Arc::new(Hub::new(config(100), Arc::new(Metrics::new())));
        let stop = CancellationToken::new();
        let a = watch(&hub, "a");
        tokio::spawn(hub.clone().run_ticker(stop.clone()));
        let mut device = Device::new();

        device.publish(&hub, "a");
        next_frame(&a).await;
        for _ in 0..5 {
            device.publish(&hub, "a");
        }
        tokio::time::timeout(Duration::from_secs(1), a.ready())
            .await
            .expect("a batch in time");
        let frame = a.pop().expect("a queued frame");
        assert!(a.pop().is_none(), "one batch for the tick");
        let batch: serde_json::Value = serde_json::from_slice(frame.as_bytes()).unwrap();
        assert_eq!(batch["updates"].as_array().map(Vec::len), Some(1));
        assert_eq!(batch["updates"][0]["ts"], device.ts);
        stop.cancel();
    }

    /// Records what observers hear.
    #[derive(Debug, Default)]
    struct Recorder {
        flushed: Mutex<Vec<(usize, usize)>>,
    }

    impl HubObserver for Recorder {
        fn flushed(&self, _group: &GroupId, updates: &[Position], offline: &[DeviceId]) {
            let mut flushed = self.flushed.lock().unwrap();
            flushed.push((updates.len(), offline.len()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flushing_at_shutdown_sends_what_waits_for_the_tick() {
        let hub = Arc::new(Hub::new(config(10_000), Arc::new(Metrics::new())));
        let recorder = Arc::new(Recorder::default());
        hub.add_observer(recorder.clone());
        let stop = CancellationToken::new();
        let a = watch(&hub, "a");
        let ticker = tokio::spawn(hub.clone().run_ticker(stop.clone()));
        let mut device = Device::new();
        device.publish(&hub, "a");
        next_frame(&a).await;
        device.publish(&hub, "a");
        hub.device_connected(&device.id, &[group("a")]);
        hub.device_disconnected(&device.id, &[group("a")]);
        stop.cancel();
        ticker.await.unwrap();
        assert!(a.pop().is_none(), "waiting for a tick that never comes");

        hub.flush_pending();
        let frame = a.pop().expect("the pending batch");
        let batch: serde_json::Value = serde_json::from_slice(frame.as_bytes()).unwrap();
        assert_eq!(batch["updates"][0]["online"], false);
        assert_eq!(batch["offline"], serde_json::json!(["d"]));
        assert_eq!(*recorder.flushed.lock().unwrap(), [(1, 0), (1, 1)]);
    }
}
