//! One simulated client: connecting, and the session loop of a device, viewer or storm client.
//!
//! Connecting binds the TCP socket to one of the 127.0.0.x source addresses before
//! connecting (with `IP_BIND_ADDRESS_NO_PORT`, so the port is picked per 4-tuple at connect
//! time), sets `TCP_NODELAY`, then runs the WebSocket handshake over that stream with small
//! tungstenite buffers: the harness holds thousands of sockets and must stay light itself.
//!
//! A session reads every frame the server sends (devices receive their group's batches too),
//! measures latency on every update of this run's devices, keeps the subscriber's view for the
//! latest-state check, and, for devices, sends fixes at the planned rate until told to stop.
//!
//! Stalled viewers ([`run_stalled`]) are the exception: slow consumers that read their
//! greeting, then leave their socket unread until the end of the run.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::clock::{now_micros, now_ms};
use crate::config::{Codec, Plan, Scenario};
use crate::latest::{EXCLUDED, View};
use crate::limits::{current_soft_limit, is_open_file_limit};
use crate::metrics::{Sample, add, bump};
use crate::path::{Grid, Vehicle};
use crate::wire::{DecodeError, decode, encode_pos};
use crate::worker::{Phase, WorkerShared};

/// A client WebSocket over a plain TCP stream.
pub type Ws = WebSocketStream<TcpStream>;

/// Read buffer per connection: tungstenite allocates it eagerly, 128 KiB by default.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Kernel receive buffer asked for on a stalled viewer's socket (`SO_RCVBUF`; Linux doubles
/// it). Small, so that the server's writes block soon after the client stops reading.
pub const STALLED_RECV_BUFFER_BYTES: u32 = 4 * 1024;

/// How long a stalled viewer's socket is read at the end, to find out whether the server has
/// closed it: everything buffered comes first, then the close frame or end of stream.
const STALLED_DRAIN_LIMIT: Duration = Duration::from_millis(1500);

/// Whether a client publishes, watches, or watches and then stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes fixes and watches its group.
    Device,
    /// Watches its group.
    Viewer,
    /// Connects as a viewer, reads its greeting, then stops reading (`--stalled`).
    Stalled,
}

impl Role {
    /// The `role` query value.
    pub fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Viewer | Role::Stalled => "viewer",
        }
    }
}

/// Who client number `index` of the run is.
///
/// Indices `0..viewers` are viewers, then come the devices, so viewers connect first during
/// the ramp and see the devices' traffic from its start; the stalled viewers come last. Device
/// (or viewer, or stalled viewer) `n` is in group `n % groups`; within a group, members take
/// the targets in turn and, with the `mixed` codec, alternate codecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// Global client index, `0..viewers + devices + stalled`.
    pub index: u32,
    /// Device, viewer or stalled viewer.
    pub role: Role,
    /// Device number (`0..devices`), viewer number (`0..viewers`) or stalled viewer number
    /// (`0..stalled`).
    pub number: u32,
    /// Device or viewer id sent in the query.
    pub id: String,
    /// Group number.
    pub group: u32,
    /// Codec of this connection.
    pub codec: Codec,
    /// Index into the plan's targets.
    pub target: usize,
    /// Local address to bind, for IPv4 loopback targets.
    pub source: Option<Ipv4Addr>,
}

/// Id of device `d` in run `run_id`.
pub fn device_id(run_id: &str, d: u32) -> String {
    format!("{run_id}-d{d}")
}

/// Id of group `g` in run `run_id`.
pub fn group_id(run_id: &str, g: u32) -> String {
    format!("{run_id}-g{g}")
}

/// Device number from a record id of this run (`None` for anybody else's device).
pub fn parse_device(prefix: &str, id: &str, devices: u32) -> Option<u32> {
    let d: u32 = id.strip_prefix(prefix)?.parse().ok()?;
    (d < devices).then_some(d)
}

