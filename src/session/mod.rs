//! One WebSocket connection, from `welcome` to close.
//!
//! A session is a single task that reads its socket and writes its own frames (`welcome`,
//! snapshots, replies, pings). Batches reach the socket without it: on plain TCP the hub
//! writes them directly whenever the session is not writing (see [`crate::outbox`]); every
//! write of the session goes through its [`writer`], which alone brackets it with
//! [`Outbox::hold`] and [`Outbox::release`].
//! What the hub could not write goes to the session's queue, which the session drains in
//! batches: after one queued frame it takes whatever else is already queued (up to
//! [`MAX_FRAMES_PER_FLUSH`]), feeds them all, and flushes once.
//!
//! A write that cannot complete within the slow-consumer limit closes the socket with 1013;
//! while it waits, the hub drops batches for this client (its queue is full) and flags it
//! `lagged`. Once writes go through again the session discards the stale queue and sends a
//! fresh snapshot of each group instead.
//!
//! Abuse bounds: every client frame takes a token from the connection's [`TokenBucket`]; a
//! message without one is not applied and is answered by a `rate_limited` error, and after
//! `--rate-strikes` such refusals in a row the socket is closed with 1008. The session pings
//! every `--ping-interval-secs` and closes (1001) a client silent for `--idle-timeout-secs`.
//! A protocol violation (bad framing, invalid UTF-8, a message of too many fragments or one
//! left unfinished, see [`crate::conn`]) closes it with 1002.
//!
//! Every close the server starts completes the closing handshake ([`Writer::close`]): after
//! its close frame the session reads and discards what the client still sends until the
//! client's close frame, so the client receives the code and every frame before it.
//! A token that expires while connected closes the socket with 1008 at `exp` plus leeway.

mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info};

use crate::app::AppState;
use crate::conn::FrameViolation;
use crate::hub::{Hub, Outlet};
use crate::limits::TokenBucket;
use crate::model::{GroupId, Identity, Role, now_ms};
use crate::outbox::Outbox;
use crate::protocol::{
    self, ClientMessage, Codec, ErrorCode, Frame, Refusal, ServerMessage, encode_refusal,
};
use crate::upgrade::Socket;
use writer::{WriteError, Writer};

/// Most queued frames written before one flush.
pub(crate) const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Close codes the server uses (`docs/protocol.md`, "Closing").
pub(crate) mod close {
    /// Server shutting down: reconnect elsewhere.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// A frame of the wrong kind for the negotiated codec.
    pub(crate) const UNSUPPORTED: u16 = 1003;
    /// Policy: token expired or repeated abuse.
    pub(crate) const POLICY: u16 = 1008;
    /// Frame larger than the limit.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// Slow consumer.
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    /// Protocol violation: bad framing, or a message that never completes.
    pub(crate) const PROTOCOL: u16 = 1002;
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
    /// The socket: every write of the session goes through it.
    writer: Writer,
    state: AppState,
    identity: Identity,
    codec: Codec,
    outlet: Outlet,
    subscribed: Vec<GroupId>,
    /// Rate limit of client frames.
    bucket: TokenBucket,
    /// Rate-limit refusals in a row.
    strikes: u32,
    /// When the client last sent anything (a frame, a pong).
    last_heard: tokio::time::Instant,
}

