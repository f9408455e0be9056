//! Configuration of `beacon serve`, grouped by concern.
//!
//! Every flag is also an environment variable `BEACON_<FLAG>`. Each field documents its default
//! and, where it is a bound, what it protects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::model::Role;

/// Everything `beacon serve` needs.
#[derive(Clone, Debug, Parser)]
#[command(name = "serve", about = "Run the Beacon server")]
pub struct Config {
    /// Address to listen on. Default 127.0.0.1:8080 (loopback only, safe with `--auth none`).
    #[arg(long, env = "BEACON_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Optional TLS, for deployments without a terminating load balancer.
    #[command(flatten)]
    pub tls: TlsConfig,

    /// Fan-out and presence timing.
    #[command(flatten)]
    pub hub: HubConfig,

    /// Bounds that protect the server from any one client.
    #[command(flatten)]
    pub limits: Limits,

    /// Who may connect and what they may do.
    #[command(flatten)]
    pub auth: AuthConfig,

    /// Logging.
    #[command(flatten)]
    pub log: LogConfig,

    /// Redis URL (`redis://host:port/db`) for running several instances as one. Unset: a single
    /// instance with in-memory state only.
    #[arg(long, env = "BEACON_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How the instance uses Redis (only with `--redis-url`).
    #[command(flatten)]
    pub redis: RedisConfig,

    /// Directory for durable storage (last positions and track history). Unset: memory only.
    #[arg(long, env = "BEACON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Durable store settings (history retention and downsampling), used with `--data-dir`.
    #[command(flatten)]
    pub store: crate::store::StoreConfig,

    /// Phone-app ingest routes (Traccar Client / OsmAnd, OwnTracks).
    #[command(flatten)]
    pub ingest: crate::ingest::IngestConfig,

    /// Run N simulated devices inside the server, in group `demo`. Default 0 (none).
    #[arg(long, env = "BEACON_DEMO", default_value_t = 0)]
    pub demo: usize,

    /// Centre of the demo devices' street grid, as `lat,lon`. Default 52.5200,13.4050.
    #[arg(long, env = "BEACON_DEMO_CENTER", default_value = "52.5200,13.4050",
          value_parser = crate::demo::parse_center)]
    pub demo_center: (f64, f64),

    /// Seconds to wait for connections to close after SIGTERM/SIGINT before exiting anyway.
    /// Default 10.
    #[arg(long, env = "BEACON_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    /// The documented defaults (and whatever `BEACON_*` variables the environment sets).
    fn default() -> Self {
        Config::parse_from(["serve"])
    }
}

impl Config {
    /// Grace period for shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Fan-out and presence timing.
#[derive(Clone, Debug, Args)]
pub struct HubConfig {
    /// Batch interval in ms: fixes arriving within one tick are coalesced to the latest per
    /// device and sent as one frame per group; a busy group is sent at most once per tick, a
    /// quiet one at once. Default 100. Range 5-10000.
    #[arg(long, env = "BEACON_TICK_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(5..=10_000))]
    pub tick_ms: u64,

    /// Seconds after its last report that a device without an open socket (an HTTP client)
    /// counts as offline. Default 120.
    #[arg(long, env = "BEACON_STALE_SECS", default_value_t = 120)]
    pub stale_secs: u64,

    /// Seconds a last position is kept (and shown, offline) after it was received. Default
    /// 86400 (one day).
    #[arg(long, env = "BEACON_RETENTION_SECS", default_value_t = 86_400)]
    pub retention_secs: u64,
}

impl HubConfig {
    /// The tick as a duration.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

/// Bounds that protect the server from any one client.
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Most WebSocket connections held at once; past it, upgrades are refused with 503.
    /// Default 10000. Each connection costs an open file: keep it below `ulimit -n`.
    #[arg(long, env = "BEACON_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most WebSocket connections held at once from one client address (an IPv6 client counts
    /// by its /64); past it, upgrades are refused with 429. Default 500; 0 turns the bound off.
    /// Behind a proxy every client shares the proxy's address: set `--trust-proxy` there.
    #[arg(long, env = "BEACON_MAX_CONNECTIONS_PER_IP", default_value_t = 500)]
    pub max_connections_per_ip: usize,

    /// Messages per second one connection may send, sustained (a token bucket refilled at this
    /// rate). A message over the limit is not applied and is answered by a `rate_limited`
    /// error. Default 20. Range 1-100000.
    #[arg(long, env = "BEACON_RATE_PER_SEC", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_per_sec: u32,

