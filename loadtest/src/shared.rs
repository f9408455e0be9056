//! The state every connection task of one worker shares ([`WorkerShared`]): the plan, the
//! counters and latency histograms, the phase the tasks follow (`Phase`), each device's last
//! sent fix time, and every subscriber's view for the latest-state check.
//!
//! It sits below both the client loops, which write to it, and the worker, which creates it,
//! moves it through the phases and reads it out.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::timeout;

use crate::config::Plan;
use crate::connect::ConnectFailure;
use crate::latest::{EXCLUDED, Layout, View};
use crate::metrics::{Counters, Latencies, Sample};

/// What every connection task of a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connecting and sending.
    Running,
    /// Devices have stopped sending; connections stay open and keep reading.
    Stopping,
    /// Close every connection.
    Closing,
}

/// State shared by all connection tasks of one worker.
#[derive(Debug)]
pub struct WorkerShared {
    /// The run plan.
    pub(crate) plan: Arc<Plan>,
    /// How devices map to groups.
    pub layout: Layout,
    /// `{run_id}-d`: the id prefix of this run's devices.
    pub(crate) device_prefix: String,
    /// Counters.
    pub counters: Counters,
    /// Largest `tick_ms` any welcome announced.
    pub(crate) tick_ms: AtomicU64,
    latency: Mutex<Latencies>,
    phase_tx: watch::Sender<Phase>,
    /// Last sent fix time offset per device (only this worker's devices are written).
    last_sent: Vec<AtomicU32>,
    /// Devices still allowed to send.
    sending: AtomicU64,
    sending_changed: Notify,
    /// Clients whose first connection attempt has finished.
    resolved: AtomicU64,
    resolved_changed: Notify,
    views: Mutex<Vec<Arc<View>>>,
    warned_open_files: AtomicBool,
}

impl WorkerShared {
    /// Fresh state for a plan.
    pub fn new(plan: Arc<Plan>) -> WorkerShared {
        let layout = Layout {
            devices: plan.devices,
            groups: plan.groups.max(1),
        };
        let (phase_tx, _) = watch::channel(Phase::Running);
        WorkerShared {
            layout,
            device_prefix: format!("{}-d", plan.run_id),
            counters: Counters::default(),
            tick_ms: AtomicU64::new(0),
            latency: Mutex::new(Latencies::default()),
            phase_tx,
            last_sent: (0..plan.devices).map(|_| AtomicU32::new(0)).collect(),
            sending: AtomicU64::new(0),
            sending_changed: Notify::new(),
            resolved: AtomicU64::new(0),
            resolved_changed: Notify::new(),
            views: Mutex::new(Vec::new()),
            warned_open_files: AtomicBool::new(false),
            plan,
        }
    }

    /// A receiver of phase changes (the current phase counts as seen).
    pub(crate) fn phase(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Moves every connection task of this worker to `phase`.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase_tx.send_replace(phase);
    }

    /// Records the latencies of the deliveries of one frame.
    pub(crate) fn record_latencies(&self, samples: &[Sample]) {
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for s in samples {
            h.record(s);
        }
    }

    /// A copy of the latencies recorded so far.
    pub(crate) fn latencies(&self) -> Latencies {
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers a device that is about to send; `false` if sending has already stopped.
    pub(crate) fn start_sending(&self) -> bool {
        if *self.phase_tx.borrow() != Phase::Running {
            return false;
        }
        self.sending.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// A device has sent its last fix.
    pub(crate) fn stop_sending(&self) {
        self.sending.fetch_sub(1, Ordering::SeqCst);
        self.sending_changed.notify_waiters();
    }

    /// Notes the fix time of a device's latest fix.
    pub(crate) fn set_last_sent(&self, device: u32, ts_ms: u64) {
        let offset = ts_ms
            .saturating_sub(self.plan.base_ms)
            .clamp(1, u64::from(EXCLUDED - 1));
        if let Some(slot) = self.last_sent.get(device as usize) {
            slot.store(offset as u32, Ordering::Relaxed);
        }
    }

    /// Leaves a device out of the latest-state check.
    pub(crate) fn exclude_device(&self, device: u32) {
        if let Some(slot) = self.last_sent.get(device as usize) {
            slot.store(EXCLUDED, Ordering::Relaxed);
        }
    }

    /// A client's first connection attempt has finished.
    pub(crate) fn resolved_one(&self) {
        self.resolved.fetch_add(1, Ordering::SeqCst);
        self.resolved_changed.notify_waiters();
    }

    /// Adds a subscriber's view to the latest-state check.
    pub(crate) fn register_view(&self, view: Arc<View>) {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(view);
    }

    /// Prints the first open-file-limit failure plainly; later ones are only counted.
    pub(crate) fn warn_once(&self, failure: &ConnectFailure) {
        if failure.reason == "open_file_limit"
            && !self.warned_open_files.swap(true, Ordering::Relaxed)
        {
            eprintln!("beacon-loadtest: {}", failure.detail);
        }
    }

    /// Resolves once the first connection attempts of `clients` clients have finished.
    pub(crate) async fn until_resolved(&self, clients: u64) {
        self.wait_until(&self.resolved_changed, || {
            self.resolved.load(Ordering::SeqCst) >= clients
        })
        .await;
    }

    /// Resolves once no device is registered as sending.
    pub(crate) async fn until_sending_stopped(&self) {
        self.wait_until(&self.sending_changed, || {
            self.sending.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    /// The fix time offset of device `device`'s latest fix (0: none sent yet).
    pub(crate) fn last_sent(&self, device: u32) -> u32 {
        self.last_sent
            .get(device as usize)
            .map_or(0, |slot| slot.load(Ordering::Relaxed))
    }

    /// Every subscriber view registered for the latest-state check.
    pub(crate) fn views(&self) -> Vec<Arc<View>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn wait_until(&self, notify: &Notify, done: impl Fn() -> bool) {
        loop {
            let notified = notify.notified();
            if done() {
                return;
            }
            // Re-check periodically too: notify_waiters only wakes tasks already waiting.
            let _ = timeout(Duration::from_millis(100), notified).await;
        }
    }
}
