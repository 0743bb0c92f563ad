//! The cluster crate's error type.

use chunk_engine::ChunkHash;

/// What a cluster operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is invalid (one line).
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// The metadata service failed.
    #[error(transparent)]
    Meta(#[from] metadata_client::MetaClientError),
    /// No node holds the chunk.
    #[error("chunk {0} not found on any storage node")]
    NotFound(ChunkHash),
    /// Chunks were put too long ago to be referenced safely; put them again.
    #[error("{0}")]
    Stale(String),
    /// Not enough storage nodes could be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A newer writer took over (a journal sealed at a newer epoch).
    #[error("{0}")]
    Fenced(String),
}

impl ClusterError {
    /// Whether the operation failed only because storage nodes or the metadata service could
    /// not be reached (fewer nodes up than needed, refused connections, timeouts) and may succeed
    /// when they are back. The one classification data paths retry by (see [`crate::IoRetry`]).
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Unavailable(_) => true,
            ClusterError::Meta(e) => e.is_transient(),
            ClusterError::Config(_) | ClusterError::NotFound(_) | ClusterError::Stale(_) | ClusterError::Fenced(_) => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metadata_client::MetaClientError;

    #[test]
    fn unreachable_nodes_and_metadata_are_transient_the_rest_is_not() {
        let down = MetaClientError::Unavailable { waited: std::time::Duration::ZERO, last_error: "refused".into() };
        assert!(ClusterError::Unavailable("1 of 2 copies durable".into()).is_transient());
        assert!(ClusterError::Meta(down).is_transient());
        assert!(!ClusterError::Meta(MetaClientError::Indeterminate("x".into())).is_transient());
        assert!(!ClusterError::NotFound(ChunkHash::of(b"x")).is_transient());
        assert!(!ClusterError::Config("x".into()).is_transient());
        assert!(!ClusterError::Stale("x".into()).is_transient());
    }
}