impl ClientSpec {
    /// The spec of client `index` of a plan.
    pub fn new(plan: &Plan, index: u32) -> ClientSpec {
        let (role, number) = if index < plan.viewers {
            (Role::Viewer, index)
        } else if let Some(d) = plan.device_of(index) {
            (Role::Device, d)
        } else {
            (Role::Stalled, index - plan.viewers - plan.devices)
        };
        let id = match role {
            Role::Device => device_id(&plan.run_id, number),
            Role::Viewer => format!("{}-v{number}", plan.run_id),
            Role::Stalled => format!("{}-s{number}", plan.run_id),
        };
        let groups = plan.groups.max(1);
        let group = number % groups;
        // Deal the members of each group over targets and codecs in turn: a group must span
        // every server instance and, with `mixed`, both codecs, or cross-instance relaying and
        // per-codec encoding would go untested. (Dealing by client index would not do: with 10
        // groups and 2 targets, all of a group's members would share one target.)
        let turn = number / groups + group;
        let targets = plan.targets.len().max(1) as u32;
        let target = (turn % targets) as usize;
        let source = match plan.targets.get(target).map(|t| (t.loopback, t.addr)) {
            Some((true, SocketAddr::V4(_))) => {
                let n = u8::try_from(index % u32::from(plan.source_addrs.max(1))).unwrap_or(0);
                Some(Ipv4Addr::new(127, 0, 0, 1 + n))
            }
            _ => None,
        };
        ClientSpec {
            index,
            role,
            number,
            id,
            group,
            codec: plan.codec.for_client(turn / targets),
            target,
            source,
        }
    }

