//! Geofences and proximity rules against the real server: fixes posted over HTTP and sent on
//! sockets, events read as `event` frames by a real WebSocket viewer and from
//! `GET /v1/groups/{group}/events`.

mod common;

use beacon::model::now_ms;
use common::{Client, TestServer};
use serde_json::{Value, json};

/// The admin of group `g` (`--auth none`: the identity is the query).
const ADMIN: &str = "id=boss&groups=g&role=admin";

/// The fence's centre.
const LAT: f64 = 52.5;
const LON: f64 = 13.0;

/// Latitude `m` metres north of the centre.
fn north(m: f64) -> f64 {
    LAT + m / 111_195.0
}

/// A fix `m` metres north of the centre at `s` seconds past `base`.
fn fix(base: i64, s: i64, m: f64) -> Value {
    json!({"lat": north(m), "lon": LON, "ts": base + s * 1000})
}

/// A fix time base an hour ago, so a test can place fixes on a timeline of its own.
fn base() -> i64 {
    now_ms() - 3_600_000
}

/// A 100 m circle around the centre with `extra` fields.
fn circle(extra: Value) -> Value {
    let mut body = json!({
        "name": "depot",
        "geometry": {"type": "Circle", "center": [LON, LAT], "radius_m": 100.0},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn send(
    method: reqwest::Method,
    server: &TestServer,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, server.http(path));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a fence in `g` as its admin; its id.
async fn create(server: &TestServer, body: Value) -> String {
    let (status, fence) = send(
        reqwest::Method::POST,
        server,
        &format!("/v1/groups/g/geofences?{ADMIN}"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{fence}");
    fence["id"].as_str().unwrap().to_owned()
}

/// Posts `fixes` of `device` (to group `g`) in one request.
async fn post(server: &TestServer, device: &str, fixes: Vec<Value>) {
    let (status, body) = send(
        reqwest::Method::POST,
        server,
        &format!("/v1/positions?id={device}&groups=g"),
        Some(&Value::Array(fixes)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Every event record pushed to `viewer` until a ping round trip.
async fn pushed(viewer: &mut Client) -> Vec<Value> {
    viewer
        .sync()
        .await
        .into_iter()
        .filter(|f| f["type"] == "event")
        .flat_map(|f| f["events"].as_array().unwrap().clone())
        .collect()
}

/// `GET /v1/groups/g/events`.
async fn listed(server: &TestServer) -> Vec<Value> {
    let body = server.get_json("/v1/groups/g/events?limit=1000").await;
    body["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn entering_and_leaving_are_events_pushed_and_listed() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("screen", "g").await;
    let b = base();
    // A group without rules: its fixes are not judged at all.
    post(&server, "van", vec![fix(b, -10, 0.0)]).await;
    assert_eq!(
        server.metric("beacon_geofence_fixes_judged_total").await,
        0.0
    );
    let id = create(&server, circle(json!({"debounce_s": 0}))).await;

    post(&server, "van", vec![fix(b, 0, 500.0)]).await;
    assert!(
        pushed(&mut viewer).await.is_empty(),
        "the first fix sets the side silently"
    );
    post(&server, "van", vec![fix(b, 10, 0.0)]).await;
    post(&server, "van", vec![fix(b, 20, 600.0)]).await;

    let events = pushed(&mut viewer).await;
    assert_eq!(
        kinds(&events),
        ["geofence.enter", "geofence.exit"],
        "{events:?}"
    );
    let enter = &events[0];
    assert_eq!(enter["device"], "van");
    assert_eq!(enter["group"], "g");
    assert_eq!(enter["geofence"], id.as_str());
    assert_eq!(enter["geofence_name"], "depot");
    assert_eq!(enter["ts"], b + 10_000, "the fix time that caused it");
    assert_eq!(enter["lat"], north(0.0));
    assert_eq!(events[1]["ts"], b + 20_000);
    assert!(enter.get("reason").is_none());

    let stored = listed(&server).await;
    assert_eq!(stored, events, "the same records, ids included");
    let exits = server
        .get_json("/v1/groups/g/events?kind=geofence.exit")
        .await;
    assert_eq!(exits["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        server.metric("beacon_geofence_fixes_judged_total").await,
        3.0
    );
    assert_eq!(server.metric("beacon_geofence_events_total").await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn a_polygon_fence_from_geojson() {
    let server = TestServer::start().await;
    // A square of about 111 m × 68 m, [lon, lat] order.
    let square = json!({
        "name": "yard",
        "debounce_s": 0,
        "geometry": {"type": "Polygon", "coordinates": [[
            [13.0, 52.5], [13.001, 52.5], [13.001, 52.501], [13.0, 52.501], [13.0, 52.5]
        ]]},
    });
    let id = create(&server, square.clone()).await;
    let (status, got) = send(
        reqwest::Method::GET,
        &server,
        &format!("/v1/groups/g/geofences/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["geometry"], square["geometry"]);
    assert_eq!(got["hysteresis_m"], 20.0, "the documented default");
    assert_eq!(got["max_acc_m"], 100.0, "the documented default");
    let b = base();
    let at = |s: i64, lat: f64, lon: f64| json!({"lat": lat, "lon": lon, "ts": b + s * 1000});
    post(
        &server,
        "van",
        vec![
            at(0, 52.4990, 13.0005),
            at(1, 52.5005, 13.0005),
            at(2, 52.5020, 13.0005),
        ],
    )
    .await;
    assert_eq!(
        kinds(&listed(&server).await),
        ["geofence.enter", "geofence.exit"]
    );
    server.stop().await;
}

#[tokio::test]
async fn jitter_at_the_boundary_makes_no_events() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("screen", "g").await;
    create(
        &server,
        circle(json!({"debounce_s": 0, "hysteresis_m": 20})),
    )
    .await;
    let b = base();
    // Inside, then wandering 10 m either side of the boundary (radius 100 m).
    let jitter = [0.0, 95.0, 110.0, 99.0, 115.0, 101.0, 92.0, 118.0, 100.0];
    let fixes = jitter
        .iter()
        .enumerate()
        .map(|(i, m)| fix(b, i as i64, *m))
        .collect();
    post(&server, "van", fixes).await;
    assert!(pushed(&mut viewer).await.is_empty());
    // A clear exit, beyond the margin, is one event.
    post(&server, "van", vec![fix(b, 20, 130.0)]).await;
    assert_eq!(kinds(&pushed(&mut viewer).await), ["geofence.exit"]);
    server.stop().await;
}

#[tokio::test]
async fn inaccurate_fixes_do_not_change_sides() {
    let server = TestServer::start().await;
    create(&server, circle(json!({"debounce_s": 0, "max_acc_m": 50}))).await;
    let b = base();
    let mut inside = fix(b, 1, 0.0);
    inside["acc"] = json!(200.0);
    post(&server, "van", vec![fix(b, 0, 500.0), inside]).await;
    assert!(listed(&server).await.is_empty());
    let mut good = fix(b, 2, 0.0);
    good["acc"] = json!(10.0);
    post(&server, "van", vec![good]).await;
    assert_eq!(kinds(&listed(&server).await), ["geofence.enter"]);
    server.stop().await;
}

#[tokio::test]
async fn debounce_waits_for_the_new_side_to_last() {
    let server = TestServer::start().await;
    create(&server, circle(json!({"debounce_s": 30}))).await;
    let b = base();
    // In for 10 s and out again: nothing. Then in from 40 s: confirmed at 70 s.
    post(
        &server,
        "van",
        vec![
            fix(b, 0, 500.0),
            fix(b, 10, 0.0),
            fix(b, 20, 500.0),
            fix(b, 40, 0.0),
            fix(b, 60, 10.0),
        ],
    )
    .await;
    assert!(listed(&server).await.is_empty());
    post(&server, "van", vec![fix(b, 70, 20.0)]).await;
    let events = listed(&server).await;
    assert_eq!(kinds(&events), ["geofence.enter"]);
    assert_eq!(events[0]["ts"], b + 40_000, "the first fix on the new side");
    assert_eq!(events[0]["lat"], north(0.0));
    server.stop().await;
}

#[tokio::test]
async fn one_dwell_per_visit() {
    let server = TestServer::start().await;
    create(&server, circle(json!({"debounce_s": 0, "dwell_s": 60}))).await;
    let b = base();
    post(
        &server,
        "van",
        vec![
            fix(b, 0, 500.0),
            fix(b, 10, 0.0),
            fix(b, 50, 0.0),
            fix(b, 75, 5.0),
            fix(b, 90, 0.0),
            fix(b, 300, 0.0),
        ],
    )
    .await;
    let events = listed(&server).await;
    assert_eq!(kinds(&events), ["geofence.enter", "geofence.dwell"]);
    assert_eq!(events[1]["ts"], b + 75_000, "the fix that confirmed it");
    // A second visit dwells again.
    post(
        &server,
        "van",
        vec![fix(b, 400, 500.0), fix(b, 410, 0.0), fix(b, 480, 0.0)],
    )
    .await;
    assert_eq!(
        kinds(&listed(&server).await),
        [
            "geofence.enter",
            "geofence.dwell",
            "geofence.exit",
            "geofence.enter",
            "geofence.dwell"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_device_list_limits_the_fence() {
    let server = TestServer::start().await;
    create(
        &server,
        circle(json!({"debounce_s": 0, "devices": ["van"]})),
    )
    .await;
    let b = base();
    for device in ["van", "bike"] {
        post(&server, device, vec![fix(b, 0, 500.0), fix(b, 1, 0.0)]).await;
    }
    let events = listed(&server).await;
    assert_eq!(kinds(&events), ["geofence.enter"]);
    assert_eq!(events[0]["device"], "van");
    server.stop().await;
}

#[tokio::test]
async fn deleting_a_fence_exits_the_devices_inside() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("screen", "g").await;
    let id = create(&server, circle(json!({"debounce_s": 0}))).await;
    let b = base();
    post(&server, "van", vec![fix(b, 0, 0.0)]).await;
    post(&server, "bike", vec![fix(b, 0, 500.0)]).await;
    let before = now_ms();
    let path = format!("/v1/groups/g/geofences/{id}");
    let (status, _) = send(
        reqwest::Method::DELETE,
        &server,
        &format!("{path}?id=v&groups=g&role=viewer"),
        None,
    )
    .await;
    assert_eq!(status, 403, "viewers may not delete");
    let (status, _) = send(
        reqwest::Method::DELETE,
        &server,
        &format!("{path}?{ADMIN}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let events = pushed(&mut viewer).await;
    assert_eq!(kinds(&events), ["geofence.exit"], "{events:?}");
    assert_eq!(events[0]["device"], "van");
    assert_eq!(events[0]["reason"], "deleted");
    assert_eq!(events[0]["geofence"], id.as_str());
    let ts = events[0]["ts"].as_i64().unwrap();
    assert!(ts >= before && ts <= now_ms(), "the time of the deletion");
    let (status, _) = send(
        reqwest::Method::DELETE,
        &server,
        &format!("{path}?{ADMIN}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        server.get_json("/v1/groups/g/geofences").await["geofences"],
        json!([])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_fix_older_than_the_latest_changes_nothing() {
    let server = TestServer::start().await;
    create(&server, circle(json!({"debounce_s": 0}))).await;
    let b = base();
    post(&server, "van", vec![fix(b, 100, 0.0)]).await;
    // Uploaded late: older than the fix above, outside.
    post(&server, "van", vec![fix(b, 50, 800.0)]).await;
    post(&server, "van", vec![fix(b, 110, 0.0)]).await;
    assert!(listed(&server).await.is_empty());
    assert_eq!(server.metric("beacon_geofence_fixes_old_total").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn an_offline_backlog_is_judged_point_by_point() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("screen", "g").await;
    create(&server, circle(json!({"debounce_s": 0}))).await;
    let b = base();
    // One request: out, in, out, in. Live fan-out coalesces these; the rules must not.
    post(
        &server,
        "van",
        vec![
            fix(b, 0, 500.0),
            fix(b, 1, 0.0),
            fix(b, 2, 500.0),
            fix(b, 3, 0.0),
        ],
    )
    .await;
    let events = pushed(&mut viewer).await;
    assert_eq!(
        kinds(&events),
        ["geofence.enter", "geofence.exit", "geofence.enter"]
    );
    let times: Vec<i64> = events.iter().map(|e| e["ts"].as_i64().unwrap()).collect();
    assert_eq!(times, [b + 1000, b + 2000, b + 3000]);

    // A socket sending as fast as it can: the same, fix by fix.
    let mut device = server.device("bike", "g").await;
    for (s, m) in [(10, 500.0), (11, 0.0), (12, 500.0), (13, 0.0)] {
        device
            .send(json!({"type": "pos", "lat": north(m), "lon": LON, "ts": b + s * 1000}))
            .await;
    }
    device.sync().await;
    let events = pushed(&mut viewer).await;
    assert_eq!(
        kinds(&events),
        ["geofence.enter", "geofence.exit", "geofence.enter"]
    );
    assert!(events.iter().all(|e| e["device"] == "bike"));
    server.stop().await;
}

#[tokio::test]
async fn a_restart_with_a_data_dir_keeps_fences_and_sides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let server = TestServer::with(|c| c.data_dir = Some(path.clone())).await;
    let id = create(&server, circle(json!({"debounce_s": 0, "dwell_s": 600}))).await;
    let (status, _) = send(
        reqwest::Method::PUT,
        &server,
        &format!("/v1/groups/g/proximity?{ADMIN}"),
        Some(&json!({"enter_m": 50, "exit_m": 100})),
    )
    .await;
    assert_eq!(status, 200);
    let b = base();
    post(&server, "van", vec![fix(b, 0, 500.0), fix(b, 10, 0.0)]).await;
    post(&server, "bike", vec![fix(b, 11, 20.0)]).await;
    // Changes nothing, but is the van's newest fix.
    post(&server, "van", vec![fix(b, 15, 0.0)]).await;
    assert_eq!(
        kinds(&listed(&server).await),
        ["geofence.enter", "proximity.enter"]
    );
    server.stop().await;

    let server = TestServer::with(|c| c.data_dir = Some(path.clone())).await;
    let fences = server.get_json("/v1/groups/g/geofences").await;
    assert_eq!(fences["geofences"][0]["id"], id.as_str());
    assert_eq!(fences["geofences"][0]["dwell_s"], 600);
    assert_eq!(
        server.get_json("/v1/groups/g/proximity").await,
        json!({"enter_m": 50.0, "exit_m": 100.0})
    );
    // Uploaded late: older than the van's newest fix before the restart, so not an exit.
    post(&server, "van", vec![fix(b, 12, 500.0)]).await;
    // Still inside, still near: nothing new. The visit's start survived: the dwell comes at
    // 610 s, not 600 s after the restart.
    post(&server, "van", vec![fix(b, 20, 5.0)]).await;
    post(&server, "bike", vec![fix(b, 21, 25.0)]).await;
    post(&server, "van", vec![fix(b, 610, 0.0)]).await;
    post(&server, "van", vec![fix(b, 620, 500.0)]).await;
    let events = listed(&server).await;
    let mut got = kinds(&events);
    // The last two share a fix time; the log orders those by id.
    got[3..].sort_unstable();
    assert_eq!(
        got,
        [
            "geofence.enter",
            "proximity.enter",
            "geofence.dwell",
            "geofence.exit",
            "proximity.exit"
        ],
        "{events:?}"
    );
    server.stop().await;
}

/// A device seen far from every fence keeps no state against them, only when it was judged;
/// that survives a restart (flushed by the writer at shutdown), so coming straight inside
/// afterwards is an enter, while a device never seen before still has its first fix silent.
#[tokio::test]
async fn a_device_seen_far_outside_enters_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let server = TestServer::with(|c| c.data_dir = Some(path.clone())).await;
    create(&server, circle(json!({"debounce_s": 0}))).await;
    let b = base();
    // 5 km north: outside the fence's box, so judged against nothing.
    post(&server, "van", vec![fix(b, 0, 5000.0)]).await;
    server.stop().await;

    let server = TestServer::with(|c| c.data_dir = Some(path.clone())).await;
    post(&server, "van", vec![fix(b, 10, 0.0)]).await;
    post(&server, "bike", vec![fix(b, 11, 0.0)]).await;
    let events = listed(&server).await;
    assert_eq!(kinds(&events), ["geofence.enter"], "{events:?}");
    assert_eq!(events[0]["device"], "van");
    server.stop().await;
}

#[tokio::test]
async fn proximity_is_one_event_per_pair_and_transition() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("screen", "g").await;
    let path = format!("/v1/groups/g/proximity?{ADMIN}");
    let (status, body) = send(
        reqwest::Method::PUT,
        &server,
        &path,
        Some(&json!({"enter_m": 50, "exit_m": 100})),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"enter_m": 50.0, "exit_m": 100.0}))
    );
    let b = base();
    post(&server, "a", vec![fix(b, 0, 0.0)]).await;
    post(&server, "b", vec![fix(b, 1, 500.0)]).await;
    assert!(pushed(&mut viewer).await.is_empty());
    post(&server, "b", vec![fix(b, 2, 40.0)]).await;
    post(&server, "a", vec![fix(b, 3, 10.0)]).await; // Closer still: no second enter.
    post(&server, "b", vec![fix(b, 4, 90.0)]).await; // Between enter_m and exit_m: still near.
    post(&server, "a", vec![fix(b, 5, -30.0)]).await; // 120 m apart: one exit.
    post(&server, "b", vec![fix(b, 6, 300.0)]).await;
    let events = pushed(&mut viewer).await;
    assert_eq!(
        kinds(&events),
        ["proximity.enter", "proximity.exit"],
        "{events:?}"
    );
    assert_eq!(
        (&events[0]["device"], &events[0]["peer"]),
        (&json!("b"), &json!("a"))
    );
    assert!((events[0]["distance_m"].as_f64().unwrap() - 40.0).abs() < 1.0);
    assert_eq!(events[0]["ts"], b + 2000);
    assert_eq!(
        (&events[1]["device"], &events[1]["peer"]),
        (&json!("a"), &json!("b"))
    );
    assert!((events[1]["distance_m"].as_f64().unwrap() - 120.0).abs() < 1.0);

    let (status, _) = send(reqwest::Method::DELETE, &server, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(server.get("/v1/groups/g/proximity").await.status(), 404);
    post(&server, "b", vec![fix(b, 7, 0.0)]).await;
    assert!(pushed(&mut viewer).await.is_empty(), "switched off");
    server.stop().await;
}

#[tokio::test]
async fn only_admins_of_the_group_manage_and_bad_bodies_are_named() {
    let server = TestServer::start().await;
    let fences = "/v1/groups/g/geofences";
    let good = circle(json!({}));
    for who in [
        "id=v&groups=g&role=viewer",
        "id=d&groups=g&role=device",
        "id=a&groups=other&role=admin",
    ] {
        let (status, body) = send(
            reqwest::Method::POST,
            &server,
            &format!("{fences}?{who}"),
            Some(&good),
        )
        .await;
        assert_eq!(status, 403, "{who}: {body}");
        assert_eq!(body["error"], "forbidden");
        let (status, _) = send(
            reqwest::Method::PUT,
            &server,
            &format!("/v1/groups/g/proximity?{who}"),
            Some(&json!({"enter_m": 1, "exit_m": 2})),
        )
        .await;
        assert_eq!(status, 403, "{who}");
    }
    let id = create(&server, good.clone()).await;
    let (status, list) = send(
        reqwest::Method::GET,
        &server,
        &format!("{fences}?id=v&groups=g&role=viewer"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["geofences"][0]["id"], id.as_str());

    let cases = [
        (
            json!({"name": "x", "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.5], [13.001, 52.5], [13.001, 52.501], [13.0, 52.502]]]}}),
            "not closed",
        ),
        (
            json!({"name": "x", "geometry": {"type": "Polygon", "coordinates": [[[13.0, 95.0], [13.001, 52.5], [13.001, 52.501], [13.0, 95.0]]]}}),
            "lat 95",
        ),
        (
            json!({"name": "x", "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.5], [13.001, 52.5], [13.0, 52.5]]]}}),
            "at least 4",
        ),
        (
            json!({"name": "x", "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.5], [13.001, 52.501], [13.001, 52.5], [13.0, 52.501], [13.0, 52.5]]]}}),
            "not valid",
        ),
        (
            json!({"name": "x", "geometry": {"type": "Circle", "center": [13.0, 52.5], "radius_m": 0.1}}),
            "radius_m",
        ),
        (
            json!({"name": "x", "geometry": {"type": "Point", "coordinates": [13.0, 52.5]}}),
            "geometry",
        ),
        (json!({"name": "", "geometry": good["geometry"]}), "name"),
        (
            json!({"name": "x".repeat(65), "geometry": good["geometry"]}),
            "name",
        ),
        (
            json!({"name": "x", "geometry": good["geometry"], "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "x", "geometry": good["geometry"], "debounce_s": -1}),
            "debounce_s",
        ),
        (
            json!({"name": "x", "geometry": good["geometry"], "devices": ["no spaces"]}),
            "devices",
        ),
    ];
    for (body, named) in cases {
        let (status, answer) = send(
            reqwest::Method::POST,
            &server,
            &format!("{fences}?{ADMIN}"),
            Some(&body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_request");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(named), "{named:?} not in {message:?}");
    }
    let (status, answer) = send(
        reqwest::Method::PUT,
        &server,
        &format!("/v1/groups/g/proximity?{ADMIN}"),
        Some(&json!({"enter_m": 100, "exit_m": 50})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("exit_m"),
        "{answer}"
    );
    let (status, _) = send(
        reqwest::Method::PUT,
        &server,
        &format!("{fences}/gf_nope?{ADMIN}"),
        Some(&good),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(server.get(&format!("{fences}/gf_nope")).await.status(), 404);
    // A replacement keeps the id and takes the new definition.
    let (status, replaced) = send(
        reqwest::Method::PUT,
        &server,
        &format!("{fences}/{id}?{ADMIN}"),
        Some(&circle(json!({"name": "yard"}))),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&replaced["id"], &replaced["name"]),
        (&json!(id), &json!("yard"))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_bounds_hold() {
    let server = TestServer::with(|c| {
        c.geofences.max_geofences_per_group = 2;
        c.geofences.max_geofence_vertices = 5;
        c.geofences.max_geofence_devices = 2;
        c.geofences.max_geofence_radius_m = 1000;
    })
    .await;
    let post_fence = |body: Value| {
        let server = &server;
        async move {
            send(
                reqwest::Method::POST,
                server,
                &format!("/v1/groups/g/geofences?{ADMIN}"),
                Some(&body),
            )
            .await
        }
    };
    let hexagon = json!({"type": "Polygon", "coordinates": [[[13.0, 52.5], [13.001, 52.5], [13.002, 52.5005], [13.001, 52.501], [13.0, 52.501], [13.0, 52.5]]]});
    let (status, answer) = post_fence(json!({"name": "x", "geometry": hexagon})).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("at most 5"),
        "{answer}"
    );
    let (status, answer) = post_fence(circle(json!({"devices": ["a", "b", "c"]}))).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("at most 2"),
        "{answer}"
    );
    let big = json!({"name": "x", "geometry": {"type": "Circle", "center": [LON, LAT], "radius_m": 1001}});
    let (status, answer) = post_fence(big).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("1000"),
        "{answer}"
    );
    let square = json!({"type": "Polygon", "coordinates": [[[13.0, 52.5], [13.001, 52.5], [13.001, 52.501], [13.0, 52.501], [13.0, 52.5]]]});
    assert_eq!(
        post_fence(json!({"name": "x", "geometry": square})).await.0,
        201
    );
    assert_eq!(
        post_fence(circle(json!({"devices": ["a", "b"]}))).await.0,
        201
    );
    let (status, answer) = post_fence(circle(json!({}))).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 geofences"),
        "{answer}"
    );
    // Another group has its own allowance.
    let (status, _) = send(
        reqwest::Method::POST,
        &server,
        "/v1/groups/h/geofences?id=boss&groups=h&role=admin",
        Some(&circle(json!({}))),
    )
    .await;
    assert_eq!(status, 201);
    server.stop().await;
}

/// An instance sharing `redis`.
async fn instance(redis: &common::redis_server::RedisServer) -> TestServer {
    let url = redis.url();
    TestServer::with(|c| {
        c.redis_url = Some(url);
        c.redis.redis_timeout_ms = 1000;
        c.redis.redis_backoff_max_ms = 200;
    })
    .await
}

#[tokio::test]
async fn instances_share_fences_and_each_device_state() {
    let redis = common::redis_server::RedisServer::start();
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    let mut viewer = a.viewer("screen", "g").await;
    let id = create(&a, circle(json!({"debounce_s": 0}))).await;
    // The other instance holds it too.
    common::eventually(|| async {
        let list = b.get_json("/v1/groups/g/geofences").await;
        (list["geofences"][0]["id"] == id.as_str()).then_some(())
    })
    .await;

    let b0 = base();
    // The van reports to b: its first fix sets its side, the second enters.
    post(&b, "van", vec![fix(b0, 0, 500.0), fix(b0, 10, 0.0)]).await;
    // Then to a, which learnt the van is inside from b: leaving is one exit, made by a.
    a.wait_metric("beacon_geofence_share_applied_total", |n| n >= 2.0)
        .await;
    post(&a, "van", vec![fix(b0, 20, 500.0)]).await;
    // And back in through a; then the fence is deleted on b: one exit, reason deleted.
    post(&a, "van", vec![fix(b0, 30, 0.0)]).await;
    b.wait_metric("beacon_geofence_share_applied_total", |n| n >= 3.0)
        .await;
    let (status, _) = send(
        reqwest::Method::DELETE,
        &b,
        &format!("/v1/groups/g/geofences/{id}?{ADMIN}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let events = common::eventually(|| async {
        let listed = listed(&a).await;
        (listed.len() >= 4).then_some(listed)
    })
    .await;
    assert_eq!(
        kinds(&events),
        [
            "geofence.enter",
            "geofence.exit",
            "geofence.enter",
            "geofence.exit"
        ],
        "{events:?}"
    );
    assert_eq!(events[3]["reason"], "deleted");
    let pushed = pushed(&mut viewer).await;
    assert_eq!(pushed.len(), 4, "each event once on the socket: {pushed:?}");
    common::eventually(|| async {
        let list = a.get_json("/v1/groups/g/geofences").await;
        (list["geofences"] == json!([])).then_some(())
    })
    .await;
    // Nothing of the fence is left in Redis.
    let conn = redis.connection().await;
    common::eventually(|| {
        let mut conn = conn.clone();
        async move {
            let definitions: Vec<String> = redis::cmd("HKEYS")
                .arg("beacon:geofences")
                .query_async(&mut conn)
                .await
                .unwrap();
            let states: Vec<String> = redis::cmd("HKEYS")
                .arg("beacon:geofence-state")
                .query_async(&mut conn)
                .await
                .unwrap();
            (definitions.is_empty() && states.is_empty()).then_some(())
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn proximity_spans_instances() {
    let redis = common::redis_server::RedisServer::start();
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    let mut viewer = a.viewer("screen", "g").await;
    let (status, _) = send(
        reqwest::Method::PUT,
        &a,
        &format!("/v1/groups/g/proximity?{ADMIN}"),
        Some(&json!({"enter_m": 50, "exit_m": 100})),
    )
    .await;
    assert_eq!(status, 200);
    common::eventually(|| async {
        let rule = b.get("/v1/groups/g/proximity").await;
        (rule.status() == 200).then_some(())
    })
    .await;
    let t = base();
    // The walker reports to a, the runner to b.
    post(&a, "walker", vec![fix(t, 0, 0.0)]).await;
    b.wait_metric("beacon_geofence_share_applied_total", |n| n >= 2.0)
        .await;
    post(&b, "runner", vec![fix(t, 1, 30.0)]).await;
    a.wait_metric("beacon_geofence_share_applied_total", |n| n >= 2.0)
        .await;
    post(&a, "walker", vec![fix(t, 2, -200.0)]).await;
    let events = common::eventually(|| async {
        let listed = listed(&a).await;
        (listed.len() >= 2).then_some(listed)
    })
    .await;
    assert_eq!(
        kinds(&events),
        ["proximity.enter", "proximity.exit"],
        "{events:?}"
    );
    assert_eq!(
        (&events[0]["device"], &events[0]["peer"]),
        (&json!("runner"), &json!("walker"))
    );
    assert_eq!(
        (&events[1]["device"], &events[1]["peer"]),
        (&json!("walker"), &json!("runner"))
    );
    assert_eq!(pushed(&mut viewer).await.len(), 2, "each once");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_tokens_readers_hold_the_group_and_admins_manage_it() {
    const SECRET: &str = "a-test-secret-long-enough-for-hs256-signing";
    let server = TestServer::with(|c| {
        c.auth.mode = beacon::config::AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let token = |sub: &str, groups: &[&str], role: &str| {
        let claims =
            json!({"sub": sub, "groups": groups, "role": role, "exp": now_ms() / 1000 + 600});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let call = |method: reqwest::Method, path: &str, token: Option<String>, body: Option<Value>| {
        let mut request = reqwest::Client::new().request(method, server.http(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let fences = "/v1/groups/g/geofences";
    let admin = token("boss", &["g"], "admin");
    let other_admin = token("boss2", &["h"], "admin");
    let viewer = token("screen", &["g"], "viewer");
    let stranger = token("screen2", &["h"], "viewer");
    let body = circle(json!({}));
    assert_eq!(
        call(reqwest::Method::POST, fences, None, Some(body.clone())).await,
        401
    );
    assert_eq!(
        call(
            reqwest::Method::POST,
            fences,
            Some(viewer.clone()),
            Some(body.clone())
        )
        .await,
        403
    );
    assert_eq!(
        call(
            reqwest::Method::POST,
            fences,
            Some(other_admin),
            Some(body.clone())
        )
        .await,
        403
    );
    assert_eq!(
        call(
            reqwest::Method::POST,
            fences,
            Some(admin.clone()),
            Some(body)
        )
        .await,
        201
    );
    assert_eq!(
        call(reqwest::Method::GET, fences, Some(viewer), None).await,
        200
    );
    assert_eq!(
        call(reqwest::Method::GET, fences, Some(stranger.clone()), None).await,
        403
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            "/v1/groups/g/proximity",
            Some(stranger),
            None
        )
        .await,
        403
    );
    assert_eq!(call(reqwest::Method::GET, fences, None, None).await, 401);
    server.stop().await;
}
