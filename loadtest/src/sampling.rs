//! Sampling the memory and CPU of a set of processes once a second: the server under test
//! (`--server-pid`) and the harness's own processes.

use crate::procstat::{CpuMeter, read};
use crate::report::{ProcFigures, round2};

/// A set of processes sampled together.
pub(crate) struct ProcSet {
    meters: Vec<(u32, CpuMeter)>,
    /// What the report shows of these processes.
    pub(crate) figures: ProcFigures,
    cpu_sum: f64,
    cpu_samples: u64,
    /// CPU % of the latest sample (`None` before two readings).
    pub(crate) last_cpu: Option<f64>,
}

impl ProcSet {
    /// Samples `pids` from now on.
    pub(crate) fn new(pids: &[u32]) -> ProcSet {
        let mut set = ProcSet {
            meters: Vec::new(),
            figures: ProcFigures::default(),
            cpu_sum: 0.0,
            cpu_samples: 0,
            last_cpu: None,
        };
        for &pid in pids {
            set.add(pid);
        }
        set
    }

    /// Adds a process (once).
    pub(crate) fn add(&mut self, pid: u32) {
        if !self.figures.pids.contains(&pid) {
            self.figures.pids.push(pid);
            self.meters.push((pid, CpuMeter::new()));
        }
    }

    /// Samples every process; returns the summed RSS (None if none could be read).
    pub(crate) fn sample(&mut self, since_start_s: f64) -> Option<u64> {
        let now = std::time::Instant::now();
        let (mut rss, mut cpu, mut any_cpu, mut any) = (0u64, 0.0, false, false);
        for (pid, meter) in &mut self.meters {
            match read(*pid) {
                Ok(r) => {
                    any = true;
                    rss += r.rss_bytes;
                    if let Some(pct) = meter.update(now, r.cpu_ticks) {
                        cpu += pct;
                        any_cpu = true;
                    }
                }
                Err(_) => self.figures.exited = true,
            }
        }
        if !any {
            return None;
        }
        self.figures.rss_peak_bytes = self.figures.rss_peak_bytes.max(rss);
        self.figures.rss_last_bytes = rss;
        self.last_cpu = any_cpu.then_some(cpu);
        if any_cpu {
            self.cpu_sum += cpu;
            self.cpu_samples += 1;
            self.figures.cpu_peak_pct = self.figures.cpu_peak_pct.max(cpu);
            self.figures.cpu_avg_pct = self.cpu_sum / self.cpu_samples as f64;
        }
        self.figures.samples.push((
            round2(since_start_s),
            rss,
            round2(if any_cpu { cpu } else { 0.0 }),
        ));
        Some(rss)
    }
}