    /// Full WebSocket URL with the identity query.
    pub fn url(&self, plan: &Plan) -> String {
        let base = plan
            .targets
            .get(self.target)
            .map(|t| t.url.as_str())
            .unwrap_or_default();
        let mut url = format!(
            "{base}?id={}&groups={}&role={}",
            self.id,
            group_id(&plan.run_id, self.group),
            self.role.name()
        );
        if let Some(token) = &plan.token {
            url.push_str("&access_token=");
            url.push_str(&percent_encode(token));
        }
        url
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure {
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
pub fn ws_config() -> WebSocketConfig {
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
pub async fn connect(plan: &Plan, spec: &ClientSpec) -> Result<Ws, ConnectFailure> {
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
fn read_error_kind(e: &WsError) -> &'static str {
    match e {
        WsError::Io(_) => "reset",
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => "reset",
        WsError::Capacity(_) => "too_large",
        WsError::ConnectionClosed | WsError::AlreadyClosed => "eof",
        _ => "protocol_error",
    }
}

/// What a received frame meant to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing for the connection loop to do.
    Continue,
    /// All initial snapshots have arrived: a device may start sending.
    Ready,
    /// The server sent a close frame with this code.
    Closed(String),
}

/// Per-connection receive state: decodes every frame, updates the subscriber's view, counts,
/// and records the latency of every new fix.
///
/// Public so that benches can feed it recorded frames; the connection loops are its only
/// users in a run.
pub struct Session<'a> {
    w: &'a WorkerShared,
    spec: &'a ClientSpec,
    /// What this subscriber holds; tells new fixes from repeated or older ones.
    view: &'a View,
    initial_snapshots_left: u32,
    // Scratch buffers reused frame after frame.
    samples: Vec<Sample>,
    records: Vec<(u32, u32)>,
    /// Per record: `ts` and `rts` in microseconds.
    times_us: Vec<(u64, Option<u64>)>,
    compared: Vec<Ordering>,
}

impl<'a> Session<'a> {
    /// Fresh state for one connection of `spec`, keeping `view`.
    pub fn new(w: &'a WorkerShared, spec: &'a ClientSpec, view: &'a View) -> Session<'a> {
        Session {
            w,
            spec,
            view,
            initial_snapshots_left: 1,
            samples: Vec::new(),
            records: Vec::new(),
            times_us: Vec::new(),
            compared: Vec::new(),
        }
    }

    /// Handles one received message.
    pub fn on_message(&mut self, msg: &Message) -> Step {
        let c = &self.w.counters;
        let received_us = now_micros();
        if let Message::Close(frame) = msg {
            let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
            return Step::Closed(code.to_string());
        }
        let frame = match decode(self.spec.codec, msg) {
            None => return Step::Continue,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                bump(&c.frames_received);
                bump(match e {
                    DecodeError::WrongFrameKind => &c.wrong_frame_kind,
                    DecodeError::Malformed => &c.malformed_frames,
                });
                return Step::Continue;
            }
        };
        bump(&c.frames_received);
        add(&c.bytes_received, msg.len() as u64);
        match frame.kind.as_ref() {
            "welcome" => {
                if let Some(tick) = frame.tick_ms.filter(|t| t.is_finite() && *t >= 0.0) {
                    self.w.tick_ms.fetch_max(tick as u64, Relaxed);
                }
                Step::Continue
            }
            "snapshot" => {
                self.apply(frame.devices.as_deref().unwrap_or_default(), None);
                if self.initial_snapshots_left > 0 {
                    self.initial_snapshots_left -= 1;
                    bump(&c.snapshots);
                    if self.initial_snapshots_left == 0 {
                        return Step::Ready;
                    }
                } else {
                    bump(&c.resyncs);
                }
                Step::Continue
            }
            "batch" => {
                self.apply(
                    frame.updates.as_deref().unwrap_or_default(),
                    Some(received_us),
                );
                add(
                    &c.offline_notices,
                    frame.offline.map_or(0, |o| o.len() as u64),
                );
                Step::Continue
            }
            "error" => {
                c.error_frame(frame.code.as_deref().unwrap_or("unknown"));
                Step::Continue
            }
            // pong, and message types newer than this harness.
            _ => Step::Continue,
        }
    }

    /// Updates the view and, for batches, counts each new fix and records its latency.
    /// Only this run's devices of the subscriber's group are looked at.
    fn apply(&mut self, records: &[crate::wire::Record<'_>], received_us: Option<u64>) {
        let w = self.w;
        self.records.clear();
        self.times_us.clear();
        for r in records {
            let Some(d) = parse_device(&w.device_prefix, &r.id, w.plan.devices) else {
                continue;
            };
            if !(r.ts.is_finite() && r.ts > 0.0) || w.layout.group_of(d) != self.spec.group {
                continue;
            }
            let offset = (r.ts as u64)
                .saturating_sub(w.plan.base_ms)
                .clamp(1, u64::from(EXCLUDED - 1));
            self.records.push((w.layout.slot_of(d), offset as u32));
            let rts_us = r
                .rts
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(|t| (t * 1000.0) as u64);
            self.times_us.push(((r.ts * 1000.0) as u64, rts_us));
        }
        self.view.apply(&self.records, &mut self.compared);
        let c = &w.counters;
        self.samples.clear();
        for (i, order) in self.compared.iter().enumerate() {
            match (order, received_us) {
                (Ordering::Greater, Some(rx)) => {
                    bump(&c.updates_received);
                    let (ts, rts) = self.times_us[i];
                    self.samples.push(Sample {
                        end_to_end_us: rx.saturating_sub(ts),
                        split_us: rts.map(|rts| (rts.saturating_sub(ts), rx.saturating_sub(rts))),
                    });
                }
                (Ordering::Equal, Some(_)) => bump(&c.repeated),
                (Ordering::Less, _) => bump(&c.out_of_order),
                // Snapshot records: state, not deliveries.
                (_, None) => {}
            }
        }
        if !self.samples.is_empty() {
            w.record_latencies(&self.samples);
        }
    }
}

/// Produces a device's fixes: moves its vehicle by the time elapsed and stamps each fix with
/// a strictly increasing `ts`, so a fix time identifies a fix.
struct FixSource {
    vehicle: Vehicle,
    rng: SmallRng,
    seq: u64,
    last_ts: u64,
    last_move: Instant,
    period: Duration,
    next_at: Instant,
}

impl FixSource {
    fn new(plan: &Plan, device: u32) -> FixSource {
        let seed = plan
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(device));
        FixSource {
            vehicle: Vehicle::new(Grid::city(plan.center), seed),
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed),
            seq: 0,
            last_ts: 0,
            last_move: Instant::now(),
            period: Duration::from_secs_f64(1.0 / plan.rate_hz),
            next_at: Instant::now(),
        }
    }

    /// Schedules the first fix once the connection is ready: right away for a single fix,
    /// otherwise at a random point of the first period, so that devices connected together
    /// do not all report in the same instant every second.
    fn first_after_ready(&mut self, immediately: bool) {
        let now = Instant::now();
        self.next_at = if immediately {
            now
        } else {
            now + self.period.mul_f64(self.rng.random_range(0.0..1.0))
        };
    }

    /// Encodes the next fix; returns it with its `ts`.
    fn next_message(&mut self, codec: Codec) -> anyhow::Result<(Message, u64)> {
        let now = Instant::now();
        self.vehicle
            .advance(now.duration_since(self.last_move).as_secs_f64());
        self.last_move = now;
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        self.seq += 1;
        // Keep the schedule, but never burst to catch up after a stall. Moved on before
        // encoding, so that a fix that cannot be encoded does not come due again at once.
        self.next_at = (self.next_at + self.period).max(now);
        let msg = encode_pos(codec, &self.vehicle.fix(), ts, self.seq)?;
        Ok((msg, ts))
    }
}

/// Counts a connection attempt and its outcome.
async fn connect_counted(w: &WorkerShared, spec: &ClientSpec) -> Option<Ws> {
    bump(&w.counters.attempted);
    match connect(&w.plan, spec).await {
        Ok(ws) => {
            bump(&w.counters.established);
            bump(&w.counters.open);
            Some(ws)
        }
        Err(f) => {
            w.counters.connect_failed(&f.reason);
            w.warn_once(&f);
            None
        }
    }
}

/// Sends a normal close and waits briefly for the server's answer.
async fn close_gracefully(ws: &mut Ws) {
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

/// Waits for the next phase change; gives the receiver back with the new phase
/// ([`Phase::Closing`] once the sender is gone).
async fn next_phase(
    mut rx: tokio::sync::watch::Receiver<Phase>,
) -> (tokio::sync::watch::Receiver<Phase>, Phase) {
    let now = match rx.changed().await {
        Ok(()) => *rx.borrow_and_update(),
        Err(_) => Phase::Closing,
    };
    (rx, now)
}

/// Runs a long-lived device or viewer (idle, fleet and viewers scenarios): one connection,
/// no reconnect, until the worker moves to [`Phase::Closing`].
pub async fn run_steady(w: Arc<WorkerShared>, spec: ClientSpec) {
    let phase = w.phase();
    let connected = connect_counted(&w, &spec).await;
    w.resolved_one();
    let Some(mut ws) = connected else { return };

    let view = Arc::new(View::new(&w.layout, spec.group));
    w.register_view(view.clone());
    let mut session = Session::new(&w, &spec, &view);
    let device = (spec.role == Role::Device).then_some(spec.number);
    let mut fixes = device.map(|d| FixSource::new(&w.plan, d));
    let one_fix_only = w.plan.scenario == Scenario::Idle;
    let mut sending = device.is_some() && w.start_sending();
    let mut ready = false;
    let mut closing = false;
    let mut ended_by: Option<String> = None;

    // The phase watch and the fix timer live across turns of the loop: a frame arrives about
    // every tick, and making and dropping both futures for each one shows in the harness's
    // cost per frame.
    let mut phase_change = Box::pin(next_phase(phase));
    let mut fix_due = std::pin::pin!(sleep_until(Instant::now()));
    while !closing && ended_by.is_none() {
        tokio::select! {
            (rx, now) = &mut phase_change => {
                if now != Phase::Running && sending {
                    sending = false;
                    w.stop_sending();
                }
                closing = now == Phase::Closing;
                phase_change = Box::pin(next_phase(rx));
            }
            msg = ws.next() => match msg {
                Some(Ok(m)) => match session.on_message(&m) {
                    Step::Ready => {
                        ready = true;
                        if let Some(src) = fixes.as_mut() {
                            src.first_after_ready(one_fix_only);
                            fix_due.as_mut().reset(src.next_at);
                        }
                    }
                    Step::Closed(code) => ended_by = Some(code),
                    Step::Continue => {}
                },
                Some(Err(e)) => ended_by = Some(read_error_kind(&e).to_string()),
                None => ended_by = Some("eof".to_string()),
            },
            () = &mut fix_due, if sending && ready => {
                let Some(src) = fixes.as_mut() else { continue };
                let next = src.next_message(spec.codec);
                fix_due.as_mut().reset(src.next_at);
                let Ok((msg, ts)) = next else { continue };
                if let Err(e) = ws.send(msg).await {
                    ended_by = Some(read_error_kind(&e).to_string());
                    continue;
                }
                bump(&w.counters.fixes_sent);
                if let Some(d) = device {
                    w.set_last_sent(d, ts);
                }
                if one_fix_only {
                    sending = false;
                    w.stop_sending();
                }
            }
        }
    }

    view.close();
    if let Some(how) = ended_by {
        w.counters.closed_by_server(&how);
        if sending {
            // It may have written fixes the server never took: leave it out of the check.
            if let Some(d) = device {
                w.exclude_device(d);
            }
            w.stop_sending();
        }
    } else {
        close_gracefully(&mut ws).await;
    }
    w.counters.open.fetch_sub(1, Relaxed);
}

/// How a stalled viewer's stream ended, for its close-codes map: `eof` is an end of stream
/// without a close frame (what a server that drops a blocked socket leaves behind).
fn stalled_end_kind(e: &WsError) -> &'static str {
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => "eof",
        WsError::Io(_) => "reset",
        WsError::Capacity(_) => "too_large",
        _ => "protocol_error",
    }
}

