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
use tokio::time::{Instant, sleep_until, timeout};

use crate::config::{CONNECTIONS_PER_SOURCE_ADDR, Cli, Plan, Scenario, new_run_id};
use crate::control::{Command, Event};
use crate::launch::{Incoming, Workers, spawn_workers};
use crate::limits::{default_workers, raise_open_file_limit, workers_needed};
use crate::metrics::{Latencies, LatencySummary, Stats};
use crate::procstat::read;
use crate::report::Report;
use crate::sampling::ProcSet;
use crate::summary::{Final, Gathered, Mark, Marks, build_report, rate};

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
    let run_id = cli.run_id.clone().unwrap_or_else(new_run_id);
    let mut plan = Plan::build(&cli, targets, 1, run_id)?;
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

/// A worker's latest cumulative figures.
struct Snap {
    at_ms: u64,
    stats: Stats,
    hist: Latencies,
}

impl Snap {
    fn mark(&self) -> Mark {
        (self.at_ms, self.stats.clone())
    }
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
        let (stats, hist) = self.totals();
        let gathered = Gathered {
            plan: &self.plan,
            stats,
            hist,
            finals: &self.finals,
            steady: self.steady.as_ref(),
            created: self.created,
            ramp_s: self.ramp_s,
            load_s: self.load_s,
            rss_before: self.rss_before,
            idle_after: self.idle_after,
            open_at_stop: self.open_at_stop,
            server: self.server.as_ref().map(|s| s.figures.clone()),
            harness: self.harness.figures.clone(),
            load_start: self.load_start,
        };
        build_report(&gathered, outcome.err(), cli.slo.as_ref())
    }
}
