//! The OsmAnd protocol, as spoken by Traccar Client and OsmAnd: `/v1/ingest/osmand`.
//!
//! One request carries one fix (or, in the JSON form, a list), in one of three shapes:
//! - **query string** (OsmAnd, older Traccar Client), any method:
//!   `?id=123456&lat=52.52&lon=13.40&timestamp=1700000000&speed=12&bearing=90&altitude=40&accuracy=5&batt=80`;
//! - **urlencoded form** body, same keys (merged over the query's);
//! - **JSON** body of Traccar Client 9 and later:
//!   `{"device_id": "...", "location": {"timestamp": "<ISO-8601>", "coords": {"latitude": ..,
//!   "longitude": .., "speed": .., "heading": .., "altitude": .., "accuracy": ..},
//!   "battery": {"level": 0..1}}}`; `location` may also be a list.
//!
//! Units: `speed` in the query and form shapes is in knots (the protocol's historical unit) and
//! is converted to m/s; the JSON shape's `coords.speed` already is m/s. `timestamp` is epoch
//! seconds, epoch milliseconds or ISO-8601. Unknown keys are ignored. The answer is 200 with an
//! empty body, or 400 naming the missing or bad field.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::common::{
    self, Credentials, IngestError, Params, epoch_to_ms, identify_device, json_number, known,
    publish_app, validate,
};
use crate::app::AppState;
use crate::isotime;
use crate::model::{Fix, now_ms};
use crate::protocol::RawMessage;

/// Metres per second in one knot (1852 m per hour).
pub(crate) const KNOTS_TO_MPS: f64 = 1852.0 / 3600.0;

/// What one request reported.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Report {
    /// The device id as the app sent it (not yet checked against the id rules).
    pub device: String,
    /// The validated fixes, in the order sent.
    pub fixes: Vec<Fix>,
    /// `alarm=<name>` (Traccar Client's `sos`...): an event at the last fix.
    pub alarm: Option<String>,
}

/// How the body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Empty,
    Form,
    Json,
}

fn body_kind(content_type: Option<&str>, body: &[u8]) -> BodyKind {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return BodyKind::Empty;
    };
    let content_type = content_type.unwrap_or("").to_ascii_lowercase();
    if content_type.contains("json") {
        BodyKind::Json
    } else if content_type.contains("x-www-form-urlencoded") {
        BodyKind::Form
    } else if matches!(first, b'{' | b'[') {
        BodyKind::Json
    } else {
        BodyKind::Form
    }
}

/// Reads one request: `query` is the parsed query string (its keys are fields too), the body
/// is read according to `content_type` (or sniffed when that says nothing useful). `now` is the
/// receive time in ms; at most `max_fixes` fixes are accepted from a JSON list.
pub(crate) fn parse(
    query: &Params,
    content_type: Option<&str>,
    body: &[u8],
    now: i64,
    max_fixes: usize,
) -> Result<Report, IngestError> {
    match body_kind(content_type, body) {
        BodyKind::Empty => legacy(query, now),
        BodyKind::Form => {
            let mut params = query.clone();
            params.merge(Params::parse(body)?);
            legacy(&params, now)
        }
        BodyKind::Json => json(query, body, now, max_fixes),
    }
}

/// The query and form shapes.
fn legacy(params: &Params, now: i64) -> Result<Report, IngestError> {
    let device = params
        .get("id")
        .or_else(|| params.get("deviceid"))
        .ok_or_else(|| IngestError::BadRequest("id is required (id or deviceid)".into()))?;
    let (mut lat, mut lon) = (params.number("lat")?, params.number("lon")?);
    if lat.is_none()
        && lon.is_none()
        && let Some(location) = params.get("location")
    {
        let (la, lo) = location
            .split_once(',')
            .ok_or_else(|| IngestError::BadRequest("location must be \"lat,lon\"".into()))?;
        lat = Some(common::parse_number("location", la)?);
        lon = Some(common::parse_number("location", lo)?);
    }
    let ts = params.get("timestamp").map(parse_timestamp).transpose()?;
    let (heading_key, heading) = match params.number("bearing")? {
        Some(v) => ("bearing", Some(v)),
        None => ("heading", params.number("heading")?),
    };
    let raw = RawMessage {
        lat,
        lon,
        ts,
        acc: given(known(params.number("accuracy")?)),
        alt: params.number("altitude")?,
        spd: known(params.number("speed")?).map(|knots| knots * KNOTS_TO_MPS),
        hdg: known(heading),
        // OsmAnd sends `batt=-1` when it does not know the level.
        batt: known(params.number("batt")?),
        ..RawMessage::default()
    };
    let names = [
        ("ts", "timestamp"),
        ("acc", "accuracy"),
        ("alt", "altitude"),
        ("spd", "speed"),
        ("hdg", heading_key),
    ];
    let fix = validate(&raw, now, &names)?;
    Ok(Report {
        device: device.to_owned(),
        fixes: vec![fix],
        alarm: params.get("alarm").and_then(common::event_name),
    })
}

