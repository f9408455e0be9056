//! Which fixes are kept, on every route: clocks that were never set (before 2000) are refused,
//! fixes too old for the history retention are refused (sockets, `POST /v1/positions`) or
//! answered 200 and counted (phone apps), and the apps' "unknown" values are read as unknown.

mod common;

use beacon::model::now_ms;
use common::TestServer;
use serde_json::{Value, json};

const TOO_OLD: &str = "beacon_ingest_too_old_total";

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let response = server.get(path).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut request = reqwest::Client::new().post(server.http(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body.to_owned()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn snapshot(server: &TestServer, group: &str) -> Vec<Value> {
    let body = server
        .get_json(&format!("/v1/groups/{group}/positions"))
        .await;
    body["devices"].as_array().unwrap().clone()
}

/// The next error frame on a socket, after a fix was sent.
async fn refused(client: &mut common::Client, fix: Value) -> Value {
    client.send(fix).await;
    client.until("error").await
}

#[tokio::test]
async fn a_clock_before_2000_is_refused_naming_ts_everywhere() {
    let server = TestServer::start().await;
    for codec in [None, Some("beacon.v1.msgpack")] {
        let mut device = server
            .connect_with("id=d&groups=g&role=device", codec)
            .await;
        device.skip_greeting(1).await;
        for ts in [0i64, 946_684_799_999] {
            let error = refused(
                &mut device,
                json!({"type": "pos", "lat": 1, "lon": 2, "ts": ts, "seq": 7}),
            )
            .await;
            assert_eq!(error["code"], "invalid_position", "{error}");
            assert_eq!(error["seq"], 7);
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("ts must not be before 2000"),
                "{error}"
            );
        }
    }

    let (status, body) = post(
        &server,
        "/v1/positions?id=r&groups=g",
        &[("content-type", "application/json")],
        r#"{"lat":1,"lon":2,"ts":0}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["error"], "invalid_position");
    assert!(body.contains("ts must not be before 2000"), "{body}");

    // OsmAnd and Traccar Client up to 8: `timestamp=0`.
    let (status, body) = get(&server, "/v1/ingest/osmand?id=o&lat=1&lon=2&timestamp=0").await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["error"], "invalid_position");
    assert!(body.contains("timestamp must not be before 2000"), "{body}");

    // Traccar Client 9: an ISO date in 1970.
    let (status, body) = post(
        &server,
        "/v1/ingest/osmand",
        &[("content-type", "application/json")],
        r#"{"device_id":"t9","location":{"timestamp":"1970-01-01T00:00:00.000Z",
            "coords":{"latitude":1,"longitude":2}}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("location.timestamp must not be before 2000"),
        "{body}"
    );

    // OwnTracks: `tst: 0`.
    let (status, body) = post(
        &server,
        "/v1/ingest/owntracks",
        &[
            ("content-type", "application/json"),
            ("x-limit-u", "jane"),
            ("x-limit-d", "pixel"),
        ],
        r#"{"_type":"location","lat":1,"lon":2,"tst":0,"tid":"px"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["error"], "invalid_position");
    assert!(body.contains("tst must not be before 2000"), "{body}");

    assert!(snapshot(&server, "g").await.is_empty());
    assert!(snapshot(&server, "default").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn without_a_data_dir_retention_secs_bounds_the_age_of_a_fix() {
    let server = TestServer::with(|c| c.hub.retention_secs = 3600).await;
    let two_hours_ago = now_ms() - 2 * 3_600_000;
    let ten_minutes_ago = now_ms() - 600_000;

    let mut device = server.device("d", "g").await;
    let error = refused(
        &mut device,
        json!({"type": "pos", "lat": 1, "lon": 2, "ts": two_hours_ago, "seq": 3}),
    )
    .await;
    assert_eq!(error["code"], "invalid_position", "{error}");
    assert_eq!(error["seq"], 3);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("ts is older"),
        "{error}"
    );
    device
        .send(json!({"type": "pos", "lat": 1, "lon": 2, "ts": ten_minutes_ago}))
        .await;
    device.until_update(|u| u["id"] == "d").await;

    let (status, body) = post(
        &server,
        "/v1/positions?id=r&groups=g",
        &[("content-type", "application/json")],
        &format!(r#"{{"lat":1,"lon":2,"ts":{two_hours_ago}}}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["error"], "invalid_position");
    assert!(
        body.contains("ts is older than the history retention"),
        "{body}"
    );

    // Phone apps get 200 so their queue moves on; the fix is counted, not shown.
    assert_eq!(server.metric(TOO_OLD).await, 0.0);
    let (status, body) = get(
        &server,
        &format!(
            "/v1/ingest/osmand?id=old&groups=g&lat=1&lon=2&timestamp={}",
            two_hours_ago / 1000
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &server,
        "/v1/ingest/owntracks?groups=g",
        &[
            ("content-type", "application/json"),
            ("x-limit-u", "jane"),
            ("x-limit-d", "pixel"),
        ],
        &json!({"_type": "location", "lat": 1, "lon": 2, "tst": two_hours_ago / 1000}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.metric(TOO_OLD).await, 2.0);
    let ids: Vec<Value> = snapshot(&server, "g")
        .await
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("d")], "only the fresh socket fix is kept");
    server.stop().await;
}

#[tokio::test]
async fn with_a_data_dir_the_history_retention_bounds_the_age_of_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let server = TestServer::with(move |c| {
        c.data_dir = Some(path);
        c.store.history_retention_days = 1;
        // Shorter than the history's window: it is not the bound with a data directory.
        c.hub.retention_secs = 60;
    })
    .await;
    let two_hours_ago = now_ms() - 2 * 3_600_000;
    let two_days_ago = now_ms() - 2 * 86_400_000;
    let body = |ts: i64| format!(r#"{{"lat":1,"lon":2,"ts":{ts}}}"#);
    let headers = [("content-type", "application/json")];
    let (status, answer) = post(
        &server,
        "/v1/positions?id=r&groups=g",
        &headers,
        &body(two_hours_ago),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post(
        &server,
        "/v1/positions?id=r&groups=g",
        &headers,
        &body(two_days_ago),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("ts is older than the history retention"),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_battery_and_accuracy_are_left_out() {
    let server = TestServer::start().await;
    let ts = now_ms() / 1000 - 10;
    // OsmAnd: `batt=-1` when the level is unknown.
    let (status, body) = get(
        &server,
        &format!("/v1/ingest/osmand?id=osm&lat=1&lon=2&timestamp={ts}&batt=-1&accuracy=8"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Traccar Client 8: POST with `accuracy=0.0` for "not given".
    let (status, body) = post(
        &server,
        &format!("/v1/ingest/osmand?id=tc8&lat=1&lon=2&timestamp={ts}&accuracy=0.0&batt=55"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let devices = snapshot(&server, "default").await;
    let find = |id: &str| {
        devices
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {devices:?}"))
            .clone()
    };
    let osm = find("osm");
    assert!(osm.get("batt").is_none(), "{osm}");
    assert_eq!(osm["acc"], 8.0);
    let tc8 = find("tc8");
    assert!(tc8.get("acc").is_none(), "{tc8}");
    assert_eq!(tc8["batt"], 55.0);
    server.stop().await;
}
