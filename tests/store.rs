//! The durable store against the real server: restart survival, history queries, downsampling,
//! retention and the per-device bound. Each test keeps its data in its own temporary directory.

mod common;

use std::path::Path;

use beacon::Config;
use beacon::model::now_ms;
use common::{TestServer, eventually};
use serde_json::{Value, json};

const TRACK_POINTS: &str = "beacon_store_track_points_total";
const WRITTEN: &str = "beacon_store_positions_written_total";

async fn with_store(dir: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = dir.to_owned();
    TestServer::with(move |c| {
        c.data_dir = Some(dir);
        adjust(c);
    })
    .await
}

/// Reports one fix through the OsmAnd route; `ts` in ms.
async fn report(server: &TestServer, id: &str, groups: &str, lat: f64, lon: f64, ts: i64) {
    let path = format!(
        "/v1/ingest/osmand?id={id}&groups={groups}&lat={lat}&lon={lon}&timestamp={ts}&altitude=12.5"
    );
    let response = server.get(&path).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// Reports one fix and waits until the store has written it (so the next fix is not
/// coalesced with it by the hub's tick).
async fn report_written(server: &TestServer, id: &str, lat: f64, ts: i64) {
    let before = server.metric(WRITTEN).await;
    report(server, id, "g", lat, 13.0, ts).await;
    server.wait_metric(WRITTEN, |v| v > before).await;
}

async fn track(server: &TestServer, id: &str, query: &str) -> (u16, Value) {
    let response = server.get(&format!("/v1/devices/{id}/track?{query}")).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn times(track: &Value) -> Vec<i64> {
    track["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ts"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn last_known_positions_and_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 60_000;
    let server = with_store(dir.path(), |c| c.store.history_min_interval_secs = 0).await;
    for i in 0..3 {
        let before = server.metric(TRACK_POINTS).await;
        report(
            &server,
            "car",
            "g1,g2",
            52.0 + i as f64,
            13.0,
            t0 + i * 1000,
        )
        .await;
        server.wait_metric(TRACK_POINTS, |v| v > before).await;
    }
    // Stopped right after it was accepted: the graceful shutdown must still store it.
    report(&server, "bike", "g1", 48.0, 2.0, t0 + 5000).await;
    server.stop().await;

    let server = with_store(dir.path(), |c| c.store.history_min_interval_secs = 0).await;
    let snapshot = server.get_json("/v1/groups/g1/positions").await;
    let devices = snapshot["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{snapshot}");
    let bike = &devices[0];
    assert_eq!(
        (bike["id"].as_str(), bike["lat"].as_f64()),
        (Some("bike"), Some(48.0))
    );
    assert_eq!(bike["ts"], t0 + 5000);
    let car = &devices[1];
    assert_eq!(
        (car["id"].as_str(), car["lat"].as_f64()),
        (Some("car"), Some(54.0))
    );
    assert_eq!(
        (car["online"].as_bool(), car["alt"].as_f64()),
        (Some(false), Some(12.5))
    );

    // A socket client sees the loaded state in its snapshot, offline.
    let mut viewer = server.connect("id=v&groups=g2&role=viewer").await;
    viewer.expect("welcome").await;
    let snapshot = viewer.expect("snapshot").await;
    assert_eq!(
        snapshot["devices"].as_array().unwrap().len(),
        1,
        "{snapshot}"
    );
    assert_eq!(snapshot["devices"][0]["id"], "car");
    assert_eq!(snapshot["devices"][0]["online"], false);

    let (status, car) = track(&server, "car", "").await;
    assert_eq!(status, 200, "{car}");
    assert_eq!(times(&car), [t0, t0 + 1000, t0 + 2000]);
    assert_eq!(car["points"][0]["lat"], 52.0);
    let (_, bike) = track(&server, "bike", "").await;
    assert_eq!(times(&bike), [t0 + 5000]);

    // Loading did not write anything back.
    assert_eq!(server.metric(WRITTEN).await, 0.0);
    // A new fix after the restart is newer and wins, and goes online.
    report(&server, "car", "g1,g2", 55.0, 13.0, t0 + 9000).await;
    let u = viewer.until_update(|u| u["id"] == "car").await;
    assert_eq!(
        (u["lat"].as_f64(), u["online"].as_bool()),
        (Some(55.0), Some(true))
    );
    server.stop().await;
}

#[tokio::test]
async fn history_by_range_limit_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |c| c.store.history_min_interval_secs = 0).await;
    let t0 = (now_ms() - 60_000) / 1000 * 1000;
    for i in 0..5 {
        report_written(&server, "bus-1", 50.0 + i as f64, t0 + i * 1000).await;
    }
    eventually(|| async {
        let (_, body) = track(&server, "bus-1", "").await;
        (body["count"] == 5).then_some(())
    })
    .await;

    let (_, all) = track(&server, "bus-1", "").await;
    assert_eq!(all["device"], "bus-1");
    assert_eq!(all["truncated"], false);
    assert_eq!(
        times(&all),
        (0..5).map(|i| t0 + i * 1000).collect::<Vec<_>>()
    );
    let first = &all["points"][0];
    assert_eq!(
        (first["lat"].as_f64(), first["lon"].as_f64()),
        (Some(50.0), Some(13.0))
    );
    assert_eq!(first["alt"], 12.5);
    assert!(first["rts"].as_i64().unwrap() >= t0);

    // The newest `limit` points, oldest first, and a flag saying older ones exist.
    let (_, newest) = track(&server, "bus-1", "limit=2").await;
    assert_eq!(times(&newest), [t0 + 3000, t0 + 4000]);
    assert_eq!(newest["truncated"], true);
    let (_, range) = track(
        &server,
        "bus-1",
        &format!("from={}&to={}", t0 + 1000, t0 + 3000),
    )
    .await;
    assert_eq!(times(&range), [t0 + 1000, t0 + 2000, t0 + 3000]);
    assert_eq!(range["truncated"], false);
    let iso = beacon::isotime::format_ms(t0 + 3000);
    let (_, since) = track(&server, "bus-1", &format!("from={iso}")).await;
    assert_eq!(times(&since), [t0 + 3000, t0 + 4000]);

    let geo = server
        .get("/v1/devices/bus-1/track?format=geojson&limit=3")
        .await;
    assert_eq!(geo.headers()["content-type"], "application/geo+json");
    let geo: Value = geo.json().await.unwrap();
    assert_eq!(geo["type"], "Feature");
    assert_eq!(geo["geometry"]["type"], "LineString");
    assert_eq!(
        geo["geometry"]["coordinates"],
        json!([[13.0, 52.0], [13.0, 53.0], [13.0, 54.0]])
    );
    assert_eq!(geo["properties"]["times"][0], t0 + 2000);

    let gpx = server.get("/v1/devices/bus-1/track?format=gpx").await;
    assert_eq!(gpx.headers()["content-type"], "application/gpx+xml");
    let gpx = gpx.text().await.unwrap();
    assert!(gpx.contains("<gpx version=\"1.1\""), "{gpx}");
    assert_eq!(gpx.matches("<trkpt ").count(), 5);
    assert!(
        gpx.contains("<trkpt lat=\"50\" lon=\"13\"><ele>12.5</ele><time>"),
        "{gpx}"
    );
    assert!(gpx.contains(&format!("<time>{}</time>", beacon::isotime::format_ms(t0))));

    let (status, unknown) = track(&server, "nobody", "").await;
    assert_eq!((status, unknown["count"].as_u64()), (200, Some(0)));
    for (path, needle) in [
        ("/v1/devices/a%20b/track", "device id"),
        ("/v1/devices/bus-1/track?limit=10001", "limit"),
        ("/v1/devices/bus-1/track?from=soon", "from"),
        ("/v1/devices/bus-1/track?from=5&to=4", "after"),
        ("/v1/devices/bus-1/track?format=kml", "format"),
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn history_keeps_one_point_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |c| c.store.history_min_interval_secs = 5).await;
    let t0 = now_ms() - 60_000;
    for s in 0..12 {
        report_written(&server, "walker", 1.0 + s as f64 * 1e-4, t0 + s * 1000).await;
    }
    let (_, body) = track(&server, "walker", "").await;
    assert_eq!(times(&body), [t0, t0 + 5000, t0 + 10_000]);
    // The last-known position is the latest fix all the same.
    let snapshot = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(snapshot["devices"][0]["ts"], t0 + 11_000);
    server.stop().await;
}

#[tokio::test]
async fn retention_removes_old_history_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000;
    let now = now_ms();
    let server = with_store(dir.path(), |c| {
        c.store.history_retention_days = 30;
        c.store.history_min_interval_secs = 0;
    })
    .await;
    report_written(&server, "old", 1.0, now - 10 * day).await;
    report_written(&server, "mixed", 1.0, now - 10 * day).await;
    report_written(&server, "mixed", 2.0, now - 60_000).await;
    // Older than the window already: answered 200, counted, never stored.
    report(&server, "ancient", "g", 1.0, 13.0, now - 40 * day).await;
    assert_eq!(server.metric("beacon_ingest_too_old_total").await, 1.0);
    assert_eq!(times(&track(&server, "old", "").await.1).len(), 1);
    assert_eq!(times(&track(&server, "mixed", "").await.1).len(), 2);
    assert!(times(&track(&server, "ancient", "").await.1).is_empty());
    server.stop().await;

    let server = with_store(dir.path(), |c| {
        c.store.history_retention_days = 7;
        c.store.history_min_interval_secs = 0;
    })
    .await;
    assert!(times(&track(&server, "old", "").await.1).is_empty());
    assert_eq!(times(&track(&server, "mixed", "").await.1), [now - 60_000]);
    server.stop().await;
}

#[tokio::test]
async fn history_is_bounded_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |c| {
        c.store.history_min_interval_secs = 0;
        c.store.history_max_points = 3;
        c.store.history_prune_secs = 1;
    })
    .await;
    let t0 = now_ms() - 60_000;
    for i in 0..6 {
        report_written(&server, "chatty", 1.0, t0 + i * 1000).await;
    }
    report_written(&server, "quiet", 1.0, t0).await;
    eventually(|| async {
        let (_, body) = track(&server, "chatty", "").await;
        (times(&body) == [t0 + 3000, t0 + 4000, t0 + 5000]).then_some(())
    })
    .await;
    assert_eq!(times(&track(&server, "quiet", "").await.1), [t0]);
    server.stop().await;
}

#[tokio::test]
async fn without_a_data_dir_there_is_no_history() {
    let server = TestServer::start().await;
    let (status, body) = track(&server, "car", "").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no_history");
    assert!(
        body["message"].as_str().unwrap().contains("--data-dir"),
        "{body}"
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for name in [
        TRACK_POINTS,
        WRITTEN,
        "beacon_store_dropped_total",
        "beacon_store_queued_positions",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    server.stop().await;
}
