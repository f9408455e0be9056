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

/// Waits until the store has written `count` fixes in all.
async fn wait_written(server: &TestServer, count: usize) {
    server.wait_metric(WRITTEN, |v| v >= count as f64).await;
}

#[tokio::test]
async fn a_backlog_sent_back_to_back_keeps_every_point() {
    let dir = tempfile::tempdir().unwrap();
    // The default downsampling: a point at most every 5 s of fix time.
    let server = with_store(dir.path(), |_| {}).await;
    let t0 = now_ms() - 3_600_000;
    // Five reports of a phone's offline queue, 60 s apart by fix time, sent as fast as the
    // app can: they arrive within one tick, and the live fan-out coalesces them.
    for i in 0..5 {
        report(
            &server,
            "phone",
            "g",
            52.0 + i as f64 * 0.01,
            13.0,
            t0 + i * 60_000,
        )
        .await;
    }
    wait_written(&server, 5).await;
    let (_, body) = track(&server, "phone", "").await;
    assert_eq!(
        times(&body),
        (0..5).map(|i| t0 + i * 60_000).collect::<Vec<_>>()
    );
    // Still downsampled by fix time: a burst 1 s apart keeps one point per 5 s.
    let t1 = t0 + 600_000;
    for i in 0..12 {
        report(
            &server,
            "phone",
            "g",
            53.0,
            13.0 + i as f64 * 1e-3,
            t1 + i * 1000,
        )
        .await;
    }
    wait_written(&server, 17).await;
    let (_, body) = track(&server, "phone", &format!("from={t1}")).await;
    assert_eq!(times(&body), [t1, t1 + 5000, t1 + 10_000]);
    // A list in one request: every fix is judged, none is lost to coalescing.
    let t2 = t1 + 600_000;
    let list: Vec<Value> = (0..4)
        .map(|i| json!({"lat": 54.0, "lon": 13.0 + i as f64 * 0.01, "ts": t2 + i * 10_000}))
        .collect();
    let response = reqwest::Client::new()
        .post(server.http("/v1/positions?id=phone&groups=g"))
        .json(&list)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    wait_written(&server, 21).await;
    let (_, body) = track(&server, "phone", &format!("from={t2}")).await;
    assert_eq!(
        times(&body),
        (0..4).map(|i| t2 + i * 10_000).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_older_backlog_goes_into_the_history_in_fix_time_order_not_into_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |_| {}).await;
    let live = now_ms() - 10_000;
    report(&server, "phone", "g", 48.0, 2.0, live).await;
    wait_written(&server, 1).await;
    // The phone then uploads what it recorded offline, oldest first, in one burst.
    let t0 = live - 600_000;
    for i in 0..5 {
        report(
            &server,
            "phone",
            "g",
            52.0,
            13.0 + i as f64 * 0.01,
            t0 + i * 60_000,
        )
        .await;
    }
    // And a fix too close (by fix time) to the live one is still downsampled away.
    report(&server, "phone", "g", 52.0, 14.0, live - 2_000).await;
    wait_written(&server, 7).await;
    let (_, body) = track(&server, "phone", "").await;
    let mut expected: Vec<i64> = (0..5).map(|i| t0 + i * 60_000).collect();
    expected.push(live);
    assert_eq!(times(&body), expected);
    // The live position is still the newest fix, everywhere.
    let snapshot = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(snapshot["devices"][0]["ts"], live);
    server.stop().await;
    let server = with_store(dir.path(), |_| {}).await;
    let snapshot = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(snapshot["devices"][0]["ts"], live, "the last-known row too");
    server.stop().await;
}

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

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

