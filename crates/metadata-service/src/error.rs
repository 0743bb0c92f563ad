//! The metadata service's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};

/// Metadata key for the leader's API address on a "not leader" answer.
pub const LEADER_HEADER: &str = "x-cairn-leader";

/// What can stop a metadata node or fail a request.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A setting is invalid (one readable line).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// This node is not the leader; the leader's API address when known.
    #[error("not the leader")]
    NotLeader(Option<String>),
    /// No leader (election in progress, or no quorum reachable).
    #[error("no leader available: {0}")]
    Unavailable(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The data directory's format is newer than this build reads, or unreadable (one line).
    #[error("{0}")]
    Format(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint failed.
    #[error(transparent)]
    Http(#[from] daemon_kit::HttpError),
    /// Raft or a server failed.
    #[error("{0}")]
    Internal(String),
}

impl From<MetaError> for Status {
    fn from(e: MetaError) -> Status {
        let code = match &e {
            MetaError::InvalidArgument(_) => Code::InvalidArgument,
            MetaError::NotLeader(_) | MetaError::Unavailable(_) => Code::Unavailable,
            MetaError::Config(_)
            | MetaError::Storage(_)
            | MetaError::Format(_)
            | MetaError::Bind { .. }
            | MetaError::Http(_)
            | MetaError::Internal(_) => Code::Internal,
        };
        let mut s = Status::new(code, e.to_string());
        if let MetaError::NotLeader(Some(addr)) = &e
            && let Ok(v) = addr.parse()
        {
            s.metadata_mut().insert(LEADER_HEADER, v);
        }
        s
    }
}

impl From<kv_engine::KvError> for MetaError {
    fn from(e: kv_engine::KvError) -> Self {
        MetaError::Storage(e.to_string())
    }
}
