//! Open-file limits and how many worker processes a run needs.
//!
//! Every socket is a file descriptor. On these machines one process may hold at most 20,000
//! (hard limit, not raisable without privileges), so the harness raises its soft limit to the
//! hard one and splits larger runs over several worker processes.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept free for the runtime, pipes, /proc reads and the report file.
pub(crate) const RESERVED_FDS: u64 = 200;

/// The open-file limit after raising it: (soft, hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileLimit {
    /// Soft limit in force now.
    pub soft: u64,
    /// Hard ceiling.
    pub hard: u64,
}

impl FileLimit {
    /// Sockets one process can hold with this limit.
    pub(crate) fn socket_capacity(&self) -> u64 {
        self.soft.saturating_sub(RESERVED_FDS).max(1)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns what is in force.
pub(crate) fn raise_open_file_limit() -> io::Result<FileLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok(FileLimit { soft, hard })
}

/// The soft limit now in force (for error messages).
pub(crate) fn current_soft_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0)
}

/// Workers needed so that no process holds more sockets than it can.
pub(crate) fn workers_needed(connections: u64, limit: FileLimit) -> u32 {
    u32::try_from(connections.div_ceil(limit.socket_capacity()).max(1)).unwrap_or(u32::MAX)
}

/// Runs with at least this many connections are spread over [`WORKERS_PER_CORE`] worker
/// processes per core by default.
pub(crate) const SPREAD_FROM_CONNECTIONS: u64 = 1_000;

/// Default worker processes per core for large runs. A worker is single-threaded, so it
/// costs less per frame than threads that wake each other. Two per core, rather than one,
/// because the harness usually shares the machine with the server under test: the scheduler
/// shares CPU time out per thread, and a harness that gets too little of it measures its
/// own backlog instead of the server (BENCHMARKS.md, "Fleet").
pub(crate) const WORKERS_PER_CORE: u32 = 2;

/// Default worker count: what the open-file limit requires, and for runs of
/// [`SPREAD_FROM_CONNECTIONS`] or more, at least [`WORKERS_PER_CORE`] per core (`cores`).
pub(crate) fn default_workers(connections: u64, limit: FileLimit, cores: u32) -> u32 {
    let needed = workers_needed(connections, limit);
    if connections >= SPREAD_FROM_CONNECTIONS {
        needed.max(cores.saturating_mul(WORKERS_PER_CORE))
    } else {
        needed
    }
}

/// Whether an I/O error is "too many open files" (per process or system-wide).
pub(crate) fn is_open_file_limit(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_runs_that_exceed_one_process() {
        let limit = FileLimit {
            soft: 20_000,
            hard: 20_000,
        };
        assert_eq!(limit.socket_capacity(), 19_800);
        assert_eq!(workers_needed(1_000, limit), 1);
        assert_eq!(workers_needed(19_800, limit), 1);
        assert_eq!(workers_needed(19_801, limit), 2);
        assert_eq!(workers_needed(50_000, limit), 3);
        assert_eq!(workers_needed(0, limit), 1);
    }

    #[test]
    fn large_runs_take_two_workers_per_core() {
        let limit = FileLimit {
            soft: 20_000,
            hard: 20_000,
        };
        let small = default_workers(999, limit, 2);
        assert_eq!(small, 1, "small runs stay in-process");
        assert_eq!(default_workers(1_000, limit, 2), 4);
        assert_eq!(default_workers(10_000, limit, 1), 2);
        let huge = default_workers(100_000, limit, 2);
        assert_eq!(huge, 6, "the open-file limit asks for more");
    }

    #[test]
    fn raising_never_lowers() {
        let before = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let after = raise_open_file_limit().unwrap();
        assert!(after.soft >= before.0);
        assert_eq!(after.soft, after.hard);
    }

    #[test]
    fn recognises_emfile() {
        assert!(is_open_file_limit(&io::Error::from_raw_os_error(
            nix::libc::EMFILE
        )));
        assert!(is_open_file_limit(&io::Error::from_raw_os_error(
            nix::libc::ENFILE
        )));
        assert!(!is_open_file_limit(&io::Error::from_raw_os_error(
            nix::libc::ECONNREFUSED
        )));
    }
}
