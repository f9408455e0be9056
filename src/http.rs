//! HTTP routes besides the socket: health, metrics, group snapshots and HTTP ingest.
//!
//! Every refusal is a JSON body `{"error": <kind>, "message": <why>}` with a fitting status.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{IdentityQuery, check_publish};
use crate::model::{Fix, GroupId, Identity, Position, now_ms};
use crate::protocol::{Codec, PositionRecord, RawMessage, decode_raw, validate_fix};
use crate::relay::RedisHealth;
use crate::server::AppState;

/// The routes of this module.
pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/groups/{group}/positions", get(group_positions))
        .route("/v1/positions", post(post_positions))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
}

/// A JSON error body with `status`.
pub fn error_response(status: StatusCode, kind: &str, message: String) -> Response {
    (status, Json(json!({ "error": kind, "message": message }))).into_response()
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
pub fn feature_collection(positions: &[Position]) -> Value {
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

/// `POST /v1/positions`: one `pos` object or a list. All-or-nothing: when any fix is invalid,
/// none is applied and the answer names the first bad one.
async fn post_positions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed query string".into(),
        );
    };
    let identity = match state.auth.identify(&headers, &query).await {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_publish(&identity) {
        state.metrics.security.auth_refused(e.reason()).inc();
        return e.into_response();
    }
    let now = now_ms();
    let fixes = match parse_fixes(&body, now, state.config.limits.max_batch_fixes) {
        Ok(fixes) => fixes,
        Err((kind, message)) => return error_response(StatusCode::BAD_REQUEST, kind, message),
    };
    state.metrics.msg_in_http.inc_by(fixes.len() as u64);
    publish_http(&state, &identity, &fixes, now);
    Json(json!({ "accepted": fixes.len() })).into_response()
}

/// Publishes fixes that arrived over HTTP (no socket: presence follows the stale window).
pub fn publish_http(state: &AppState, identity: &Identity, fixes: &[Fix], now: i64) {
    for fix in fixes {
        state.hub.publish(&identity.id, &identity.groups, fix, now);
    }
}

/// Parses a body holding one `pos` object or a list of them, validating every fix.
fn parse_fixes(body: &[u8], now: i64, max: usize) -> Result<Vec<Fix>, (&'static str, String)> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let raws: Vec<RawMessage<'_>> = if first == Some(&b'[') {
        let mut de = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ("bad_message", format!("{}: {}", e.path(), e.inner())))?
    } else {
        vec![decode_raw(Codec::Json, body).map_err(|r| ("bad_message", r.message.into_owned()))?]
    };
    if raws.is_empty() {
        return Err(("bad_message", "the list holds no fix".into()));
    }
    if raws.len() > max {
        return Err(("bad_message", format!("at most {max} fixes per request")));
    }
    let many = raws.len() > 1 || first == Some(&b'[');
    raws.iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = |m: &str| {
                if many {
                    format!("[{i}]: {m}")
                } else {
                    m.to_owned()
                }
            };
            if let Some(kind) = raw.kind.as_deref()
                && kind != "pos"
            {
                return Err((
                    "bad_message",
                    at(&format!("type must be \"pos\", not {kind:?}")),
                ));
            }
            validate_fix(raw, now).map_err(|r| ("invalid_position", at(&r.message)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_or_many() {
        let one = parse_fixes(br#"{"lat":1,"lon":2}"#, 10, 5).unwrap();
        assert_eq!(one.len(), 1);
        let many = parse_fixes(
            br#" [{"type":"pos","lat":1,"lon":2},{"lat":3,"lon":4,"ts":5}]"#,
            10,
            5,
        )
        .unwrap();
        assert_eq!(many[1].ts, 5);
    }

    #[test]
    fn names_the_bad_one() {
        let (kind, msg) =
            parse_fixes(br#"[{"lat":1,"lon":2},{"lat":100,"lon":4}]"#, 10, 5).unwrap_err();
        assert_eq!(kind, "invalid_position");
        assert!(msg.starts_with("[1]: lat must"), "{msg}");
        let (kind, msg) = parse_fixes(br#"[{"lat":1,"lon":"x"}]"#, 10, 5).unwrap_err();
        assert_eq!(kind, "bad_message");
        assert!(msg.contains("[0].lon"), "{msg}");
        let (_, msg) = parse_fixes(b"[]", 10, 5).unwrap_err();
        assert!(msg.contains("no fix"));
        let (_, msg) = parse_fixes(br#"[{"lat":1,"lon":2},{"lat":1,"lon":2}]"#, 10, 1).unwrap_err();
        assert!(msg.contains("at most 1"));
        let (_, msg) = parse_fixes(br#"{"type":"sub","lat":1,"lon":2}"#, 10, 5).unwrap_err();
        assert!(msg.contains("type must be"));
    }
}
