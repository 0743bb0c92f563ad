//! The data path's NBD export of its volume on a unix socket (for qemu, and for `nbd-client` on
//! nodes whose kernel has the nbd module): `block_frontend::nbd` serving the volume engine.

use std::path::Path;
use std::sync::Arc;

use block_frontend::nbd::{Export, serve};
use volume_engine::Volume;

/// A running export; [`NbdExport::stop`] ends it.
pub struct NbdExport {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts serving `volume` over NBD (the default export, name "") on the unix socket `path`.
pub fn start(volume: Arc<Volume>, path: &Path) -> std::io::Result<NbdExport> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, Export::new("", volume, false), async {
        let _ = stopped.await;
    }));
    tracing::info!(socket = %path.display(), "volume exported over NBD");
    Ok(NbdExport { stop, task })
}

impl NbdExport {
    /// Stops accepting, lets the requests in flight finish, closes the connections.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
