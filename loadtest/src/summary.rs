//! From what the parent gathered during a run to the [`Report`]: the workers' final figures
//! merged, steady-phase rates, the latest-state loss, and the objectives judged.

use tokio::time::Instant;

use crate::config::{Plan, Scenario};
use crate::latest::CheckResult;
use crate::metrics::{Latencies, LatencySummary, Stats};
use crate::report::{
    Connections, Errors, IdleMemory, LatestState, Machine, ProcFigures, Report, ReportConfig,
    Stalled, Timing, Traffic, round2,
};
use crate::slo::{Figures, LatencyFigures, Slo, Verdict};

/// Counters of one worker and when it read them (ms since epoch).
pub(crate) type Mark = (u64, Stats);

/// One [`Mark`] per worker (`None` until it has reported).
pub(crate) type Marks = Vec<Option<Mark>>;

/// Sum over workers of each one's rate between two of its readings; `None` when no worker
/// has two distinct readings.
pub(crate) fn rate(
    from: &[Option<Mark>],
    to: &[Option<Mark>],
    pick: fn(&Stats) -> u64,
) -> Option<f64> {
    let mut total = None;
    for (a, b) in from.iter().zip(to) {
        if let (Some((t0, s0)), Some((t1, s1))) = (a, b)
            && t1 > t0
        {
            let per_s = pick(s1).saturating_sub(pick(s0)) as f64 / ((t1 - t0) as f64 / 1e3);
            total = Some(total.unwrap_or(0.0) + per_s);
        }
    }
    total
}

/// A worker's final figures.
pub(crate) struct Final {
    /// Its latest-state check (`None`: not run, as in the storm scenario).
    pub(crate) check: Option<CheckResult>,
    /// How long its check took to converge.
    pub(crate) settle_ms: u64,
    /// The largest tick its welcomes announced.
    pub(crate) tick_ms: Option<u64>,
    /// Devices left out of the check because their connection dropped while sending.
    pub(crate) excluded_devices: u64,
}

/// What the parent gathered over a run, for [`build_report`].
pub(crate) struct Gathered<'a> {
    /// The plan that ran.
    pub(crate) plan: &'a Plan,
    /// Every worker's latest counters, summed.
    pub(crate) stats: Stats,
    /// Every worker's latest histograms, merged.
    pub(crate) hist: Latencies,
    /// Each worker's final figures (`None` when it never sent them).
    pub(crate) finals: &'a [Option<Final>],
    /// Every worker's readings when the steady phase began and ended.
    pub(crate) steady: Option<&'a (Marks, Marks)>,
    /// When the run was set up.
    pub(crate) created: Instant,
    /// Ramp-up time, seconds from the start.
    pub(crate) ramp_s: f64,
    /// Time from the start until sending stopped, seconds.
    pub(crate) load_s: f64,
    /// Server RSS before the first connection.
    pub(crate) rss_before: Option<u64>,
    /// Idle scenario: server RSS and open connections once all were connected.
    pub(crate) idle_after: Option<(u64, u64)>,
    /// Connections open when sending stopped.
    pub(crate) open_at_stop: u64,
    /// The server's process figures, with `--server-pid`.
    pub(crate) server: Option<ProcFigures>,
    /// The harness's own process figures.
    pub(crate) harness: ProcFigures,
    /// 1-minute load average when the run started.
    pub(crate) load_start: Option<f64>,
}

/// The report of a run; `aborted` says why it stopped early, `slo` holds the objectives.
pub(crate) fn build_report(g: &Gathered<'_>, aborted: Option<String>, slo: Option<&Slo>) -> Report {
    let plan = g.plan;
    let stats = &g.stats;
    let latency = LatencySummary::of(&g.hist.end_to_end);
    let merged = merge_finals(
        g.finals,
        plan.scenario != Scenario::Storm && aborted.is_none(),
    );
    let latest_state = latest_state(&merged);
    let slo = judge(stats, latency, &latest_state, slo);
    let slo_pass = slo.iter().all(|v| v.pass);
    Report {
        version: 1,
        completed: aborted.is_none(),
        aborted_reason: aborted,
        config: report_config(plan, merged.tick_ms),
        timing: Timing {
            ramp_s: round2(g.ramp_s),
            load_s: round2(g.load_s),
            total_s: round2(g.created.elapsed().as_secs_f64()),
            settle_ms: merged.settle_ms,
        },
        connections: connections(g),
        traffic: traffic(g),
        errors: Errors {
            total: stats.errors,
            by_code: stats.maps.errors_by_code.clone(),
        },
        latency_ms: latency,
        ingest_ms: LatencySummary::of(&g.hist.ingest),
        fanout_ms: LatencySummary::of(&g.hist.fanout),
        latest_state,
        stalled: stalled(plan, stats),
        server: g.server.clone(),
        harness: g.harness.clone(),
        machine: Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            load_start: g.load_start,
            load_end: crate::procstat::load_average(),
        },
        idle_memory: idle_memory(g),
        slo,
        slo_pass,
    }
}

/// The workers' final figures together.
struct Merged {
    /// The checks, summed.
    check: CheckResult,
    /// Whether the check ran at all workers (and was meant to run).
    checked: bool,
    /// The longest settle time.
    settle_ms: u64,
    /// The largest announced tick.
    tick_ms: Option<u64>,
    /// The largest count of excluded devices (every worker counts all of them).
    excluded: u64,
}

