//! The key-value engine's error type.

/// What can go wrong in a key-value engine.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The underlying store reported an error (I/O, corruption, lock held by another process).
    #[error("key-value store: {0}")]
    Backend(String),
    /// The store could not be opened at the given path.
    #[error("cannot open key-value store at {path}: {reason}")]
    Open {
        /// Where the store lives.
        path: String,
        /// What the backend said.
        reason: String,
    },
}
