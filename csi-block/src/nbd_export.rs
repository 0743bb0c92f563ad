//! The data path's NBD export of its volume on a unix socket (for qemu and `nbd-client`).

use std::path::Path;
use std::sync::Arc;

use volume_engine::Volume;

/// Starts serving `volume` over NBD on the unix socket `path`; abort the task to stop.
pub fn start(_volume: Arc<Volume>, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
    Err(std::io::Error::other(format!("NBD export at {} is not built yet", path.display())))
}
