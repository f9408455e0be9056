//! Stalled viewers (`--stalled`): slow consumers that read their greeting, then leave their
//! socket unread until the end of the run, and find out at the end whether the server closed
//! them. They are counted in [`crate::metrics::StalledStats`] only.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::connect::{Ws, close_gracefully, connect};
use crate::shared::{Phase, WorkerShared};
use crate::spec::ClientSpec;
use crate::wire::decode;

/// How long a stalled viewer's socket is read at the end, to find out whether the server has
/// closed it: everything buffered comes first, then the close frame or end of stream.
const STALLED_DRAIN_LIMIT: Duration = Duration::from_millis(1500);

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
pub(crate) async fn run_stalled(w: Arc<WorkerShared>, spec: ClientSpec) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use futures_util::SinkExt;
    use tokio::time::{sleep, timeout};
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    use super::*;
    use crate::config::CodecChoice;
    use crate::spec::Role;
    use crate::spec::testing::plan;

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
}
