//! Webhooks across instances, through Redis (`--redis-url`, not with `--redis-cluster`).
//!
//! - Definitions: the hash `<prefix>:webhooks` maps each endpoint id to its JSON, the hash
//!   `<prefix>:webhooks-deleted` each deleted id to when it was deleted; every change (created,
//!   deleted, disabled) is written there and published on the channel `<prefix>:webhooks` in
//!   one transaction. Every instance, the writer included, applies what arrives on the channel.
//!   Whenever it (re)connects, an instance takes every endpoint of the hash, drops those
//!   deleted meanwhile, and writes back those only it holds (created while Redis was
//!   unreachable, or lost by a Redis restarted empty), so all converge and a Redis without
//!   persistence loses no definition.
//! - Claims: before the first attempt of a delivery, an instance sets
//!   `<prefix>:webhook-claim:<webhook-id>` to its own random token with `SET NX PX`
//!   ([`CLAIM_TTL`]). Only the instance whose token is there delivers; the others drop the
//!   delivery. The same event seen by several instances (recorded on one and received by the
//!   others, or reported by a phone to two of them) thus goes out from exactly one.
//! - Attempts: each is pushed to the list `<prefix>:webhook-deliveries:<endpoint>`, trimmed to
//!   the newest few, so every instance shows the same record of an endpoint's deliveries.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::state::Endpoint;

/// How long a claim is kept: longer than the whole retry schedule (about 27.6 hours), so no
/// instance can claim a delivery again while another may still be attempting it.
pub(crate) const CLAIM_TTL: Duration = Duration::from_secs(48 * 3600);

/// Changes waiting to be written to Redis; past it a change is not shared (logged).
pub(crate) const QUEUE: usize = 256;

/// Largest message read from the channel, in bytes.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Longest pause between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A change of the definitions, as it travels.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Change {
    /// An endpoint created or changed (disabled).
    Put(Endpoint),
    /// An endpoint deleted (its id).
    Delete(String),
}

/// Where changes from Redis go.
pub(crate) trait Apply: Send + Sync {
    /// A change published by some instance (this one included).
    fn apply(&self, change: Change);
    /// The whole set on (re)connection: every endpoint of the hash and every deleted id.
    /// Returns the endpoints held here that Redis knows neither way, to be written back.
    fn reconcile(&self, endpoints: Vec<Endpoint>, deleted: &HashSet<String>) -> Vec<Endpoint>;
}

/// The Redis side of the webhooks.
#[derive(Debug)]
pub(crate) struct Shared {
    /// `<prefix>:webhooks`: the hash and the channel.
    key: String,
    /// `<prefix>:webhooks-deleted`: deleted ids (tombstones).
    deleted_key: String,
    /// `<prefix>:webhook-claim:`.
    claim_prefix: String,
    /// `<prefix>:webhook-deliveries:`: each endpoint's recent attempts, newest first.
    deliveries_prefix: String,
    outgoing: mpsc::Sender<Change>,
    incoming: Mutex<Option<mpsc::Receiver<Change>>>,
    /// The connection of the running session, for claims.
    conn: watch::Sender<Option<MultiplexedConnection>>,
    /// `--redis-timeout-ms`.
    timeout: Duration,
}

impl Shared {
    /// The Redis side for the deployment's `--redis-prefix`.
    pub(crate) fn new(prefix: &str, timeout: Duration) -> Self {
        let (outgoing, incoming) = mpsc::channel(QUEUE);
        Shared {
            key: format!("{prefix}:webhooks"),
            deleted_key: format!("{prefix}:webhooks-deleted"),
            claim_prefix: format!("{prefix}:webhook-claim:"),
            deliveries_prefix: format!("{prefix}:webhook-deliveries:"),
            outgoing,
            incoming: Mutex::new(Some(incoming)),
            conn: watch::Sender::new(None),
            timeout,
        }
    }

    /// Queues `change` for the other instances; never waits.
    pub(crate) fn announce(&self, change: Change) {
        if self.outgoing.try_send(change).is_err() {
            warn!("webhook change queue to Redis full; change not shared");
        }
    }

