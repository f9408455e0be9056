//! Webhooks: each group's endpoints, and the signed delivery of its events to them
//! (`docs/webhooks.md`).
//!
//! [`Webhooks::offer`] is called by the event bus for every new event, recorded here or
//! received from another instance. It never waits: under one short lock it finds the group's
//! endpoints whose patterns match, queues one delivery per endpoint (bounded per endpoint by
//! `--webhook-queue` and in all by [`MAX_PENDING`]; a full queue drops the delivery and counts
//! it) and spawns a task for each. That task waits until the delivery is due, claims it in
//! Redis (with `--redis-url`), waits for one of the endpoint's [`IN_FLIGHT`] slots, makes the
//! attempt (bounded by `--webhook-timeout-ms`) and either finishes, disables the endpoint
//! (410), schedules the next attempt, or gives up at the end of the schedule. A slow or dead
//! receiver therefore holds only its own endpoint's slots: ingest, fan-out and other endpoints
//! go on.
//!
//! Files, imported top to bottom: `shared` (Redis: definitions and claims), `durable` (the
//! `--data-dir` file), `attempt` (one HTTP attempt, the retry schedule), `seal` (secrets
//! sealed at rest with `--webhook-secret-key-file`), `state` (the data),
//! `target` (allowed URLs and addresses), `sign` (secrets, ids, signatures), `pattern` (which
//! events an endpoint gets).
//!
//! Errors: creation refusals are [`CreateError`]s for the route to answer; delivery failures
//! are outcomes, recorded and counted, never errors.

mod attempt;
mod durable;
mod pattern;
mod seal;
mod shared;
mod sign;
mod state;
mod target;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, WebhookConfig};
use crate::isotime::format_ms;
use crate::metrics::{Metrics, WebhookMetrics};
use crate::model::{Event, GroupId, now_ms};
use crate::protocol::EventRecord;

pub(crate) use seal::SealError;
pub(crate) use shared::{Apply, Change};
pub(crate) use state::{AttemptRecord, Endpoint};

use attempt::{Outcome, Request, next_delay};
use seal::Sealer;
use shared::Shared;
use state::{DELIVERIES_KEPT, Pending};
use target::TargetError;

/// Attempts one endpoint may have in flight at once.
pub(crate) const IN_FLIGHT: usize = 4;

/// Most endpoints held in all (over every group).
pub(crate) const MAX_ENDPOINTS: usize = 10_000;

/// Most deliveries waiting in all (over every endpoint); past it new ones are dropped and
/// counted like a full endpoint queue.
pub(crate) const MAX_PENDING: usize = 100_000;

/// Why an endpoint was not created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    /// The URL, its target or the patterns are refused (400).
    #[error("{0}")]
    Invalid(String),
    /// The group (or the server) holds as many endpoints as allowed (400).
    #[error("{0}")]
    Limit(String),
}

impl From<TargetError> for CreateError {
    fn from(e: TargetError) -> Self {
        CreateError::Invalid(e.to_string())
    }
}

/// One endpoint with what only this instance keeps about it.
#[derive(Debug)]
struct Slot {
    endpoint: Endpoint,
    /// Recent attempts, newest last, at most [`DELIVERIES_KEPT`].
    history: VecDeque<AttemptRecord>,
    /// [`IN_FLIGHT`] permits.
    permits: Arc<Semaphore>,
    /// Deliveries of this endpoint waiting.
    queued: usize,
}

impl Slot {
    fn new(endpoint: Endpoint) -> Self {
        Slot {
            endpoint,
            history: VecDeque::new(),
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            queued: 0,
        }
    }
}

/// The tasks' context once [`Webhooks::run`] started.
#[derive(Debug, Clone)]
struct Running {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: HashMap<String, Slot>,
    pending: HashMap<String, Pending>,
    running: Option<Running>,
}

impl Inner {
    /// Drops every delivery of `endpoint`.
    fn drop_pending_of(&mut self, endpoint: &str) {
        self.pending.retain(|_, p| p.endpoint != endpoint);
        if let Some(slot) = self.endpoints.get_mut(endpoint) {
            slot.queued = 0;
        }
    }

