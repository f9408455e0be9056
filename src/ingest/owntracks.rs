//! OwnTracks in HTTP mode: `POST /v1/ingest/owntracks`.
//!
//! The app POSTs the same JSON messages it would publish over MQTT. A `_type: location`
//! message is a fix: `lat`, `lon`, `tst` (epoch seconds), `acc` (m), `alt` (m), `vel` (km/h,
//! converted to m/s), `cog` (degrees), `batt` (percent). Every other type (`lwt`, `transition`,
//! `waypoint`, `encrypted`...) and an empty body are accepted and ignored.
//!
//! Who is reporting comes from, in order: the `X-Limit-U`/`X-Limit-D` headers, `?u=&d=`, the
//! message's `topic` (`owntracks/<user>/<device>`: the last two segments), and the Basic-auth
//! user name (whose password may carry a token). The device id is `user:device`, each part
//! reduced to the protocol's id alphabet (see [`device_id`]).
//!
//! The answer to a location is a JSON array of `location` messages, one per device of the
//! caller's groups, the caller included, so the app shows its friends; other messages get `[]`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::common::{
    self, Credentials, IngestError, Params, basic_auth, identify_device, json_number, known,
};
use crate::app::AppState;
use crate::config::AuthMode;
use crate::model::{DeviceId, Fix, MAX_ID_LEN, Position, now_ms};
use crate::profiles::MAX_NAME_CHARS;
use crate::protocol::RawMessage;

/// Most `location` messages in one answer. A group larger than this shows its most recently
/// reported devices; the bound keeps the answer (and the app's contact list) a sane size.
pub(crate) const MAX_FRIENDS: usize = 1000;

/// One km/h in m/s.
const KMH_TO_MPS: f64 = 1.0 / 3.6;

/// What one POST carried.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Payload {
    /// A `_type: location` message.
    Location {
        /// The validated fix.
        fix: Fix,
        /// The message's `topic`, when it has one (iOS sends it in HTTP mode).
        topic: Option<String>,
        /// The tracker id the phone chose (`tid`), when it sent one.
        tid: Option<String>,
    },
    /// A `_type: card` message: how the user wants to be shown.
    Card {
        /// The `name`, cut to a profile name's rules; `None` when nothing usable is left.
        name: Option<String>,
        /// The message's `topic`, when it has one.
        topic: Option<String>,
    },
    /// A `_type: transition` message: the phone entered or left one of its regions.
    Transition {
        /// The point and time of the transition.
        fix: Fix,
        /// `region.enter` or `region.exit`.
        kind: &'static str,
        /// The region's name (`desc`).
        region: String,
        /// The message's `topic`, when it has one.
        topic: Option<String>,
    },
    /// Anything else (`lwt`, `waypoint`, `encrypted`, ...), or an empty body.
    Ignored,
}

/// A `transition`: `event` (`enter` or `leave`), `desc` (the region), and the point and time
/// (`lat`, `lon`, `tst`, `acc`). One without a usable event or region name is ignored.
fn transition(
    obj: &serde_json::Map<String, Value>,
    now: i64,
    topic: Option<String>,
) -> Result<Payload, IngestError> {
    let kind = match obj.get("event").and_then(Value::as_str) {
        Some("enter") => "region.enter",
        Some("leave") => "region.exit",
        _ => return Ok(Payload::Ignored),
    };
    let Some(region) = obj
        .get("desc")
        .and_then(Value::as_str)
        .and_then(common::event_name)
    else {
        return Ok(Payload::Ignored);
    };
    let raw = RawMessage {
        lat: json_number(obj, "lat", "lat")?,
        lon: json_number(obj, "lon", "lon")?,
        ts: json_number(obj, "tst", "tst")?.map(|s| s * 1000.0),
        acc: known(json_number(obj, "acc", "acc")?),
        ..RawMessage::default()
    };
    let fix = common::validate(&raw, now, &[("ts", "tst")])?;
    Ok(Payload::Transition {
        fix,
        kind,
        region,
        topic,
    })
}

/// A card's `name` made a valid profile name: control characters dropped, spaces trimmed, at
/// most [`MAX_NAME_CHARS`] characters kept.
fn card_name(name: &str) -> Option<String> {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    let clean: String = clean.trim().chars().take(MAX_NAME_CHARS).collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| clean.to_owned())
}

