//! The byte stream under a session's WebSocket.
//!
//! On a plain TCP connection the socket is shared: the session reads it (through tungstenite)
//! and writes its own frames, while the hub writes batches to it directly (see
//! [`crate::outbox`]). Every write, the session's included, goes through the connection's
//! [`Outbox`], whose lock keeps frames from interleaving. Any other upgraded stream (TLS) is
//! the session's alone, and the hub queues for it.
//!
//! Every byte the client sends passes through [`Inbound`], which follows the frame headers
//! (it skips payloads, so it costs a few comparisons per frame). tungstenite bounds the size
//! of a frame and of a message, but not how many frames a message is cut into: a client that
//! sends empty continuation frames forever never completes a message, never reaches a size
//! limit and is never charged by the rate limit, while the server parses millions of frames a
//! second for it. `Inbound` bounds a message to [`MAX_FRAGMENTS`] frames and
//! [`MESSAGE_TIMEOUT`] from its first frame to its last, and fails the read past either
//! ([`FrameViolation`], which the session answers with 1002). It also notices the client's
//! close frame, so that the session, once it has sent its own, knows when the client has
//! nothing more to say (the closing handshake, [`Conn::drain`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::outbox::Outbox;

/// Most frames one client message may be cut into (its first frame and its continuations).
/// Clients fragment rarely, and only messages far larger than Beacon's; past this the
/// connection is closed with 1002.
pub(crate) const MAX_FRAGMENTS: u32 = 64;

/// Longest a fragmented client message may take from its first frame to its last; past this
/// the connection is closed with 1002. Checked as frames arrive and at every heartbeat.
pub(crate) const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes read and thrown away after the server's close frame while waiting for the
/// client's (a client that was flooding has that much in flight). Past it, the socket is
/// closed anyway.
pub(crate) const DRAIN_BYTES: usize = 1 << 20;

/// Longest the server waits for the client's close frame after sending its own.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A client message broke a bound of [`Inbound`]: the read fails with this inside an
/// [`io::Error`] of kind `InvalidData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameViolation {
    /// More than [`MAX_FRAGMENTS`] frames in one message.
    #[error("a message of more than {MAX_FRAGMENTS} fragments")]
    TooManyFragments,
    /// A message not completed within [`MESSAGE_TIMEOUT`].
    #[error("a fragmented message not completed in time")]
    TooSlow,
}

impl FrameViolation {
    /// The violation inside a failed read, if that is why it failed.
    pub(crate) fn of(error: &io::Error) -> Option<FrameViolation> {
        error.get_ref()?.downcast_ref::<FrameViolation>().copied()
    }
}

/// Follows the frames a client sends, header by header, without keeping any payload.
#[derive(Debug, Default)]
struct Inbound {
    /// The header being read (at most 2 bytes, 8 of length, 4 of mask).
    header: [u8; 14],
    /// Bytes of `header` read so far.
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame is a close frame.
    in_close: bool,
    /// A close frame has arrived whole.
    close_seen: bool,
    /// Frames of the message in progress; 0 between messages.
    fragments: u32,
    /// When the message in progress started, if it is fragmented.
    started: Option<Instant>,
    /// Whether violations fail the read (not while draining after a close).
    lenient: bool,
}

impl Inbound {
    /// Length of the header being read, as far as its first bytes tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Follows `bytes`, the next ones read from the client.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FrameViolation> {
        let mut violation = Ok(());
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 && self.in_close {
                    self.close_seen = true;
                }
                continue;
            }
            let want = self.header_len();
            let n = (want - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == self.header_len()
                && let Err(v) = self.on_header()
            {
                violation = Err(v);
            }
        }
        if self.lenient { Ok(()) } else { violation }
    }

    /// A whole header has been read.
    fn on_header(&mut self) -> Result<(), FrameViolation> {
        let (first, len7) = (self.header[0], self.header[1] & 0x7f);
        let len = match len7 {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        };
        self.have = 0;
        self.payload_left = len;
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0f);
        if opcode & 0x08 != 0 {
            // A control frame: it may come between fragments and belongs to no message.
            self.in_close = opcode == 0x8;
            if self.in_close && len == 0 {
                self.close_seen = true;
            }
            return Ok(());
        }
        self.in_close = false;
        let mut result = Ok(());
        if opcode == 0 {
            self.fragments = self.fragments.saturating_add(1);
            if self.fragments > MAX_FRAGMENTS {
                result = Err(FrameViolation::TooManyFragments);
            } else if self.overdue(Instant::now()) {
                result = Err(FrameViolation::TooSlow);
            }
        } else {
            self.fragments = 1;
            self.started = (!fin).then(Instant::now);
        }
        if fin {
            self.fragments = 0;
            self.started = None;
        }
        result
    }

    /// Whether a message in progress has run past [`MESSAGE_TIMEOUT`].
    fn overdue(&self, now: Instant) -> bool {
        self.started
            .is_some_and(|at| now.saturating_duration_since(at) > MESSAGE_TIMEOUT)
    }
}

/// A session's stream: a shared TCP socket, or an upgraded stream of its own.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
    inbound: Inbound,
}

