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
}