/// Reads one POSTed message. `now` (ms) stands in for a missing `tst`.
pub(crate) fn parse(body: &[u8], now: i64) -> Result<Payload, IngestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        // The app POSTs an empty payload when a friend is deleted.
        return Ok(Payload::Ignored);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| IngestError::BadRequest(format!("unparseable JSON body: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| IngestError::BadRequest("the body must be a JSON object".into()))?;
    let topic = obj.get("topic").and_then(Value::as_str).map(str::to_owned);
    match obj.get("_type").and_then(Value::as_str) {
        Some("location") => {}
        Some("transition") => return transition(obj, now, topic),
        Some("card") => {
            let name = obj.get("name").and_then(Value::as_str).and_then(card_name);
            return Ok(Payload::Card { name, topic });
        }
        // `lwt` is MQTT's last will ("the app lost its connection"); over HTTP presence follows
        // the stale window, so it changes nothing. Other types carry nothing Beacon keeps.
        Some(_) => return Ok(Payload::Ignored),
        None => return Err(IngestError::BadRequest("_type is required".into())),
    }
    let raw = RawMessage {
        lat: json_number(obj, "lat", "lat")?,
        lon: json_number(obj, "lon", "lon")?,
        ts: json_number(obj, "tst", "tst")?.map(|s| s * 1000.0),
        acc: known(json_number(obj, "acc", "acc")?),
        alt: json_number(obj, "alt", "alt")?,
        spd: known(json_number(obj, "vel", "vel")?).map(|kmh| kmh * KMH_TO_MPS),
        hdg: known(json_number(obj, "cog", "cog")?),
        batt: known(json_number(obj, "batt", "batt")?),
        ..RawMessage::default()
    };
    let fix = common::validate(&raw, now, &[("ts", "tst"), ("spd", "vel"), ("hdg", "cog")])?;
    let tid = obj
        .get("tid")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok(Payload::Location { fix, topic, tid })
}

/// The user and device names of a topic `.../<user>/<device>` (at least three segments).
pub(crate) fn topic_names(topic: &str) -> Option<(&str, &str)> {
    let segments: Vec<&str> = topic.split('/').collect();
    match segments.as_slice() {
        [_, .., user, device] if !user.is_empty() && !device.is_empty() => Some((user, device)),
        _ => None,
    }
}

/// Reduces a user or device name to the id alphabet: letters, digits and `. _ @ -` stay; every
/// run of other characters (spaces, accents, `:`, `/`...) becomes one `-`; `-` at either end
/// is dropped. `"Jane's Phone"` becomes `Jane-s-Phone`.
pub(crate) fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut gap = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') {
            if gap && !out.is_empty() {
                out.push('-');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
    }
    out.trim_matches('-').to_owned()
}

/// The Beacon device id of an OwnTracks user's device: `user:device`, both sanitized
/// ([`sanitize`]). Refused when a part is left empty or the id is longer than the protocol
/// allows.
pub(crate) fn device_id(user: &str, device: &str) -> Result<DeviceId, IngestError> {
    let (u, d) = (sanitize(user), sanitize(device));
    if u.is_empty() || d.is_empty() {
        let which = if u.is_empty() { "user" } else { "device" };
        return Err(IngestError::BadRequest(format!(
            "the {which} name has no letter or digit Beacon can use in an id"
        )));
    }
    let id = format!("{u}:{d}");
    DeviceId::parse(&id).map_err(|_| {
        IngestError::BadRequest(format!(
            "user and device names make an id longer than {MAX_ID_LEN} characters: {id:?}"
        ))
    })
}

/// The user and device names of a request (see the module doc for the order of sources).
fn names(
    headers: &HeaderMap,
    query: &Params,
    topic: Option<&str>,
    basic_user: Option<&str>,
) -> Result<(String, String), IngestError> {
    // Header values are bytes: the app sends UTF-8 names as they are (`José`), which
    // `HeaderValue::to_str` (visible ASCII only) would refuse.
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let from_topic = topic.and_then(topic_names);
    let user = header("x-limit-u")
        .or_else(|| query.get("u"))
        .or(from_topic.map(|(u, _)| u))
        .or(basic_user.filter(|u| !u.is_empty()))
        .ok_or_else(|| {
            IngestError::BadRequest(
                "user unknown: set a username in the app (X-Limit-U, ?u= or Basic auth)".into(),
            )
        })?;
    let device = header("x-limit-d")
        .or_else(|| query.get("d"))
        .or(from_topic.map(|(_, d)| d))
        .ok_or_else(|| {
            IngestError::BadRequest(
                "device unknown: set a device id in the app (X-Limit-D or ?d=)".into(),
            )
        })?;
    Ok((user.to_owned(), device.to_owned()))
}

