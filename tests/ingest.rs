//! Phone-app ingest against the real server, with requests in each real client's exact format:
//! OsmAnd (query string), Traccar Client up to 8 (POST with a query string), urlencoded forms,
//! Traccar Client 9+ (JSON), OwnTracks Android (headers) and iOS (topic in the payload).

mod common;

use beacon::model::now_ms;
use common::{TestServer, eventually};
use serde_json::{Value, json};

/// Request headers as name-value pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// A request and what came back.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, server.http(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body.to_owned()).send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: response.text().await.unwrap(),
    }
}

async fn snapshot(server: &TestServer, group: &str) -> Vec<Value> {
    let body = server
        .get_json(&format!("/v1/groups/{group}/positions"))
        .await;
    body["devices"].as_array().unwrap().clone()
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-6)
}

/// Seconds since the epoch, a little in the past (as a phone's fix would be).
fn recent_s() -> i64 {
    now_ms() / 1000 - 30
}

#[tokio::test]
async fn osmand_query_string_reaches_sockets_and_snapshots() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("v", "default").await;
    let ts = recent_s();
    // OsmAnd's online tracking: a GET with every field in the query; speed in knots.
    let path = format!(
        "/v1/ingest/osmand?id=357938020541718&lat=52.520008&lon=13.404954&timestamp={ts}\
         &hdop=1.1&altitude=38.2&speed=10.0&bearing=271.5&accuracy=6.0&batt=87.0"
    );
    let answer = request(&server, "GET", &path, &[], "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "", "OsmAnd expects an empty body");

    let u = viewer.until_update(|u| u["id"] == "357938020541718").await;
    assert_eq!(
        (u["lat"].as_f64(), u["lon"].as_f64()),
        (Some(52.520008), Some(13.404954))
    );
    assert_eq!(u["ts"], ts * 1000);
    assert!(
        close(&u["spd"], 10.0 * 1852.0 / 3600.0),
        "knots become m/s: {u}"
    );
    assert_eq!(
        (u["hdg"].as_f64(), u["alt"].as_f64()),
        (Some(271.5), Some(38.2))
    );
    assert_eq!(
        (u["acc"].as_f64(), u["batt"].as_f64()),
        (Some(6.0), Some(87.0))
    );
    assert_eq!(u["online"], true);
    let devices = snapshot(&server, "default").await;
    assert_eq!(devices[0]["id"], "357938020541718");
    server.stop().await;
}

#[tokio::test]
async fn traccar_client_legacy_post_and_form_bodies() {
    let server = TestServer::start().await;
    let ts = recent_s();
    // Traccar Client up to version 8: POST, fields in the query, empty body.
    let path = format!(
        "/v1/ingest/osmand?groups=fleet&id=48241179&timestamp={ts}&lat=48.8566&lon=2.3522\
         &speed=0.0&bearing=0.0&altitude=35.0&accuracy=12.0&batt=64.0&charge=true"
    );
    let answer = request(&server, "POST", &path, &[], "").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));
    // The same fields in a urlencoded form body (the protocol's POST form).
    let form = format!(
        "id=form-phone&timestamp={}&lat=48.8570&lon=2.3530&speed=2.0&heading=90&batt=50",
        ts + 1
    );
    let answer = request(
        &server,
        "POST",
        "/v1/ingest/osmand?groups=fleet",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));

    let devices = snapshot(&server, "fleet").await;
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["48241179", "form-phone"]);
    assert_eq!(devices[0]["spd"], 0.0);
    assert_eq!(devices[0]["batt"], 64.0);
    assert_eq!(devices[1]["hdg"], 90.0);
    assert!(close(&devices[1]["spd"], 2.0 * 1852.0 / 3600.0));
    assert_eq!(devices[1]["ts"], (ts + 1) * 1000);
    server.stop().await;
}