    /// The session's connection, waiting for one up to `--redis-timeout-ms` (an instance that
    /// just started, or is reconnecting, should claim rather than guess).
    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut current = self.conn.subscribe();
        let ready = tokio::time::timeout(self.timeout, current.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        }
    }

    fn set_connection(&self, conn: Option<MultiplexedConnection>) {
        self.conn.send_replace(conn);
    }

    /// Adds one attempt (`json`) to `endpoint`'s shared record, keeping the newest `kept`.
    /// Best effort: without Redis the attempt stays in this instance's record only.
    pub(crate) async fn record_attempt(&self, endpoint: &str, json: String, kept: usize) {
        let Some(mut conn) = self.conn.borrow().clone() else {
            return;
        };
        let key = format!("{}{endpoint}", self.deliveries_prefix);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&key, json)
            .ignore()
            .ltrim(&key, 0, kept as isize - 1)
            .ignore();
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "webhook attempt not shared"),
            Err(_) => debug!("webhook attempt not shared in time"),
        }
    }

    /// `endpoint`'s shared record of attempts (every instance's), newest first; `None` when
    /// Redis cannot be asked.
    pub(crate) async fn attempts(
        &self,
        endpoint: &str,
        kept: usize,
    ) -> Option<Vec<serde_json::Value>> {
        let mut conn = self.conn.borrow().clone()?;
        let key = format!("{}{endpoint}", self.deliveries_prefix);
        let mut command = redis::cmd("LRANGE");
        command.arg(&key).arg(0).arg(kept as isize - 1);
        let read = command.query_async::<Vec<Vec<u8>>>(&mut conn);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(list)) => Some(
                list.iter()
                    .filter_map(|json| serde_json::from_slice(json).ok())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Claims the delivery `webhook_id` with `token`: `Ok(true)` when the claim is this
    /// instance's (now or from before a restart), `Ok(false)` when another instance holds it,
    /// `Err` when Redis cannot be asked.
    pub(crate) async fn claim(&self, webhook_id: &str, token: &str) -> Result<bool, ()> {
        let Some(mut conn) = self.connection().await else {
            return Err(());
        };
        let key = format!("{}{webhook_id}", self.claim_prefix);
        let ttl_ms = CLAIM_TTL.as_millis() as u64;
        let ask = async {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await?;
            if set.is_some() {
                return Ok(true);
            }
            let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok::<bool, redis::RedisError>(holder.as_deref() == Some(token))
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(mine)) => Ok(mine),
            Ok(Err(e)) => {
                debug!(error = %e, "webhook claim failed");
                Err(())
            }
            Err(_) => Err(()),
        }
    }

    /// The endpoints stored in Redis (secrets as stored) and the hash's name, read once with
    /// `--redis-timeout-ms` as the bound: the start-up check of sealed secrets.
    pub(crate) async fn stored_endpoints(
        &self,
        url: &str,
    ) -> redis::RedisResult<(String, Vec<Endpoint>)> {
        let read = async {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("HVALS")
                .arg(&self.key)
                .query_async::<Vec<Vec<u8>>>(&mut conn)
                .await
        };
        let stored = match tokio::time::timeout(self.timeout, read).await {
            Ok(stored) => stored?,
            Err(_) => {
                return Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )));
            }
        };
        let endpoints = stored
            .iter()
            .filter_map(|json| serde_json::from_slice::<Endpoint>(json).ok())
            .collect();
        Ok((format!("the Redis hash {}", self.key), endpoints))
    }

    /// Shares changes and applies the other instances' until `shutdown`, reconnecting with
    /// backoff.
    pub(crate) async fn run(
        self: Arc<Self>,
        url: String,
        apply: Arc<dyn Apply>,
        shutdown: CancellationToken,
    ) {
        let taken = self.incoming.lock().map(|mut rx| rx.take()).ok().flatten();
        let Some(mut outgoing) = taken else {
            return;
        };
        let client = match redis::Client::open(url.as_str()) {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, "webhooks: unusable Redis URL; webhooks stay on this instance");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                result = self.session(&client, &mut outgoing, apply.as_ref()) => {
                    if let Err(e) = result {
                        warn!(error = %e, "webhooks: Redis connection lost; retrying");
                    }
                }
            }
            self.set_connection(None);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.set_connection(None);
    }

    async fn write(
        &self,
        conn: &mut MultiplexedConnection,
        change: &Change,
    ) -> redis::RedisResult<()> {
        // Serializing our own types cannot fail.
        let json = serde_json::to_vec(change).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        match change {
            Change::Put(endpoint) => {
                let stored = serde_json::to_vec(endpoint).unwrap_or_default();
                pipe.hset(&self.key, &endpoint.id, stored).ignore();
            }
            Change::Delete(id) => {
                pipe.hdel(&self.key, id).ignore();
                pipe.hset(&self.deleted_key, id, crate::model::now_ms())
                    .ignore();
                pipe.del(format!("{}{id}", self.deliveries_prefix)).ignore();
            }
        }
        pipe.publish(&self.key, json).ignore();
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(conn)).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        }
    }

    /// One connection's life: subscribe, write what waited, load the hash, then share and
    /// apply until it fails.
    async fn session(
        &self,
        client: &redis::Client,
        outgoing: &mut mpsc::Receiver<Change>,
        apply: &dyn Apply,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.key).await?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        while let Ok(change) = outgoing.try_recv() {
            self.write(&mut conn, &change).await?;
        }
        // Subscribed first, then loaded: a change made meanwhile arrives on the channel too.
        let stored: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(&self.key)
            .query_async(&mut conn)
            .await?;
        let deleted: HashSet<String> = redis::cmd("HKEYS")
            .arg(&self.deleted_key)
            .query_async(&mut conn)
            .await?;
        let endpoints = stored
            .iter()
            .filter_map(|json| serde_json::from_slice::<Endpoint>(json).ok())
            .collect();
        for endpoint in apply.reconcile(endpoints, &deleted) {
            self.write(&mut conn, &Change::Put(endpoint)).await?;
        }
        self.set_connection(Some(conn.clone()));
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        let payload = message.get_payload_bytes();
                        if payload.len() > MAX_MESSAGE_BYTES {
                            continue;
                        }
                        match serde_json::from_slice::<Change>(payload) {
                            Ok(change) => apply.apply(change),
                            Err(_) => debug!("unreadable webhook change ignored"),
                        }
                    }
                    None => return Ok(()),
                },
                next = outgoing.recv() => match next {
                    Some(change) => self.write(&mut conn, &change).await?,
                    None => return Ok(()),
                },
            }
        }
    }
}
