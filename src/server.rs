//! Wiring: shared state, the router, the WebSocket upgrade, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, middleware};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{Authenticator, IdentityQuery};
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{IpConnections, client_ip};
use crate::metrics::Metrics;
use crate::protocol::Codec;
use crate::relay::Relay;
use crate::store::Store;
use crate::upgrade::{Handshake, NotAnUpgrade};
use crate::{http, session, web};

/// Largest amount a connection's write buffer may hold before writes fail. A flush writes at
/// most [`session::MAX_FRAMES_PER_FLUSH`] frames, each a batch or snapshot of one group, so
/// this only needs to hold the largest snapshot a group can produce.
pub const MAX_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// State shared by every handler and session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The running configuration.
    pub config: Arc<Config>,
    /// Latest positions and fan-out.
    pub hub: Arc<Hub>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Identity of requests.
    pub auth: Authenticator,
    /// One permit per open WebSocket: the connection limit.
    pub connections: Arc<Semaphore>,
    /// Open WebSockets per client address: the per-address limit.
    pub per_ip: Arc<IpConnections>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// The durable store, with `--data-dir`.
    pub store: Option<Arc<Store>>,
    /// The Redis relay, with `--redis-url` (set by [`serve`]).
    pub relay: Option<Arc<Relay>>,
}

impl AppState {
    /// Builds the state for `config`.
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(config.hub.clone(), metrics.clone()));
        AppState {
            auth: Authenticator::new(config.auth.clone(), Some(metrics.clone())),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            per_ip: Arc::new(IpConnections::new(config.limits.max_connections_per_ip)),
            config: Arc::new(config),
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            store: None,
            relay: None,
        }
    }
}

/// Runs the server on an already-bound `listener` until `shutdown` completes, then closes every
/// socket with 1001 and waits up to the grace period for sessions to end.
///
/// Refuses to start (an error naming the setting) when the security settings are unsafe or
/// unusable: `--auth none` on a non-loopback address without `--insecure`, a missing or short
/// JWT secret, a key set that cannot be loaded, unreadable TLS files.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let setup =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    crate::auth::check_listen(&config.auth, addr).map_err(|e| setup(&e))?;
    if config.limits.idle_timeout_secs <= config.limits.ping_interval_secs {
        return Err(setup(
            &"--idle-timeout-secs must exceed --ping-interval-secs",
        ));
    }
    let tls = crate::tls::server_config(&config.tls).map_err(|e| setup(&e))?;
    let mut state = AppState::new(config);
    state.auth.prepare().await.map_err(|e| setup(&e))?;
    state.store = crate::store::start(&state.config, &state.hub, &state.metrics)
        .await
        .map_err(io::Error::other)?;
    state.relay = Relay::from_config(&state.config, &state.hub, &state.metrics)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let background = TaskTracker::new();
    background.spawn(state.auth.clone().run_refresher(state.shutdown.clone()));
    if let Some(relay) = &state.relay {
        background.spawn(relay.clone().run(state.shutdown.clone()));
    }
    background.spawn(state.hub.clone().run_ticker(state.shutdown.clone()));
    background.spawn(state.hub.clone().run_sweeper(state.shutdown.clone()));
    if state.config.demo > 0 {
        let (hub, count, center) = (
            state.hub.clone(),
            state.config.demo,
            state.config.demo_center,
        );
        background.spawn(crate::demo::run(hub, count, center, state.shutdown.clone()));
    }
    background.close();

    let app = router(state.clone());
    info!(
        %addr,
        tls = tls.is_some(),
        auth = ?state.config.auth.mode,
        tick_ms = state.config.hub.tick_ms,
        "listening"
    );
    let token = state.shutdown.clone();
    let options = crate::listen::ListenOptions {
        tls,
        handshake_timeout: state.config.limits.handshake_timeout(),
        grace: state.config.shutdown_grace(),
        send_buffer_bytes: state.config.limits.send_buffer_bytes,
    };
    let result = crate::listen::run(listener, app, options, {
        let token = token.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = token.cancelled() => {}
            }
            info!("shutting down: closing connections with 1001");
            token.cancel();
        }
    })
    .await;
    token.cancel();
    state.sessions.close();
    let grace = state.config.shutdown_grace();
    if tokio::time::timeout(grace, state.sessions.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = state.sessions.len(),
            grace_secs = grace.as_secs(),
            "grace period over with sessions still open"
        );
    }
    background.wait().await;
    if let Some(store) = &state.store {
        // The ticker has stopped: flush what it left so the store sees every accepted fix.
        state.hub.flush_pending();
        store.close(grace).await;
    }
    info!("stopped");
    result
}

