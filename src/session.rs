//! One WebSocket connection, from `welcome` to close.
//!
//! A session is a single task that owns its socket: it reads client frames, and writes the
//! frames the hub queues for it. Writing is batched: after one queued frame it takes whatever
//! else is already queued (up to [`MAX_FRAMES_PER_FLUSH`]), feeds them all, and flushes once.
//!
//! A write that cannot complete within the slow-consumer limit closes the socket with 1013;
//! while it waits, the hub drops batches for this client (its queue is full) and flags it
//! `lagged`. Once writes go through again the session discards the stale queue and sends a
//! fresh snapshot of each group instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info};

use crate::hub::{Hub, Outlet};
use crate::model::{GroupId, Identity, Role, now_ms};
use crate::protocol::{
    self, ClientMessage, Codec, ErrorCode, Frame, Refusal, ServerMessage, encode_refusal,
};
use crate::server::AppState;

/// Most queued frames written before one flush.
pub const MAX_FRAMES_PER_FLUSH: usize = 64;

/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Close codes the server uses (`docs/protocol.md`, "Closing").
pub mod close {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down: reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame of the wrong kind for the negotiated codec.
    pub const UNSUPPORTED: u16 = 1003;
    /// Policy: token expired or repeated abuse.
    pub const POLICY: u16 = 1008;
    /// Frame larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// Slow consumer.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a session ended, for logs.
#[derive(Debug)]
enum End {
    /// The client closed or the connection dropped.
    Client,
    /// The server closed it with a code.
    Closed(u16, &'static str),
}

/// Everything a running session owns.
struct Session {
    socket: WebSocket,
    state: AppState,
    identity: Identity,
    codec: Codec,
    outlet: Outlet,
    rx: mpsc::Receiver<Frame>,
    subscribed: Vec<GroupId>,
}

/// Runs one connection to its end. `permit` holds the connection's slot until it returns.
pub async fn run(
    socket: WebSocket,
    state: AppState,
    identity: Identity,
    codec: Codec,
    permit: OwnedSemaphorePermit,
) {
    let (tx, rx) = mpsc::channel(state.config.limits.queue_frames.max(1));
    let outlet = Outlet {
        id: state.hub.next_outlet_id(),
        codec,
        tx,
        lagged: Arc::new(AtomicBool::new(false)),
    };
    let role = identity.role;
    state.metrics.connections(role).inc();
    let mut session = Session {
        socket,
        subscribed: Vec::with_capacity(identity.groups.len()),
        state,
        identity,
        codec,
        outlet,
        rx,
    };
    if role == Role::Device {
        session
            .hub()
            .device_connected(&session.identity.id, &session.identity.groups);
    }
    let end = session.serve().await;
    match &end {
        End::Client => debug!(id = %session.identity.id, "connection closed by client"),
        End::Closed(code, why) => {
            debug!(id = %session.identity.id, code, reason = why, "connection closed by server")
        }
    }
    for group in &session.subscribed {
        session
            .state
            .hub
            .unsubscribe(group.as_str(), session.outlet.id);
    }
    if role == Role::Device {
        session
            .hub()
            .device_disconnected(&session.identity.id, &session.identity.groups);
    }
    session.state.metrics.connections(role).dec();
    drop(permit);
}

impl Session {
    fn hub(&self) -> &Hub {
        &self.state.hub
    }

