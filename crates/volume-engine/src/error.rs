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

/// Result of an engine call.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
