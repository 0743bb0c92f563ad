//! `CsiError`: every failure of a CSI call, and its one mapping to `tonic::Status`.

use tonic::Code;

/// What a CSI call can fail with; each variant is the gRPC code the spec names for it.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A missing or malformed argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume, snapshot or node named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume (or snapshot) of that name exists with other, incompatible properties.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call cannot proceed in the current state (attached elsewhere, in use, not staged).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The capacity asked for cannot be met.
    #[error("{0}")]
    OutOfRange(String),
    /// Not enough of something (storage nodes, space).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another call for the same volume is in progress, or a paging token is stale.
    #[error("{0}")]
    Aborted(String),
    /// The pool or the metadata service cannot be reached now; the caller retries.
    #[error("{0}")]
    Unavailable(String),
    /// Not offered by this driver (or not yet built).
    #[error("{0}")]
    Unimplemented(String),
    /// A metadata service call failed.
    #[error("metadata service: {0}")]
    Meta(#[from] metadata_client::MetaClientError),
    /// A bug or a corrupt record.
    #[error("{0}")]
    Internal(String),
}

/// Result of a CSI operation.
pub type Result<T, E = CsiError> = std::result::Result<T, E>;

impl CsiError {
    /// The gRPC code the CSI spec names for this failure.
    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::ResourceExhausted(_) => Code::ResourceExhausted,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::Unavailable(_) | CsiError::Meta(_) => Code::Unavailable,
            CsiError::Unimplemented(_) => Code::Unimplemented,
            CsiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CsiError> for tonic::Status {
    fn from(e: CsiError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Shorthand for an InvalidArgument error.
pub fn invalid(msg: impl Into<String>) -> CsiError {
    CsiError::InvalidArgument(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_code_and_message() {
        let s: tonic::Status = CsiError::FailedPrecondition("attached to n1".into()).into();
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "attached to n1"));
        let s: tonic::Status = invalid("volume_id is required").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(CsiError::Aborted("x".into()).code(), Code::Aborted);
        assert_eq!(CsiError::OutOfRange("x".into()).code(), Code::OutOfRange);
    }
}
