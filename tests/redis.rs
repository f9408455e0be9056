//! Several instances as one server through a real `redis-server`: fan-out, shared snapshots,
//! presence, outages and late joiners.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use beacon::Config;
use common::redis_server::{RedisCluster, RedisServer};
use common::{Client, TestServer, eventually};
use serde_json::Value;

/// An instance sharing `redis`, with short timings for tests.
async fn instance(redis: &RedisServer, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let url = redis.url();
    let server = TestServer::with(|c| {
        c.redis_url = Some(url);
        c.redis.redis_timeout_ms = 1000;
        c.redis.redis_backoff_max_ms = 200;
        adjust(c);
    })
    .await;
    wait_readiness(&server, "ready").await;
    server
}

/// Waits until `/readyz` answers 200 with `status`.
async fn wait_readiness(server: &TestServer, status: &str) {
    eventually(|| async {
        let response = server.get("/readyz").await;
        let ok = response.status() == 200;
        let body: Value = response.json().await.ok()?;
        (ok && body["status"] == status).then_some(())
    })
    .await;
}

/// The group's devices as served by `GET /v1/groups/{group}/positions`.
async fn rest_devices(server: &TestServer, group: &str) -> Vec<Value> {
    let body = server
        .get_json(&format!("/v1/groups/{group}/positions"))
        .await;
    body["devices"].as_array().unwrap().clone()
}

