//! Messages from other instances, applied to the hub as they arrive.
//!
//! The handler runs inside the Redis connection's reader (a push callback): it decodes,
//! applies with [`Hub::merge_remote`] / [`Hub::remote_seen`] (a few map operations under one
//! group lock) and returns, so the subscription socket is always read promptly and nothing is
//! buffered on this side (Redis' own output-buffer limit bounds the other side).
//!
//! While a group's shared state is being loaded (subscribe first, then load), presence news
//! for that group is also noted, so the load cannot undo it: a device that went offline after
//! the load was read but before it was merged stays offline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::debug;

use super::codec;
use super::keys::Names;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::model::{DeviceId, GroupId, now_ms};

/// Applies other instances' messages to the hub.
#[derive(Debug)]
pub(super) struct Inbound {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    names: Names,
    /// This instance's id: its own messages come back on its subscriptions and are skipped.
    instance: String,
    /// Groups being loaded, with the latest presence news (device → online) seen meanwhile.
    loading: Mutex<HashMap<GroupId, HashMap<DeviceId, bool>>>,
}

impl Inbound {
    pub(super) fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        names: Names,
        instance: String,
    ) -> Self {
        Inbound {
            hub,
            metrics,
            names,
            instance,
            loading: Mutex::new(HashMap::new()),
        }
    }

    fn loading(&self) -> MutexGuard<'_, HashMap<GroupId, HashMap<DeviceId, bool>>> {
        // Only map operations run under this lock; a poisoned one is still consistent.
        self.loading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts noting presence news for `groups` (call before subscribing to them).
    pub(super) fn begin_loading(&self, groups: &[GroupId]) {
        let mut loading = self.loading();
        for g in groups {
            loading.entry(g.clone()).or_default();
        }
    }

    /// Stops noting presence news for `group`; returns what was noted.
    pub(super) fn end_loading(&self, group: &GroupId) -> HashMap<DeviceId, bool> {
        self.loading().remove(group).unwrap_or_default()
    }

    /// Forgets every load in progress (the connection was lost).
    pub(super) fn abandon_loading(&self) {
        self.loading().clear();
    }

    /// One message from `channel`.
    pub(super) fn on_message(&self, channel: &[u8], payload: &[u8]) {
        let Some(group) = self.names.group_of_channel(channel) else {
            self.metrics.relay.rejected.inc();
            return;
        };
        let message = match codec::decode_message(payload) {
            Ok(message) => message,
            Err(error) => {
                self.metrics.relay.rejected.inc();
                debug!(%group, %error, "refused a relay message");
                return;
            }
        };
        if message.src == self.instance {
            return;
        }
        self.metrics.relay.received_messages.inc();
        self.metrics
            .relay
            .received_bytes
            .inc_by(payload.len() as u64);
        if let Some(news) = self.loading().get_mut(&group) {
            for p in &message.updates {
                news.insert(p.device.clone(), p.online);
            }
            for d in &message.offline {
                news.insert(d.clone(), false);
            }
            for d in &message.heartbeat {
                news.insert(d.clone(), true);
            }
        }
        if !message.updates.is_empty() || !message.offline.is_empty() {
            self.hub
                .merge_remote(&group, &message.updates, &message.offline);
        }
        if !message.heartbeat.is_empty() {
            let now = now_ms();
            let seen: Vec<(DeviceId, i64)> =
                message.heartbeat.into_iter().map(|d| (d, now)).collect();
            self.hub.remote_seen(&group, &seen);
        }
    }
}
