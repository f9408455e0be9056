//! The connection to Redis and the commands the relay sends over it.
//!
//! One RESP3 connection per instance carries everything: pipelined writes, reads, and the
//! group subscriptions, whose messages arrive as pushes and go straight to [`Inbound`]. Every
//! request is bounded by the configured timeout; any failure ends the connection (the relay
//! then reconnects with backoff and resynchronises), so there is exactly one recovery path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Pipeline, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::RelayError;
use super::codec;
use super::inbound::Inbound;
use super::keys::Names;
use crate::metrics::Metrics;
use crate::model::{GroupId, Position};

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE, and groups read by one load pipeline.
pub(super) const GROUPS_PER_REQUEST: usize = 128;

/// Most expired devices one trim removes from a group (the next trim takes the rest); keeps
/// each script short, since Redis runs scripts without interleaving other clients.
const TRIM_LIMIT: usize = 1000;

/// Removes a group's devices last vouched for before a cutoff and refreshes the keys' expiry.
/// KEYS: positions hash, seen set. ARGV: cutoff (ms), key time-to-live (ms), most to remove.
const TRIM_SCRIPT: &str = r"
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return #old
";

/// A live connection.
pub(super) struct Link {
    conn: MultiplexedConnection,
    /// Notified once when the connection's reader sees it close.
    lost: Arc<Notify>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// A group's shared state as read from Redis: each position with the last time it was
/// vouched for (ms).
pub(super) type Loaded = Vec<(Position, i64)>;

impl Link {
    /// Connects, with `inbound` receiving the messages of every channel subscribed later.
    pub(super) async fn connect(
        client: &Client,
        timeout: Duration,
        inbound: Arc<Inbound>,
        metrics: Arc<Metrics>,
    ) -> Result<Link, RelayError> {
        let lost = Arc::new(Notify::new());
        let on_push = {
            let lost = lost.clone();
            move |push: PushInfo| -> Result<(), Infallible> {
                match push.kind {
                    PushKind::Message => {
                        if let [channel, payload] = push.data.as_slice()
                            && let (Some(channel), Some(payload)) = (bytes(channel), bytes(payload))
                        {
                            inbound.on_message(channel, payload);
                        }
                    }
                    PushKind::Disconnection => lost.notify_one(),
                    _ => {}
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(on_push);
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| RelayError::Timeout(timeout))??;
        Ok(Link {
            conn,
            lost,
            timeout,
            metrics,
        })
    }

    /// A handle on the connection for requests made outside the relay task.
    pub(super) fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Completes when the connection has closed.
    pub(super) async fn lost(&self) {
        self.lost.notified().await;
    }

    /// Sends `pipe` and waits for every reply.
    pub(super) async fn run(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, RelayError> {
        run(&mut self.conn, pipe, self.timeout, &self.metrics).await
    }

    /// Subscribes to `channels`, returning once Redis has confirmed every one.
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), RelayError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.metrics.relay.commands.inc();
        tokio::time::timeout(self.timeout, self.conn.subscribe(channels))
            .await
            .map_err(|_| RelayError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Unsubscribes from `channels`.
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), RelayError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.metrics.relay.commands.inc();
        tokio::time::timeout(self.timeout, self.conn.unsubscribe(channels))
            .await
            .map_err(|_| RelayError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Reads the shared state of `groups` (at most [`GROUPS_PER_REQUEST`]).
    pub(super) async fn load(
        &mut self,
        names: &Names,
        groups: &[GroupId],
    ) -> Result<Vec<Loaded>, RelayError> {
        load(&mut self.conn, names, groups, self.timeout, &self.metrics).await
    }
}

/// Sends `pipe` on `conn` within `timeout`.
pub(super) async fn run(
    conn: &mut MultiplexedConnection,
    pipe: &Pipeline,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Vec<Value>, RelayError> {
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    metrics.relay.commands.inc_by(pipe.len() as u64);
    let values = tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(conn))
        .await
        .map_err(|_| RelayError::Timeout(timeout))??;
    Ok(values)
}

/// Reads the shared state of `groups` with one pipeline: `HGETALL` of each positions hash and
/// `ZRANGE … WITHSCORES` of each seen set. Records that do not decode are skipped and counted.
pub(super) async fn load(
    conn: &mut MultiplexedConnection,
    names: &Names,
    groups: &[GroupId],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Vec<Loaded>, RelayError> {
    let mut pipe = redis::pipe();
    for g in groups {
        pipe.cmd("HGETALL").arg(names.positions(g.as_str()));
        pipe.cmd("ZRANGE")
            .arg(names.seen(g.as_str()))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
    }
    let values = run(conn, &pipe, timeout, metrics).await?;
    let mut values = values.into_iter();
    let mut out = Vec::with_capacity(groups.len());
    for _ in groups {
        let (Some(hash), Some(seen)) = (values.next(), values.next()) else {
            return Err(RelayError::Reply("fewer replies than commands"));
        };
        let hash: HashMap<String, Vec<u8>> =
            redis::from_redis_value(hash).map_err(|_| RelayError::Reply("positions hash"))?;
        let seen: Vec<(String, f64)> =
            redis::from_redis_value(seen).map_err(|_| RelayError::Reply("seen set"))?;
        let seen: HashMap<String, f64> = seen.into_iter().collect();
        let mut rows = Vec::with_capacity(hash.len());
        for (device, value) in hash {
            match codec::decode_record(&value) {
                Ok(p) if p.device.as_str() == device => {
                    let at = seen.get(&device).map_or(p.rts, |s| p.rts.max(*s as i64));
                    rows.push((p, at));
                }
                _ => {
                    metrics.relay.rejected.inc();
                }
            }
        }
        out.push(rows);
    }
    Ok(out)
}

/// What one group's write stores and publishes.
#[derive(Debug, Default)]
pub(super) struct GroupWrite<'a> {
    /// Records to store: device id and encoded record.
    pub(super) records: Vec<(&'a str, Vec<u8>)>,
    /// Devices to mark as vouched for, with when (ms): a score only ever moves forward.
    pub(super) vouched: Vec<(&'a str, i64)>,
    /// Messages to publish on the group's channel.
    pub(super) messages: Vec<Vec<u8>>,
    /// Refresh the keys' expiry to this many ms.
    pub(super) ttl_ms: Option<i64>,
}

/// Adds `write` of `group` to `pipe`.
pub(super) fn write_group(
    pipe: &mut Pipeline,
    names: &Names,
    group: &GroupId,
    write: &GroupWrite<'_>,
) {
    let positions = names.positions(group.as_str());
    let seen = names.seen(group.as_str());
    if !write.records.is_empty() {
        let cmd = pipe.cmd("HSET").arg(&positions);
        for (device, value) in &write.records {
            cmd.arg(*device).arg(value.as_slice());
        }
        cmd.ignore();
    }
    if !write.vouched.is_empty() {
        // GT: never move a device's last-seen time back (another instance may be newer).
        let cmd = pipe.cmd("ZADD").arg(&seen).arg("GT");
        for (device, at) in &write.vouched {
            cmd.arg(*at).arg(*device);
        }
        cmd.ignore();
    }
    if let Some(ttl) = write.ttl_ms {
        pipe.cmd("PEXPIRE").arg(&positions).arg(ttl).ignore();
        pipe.cmd("PEXPIRE").arg(&seen).arg(ttl).ignore();
    }
    let channel = names.channel(group.as_str());
    for message in &write.messages {
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(message.as_slice())
            .ignore();
    }
}

/// Adds to `pipe` the retention trim of `group`: devices last vouched for before `cutoff`
/// (ms) go, and the keys expire `ttl_ms` after this unless refreshed.
pub(super) fn trim_group(
    pipe: &mut Pipeline,
    names: &Names,
    group: &GroupId,
    cutoff: i64,
    ttl_ms: i64,
) {
    pipe.cmd("EVAL")
        .arg(TRIM_SCRIPT)
        .arg(2)
        .arg(names.positions(group.as_str()))
        .arg(names.seen(group.as_str()))
        .arg(cutoff)
        .arg(ttl_ms)
        .arg(TRIM_LIMIT)
        .ignore();
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}
