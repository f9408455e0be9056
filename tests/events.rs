//! Phone events against the real server: a Traccar Client alarm and OwnTracks transitions
//! become event records, pushed once to every subscriber (JSON and MessagePack) and listed by
//! `GET /v1/groups/{group}/events`.

mod common;

use beacon::model::now_ms;
use common::TestServer;
use serde_json::{Value, json};

async fn events(server: &TestServer, query: &str) -> Vec<Value> {
    let body = server
        .get_json(&format!("/v1/groups/g/events?{query}"))
        .await;
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone()
}

/// Every `event` frame read until a ping round trip.
async fn event_frames(client: &mut common::Client) -> Vec<Value> {
    client
        .sync()
        .await
        .into_iter()
        .filter(|f| f["type"] == "event")
        .collect()
}

#[tokio::test]
async fn a_traccar_alarm_is_one_event_for_every_subscriber() {
    let server = TestServer::start().await;
    let mut json_viewer = server.viewer("v1", "g").await;
    let mut msgpack_viewer = server
        .connect_with("id=v2&groups=g&role=viewer", Some("beacon.v1.msgpack"))
        .await;
    msgpack_viewer.skip_greeting(1).await;

    let ts = now_ms() / 1000 - 5;
    // Traccar Client 8: POST with the fields in the query, `alarm=sos` from the SOS button.
    let path = format!(
        "/v1/ingest/osmand?id=phone-1&groups=g&lat=48.85&lon=2.35&timestamp={ts}&alarm=sos&batt=50"
    );
    for _ in 0..2 {
        // The second request is the app retrying the same report: the same event.
        let response = reqwest::Client::new()
            .post(server.http(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let mut ids = Vec::new();
    for client in [&mut json_viewer, &mut msgpack_viewer] {
        // Events are handed to the sockets before the request is answered; a ping round
        // trip reads everything sent before it.
        let got = event_frames(client).await;
        assert_eq!(got.len(), 1, "exactly one event frame: {got:?}");
        let frame = &got[0];
        assert_eq!(frame["group"], "g");
        let list = frame["events"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{frame}");
        let event = &list[0];
        assert_eq!(event["kind"], "alarm");
        assert_eq!(event["alarm"], "sos");
        assert_eq!(event["device"], "phone-1");
        assert_eq!(event["group"], "g");
        assert_eq!(event["ts"], ts * 1000);
        assert_eq!(event["lat"], 48.85);
        assert_eq!(event["lon"], 2.35);
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "the same id everywhere");

    let listed = events(&server, "").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], ids[0].as_str());
    server.stop().await;
}

fn transition(event: &str, region: &str, tst: i64) -> String {
    json!({"_type": "transition", "wtst": tst - 1000, "lat": 52.5, "lon": 13.4, "tst": tst,
           "acc": 15, "tid": "JD", "event": event, "desc": region, "t": "c"})
    .to_string()
}

#[tokio::test]
async fn owntracks_transitions_are_region_events() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("v", "g").await;
    let tst = now_ms() / 1000 - 60;
    for (event, at) in [("enter", tst), ("leave", tst + 30)] {
        let response = reqwest::Client::new()
            .post(server.http("/v1/ingest/owntracks?groups=g"))
            .header("content-type", "application/json")
            .header("x-limit-u", "jane")
            .header("x-limit-d", "pixel")
            .body(transition(event, "Home", at))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "[]");
    }
    let frames = event_frames(&mut viewer).await;
    let kinds: Vec<&Value> = frames.iter().map(|f| &f["events"][0]["kind"]).collect();
    assert_eq!(kinds, [&json!("region.enter"), &json!("region.exit")]);

    let all = events(&server, "").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["kind"], "region.enter", "oldest first");
    assert_eq!(all[0]["region"], "Home");
    assert_eq!(all[0]["device"], "jane:pixel");
    assert_eq!(all[1]["ts"], (tst + 30) * 1000);
    let exits = events(&server, "kind=region.exit").await;
    assert_eq!(exits.len(), 1);
    let later = events(&server, &format!("from={}", (tst + 1) * 1000)).await;
    assert_eq!(later.len(), 1);
    assert_eq!(events(&server, "limit=1").await.len(), 1);
    let bad = server.get("/v1/groups/g/events?limit=100000").await;
    assert_eq!(bad.status(), 400);
    server.stop().await;
}

