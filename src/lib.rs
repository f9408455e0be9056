//! Beacon: a real-time location broadcast server.
//!
//! Devices hold a WebSocket, push GPS fixes, and receive the positions of the other devices of
//! their groups, live. The wire protocol is `docs/protocol.md`.
//!
//! # Layout
//! Layers, top to bottom; a module imports only from layers below its own (`ARCHITECTURE.md`,
//! "Layers", says why each sits where it does):
//!
//! 1. `main.rs`: the command line; calls [`serve`].
//! 2. `server`: wiring. [`serve`] takes a bound listener, a [`Config`] and a shutdown future
//!    (`main` and the tests both run the server through it); the router and its origin guard.
//! 3. Routes: `admit` (`/v1/ws`: identity, codec and capacity, then the upgrade), `http`
//!    (health, readiness, metrics, group snapshots), `ingest` (`POST /v1/positions` and the
//!    phone apps), `track` (a device's history), `web` (the embedded map page).
//!    `geofence_routes`: the geofences and proximity rule of a group.
//! 4. `session`: one WebSocket from `welcome` to close; its `writer` is the only code that
//!    writes to the socket for it.
//! 5. `app`: the state every route and session shares.
//! 6. Components: [`auth`] (who a request is, what it may do), `relay` (several instances as
//!    one, through Redis), `event_bus` (events to every subscriber, across instances), [`store`] (durable positions and history), `demo` (simulated
//!    devices).
//!    `geofence`: geofences and proximity rules, judged on every accepted fix.
//! 7. [`hub`]: latest state per group, presence, and the tick-driven, coalesced fan-out.
//! 8. Transport: `upgrade` (the WebSocket handshake), `conn` (the byte stream under a
//!    session), [`outbox`] (the write side of a connection, shared with the hub), `listen`
//!    (the accept loop), `tls`, `limits` (message rate, connections per address).
//! 9. [`metrics`]: the Prometheus registry and every metric family.
//! 10. Foundations: [`config`] (every flag), [`protocol`] (wire types and codecs),
//!     [`isotime`], `error` (the JSON error body), [`shutdown`], `events` (each group's
//!     recent events), `profiles` (device names,
//!     colours and OwnTracks `tid`s, kept in a file with `--data-dir`).
//!     [`stats`] (distance, speeds, trips and stops of a history; pure computation) sits here
//!     too, and `stats_route` (`/v1/devices/{id}/stats`, `/v1/groups/{group}/stats`) with the
//!     routes.
//! 11. [`model`]: domain types: ids, identities, fixes, positions.
//!
//! Webhooks add `webhook_routes` to the routes and `webhook` (endpoints and signed, retried
//! deliveries of events) to the components.
//!
//! The public modules are the API ([`config`], [`model`], [`protocol`], [`serve`]) and the
//! components that the binary, benches, fuzz targets and integration tests drive directly.

//! # Errors
//! Library modules return `thiserror` enums or protocol [`protocol::Refusal`]s; `anyhow` is used
//! only in the binary.

pub mod config;
pub mod model;
pub mod protocol;

pub use config::Config;
pub use server::{ServeError, serve};

// Components the binary, the benches, the fuzz targets and the integration tests drive
// directly. Public so that they can, not as a stable API; each keeps its own surface small.
pub mod auth;
pub mod hub;
pub mod isotime;
pub mod metrics;
pub mod outbox;
pub mod shutdown;
pub mod stats;
pub mod store;

/// The geofence judging for `benches/geofence.rs`; not an API.
#[doc(hidden)]
pub use geofence::bench as geofence_bench;

// Internals.
mod admit;
mod app;
mod conn;
mod demo;
mod error;
mod event_bus;
mod events;
mod geofence;
mod geofence_routes;
mod http;
mod ingest;
mod limits;
mod listen;
mod profiles;
mod relay;
mod server;
mod session;
mod stats_route;
mod tls;
mod track;
mod upgrade;
mod web;
mod webhook;
mod webhook_routes;
