//! [`RelayError`]: what can go wrong with Redis or its settings.

use std::time::Duration;

/// A Redis or configuration failure.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// `--redis-url` does not parse (the URL itself is not repeated: it may hold a password).
    #[error("invalid --redis-url")]
    Url(#[source] redis::RedisError),
    /// Redis refused a request or the connection failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("no answer from Redis within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Redis answered something of an unexpected shape.
    #[error("unexpected reply from Redis: {0}")]
    Reply(&'static str),
    /// The connection closed.
    #[error("connection to Redis closed")]
    Lost,
}
