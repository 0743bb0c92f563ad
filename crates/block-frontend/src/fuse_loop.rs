//! The FUSE + loop front end: mount [`VolumeFile`] at a directory ([`mount_file`]), attach its
//! file with `losetup --direct-io=on` ([`loop_attach`]), hand out `/dev/loopN`; detaching undoes
//! both and flushes. [`FuseLoop`] does all of it in one process; the CSI node plugin splits it
//! (the FUSE server in a data-path process, the loop device made by the plugin).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use fuse3::MountOptions;
use fuse3::raw::{MountHandle, Session};
use volume_engine::Volume;

use crate::backend::BlockBackend;
use crate::fuse_file::{FILE_NAME, VolumeFile};

/// Async requests the kernel keeps in flight to the volume file (FUSE_INIT's `max_background`).
/// The loop device's direct I/O is all async: the kernel's default of 12 would cap a queue
/// depth of 32 at 12, and every request waits on the pool.
const MAX_BACKGROUND: u16 = 128;
use crate::{BlockDevice, FrontendError, Result};

/// One volume attached as `/dev/loopN` over a FUSE file.
pub struct FuseLoop {
    device: PathBuf,
    mount_dir: PathBuf,
    mount: Option<MountHandle>,
    volume: Arc<Volume>,
}

/// Runs a system tool; its stderr becomes the error.
pub async fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| FrontendError::Io { what: format!("run {tool}"), source })?;
    if !out.status.success() {
        return Err(FrontendError::Tool {
            tool: format!("{tool} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Serves `volume` as the file [`FILE_NAME`] in a FUSE mount at `mount_dir` (created if
/// missing). The mount lives until the handle is unmounted or the process ends; awaiting the
/// handle waits until someone else unmounts it.
pub async fn mount_file<B: BlockBackend>(volume: Arc<B>, mount_dir: &Path) -> Result<MountHandle> {
    tokio::fs::create_dir_all(mount_dir)
        .await
        .map_err(|source| FrontendError::Io { what: format!("create {}", mount_dir.display()), source })?;
    let mut opts = MountOptions::default();
    opts.fs_name(format!("cairn-{}", volume.name()))
        .allow_other(true)
        .default_permissions(true)
        .max_background(MAX_BACKGROUND);
    let fs = VolumeFile { volume, started: SystemTime::now() };
    Session::new(opts)
        .mount(fs, mount_dir)
        .await
        .map_err(|source| FrontendError::Io { what: format!("FUSE mount at {}", mount_dir.display()), source })
}

/// Attaches `file` to a free loop device in direct-I/O mode; returns `/dev/loopN`.
pub async fn loop_attach(file: &Path) -> Result<PathBuf> {
    let f = file.to_string_lossy().to_string();
    run_tool("losetup", &["--find", "--show", "--direct-io=on", &f]).await.map(PathBuf::from)
}

/// The loop devices attached to `file` (from sysfs, so a dead FUSE mount under it is no
/// obstacle).
pub async fn loops_of(file: &Path) -> Result<Vec<PathBuf>> {
    let want = file.to_string_lossy().to_string();
    let mut out = Vec::new();
    let rd = std::fs::read_dir("/sys/block")
        .map_err(|source| FrontendError::Io { what: "read /sys/block".into(), source })?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && back.trim_end_matches('\n') == want
        {
            out.push(PathBuf::from("/dev").join(name));
        }
    }
    Ok(out)
}

/// Detaches `device` (or, when None, every loop device attached to `file`) and waits (up to
/// ~10 s) until they let go of `file` (`losetup -d` is lazy while the device is open).
pub async fn loop_detach(file: &Path, device: Option<&Path>) -> Result<()> {
    let devs = match device {
        Some(d) => vec![d.to_path_buf()],
        None => loops_of(file).await?,
    };
    for dev in &devs {
        // A device already on its way out answers ENXIO; the wait below is what counts.
        let _ = run_tool("losetup", &["-d", &dev.to_string_lossy()]).await;
    }
    for _ in 0..1000 {
        if !loops_of(file).await?.iter().any(|d| devs.contains(d)) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(FrontendError::Tool {
        tool: "losetup -d".into(),
        message: format!("a loop device still holds {} (is it open?)", file.display()),
    })
}

impl FuseLoop {
    /// Serves `volume` as a file in a FUSE mount at `mount_dir` (created if missing) and attaches
    /// it with a loop device in direct-I/O mode.
    pub async fn attach(volume: Arc<Volume>, mount_dir: &Path) -> Result<FuseLoop> {
        let mount = mount_file(volume.clone(), mount_dir).await?;
        let device = match loop_attach(&mount_dir.join(FILE_NAME)).await {
            Ok(d) => d,
            Err(e) => {
                let _ = mount.unmount().await;
                return Err(e);
            }
        };
        tracing::info!(volume = volume.id(), device = %device.display(), "volume attached over FUSE + loop");
        Ok(FuseLoop { device, mount_dir: mount_dir.to_path_buf(), mount: Some(mount), volume })
    }

    async fn detach_inner(mut self) -> Result<()> {
        loop_detach(&self.mount_dir.join(FILE_NAME), Some(&self.device)).await?;
        self.volume.flush().await?;
        if let Some(m) = self.mount.take() {
            m.unmount().await.map_err(|source| FrontendError::Io {
                what: format!("unmount {}", self.mount_dir.display()),
                source,
            })?;
        }
        tracing::info!(volume = self.volume.id(), "volume detached");
        Ok(())
    }
}

impl BlockDevice for FuseLoop {
    fn path(&self) -> &Path {
        &self.device
    }

    fn detach(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin((*self).detach_inner())
    }
}
