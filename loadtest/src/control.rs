//! Messages between the parent and its workers.
//!
//! A worker runs either inside the parent (small runs) or as a child process; a child reads
//! [`Command`]s as JSON lines on stdin and writes [`Event`]s as JSON lines on stdout. The
//! exchange is the same in both cases:
//!
//! ```text
//! parent                        worker
//!   Init{plan, index} ───────▶  (child processes only)
//!                     ◀───────  Ready
//!   Start ───────────────────▶  ramps up its share of the connections
//!                     ◀───────  Progress (every second), RampDone
//!   Stop ────────────────────▶  devices stop sending
//!                     ◀───────  Sent (each device's last fix time)
//!   Expected ────────────────▶  latest-state check against every device's last fix
//!                     ◀───────  Final (counters, histograms, check result)
//! ```
//!
//! The `Sent`/`Expected` round trip is what lets a subscriber in one process be checked
//! against a device in another.

use serde::{Deserialize, Serialize};

use crate::config::Plan;
use crate::latest::CheckResult;
use crate::metrics::{EncodedLatencies, Stats};

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// First line to a child process: what to run and which share is its own.
    Init {
        /// The run plan.
        plan: Box<Plan>,
        /// This worker's index, `0..plan.workers`.
        index: u32,
    },
    /// Begin the ramp-up.
    Start,
    /// Stop sending fixes; answer with [`Event::Sent`].
    Stop,
    /// Last fix time offset of every device (index = device number; 0 = none, `u32::MAX` =
    /// excluded); check and close, answer with [`Event::Final`].
    Expected {
        /// One entry per device of the run.
        last: Vec<u32>,
    },
    /// Close everything and exit now.
    Abort,
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The worker is set up and waits for [`Command::Start`].
    Ready {
        /// Its process id (for sampling its own CPU and memory).
        pid: u32,
        /// Its open-file soft limit.
        fd_limit: u64,
    },
    /// Cumulative figures so far, once a second.
    Progress {
        /// When the counters were read, ms since epoch (rates use the worker's own clock
        /// readings, not the time the line happened to arrive).
        at_ms: u64,
        /// Counters.
        stats: Stats,
        /// Latency histograms.
        histograms: EncodedLatencies,
    },
    /// Every connection of the share has been attempted and has succeeded or failed.
    RampDone {
        /// Milliseconds from Start.
        ms: u64,
    },
    /// Devices have stopped sending; their last fix time offsets.
    Sent {
        /// (device number, fix time offset) for each device of this worker.
        last: Vec<(u32, u32)>,
    },
    /// The run is over for this worker.
    Final {
        /// When the counters were read, ms since epoch.
        at_ms: u64,
        /// Counters.
        stats: Stats,
        /// Latency histograms.
        histograms: EncodedLatencies,
        /// Latest-state check (`None` when the scenario has none, e.g. storm).
        check: Option<CheckResult>,
        /// Milliseconds from Expected until every view matched (or the settle limit).
        settle_ms: u64,
        /// Largest `tick_ms` seen in welcomes.
        tick_ms: Option<u64>,
        /// Devices left out of the check because their connection dropped while sending.
        excluded_devices: u64,
    },
    /// The worker cannot go on.
    Fatal {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_are_json_lines() {
        let line = serde_json::to_string(&Command::Expected {
            last: vec![0, 5, u32::MAX],
        })
        .unwrap();
        assert_eq!(line, r#"{"cmd":"expected","last":[0,5,4294967295]}"#);
        let back: Command = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Command::Expected { last } if last == vec![0, 5, u32::MAX]));
        let line = serde_json::to_string(&Event::RampDone { ms: 12 }).unwrap();
        assert!(!line.contains('\n'));
        assert!(matches!(
            serde_json::from_str(&line).unwrap(),
            Event::RampDone { ms: 12 }
        ));
    }
}
