//! The chunk engine's error type.

use crate::ChunkHash;

/// What can go wrong in the chunk engine.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// No chunk with this hash is stored.
    #[error("chunk {0} not found")]
    NotFound(ChunkHash),
    /// The stored copy failed verification; it is quarantined and never returned as data.
    #[error("chunk {hash} is corrupt: {detail}")]
    Corrupt {
        /// The chunk that failed.
        hash: ChunkHash,
        /// What was wrong with it.
        detail: String,
    },
    /// A put claimed a hash that its data does not have.
    #[error("data hashes to {actual}, not to the claimed {claimed}")]
    HashMismatch {
        /// The hash the caller sent.
        claimed: ChunkHash,
        /// The hash of the data received.
        actual: ChunkHash,
    },
    /// The chunk is larger than the maximum pinned at format time.
    #[error("chunk of {len} bytes exceeds the maximum chunk size of {max} bytes")]
    TooLarge {
        /// Length offered.
        len: usize,
        /// Pinned maximum.
        max: u32,
    },
    /// A string that should have been a hash was not 64 hex digits.
    #[error("invalid chunk hash {0:?}: expected 64 hex digits")]
    InvalidHash(String),
    /// The data directory was formatted with other settings (one readable line).
    #[error("{0}")]
    FormatMismatch(String),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The index store failed.
    #[error(transparent)]
    Index(#[from] kv_engine::KvError),
    /// The index holds a value this version cannot read.
    #[error("index entry for {0} is unreadable (format version or length mismatch)")]
    BadIndexEntry(String),
    /// The engine is shutting down.
    #[error("chunk engine is shut down")]
    Closed,
}

impl ChunkError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ChunkError::Io { context: context.into(), source }
    }
}
