//! The report as a table for people: one row per figure, grouped by section in the order of
//! the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::Report;

/// The table's rows: a key column 24 characters wide, then the value.
struct Rows(String);

impl Rows {
    fn add(&mut self, key: &str, value: String) {
        let _ = writeln!(self.0, "  {key:<24} {value}");
    }
}

/// Bytes as megabytes, one decimal.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A rate per second, in thousands from 10,000 up.
fn rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// `key=value` pairs, or `-` for none.
fn keyed(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let mut rows = Rows(String::new());
        self.run_rows(&mut rows);
        self.connection_rows(&mut rows);
        self.traffic_rows(&mut rows);
        self.latency_rows(&mut rows);
        self.latest_state_rows(&mut rows);
        self.stalled_rows(&mut rows);
        self.process_rows(&mut rows);
        self.machine_row(&mut rows);
        self.verdict_rows(&mut rows);
        format!("beacon-loadtest report\n{}", rows.0)
    }

    /// What ran, where, and how long each phase took.
    fn run_rows(&self, rows: &mut Rows) {
        let c = &self.config;
        rows.add(
            "scenario",
            format!(
                "{} ({} codec, {} devices, {} viewers, {} groups, {} Hz, {} worker(s), {} source addr(s))",
                c.scenario,
                c.codec,
                c.devices,
                c.viewers,
                c.groups,
                c.rate_hz,
                c.workers,
                c.source_addrs
            ),
        );
        rows.add("targets", c.urls.join(", "));
        rows.add(
            "timing",
            format!(
                "ramp {:.1} s, load {:.1} s, total {:.1} s, settle {} ms{}",
                self.timing.ramp_s,
                self.timing.load_s,
                self.timing.total_s,
                self.timing.settle_ms,
                c.server_tick_ms
                    .map(|t| format!(", server tick {t} ms"))
                    .unwrap_or_default()
            ),
        );
    }

    /// Connections: established, failed and why, closed by the server.
    fn connection_rows(&self, rows: &mut Rows) {
        let k = &self.connections;
        rows.add(
            "connections",
            format!(
                "{} established / {} attempted, {} failed, {} open at stop, {:.1}/s",
                k.established, k.attempted, k.failed, k.open_at_stop, k.connects_per_s
            ),
        );
        rows.add("  failed by reason", keyed(&k.failed_by_reason));
        rows.add(
            "  closed by server",
            format!("{} ({})", k.disconnects, keyed(&k.close_codes)),
        );
        if k.storm_cycles > 0 {
            rows.add("  storm cycles", k.storm_cycles.to_string());
        }
    }

    /// Fixes sent, updates and frames received, snapshots, bad frames, `error` frames.
    fn traffic_rows(&self, rows: &mut Rows) {
        let f = &self.traffic;
        rows.add(
            "fixes sent",
            format!("{} ({}/s steady)", f.fixes_sent, rate(f.fixes_per_s)),
        );
        rows.add(
            "updates received",
            format!(
                "{} ({}/s steady), {} frames, {}",
                f.updates_received,
                rate(f.updates_per_s),
                f.frames_received,
                mb(f.bytes_received)
            ),
        );
        rows.add(
            "snapshots",
            format!(
                "{} initial, {} resyncs; {} repeated and {} out-of-order updates",
                f.snapshots, f.resyncs, f.repeated, f.out_of_order
            ),
        );
        if f.malformed_frames + f.wrong_frame_kind > 0 {
            rows.add(
                "bad frames",
                format!(
                    "{} malformed, {} wrong kind",
                    f.malformed_frames, f.wrong_frame_kind
                ),
            );
        }
        rows.add(
            "errors",
            format!("{} ({})", self.errors.total, keyed(&self.errors.by_code)),
        );
    }

    /// End-to-end latency, and its split at the server's receive time.
    fn latency_rows(&self, rows: &mut Rows) {
        match &self.latency_ms {
            Some(l) => rows.add(
                "latency (ms)",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, n={})",
                    l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
                ),
            ),
            None => rows.add("latency (ms)", "no updates measured".into()),
        }
        for (name, part) in [
            ("  send → server", &self.ingest_ms),
            ("  server → subscriber", &self.fanout_ms),
        ] {
            if let Some(l) = part {
                rows.add(
                    name,
                    format!(
                        "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                    ),
                );
            }
        }
    }

    /// The latest-state check.
    fn latest_state_rows(&self, rows: &mut Rows) {
        let s = &self.latest_state;
        if s.checked {
            rows.add(
                "latest state",
                format!(
                    "{} mismatches of {} pairs over {} subscribers (missing {}, stale {}, ahead {}), loss {:.4}%{}",
                    s.mismatches,
                    s.result.pairs,
                    s.result.subscribers,
                    s.result.missing,
                    s.result.stale,
                    s.result.ahead,
                    s.loss * 100.0,
                    if s.excluded_devices > 0 {
                        format!(", {} devices excluded", s.excluded_devices)
                    } else {
                        String::new()
                    }
                ),
            );
        } else {
            rows.add("latest state", "not checked (storm)".into());
        }
    }

    /// Stalled viewers, when there were any.
    fn stalled_rows(&self, rows: &mut Rows) {
        let st = &self.stalled;
        if st.requested > 0 {
            rows.add(
                "stalled viewers",
                format!(
                    "{} requested, {} connected, {} failed ({}), {} stopped reading {:.1} s after their greeting",
                    st.requested,
                    st.connected,
                    st.failed,
                    keyed(&st.failed_by_reason),
                    st.stopped_reading,
                    st.stall_after_s
                ),
            );
            let closed: u64 = st.closed_by_server.values().sum();
            rows.add(
                "  at the end",
                format!(
                    "{closed} closed by server ({}), {} still open, {:.1} kB drained",
                    keyed(&st.closed_by_server),
                    st.still_open,
                    st.bytes_drained as f64 / 1e3
                ),
            );
        }
    }

    /// The server's and the harness's memory and CPU, and idle memory per connection.
    fn process_rows(&self, rows: &mut Rows) {
        if let Some(srv) = &self.server {
            rows.add(
                "server",
                format!(
                    "RSS peak {}, last {}; CPU avg {:.0}%, peak {:.0}%{}",
                    mb(srv.rss_peak_bytes),
                    mb(srv.rss_last_bytes),
                    srv.cpu_avg_pct,
                    srv.cpu_peak_pct,
                    if srv.exited {
                        " — SERVER PROCESS EXITED"
                    } else {
                        ""
                    }
                ),
            );
        }
        if let Some(idle) = &self.idle_memory {
            rows.add(
                "idle memory",
                format!(
                    "{} before, {} after {} connections: {:.0} bytes/connection",
                    mb(idle.rss_before_bytes),
                    mb(idle.rss_after_bytes),
                    idle.connections,
                    idle.bytes_per_connection
                ),
            );
        }
        let h = &self.harness;
        rows.add(
            "harness",
            format!(
                "RSS peak {}, CPU avg {:.0}%, peak {:.0}%",
                mb(h.rss_peak_bytes),
                h.cpu_avg_pct,
                h.cpu_peak_pct
            ),
        );
    }

    /// The machine's cores and load.
    fn machine_row(&self, rows: &mut Rows) {
        let m = &self.machine;
        let load = |l: Option<f64>| l.map(|v| format!("{v:.2}")).unwrap_or_else(|| "?".into());
        rows.add(
            "machine",
            format!(
                "{} cpus, load average {} at start, {} at end{}",
                m.cpus,
                load(m.load_start),
                load(m.load_end),
                if [m.load_start, m.load_end]
                    .into_iter()
                    .flatten()
                    .any(|l| l > m.cpus as f64)
                {
                    " (busier than its cores: figures include CPU contention)"
                } else {
                    ""
                }
            ),
        );
    }

    /// One row per objective, then the run's result.
    fn verdict_rows(&self, rows: &mut Rows) {
        for v in &self.slo {
            let actual = v
                .actual
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "n/a".into());
            rows.add(
                &format!("slo {}", v.name),
                format!(
                    "{} (limit {}, actual {actual})",
                    if v.pass { "PASS" } else { "MISS" },
                    v.limit
                ),
            );
        }
        let verdict = match (&self.aborted_reason, self.slo_pass) {
            (Some(why), _) => format!("INCOMPLETE: {why}"),
            (None, true) if self.slo.is_empty() => "completed (no --slo given)".into(),
            (None, true) => "OK: every objective met".into(),
            (None, false) => "SLO MISSED".into(),
        };
        rows.add("result", verdict);
    }
}
