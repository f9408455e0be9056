//! The connection to Redis and the commands the relay sends over it.
//!
//! One RESP3 connection per instance carries everything: pipelined writes, reads, and the
//! group subscriptions, whose messages arrive as pushes and go straight to [`Inbound`]. With
//! `--redis-cluster` it is a cluster connection (one connection per node, routed by slot) and
//! pub/sub is sharded: `SPUBLISH`/`SSUBSCRIBE` on the same hash-tagged channel names, so a
//! group's messages only ever touch the node that owns the group's slot. Every request is
//! bounded by the configured timeout; any failure ends the connection (the relay then
//! reconnects with backoff and resynchronises), so there is exactly one recovery path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisResult, Value,
};
use tokio::sync::Notify;

use super::codec;
use super::error::RelayError;
use super::inbound::Inbound;
use super::keys::Names;
use crate::metrics::Metrics;
use crate::model::{GroupId, Position};

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE, and groups read by one load.
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

/// Stores records in a group's hash, each only over an older one: newest fix wins in Redis too.
/// Atomic per key (Redis runs a script without interleaving other clients), so two instances
/// writing the same device at once cannot let the older fix win, and no read-modify-write
/// round trip is needed. A record replaces the held one unless the held one's fix is newer
/// (by `ts`, then `rts`); equal times replace, so a presence change of the same fix is stored.
/// A held value that is not a readable record is replaced.
/// KEYS: positions hash. ARGV: per record, device id, `ts`, `rts` (ms) and the encoded record.
/// Returns how many records were stored.
pub(super) const STORE_NEWER_SCRIPT: &str = r"
local stored = 0
for i = 1, #ARGV, 4 do
  local ts, rts = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  local older = true
  if held then
    local ok, r = pcall(cmsgpack.unpack, held)
    if ok and type(r) == 'table' and tonumber(r.ts) then
      local hts, hrts = tonumber(r.ts), tonumber(r.rts) or 0
      older = hts < ts or (hts == ts and hrts <= rts)
    end
  end
  if older then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 3])
    stored = stored + 1
  end
end
return stored
";

/// Where Redis is.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// One Redis (or a proxy in front of several).
    Single(Client),
    /// A Redis Cluster, by its seed nodes.
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Parses `--redis-url`: one URL, or with `cluster` a comma-separated list of seed nodes.
    /// RESP3 is always used (pushes carry the subscriptions on the shared connection).
    pub(super) fn parse(url: &str, cluster: bool) -> RedisResult<Target> {
        use redis::IntoConnectionInfo;
        let resp3 = |url: &str| -> RedisResult<ConnectionInfo> {
            let info = url.trim().into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            Ok(info.set_redis_settings(settings))
        };
        if cluster {
            let nodes = url.split(',').map(resp3).collect::<RedisResult<Vec<_>>>()?;
            Ok(Target::Cluster(nodes))
        } else {
            Ok(Target::Single(Client::open(resp3(url)?)?))
        }
    }
}

/// A connection of either kind; cheap to clone (clones share the sockets).
#[derive(Clone)]
pub(super) enum Conn {
    /// One multiplexed connection to one Redis.
    Single(MultiplexedConnection),
    /// Connections to every node of a cluster.
    Cluster(ClusterConnection),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Whether pub/sub is sharded (cluster mode).
    pub(super) fn sharded(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    async fn query(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// Pipelines under construction. On one Redis everything goes into one pipeline; on a cluster
/// each group gets its own (a pipeline must stay within one slot, and a group's names share
/// one), and the pipelines are sent concurrently, one round trip per node.
#[derive(Debug)]
pub(super) struct Requests {
    per_group: bool,
    pipes: Vec<Pipeline>,
}

impl Requests {
    /// Empty requests for `conn`'s kind.
    pub(super) fn new(conn: &Conn) -> Self {
        Requests {
            per_group: conn.sharded(),
            pipes: Vec::new(),
        }
    }

    /// The pipeline to add one group's commands to.
    pub(super) fn group(&mut self) -> &mut Pipeline {
        if self.per_group || self.pipes.is_empty() {
            self.pipes.push(redis::pipe());
        }
        let last = self.pipes.len() - 1;
        &mut self.pipes[last]
    }

    /// Commands added so far.
    pub(super) fn len(&self) -> usize {
        self.pipes.iter().map(Pipeline::len).sum()
    }
}

/// A live connection.
pub(super) struct Link {
    conn: Conn,
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
        target: &Target,
        timeout: Duration,
        inbound: Arc<Inbound>,
        metrics: Arc<Metrics>,
    ) -> Result<Link, RelayError> {
        let lost = Arc::new(Notify::new());
        let on_push = {
            let lost = lost.clone();
            move |push: PushInfo| -> Result<(), Infallible> {
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
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
        let conn = match target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_push_sender(on_push);
                let connecting = client.get_multiplexed_async_connection_with_config(&config);
                Conn::Single(
                    tokio::time::timeout(timeout, connecting)
                        .await
                        .map_err(|_| RelayError::Timeout(timeout))??,
                )
            }
            Target::Cluster(nodes) => {
                // Few retries inside the client: a failure should reach the relay's own
                // recovery (reconnect, resubscribe, reload) rather than stall it.
                let client = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .push_sender(on_push)
                    .build()?;
                let connecting = client.get_async_connection();
                Conn::Cluster(
                    tokio::time::timeout(timeout, connecting)
                        .await
                        .map_err(|_| RelayError::Timeout(timeout))??,
                )
            }
        };
        Ok(Link {
            conn,
            lost,
            timeout,
            metrics,
        })
    }

    /// A handle on the connection for requests made outside the relay task.
    pub(super) fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// Empty requests for this connection.
    pub(super) fn requests(&self) -> Requests {
        Requests::new(&self.conn)
    }

    /// The command that publishes on a group channel.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.conn.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Completes when the connection has closed.
    pub(super) async fn lost(&self) {
        self.lost.notified().await;
    }

    /// Sends `requests` and waits for every reply.
    pub(super) async fn send(&mut self, requests: Requests) -> Result<Vec<Value>, RelayError> {
        send(&mut self.conn, requests, self.timeout, &self.metrics).await
    }

    /// Subscribes to `channels`, returning once Redis has confirmed every one.
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), RelayError> {
        self.subscription("SUBSCRIBE", "SSUBSCRIBE", channels).await
    }

    /// Unsubscribes from `channels`.
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), RelayError> {
        self.subscription("UNSUBSCRIBE", "SUNSUBSCRIBE", channels)
            .await
    }