/// Device ids currently stored in the group's Redis hash.
async fn stored_devices(redis: &RedisServer, group: &str) -> BTreeSet<String> {
    let mut conn = redis.connection().await;
    redis::cmd("HKEYS")
        .arg(format!("beacon:{{{group}}}:pos"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Reads batches until every one of `devices` has appeared in an update.
async fn until_all(client: &mut Client, devices: &[&str]) {
    let mut missing: BTreeSet<&str> = devices.iter().copied().collect();
    while !missing.is_empty() {
        let v = client.until("batch").await;
        for u in v["updates"].as_array().unwrap() {
            missing.remove(u["id"].as_str().unwrap());
        }
    }
}

/// Reads batches until one lists `device` as offline.
async fn until_offline(client: &mut Client, device: &str) {
    loop {
        let v = client.until("batch").await;
        if v["offline"].as_array().unwrap().iter().any(|d| d == device) {
            return;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn fan_out_crosses_instances_both_ways() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let b = instance(&redis, |_| {}).await;
    let mut on_a = a.device("on-a", "g").await;
    let mut on_b = b.device("on-b", "g").await;
    let mut viewer_b = b.viewer("viewer-b", "g").await;

    on_a.pos(1.5, 2.5).await;
    let seen = on_b.until_update(|u| u["id"] == "on-a").await;
    assert_eq!(
        (seen["lat"].as_f64(), seen["online"].as_bool()),
        (Some(1.5), Some(true))
    );
    assert_eq!(
        viewer_b.until_update(|u| u["id"] == "on-a").await["lon"],
        2.5
    );

    on_b.pos(3.5, 4.5).await;
    assert_eq!(on_a.until_update(|u| u["id"] == "on-b").await["lat"], 3.5);

    assert!(a.metric("beacon_relay_published_messages_total").await >= 1.0);
    assert!(a.metric("beacon_relay_received_messages_total").await >= 1.0);
    assert!(b.metric("beacon_relay_received_messages_total").await >= 1.0);
    assert_eq!(a.metric("beacon_redis_up").await, 1.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn publishes_at_most_one_message_per_group_per_flush() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let mut devices = Vec::new();
    for i in 0..5 {
        devices.push(a.device(&format!("d{i}"), "g").await);
    }
    for round in 0..10 {
        for d in &mut devices {
            d.pos(10.0 + f64::from(round), 20.0).await;
        }
    }
    // The last fix of every device is in Redis once the relay has caught up.
    eventually(|| async {
        let mut conn = redis.connection().await;
        let values: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg("beacon:{g}:pos")
            .query_async(&mut conn)
            .await
            .unwrap();
        let lats: Vec<f64> = values
            .iter()
            .map(|v| {
                rmp_serde::from_slice::<Value>(v).unwrap()["lat"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        (lats.len() == 5 && lats.iter().all(|l| *l == 19.0)).then_some(())
    })
    .await;
    let published = a.metric("beacon_relay_published_messages_total").await;
    let batches = a.metric("beacon_batches_total").await;
    assert!(published >= 1.0);
    assert!(
        published <= batches,
        "{published} messages for {batches} flushes of one group"
    );
    a.stop().await;
}

#[tokio::test]
async fn snapshots_include_devices_of_other_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let b = instance(&redis, |_| {}).await;
    let mut on_a = a.device("on-a", "g").await;
    on_a.pos(5.0, 6.0).await;
    eventually(|| async {
        stored_devices(&redis, "g")
            .await
            .contains("on-a")
            .then_some(())
    })
    .await;

    // B has no local subscriber of g: the REST snapshot reads the shared state.
    let devices = rest_devices(&b, "g").await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["id"], "on-a");
    assert_eq!(devices[0]["online"], true);

    // The first subscriber on B gets the shared state in its very first snapshot.
    let mut viewer = b.connect("id=v&groups=g&role=viewer").await;
    viewer.expect("welcome").await;
    let snapshot = viewer.expect("snapshot").await;
    let devices = snapshot["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{snapshot}");
    assert_eq!(devices[0]["id"], "on-a");
    assert_eq!(devices[0]["lat"], 5.0);
    assert_eq!(devices[0]["online"], true);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_late_joining_instance_serves_complete_snapshots() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let mut devices = Vec::new();
    for i in 0..3 {
        let mut d = a.device(&format!("d{i}"), "g,h").await;
        d.pos(f64::from(i), 1.0).await;
        devices.push(d);
    }
    eventually(|| async { (stored_devices(&redis, "h").await.len() == 3).then_some(()) }).await;

    let late = instance(&redis, |_| {}).await;
    let mut viewer = late.connect("id=v&groups=g,h&role=viewer").await;
    viewer.expect("welcome").await;
    for group in ["g", "h"] {
        let snapshot = viewer.expect("snapshot").await;
        assert_eq!(snapshot["group"], group);
        let ids: BTreeSet<&str> = snapshot["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["online"] == true)
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, BTreeSet::from(["d0", "d1", "d2"]), "{snapshot}");
    }
    // And it is live from then on.
    devices[1].pos(42.0, 1.0).await;
    let u = viewer.until_update(|u| u["id"] == "d1").await;
    assert_eq!(u["lat"], 42.0);
    a.stop().await;
    late.stop().await;
}

#[tokio::test]
async fn offline_is_announced_on_every_instance() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let b = instance(&redis, |_| {}).await;
    let mut viewer = b.viewer("v", "g").await;
    let mut device = a.device("leaver", "g").await;
    device.pos(1.0, 1.0).await;
    viewer.until_update(|u| u["id"] == "leaver").await;

    device.ws.close(None).await.unwrap();
    until_offline(&mut viewer, "leaver").await;
    let devices = rest_devices(&b, "g").await;
    assert_eq!(
        devices[0]["online"], false,
        "the last position stays, offline"
    );
    a.stop().await;
    b.stop().await;
}

/// A `beacon serve` process of its own, so a test can kill it outright.
struct BeaconProcess {
    child: Child,
    addr: SocketAddr,
}

impl BeaconProcess {
    fn start(redis: &RedisServer, stale_secs: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_beacon"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--redis-url", &redis.url(), "--tick-ms", "50"])
            .args(["--stale-secs", &stale_secs.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning beacon");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("beacon exited before listening")
                .unwrap();
            let entry: Value = serde_json::from_str(&line).unwrap_or_default();
            if entry["message"] == "listening" {
                break entry["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep reading its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        BeaconProcess { child, addr }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws?{query}", self.addr)
    }

    /// SIGKILL: the instance gets no chance to say goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BeaconProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn idle_devices_stay_online_and_a_dead_instance_goes_stale() {
    let redis = RedisServer::start();
    let mut doomed = BeaconProcess::start(&redis, 2);
    let b = instance(&redis, |c| c.hub.stale_secs = 2).await;
    let mut viewer = b.viewer("v", "g").await;

    let (ws, _) = tokio_tungstenite::connect_async(doomed.url("id=idle&groups=g"))
        .await
        .unwrap();
    let mut device = Client {
        ws,
        msgpack: false,
        negotiated: None,
    };
    device.skip_greeting(1).await;
    device.pos(7.0, 8.0).await;
    let first = viewer.until_update(|u| u["id"] == "idle").await;
    let rts = first["rts"].as_i64().unwrap();

    // Well past the stale window (plus a sweep), the idle device is still online on B: its
    // instance vouches for its socket.
    eventually(|| async { (now_ms() > rts + 3_500).then_some(()) }).await;
    let frames = viewer.sync().await;
    assert!(
        frames.iter().all(|f| f["offline"]
            .as_array()
            .is_none_or(|o| o.iter().all(|d| d != "idle"))),
        "went offline while its socket was open: {frames:?}"
    );
    assert_eq!(rest_devices(&b, "g").await[0]["online"], true);

    // Killed outright, its devices go offline everywhere after the stale window.
    doomed.kill();
    until_offline(&mut viewer, "idle").await;
    b.stop().await;
}

#[tokio::test]
async fn redis_outage_keeps_local_fan_out_and_converges_after_restart() {
    let mut redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let b = instance(&redis, |_| {}).await;
    let mut on_a = a.device("on-a", "g").await;
    let mut leaver = a.device("leaver", "g").await;
    let mut viewer_a = a.viewer("va", "g").await;
    let mut on_b = b.device("on-b", "g").await;
    let mut viewer_b = b.viewer("vb", "g").await;
    on_a.pos(1.0, 1.0).await;
    leaver.pos(9.0, 9.0).await;
    until_all(&mut viewer_b, &["on-a", "leaver"]).await;

    redis.kill();
    wait_readiness(&a, "degraded").await;
    wait_readiness(&b, "degraded").await;
    let body = a.get_json("/readyz").await;
    assert_eq!(body["failing"], serde_json::json!(["redis"]));
    assert_eq!(a.metric("beacon_redis_up").await, 0.0);

    // Local fan-out goes on.
    on_a.pos(2.0, 2.0).await;
    viewer_a
        .until_update(|u| u["id"] == "on-a" && u["lat"] == 2.0)
        .await;
    on_b.pos(5.0, 5.0).await;
    viewer_b
        .until_update(|u| u["id"] == "on-b" && u["lat"] == 5.0)
        .await;
    leaver.ws.close(None).await.unwrap();
    until_offline(&mut viewer_a, "leaver").await;

    // Redis comes back empty; both instances republish, and each converges on the other's
    // changes made during the outage.
    redis.restart();
    wait_readiness(&a, "ready").await;
    wait_readiness(&b, "ready").await;
    // B's viewer learns both of A's changes, in whichever batches they come.
    let (mut moved, mut left) = (false, false);
    while !(moved && left) {
        let batch = viewer_b.until("batch").await;
        moved |= batch["updates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == "on-a" && u["lat"] == 2.0 && u["online"] == true);
        left |= batch["offline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "leaver");
    }
    viewer_a
        .until_update(|u| u["id"] == "on-b" && u["lat"] == 5.0)
        .await;
    let stored = stored_devices(&redis, "g").await;
    assert_eq!(
        stored,
        BTreeSet::from(["leaver", "on-a", "on-b"].map(String::from))
    );

    // And cross-instance fan-out is live again.
    on_a.pos(3.0, 3.0).await;
    assert_eq!(
        viewer_b
            .until_update(|u| u["id"] == "on-a" && u["lat"] == 3.0)
            .await["lon"],
        3.0
    );
    assert!(a.metric("beacon_redis_reconnects_total").await >= 1.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn subscribes_only_to_groups_with_local_subscribers() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let channels = || async {
        let mut conn = redis.connection().await;
        // Group channels only (the events channel, `<prefix>:events`, is always subscribed).
        let mut channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("beacon:{*")
            .query_async(&mut conn)
            .await
            .unwrap();
        channels.sort();
        channels
    };
    let mut g1 = a.viewer("v1", "g1").await;
    let _g2 = a.viewer("v2", "g2").await;
    // A REST read of another group does not subscribe to it.
    assert!(rest_devices(&a, "g3").await.is_empty());
    eventually(|| async {
        (channels().await == ["beacon:{g1}:ch", "beacon:{g2}:ch"]).then_some(())
    })
    .await;
    let mut conn = redis.connection().await;
    let patterns: i64 = redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(patterns, 0, "no pattern subscriptions");

    g1.ws.close(None).await.unwrap();
    eventually(|| async { (channels().await == ["beacon:{g2}:ch"]).then_some(()) }).await;
    a.wait_metric("beacon_relay_subscribed_groups", |v| v == 1.0)
        .await;
    a.stop().await;
}

#[tokio::test]
async fn redis_unreachable_at_start_means_degraded_not_down() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = TestServer::with(|c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
        c.redis.redis_backoff_max_ms = 200;
    })
    .await;
    wait_readiness(&server, "degraded").await;
    let mut device = server.device("d", "g").await;
    let mut viewer = server.viewer("v", "g").await;
    device.pos(1.0, 2.0).await;
    assert_eq!(viewer.until_update(|u| u["id"] == "d").await["lat"], 1.0);
    assert_eq!(server.metric("beacon_redis_up").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn cluster_mode_shards_pub_sub_by_group() {
    let cluster = RedisCluster::start();
    let start = || {
        let url = cluster.url();
        TestServer::with(move |c| {
            c.redis_url = Some(url);
            c.redis.redis_cluster = true;
            c.redis.redis_timeout_ms = 2000;
            c.redis.redis_backoff_max_ms = 200;
        })
    };
    let a = start().await;
    let b = start().await;
    wait_readiness(&a, "ready").await;
    wait_readiness(&b, "ready").await;
    // Groups whose hash slots fall on different nodes.
    let groups = ["g1", "g2", "g3", "g4", "g5", "g6"];
    let list = groups.join(",");
    let mut on_a = a.device("on-a", &list).await;
    let mut on_b = b.device("on-b", &list).await;
    on_a.pos(1.0, 1.0).await;
    on_b.pos(2.0, 2.0).await;
    for (client, other) in [(&mut on_a, "on-b"), (&mut on_b, "on-a")] {
        let mut seen = BTreeSet::new();
        while seen.len() < groups.len() {
            let batch = client.until("batch").await;
            if batch["updates"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["id"] == other)
            {
                seen.insert(batch["group"].as_str().unwrap().to_owned());
            }
        }
    }

    // Shared state lives on the nodes too: a late instance's first snapshot is complete.
    let late = start().await;
    wait_readiness(&late, "ready").await;
    let mut viewer = late.connect("id=v&groups=g4&role=viewer").await;
    viewer.expect("welcome").await;
    let snapshot = viewer.expect("snapshot").await;
    let ids: BTreeSet<&str> = snapshot["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["on-a", "on-b"]), "{snapshot}");

    // Every channel is a shard channel, each on one node; no classic subscriptions anywhere.
    let mut shard_channels = BTreeSet::new();
    let mut nodes_used = 0;
    for node in &cluster.nodes {
        let mut conn = node.connection().await;
        let sharded: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut conn)
            .await
            .unwrap();
        let classic: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(classic.is_empty(), "classic channels: {classic:?}");
        nodes_used += usize::from(!sharded.is_empty());
        shard_channels.extend(sharded);
    }
    let expected: BTreeSet<String> = groups
        .iter()
        .map(|g| format!("beacon:{{{g}}}:ch"))
        .collect();
    assert_eq!(shard_channels, expected);
    assert!(nodes_used > 1, "groups spread over nodes");
    a.stop().await;
    b.stop().await;
    late.stop().await;
}

#[tokio::test]
async fn retention_is_trimmed_in_redis_too() {
    let redis = RedisServer::start();
    let a = instance(&redis, |c| {
        c.hub.retention_secs = 2;
        c.hub.stale_secs = 1;
    })
    .await;
    // A connected device is vouched for by every heartbeat: it stays.
    let mut connected = a.device("connected", "g").await;
    connected.pos(1.0, 1.0).await;
    // An HTTP device reports once and is never vouched for again.
    let posted = reqwest::Client::new()
        .post(a.http("/v1/positions?id=posted&groups=g"))
        .json(&serde_json::json!({"lat": 2.0, "lon": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    eventually(|| async { (stored_devices(&redis, "g").await.len() == 2).then_some(()) }).await;
    let mut conn = redis.connection().await;
    for key in ["beacon:{g}:pos", "beacon:{g}:seen"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl <= 4_000,
            "{key} expires with retention: {ttl} ms"
        );
    }

    eventually(|| async {
        let stored = stored_devices(&redis, "g").await;
        (stored == BTreeSet::from(["connected".to_owned()])).then_some(())
    })
    .await;
    a.stop().await;
}

/// Reports a fix of `id` in `group` through the OsmAnd route; `ts` in ms.
async fn report(server: &TestServer, id: &str, group: &str, lat: f64, ts: i64) {
    let path = format!("/v1/ingest/osmand?id={id}&groups={group}&lat={lat}&lon=13&timestamp={ts}");
    assert_eq!(server.get(&path).await.status(), 200);
}

/// The fix time of `device` in `group` as `server` serves it.
async fn served_ts(server: &TestServer, group: &str, device: &str) -> Option<i64> {
    rest_devices(server, group)
        .await
        .iter()
        .find(|d| d["id"] == device)
        .and_then(|d| d["ts"].as_i64())
}

#[tokio::test]
async fn an_older_fix_arriving_at_another_instance_never_wins_in_redis() {
    let redis = RedisServer::start();
    let a = instance(&redis, |_| {}).await;
    let b = instance(&redis, |_| {}).await;
    older_fix_never_wins(a, b, async || instance(&redis, |_| {}).await).await;
}

#[tokio::test]
async fn an_older_fix_never_wins_in_a_cluster_either() {
    let cluster = RedisCluster::start();
    let start = async || {
        let url = cluster.url();
        let server = TestServer::with(move |c| {
            c.redis_url = Some(url);
            c.redis.redis_cluster = true;
            c.redis.redis_timeout_ms = 2000;
            c.redis.redis_backoff_max_ms = 200;
        })
        .await;
        wait_readiness(&server, "ready").await;
        server
    };
    let (a, b) = (start().await, start().await);
    older_fix_never_wins(a, b, start).await;
}

/// A newer fix reaches A; then an older one reaches B, which does not watch the group and so
/// takes it as news. Neither B nor a fresh instance C may serve the older fix afterwards.
async fn older_fix_never_wins(
    a: TestServer,
    b: TestServer,
    fresh: impl AsyncFnOnce() -> TestServer,
) {
    let newer = now_ms() - 1_000;
    report(&a, "phone", "g", 52.0, newer).await;
    a.wait_metric("beacon_relay_published_messages_total", |v| v >= 1.0)
        .await;
    report(&b, "phone", "g", 48.0, newer - 60_000).await;
    b.wait_metric("beacon_relay_published_messages_total", |v| v >= 1.0)
        .await;
    let c = fresh().await;
    assert_eq!(
        served_ts(&c, "g", "phone").await,
        Some(newer),
        "a fresh instance"
    );
    assert_eq!(
        served_ts(&b, "g", "phone").await,
        Some(newer),
        "the instance B"
    );
    let mut viewer = c.connect("id=viewer-c&groups=g&role=viewer").await;
    let snapshot = viewer.until("snapshot").await;
    assert_eq!(snapshot["devices"][0]["ts"], newer, "{snapshot}");
    // A newer fix still replaces it, through either instance.
    report(&b, "phone", "g", 49.0, newer + 1_000).await;
    eventually(|| async {
        (served_ts(&c, "g", "phone").await == Some(newer + 1_000)).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
    c.stop().await;
}