/// Merges the workers' final figures; `checked` is whether the run meant to check.
fn merge_finals(finals: &[Option<Final>], checked: bool) -> Merged {
    let mut m = Merged {
        check: CheckResult::default(),
        checked,
        settle_ms: 0,
        tick_ms: None,
        excluded: 0,
    };
    for f in finals.iter().flatten() {
        match &f.check {
            Some(c) => m.check.merge(c),
            None => m.checked = false,
        }
        m.settle_ms = m.settle_ms.max(f.settle_ms);
        m.tick_ms = m.tick_ms.max(f.tick_ms);
        m.excluded = m.excluded.max(f.excluded_devices);
    }
    m
}

/// The latest-state section: mismatches and loss over the checked pairs.
fn latest_state(m: &Merged) -> LatestState {
    let mismatches = m.check.mismatches();
    let loss = if m.check.pairs > 0 {
        mismatches as f64 / m.check.pairs as f64
    } else {
        0.0
    };
    LatestState {
        checked: m.checked,
        result: m.check,
        mismatches,
        loss,
        excluded_devices: m.excluded,
    }
}

/// The verdict on each objective (none without `--slo`).
fn judge(
    stats: &Stats,
    latency: Option<LatencySummary>,
    state: &LatestState,
    slo: Option<&Slo>,
) -> Vec<Verdict> {
    let figures = Figures {
        latency_ms: latency.map(|l| LatencyFigures {
            p50: l.p50_ms,
            p90: l.p90_ms,
            p99: l.p99_ms,
            p999: l.p999_ms,
            max: l.max_ms,
            mean: l.mean_ms,
        }),
        loss: state.checked.then_some(state.loss),
        errors: stats.errors,
        failed: stats.failed,
        resyncs: stats.resyncs,
        disconnects: stats.disconnects,
    };
    slo.map(|s| s.evaluate(&figures)).unwrap_or_default()
}

/// What ran.
fn report_config(plan: &Plan, server_tick_ms: Option<u64>) -> ReportConfig {
    ReportConfig {
        scenario: plan.scenario.name().into(),
        codec: plan.codec.name().into(),
        run_id: plan.run_id.clone(),
        urls: plan.targets.iter().map(|t| t.url.clone()).collect(),
        devices: plan.devices,
        viewers: plan.viewers,
        groups: plan.groups,
        rate_hz: plan.rate_hz,
        ramp_per_s: plan.ramp_per_s,
        duration_s: plan.duration_ms as f64 / 1e3,
        workers: plan.workers,
        source_addrs: plan.source_addrs,
        server_tick_ms,
    }
}

/// The connections section.
fn connections(g: &Gathered<'_>) -> Connections {
    let stats = &g.stats;
    Connections {
        attempted: stats.attempted,
        established: stats.established,
        failed: stats.failed,
        failed_by_reason: stats.maps.failed_by_reason.clone(),
        open_at_stop: g.open_at_stop,
        disconnects: stats.disconnects,
        close_codes: stats.maps.close_codes.clone(),
        // Storm: sustained reconnect rate; otherwise how fast the ramp went.
        connects_per_s: round2(if g.plan.scenario == Scenario::Storm {
            stats.established as f64 / g.load_s.max(1e-3)
        } else {
            stats.established as f64 / g.ramp_s.max(1e-3)
        }),
        storm_cycles: stats.storm_cycles,
    }
}

/// Steady-phase rate of a counter from each worker's own readings; over the whole load phase
/// when the steady phase was too short to hold two readings.
fn steady_rate(g: &Gathered<'_>, pick: fn(&Stats) -> u64) -> f64 {
    g.steady
        .and_then(|(from, to)| rate(from, to, pick))
        .unwrap_or_else(|| pick(&g.stats) as f64 / g.load_s.max(1e-3))
}

/// The traffic section.
fn traffic(g: &Gathered<'_>) -> Traffic {
    let stats = &g.stats;
    Traffic {
        fixes_sent: stats.fixes_sent,
        fixes_per_s: round2(steady_rate(g, |s| s.fixes_sent)),
        updates_received: stats.updates_received,
        updates_per_s: round2(steady_rate(g, |s| s.updates_received)),
        frames_received: stats.frames_received,
        bytes_received: stats.bytes_received,
        snapshots: stats.snapshots,
        resyncs: stats.resyncs,
        out_of_order: stats.out_of_order,
        repeated: stats.repeated,
        offline_notices: stats.offline_notices,
        malformed_frames: stats.malformed_frames,
        wrong_frame_kind: stats.wrong_frame_kind,
    }
}

/// The stalled viewers' section.
fn stalled(plan: &Plan, stats: &Stats) -> Stalled {
    Stalled {
        requested: plan.stalled,
        stall_after_s: plan.stall_after_ms as f64 / 1e3,
        connected: stats.stalled.connected,
        failed: stats.stalled.failed(),
        failed_by_reason: stats.stalled.failed_by_reason.clone(),
        stopped_reading: stats.stalled.stopped_reading,
        closed_by_server: stats.stalled.closed_by_server.clone(),
        still_open: stats.stalled.still_open,
        bytes_drained: stats.stalled.bytes_drained,
    }
}

/// Idle scenario: the server's memory per connection, when both samples were taken.
fn idle_memory(g: &Gathered<'_>) -> Option<IdleMemory> {
    match (g.plan.scenario, g.rss_before, g.idle_after) {
        (Scenario::Idle, Some(before), Some((after, conns))) if conns > 0 => Some(IdleMemory {
            rss_before_bytes: before,
            rss_after_bytes: after,
            connections: conns,
            bytes_per_connection: (after as f64 - before as f64) / conns as f64,
        }),
        _ => None,
    }
}