async fn alarm_ids(server: &TestServer) -> Vec<String> {
    let body = server.get_json("/v1/groups/g/events?kind=alarm").await;
    let mut ids: Vec<String> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Instances sharing one Redis: an event reported to one reaches the subscribers of both,
/// each once, with the same id; both instances list it.
#[tokio::test]
async fn events_cross_instances_once() {
    let redis = common::redis_server::RedisServer::start();
    let start = |url: String| TestServer::with(move |c| c.redis_url = Some(url));
    let a = start(redis.url()).await;
    let b = start(redis.url()).await;
    // A deployment under another prefix shares the Redis but never sees these events.
    let url = redis.url();
    let other = TestServer::with(move |c| {
        c.redis_url = Some(url);
        c.redis.redis_prefix = "other".into();
    })
    .await;
    // Both instances listen on the events channel before anything is reported.
    let conn = redis.connection().await;
    common::eventually(|| {
        let mut conn = conn.clone();
        async move {
            let reply: redis::Value = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("beacon:events")
                .arg("other:events")
                .query_async(&mut conn)
                .await
                .ok()?;
            let (_, ours, _, theirs): (String, i64, String, i64) =
                redis::FromRedisValue::from_redis_value(reply).ok()?;
            (ours == 2 && theirs == 1).then_some(())
        }
    })
    .await;

    let mut on_a = a.viewer("va", "g").await;
    let mut on_b = b
        .connect_with("id=vb&groups=g&role=viewer", Some("beacon.v1.msgpack"))
        .await;
    on_b.skip_greeting(1).await;

    let ts = now_ms() / 1000 - 5;
    let path =
        format!("/v1/ingest/osmand?id=phone-2&groups=g&lat=1&lon=2&timestamp={ts}&alarm=sos");
    // Reported to A, then retried to B (a load balancer may send the retry elsewhere).
    for server in [&a, &b] {
        let response = server.get(&path).await;
        assert_eq!(response.status(), 200);
    }
    // Barriers: one more event through each instance; once a viewer has both, every echo of
    // the first event has been handled by its instance.
    for (server, name) in [(&a, "fall"), (&b, "crash")] {
        let response = server
            .get(&format!(
                "/v1/ingest/osmand?id=phone-2&groups=g&lat=1&lon=2&timestamp={ts}&alarm={name}"
            ))
            .await;
        assert_eq!(response.status(), 200);
    }
    for viewer in [&mut on_a, &mut on_b] {
        let mut alarms = Vec::new();
        while !(alarms.contains(&"fall".to_owned()) && alarms.contains(&"crash".to_owned())) {
            let frame = viewer.until("event").await;
            assert_eq!(frame["group"], "g");
            for event in frame["events"].as_array().unwrap() {
                alarms.push(event["alarm"].as_str().unwrap().to_owned());
            }
        }
        alarms.extend(
            event_frames(viewer)
                .await
                .iter()
                .flat_map(|f| f["events"].as_array().unwrap().clone())
                .map(|e| e["alarm"].as_str().unwrap().to_owned()),
        );
        alarms.sort();
        assert_eq!(alarms, ["crash", "fall", "sos"], "each event once");
    }
    let on_a_ids = alarm_ids(&a).await;
    assert_eq!(on_a_ids.len(), 3);
    assert!(
        alarm_ids(&other).await.is_empty(),
        "another prefix's instance saw these events"
    );
    other.stop().await;
    assert_eq!(
        on_a_ids,
        alarm_ids(&b).await,
        "the same ids on both instances"
    );
    a.stop().await;
    b.stop().await;
}

/// With `--data-dir` events survive a restart, and a retry after it is not a new event.
#[tokio::test]
async fn events_are_kept_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: std::path::PathBuf| TestServer::with(move |c| c.data_dir = Some(dir));
    let ts = now_ms() / 1000 - 5;
    let path =
        format!("/v1/ingest/osmand?id=phone-3&groups=g&lat=1&lon=2&timestamp={ts}&alarm=sos");
    let server = start(dir.path().to_owned()).await;
    assert_eq!(server.get(&path).await.status(), 200);
    let before = events(&server, "").await;
    assert_eq!(before.len(), 1);
    server.stop().await;

    let server = start(dir.path().to_owned()).await;
    let mut viewer = server.viewer("v", "g").await;
    assert_eq!(events(&server, "").await, before, "kept across the restart");
    assert_eq!(server.get(&path).await.status(), 200);
    assert!(
        event_frames(&mut viewer).await.is_empty(),
        "a retry is not a new event"
    );
    assert_eq!(events(&server, "").await.len(), 1);
    server.stop().await;
}
