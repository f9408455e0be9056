//! Starting the workers: one in-process task for small runs, otherwise child processes of
//! this same binary (`--worker`) that speak JSON lines over their stdin and stdout. Either
//! way the parent gets one command sender per worker and one stream of what they send back.

use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::config::Plan;
use crate::control::{Command, Event};

/// Something that arrived from a worker.
pub(crate) enum Incoming {
    /// Worker `.0` sent an event.
    Event(usize, Box<Event>),
    /// Worker `.0` stopped, for the reason given.
    Gone(usize, String),
}

/// The running workers.
pub(crate) struct Workers {
    /// One command sender per worker; dropping them closes the children's stdin.
    pub(crate) commands: Vec<mpsc::Sender<Command>>,
    /// The worker processes (none when the single worker runs in-process).
    pub(crate) children: Vec<Child>,
    /// Everything the workers send, tagged with the worker's index.
    pub(crate) rx: mpsc::Receiver<Incoming>,
}

/// Starts `plan.workers` workers (in-process when there is only one) and sends each child
/// its `Init`.
pub(crate) async fn spawn_workers(plan: &Arc<Plan>) -> anyhow::Result<Workers> {
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
