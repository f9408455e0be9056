//! The connection loops of the clients that are measured: a long-lived device or viewer
//! ([`run_steady`]) and a storm client that connects and disconnects over and over
//! ([`run_storm`]).
//!
//! A loop reads every frame the server sends (devices receive their group's batches too) into
//! its [`Session`], which measures latency and keeps the subscriber's view for the
//! latest-state check; a device also sends fixes at the planned rate until told to stop.
//! Stalled viewers have their own loop, in [`crate::stalled`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::Scenario;
use crate::connect::{Ws, close_gracefully, connect, read_error_kind};
use crate::fixes::FixSource;
use crate::latest::View;
use crate::metrics::bump;
use crate::session::{Session, Step};
use crate::shared::{Phase, WorkerShared};
use crate::spec::{ClientSpec, Role};

/// Counts a connection attempt and its outcome.
async fn connect_counted(w: &WorkerShared, spec: &ClientSpec) -> Option<Ws> {
    bump(&w.counters.attempted);
    match connect(&w.plan, spec).await {
        Ok(ws) => {
            bump(&w.counters.established);
            bump(&w.counters.open);
            Some(ws)
        }
        Err(f) => {
            w.counters.connect_failed(&f.reason);
            w.warn_once(&f);
            None
        }
    }
}

/// Waits for the next phase change; gives the receiver back with the new phase
/// ([`Phase::Closing`] once the sender is gone).
async fn next_phase(
    mut rx: tokio::sync::watch::Receiver<Phase>,
) -> (tokio::sync::watch::Receiver<Phase>, Phase) {
    let now = match rx.changed().await {
        Ok(()) => *rx.borrow_and_update(),
        Err(_) => Phase::Closing,
    };
    (rx, now)
}

/// Runs a long-lived device or viewer (idle, fleet and viewers scenarios): one connection,
/// no reconnect, until the worker moves to [`Phase::Closing`].
pub(crate) async fn run_steady(w: Arc<WorkerShared>, spec: ClientSpec) {
    let phase = w.phase();
    let connected = connect_counted(&w, &spec).await;
    w.resolved_one();
    let Some(mut ws) = connected else { return };

    let view = Arc::new(View::new(&w.layout, spec.group));
    w.register_view(view.clone());
    let mut session = Session::new(&w, &spec, &view);
    let device = (spec.role == Role::Device).then_some(spec.number);
    let mut fixes = device.map(|d| FixSource::new(&w.plan, d));
    let one_fix_only = w.plan.scenario == Scenario::Idle;
    let mut sending = device.is_some() && w.start_sending();
    let mut ready = false;
    let mut closing = false;
    let mut ended_by: Option<String> = None;

    // The phase watch and the fix timer live across turns of the loop: a frame arrives about
    // every tick, and making and dropping both futures for each one shows in the harness's
    // cost per frame.
    let mut phase_change = Box::pin(next_phase(phase));
    let mut fix_due = std::pin::pin!(sleep_until(Instant::now()));
    while !closing && ended_by.is_none() {
        tokio::select! {
            (rx, now) = &mut phase_change => {
                if now != Phase::Running && sending {
                    sending = false;
                    w.stop_sending();
                }
                closing = now == Phase::Closing;
                phase_change = Box::pin(next_phase(rx));
            }
            msg = ws.next() => match msg {
                Some(Ok(m)) => match session.on_message(&m) {
                    Step::Ready => {
                        ready = true;
                        if let Some(src) = fixes.as_mut() {
                            src.first_after_ready(one_fix_only);
                            fix_due.as_mut().reset(src.next_at);
                        }
                    }
                    Step::Closed(code) => ended_by = Some(code),
                    Step::Continue => {}
                },
                Some(Err(e)) => ended_by = Some(read_error_kind(&e).to_string()),
                None => ended_by = Some("eof".to_string()),
            },
            () = &mut fix_due, if sending && ready => {
                let Some(src) = fixes.as_mut() else { continue };
                let next = src.next_message(spec.codec);
                fix_due.as_mut().reset(src.next_at);
                let Ok((msg, ts)) = next else { continue };
                if let Err(e) = ws.send(msg).await {
                    ended_by = Some(read_error_kind(&e).to_string());
                    continue;
                }
                bump(&w.counters.fixes_sent);
                if let Some(d) = device {
                    w.set_last_sent(d, ts);
                }
                if one_fix_only {
                    sending = false;
                    w.stop_sending();
                }
            }
        }
    }

    view.close();
    if let Some(how) = ended_by {
        w.counters.closed_by_server(&how);
        if sending {
            // It may have written fixes the server never took: leave it out of the check.
            if let Some(d) = device {
                w.exclude_device(d);
            }
            w.stop_sending();
        }
    } else {
        close_gracefully(&mut ws).await;
    }
    w.counters.open.fetch_sub(1, Relaxed);
}

