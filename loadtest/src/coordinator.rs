//! The parent: plans the run, starts the workers, drives the phases, samples the server,
//! prints progress, merges the results and writes the report.
//!
//! Phases: wait for every worker to be ready → sample the server's baseline → Start (ramp) →
//! (idle: let connections settle, sample again) → steady phase for `--duration` → Stop →
//! gather each device's last fix → Expected → gather the final figures. Every wait is bounded
//! by the run's hard deadline; past it the workers are told to abort (and killed if they do
//! not exit) and a partial report is written.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::config::{CONNECTIONS_PER_SOURCE_ADDR, Cli, Plan, Scenario, new_run_id};
use crate::control::{Command, Event};
use crate::latest::CheckResult;
use crate::limits::{default_workers, raise_open_file_limit, workers_needed};
use crate::metrics::{Latencies, LatencySummary, Stats};
use crate::procstat::{CpuMeter, read};
use crate::report::{
    Connections, Errors, IdleMemory, LatestState, Machine, ProcFigures, Report, ReportConfig,
    Stalled, Timing, Traffic,
};
use crate::slo::{Figures, LatencyFigures};

/// How long workers get to start up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle scenario: pause between "all connected" and the second memory sample.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// The exit status for a report: 0 all good, 1 an SLO missed, 3 the run did not complete.
pub fn exit_code(report: &Report) -> u8 {
    match (report.completed, report.slo_pass) {
        (false, _) => 3,
        (true, false) => 1,
        (true, true) => 0,
    }
}

/// Runs a whole load test as described by the command line and returns its report (already
/// printed and, with `--report`, written).
pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    let limit = raise_open_file_limit().context("reading the open-file limit")?;
    let mut targets = Vec::new();
    for url in &cli.url {
        targets.push(crate::target::resolve(url, cli.allow_remote).await?);
    }
    let mut plan = Plan::build(&cli, targets, 1, new_run_id())?;
    let needed = workers_needed(u64::from(plan.connections()), limit);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    plan.workers = cli
        .workers
        .unwrap_or_else(|| default_workers(u64::from(plan.connections()), limit, cores));
    if plan.workers < needed {
        eprintln!(
            "beacon-loadtest: warning: {} connections over {} worker(s) is more than the {} sockets one \
             process can hold (open-file limit {}); expect open_file_limit failures, or use --workers {needed}",
            plan.connections(),
            plan.workers,
            limit.socket_capacity(),
            limit.soft
        );
    }
    let per_addr = plan
        .connections()
        .div_ceil(plan.targets.len() as u32 * u32::from(plan.source_addrs));
    if per_addr > CONNECTIONS_PER_SOURCE_ADDR && plan.targets.iter().any(|t| t.loopback) {
        eprintln!(
            "beacon-loadtest: warning: about {per_addr} connections per source address and target; \
             ephemeral ports run out near 28,000: raise --source-addrs"
        );
    }
    for &pid in &cli.server_pid {
        read(pid).with_context(|| format!("--server-pid {pid}"))?;
    }
    let plan = Arc::new(plan);
    let workers = spawn_workers(&plan).await?;
    let mut run = Run::new(plan.clone(), workers, &cli);
    let outcome = run.drive().await;
    let report = run.finish(outcome, &cli).await;

    if let Some(path) = &cli.report {
        let json = serde_json::to_vec_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", report.table());
    Ok(report)
}

/// Something that arrived from a worker.
enum Incoming {
    Event(usize, Box<Event>),
    Gone(usize, String),
}

/// The running workers.
struct Workers {
    commands: Vec<mpsc::Sender<Command>>,
    children: Vec<Child>,
    rx: mpsc::Receiver<Incoming>,
}

