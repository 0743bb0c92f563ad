//! The storage node's error type and its one mapping to gRPC status codes.

use chunk_engine::ChunkError;
use tonic::{Code, Status};

use crate::journal::JournalError;

/// What can stop a storage node or fail a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is invalid (one readable line).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The chunk engine failed (including a data directory formatted with other settings).
    #[error(transparent)]
    Engine(#[from] ChunkError),
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
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(String),
    /// A request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A journal operation failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The gRPC code for each chunk-engine error.
pub fn chunk_error_code(e: &ChunkError) -> Code {
    match e {
        ChunkError::NotFound(_) => Code::NotFound,
        ChunkError::Corrupt { .. } => Code::DataLoss,
        ChunkError::HashMismatch { .. } | ChunkError::TooLarge { .. } | ChunkError::InvalidHash(_) => {
            Code::InvalidArgument
        }
        ChunkError::FormatMismatch(_) => Code::FailedPrecondition,
        ChunkError::Closed => Code::Unavailable,
        ChunkError::Io { .. } | ChunkError::Index(_) | ChunkError::BadIndexEntry(_) => Code::Internal,
    }
}

/// The gRPC code for each journal error. FAILED_PRECONDITION only for a writer that must stop
/// (sealed at a newer epoch) or a record already trimmed.
pub fn journal_error_code(e: &JournalError) -> Code {
    match e {
        JournalError::Invalid(_) => Code::InvalidArgument,
        JournalError::Sealed { .. } | JournalError::Trimmed { .. } => Code::FailedPrecondition,
        JournalError::Corrupt(_) => Code::DataLoss,
        JournalError::Format(_) | JournalError::Io { .. } => Code::Internal,
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match &e {
            NodeError::Engine(c) => Status::new(chunk_error_code(c), c.to_string()),
            NodeError::BadRequest(m) => Status::invalid_argument(m.clone()),
            NodeError::Journal(j) => Status::new(journal_error_code(j), j.to_string()),
            NodeError::Config(_) | NodeError::Bind { .. } | NodeError::Http(_) | NodeError::Serve(_) => {
                Status::internal(e.to_string())
            }
        }
    }
}
