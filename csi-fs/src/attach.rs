//! The node plugin's side of a mount process: start one for a volume (spec, spawn in its own
//! process group, wait until it has mounted), tell whether it still serves (a dead FUSE mount
//! answers ENOTCONN), stop it (SIGTERM, wait until it has flushed and unmounted), and the staged
//! state kept on disk beside it (`<state_dir>/volumes/<id>/staged.json`), so a restarted plugin
//! knows what it staged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_kit::CsiError;
use csi_kit::mount;
use serde::{Deserialize, Serialize};

use crate::mount_process::{MountDir, MountSpec, SUBCOMMAND, read_error};

/// Format of `staged.json`.
pub const STAGED_VERSION: u32 = 1;
/// How long a mount process may take to reach the metadata service and mount.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping mount process may take to flush and unmount.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

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

/// A volume's directory under the state directory.
pub fn volume_dir(state_dir: &Path, id: &str) -> MountDir {
    MountDir(state_dir.join("volumes").join(id))
}

/// Every staged volume recorded under `state_dir` (unreadable records are logged and skipped).
pub fn load_all(state_dir: &Path) -> HashMap<String, StagedState> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(state_dir.join("volumes")) else { return out };
    for e in rd.flatten() {
        let path = MountDir(e.path()).staged();
        let Ok(text) = std::fs::read(&path) else { continue };
        match serde_json::from_slice::<StagedState>(&text) {
            Ok(s) if s.version == STAGED_VERSION => {
                out.insert(s.volume_id.clone(), s);
            }
            Ok(s) => {
                tracing::warn!(file = %path.display(), version = s.version, "staged state of another format; ignored")
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "unreadable staged state; ignored"),
        }
    }
    out
}

/// Records `s` on disk (atomically).
pub fn store(state_dir: &Path, s: &StagedState) -> Result<(), CsiError> {
    let d = volume_dir(state_dir, &s.volume_id);
    let text = serde_json::to_vec_pretty(s).expect("serializes");
    daemon_kit::write_file_atomic(&d.staged(), &text, 0o600)
        .map_err(|e| CsiError::Internal(format!("cannot record the staged volume: {e}")))
}

/// Forgets a stage (its mount process must be gone): the record, and unless `keep_log` (a dead
/// mount being replaced: its log tells why) the whole directory — never while something is
/// still mounted in it.
pub fn forget(state_dir: &Path, id: &str, keep_log: bool) {
    let d = volume_dir(state_dir, id);
    let _ = std::fs::remove_file(d.staged());
    if !keep_log && !mount::is_mountpoint(&d.mnt()) {
        let _ = std::fs::remove_dir_all(&d.0);
    }
}

/// Starts the mount process `spec` describes and waits until it has mounted; returns its pid.
pub async fn start(spec: &MountSpec) -> Result<u32, CsiError> {
    let d = MountDir(spec.dir.clone());
    let io = |what: &str, e: std::io::Error| CsiError::Internal(format!("{what}: {e}"));
    std::fs::create_dir_all(&d.0).map_err(|e| io("create the volume directory", e))?;
    let _ = std::fs::remove_file(d.ready());
    let _ = std::fs::remove_file(d.error());
    spec.store().map_err(|e| io("write the mount spec", e))?;
    let exe = std::env::current_exe().map_err(|e| io("find this program", e))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(d.log()).map_err(|e| io("open the log", e))?;
    let out = log.try_clone().map_err(|e| io("open the log", e))?;
    let mut child = tokio::process::Command::new(exe)
        .arg(SUBCOMMAND)
        .arg(&d.0)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(log)
        // Its own process group: signals to the plugin's group (a restart) do not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| io("start the mount process", e))?;
    let pid = child.id().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if std::fs::read_to_string(d.ready()).is_ok_and(|t| t.trim() == pid.to_string()) && serving(&d).await {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(read_error(&d).unwrap_or_else(|| {
                CsiError::Internal(format!("the mount process exited ({status}): {}", log_tail(&d)))
            }));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = mount::unmount_lazy(&d.mnt()).await;
            return Err(CsiError::Unavailable(format!(
                "the mount process of {} did not mount within {START_TIMEOUT:?}: {}",
                spec.fs_id,
                log_tail(&d)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_tail(d: &MountDir) -> String {
    let text = std::fs::read_to_string(d.log()).unwrap_or_default();
    text.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Whether the mount process serves the volume: its FUSE mount is there and answers (a mount
/// whose process died answers ENOTCONN).
pub async fn serving(d: &MountDir) -> bool {
    mount::is_mountpoint(&d.mnt()) && alive(&d.mnt()).await
}

/// Whether `path` answers (a path on a FUSE mount whose server died answers ENOTCONN).
pub async fn alive(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok()
}

/// Whether `pid` is the mount process of this directory (not a reused pid, not a zombie).
pub fn is_mount_process(pid: u32, d: &MountDir) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    args.get(1) == Some(&SUBCOMMAND.as_bytes()) && args.get(2) == Some(&d.0.to_string_lossy().as_bytes())
}

/// Ends the mount process (SIGTERM: it flushes every open file, unmounts and unregisters) and
/// waits until it is gone and its mount with it. A process that died leaves a dead mount, which
/// is unmounted lazily.
pub async fn stop(d: &MountDir, pid: u32) -> Result<(), CsiError> {
    if is_mount_process(pid, d) {
        // SAFETY: kill has no memory-safety preconditions; the pid was checked to be ours.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while (is_mount_process(pid, d) || mount::is_mountpoint(&d.mnt())) && tokio::time::Instant::now() < deadline {
        if !is_mount_process(pid, d) {
            // Died without unmounting: the mount is dead, take it away.
            let _ = mount::unmount_lazy(&d.mnt()).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if is_mount_process(pid, d) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = mount::unmount_lazy(&d.mnt()).await;
        return Err(CsiError::Internal(format!("the mount process (pid {pid}) did not stop within {STOP_TIMEOUT:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::create_dir_all(volume_dir(dir.path(), &st.volume_id).0).unwrap();
        store(dir.path(), &st).unwrap();
        let other = volume_dir(dir.path(), "fs-junk");
        std::fs::create_dir_all(&other.0).unwrap();
        std::fs::write(other.staged(), b"{not json").unwrap();
        let all = load_all(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(all.get(&st.volume_id), Some(&st));
        assert!(!is_mount_process(std::process::id(), &volume_dir(dir.path(), &st.volume_id)));
        forget(dir.path(), &st.volume_id, false);
        assert!(!volume_dir(dir.path(), &st.volume_id).0.exists());
        assert!(load_all(dir.path()).is_empty());
    }
}
