//! The final report: what a run measured, serialized as JSON for machines. The table for
//! people is rendered from it in `table`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::latest::CheckResult;
use crate::metrics::LatencySummary;
use crate::slo::Verdict;

/// Rounds to two decimals: how the report gives seconds, rates and CPU percentages.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Everything a run measured. Serialized as-is by `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Report format version.
    pub version: u32,
    /// Whether the run went through all its phases (false: deadline hit or a worker failed).
    pub completed: bool,
    /// Why the run did not complete.
    pub aborted_reason: Option<String>,
    /// What was run.
    pub config: ReportConfig,
    /// Phase timings.
    pub timing: Timing,
    /// Connection figures.
    pub connections: Connections,
    /// Message figures.
    pub traffic: Traffic,
    /// `error` frames.
    pub errors: Errors,
    /// End-to-end latency (device send → subscriber receive); `None` when nothing arrived.
    pub latency_ms: Option<LatencySummary>,
    /// Device send to server receive (`rts − ts`), over the same deliveries.
    pub ingest_ms: Option<LatencySummary>,
    /// Server receive to subscriber receive (tick wait, fan-out, write, read).
    pub fanout_ms: Option<LatencySummary>,
    /// Latest-state check.
    pub latest_state: LatestState,
    /// Stalled viewers (`--stalled`): counted here only, not in the figures above.
    pub stalled: Stalled,
    /// Server process figures (when `--server-pid` was given).
    pub server: Option<ProcFigures>,
    /// The harness's own processes.
    pub harness: ProcFigures,
    /// The machine the run shared.
    pub machine: Machine,
    /// Idle scenario: memory per connection.
    pub idle_memory: Option<IdleMemory>,
    /// SLO verdicts (empty without `--slo`).
    pub slo: Vec<Verdict>,
    /// Whether every SLO was met (true without `--slo`).
    pub slo_pass: bool,
}

/// What was run.
#[derive(Debug, Clone, Serialize)]
pub struct ReportConfig {
    /// Scenario name.
    pub scenario: String,
    /// Codec choice.
    pub codec: String,
    /// Run id (prefix of every device and group id).
    pub run_id: String,
    /// Target endpoints.
    pub urls: Vec<String>,
    /// Devices.
    pub devices: u32,
    /// Viewers.
    pub viewers: u32,
    /// Groups.
    pub groups: u32,
    /// Fixes per second per device.
    pub rate_hz: f64,
    /// Ramp rate, connections per second.
    pub ramp_per_s: f64,
    /// Planned steady phase, seconds.
    pub duration_s: f64,
    /// Worker processes.
    pub workers: u32,
    /// Source addresses used.
    pub source_addrs: u8,
    /// Server tick as announced in welcomes.
    pub server_tick_ms: Option<u64>,
}

/// Phase timings, seconds from the start.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    /// Ramp-up time (all first connection attempts finished).
    pub ramp_s: f64,
    /// Time from the start until sending stopped.
    pub load_s: f64,
    /// Whole run.
    pub total_s: f64,
    /// From sending stopped until every subscriber held every latest fix (or the limit).
    pub settle_ms: u64,
}

/// Connection figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Attempts.
    pub attempted: u64,
    /// Established (handshake completed).
    pub established: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Failed attempts by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Open when sending stopped.
    pub open_at_stop: u64,
    /// Closed by the server or dropped before the harness closed them.
    pub disconnects: u64,
    /// How those ended: close code, or `reset`/`eof`.
    pub close_codes: BTreeMap<String, u64>,
    /// Established connections per second: over the ramp-up, or (storm) over the load phase.
    pub connects_per_s: f64,
    /// Storm: complete connect-send-disconnect cycles.
    pub storm_cycles: u64,
}

/// Message figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// `pos` messages sent.
    pub fixes_sent: u64,
    /// Fixes per second during the steady phase.
    pub fixes_per_s: f64,
    /// New fixes of this run's devices received in batches, over all subscribers.
    pub updates_received: u64,
    /// Updates per second during the steady phase.
    pub updates_per_s: f64,
    /// Data frames received.
    pub frames_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Initial snapshots.
    pub snapshots: u64,
    /// Snapshots after the initial ones (server resynced a slow client).
    pub resyncs: u64,
    /// Updates older than what the subscriber held.
    pub out_of_order: u64,
    /// Updates repeating the fix the subscriber held (online again); no latency recorded.
    pub repeated: u64,
    /// Offline notices in batches.
    pub offline_notices: u64,
    /// Frames that did not decode.
    pub malformed_frames: u64,
    /// Frames of the wrong kind for the codec.
    pub wrong_frame_kind: u64,
}

/// `error` frames.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    /// Total.
    pub total: u64,
    /// By code.
    pub by_code: BTreeMap<String, u64>,
}

/// Latest-state check figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatestState {
    /// Whether the check ran (not for storm).
    pub checked: bool,
    /// Counts.
    #[serde(flatten)]
    pub result: CheckResult,
    /// `missing + stale + ahead`.
    pub mismatches: u64,
    /// `mismatches / pairs` (0 when nothing was checked).
    pub loss: f64,
    /// Devices left out because their connection dropped while sending.
    pub excluded_devices: u64,
}