    /// Messages one connection may send in a burst above the sustained rate (the bucket's
    /// size). Default 40. Range 1-100000.
    #[arg(long, env = "BEACON_RATE_BURST", default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_burst: u32,

    /// Consecutive rate-limited messages after which the connection is closed with 1008.
    /// Default 20. Range 1-100000.
    #[arg(long, env = "BEACON_RATE_STRIKES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_strikes: u32,

    /// Seconds between the WebSocket pings the server sends to every connection. Default 20
    /// (below the 60 s idle timeout of common load balancers). Range 1-3600.
    #[arg(long, env = "BEACON_PING_INTERVAL_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_interval_secs: u64,

    /// Seconds a connection may stay silent (no frame, no pong) before it is closed with
    /// 1001; checked at each ping. Default 60; must exceed the ping interval.
    #[arg(long, env = "BEACON_IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,

    /// Seconds a new connection has to finish its TLS handshake and to send a complete request
    /// head; an idle keep-alive connection gets the same time to start its next request.
    /// Default 10. Range 1-300.
    #[arg(long, env = "BEACON_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout_secs: u64,

    /// Seconds an HTTP request (body included) may take before it is answered with 408.
    /// Default 30. Range 1-3600. WebSocket sessions are not requests and are not bound by it.
    #[arg(long, env = "BEACON_REQUEST_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// Largest client frame (and message) in bytes; a larger one closes the socket with 1009.
    /// Default 16384.
    #[arg(long, env = "BEACON_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub max_frame_bytes: usize,

    /// Frames queued for one connection (batches its socket could not take at once) before
    /// the hub starts dropping batches for it (the client then gets fresh snapshots once it
    /// reads again). Default 32. The frames are shared with other subscribers, so the bound is
    /// on references, not copies.
    #[arg(long, env = "BEACON_QUEUE_FRAMES", default_value_t = 32)]
    pub queue_frames: usize,

    /// Seconds a client may leave the server unable to write to it before it is closed with
    /// 1013. Default 10.
    #[arg(long, env = "BEACON_SLOW_CLOSE_SECS", default_value_t = 10)]
    pub slow_close_secs: u64,

    /// Bytes the socket reader buffers per connection. Default 512: client messages are a few
    /// hundred bytes, and a larger frame still arrives (the buffer grows up to the frame limit).
    #[arg(long, env = "BEACON_READ_BUFFER_BYTES", default_value_t = 512)]
    pub read_buffer_bytes: usize,

    /// Kernel send buffer of each accepted socket (SO_SNDBUF), in bytes. Left to autotuning the
    /// kernel grows it to megabytes, which hides a client that stopped reading for minutes
    /// while it soaks up kernel memory; a fixed size makes such a client fill its queue, get
    /// dropped batches and then a resync or a 1013 close within `--slow-close-secs`. 64 KiB
    /// still carries a 600 KiB snapshot across a 100 ms round trip in about a second. 0 leaves
    /// the kernel's autotuning. Default 65536.
    #[arg(long, env = "BEACON_SEND_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub send_buffer_bytes: usize,

    /// Bytes a connection buffers before writing them to the socket: frames queued together
    /// go out in one write up to this size. The buffer keeps its largest size for the life of
    /// the connection, so this (with large messages sent as 2 KiB fragments) bounds the idle
    /// memory of every connection. Default 2048.
    #[arg(long, env = "BEACON_WRITE_BUFFER_BYTES", default_value_t = 2048)]
    pub write_buffer_bytes: usize,

    /// Largest body accepted by `POST /v1/positions` and the ingest routes, in bytes. Default
    /// 262144.
    #[arg(long, env = "BEACON_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Most fixes in one `POST /v1/positions` list. Default 1000.
    #[arg(long, env = "BEACON_MAX_BATCH_FIXES", default_value_t = 1000)]
    pub max_batch_fixes: usize,
}

impl Limits {
    /// How long a blocked client is tolerated.
    pub fn slow_close(&self) -> Duration {
        Duration::from_secs(self.slow_close_secs)
    }

