//! Accepting connections: TCP options, optional TLS, handshake timeouts, graceful shutdown.
//!
//! A small accept loop over hyper's HTTP/1.1 server, instead of `axum::serve`, because the
//! server must bound the time before a request: `axum::serve` sets no timer, so a client that
//! connects and sends nothing (or a TLS client that never finishes its handshake) would hold a
//! socket and a task forever. Here:
//! - the TLS handshake must finish within `--handshake-timeout-secs`;
//! - a request head must arrive within the same time after the connection opens, and after
//!   each response on a keep-alive connection (hyper's header read timeout);
//! - `TCP_NODELAY` is set on every socket (small frames must not wait for Nagle);
//! - every request carries [`ConnectInfo`]`<SocketAddr>` for per-address limits;
//! - one peer address holds at most `--max-http-connections-per-ip` connections: past it, a
//!   new one is closed as soon as it is accepted, before a byte of it is read or a task
//!   spawned for it. A connection gives its place back when it ends or is upgraded.
//!
//! Only HTTP/1.1 is served: WebSocket upgrades need it, and a load balancer in front can speak
//! HTTP/2 to clients. On shutdown the listener closes, idle connections close at once, and
//! in-flight requests may finish: [`run`] returns the tracker of those connections, and the
//! server waits for them under the same deadline as for its sessions. Upgraded WebSockets are
//! not connections of this loop any more: their sessions are closed by the server's own
//! shutdown.
//!
//! [`ConnectInfo`]: axum::extract::ConnectInfo

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{debug, warn};

use crate::limits::IpConnections;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How to serve the accepted connections.
#[derive(Clone, Debug)]
pub(crate) struct ListenOptions {
    /// TLS configuration; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time for the TLS handshake, and for each request head.
    pub handshake_timeout: Duration,
    /// Kernel send buffer per accepted socket in bytes; 0 leaves the kernel's autotuning.
    pub send_buffer_bytes: usize,
    /// Open HTTP connections per peer address (`--max-http-connections-per-ip`).
    pub per_ip: Arc<IpConnections>,
    /// Counts the connections `per_ip` turned away.
    pub refused_per_ip: prometheus_client::metrics::counter::Counter,
}

type MakeService = IntoMakeServiceWithConnectInfo<Router, SocketAddr>;

/// Serves `app` on `listener` until `shutdown` completes, then closes the listener, asks every
/// connection to finish and returns them, still running (see the module doc).
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    options: ListenOptions,
    shutdown: impl Future<Output = ()>,
) -> TaskTracker {
    let mut make: MakeService = app.into_make_service_with_connect_info::<SocketAddr>();
    let tls = options.tls.clone().map(TlsAcceptor::from);
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    warn!(%error, "accepting a connection failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(ip_permit) = options.per_ip.try_acquire(Some(peer.ip())) else {
            options.refused_per_ip.inc();
            debug!(ip = %peer.ip(), "closing a connection: the address holds its maximum of HTTP connections");
            drop(tcp);
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "could not set TCP_NODELAY");
        }
        if options.send_buffer_bytes > 0
            && let Err(error) =
                socket2::SockRef::from(&tcp).set_send_buffer_size(options.send_buffer_bytes)
        {
            debug!(%error, "could not set the socket send buffer");
        }
        // Always ready (it only clones the router), so `poll_ready` is not needed.
        let service = match make.call(peer).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        let closing = closing.clone();
        let timeout = options.handshake_timeout;
        match tls.clone() {
            None => {
                connections.spawn(async move {
                    serve_connection(tcp, service, timeout, closing).await;
                    drop(ip_permit);
                });
            }
            Some(acceptor) => {
                connections.spawn(async move {
                    let _ip_permit = ip_permit;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, timeout, closing).await,
                        Ok(Err(error)) => debug!(%error, %peer, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections
}

/// Serves one connection's HTTP/1.1 requests (and its upgrade) until it ends or shutdown.
async fn serve_connection<IO, S>(io: IO, service: S, timeout: Duration, closing: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "connection ended with an error");
            }
        }
        _ = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(error) = connection.await {
                debug!(%error, "connection ended with an error during shutdown");
            }
        }
    }
}

/// Errors about one connection only (it was reset before it was accepted).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