#[derive(Debug)]
enum Io {
    Tcp {
        stream: Arc<TcpStream>,
        outbox: Arc<Outbox>,
        /// Bytes the HTTP server read past the upgrade request, delivered first.
        prefix: Bytes,
    },
    Upgraded(TokioIo<Upgraded>),
}

impl Conn {
    /// Takes over an upgraded connection; returns it with the outbox the hub writes through,
    /// which queues at most `queue_frames` frames.
    pub(crate) fn open(upgraded: Upgraded, queue_frames: usize) -> (Conn, Arc<Outbox>) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = Arc::new(parts.io.into_inner());
                let outbox = Arc::new(Outbox::with_stream(queue_frames, stream.clone()));
                // `read_buf` is a view into the HTTP server's read buffer (several KiB): copy
                // the few bytes it may hold so that buffer is freed now.
                let io = Io::Tcp {
                    stream,
                    outbox: outbox.clone(),
                    prefix: Bytes::copy_from_slice(&parts.read_buf),
                };
                (Conn::new(io), outbox)
            }
            Err(upgraded) => {
                let io = Io::Upgraded(TokioIo::new(upgraded));
                (Conn::new(io), Arc::new(Outbox::new(queue_frames)))
            }
        }
    }

    fn new(io: Io) -> Conn {
        Conn {
            io,
            inbound: Inbound::default(),
        }
    }

    /// Whether a fragmented client message has been in progress for longer than
    /// [`MESSAGE_TIMEOUT`] (a client that started one and went quiet).
    pub(crate) fn message_overdue(&self) -> bool {
        self.inbound.overdue(Instant::now())
    }

    /// The second half of a closing handshake the server started: reads and throws away what
    /// the client still sends until its close frame has arrived (or it hung up), at most
    /// [`DRAIN_BYTES`] and [`DRAIN_TIMEOUT`]. Closing a socket with unread input makes the
    /// kernel send a reset, and the client would lose the close frame and whatever came
    /// before it; once the client's close has arrived, nothing more is coming.
    pub(crate) async fn drain(&mut self) {
        self.inbound.lenient = true;
        if self.inbound.close_seen {
            return;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        // On the heap and only now: a buffer inside the session's future would cost every
        // connection its size for its whole life.
        let mut scratch = vec![0u8; 8 * 1024];
        let mut drained = 0;
        while !self.inbound.close_seen && drained < DRAIN_BYTES {
            match tokio::time::timeout_at(deadline, self.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        match this.inbound.feed(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(violation) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)))
            }
        }
    }
}

impl Io {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp { stream, prefix, .. } => {
                if !prefix.is_empty() {
                    let n = prefix.len().min(buf.remaining());
                    buf.put_slice(&prefix[..n]);
                    prefix.advance(n);
                    return Poll::Ready(Ok(()));
                }
                loop {
                    ready!(stream.poll_read_ready(cx))?;
                    match stream.try_read(buf.initialize_unfilled()) {
                        Ok(n) => {
                            buf.advance(n);
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            Io::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp { stream, outbox, .. } => outbox.poll_write(stream, cx, buf),
            Io::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp { stream, outbox, .. } => outbox.poll_flush(stream, cx),
            Io::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp { stream, outbox, .. } => {
                ready!(outbox.poll_flush(stream, cx))?;
                match socket2::SockRef::from(&**stream).shutdown(std::net::Shutdown::Write) {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Io::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header with `len` bytes of payload (payload not included).
    fn header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = header(fin, opcode, payload.len());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn whole_messages_and_interleaved_control_frames_pass() {
        let mut inbound = Inbound::default();
        let mut bytes = frame(true, 1, b"{\"type\":\"ping\"}");
        bytes.extend(frame(false, 1, &[7; 300]));
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(true, 0, &[7; 70_000]));
        // One byte at a time, as a slow network might deliver it.
        for b in &bytes {
            inbound.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!((inbound.fragments, inbound.started), (0, None));
        assert!(!inbound.close_seen);
        inbound.feed(&frame(true, 8, &[3, 232])).unwrap();
        assert!(inbound.close_seen);
    }

    #[test]
    fn endless_empty_fragments_are_refused() {
        let mut inbound = Inbound::default();
        inbound.feed(&frame(false, 1, b"{")).unwrap();
        let empty = frame(false, 0, b"");
        for _ in 1..MAX_FRAGMENTS {
            inbound.feed(&empty).unwrap();
        }
        assert_eq!(inbound.feed(&empty), Err(FrameViolation::TooManyFragments));
        // While draining after a close, it only looks for the client's close frame.
        inbound.lenient = true;
        inbound.feed(&empty).unwrap();
        inbound.feed(&header(true, 8, 0)).unwrap();
        assert!(inbound.close_seen);
    }

    #[test]
    fn a_slow_message_is_refused() {
        let mut inbound = Inbound::default();
        inbound.feed(&frame(false, 2, b"x")).unwrap();
        assert!(!inbound.overdue(Instant::now()));
        inbound.started = Some(Instant::now() - MESSAGE_TIMEOUT - Duration::from_secs(1));
        assert!(inbound.overdue(Instant::now()));
        assert_eq!(
            inbound.feed(&frame(true, 0, b"y")),
            Err(FrameViolation::TooSlow)
        );
    }
}
