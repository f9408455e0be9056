//! HTTP routes: health, metrics, snapshots, ingest and the page.

mod common;

use common::TestServer;
use serde_json::{Value, json};

async fn post(server: &TestServer, query: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.http(&format!("/v1/positions?{query}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await.status(), 200);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "beacon_connections",
        "beacon_messages_in_total",
        "beacon_frames_out_total",
        "beacon_bytes_out_total",
        "beacon_batches_total",
        "beacon_drops_total",
        "beacon_resyncs_total",
        "beacon_errors_total",
        "beacon_tick_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_page_is_served() {
    let server = TestServer::start().await;
    let page = server.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().to_lowercase().contains("beacon"));
    assert_eq!(server.get("/no/such/file.js").await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn post_one_fix_reaches_sockets_and_snapshots() {
    let server = TestServer::start().await;
    let mut v = server.viewer("v", "fleet").await;
    let (status, body) = post(
        &server,
        "id=truck-1&groups=fleet",
        r#"{"type":"pos","lat":48.85,"lon":2.35,"spd":12.5,"batt":77}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    let u = v.until_update(|u| u["id"] == "truck-1").await;
    assert_eq!(u["lat"], 48.85);
    assert_eq!(u["online"], true);

    let snapshot = server.get_json("/v1/groups/fleet/positions").await;
    assert_eq!(snapshot["group"], "fleet");
    assert_eq!(snapshot["devices"][0]["id"], "truck-1");
    assert_eq!(snapshot["devices"][0]["spd"], 12.5);

    let geo = server
        .get("/v1/groups/fleet/positions?format=geojson")
        .await;
    assert_eq!(geo.headers()["content-type"], "application/geo+json");
    let geo: Value = geo.json().await.unwrap();
    assert_eq!(geo["type"], "FeatureCollection");
    let feature = &geo["features"][0];
    assert_eq!(
        feature["geometry"],
        json!({"type": "Point", "coordinates": [2.35, 48.85]})
    );
    assert_eq!(feature["properties"]["id"], "truck-1");
    assert_eq!(feature["properties"]["batt"], 77.0);
    assert!(feature["properties"].get("lat").is_none());
    server.stop().await;
}

#[tokio::test]
async fn post_a_list_is_all_or_nothing() {
    let server = TestServer::start().await;
    let (status, body) = post(
        &server,
        "id=t&groups=g",
        &format!(
            r#"[{{"lat":1,"lon":1,"ts":{}}},{{"lat":2,"lon":2,"ts":{}}}]"#,
            beacon::model::now_ms() - 2000,
            beacon::model::now_ms() - 1000
        ),
    )
    .await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(2)));
    let (status, body) = post(
        &server,
        "id=u&groups=g",
        r#"[{"lat":1,"lon":1},{"lat":1,"lon":200}]"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_position");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("[1]: lon must"),
        "{body}"
    );
    let snapshot = server.get_json("/v1/groups/g/positions").await;
    let devices = snapshot["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "nothing of the refused list was applied");
    assert_eq!(devices[0]["id"], "t");
    assert_eq!(devices[0]["lat"], 2.0, "the latest of the list wins");
    server.stop().await;
}

#[tokio::test]
async fn post_refusals_name_the_problem() {
    let server = TestServer::start().await;
    for (query, body, status, needle) in [
        ("groups=g", r#"{"lat":1,"lon":1}"#, 400, "id is required"),
        (
            "id=a&role=viewer",
            r#"{"lat":1,"lon":1}"#,
            403,
            "viewers may not",
        ),
        ("id=a", r#"{"lat":1}"#, 400, "lon is required"),
        ("id=a", r#"{"lat":1,"lon":"east"}"#, 400, "lon"),
        ("id=a", r#"nonsense"#, 400, "unparseable"),
        ("id=a", r#"[]"#, 400, "no fix"),
    ] {
        let (got, body) = post(&server, query, body).await;
        assert_eq!(got, status, "{query} {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let too_big = format!("[{}]", vec![r#"{"lat":1,"lon":1}"#; 20_000].join(","));
    let (status, _) = post(&server, "id=a", &too_big).await;
    assert_eq!(status, 413);
    server.stop().await;
}

#[tokio::test]
async fn http_devices_go_offline_after_the_stale_window() {
    let server = TestServer::with(|c| c.hub.stale_secs = 1).await;
    let mut v = server.viewer("v", "g").await;
    let (status, _) = post(&server, "id=phone&groups=g", r#"{"lat":1,"lon":1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(v.until_update(|u| u["id"] == "phone").await["online"], true);
    let batch = v.until("batch").await;
    assert_eq!(batch["offline"], json!(["phone"]), "{batch}");
    let snapshot = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(snapshot["devices"][0]["online"], false);
    server.stop().await;
}

#[tokio::test]
async fn positions_past_retention_are_forgotten() {
    let server = TestServer::with(|c| {
        c.hub.stale_secs = 1;
        c.hub.retention_secs = 2;
    })
    .await;
    let (status, _) = post(&server, "id=old&groups=g", r#"{"lat":1,"lon":1}"#).await;
    assert_eq!(status, 200);
    common::eventually(|| async {
        let body: Value = server
            .get("/v1/groups/g/positions")
            .await
            .json()
            .await
            .ok()?;
        body["devices"].as_array()?.is_empty().then_some(())
    })
    .await;
    assert_eq!(server.metric("beacon_positions").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn bad_group_and_format_are_refused() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/v1/groups/a%20b/positions").await.status(), 400);
    assert_eq!(
        server
            .get("/v1/groups/g/positions?format=kml")
            .await
            .status(),
        400
    );
    let empty = server.get_json("/v1/groups/unknown/positions").await;
    assert_eq!(empty["devices"], json!([]));
    server.stop().await;
}
