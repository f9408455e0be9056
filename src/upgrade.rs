//! The WebSocket handshake (RFC 6455, section 4.2), done on hyper's upgrade directly.
//!
//! Beacon does the handshake itself rather than through axum's `WebSocketUpgrade` so that each
//! session owns a plain tungstenite stream: that gives it raw frames, which it uses to send a
//! large message as several fragments (see [`crate::session`]), so that tungstenite's write
//! buffer, which keeps the capacity of the largest frame it ever held, stays small on every
//! connection. It also lets the session share a plain TCP socket with the hub, which writes
//! batches to it directly ([`crate::conn`]).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::conn::Conn;
use crate::outbox::Outbox;

/// A server-side WebSocket over an upgraded HTTP connection.
pub(crate) type Socket = WebSocketStream<Conn>;

/// A valid upgrade request, ready to be accepted.
#[derive(Debug)]
pub(crate) struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotAnUpgrade(&'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        crate::error::error_response(StatusCode::BAD_REQUEST, "bad_request", self.0.into())
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotAnUpgrade("a WebSocket upgrade must be a GET"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(NotAnUpgrade("this route takes a WebSocket upgrade"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(NotAnUpgrade("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotAnUpgrade("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        Ok(Handshake { key, on_upgrade })
    }
}

impl Handshake {
    /// Answers 101 with `protocol` as the chosen subprotocol and runs `session` on the socket
    /// (and the outbox of at most `queue_frames` frames the hub writes to it through) once the
    /// upgrade completes. The caller spawns the returned future, which does both.
    pub(crate) fn accept<F, Fut>(
        self,
        protocol: Option<&'static str>,
        config: WebSocketConfig,
        queue_frames: usize,
        session: F,
    ) -> (Response, impl Future<Output = ()> + Send + 'static)
    where
        F: FnOnce(Socket, Arc<Outbox>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        let on_upgrade = self.on_upgrade;
        let run = async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let (conn, outbox) = Conn::open(upgraded, queue_frames);
                    let socket =
                        WebSocketStream::from_raw_socket(conn, Role::Server, Some(config)).await;
                    session(socket, outbox).await;
                }
                Err(error) => tracing::debug!(%error, "the upgrade did not complete"),
            }
        };
        (response, run)
    }
}
