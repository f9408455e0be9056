//! Shared state in Redis and durable storage on disk.

use std::time::Duration;

use clap::Args;

/// How an instance uses Redis to act as one server with the others (`docs/redis.md`).
#[derive(Clone, Debug, Args)]
pub struct RedisConfig {
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    /// Default `beacon`. 1-32 characters of `[A-Za-z0-9._:-]` (no braces: they delimit the
    /// group's hash tag).
    #[arg(long, env = "BEACON_REDIS_PREFIX", default_value = "beacon",
          value_parser = parse_redis_prefix)]
    pub redis_prefix: String,

    /// Group flushes queued for the Redis writer before further ones are dropped (and counted
    /// in `beacon_relay_dropped_total`). Default 1024. One entry is one group's changes of one
    /// tick, so the default holds a full tick of 1024 active groups.
    #[arg(long, env = "BEACON_REDIS_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub redis_queue: u64,

    /// Longest wait in ms for Redis: connecting, each command or pipeline, and how long a new
    /// subscriber waits for a group's shared state before it gets the local one. Default 2000.
    #[arg(long, env = "BEACON_REDIS_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redis_timeout_ms: u64,

    /// Longest pause in ms between reconnection attempts; the pause starts at 100 ms and
    /// doubles up to this cap. Default 5000.
    #[arg(long, env = "BEACON_REDIS_BACKOFF_MAX_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub redis_backoff_max_ms: u64,

    /// Redis Cluster mode: `--redis-url` lists seed nodes separated by commas, and pub/sub is
    /// sharded (`SPUBLISH`/`SSUBSCRIBE`), each group on the node that owns its hash slot.
    /// Default false (one Redis).
    #[arg(long, env = "BEACON_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
}

impl RedisConfig {
    /// The Redis timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The reconnection backoff cap as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.redis_backoff_max_ms)
    }
}

/// Checks a `--redis-prefix`.
pub fn parse_redis_prefix(prefix: &str) -> Result<String, String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if prefix.is_empty() || prefix.len() > 32 || !prefix.bytes().all(allowed) {
        return Err("must be 1-32 characters of A-Z a-z 0-9 . _ : -".into());
    }
    Ok(prefix.to_owned())
}

/// Settings of the durable store (used only with `--data-dir`).
#[derive(Clone, Debug, Args)]
pub struct StoreConfig {
    /// Days of track history kept, by fix time; older points are deleted, and so are last-known
    /// positions received longer ago. Default 30. Range 1-36500.
    #[arg(long, env = "BEACON_HISTORY_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub history_retention_days: u32,

    /// Seconds of fix time that must separate two stored points of a device; a fix closer (by
    /// fix time, before or after it) to a stored point is not added to the history (it still
    /// updates the last-known position when it is the newest). Default 5. 0 stores every
    /// accepted fix with a fix time of its own.
    #[arg(long, env = "BEACON_HISTORY_MIN_INTERVAL_SECS", default_value_t = 5)]
    pub history_min_interval_secs: u64,

    /// Metres a fix must lie from its neighbouring stored points (by fix time) to be stored,
    /// on top of the interval rule (both must hold). Default 0 (off). Useful to keep a
    /// parked device from filling its history with the same place.
    #[arg(long, env = "BEACON_HISTORY_MIN_DISTANCE_M", default_value_t = 0.0,
          value_parser = non_negative)]
    pub history_min_distance_m: f64,

    /// Most history points kept per device; beyond it the oldest are deleted at each prune.
    /// Default 50000 (a week of one point every 12 s). Range 1-10000000.
    #[arg(long, env = "BEACON_HISTORY_MAX_POINTS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub history_max_points: u32,

    /// Seconds between two prunes of the history (retention and max points). Default 300.
    /// Range 1-86400.
    #[arg(long, env = "BEACON_HISTORY_PRUNE_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub history_prune_secs: u64,

    /// Accepted fixes waiting for the writer before new ones are dropped (and counted in
    /// `beacon_store_dropped_total`). Default 65536 (about 10 MB). It absorbs disk stalls of a
    /// few seconds at high ingest rates without ever slowing the hub down.
    #[arg(long, env = "BEACON_STORE_QUEUE_POSITIONS", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub store_queue_positions: u64,
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a number >= 0, not {text:?}")),
    }
}

impl StoreConfig {
    /// The retention window in ms.
    pub fn retention_ms(&self) -> i64 {
        i64::from(self.history_retention_days) * 86_400_000
    }
}