    /// Removes one delivery.
    fn finish(&mut self, webhook_id: &str) {
        if let Some(p) = self.pending.remove(webhook_id)
            && let Some(slot) = self.endpoints.get_mut(&p.endpoint)
        {
            slot.queued = slot.queued.saturating_sub(1);
        }
    }

    /// Adds or updates an endpoint from elsewhere (the file, Redis).
    fn upsert(&mut self, endpoint: Endpoint) {
        let disabled = endpoint.disabled;
        let id = endpoint.id.clone();
        let full = self.endpoints.len() >= MAX_ENDPOINTS;
        match self.endpoints.get_mut(&id) {
            Some(slot) => slot.endpoint = endpoint,
            None if !full => {
                self.endpoints.insert(id.clone(), Slot::new(endpoint));
            }
            None => return,
        }
        if disabled {
            self.drop_pending_of(&id);
        }
    }
}

/// Every endpoint and delivery of this instance.
#[derive(Debug)]
pub(crate) struct Webhooks {
    config: WebhookConfig,
    metrics: WebhookMetrics,
    inner: Mutex<Inner>,
    /// `DIR/webhooks.json`, with `--data-dir`.
    file: Option<PathBuf>,
    /// Signalled on every change worth writing to the file.
    dirty: Notify,
    /// With `--redis-url` (not a cluster).
    shared: Option<Arc<Shared>>,
    /// Seals secrets before they are stored (with `--webhook-secret-key-file`).
    sealer: Sealer,
    /// Why the server must not start (an unusable key, secrets it cannot open), for
    /// [`Webhooks::prepare`].
    refusal: Mutex<Option<SealError>>,
}

impl Webhooks {
    /// The webhooks of `config`, loaded from `--data-dir` when set.
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Self {
        let file = config.data_dir.as_deref().map(durable::path);
        let mut inner = Inner::default();
        let mut refusal = None;
        let sealer = match &config.webhooks.webhook_secret_key_file {
            Some(path) => Sealer::from_file(path).unwrap_or_else(|e| {
                refusal = Some(e);
                Sealer::none()
            }),
            None => Sealer::none(),
        };
        if let Some(path) = file.as_ref().filter(|_| refusal.is_none()) {
            let saved = durable::load(path);
            let endpoints = sealer
                .open_all(saved.endpoints, &path.display().to_string())
                .unwrap_or_else(|e| {
                    refusal = Some(e);
                    Vec::new()
                });
            for endpoint in endpoints {
                inner.upsert(endpoint);
            }
            for pending in saved.pending {
                if let Some(slot) = inner.endpoints.get_mut(&pending.endpoint)
                    && !slot.endpoint.disabled
                {
                    slot.queued += 1;
                    inner.pending.insert(pending.webhook_id.clone(), pending);
                }
            }
            if !inner.endpoints.is_empty() {
                info!(
                    endpoints = inner.endpoints.len(),
                    pending = inner.pending.len(),
                    "webhooks loaded"
                );
            }
        }
        let shared = (config.redis_url.is_some() && !config.redis.redis_cluster).then(|| {
            Arc::new(Shared::new(
                &config.redis.redis_prefix,
                config.redis.timeout(),
            ))
        });
        let webhooks = Webhooks {
            config: config.webhooks.clone(),
            metrics: metrics.webhook.clone(),
            inner: Mutex::new(inner),
            file,
            dirty: Notify::new(),
            shared,
            sealer,
            refusal: Mutex::new(refusal),
        };
        webhooks.gauges(&webhooks.lock());
        webhooks
    }

