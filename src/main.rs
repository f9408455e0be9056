//! The `beacon` binary: parses the command line and hands over to the library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use beacon::Config;
use beacon::auth::{MintRequest, mint_hs256};
use beacon::config::LogFormat;
use beacon::model::Role;
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
    /// Print an HS256 token for a device or viewer, signed with the server's secret (for
    /// operators and tests; identity providers mint tokens in production).
    Token(TokenArgs),
}

/// What `beacon token` puts in the token. The claim names and checks follow the same
/// `BEACON_*` variables as the server, so a token minted beside a server fits it.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Device or viewer id (the `sub` claim).
    #[arg(long)]
    sub: String,
    /// Comma-separated group ids.
    #[arg(long, value_delimiter = ',', required = true)]
    groups: Vec<String>,
    /// `device` (publish and watch) or `viewer` (watch only). Default `device`.
    #[arg(long, default_value = "device")]
    role: Role,
    /// Lifetime: seconds, or a number followed by s, m, h or d. Default 24h.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: u64,
    /// HMAC secret, at least 32 bytes. Prefer the variable: a flag shows in process lists.
    #[arg(long, env = "BEACON_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// `iss` claim. Default: none.
    #[arg(long, env = "BEACON_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` claim. Default: none.
    #[arg(long, env = "BEACON_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Claim that also carries the id, besides `sub`. Default `sub`.
    #[arg(long, env = "BEACON_JWT_ID_CLAIM", default_value = "sub")]
    jwt_id_claim: String,
    /// Claim for the groups. Default `groups`.
    #[arg(long, env = "BEACON_JWT_GROUPS_CLAIM", default_value = "groups")]
    jwt_groups_claim: String,
    /// Claim for the role. Default `role`.
    #[arg(long, env = "BEACON_JWT_ROLE_CLAIM", default_value = "role")]
    jwt_role_claim: String,
}

/// Parses `90`, `90s`, `15m`, `12h` or `7d` into seconds (at least 1, at most 10 years).
fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600, 15m, 12h or 7d"))?;
    match number.checked_mul(scale) {
        Some(secs) if (1..=10 * 365 * 86_400).contains(&secs) => Ok(secs),
        _ => Err("the lifetime must be between 1 second and 10 years".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => run_server(*config),
        Command::Healthcheck { addr } => healthcheck(addr),
        Command::Token(args) => token(&args),
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
    check_open_file_limit(config.limits.max_connections)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        beacon::serve(listener, config, shutdown_signal())
            .await
            .context("serving")
    });
    // `serve` has already waited as long as the grace period allows; a task it gave up on
    // (a store writer stuck on its disk) must not hold the process.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    served
}

/// What is left of the exit once `serve` returned: the runtime stops its remaining tasks.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// Completes on the first SIGINT or SIGTERM; from then on a second one ends the process at
/// once (an operator pressing Ctrl-C again, or an orchestrator that lost patience), with the
/// status a shell gives a process killed by SIGINT.
async fn shutdown_signal() {
    beacon::shutdown::signal().await;
    tokio::spawn(async {
        beacon::shutdown::signal().await;
        tracing::warn!("second signal: exiting without waiting for the shutdown to finish");
        std::process::exit(130);
    });
}

/// Makes sure every connection `--max-connections` allows can hold its open file: raises the
/// soft open-file limit to the hard limit (container runtimes often start processes at 1024),
/// and refuses to start when even that is too low, naming both ways out. Otherwise connections
/// past the limit would fail to be accepted while `/readyz` says ready.
fn check_open_file_limit(max_connections: usize) -> anyhow::Result<()> {
    let needed = (max_connections as u64).saturating_add(OPEN_FILE_RESERVE);
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "could not read or raise the open-file limit");
            return Ok(());
        }
    };
    if limit < needed {
        let fits = limit.saturating_sub(OPEN_FILE_RESERVE);
        let or_lower = if fits > 0 {
            format!(" or lower --max-connections to at most {fits}")
        } else {
            String::new()
        };
        bail!(
            "the open-file limit ({limit}, the hard limit) is too low for --max-connections \
             {max_connections}, which needs {needed} open files ({OPEN_FILE_RESERVE} kept for \
             the listener, Redis, the store and HTTP requests): raise it to at least {needed} \
             (ulimit -n, LimitNOFILE, the container's nofile ulimit){or_lower}"
        );
    }
    tracing::debug!(open_file_limit = limit, needed, "open-file limit");
    Ok(())
}

/// Descriptors kept free of WebSocket connections (listener, Redis, store, HTTP requests).
const OPEN_FILE_RESERVE: u64 = 256;

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let request = MintRequest {
        sub: &args.sub,
        groups: &args.groups,
        role: args.role,
        ttl_secs: args.ttl,
        issuer: args.jwt_issuer.as_deref().filter(|s| !s.is_empty()),
        audience: args.jwt_audience.as_deref().filter(|s| !s.is_empty()),
        id_claim: &args.jwt_id_claim,
        groups_claim: &args.jwt_groups_claim,
        role_claim: &args.jwt_role_claim,
    };
    let token = mint_hs256(args.jwt_secret.as_bytes(), &request).context("minting a token")?;
    println!("{token}");
    Ok(())
}

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
