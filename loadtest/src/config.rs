//! Command line and the resolved run plan.
//!
//! [`Cli`] is what the user types; [`Plan`] is what every worker runs: the scenario defaults
//! filled in, targets resolved to socket addresses, and a run id that keeps this run's device
//! and group ids apart from any earlier run against the same server. The plan is serializable
//! because worker processes receive it as their first line on stdin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::slo::Slo;
use crate::units::parse_duration;

/// `beacon-loadtest`: drives a running Beacon server with simulated devices and viewers and
/// reports connections, throughput, end-to-end latency, state convergence and server cost.
#[derive(Debug, Clone, Parser)]
#[command(name = "beacon-loadtest", version, about, long_about = None)]
pub struct Cli {
    /// Load shape: idle (memory per connection), fleet (groups of devices watching each other),
    /// viewers (one big group plus many watchers), storm (connect/disconnect churn).
    #[arg(long, value_enum, default_value_t = Scenario::Fleet)]
    pub scenario: Scenario,

    /// Server base URL(s), repeatable or comma-separated; connections go round-robin across
    /// them. `/v1/ws` is appended unless the path already ends with it.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    pub url: Vec<String>,

    /// Simulated devices (each its own socket). Default: 1000 (viewers and storm: 200).
    #[arg(long)]
    pub devices: Option<u32>,

    /// Simulated viewers (role=viewer sockets). Default: 0 (viewers scenario: 1000).
    #[arg(long)]
    pub viewers: Option<u32>,

    /// Number of groups; devices and viewers are dealt round-robin over them.
    /// Default: devices / group size, rounded up.
    #[arg(long)]
    pub groups: Option<u32>,

    /// Devices per group when `--groups` is not given. Default: 100 (viewers scenario: all
    /// devices in one group).
    #[arg(long)]
    pub group_size: Option<u32>,

    /// Fixes per second per device. Default: 1 (storm: 5, during each short session).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Codec: json (`beacon.v1.json`, text frames), msgpack (`beacon.v1.msgpack`, binary
    /// frames) or mixed (alternating per connection).
    #[arg(long, value_enum, default_value_t = CodecChoice::Json)]
    pub codec: CodecChoice,

    /// Ramp-up rate in new connections per second, over all workers.
    #[arg(long, default_value_t = 500.0)]
    pub ramp: f64,

    /// Steady phase after the ramp-up: 30s, 500ms, 2m. Default: 30s (idle: 10s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Hard deadline for the whole run; past it the harness stops its workers and exits 3.
    /// Default: twice the planned ramp + duration + settle + 60s.
    #[arg(long, value_parser = parse_duration)]
    pub max_time: Option<Duration>,

    /// Longest wait for every subscriber to hold every device's latest fix once sending stops.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub settle: Duration,

    /// Timeout for the TCP connect plus the WebSocket handshake of one connection.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,

    /// Local source addresses 127.0.0.1..127.0.0.N to spread connections over (IPv4 loopback
    /// targets only), each with its own ephemeral port range. Default: one per 25,000
    /// connections.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: Option<u8>,

    /// Worker processes. Default: as many as the open-file limit requires (one per ~19,800
    /// connections), and at least two per core for runs of 1,000 connections or more;
    /// smaller runs stay in the parent process.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Option<u32>,

    /// Access token sent as `?access_token=` on every connection (servers with auth on).
    #[arg(long)]
    pub token: Option<String>,

    /// Server process id to sample (RSS from /proc/PID/status, CPU from /proc/PID/stat) every
    /// second; repeatable.
    #[arg(long)]
    pub server_pid: Vec<u32>,

    /// Service-level objectives; the exit code is 1 when one is missed. Keys: p50, p90, p99,
    /// p99.9, max, mean (latency: 250ms, 1s, 800us), loss (fraction or percent), errors,
    /// failed, resyncs, disconnects (counts). Example: `p99=250ms,loss=0`.
    #[arg(long, value_parser = Slo::parse)]
    pub slo: Option<Slo>,

    /// Write the full JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// Allow targets outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,

    /// Centre of the simulated street grid, `lat,lon`.
    #[arg(long, value_parser = parse_center, default_value = "52.52,13.405")]
    pub center: Center,

