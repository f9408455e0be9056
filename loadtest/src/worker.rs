//! A worker: runs one share of the run's connections and reports to the parent.
//!
//! Worker `i` of `k` takes clients `i, i + k, i + 2k, …` (stalled viewers included) and
//! connects them at `ramp / k` per second. All its connection tasks share one
//! [`WorkerShared`]: counters, the latency histogram, the phase they follow, each device's
//! last sent fix time and every subscriber's view for the latest-state check.
//!
//! `run` speaks `Command`/`Event` over channels; [`run_child`] bridges those channels
//! to stdin/stdout so the same code runs as a separate process when one process cannot hold
//! all the sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::client::{run_steady, run_storm};
use crate::config::{Plan, Scenario};
use crate::control::{Command, Event};
use crate::latest::{CheckResult, EXCLUDED, View, check};
use crate::shared::{Phase, WorkerShared};
use crate::spec::{ClientSpec, Role};
use crate::stalled::run_stalled;

/// Client indices of worker `index` of `workers`, in connect order.
pub(crate) fn share(total: u32, workers: u32, index: u32) -> impl Iterator<Item = u32> {
    (index..total).step_by(workers.max(1) as usize)
}

/// Runs one worker until the parent's `Expected` (or `Abort`) has been handled.
pub(crate) async fn run(
    plan: Arc<Plan>,
    index: u32,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    let w = Arc::new(WorkerShared::new(plan.clone()));
    let mine: Vec<u32> = share(plan.connections(), plan.workers, index).collect();
    let fd_limit = crate::limits::current_soft_limit();
    send(
        &events,
        Event::Ready {
            pid: std::process::id(),
            fd_limit,
        },
    )
    .await?;

    loop {
        match commands.recv().await {
            Some(Command::Start) => break,
            Some(Command::Abort) | None => return Ok(()),
            Some(_) => {}
        }
    }
    let started = Instant::now();
    let progress = tokio::spawn(report_progress(w.clone(), events.clone()));
    let ramp = tokio::spawn(ramp_up(w.clone(), mine.clone()));

    // Ramp, then hold, until Stop.
    let share_len = mine.len() as u64;
    let mut ramp_reported = false;
    let aborted = loop {
        let ramp_done = w.until_resolved(share_len);
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Stop) => break false,
                Some(Command::Abort) | None => break true,
                Some(_) => {}
            },
            _ = ramp_done, if !ramp_reported => {
                ramp_reported = true;
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                send(&events, Event::RampDone { ms }).await?;
            }
        }
    };
    w.set_phase(Phase::Stopping);
    let mut tasks = ramp.await.context("ramp task panicked")?;
    if aborted {
        w.set_phase(Phase::Closing);
        close_all(&mut tasks).await;
        progress.abort();
        return Ok(());
    }

    // Every device task sees Stopping and deregisters after its last write.
    let _ = timeout(Duration::from_secs(5), w.until_sending_stopped()).await;
    let last: Vec<(u32, u32)> = share(plan.connections(), plan.workers, index)
        .filter_map(|i| plan.device_of(i))
        .map(|d| (d, w.last_sent(d)))
        .filter(|&(_, ts)| ts != 0)
        .collect();
    send(&events, Event::Sent { last }).await?;

    let expected = loop {
        match commands.recv().await {
            Some(Command::Expected { last }) => break Some(last),
            Some(Command::Abort) | None => break None,
            Some(_) => {}
        }
    };
    let Some(expected) = expected else {
        w.set_phase(Phase::Closing);
        close_all(&mut tasks).await;
        progress.abort();
        return Ok(());
    };
    let excluded_devices = expected.iter().filter(|&&t| t == EXCLUDED).count() as u64;
    let checking = Instant::now();
    let result = if plan.scenario == Scenario::Storm {
        None
    } else {
        Some(converge(&w, &expected).await)
    };
    let settle_ms = u64::try_from(checking.elapsed().as_millis()).unwrap_or(u64::MAX);

    w.set_phase(Phase::Closing);
    close_all(&mut tasks).await;
    progress.abort();
    let tick = w.tick_ms.load(Ordering::Relaxed);
    send(
        &events,
        Event::Final {
            at_ms: crate::clock::now_ms(),
            stats: w.counters.snapshot(),
            histograms: w.latencies().encode()?,
            check: result,
            settle_ms,
            tick_ms: (tick > 0).then_some(tick),
            excluded_devices,
        },
    )
    .await
}

