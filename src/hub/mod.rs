//! The hub: latest state of every group, presence, and the tick-driven fan-out.
//!
//! # Design
//! - Groups live in a [`DashMap`](dashmap::DashMap) (sharded locks); each group's state sits
//!   behind its own `std::sync::Mutex`. No lock is global, and no lock is ever held across an
//!   `.await`: every critical section is a few map operations, so a blocking mutex is cheaper
//!   than an async one (the reasoning of mini-redis's `db.rs`).
//! - Publishing a fix updates the group's latest position and marks the device as changed.
//!   Nothing is sent then. Once per tick, the ticker turns each changed group into one `batch`
//!   holding the latest fix of every changed device (coalescing), encodes it once per codec in
//!   use, and hands the same bytes to every subscriber (see [`crate::outbox`]: written to the
//!   socket at once where possible, else queued).
//! - Ticks are per group: a busy group is flushed one tick after its previous flush, so groups
//!   go out at different moments and the fan-out spreads over the tick. A group that has been
//!   quiet for at least one tick is flushed at once, so a lone update sees no batching delay.
//!   Time is [`tokio::time::Instant`], so tests run the ticker on paused time.
//! - Queues are bounded. A full queue means the client is not reading: the batch is dropped for
//!   it and the connection is flagged `lagged`; once it drains, the session sends a fresh
//!   snapshot instead (position is state, so nothing of value is lost).
//! - Other components (the Redis relay, the durable store) watch the hub through
//!   [`HubObserver`]: every fix accepted here as it is published (`published`, before any
//!   coalescing, for the history), after each flush what changed *locally* (fixes received by
//!   this instance, devices whose socket closed here), and when a group gains its first or
//!   loses its last local subscriber. State that arrives from elsewhere enters through
//!   [`Hub::merge_remote`], which fans it out locally but never reports it to observers, so
//!   nothing echoes between instances. Remote changes are fanned out at once rather than on the
//!   next tick (they were coalesced over a tick where they came from); local changes pending in
//!   the same group still wait for the tick. Presence of devices whose socket is on another
//!   instance lasts from the last time that instance vouched for them ([`Hub::remote_seen`]).
//! - A group's pending changes are one value (`pending.rs`): every change, and the part of it
//!   made here. The tick takes it whole; the fan-out of remote changes takes the rest.
//!
//! # Layout
//! Split by when the code runs. Files import one way, each only from those listed before it
//! (and, outside the hub, only from `model`, `protocol`, `outbox`, `config` and `metrics`):
//!
//! 1. `due.rs`: the due queue, items by when they are due. Knows nothing of groups.
//! 2. `pending.rs`: a group's pending changes (each of `Origin` local or remote) and
//!    the batch they resolve to.
//! 3. `state.rs`: [`Hub`], its groups and their state, [`Outlet`], [`HubObserver`]; looking
//!    groups up; subscribing and unsubscribing.
//! 4. `updates.rs`: publishing fixes, merging other instances' state, sockets opening and
//!    closing; queuing a group for its tick (due queue) or for at once (remote list).
//! 5. `tick.rs`: the ticker, both flushes and the fan-out.
//! 6. `sweep.rs`: the sweeper (stale presence, retention, empty groups); marks devices offline
//!    through `updates.rs`.
//! 7. `send.rs`: one frame to every subscriber of a group at once, outside the tick (events, a
//!    device's new profile name as a one-record batch).
//!
//! This file only declares the modules and re-exports what callers use.

mod due;
mod pending;
mod send;
mod state;
mod sweep;
mod tick;
mod updates;

pub use state::{Hub, HubObserver, Outlet};
