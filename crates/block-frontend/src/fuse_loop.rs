//! The FUSE + loop front end: mount [`VolumeFile`] at a directory, attach its file with
//! `losetup --direct-io=on`, hand out `/dev/loopN`; detaching undoes both and flushes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use fuse3::MountOptions;
use fuse3::raw::{MountHandle, Session};
use volume_engine::Volume;

use crate::fuse_file::{FILE_NAME, VolumeFile};
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

impl FuseLoop {
    /// Serves `volume` as a file in a FUSE mount at `mount_dir` (created if missing) and attaches
    /// it with a loop device in direct-I/O mode.
    pub async fn attach(volume: Arc<Volume>, mount_dir: &Path) -> Result<FuseLoop> {
        tokio::fs::create_dir_all(mount_dir)
            .await
            .map_err(|source| FrontendError::Io { what: format!("create {}", mount_dir.display()), source })?;
        let mut opts = MountOptions::default();
        opts.fs_name(format!("cairn-{}", volume.id())).allow_other(true).default_permissions(true);
        let fs = VolumeFile { volume: volume.clone(), started: SystemTime::now() };
        let mount = Session::new(opts)
            .mount(fs, mount_dir)
            .await
            .map_err(|source| FrontendError::Io { what: format!("FUSE mount at {}", mount_dir.display()), source })?;
        let file = mount_dir.join(FILE_NAME);
        let file_s = file.to_string_lossy().to_string();
        let device = match run_tool("losetup", &["--find", "--show", "--direct-io=on", &file_s]).await {
            Ok(d) => PathBuf::from(d),
            Err(e) => {
                let _ = mount.unmount().await;
                return Err(e);
            }
        };
        tracing::info!(volume = volume.id(), device = %device.display(), "volume attached over FUSE + loop");
        Ok(FuseLoop { device, mount_dir: mount_dir.to_path_buf(), mount: Some(mount), volume })
    }

    async fn detach_inner(mut self) -> Result<()> {
        let dev = self.device.to_string_lossy().to_string();
        run_tool("losetup", &["-d", &dev]).await?;
        // losetup -d is lazy: wait until the loop device let go of the file.
        for _ in 0..200 {
            let out = run_tool("losetup", &["-j", &self.mount_dir.join(FILE_NAME).to_string_lossy()]).await?;
            if out.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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
