//! `beacon-loadtest`: drives a running Beacon server with simulated devices and viewers and
//! reports connections, throughput, end-to-end latency, state convergence and server cost.
//!
//! # Layout
//!
//! Layers, top to bottom: a module imports only modules of lower layers (modules of one layer
//! do not import each other).
//!
//! 1. `main.rs`: parses the command line, starts the runtime, runs the parent or a worker.
//! 2. [`coordinator`]: the parent process: phases, progress line, finishing the run.
//! 3. `launch` (starting the workers, in-process or as child processes), `summary` (the
//!    report from what the parent gathered), `sampling` (server and harness memory and CPU
//!    once a second), `table` (the report as a table).
//! 4. [`worker`]: one share of the connections, in-process or as a child process.
//! 5. `client` (the steady and storm connection loops), `stalled` (the stalled viewers).
//! 6. [`session`] (the receive path of every frame), `fixes` (a device's fixes and their
//!    schedule).
//! 7. [`shared`]: the state a worker's connection tasks share, and the phase they follow.
//! 8. `connect`: opening one connection; how failures and endings are named.
//! 9. [`spec`] (who each client is), `control` (the parent–worker exchange), [`report`] (the
//!    JSON report), `target` (server URLs and the loopback-only guard), `wire` (both codecs).
//! 10. `path`: vehicles driving a street grid, for plausible fixes.
//! 11. [`config`]: the command line ([`config::Cli`]) and the resolved run plan
//!     ([`config::Plan`]).
//! 12. `slo`: `--slo` objectives and their verdicts.
//! 13. Leaves: `units` (durations on the command line), [`clock`] (epoch time as the
//!     protocol counts it), [`latest`] (the latest-state check), `metrics` (counters and
//!     latency histograms), `limits` (open-file limits, workers needed), `procstat` (RSS and
//!     CPU from /proc).
//!
//! The public modules are what the binary and the receive bench use; everything else is
//! private to the crate.

mod client;
pub mod clock;
pub mod config;
mod connect;
mod control;
pub mod coordinator;
mod fixes;
pub mod latest;
mod launch;
mod limits;
mod metrics;
mod path;
mod procstat;
pub mod report;
mod sampling;
pub mod session;
pub mod shared;
mod slo;
pub mod spec;
mod stalled;
mod summary;
mod table;
mod target;
mod units;
mod wire;
pub mod worker;
