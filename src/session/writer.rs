//! The session's side of the socket: every frame the session writes goes through [`Writer`],
//! and only it tells the outbox when the session is writing.
//!
//! On plain TCP the hub writes batches straight into the socket whenever the session is not
//! writing ([`crate::outbox`]). So each write of the session is bracketed: the outbox is held
//! before the first byte is fed and released only once a flush has written everything out.
//! That bracketing lives here and nowhere else, so a new session path cannot forget it:
//! - [`Writer::feed`], [`Writer::feed_after`] and [`Writer::feed_queued`] hold;
//! - only a successful [`Writer::flush`] or [`Writer::ping`] releases;
//! - [`Writer::close`] and [`Writer::finish_closing_handshake`] hold for good.
//!
//! Every write is bounded by the slow-consumer limit; running past it is
//! [`WriteError::Slow`], which the session answers by closing with 1013.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::upgrade::Socket;

/// Largest payload written as one WebSocket frame; a larger message is fragmented. tungstenite
/// keeps, per connection, a write buffer as large as the largest frame it ever formatted, so
/// this bound (with `--write-buffer-bytes`) is what keeps a connection that once received a big
/// snapshot from holding that much memory for the rest of its life.
pub(crate) const FRAGMENT_BYTES: usize = 2048;

/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a write did not go through.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The socket failed: the client is gone.
    Client,
    /// The write did not finish within the slow-consumer limit.
    Slow,
}

/// The socket of one session, and its share of the outbox protocol.
pub(super) struct Writer {
    socket: Socket,
    outbox: Arc<Outbox>,
    /// Longest a write may take (`--slow-close-secs`).
    limit: Duration,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// The writer of `socket`, whose hub side is `outbox`.
    pub(super) fn new(
        socket: Socket,
        outbox: Arc<Outbox>,
        limit: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Writer {
            socket,
            outbox,
            limit,
            metrics,
        }
    }

    /// The next message from the client. Reading takes no part in the outbox protocol; it is
    /// here because tungstenite's stream carries both directions.
    pub(super) async fn next(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        self.socket.next().await
    }

    /// Feeds `frame` into the socket's write buffer, writing out when it is full. A frame
    /// larger than [`FRAGMENT_BYTES`] goes out as several fragments of one message. The hub
    /// queues its batches from here until the next [`Writer::flush`].
    pub(super) async fn feed(&mut self, frame: Frame) -> Result<(), WriteError> {
        self.outbox.hold();
        let len = frame.len();
        let sent = if len <= FRAGMENT_BYTES {
            tokio::time::timeout(self.limit, self.socket.feed(frame.into_message())).await
        } else {
            tokio::time::timeout(self.limit, feed_fragments(&mut self.socket, frame)).await
        };
        match sent {
            Ok(Ok(())) => {
                self.metrics.frames_out.inc();
                self.metrics.bytes_out.inc_by(len as u64);
                Ok(())
            }
            Ok(Err(_)) => Err(WriteError::Client),
            Err(_) => Err(WriteError::Slow),
        }
    }

    /// Holds the hub's direct writes, runs `make` and feeds the frame it returns. Whatever
    /// `make` sets off at the hub (a subscription, whose batches follow at once) waits for
    /// this frame: a snapshot always precedes the batches after it.
    pub(super) async fn feed_after(
        &mut self,
        make: impl FnOnce() -> Frame,
    ) -> Result<(), WriteError> {
        self.outbox.hold();
        let frame = make();
        self.feed(frame).await
    }

    /// Feeds up to `max` frames the hub queued, oldest first (not flushed). Returns whether
    /// frames were dropped for this client since it last asked (then it needs a resync).
    pub(super) async fn feed_queued(&mut self, max: usize) -> Result<bool, WriteError> {
        // Held before the first pop: the hub must not write a newer batch directly while
        // older ones are still on their way from the queue.
        self.outbox.hold();
        for _ in 0..max {
            match self.outbox.pop() {
                Some(frame) => self.feed(frame).await?,
                None => break,
            }
        }
        Ok(self.outbox.take_lagged())
    }

    /// Writes out everything fed, then lets the hub write directly again.
    pub(super) async fn flush(&mut self) -> Result<(), WriteError> {
        match tokio::time::timeout(self.limit, self.socket.flush()).await {
            Ok(Ok(())) => {
                self.outbox.release();
                Ok(())
            }
            Ok(Err(_)) => Err(WriteError::Client),
            Err(_) => Err(WriteError::Slow),
        }
    }

    /// Sends a WebSocket ping (written out at once).
    pub(super) async fn ping(&mut self) -> Result<(), WriteError> {
        self.outbox.hold();
        match tokio::time::timeout(self.limit, self.socket.send(Message::Ping(Bytes::new()))).await
        {
            Ok(Ok(())) => {
                self.outbox.release();
                Ok(())
            }
            Ok(Err(_)) => Err(WriteError::Client),
            Err(_) => Err(WriteError::Slow),
        }
    }

    /// Sends a close frame with `code` and `reason` (best effort, bounded in time), then
    /// waits for the client's (bounded in time and bytes). The hub writes nothing after it.
    pub(super) async fn close(&mut self, code: u16, reason: &'static str) {
        self.outbox.hold();
        let frame = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(frame)).await;
        // The closing handshake: the client answers with its own close frame, possibly after
        // more of what it was sending. Read it all before the socket is closed, or the kernel
        // resets the connection and the client loses this close frame and the frames before
        // it. Bounded (see `Conn::drain`); only ever runs after a close frame.
        self.socket.get_mut().drain().await;
    }

    /// Whether the client has left a fragmented message unfinished for too long.
    pub(super) fn message_overdue(&self) -> bool {
        self.socket.get_ref().message_overdue()
    }

    /// The client sent a close frame: tungstenite queued the reply of the closing handshake;
    /// lets it go out (bounded in time). The hub writes nothing after it.
    pub(super) async fn finish_closing_handshake(&mut self) {
        self.outbox.hold();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.flush()).await;
    }
}

/// Feeds one message as fragments of at most [`FRAGMENT_BYTES`]: the first frame carries the
/// message's opcode, the others are continuations, the last one is final. Slicing `Bytes` is
/// free; the payload is only copied into the socket's write buffer, as for any frame.
async fn feed_fragments(socket: &mut Socket, frame: Frame) -> Result<(), tungstenite::Error> {
    let (payload, opcode) = match frame {
        Frame::Text(text) => (Bytes::from(text), Data::Text),
        Frame::Binary(bytes) => (bytes, Data::Binary),
    };
    let mut start = 0;
    while start < payload.len() {
        let end = (start + FRAGMENT_BYTES).min(payload.len());
        let opcode = if start == 0 { opcode } else { Data::Continue };
        let fragment = WireFrame::message(
            payload.slice(start..end),
            OpCode::Data(opcode),
            end == payload.len(),
        );
        socket.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}
