//! The node plugin's side of a data path beyond what `csi_kit::child` does for every child: the
//! staged state kept on disk beside it (`<state_dir>/volumes/<id>/staged.json`), so a restarted
//! plugin knows what it staged, and stopping it after a flush through its file.

use std::path::PathBuf;

use csi_kit::CsiError;
use csi_kit::child::ChildDir;
use serde::{Deserialize, Serialize};

use crate::datapath::volume_file;

/// Format of `staged.json`.
pub const STAGED_VERSION: u32 = 1;

/// A volume staged on this node, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedState {
    pub version: u32,
    pub volume_id: String,
    pub generation: u64,
    pub staging: PathBuf,
    /// The file system mounted at the staging path; empty for raw block.
    pub fs_type: String,
    /// The loop device attached to the data path's file.
    pub device: PathBuf,
    /// The data-path process.
    pub pid: u32,
}

csi_kit::versioned!(STAGED_VERSION => StagedState);

/// Flushes the volume through its file (so a failed flush is an error here), then ends the data
/// path and waits until it has unmounted. With `flush` false (a dead data path), only cleans up.
pub async fn stop(d: &ChildDir, pid: u32, flush: bool) -> Result<(), CsiError> {
    if flush && d.serving().await {
        let file = volume_file(d);
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(&file)?.sync_all())
            .await
            .map_err(|e| CsiError::Internal(e.to_string()))?
            .map_err(|e| CsiError::Unavailable(format!("flushing the volume to the pool failed: {e}")))?;
    }
    d.stop(pid).await
}