/// The close code of a close frame (1005 when it carries none).
fn close_code(frame: Option<&CloseFrame>) -> String {
    frame.map_or(1005, |f| u16::from(f.code)).to_string()
}

/// Resolves once the worker has moved to [`Phase::Closing`] (or its phase sender is gone).
async fn until_closing(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    loop {
        if *phase.borrow_and_update() == Phase::Closing {
            return;
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}

/// What ended the reading part of a stalled viewer's life.
enum StallStart {
    /// The greeting (plus `--stall-after`) is done: stop reading.
    Stall,
    /// The run is closing before the stall began.
    Closing,
    /// The server closed the connection: close code, `eof` or `reset`.
    Ended(String),
}

/// Runs a stalled viewer (`--stalled`): connects, reads its welcome and initial snapshot,
/// keeps reading (and discarding) for `--stall-after`, then leaves the socket open and unread
/// until the worker moves to [`Phase::Closing`]. Then it reads what is buffered, for a short
/// bounded time, to learn whether the server closed it (close frame, end of stream or reset)
/// or it is still open, and closes it if so. Everything is counted in
/// [`crate::metrics::StalledStats`] only.
pub async fn run_stalled(w: Arc<WorkerShared>, spec: ClientSpec) {
    let mut phase = w.phase();
    w.counters.stalled().attempted += 1;
    let connected = connect(&w.plan, &spec).await;
    w.resolved_one();
    let mut ws = match connected {
        Ok(ws) => {
            w.counters.stalled().connected += 1;
            ws
        }
        Err(f) => {
            *w.counters
                .stalled()
                .failed_by_reason
                .entry(f.reason.clone())
                .or_default() += 1;
            w.warn_once(&f);
            return;
        }
    };

    let stall_after = Duration::from_millis(w.plan.stall_after_ms);
    let mut stall_at: Option<Instant> = None;
    let start = loop {
        // Checked before every read: once the stall is due, not one more frame is read (even
        // one already in the read buffer).
        if stall_at.is_some_and(|at| Instant::now() >= at) {
            break StallStart::Stall;
        }
        tokio::select! {
            biased;
            _ = until_closing(&mut phase) => break StallStart::Closing,
            _ = sleep_until(stall_at.unwrap_or_else(Instant::now)), if stall_at.is_some() => {
                break StallStart::Stall;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => break StallStart::Ended(close_code(frame.as_ref())),
                Some(Ok(m)) => {
                    let greeting_done = stall_at.is_none()
                        && matches!(decode(spec.codec, &m), Some(Ok(f)) if f.kind == "snapshot");
                    if greeting_done {
                        stall_at = Some(Instant::now() + stall_after);
                    }
                }
                Some(Err(e)) => break StallStart::Ended(stalled_end_kind(&e).to_string()),
                None => break StallStart::Ended("eof".to_string()),
            },
        }
    };
    let ended = match start {
        StallStart::Ended(how) => Some(how),
        StallStart::Closing => None,
        StallStart::Stall => {
            w.counters.stalled().stopped_reading += 1;
            // The socket stays open and is not polled: the server's writes back up.
            until_closing(&mut phase).await;
            let (ended, bytes) = drain(&mut ws).await;
            w.counters.stalled().bytes_drained += bytes;
            ended
        }
    };
    match ended {
        Some(how) => {
            *w.counters
                .stalled()
                .closed_by_server
                .entry(how)
                .or_default() += 1;
        }
        None => {
            w.counters.stalled().still_open += 1;
            close_gracefully(&mut ws).await;
        }
    }
}

/// Reads a stalled socket for at most [`STALLED_DRAIN_LIMIT`]: how it ended (`None` while it
/// is still open) and the payload bytes read on the way.
async fn drain(ws: &mut Ws) -> (Option<String>, u64) {
    let deadline = Instant::now() + STALLED_DRAIN_LIMIT;
    let mut bytes = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return (None, bytes),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (Some(close_code(frame.as_ref())), bytes);
            }
            Ok(Some(Ok(m))) => bytes += m.len() as u64,
            Ok(Some(Err(e))) => return (Some(stalled_end_kind(&e).to_string()), bytes),
            Ok(None) => return (Some("eof".to_string()), bytes),
        }
    }
}