/// The tracker id shown on the app's map: the last two letters or digits of the device part of
/// the id (after the last `:`), or of the whole id.
pub(crate) fn tid(device: &DeviceId) -> String {
    let id = device.as_str();
    let tail = id.rsplit(':').next().unwrap_or(id);
    let chars: Vec<char> = tail.chars().filter(char::is_ascii_alphanumeric).collect();
    let chars = if chars.is_empty() {
        id.chars().filter(char::is_ascii_alphanumeric).collect()
    } else {
        chars
    };
    chars[chars.len().saturating_sub(2)..].iter().collect()
}

/// The topic that identifies a device to the app: `owntracks/<user>/<device>` for ids of the
/// `user:device` shape, `owntracks/beacon/<id>` for every other device.
pub(crate) fn topic(device: &DeviceId) -> String {
    match device.as_str().split_once(':') {
        Some((user, dev)) if !dev.contains(':') => format!("owntracks/{user}/{dev}"),
        _ => format!("owntracks/beacon/{}", device.as_str()),
    }
}

/// A position as an OwnTracks `location` message (integers where the app expects them).
/// `own_tid` is the `tid` the device sent itself, when it did.
pub(crate) fn location_message(p: &Position, own_tid: Option<String>) -> Value {
    let mut msg = json!({
        "_type": "location",
        "tid": own_tid.unwrap_or_else(|| tid(&p.device)),
        "topic": topic(&p.device),
        "lat": p.fix.lat,
        "lon": p.fix.lon,
        "tst": p.fix.ts.div_euclid(1000),
        "created_at": p.rts.div_euclid(1000),
    });
    let round = |v: f64| v.round() as i64;
    let optional = [
        ("acc", p.fix.acc.map(round)),
        ("alt", p.fix.alt.map(round)),
        ("vel", p.fix.spd.map(|mps| round(mps * 3.6))),
        ("cog", p.fix.hdg.map(round)),
        ("batt", p.fix.batt.map(round)),
    ];
    if let Some(obj) = msg.as_object_mut() {
        for (key, value) in optional {
            if let Some(v) = value {
                obj.insert(key.into(), v.into());
            }
        }
    }
    msg
}

/// The answer to a location: every device of `groups` (each once, with its newest fix), most
/// recent first, at most [`MAX_FRIENDS`]. `own_tid` gives the `tid` a device sent itself, which
/// the answer keeps.
pub(crate) fn friends(
    positions: impl IntoIterator<Item = Position>,
    own_tid: impl Fn(&DeviceId) -> Option<String>,
) -> Vec<Value> {
    let mut latest: HashMap<DeviceId, Position> = HashMap::new();
    for p in positions {
        match latest.get(&p.device) {
            Some(held) if (held.fix.ts, held.rts) >= (p.fix.ts, p.rts) => {}
            _ => {
                latest.insert(p.device.clone(), p);
            }
        }
    }
    let mut all: Vec<Position> = latest.into_values().collect();
    all.sort_by(|a, b| (b.fix.ts, &b.device).cmp(&(a.fix.ts, &a.device)));
    all.truncate(MAX_FRIENDS);
    all.iter()
        .map(|p| location_message(p, own_tid(&p.device)))
        .collect()
}

