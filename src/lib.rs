//! Beacon: a real-time location broadcast server.
//!
//! Devices hold a WebSocket, push GPS fixes, and receive the positions of the other devices of
//! their groups, live. The wire protocol is `docs/protocol.md`.
//!
//! # Layout
//! - [`server`]: wiring. [`serve`] takes a bound listener, a [`Config`] and a shutdown future;
//!   `main` and the tests both run the server through it.
//! - [`config`]: `beacon serve` flags and their `BEACON_*` variables, grouped by concern.
//! - [`model`]: domain types: ids, identities, fixes, positions.
//! - [`protocol`]: wire types of protocol v1, the JSON and MessagePack codecs, validation.
//! - [`hub`]: latest state per group, presence, and the tick-driven, coalesced fan-out.
//! - [`upgrade`]: the WebSocket handshake on hyper's upgrade.
//! - [`session`]: one WebSocket connection from `welcome` to close.
//! - [`outbox`]: the write side of a connection: the hub's direct writes, else a bounded,
//!   lazily allocated frame queue to the session.
//! - [`conn`]: the byte stream under a session's WebSocket, shared with the hub on plain TCP.
//! - [`auth`]: who a request is (query identity; JWTs with a secret or a JWKS), what it may
//!   do (groups, roles), and which browser origins may act for it.
//! - [`limits`]: message rate per connection, connections per client address.
//! - [`listen`]: the accept loop: TCP options, TLS, handshake timeouts, draining.
//! - [`tls`]: rustls configuration from PEM files.
//! - [`http`]: health, metrics, REST snapshots and HTTP ingest.
//! - [`ingest`]: the protocols of existing phone apps (Traccar Client / OsmAnd, OwnTracks).
//! - [`store`]: durable last-known positions and track history (SQLite, written behind the hub).
//! - [`track`]: `GET /v1/devices/{id}/track`, a device's history as JSON, GeoJSON or GPX.
//! - [`isotime`]: ISO-8601 date-times in and out.
//! - [`metrics`]: the Prometheus registry.
//! - [`relay`]: several instances as one server, through Redis pub/sub and shared state.
//! - [`web`]: the embedded map page.
//! - [`demo`]: simulated devices for `--demo N`.
//! - [`shutdown`]: waits for SIGINT or SIGTERM.
//!
//! # Errors
//! Library modules return `thiserror` enums or protocol [`protocol::Refusal`]s; `anyhow` is used
//! only in the binary.

// The API: the server, its configuration, and the domain and wire types.
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
pub mod store;

// Internals.
mod admit;
mod app;
mod conn;
mod demo;
mod error;
mod http;
mod ingest;
mod limits;
mod listen;
mod relay;
mod server;
mod session;
mod tls;
mod track;
mod upgrade;
mod web;
