//! `EngineError`: what a volume read, write or flush can fail with.

/// Failures of the volume engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Outside the volume.
    #[error("{len} bytes at {offset} fall outside the volume ({capacity} bytes)")]
    OutOfRange { offset: u64, len: u64, capacity: u64 },
    /// Another attachment superseded this one.
    #[error("volume {volume} attachment at generation {generation} is fenced (current: {current:?})")]
    Fenced { volume: String, generation: u64, current: Option<u64> },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// A record that cannot be read.
    #[error("corrupt volume metadata: {0}")]
    Corrupt(String),
    /// The pool failed.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The metadata service failed.
    #[error(transparent)]
    Meta(#[from] metadata_client::MetaClientError),
}

impl EngineError {
    /// Whether the call failed only because the pool or the metadata service could not be
    /// reached, so the same call may succeed when they are back (the volume's I/O retries these
    /// for its [`IoRetry`](cluster::IoRetry) timeout). A transaction whose outcome is unknown
    /// counts too: every engine write is idempotent (a flush commits the same map entries and
    /// references again, and the fencing condition still guards it).
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Cluster(e) => e.is_transient(),
            EngineError::Meta(e) => e.is_transient() || matches!(e, metadata_client::MetaClientError::Indeterminate(_)),
            EngineError::OutOfRange { .. }
            | EngineError::Fenced { .. }
            | EngineError::Invalid(_)
            | EngineError::Corrupt(_) => false,
        }
    }
}

/// Result of an engine call.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use metadata_client::MetaClientError;

    #[test]
    fn an_unreachable_pool_or_service_is_transient_the_rest_fails_at_once() {
        let down = || MetaClientError::Unavailable { waited: std::time::Duration::ZERO, last_error: "refused".into() };
        assert!(EngineError::Cluster(cluster::ClusterError::Unavailable("0 of 1 copies".into())).is_transient());
        assert!(EngineError::Cluster(cluster::ClusterError::Meta(down())).is_transient());
        assert!(EngineError::Meta(down()).is_transient());
        assert!(EngineError::Meta(MetaClientError::Indeterminate("reset".into())).is_transient());
        for e in [
            EngineError::OutOfRange { offset: 0, len: 1, capacity: 0 },
            EngineError::Fenced { volume: "v".into(), generation: 1, current: Some(2) },
            EngineError::Invalid("x".into()),
            EngineError::Corrupt("x".into()),
            EngineError::Meta(MetaClientError::InvalidArgument("x".into())),
            EngineError::Cluster(cluster::ClusterError::NotFound(chunk_engine::ChunkHash::of(b"x"))),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