/// What became of the stalled viewers (`--stalled`), slow consumers that read their greeting
/// and then stopped reading. Every connected one ends up in exactly one of
/// `closed_by_server` and `still_open`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stalled {
    /// `--stalled`.
    pub requested: u32,
    /// `--stall-after`: how long they kept reading after their greeting, seconds.
    pub stall_after_s: f64,
    /// Connections established.
    pub connected: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// Failed attempts by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Connections that got their greeting and then stopped reading.
    pub stopped_reading: u64,
    /// Connections the server had ended when they were read again at the end: by close code,
    /// `eof` (end of stream without a close frame) or `reset`.
    pub closed_by_server: BTreeMap<String, u64>,
    /// Connections still open at the end.
    pub still_open: u64,
    /// Payload bytes read from them at the end, before the close or the drain limit.
    pub bytes_drained: u64,
}

/// Memory and CPU of a set of processes, sampled once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcFigures {
    /// Process ids.
    pub pids: Vec<u32>,
    /// Largest summed RSS.
    pub rss_peak_bytes: u64,
    /// Summed RSS at the last sample.
    pub rss_last_bytes: u64,
    /// Mean CPU over the samples, % of one core.
    pub cpu_avg_pct: f64,
    /// Largest one-second CPU, % of one core.
    pub cpu_peak_pct: f64,
    /// Whether a process disappeared during the run.
    pub exited: bool,
    /// The samples: (seconds from start, RSS bytes, CPU %).
    pub samples: Vec<(f64, u64, f64)>,
}

/// The machine during the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// 1-minute load average when the run started.
    pub load_start: Option<f64>,
    /// 1-minute load average when it ended.
    pub load_end: Option<f64>,
}

/// Idle scenario: what each connection costs the server.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IdleMemory {
    /// Server RSS before the first connection.
    pub rss_before_bytes: u64,
    /// Server RSS once every connection was open and had sent its fix.
    pub rss_after_bytes: u64,
    /// Connections open at the second sample.
    pub connections: u64,
    /// `(after − before) / connections`.
    pub bytes_per_connection: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_carry_the_figures() {
        let r = Report {
            version: 1,
            completed: true,
            aborted_reason: None,
            config: ReportConfig {
                scenario: "fleet".into(),
                codec: "json".into(),
                run_id: "lt1".into(),
                urls: vec!["ws://127.0.0.1:8080/v1/ws".into()],
                devices: 10,
                viewers: 0,
                groups: 1,
                rate_hz: 1.0,
                ramp_per_s: 100.0,
                duration_s: 5.0,
                workers: 1,
                source_addrs: 1,
                server_tick_ms: Some(100),
            },
            timing: Timing::default(),
            connections: Connections {
                established: 10,
                attempted: 10,
                ..Default::default()
            },
            traffic: Traffic::default(),
            errors: Errors::default(),
            latency_ms: Some(LatencySummary {
                count: 5,
                p99_ms: 3.25,
                ..Default::default()
            }),
            ingest_ms: None,
            fanout_ms: None,
            latest_state: LatestState {
                checked: true,
                ..Default::default()
            },
            stalled: Stalled::default(),
            server: None,
            harness: ProcFigures::default(),
            machine: Machine::default(),
            idle_memory: None,
            slo: vec![],
            slo_pass: true,
        };
        let table = r.table();
        assert!(table.contains("10 established / 10 attempted"), "{table}");
        assert!(table.contains("p99 3.25"), "{table}");
        assert!(
            table.contains("result                   completed"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["connections"]["established"], 10);
        assert_eq!(json["latency_ms"]["p99_ms"], 3.25);
        assert_eq!(json["latest_state"]["mismatches"], 0);
        assert_eq!(json["latest_state"]["pairs"], 0);
        assert!(
            !table.contains("stalled"),
            "no stalled rows unless asked\n{table}"
        );
        assert_eq!(json["stalled"]["requested"], 0);

        let mut with_stalled = r.clone();
        with_stalled.stalled = Stalled {
            requested: 5,
            connected: 5,
            stopped_reading: 5,
            closed_by_server: BTreeMap::from([("1013".to_string(), 3)]),
            still_open: 2,
            bytes_drained: 12_300,
            ..Default::default()
        };
        let table = with_stalled.table();
        assert!(
            table.contains("5 requested, 5 connected, 0 failed (-), 5 stopped reading 0.0 s"),
            "{table}"
        );
        assert!(
            table.contains("3 closed by server (1013=3), 2 still open, 12.3 kB drained"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::to_value(&with_stalled).unwrap();
        assert_eq!(json["stalled"]["connected"], 5);
        assert_eq!(json["stalled"]["closed_by_server"]["1013"], 3);
        assert_eq!(json["stalled"]["still_open"], 2);
        // The measured clients' figures are untouched.
        assert_eq!(json["connections"]["established"], 10);
        assert_eq!(json["connections"]["disconnects"], 0);
    }
}
