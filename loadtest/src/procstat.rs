//! Process sampling from /proc: resident memory and CPU time of the server (and the harness).
//!
//! RSS is `VmRSS` from `/proc/PID/status`; CPU is `utime + stime` from `/proc/PID/stat`
//! (clock ticks), turned into a percentage of one core between two samples, so a server using
//! both cores fully shows 200%.

use std::time::Instant;

use anyhow::Context;

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcReading {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads RSS and CPU time of a process.
pub(crate) fn read(pid: u32) -> anyhow::Result<ProcReading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is not running (no /proc/{pid}/status)"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok(ProcReading {
        rss_bytes: parse_vm_rss(&status).with_context(|| format!("no VmRSS for process {pid}"))?,
        cpu_ticks: parse_cpu_ticks(&stat)
            .with_context(|| format!("unreadable /proc/{pid}/stat"))?,
    })
}

/// `VmRSS:    1234 kB` → bytes.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let scale = match parts.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * scale)
}

/// Fields 14 and 15 (utime, stime) of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": state is field 3, so utime (14) is the 12th field here and stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The 1-minute load average from /proc/loadavg (runnable processes, averaged): a load test
/// on a machine whose load exceeds its cores measures the contention as much as the server.
pub(crate) fn load_average() -> Option<f64> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// First field of /proc/loadavg.
pub(crate) fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux in practice).
pub(crate) fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

/// Turns successive CPU-tick readings into a percentage of one core.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    ticks_per_second: f64,
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    /// A meter with no reading yet.
    pub(crate) fn new() -> CpuMeter {
        CpuMeter {
            ticks_per_second: clock_ticks_per_second() as f64,
            last: None,
        }
    }

    /// Feeds a reading taken at `at`; returns the CPU% since the previous one.
    pub(crate) fn update(&mut self, at: Instant, ticks: u64) -> Option<f64> {
        let pct = self.last.and_then(|(t0, ticks0)| {
            let wall = at.duration_since(t0).as_secs_f64();
            (wall > 0.0)
                .then(|| ticks.saturating_sub(ticks0) as f64 / self.ticks_per_second / wall * 100.0)
        });
        self.last = Some((at, ticks));
        pct
    }
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tbeacon\nVmPeak:\t  200 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(51234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_even_with_odd_command_names() {
        let stat = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_loadavg() {
        assert_eq!(parse_loadavg("10.95 9.59 8.27 12/345 6789\n"), Some(10.95));
        assert_eq!(parse_loadavg(""), None);
        assert!(load_average().is_some());
    }

    #[test]
    fn reads_this_process() {
        let r = read(std::process::id()).unwrap();
        assert!(r.rss_bytes > 0);
        assert!(read(u32::MAX - 1).is_err());
    }

    #[test]
    fn cpu_percent_of_one_core() {
        let mut m = CpuMeter {
            ticks_per_second: 100.0,
            last: None,
        };
        let t0 = Instant::now();
        assert_eq!(m.update(t0, 1000), None);
        let pct = m.update(t0 + Duration::from_secs(2), 1300).unwrap();
        assert!((pct - 150.0).abs() < 1e-9);
    }
}
