//! Statistics and track downloads against the real server with a store: a synthetic day whose
//! ground truth is known, sent over HTTP, then read back through `/stats` and `/track`.

mod common;

use std::path::Path;

use beacon::Config;
use beacon::model::now_ms;
use common::TestServer;
use geo::{Destination, Haversine, Point};
use serde_json::{Value, json};

const WRITTEN: &str = "beacon_store_positions_written_total";
const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

async fn with_store(dir: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = dir.to_owned();
    TestServer::with(move |c| {
        c.data_dir = Some(dir);
        c.store.history_min_interval_secs = 0;
        c.store.history_min_distance_m = 0.0;
        adjust(c);
    })
    .await
}

/// An HS256 token for `sub` with `groups` and `role`, valid for an hour.
fn token(sub: &str, groups: &[&str], role: &str) -> String {
    let exp = (now_ms() / 1000) + 3600;
    let claims = json!({"sub": sub, "groups": groups, "role": role, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .unwrap()
}

/// A synthetic track, one fix a second, with deterministic position noise.
struct Builder {
    at: Point<f64>,
    ts: i64,
    seed: u64,
    fixes: Vec<Value>,
}

impl Builder {
    fn new(t0: i64) -> Self {
        Builder {
            at: Point::new(13.4, 52.5),
            ts: t0,
            seed: 11,
            fixes: Vec::new(),
        }
    }

    fn noise(&mut self) -> f64 {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.seed >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn fix(&mut self, jitter_m: f64, acc: f64) {
        let bearing = (self.noise() + 1.0) * 180.0;
        let off = self.noise().abs() * jitter_m;
        let p = Haversine.destination(self.at, bearing, off);
        self.fixes
            .push(json!({"lat": p.y(), "lon": p.x(), "ts": self.ts, "acc": acc}));
    }

    fn drive(&mut self, secs: i64, bearing: f64, speed: f64) {
        for _ in 0..secs {
            self.at = Haversine.destination(self.at, bearing, speed);
            self.ts += 1000;
            self.fix(3.0, 8.0);
        }
    }

    fn park(&mut self, secs: i64, jitter_m: f64) {
        for _ in 0..secs {
            self.ts += 1000;
            self.fix(jitter_m, 12.0);
        }
    }

    /// Moves fix `index` `metres` to the east (an outlier).
    fn spike(&mut self, index: usize, metres: f64) {
        let fix = &mut self.fixes[index];
        let from = Point::new(fix["lon"].as_f64().unwrap(), fix["lat"].as_f64().unwrap());
        let p = Haversine.destination(from, 90.0, metres);
        fix["lat"] = json!(p.y());
        fix["lon"] = json!(p.x());
    }
}

/// A drive of 9 km, a 15-minute stop with 15 m of jitter, a drive of 12 km, four outliers.
fn day(t0: i64) -> Builder {
    let mut b = Builder::new(t0);
    b.fix(3.0, 8.0);
    b.drive(600, 0.0, 15.0);
    b.park(900, 15.0);
    b.drive(600, 90.0, 20.0);
    b.spike(300, 5_000.0);
    b.spike(1_000, 2_000.0);
    b.spike(1_800, -4_000.0);
    b.spike(1_200, 800.0);
    b.fixes[1_200]["acc"] = json!(900.0);
    b
}

/// Posts `fixes` for `device` (in lists of 1000) and waits until the store holds them all.
async fn post(server: &TestServer, query: &str, bearer: Option<&str>, fixes: &[Value]) {
    let client = reqwest::Client::new();
    let before = server.metric(WRITTEN).await;
    for chunk in fixes.chunks(1000) {
        let mut request = client
            .post(server.http(&format!("/v1/positions?{query}")))
            .json(&chunk);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let want = before + fixes.len() as f64;
    server.wait_metric(WRITTEN, |v| v >= want).await;
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server.get(path).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn within(value: &Value, truth: f64, share: f64) -> bool {
    let value = value.as_f64().unwrap();
    (value - truth).abs() <= truth * share
}

#[tokio::test]
async fn a_day_of_driving_reads_back_as_two_trips_and_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |_| {}).await;
    let t0 = (now_ms() - 3 * 3_600_000) / 1000 * 1000;
    let day = day(t0);
    post(&server, "id=car&groups=g", None, &day.fixes).await;

    // The default range (the last 24 hours) holds the whole day.
    let (status, s) = get(&server, "/v1/devices/car/stats").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["device"], "car");
    assert_eq!(s["points"], 2101);
    assert_eq!(s["outliers"], 4);
    assert!(within(&s["distance_m"], 21_000.0, 0.03), "{s}");
    assert!(within(&s["moving_s"], 1_200.0, 0.03), "{s}");
    let max = s["spd_max"].as_f64().unwrap();
    assert!(
        (19.0..=21.0).contains(&max),
        "the outliers did not make speed: {s}"
    );
    let avg = s["spd_avg"].as_f64().unwrap();
    let ratio = s["distance_m"].as_f64().unwrap() / s["moving_s"].as_f64().unwrap();
    assert!((avg - ratio).abs() < 0.01, "{s}");
    assert_eq!(s["trips"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["stops"].as_array().unwrap().len(), 1, "{s}");
    let stop = &s["stops"][0];
    assert!(within(&stop["duration_s"], 900.0, 0.02), "{stop}");
    let trip = &s["trips"][1];
    assert!(within(&trip["distance_m"], 12_000.0, 0.03), "{trip}");
    for key in [
        "start",
        "end",
        "duration_s",
        "spd_avg",
        "spd_max",
        "from",
        "to",
    ] {
        assert!(!trip[key].is_null(), "{key} in {trip}");
    }
    assert!(trip["from"]["lat"].is_f64() && trip["to"]["lon"].is_f64());
    assert_eq!(s["rules"]["stop_min_s"], 180.0);

    // A range: only the second drive, given as ISO-8601.
    let from = beacon::isotime::format_ms(t0 + 1_501_000);
    let (_, second) = get(
        &server,
        &format!("/v1/devices/car/stats?from={from}&to={}", t0 + 2_101_000),
    )
    .await;
    assert_eq!(second["points"], 600);
    assert!(within(&second["distance_m"], 12_000.0, 0.03), "{second}");

    // Rules from the query: a stop must last 20 minutes, so the 15-minute one is no stop.
    let (_, long) = get(&server, "/v1/devices/car/stats?stop_min_s=1200").await;
    assert_eq!(long["stops"].as_array().unwrap().len(), 0, "{long}");
    assert_eq!(long["trips"].as_array().unwrap().len(), 1, "{long}");
    assert_eq!(long["rules"]["stop_min_s"], 1200.0);

    // Three answers of 2101, 600 and 2101 points were computed and counted.
    assert_eq!(server.metric("beacon_stats_computed_total").await, 3.0);
    assert_eq!(
        server.metric("beacon_stats_points_read_total").await,
        4802.0
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |_| {}).await;
    for (path, needle) in [
        ("/v1/devices/a%20b/stats", "device id"),
        ("/v1/devices/car/stats?from=soon", "from"),
        ("/v1/devices/car/stats?from=5&to=4", "after"),
        ("/v1/devices/car/stats?from=0&to=2678400001", "31 days"),
        ("/v1/devices/car/stats?stop_min_s=5", "stop_min_s"),
        ("/v1/devices/car/stats?stop_radius_m=-1", "stop_radius_m"),
        ("/v1/devices/car/stats?trip_min_m=NaN", "trip_min_m"),
        ("/v1/devices/car/stats?gap_s=1e9", "gap_s"),
        ("/v1/devices/car/stats?max_acc_m=x", "max_acc_m"),
        ("/v1/devices/car/stats?limit=5", "group"),
        ("/v1/devices/car/stats?from=1&from=2", "malformed"),
        ("/v1/groups/a%20b/stats", "group"),
        ("/v1/groups/g/stats?limit=0", "limit"),
        ("/v1/groups/g/stats?limit=101", "limit"),
        ("/v1/groups/g/stats?cursor=a%20b", "cursor"),
        ("/v1/groups/g/stats?gap_s=0", "gap_s"),
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn without_a_data_dir_there_are_no_statistics() {
    let server = TestServer::start().await;
    for path in ["/v1/devices/car/stats", "/v1/groups/g/stats"] {
        let (status, body) = get(&server, path).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("no_history")));
    }
    server.stop().await;
}

#[tokio::test]
async fn group_statistics_come_in_bounded_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |_| {}).await;
    let t0 = (now_ms() - 3_600_000) / 1000 * 1000;
    let ids: Vec<String> = (0..25).map(|i| format!("dev-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut b = Builder::new(t0);
        b.fix(1.0, 5.0);
        b.drive(10 + i as i64, 0.0, 10.0);
        post(&server, &format!("id={id}&groups=fleet"), None, &b.fixes).await;
    }
    // Another group's device is not listed.
    let mut other = Builder::new(t0);
    other.drive(5, 0.0, 10.0);
    post(&server, "id=elsewhere&groups=other", None, &other.fixes).await;

    // Default page: 20 devices, then the rest.
    let (status, first) = get(&server, "/v1/groups/fleet/stats").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["group"], "fleet");
    let devices = first["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 20);
    assert_eq!(first["next_cursor"], "dev-19");
    let line = &devices[3];
    assert_eq!(line["device"], "dev-03");
    assert_eq!(line["points"], 14);
    assert!(within(&line["distance_m"], 130.0, 0.05), "{line}");
    assert!(line.get("trips").is_none() && line.get("stops").is_none());
    assert_eq!(
        line["trip_count"], 0,
        "130 m is under the 200 m minimum trip"
    );

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get(
            &server,
            &format!("/v1/groups/fleet/stats?limit=7&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let devices = page["devices"].as_array().unwrap();
        assert!(devices.len() <= 7);
        seen.extend(
            devices
                .iter()
                .map(|d| d["device"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every device once, in id order");
    server.stop().await;
}

#[tokio::test]
async fn a_group_of_a_thousand_devices_is_read_in_pages_of_at_most_a_hundred() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |_| {}).await;
    let t0 = (now_ms() - 600_000) / 1000 * 1000;
    let client = reqwest::Client::new();
    for i in 0..1000 {
        let fixes = json!([
            {"lat": 52.5, "lon": 13.4, "ts": t0},
            {"lat": 52.501, "lon": 13.4, "ts": t0 + 10_000},
        ]);
        let response = client
            .post(server.http(&format!("/v1/positions?id=d{i:04}&groups=big")))
            .json(&fixes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    server.wait_metric(WRITTEN, |v| v >= 2000.0).await;

    let (status, refused) = get(&server, "/v1/groups/big/stats?limit=1000").await;
    assert_eq!(status, 400, "{refused}");
    let (_, first) = get(&server, "/v1/groups/big/stats").await;
    assert_eq!(first["devices"].as_array().unwrap().len(), 20);
    let mut seen = 0;
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = get(
            &server,
            &format!("/v1/groups/big/stats?limit=100&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let devices = page["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 100);
        for (k, line) in devices.iter().enumerate() {
            assert_eq!(line["device"], format!("d{:04}", seen + k));
            assert!(within(&line["distance_m"], 111.2, 0.01), "{line}");
        }
        seen += devices.len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!((pages, seen), (10, 1000));
    server.stop().await;
}

#[tokio::test]
async fn statistics_follow_the_rights_of_the_track() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |c| {
        c.auth.mode = beacon::config::AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let t0 = (now_ms() - 3_600_000) / 1000 * 1000;
    let mut b = Builder::new(t0);
    b.fix(1.0, 5.0);
    b.drive(60, 0.0, 10.0);
    let car = token("car", &["family"], "device");
    post(&server, "", Some(&car), &b.fixes).await;

    let stats = |path: String, bearer: Option<String>| {
        let server = &server;
        async move {
            let mut request = reqwest::Client::new().get(server.http(&path));
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let device = "/v1/devices/car/stats".to_owned();
    let group = "/v1/groups/family/stats".to_owned();

    // The device itself and a viewer of its group read it.
    let (status, own) = stats(device.clone(), Some(car.clone())).await;
    assert_eq!((status, own["points"].as_u64()), (200, Some(61)));
    let mum = token("mum", &["family"], "viewer");
    let (status, seen) = stats(device.clone(), Some(mum.clone())).await;
    assert_eq!((status, seen["points"].as_u64()), (200, Some(61)));
    assert!(within(&seen["distance_m"], 600.0, 0.03), "{seen}");
    let (status, page) = stats(group.clone(), Some(mum)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["devices"][0]["device"], "car");
    assert_eq!(page["devices"][0]["points"], 61);

    // A viewer of another group: nothing of the device (as the track), 403 on the group.
    let boss = token("boss", &["work"], "viewer");
    let (status, nothing) = stats(device.clone(), Some(boss.clone())).await;
    assert_eq!((status, nothing["points"].as_u64()), (200, Some(0)));
    assert_eq!(nothing["distance_m"], 0.0);
    let track = stats("/v1/devices/car/track".to_owned(), Some(boss.clone())).await;
    assert_eq!(track.1["count"], 0, "the track agrees");
    let (status, refused) = stats(group.clone(), Some(boss)).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (403, Some("forbidden"))
    );

    // No credentials at all.
    assert_eq!(stats(device, None).await.0, 401);
    assert_eq!(stats(group, None).await.0, 401);
    server.stop().await;
}

/// Reads a GPX document back with an XML parser: the track name, and per point its
/// coordinates as written and its speed.
fn read_gpx(text: &str) -> (String, Vec<(String, String)>, Vec<String>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let (mut name, mut points, mut speeds) = (String::new(), Vec::new(), Vec::new());
    let mut inside = Vec::<String>::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let tag = e.name().as_ref().to_owned();
                if tag == "trkpt" {
                    let attr = |key: &str| {
                        e.try_get_attribute(key)
                            .unwrap()
                            .unwrap()
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .unwrap()
                            .into_owned()
                    };
                    points.push((attr("lat"), attr("lon")));
                }
                inside.push(tag);
            }
            Event::End(_) => {
                inside.pop();
            }
            Event::Text(t) => {
                let text = t.xml10_content().into_owned();
                match inside.last().map(String::as_str) {
                    Some("name") => name.push_str(&text),
                    Some("gpxtpx:speed") => speeds.push(text),
                    _ => {}
                }
            }
            Event::GeneralRef(r) if inside.last().map(String::as_str) == Some("name") => {
                name.push_str(quick_xml::escape::resolve_xml_entity(&r).unwrap());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (name, points, speeds)
}

#[tokio::test]
async fn downloads_carry_the_name_speed_and_a_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |_| {}).await;
    let name = "Tom's <van> & \"co\"";
    let response = reqwest::Client::new()
        .put(server.http("/v1/devices/van-1/profile?id=van-1"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let t0 = (now_ms() - 600_000) / 1000 * 1000;
    // 13.4005 + 0.0000000000000001 is what a float sum may hand over.
    let fixes = vec![
        json!({"lat": 52.5, "lon": 13.400500000000001, "ts": t0, "spd": 12.5, "hdg": 90}),
        json!({"lat": 52.5001, "lon": 13.4007, "ts": t0 + 1000, "spd": 13.25}),
        json!({"lat": 52.5002, "lon": 13.4009, "ts": t0 + 2000}),
    ];
    post(&server, "id=van-1&groups=g", None, &fixes).await;

    let response = server.get("/v1/devices/van-1/track?format=gpx").await;
    assert_eq!(response.headers()["content-type"], "application/gpx+xml");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"van-1.gpx\""
    );
    let text = response.text().await.unwrap();
    assert!(!text.contains("13.400500000000001"), "{text}");
    let (read_name, points, speeds) = read_gpx(&text);
    assert_eq!(read_name, name, "{text}");
    assert_eq!(points[0], ("52.5".to_owned(), "13.4005".to_owned()));
    assert_eq!(points.len(), 3);
    assert_eq!(speeds, ["12.5", "13.25"]);
    assert!(text.contains("<gpxtpx:course>90</gpxtpx:course>"), "{text}");
    assert!(text.contains("xmlns:gpxtpx=\""), "{text}");

    let response = server.get("/v1/devices/van-1/track?format=geojson").await;
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"van-1.geojson\""
    );
    let text = response.text().await.unwrap();
    assert!(!text.contains("13.400500000000001"), "{text}");
    let feature: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(feature["properties"]["name"], name);
    assert_eq!(
        feature["geometry"]["coordinates"][0],
        json!([13.4005, 52.5])
    );
    server.stop().await;
}
