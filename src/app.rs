//! The state every route and session shares: configuration, the hub, auth, metrics, the
//! connection caps, the store and the relay.
//!
//! It sits between the routes (which take it as axum state) and the components it holds, so a
//! route never imports the router that mounts it.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::event_bus::EventBus;
use crate::events::EventLog;
use crate::geofence::Geofences;
use crate::hub::Hub;
use crate::limits::IpConnections;
use crate::metrics::Metrics;
use crate::profiles::Profiles;
use crate::relay::Relay;
use crate::store::Store;
use crate::webhook::Webhooks;

/// State shared by every handler and session. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    /// The running configuration.
    pub config: Arc<Config>,
    /// Latest positions and fan-out.
    pub hub: Arc<Hub>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Identity of requests.
    pub auth: Authenticator,
    /// One permit per open WebSocket: the connection limit.
    pub connections: Arc<Semaphore>,
    /// Open WebSockets per client address: the per-address limit.
    pub per_ip: Arc<IpConnections>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// The durable store, with `--data-dir`.
    pub store: Option<Arc<Store>>,
    /// The Redis relay, with `--redis-url` (set by [`crate::serve`]).
    pub relay: Option<Arc<Relay>>,
    /// Device profiles (name, colour, OwnTracks `tid`); in `--data-dir` when set.
    pub profiles: Arc<Profiles>,
    /// Each group's recent events (alarms, region changes) and their fan-out, across
    /// instances with Redis.
    pub events: Arc<EventBus>,
    /// Webhook endpoints and their deliveries; in `--data-dir` and shared through Redis.
    pub webhooks: Arc<Webhooks>,
    /// Each group's geofences and proximity rule, judged on every accepted fix; in
    /// `--data-dir` when set.
    pub geofences: Arc<Geofences>,
}

impl AppState {
    /// Builds the state for `config`.
    pub(crate) fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(config.hub.clone(), metrics.clone()));
        let profiles = Arc::new(match &config.data_dir {
            Some(dir) => Profiles::in_dir(dir),
            None => Profiles::in_memory(),
        });
        AppState {
            profiles: profiles.clone(),
            webhooks: Arc::new(Webhooks::new(&config, &metrics)),
            events: Arc::new(EventBus::new(
                match &config.data_dir {
                    Some(dir) => EventLog::with_dir(
                        config.ingest.events_per_group as usize,
                        dir,
                        config.store.retention_ms(),
                    ),
                    None => EventLog::new(config.ingest.events_per_group as usize),
                },
                hub.clone(),
                profiles.clone(),
                // Not over a Redis Cluster yet: see docs/redis.md, "Events and profiles".
                config.redis_url.is_some() && !config.redis.redis_cluster,
                &config.redis.redis_prefix,
            )),
            geofences: Arc::new(Geofences::new(&config, metrics.geofence.clone())),
            auth: Authenticator::new(config.auth.clone(), Some(metrics.clone())),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            per_ip: Arc::new(IpConnections::new(config.limits.max_connections_per_ip)),
            config: Arc::new(config),
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            store: None,
            relay: None,
        }
    }
}
