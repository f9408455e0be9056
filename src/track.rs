//! `GET /v1/devices/{id}/track`: the stored history of one device, as JSON, GeoJSON or GPX.
//!
//! Query parameters:
//! - `from`, `to`: fix-time range, inclusive, each as ms since the epoch or ISO-8601
//!   (`2025-11-22T08:00:00Z`). Default: everything retained.
//! - `limit`: most points returned, default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`].
//! - `format`: `json` (default), `geojson` (a Feature with a LineString) or `gpx` (GPX 1.1,
//!   with each point's speed and course in Garmin's TrackPointExtension). Both downloads carry
//!   a `Content-Disposition` file name and the device's display name (its profile name, else
//!   its id), written by well-kept crates (`geojson`, `quick-xml`) so every name is escaped.
//!   Coordinates, in every format, are rounded to 7 decimals (about 1 cm): no float noise.
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
use crate::stats::{round_coord, round_to};
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
    // The display name the device shows under, else its id.
    let name = state
        .profiles
        .name(device.as_str())
        .unwrap_or_else(|| device.as_str().to_owned());
    match format {
        Format::Json => Json(json_body(&device, &track)).into_response(),
        Format::GeoJson => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/geo+json"),
                ),
                (header::CONTENT_DISPOSITION, attachment(&device, "geojson")),
            ],
            Json(geojson(&device, &name, &track)),
        )
            .into_response(),
        Format::Gpx => match gpx(&name, &track) {
            Ok(body) => (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/gpx+xml"),
                    ),
                    (header::CONTENT_DISPOSITION, attachment(&device, "gpx")),
                ],
                body,
            )
                .into_response(),
            Err(e) => {
                // Writing into memory does not fail; if it ever does, say so once, here.
                error!(error = %e, device = %device, "GPX not written");
                history_unreadable()
            }
        },
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
            lat: round_coord(p.fix.lat),
            lon: round_coord(p.fix.lon),
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

/// A GeoJSON Feature (written with the `geojson` crate): a LineString of `[lon, lat]` for two
/// points or more, a Point for one, no geometry for none. `properties.times` holds each point's
/// fix time (ms), `properties.name` the device's display name. Coordinates are rounded to 7
/// decimals.
fn geojson(device: &DeviceId, name: &str, track: &Track) -> Value {
    use geojson::{Feature, Geometry, JsonObject, feature::Id};

    let coordinates: Vec<[f64; 2]> = track
        .points
        .iter()
        .map(|p| [round_coord(p.fix.lon), round_coord(p.fix.lat)])
        .collect();
    let geometry = match coordinates.as_slice() {
        [] => None,
        [one] => Some(Geometry::new_point(*one)),
        _ => Some(Geometry::new_line_string(coordinates)),
    };
    let times: Vec<i64> = track.points.iter().map(|p| p.fix.ts).collect();
    let mut properties = JsonObject::new();
    properties.insert("id".into(), json!(device.as_str()));
    properties.insert("name".into(), json!(name));
    properties.insert("count".into(), json!(times.len()));
    properties.insert("truncated".into(), json!(track.truncated));
    properties.insert("times".into(), json!(times));
    let feature = Feature {
        bbox: None,
        geometry,
        id: Some(Id::String(device.as_str().to_owned())),
        properties: Some(properties),
        foreign_members: None,
    };
    // A Feature of finite numbers and strings always serializes.
    serde_json::to_value(&feature).unwrap_or(Value::Null)
}

/// The GPX namespace (version 1.1).
const GPX_NS: &str = "http://www.topografix.com/GPX/1/1";

/// Garmin's TrackPointExtension (version 2), which carries each point's speed and course: GPX
/// 1.1 itself has neither, and this is the extension map and training tools read.
const GPXTPX_NS: &str = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2";

/// GPX 1.1 written with `quick-xml` (which escapes every name and value): one track of one
/// segment named `name`; each point with its elevation (when known), its time and, when the
/// device reported them, its speed (m/s) and course (degrees) as a TrackPointExtension.
/// Coordinates are rounded to 7 decimals (about 1 cm), so no float noise reaches the file.
fn gpx(name: &str, track: &Track) -> std::io::Result<Vec<u8>> {
    use quick_xml::Writer;
    use quick_xml::events::{BytesDecl, BytesText, Event};

    let mut w = Writer::new(Vec::with_capacity(200 + track.points.len() * 120));
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.write_event(Event::Text(BytesText::new("\n")))?;
    w.create_element("gpx")
        .with_attributes([
            ("version", "1.1"),
            ("creator", "Beacon"),
            ("xmlns", GPX_NS),
            ("xmlns:gpxtpx", GPXTPX_NS),
        ])
        .write_inner_content(|w| {
            w.write_event(Event::Text(BytesText::new("\n  ")))?;
            w.create_element("trk").write_inner_content(|w| {
                w.create_element("name")
                    .write_text_content(BytesText::new(name))?;
                w.create_element("trkseg").write_inner_content(|w| {
                    for p in &track.points {
                        w.write_event(Event::Text(BytesText::new("\n      ")))?;
                        trkpt(w, p)?;
                    }
                    w.write_event(Event::Text(BytesText::new("\n    ")))?;
                    Ok::<(), std::io::Error>(())
                })?;
                Ok::<(), std::io::Error>(())
            })?;
            w.write_event(Event::Text(BytesText::new("\n")))?;
            Ok::<(), std::io::Error>(())
        })?;
    w.write_event(Event::Text(BytesText::new("\n")))?;
    Ok(w.into_inner())
}