    async fn serve(&mut self) -> End {
        if let Err(end) = self.greet().await {
            return end;
        }
        let shutdown = self.state.shutdown.clone();
        let expiry = self.identity.expires_at_ms.map(|at| {
            let wait = (at - now_ms()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        let expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    Err(self.close(close::GOING_AWAY, "server shutting down").await)
                }
                _ = &mut expired => Err(self.close(close::POLICY, "token expired").await),
                Some(frame) = self.rx.recv() => self.write_queued(frame).await,
                incoming = self.socket.next() => match incoming {
                    Some(Ok(message)) => self.on_message(message).await,
                    Some(Err(error)) => Err(self.on_read_error(error).await),
                    None => Err(End::Client),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends `welcome` and one `snapshot` per group, subscribing as it goes.
    async fn greet(&mut self) -> Result<(), End> {
        let session_id = format!("{:016x}", rand::random::<u64>());
        let welcome = ServerMessage::Welcome {
            session: &session_id,
            id: self.identity.id.as_str(),
            role: self.identity.role.as_str(),
            groups: self.identity.groups.iter().map(GroupId::as_str).collect(),
            server_time: now_ms(),
            tick_ms: self.hub().config().tick_ms,
        }
        .encode(self.codec);
        self.feed(welcome).await?;
        if let Some(relay) = &self.state.relay {
            // With Redis, wait for the shared state of every group at once (see `subscribe`).
            relay.ready(&self.identity.groups).await;
        }
        for group in self.identity.groups.clone() {
            let snapshot = self.subscribe(&group).await;
            self.feed(snapshot).await?;
        }
        self.flush().await
    }

    async fn subscribe(&mut self, group: &GroupId) -> Frame {
        if let Some(relay) = &self.state.relay {
            // With Redis, the first local subscriber of a group waits for its shared state.
            relay.ready(std::slice::from_ref(group)).await;
        }
        let positions = self.state.hub.subscribe(group, &self.outlet);
        if !self.subscribed.contains(group) {
            self.subscribed.push(group.clone());
        }
        Hub::encode_snapshot(group.as_str(), &positions, self.codec)
    }

    /// Writes `first` and whatever else is queued, flushes once, then resyncs if frames were
    /// dropped meanwhile.
    async fn write_queued(&mut self, first: Frame) -> Result<(), End> {
        self.feed(first).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            match self.rx.try_recv() {
                Ok(frame) => self.feed(frame).await?,
                Err(_) => break,
            }
        }
        self.flush().await?;
        if self.outlet.lagged.swap(false, Ordering::AcqRel) {
            self.resync().await?;
        }
        Ok(())
    }

    /// Replaces whatever was dropped with a fresh snapshot of every subscribed group.
    async fn resync(&mut self) -> Result<(), End> {
        while self.rx.try_recv().is_ok() {}
        self.state.metrics.resyncs.inc();
        debug!(id = %self.identity.id, "resyncing a lagging client");
        for group in self.subscribed.clone() {
            let positions = self.state.hub.positions(group.as_str());
            let snapshot = Hub::encode_snapshot(group.as_str(), &positions, self.codec);
            self.feed(snapshot).await?;
        }
        self.flush().await
    }

    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        let (bytes, kind_ok): (&[u8], bool) = match &message {
            Message::Text(text) => (text.as_bytes(), self.codec == Codec::Json),
            Message::Binary(bytes) => (bytes, self.codec == Codec::MsgPack),
            Message::Close(_) => {
                // tungstenite queued the closing handshake's reply; let it go out.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.flush()).await;
                return Err(End::Client);
            }
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        self.state.metrics.bytes_in.inc_by(bytes.len() as u64);
        if !kind_ok {
            let why = match self.codec {
                Codec::Json => "binary frame on a beacon.v1.json connection",
                Codec::MsgPack => "text frame on a beacon.v1.msgpack connection",
            };
            return Err(self.close(close::UNSUPPORTED, why).await);
        }
        let now = now_ms();
        let reply = match protocol::decode(self.codec, bytes, now) {
            Ok(ClientMessage::Pos { fix, seq }) => {
                self.state.metrics.msg_in_pos.inc();
                if self.identity.role == Role::Viewer {
                    let mut refusal =
                        Refusal::new(ErrorCode::Forbidden, "viewers may not publish positions");
                    refusal.seq = seq;
                    Some(self.refuse(refusal))
                } else {
                    self.state
                        .hub
                        .publish(&self.identity.id, &self.identity.groups, &fix, now);
                    None
                }
            }
            Ok(ClientMessage::Sub { group }) => {
                self.state.metrics.msg_in_sub.inc();
                match self.identity.groups.iter().find(|g| g.as_str() == group) {
                    Some(group) => {
                        let group = group.clone();
                        Some(self.subscribe(&group).await)
                    }
                    None => Some(self.refuse(Refusal::new(
                        ErrorCode::Forbidden,
                        format!(
                            "group {:?} is not one of this identity's groups",
                            clip(&group)
                        ),
                    ))),
                }
            }
            Ok(ClientMessage::Unsub { group }) => {
                self.state.metrics.msg_in_unsub.inc();
                match self.subscribed.iter().position(|g| g.as_str() == group) {
                    Some(index) => {
                        let group = self.subscribed.swap_remove(index);
                        self.state.hub.unsubscribe(group.as_str(), self.outlet.id);
                        None
                    }
                    None => Some(self.refuse(Refusal::new(
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to group {:?}", clip(&group)),
                    ))),
                }
            }
            Ok(ClientMessage::Ping { id }) => {
                self.state.metrics.msg_in_ping.inc();
                Some(
                    ServerMessage::Pong {
                        id,
                        server_time: now_ms(),
                    }
                    .encode(self.codec),
                )
            }
            Err(refusal) => Some(self.refuse(refusal)),
        };
        match reply {
            Some(frame) => {
                self.feed(frame).await?;
                self.flush().await
            }
            None => Ok(()),
        }
    }

    fn refuse(&self, refusal: Refusal) -> Frame {
        self.state.metrics.error(refusal.code).inc();
        debug!(id = %self.identity.id, code = refusal.code.as_str(), reason = %refusal.message, "refused a message");
        encode_refusal(&refusal, self.codec)
    }

    async fn on_read_error(&mut self, error: axum::Error) -> End {
        let inner = error.into_inner();
        match inner.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => {
                self.close(close::TOO_BIG, "frame larger than the limit")
                    .await
            }
            Some(tungstenite::Error::Protocol(e)) => {
                debug!(id = %self.identity.id, error = %e, "protocol violation");
                End::Client
            }
            _ => {
                debug!(id = %self.identity.id, error = %inner, "read failed");
                End::Client
            }
        }
    }

    /// Queues `frame` in the socket's write buffer, writing out when it is full.
    async fn feed(&mut self, frame: Frame) -> Result<(), End> {
        let len = frame.len() as u64;
        let limit = self.state.config.limits.slow_close();
        match tokio::time::timeout(limit, self.socket.feed(frame.into_message())).await {
            Ok(Ok(())) => {
                self.state.metrics.frames_out.inc();
                self.state.metrics.bytes_out.inc_by(len);
                Ok(())
            }
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(self.slow_close().await),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        let limit = self.state.config.limits.slow_close();
        match tokio::time::timeout(limit, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(self.slow_close().await),
        }
    }

    async fn slow_close(&mut self) -> End {
        self.state.metrics.slow_closes.inc();
        info!(id = %self.identity.id, "closing a client that stopped reading (1013)");
        self.close(close::TRY_AGAIN_LATER, "slow consumer").await
    }

    /// Sends a close frame (best effort, bounded in time).
    async fn close(&mut self, code: u16, reason: &'static str) -> End {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(frame)).await;
        End::Closed(code, reason)
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
