//! The byte stream under a session's WebSocket.
//!
//! On a plain TCP connection the socket is shared: the session reads it (through tungstenite)
//! and writes its own frames, while the hub writes batches to it directly (see
//! [`crate::outbox`]). Every write, the session's included, goes through the connection's
//! [`Outbox`], whose lock keeps frames from interleaving. Any other upgraded stream (TLS) is
//! the session's alone, and the hub queues for it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::outbox::Outbox;

/// A session's stream: a shared TCP socket, or an upgraded stream of its own.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
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
                (Conn { io }, outbox)
            }
            Err(upgraded) => {
                let io = Io::Upgraded(TokioIo::new(upgraded));
                (Conn { io }, Arc::new(Outbox::new(queue_frames)))
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
        match &mut self.get_mut().io {
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