#[tokio::test]
async fn traccar_client_json_body() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("v", "default").await;
    let when = beacon::isotime::format_ms(now_ms() - 20_000);
    // Traccar Client 9+: the location SDK's own JSON; speed already in m/s, battery 0..1,
    // -1 for what the phone does not know.
    let body = json!({
        "location": {
            "timestamp": when,
            "coords": {
                "latitude": 40.416775, "longitude": -3.70379, "accuracy": 4.8,
                "speed": 3.2, "heading": -1, "altitude": 657.1
            },
            "is_moving": true,
            "odometer": 1834.2,
            "event": "motionchange",
            "battery": {"level": 0.83, "is_charging": false},
            "activity": {"type": "walking"},
            "extras": {}
        },
        "device_id": "48241179"
    });
    let answer = request(
        &server,
        "POST",
        "/v1/ingest/osmand",
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));
    let u = viewer.until_update(|u| u["id"] == "48241179").await;
    assert_eq!(
        (u["lat"].as_f64(), u["lon"].as_f64()),
        (Some(40.416775), Some(-3.70379))
    );
    assert_eq!(u["ts"], beacon::isotime::parse_ms(&when).unwrap());
    assert_eq!(u["spd"], 3.2);
    assert!(close(&u["batt"], 83.0), "{u}");
    assert!(u.get("hdg").is_none(), "-1 is unknown, not a heading: {u}");
    assert_eq!(u["alt"], 657.1);
    server.stop().await;
}