    /// Checks, before the server starts, that every stored secret can be used: the key file
    /// (with `--webhook-secret-key-file`) holds a key, and the secrets sealed in `DIR/webhooks.json`
    /// and (when it answers within `--redis-timeout-ms`) in Redis open with it. A server that
    /// cannot sign for its endpoints refuses to start rather than drop them.
    pub(crate) async fn prepare(&self, redis_url: Option<&str>) -> Result<(), SealError> {
        let refused = self
            .refusal
            .lock()
            .map(|mut r| r.take())
            .unwrap_or_else(|e| e.into_inner().take());
        if let Some(e) = refused {
            return Err(e);
        }
        if let (Some(shared), Some(url)) = (&self.shared, redis_url) {
            match shared.stored_endpoints(url).await {
                Ok((place, stored)) => {
                    self.sealer.open_all(stored, &place)?;
                }
                Err(e) => {
                    warn!(error = %e, "webhook secrets in Redis not checked at start (Redis unreachable)")
                }
            }
        }
        if self.sealer.has_key() {
            info!("webhook secrets are sealed at rest");
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Only map operations run under the lock; a poisoned state is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gauges(&self, inner: &Inner) {
        self.metrics.queued.set(inner.pending.len() as i64);
        let disabled = inner
            .endpoints
            .values()
            .filter(|s| s.endpoint.disabled)
            .count();
        self.metrics.disabled.set(disabled as i64);
    }

    fn changed(&self, inner: &Inner) {
        self.gauges(inner);
        self.dirty.notify_one();
    }

    /// Creates an endpoint for `group`: checks the patterns, the URL and (unless
    /// `--webhook-allow-private`) every address its host resolves to, then the bounds.
    pub(crate) async fn create(
        &self,
        group: &GroupId,
        url: &str,
        events: Vec<String>,
    ) -> Result<Endpoint, CreateError> {
        pattern::check(&events).map_err(CreateError::Invalid)?;
        let url = target::parse_url(url)?;
        if !self.config.webhook_allow_private {
            target::resolve(&url, false, self.config.timeout()).await?;
        }
        let endpoint = Endpoint {
            id: sign::new_endpoint_id(),
            group: group.as_str().to_owned(),
            url: url.as_str().to_owned(),
            events,
            secret: sign::new_secret(),
            disabled: false,
            created_ms: now_ms(),
        };
        {
            let mut inner = self.lock();
            let per_group = self.config.webhooks_per_group as usize;
            let in_group = inner
                .endpoints
                .values()
                .filter(|s| s.endpoint.group == endpoint.group)
                .count();
            if in_group >= per_group {
                return Err(CreateError::Limit(format!(
                    "a group may have at most {per_group} webhooks (--webhooks-per-group)"
                )));
            }
            if inner.endpoints.len() >= MAX_ENDPOINTS {
                return Err(CreateError::Limit(format!(
                    "the server holds its most webhooks ({MAX_ENDPOINTS})"
                )));
            }
            inner
                .endpoints
                .insert(endpoint.id.clone(), Slot::new(endpoint.clone()));
            self.changed(&inner);
        }
        if let Some(shared) = &self.shared {
            shared.announce(Change::Put(self.sealer.stored(&endpoint)));
        }
        info!(group = %group, webhook = %endpoint.id, "webhook created");
        Ok(endpoint)
    }

    /// The endpoints of `group`, oldest first.
    pub(crate) fn list(&self, group: &str) -> Vec<Endpoint> {
        let inner = self.lock();
        let mut list: Vec<Endpoint> = inner
            .endpoints
            .values()
            .filter(|s| s.endpoint.group == group)
            .map(|s| s.endpoint.clone())
            .collect();
        list.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        list
    }

    /// Deletes endpoint `id` of `group` and its waiting deliveries; false when there is none.
    pub(crate) fn delete(&self, group: &str, id: &str) -> bool {
        {
            let mut inner = self.lock();
            if inner
                .endpoints
                .get(id)
                .is_none_or(|s| s.endpoint.group != group)
            {
                return false;
            }
            inner.drop_pending_of(id);
            inner.endpoints.remove(id);
            self.changed(&inner);
        }
        if let Some(shared) = &self.shared {
            shared.announce(Change::Delete(id.to_owned()));
        }
        info!(group, webhook = id, "webhook deleted");
        true
    }

    /// The recent attempts of endpoint `id` of `group`, newest first: with Redis, those of
    /// every instance (this instance's own when Redis cannot be asked); `None` when there is no
    /// such endpoint.
    pub(crate) async fn deliveries(&self, group: &str, id: &str) -> Option<Vec<serde_json::Value>> {
        let local: Vec<serde_json::Value> = {
            let inner = self.lock();
            let slot = inner.endpoints.get(id)?;
            if slot.endpoint.group != group {
                return None;
            }
            slot.history
                .iter()
                .rev()
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect()
        };
        if let Some(shared) = &self.shared
            && let Some(list) = shared.attempts(id, DELIVERIES_KEPT).await
        {
            return Some(list);
        }
        Some(local)
    }

    /// A new event: one delivery to each matching endpoint of its group. `local` says it was
    /// recorded on this instance (not received from another one). Never waits.
    pub(crate) fn offer(self: &Arc<Self>, event: &Event, local: bool) {
        let cap = self.config.webhook_queue as usize;
        let mut inner = self.lock();
        let mut spawned = Vec::new();
        let matching: Vec<String> = inner
            .endpoints
            .values()
            .filter(|s| s.endpoint.group == event.group.as_str() && !s.endpoint.disabled)
            .filter(|s| pattern::matches(&s.endpoint.events, event.kind))
            .map(|s| s.endpoint.id.clone())
            .collect();
        if matching.is_empty() {
            return;
        }
        let body = json!({
            "type": event.kind,
            "timestamp": format_ms(event.ts),
            "data": EventRecord::from(event),
        })
        .to_string();
        for endpoint in matching {
            let webhook_id = sign::message_id(&event.id, &endpoint);
            if inner.pending.contains_key(&webhook_id) {
                continue;
            }
            let total = inner.pending.len();
            let Some(slot) = inner.endpoints.get_mut(&endpoint) else {
                continue;
            };
            if slot.queued >= cap || total >= MAX_PENDING {
                self.metrics.outcome("queue_full").inc();
                warn!(webhook = %endpoint, event = %event.id, queued = slot.queued, "webhook queue full; delivery dropped");
                continue;
            }
            slot.queued += 1;
            inner.pending.insert(
                webhook_id.clone(),
                Pending {
                    webhook_id: webhook_id.clone(),
                    endpoint,
                    event: event.id.clone(),
                    kind: event.kind.to_owned(),
                    body: body.clone(),
                    attempts: 0,
                    next_ms: now_ms(),
                    local,
                    claim: sign::new_claim_token(),
                    claimed: false,
                },
            );
            spawned.push(webhook_id);
        }
        if spawned.is_empty() {
            return;
        }
        if let Some(running) = inner.running.clone() {
            for id in spawned {
                running
                    .tasks
                    .spawn(self.clone().drive(id, running.shutdown.clone()));
            }
        }
        self.changed(&inner);
    }

    /// Runs the deliveries (those loaded from the file first), the Redis sharing (with
    /// `redis_url`) and the file writer until `shutdown`; then writes the file a last time.
    pub(crate) async fn run(
        self: Arc<Self>,
        redis_url: Option<String>,
        shutdown: CancellationToken,
    ) {
        let tasks = TaskTracker::new();
        let loaded: Vec<String> = {
            let mut inner = self.lock();
            inner.running = Some(Running {
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
            });
            inner.pending.keys().cloned().collect()
        };
        for id in loaded {
            tasks.spawn(self.clone().drive(id, shutdown.clone()));
        }
        if let (Some(shared), Some(url)) = (&self.shared, redis_url) {
            let apply: Arc<dyn Apply> = self.clone();
            tasks.spawn(shared.clone().run(url, apply, shutdown.clone()));
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.dirty.notified() => self.save().await,
            }
            // Changes made meanwhile wait for the next write: a burst costs a few writes.
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(durable::WRITE_PAUSE) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
        self.save().await;
    }

    /// Writes the file (with `--data-dir`).
    async fn save(&self) {
        let Some(path) = self.file.clone() else {
            return;
        };
        // Copied under the lock, serialized and written outside it.
        let saved = {
            let inner = self.lock();
            durable::Saved {
                endpoints: inner
                    .endpoints
                    .values()
                    .map(|s| self.sealer.stored(&s.endpoint))
                    .collect(),
                pending: inner.pending.values().cloned().collect(),
            }
        };
        let written = tokio::task::spawn_blocking(move || {
            // Serializing our own types cannot fail.
            let bytes = serde_json::to_vec(&saved).unwrap_or_default();
            durable::write(&path, &bytes)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "webhooks file not written"),
            Err(e) => warn!(error = %e, "webhooks file writer failed"),
        }
    }

    /// One delivery's life, from its queueing to its end.
    async fn drive(self: Arc<Self>, webhook_id: String, shutdown: CancellationToken) {
        loop {
            let Some(pending) = self.lock().pending.get(&webhook_id).cloned() else {
                return;
            };
            let wait =
                Duration::from_millis(pending.next_ms.saturating_sub(now_ms()).max(0) as u64);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if !pending.claimed && !self.claim(&pending).await {
                return;
            }
            let Some(permits) = self.permits_of(&pending.endpoint) else {
                self.lock().finish(&webhook_id);
                return;
            };
            let _permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = permits.acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            // The endpoint may have been deleted or disabled while this waited.
            let endpoint = {
                let mut inner = self.lock();
                match inner.endpoints.get(&pending.endpoint) {
                    Some(slot)
                        if !slot.endpoint.disabled && inner.pending.contains_key(&webhook_id) =>
                    {
                        slot.endpoint.clone()
                    }
                    _ => {
                        inner.finish(&webhook_id);
                        self.changed(&inner);
                        return;
                    }
                }
            };
            let request = Request {
                url: &endpoint.url,
                secret: &endpoint.secret,
                webhook_id: &webhook_id,
                body: &pending.body,
                allow_private: self.config.webhook_allow_private,
                timeout: self.config.timeout(),
            };
            let started = now_ms();
            if pending.attempts > 0 {
                self.metrics.retries.inc();
            }
            let answer = tokio::select! {
                () = shutdown.cancelled() => return,
                answer = attempt::send(&request) => answer,
            };
            self.metrics.outcome(answer.outcome.label()).inc();
            let attempts = pending.attempts + 1;
            let next = match answer.outcome {
                Outcome::Delivered(_) | Outcome::Gone => None,
                _ => next_delay(attempts, self.config.retry_unit(), answer.retry_after),
            };
            if next.is_some() && next != next_delay(attempts, self.config.retry_unit(), None) {
                self.metrics.retry_after.inc();
            }
            let record = AttemptRecord {
                webhook_id: webhook_id.clone(),
                event: pending.event.clone(),
                kind: pending.kind.clone(),
                attempt: attempts,
                at: format_ms(started),
                outcome: answer.outcome.label(),
                status: answer.outcome.status(),
                duration_ms: answer.elapsed.as_millis() as u64,
                error: answer.outcome.error(),
                response: answer.response,
                next_attempt_at: next.map(|d| format_ms(now_ms() + d.as_millis() as i64)),
            };
            debug!(webhook = %endpoint.id, webhook_id = %webhook_id, attempt = attempts, outcome = record.outcome, status = ?record.status, retry_after_ms = answer.retry_after.map(|d| d.as_millis() as u64), "webhook attempt");
            if let Some(shared) = &self.shared
                && let Ok(json) = serde_json::to_string(&record)
            {
                shared
                    .record_attempt(&endpoint.id, json, DELIVERIES_KEPT)
                    .await;
            }
            let disabled = {
                let mut inner = self.lock();
                let mut disabled = None;
                if let Some(slot) = inner.endpoints.get_mut(&endpoint.id) {
                    slot.history.push_back(record);
                    while slot.history.len() > DELIVERIES_KEPT {
                        slot.history.pop_front();
                    }
                    if answer.outcome == Outcome::Gone && !slot.endpoint.disabled {
                        slot.endpoint.disabled = true;
                        disabled = Some(slot.endpoint.clone());
                    }
                }
                match (&answer.outcome, next) {
                    (Outcome::Gone, _) => inner.drop_pending_of(&endpoint.id),
                    (_, Some(delay)) => {
                        if let Some(p) = inner.pending.get_mut(&webhook_id) {
                            p.attempts = attempts;
                            p.next_ms = now_ms() + delay.as_millis() as i64;
                        }
                    }
                    (Outcome::Delivered(_), None) => inner.finish(&webhook_id),
                    (_, None) => {
                        inner.finish(&webhook_id);
                        self.metrics.outcome("given_up").inc();
                        warn!(webhook = %endpoint.id, webhook_id = %webhook_id, attempts, "webhook delivery given up at the end of the retry schedule");
                    }
                }
                self.changed(&inner);
                disabled
            };
            if let Some(endpoint) = disabled {
                warn!(webhook = %endpoint.id, group = %endpoint.group, "webhook endpoint answered 410; disabled");
                if let Some(shared) = &self.shared {
                    shared.announce(Change::Put(self.sealer.stored(&endpoint)));
                }
            }
        }
    }

    /// The endpoint's attempt slots, when it still exists.
    fn permits_of(&self, endpoint: &str) -> Option<Arc<Semaphore>> {
        self.lock()
            .endpoints
            .get(endpoint)
            .map(|s| s.permits.clone())
    }

    /// With Redis, claims `pending` for this instance; false when it must not be delivered
    /// from here (dropped then). Without Redis every delivery is this instance's.
    async fn claim(&self, pending: &Pending) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let mine = match shared.claim(&pending.webhook_id, &pending.claim).await {
            Ok(mine) => mine,
            // Redis unreachable: the instance that recorded the event delivers it (at least
            // once), the others leave it to that one.
            Err(()) => pending.local,
        };
        let mut inner = self.lock();
        if mine {
            if let Some(p) = inner.pending.get_mut(&pending.webhook_id) {
                p.claimed = true;
            }
        } else {
            self.metrics.claims_lost.inc();
            inner.finish(&pending.webhook_id);
        }
        self.changed(&inner);
        mine
    }
}

impl Webhooks {
    /// `endpoint` as received from Redis with its secret opened; `None` (logged) when this
    /// instance's key does not open it: the endpoint is then left to the instances that can.
    fn received(&self, endpoint: Endpoint) -> Option<Endpoint> {
        let id = endpoint.id.clone();
        match self.sealer.opened(endpoint) {
            Ok(endpoint) => Some(endpoint),
            Err(why) => {
                error!(webhook = %id, reason = ?why, "webhook secret from Redis does not open with this instance's --webhook-secret-key-file; endpoint ignored here");
                None
            }
        }
    }
}

impl Apply for Webhooks {
    fn apply(&self, change: Change) {
        let endpoint = match change {
            Change::Put(endpoint) => match self.received(endpoint) {
                Some(endpoint) => Change::Put(endpoint),
                None => return,
            },
            delete => delete,
        };
        let mut inner = self.lock();
        match endpoint {
            Change::Put(endpoint) => inner.upsert(endpoint),
            Change::Delete(id) => {
                inner.drop_pending_of(&id);
                inner.endpoints.remove(&id);
            }
        }
        self.changed(&inner);
    }

    fn reconcile(&self, endpoints: Vec<Endpoint>, deleted: &HashSet<String>) -> Vec<Endpoint> {
        // Known to Redis even when not opened here: never written back over.
        let known: HashSet<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .filter_map(|e| self.received(e))
            .collect();
        let mut inner = self.lock();
        for id in deleted {
            if inner.endpoints.contains_key(id) {
                inner.drop_pending_of(id);
                inner.endpoints.remove(id);
            }
        }
        for endpoint in endpoints {
            if !deleted.contains(&endpoint.id) {
                inner.upsert(endpoint);
            }
        }
        let only_here: Vec<Endpoint> = inner
            .endpoints
            .values()
            .filter(|s| !known.contains(&s.endpoint.id))
            .map(|s| self.sealer.stored(&s.endpoint))
            .collect();
        self.changed(&inner);
        only_here
    }
}