/// Runs a storm client: connect, wait for the snapshot, send a few fixes, close, pause,
/// again, until the worker leaves [`Phase::Running`].
pub(crate) async fn run_storm(w: Arc<WorkerShared>, spec: ClientSpec) {
    let phase = w.phase();
    let mut fixes = FixSource::new(&w.plan, spec.number);
    let mut rng = SmallRng::seed_from_u64(w.plan.seed ^ u64::from(spec.index));
    let pause_ms = w.plan.storm_pause_ms.max(1);
    let mut first = true;
    // One session must not stall the storm: bounded by the connect timeout plus the time its
    // fixes take, plus slack.
    let session_limit = Duration::from_millis(w.plan.connect_timeout_ms)
        + fixes.period * w.plan.storm_fixes
        + Duration::from_secs(5);

    while *phase.borrow() == Phase::Running {
        let connected = connect_counted(&w, &spec).await;
        if std::mem::take(&mut first) {
            w.resolved_one();
        }
        if let Some(mut ws) = connected {
            let is_device = spec.role == Role::Device;
            // A fresh view per session, not part of the latest-state check.
            let view = View::new(&w.layout, spec.group);
            let mut session = Session::new(&w, &spec, &view);
            let (mut ready, mut sent) = (false, 0u32);
            let mut ended_by: Option<String> = None;
            let deadline = Instant::now() + session_limit;
            fixes.next_at = Instant::now();
            let mut stop = phase.clone();
            loop {
                let done_sending = !is_device || sent >= w.plan.storm_fixes;
                if ready && done_sending {
                    break;
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = sleep_until(deadline) => break,
                    msg = ws.next() => match msg {
                        Some(Ok(m)) => match session.on_message(&m) {
                            Step::Ready => ready = true,
                            Step::Closed(code) => { ended_by = Some(code); break }
                            Step::Continue => {}
                        },
                        Some(Err(e)) => { ended_by = Some(read_error_kind(&e).to_string()); break }
                        None => { ended_by = Some("eof".to_string()); break }
                    },
                    _ = sleep_until(fixes.next_at), if ready && !done_sending => {
                        let Ok((msg, _ts)) = fixes.next_message(spec.codec) else { break };
                        if let Err(e) = ws.send(msg).await {
                            ended_by = Some(read_error_kind(&e).to_string());
                            break;
                        }
                        bump(&w.counters.fixes_sent);
                        sent += 1;
                    }
                }
            }
            match ended_by {
                Some(how) => w.counters.closed_by_server(&how),
                None => {
                    close_gracefully(&mut ws).await;
                    if ready {
                        bump(&w.counters.storm_cycles);
                    }
                }
            }
            w.counters.open.fetch_sub(1, Relaxed);
        }
        let pause = Duration::from_millis(rng.random_range(pause_ms / 2..=pause_ms + pause_ms / 2));
        let mut stop = phase.clone();
        tokio::select! {
            _ = sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}
