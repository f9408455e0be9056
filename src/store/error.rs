//! Why the store failed, and how long a connection waits for another's lock.

use std::io;
use std::path::PathBuf;

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
    #[error("the data file has schema version {0}; this build reads versions up to 2")]
    Schema(i64),
    /// The database file is not a Beacon database, or is damaged.
    #[error(
        "{path} is not a Beacon database or is damaged ({detail}). Beacon will not start on \
         it. Either move it away (with its -wal and -shm files, if any) to start with an empty \
         store, or restore it from a backup"
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the schema check said.
        detail: String,
    },
    /// The write-ahead log holds committed transactions SQLite would silently drop.
    #[error(
        "the write-ahead log {path} is damaged: frame {first_bad_frame} fails its checksum and \
         {lost_commits} committed transaction(s) after it would be silently dropped. Beacon will \
         not start on it. Restore the data directory from a backup, or, to accept losing those \
         transactions, move {path} away and start again (the database file itself holds \
         everything up to the last checkpoint)"
    )]
    DamagedWal {
        /// The WAL file.
        path: PathBuf,
        /// The first frame that fails its checksum (from 0).
        first_bad_frame: u64,
        /// Committed transactions after it.
        lost_commits: u64,
    },
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}
