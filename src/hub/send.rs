//! Sending one prepared frame to every subscriber of a group at once, outside the tick: for
//! frames that are not coalesced (events).

use super::state::{Hub, lock};
use crate::outbox::{Prepared, Push};
use crate::protocol::Codec;

impl Hub {
    /// Hands `frames` (one per codec, `None` for a codec nobody needs) to every local
    /// subscriber of `group`, like the tick's fan-out: written directly where possible, else
    /// queued; a full outbox drops it (counted). Returns how many subscribers got it.
    pub fn send_to_group(
        &self,
        group: &str,
        frames: &[Option<Prepared>; Codec::ALL.len()],
    ) -> usize {
        let Some(g) = self.groups.get(group).map(|g| g.clone()) else {
            return 0;
        };
        let outlets: Vec<_> = lock(&g).subscribers.values().cloned().collect();
        let mut delivered = 0;
        for outlet in &outlets {
            let Some(frame) = &frames[outlet.codec.index()] else {
                continue;
            };
            match outlet.outbox.push(frame) {
                Push::Sent | Push::Queued => delivered += 1,
                Push::Full => {
                    self.metrics.drops.inc();
                }
                Push::Closed => {}
            }
        }
        self.metrics.frames_out.inc_by(delivered as u64);
        delivered
    }

    /// How many local subscribers of `group` use each codec (index: [`Codec::index`]).
    pub fn codecs_in_use(&self, group: &str) -> [usize; Codec::ALL.len()] {
        match self.groups.get(group) {
            Some(g) => lock(&g).codecs,
            None => [0; Codec::ALL.len()],
        }
    }
}