#[tokio::test]
async fn token_in_the_path_and_the_default_group() {
    let server = TestServer::with(|c| {
        c.ingest.default_group = beacon::model::GroupId::parse("family").unwrap();
    })
    .await;
    // With --auth none a token (path or query) is accepted and ignored.
    let answer = request(
        &server,
        "GET",
        "/v1/ingest/osmand/some-token?id=kid&lat=1&lon=2",
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = request(
        &server,
        "GET",
        "/v1/ingest/osmand?id=van&lat=3&lon=4&groups=a,b&token=x",
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(snapshot(&server, "family").await[0]["id"], "kid");
    assert!(snapshot(&server, "default").await.is_empty());
    for group in ["a", "b"] {
        assert_eq!(snapshot(&server, group).await[0]["id"], "van");
    }
    server.stop().await;
}

#[tokio::test]
async fn osmand_refusals_name_the_field() {
    let server = TestServer::start().await;
    let future = now_ms() / 1000 + 3600;
    let cases: Vec<(String, &str, &str)> = vec![
        ("lat=1&lon=2".into(), "", "id is required"),
        ("id=a&lon=2".into(), "", "lat is required"),
        ("id=a&lat=1".into(), "", "lon is required"),
        ("id=a&lat=95&lon=2".into(), "", "lat must be"),
        ("id=a&lat=1&lon=east".into(), "", "lon must be a number"),
        (
            "id=a&lat=1&lon=2&timestamp=noon".into(),
            "",
            "timestamp must be",
        ),
        (
            format!("id=a&lat=1&lon=2&timestamp={future}"),
            "",
            "timestamp must not",
        ),
        ("id=a&lat=1&lon=2&bearing=400".into(), "", "bearing must be"),
        ("id=a%20b&lat=1&lon=2".into(), "", "id may only"),
        ("id=a&lat=1&lon=2&groups=x%20y".into(), "", "group"),
        ("".into(), r#"{"device_id":"a"}"#, "location is required"),
        (
            "".into(),
            r#"{"device_id":"a","location":{"coords":{"latitude":1}}}"#,
            "location.coords.longitude is required",
        ),
        ("".into(), r#"{"device_id":"a","location":"#, "unparseable"),
    ];
    for (query, body, needle) in cases {
        let answer = request(
            &server,
            "POST",
            &format!("/v1/ingest/osmand?{query}"),
            &[],
            body,
        )
        .await;
        assert_eq!(answer.status, 400, "{query} {body}: {}", answer.body);
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{query} {body}: {message}");
    }
    // Keys the server does not know never cause an error.
    let answer = request(
        &server,
        "GET",
        "/v1/ingest/osmand?id=a&lat=1&lon=2&valid=true&cell=310,410,1,2&wifi=x&driverUniqueId=7",
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Bodies are bounded like every other ingest route.
    let huge = format!("id=a&lat=1&lon=2&pad={}", "x".repeat(300 * 1024));
    let answer = request(&server, "POST", "/v1/ingest/osmand", &[], &huge).await;
    assert_eq!(answer.status, 413);
    server.stop().await;
}

/// A location message as the OwnTracks Android app posts it in HTTP mode.
fn android_location(tst: i64) -> Value {
    json!({
        "_type": "location", "BSSID": "b0:4e:26:11:22:33", "SSID": "home-wifi",
        "acc": 12, "alt": 48, "batt": 81, "bs": 1, "conn": "w", "created_at": tst + 2,
        "lat": 52.5162, "lon": 13.3777, "m": 1, "t": "u", "tid": "el", "tst": tst,
        "vac": 3, "vel": 18, "cog": 90
    })
}

#[tokio::test]
async fn owntracks_android_with_headers() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("v", "default").await;
    let tst = recent_s();
    let answer = request(
        &server,
        "POST",
        "/v1/ingest/owntracks",
        &[
            ("content-type", "application/json"),
            ("x-limit-u", "jane"),
            ("x-limit-d", "pixel"),
        ],
        &android_location(tst).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .content_type
            .as_deref()
            .unwrap()
            .starts_with("application/json")
    );
    let answer = answer.json();
    let own = answer
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["topic"] == "owntracks/jane/pixel")
        .unwrap_or_else(|| panic!("the caller is in the answer: {answer}"));
    assert_eq!(own["_type"], "location");
    assert_eq!(own["tid"], "el");
    assert_eq!(
        (own["tst"].as_i64(), own["vel"].as_i64()),
        (Some(tst), Some(18))
    );

    let u = viewer.until_update(|u| u["id"] == "jane:pixel").await;
    assert_eq!(u["ts"], tst * 1000);
    assert!(close(&u["spd"], 5.0), "18 km/h is 5 m/s: {u}");
    assert_eq!(
        (u["hdg"].as_f64(), u["batt"].as_f64()),
        (Some(90.0), Some(81.0))
    );
    assert_eq!(
        (u["acc"].as_f64(), u["alt"].as_f64()),
        (Some(12.0), Some(48.0))
    );
    server.stop().await;
}

#[tokio::test]
async fn owntracks_answer_shows_the_groups_other_devices() {
    let server = TestServer::start().await;
    let mut bus = server.device("bus-17", "family").await;
    bus.send(json!({"type": "pos", "lat": 52.5, "lon": 13.4, "spd": 10.0}))
        .await;
    eventually(|| async { (!snapshot(&server, "family").await.is_empty()).then_some(()) }).await;

    let answer = request(
        &server,
        "POST",
        "/v1/ingest/owntracks?groups=family",
        &[("x-limit-u", "jane"), ("x-limit-d", "pixel")],
        &android_location(recent_s()).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    let messages = answer.as_array().unwrap();
    assert_eq!(messages.len(), 2, "{answer}");
    let friend = messages
        .iter()
        .find(|m| m["topic"] == "owntracks/beacon/bus-17")
        .unwrap_or_else(|| panic!("the friend is in the answer: {answer}"));
    assert_eq!(friend["_type"], "location");
    assert_eq!(friend["tid"], "17");
    assert_eq!(
        (friend["lat"].as_f64(), friend["lon"].as_f64()),
        (Some(52.5), Some(13.4))
    );
    assert_eq!(friend["vel"], 36, "10 m/s is 36 km/h");
    assert!(
        messages
            .iter()
            .any(|m| m["topic"] == "owntracks/jane/pixel")
    );
    // And the socket device sees the phone.
    let u = bus.until_update(|u| u["id"] == "jane:pixel").await;
    assert_eq!(u["lat"], 52.5162);
    server.stop().await;
}

#[tokio::test]
async fn owntracks_without_headers_topic_or_basic_auth() {
    let server = TestServer::start().await;
    // iOS in HTTP mode puts the topic in the payload and sends no X-Limit headers.
    let ios = json!({
        "_type": "location", "acc": 65, "alt": 12, "batt": 40, "bs": 1, "conn": "m",
        "lat": 51.5007, "lon": -0.1246, "tid": "ne", "tst": recent_s(), "vac": 10, "vel": 0,
        "topic": "owntracks/tom/Tom's iPhone", "m": 2
    });
    let answer = request(
        &server,
        "POST",
        "/v1/ingest/owntracks",
        &[("content-type", "application/json")],
        &ios.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Basic auth: the user name names the user, the password would carry a token.
    let answer = request(
        &server,
        "POST",
        "/v1/ingest/owntracks?d=ipad",
        &[("authorization", "Basic YW5uYTpzM2NyZXQ=")], // anna:s3cret
        &android_location(recent_s()).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let devices = snapshot(&server, "default").await;
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["anna:ipad", "tom:Tom-s-iPhone"]);
    server.stop().await;
}

#[tokio::test]
async fn owntracks_ignores_other_types_and_refuses_what_it_cannot_map() {
    let server = TestServer::start().await;
    let headers = [("x-limit-u", "jane"), ("x-limit-d", "pixel")];
    for body in [
        // A transition is an event (tests/events.rs); it is not a position either.
        json!({"_type": "transition", "event": "enter", "desc": "Home", "tst": recent_s(),
               "lat": 1, "lon": 2, "acc": 5, "t": "c", "tid": "el", "wtst": recent_s()})
        .to_string(),
        json!({"_type": "lwt", "tst": recent_s()}).to_string(),
        json!({"_type": "encrypted", "data": "bm9wZQ=="}).to_string(),
        json!({"_type": "waypoint", "desc": "Home", "lat": 1, "lon": 2, "rad": 50, "tst": 1})
            .to_string(),
        String::new(),
    ] {
        let answer = request(&server, "POST", "/v1/ingest/owntracks", &headers, &body).await;
        assert_eq!((answer.status, answer.json()), (200, json!([])), "{body}");
    }
    assert!(
        snapshot(&server, "default").await.is_empty(),
        "nothing was published"
    );

    let location = android_location(recent_s()).to_string();
    let bad_location = json!({"_type": "location", "lat": 1, "tst": recent_s()}).to_string();
    let cases: [(Headers<'_>, &str, &str); 5] = [
        (&headers, "{nope", "unparseable"),
        (&headers, &bad_location, "lon is required"),
        (&[], &location, "user unknown"),
        (&[("x-limit-u", "jane")], &location, "device unknown"),
        (
            &[("x-limit-u", "!!!"), ("x-limit-d", "pixel")],
            &location,
            "user name",
        ),
    ];
    for (headers, body, needle) in cases {
        let answer = request(&server, "POST", "/v1/ingest/owntracks", headers, body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{message}");
    }
    // GET is not part of the protocol.
    let answer = request(&server, "GET", "/v1/ingest/owntracks", &headers, "").await;
    assert_eq!(answer.status, 405);
    server.stop().await;
}

#[tokio::test]
async fn app_devices_go_offline_after_the_stale_window() {
    let server = TestServer::with(|c| c.hub.stale_secs = 1).await;
    let mut viewer = server.viewer("v", "default").await;
    let answer = request(
        &server,
        "GET",
        "/v1/ingest/osmand?id=osm&lat=1&lon=1",
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    let answer = request(
        &server,
        "POST",
        "/v1/ingest/owntracks",
        &[("x-limit-u", "jane"), ("x-limit-d", "pixel")],
        &android_location(recent_s()).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let mut offline = Vec::new();
    while offline.len() < 2 {
        let batch = viewer.until("batch").await;
        for u in batch["updates"].as_array().unwrap() {
            assert_eq!(u["online"], true, "reports arrive online: {u}");
        }
        offline.extend(
            batch["offline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned()),
        );
    }
    offline.sort();
    assert_eq!(offline, ["jane:pixel", "osm"]);
    let devices = snapshot(&server, "default").await;
    assert!(devices.iter().all(|d| d["online"] == false), "{devices:?}");
    assert_eq!(devices.len(), 2, "offline devices stay in snapshots");
    server.stop().await;
}
