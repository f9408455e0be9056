//! Wire types of protocol v1 and the two codecs (`docs/protocol.md`).
//!
//! Refusals are [`Refusal`] values (a code from the protocol's list and a message), never
//! panics: whatever bytes a client sends, decoding returns.
//!
//! # Layout
//! Files import one way, each only from those listed before it (and from [`crate::model`],
//! the only module of this crate the protocol depends on):
//!
//! - `codec.rs`: [`Codec`] (which encoding a connection speaks) and [`Frame`] (one encoded
//!   message, shared by every socket it goes to).
//! - `error.rs`: [`ErrorCode`] and [`Refusal`].
//! - `client.rs`: client messages: [`decode`] into [`ClientMessage`], with [`validate_fix`]
//!   shared with the HTTP and ingest routes.
//! - `server.rs`: server messages: [`ServerMessage`] and its encoding, [`PositionRecord`],
//!   [`encode_snapshot`], [`encode_refusal`].
//!
//! This file only declares the modules and re-exports their items, so callers name them
//! `crate::protocol::…` whatever file they live in.

mod client;
mod codec;
mod error;
mod server;

pub use client::{
    ClientMessage, MAX_FUTURE_MS, MIN_FIX_TS_MS, PingId, RawMessage, check_fix_age, decode,
    decode_raw, validate_fix,
};
pub use codec::{Codec, Frame, JSON_PROTOCOL, MSGPACK_PROTOCOL};
pub use error::{ErrorCode, Refusal};
pub use server::{EventRecord, PositionRecord, ServerMessage, encode_refusal, encode_snapshot};