/// Runs one connection to its end. `permit` holds the connection's slot until it returns.
pub(crate) async fn run(
    socket: Socket,
    outbox: Arc<Outbox>,
    state: AppState,
    identity: Identity,
    codec: Codec,
    permit: OwnedSemaphorePermit,
) {
    let writer = Writer::new(
        socket,
        outbox.clone(),
        state.config.limits.slow_close(),
        state.metrics.clone(),
    );
    let outlet = Outlet {
        id: state.hub.next_outlet_id(),
        codec,
        outbox,
    };
    let role = identity.role;
    state.metrics.connections(role).inc();
    let limits = &state.config.limits;
    let bucket = TokenBucket::new(
        limits.rate_per_sec,
        limits.rate_burst,
        std::time::Instant::now(),
    );
    let mut session = Session {
        bucket,
        strikes: 0,
        last_heard: tokio::time::Instant::now(),
        writer,
        subscribed: Vec::with_capacity(identity.groups.len()),
        state,
        identity,
        codec,
        outlet,
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
    session.outlet.outbox.close();
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
        // Created once: a fresh `cancelled()` per loop turn would join and leave the token's
        // waiter list on every wake-up.
        let shutdown = self.state.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
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
        let limits = &self.state.config.limits;
        let idle_timeout = limits.idle_timeout();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.ping_interval(),
            limits.ping_interval(),
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The busy branches come first: on most wake-ups a frame is queued or a client
            // message arrived, and the timers and the shutdown signal, already registered on an
            // earlier turn, need not be polled again to wake this task when they fire.
            let step = tokio::select! {
                biased;
                incoming = self.writer.next() => match incoming {
                    Some(Ok(message)) => self.on_message(message).await,
                    Some(Err(error)) => Err(self.on_read_error(error).await),
                    None => Err(End::Client),
                },
                () = self.outlet.outbox.ready() => self.write_queued().await,
                _ = &mut shutdown => {
                    Err(self.close(close::GOING_AWAY, "server shutting down").await)
                }
                _ = &mut expired => {
                    self.state.metrics.security.closed_expired.inc();
                    Err(self.close(close::POLICY, "token expired").await)
                }
                _ = ping.tick() => self.heartbeat(idle_timeout).await,
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
            self.subscribe(&group).await?;
        }
        self.flush().await
    }

    /// Subscribes to `group` and feeds its snapshot (not flushed). Batches the hub sends from
    /// then on wait until the snapshot is written.
    async fn subscribe(&mut self, group: &GroupId) -> Result<(), End> {
        if let Some(relay) = &self.state.relay {
            // With Redis, the first local subscriber of a group waits for its shared state.
            relay.ready(std::slice::from_ref(group)).await;
        }
        let (hub, outlet, codec) = (&self.state.hub, &self.outlet, self.codec);
        let profiles = &self.state.profiles;
        let fed = self
            .writer
            .feed_after(|| {
                let positions = hub.subscribe(group, outlet);
                protocol::encode_snapshot(group.as_str(), &positions, &|d| profiles.name(d), codec)
            })
            .await;
        if !self.subscribed.contains(group) {
            self.subscribed.push(group.clone());
        }
        self.settle(fed).await
    }

    /// Writes whatever is queued (up to [`MAX_FRAMES_PER_FLUSH`]), and fresh snapshots if
    /// frames were dropped meanwhile, then flushes once (which also finishes a frame the hub
    /// started writing).
    async fn write_queued(&mut self) -> Result<(), End> {
        let lagged = match self.writer.feed_queued(MAX_FRAMES_PER_FLUSH).await {
            Ok(lagged) => lagged,
            Err(e) => return self.settle(Err(e)).await,
        };
        if lagged {
            self.resync().await?;
        }
        self.flush().await
    }

    /// Replaces whatever was dropped with a fresh snapshot of every subscribed group (fed, not
    /// flushed).
    async fn resync(&mut self) -> Result<(), End> {
        self.state.metrics.resyncs.inc();
        debug!(id = %self.identity.id, "resyncing a lagging client");
        for group in self.subscribed.clone() {
            let positions = self.state.hub.positions(group.as_str());
            let profiles = &self.state.profiles;
            let snapshot = protocol::encode_snapshot(
                group.as_str(),
                &positions,
                &|d| profiles.name(d),
                self.codec,
            );
            self.feed(snapshot).await?;
        }
        Ok(())
    }

    /// Closes a client silent for `idle_timeout`; pings the others.
    async fn heartbeat(&mut self, idle_timeout: Duration) -> Result<(), End> {
        if self.writer.message_overdue() {
            debug!(id = %self.identity.id, "closing a client whose message never completed");
            return Err(self
                .close(close::PROTOCOL, "message not completed in time")
                .await);
        }
        if self.last_heard.elapsed() >= idle_timeout {
            self.state.metrics.security.closed_idle.inc();
            debug!(id = %self.identity.id, "closing a silent client (idle timeout)");
            return Err(self.close(close::GOING_AWAY, "idle timeout").await);
        }
        self.state.metrics.security.pings.inc();
        let pinged = self.writer.ping().await;
        self.settle(pinged).await
    }

    /// Takes a token for one client frame; answers `rate_limited` when there is none, and
    /// closes with 1008 after too many refusals in a row.
    async fn admit(&mut self) -> Result<bool, End> {
        if self.bucket.try_take(std::time::Instant::now()) {
            self.strikes = 0;
            return Ok(true);
        }
        self.strikes += 1;
        self.state.metrics.security.rate_limited.inc();
        if self.strikes >= self.state.config.limits.rate_strikes {
            self.state.metrics.security.closed_rate_limited.inc();
            info!(id = %self.identity.id, "closing a client that kept exceeding its rate (1008)");
            return Err(self.close(close::POLICY, "rate limit exceeded").await);
        }
        let frame = self.refuse(Refusal::new(
            ErrorCode::RateLimited,
            "too many messages: slow down (this one was not applied)",
        ));
        self.feed(frame).await?;
        self.flush().await?;
        Ok(false)
    }

    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        self.last_heard = tokio::time::Instant::now();
        if !matches!(message, Message::Close(_)) && !self.admit().await? {
            return Ok(());
        }
        let (bytes, kind_ok): (&[u8], bool) = match &message {
            Message::Text(text) => (text.as_bytes(), self.codec == Codec::Json),
            Message::Binary(bytes) => (bytes, self.codec == Codec::MsgPack),
            Message::Close(_) => {
                self.writer.finish_closing_handshake().await;
                return Err(End::Client);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
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
                if !self.identity.may_publish() {
                    let message =
                        format!("{}s may not publish positions", self.identity.role.as_str());
                    let mut refusal = Refusal::new(ErrorCode::Forbidden, message);
                    refusal.seq = seq;
                    Some(self.refuse(refusal))
                } else if let Err(mut refusal) =
                    protocol::check_fix_age(&fix, self.state.config.oldest_fix_ms(now))
                {
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
                        self.subscribe(&group).await?;
                        return self.flush().await;
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

    async fn on_read_error(&mut self, error: tungstenite::Error) -> End {
        match &error {
            tungstenite::Error::Capacity(_) => {
                self.close(close::TOO_BIG, "frame larger than the limit")
                    .await
            }
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                End::Client
            }
            tungstenite::Error::Protocol(e) => {
                debug!(id = %self.identity.id, error = %e, "protocol violation (1002)");
                self.close(close::PROTOCOL, "protocol violation").await
            }
            tungstenite::Error::Utf8(_) => {
                debug!(id = %self.identity.id, "invalid UTF-8 in a text message (1002)");
                self.close(close::PROTOCOL, "invalid UTF-8").await
            }
            tungstenite::Error::Io(e) if FrameViolation::of(e).is_some() => {
                debug!(id = %self.identity.id, error = %e, "protocol violation (1002)");
                self.close(close::PROTOCOL, "message too fragmented or too slow")
                    .await
            }
            _ => {
                debug!(id = %self.identity.id, %error, "read failed");
                End::Client
            }
        }
    }

    /// Feeds `frame` into the socket (see [`Writer::feed`]).
    async fn feed(&mut self, frame: Frame) -> Result<(), End> {
        let fed = self.writer.feed(frame).await;
        self.settle(fed).await
    }

    /// Writes out what was fed (see [`Writer::flush`]).
    async fn flush(&mut self) -> Result<(), End> {
        let flushed = self.writer.flush().await;
        self.settle(flushed).await
    }

    /// Turns a write's outcome into the session's: a client that stopped reading is closed
    /// with 1013.
    async fn settle(&mut self, written: Result<(), WriteError>) -> Result<(), End> {
        match written {
            Ok(()) => Ok(()),
            Err(WriteError::Client) => Err(End::Client),
            Err(WriteError::Slow) => Err(self.slow_close().await),
        }
    }

    async fn slow_close(&mut self) -> End {
        self.state.metrics.slow_closes.inc();
        info!(id = %self.identity.id, "closing a client that stopped reading (1013)");
        self.close(close::TRY_AGAIN_LATER, "slow consumer").await
    }

    /// Sends a close frame (best effort, bounded in time). The hub writes nothing after it.
    async fn close(&mut self, code: u16, reason: &'static str) -> End {
        self.writer.close(code, reason).await;
        End::Closed(code, reason)
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