/// Runs a storm client: connect, wait for the snapshot, send a few fixes, close, pause,
/// again, until the worker leaves [`Phase::Running`].
pub async fn run_storm(w: Arc<WorkerShared>, spec: ClientSpec) {
    let phase = w.phase();
    let mut fixes = FixSource::new(&w.plan, spec.number);
    let mut rng = SmallRng::seed_from_u64(w.plan.seed ^ u64::from(spec.index));
    let pause_ms = w.plan.storm_pause_ms.max(1);
    let mut first = true;
    // One session must not stall the storm: bounded by the connect timeout plus the time its
    // fixes take, plus slack.
    let session_limit = Duration::from_millis(w.plan.connect_timeout_ms)
        + fixes.period * w.plan.storm_fixes
        + Duration::from_secs(5);

    while *phase.borrow() == Phase::Running {
        let connected = connect_counted(&w, &spec).await;
        if std::mem::take(&mut first) {
            w.resolved_one();
        }
        if let Some(mut ws) = connected {
            let is_device = spec.role == Role::Device;
            // A fresh view per session, not part of the latest-state check.
            let view = View::new(&w.layout, spec.group);
            let mut session = Session::new(&w, &spec, &view);
            let (mut ready, mut sent) = (false, 0u32);
            let mut ended_by: Option<String> = None;
            let deadline = Instant::now() + session_limit;
            fixes.next_at = Instant::now();
            let mut stop = phase.clone();
            loop {
                let done_sending = !is_device || sent >= w.plan.storm_fixes;
                if ready && done_sending {
                    break;
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = sleep_until(deadline) => break,
                    msg = ws.next() => match msg {
                        Some(Ok(m)) => match session.on_message(&m) {
                            Step::Ready => ready = true,
                            Step::Closed(code) => { ended_by = Some(code); break }
                            Step::Continue => {}
                        },
                        Some(Err(e)) => { ended_by = Some(read_error_kind(&e).to_string()); break }
                        None => { ended_by = Some("eof".to_string()); break }
                    },
                    _ = sleep_until(fixes.next_at), if ready && !done_sending => {
                        let Ok((msg, _ts)) = fixes.next_message(spec.codec) else { break };
                        if let Err(e) = ws.send(msg).await {
                            ended_by = Some(read_error_kind(&e).to_string());
                            break;
                        }
                        bump(&w.counters.fixes_sent);
                        sent += 1;
                    }
                }
            }
            match ended_by {
                Some(how) => w.counters.closed_by_server(&how),
                None => {
                    close_gracefully(&mut ws).await;
                    if ready {
                        bump(&w.counters.storm_cycles);
                    }
                }
            }
            w.counters.open.fetch_sub(1, Relaxed);
        }
        let pause = Duration::from_millis(rng.random_range(pause_ms / 2..=pause_ms + pause_ms / 2));
        let mut stop = phase.clone();
        tokio::select! {
            _ = sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::config::{Center, CodecChoice, Target};

    fn plan(devices: u32, viewers: u32, source_addrs: u8) -> Plan {
        Plan {
            run_id: "lt1".into(),
            scenario: Scenario::Fleet,
            devices,
            viewers,
            stalled: 0,
            stall_after_ms: 0,
            groups: 3,
            rate_hz: 1.0,
            codec: CodecChoice::Mixed,
            ramp_per_s: 100.0,
            duration_ms: 1000,
            settle_ms: 1000,
            connect_timeout_ms: 1000,
            max_time_ms: 10_000,
            targets: vec![
                Target {
                    url: "ws://127.0.0.1:1/v1/ws".into(),
                    addr: "127.0.0.1:1".parse().unwrap(),
                    loopback: true,
                },
                Target {
                    url: "ws://[::1]:2/v1/ws".into(),
                    addr: "[::1]:2".parse().unwrap(),
                    loopback: true,
                },
            ],
            source_addrs,
            token: Some("a.b+c".into()),
            workers: 1,
            center: Center {
                lat: 52.5,
                lon: 13.4,
            },
            seed: 1,
            storm_fixes: 3,
            storm_pause_ms: 100,
            base_ms: 1_000,
        }
    }

    #[test]
    fn specs_put_viewers_first_and_spread_targets_and_sources() {
        let p = plan(10, 2, 4);
        let v = ClientSpec::new(&p, 1);
        assert_eq!((v.role, v.number, v.group), (Role::Viewer, 1, 1));
        let d = ClientSpec::new(&p, 2);
        assert_eq!(
            (d.role, d.number, d.group, d.id.as_str()),
            (Role::Device, 0, 0, "lt1-d0")
        );
        assert_eq!(d.target, 0);
        assert_eq!(d.source, Some(Ipv4Addr::new(127, 0, 0, 3)));
        let d1 = ClientSpec::new(&p, 3);
        assert_eq!(d1.target, 1);
        assert_eq!(d1.source, None, "no IPv4 source address for an IPv6 target");
    }

    #[test]
    fn stalled_viewers_come_last_as_viewers_of_every_group() {
        let mut p = plan(4, 2, 1);
        p.stalled = 4;
        let specs: Vec<ClientSpec> = (6..10).map(|i| ClientSpec::new(&p, i)).collect();
        assert!(specs.iter().all(|s| s.role == Role::Stalled));
        assert_eq!(
            specs.iter().map(|s| s.number).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            specs.iter().map(|s| s.group).collect::<Vec<_>>(),
            vec![0, 1, 2, 0]
        );
        assert_eq!(specs[1].id, "lt1-s1");
        let url = specs[1].url(&p);
        assert!(url.contains("id=lt1-s1&groups=lt1-g1&role=viewer"), "{url}");
        assert_eq!(ClientSpec::new(&p, 5).role, Role::Device);
    }

    #[test]
    fn every_group_spans_all_targets_and_both_codecs() {
        let p = plan(12, 0, 1);
        // Group 0 holds devices 0, 3, 6, 9.
        let group0: Vec<(usize, Codec)> = [0, 3, 6, 9]
            .into_iter()
            .map(|d| ClientSpec::new(&p, d))
            .map(|s| (s.target, s.codec))
            .collect();
        assert_eq!(
            group0,
            vec![
                (0, Codec::Json),
                (1, Codec::Json),
                (0, Codec::Msgpack),
                (1, Codec::Msgpack)
            ]
        );
        let mut one_target = plan(12, 0, 1);
        one_target.targets.truncate(1);
        let codecs: Vec<Codec> = [1, 4, 7, 10]
            .into_iter()
            .map(|d| ClientSpec::new(&one_target, d).codec)
            .collect();
        assert_eq!(
            codecs,
            vec![Codec::Msgpack, Codec::Json, Codec::Msgpack, Codec::Json]
        );
    }

    #[test]
    fn urls_carry_identity_and_token() {
        let p = plan(10, 2, 1);
        let url = ClientSpec::new(&p, 4).url(&p);
        assert_eq!(
            url,
            "ws://127.0.0.1:1/v1/ws?id=lt1-d2&groups=lt1-g2&role=device&access_token=a.b%2Bc"
        );
        assert!(ClientSpec::new(&p, 0).url(&p).contains("role=viewer"));
    }

    #[test]
    fn only_this_runs_devices_are_recognised() {
        assert_eq!(parse_device("lt1-d", "lt1-d42", 100), Some(42));
        assert_eq!(parse_device("lt1-d", "lt1-d420", 100), None);
        assert_eq!(parse_device("lt1-d", "lt2-d4", 100), None);
        assert_eq!(parse_device("lt1-d", "bus-17", 100), None);
        assert_eq!(parse_device("lt1-d", "lt1-d", 100), None);
    }

    #[test]
    fn fix_times_strictly_increase() {
        let p = plan(1, 0, 1);
        let mut src = FixSource::new(&p, 0);
        let mut last = 0;
        for _ in 0..50 {
            let (_, ts) = src.next_message(Codec::Json).unwrap();
            assert!(ts > last);
            last = ts;
        }
        assert_eq!(src.seq, 50);
    }

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

    /// How the fake server ends a stalled viewer's connection.
    #[derive(Clone, Copy)]
    enum FakeEnd {
        /// Sends a close frame with this code.
        Close(u16),
        /// Drops the TCP connection without a close frame.
        Drop,
        /// Keeps the connection open.
        Stay,
    }

    /// A one-connection JSON server: welcome, snapshot, `batches` batch frames, then `end`.
    /// Answers with the payload bytes of the batches once they are all written.
    async fn fake_server(
        end: FakeEnd,
        batches: usize,
    ) -> (SocketAddr, tokio::sync::oneshot::Receiver<u64>) {
        use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
        // tungstenite's handshake callback signature, large error type included.
        #[allow(clippy::result_large_err)]
        fn answer(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("beacon.v1.json"),
            );
            Ok(response)
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done, written) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_hdr_async(stream, answer)
                .await
                .unwrap();
            for greeting in [
                r#"{"type":"welcome","session":"s","id":"x","role":"viewer","groups":["g"],"server_time":1,"tick_ms":100}"#,
                r#"{"type":"snapshot","group":"g","devices":[]}"#,
            ] {
                ws.send(Message::text(greeting)).await.unwrap();
            }
            let mut bytes = 0u64;
            for n in 0..batches {
                let batch = format!(r#"{{"type":"batch","group":"g","updates":[],"n":{n}}}"#);
                bytes += batch.len() as u64;
                ws.send(Message::text(batch)).await.unwrap();
            }
            match end {
                FakeEnd::Close(code) => {
                    let frame = CloseFrame {
                        code: code.into(),
                        reason: "slow consumer".into(),
                    };
                    ws.send(Message::Close(Some(frame))).await.unwrap();
                    let _ = done.send(bytes);
                }
                FakeEnd::Drop => {
                    drop(ws);
                    let _ = done.send(bytes);
                    return;
                }
                FakeEnd::Stay => {
                    let _ = done.send(bytes);
                }
            }
            // Answer the client's close, if it sends one.
            while let Some(Ok(_)) = ws.next().await {}
        });
        (addr, written)
    }

    /// Runs one stalled viewer against a fake server ending with `end`, and returns its
    /// figures and the bytes of the batches the server wrote after the greeting.
    async fn stall_against(end: FakeEnd) -> (crate::metrics::StalledStats, u64) {
        let (addr, written) = fake_server(end, 40).await;
        let mut p = plan(0, 0, 1);
        p.stalled = 1;
        p.codec = CodecChoice::Json;
        p.targets.truncate(1);
        p.targets[0].addr = addr;
        p.targets[0].url = format!("ws://{addr}/v1/ws");
        let plan = Arc::new(p);
        let w = Arc::new(WorkerShared::new(plan.clone()));
        let spec = ClientSpec::new(&plan, 0);
        assert_eq!(spec.role, Role::Stalled);
        let task = tokio::spawn(run_stalled(w.clone(), spec));
        let bytes = timeout(Duration::from_secs(10), written)
            .await
            .expect("the fake server wrote everything")
            .unwrap();
        // Let the last frames reach the client's socket before the run closes.
        sleep(Duration::from_millis(200)).await;
        assert_eq!(w.counters.stalled().stopped_reading, 1);
        w.set_phase(Phase::Closing);
        timeout(Duration::from_secs(10), task)
            .await
            .expect("the stalled viewer finished")
            .unwrap();
        let stats = w.counters.snapshot();
        // Nothing of it shows in the measured clients' figures.
        assert_eq!((stats.attempted, stats.established, stats.open), (0, 0, 0));
        assert_eq!((stats.frames_received, stats.snapshots), (0, 0));
        assert!(stats.maps.close_codes.is_empty());
        (stats.stalled, bytes)
    }

    #[tokio::test]
    async fn a_stalled_viewer_reads_nothing_after_its_greeting_and_sees_the_close_code() {
        let (s, batches) = stall_against(FakeEnd::Close(1013)).await;
        assert_eq!((s.attempted, s.connected, s.stopped_reading), (1, 1, 1));
        assert_eq!(
            s.closed_by_server,
            BTreeMap::from([("1013".to_string(), 1)])
        );
        assert_eq!(s.still_open, 0);
        // Every batch was still unread when the run closed: it stopped at the greeting.
        assert_eq!(s.bytes_drained, batches);
    }

    #[tokio::test]
    async fn a_stalled_viewer_dropped_without_a_close_frame_sees_eof() {
        let (s, batches) = stall_against(FakeEnd::Drop).await;
        assert_eq!(s.closed_by_server, BTreeMap::from([("eof".to_string(), 1)]));
        assert_eq!(s.still_open, 0);
        assert_eq!(s.bytes_drained, batches);
    }

    #[tokio::test]
    async fn a_stalled_viewer_the_server_kept_is_still_open() {
        let (s, batches) = stall_against(FakeEnd::Stay).await;
        assert!(s.closed_by_server.is_empty(), "{s:?}");
        assert_eq!(s.still_open, 1);
        assert_eq!(s.bytes_drained, batches);
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
