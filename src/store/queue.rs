//! The bounded queue between the hub's observer and the writer thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::model::{GroupId, Position};

/// One position waiting to be written.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) group: GroupId,
    pub(super) position: Position,
}

#[derive(Debug, Default)]
struct Queue {
    items: Vec<Entry>,
    closing: bool,
}

/// What the observer and the writer share: the bounded queue and its wake-up.
#[derive(Debug)]
pub(super) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    /// An empty queue of at most `capacity` positions.
    pub(super) fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            capacity,
            metrics,
        }
    }

    /// Refuses further positions and wakes the writer, which writes what is queued and stops.
    pub(super) fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
    }

    /// Positions waiting for the writer.
    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The critical sections only move vectors; a poisoned lock still holds a usable queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues what fits of `updates` and counts the rest as dropped. Never blocks for longer
    /// than the writer's `mem::take` of the queue.
    pub(super) fn push(&self, group: &GroupId, updates: &[Position]) {
        let mut queue = self.lock();
        let room = if queue.closing {
            0
        } else {
            self.capacity.saturating_sub(queue.items.len())
        };
        let taken = updates.len().min(room);
        queue.items.extend(updates[..taken].iter().map(|p| Entry {
            group: group.clone(),
            position: p.clone(),
        }));
        let queued = queue.items.len();
        drop(queue);
        self.metrics.store.queued.set(queued as i64);
        if taken < updates.len() {
            self.metrics
                .store
                .dropped
                .inc_by((updates.len() - taken) as u64);
        }
        if taken > 0 {
            self.wake.notify_one();
        }
    }

    /// Waits until something is queued, the store closes, or `deadline`; then takes the whole
    /// queue. Returns whether the store is closing.
    pub(super) fn take(&self, deadline: Instant) -> (Vec<Entry>, bool) {
        let mut queue = self.lock();
        while queue.items.is_empty() && !queue.closing {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            queue = self
                .wake
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let items = std::mem::take(&mut queue.items);
        let closing = queue.closing;
        drop(queue);
        self.metrics.store.queued.set(0);
        (items, closing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, Fix};

    fn position(device: &str, ts: i64) -> Position {
        Position {
            device: DeviceId::parse(device).unwrap(),
            fix: Fix::new(1.0, 2.0, ts),
            rts: ts,
            online: true,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_counts_drops() {
        let metrics = Arc::new(Metrics::new());
        let shared = Shared::new(3, metrics.clone());
        let g = GroupId::parse("g").unwrap();
        shared.push(&g, &[position("a", 1), position("b", 1)]);
        shared.push(&g, &[position("c", 1), position("d", 1)]);
        assert_eq!(metrics.store.dropped.get(), 1);
        assert_eq!(metrics.store.queued.get(), 3);
        let (items, closing) = shared.take(Instant::now());
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].position.device.as_str(), "c");
        assert!(!closing);
        shared.close();
        shared.push(&g, &[position("e", 1)]);
        assert_eq!(
            metrics.store.dropped.get(),
            2,
            "nothing is queued once closing"
        );
        let (items, closing) = shared.take(Instant::now() + std::time::Duration::from_secs(60));
        assert!(
            items.is_empty() && closing,
            "closing wakes the writer at once"
        );
    }
}
