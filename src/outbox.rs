//! The write side of one connection, shared by the hub and the connection's session.
//!
//! # Direct writes
//! Fanning a batch out by waking every subscriber's task costs a task wake-up, a poll of the
//! session's `select!` and a copy into tungstenite's write buffer per frame, on top of the
//! `send` itself. So on a plain TCP connection the hub writes the shared frame straight to the
//! socket ([`Outbox::push`]): one non-blocking `send` of the whole frame, header included, from
//! the ticker, without waking the session at all. This is allowed only while
//! nothing else may be on its way to the socket (each batch is formatted once as a complete
//! WebSocket frame, [`Prepared`], and shared by every subscriber):
//!
//! - the session is not writing (it calls [`Outbox::hold`] before it writes anything and
//!   [`Outbox::release`] once it has flushed, so a `snapshot` always precedes the batches
//!   that follow it);
//! - tungstenite did not leave part of a frame unwritten ([`Outbox::poll_write`] sees every
//!   write it makes);
//! - no queued frame and no partly written frame is waiting.
//!
//! When the socket cannot take the whole frame, the rest is kept and the session finishes it
//! before anything else goes out; when it takes none of it, the frame is queued. Every write to
//! the socket happens under this outbox's lock, so frames never interleave.
//!
//! # The queue
//! Otherwise (a TLS connection, a session busy writing, a socket whose buffer is full) frames
//! go to a bounded queue that the session drains. A tokio `mpsc` channel would allocate a
//! block of 32 slots (about 1.8 KiB) per connection up front, idle or not; this queue allocates
//! nothing until a frame is queued, holds at most `capacity` frames, and remembers when it had
//! to refuse one (`lagged`), which is what the session needs to resync a slow client. Frames
//! are reference-counted, so a queued frame costs a pointer, not a copy.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::protocol::Frame;

/// Capacity above which an emptied queue gives its memory back.
const SHRINK_ABOVE: usize = 8;

/// Longest header of an unmasked server frame: two bytes and a 64-bit length.
const MAX_HEADER: usize = 10;

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Written to the socket (or started, with the session to finish it).
    Sent,
    /// Queued for the connection.
    Queued,
    /// Dropped: the queue was full, and the outbox is now marked lagged.
    Full,
    /// Dropped: the connection is gone.
    Closed,
}

/// A frame as it goes on the wire, header and payload in one buffer, built once and written
/// to any number of sockets with one `send` each.
///
/// The payload seen through [`Prepared::frame`] (what the queue hands to tungstenite) is a
/// slice of that same buffer, so a batch is held once in memory however many queues keep it.
#[derive(Clone, Debug)]
pub struct Prepared {
    frame: Frame,
    wire: Bytes,
}

impl Prepared {
    /// Formats a final, unmasked frame carrying `frame`.
    pub fn new(frame: Frame) -> Self {
        let opcode = match frame {
            Frame::Text(_) => Data::Text,
            Frame::Binary(_) => Data::Binary,
        };
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::Data(opcode),
            mask: None,
        };
        let mut wire = Vec::with_capacity(MAX_HEADER + frame.len());
        header
            .format(frame.len() as u64, &mut wire)
            .expect("formatting into a Vec cannot fail");
        let header_len = wire.len();
        wire.extend_from_slice(frame.as_bytes());
        let wire = Bytes::from(wire);
        let payload = wire.slice(header_len..);
        let frame = match frame {
            // Checks UTF-8 again, once per batch: the price of not holding the text twice.
            Frame::Text(text) => {
                Utf8Bytes::try_from(payload).map_or(Frame::Text(text), Frame::Text)
            }
            Frame::Binary(_) => Frame::Binary(payload),
        };
        Prepared { frame, wire }
    }

    /// The frame's payload and message kind.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Header and payload, as written.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

/// A frame the hub started writing directly and the socket did not take whole.
#[derive(Debug)]
struct Partial {
    /// What is left to write.
    rest: Bytes,
}

