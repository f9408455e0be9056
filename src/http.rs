//! HTTP routes besides the socket and ingest: health, readiness, metrics and group snapshots.
//!
//! Every refusal is a JSON body `{"error": <kind>, "message": <why>}` with a fitting status.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::IdentityQuery;
use crate::error::error_response;
use crate::model::{GroupId, Position};
use crate::protocol::PositionRecord;
use crate::relay::RedisHealth;

/// The routes of this module.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/groups/{group}/positions", get(group_positions))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready unless shutting down. With Redis: 503 until the first connection attempt has
/// finished, then 200 either way, `degraded` while Redis is unreachable (local clients are
/// still served; a 503 would make the load balancer pull every instance during an outage).
async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "failing": ["shutting_down"] })),
        )
            .into_response();
    }
    match state.relay.as_ref().map(|r| r.health()) {
        Some(RedisHealth::Connecting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting", "failing": ["redis"] })),
        )
            .into_response(),
        Some(RedisHealth::Down) => {
            Json(json!({ "status": "degraded", "failing": ["redis"] })).into_response()
        }
        Some(RedisHealth::Up) | None => Json(json!({ "status": "ready" })).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Query of `GET /v1/groups/{group}/positions`.
#[derive(Debug, Deserialize)]
struct PositionsQuery {
    format: Option<String>,
}

/// `GET /v1/groups/{group}/positions`: with tokens, only for identities holding the group.
async fn group_positions(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    Query(query): Query<PositionsQuery>,
    identity: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(why) = GroupId::parse(&group) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("group {why}"),
        );
    }
    let identity = identity.map(|Query(q)| q).unwrap_or_default();
    if let Err(e) = state
        .auth
        .authorize_group_read(&headers, &identity, &group)
        .await
    {
        return e.into_response();
    }
    let mut positions = match &state.relay {
        Some(relay) => relay.positions(&group).await,
        None => state.hub.positions(&group),
    };
    positions.sort_by(|a, b| a.device.cmp(&b.device));
    match query.format.as_deref() {
        None | Some("json") => {
            let devices: Vec<PositionRecord<'_>> = positions.iter().map(Into::into).collect();
            Json(json!({ "group": group, "devices": devices })).into_response()
        }
        Some("geojson") => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/geo+json"),
            )],
            Json(feature_collection(&positions)),
        )
            .into_response(),
        Some(other) => error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("format must be json or geojson, not {other:?}"),
        ),
    }
}

/// Positions as a GeoJSON FeatureCollection of Points (coordinates are `[lon, lat]`).
pub(crate) fn feature_collection(positions: &[Position]) -> Value {
    let features: Vec<Value> = positions
        .iter()
        .map(|p| {
            let record = PositionRecord::from(p);
            let mut properties = serde_json::to_value(&record).unwrap_or_default();
            if let Some(map) = properties.as_object_mut() {
                map.remove("lat");
                map.remove("lon");
            }
            json!({
                "type": "Feature",
                "id": p.device.as_str(),
                "geometry": { "type": "Point", "coordinates": [p.fix.lon, p.fix.lat] },
                "properties": properties,
            })
        })
        .collect();
    json!({ "type": "FeatureCollection", "features": features })
}