#[tokio::test]
async fn history_is_read_through_the_groups_each_point_was_published_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_store(dir.path(), |c| {
        c.auth.mode = beacon::config::AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let t0 = now_ms() - 3_600_000;
    // The car reports to family, then joins work, then leaves family, then only family again.
    let memberships: [&[&str]; 4] = [&["family"], &["family", "work"], &["work"], &["family"]];
    for (i, groups) in memberships.iter().enumerate() {
        let ts = t0 + i as i64 * 60_000;
        let path = format!(
            "/v1/ingest/osmand?id=car&token={}&lat=52.{i}&lon=13.0&timestamp={ts}",
            token("car", groups, "device")
        );
        let response = server.get(&path).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    wait_written(&server, 4).await;
    let read = |token: String| {
        let server = &server;
        async move {
            let response = server
                .get(&format!("/v1/devices/car/track?access_token={token}"))
                .await;
            assert_eq!(response.status(), 200);
            times(&response.json::<Value>().await.unwrap())
        }
    };
    let at = |i: &[i64]| i.iter().map(|i| t0 + i * 60_000).collect::<Vec<_>>();
    assert_eq!(read(token("boss", &["work"], "viewer")).await, at(&[1, 2]));
    assert_eq!(
        read(token("mum", &["family"], "viewer")).await,
        at(&[0, 1, 3])
    );
    assert_eq!(
        read(token("x", &["work", "family"], "viewer")).await,
        at(&[0, 1, 2, 3])
    );
    assert_eq!(
        read(token("car", &["elsewhere"], "viewer")).await,
        at(&[]),
        "a viewer named like the device gets no more than its groups"
    );
    assert_eq!(
        read(token("car", &["elsewhere"], "device")).await,
        at(&[0, 1, 2, 3]),
        "the device itself reads its whole history"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_version_1_file_is_migrated_and_its_points_get_the_devices_groups() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 3_600_000;
    {
        // The schema of version 1, as earlier builds wrote it.
        let conn = rusqlite::Connection::open(dir.path().join("beacon.sqlite3")).unwrap();
        conn.execute_batch(
            "CREATE TABLE last_known (device TEXT NOT NULL, grp TEXT NOT NULL,
                 ts INTEGER NOT NULL, rts INTEGER NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL,
                 acc REAL, alt REAL, spd REAL, hdg REAL, batt REAL,
                 PRIMARY KEY (device, grp)) WITHOUT ROWID;
             CREATE TABLE track (device TEXT NOT NULL, ts INTEGER NOT NULL,
                 rts INTEGER NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL,
                 acc REAL, alt REAL, spd REAL, hdg REAL, batt REAL,
                 PRIMARY KEY (device, ts)) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        for (i, ts) in [t0, t0 + 60_000].iter().enumerate() {
            conn.execute(
                "INSERT INTO track (device, ts, rts, lat, lon) VALUES ('car', ?1, ?1, ?2, 13.0)",
                rusqlite::params![ts, 52.0 + i as f64],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO last_known (device, grp, ts, rts, lat, lon)
             VALUES ('car', 'family', ?1, ?2, 53.0, 13.0)",
            rusqlite::params![t0 + 60_000, now_ms()],
        )
        .unwrap();
    }
    let server = with_store(dir.path(), |c| {
        c.auth.mode = beacon::config::AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let read = |token: String| {
        let server = &server;
        async move {
            let response = server
                .get(&format!("/v1/devices/car/track?access_token={token}"))
                .await;
            assert_eq!(response.status(), 200);
            times(&response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        read(token("mum", &["family"], "viewer")).await,
        [t0, t0 + 60_000]
    );
    assert!(read(token("boss", &["work"], "viewer")).await.is_empty());
    // New points are written with their groups next to the migrated ones.
    let path = format!(
        "/v1/ingest/osmand?id=car&token={}&lat=54&lon=13&timestamp={}",
        token("car", &["work"], "device"),
        t0 + 120_000
    );
    assert_eq!(server.get(&path).await.status(), 200);
    wait_written(&server, 1).await;
    assert_eq!(
        read(token("boss", &["work"], "viewer")).await,
        [t0 + 120_000]
    );
    server.stop().await;
    let version: i64 = rusqlite::Connection::open(dir.path().join("beacon.sqlite3"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

/// Runs `beacon serve` on `dir` and returns its exit status and standard error; for starts
/// that must fail (a start that succeeds is stopped after `wait` and reported as such).
fn serve_binary(dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("BEACON_REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("beacon started on a damaged data directory");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_file_that_is_not_a_beacon_database_stops_the_start_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("beacon.sqlite3");
    std::fs::write(&file, vec![0x5au8; 16_384]).unwrap();
    let (status, err) = serve_binary(dir.path());
    assert!(!status.success());
    for needle in [
        file.to_str().unwrap(),
        "not a Beacon database or is damaged",
        "move it away",
        "backup",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    // Some other program's SQLite file is not taken over either.
    std::fs::remove_file(&file).unwrap();
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        .unwrap();
    let (status, err) = serve_binary(dir.path());
    assert!(!status.success());
    assert!(err.contains("not a Beacon database"), "{err}");
}

#[tokio::test]
async fn a_damaged_write_ahead_log_is_refused_not_silently_dropped() {
    let made = tempfile::tempdir().unwrap();
    let server = with_store(made.path(), |_| {}).await;
    server.stop().await;
    let t0 = now_ms() - 3_600_000;
    let (intact, damaged) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        // Three committed transactions that live in the log only (no checkpoint yet), as after
        // a crash of the process.
        let conn = rusqlite::Connection::open(made.path().join("beacon.sqlite3")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        for i in 0..3 {
            conn.execute(
                "INSERT INTO track (device, ts, rts, lat, lon, grps)
                 VALUES ('car', ?1, ?1, 52.0, 13.0, ',g,')",
                [t0 + i * 60_000],
            )
            .unwrap();
        }
        for copy in [&intact, &damaged] {
            for name in ["beacon.sqlite3", "beacon.sqlite3-wal"] {
                std::fs::copy(made.path().join(name), copy.path().join(name)).unwrap();
            }
        }
    }
    // One byte of the first frame's page flipped.
    let wal = damaged.path().join("beacon.sqlite3-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[32 + 24 + 100] ^= 0xff;
    std::fs::write(&wal, bytes).unwrap();
    let (status, err) = serve_binary(damaged.path());
    assert!(!status.success());
    for needle in [
        wal.to_str().unwrap(),
        "damaged",
        "silently dropped",
        "backup",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }

    // The intact log is read as usual: every transaction in it is there.
    let server = with_store(intact.path(), |_| {}).await;
    let (_, body) = track(&server, "car", "").await;
    assert_eq!(times(&body), [t0, t0 + 60_000, t0 + 120_000]);
    server.stop().await;
}