/// The HTTP routes, behind the origin check, CORS and the request timeout.
pub fn router(state: AppState) -> Router {
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.config.limits.request_timeout(),
    );
    Router::new()
        .route("/v1/ws", get(upgrade))
        .merge(http::routes(&state))
        .merge(crate::ingest::routes(&state))
        .merge(crate::track::routes())
        .merge(web::routes())
        .layer(state.auth.origins().cors())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::origin::guard,
        ))
        .layer(timeout)
        .with_state(state)
}

/// `GET /v1/ws`: checks identity, codec and capacity, then upgrades. (The origin was checked
/// by [`crate::auth::origin::guard`].)
async fn upgrade(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    handshake: Result<Handshake, NotAnUpgrade>,
) -> Response {
    let refuse = |status: StatusCode, kind: &str, message: String| {
        state.metrics.refused_bad_request.inc();
        http::error_response(status, kind, message)
    };
    let Ok(Query(query)) = query else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed query string".into(),
        );
    };
    let identity = match state.auth.identify(&headers, &query).await {
        Ok(identity) => identity,
        Err(e) => {
            match e.status() {
                StatusCode::UNAUTHORIZED => state.metrics.security.refused_unauthorized.inc(),
                StatusCode::FORBIDDEN => state.metrics.security.refused_forbidden.inc(),
                _ => state.metrics.refused_bad_request.inc(),
            };
            return e.into_response();
        }
    };
    let handshake = match handshake {
        Ok(handshake) => handshake,
        Err(e) => {
            state.metrics.refused_bad_request.inc();
            return e.into_response();
        }
    };
    // The client lists subprotocols in order of preference; the first one we speak wins.
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let codec = if offered.is_empty() {
        Codec::Json
    } else {
        match offered.iter().find_map(|p| Codec::from_protocol(p)) {
            Some(codec) => codec,
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "unsupported subprotocol: offer beacon.v1.json or beacon.v1.msgpack".into(),
                );
            }
        }
    };
    let offered = !offered.is_empty();
    let ip = client_ip(
        peer.map(|Extension(ConnectInfo(addr))| addr),
        &headers,
        state.config.auth.trust_proxy,
    );
    let Some(ip_permit) = state.per_ip.try_acquire(ip) else {
        state.metrics.security.refused_per_ip.inc();
        debug!(
            ?ip,
            "refusing an upgrade: the address holds its maximum of connections"
        );
        return http::error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "this address holds its maximum of connections (--max-connections-per-ip)".into(),
        );
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        state.metrics.refused_full.inc();
        return http::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "full",
            "the server holds its maximum number of connections".into(),
        );
    };
    if state.shutdown.is_cancelled() {
        return http::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down".into(),
        );
    }
    let limits = &state.config.limits;
    let config = WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let protocol = offered.then(|| codec.protocol());
    let sessions = state.sessions.clone();
    let queue_frames = limits.queue_frames;
    let (response, run) = handshake.accept(
        protocol,
        config,
        queue_frames,
        move |socket, outbox| async move {
            session::run(socket, outbox, state, identity, codec, permit).await;
            drop(ip_permit);
        },
    );
    sessions.spawn(run);
    response
}
