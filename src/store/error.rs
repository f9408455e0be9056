//! Why the store failed, and how long a connection waits for another's lock.

use std::io;

/// How long a connection waits for a lock held by another before failing, in ms.
pub(super) const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be used.
    #[error("data directory: {0}")]
    Io(#[from] io::Error),
    /// The file was written by a newer build.
    #[error("the data file has schema version {0}; this build reads version 1")]
    Schema(i64),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}
