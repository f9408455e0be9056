//! Service-level objectives: `--slo p99=250ms,loss=0`.
//!
//! Each objective is an upper bound on one figure of the report. A run that misses any of them
//! exits with status 1, so a CI job or a script can gate on the harness.

use serde::Serialize;

use crate::units::parse_duration;

/// A figure an objective can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SloKey {
    /// Median end-to-end latency.
    P50,
    /// 90th percentile latency.
    P90,
    /// 99th percentile latency.
    P99,
    /// 99.9th percentile latency.
    P999,
    /// Largest latency seen.
    Max,
    /// Mean latency.
    Mean,
    /// Fraction of (subscriber, device) pairs whose latest fix did not arrive.
    Loss,
    /// `error` frames received.
    Errors,
    /// Connections that failed to establish.
    Failed,
    /// Snapshots after the initial ones (server resynced a slow client).
    Resyncs,
    /// Connections closed by the server or dropped before the end of the run.
    Disconnects,
}

impl SloKey {
    fn from_name(name: &str) -> Option<SloKey> {
        Some(match name {
            "p50" => SloKey::P50,
            "p90" => SloKey::P90,
            "p99" => SloKey::P99,
            "p99.9" | "p999" => SloKey::P999,
            "max" => SloKey::Max,
            "mean" => SloKey::Mean,
            "loss" => SloKey::Loss,
            "errors" => SloKey::Errors,
            "failed" => SloKey::Failed,
            "resyncs" => SloKey::Resyncs,
            "disconnects" => SloKey::Disconnects,
            _ => return None,
        })
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SloKey::P50 => "p50",
            SloKey::P90 => "p90",
            SloKey::P99 => "p99",
            SloKey::P999 => "p99.9",
            SloKey::Max => "max",
            SloKey::Mean => "mean",
            SloKey::Loss => "loss",
            SloKey::Errors => "errors",
            SloKey::Failed => "failed",
            SloKey::Resyncs => "resyncs",
            SloKey::Disconnects => "disconnects",
        }
    }

    fn is_latency(self) -> bool {
        matches!(
            self,
            SloKey::P50 | SloKey::P90 | SloKey::P99 | SloKey::P999 | SloKey::Max | SloKey::Mean
        )
    }
}

/// One bound: `key <= limit`. Latency limits are in milliseconds, loss is a fraction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Objective {
    /// What is bounded.
    pub key: SloKey,
    /// Upper bound, inclusive.
    pub limit: f64,
}

/// A set of objectives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Slo {
    /// The bounds, in the order given.
    pub objectives: Vec<Objective>,
}

/// The figures of a finished run that objectives are checked against.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Figures {
    /// Latency percentiles and mean in milliseconds; `None` when nothing was measured.
    pub latency_ms: Option<LatencyFigures>,
    /// Latest-state loss fraction; `None` when the check did not run.
    pub loss: Option<f64>,
    /// Error frames.
    pub errors: u64,
    /// Failed connection attempts.
    pub failed: u64,
    /// Resync snapshots.
    pub resyncs: u64,
    /// Unexpected disconnects.
    pub disconnects: u64,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LatencyFigures {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The verdict on one objective.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Objective name, e.g. `p99`.
    pub name: &'static str,
    /// The bound (ms for latency, fraction for loss).
    pub limit: f64,
    /// The measured figure; `None` when it could not be measured (counts as missed).
    pub actual: Option<f64>,
    /// Whether the objective was met.
    pub pass: bool,
}

