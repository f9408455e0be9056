//! Fan-out timing and the bounds that protect the server from any one client.

use std::time::Duration;

use clap::Args;

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

    /// Most plain HTTP connections (not yet upgraded to a WebSocket) held at once from one
    /// peer address; past it, a new connection is closed as soon as it is accepted, before any
    /// byte is read. Counted by the TCP peer (an IPv6 client by its /64), so behind a proxy
    /// every client shares the proxy's address: raise it there or set 0 (no bound). Default
    /// 500, the WebSocket bound per address: every WebSocket starts as a plain HTTP connection,
    /// so a burst of reconnects from one address (a carrier NAT, a fleet gateway, a restart)
    /// must fit in it.
    #[arg(
        long,
        env = "BEACON_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 500
    )]
    pub max_http_connections_per_ip: usize,

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
