//! Wiring: [`serve`] starts the components, mounts the routes behind the origin guard, CORS
//! and the request timeout, and shuts everything down gracefully.

use std::future::Future;
use std::io;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{HOST, ORIGIN};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::app::AppState;
use crate::auth::SetupError;
use crate::auth::origin::host_is_local_name;
use crate::config::{AuthMode, Config};
use crate::error::error_response;
use crate::relay::{Relay, RelayError};
use crate::store::StoreError;
use crate::tls::TlsError;
use crate::{admit, http, web};

/// Why [`serve`] could not start, or stopped with an error. Each variant keeps the component's
/// own error (and its `source()` chain); its message is that error's.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener has no local address.
    #[error("reading the listener's address: {0}")]
    Listener(#[source] io::Error),
    /// The authentication settings are unsafe or unusable (`--auth none` on a public address,
    /// no usable secret or key set, a malformed `--allowed-origins`).
    #[error(transparent)]
    Auth(#[from] SetupError),
    /// The idle timeout does not exceed the ping interval, so idle clients could never answer.
    #[error("--idle-timeout-secs must exceed --ping-interval-secs")]
    Timeouts,
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The durable store (`--data-dir`) could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis settings are unusable (`--redis-url`).
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The webhook secrets cannot be used: an unusable `--webhook-secret-key-file`, or stored
    /// secrets sealed with another key (or none given).
    #[error("{0}")]
    Webhooks(String),
    /// Accepting connections failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Runs the server on an already-bound `listener` until `shutdown` completes, then closes every
/// socket with 1001 and stops within the grace period in all: sessions and HTTP requests get
/// three quarters of it, the store's last flush whatever is left (at least a quarter).
///
/// Refuses to start (an error naming the setting) when the security settings are unsafe or
/// unusable: `--auth none` on a non-loopback address without `--insecure`, a missing or short
/// JWT secret, a key set that cannot be loaded, unreadable TLS files.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    crate::auth::check_listen(&config.auth, addr)?;
    if config.limits.idle_timeout_secs <= config.limits.ping_interval_secs {
        return Err(ServeError::Timeouts);
    }
    let tls = crate::tls::server_config(&config.tls)?;
    let mut state = AppState::new(config);
    state.auth.prepare().await?;
    let webhook_redis = state
        .config
        .redis_url
        .as_deref()
        .filter(|_| !state.config.redis.redis_cluster);
    state
        .webhooks
        .prepare(webhook_redis)
        .await
        .map_err(|e| ServeError::Webhooks(e.to_string()))?;
    state.store = crate::store::start(&state.config, &state.hub, &state.metrics).await?;
    state.relay = Relay::from_config(&state.config, &state.hub, &state.metrics)?;
    // After the store loaded the hub: geofences judge fixes accepted from now on.
    let bus = state.events.clone();
    state
        .geofences
        .start(Box::new(move |event| bus.record(event)), &state.hub);
    state.hub.add_observer(state.geofences.clone());
    let background = TaskTracker::new();
    background.spawn(state.auth.clone().run_refresher(state.shutdown.clone()));
    if let Some(relay) = &state.relay {
        background.spawn(relay.clone().run(state.shutdown.clone()));
    }
    if state.config.redis_url.is_some() && state.config.redis.redis_cluster {
        warn!(
            "with --redis-cluster, events, profiles, geofences, proximity rules and webhooks stay on the instance that received them"
        );
    } else if let Some(url) = &state.config.redis_url {
        background.spawn(
            state
                .events
                .clone()
                .run(url.clone(), state.shutdown.clone()),
        );
        background.spawn(
            state
                .geofences
                .clone()
                .run(url.clone(), state.shutdown.clone()),
        );
    }
    {
        // Webhooks hear every new event, recorded here or received from another instance.
        let webhooks = state.webhooks.clone();
        state.events.set_sink(crate::event_bus::EventSink(Box::new(
            move |event, local| webhooks.offer(event, local),
        )));
        let redis_url = state
            .config
            .redis_url
            .clone()
            .filter(|_| !state.config.redis.redis_cluster);
        background.spawn(
            state
                .webhooks
                .clone()
                .run(redis_url, state.shutdown.clone()),
        );
    }
    background.spawn(state.hub.clone().run_ticker(state.shutdown.clone()));
    background.spawn(state.hub.clone().run_sweeper(state.shutdown.clone()));
    if state.config.demo > 0 {
        let (hub, count, center) = (
            state.hub.clone(),
            state.config.demo,
            state.config.demo_center,
        );
        background.spawn(crate::demo::run(hub, count, center, state.shutdown.clone()));
    }
    background.close();

    let app = router(state.clone());
    info!(
        %addr,
        tls = tls.is_some(),
        auth = ?state.config.auth.mode,
        tick_ms = state.config.hub.tick_ms,
        "listening"
    );
    let token = state.shutdown.clone();
    let options = crate::listen::ListenOptions {
        tls,
        handshake_timeout: state.config.limits.handshake_timeout(),
        send_buffer_bytes: state.config.limits.send_buffer_bytes,
        per_ip: std::sync::Arc::new(crate::limits::IpConnections::new(
            state.config.limits.max_http_connections_per_ip,
        )),
        refused_per_ip: state.metrics.security.http_refused_per_ip.clone(),
    };
    let connections = crate::listen::run(listener, app, options, {
        let token = token.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = token.cancelled() => {}
            }
            info!("shutting down: closing connections with 1001");
            token.cancel();
        }
    })
    .await;
    // One deadline for every wait of the shutdown, from the moment it started: the sessions
    // and the HTTP requests in flight, then the background tasks, then the store, which is
    // flushed last and keeps a share of the grace period for it whatever came before.
    let grace = state.config.shutdown_grace();
    let deadline = tokio::time::Instant::now() + grace;
    let store_share = grace.mul_f64(STORE_SHARE);
    token.cancel();
    state.sessions.close();
    let drained = async {
        tokio::join!(state.sessions.wait(), connections.wait());
    };
    if tokio::time::timeout_at(deadline - store_share, drained)
        .await
        .is_err()
    {
        warn!(
            sessions = state.sessions.len(),
            requests = connections.len(),
            grace_secs = grace.as_secs(),
            "grace period over with connections still open"
        );
    }
    if tokio::time::timeout_at(deadline - store_share, background.wait())
        .await
        .is_err()
    {
        warn!(
            tasks = background.len(),
            "background tasks did not stop in time"
        );
    }
    // No fix is judged any more: the geofence states still queued go to disk (a blocking
    // join, off the async workers).
    let geofences = state.geofences.clone();
    let closed = tokio::task::spawn_blocking(move || geofences.close());
    if tokio::time::timeout_at(deadline, closed).await.is_err() {
        warn!("geofence states not flushed within the grace period");
    }
    if let Some(store) = &state.store {
        // The ticker has stopped: flush what it left so the store sees every accepted fix.
        state.hub.flush_pending();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        store.close(left).await;
    }
    info!(
        elapsed_ms = (grace - deadline.saturating_duration_since(tokio::time::Instant::now()))
            .as_millis() as u64,
        "stopped"
    );
    Ok(())
}