impl Slo {
    /// Parses `p99=250ms,loss=0,errors=0`.
    pub(crate) fn parse(text: &str) -> Result<Slo, String> {
        let mut objectives = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not `name=limit`"))?;
            let name = name.trim().to_ascii_lowercase();
            let key = SloKey::from_name(&name).ok_or_else(|| {
                format!("unknown objective `{name}` (known: p50, p90, p99, p99.9, max, mean, loss, errors, failed, resyncs, disconnects)")
            })?;
            let value = value.trim();
            let limit = if key.is_latency() {
                parse_latency_ms(value)?
            } else if key == SloKey::Loss {
                parse_fraction(value)?
            } else {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("`{name}` takes a whole count, not `{value}`"))?
                    as f64
            };
            objectives.push(Objective { key, limit });
        }
        if objectives.is_empty() {
            return Err("empty --slo".into());
        }
        Ok(Slo { objectives })
    }

    /// Checks every objective against the figures.
    pub(crate) fn evaluate(&self, figures: &Figures) -> Vec<Verdict> {
        self.objectives
            .iter()
            .map(|o| {
                let latency = figures.latency_ms;
                let actual = match o.key {
                    SloKey::P50 => latency.map(|l| l.p50),
                    SloKey::P90 => latency.map(|l| l.p90),
                    SloKey::P99 => latency.map(|l| l.p99),
                    SloKey::P999 => latency.map(|l| l.p999),
                    SloKey::Max => latency.map(|l| l.max),
                    SloKey::Mean => latency.map(|l| l.mean),
                    SloKey::Loss => figures.loss,
                    SloKey::Errors => Some(figures.errors as f64),
                    SloKey::Failed => Some(figures.failed as f64),
                    SloKey::Resyncs => Some(figures.resyncs as f64),
                    SloKey::Disconnects => Some(figures.disconnects as f64),
                };
                Verdict {
                    name: o.key.name(),
                    limit: o.limit,
                    actual,
                    pass: actual.is_some_and(|a| a <= o.limit),
                }
            })
            .collect()
    }
}

/// `250ms`, `1s`, `800us`; a bare number is milliseconds.
fn parse_latency_ms(value: &str) -> Result<f64, String> {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return value
            .parse::<f64>()
            .map_err(|_| format!("bad latency `{value}`"));
    }
    parse_duration(value).map(|d| d.as_secs_f64() * 1e3)
}

/// `0`, `0.001`, `0.1%`.
fn parse_fraction(value: &str) -> Result<f64, String> {
    let (number, scale) = match value.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (value, 1.0),
    };
    let f: f64 = number.trim().parse().map_err(|_| {
        format!("bad loss `{value}` (a fraction like 0.001 or a percent like 0.1%)")
    })?;
    let f = f * scale;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!("loss `{value}` is not within 0..1 (0%..100%)"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latency_and_loss() {
        let slo = Slo::parse("p99=250ms,loss=0").unwrap();
        assert_eq!(
            slo.objectives,
            vec![
                Objective {
                    key: SloKey::P99,
                    limit: 250.0
                },
                Objective {
                    key: SloKey::Loss,
                    limit: 0.0
                }
            ]
        );
        let slo = Slo::parse("p99.9=1s, max=800us, p50=20, loss=0.5%, errors=3").unwrap();
        assert_eq!(
            slo.objectives[0],
            Objective {
                key: SloKey::P999,
                limit: 1000.0
            }
        );
        assert!((slo.objectives[1].limit - 0.8).abs() < 1e-9);
        assert_eq!(slo.objectives[2].limit, 20.0);
        assert!((slo.objectives[3].limit - 0.005).abs() < 1e-12);
        assert_eq!(
            slo.objectives[4],
            Objective {
                key: SloKey::Errors,
                limit: 3.0
            }
        );
    }

    #[test]
    fn refuses_nonsense() {
        assert!(Slo::parse("").is_err());
        assert!(Slo::parse("p42=1ms").is_err());
        assert!(Slo::parse("p99").is_err());
        assert!(Slo::parse("loss=2").is_err());
        assert!(Slo::parse("errors=1.5").is_err());
        assert!(Slo::parse("p99=soon").is_err());
    }

    #[test]
    fn evaluates_bounds_inclusively() {
        let slo = Slo::parse("p99=250ms,loss=0,failed=0").unwrap();
        let mut figures = Figures {
            latency_ms: Some(LatencyFigures {
                p99: 250.0,
                ..Default::default()
            }),
            loss: Some(0.0),
            ..Default::default()
        };
        assert!(slo.evaluate(&figures).iter().all(|v| v.pass));
        figures.latency_ms = Some(LatencyFigures {
            p99: 251.0,
            ..Default::default()
        });
        figures.failed = 1;
        let verdicts = slo.evaluate(&figures);
        assert!(!verdicts[0].pass);
        assert!(verdicts[1].pass);
        assert!(!verdicts[2].pass);
    }

    #[test]
    fn unmeasured_figures_miss_the_objective() {
        let slo = Slo::parse("p99=250ms,loss=0").unwrap();
        let verdicts = slo.evaluate(&Figures::default());
        assert!(verdicts.iter().all(|v| !v.pass && v.actual.is_none()));
    }
}