    /// Seed for the simulated paths (same seed, same paths).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Tag in every device and group id of the run (`{ID}-d{n}`, `{ID}-g{n}`): 1-16 ASCII
    /// letters and digits. Fixing it lets group settings (geofences, webhooks) be made before
    /// the run; devices then reuse the ids of an earlier run with the same tag, so use a fresh
    /// server (or a fresh tag) for each run. Default: `lt` and six random hex digits.
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,

    /// Slow consumers: extra viewer connections, dealt over the groups like viewers, that read
    /// their welcome and initial snapshot and then never read their socket again (it stays
    /// open). They are left out of latency, updates and the latest-state check and reported
    /// on their own: how many the server closed, with which code, and how many were still open.
    #[arg(long, default_value_t = 0)]
    pub stalled: u32,

    /// How long stalled connections keep reading after their greeting before they stop.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub stall_after: Duration,

    /// Storm: fixes each short session sends before it disconnects.
    #[arg(long, default_value_t = 3)]
    pub storm_fixes: u32,

    /// Storm: mean pause between a disconnect and the next connect (jittered ±50%).
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    pub storm_pause: Duration,

    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Internal: run as a worker process driven by the parent over stdin/stdout.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// The load shapes the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Connections only: each device sends one fix and stays idle (memory per connection).
    Idle,
    /// Groups of devices at a steady rate, every device watching its own group.
    Fleet,
    /// One big group of devices and many viewers watching it.
    Viewers,
    /// Connect, send a few fixes, disconnect, reconnect, over and over.
    Storm,
}

impl Scenario {
    /// Lower-case name, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fleet => "fleet",
            Scenario::Viewers => "viewers",
            Scenario::Storm => "storm",
        }
    }
}

/// The codec choice of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecChoice {
    /// `beacon.v1.json` for every connection.
    Json,
    /// `beacon.v1.msgpack` for every connection.
    Msgpack,
    /// Members of each group alternate between JSON and MessagePack.
    Mixed,
}

impl CodecChoice {
    /// The codec of the client whose turn (see [`crate::spec::ClientSpec`]) is `turn`.
    pub(crate) fn for_client(self, turn: u32) -> Codec {
        match self {
            CodecChoice::Json => Codec::Json,
            CodecChoice::Msgpack => Codec::Msgpack,
            CodecChoice::Mixed if turn.is_multiple_of(2) => Codec::Json,
            CodecChoice::Mixed => Codec::Msgpack,
        }
    }

    /// Lower-case name, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CodecChoice::Json => "json",
            CodecChoice::Msgpack => "msgpack",
            CodecChoice::Mixed => "mixed",
        }
    }
}

/// The codec of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// JSON objects in text frames.
    Json,
    /// MessagePack maps with named keys in binary frames.
    Msgpack,
}

impl Codec {
    /// The `Sec-WebSocket-Protocol` value that selects this codec.
    pub(crate) fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => "beacon.v1.json",
            Codec::Msgpack => "beacon.v1.msgpack",
        }
    }
}

/// Centre of the simulated street grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Center {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
}

/// One server instance to connect to, resolved before the run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// WebSocket endpoint without query, e.g. `ws://127.0.0.1:8080/v1/ws`.
    pub url: String,
    /// Address the TCP connection goes to (resolved once, not per connection).
    pub addr: SocketAddr,
    /// Whether `addr` is a loopback address (source-address spreading applies only then).
    pub loopback: bool,
}

