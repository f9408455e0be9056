//! The Redis relay: any number of instances acting as one server (`docs/redis.md`).
//!
//! # How it fits
//! - The relay watches the hub as a [`HubObserver`]. After each flush the hub hands it what
//!   changed *locally*; the observer copies that into a bounded queue and returns (it never
//!   blocks the ticker; a full queue drops the flush, counts it, and marks the group for a
//!   resync). When a group gains its first or loses its last local subscriber, the observer
//!   notes the group and wakes the relay task.
//! - The relay task (`task.rs`) owns one Redis connection (`link.rs`). Per batch of queued
//!   flushes it sends one pipeline: per group, a conditional store of the changed records (a
//!   Lua script: newest fix wins, atomically per key), `ZADD` of when
//!   they were vouched for, and one `PUBLISH` of a MessagePack message (`codec.rs`) tagged with
//!   this instance's id, on the group's channel (`keys.rs`). It subscribes to exactly the groups
//!   with local subscribers: subscribe first, then load the group's shared state, then merge by
//!   fix time.
//! - Messages from other instances are applied to the hub as they arrive (`inbound.rs`) with
//!   [`Hub::merge_remote`] and [`Hub::remote_seen`], which fan out locally and are never
//!   reported back to observers: nothing echoes.
//! - Presence: every heartbeat interval (a quarter of the stale window) each instance vouches
//!   for the devices that hold a socket on it, in the same message as its updates. A device
//!   whose instance stops vouching (it died) goes offline everywhere after the stale window.
//! - Outage: the instance keeps serving its local clients and keeps its local state
//!   (`local.rs`); `/readyz` says `degraded`; the task reconnects with capped exponential
//!   backoff, then resubscribes, reloads and republishes, so every instance converges.
//!
//! # Errors
//! [`RelayError`] covers configuration and Redis failures. Failures are handled in the task:
//! logged once per outage, never returned to clients.

mod codec;
mod error;
mod inbound;
mod keys;
mod link;
mod local;
mod state;
mod task;

pub(crate) use error::RelayError;
pub(crate) use state::{RedisHealth, Relay};
