//! Admission to `/v1/ws`: who the client is, which codec it speaks, and whether there is room
//! for it, all decided while the request is still plain HTTP, so a refused client costs no
//! WebSocket state. An admitted connection is handed to [`crate::session`].

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

use crate::app::AppState;
use crate::auth::IdentityQuery;
use crate::error::error_response;
use crate::limits::client_ip;
use crate::protocol::Codec;
use crate::session;
use crate::upgrade::{Handshake, NotAnUpgrade};

/// Largest amount a connection's write buffer may hold before writes fail. A flush writes at
/// most [`crate::session::MAX_FRAMES_PER_FLUSH`] frames, each a batch or snapshot of one group, so
/// this only needs to hold the largest snapshot a group can produce.
pub(crate) const MAX_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// `GET /v1/ws`: checks identity, codec and capacity, then upgrades. (The origin was checked
/// by the router's origin guard.)
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    handshake: Result<Handshake, NotAnUpgrade>,
) -> Response {
    let refuse = |status: StatusCode, kind: &str, message: String| {
        state.metrics.refused_bad_request.inc();
        error_response(status, kind, message)
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
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "this address holds its maximum of connections (--max-connections-per-ip)".into(),
        );
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        state.metrics.refused_full.inc();
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "full",
            "the server holds its maximum number of connections".into(),
        );
    };
    if state.shutdown.is_cancelled() {
        return error_response(
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