/// An accuracy of exactly 0 is Traccar Client's "not given" (version 8 sends `accuracy=0.0`
/// when the platform reported none): no real fix is exact to the millimetre.
fn given(accuracy: Option<f64>) -> Option<f64> {
    accuracy.filter(|acc| *acc > 0.0)
}

/// `timestamp`: epoch seconds, epoch ms, or ISO-8601 (also `yyyy-MM-dd HH:mm:ss`, UTC).
fn parse_timestamp(text: &str) -> Result<f64, IngestError> {
    if let Ok(n) = text.parse::<f64>() {
        return Ok(epoch_to_ms(n));
    }
    isotime::parse_ms(text).map(|ms| ms as f64).map_err(|_| {
        IngestError::BadRequest(
            "timestamp must be epoch seconds, epoch milliseconds or ISO-8601".into(),
        )
    })
}

/// The JSON shape of Traccar Client 9+.
fn json(query: &Params, body: &[u8], now: i64, max_fixes: usize) -> Result<Report, IngestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| IngestError::BadRequest(format!("unparseable JSON body: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| IngestError::BadRequest("the JSON body must be an object".into()))?;
    let device = match obj.get("device_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => query
            .get("id")
            .or_else(|| query.get("deviceid"))
            .map(str::to_owned)
            .ok_or_else(|| IngestError::BadRequest("device_id is required".into()))?,
    };
    let fixes = match obj.get("location") {
        Some(Value::Object(location)) => vec![json_fix(location, "location", now)?],
        Some(Value::Array(list)) => {
            if list.is_empty() {
                return Err(IngestError::BadRequest("location holds no fix".into()));
            }
            if list.len() > max_fixes {
                return Err(IngestError::BadRequest(format!(
                    "at most {max_fixes} locations per request"
                )));
            }
            list.iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = format!("location[{i}]");
                    let location = item.as_object().ok_or_else(|| {
                        IngestError::BadRequest(format!("{path} must be an object"))
                    })?;
                    json_fix(location, &path, now)
                })
                .collect::<Result<Vec<Fix>, IngestError>>()?
        }
        Some(_) => {
            return Err(IngestError::BadRequest("location must be an object".into()));
        }
        None => return Err(IngestError::BadRequest("location is required".into())),
    };
    let alarm = match obj.get("alarm") {
        Some(Value::String(name)) => common::event_name(name),
        _ => query.get("alarm").and_then(common::event_name),
    };
    Ok(Report {
        device,
        fixes,
        alarm,
    })
}

/// One `location` object of the JSON shape; `path` names it in refusals.
fn json_fix(location: &Map<String, Value>, path: &str, now: i64) -> Result<Fix, IngestError> {
    let coords = match location.get("coords") {
        Some(Value::Object(coords)) => coords,
        _ => {
            return Err(IngestError::BadRequest(format!(
                "{path}.coords is required"
            )));
        }
    };
    let field = |name: &str| format!("{path}.coords.{name}");
    let ts = match location.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            isotime::parse_ms(text)
                .map(|ms| ms as f64)
                .map_err(|e| IngestError::BadRequest(format!("{path}.timestamp: {e}")))?,
        ),
        Some(Value::Number(n)) => n.as_f64().map(epoch_to_ms),
        Some(_) => {
            return Err(IngestError::BadRequest(format!(
                "{path}.timestamp must be an ISO-8601 string"
            )));
        }
    };
    // The battery level is a fraction in [0, 1]; -1 means unknown. A value above 1 is taken as
    // a percentage already.
    let batt = match location.get("battery") {
        Some(Value::Object(battery)) => known(json_number(
            battery,
            "level",
            &format!("{path}.battery.level"),
        )?)
        .map(|level| if level <= 1.0 { level * 100.0 } else { level }),
        _ => None,
    };
    let raw = RawMessage {
        lat: json_number(coords, "latitude", &field("latitude"))?,
        lon: json_number(coords, "longitude", &field("longitude"))?,
        ts,
        acc: given(known(json_number(coords, "accuracy", &field("accuracy"))?)),
        alt: json_number(coords, "altitude", &field("altitude"))?,
        spd: known(json_number(coords, "speed", &field("speed"))?),
        hdg: known(json_number(coords, "heading", &field("heading"))?),
        batt,
        ..RawMessage::default()
    };
    let names = [
        ("lat", field("latitude")),
        ("lon", field("longitude")),
        ("ts", format!("{path}.timestamp")),
        ("acc", field("accuracy")),
        ("alt", field("altitude")),
        ("spd", field("speed")),
        ("hdg", field("heading")),
        ("batt", format!("{path}.battery.level")),
    ];
    let names: Vec<(&str, &str)> = names.iter().map(|(a, b)| (*a, b.as_str())).collect();
    validate(&raw, now, &names)
}

