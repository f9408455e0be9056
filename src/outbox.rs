//! The bounded queue of frames from the hub to one connection.
//!
//! A tokio `mpsc` channel allocates a block of 32 slots (about 1.8 KiB with its header) for
//! every connection up front, idle or not. This queue allocates nothing until a frame is queued,
//! holds at most `capacity` frames, and remembers when it had to refuse one (`lagged`), which is
//! what the session needs to resync a slow client. Frames are reference-counted, so a queued
//! frame costs a pointer, not a copy.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::protocol::Frame;

/// Capacity above which an emptied queue gives its memory back.
const SHRINK_ABOVE: usize = 8;

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for the connection.
    Queued,
    /// Dropped: the queue was full, and the outbox is now marked lagged.
    Full,
    /// Dropped: the connection is gone.
    Closed,
}

/// A bounded, lazily allocated frame queue with one consumer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    lagged: bool,
    closed: bool,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections only move frames in and out of a VecDeque and cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` unless the queue is full or closed. Never waits.
    pub fn push(&self, frame: Frame) -> Push {
        let mut state = self.lock();
        if state.closed {
            return Push::Closed;
        }
        if state.frames.len() >= self.capacity {
            state.lagged = true;
            return Push::Full;
        }
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
        Push::Queued
    }

    /// Takes the oldest queued frame.
    pub fn pop(&self) -> Option<Frame> {
        let mut state = self.lock();
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > SHRINK_ABOVE {
            state.frames = VecDeque::new();
        }
        frame
    }

    /// Completes once a frame is queued (at once when one already is).
    pub async fn ready(&self) {
        loop {
            // Registering interest before checking closes the gap between a check and a push.
            let notified = self.ready.notified();
            if !self.lock().frames.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Whether frames were dropped since the last call; if so, also discards whatever is still
    /// queued, since the caller is about to replace it with fresh snapshots.
    pub fn take_lagged(&self) -> bool {
        let mut state = self.lock();
        if !state.lagged {
            return false;
        }
        state.lagged = false;
        state.frames = VecDeque::new();
        true
    }

    /// Refuses every further frame and frees the queued ones.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frame(s: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(s))
    }

    #[test]
    fn bounded_with_lag_flag() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(frame("a")), Push::Queued);
        assert_eq!(outbox.push(frame("b")), Push::Queued);
        assert_eq!(outbox.push(frame("c")), Push::Full);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.pop(), Some(frame("a")));
        assert!(outbox.take_lagged());
        assert!(outbox.is_empty(), "a resync discards the stale queue");
        assert!(!outbox.take_lagged());
        outbox.close();
        assert_eq!(outbox.push(frame("d")), Push::Closed);
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.ready().await;
                outbox.pop()
            }
        });
        tokio::task::yield_now().await;
        outbox.push(frame("x"));
        assert_eq!(waiter.await.unwrap(), Some(frame("x")));
    }
}