async fn spawn_workers(plan: &Arc<Plan>) -> anyhow::Result<Workers> {
    let (tx, rx) = mpsc::channel(256);
    let mut commands = Vec::new();
    let mut children = Vec::new();
    if plan.workers <= 1 {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let plan = plan.clone();
        let done_tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::worker::run(plan, 0, cmd_rx, ev_tx).await {
                let _ = done_tx.send(Incoming::Gone(0, format!("{e:#}"))).await;
            }
        });
        tokio::spawn(async move {
            while let Some(ev) = ev_rx.recv().await {
                if tx.send(Incoming::Event(0, Box::new(ev))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Incoming::Gone(0, "worker stopped".into())).await;
        });
        commands.push(cmd_tx);
        return Ok(Workers {
            commands,
            children,
            rx,
        });
    }

    let exe = std::env::current_exe()
        .context("locating the beacon-loadtest binary for worker processes")?;
    for index in 0..plan.workers {
        let i = index as usize;
        let mut child = tokio::process::Command::new(&exe)
            .arg("--worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker process {index}"))?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
        cmd_tx
            .send(Command::Init {
                plan: Box::new((**plan).clone()),
                index,
            })
            .await
            .map_err(|_| anyhow::anyhow!("worker {index} channel closed"))?;
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                let Ok(mut line) = serde_json::to_vec(&cmd) else {
                    continue;
                };
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<Event>(&line) {
                        Ok(ev) => {
                            if tx.send(Incoming::Event(i, Box::new(ev))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            eprintln!("beacon-loadtest: worker {i} wrote an unreadable line: {e}")
                        }
                    },
                    _ => {
                        let _ = tx
                            .send(Incoming::Gone(i, format!("worker process {i} exited")))
                            .await;
                        return;
                    }
                }
            }
        });
        commands.push(cmd_tx);
        children.push(child);
    }
    Ok(Workers {
        commands,
        children,
        rx,
    })
}

/// A set of processes sampled together.
struct ProcSet {
    meters: Vec<(u32, CpuMeter)>,
    figures: ProcFigures,
    cpu_sum: f64,
    cpu_samples: u64,
    last_cpu: Option<f64>,
}

impl ProcSet {
    fn new(pids: &[u32]) -> ProcSet {
        let mut set = ProcSet {
            meters: Vec::new(),
            figures: ProcFigures::default(),
            cpu_sum: 0.0,
            cpu_samples: 0,
            last_cpu: None,
        };
        for &pid in pids {
            set.add(pid);
        }
        set
    }

    fn add(&mut self, pid: u32) {
        if !self.figures.pids.contains(&pid) {
            self.figures.pids.push(pid);
            self.meters.push((pid, CpuMeter::new()));
        }
    }

