//! The codecs: which encoding a connection speaks, and an encoded frame.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Subprotocol name of the JSON codec.
pub const JSON_PROTOCOL: &str = "beacon.v1.json";
/// Subprotocol name of the MessagePack codec.
pub const MSGPACK_PROTOCOL: &str = "beacon.v1.msgpack";

/// The encoding negotiated for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON objects in text frames.
    Json,
    /// MessagePack maps (named keys) in binary frames.
    MsgPack,
}

impl Codec {
    /// Every codec, in a fixed order (used to index per-codec tables).
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::MsgPack];

    /// Position of this codec in [`Codec::ALL`].
    pub fn index(self) -> usize {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }

    /// The subprotocol name.
    pub fn protocol(self) -> &'static str {
        match self {
            Codec::Json => JSON_PROTOCOL,
            Codec::MsgPack => MSGPACK_PROTOCOL,
        }
    }

    /// The codec for a subprotocol name.
    pub fn from_protocol(name: &str) -> Option<Codec> {
        match name {
            JSON_PROTOCOL => Some(Codec::Json),
            MSGPACK_PROTOCOL => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }
}

/// One encoded server frame, ready to be written to any number of sockets.
///
/// Cloning is a reference-count increment: a batch is encoded once per codec and the same bytes
/// go to every subscriber.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A JSON text frame.
    Text(Utf8Bytes),
    /// A MessagePack binary frame.
    Binary(Bytes),
}

impl Frame {
    /// Length of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// The payload.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        }
    }

    /// Whether the payload is empty (never, for frames this module encodes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The WebSocket message carrying this frame.
    pub fn into_message(self) -> Message {
        match self {
            Frame::Text(t) => Message::Text(t),
            Frame::Binary(b) => Message::Binary(b),
        }
    }
}
