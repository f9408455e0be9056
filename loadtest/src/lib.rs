//! `beacon-loadtest`: drives a running Beacon server with simulated devices and viewers and
//! reports connections, throughput, end-to-end latency, state convergence and server cost.
//!
//! # Layout
//!
//! - [`config`]: the command line ([`config::Cli`]) and the resolved run plan ([`config::Plan`]).
//! - [`target`]: server URLs, resolution, and the loopback-only guard.
//! - [`coordinator`]: the parent process: phases, progress line, sampling, merging, report.
//! - [`worker`]: one share of the connections, in-process or as a child process.
//! - [`control`]: the JSON-lines exchange between the parent and its workers.
//! - [`client`]: connecting one socket and running a device, viewer or storm session.
//! - [`wire`]: encoding `pos`, decoding server frames, for both codecs.
//! - [`path`]: vehicles driving a street grid, for plausible fixes.
//! - [`metrics`]: counters and latency histograms, and how they merge.
//! - [`latest`]: the latest-state check.
//! - [`procstat`]: RSS and CPU of processes from /proc.
//! - [`limits`]: open-file limits and how many workers a run needs.
//! - [`slo`]: `--slo` objectives and their verdicts.
//! - [`report`]: the JSON report and the table.
//! - [`clock`]: epoch time as the protocol counts it.

pub mod client;
pub mod clock;
pub mod config;
pub mod connect;
pub mod control;
pub mod coordinator;
pub mod fixes;
pub mod latest;
pub mod launch;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod procstat;
pub mod report;
pub mod sampling;
pub mod session;
pub mod shared;
pub mod slo;
pub mod spec;
pub mod stalled;
pub mod summary;
pub mod table;
pub mod target;
pub mod units;
pub mod wire;
pub mod worker;
