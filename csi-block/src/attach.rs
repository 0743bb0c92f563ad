//! The node plugin's side of a data path: start one for a volume (spec, spawn in its own process
//! group, wait until it serves), tell whether it still serves (a dead FUSE mount answers
//! ENOTCONN), stop it (flush, SIGTERM, wait), and the staged state kept on disk beside it
//! (`<state_dir>/volumes/<id>/staged.json`), so a restarted plugin knows what it staged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_kit::CsiError;
use csi_kit::mount;
use serde::{Deserialize, Serialize};

use crate::datapath::{DatapathDir, DatapathSpec, SUBCOMMAND, read_error};

/// Format of `staged.json`.
pub const STAGED_VERSION: u32 = 1;
/// How long a data path may take to open its volume and mount.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping data path may take to flush and unmount.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

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

/// A volume's directory under the state directory.
pub fn volume_dir(state_dir: &Path, id: &str) -> DatapathDir {
    DatapathDir(state_dir.join("volumes").join(id))
}

fn staged_file(d: &DatapathDir) -> PathBuf {
    d.0.join("staged.json")
}

/// Every staged volume recorded under `state_dir` (unreadable records are logged and skipped).
pub fn load_all(state_dir: &Path) -> HashMap<String, StagedState> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(state_dir.join("volumes")) else { return out };
    for e in rd.flatten() {
        let path = staged_file(&DatapathDir(e.path()));
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
    daemon_kit::write_file_atomic(&staged_file(&d), &text, 0o600)
        .map_err(|e| CsiError::Internal(format!("cannot record the staged volume: {e}")))
}

/// Forgets a stage (its data path must be gone): the record, and unless `keep_log` (a dead data
/// path being replaced: its log tells why) the whole directory.
pub fn forget(state_dir: &Path, id: &str, keep_log: bool) {
    let d = volume_dir(state_dir, id);
    let _ = std::fs::remove_file(staged_file(&d));
    if !keep_log && !mount::is_mountpoint(&d.fuse()) {
        let _ = std::fs::remove_dir_all(&d.0);
    }
}

/// Starts the data path `spec` describes and waits until it serves; returns its pid.
pub async fn start(spec: &DatapathSpec) -> Result<u32, CsiError> {
    let d = DatapathDir(spec.dir.clone());
    let io = |what: &str, e: std::io::Error| CsiError::Internal(format!("{what}: {e}"));
    std::fs::create_dir_all(&d.0).map_err(|e| io("create the volume directory", e))?;
    let _ = std::fs::remove_file(d.ready());
    let _ = std::fs::remove_file(d.error());
    spec.store().map_err(|e| io("write the data-path spec", e))?;
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
        .map_err(|e| io("start the data path", e))?;
    let pid = child.id().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if std::fs::read_to_string(d.ready()).is_ok_and(|t| t.trim() == pid.to_string()) && serving(&d) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(read_error(&d)
                .unwrap_or_else(|| CsiError::Internal(format!("the data path exited ({status}): {}", log_tail(&d)))));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(CsiError::Unavailable(format!(
                "the data path of {} did not start within {:?}: {}",
                spec.volume_id,
                START_TIMEOUT,
                log_tail(&d)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_tail(d: &DatapathDir) -> String {
    let text = std::fs::read_to_string(d.log()).unwrap_or_default();
    text.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Whether the data path serves the volume: its FUSE mount is there and answers (a mount whose
/// process died answers ENOTCONN).
pub fn serving(d: &DatapathDir) -> bool {
    mount::is_mountpoint(&d.fuse()) && std::fs::metadata(d.file()).is_ok()
}

/// Whether `pid` is the data path of this directory (not a reused pid).
fn is_datapath(pid: u32, d: &DatapathDir) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    args.get(1) == Some(&SUBCOMMAND.as_bytes()) && args.get(2) == Some(&d.0.to_string_lossy().as_bytes())
}

/// Flushes the volume through its file (so a failed flush is an error here), then ends the data
/// path and waits until it has unmounted. With `flush` false (a dead data path), only cleans up.
pub async fn stop(d: &DatapathDir, pid: u32, flush: bool) -> Result<(), CsiError> {
    if flush && serving(d) {
        let file = d.file();
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(&file)?.sync_all())
            .await
            .map_err(|e| CsiError::Internal(e.to_string()))?
            .map_err(|e| CsiError::Unavailable(format!("flushing the volume to the pool failed: {e}")))?;
    }
    if is_datapath(pid, d) {
        // SAFETY: kill has no memory-safety preconditions; the pid was checked to be ours.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while (is_datapath(pid, d) || mount::is_mountpoint(&d.fuse())) && tokio::time::Instant::now() < deadline {
        if !is_datapath(pid, d) {
            // Died without unmounting: the mount is dead, take it away.
            let _ = mount::run("umount", &["-l", &d.fuse().to_string_lossy()]).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if is_datapath(pid, d) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = mount::run("umount", &["-l", &d.fuse().to_string_lossy()]).await;
        return Err(CsiError::Internal(format!("the data path (pid {pid}) did not stop within {STOP_TIMEOUT:?}")));
    }
    Ok(())
}
