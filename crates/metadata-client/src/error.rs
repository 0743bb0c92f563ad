//! The metadata client's error type.

use std::time::Duration;

/// What a metadata call can fail with. "Not leader" never appears: the client follows it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaClientError {
    /// The request is malformed (oversized or empty key, bad transaction, ...).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// No node could serve the request before the retry deadline.
    #[error("metadata service unavailable after {waited:?}: {last_error}")]
    Unavailable {
        /// How long the client kept trying.
        waited: Duration,
        /// The last error seen.
        last_error: String,
    },
    /// A transaction was sent but its outcome is unknown (the node went away or timed out): read
    /// the keys again before deciding.
    #[error("transaction outcome unknown: {0}")]
    Indeterminate(String),
    /// A watch fell behind or was cut off.
    #[error("watch aborted: {0}")]
    Aborted(String),
    /// The service does not offer the call (an older version).
    #[error("not offered by the metadata service: {0}")]
    Unimplemented(String),
    /// The service reported an internal error.
    #[error("metadata service error: {0}")]
    Internal(String),
}

impl MetaClientError {
    /// Whether the call failed only because no node could be reached (down, restarting, no
    /// leader) and was surely not applied: the same call may succeed later. An
    /// [`Indeterminate`](Self::Indeterminate) transaction is not transient: re-read first.
    pub fn is_transient(&self) -> bool {
        matches!(self, MetaClientError::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_service_is_transient() {
        assert!(MetaClientError::Unavailable { waited: Duration::ZERO, last_error: "refused".into() }.is_transient());
        for e in [
            MetaClientError::InvalidArgument("x".into()),
            MetaClientError::Indeterminate("x".into()),
            MetaClientError::Aborted("x".into()),
            MetaClientError::Unimplemented("x".into()),
            MetaClientError::Internal("x".into()),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
