//! Webhooks against the real server and real HTTP receivers on 127.0.0.1: the routes and
//! their refusals, Standard Webhooks signatures checked here with an HMAC of our own, retries
//! with one `webhook-id`, 410, patterns, a blocked receiver that delays nothing else, a
//! pending delivery across a restart, and two instances over a real Redis delivering once.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use beacon::Config;
use beacon::model::now_ms;
use common::redis_server::RedisServer;
use common::{TestServer, eventually};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

/// The query of a group admin with `--auth none`.
const ADMIN: &str = "id=boss&groups=g&role=admin";

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: String,
    /// When it arrived.
    at: std::time::Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    /// Requests answered (or, when held, received), in order.
    requests: Mutex<Vec<Received>>,
    /// Statuses to answer, in order; 200 once they run out.
    script: Mutex<VecDeque<u16>>,
    /// Set: every request waits for it before being answered.
    hold: Option<Notify>,
    /// Requests that started.
    started: AtomicUsize,
    /// The body of every answer (default `thanks`).
    reply: Option<String>,
    /// A `Retry-After` value sent with every answer that is not 2xx.
    retry_after: Option<&'static str>,
}

/// A webhook receiver: a real axum server on a free loopback port.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.started.fetch_add(1, Ordering::SeqCst);
    state.requests.lock().unwrap().push(Received {
        headers,
        body,
        at: std::time::Instant::now(),
    });
    if let Some(hold) = &state.hold {
        hold.notified().await;
    }
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    let reply = state.reply.clone().unwrap_or_else(|| "thanks".into());
    let status = StatusCode::from_u16(status).unwrap();
    match state.retry_after {
        Some(value) if !status.is_success() => {
            (status, [(axum::http::header::RETRY_AFTER, value)], reply).into_response()
        }
        _ => (status, reply).into_response(),
    }
}

impl Receiver {
    async fn start() -> Self {
        Self::with(ReceiverState::default()).await
    }

    /// A receiver answering `statuses` first, then 200.
    async fn scripted(statuses: &[u16]) -> Self {
        let state = ReceiverState::default();
        state.script.lock().unwrap().extend(statuses);
        Self::with(state).await
    }

    /// A receiver that holds every request until [`Receiver::release`].
    async fn holding() -> Self {
        Self::with(ReceiverState {
            hold: Some(Notify::new()),
            ..ReceiverState::default()
        })
        .await
    }

    async fn with(state: ReceiverState) -> Self {
        let state = Arc::new(state);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(|| async {
            let got = self.requests();
            (got.len() >= n).then_some(got)
        })
        .await
    }

