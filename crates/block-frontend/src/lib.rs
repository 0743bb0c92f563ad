//! Kernel front ends for an attached volume: something the kernel sees as a block device. This
//! machine's kernel has no nbd or ublk, so the front end here is [`fuse_loop`]: the volume as
//! one file in a FUSE mount served by this process, attached with a loop device in direct-I/O
//! mode. [`nbd`] serves a volume as an NBD export on a Unix or TCP socket, for qemu or for a
//! kernel that has the nbd client. Both serve a [`backend::BlockBackend`] (a volume, or memory).
//! Other front ends (ublk) implement [`BlockDevice`] the same way.

pub mod backend;
pub mod fuse_file;
pub mod fuse_loop;
pub mod nbd;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

/// Failures of a front end.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A system tool (losetup, mount) failed; its message is kept.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The volume engine failed.
    #[error(transparent)]
    Engine(#[from] volume_engine::EngineError),
}

/// Result of a front-end call.
pub type Result<T, E = FrontendError> = std::result::Result<T, E>;

/// A block device the kernel sees for one attached volume.
pub trait BlockDevice: Send + Sync {
    /// The device node (`/dev/loopN`).
    fn path(&self) -> &Path;
    /// Detaches: the device goes away, every write it took is flushed to the pool.
    fn detach(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;
}