    /// Time between server pings.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    /// Silence after which a connection is closed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Time for a TLS handshake and for a request head.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// Time for a whole HTTP request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// Authentication modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No tokens: identity comes from the query (`?id=&groups=&role=`). For local use.
    None,
    /// Signed JWTs.
    Jwt,
}

/// Who may connect and what they may do.
#[derive(Clone, Debug, Args)]
pub struct AuthConfig {
    /// Authentication mode. Default `none` (identity from the query string).
    #[arg(long = "auth", env = "BEACON_AUTH", value_enum, default_value = "none")]
    pub mode: AuthMode,

    /// Allow `--auth none` on a non-loopback address. Default false: the server refuses to
    /// start there, since anyone who can reach it could read and write every position.
    #[arg(long, env = "BEACON_INSECURE", default_value_t = false)]
    pub insecure: bool,

    /// HMAC secret for HS256 tokens (`--auth jwt`), at least 32 bytes. Unset: HS256 tokens
    /// are refused. `beacon token` signs with the same secret.
    #[arg(long, env = "BEACON_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JSON Web Key Set file with the public keys of RS256/ES256 tokens. Re-read like a URL
    /// (on an unknown `kid`, and every `--jwks-refresh-secs`).
    #[arg(long, env = "BEACON_JWKS_FILE", conflicts_with = "jwks_url")]
    pub jwks_file: Option<PathBuf>,

    /// URL of the identity provider's JSON Web Key Set (e.g. Cognito's
    /// `https://cognito-idp.REGION.amazonaws.com/POOL/.well-known/jwks.json`). `https` only,
    /// except for loopback hosts.
    #[arg(long, env = "BEACON_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Seconds between routine re-reads of the key set. Default 300.
    #[arg(long, env = "BEACON_JWKS_REFRESH_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub jwks_refresh_secs: u64,

    /// Least seconds between two re-reads of the key set caused by tokens naming an unknown
    /// `kid` (key rotation). Bounds what forged `kid`s can cost. Default 30.
    #[arg(long, env = "BEACON_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub jwks_min_refresh_secs: u64,

    /// Required `iss` claim. Unset: not checked.
    #[arg(long, env = "BEACON_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim (one of the token's audiences). Unset: not checked.
    #[arg(long, env = "BEACON_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Claim holding the device or viewer id. Default `sub`. The value must pass the
    /// protocol's id rules (Auth0's `provider|id` subjects do not: use a custom claim).
    #[arg(long, env = "BEACON_JWT_ID_CLAIM", default_value = "sub")]
    pub jwt_id_claim: String,

    /// Claim holding the groups: a list of ids, or one string of comma-separated ids.
    /// Default `groups`; Cognito: `cognito:groups`.
    #[arg(long, env = "BEACON_JWT_GROUPS_CLAIM", default_value = "groups")]
    pub jwt_groups_claim: String,

    /// Claim holding the role: `device` or `viewer`, or a list of roles (with `device` in it
    /// the client is a device, else with `viewer` a viewer). Default `role`.
    #[arg(long, env = "BEACON_JWT_ROLE_CLAIM", default_value = "role")]
    pub jwt_role_claim: String,

    /// Role of a token without the role claim. Default `device`.
    #[arg(long, env = "BEACON_JWT_DEFAULT_ROLE", default_value = "device",
          value_parser = crate::auth::parse_role)]
    pub jwt_default_role: Role,

    /// Seconds of clock skew tolerated on `exp` and `nbf`. Default 30. A socket is closed
    /// with 1008 once `exp` plus this leeway has passed.
    #[arg(long, env = "BEACON_JWT_LEEWAY_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_secs: u64,

    /// Origins a browser may connect from (comma-separated, exact, e.g.
    /// `https://map.example.com`; `*` allows any). They also get CORS on REST routes. Unset:
    /// only same-origin browsers (Origin host equal to Host) and clients sending no Origin.
    #[arg(long, env = "BEACON_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Take the client address from the last `X-Forwarded-For` entry (the one the proxy in
    /// front of Beacon appended) for the per-address connection limit. Only behind a proxy
    /// that sets it: otherwise clients could pick their own address. Default false.
    #[arg(long, env = "BEACON_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,
}

/// Optional TLS. Both flags or neither.
#[derive(Clone, Debug, Args)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain. Unset: plain HTTP (put TLS in front).
    #[arg(long, env = "BEACON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "BEACON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging.
#[derive(Clone, Debug, Args)]
pub struct LogConfig {
    /// Log format. Default `pretty`. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "BEACON_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

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
