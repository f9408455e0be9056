//! Abuse bounds: connections per address, message rate, idle and handshake timeouts, TLS.

mod common;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};

use common::{Client, Event, TestServer, WAIT, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

fn status_of(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
    }
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_connections() {
    let server = TestServer::with(|c| c.limits.max_connections_per_ip = 2).await;
    let a = server.device("a", "g").await;
    let _b = server.device("b", "g").await;
    assert_eq!(status_of(server.try_connect("id=c", None).await), 429);
    assert_eq!(
        server
            .metric("beacon_connections_refused_total{reason=\"per_ip\"}")
            .await,
        1.0
    );
    // A closed connection gives its place back.
    drop(a);
    eventually(|| async { server.try_connect("id=c", None).await.ok() }).await;
    server.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_counts() {
    let server = TestServer::with(|c| {
        c.limits.max_connections_per_ip = 1;
        c.auth.trust_proxy = true;
    })
    .await;
    let connect = |client: &'static str| {
        let mut request = server
            .ws_url("id=d&groups=g")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let _one = connect("198.51.100.1").await.unwrap();
    let _two = connect("6.6.6.6, 198.51.100.2").await.unwrap();
    match connect("198.51.100.1").await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("expected a 429, got {:?}", other.map(|_| ())),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_rate_limited_then_1008() {
    let server = TestServer::with(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 2;
        c.limits.rate_strikes = 3;
    })
    .await;
    let mut d = server.device("fast", "g").await;
    for lat in [10.0, 11.0, 50.0, 51.0, 52.0, 53.0] {
        d.send(json!({"type": "pos", "lat": lat, "lon": 1.0})).await;
    }
    let mut refused = 0;
    let code = loop {
        match d.next_event().await {
            Event::Frame(v) if v["type"] == "error" => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                refused += 1;
            }
            Event::Frame(_) => {}
            Event::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(refused, 2, "two rate_limited errors, then the close");
    // What was refused was not applied.
    let body = server.get_json("/v1/groups/g/positions").await;
    assert_eq!(body["devices"][0]["lat"], 11.0, "{body}");
    assert_eq!(server.metric("beacon_rate_limited_total").await, 3.0);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let server = TestServer::with(|c| {
        c.limits.ping_interval_secs = 1;
        c.limits.idle_timeout_secs = 2;
    })
    .await;
    // Connected, then never reads: it answers no ping.
    let mut silent = server.connect("id=silent&groups=g").await;
    server
        .wait_metric("beacon_policy_closes_total{reason=\"idle\"}", |v| v >= 1.0)
        .await;
    assert_eq!(silent.expect_close().await, Some(1001));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let server = TestServer::with(|c| {
        c.limits.ping_interval_secs = 1;
        c.limits.idle_timeout_secs = 2;
    })
    .await;
    let mut alive = server.device("alive", "g").await;
    // Reading answers the server's pings; keep reading for several idle periods.
    let start = server.metric("beacon_pings_total").await;
    let reader = tokio::spawn(async move {
        loop {
            if let Event::Closed(code) = alive.next_event().await {
                return code;
            }
        }
    });
    server
        .wait_metric("beacon_pings_total", |v| v >= start + 4.0)
        .await;
    assert_eq!(
        server
            .metric("beacon_policy_closes_total{reason=\"idle\"}")
            .await,
        0.0
    );
    assert!(!reader.is_finished(), "the connection ended");
    server.stop().await;
    assert_eq!(
        reader.await.unwrap(),
        Some(1001),
        "closed by the shutdown only"
    );
}

/// Reads until the server closes the connection; fails the test after [`WAIT`].
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server kept a silent connection open");
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_dropped() {
    let server = TestServer::with(|c| c.limits.handshake_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    until_closed(&mut silent).await;
    // Half a request head, then nothing (slowloris).
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    until_closed(&mut slow).await;
    // Others are served meanwhile.
    assert_eq!(server.get("/healthz").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_gets_408() {
    let server = TestServer::with(|c| c.limits.request_timeout_secs = 1).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/positions?id=d HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    server.stop().await;
}

// ---- TLS ----

struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TlsFiles {
    /// A self-signed certificate for localhost, generated now.
    fn generate() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let dir = std::env::temp_dir();
        let stem = format!("beacon-tls-{}", std::process::id());
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        TlsFiles {
            cert,
            key,
            der: certified.cert.der().clone(),
        }
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

#[tokio::test]
async fn tls_serves_websockets_and_refuses_plain_or_stalled_handshakes() {
    let files = TlsFiles::generate();
    let server = TestServer::with(|c| {
        c.tls.tls_cert = Some(files.cert.clone());
        c.tls.tls_key = Some(files.key.clone());
        c.limits.handshake_timeout_secs = 1;
    })
    .await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = files.connector().connect(name, tcp).await.unwrap();
    let url = format!(
        "wss://localhost:{}/v1/ws?id=tls-1&groups=g",
        server.addr.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("open")
        .expect("readable");
    let welcome: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["id"], "tls-1");
    // Over TLS the hub cannot write to the socket itself: batches go through the session's
    // queue, and still arrive.
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> Value {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("readable");
        serde_json::from_str(frame.to_text().unwrap()).unwrap()
    };
    assert_eq!(next(&mut ws).await["type"], "snapshot");
    let pos = json!({"type": "pos", "lat": 1.5, "lon": 2.5, "ts": beacon::model::now_ms()});
    ws.send(Message::text(pos.to_string())).await.unwrap();
    let batch = next(&mut ws).await;
    assert_eq!(batch["type"], "batch");
    assert_eq!(batch["updates"][0]["id"], "tls-1");
    assert_eq!(batch["updates"][0]["lat"], 1.5);

    // Plain HTTP on the TLS port gets no answer but a closed connection.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // A client that never starts its handshake is dropped.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    until_closed(&mut stalled).await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_gets_every_rate_limited_error_and_a_readable_1008() {
    let server = TestServer::with(|c| {
        c.limits.rate_per_sec = 20;
        c.limits.rate_burst = 40;
        c.limits.rate_strikes = 20;
    })
    .await;
    let mut d = server.device("flood", "g").await;
    // 3,000 fixes in one burst: far more than the server reads before it closes.
    for i in 0..3000 {
        let fix = json!({"type": "pos", "lat": 10.0 + f64::from(i) / 1e4, "lon": 1.0});
        d.ws.feed(Message::Text(fix.to_string().into()))
            .await
            .unwrap();
    }
    d.ws.flush().await.unwrap();
    let mut refused = 0;
    let code = loop {
        match d.next_event().await {
            Event::Frame(v) if v["type"] == "error" => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                refused += 1;
            }
            Event::Frame(_) => {}
            Event::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1008), "the close frame arrives, not a reset");
    assert_eq!(
        refused, 19,
        "every rate_limited error before the close arrives"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_upgrades_from_one_address_fits_the_default_bounds() {
    // A carrier NAT, a fleet gateway or a browser test opens many WebSockets at once from one
    // address; each is a plain HTTP connection until upgraded, so the default per-address HTTP
    // bound must not reset any of them.
    let server = TestServer::start().await;
    let clients = futures_util::future::join_all((0..200).map(|i| {
        let server = &server;
        async move { server.device(&format!("burst-{i}"), "burst").await }
    }))
    .await;
    assert_eq!(clients.len(), 200);
    assert_eq!(
        server
            .metric("beacon_http_connections_refused_per_ip_total")
            .await,
        0.0,
        "no connection of the burst was turned away"
    );
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_http_connections() {
    let server = TestServer::with(|c| c.limits.max_http_connections_per_ip = 2).await;
    let idle_a = TcpStream::connect(server.addr).await.unwrap();
    let _idle_b = TcpStream::connect(server.addr).await.unwrap();
    // Past the bound, the connection is closed at once, not after the handshake timeout.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("a connection past the per-address bound was kept open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A connection that ends gives its place back.
    drop(idle_a);
    eventually(|| async {
        let mut s = TcpStream::connect(server.addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.ok()?;
        answer.starts_with(b"HTTP/1.1 200").then_some(())
    })
    .await;
    // WebSockets do not hold a place once upgraded.
    drop(_idle_b);
    assert!(
        server
            .metric("beacon_http_connections_refused_per_ip_total")
            .await
            >= 1.0,
        "the refusal is counted"
    );
    let _ws: Vec<_> = {
        let mut clients = Vec::new();
        for i in 0..4 {
            clients.push(server.device(&format!("d{i}"), "g").await);
        }
        clients
    };
    server.stop().await;
}
