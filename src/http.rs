//! HTTP routes besides the socket and ingest: health, readiness, metrics, group snapshots and
//! device profiles.
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
use crate::events::{EventQuery, MAX_EVENTS_PER_QUERY};
use crate::model::{DeviceId, GroupId, Identity, Position};
use crate::profiles::ProfileError;
use crate::protocol::{EventRecord, PositionRecord};
use crate::relay::RedisHealth;

/// The routes of this module.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/groups/{group}/positions", get(group_positions))
        .route("/v1/groups/{group}/events", get(group_events))
        .route(
            "/v1/devices/{id}/profile",
            get(get_profile).put(put_profile),
        )
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

/// Whether `device` has a known position in `group` (on any instance, with Redis): what makes
/// it one of the group's devices for profile rights.
async fn device_in_group(state: &AppState, group: &str, device: &str) -> bool {
    let positions = match &state.relay {
        Some(relay) => relay.positions(group).await,
        None => state.hub.positions(group),
    };
    positions.iter().any(|p| p.device.as_str() == device)
}

/// Who may change `device`'s profile: the device itself, or an admin of one of its groups.
async fn may_manage_profile(state: &AppState, identity: &Identity, device: &str) -> bool {
    if identity.id.as_str() == device {
        return true;
    }
    for group in &identity.groups {
        if identity.may_manage(group.as_str())
            && device_in_group(state, group.as_str(), device).await
        {
            return true;
        }
    }
    false
}

/// Who may read `device`'s profile: whoever may change it, or watch one of its groups.
async fn may_read_profile(state: &AppState, identity: &Identity, device: &str) -> bool {
    if identity.id.as_str() == device {
        return true;
    }
    for group in &identity.groups {
        if device_in_group(state, group.as_str(), device).await {
            return true;
        }
    }
    false
}

fn profile_body(device: &DeviceId, profile: &crate::profiles::Profile) -> Value {
    json!({ "device": device.as_str(), "name": profile.name, "color": profile.color })
}

/// The device id of a profile route, or its 400.
fn profile_device(id: &str) -> Result<DeviceId, Box<Response>> {
    DeviceId::parse(id).map_err(|why| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("id {why}"),
        ))
    })
}

/// `GET /v1/devices/{id}/profile`: `{"device", "name", "color"}` (`null` when unset). With
/// tokens, for the device itself and identities of one of its groups; with `--auth none`,
/// anyone (like group reads).
async fn get_profile(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    identity: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let device = match profile_device(&id) {
        Ok(device) => device,
        Err(response) => return *response,
    };
    if state.auth.config().mode != crate::config::AuthMode::None {
        let query = identity.map(|Query(q)| q).unwrap_or_default();
        let identity = match state.auth.identify(&headers, &query).await {
            Ok(identity) => identity,
            Err(e) => return e.into_response(),
        };
        if !may_read_profile(&state, &identity, device.as_str()).await {
            return error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the device and identities of its groups may read its profile".into(),
            );
        }
    }
    Json(profile_body(&device, &state.profiles.get(device.as_str()))).into_response()
}

/// The body of `PUT /v1/devices/{id}/profile`; both fields optional, an absent one is cleared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    name: Option<String>,
    color: Option<String>,
}

/// `PUT /v1/devices/{id}/profile`: for the device itself and admins of one of its groups (with
/// `--auth none`, the identity of `?id=&groups=&role=`).
async fn put_profile(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    identity: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    let device = match profile_device(&id) {
        Ok(device) => device,
        Err(response) => return *response,
    };
    let query = identity.map(|Query(q)| q).unwrap_or_default();
    let identity = match state.auth.identify(&headers, &query).await {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    if !may_manage_profile(&state, &identity, device.as_str()).await {
        return error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the device and admins of its groups may change its profile".into(),
        );
    }
    let body: ProfileBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body must be {{\"name\"?, \"color\"?}}: {e}"),
            );
        }
    };
    match state.profiles.put(&device, body.name, body.color) {
        Ok(profile) => {
            state.events.profile_changed(&device, &profile);
            Json(profile_body(&device, &profile)).into_response()
        }
        Err(e @ ProfileError::Invalid(_)) => {
            error_response(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
        }
        Err(e @ ProfileError::Full) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// Default `limit` of `GET /v1/groups/{group}/events`.
const DEFAULT_EVENTS_LIMIT: usize = 100;

/// The query of `GET /v1/groups/{group}/events`.
#[derive(Debug, Default, Deserialize)]
struct EventsParams {
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
}

/// `from`/`to`: ms since the epoch, or ISO-8601.
fn event_time(name: &str, text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    crate::isotime::parse_ms(text)
        .map_err(|_| format!("{name} must be ms since the epoch or ISO-8601"))
}

/// `GET /v1/groups/{group}/events?from=&to=&kind=&limit=`: `{"events": [...]}`, oldest first,
/// at most `limit` (default 100, at most 1000). Same rights as the group's positions.
async fn group_events(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
    identity: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_request", message);
    if let Err(why) = GroupId::parse(&group) {
        return bad(format!("group {why}"));
    }
    let Ok(Query(params)) = params else {
        return bad("malformed query string".into());
    };
    let identity = identity.map(|Query(q)| q).unwrap_or_default();
    if let Err(e) = state
        .auth
        .authorize_group_read(&headers, &identity, &group)
        .await
    {
        return e.into_response();
    }
    let from = match params
        .from
        .as_deref()
        .map(|t| event_time("from", t))
        .transpose()
    {
        Ok(from) => from,
        Err(message) => return bad(message),
    };
    let to = match params
        .to
        .as_deref()
        .map(|t| event_time("to", t))
        .transpose()
    {
        Ok(to) => to,
        Err(message) => return bad(message),
    };
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_EVENTS_LIMIT,
        Some(Ok(n)) if (1..=MAX_EVENTS_PER_QUERY).contains(&n) => n,
        Some(_) => {
            return bad(format!(
                "limit must be a whole number from 1 to {MAX_EVENTS_PER_QUERY}"
            ));
        }
    };
    let query = EventQuery {
        from,
        to,
        kind: params.kind.as_deref(),
        limit,
    };
    let events = state.events.log().query(&group, &query);
    let records: Vec<EventRecord<'_>> = events.iter().map(EventRecord::from).collect();
    Json(json!({ "events": records })).into_response()
}
