//! Short scenarios against a real `beacon` server, checked through the JSON report.
//!
//! The server binary comes from `BEACON_BIN`, or `<workspace>/target/debug/beacon`, built
//! with `cargo build -p beacon --bin beacon` when it is missing. Each test starts its own
//! server on a free loopback port (with a 100 ms tick unless the test sets its own) and stops
//! it by pid when done, even when an assertion fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Builds happen once per test process, whichever test gets there first.
static BUILD: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ sits inside the workspace")
        .to_path_buf()
}

fn server_binary() -> PathBuf {
    let _once = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let default = workspace_root().join("target/debug/beacon");
    let bin = std::env::var_os("BEACON_BIN")
        .map(PathBuf::from)
        .unwrap_or(default.clone());
    if bin.exists() {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "beacon", "--bin", "beacon"])
        .current_dir(workspace_root())
        .status()
        .expect("running cargo to build the server");
    assert!(status.success(), "building the beacon server failed");
    assert!(
        default.exists(),
        "no server binary at {} after building",
        default.display()
    );
    default
}

/// A running server; killed by pid when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0: the whole response, or `None` when the server does not answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    Some(response)
}

fn healthy(port: u16) -> bool {
    http_get(port, "/healthz")
        .is_some_and(|r| r.starts_with("HTTP/1.") && r.get(9..12) == Some("200"))
}

