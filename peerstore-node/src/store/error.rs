//! The store's error type.

use std::io;
use std::path::PathBuf;

use peerstore_proto::BlockKey;

/// Everything that can go wrong in the block store. Every message is one line that says what
/// happened and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The block or record does not fit in the remaining capacity (blocks and records of every
    /// store sharing it count). Nothing was written.
    #[error(
        "node full: the write needs {needed} bytes but only {free} of {capacity} bytes are free; \
         raise --capacity or store it elsewhere"
    )]
    Full {
        /// Bytes the rejected write needed (a block's size, a record's growth).
        needed: u64,
        /// Bytes free at the time of the put (capacity minus stored and reserved bytes).
        free: u64,
        /// The configured capacity.
        capacity: u64,
    },
    /// The bytes offered for a key do not hash to it. Nothing was written.
    #[error(
        "block rejected: its bytes hash to {actual}, not to the key {expected} it was sent under"
    )]
    HashMismatch {
        /// The key the block was offered under.
        expected: BlockKey,
        /// The BLAKE3 hash of the bytes.
        actual: BlockKey,
    },
    /// The block's bytes failed verification. A copy went to quarantine, the block was dropped
    /// from the index and the disk and is no longer held: repair it from a replica.
    #[error(
        "block {key} is corrupt on disk ({detail}); copied to {quarantined_to:?} and dropped; \
         repair it from a replica"
    )]
    Corrupt {
        /// The block.
        key: BlockKey,
        /// What was wrong (hash mismatch, wrong size).
        detail: String,
        /// Where the copy of the bad bytes went.
        quarantined_to: PathBuf,
    },
    /// The index listed the block but its record was gone. The index entry was dropped and the
    /// block is no longer held: repair it from a replica.
    #[error("block {key} was indexed but its record is gone; index entry dropped; repair it from a replica")]
    Missing {
        /// The block.
        key: BlockKey,
    },
    /// A filesystem operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process has the store open.
    #[error(
        "store at {path:?} is already open by another process; stop it or use another --data-dir"
    )]
    Locked {
        /// The index database file.
        path: PathBuf,
    },
    /// The metadata database failed.
    #[error("block index database: {0}")]
    Db(String),
    /// The metadata database holds something this version cannot read.
    #[error("block index database holds an invalid entry: {0}")]
    BadIndex(String),
    /// The caller passed an invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StoreError {
    /// The key that this node lost and should re-fetch from a replica, if the error means that.
    #[must_use]
    pub fn needs_repair(&self) -> Option<BlockKey> {
        match self {
            StoreError::Corrupt { key, .. } | StoreError::Missing { key } => Some(*key),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// Maps any redb error into [`StoreError::Db`].
pub(crate) fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into().to_string())
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
