//! `beacon-loadtest`: drives a running Beacon server with simulated devices and viewers.
//!
//! Exit status: 0 when the run completed and met every `--slo`, 1 when an objective was
//! missed, 2 for bad arguments, 3 when the run could not complete (setup error, a worker
//! failed, or the hard deadline passed).

use std::process::ExitCode;

use beacon_loadtest::config::Cli;
use beacon_loadtest::coordinator;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // A worker process runs on one thread: it spends its time in small reads and writes, and
    // single-threaded workers (two per core by default for large runs) cost less per frame
    // than threads that wake each other. The parent, which also runs small runs in-process,
    // keeps two threads: the machine is shared with the server under test.
    let runtime = if cli.worker {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("beacon-loadtest: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    if cli.worker {
        let result = runtime.block_on(beacon_loadtest::worker::run_child());
        // The stdin reader sits in a blocking read; do not wait for it.
        runtime.shutdown_timeout(std::time::Duration::from_millis(200));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("beacon-loadtest worker: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    match runtime.block_on(coordinator::run(cli)) {
        Ok(report) => ExitCode::from(coordinator::exit_code(&report)),
        Err(e) => {
            eprintln!("beacon-loadtest: {e:#}");
            ExitCode::from(3)
        }
    }
}