/// `POST /v1/ingest/owntracks`.
pub(crate) async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let now = now_ms();
    let query = match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(query) => query,
        Err(e) => return e.response(),
    };
    let payload = match parse(&body, now) {
        Ok(Payload::Ignored) => return Json(json!([])).into_response(),
        Ok(payload) => payload,
        Err(e) => return e.response(),
    };
    let topic = match &payload {
        Payload::Location { topic, .. }
        | Payload::Card { topic, .. }
        | Payload::Transition { topic, .. } => topic.clone(),
        Payload::Ignored => None,
    };
    let basic = basic_auth(&headers);
    let id = names(
        &headers,
        &query,
        topic.as_deref(),
        basic.as_ref().map(|(u, _)| u.as_str()),
    )
    .and_then(|(user, device)| device_id(&user, &device));
    let credentials = Credentials {
        token: basic
            .map(|(_, password)| password)
            .filter(|p| !p.is_empty())
            .or_else(|| query.get("token").map(str::to_owned))
            .or_else(|| query.get("access_token").map(str::to_owned)),
        groups: query.get("groups").map(str::to_owned),
    };
    // With tokens the token alone names the device, so credentials are judged first: a wrong
    // password is 401 whether or not the app sent its names. Without, the names are the id.
    let identity = match (&id, state.auth.config().mode) {
        (Err(e), AuthMode::None) => return e.response(),
        (id, _) => {
            let id = id.as_ref().map_or("", |id| id.as_str());
            match identify_device(&state, &headers, id, credentials).await {
                Ok(identity) => identity,
                Err(e) => return common::refused(&e),
            }
        }
    };
    let (fix, tid) = match payload {
        Payload::Location { fix, tid, .. } => (fix, tid),
        Payload::Card { name, .. } => {
            if let Some(name) = name {
                match state.profiles.set_name(&identity.id, name) {
                    Ok(profile) => state.events.profile_changed(&identity.id, &profile),
                    Err(e) => {
                        tracing::debug!(device = %identity.id, error = %e, "card name not kept");
                    }
                }
            }
            return Json(json!([])).into_response();
        }
        Payload::Transition {
            fix, kind, region, ..
        } => {
            // A transition too old to keep is answered like one kept, so the app moves on.
            if fix.ts >= state.config.oldest_fix_ms(now) {
                common::record_event(&state, &identity, kind, &fix, &region);
            } else {
                state.metrics.ingest_too_old.inc();
            }
            return Json(json!([])).into_response();
        }
        Payload::Ignored => return Json(json!([])).into_response(),
    };
    if let Some(tid) = tid
        && let Some(profile) = state.profiles.set_tid(&identity.id, &tid)
    {
        state.events.profile_changed(&identity.id, &profile);
    }
    common::publish_app(
        &state,
        &identity,
        "owntracks",
        std::slice::from_ref(&fix),
        now,
    );
    let positions = identity
        .groups
        .iter()
        .flat_map(|g| state.hub.positions(g.as_str()));
    Json(friends(positions, |d| state.profiles.tid(d.as_str()))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: i64 = 1_763_780_000_000;

    #[test]
    fn android_location() {
        let body = br#"{"_type":"location","BSSID":"b0:4e:26:11:22:33","SSID":"home",
            "acc":12,"alt":48,"batt":81,"bs":1,"conn":"w","created_at":1763779995,
            "lat":52.5162,"lon":13.3777,"m":1,"t":"u","tid":"ne","tst":1763779990,
            "vac":3,"vel":18,"cog":90}"#;
        let Payload::Location { fix, topic, tid } = parse(body, NOW).unwrap() else {
            panic!("not a location")
        };
        assert_eq!(topic, None);
        assert_eq!(tid.as_deref(), Some("ne"));
        assert_eq!(
            (fix.lat, fix.lon, fix.ts),
            (52.5162, 13.3777, 1_763_779_990_000)
        );
        assert!((fix.spd.unwrap() - 5.0).abs() < 1e-9, "18 km/h is 5 m/s");
        assert_eq!(
            (fix.acc, fix.alt, fix.hdg, fix.batt),
            (Some(12.0), Some(48.0), Some(90.0), Some(81.0))
        );
    }

    #[test]
    fn transitions_become_region_events() {
        let body = br#"{"_type":"transition","event":"leave","desc":"Work\u0007","lat":1,"lon":2,"tst":1763779990,"t":"c"}"#;
        let Ok(Payload::Transition {
            fix, kind, region, ..
        }) = parse(body, NOW)
        else {
            panic!("not a transition")
        };
        assert_eq!(
            (kind, region.as_str(), fix.ts),
            ("region.exit", "Work", 1_763_779_990_000)
        );
        let old =
            br#"{"_type":"transition","event":"enter","desc":"home","lat":1,"lon":2,"tst":1}"#;
        assert!(matches!(
            parse(old, NOW),
            Err(IngestError::InvalidPosition(_))
        ));
    }

    #[test]
    fn other_types_and_empty_bodies_are_ignored() {
        for body in [
            &br#"{"_type":"transition","event":"dwell","desc":"home","tst":1}"#[..],
            br#"{"_type":"lwt","tst":1}"#,
            br#"{"_type":"encrypted","data":"abc"}"#,
            b"",
            b"  \n",
        ] {
            assert_eq!(parse(body, NOW), Ok(Payload::Ignored));
        }
        for (body, needle) in [
            (&b"nope"[..], "unparseable"),
            (b"[]", "JSON object"),
            (br#"{"lat":1,"lon":2}"#, "_type is required"),
            (br#"{"_type":"location","lat":1}"#, "lon is required"),
            (
                br#"{"_type":"location","lat":1,"lon":2,"tst":1863779990}"#,
                "tst must not",
            ),
            (
                br#"{"_type":"location","lat":1,"lon":2,"cog":400}"#,
                "cog must be",
            ),
            (
                br#"{"_type":"location","lat":"x","lon":2}"#,
                "lat must be a number",
            ),
        ] {
            let err = parse(body, NOW).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn ids_from_names() {
        assert_eq!(device_id("jane", "phone").unwrap().as_str(), "jane:phone");
        assert_eq!(
            device_id(" Jane Doe ", "Jane's iPhone").unwrap().as_str(),
            "Jane-Doe:Jane-s-iPhone"
        );
        assert_eq!(device_id("a:b", "c").unwrap().as_str(), "a-b:c");
        assert!(device_id("ü", "phone").is_err());
        assert!(device_id("jane", "/").is_err());
        assert!(device_id(&"u".repeat(40), &"d".repeat(30)).is_err());
    }

    #[test]
    fn names_come_from_headers_query_topic_or_basic() {
        let mut headers = HeaderMap::new();
        let query = Params::parse(b"u=qu&d=qd").unwrap();
        let none = Params::default();
        let topic = Some("owntracks/tu/td");
        assert_eq!(
            names(&headers, &query, topic, None).unwrap(),
            ("qu".into(), "qd".into())
        );
        assert_eq!(
            names(&headers, &none, topic, Some("bu")).unwrap(),
            ("tu".into(), "td".into())
        );
        let err = names(&headers, &none, None, Some("bu")).unwrap_err();
        assert!(err.to_string().contains("device unknown"), "{err}");
        let q = Params::parse(b"d=ipad").unwrap();
        assert_eq!(
            names(&headers, &q, None, Some("bu")).unwrap(),
            ("bu".into(), "ipad".into())
        );
        headers.insert("x-limit-u", HeaderValue::from_static("hu"));
        headers.insert("x-limit-d", HeaderValue::from_static("hd"));
        assert_eq!(
            names(&headers, &query, topic, None).unwrap(),
            ("hu".into(), "hd".into())
        );
        assert!(names(&HeaderMap::new(), &none, None, None).is_err());
        assert_eq!(topic_names("owntracks/jane/phone"), Some(("jane", "phone")));
        assert_eq!(topic_names("base/x/jane/phone"), Some(("jane", "phone")));
        assert_eq!(topic_names("jane/phone"), None);
        assert_eq!(topic_names("owntracks//phone"), None);
    }

    #[test]
    fn answers_in_owntracks_shape() {
        let p = |id: &str, ts: i64| Position {
            device: DeviceId::parse(id).unwrap(),
            fix: Fix {
                lat: 1.5,
                lon: 2.5,
                ts,
                acc: Some(4.4),
                alt: None,
                spd: Some(5.0),
                hdg: Some(359.6),
                batt: None,
            },
            rts: ts + 10,
            online: true,
        };
        let answer = friends(
            [
                p("jane:phone", 5_000),
                p("bus-17", 9_999),
                p("jane:phone", 7_000),
            ],
            |_| None,
        );
        assert_eq!(answer.len(), 2);
        assert_eq!(answer[0]["tid"], "17");
        assert_eq!(answer[0]["topic"], "owntracks/beacon/bus-17");
        assert_eq!(answer[0]["tst"], 9);
        assert_eq!(answer[1]["_type"], "location");
        assert_eq!(answer[1]["tid"], "ne");
        assert_eq!(answer[1]["topic"], "owntracks/jane/phone");
        assert_eq!(answer[1]["tst"], 7, "the newest fix of a device wins");
        assert_eq!(
            (answer[1]["vel"].as_i64(), answer[1]["cog"].as_i64()),
            (Some(18), Some(360))
        );
        assert_eq!(answer[1]["acc"], 4);
        assert!(answer[1].get("alt").is_none());
        let many: Vec<Position> = (0..MAX_FRIENDS + 5)
            .map(|i| p(&format!("d{i}"), i as i64))
            .collect();
        assert_eq!(friends(many, |_| None).len(), MAX_FRIENDS);
    }
}
