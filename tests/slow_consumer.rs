//! Clients that stop reading: bounded queues, drops, resync and the 1013 close.

mod common;

use std::time::Duration;

use common::{Event, TestServer, eventually};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

const GROUPS: usize = 32;

/// Devices publishing to every group, but watching none (so they never lag themselves).
async fn quiet_devices(server: &TestServer, count: usize) -> Vec<common::Client> {
    let mut devices = Vec::new();
    for i in 0..count {
        let mut d = server.device(&format!("d{i}"), &group_list()).await;
        for g in 0..GROUPS {
            d.send(json!({"type": "unsub", "group": format!("g{g}")}))
                .await;
        }
        d.sync().await;
        devices.push(d);
    }
    devices
}

fn group_list() -> String {
    (0..GROUPS)
        .map(|i| format!("g{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A client with a tiny receive window, whose frames we leave unread.
async fn stalled_client(server: &TestServer, id: &str) -> WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = server.ws_url(&format!("id={id}&groups={}&role=viewer", group_list()));
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = client_async_with_config(url, stream, Some(config))
        .await
        .unwrap();
    ws
}

/// Publishes from `devices` until `done` says stop, and returns the last latitude sent.
async fn publish_until(devices: &mut [common::Client], mut done: impl AsyncFnMut() -> bool) -> f64 {
    let mut lat = 0.0;
    loop {
        for _ in 0..20 {
            lat = (lat + 0.001) % 80.0;
            for d in devices.iter_mut() {
                d.send(json!({"type": "pos", "lat": lat, "lon": 1.0, "spd": 3.5, "hdg": 90, "batt": 50}))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if done().await {
            return lat;
        }
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_with_1013_and_others_keep_up() {
    let server = TestServer::with(|c| {
        c.hub.tick_ms = 5;
        c.limits.queue_frames = 4;
        c.limits.slow_close_secs = 1;
    })
    .await;
    let groups = group_list();
    let mut stalled = stalled_client(&server, "stalled").await;
    let mut watcher = server
        .connect(&format!("id=w&groups={groups}&role=viewer"))
        .await;
    watcher.skip_greeting(GROUPS).await;
    let mut devices = quiet_devices(&server, 4).await;

    // Keep publishing while the watcher reads everything in the background.
    let reader = tokio::spawn(async move {
        let mut batches = 0usize;
        loop {
            match watcher.next_event().await {
                Event::Frame(v) if v["type"] == "batch" => batches += 1,
                Event::Frame(_) => {}
                Event::Closed(_) => return (batches, watcher),
            }
            if batches > 0 && batches.is_multiple_of(1000) {
                tokio::task::yield_now().await;
            }
        }
    });
    let last = publish_until(&mut devices, async || {
        server.metric("beacon_slow_closes_total").await >= 1.0
    })
    .await;
    assert!(server.metric("beacon_drops_total").await > 0.0);
    assert_eq!(
        server.metric("beacon_slow_closes_total").await,
        1.0,
        "only the stalled one"
    );

    // The stalled socket ends: whatever it had buffered, then the close (or a reset).
    let drained = tokio::time::timeout(common::WAIT, async {
        while let Some(Ok(_)) = stalled.next().await {}
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was not closed");

    // The state holds every device's last fix.
    for d in &mut devices {
        d.sync().await;
    }
    let body = server.get_json("/v1/groups/g0/positions").await;
    assert_eq!(body["devices"][0]["lat"], last);
    drop(devices);
    let stopping = tokio::spawn(server.stop());
    let (batches, _) = reader.await.unwrap();
    assert!(batches > 100, "the reading client got {batches} batches");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_client_that_pauses_gets_fresh_snapshots_instead_of_stale_batches() {
    let server = TestServer::with(|c| {
        c.hub.tick_ms = 5;
        c.limits.queue_frames = 4;
        c.limits.slow_close_secs = 60;
    })
    .await;

    let mut paused = stalled_client(&server, "paused").await;
    let mut devices = quiet_devices(&server, 4).await;
    let last = publish_until(&mut devices, async || {
        server.metric("beacon_drops_total").await > 0.0
    })
    .await;
    for d in &mut devices {
        d.sync().await;
    }
    // It reads again: past the welcome, the initial snapshots and whatever was buffered, it
    // receives a snapshot of every group holding the latest state.
    let mut fresh = std::collections::HashMap::new();
    let mut snapshots = 0;
    while fresh.len() < GROUPS {
        let message = tokio::time::timeout(common::WAIT, paused.next())
            .await
            .expect("frames in time")
            .expect("open")
            .expect("readable");
        let v: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if v["type"] == "snapshot" {
            snapshots += 1;
            if snapshots > GROUPS {
                let devices = v["devices"].as_array().unwrap();
                if devices.len() == 4 && devices.iter().all(|d| d["lat"] == last) {
                    fresh.insert(v["group"].as_str().unwrap().to_owned(), ());
                }
            }
        }
    }
    eventually(|| async { (server.metric("beacon_resyncs_total").await >= 1.0).then_some(()) })
        .await;
    server.stop().await;
}