/// Everything a worker needs to run its share, with defaults resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Short tag in every device and group id of this run (`--run-id`, random by default).
    pub run_id: String,
    /// The load shape.
    pub scenario: Scenario,
    /// Number of devices over all workers.
    pub devices: u32,
    /// Number of viewers over all workers.
    pub viewers: u32,
    /// Number of stalled viewers (slow consumers) over all workers.
    pub stalled: u32,
    /// How long a stalled viewer keeps reading after its greeting, in milliseconds.
    pub stall_after_ms: u64,
    /// Number of groups.
    pub groups: u32,
    /// Fixes per second per device while sending.
    pub rate_hz: f64,
    /// Codec choice.
    pub codec: CodecChoice,
    /// New connections per second over all workers.
    pub ramp_per_s: f64,
    /// Steady phase length, in milliseconds.
    pub duration_ms: u64,
    /// Longest convergence wait at the end, in milliseconds.
    pub settle_ms: u64,
    /// Per-connection connect + handshake timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Hard deadline for the whole run, in milliseconds.
    pub max_time_ms: u64,
    /// Server endpoints; client `i` uses `targets[i % len]`.
    pub targets: Vec<Target>,
    /// Source addresses 127.0.0.1..=127.0.0.N used for IPv4 loopback targets.
    pub source_addrs: u8,
    /// Optional access token for every connection.
    pub token: Option<String>,
    /// Number of worker processes (1 = in-process).
    pub workers: u32,
    /// Street grid centre.
    pub center: Center,
    /// Path seed.
    pub seed: u64,
    /// Storm: fixes per short session.
    pub storm_fixes: u32,
    /// Storm: mean pause between sessions, in milliseconds.
    pub storm_pause_ms: u64,
    /// Epoch milliseconds that fix timestamps are stored relative to (kept in `u32` offsets).
    pub base_ms: u64,
}

/// Scenario defaults, before command-line overrides.
struct Defaults {
    devices: u32,
    viewers: u32,
    group_size: Option<u32>,
    rate_hz: f64,
    duration: Duration,
}

fn defaults(scenario: Scenario) -> Defaults {
    match scenario {
        Scenario::Idle => Defaults {
            devices: 1000,
            viewers: 0,
            group_size: Some(100),
            rate_hz: 1.0,
            duration: Duration::from_secs(10),
        },
        Scenario::Fleet => Defaults {
            devices: 1000,
            viewers: 0,
            group_size: Some(100),
            rate_hz: 1.0,
            duration: Duration::from_secs(30),
        },
        Scenario::Viewers => Defaults {
            devices: 200,
            viewers: 1000,
            group_size: None,
            rate_hz: 1.0,
            duration: Duration::from_secs(30),
        },
        Scenario::Storm => Defaults {
            devices: 200,
            viewers: 0,
            group_size: Some(100),
            rate_hz: 5.0,
            duration: Duration::from_secs(30),
        },
    }
}

/// Connections one source address can carry to one target before its ephemeral ports
/// (32768-60999) run short; the default `--source-addrs` keeps below it.
pub(crate) const CONNECTIONS_PER_SOURCE_ADDR: u32 = 25_000;

impl Plan {
    /// Fills in scenario defaults and checks the combination makes sense.
    ///
    /// `targets` are already resolved (see `target`); `workers` comes from
    /// `limits::workers_needed` unless the user set it.
    pub fn build(
        cli: &Cli,
        targets: Vec<Target>,
        workers: u32,
        run_id: String,
    ) -> anyhow::Result<Plan> {
        let d = defaults(cli.scenario);
        let devices = cli.devices.unwrap_or(d.devices);
        let viewers = cli.viewers.unwrap_or(d.viewers);
        if devices == 0 && viewers == 0 {
            bail!("nothing to simulate: --devices and --viewers are both 0");
        }
        if devices == 0 && cli.scenario != Scenario::Idle {
            bail!("scenario {} needs at least one device", cli.scenario.name());
        }
        if cli.stalled > 0 && cli.scenario == Scenario::Idle {
            bail!("--stalled needs traffic to stall on: use fleet, viewers or storm");
        }
        let groups = match (cli.groups, cli.group_size.or(d.group_size)) {
            (Some(0), _) => bail!("--groups must be at least 1"),
            (Some(g), _) => g,
            (None, Some(0)) => bail!("--group-size must be at least 1"),
            (None, Some(size)) => devices.div_ceil(size).max(1),
            (None, None) => 1,
        };
        let rate_hz = cli.rate.unwrap_or(d.rate_hz);
        if !(rate_hz.is_finite() && rate_hz > 0.0 && rate_hz <= 1000.0) {
            bail!("--rate must be within (0, 1000] fixes per second");
        }
        if !(cli.ramp.is_finite() && cli.ramp > 0.0) {
            bail!("--ramp must be a positive number of connections per second");
        }
        if !(-85.0..=85.0).contains(&cli.center.lat) || !(-179.0..=179.0).contains(&cli.center.lon)
        {
            bail!("--center must be within lat [-85, 85] and lon [-179, 179]");
        }
        if targets.is_empty() {
            bail!("no --url given");
        }
        let duration = cli.duration.unwrap_or(d.duration);
        let connections = devices
            .checked_add(viewers)
            .and_then(|n| n.checked_add(cli.stalled))
            .context("too many connections")?;
        let ramp_s = f64::from(connections) / cli.ramp;
        let max_time = cli.max_time.unwrap_or_else(|| {
            Duration::from_secs_f64(2.0 * ramp_s) + duration + cli.settle + Duration::from_secs(60)
        });
        let source_addrs = cli.source_addrs.unwrap_or_else(|| {
            u8::try_from(
                connections
                    .div_ceil(CONNECTIONS_PER_SOURCE_ADDR)
                    .clamp(1, 254),
            )
            .unwrap_or(254)
        });
        Ok(Plan {
            run_id,
            scenario: cli.scenario,
            devices,
            viewers,
            stalled: cli.stalled,
            stall_after_ms: millis(cli.stall_after),
            groups,
            rate_hz,
            codec: cli.codec,
            ramp_per_s: cli.ramp,
            duration_ms: millis(duration),
            settle_ms: millis(cli.settle),
            connect_timeout_ms: millis(cli.connect_timeout),
            max_time_ms: millis(max_time),
            targets,
            source_addrs,
            token: cli.token.clone(),
            workers,
            center: cli.center,
            seed: cli.seed,
            storm_fixes: cli.storm_fixes.max(1),
            storm_pause_ms: millis(cli.storm_pause),
            base_ms: crate::clock::now_ms().saturating_sub(1_000),
        })
    }

