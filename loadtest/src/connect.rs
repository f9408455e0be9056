//! Opening one client connection, and how its failures and endings are named.
//!
//! Connecting binds the TCP socket to one of the 127.0.0.x source addresses before
//! connecting (with `IP_BIND_ADDRESS_NO_PORT`, so the port is picked per 4-tuple at connect
//! time), sets `TCP_NODELAY`, then runs the WebSocket handshake over that stream with small
//! tungstenite buffers: the harness holds thousands of sockets and must stay light itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::config::Plan;
use crate::limits::{current_soft_limit, is_open_file_limit};
use crate::spec::{ClientSpec, Role};

/// A client WebSocket over a plain TCP stream.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Read buffer per connection: tungstenite allocates it eagerly, 128 KiB by default.
pub(crate) const READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Kernel receive buffer asked for on a stalled viewer's socket (`SO_RCVBUF`; Linux doubles
/// it). Small, so that the server's writes block soon after the client stops reading.
pub(crate) const STALLED_RECV_BUFFER_BYTES: u32 = 4 * 1024;

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectFailure {
    /// Short reason used as a report key: `refused`, `timeout`, `http_503`, `open_file_limit`, …
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
}

impl ConnectFailure {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> ConnectFailure {
        ConnectFailure {
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    fn io(stage: &str, e: &std::io::Error) -> ConnectFailure {
        use nix::libc;
        if is_open_file_limit(e) {
            return ConnectFailure::new(
                "open_file_limit",
                format!(
                    "open-file limit reached ({}); use more --workers",
                    current_soft_limit()
                ),
            );
        }
        let reason = match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => "refused",
            Some(libc::EADDRNOTAVAIL) => "no_free_port",
            Some(libc::EADDRINUSE) => "addr_in_use",
            Some(libc::ECONNRESET) => "reset",
            Some(libc::ETIMEDOUT) => "timeout",
            _ => return ConnectFailure::new(format!("io_{stage}"), format!("{stage}: {e}")),
        };
        let detail = if reason == "no_free_port" {
            format!("{stage}: {e} (local ports exhausted: use more --source-addrs)")
        } else {
            format!("{stage}: {e}")
        };
        ConnectFailure::new(reason, detail)
    }

    fn handshake(e: WsError) -> ConnectFailure {
        match e {
            WsError::Http(resp) => {
                let status = resp.status();
                ConnectFailure::new(
                    format!("http_{}", status.as_u16()),
                    format!("upgrade refused: {status}"),
                )
            }
            WsError::Io(e) => ConnectFailure::io("handshake", &e),
            WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(e)) => {
                ConnectFailure::new("subprotocol", format!("codec not negotiated: {e}"))
            }
            WsError::Protocol(e) => ConnectFailure::new("handshake_protocol", e.to_string()),
            WsError::ConnectionClosed | WsError::AlreadyClosed => ConnectFailure::new(
                "closed_during_handshake",
                "server closed during the handshake",
            ),
            other => ConnectFailure::new("handshake_other", other.to_string()),
        }
    }
}

/// The tungstenite settings of every client connection.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames are small and flushed one by one; nothing to gain from write coalescing.
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        // Snapshots of big groups can be large; stay well under the default 64 MiB.
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Opens one WebSocket connection for `spec`.
pub(crate) async fn connect(plan: &Plan, spec: &ClientSpec) -> Result<Ws, ConnectFailure> {
    let target = plan
        .targets
        .get(spec.target)
        .ok_or_else(|| ConnectFailure::new("no_target", "plan has no targets"))?;
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ConnectFailure::io("socket", &e))?;
    socket
        .set_nodelay(true)
        .map_err(|e| ConnectFailure::io("nodelay", &e))?;
    if spec.role == Role::Stalled {
        // Before connect, so the window the client announces is small from the start.
        socket
            .set_recv_buffer_size(STALLED_RECV_BUFFER_BYTES)
            .map_err(|e| ConnectFailure::io("rcvbuf", &e))?;
    }
    if let Some(source) = spec.source {
        // Without this the kernel reserves a port at bind time, unique per source address
        // over all destinations; with it the port only has to be unique per 4-tuple.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .map_err(|e| ConnectFailure::io("bind", &e))?;
    }
    let limit = Duration::from_millis(plan.connect_timeout_ms);
    let started = Instant::now();
    let stream = timeout(limit, socket.connect(target.addr))
        .await
        .map_err(|_| ConnectFailure::new("timeout", "TCP connect timed out"))?
        .map_err(|e| ConnectFailure::io("connect", &e))?;
    let mut request = spec
        .url(plan)
        .into_client_request()
        .map_err(|e| ConnectFailure::new("bad_url", e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(spec.codec.subprotocol()),
    );
    let remaining = limit
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    let (ws, _response) = timeout(
        remaining,
        client_async_with_config(request, stream, Some(ws_config())),
    )
    .await
    .map_err(|_| ConnectFailure::new("timeout", "WebSocket handshake timed out"))?
    .map_err(ConnectFailure::handshake)?;
    Ok(ws)
}

/// How a read error ended a connection, for the close-codes map.
pub(crate) fn read_error_kind(e: &WsError) -> &'static str {
    match e {
        WsError::Io(_) => "reset",
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => "reset",
        WsError::Capacity(_) => "too_large",
        WsError::ConnectionClosed | WsError::AlreadyClosed => "eof",
        _ => "protocol_error",
    }
}

/// Sends a normal close and waits briefly for the server's answer.
pub(crate) async fn close_gracefully(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::plan;

    #[test]
    fn failures_are_classified() {
        let e = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        let f = ConnectFailure::io("socket", &e);
        assert_eq!(f.reason, "open_file_limit");
        assert!(
            f.detail.starts_with("open-file limit reached ("),
            "{}",
            f.detail
        );
        let f = ConnectFailure::io(
            "connect",
            &std::io::Error::from_raw_os_error(nix::libc::ECONNREFUSED),
        );
        assert_eq!(f.reason, "refused");
        let f = ConnectFailure::io(
            "connect",
            &std::io::Error::from_raw_os_error(nix::libc::EADDRNOTAVAIL),
        );
        assert!(f.detail.contains("--source-addrs"));
    }

    #[tokio::test]
    async fn refused_connections_report_refused() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut p = plan(1, 0, 1);
        p.targets.truncate(1);
        p.targets[0].addr = SocketAddr::from(([127, 0, 0, 1], port));
        let spec = ClientSpec::new(&p, 0);
        let err = connect(&p, &spec).await.unwrap_err();
        assert_eq!(err.reason, "refused", "{err:?}");
    }
}
