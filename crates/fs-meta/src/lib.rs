//! The shared filesystem's namespace, kept in the metadata service: filesystems (one per CSI
//! volume) with their quota and usage, inodes, directory entries, extended attributes and each
//! file's block map (block index → content-hashed chunk in the pool). Every change is one
//! transaction conditioned on the revisions of the keys it read, so clients on many nodes share
//! one consistent namespace; a lost race is re-read and retried.

pub mod blocks;
pub mod cache;
pub mod filesystem;
pub mod inode;
pub mod keys;
pub mod locks;
pub mod namespace;

pub use filesystem::{FsRecord, Usage};
pub use inode::{Inode, Kind, Timestamp};
pub use namespace::Namespace;

/// Failures of namespace operations; each maps to one errno at the FUSE boundary.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("quota of {quota} bytes exceeded")]
    Quota { quota: u64 },
    #[error("no such attribute")]
    NoAttr,
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("too many links")]
    TooManyLinks,
    #[error("filesystem {0} does not exist")]
    NoFilesystem(String),
    #[error("too much contention on {0}; gave up after retries")]
    Contended(String),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    /// A record written by a newer release (one line naming both versions).
    #[error(transparent)]
    Newer(#[from] format_version::NewerFormat),
    #[error("metadata service: {0}")]
    Meta(#[from] metadata_client::MetaClientError),
    #[error("storage pool: {0}")]
    Pool(#[from] cluster::ClusterError),
}

impl FsError {
    /// Whether the call failed only because the metadata service or storage nodes could not be
    /// reached, and was not applied: the same call may succeed when they are back (the FUSE
    /// client retries these for its I/O timeout). An indeterminate transaction is not: its
    /// outcome must be read first.
    pub fn is_transient(&self) -> bool {
        match self {
            FsError::Meta(e) => e.is_transient(),
            FsError::Pool(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::NoFilesystem(_) => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Quota { .. } => libc::EDQUOT,
            FsError::NoAttr => libc::ENODATA,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::Contended(_) => libc::EAGAIN,
            FsError::Corrupt { .. } | FsError::Newer(_) | FsError::Meta(_) | FsError::Pool(_) => libc::EIO,
        }
    }
}

/// Result of a namespace call.
pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// How often an operation that lost a race is re-read and retried before giving up.
pub(crate) const RETRIES: usize = 64;

/// The longest name a directory entry may have, in bytes.
pub const NAME_MAX: usize = 255;

/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: u64 = 1;
