//! Short scenarios against a real `beacon` server, checked through the JSON report.
//!
//! The server binary comes from `BEACON_BIN`, or `<workspace>/target/debug/beacon`, built
//! with `cargo build -p beacon --bin beacon` when it is missing. Each test starts its own
//! server on a free loopback port with a 100 ms tick and stops it by pid when done, even
//! when an assertion fails.

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

fn healthy(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn start_server() -> Server {
    let bin = server_binary();
    for _attempt in 0..3 {
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tick-ms",
                "100",
            ])
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