    /// Total sockets the run holds at once (devices, viewers and stalled viewers).
    pub(crate) fn connections(&self) -> u32 {
        self.devices + self.viewers + self.stalled
    }

    /// The measured clients: devices plus viewers, without the stalled viewers.
    pub(crate) fn clients(&self) -> u32 {
        self.devices + self.viewers
    }

    /// The device number of client `index`, if that client is a device.
    pub(crate) fn device_of(&self, index: u32) -> Option<u32> {
        index
            .checked_sub(self.viewers)
            .filter(|&d| d < self.devices)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Parses `lat,lon`.
pub(crate) fn parse_center(text: &str) -> Result<Center, String> {
    let (lat, lon) = text
        .split_once(',')
        .ok_or_else(|| format!("`{text}` is not `lat,lon`"))?;
    let lat: f64 = lat
        .trim()
        .parse()
        .map_err(|_| format!("bad latitude in `{text}`"))?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| format!("bad longitude in `{text}`"))?;
    Ok(Center { lat, lon })
}

/// A fresh run id: 6 hex digits from the clock and the process id.
pub(crate) fn new_run_id() -> String {
    let mix = crate::clock::now_micros() ^ (u64::from(std::process::id()) << 20);
    format!("lt{:06x}", mix & 0xff_ffff)
}

/// Longest run id: the ids made from it (`{run_id}-d{n}`) stay well inside the protocol's
/// id length.
const MAX_RUN_ID_LEN: usize = 16;

/// Checks a `--run-id`: what [`new_run_id`] makes, 1-16 ASCII letters and digits.
pub(crate) fn parse_run_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_RUN_ID_LEN {
        return Err(format!(
            "`{text}` must be 1-{MAX_RUN_ID_LEN} characters long"
        ));
    }
    if !text.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "`{text}` may only contain ASCII letters and digits"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_parses() {
        let c = parse_center("48.85, 2.35").unwrap();
        assert_eq!(
            c,
            Center {
                lat: 48.85,
                lon: 2.35
            }
        );
        assert!(parse_center("48.85").is_err());
    }

    fn target() -> Target {
        Target {
            url: "ws://127.0.0.1:1/v1/ws".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            loopback: true,
        }
    }

