//! The due queue: groups with changes, by when they are due to be flushed.
//!
//! Generic over what it holds (the hub keeps `Arc<Group>`s in it), so it depends on nothing
//! else in the hub.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// Items waiting for their time, earliest first.
#[derive(Debug)]
pub(super) struct DueQueue<T> {
    /// Keyed by when each item is due, then by a sequence number: of items due at the same
    /// instant, the first queued comes out first.
    items: BTreeMap<(Instant, u64), T>,
    seq: u64,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        DueQueue {
            items: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<T> DueQueue<T> {
    /// Queues `item` for `at`; returns whether it is now the earliest.
    pub(super) fn push(&mut self, at: Instant, item: T) -> bool {
        self.seq += 1;
        let key = (at, self.seq);
        self.items.insert(key, item);
        self.items.first_key_value().is_some_and(|(k, _)| *k == key)
    }

    /// When the earliest item is due.
    pub(super) fn next_at(&self) -> Option<Instant> {
        self.items.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes every item due at or before `now`, earliest first.
    pub(super) fn take_until(&mut self, now: Instant) -> Vec<T> {
        let mut items = Vec::new();
        while let Some(entry) = self.items.first_entry()
            && entry.key().0 <= now
        {
            items.push(entry.remove());
        }
        items
    }

    /// Takes every queued item, earliest first.
    pub(super) fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_due_queue_gives_groups_back_earliest_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut due = DueQueue::default();
        assert!(due.push(t0 + ms(30), "c"));
        assert!(!due.push(t0 + ms(50), "d"));
        assert!(due.push(t0 + ms(10), "a"), "earlier: new head");
        assert!(!due.push(t0 + ms(10), "b"), "same instant: after a");
        assert_eq!(due.next_at(), Some(t0 + ms(10)));
        assert_eq!(due.take_until(t0 + ms(30)), ["a", "b", "c"]);
        assert_eq!(due.next_at(), Some(t0 + ms(50)));
        assert!(due.take_until(t0 + ms(49)).is_empty());
        due.push(t0 + ms(40), "e");
        assert_eq!(due.take_all(), ["e", "d"]);
        assert_eq!(due.next_at(), None);
    }
}
