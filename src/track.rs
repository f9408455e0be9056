//! `GET /v1/devices/{id}/track`: the stored history of one device, as JSON, GeoJSON or GPX.
//!
//! Query parameters:
//! - `from`, `to`: fix-time range, inclusive, each as ms since the epoch or ISO-8601
//!   (`2025-11-22T08:00:00Z`). Default: everything retained.
//! - `limit`: most points returned, default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`].
//! - `format`: `json` (default), `geojson` (a Feature with a LineString) or `gpx` (GPX 1.1).
//!
//! The answer holds the **newest** `limit` points of the range, **oldest first** (the order a
//! line is drawn in). When the range holds more, `truncated` is true; page back with
//! `to` = the first point's `ts` - 1.
//!
//! Without `--data-dir` there is no history: 404 with `{"error": "no_history"}`.
//!
//! Who may read what: with `--auth none`, anyone everything. With tokens, the device itself
//! reads its whole history and anyone else only the points published to a group it may watch
//! now ([`HistoryScope::for_reader`], the one rule).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::error;

use crate::app::AppState;
use crate::auth::{AuthError, IdentityQuery};
use crate::config::AuthMode;
use crate::error::error_response;
use crate::isotime;
use crate::model::DeviceId;
use crate::store::{HistoryScope, Track, TrackPoint, TrackQuery};

/// Points returned when the request names no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 1000;

/// Largest `limit` accepted: bounds the work and the answer (about 1 MB of JSON).
pub(crate) const MAX_LIMIT: usize = 10_000;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/devices/{id}/track", get(track))
}

/// Query of the track route; every field is read by hand so refusals name it.
#[derive(Debug, Default, Deserialize)]
struct TrackParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    format: Option<String>,
    access_token: Option<String>,
    token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    GeoJson,
    Gpx,
}

fn bad_request(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `from`/`to`: an integer is ms since the epoch; anything else must be ISO-8601. Shared with
/// the statistics routes, which read the same history.
pub(crate) fn parse_time(name: &str, text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    isotime::parse_ms(text)
        .map_err(|_| format!("{name} must be ms since the epoch or ISO-8601, not {text:?}"))
}

/// Reads the query into a range and a format.
fn read_params(params: &TrackParams) -> Result<(TrackQuery, Format), String> {
    let from = match params.from.as_deref() {
        Some(text) if !text.trim().is_empty() => parse_time("from", text)?,
        _ => i64::MIN,
    };
    let to = match params.to.as_deref() {
        Some(text) if !text.trim().is_empty() => parse_time("to", text)?,
        _ => i64::MAX,
    };
    if from > to {
        return Err("from must not be after to".into());
    }
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                ));
            }
        },
    };
    let format = match params.format.as_deref() {
        None | Some("") | Some("json") => Format::Json,
        Some("geojson") => Format::GeoJson,
        Some("gpx") => Format::Gpx,
        Some(other) => {
            return Err(format!(
                "format must be json, geojson or gpx, not {:?}",
                other.chars().take(32).collect::<String>()
            ));
        }
    };
    Ok((TrackQuery { from, to, limit }, format))
}

/// Which points of `device`'s history this request may read.
///
/// With `--auth none`, all of them. With tokens, the identity is checked and
/// [`HistoryScope::for_reader`] applies the one rule (the device itself reads everything;
/// anyone else, only points published to a group it may watch now).
pub(crate) async fn authorize_track_read(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<String>,
    device: &DeviceId,
) -> Result<HistoryScope, AuthError> {
    if state.config.auth.mode == AuthMode::None {
        return Ok(HistoryScope::for_reader(None, device));
    }
    let query = IdentityQuery {
        access_token: token,
        ..IdentityQuery::default()
    };
    let identity = state.auth.identify(headers, &query).await?;
    Ok(HistoryScope::for_reader(Some(&identity), device))
}

async fn track(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<TrackParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return bad_request("malformed query string".into());
    };
    let device = match DeviceId::parse(&id) {
        Ok(device) => device,
        Err(why) => return bad_request(format!("device id {why}")),
    };
    let (query, format) = match read_params(&params) {
        Ok(read) => read,
        Err(message) => return bad_request(message),
    };
    let token = params.access_token.or(params.token);
    let scope = match authorize_track_read(&state, &headers, token, &device).await {
        Ok(scope) => scope,
        Err(e) => return error_response(e.status(), e.kind(), e.to_string()),
    };
    let Some(store) = &state.store else {
        return no_history();
    };
    let track = match store.track(&device, &scope, query).await {
        Ok(track) => track,
        Err(e) => {
            error!(error = %e, device = %device, "track query failed");
            return history_unreadable();
        }
    };
    match format {
        Format::Json => Json(json_body(&device, &track)).into_response(),
        Format::GeoJson => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/geo+json"),
            )],
            Json(geojson(&device, &track)),
        )
            .into_response(),
        Format::Gpx => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gpx+xml"),
            )],
            gpx(&device, &track),
        )
            .into_response(),
    }
}

/// 404 `no_history`: without `--data-dir` nothing is kept to read.
pub(crate) fn no_history() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no_history",
        "history needs --data-dir: this server keeps positions in memory only".into(),
    )
}

/// 500 `store_error`: the store failed a read (logged by the caller, where it is handled).
pub(crate) fn history_unreadable() -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_error",
        "the history could not be read".into(),
    )
}

/// One point in the JSON answer: the protocol's field names, absent fields left out.
#[derive(Debug, Serialize)]
struct PointRecord {
    ts: i64,
    rts: i64,
    lat: f64,
    lon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hdg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batt: Option<f64>,
}