    /// Samples every process; returns the summed RSS (None if none could be read).
    fn sample(&mut self, since_start_s: f64) -> Option<u64> {
        let now = std::time::Instant::now();
        let (mut rss, mut cpu, mut any_cpu, mut any) = (0u64, 0.0, false, false);
        for (pid, meter) in &mut self.meters {
            match read(*pid) {
                Ok(r) => {
                    any = true;
                    rss += r.rss_bytes;
                    if let Some(pct) = meter.update(now, r.cpu_ticks) {
                        cpu += pct;
                        any_cpu = true;
                    }
                }
                Err(_) => self.figures.exited = true,
            }
        }
        if !any {
            return None;
        }
        self.figures.rss_peak_bytes = self.figures.rss_peak_bytes.max(rss);
        self.figures.rss_last_bytes = rss;
        self.last_cpu = any_cpu.then_some(cpu);
        if any_cpu {
            self.cpu_sum += cpu;
            self.cpu_samples += 1;
            self.figures.cpu_peak_pct = self.figures.cpu_peak_pct.max(cpu);
            self.figures.cpu_avg_pct = self.cpu_sum / self.cpu_samples as f64;
        }
        self.figures.samples.push((
            round2(since_start_s),
            rss,
            round2(if any_cpu { cpu } else { 0.0 }),
        ));
        Some(rss)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A worker's latest cumulative figures.
struct Snap {
    at_ms: u64,
    stats: Stats,
    hist: Latencies,
}

/// Counters of one worker and when it read them (ms since epoch).
type Mark = (u64, Stats);

/// One [`Mark`] per worker (`None` until it has reported).
type Marks = Vec<Option<Mark>>;

impl Snap {
    fn mark(&self) -> Mark {
        (self.at_ms, self.stats.clone())
    }
}

/// Sum over workers of each one's rate between two of its readings; `None` when no worker
/// has two distinct readings.
fn rate(from: &[Option<Mark>], to: &[Option<Mark>], pick: fn(&Stats) -> u64) -> Option<f64> {
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
struct Final {
    check: Option<CheckResult>,
    settle_ms: u64,
    tick_ms: Option<u64>,
    excluded_devices: u64,
}

/// The parent's state during a run.
struct Run {
    plan: Arc<Plan>,
    workers: Workers,
    quiet: bool,
    created: Instant,
    started: Instant,
    deadline: Instant,
    next_tick: Instant,
    server: Option<ProcSet>,
    harness: ProcSet,
    /// Latest figures of each worker.
    latest: Vec<Option<Snap>>,
    /// The figures each worker sent before its latest (for the progress line's rates).
    previous: Vec<Option<Mark>>,
    ready: Vec<bool>,
    ramp_done: Vec<bool>,
    sent: Vec<Option<Vec<(u32, u32)>>>,
    finals: Vec<Option<Final>>,
    failure: Option<String>,
    label: &'static str,
    // Figures collected along the way.
    ramp_s: f64,
    load_s: f64,
    /// Every worker's readings when the steady phase began and ended.
    steady: Option<(Marks, Marks)>,
    rss_before: Option<u64>,
    idle_after: Option<(u64, u64)>,
    open_at_stop: u64,
    load_start: Option<f64>,
}

impl Run {
    fn new(plan: Arc<Plan>, workers: Workers, cli: &Cli) -> Run {
        let n = workers.commands.len();
        let now = Instant::now();
        Run {
            deadline: now + Duration::from_millis(plan.max_time_ms),
            plan,
            workers,
            quiet: cli.quiet,
            created: now,
            started: now,
            next_tick: now + Duration::from_secs(1),
            server: (!cli.server_pid.is_empty()).then(|| ProcSet::new(&cli.server_pid)),
            harness: ProcSet::new(&[std::process::id()]),
            latest: (0..n).map(|_| None).collect(),
            previous: vec![None; n],
            ready: vec![false; n],
            ramp_done: vec![false; n],
            sent: vec![None; n],
            finals: (0..n).map(|_| None).collect(),
            failure: None,
            label: "setup",
            ramp_s: 0.0,
            load_s: 0.0,
            steady: None,
            rss_before: None,
            idle_after: None,
            open_at_stop: 0,
            load_start: crate::procstat::load_average(),
        }
    }

    async fn broadcast(&self, cmd: Command) {
        for tx in &self.workers.commands {
            let _ = tx.send(cmd.clone()).await;
        }
    }

    fn totals(&self) -> (Stats, Latencies) {
        let mut stats = Stats::default();
        let mut hist = Latencies::default();
        for snap in self.latest.iter().flatten() {
            stats.merge(&snap.stats);
            let _ = hist.merge(&snap.hist);
        }
        (stats, hist)
    }

    /// Handles worker messages and the once-a-second duties until `done` holds, `until`
    /// passes, a worker fails or the hard deadline passes (the last two are errors).
    async fn pump(&mut self, until: Option<Instant>, done: fn(&Run) -> bool) -> Result<(), String> {
        loop {
            if done(self) {
                return Ok(());
            }
            if let Some(why) = &self.failure {
                return Err(why.clone());
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(format!(
                    "hard deadline of {:.0} s reached",
                    Duration::from_millis(self.plan.max_time_ms).as_secs_f64()
                ));
            }
            if until.is_some_and(|u| now >= u) {
                return Ok(());
            }
            if now >= self.next_tick {
                self.tick();
                self.next_tick += Duration::from_secs(1);
                continue;
            }
            let wake = [Some(self.next_tick), until, Some(self.deadline)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
            tokio::select! {
                incoming = self.workers.rx.recv() => match incoming {
                    Some(inc) => self.absorb(inc),
                    None => self.failure = Some("all workers are gone".into()),
                },
                _ = sleep_until(wake) => {}
            }
        }
    }

    fn absorb(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Gone(i, why) => {
                if self.finals[i].is_none() && self.failure.is_none() {
                    self.failure = Some(why);
                }
            }
            Incoming::Event(i, event) => match *event {
                Event::Ready { pid, .. } => {
                    self.ready[i] = true;
                    self.harness.add(pid);
                }
                Event::Progress {
                    at_ms,
                    stats,
                    histograms,
                } => {
                    let hist = histograms.decode().unwrap_or_default();
                    self.previous[i] = self.latest[i].as_ref().map(Snap::mark);
                    self.latest[i] = Some(Snap { at_ms, stats, hist });
                }
                Event::RampDone { .. } => self.ramp_done[i] = true,
                Event::Sent { last } => self.sent[i] = Some(last),
                Event::Final {
                    at_ms,
                    stats,
                    histograms,
                    check,
                    settle_ms,
                    tick_ms,
                    excluded_devices,
                } => {
                    let hist = histograms.decode().unwrap_or_default();
                    self.latest[i] = Some(Snap { at_ms, stats, hist });
                    self.finals[i] = Some(Final {
                        check,
                        settle_ms,
                        tick_ms,
                        excluded_devices,
                    });
                }
                Event::Fatal { message } => {
                    if self.failure.is_none() {
                        self.failure = Some(format!("worker {i}: {message}"));
                    }
                }
            },
        }
    }

    /// Once a second: sample processes and print the progress line.
    fn tick(&mut self) {
        let t = self.started.elapsed().as_secs_f64();
        if let Some(server) = &mut self.server {
            server.sample(t);
        }
        self.harness.sample(t);
        if self.quiet {
            return;
        }
        let (stats, hist) = self.totals();
        let now = self.marks();
        let fixes_rate = rate(&self.previous, &now, |s| s.fixes_sent).unwrap_or(0.0);
        let updates_rate = rate(&self.previous, &now, |s| s.updates_received).unwrap_or(0.0);
        let p99 = LatencySummary::of(&hist.end_to_end)
            .map(|l| format!("{:.1} ms", l.p99_ms))
            .unwrap_or_else(|| "-".into());
        let server = match &self.server {
            Some(s) if s.figures.exited && s.figures.rss_last_bytes == 0 => {
                " | server GONE".to_string()
            }
            Some(s) => format!(
                " | server {:.1} MB {}",
                s.figures.rss_last_bytes as f64 / 1e6,
                s.last_cpu
                    .map(|c| format!("{c:.0}% cpu"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        let stalled = if self.plan.stalled > 0 {
            format!(" stalled {}/{}", stats.stalled.connected, self.plan.stalled)
        } else {
            String::new()
        };
        eprintln!(
            "[{t:>6.1}s {:<8}] conn {}/{} open {} fail {}{stalled} | fixes/s {:.0} | updates/s {:.0} | p99 {p99}{server} | harness {} | load {}",
            self.label,
            stats.established,
            self.plan.clients(),
            stats.open,
            stats.failed,
            fixes_rate,
            updates_rate,
            self.harness
                .last_cpu
                .map(|c| format!("{c:.0}% cpu"))
                .unwrap_or_else(|| "-".into()),
            crate::procstat::load_average()
                .map(|l| format!("{l:.1}"))
                .unwrap_or_else(|| "-".into()),
        );
    }

    fn marks(&self) -> Vec<Option<Mark>> {
        self.latest
            .iter()
            .map(|s| s.as_ref().map(Snap::mark))
            .collect()
    }

    fn sample_server_now(&mut self) -> Option<u64> {
        let t = self.started.elapsed().as_secs_f64();
        self.server.as_mut().and_then(|s| s.sample(t))
    }

    /// All phases; `Err` carries why the run stopped early.
    async fn drive(&mut self) -> Result<(), String> {
        self.pump(Some(Instant::now() + READY_TIMEOUT), |r| {
            r.ready.iter().all(|&x| x)
        })
        .await?;
        if !self.ready.iter().all(|&x| x) {
            return Err("workers did not start in time".into());
        }
        self.rss_before = self.sample_server_now();
        self.broadcast(Command::Start).await;
        self.started = Instant::now();
        self.next_tick = self.started + Duration::from_secs(1);
        self.label = "ramp";
        self.pump(None, |r| r.ramp_done.iter().all(|&x| x)).await?;
        self.ramp_s = self.started.elapsed().as_secs_f64();

        if self.plan.scenario == Scenario::Idle {
            self.label = "idle";
            self.pump(Some(Instant::now() + IDLE_SETTLE), |_| false)
                .await?;
            let open = self.totals().0.open;
            if let Some(rss) = self.sample_server_now() {
                self.idle_after = Some((rss, open));
            }
        }

        self.label = "steady";
        let steady_from = self.marks();
        self.pump(
            Some(Instant::now() + Duration::from_millis(self.plan.duration_ms)),
            |_| false,
        )
        .await?;
        let steady_to = self.marks();
        self.open_at_stop = self.totals().0.open;
        self.steady = Some((steady_from, steady_to));
        self.load_s = self.started.elapsed().as_secs_f64();

        self.label = "stopping";
        self.broadcast(Command::Stop).await;
        self.pump(None, |r| r.sent.iter().all(Option::is_some))
            .await?;
        let mut expected = vec![0u32; self.plan.devices as usize];
        for (d, ts) in self.sent.iter().flatten().flatten() {
            if let Some(slot) = expected.get_mut(*d as usize) {
                *slot = *ts;
            }
        }
        self.label = "checking";
        self.broadcast(Command::Expected { last: expected }).await;
        self.pump(None, |r| r.finals.iter().all(Option::is_some))
            .await?;
        Ok(())
    }

    /// Stops the workers (politely, then by pid) and builds the report.
    async fn finish(&mut self, outcome: Result<(), String>, cli: &Cli) -> Report {
        if outcome.is_err() {
            self.broadcast(Command::Abort).await;
        }
        // Closing the command channels closes the children's stdin: their cue to exit.
        self.workers.commands.clear();
        for child in &mut self.workers.children {
            if timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        if outcome.is_err() && self.workers.children.is_empty() {
            // Give the in-process worker a moment to close its sockets.
            let _ = timeout(Duration::from_secs(3), async {
                while let Some(inc) = self.workers.rx.recv().await {
                    if matches!(inc, Incoming::Gone(..)) {
                        break;
                    }
                }
            })
            .await;
        }
        let t = self.started.elapsed().as_secs_f64();
        if let Some(s) = &mut self.server {
            s.sample(t);
        }
        self.build_report(outcome.err(), cli)
    }

    fn build_report(&self, aborted: Option<String>, cli: &Cli) -> Report {
        let plan = &self.plan;
        let (stats, hist) = self.totals();
        let latency = LatencySummary::of(&hist.end_to_end);
        let mut check = CheckResult::default();
        let mut checked = plan.scenario != Scenario::Storm && aborted.is_none();
        let (mut settle_ms, mut tick_ms, mut excluded) = (0, None, 0);
        for f in self.finals.iter().flatten() {
            match &f.check {
                Some(c) => check.merge(c),
                None => checked = false,
            }
            settle_ms = settle_ms.max(f.settle_ms);
            tick_ms = tick_ms.max(f.tick_ms);
            excluded = excluded.max(f.excluded_devices);
        }
        let mismatches = check.mismatches();
        let loss = if check.pairs > 0 {
            mismatches as f64 / check.pairs as f64
        } else {
            0.0
        };
        // Steady-phase rates from each worker's own readings; over the whole load phase when
        // the steady phase was too short to hold two readings.
        let steady_rate = |pick: fn(&Stats) -> u64| -> f64 {
            self.steady
                .as_ref()
                .and_then(|(from, to)| rate(from, to, pick))
                .unwrap_or_else(|| pick(&stats) as f64 / self.load_s.max(1e-3))
        };
        let idle_memory = match (plan.scenario, self.rss_before, self.idle_after) {
            (Scenario::Idle, Some(before), Some((after, conns))) if conns > 0 => Some(IdleMemory {
                rss_before_bytes: before,
                rss_after_bytes: after,
                connections: conns,
                bytes_per_connection: (after as f64 - before as f64) / conns as f64,
            }),
            _ => None,
        };
        let figures = Figures {
            latency_ms: latency.map(|l| LatencyFigures {
                p50: l.p50_ms,
                p90: l.p90_ms,
                p99: l.p99_ms,
                p999: l.p999_ms,
                max: l.max_ms,
                mean: l.mean_ms,
            }),
            loss: checked.then_some(loss),
            errors: stats.errors,
            failed: stats.failed,
            resyncs: stats.resyncs,
            disconnects: stats.disconnects,
        };
        let slo = cli
            .slo
            .as_ref()
            .map(|s| s.evaluate(&figures))
            .unwrap_or_default();
        let slo_pass = slo.iter().all(|v| v.pass);
        Report {
            version: 1,
            completed: aborted.is_none(),
            aborted_reason: aborted,
            config: ReportConfig {
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
                server_tick_ms: tick_ms,
            },
            timing: Timing {
                ramp_s: round2(self.ramp_s),
                load_s: round2(self.load_s),
                total_s: round2(self.created.elapsed().as_secs_f64()),
                settle_ms,
            },
            connections: Connections {
                attempted: stats.attempted,
                established: stats.established,
                failed: stats.failed,
                failed_by_reason: stats.maps.failed_by_reason.clone(),
                open_at_stop: self.open_at_stop,
                disconnects: stats.disconnects,
                close_codes: stats.maps.close_codes.clone(),
                // Storm: sustained reconnect rate; otherwise how fast the ramp went.
                connects_per_s: round2(if plan.scenario == Scenario::Storm {
                    stats.established as f64 / self.load_s.max(1e-3)
                } else {
                    stats.established as f64 / self.ramp_s.max(1e-3)
                }),
                storm_cycles: stats.storm_cycles,
            },
            traffic: Traffic {
                fixes_sent: stats.fixes_sent,
                fixes_per_s: round2(steady_rate(|s| s.fixes_sent)),
                updates_received: stats.updates_received,
                updates_per_s: round2(steady_rate(|s| s.updates_received)),
                frames_received: stats.frames_received,
                bytes_received: stats.bytes_received,
                snapshots: stats.snapshots,
                resyncs: stats.resyncs,
                out_of_order: stats.out_of_order,
                repeated: stats.repeated,
                offline_notices: stats.offline_notices,
                malformed_frames: stats.malformed_frames,
                wrong_frame_kind: stats.wrong_frame_kind,
            },
            errors: Errors {
                total: stats.errors,
                by_code: stats.maps.errors_by_code.clone(),
            },
            latency_ms: latency,
            ingest_ms: LatencySummary::of(&hist.ingest),
            fanout_ms: LatencySummary::of(&hist.fanout),
            latest_state: LatestState {
                checked,
                result: check,
                mismatches,
                loss,
                excluded_devices: excluded,
            },
            stalled: Stalled {
                requested: plan.stalled,
                stall_after_s: plan.stall_after_ms as f64 / 1e3,
                connected: stats.stalled.connected,
                failed: stats.stalled.failed(),
                failed_by_reason: stats.stalled.failed_by_reason.clone(),
                stopped_reading: stats.stalled.stopped_reading,
                closed_by_server: stats.stalled.closed_by_server.clone(),
                still_open: stats.stalled.still_open,
                bytes_drained: stats.stalled.bytes_drained,
            },
            server: self.server.as_ref().map(|s| s.figures.clone()),
            harness: self.harness.figures.clone(),
            machine: Machine {
                cpus: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                load_start: self.load_start,
                load_end: crate::procstat::load_average(),
            },
            idle_memory,
            slo,
            slo_pass,
        }
    }
}