    fn release(&self) {
        if let Some(hold) = &self.state.hold {
            hold.notify_waiters();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

/// A test server whose webhooks may target loopback, with a fast retry schedule.
async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::with(|c| {
        c.webhooks.webhook_allow_private = true;
        c.webhooks.webhook_retry_unit_ms = 10;
        c.webhooks.webhook_timeout_ms = 5000;
        adjust(c);
    })
    .await
}

async fn create(server: &TestServer, query: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.http(&format!("/v1/groups/g/webhooks?{query}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Creates a webhook as the admin and returns its answer (checked to be 201).
async fn hook(server: &TestServer, url: &str, events: &[&str]) -> Value {
    let response = create(server, ADMIN, json!({ "url": url, "events": events })).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

async fn list(server: &TestServer) -> Vec<Value> {
    let body = server
        .get_json(&format!("/v1/groups/g/webhooks?{ADMIN}"))
        .await;
    body["webhooks"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone()
}

async fn deliveries(server: &TestServer, id: &str) -> Vec<Value> {
    let body = server
        .get_json(&format!("/v1/groups/g/webhooks/{id}/deliveries?{ADMIN}"))
        .await;
    body["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone()
}

/// A Traccar Client SOS alarm from `phone` at `ts_s` (seconds): an `alarm` event in group g.
async fn alarm(server: &TestServer, phone: &str, ts_s: i64) {
    let path = format!(
        "/v1/ingest/osmand?id={phone}&groups=g&lat=48.85&lon=2.35&timestamp={ts_s}&alarm=sos"
    );
    let response = reqwest::Client::new()
        .post(server.http(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// An OwnTracks region entry at `tst` (seconds): a `region.enter` event in group g.
async fn region_enter(server: &TestServer, tst: i64) {
    let body = json!({"_type": "transition", "wtst": tst - 10, "lat": 52.5, "lon": 13.4,
                      "tst": tst, "acc": 15, "event": "enter", "desc": "Home", "t": "c"});
    let response = reqwest::Client::new()
        .post(server.http("/v1/ingest/owntracks?groups=g"))
        .header("x-limit-u", "jane")
        .header("x-limit-d", "pixel")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Checks a request's Standard Webhooks signature with `secret`, computed here.
fn assert_signed(request: &Received, secret: &str) {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .unwrap();
    let id = request.header("webhook-id");
    let timestamp = request.header("webhook-timestamp");
    let sent_at: i64 = timestamp.parse().expect("Unix seconds");
    assert!((sent_at - now_ms() / 1000).abs() < 600, "{sent_at}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", request.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let signatures: Vec<&str> = request.header("webhook-signature").split(' ').collect();
    assert!(
        signatures.contains(&expected.as_str()),
        "signature {signatures:?} is not {expected}"
    );
}

/// The value of one sample (`name{labels}`) of the server's metrics.
async fn sample(server: &TestServer, sample: &str) -> f64 {
    let text = server.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const DELIVERED: &str = "beacon_webhook_deliveries_total{outcome=\"delivered\"}";

#[tokio::test]
async fn an_event_is_posted_signed_and_recorded() {
    let server = server_with(|_| {}).await;
    let receiver = Receiver::start().await;
    let created = hook(&server, &receiver.url(), &["alarm"]).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["url"], receiver.url());
    assert_eq!(created["events"], json!(["alarm"]));
    let secret = created["secret"].as_str().unwrap();
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert!(key.len() >= 24, "{} random bytes", key.len());

    let listed = list(&server).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);
    assert!(listed[0].get("secret").is_none(), "{}", listed[0]);
    assert!(!listed[0].to_string().contains(secret));

    let ts = now_ms() / 1000 - 5;
    alarm(&server, "phone-1", ts).await;
    let got = receiver.wait_for(1).await;
    let request = &got[0];
    assert_signed(request, secret);
    assert_eq!(request.header("content-type"), "application/json");
    assert!(request.header("webhook-id").starts_with("msg_"));
    let body = request.json();
    assert_eq!(body["type"], "alarm");
    assert_eq!(body["data"]["kind"], "alarm");
    assert_eq!(body["data"]["alarm"], "sos");
    assert_eq!(body["data"]["device"], "phone-1");
    assert_eq!(body["data"]["group"], "g");
    assert_eq!(body["data"]["ts"], ts * 1000);
    let at = beacon::isotime::parse_ms(body["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(at, ts * 1000, "the timestamp is the event's, in ISO-8601");
    let logged = server.get_json("/v1/groups/g/events").await;
    assert_eq!(
        body["data"]["id"], logged["events"][0]["id"],
        "the event's id"
    );

    let record = eventually(|| async {
        let list = deliveries(&server, id).await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!(record[0]["outcome"], "delivered");
    assert_eq!(record[0]["status"], 200);
    assert_eq!(record[0]["attempt"], 1);
    assert_eq!(record[0]["webhook_id"], request.header("webhook-id"));
    assert_eq!(record[0]["response"], "thanks");
    server.wait_metric(DELIVERED, |_| true).await;
    assert_eq!(sample(&server, DELIVERED).await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn retry_after_holds_the_next_attempt_back() {
    // The schedule alone would retry 50 ms after the 503 (unit 10 ms); the receiver asks for
    // one second.
    let server = server_with(|_| {}).await;
    let state = ReceiverState {
        retry_after: Some("1"),
        ..ReceiverState::default()
    };
    state.script.lock().unwrap().push_back(503);
    let receiver = Receiver::with(state).await;
    let created = hook(&server, &receiver.url(), &["alarm"]).await;
    let id = created["id"].as_str().unwrap();
    alarm(&server, "phone-1", now_ms() / 1000 - 5).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    let pause = got[1].at - got[0].at;
    assert!(
        pause >= std::time::Duration::from_secs(1),
        "the second attempt came {pause:?} after the first"
    );
    let record = eventually(|| async {
        let list = deliveries(&server, id).await;
        (list.len() == 2).then_some(list)
    })
    .await;
    assert_eq!(record[1]["status"], 503);
    assert!(record[1]["next_attempt_at"].is_string(), "{}", record[1]);
    assert_eq!(record[0]["outcome"], "delivered");
    assert_eq!(
        sample(&server, "beacon_webhook_retry_after_delays_total").await,
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_webhook_id() {
    let server = server_with(|_| {}).await;
    let receiver = Receiver::scripted(&[500, 503]).await;
    let created = hook(&server, &receiver.url(), &["*"]).await;
    let (id, secret) = (
        created["id"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    alarm(&server, "phone-1", now_ms() / 1000 - 5).await;
    let got = receiver.wait_for(3).await;
    for request in &got {
        assert_signed(request, secret);
        assert_eq!(request.header("webhook-id"), got[0].header("webhook-id"));
        assert_eq!(request.body, got[0].body, "the same body on every attempt");
    }
    let record = eventually(|| async {
        let list = deliveries(&server, id).await;
        (list.len() == 3).then_some(list)
    })
    .await;
    let outcomes: Vec<&Value> = record.iter().map(|r| &r["outcome"]).collect();
    assert_eq!(
        outcomes,
        [&json!("delivered"), &json!("failed"), &json!("failed")]
    );
    assert_eq!(record[2]["status"], 500);
    assert_eq!(record[1]["status"], 503);
    assert_eq!(record[0]["attempt"], 3);
    assert!(record[1]["next_attempt_at"].is_string());
    assert!(record[0].get("next_attempt_at").is_none());
    assert_eq!(sample(&server, "beacon_webhook_retries_total").await, 2.0);
    assert_eq!(
        sample(&server, "beacon_webhook_retry_after_delays_total").await,
        0.0,
        "no Retry-After, no delay past the schedule"
    );
    assert_eq!(sample(&server, "beacon_webhook_queue_depth").await, 0.0);
    assert_eq!(receiver.requests().len(), 3, "nothing after the success");
    server.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let server = server_with(|_| {}).await;
    let gone = Receiver::scripted(&[410, 410, 410]).await;
    let live = Receiver::start().await;
    let created = hook(&server, &gone.url(), &["alarm"]).await;
    hook(&server, &live.url(), &["alarm"]).await;
    let ts = now_ms() / 1000 - 60;
    alarm(&server, "phone-1", ts).await;
    gone.wait_for(1).await;
    eventually(|| async {
        let listed = list(&server).await;
        let entry = listed
            .iter()
            .find(|w| w["id"] == created["id"])
            .unwrap()
            .clone();
        (entry["disabled"] == true).then_some(())
    })
    .await;
    server
        .wait_metric("beacon_webhook_disabled_endpoints", |v| v == 1.0)
        .await;
    let record = deliveries(&server, created["id"].as_str().unwrap()).await;
    assert_eq!(record[0]["outcome"], "gone");

    // A later event is queued for the live endpoint only.
    alarm(&server, "phone-1", ts + 10).await;
    live.wait_for(2).await;
    server
        .wait_metric("beacon_webhook_queue_depth", |v| v == 0.0)
        .await;
    assert_eq!(gone.requests().len(), 1, "nothing more after 410");
    server.stop().await;
}

#[tokio::test]
async fn private_targets_are_refused_without_the_flag() {
    let server = TestServer::start().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest",
        "http://0.0.0.0/hook",
    ] {
        let response = create(&server, ADMIN, json!({"url": url, "events": ["alarm"]})).await;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("webhook-allow-private"),
            "{url}: {body}"
        );
    }
    assert!(list(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn only_admins_of_the_group_manage_webhooks() {
    let server = server_with(|_| {}).await;
    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["alarm"]});
    for query in [
        "id=v&groups=g&role=viewer",
        "id=d&groups=g&role=device",
        "id=boss&groups=other&role=admin",
    ] {
        let response = create(&server, query, body.clone()).await;
        assert_eq!(response.status(), 403, "{query}");
        let refused: Value = response.json().await.unwrap();
        assert_eq!(refused["error"], "forbidden");
        let response = server.get(&format!("/v1/groups/g/webhooks?{query}")).await;
        assert_eq!(response.status(), 403, "{query}");
    }
    let created = hook(&server, "http://127.0.0.1:9/hook", &["alarm"]).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/groups/g/webhooks/{id}");
    let viewer = "id=v&groups=g&role=viewer";
    let response = server.get(&format!("{path}/deliveries?{viewer}")).await;
    assert_eq!(response.status(), 403);
    let client = reqwest::Client::new();
    let response = client
        .delete(server.http(&format!("{path}?{viewer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(list(&server).await.len(), 1, "still there");
    let response = client
        .delete(server.http(&format!("{path}?{ADMIN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(list(&server).await.is_empty());
    let response = client
        .delete(server.http(&format!("{path}?{ADMIN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = server.get(&format!("{path}/deliveries?{ADMIN}")).await;
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn bad_urls_patterns_and_bodies_are_400_and_bounds_hold() {
    let server = server_with(|c| c.webhooks.webhooks_per_group = 2).await;
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(2100));
    let too_many: Vec<&str> = vec!["alarm"; 33];
    let cases = [
        (
            json!({"url": "ftp://127.0.0.1/x", "events": ["alarm"]}),
            "http or https",
        ),
        (json!({"url": "not a url", "events": ["alarm"]}), "absolute"),
        (
            json!({"url": "http://u:p@127.0.0.1/x", "events": ["alarm"]}),
            "credentials",
        ),
        (json!({"url": long, "events": ["alarm"]}), "2048"),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["alarms"]}),
            "\"alarms\"",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["geo*"]}),
            "\"geo*\"",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": []}),
            "at least one",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": too_many}),
            "at most 32",
        ),
        (json!({"url": "http://127.0.0.1:9/"}), "events"),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["*"], "x": 1}),
            "unknown field",
        ),
    ];
    for (body, says) in cases {
        let response = create(&server, ADMIN, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let refused: Value = response.json().await.unwrap();
        assert_eq!(refused["error"], "bad_request");
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let response = reqwest::Client::new()
        .post(server.http("/v1/groups/bad%20group/webhooks?id=boss&groups=g&role=admin"))
        .json(&json!({"url": "http://127.0.0.1:9/", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    hook(&server, "http://127.0.0.1:9/a", &["*"]).await;
    hook(&server, "http://127.0.0.1:9/b", &["region.*", "alarm"]).await;
    let response = create(
        &server,
        ADMIN,
        json!({"url": "http://127.0.0.1:9/c", "events": ["*"]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("--webhooks-per-group")
    );
    assert_eq!(list(&server).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn patterns_choose_the_events() {
    let server = server_with(|_| {}).await;
    let fences = Receiver::start().await;
    let regions = Receiver::start().await;
    let alarms = Receiver::start().await;
    hook(&server, &fences.url(), &["geofence.*"]).await;
    hook(&server, &regions.url(), &["region.*"]).await;
    hook(&server, &alarms.url(), &["alarm", "proximity.enter"]).await;
    let now = now_ms() / 1000;
    alarm(&server, "phone-1", now - 30).await;
    region_enter(&server, now - 20).await;
    regions.wait_for(1).await;
    alarms.wait_for(1).await;
    // Every delivery queued when the events were recorded is done.
    server
        .wait_metric("beacon_webhook_queue_depth", |v| v == 0.0)
        .await;
    assert_eq!(sample(&server, DELIVERED).await, 2.0);
    assert!(fences.requests().is_empty(), "geofence.* gets no alarm");
    let region = regions.requests();
    assert_eq!(region.len(), 1);
    assert_eq!(region[0].json()["type"], "region.enter");
    assert_eq!(region[0].json()["data"]["region"], "Home");
    let alarm = alarms.requests();
    assert_eq!(alarm.len(), 1);
    assert_eq!(alarm[0].json()["type"], "alarm");
    server.stop().await;
}

#[tokio::test]
async fn a_blocked_receiver_delays_neither_others_nor_the_fan_out() {
    let server = server_with(|c| c.webhooks.webhook_timeout_ms = 60_000).await;
    let blocked = Receiver::holding().await;
    let live = Receiver::start().await;
    // A port with nothing listening: every attempt fails at once and is retried.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    hook(&server, &blocked.url(), &["*"]).await;
    hook(
        &server,
        &format!("http://127.0.0.1:{dead_port}/hook"),
        &["*"],
    )
    .await;
    hook(&server, &live.url(), &["*"]).await;
    let mut viewer = server.viewer("v", "g").await;

    let now = now_ms() / 1000;
    alarm(&server, "phone-1", now - 30).await;
    blocked.wait_for(1).await;
    live.wait_for(1).await;
    let update = viewer.until_update(|u| u["id"] == "phone-1").await;
    assert_eq!(update["lat"], 48.85);

    // With the blocked receiver still holding its request, more events and positions flow.
    alarm(&server, "phone-2", now - 20).await;
    live.wait_for(2).await;
    viewer.until_update(|u| u["id"] == "phone-2").await;
    // The blocked endpoint has both in flight, the first still unanswered.
    blocked.wait_for(2).await;
    eventually(|| async {
        let failed = sample(
            &server,
            "beacon_webhook_deliveries_total{outcome=\"error\"}",
        )
        .await;
        (failed >= 2.0).then_some(())
    })
    .await;
    assert_eq!(
        sample(&server, DELIVERED).await,
        2.0,
        "only the live receiver's"
    );
    blocked.release();
    server.stop().await;
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let receiver = Receiver::scripted(&[503]).await;
    // Retries 5 s after the failure: long enough to restart in between.
    let config = move |c: &mut Config| {
        c.data_dir = Some(path.clone());
        c.webhooks.webhook_allow_private = true;
        c.webhooks.webhook_retry_unit_ms = 1000;
    };
    let first = TestServer::with(config.clone()).await;
    let created = hook(&first, &receiver.url(), &["alarm"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    alarm(&first, "phone-1", now_ms() / 1000 - 5).await;
    receiver.wait_for(1).await;
    eventually(|| async {
        let list = deliveries(&first, &id).await;
        (!list.is_empty()).then_some(())
    })
    .await;
    first.stop().await;
    assert_eq!(receiver.requests().len(), 1, "no retry before the restart");

    let second = TestServer::with(config).await;
    let listed = list(&second).await;
    assert_eq!(listed.len(), 1, "the definition survived");
    assert_eq!(listed[0]["id"], id.as_str());
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    assert_eq!(got[1].body, got[0].body);
    assert_signed(&got[1], &secret);
    let record = eventually(|| async {
        let list = deliveries(&second, &id).await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(record[0]["outcome"], "delivered");
    assert_eq!(
        record[0]["attempt"], 2,
        "the second attempt, after the restart"
    );
    second
        .wait_metric("beacon_webhook_queue_depth", |v| v == 0.0)
        .await;
    second.stop().await;
    let file = std::fs::read_to_string(dir.path().join("webhooks.json")).unwrap();
    let saved: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(saved["pending"], json!([]), "nothing left to deliver");
    assert_eq!(saved["endpoints"][0]["id"], id.as_str());
}

#[tokio::test]
async fn two_instances_share_webhooks_and_deliver_each_event_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let config = move |c: &mut Config| {
        c.redis_url = Some(url.clone());
        c.webhooks.webhook_allow_private = true;
        c.webhooks.webhook_retry_unit_ms = 10;
    };
    let a = TestServer::with(config.clone()).await;
    let b = TestServer::with(config).await;
    let receiver = Receiver::start().await;
    let created = hook(&a, &receiver.url(), &["alarm"]).await;
    eventually(|| async {
        let listed = list(&b).await;
        (listed.len() == 1 && listed[0]["id"] == created["id"]).then_some(())
    })
    .await;

    // The same report reaches both instances (a phone retrying through another one).
    let ts = now_ms() / 1000 - 5;
    tokio::join!(alarm(&a, "phone-1", ts), alarm(&b, "phone-1", ts));
    receiver.wait_for(1).await;
    // Each instance saw the event once and claimed it; one won, the other stood down.
    eventually(|| async {
        let delivered = sample(&a, DELIVERED).await + sample(&b, DELIVERED).await;
        let lost = sample(&a, "beacon_webhook_claims_lost_total").await
            + sample(&b, "beacon_webhook_claims_lost_total").await;
        (delivered == 1.0 && lost == 1.0).then_some(())
    })
    .await;
    assert_eq!(receiver.requests().len(), 1, "delivered once");
    // Either instance shows the attempt, whichever made it.
    let id = created["id"].as_str().unwrap();
    for server in [&a, &b] {
        let record = eventually(|| async {
            let list = deliveries(server, id).await;
            (!list.is_empty()).then_some(list)
        })
        .await;
        assert_eq!(record.len(), 1, "{record:?}");
        assert_eq!(record[0]["outcome"], "delivered");
        assert_eq!(
            record[0]["webhook_id"],
            receiver.requests()[0].header("webhook-id")
        );
    }

    // An event recorded only on the instance that did not create the webhook goes out too.
    alarm(&b, "phone-2", ts + 1).await;
    let got = receiver.wait_for(2).await;
    eventually(|| async {
        let lost = sample(&a, "beacon_webhook_claims_lost_total").await
            + sample(&b, "beacon_webhook_claims_lost_total").await;
        (lost == 2.0).then_some(())
    })
    .await;
    assert_eq!(receiver.requests().len(), 2);
    assert_eq!(got[1].json()["data"]["device"], "phone-2");
    assert_signed(&got[1], created["secret"].as_str().unwrap());

    // Redis restarted empty: the instances write their definitions back, so an instance
    // started afterwards learns them.
    let mut redis = redis;
    redis.kill();
    redis.restart();
    let url = redis.url();
    let c = TestServer::with(move |c| {
        c.redis_url = Some(url);
        c.webhooks.webhook_allow_private = true;
    })
    .await;
    eventually(|| async {
        let listed = list(&c).await;
        (listed.len() == 1 && listed[0]["id"] == created["id"]).then_some(())
    })
    .await;

    // A deletion reaches the other instances too.
    let response = reqwest::Client::new()
        .delete(b.http(&format!(
            "/v1/groups/g/webhooks/{}?{ADMIN}",
            created["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    eventually(|| async { list(&a).await.is_empty().then_some(()) }).await;
    eventually(|| async { list(&c).await.is_empty().then_some(()) }).await;
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_full_endpoint_queue_drops_and_counts_without_blocking() {
    let server = server_with(|c| c.webhooks.webhook_queue = 2).await;
    let blocked = Receiver::holding().await;
    hook(&server, &blocked.url(), &["alarm"]).await;
    let now = now_ms() / 1000;
    for i in 0..3 {
        // Answered at once although the receiver holds every request.
        alarm(&server, "phone-1", now - 60 + i).await;
    }
    assert_eq!(
        sample(
            &server,
            "beacon_webhook_deliveries_total{outcome=\"queue_full\"}"
        )
        .await,
        1.0
    );
    assert_eq!(sample(&server, "beacon_webhook_queue_depth").await, 2.0);
    blocked.wait_for(2).await;
    blocked.release();
    server.stop().await;
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let server = server_with(|c| c.webhooks.webhook_timeout_ms = 300).await;
    let blocked = Receiver::holding().await;
    let created = hook(&server, &blocked.url(), &["alarm"]).await;
    let id = created["id"].as_str().unwrap();
    alarm(&server, "phone-1", now_ms() / 1000 - 5).await;
    let got = blocked.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    let record = eventually(|| async {
        let list = deliveries(&server, id).await;
        (list.len() >= 2).then_some(list)
    })
    .await;
    assert_eq!(record.last().unwrap()["outcome"], "timeout");
    assert!(record.last().unwrap().get("status").is_none());
    blocked.release();
    server.stop().await;
}

#[tokio::test]
async fn the_answer_read_and_the_deliveries_kept_are_bounded() {
    let server = server_with(|_| {}).await;
    let receiver = Receiver::with(ReceiverState {
        reply: Some("x".repeat(5000)),
        ..ReceiverState::default()
    })
    .await;
    let created = hook(&server, &receiver.url(), &["alarm"]).await;
    let id = created["id"].as_str().unwrap();
    let now = now_ms() / 1000;
    for i in 0..101 {
        alarm(&server, "phone-1", now - 200 + i).await;
    }
    server.wait_metric(DELIVERED, |v| v == 101.0).await;
    let record = deliveries(&server, id).await;
    assert_eq!(record.len(), 100, "the newest 100 attempts are kept");
    let distinct: std::collections::HashSet<&str> = record
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), 100, "one attempt per event");
    assert!(record.iter().all(|r| r["outcome"] == "delivered"));
    let response = record[0]["response"].as_str().unwrap();
    assert_eq!(response.len(), 1024, "at most 1 KiB of the answer is read");
    server.stop().await;
}

#[tokio::test]
async fn with_tokens_only_an_admin_token_of_the_group_manages_webhooks() {
    let secret = "a-test-secret-of-at-least-32-bytes!!";
    let server = server_with(|c| {
        c.auth.mode = beacon::config::AuthMode::Jwt;
        c.auth.jwt_secret = Some(secret.into());
    })
    .await;
    let token = |role: &str, group: &str| {
        let claims = json!({"sub": "someone", "groups": [group], "role": role,
                            "exp": now_ms() / 1000 + 600});
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let client = reqwest::Client::new();
    let post = |bearer: Option<String>| {
        let mut request = client
            .post(server.http("/v1/groups/g/webhooks"))
            .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(
        post(Some(token("viewer", "g"))).await.unwrap().status(),
        403
    );
    assert_eq!(
        post(Some(token("device", "g"))).await.unwrap().status(),
        403
    );
    assert_eq!(post(Some(token("admin", "h"))).await.unwrap().status(), 403);
    let created = post(Some(token("admin", "g"))).await.unwrap();
    assert_eq!(created.status(), 201);
    let listed = client
        .get(server.http("/v1/groups/g/webhooks"))
        .bearer_auth(token("admin", "g"))
        .send()
        .await
        .unwrap();
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// Writes a fresh `--webhook-secret-key-file` (the base64 of 32 random bytes) into `dir`.
fn key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let key: [u8; 32] = rand::random();
    std::fs::write(&path, format!("{}\n", STANDARD.encode(key))).unwrap();
    path
}

/// What `beacon::serve` says when it refuses to start with `config`.
async fn refusal(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(
        common::WAIT,
        beacon::serve(listener, config, std::future::pending()),
    )
    .await
    .expect("refused at once");
    started.expect_err("refused to start").to_string()
}

#[tokio::test]
async fn with_a_key_secrets_are_sealed_in_the_file_and_in_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = key_file(dir.path(), "webhook.key");
    let (url, data_dir, key_path) = (redis.url(), data.clone(), key.clone());
    let config = move |c: &mut Config| {
        c.data_dir = Some(data_dir.clone());
        c.redis_url = Some(url.clone());
        c.webhooks.webhook_allow_private = true;
        c.webhooks.webhook_retry_unit_ms = 10;
        c.webhooks.webhook_secret_key_file = Some(key_path.clone());
    };
    let receiver = Receiver::start().await;
    let first = TestServer::with(config.clone()).await;
    let created = hook(&first, &receiver.url(), &["alarm"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_part = secret.strip_prefix("whsec_").unwrap().to_owned();
    alarm(&first, "phone-1", now_ms() / 1000 - 5).await;
    assert_signed(&receiver.wait_for(1).await[0], &secret);

    let mut conn = redis.connection().await;
    let hash: std::collections::HashMap<String, String> = eventually(|| {
        let mut conn = conn.clone();
        async move {
            let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg("beacon:webhooks")
                .query_async(&mut conn)
                .await
                .unwrap();
            (!hash.is_empty()).then_some(hash)
        }
    })
    .await;
    let stored: Value = serde_json::from_str(&hash[&id]).unwrap();
    assert!(
        stored["secret"].as_str().unwrap().starts_with("sealed_v1:"),
        "{stored}"
    );
    assert!(!hash[&id].contains(&key_part), "no secret in Redis");
    first.stop().await;
    let file = std::fs::read_to_string(data.join("webhooks.json")).unwrap();
    assert!(file.contains(&id), "the endpoint is in the file");
    assert!(file.contains("sealed_v1:"), "{file}");
    assert!(!file.contains(&key_part), "no secret in the file");

    // With the key, a restart signs with the same secret.
    let second = TestServer::with(config.clone()).await;
    assert_eq!(list(&second).await.len(), 1);
    alarm(&second, "phone-1", now_ms() / 1000 - 4).await;
    let got = receiver.wait_for(2).await;
    assert_signed(&got[1], &secret);
    second.stop().await;
    let file = std::fs::read_to_string(data.join("webhooks.json")).unwrap();
    assert!(!file.contains(&key_part), "still no secret in the file");

    // Without it, or with another one, the server refuses to start and keeps the file.
    let mut without = Config::default();
    config(&mut without);
    without.webhooks.webhook_secret_key_file = None;
    let refused = refusal(without.clone()).await;
    assert!(
        refused.contains("sealed") && refused.contains("--webhook-secret-key-file"),
        "{refused}"
    );
    assert!(
        refused.contains("webhooks.json"),
        "names the file: {refused}"
    );
    let mut other = without.clone();
    other.webhooks.webhook_secret_key_file = Some(key_file(dir.path(), "other.key"));
    let refused = refusal(other.clone()).await;
    assert!(refused.contains("do not open"), "{refused}");
    // Redis alone (no data directory) is checked too.
    other.data_dir = None;
    let refused = refusal(other).await;
    assert!(
        refused.contains("Redis") && refused.contains("do not open"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("webhooks.json")).unwrap(),
        file,
        "the file is left as it was"
    );
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

/// Runs `scripts/verify-webhook.py` on a captured request; its exit status and output.
fn python_verifier(secret: &str, request: &Received, extra: &[&str]) -> Option<(bool, String)> {
    let headers: serde_json::Map<String, Value> = request
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
        .collect();
    let capture = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        capture.path(),
        json!({ "headers": headers, "body": request.body }).to_string(),
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify-webhook.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg("--secret")
        .arg(secret)
        .args(extra)
        .arg(capture.path())
        .output()
        .ok()?;
    Some((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[tokio::test]
async fn the_documented_python_verifier_checks_a_real_delivery() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 not found: the verifier script is not run");
        return;
    }
    let server = server_with(|_| {}).await;
    let receiver = Receiver::start().await;
    let created = hook(&server, &receiver.url(), &["alarm"]).await;
    let secret = created["secret"].as_str().unwrap();
    alarm(&server, "phone-1", now_ms() / 1000 - 5).await;
    let request = receiver.wait_for(1).await.remove(0);
    server.stop().await;

    let (ok, said) = python_verifier(secret, &request, &[]).unwrap();
    assert!(ok, "{said}");
    assert!(said.starts_with("verified: alarm ev"), "{said}");

    let mut tampered = request.clone();
    tampered.body = tampered.body.replace("sos", "SOS");
    let (ok, said) = python_verifier(secret, &tampered, &[]).unwrap();
    assert!(!ok && said.contains("no matching signature"), "{said}");

    let other = format!("whsec_{}", STANDARD.encode([9u8; 32]));
    let (ok, _) = python_verifier(&other, &request, &[]).unwrap();
    assert!(!ok, "another secret does not verify");

    let sent_at: i64 = request.header("webhook-timestamp").parse().unwrap();
    let late = (sent_at + 301).to_string();
    let (ok, said) = python_verifier(secret, &request, &["--now", &late]).unwrap();
    assert!(!ok && said.contains("tolerance"), "{said}");
    let in_time = (sent_at + 299).to_string();
    let (ok, said) = python_verifier(secret, &request, &["--now", &in_time]).unwrap();
    assert!(ok, "{said}");
}