impl From<&TrackPoint> for PointRecord {
    fn from(p: &TrackPoint) -> Self {
        PointRecord {
            ts: p.fix.ts,
            rts: p.rts,
            lat: p.fix.lat,
            lon: p.fix.lon,
            acc: p.fix.acc,
            alt: p.fix.alt,
            spd: p.fix.spd,
            hdg: p.fix.hdg,
            batt: p.fix.batt,
        }
    }
}

/// `{"device", "count", "truncated", "points": [...]}`.
fn json_body(device: &DeviceId, track: &Track) -> Value {
    let points: Vec<PointRecord> = track.points.iter().map(Into::into).collect();
    json!({
        "device": device.as_str(),
        "count": points.len(),
        "truncated": track.truncated,
        "points": points,
    })
}

/// A GeoJSON Feature: a LineString of `[lon, lat]` for two points or more, a Point for one,
/// no geometry for none. `properties.times` holds each point's fix time (ms).
fn geojson(device: &DeviceId, track: &Track) -> Value {
    let coordinates: Vec<[f64; 2]> = track
        .points
        .iter()
        .map(|p| [p.fix.lon, p.fix.lat])
        .collect();
    let geometry = match coordinates.as_slice() {
        [] => Value::Null,
        [one] => json!({ "type": "Point", "coordinates": one }),
        _ => json!({ "type": "LineString", "coordinates": coordinates }),
    };
    let times: Vec<i64> = track.points.iter().map(|p| p.fix.ts).collect();
    json!({
        "type": "Feature",
        "id": device.as_str(),
        "geometry": geometry,
        "properties": {
            "id": device.as_str(),
            "count": times.len(),
            "truncated": track.truncated,
            "times": times,
        },
    })
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// GPX 1.1: one track of one segment; each point with its elevation (when known) and time.
fn gpx(device: &DeviceId, track: &Track) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(200 + track.points.len() * 110);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<gpx version=\"1.1\" creator=\"Beacon\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n",
    );
    let name = xml_escape(device.as_str());
    // Writing into a String cannot fail.
    let _ = writeln!(out, "  <trk>\n    <name>{name}</name>\n    <trkseg>");
    for p in &track.points {
        let _ = write!(
            out,
            "      <trkpt lat=\"{}\" lon=\"{}\">",
            p.fix.lat, p.fix.lon
        );
        if let Some(alt) = p.fix.alt {
            let _ = write!(out, "<ele>{alt}</ele>");
        }
        let _ = writeln!(out, "<time>{}</time></trkpt>", isotime::format_ms(p.fix.ts));
    }
    out.push_str("    </trkseg>\n  </trk>\n</gpx>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Fix;

    fn params(query: &str) -> TrackParams {
        serde_urlencoded::from_str(query).unwrap()
    }

    #[test]
    fn reads_ranges_limits_and_formats() {
        let (q, f) = read_params(&params("")).unwrap();
        assert_eq!(
            (q.from, q.to, q.limit, f),
            (i64::MIN, i64::MAX, DEFAULT_LIMIT, Format::Json)
        );
        let (q, f) = read_params(&params(
            "from=1000&to=2025-11-22T00:00:00Z&limit=5&format=gpx",
        ))
        .unwrap();
        assert_eq!(
            (q.from, q.to, q.limit, f),
            (1000, 1_763_769_600_000, 5, Format::Gpx)
        );
        for (query, needle) in [
            ("from=yesterday", "from must be"),
            ("to=1e3", "to must be"),
            ("from=5&to=4", "after"),
            ("limit=0", "limit must"),
            ("limit=10001", "limit must"),
            ("limit=-1", "limit must"),
            ("format=kml", "format must"),
        ] {
            let err = read_params(&params(query)).unwrap_err();
            assert!(err.contains(needle), "{query}: {err}");
        }
    }

    fn track(n: usize) -> Track {
        Track {
            points: (0..n)
                .map(|i| TrackPoint {
                    fix: Fix {
                        lat: 52.0 + i as f64,
                        lon: 13.0,
                        ts: 1_616_249_457_000 + i as i64 * 1000,
                        acc: None,
                        alt: (i == 0).then_some(40.5),
                        spd: Some(1.5),
                        hdg: None,
                        batt: None,
                    },
                    rts: 0,
                })
                .collect(),
            truncated: false,
        }
    }

    #[test]
    fn geojson_shapes() {
        let id = DeviceId::parse("bus-1").unwrap();
        assert_eq!(geojson(&id, &track(0))["geometry"], Value::Null);
        assert_eq!(geojson(&id, &track(1))["geometry"]["type"], "Point");
        let line = geojson(&id, &track(2));
        assert_eq!(line["geometry"]["type"], "LineString");
        assert_eq!(line["geometry"]["coordinates"][1], json!([13.0, 53.0]));
        assert_eq!(line["properties"]["times"][1], 1_616_249_458_000i64);
    }

    #[test]
    fn gpx_document() {
        let text = gpx(&DeviceId::parse("a@b").unwrap(), &track(2));
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("<name>a@b</name>"));
        assert!(text.contains(
            "<trkpt lat=\"52\" lon=\"13\"><ele>40.5</ele><time>2021-03-20T14:10:57.000Z</time></trkpt>"
        ));
        assert!(
            text.contains("<trkpt lat=\"53\" lon=\"13\"><time>2021-03-20T14:10:58.000Z</time>")
        );
        assert_eq!(xml_escape("<a&'\">"), "&lt;a&amp;&apos;&quot;&gt;");
    }
}
