//! Ingest over HTTP: `POST /v1/positions` ([`positions`]), and the phone apps that already
//! exist, Traccar Client / OsmAnd and OwnTracks.
//!
//! Each app speaks its own HTTP protocol ([`osmand`], [`owntracks`]). Their handlers read the
//! request into [`Fix`]es (validated by [`crate::protocol::validate_fix`], the same rules as the WebSocket
//! `pos`), establish the device's identity through [`crate::auth::Authenticator::identify`]
//! (so tokens work for these routes as for every other), and publish through the hub exactly like
//! `POST /v1/positions`. Such devices hold no socket, so they take part in live fan-out, snapshots
//! and presence through the stale window like any HTTP device.
//!
//! # Identity
//! The request supplies the device id (`id`/`deviceid`/`device_id` for OsmAnd, the user and
//! device names for OwnTracks) and possibly a token: in the path (`/v1/ingest/osmand/{token}`),
//! in `?token=`/`?access_token=`, or as the password of HTTP Basic auth. With `--auth none` the
//! token is ignored and the groups are `?groups=g1,g2` or else `--ingest-default-group`. With
//! tokens, the token decides the device's id and groups.
//!
//! # Errors
//! Parsers return [`IngestError`]; the handlers answer it with a 400 JSON body
//! `{"error": <kind>, "message": <why>}` whose message names the app's own field.
//!
//! Field mappings are documented in `docs/ingest.md`.

mod common;
pub(crate) mod osmand;
pub(crate) mod owntracks;
mod positions;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::app::AppState;

/// The ingest routes: `POST /v1/positions` and the phone-app protocols. Bodies are bounded by
/// `--max-body-bytes`.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/ingest/osmand",
            get(osmand::handle).post(osmand::handle),
        )
        .route(
            "/v1/ingest/osmand/{token}",
            get(osmand::handle_with_token).post(osmand::handle_with_token),
        )
        .route("/v1/ingest/owntracks", post(owntracks::handle))
        .route("/v1/positions", post(positions::post))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
}