/// One `<trkpt>`: see [`gpx`].
fn trkpt(w: &mut quick_xml::Writer<Vec<u8>>, p: &TrackPoint) -> std::io::Result<()> {
    use quick_xml::events::BytesText;

    let lat = round_coord(p.fix.lat).to_string();
    let lon = round_coord(p.fix.lon).to_string();
    w.create_element("trkpt")
        .with_attributes([("lat", lat.as_str()), ("lon", lon.as_str())])
        .write_inner_content(|w| {
            if let Some(alt) = p.fix.alt {
                w.create_element("ele")
                    .write_text_content(BytesText::new(&round_to(alt, 2).to_string()))?;
            }
            w.create_element("time")
                .write_text_content(BytesText::new(&isotime::format_ms(p.fix.ts)))?;
            if p.fix.spd.is_some() || p.fix.hdg.is_some() {
                w.create_element("extensions").write_inner_content(|w| {
                    w.create_element("gpxtpx:TrackPointExtension")
                        .write_inner_content(|w| {
                            if let Some(spd) = p.fix.spd {
                                w.create_element("gpxtpx:speed").write_text_content(
                                    BytesText::new(&round_to(spd, 2).to_string()),
                                )?;
                            }
                            if let Some(hdg) = p.fix.hdg {
                                w.create_element("gpxtpx:course").write_text_content(
                                    BytesText::new(&round_to(hdg, 1).to_string()),
                                )?;
                            }
                            Ok::<(), std::io::Error>(())
                        })?;
                    Ok::<(), std::io::Error>(())
                })?;
            }
            Ok::<(), std::io::Error>(())
        })?;
    Ok(())
}

/// `attachment; filename="<id>.<ext>"`: the id with anything but `A-Z a-z 0-9 . _ -` made `_`
/// (ids may hold `:` and `@`, which some systems refuse in file names).
fn attachment(device: &DeviceId, extension: &str) -> HeaderValue {
    let stem: String = device
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Only ASCII letters, digits and `._-` go in: always a valid header value.
    HeaderValue::from_str(&format!("attachment; filename=\"{stem}.{extension}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
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
        assert_eq!(geojson(&id, "Bus 1", &track(0))["geometry"], Value::Null);
        assert_eq!(
            geojson(&id, "Bus 1", &track(1))["geometry"]["type"],
            "Point"
        );
        let line = geojson(&id, "Bus 1", &track(2));
        assert_eq!(line["geometry"]["type"], "LineString");
        assert_eq!(line["geometry"]["coordinates"][1], json!([13.0, 53.0]));
        assert_eq!(line["properties"]["times"][1], 1_616_249_458_000i64);
        assert_eq!(line["properties"]["name"], "Bus 1");
        assert_eq!(line["id"], "bus-1");
    }

    #[test]
    fn gpx_document() {
        let text = String::from_utf8(gpx("a@b", &track(2)).unwrap()).unwrap();
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("<name>a@b</name>"));
        // The speed (reported by every point of `track`) follows the time, in the extension.
        assert!(
            text.contains(
                "<trkpt lat=\"52\" lon=\"13\"><ele>40.5</ele><time>2021-03-20T14:10:57.000Z</time>\
                 <extensions><gpxtpx:TrackPointExtension><gpxtpx:speed>1.5</gpxtpx:speed>\
                 </gpxtpx:TrackPointExtension></extensions></trkpt>"
            ),
            "{text}"
        );
        assert!(
            text.contains("<trkpt lat=\"53\" lon=\"13\"><time>2021-03-20T14:10:58.000Z</time>")
        );
        let text = String::from_utf8(gpx("<a&'\">", &track(0)).unwrap()).unwrap();
        assert!(
            text.contains("<name>&lt;a&amp;&apos;&quot;&gt;</name>"),
            "{text}"
        );
    }

    #[test]
    fn gpx_course_and_no_float_noise() {
        let mut t = track(1);
        // One unit in the last place above 52.4005 and 13.4005: what float sums hand over.
        t.points[0].fix.lat = f64::from_bits(52.4005f64.to_bits() + 1);
        t.points[0].fix.lon = f64::from_bits(13.4005f64.to_bits() + 1);
        assert_eq!(t.points[0].fix.lon.to_string(), "13.400500000000001");
        t.points[0].fix.spd = None;
        t.points[0].fix.hdg = Some(271.25);
        let text = String::from_utf8(gpx("x", &t).unwrap()).unwrap();
        assert!(
            text.contains("<trkpt lat=\"52.4005\" lon=\"13.4005\">"),
            "{text}"
        );
        assert!(
            text.contains("<gpxtpx:course>271.3</gpxtpx:course>"),
            "{text}"
        );
        assert!(!text.contains("gpxtpx:speed"), "{text}");
        let body = json_body(&DeviceId::parse("x").unwrap(), &t).to_string();
        assert!(
            body.contains("13.4005") && !body.contains("13.4005000"),
            "{body}"
        );
    }

    #[test]
    fn download_file_names() {
        let id = DeviceId::parse("fleet:car@home.1").unwrap();
        assert_eq!(
            attachment(&id, "gpx"),
            "attachment; filename=\"fleet_car_home.1.gpx\""
        );
    }
}
