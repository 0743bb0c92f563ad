//! objectd's error type and its one mapping onto S3 errors (code, status, message).

use s3s::{S3Error, S3ErrorCode};

/// Everything that can fail inside objectd.
#[derive(Debug, thiserror::Error)]
pub enum ObjectdError {
    /// A setting is invalid (one line).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata service failed or could not be reached.
    #[error(transparent)]
    Meta(#[from] metadata_client::MetaClientError),
    /// The pool failed (storage nodes unreachable, a chunk missing everywhere).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// A stored record could not be decoded (never expected: records carry a version).
    #[error("corrupt record at {key}: {why}")]
    Record {
        /// The metadata key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A stored record was written by a newer release (one line naming both versions).
    #[error(transparent)]
    NewerRecord(#[from] format_version::NewerFormat),
    /// The metrics/health endpoint failed.
    #[error(transparent)]
    Http(#[from] daemon_kit::HttpError),
    /// The S3 server failed.
    #[error("S3 server failed: {0}")]
    Serve(String),
    /// A request-level S3 error, passed through as it is.
    #[error("{0}")]
    S3(S3Error),
    /// Optimistic concurrency: the records changed under a transaction; retry.
    #[error("conflicting concurrent update")]
    Conflict,
}

impl From<S3Error> for ObjectdError {
    fn from(e: S3Error) -> Self {
        ObjectdError::S3(e)
    }
}

impl From<ObjectdError> for S3Error {
    fn from(e: ObjectdError) -> Self {
        use metadata_client::MetaClientError as M;
        match e {
            ObjectdError::S3(e) => e,
            ObjectdError::Meta(M::Unavailable { .. })
            | ObjectdError::Cluster(cluster::ClusterError::Unavailable(_)) => {
                tracing::warn!(error = %e, "backend unavailable");
                S3Error::with_message(S3ErrorCode::ServiceUnavailable, "The storage backend is unavailable; retry.")
            }
            ObjectdError::Cluster(cluster::ClusterError::Meta(M::Unavailable { .. })) => {
                S3Error::with_message(S3ErrorCode::ServiceUnavailable, "The metadata service is unavailable; retry.")
            }
            ObjectdError::Conflict => {
                S3Error::with_message(S3ErrorCode::SlowDown, "Too many concurrent updates of this key; retry.")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                S3Error::with_message(S3ErrorCode::InternalError, "We encountered an internal error. Please try again.")
            }
        }
    }
}

/// Result of objectd's internal functions.
pub type Result<T, E = ObjectdError> = std::result::Result<T, E>;

/// Shorthand for an S3 error with a message.
pub fn s3err(code: S3ErrorCode, msg: impl Into<String>) -> ObjectdError {
    ObjectdError::S3(S3Error::with_message(code, msg.into()))
}