    async fn subscription(
        &mut self,
        plain: &str,
        sharded: &str,
        channels: &[String],
    ) -> Result<(), RelayError> {
        if channels.is_empty() {
            return Ok(());
        }
        let metrics = &self.metrics;
        let work = async {
            match &mut self.conn {
                Conn::Single(c) => {
                    metrics.relay.commands.inc();
                    redis::cmd(plain).arg(channels).exec_async(c).await
                }
                Conn::Cluster(c) => {
                    // Each channel may live on another node: one command per channel.
                    metrics.relay.commands.inc_by(channels.len() as u64);
                    let each = channels.iter().map(|channel| {
                        let mut c = c.clone();
                        async move { redis::cmd(sharded).arg(channel).exec_async(&mut c).await }
                    });
                    try_join_all(each).await.map(drop)
                }
            }
        };
        tokio::time::timeout(self.timeout, work)
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

/// Sends `requests` on `conn` within `timeout`; the replies of every pipeline, in order.
pub(super) async fn send(
    conn: &mut Conn,
    requests: Requests,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Vec<Value>, RelayError> {
    if requests.len() == 0 {
        return Ok(Vec::new());
    }
    metrics.relay.commands.inc_by(requests.len() as u64);
    let work = async {
        if let [pipe] = requests.pipes.as_slice() {
            return conn.query(pipe).await;
        }
        let each = requests.pipes.iter().map(|pipe| {
            let mut conn = conn.clone();
            async move { conn.query(pipe).await }
        });
        Ok(try_join_all(each).await?.into_iter().flatten().collect())
    };
    let values = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| RelayError::Timeout(timeout))??;
    Ok(values)
}

/// Reads the shared state of `groups` in one round trip: `HGETALL` of each positions hash and
/// `ZRANGE … WITHSCORES` of each seen set. Records that do not decode are skipped and counted.
pub(super) async fn load(
    conn: &mut Conn,
    names: &Names,
    groups: &[GroupId],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Vec<Loaded>, RelayError> {
    let mut requests = Requests::new(conn);
    for g in groups {
        let pipe = requests.group();
        pipe.cmd("HGETALL").arg(names.positions(g.as_str()));
        pipe.cmd("ZRANGE")
            .arg(names.seen(g.as_str()))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
    }
    let values = send(conn, requests, timeout, metrics).await?;
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
    /// Records to store: the position and its encoding. Each replaces the stored one only if
    /// that one's fix is not newer ([`STORE_NEWER_SCRIPT`]).
    pub(super) records: Vec<(&'a Position, Vec<u8>)>,
    /// Devices to mark as vouched for, with when (ms): a score only ever moves forward.
    pub(super) vouched: Vec<(&'a str, i64)>,
    /// Messages to publish on the group's channel.
    pub(super) messages: Vec<Vec<u8>>,
    /// Refresh the keys' expiry to this many ms.
    pub(super) ttl_ms: Option<i64>,
}

/// Adds `write` of `group` to `requests`, publishing with `publish` (`PUBLISH` or
/// `SPUBLISH`).
pub(super) fn write_group(
    requests: &mut Requests,
    publish: &str,
    names: &Names,
    group: &GroupId,
    write: &GroupWrite<'_>,
) {
    let pipe = requests.group();
    let positions = names.positions(group.as_str());
    let seen = names.seen(group.as_str());
    if !write.records.is_empty() {
        let cmd = pipe
            .cmd("EVAL")
            .arg(STORE_NEWER_SCRIPT)
            .arg(1)
            .arg(&positions);
        for (p, value) in &write.records {
            cmd.arg(p.device.as_str())
                .arg(p.fix.ts)
                .arg(p.rts)
                .arg(value.as_slice());
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
        pipe.cmd(publish)
            .arg(&channel)
            .arg(message.as_slice())
            .ignore();
    }
}

/// Adds to `pipe` the retention trim of `group`: devices last vouched for before `cutoff`
/// (ms) go, and the keys expire `ttl_ms` after this unless refreshed.
pub(super) fn trim_group(
    requests: &mut Requests,
    names: &Names,
    group: &GroupId,
    cutoff: i64,
    ttl_ms: i64,
) {
    requests
        .group()
        .cmd("EVAL")
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
