//! Error codes of the protocol and refusals: what a client gets back in an `error` frame.
//!
//! A refusal is a value, never a panic, and never boxed: decoding returns it on the hot path.

use std::borrow::Cow;
use std::fmt;

use serde::{Serialize, Serializer};

/// Error codes of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Unparseable message or unknown type.
    BadMessage,
    /// A `pos` whose fields are out of range or missing.
    InvalidPosition,
    /// A group or role the identity may not use.
    Forbidden,
    /// Too many messages.
    RateLimited,
    /// `unsub` of a group the client does not watch.
    NotSubscribed,
}

impl ErrorCode {
    /// Every code, in a fixed order (used for metrics).
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::BadMessage,
        ErrorCode::InvalidPosition,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::NotSubscribed,
    ];

    /// The protocol's name for the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::InvalidPosition => "invalid_position",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotSubscribed => "not_subscribed",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A refused client message: what the client gets back in an `error` frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Which rule was broken.
    pub code: ErrorCode,
    /// Human-readable reason naming the field at fault.
    pub message: Cow<'static, str>,
    /// The `seq` of the refused `pos`, when it had one.
    pub seq: Option<u64>,
}

impl Refusal {
    /// A refusal with a fixed message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            message: message.into(),
            seq: None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
