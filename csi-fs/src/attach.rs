//! The node plugin's record of a staged volume, kept on disk beside its mount process
//! (`<state_dir>/volumes/<id>/staged.json`), so a restarted plugin knows what it staged;
//! starting, watching and stopping the process is `csi_kit::child`'s.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Format of `staged.json`.
pub const STAGED_VERSION: u32 = 1;

/// A volume staged on this node, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedState {
    pub version: u32,
    pub volume_id: String,
    /// Where the kubelet asked for it (a bind mount of the FUSE mount).
    pub staging: PathBuf,
    /// The mount's client id (registered with the filesystem).
    pub client_id: String,
    /// Mounted read-only (a reader-only access mode).
    pub read_only: bool,
    /// The mount process.
    pub pid: u32,
}

csi_kit::versioned!(STAGED_VERSION => StagedState);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount_process::MOUNT_PROCESS;

    #[test]
    fn staged_state_is_kept_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let st = StagedState {
            version: STAGED_VERSION,
            volume_id: "fs-00000000000000000000000000000001".into(),
            staging: "/var/lib/kubelet/staging/x".into(),
            client_id: "node-a-1".into(),
            read_only: false,
            pid: 1,
        };
        let d = MOUNT_PROCESS.volume_dir(dir.path(), &st.volume_id);
        std::fs::create_dir_all(d.path()).unwrap();
        d.store_staged(&st).unwrap();
        let all = MOUNT_PROCESS.load_all::<StagedState>(dir.path());
        assert_eq!(all.get(&st.volume_id), Some(&st));
        // A newer one is refused in one line (and not taken for a stage).
        d.store_staged(&StagedState { version: STAGED_VERSION + 1, ..st.clone() }).unwrap();
        let what = d.staged().to_string_lossy().into_owned();
        let e = csi_kit::records::decode::<StagedState>(what.as_bytes(), &std::fs::read(d.staged()).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("record {what} has format version 2; this build reads up to version 1"));
        assert!(MOUNT_PROCESS.load_all::<StagedState>(dir.path()).is_empty());
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn staged_state_round_trips_through_staged_json(
            volume_id in "[a-z0-9-]{1,40}",
            (staging, client_id) in ("[^\\x00]{1,60}", ".*"),
            (read_only, pid) in (any::<bool>(), any::<u32>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let st = StagedState { version: STAGED_VERSION, volume_id, staging: staging.into(), client_id, read_only, pid };
            let d = MOUNT_PROCESS.volume_dir(dir.path(), &st.volume_id);
            std::fs::create_dir_all(d.path()).unwrap();
            d.store_staged(&st).unwrap();
            let all = MOUNT_PROCESS.load_all::<StagedState>(dir.path());
            prop_assert_eq!(all.get(&st.volume_id), Some(&st));
        }
    }
}
