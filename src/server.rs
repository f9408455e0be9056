//! Wiring: shared state, the router, the WebSocket upgrade, and graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::{Authenticator, IdentityQuery};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::Codec;
use crate::relay::Relay;
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
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// The Redis relay, with `--redis-url` (set by [`serve`]).
    pub relay: Option<Arc<Relay>>,
}

impl AppState {
    /// Builds the state for `config`.
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(config.hub.clone(), metrics.clone()));
        AppState {
            auth: Authenticator::new(config.auth.clone()),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            config: Arc::new(config),
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            relay: None,
        }
    }
}

/// Runs the server on an already-bound `listener` until `shutdown` completes, then closes every
/// socket with 1001 and waits up to the grace period for sessions to end.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut state = AppState::new(config);
    state.relay = Relay::from_config(&state.config, &state.hub, &state.metrics)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let addr = listener.local_addr()?;
    let background = TaskTracker::new();
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
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            warn!(%error, "could not set TCP_NODELAY");
        }
    });
    info!(%addr, tick_ms = state.config.hub.tick_ms, "listening");
    let token = state.shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let token = token.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = token.cancelled() => {}
            }
            info!("shutting down: closing connections with 1001");
            token.cancel();
        }
    });
    let result = server.await;
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
    info!("stopped");
    result
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/ws", get(upgrade))
        .merge(http::routes(&state))
        .merge(web::routes())
        .with_state(state)
}

/// `GET /v1/ws`: checks identity, codec and capacity, then upgrades.
async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
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
    let identity = match state.auth.identify(&headers, &query) {
        Ok(identity) => identity,
        Err(e) => return refuse(e.status(), e.kind(), e.to_string()),
    };
    let Ok(ws) = ws else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "this route takes a WebSocket upgrade".into(),
        );
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
    let ws = ws
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes);
    let ws = if offered {
        ws.protocols([codec.protocol()])
    } else {
        ws
    };
    let sessions = state.sessions.clone();
    ws.on_upgrade(move |socket| {
        sessions.track_future(session::run(socket, state, identity, codec, permit))
    })
    .into_response()
}