/// `GET|POST /v1/ingest/osmand`.
pub(crate) async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    ingest(&state, &headers, query, None, &body).await
}

/// `GET|POST /v1/ingest/osmand/{token}`: the token rides in the path, for apps whose settings
/// hold only a URL.
pub(crate) async fn handle_with_token(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    ingest(&state, &headers, query, Some(token), &body).await
}

async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<String>,
    path_token: Option<String>,
    body: &[u8],
) -> Response {
    let now = now_ms();
    let query = match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(query) => query,
        Err(e) => return e.response(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let max = state.config.limits.max_batch_fixes;
    let report = match parse(&query, content_type, body, now, max) {
        Ok(report) => report,
        Err(e) => return e.response(),
    };
    let credentials = Credentials {
        token: path_token
            .or_else(|| query.get("token").map(str::to_owned))
            .or_else(|| query.get("access_token").map(str::to_owned)),
        groups: query.get("groups").map(str::to_owned),
    };
    let identity = match identify_device(state, headers, &report.device, credentials).await {
        Ok(identity) => identity,
        Err(e) => return common::refused(&e),
    };
    let kept = publish_app(state, &identity, "osmand", &report.fixes, now);
    if let Some(alarm) = &report.alarm
        && let Some(fix) = kept.last()
    {
        common::record_event(state, &identity, "alarm", fix, alarm);
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_780_000_000;

    fn query(text: &str) -> Params {
        Params::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn legacy_query_with_every_field() {
        let q = query(
            "id=123456&lat=52.52&lon=13.405&timestamp=1763779990&speed=10&bearing=270.5\
             &altitude=40.5&accuracy=7&batt=81&hdop=1.2&valid=true&charge=false&whatever=1",
        );
        let report = parse(&q, None, b"", NOW, 10).unwrap();
        assert_eq!(report.device, "123456");
        let fix = &report.fixes[0];
        assert_eq!((fix.lat, fix.lon), (52.52, 13.405));
        assert_eq!(fix.ts, 1_763_779_990_000);
        assert!((fix.spd.unwrap() - 5.144_444).abs() < 1e-6);
        assert_eq!(fix.hdg, Some(270.5));
        assert_eq!(fix.alt, Some(40.5));
        assert_eq!(fix.acc, Some(7.0));
        assert_eq!(fix.batt, Some(81.0));
    }

    #[test]
    fn legacy_alternatives() {
        let q = query("deviceid=d&location=1.5,-2.5&timestamp=1763779990123&heading=10");
        let fix = &parse(&q, None, b"", NOW, 10).unwrap().fixes[0];
        assert_eq!((fix.lat, fix.lon, fix.ts), (1.5, -2.5, 1_763_779_990_123));
        assert_eq!(fix.hdg, Some(10.0));
        let q = query("id=d&lat=1&lon=2&timestamp=2025-11-22%2001:00:00&speed=-1");
        let fix = &parse(&q, None, b"", NOW, 10).unwrap().fixes[0];
        assert_eq!(fix.ts, 1_763_773_200_000);
        assert_eq!(fix.spd, None, "-1 means unknown");
        let fix = &parse(&query("id=d&lat=1&lon=2"), None, b"", NOW, 10)
            .unwrap()
            .fixes[0];
        assert_eq!(fix.ts, NOW, "no timestamp means now");
    }

    #[test]
    fn form_body_merges_over_the_query() {
        let report = parse(
            &query("groups=g&lat=9"),
            Some("application/x-www-form-urlencoded"),
            b"id=phone&lat=1&lon=2&timestamp=1763779990",
            NOW,
            10,
        )
        .unwrap();
        assert_eq!(report.device, "phone");
        assert_eq!(report.fixes[0].lat, 1.0);
        // Without a content type, a body that is not JSON is read as a form.
        let report = parse(&Params::default(), None, b"id=x&lat=3&lon=4", NOW, 10).unwrap();
        assert_eq!(report.fixes[0].lon, 4.0);
    }

    #[test]
    fn traccar_client_json() {
        let body = br#"{
          "location": {
            "timestamp": "2025-11-22T02:53:10.000Z",
            "coords": {"latitude": 48.8566, "longitude": 2.3522, "accuracy": 4.5,
                       "speed": 3.2, "heading": -1, "altitude": 35.0},
            "is_moving": true, "odometer": 1234.5, "event": "motionchange",
            "battery": {"level": 0.83, "is_charging": false},
            "activity": {"type": "walking"}, "extras": {}
          },
          "device_id": "48241179"
        }"#;
        let report = parse(&Params::default(), Some("application/json"), body, NOW, 10).unwrap();
        assert_eq!(report.device, "48241179");
        let fix = &report.fixes[0];
        assert_eq!((fix.lat, fix.lon), (48.8566, 2.3522));
        assert_eq!(fix.ts, 1_763_779_990_000);
        assert_eq!(fix.spd, Some(3.2), "already m/s");
        assert_eq!(fix.hdg, None, "-1 means unknown");
        assert_eq!(fix.acc, Some(4.5));
        assert!((fix.batt.unwrap() - 83.0).abs() < 1e-9);
    }

    #[test]
    fn traccar_client_json_list_and_fallback_id() {
        let body = br#"{"location": [
            {"timestamp": "2025-11-22T02:53:00Z", "coords": {"latitude": 1, "longitude": 2}},
            {"timestamp": "2025-11-22T02:53:05Z", "coords": {"latitude": 3, "longitude": 4}}
        ]}"#;
        let report = parse(&query("id=from-query"), None, body, NOW, 10).unwrap();
        assert_eq!(report.device, "from-query");
        assert_eq!(report.fixes.len(), 2);
        assert_eq!(report.fixes[1].lat, 3.0);
        let err = parse(&query("id=x"), None, body, NOW, 1).unwrap_err();
        assert!(err.to_string().contains("at most 1"), "{err}");
        let body = br#"{"device_id": 42, "location": [{"coords": {"latitude": 1}}]}"#;
        let err = parse(&Params::default(), None, body, NOW, 10).unwrap_err();
        assert_eq!(
            err,
            IngestError::InvalidPosition("location[0].coords.longitude is required".into())
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: [(&str, &[u8], &str); 11] = [
            ("lat=1&lon=2", b"", "id is required"),
            ("id=a&lon=2", b"", "lat is required"),
            ("id=a&lat=1", b"", "lon is required"),
            ("id=a&lat=91&lon=2", b"", "lat must be"),
            ("id=a&lat=1&lon=x", b"", "lon must be a number"),
            ("id=a&location=1", b"", "location must be"),
            ("id=a&lat=1&lon=2&timestamp=soon", b"", "timestamp must be"),
            (
                "id=a&lat=1&lon=2&timestamp=1863779990",
                b"",
                "timestamp must not",
            ),
            ("id=a&lat=1&lon=2&bearing=361", b"", "bearing must be"),
            ("", br#"{"device_id":"a"}"#, "location is required"),
            (
                "",
                br#"{"device_id":"a","location":{"coords":{}}}"#,
                "latitude is required",
            ),
        ];
        for (q, body, needle) in cases {
            let err = parse(&query(q), None, body, NOW, 10).unwrap_err();
            assert!(err.to_string().contains(needle), "{q}: {err}");
        }
        for body in [
            &b"{"[..],
            b"[1]",
            br#"{"location":{"coords":{"latitude":1,"longitude":2}}}"#,
        ] {
            assert!(parse(&Params::default(), Some("application/json"), body, NOW, 10).is_err());
        }
    }
}
