//! Sending one prepared frame to every subscriber of a group at once, outside the tick: for
//! frames that are not coalesced (events).

use std::borrow::Cow;

use super::state::{Hub, lock};
use crate::model::GroupId;
use crate::outbox::{Prepared, Push};
use crate::protocol::{Codec, PositionRecord, ServerMessage};

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
        let (mut delivered, mut sent, mut sent_bytes) = (0, 0, 0);
        for outlet in &outlets {
            let Some(frame) = &frames[outlet.codec.index()] else {
                continue;
            };
            match outlet.outbox.push(frame) {
                // Like the tick: frames written here are counted here, queued ones by the
                // session that writes them.
                Push::Sent => {
                    delivered += 1;
                    sent += 1;
                    sent_bytes += frame.frame().len() as u64;
                }
                Push::Queued => delivered += 1,
                Push::Full => {
                    self.metrics.drops.inc();
                }
                Push::Closed => {}
            }
        }
        self.metrics.frames_out.inc_by(sent);
        self.metrics.bytes_out.inc_by(sent_bytes);
        delivered
    }

    /// How many local subscribers of `group` use each codec (index: [`Codec::index`]).
    pub fn codecs_in_use(&self, group: &str) -> [usize; Codec::ALL.len()] {
        match self.groups.get(group) {
            Some(g) => lock(&g).codecs,
            None => [0; Codec::ALL.len()],
        }
    }

    /// Sends `device`'s new profile `name` to the local subscribers of every group holding a
    /// position of it (see [`Hub::announce_name`]). Profiles change rarely; this walks the
    /// group map once.
    pub fn announce_name_everywhere(&self, device: &str, name: &str) {
        let groups: Vec<GroupId> = self.groups.iter().map(|g| g.key().clone()).collect();
        for group in &groups {
            self.announce_name(group.as_str(), device, name);
        }
    }

    /// Sends `device`'s latest position in `group` with its new profile `name` to the group's
    /// local subscribers, as a one-record `batch`, when the group holds a position of it.
    pub fn announce_name(&self, group: &str, device: &str, name: &str) {
        let Some(g) = self.groups.get(group).map(|g| g.clone()) else {
            return;
        };
        let (position, in_use) = {
            let state = lock(&g);
            (state.positions.get(device).cloned(), state.codecs)
        };
        let Some(position) = position else {
            return;
        };
        let records = [PositionRecord {
            name: Some(Cow::Borrowed(name)),
            ..PositionRecord::from(&position)
        }];
        let message = ServerMessage::Batch {
            group,
            updates: &records,
            offline: &[],
        };
        let frames = Codec::ALL
            .map(|codec| (in_use[codec.index()] > 0).then(|| Prepared::new(message.encode(codec))));
        self.send_to_group(group, &frames);
    }
}
