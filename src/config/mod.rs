//! Configuration of `beacon serve`, grouped by concern: every flag of every component lives
//! here, so components import their settings and never the other way round.
//!
//! Every flag is also an environment variable `BEACON_<FLAG>`. Each field documents its default
//! and, where it is a bound, what it protects.
//!
//! - this module: [`Config`], logging, TLS, the demo;
//! - `limits`: fan-out timing ([`HubConfig`]) and the bounds on clients ([`Limits`]);
//! - `auth`: who may connect ([`AuthConfig`]);
//! - `storage`: Redis ([`RedisConfig`]) and the durable store ([`StoreConfig`]);
//! - `ingest`: the phone-app routes ([`IngestConfig`]).
//! - `geofence`: bounds and noise defaults of geofences ([`GeofenceConfig`]).

mod auth;
mod geofence;
mod ingest;
mod limits;
mod storage;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

pub use auth::{AuthConfig, AuthMode};
pub use geofence::GeofenceConfig;
pub use ingest::IngestConfig;
pub use limits::{HubConfig, Limits};
pub use storage::{RedisConfig, StoreConfig, parse_redis_prefix};
pub use webhooks::WebhookConfig;

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
    pub store: StoreConfig,

    /// Phone-app ingest routes (Traccar Client / OsmAnd, OwnTracks).
    #[command(flatten)]
    pub ingest: IngestConfig,

    /// Geofences and proximity rules: bounds and default noise settings.
    #[command(flatten)]
    pub geofences: GeofenceConfig,

    /// Run N simulated devices inside the server, in group `demo`. Default 0 (none).
    #[arg(long, env = "BEACON_DEMO", default_value_t = 0)]
    pub demo: usize,

    /// Centre of the demo devices' street grid, as `lat,lon`. Default 52.5200,13.4050.
    #[arg(long, env = "BEACON_DEMO_CENTER", default_value = "52.5200,13.4050",
          value_parser = parse_center)]
    pub demo_center: (f64, f64),

    /// Seconds to wait for connections to close after SIGTERM/SIGINT before exiting anyway.
    /// Default 10.
    #[arg(long, env = "BEACON_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Webhook endpoints and deliveries.
    #[command(flatten)]
    pub webhooks: WebhookConfig,
}

impl Default for Config {
    /// The documented defaults. Unlike parsing a command line, this never reads `BEACON_*`
    /// variables, so a server built from it (in tests, say) is the same whatever the
    /// environment holds.
    fn default() -> Self {
        let command = Config::command().mut_args(|arg| arg.env(None));
        // Every flag has a default or is optional, so an empty command line always parses;
        // a failure here is a mistake in the flag definitions, caught by the unit tests.
        let matches = command
            .try_get_matches_from(["serve"])
            .expect("the flags' defaults parse");
        Config::from_arg_matches(&matches).expect("the flags' defaults fit the struct")
    }
}

impl Config {
    /// Grace period for shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The oldest fix time accepted at `now_ms`: a fix before it would be lost at once. With
    /// `--data-dir` that is the history retention (`--history-retention-days`, by fix time);
    /// without, the hub's `--retention-secs`, the longest anything of a fix is kept.
    pub fn oldest_fix_ms(&self, now_ms: i64) -> i64 {
        let window_ms = match self.data_dir {
            Some(_) => self.store.retention_ms(),
            None => i64::try_from(self.hub.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        };
        now_ms.saturating_sub(window_ms)
    }
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

/// Parses `lat,lon`.
pub fn parse_center(s: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = s
        .split_once(',')
        .ok_or_else(|| format!("expected lat,lon, got {s:?}"))?;
    let lat: f64 = lat
        .trim()
        .parse()
        .map_err(|_| format!("bad latitude {lat:?}"))?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| format!("bad longitude {lon:?}"))?;
    if !(-85.0..=85.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err("centre out of range (lat within ±85, lon within ±180)".into());
    }
    Ok((lat, lon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_centre_is_checked() {
        assert_eq!(parse_center("52.52, 13.405"), Ok((52.52, 13.405)));
        assert!(parse_center("95,0").is_err());
        assert!(parse_center("x").is_err());
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.hub.tick_ms, 100);
        assert_eq!(config.limits.max_connections, 10_000);
        assert_eq!(config.auth.mode, AuthMode::None);
        assert_eq!(config.redis.redis_prefix, "beacon");
        assert_eq!(config.store.history_retention_days, 30);
        assert_eq!(config.ingest.default_group.as_str(), "default");
        assert_eq!(config.demo_center, (52.52, 13.405));
    }

    /// Run in a child process with `BEACON_TICK_MS` and `BEACON_AUTH` set (see the next test):
    /// the defaults must not pick them up.
    #[test]
    fn defaults_ignore_the_environment_child() {
        if std::env::var_os("BEACON_CONFIG_TEST_CHILD").is_none() {
            return;
        }
        assert_eq!(std::env::var("BEACON_TICK_MS").as_deref(), Ok("7"));
        let config = Config::default();
        assert_eq!(config.hub.tick_ms, 100);
        assert_eq!(config.auth.mode, AuthMode::None);
    }

    #[test]
    fn defaults_ignore_the_environment() {
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args([
                "--exact",
                "config::tests::defaults_ignore_the_environment_child",
            ])
            .env("BEACON_CONFIG_TEST_CHILD", "1")
            .env("BEACON_TICK_MS", "7")
            .env("BEACON_AUTH", "jwt")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "Config::default() read BEACON_* variables"
        );
    }
}
