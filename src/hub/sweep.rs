//! The sweeper: stale presence, retention, and forgetting empty groups, once a second.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::pending::Origin;
use super::state::{Group, Hub, lock};
use crate::model::{DeviceId, Position, now_ms};

/// How often presence and retention are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Hub {
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
            // instance that holds the device's socket. Only a socket in this very group keeps
            // a device online here: a socket in another group says nothing about this one.
            let seen = &state.seen;
            let last = |p: &Position| seen.get(&p.device).map_or(p.rts, |s| p.rts.max(*s));
            state.positions.retain(|_, p| {
                last(p) >= expired_before
                    || p.online && self.has_socket_in(p.device.as_str(), g.id.as_str())
            });
            let stale: Vec<DeviceId> = state
                .positions
                .values()
                .filter(|p| {
                    p.online
                        && last(p) < stale_before
                        && !self.has_socket_in(p.device.as_str(), g.id.as_str())
                })
                .map(|p| p.device.clone())
                .collect();
            let positions_held = &state.positions;
            state.seen.retain(|d, _| positions_held.contains_key(d));
            for device in &stale {
                // Every instance sweeps its own copy, so this is no observer's news;
                // subscribers hear it on the tick.
                self.set_offline(g, state, device, Origin::Remote);
            }
            positions += state.positions.len();
        }
        self.groups.retain(|_, g| {
            let mut state = lock(g);
            let empty = state.positions.is_empty()
                && state.subscribers.is_empty()
                && state.pending.is_empty()
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
