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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::datapath::DATAPATH;

    proptest! {
        #[test]
        fn staged_state_round_trips_through_staged_json(
            (volume_id, fs_type) in ("[a-z0-9-]{1,40}", "(ext4|xfs|)"),
            (staging, device) in ("[^\\x00]{1,60}", "[^\\x00]{1,60}"),
            (generation, pid) in (any::<u64>(), any::<u32>()),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let st = StagedState {
                version: STAGED_VERSION, volume_id, generation, staging: staging.into(), fs_type, device: device.into(), pid,
            };
            let d = DATAPATH.volume_dir(tmp.path(), &st.volume_id);
            std::fs::create_dir_all(d.path()).unwrap();
            d.store_staged(&st).unwrap();
            let all = DATAPATH.load_all::<StagedState>(tmp.path());
            prop_assert_eq!(all.get(&st.volume_id), Some(&st));
        }
    }

    #[test]
    fn a_newer_staged_state_is_refused_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DATAPATH.volume_dir(tmp.path(), "blk-1");
        std::fs::create_dir_all(d.path()).unwrap();
        let st = StagedState {
            version: STAGED_VERSION + 1,
            volume_id: "blk-1".into(),
            generation: 1,
            staging: "/s".into(),
            fs_type: String::new(),
            device: "/dev/loop0".into(),
            pid: 1,
        };
        d.store_staged(&st).unwrap();
        let text = std::fs::read(d.staged()).unwrap();
        let what = d.staged().to_string_lossy().into_owned();
        let e = csi_kit::records::decode::<StagedState>(what.as_bytes(), &text).unwrap_err().to_string();
        assert_eq!(e, format!("record {what} has format version 2; this build reads up to version 1"));
        assert!(DATAPATH.load_all::<StagedState>(tmp.path()).is_empty(), "a newer stage is not taken for one");
    }
}
