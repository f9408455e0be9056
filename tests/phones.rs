//! OwnTracks names, tids, cards and credentials, the admin role, and device profiles, against
//! the real server with requests shaped like the apps'.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use beacon::config::AuthMode;
use beacon::model::now_ms;
use common::TestServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &str,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, server.http(path));
    for (name, value) in headers {
        let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
        request = request.header(*name, value);
    }
    let response = request.body(body.to_owned()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn location(tid: Option<&str>) -> String {
    let mut msg = json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": now_ms() / 1000 - 5,
        "acc": 10, "batt": 80, "m": 1, "t": "u"});
    if let Some(tid) = tid {
        msg["tid"] = json!(tid);
    }
    msg.to_string()
}

async fn owntracks(server: &TestServer, headers: &[(&str, &[u8])], body: &str) -> (u16, String) {
    let mut all: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    all.extend_from_slice(headers);
    send(server, "POST", "/v1/ingest/owntracks?groups=g", &all, body).await
}

async fn snapshot_ids(server: &TestServer, group: &str) -> Vec<String> {
    let body = server
        .get_json(&format!("/v1/groups/{group}/positions"))
        .await;
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn owntracks_non_ascii_names_map_to_the_id_alphabet() {
    let server = TestServer::start().await;
    let (status, body) = owntracks(
        &server,
        &[
            ("x-limit-u", "Zoë Ann".as_bytes()),
            ("x-limit-d", "Téléphone 7".as_bytes()),
        ],
        &location(None),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(snapshot_ids(&server, "g").await, ["Zo-Ann:T-l-phone-7"]);
    server.stop().await;
}

#[tokio::test]
async fn owntracks_reply_keeps_each_devices_own_tid() {
    let server = TestServer::start().await;
    let jane: &[(&str, &[u8])] = &[("x-limit-u", b"jane"), ("x-limit-d", b"pixel")];
    let (status, body) = owntracks(&server, jane, &location(Some("JD"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = owntracks(
        &server,
        &[("x-limit-u", b"bob"), ("x-limit-d", b"iphone")],
        &location(None),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = json_of(&body);
    let tid_of = |topic: &str| {
        answer
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["topic"] == topic)
            .unwrap_or_else(|| panic!("{topic} in {answer}"))["tid"]
            .clone()
    };
    assert_eq!(
        tid_of("owntracks/jane/pixel"),
        "JD",
        "the tid jane's phone sent"
    );
    assert_eq!(
        tid_of("owntracks/bob/iphone"),
        "ne",
        "no tid sent: letters of the id"
    );
    server.stop().await;
}

#[tokio::test]
async fn owntracks_card_names_the_profile_and_lwt_is_answered_empty() {
    let server = TestServer::start().await;
    let jane: &[(&str, &[u8])] = &[("x-limit-u", b"jane"), ("x-limit-d", b"pixel")];
    let card = json!({"_type": "card", "name": "Jane Doë", "face": "aGVsbG8=", "tid": "JD"});
    let (status, body) = owntracks(&server, jane, &card.to_string()).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    let profile = server.get_json("/v1/devices/jane:pixel/profile").await;
    assert_eq!(profile["name"], "Jane Doë", "{profile}");

    let lwt = json!({"_type": "lwt", "tst": now_ms() / 1000});
    let (status, body) = owntracks(&server, jane, &lwt.to_string()).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    server.stop().await;
}

fn token(sub: &str, groups: &[&str], role: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"sub": sub, "groups": groups, "role": role, "exp": exp});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}").into_bytes()
}

#[tokio::test]
async fn owntracks_wrong_password_with_tokens_is_401_with_or_without_names() {
    let server = TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let wrong = basic("jane", "not-a-token");
    for with_device in [true, false] {
        let mut headers: Vec<(&str, &[u8])> =
            vec![("authorization", &wrong), ("x-limit-u", b"jane")];
        if with_device {
            headers.push(("x-limit-d", b"pixel"));
        }
        let (status, body) = owntracks(&server, &headers, &location(None)).await;
        assert_eq!(status, 401, "with X-Limit-D: {with_device}: {body}");
    }
    // The right token without X-Limit-D: the token names the device.
    let right = basic("jane", &token("jane-phone", &["g"], "device"));
    let (status, body) = owntracks(
        &server,
        &[("authorization", &right), ("x-limit-u", b"jane")],
        &location(None),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn admins_watch_like_viewers_and_do_not_publish() {
    let server = TestServer::start().await;
    let mut device = server.device("bus", "g").await;
    device.pos(1.0, 2.0).await;
    let mut admin = server.connect("id=boss&groups=g&role=admin").await;
    let welcome = admin.expect("welcome").await;
    assert_eq!(welcome["role"], "admin", "{welcome}");
    let snapshot = admin.expect("snapshot").await;
    assert_eq!(snapshot["group"], "g");
    admin.send(json!({"type": "pos", "lat": 1, "lon": 2})).await;
    let error = admin.until("error").await;
    assert_eq!(error["code"], "forbidden", "{error}");
    device.pos(1.5, 2.0).await;
    admin
        .until_update(|u| u["id"] == "bus" && u["lat"] == 1.5)
        .await;

    let (status, body) = send(
        &server,
        "POST",
        "/v1/positions?id=boss&groups=g&role=admin",
        &[("content-type", b"application/json")],
        r#"{"lat":1,"lon":2}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // A JWT role claim `admin` gives the role too.
    let jwt = TestServer::with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let mut admin = jwt
        .connect(&format!("access_token={}", token("boss", &["g"], "admin")))
        .await;
    assert_eq!(admin.expect("welcome").await["role"], "admin");
    jwt.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn profiles_are_set_by_the_device_or_an_admin_of_its_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let server = TestServer::with(move |c| c.data_dir = Some(path)).await;
    let mut device = server.device("bus", "g").await;
    device.pos(1.0, 2.0).await;
    device.until_update(|u| u["id"] == "bus").await;
    let put = |query: &'static str, body: &'static str| {
        let server = &server;
        async move {
            send(
                server,
                "PUT",
                &format!("/v1/devices/bus/profile?{query}"),
                &[("content-type", b"application/json")],
                body,
            )
            .await
        }
    };
    let (status, body) = put(
        "id=bus&groups=g",
        r##"{"name":"Bus 17 – Nord","color":"#12abEF"}"##,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["name"], "Bus 17 – Nord");

    let (status, body) = put("id=v&groups=g&role=viewer", r#"{"name":"x"}"#).await;
    assert_eq!(status, 403, "a viewer may not: {body}");
    let (status, body) = put("id=boss&groups=other&role=admin", r#"{"name":"x"}"#).await;
    assert_eq!(status, 403, "an admin of another group may not: {body}");
    let (status, body) = put(
        "id=boss&groups=g&role=admin",
        r##"{"name":"Bus 17","color":"#000000"}"##,
    )
    .await;
    assert_eq!(status, 200, "an admin of the device's group may: {body}");

    for bad in [
        r#"{"name":""}"#,
        r#"{"name":"a\nb"}"#,
        r##"{"color":"#12345"}"##,
        r#"{"color":"red"}"#,
        r#"{"nickname":"x"}"#,
    ] {
        let (status, body) = put("id=bus&groups=g", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let long = format!(r#"{{"name":"{}"}}"#, "é".repeat(65));
    let (status, _) = send(
        &server,
        "PUT",
        "/v1/devices/bus/profile?id=bus&groups=g",
        &[],
        &long,
    )
    .await;
    assert_eq!(status, 400);
    server.stop().await;

    // Kept in the data directory across a restart.
    let path = dir.path().to_owned();
    let server = TestServer::with(move |c| c.data_dir = Some(path)).await;
    let profile = common::eventually(|| async {
        let profile = server.get_json("/v1/devices/bus/profile").await;
        (profile["name"] == "Bus 17").then_some(profile)
    })
    .await;
    assert_eq!(profile["color"], "#000000");
    server.stop().await;
}

#[tokio::test]
async fn position_records_carry_the_profile_name() {
    let server = TestServer::start().await;
    let mut viewer = server.viewer("v", "g").await;
    let mut device = server.device("bus", "g").await;
    device.pos(1.0, 2.0).await;
    viewer.until_update(|u| u["id"] == "bus").await;
    let (status, body) = send(
        &server,
        "PUT",
        "/v1/devices/bus/profile?id=bus&groups=g",
        &[("content-type", b"application/json")],
        r#"{"name":"Bus 17"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let update = viewer
        .until_update(|u| u["id"] == "bus" && u.get("name").is_some())
        .await;
    assert_eq!(
        update["name"], "Bus 17",
        "a batch record when the name changed"
    );
    assert_eq!(update["lat"], 1.0);

    for codec in [None, Some("beacon.v1.msgpack")] {
        let mut late = server
            .connect_with("id=late&groups=g&role=viewer", codec)
            .await;
        late.expect("welcome").await;
        let snapshot = late.expect("snapshot").await;
        let bus = snapshot["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "bus")
            .unwrap_or_else(|| panic!("{snapshot}"))
            .clone();
        assert_eq!(bus["name"], "Bus 17", "every snapshot: {bus}");
    }
    server.stop().await;
}

/// Instances sharing one Redis share profiles: a name set on one reaches the subscribers of
/// another live, both answer it, and an instance started later loads it.
#[tokio::test]
async fn profiles_are_shared_across_instances() {
    let redis = common::redis_server::RedisServer::start();
    let start = |url: String| TestServer::with(move |c| c.redis_url = Some(url));
    let a = start(redis.url()).await;
    let b = start(redis.url()).await;
    let mut viewer = b.viewer("v", "g").await;
    let mut device = a.device("bus", "g").await;
    device.pos(1.0, 2.0).await;
    viewer.until_update(|u| u["id"] == "bus").await;

    let (status, body) = send(
        &a,
        "PUT",
        "/v1/devices/bus/profile?id=bus&groups=g",
        &[("content-type", b"application/json")],
        r##"{"name":"Bus 17","color":"#112233"}"##,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let update = viewer
        .until_update(|u| u["id"] == "bus" && u.get("name").is_some())
        .await;
    assert_eq!(
        update["name"], "Bus 17",
        "the other instance's subscribers hear it"
    );
    let on_b = b.get_json("/v1/devices/bus/profile").await;
    assert_eq!(on_b["name"], "Bus 17");
    assert_eq!(on_b["color"], "#112233");

    let c = start(redis.url()).await;
    let on_c = common::eventually(|| async {
        let profile = c.get_json("/v1/devices/bus/profile").await;
        (profile["name"] == "Bus 17").then_some(profile)
    })
    .await;
    assert_eq!(
        on_c["color"], "#112233",
        "a later instance loads the stored profiles"
    );
    for server in [a, b, c] {
        server.stop().await;
    }
}