/// A counter from the server's `/metrics` (Prometheus text), e.g. `beacon_slow_closes_total`.
fn server_counter(port: u16, name: &str) -> u64 {
    let text = http_get(port, "/metrics").expect("the server answers /metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn start_server() -> Server {
    start_server_with(&["--tick-ms", "100"])
}

/// Starts a server with these options besides `serve --listen`.
fn start_server_with(options: &[&str]) -> Server {
    let bin = server_binary();
    for _attempt in 0..3 {
        let port = free_port();
        let child = Command::new(&bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(options)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the server");
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if healthy(port) {
                return server;
            }
            if let Ok(Some(_)) = server.child.try_wait() {
                break; // port taken meanwhile, most likely: try another
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(server);
    }
    panic!("the server did not become healthy");
}

/// Runs the harness against `server` and returns its exit code, report and output.
fn loadtest(server: &Server, args: &[&str]) -> (i32, Value, Output) {
    let dir = std::env::temp_dir().join(format!(
        "beacon-loadtest-smoke-{}-{}",
        std::process::id(),
        server.port
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join(format!(
        "report-{}.json",
        args.join("_").replace(['/', ' ', ','], "-")
    ));
    let _ = std::fs::remove_file(&report);
    let out = Command::new(env!("CARGO_BIN_EXE_beacon-loadtest"))
        .args(["--url", &format!("ws://127.0.0.1:{}", server.port)])
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .arg("--report")
        .arg(&report)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running beacon-loadtest");
    let code = out.status.code().unwrap_or(-1);
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "no report written (exit {code})\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    (
        code,
        serde_json::from_str(&text).expect("report is JSON"),
        out,
    )
}

fn explain(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The checks every healthy fleet run must pass.
fn assert_clean_fleet(code: i32, r: &Value, out: &Output, devices: u64) {
    let why = explain(out);
    assert_eq!(code, 0, "exit code\n{why}");
    assert_eq!(r["completed"], true, "{why}");
    assert_eq!(r["connections"]["established"], devices, "{why}");
    assert_eq!(r["connections"]["failed"], 0, "{why}");
    assert_eq!(r["connections"]["disconnects"], 0, "{why}");
    assert_eq!(r["errors"]["total"], 0, "{why}");
    assert!(
        r["traffic"]["fixes_sent"].as_u64().unwrap() >= devices * 3,
        "{why}"
    );
    assert!(
        r["traffic"]["updates_received"].as_u64().unwrap() > devices * 10,
        "{why}"
    );
    let latency = &r["latency_ms"];
    assert!(latency["count"].as_u64().unwrap() > 0, "{why}");
    assert!(
        latency["p99_ms"].as_f64().unwrap() >= latency["p50_ms"].as_f64().unwrap(),
        "{why}"
    );
    assert!(latency["p99_ms"].as_f64().unwrap() < 5_000.0, "{why}");
    let state = &r["latest_state"];
    assert_eq!(state["checked"], true, "{why}");
    assert_eq!(
        state["pairs"],
        devices * devices,
        "one group: everyone checks everyone\n{why}"
    );
    assert_eq!(state["mismatches"], 0, "{why}");
    assert_eq!(r["slo_pass"], true, "{why}");
    assert!(r["server"]["rss_peak_bytes"].as_u64().unwrap() > 0, "{why}");
}

#[test]
fn fleet_in_both_codecs_delivers_every_latest_fix() {
    let server = start_server();
    let common = [
        "--scenario",
        "fleet",
        "--devices",
        "50",
        "--duration",
        "5s",
        "--slo",
        "loss=0,errors=0,failed=0",
    ];
    for codec in ["json", "msgpack"] {
        let (code, r, out) = loadtest(&server, &[&common[..], &["--codec", codec]].concat());
        assert_eq!(r["config"]["codec"], codec);
        assert_clean_fleet(code, &r, &out, 50);
    }
}

#[test]
fn worker_processes_merge_into_one_report() {
    let server = start_server();
    let (code, r, out) = loadtest(
        &server,
        &[
            "--scenario",
            "fleet",
            "--devices",
            "40",
            "--duration",
            "4s",
            "--codec",
            "mixed",
            "--workers",
            "2",
        ],
    );
    assert_eq!(r["config"]["workers"], 2);
    assert_clean_fleet(code, &r, &out, 40);
    // Both worker processes were sampled besides the parent.
    assert_eq!(
        r["harness"]["pids"].as_array().unwrap().len(),
        3,
        "{}",
        explain(&out)
    );
}

#[test]
fn viewers_watch_a_big_group() {
    let server = start_server();
    let (code, r, out) = loadtest(
        &server,
        &[
            "--scenario",
            "viewers",
            "--devices",
            "20",
            "--viewers",
            "30",
            "--duration",
            "3s",
        ],
    );
    let why = explain(&out);
    assert_eq!(code, 0, "{why}");
    assert_eq!(r["connections"]["established"], 50, "{why}");
    assert_eq!(r["latest_state"]["subscribers"], 50, "{why}");
    assert_eq!(r["latest_state"]["pairs"], 50 * 20, "{why}");
    assert_eq!(r["latest_state"]["mismatches"], 0, "{why}");
}

#[test]
fn storm_churns_connections_without_errors() {
    let server = start_server();
    let (code, r, out) = loadtest(
        &server,
        &["--scenario", "storm", "--devices", "20", "--duration", "3s"],
    );
    let why = explain(&out);
    assert_eq!(code, 0, "{why}");
    assert_eq!(r["completed"], true, "{why}");
    // Each client reconnects several times in 3 s.
    assert!(
        r["connections"]["established"].as_u64().unwrap() > 40,
        "{why}"
    );
    assert!(
        r["connections"]["storm_cycles"].as_u64().unwrap() > 20,
        "{why}"
    );
    assert_eq!(r["connections"]["failed"], 0, "{why}");
    assert_eq!(r["errors"]["total"], 0, "{why}");
    assert_eq!(r["latest_state"]["checked"], false, "{why}");
    assert!(r["traffic"]["fixes_sent"].as_u64().unwrap() > 40, "{why}");
}

#[test]
fn idle_reports_memory_per_connection() {
    let server = start_server();
    let (code, r, out) = loadtest(
        &server,
        &["--scenario", "idle", "--devices", "200", "--duration", "1s"],
    );
    let why = explain(&out);
    assert_eq!(code, 0, "{why}");
    assert_eq!(r["traffic"]["fixes_sent"], 200, "one fix per device\n{why}");
    assert_eq!(r["idle_memory"]["connections"], 200, "{why}");
    assert!(
        r["idle_memory"]["rss_after_bytes"].as_u64().unwrap() > 0,
        "{why}"
    );
    assert_eq!(r["latest_state"]["mismatches"], 0, "{why}");
}

/// A ceiling on what an idle connection costs the server, so that a change that makes every
/// connection keep a buffer alive fails here rather than in the next benchmark. The server is
/// the debug build: at 1,000 connections it measures about 10.3 KB per connection (the release
/// build: 7.8 KB at 10,000, BENCHMARKS.md); keeping hyper's 8 KiB read buffer alive per
/// connection took it to 16.2 KB.
#[test]
fn an_idle_connection_stays_within_its_memory_budget() {
    const BUDGET_BYTES: f64 = 14.0 * 1024.0;
    let server = start_server_with(&["--tick-ms", "100", "--max-connections-per-ip", "0"]);
    let (code, r, out) = loadtest(
        &server,
        &[
            "--scenario",
            "idle",
            "--devices",
            "1000",
            "--duration",
            "1s",
        ],
    );
    let why = explain(&out);
    assert_eq!(code, 0, "{why}");
    assert_eq!(r["idle_memory"]["connections"], 1000, "{why}");
    let per_connection = r["idle_memory"]["bytes_per_connection"].as_f64().unwrap();
    assert!(
        per_connection > 0.0 && per_connection <= BUDGET_BYTES,
        "{per_connection:.0} bytes per idle connection, budget {BUDGET_BYTES:.0}\n{why}"
    );
}

#[test]
fn a_missed_slo_exits_with_1() {
    let server = start_server();
    // No delivery takes under a microsecond.
    let (code, r, out) = loadtest(
        &server,
        &[
            "--devices",
            "10",
            "--duration",
            "2s",
            "--slo",
            "p50=0.001ms,loss=0",
        ],
    );
    assert_eq!(code, 1, "{}", explain(&out));
    assert_eq!(r["slo_pass"], false);
    assert_eq!(r["slo"][0]["pass"], false);
    assert_eq!(r["slo"][1]["pass"], true);
}

#[test]
fn stalled_viewers_are_reported_apart_and_leave_the_fleet_clean() {
    let server = start_server_with(&[
        "--tick-ms",
        "20",
        "--queue-frames",
        "4",
        "--slow-close-secs",
        "2",
    ]);
    let (code, r, out) = loadtest(
        &server,
        &[
            "--scenario",
            "fleet",
            "--devices",
            "50",
            "--stalled",
            "5",
            "--duration",
            "8s",
            "--slo",
            "loss=0,errors=0,failed=0,disconnects=0",
        ],
    );
    // The devices see a healthy fleet; the stalled viewers count in none of it.
    assert_clean_fleet(code, &r, &out, 50);
    let why = explain(&out);
    assert_eq!(r["latest_state"]["subscribers"], 50, "{why}");
    assert_eq!(r["traffic"]["snapshots"], 50, "{why}");
    let s = &r["stalled"];
    assert_eq!(s["requested"], 5, "{why}");
    assert_eq!(s["connected"], 5, "{why}");
    assert_eq!(s["failed"], 0, "{why}");
    assert_eq!(s["stopped_reading"], 5, "{why}");
    let closed = s["closed_by_server"].as_object().unwrap();
    let closed_count: u64 = closed.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(
        closed_count + s["still_open"].as_u64().unwrap(),
        5,
        "each one is either closed or open\n{why}"
    );
    // About 50 fixes a second reach every viewer of the group: what they left unread while
    // stalled is waiting in their sockets at the end, far above the few offline notices a
    // viewer that kept reading would find there.
    assert!(
        s["bytes_drained"].as_u64().unwrap() > 5 * 10_000,
        "stalled viewers left their traffic unread\n{why}"
    );
    // A server that gives up on a blocked socket cannot get its close frame through it, so
    // the viewer may see the stream end without one; the server's own count says why.
    if closed_count > 0 {
        for key in closed.keys() {
            assert!(key == "1013" || key == "eof", "closed with {key}\n{why}");
        }
        assert!(
            server_counter(server.port, "beacon_slow_closes_total") >= closed_count,
            "every close was a slow-consumer close (1013)\n{why}"
        );
    }
}

#[test]
fn remote_targets_are_refused_before_any_traffic() {
    let out = Command::new(env!("CARGO_BIN_EXE_beacon-loadtest"))
        .args(["--url", "ws://192.0.2.10:8080", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--allow-remote"),
        "{err}"
    );
}

#[test]
fn an_absent_server_is_reported_as_refused_connections() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_beacon-loadtest"))
        .args([
            "--url",
            &format!("ws://127.0.0.1:{port}"),
            "--devices",
            "5",
            "--duration",
            "1s",
            "--slo",
            "failed=0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("refused=5"), "{text}");
}
