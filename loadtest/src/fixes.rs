//! A device's fixes: where its vehicle is, when the next fix is due, and the fix time that
//! identifies each one ([`FixSource`]).

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::now_ms;
use crate::config::{Codec, Plan};
use crate::path::{Grid, Vehicle};
use crate::wire::encode_pos;

/// Produces a device's fixes: moves its vehicle by the time elapsed and stamps each fix with
/// a strictly increasing `ts`, so a fix time identifies a fix.
pub(crate) struct FixSource {
    vehicle: Vehicle,
    rng: SmallRng,
    seq: u64,
    last_ts: u64,
    last_move: Instant,
    /// Time between two fixes (`1 / --rate`).
    pub(crate) period: Duration,
    /// When the next fix is due.
    pub(crate) next_at: Instant,
}

impl FixSource {
    /// The fixes of device `device`, its vehicle seeded from the plan's seed.
    pub(crate) fn new(plan: &Plan, device: u32) -> FixSource {
        let seed = plan
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(device));
        FixSource {
            vehicle: Vehicle::new(Grid::city(plan.center), seed),
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed),
            seq: 0,
            last_ts: 0,
            last_move: Instant::now(),
            period: Duration::from_secs_f64(1.0 / plan.rate_hz),
            next_at: Instant::now(),
        }
    }

    /// Schedules the first fix once the connection is ready: right away for a single fix,
    /// otherwise at a random point of the first period, so that devices connected together
    /// do not all report in the same instant every second.
    pub(crate) fn first_after_ready(&mut self, immediately: bool) {
        let now = Instant::now();
        self.next_at = if immediately {
            now
        } else {
            now + self.period.mul_f64(self.rng.random_range(0.0..1.0))
        };
    }

    /// Encodes the next fix; returns it with its `ts`.
    pub(crate) fn next_message(&mut self, codec: Codec) -> anyhow::Result<(Message, u64)> {
        let now = Instant::now();
        self.vehicle
            .advance(now.duration_since(self.last_move).as_secs_f64());
        self.last_move = now;
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        self.seq += 1;
        // Keep the schedule, but never burst to catch up after a stall. Moved on before
        // encoding, so that a fix that cannot be encoded does not come due again at once.
        self.next_at = (self.next_at + self.period).max(now);
        let msg = encode_pos(codec, &self.vehicle.fix(), ts, self.seq)?;
        Ok((msg, ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::plan;

    #[test]
    fn fix_times_strictly_increase() {
        let p = plan(1, 0, 1);
        let mut src = FixSource::new(&p, 0);
        let mut last = 0;
        for _ in 0..50 {
            let (_, ts) = src.next_message(Codec::Json).unwrap();
            assert!(ts > last);
            last = ts;
        }
        assert_eq!(src.seq, 50);
    }
}
