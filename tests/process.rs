//! The `beacon` binary as a process: start-up checks, signals and shutdown, and what reaches
//! its log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// A `beacon serve` process on a free port, its log (JSON lines on stdout) collected.
struct Beacon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Beacon {
    /// Starts `beacon serve` with `args` (after `ulimit` options for the shell, if any) and
    /// waits until it listens.
    fn start(ulimit: &str, args: &[&str], rust_log: &str) -> Beacon {
        let mut child = spawn(ulimit, args, rust_log);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines
                .next()
                .expect("beacon exited before listening")
                .unwrap();
            let entry: Value = serde_json::from_str(&line).unwrap_or_default();
            log.lock().unwrap().push(line);
            if entry["message"] == "listening" {
                break entry["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Beacon { child, addr, log }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Beacon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `beacon serve --listen 127.0.0.1:0 --log-format json ARGS`, through `sh` when `ulimit`
/// options are given.
fn spawn(ulimit: &str, args: &[&str], rust_log: &str) -> Child {
    let bin = env!("CARGO_BIN_EXE_beacon");
    let mut command = if ulimit.is_empty() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &format!("ulimit {ulimit} && exec \"$0\" \"$@\""), bin]);
        c
    };
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning beacon")
}

#[test]
fn a_hard_open_file_limit_too_low_for_the_connections_refuses_to_start() {
    let mut child = spawn("-n 200", &[], "info");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("it started with a cap of 0 instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("open-file limit (200, the hard limit) is too low")
            && stderr.contains("10256"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_soft_open_file_limit_is_raised_and_connections_are_taken() {
    // Soft 300, hard 2000: 1,000 connections fit once the soft limit is raised.
    let beacon = Beacon::start("-Sn 300", &["--max-connections", "1000"], "info");
    let url = format!("ws://{}/v1/ws?id=d&groups=g", beacon.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let welcome = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));
}

/// Opens what makes a shutdown slow: a WebSocket client that never reads nor answers the close,
/// and an HTTP request whose body never arrives.
async fn hold_the_server(addr: SocketAddr) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let mut ws = tokio::net::TcpStream::connect(addr).await.unwrap();
    ws.write_all(
        format!(
            "GET /v1/ws?id=mute&groups=g HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut post = tokio::net::TcpStream::connect(addr).await.unwrap();
    post.write_all(
        b"POST /v1/positions?id=d HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // Let both reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (ws, post)
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_period_in_all() {
    let data = tempfile::tempdir().unwrap();
    let mut beacon = Beacon::start(
        "",
        &[
            "--shutdown-grace-secs",
            "3",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        "info",
    );
    let _held = hold_the_server(beacon.addr).await;
    let started = Instant::now();
    beacon.signal("TERM");
    let status = beacon
        .wait_exit(Duration::from_secs(10))
        .expect("still running 10 s after SIGTERM");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    eprintln!("shutdown took {took:?}");
    assert!(
        took < Duration::from_millis(3300),
        "took {took:?} with a 3 s grace period"
    );
    let log = beacon.log();
    assert!(
        log.contains("store closed"),
        "the store is flushed last: {log}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut beacon = Beacon::start("", &["--shutdown-grace-secs", "30"], "info");
    let _held = hold_the_server(beacon.addr).await;
    beacon.signal("INT");
    assert!(
        beacon.wait_exit(Duration::from_millis(500)).is_none(),
        "the first signal waits for the request in flight"
    );
    let started = Instant::now();
    beacon.signal("INT");
    let status = beacon
        .wait_exit(Duration::from_secs(5))
        .expect("a second SIGINT did not end the process");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(status.code(), Some(130));
}

/// A raw HTTP/1.1 request; returns the status line.
async fn request(addr: SocketAddr, head: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn tokens_never_reach_the_log_even_at_trace_level() {
    let secret = "a-test-secret-of-at-least-32-bytes-long!!";
    let valid = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_beacon"))
            .args(["token", "--sub", "dev-1", "--groups", "g"])
            .env("BEACON_JWT_SECRET", secret)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    // Well formed but signed with another key, and not a token at all.
    let forged = format!("{}x", &valid[..valid.len() - 1]);
    let junk = "not.a.realtokenSECRET0123456789";
    let beacon = Beacon::start(
        "",
        &["--auth", "jwt", "--jwt-secret", secret],
        "trace,beacon=trace",
    );
    let addr = beacon.addr;
    for token in [valid.as_str(), forged.as_str(), junk] {
        let host = format!("Host: {addr}\r\nConnection: close\r\n");
        for head in [
            // From a foreign origin: refused by the origin guard, which logs the path.
            format!(
                "GET /v1/ingest/osmand/{token}?id=d&lat=1&lon=2 HTTP/1.1\r\n{host}Origin: https://evil.example\r\n\r\n"
            ),
            format!("GET /v1/ingest/osmand/{token}?id=d&lat=1&lon=2 HTTP/1.1\r\n{host}\r\n"),
            format!("GET /v1/ingest/osmand?id={token}&lat=1&lon=2 HTTP/1.1\r\n{host}\r\n"),
            format!(
                "GET /v1/groups/g/positions?access_token={token} HTTP/1.1\r\n{host}Origin: https://evil.example\r\n\r\n"
            ),
            format!("GET /v1/groups/g/positions?access_token={token} HTTP/1.1\r\n{host}\r\n"),
            format!(
                "GET /v1/groups/g/positions HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\r\n"
            ),
            format!(
                "GET /v1/ws?access_token={token} HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        ] {
            let status = request(addr, &head).await;
            assert!(status.starts_with("HTTP/1.1"), "{head}: {status:?}");
        }
    }
    // Let the last lines reach the collector.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = beacon.log();
    assert!(
        log.contains("refused a request from a foreign origin"),
        "the refusals were logged at all: {log}"
    );
    for token in [valid.as_str(), forged.as_str(), junk] {
        // The signature part alone is enough to replay nothing, but the whole token and its
        // signature must both be absent.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(token), "a token reached the log:\n{log}");
        assert!(
            !log.contains(signature),
            "a token's signature reached the log:\n{log}"
        );
    }
}