/// Share of the grace period kept for the store's last flush: the sessions, the HTTP requests
/// and the background tasks must be done by the rest of it.
const STORE_SHARE: f64 = 0.25;

/// The HTTP routes, behind the origin check, CORS and the request timeout.
pub(crate) fn router(state: AppState) -> Router {
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.config.limits.request_timeout(),
    );
    Router::new()
        .route("/v1/ws", get(admit::upgrade))
        .merge(http::routes(&state))
        .merge(crate::ingest::routes(&state))
        .merge(crate::track::routes())
        .merge(crate::webhook_routes::routes(&state))
        .merge(crate::stats_route::routes())
        .merge(crate::geofence_routes::routes(&state))
        .merge(web::routes())
        .layer(state.auth.origins().cors())
        .layer(middleware::from_fn_with_state(state.clone(), origin_guard))
        .layer(timeout)
        .with_state(state)
}

/// Middleware: refuses a request whose `Origin` the policy does not allow (403), and with
/// `--auth none` one whose `Host` is a DNS name (see the module doc).
async fn origin_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = state.auth.config();
    let open = config.mode == AuthMode::None && !config.insecure;
    if open && !host_is_local_name(request.headers()) {
        state.metrics.security.auth_refused("origin").inc();
        debug!(host = ?request.headers().get(HOST), "refused a request naming a DNS host");
        return error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "with --auth none, reach the server as localhost or by IP address".into(),
        );
    }
    if state.auth.origins().allows(request.headers()) {
        return next.run(request).await;
    }
    state.metrics.security.auth_refused("origin").inc();
    debug!(
        origin = ?request.headers().get(ORIGIN),
        path = %redacted_path(request.uri().path()),
        "refused a request from a foreign origin"
    );
    error_response(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this origin is not allowed (see --allowed-origins)".into(),
    )
}

/// Path segments that carry a credential right after them: OsmAnd's `/v1/ingest/osmand/{token}`
/// and share links' `/s/{token}`.
const SECRET_AFTER: [&str; 2] = ["osmand", "s"];

/// `path` fit for a log: the segment after one of [`SECRET_AFTER`] becomes `<redacted>`. (Query
/// strings, which may hold `access_token`, and headers, which may hold `Authorization`, are
/// never logged.)
fn redacted_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut secret_next = false;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if secret_next && !segment.is_empty() {
            out.push_str("<redacted>");
        } else {
            out.push_str(segment);
        }
        secret_next = SECRET_AFTER.contains(&segment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redacted_path;

    #[test]
    fn credentials_in_paths_are_redacted() {
        assert_eq!(
            redacted_path("/v1/ingest/osmand/eyJhbGciOi.abc.def"),
            "/v1/ingest/osmand/<redacted>"
        );
        assert_eq!(redacted_path("/s/0123456789abcdef"), "/s/<redacted>");
        assert_eq!(
            redacted_path("/v1/groups/g/positions"),
            "/v1/groups/g/positions"
        );
        assert_eq!(redacted_path("/v1/ingest/osmand"), "/v1/ingest/osmand");
    }
}
