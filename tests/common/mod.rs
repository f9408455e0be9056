//! Test harness: the real server on 127.0.0.1:0 and real WebSocket clients.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod redis_server;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use beacon::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server; shut down (and checked to exit cleanly) on [`TestServer::stop`], aborted
/// on drop otherwise.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), beacon::ServeError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts a server with a short tick, after `adjust` changes the defaults.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.hub.tick_ms = 50;
        config.shutdown_grace_secs = 5;
        // Tests publish as fast as they can; the rate limit has tests of its own.
        config.limits.rate_per_sec = 100_000;
        config.limits.rate_burst = 100_000;
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(beacon::serve(listener, config, shutdown));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws?{}", self.addr, query)
    }

    /// Connects with the JSON codec (no subprotocol offered).
    pub async fn connect(&self, query: &str) -> Client {
        self.connect_with(query, None).await
    }

    pub async fn connect_with(&self, query: &str, protocol: Option<&str>) -> Client {
        match self.try_connect(query, protocol).await {
            Ok(client) => client,
            Err(e) => panic!("connect {query}: {e}"),
        }
    }

    pub async fn try_connect(
        &self,
        query: &str,
        protocol: Option<&str>,
    ) -> Result<Client, tungstenite::Error> {
        let mut request = self.ws_url(query).into_client_request().unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let negotiated = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let msgpack = negotiated.as_deref() == Some("beacon.v1.msgpack");
        Ok(Client {
            ws,
            msgpack,
            negotiated,
        })
    }

    /// A device client, welcomed and past its snapshots.
    pub async fn device(&self, id: &str, groups: &str) -> Client {
        let mut c = self
            .connect(&format!("id={id}&groups={groups}&role=device"))
            .await;
        c.skip_greeting(groups.split(',').count()).await;
        c
    }

    /// A viewer client, welcomed and past its snapshots.
    pub async fn viewer(&self, id: &str, groups: &str) -> Client {
        let mut c = self
            .connect(&format!("id={id}&groups={groups}&role=viewer"))
            .await;
        c.skip_greeting(groups.split(',').count()).await;
        c
    }

    /// GETs `path` and parses the body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.http(path)).await.unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        metric_value(&text, name)
    }

    /// Waits until metric `name` satisfies `ok`.
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        eventually(|| async {
            let v = self.metric(name).await;
            ok(v).then_some(v)
        })
        .await
    }

    /// Triggers shutdown and checks the server exits cleanly within its grace period.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("server did not stop within its grace period")
            .unwrap()
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sums every sample of metric `name` (label sets included).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `probe` until it yields a value, failing after [`WAIT`].
pub async fn eventually<T, F, Fut>(probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub msgpack: bool,
    pub negotiated: Option<String>,
}

/// What a read returned: a decoded frame, or the end of the connection.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Closed(Option<u16>),
}

impl Client {
    pub async fn send(&mut self, value: Value) {
        let message = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&value).unwrap().into())
        } else {
            Message::Text(value.to_string().into())
        };
        self.ws.send(message).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    pub async fn next_event(&mut self) -> Event {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame from the server in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    assert!(!self.msgpack, "text frame on a msgpack connection");
                    return Event::Frame(serde_json::from_str(&t).unwrap());
                }
                Some(Ok(Message::Binary(b))) => {
                    assert!(self.msgpack, "binary frame on a json connection");
                    return Event::Frame(rmp_serde::from_slice(&b).unwrap());
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Frame(v) => v,
            Event::Closed(code) => {
                panic!("connection closed ({code:?}) while a frame was expected")
            }
        }
    }

    /// The next frame, checked to be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// Skips frames until one of `kind` arrives.
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads batches until `pred` holds for one of their updates; returns that update.
    pub async fn until_update(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == "batch"
                && let Some(u) = v["updates"].as_array().unwrap().iter().find(|u| pred(u))
            {
                return u.clone();
            }
        }
    }

    /// Reads until the connection ends, returning the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Event::Closed(code) = self.next_event().await {
                return code;
            }
        }
    }

    pub async fn skip_greeting(&mut self, groups: usize) {
        self.expect("welcome").await;
        for _ in 0..groups {
            self.expect("snapshot").await;
        }
    }

    pub async fn pos(&mut self, lat: f64, lon: f64) {
        self.send(serde_json::json!({"type": "pos", "lat": lat, "lon": lon}))
            .await;
    }

    /// Round-trips a ping: every frame queued before it has been read once this returns.
    pub async fn sync(&mut self) -> Vec<Value> {
        let id = rand_id();
        self.send(serde_json::json!({"type": "ping", "id": id}))
            .await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == "pong" && v["id"] == id {
                return before;
            }
            before.push(v);
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