/// Checks the views until they all match or the settle limit passes; at least two server
/// ticks go by first so the last batch has had its chance.
async fn converge(w: &WorkerShared, expected: &[u32]) -> CheckResult {
    let tick = Duration::from_millis(w.tick_ms.load(Ordering::Relaxed).clamp(10, 5_000));
    let limit = Instant::now() + Duration::from_millis(w.plan.settle_ms).max(tick * 2);
    sleep(tick * 2).await;
    loop {
        let views: Vec<Arc<View>> = w.views();
        let r = check(&w.layout, &views, expected);
        if r.mismatches() == 0 || Instant::now() >= limit {
            return r;
        }
        sleep(tick.min(Duration::from_millis(100))).await;
    }
}

/// Spawns this worker's clients at its share of the ramp rate; stops early if the phase
/// leaves Running. Returns the client tasks.
async fn ramp_up(w: Arc<WorkerShared>, mine: Vec<u32>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let per_client = Duration::from_secs_f64(f64::from(w.plan.workers.max(1)) / w.plan.ramp_per_s);
    let start = Instant::now();
    let phase = w.phase();
    for (k, &index) in mine.iter().enumerate() {
        sleep_until(start + per_client.mul_f64(k as f64)).await;
        if *phase.borrow() != Phase::Running {
            // Count the ones never attempted as resolved so the ramp can finish.
            for _ in k..mine.len() {
                w.resolved_one();
            }
            break;
        }
        let spec = ClientSpec::new(&w.plan, index);
        if spec.role == Role::Stalled {
            tasks.spawn(run_stalled(w.clone(), spec));
        } else if w.plan.scenario == Scenario::Storm {
            tasks.spawn(run_storm(w.clone(), spec));
        } else {
            tasks.spawn(run_steady(w.clone(), spec));
        }
        // Reap finished tasks as we go so the set does not grow with dead entries.
        while tasks.try_join_next().is_some() {}
    }
    tasks
}

/// Waits for the client tasks to close their connections, then aborts stragglers.
async fn close_all(tasks: &mut JoinSet<()>) {
    let drained = timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Sends cumulative figures every second, half a second out of step with the parent's own
/// once-a-second tick so each progress line sees a fresh snapshot.
async fn report_progress(w: Arc<WorkerShared>, events: mpsc::Sender<Event>) {
    let period = Duration::from_secs(1);
    let mut every = tokio::time::interval_at(Instant::now() + period / 2, period);
    loop {
        every.tick().await;
        let Ok(histograms) = w.latencies().encode() else {
            continue;
        };
        if events
            .send(Event::Progress {
                at_ms: crate::clock::now_ms(),
                stats: w.counters.snapshot(),
                histograms,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn send(events: &mpsc::Sender<Event>, event: Event) -> anyhow::Result<()> {
    events
        .send(event)
        .await
        .map_err(|_| anyhow::anyhow!("the parent stopped listening"))
}

/// Entry point of a worker process (`beacon-loadtest --worker`): reads commands from stdin,
/// writes events to stdout, and exits by itself if the parent goes away or the run's hard
/// deadline passes.
pub async fn run_child() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no Init line on stdin")?;
    let Command::Init { plan, index } =
        serde_json::from_str(&first).context("first line must be Init")?
    else {
        bail!("first line must be Init");
    };
    let plan: Arc<Plan> = Arc::new(*plan);
    crate::limits::raise_open_file_limit().context("raising the open-file limit")?;

    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        loop {
            let cmd = match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => cmd,
                    Err(e) => {
                        eprintln!("beacon-loadtest worker: bad command line: {e}");
                        continue;
                    }
                },
                // Parent gone: stop.
                _ => Command::Abort,
            };
            let last = matches!(cmd, Command::Abort);
            if cmd_tx.send(cmd).await.is_err() || last {
                return;
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(ev) = ev_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&ev) else {
                continue;
            };
            line.push(b'\n');
            if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                return;
            }
        }
    });

    let deadline = Duration::from_millis(plan.max_time_ms) + Duration::from_secs(30);
    let outcome = timeout(deadline, run(plan, index, cmd_rx, ev_tx.clone())).await;
    let result = match outcome {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("worker {index} passed the hard deadline")),
    };
    if let Err(e) = &result {
        let _ = ev_tx
            .send(Event::Fatal {
                message: format!("{e:#}"),
            })
            .await;
    }
    drop(ev_tx);
    let _ = timeout(Duration::from_secs(5), writer).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_client_once() {
        let mut all: Vec<u32> = (0..3).flat_map(|i| share(10, 3, i)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(share(10, 3, 1).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(share(2, 4, 3).count(), 0);
    }
}
