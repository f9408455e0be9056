//! The `beacon` binary: parses the command line and hands over to the library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use beacon::Config;
use beacon::config::LogFormat;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Beacon: real-time location broadcast server.
#[derive(Debug, Parser)]
#[command(name = "beacon", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<Config>),
    /// Exit 0 when the local server answers `GET /readyz` with 200 (for container health
    /// checks: no shell or curl needed).
    Healthcheck {
        /// Address of the server; default: the port of BEACON_LISTEN on 127.0.0.1.
        #[arg(long, env = "BEACON_HEALTHCHECK_ADDR")]
        addr: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => run_server(*config),
        Command::Healthcheck { addr } => healthcheck(addr),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("beacon: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_server(config: Config) -> anyhow::Result<()> {
    init_logging(config.log.log_format);
    let mut config = config;
    config.limits.max_connections = raise_open_file_limit(config.limits.max_connections);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        beacon::serve(listener, config, beacon::shutdown::signal())
            .await
            .context("serving")
    })
}

/// Raises the soft open-file limit to the hard limit (container runtimes often start processes
/// at 1024) and returns the connection limit that fits under it: past the open-file limit a
/// connection could not even be accepted, so it is better refused with 503.
fn raise_open_file_limit(max_connections: usize) -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // The listener, Redis, the store, HTTP requests and logs need descriptors too.
            let usable = limit.saturating_sub(OPEN_FILE_RESERVE) as usize;
            if max_connections > usable {
                tracing::warn!(
                    open_file_limit = limit,
                    requested = max_connections,
                    max_connections = usable,
                    "the open-file limit is below --max-connections; lowering it"
                );
                usable
            } else {
                tracing::debug!(open_file_limit = limit, "open-file limit");
                max_connections
            }
        }
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-file limit");
            max_connections
        }
    }
}

/// Descriptors kept free of WebSocket connections (listener, Redis, store, HTTP requests).
const OPEN_FILE_RESERVE: u64 = 256;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn healthcheck(addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => {
            let listen: SocketAddr = std::env::var("BEACON_LISTEN")
                .unwrap_or_else(|_| "127.0.0.1:8080".into())
                .parse()
                .context("BEACON_LISTEN is not an address")?;
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
    };
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.take(64 * 1024).read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("/readyz answered {status:?}");
    }
    Ok(())
}
