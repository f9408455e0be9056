//! The bounded queue between the hub's observer and the writer thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::model::{DeviceId, Fix, GroupId};

/// One accepted fix waiting to be written, with the groups it was published to.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) device: DeviceId,
    pub(super) groups: Vec<GroupId>,
    pub(super) fix: Fix,
    /// When the server received it, ms.
    pub(super) rts: i64,
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

    /// Queues `entry`, or counts it as dropped when the queue is full or closing. Never blocks
    /// for longer than the writer's `mem::take` of the queue.
    pub(super) fn push(&self, entry: Entry) {
        let mut queue = self.lock();
        if queue.closing || queue.items.len() >= self.capacity {
            drop(queue);
            self.metrics.store.dropped.inc();
            return;
        }
        queue.items.push(entry);
        let queued = queue.items.len();
        drop(queue);
        self.metrics.store.queued.set(queued as i64);
        if queued == 1 {
            // The writer sleeps only on an empty queue: wake it for the first entry alone.
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

    fn entry(device: &str, ts: i64) -> Entry {
        Entry {
            device: DeviceId::parse(device).unwrap(),
            groups: vec![GroupId::parse("g").unwrap()],
            fix: Fix::new(1.0, 2.0, ts),
            rts: ts,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_counts_drops() {
        let metrics = Arc::new(Metrics::new());
        let shared = Shared::new(3, metrics.clone());
        for device in ["a", "b", "c", "d"] {
            shared.push(entry(device, 1));
        }
        assert_eq!(metrics.store.dropped.get(), 1);
        assert_eq!(metrics.store.queued.get(), 3);
        let (items, closing) = shared.take(Instant::now());
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].device.as_str(), "c");
        assert!(!closing);
        shared.close();
        shared.push(entry("e", 1));
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
