//! Protocol v1 over WebSocket, against the real server.

mod common;

use common::{TestServer, eventually};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_then_one_snapshot_per_group() {
    let server = TestServer::start().await;
    let mut c = server
        .connect("id=bus-17&groups=fleet-a,fleet-b&role=device")
        .await;
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["id"], "bus-17");
    assert_eq!(welcome["role"], "device");
    assert_eq!(welcome["groups"], json!(["fleet-a", "fleet-b"]));
    assert_eq!(welcome["tick_ms"], 50);
    assert!(welcome["server_time"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(!welcome["session"].as_str().unwrap().is_empty());
    let first = c.expect("snapshot").await;
    let second = c.expect("snapshot").await;
    assert_eq!(first["group"], "fleet-a");
    assert_eq!(second["group"], "fleet-b");
    assert_eq!(first["devices"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn defaults_are_group_default_and_role_device() {
    let server = TestServer::start().await;
    let mut c = server.connect("id=phone").await;
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["groups"], json!(["default"]));
    assert_eq!(welcome["role"], "device");
    assert!(
        c.negotiated.is_none(),
        "no subprotocol offered, none echoed"
    );
    server.stop().await;
}

async fn fan_out_in(protocol: &str) {
    let server = TestServer::start().await;
    let mut a = server.connect_with("id=a&groups=g", Some(protocol)).await;
    assert_eq!(a.negotiated.as_deref(), Some(protocol));
    a.skip_greeting(1).await;
    let mut b = server.connect_with("id=b&groups=g", Some(protocol)).await;
    b.skip_greeting(1).await;
    let mut v = server
        .connect_with("id=v&groups=g&role=viewer", Some(protocol))
        .await;
    v.skip_greeting(1).await;

    // A recent fix time: one older than the retention (`--retention-secs`) is refused.
    let ts = beacon::model::now_ms() - 1_000;
    a.send(json!({"type": "pos", "lat": 52.52, "lon": 13.405, "ts": ts,
                  "acc": 5, "alt": 40.5, "spd": 7.9, "hdg": 270, "batt": 81, "seq": 41}))
        .await;
    for client in [&mut a, &mut b, &mut v] {
        let u = client.until_update(|u| u["id"] == "a").await;
        assert_eq!(u["lat"], 52.52);
        assert_eq!(u["lon"], 13.405);
        assert_eq!(u["ts"], ts);
        assert_eq!(u["online"], true);
        assert_eq!(u["spd"], 7.9);
        assert_eq!(u["hdg"], 270.0);
        assert_eq!(u["batt"], 81.0);
        assert_eq!(u["acc"], 5.0);
        assert_eq!(u["alt"], 40.5);
        assert!(u["rts"].as_i64().unwrap() > 1_700_000_000_000);
        assert!(
            u.get("seq").is_none(),
            "seq is not part of a position record"
        );
    }
    // A late joiner gets the state in its snapshot.
    let mut late = server
        .connect_with("id=late&groups=g&role=viewer", Some(protocol))
        .await;
    late.expect("welcome").await;
    let snapshot = late.expect("snapshot").await;
    let devices = snapshot["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["id"], "a");
    assert_eq!(devices[0]["online"], true);
    server.stop().await;
}

#[tokio::test]
async fn fan_out_json() {
    fan_out_in("beacon.v1.json").await;
}

#[tokio::test]
async fn fan_out_msgpack() {
    fan_out_in("beacon.v1.msgpack").await;
}

#[tokio::test]
async fn codecs_mix_in_one_group() {
    let server = TestServer::start().await;
    let mut j = server
        .connect_with("id=j&groups=g", Some("beacon.v1.json"))
        .await;
    j.skip_greeting(1).await;
    let mut m = server
        .connect_with("id=m&groups=g", Some("beacon.v1.msgpack"))
        .await;
    m.skip_greeting(1).await;
    j.pos(1.0, 2.0).await;
    assert_eq!(m.until_update(|u| u["id"] == "j").await["lat"], 1.0);
    m.pos(3.0, 4.0).await;
    assert_eq!(j.until_update(|u| u["id"] == "m").await["lat"], 3.0);
    server.stop().await;
}

#[tokio::test]
async fn unsupported_subprotocol_is_refused_before_upgrade() {
    let server = TestServer::start().await;
    let err = server
        .try_connect("id=a", Some("mqtt"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("400"), "{err}");
    // The first supported one of several offers wins.
    let c = server
        .connect_with("id=a", Some("mqtt, beacon.v1.msgpack, beacon.v1.json"))
        .await;
    assert_eq!(c.negotiated.as_deref(), Some("beacon.v1.msgpack"));
    server.stop().await;
}

#[tokio::test]
async fn malformed_identity_is_refused_before_upgrade() {
    let server = TestServer::start().await;
    for query in [
        "groups=g",
        "id=a%20b",
        "id=a&role=superuser",
        "id=a&groups=,",
        "id=a&groups=x/y",
    ] {
        let err = server.try_connect(query, None).await.err().expect(query);
        assert!(err.to_string().contains("400"), "{query}: {err}");
    }
    let body = reqwest::get(server.http("/v1/ws?id=a&role=superuser"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("role must be"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn groups_are_isolated() {
    let server = TestServer::start().await;
    let mut a = server.device("a", "g1").await;
    let mut outsider = server.device("o", "g2").await;
    let mut both = server.viewer("v", "g1,g2").await;
    a.pos(1.0, 1.0).await;
    outsider.pos(2.0, 2.0).await;
    // The viewer of both groups sees both devices, each in its own group's batch.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let b = both.until("batch").await;
        for u in b["updates"].as_array().unwrap() {
            seen.push((
                b["group"].as_str().unwrap().to_owned(),
                u["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    seen.sort();
    assert_eq!(seen, [("g1".into(), "a".into()), ("g2".into(), "o".into())]);
    // The outsider never sees device a: its own update arrives, and nothing else is queued.
    outsider.until_update(|u| u["id"] == "o").await;
    a.pos(1.5, 1.5).await;
    a.until_update(|u| u["lat"] == 1.5).await;
    for frame in outsider.sync().await {
        assert_ne!(frame["group"], "g1", "{frame}");
    }
    server.stop().await;
}

#[tokio::test]
async fn fixes_within_one_tick_coalesce_to_the_latest() {
    let server = TestServer::with(|c| c.hub.tick_ms = 1000).await;
    let mut a = server.device("a", "g").await;
    let mut v = server.viewer("v", "g").await;
    // The first fix in a quiet group goes out at once.
    a.send(json!({"type": "pos", "lat": 0.0, "lon": 0.0})).await;
    v.until_update(|u| u["id"] == "a").await;
    // Ten more within the same tick arrive as one update holding the last.
    for i in 1..=10 {
        a.send(json!({"type": "pos", "lat": i as f64, "lon": 0.0}))
            .await;
    }
    let batch = v.until("batch").await;
    let updates = batch["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 1, "{batch}");
    assert_eq!(updates[0]["lat"], 10.0);
    server.stop().await;
}

#[tokio::test]
async fn older_fix_does_not_replace_newer() {
    let server = TestServer::start().await;
    let mut a = server.device("a", "g").await;
    let now = beacon::model::now_ms();
    a.send(json!({"type": "pos", "lat": 1.0, "lon": 0.0, "ts": now - 1_000}))
        .await;
    a.until_update(|u| u["lat"] == 1.0).await;
    a.send(json!({"type": "pos", "lat": 2.0, "lon": 0.0, "ts": now - 2_000}))
        .await;
    a.sync().await;
    let body = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(body["devices"][0]["lat"], 1.0);
    server.stop().await;
}

#[tokio::test]
async fn presence_online_then_offline() {
    let server = TestServer::start().await;
    let mut v = server.viewer("v", "g").await;
    let mut a = server.device("a", "g").await;
    a.pos(5.0, 5.0).await;
    assert_eq!(v.until_update(|u| u["id"] == "a").await["online"], true);
    drop(a);
    let batch = v.until("batch").await;
    assert_eq!(batch["offline"], json!(["a"]), "{batch}");
    // The last position stays in snapshots, offline.
    let mut late = server.viewer_raw("late", "g").await;
    let snapshot = late.expect("snapshot").await;
    assert_eq!(snapshot["devices"][0]["id"], "a");
    assert_eq!(snapshot["devices"][0]["online"], false);
    // Reconnecting brings it back online.
    let _a = server.device("a", "g").await;
    assert_eq!(v.until_update(|u| u["id"] == "a").await["online"], true);
    server.stop().await;
}

#[tokio::test]
async fn a_device_with_two_sockets_stays_online_until_both_close() {
    let server = TestServer::start().await;
    let mut v = server.viewer("v", "g").await;
    let mut a1 = server.device("a", "g").await;
    let a2 = server.device("a", "g").await;
    a1.pos(1.0, 1.0).await;
    v.until_update(|u| u["id"] == "a").await;
    drop(a2);
    a1.pos(2.0, 2.0).await;
    let u = v.until_update(|u| u["id"] == "a").await;
    assert_eq!(u["online"], true);
    for frame in v.sync().await {
        assert_eq!(frame["offline"], json!([]), "{frame}");
    }
    drop(a1);
    assert_eq!(v.until("batch").await["offline"], json!(["a"]));
    server.stop().await;
}

#[tokio::test]
async fn every_invalid_message_gets_a_named_error_and_the_connection_stays() {
    let server = TestServer::start().await;
    let mut a = server.device("a", "g").await;
    let cases = [
        (
            json!({"type": "pos", "lon": 2, "seq": 1}),
            "invalid_position",
            "lat is required",
            Some(1),
        ),
        (
            json!({"type": "pos", "lat": 2}),
            "invalid_position",
            "lon is required",
            None,
        ),
        (
            json!({"type": "pos", "lat": 90.5, "lon": 0, "seq": 3}),
            "invalid_position",
            "lat must",
            Some(3),
        ),
        (
            json!({"type": "pos", "lat": 0, "lon": 180.5}),
            "invalid_position",
            "lon must",
            None,
        ),
        (
            json!({"type": "pos", "lat": 0, "lon": 0, "hdg": 400}),
            "invalid_position",
            "hdg must",
            None,
        ),
        (
            json!({"type": "pos", "lat": 0, "lon": 0, "batt": 101}),
            "invalid_position",
            "batt must",
            None,
        ),
        (
            json!({"type": "pos", "lat": 0, "lon": 0, "acc": -2}),
            "invalid_position",
            "acc must",
            None,
        ),
        (
            json!({"type": "pos", "lat": 0, "lon": 0, "spd": -1}),
            "invalid_position",
            "spd must",
            None,
        ),
        (
            json!({"type": "pos", "lat": 0, "lon": 0, "ts": 99_999_999_999_999i64}),
            "invalid_position",
            "future",
            None,
        ),
        (
            json!({"type": "pos", "lat": "north", "lon": 0}),
            "bad_message",
            "lat",
            None,
        ),
        (
            json!({"type": "teleport"}),
            "bad_message",
            "unknown message type",
            None,
        ),
        (json!({"lat": 1}), "bad_message", "type is required", None),
        (
            json!({"type": "sub"}),
            "bad_message",
            "group is required",
            None,
        ),
        (
            json!({"type": "sub", "group": "elsewhere"}),
            "forbidden",
            "elsewhere",
            None,
        ),
        (
            json!({"type": "unsub", "group": "nope"}),
            "not_subscribed",
            "nope",
            None,
        ),
    ];
    for (message, code, needle, seq) in cases {
        a.send(message.clone()).await;
        let error = a.until("error").await;
        assert_eq!(error["code"], code, "{message} -> {error}");
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{message} -> {error}"
        );
        assert_eq!(
            error.get("seq").and_then(Value::as_u64),
            seq,
            "{message} -> {error}"
        );
    }
    a.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(a.until("error").await["code"], "bad_message");
    // Still open and serving.
    a.pos(1.0, 1.0).await;
    a.until_update(|u| u["id"] == "a").await;
    assert!(server.metric("beacon_errors_total").await >= 16.0);
    server.stop().await;
}

#[tokio::test]
async fn viewers_may_not_publish() {
    let server = TestServer::start().await;
    let mut v = server.viewer("v", "g").await;
    v.send(json!({"type": "pos", "lat": 1, "lon": 1, "seq": 9}))
        .await;
    let error = v.until("error").await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["seq"], 9);
    let body = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(body["devices"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn sub_and_unsub() {
    let server = TestServer::start().await;
    let mut v = server.connect("id=v&groups=g1,g2&role=viewer").await;
    v.skip_greeting(2).await;
    let mut d = server.device("d", "g1,g2").await;
    v.send(json!({"type": "unsub", "group": "g1"})).await;
    v.sync().await;
    d.pos(1.0, 1.0).await;
    // g2's batch arrives; g1's never does.
    let batch = v.until("batch").await;
    assert_eq!(batch["group"], "g2");
    for frame in v.sync().await {
        assert_ne!(frame["group"], "g1", "{frame}");
    }
    v.send(json!({"type": "unsub", "group": "g1"})).await;
    assert_eq!(v.until("error").await["code"], "not_subscribed");
    // Subscribing again answers with a snapshot holding the current state.
    v.send(json!({"type": "sub", "group": "g1"})).await;
    let snapshot = v.until("snapshot").await;
    assert_eq!(snapshot["group"], "g1");
    assert_eq!(snapshot["devices"][0]["id"], "d");
    d.pos(2.0, 2.0).await;
    let mut groups = Vec::new();
    while groups.len() < 2 {
        let b = v.until("batch").await;
        groups.push(b["group"].as_str().unwrap().to_owned());
    }
    groups.sort();
    assert_eq!(groups, ["g1", "g2"]);
    server.stop().await;
}

#[tokio::test]
async fn ping_pong_echoes_the_id() {
    let server = TestServer::start().await;
    for protocol in ["beacon.v1.json", "beacon.v1.msgpack"] {
        let mut c = server.connect_with("id=a", Some(protocol)).await;
        c.skip_greeting(1).await;
        for id in [json!(7), json!(-3), json!(1.5)] {
            c.send(json!({"type": "ping", "id": id})).await;
            let pong = c.until("pong").await;
            assert_eq!(pong["id"].as_f64(), id.as_f64(), "{protocol}");
            assert!(pong["server_time"].as_i64().unwrap() > 1_700_000_000_000);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn wrong_frame_kind_closes_with_1003() {
    let server = TestServer::start().await;
    let mut j = server.device("j", "g").await;
    j.send_raw(Message::Binary(vec![0x80].into())).await;
    assert_eq!(j.expect_close().await, Some(1003));
    let mut m = server
        .connect_with("id=m&groups=g", Some("beacon.v1.msgpack"))
        .await;
    m.skip_greeting(1).await;
    m.send_raw(Message::Text("{}".into())).await;
    assert_eq!(m.expect_close().await, Some(1003));
    server.stop().await;
}

#[tokio::test]
async fn oversize_frame_closes_with_1009() {
    let server = TestServer::with(|c| c.limits.max_frame_bytes = 1024).await;
    let mut a = server.device("a", "g").await;
    let padding = "x".repeat(2000);
    a.send(json!({"type": "pos", "lat": 1, "lon": 1, "pad": padding}))
        .await;
    assert_eq!(a.expect_close().await, Some(1009));
    // Just under the limit is fine.
    let mut b = server.device("b", "g").await;
    b.send(json!({"type": "pos", "lat": 1, "lon": 1, "pad": "y".repeat(900)}))
        .await;
    b.until_update(|u| u["id"] == "b").await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let server = TestServer::start().await;
    let mut a = server.device("a", "g").await;
    let mut v = server.viewer("v", "g").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(a.expect_close().await, Some(1001));
    assert_eq!(v.expect_close().await, Some(1001));
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_full_server_refuses_with_503() {
    let server = TestServer::with(|c| c.limits.max_connections = 2).await;
    let _a = server.device("a", "g").await;
    let b = server.device("b", "g").await;
    let err = server
        .try_connect("id=c", None)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(server.metric("beacon_connections_refused_total").await, 1.0);
    drop(b);
    // The slot frees once the session ends.
    eventually(|| async { server.try_connect("id=c", None).await.ok() }).await;
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_and_messages() {
    let server = TestServer::start().await;
    let mut a = server.device("a", "g").await;
    let _v = server.viewer("v", "g").await;
    a.pos(1.0, 1.0).await;
    a.until_update(|u| u["id"] == "a").await;
    let text = server.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("beacon_connections{role=\"device\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("beacon_connections{role=\"viewer\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("beacon_messages_in_total{type=\"pos\"} 1"),
        "{text}"
    );
    assert!(common::metric_value(&text, "beacon_batches_total") >= 1.0);
    assert!(common::metric_value(&text, "beacon_frames_out_total") >= 6.0);
    server.stop().await;
}

impl TestServer {
    /// A viewer past its welcome only (the caller reads the snapshot).
    async fn viewer_raw(&self, id: &str, groups: &str) -> common::Client {
        let mut c = self
            .connect(&format!("id={id}&groups={groups}&role=viewer"))
            .await;
        c.expect("welcome").await;
        c
    }
}

#[tokio::test]
async fn a_client_close_is_answered() {
    let server = TestServer::start().await;
    let mut a = server.device("a", "g").await;
    a.ws.close(None).await.unwrap();
    // The server completes the closing handshake: the stream ends with its close frame.
    let code = a.expect_close().await;
    assert_eq!(code, None, "an empty close frame is echoed empty");
    server.wait_metric("beacon_connections", |v| v == 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn large_messages_arrive_whole_in_both_codecs() {
    let server = TestServer::start().await;
    // 60 devices over HTTP make a snapshot of several KiB, which goes out in fragments.
    let fixes: Vec<Value> = (0..60)
        .map(|i| json!({"lat": 10.0 + i as f64 / 100.0, "lon": 20.0, "spd": 1.5, "batt": 50}))
        .collect();
    for (i, fix) in fixes.iter().enumerate() {
        let response = reqwest::Client::new()
            .post(server.http(&format!("/v1/positions?id=dev-{i:02}&groups=big")))
            .json(fix)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for protocol in ["beacon.v1.json", "beacon.v1.msgpack"] {
        let mut v = server
            .connect_with("id=v&groups=big&role=viewer", Some(protocol))
            .await;
        v.expect("welcome").await;
        let snapshot = v.expect("snapshot").await;
        let devices = snapshot["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 60, "{protocol}");
        let mut ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids[0], "dev-00");
        assert_eq!(ids[59], "dev-59");
        // Frames after a fragmented message are intact too.
        v.send(json!({"type": "ping", "id": 5})).await;
        assert_eq!(v.until("pong").await["id"], 5);
    }
    server.stop().await;
}

// ---- Raw framing: frames written by hand on a TcpStream ----

mod raw {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Upgrades a plain TCP connection to a WebSocket by hand and reads past the 101.
    pub(super) async fn connect(addr: std::net::SocketAddr, query: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/ws?{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        stream
    }

    /// A masked client frame.
    pub(super) fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Reads server frames until a close frame; returns its code (`None` for an empty close
    /// or when the connection ended without one) and the opcodes of the frames before it.
    pub(super) async fn until_close(
        stream: &mut (impl tokio::io::AsyncRead + Unpin),
        wait: Duration,
    ) -> (Option<u16>, usize) {
        let mut frames = 0;
        let read = async {
            loop {
                let mut head = [0u8; 2];
                if stream.read_exact(&mut head).await.is_err() {
                    return None;
                }
                let len = match head[1] & 0x7f {
                    126 => {
                        let mut ext = [0u8; 2];
                        stream.read_exact(&mut ext).await.ok()?;
                        u16::from_be_bytes(ext) as usize
                    }
                    127 => {
                        let mut ext = [0u8; 8];
                        stream.read_exact(&mut ext).await.ok()?;
                        u64::from_be_bytes(ext) as usize
                    }
                    n => n as usize,
                };
                let mut payload = vec![0u8; len];
                stream.read_exact(&mut payload).await.ok()?;
                if head[0] & 0x0f == 0x8 {
                    return Some(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    );
                }
                frames += 1;
            }
        };
        let code = tokio::time::timeout(wait, read)
            .await
            .expect("no close frame in time")
            .flatten();
        (code, frames)
    }
}

#[tokio::test]
async fn endless_empty_continuation_frames_close_with_1002_at_once() {
    let server = TestServer::start().await;
    let stream = raw::connect(server.addr, "id=frag&groups=g").await;
    let (mut read, mut write) = stream.into_split();
    // A text message that never ends: its first fragment, then empty continuations, as fast
    // as the socket takes them (a few hundred thousand a second on loopback).
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        write.write_all(&raw::frame(false, 1, b"{")).await.unwrap();
        let empties: Vec<u8> = (0..1000).flat_map(|_| raw::frame(false, 0, b"")).collect();
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(20) {
            if write.write_all(&empties).await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let (code, _) = raw::until_close(&mut read, std::time::Duration::from_secs(3)).await;
    assert_eq!(code, Some(1002));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    flood.abort();
    server.wait_metric("beacon_connections", |v| v == 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let server = TestServer::start().await;
    // An unknown opcode, a continuation with no message, reserved bits: each is bad framing.
    for bad in [raw::frame(true, 0x3, b"x"), raw::frame(true, 0x0, b"x"), {
        let mut f = raw::frame(true, 0x1, b"{}");
        f[0] |= 0x40;
        f
    }] {
        let mut stream = raw::connect(server.addr, "id=bad&groups=g").await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &bad)
            .await
            .unwrap();
        let (code, before) = raw::until_close(&mut stream, common::WAIT).await;
        assert_eq!(code, Some(1002), "{bad:?}");
        assert_eq!(before, 2, "welcome and snapshot, then the close");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_fragmented_message_within_the_bounds_is_read() {
    let server = TestServer::start().await;
    let mut stream = raw::connect(server.addr, "id=f&groups=g").await;
    let message = br#"{"type":"ping","id":77}"#;
    let mut bytes = raw::frame(false, 1, &message[..3]);
    for chunk in message[3..message.len() - 1].chunks(1) {
        bytes.extend(raw::frame(false, 0, chunk));
        bytes.extend(raw::frame(false, 0, b""));
    }
    bytes.extend(raw::frame(true, 0, &message[message.len() - 1..]));
    tokio::io::AsyncWriteExt::write_all(&mut stream, &bytes)
        .await
        .unwrap();
    // Then a close of our own: the answer's frames come first, then the echo.
    tokio::io::AsyncWriteExt::write_all(&mut stream, &raw::frame(true, 8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (code, before) = raw::until_close(&mut stream, common::WAIT).await;
    assert_eq!(
        (code, before),
        (Some(1000), 3),
        "welcome, snapshot and pong"
    );
    server.stop().await;
}