    #[test]
    fn fleet_defaults_are_groups_of_100() {
        let cli = Cli::parse_from([
            "beacon-loadtest",
            "--scenario",
            "fleet",
            "--devices",
            "1000",
        ]);
        let plan = Plan::build(&cli, vec![target()], 1, "t".into()).unwrap();
        assert_eq!(plan.groups, 10);
        assert_eq!(plan.viewers, 0);
        assert_eq!(plan.rate_hz, 1.0);
        assert_eq!(plan.duration_ms, 30_000);
        assert_eq!(plan.source_addrs, 1);
        assert!(plan.max_time_ms > plan.duration_ms + plan.settle_ms);
    }

    #[test]
    fn viewers_scenario_puts_devices_in_one_group() {
        let cli = Cli::parse_from(["beacon-loadtest", "--scenario", "viewers"]);
        let plan = Plan::build(&cli, vec![target()], 1, "t".into()).unwrap();
        assert_eq!(plan.groups, 1);
        assert_eq!(plan.devices, 200);
        assert_eq!(plan.viewers, 1000);
    }

    #[test]
    fn many_connections_get_more_source_addresses() {
        let cli = Cli::parse_from(["beacon-loadtest", "--devices", "60000"]);
        let plan = Plan::build(&cli, vec![target()], 4, "t".into()).unwrap();
        assert_eq!(plan.source_addrs, 3);
    }

    #[test]
    fn stalled_viewers_add_sockets_but_not_clients() {
        let cli = Cli::parse_from([
            "beacon-loadtest",
            "--devices",
            "200",
            "--viewers",
            "10",
            "--stalled",
            "5",
            "--stall-after",
            "2s",
        ]);
        let plan = Plan::build(&cli, vec![target()], 1, "t".into()).unwrap();
        assert_eq!((plan.stalled, plan.stall_after_ms), (5, 2_000));
        assert_eq!(plan.connections(), 215);
        assert_eq!(plan.clients(), 210);
        assert_eq!(plan.device_of(9), None, "a viewer");
        assert_eq!(plan.device_of(10), Some(0));
        assert_eq!(plan.device_of(209), Some(199));
        assert_eq!(plan.device_of(210), None, "a stalled viewer");
        let plain = Plan::build(
            &Cli::parse_from(["beacon-loadtest"]),
            vec![target()],
            1,
            "t".into(),
        )
        .unwrap();
        assert_eq!((plain.stalled, plain.stall_after_ms), (0, 0));
        let idle = Cli::parse_from(["beacon-loadtest", "--scenario", "idle", "--stalled", "1"]);
        assert!(Plan::build(&idle, vec![target()], 1, "t".into()).is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        let cli = Cli::parse_from(["beacon-loadtest", "--devices", "0", "--viewers", "0"]);
        assert!(Plan::build(&cli, vec![target()], 1, "t".into()).is_err());
        let cli = Cli::parse_from(["beacon-loadtest", "--rate", "0"]);
        assert!(Plan::build(&cli, vec![target()], 1, "t".into()).is_err());
        assert!(Cli::try_parse_from(["beacon-loadtest", "--source-addrs", "0"]).is_err());
    }

    #[test]
    fn mixed_codec_alternates() {
        assert_eq!(CodecChoice::Mixed.for_client(0), Codec::Json);
        assert_eq!(CodecChoice::Mixed.for_client(1), Codec::Msgpack);
        assert_eq!(CodecChoice::Msgpack.for_client(0), Codec::Msgpack);
    }

    #[test]
    fn run_ids_are_valid_ids() {
        let id = new_run_id();
        assert!(id.len() <= MAX_RUN_ID_LEN);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(parse_run_id(&id), Ok(id));
    }

    #[test]
    fn run_id_can_be_fixed_and_is_checked() {
        assert_eq!(Cli::parse_from(["beacon-loadtest"]).run_id, None);
        let cli = Cli::parse_from(["beacon-loadtest", "--run-id", "fence1"]);
        assert_eq!(cli.run_id.as_deref(), Some("fence1"));
        assert_eq!(
            Cli::parse_from(["beacon-loadtest", "--run-id", "abcdefghij012345"])
                .run_id
                .as_deref(),
            Some("abcdefghij012345")
        );
        for bad in ["", "a-b", "run_1", "r.1", "é1", "abcdefghij0123456", "a b"] {
            assert!(
                Cli::try_parse_from(["beacon-loadtest", "--run-id", bad]).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