impl Partial {
    /// Writes as much of the rest as the socket takes; `Ok(true)` once it is all out.
    fn advance(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while !self.rest.is_empty() {
            match stream.try_write(&self.rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.rest.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The hub's way into one connection: direct writes when possible, else a bounded queue.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Frame>,
    lagged: bool,
    closed: bool,
    /// The connection's socket when it is plain TCP: the hub may write to it directly.
    stream: Option<Arc<TcpStream>>,
    /// The session is writing (or has not finished its greeting).
    held: bool,
    /// tungstenite's last write left part of its buffer unwritten.
    mid_frame: bool,
    /// The rest of a frame the hub started writing.
    partial: Option<Partial>,
}

impl State {
    fn may_write_directly(&self) -> bool {
        self.stream.is_some()
            && !self.held
            && !self.mid_frame
            && self.partial.is_none()
            && self.frames.is_empty()
            && !self.lagged
    }

    /// Finishes a partly written frame; `Ok(false)` when the socket cannot take more now.
    fn finish_partial(&mut self, stream: &TcpStream) -> io::Result<bool> {
        let Some(partial) = &mut self.partial else {
            return Ok(true);
        };
        let done = partial.advance(stream)?;
        if done {
            self.partial = None;
        }
        Ok(done)
    }
}

impl Outbox {
    /// An outbox without a direct path: every frame is queued (TLS connections, tests).
    pub fn new(capacity: usize) -> Self {
        Self::build(capacity, None)
    }

    /// An outbox that may write to `stream` directly. The session must write to the same
    /// socket only through [`Outbox::poll_write`] and [`Outbox::poll_flush`].
    pub fn with_stream(capacity: usize, stream: Arc<TcpStream>) -> Self {
        Self::build(capacity, Some(stream))
    }

    fn build(capacity: usize, stream: Option<Arc<TcpStream>>) -> Self {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                lagged: false,
                closed: false,
                stream,
                held: true,
                mid_frame: false,
                partial: None,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections only move frames in and out of a VecDeque and write to a
        // non-blocking socket; they cannot leave it inconsistent, so a poisoned lock is still
        // usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` to the socket when nothing else is on its way there, else queues it
    /// unless the queue is full or closed. Never waits.
    pub fn push(&self, frame: &Prepared) -> Push {
        let mut state = self.lock();
        if state.closed {
            return Push::Closed;
        }
        if state.may_write_directly()
            && let Some(stream) = &state.stream
        {
            match stream.try_write(&frame.wire) {
                Ok(n) if n == frame.wire.len() => return Push::Sent,
                Ok(n) if n > 0 => {
                    state.partial = Some(Partial {
                        rest: frame.wire.slice(n..),
                    });
                    drop(state);
                    self.ready.notify_one();
                    return Push::Sent;
                }
                // Nothing written: the socket's buffer is full; queue the frame. On an error,
                // queue it too: the session's next read or write meets the same error and ends.
                _ => {}
            }
        }
        if state.frames.len() >= self.capacity {
            state.lagged = true;
            return Push::Full;
        }
        state.frames.push_back(frame.frame.clone());
        drop(state);
        self.ready.notify_one();
        Push::Queued
    }

    /// Takes the oldest queued frame.
    pub fn pop(&self) -> Option<Frame> {
        let mut state = self.lock();
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > SHRINK_ABOVE {
            state.frames = VecDeque::new();
        }
        frame
    }

    /// Completes once the session has something to write: a queued frame, or the rest of a
    /// frame the hub started (at once when it already has).
    pub async fn ready(&self) {
        loop {
            // Registering interest before checking closes the gap between a check and a push.
            let notified = self.ready.notified();
            {
                let state = self.lock();
                if !state.frames.is_empty() || state.partial.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// The session is about to write: the hub queues instead of writing directly.
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// The session has flushed what it wrote: the hub may write directly again, unless frames
    /// wait in the queue (then the session is woken to write them first).
    pub fn release(&self) {
        let mut state = self.lock();
        if state.frames.is_empty() && state.partial.is_none() {
            state.held = false;
        }
    }

    /// Whether frames were dropped since the last call; if so, also discards whatever is still
    /// queued, since the caller is about to replace it with fresh snapshots.
    pub fn take_lagged(&self) -> bool {
        let mut state = self.lock();
        if !state.lagged {
            return false;
        }
        state.lagged = false;
        state.frames = VecDeque::new();
        true
    }

    /// Refuses every further frame, frees the queued ones and lets go of the socket.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        state.partial = None;
        state.stream = None;
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session's write to `stream` (the socket this outbox was made with): finishes a
    /// frame the hub started, then writes `buf`, all under the lock so nothing interleaves.
    pub fn poll_write(
        &self,
        stream: &TcpStream,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            {
                let mut state = self.lock();
                if state.finish_partial(stream)? {
                    match stream.try_write(buf) {
                        Ok(n) => {
                            state.mid_frame = n < buf.len();
                            return Poll::Ready(Ok(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            ready!(stream.poll_write_ready(cx))?;
        }
    }

    /// The session's flush: finishes a frame the hub started.
    pub fn poll_flush(&self, stream: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.lock().finish_partial(stream)? {
                return Poll::Ready(Ok(()));
            }
            ready!(stream.poll_write_ready(cx))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(s: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(s))
    }

    fn prepared(s: &'static str) -> Prepared {
        Prepared::new(frame(s))
    }

    #[test]
    fn bounded_with_lag_flag() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(&prepared("a")), Push::Queued);
        assert_eq!(outbox.push(&prepared("b")), Push::Queued);
        assert_eq!(outbox.push(&prepared("c")), Push::Full);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.pop(), Some(frame("a")));
        assert!(outbox.take_lagged());
        assert!(outbox.is_empty(), "a resync discards the stale queue");
        assert!(!outbox.take_lagged());
        outbox.close();
        assert_eq!(outbox.push(&prepared("d")), Push::Closed);
    }

    #[test]
    fn headers_follow_the_payload_length() {
        let short = Prepared::new(frame("hi"));
        assert_eq!(short.wire(), b"\x81\x02hi");
        let long = Prepared::new(Frame::Binary(Bytes::from(vec![9u8; 300])));
        assert_eq!(long.wire()[..4], [0x82, 126, 1, 44]);
        assert_eq!(long.wire().len(), 304);
        let huge = Prepared::new(Frame::Binary(Bytes::from(vec![9u8; 70_000])));
        assert_eq!(huge.wire()[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(huge.wire().len(), 70_010);
        assert!(huge.wire()[10..].iter().all(|b| *b == 9));
    }

    #[test]
    fn the_payload_is_held_once() {
        for (p, header) in [
            (Prepared::new(frame("hello")), 2),
            (Prepared::new(Frame::Binary(Bytes::from(vec![5u8; 300]))), 4),
        ] {
            assert_eq!(p.frame().as_bytes(), &p.wire()[header..]);
            assert_eq!(
                p.frame().as_bytes().as_ptr(),
                p.wire()[header..].as_ptr(),
                "the payload must be a slice of the wire buffer, not a copy"
            );
        }
        assert_eq!(Prepared::new(frame("hello")).frame(), &frame("hello"));
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let outbox = Arc::new(Outbox::new(4));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.ready().await;
                outbox.pop()
            }
        });
        tokio::task::yield_now().await;
        outbox.push(&prepared("x"));
        assert_eq!(waiter.await.unwrap(), Some(frame("x")));
    }

    /// A connected pair of TCP sockets on loopback.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn writes_directly_only_when_released() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::with_stream(4, server);
        assert_eq!(
            outbox.push(&prepared("held")),
            Push::Queued,
            "a new outbox is held until the session greeted"
        );
        outbox.release();
        assert_eq!(
            outbox.push(&prepared("late")),
            Push::Queued,
            "queued frames go first"
        );
        assert_eq!(outbox.pop(), Some(frame("held")));
        assert_eq!(outbox.pop(), Some(frame("late")));
        outbox.release();
        assert_eq!(outbox.push(&prepared("now")), Push::Sent);
        let mut wire = [0u8; 5];
        client.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire, b"\x81\x03now");
        outbox.hold();
        assert_eq!(outbox.push(&prepared("busy")), Push::Queued);
    }

    #[tokio::test]
    async fn a_frame_the_socket_did_not_take_whole_is_finished_first() {
        let (server, mut client) = pair().await;
        socket2::SockRef::from(&*server)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        let outbox = Arc::new(Outbox::with_stream(1_000_000, server.clone()));
        outbox.release();
        let big = Prepared::new(Frame::Binary(Bytes::from(vec![7u8; 64 * 1024])));
        let mut sent = 0;
        let mut queued = 0;
        for _ in 0..8 {
            match outbox.push(&big) {
                Push::Sent => sent += 1,
                Push::Queued => queued += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sent >= 1 && queued >= 1, "sent {sent}, queued {queued}");
        // The session's side: finish the partial frame, then write what was queued, the way
        // tungstenite would, through poll_write.
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                std::future::poll_fn(|cx| outbox.poll_flush(&server, cx))
                    .await
                    .unwrap();
                while let Some(frame) = outbox.pop() {
                    let wire = Prepared::new(frame).wire().to_vec();
                    let mut at = 0;
                    while at < wire.len() {
                        at +=
                            std::future::poll_fn(|cx| outbox.poll_write(&server, cx, &wire[at..]))
                                .await
                                .unwrap();
                    }
                }
            }
        });
        let mut received = vec![0u8; 8 * big.wire().len()];
        client.read_exact(&mut received).await.unwrap();
        writer.await.unwrap();
        for chunk in received.chunks(big.wire().len()) {
            assert_eq!(&chunk[..4], &[0x82, 127, 0, 0]);
            assert!(
                chunk[MAX_HEADER..].iter().all(|b| *b == 7),
                "frames interleaved"
            );
        }
    }
}
