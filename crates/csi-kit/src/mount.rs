//! Mount helpers for the node services: is a path a mount point (and with which options), mount,
//! bind-mount, remount read-only, unmount (lazily too), statvfs, what file system a device
//! holds, make one — each through the system tools (`mount`, `umount`, `blkid`, `mkfs.*`), each
//! failure one line naming the tool.

use std::path::Path;

use crate::error::CsiError;

/// Runs a system tool; its stderr becomes the error (INTERNAL).
pub async fn run(tool: &str, args: &[&str]) -> Result<String, CsiError> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| CsiError::Internal(format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(CsiError::Internal(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `path` is a mount point (per /proc/self/mountinfo). A dead FUSE mount still is one.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(path).or_else(|_| Ok::<_, ()>(path.to_path_buf())) else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = real.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Mounts `source` at `target` with file system `fstype` (empty: a bind mount) and options.
pub async fn mount(source: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<(), CsiError> {
    let (s, t) = (source.to_string_lossy().to_string(), target.to_string_lossy().to_string());
    let mut args: Vec<String> = Vec::new();
    if fstype.is_empty() {
        args.push("--bind".into());
    } else {
        args.extend(["-t".into(), fstype.into()]);
    }
    if !options.is_empty() {
        args.extend(["-o".into(), options.join(",")]);
    }
    args.extend([s, t]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("mount", &args).await.map(|_| ())
}

/// Makes the bind mount at `target` read-only.
pub async fn remount_read_only(target: &Path) -> Result<(), CsiError> {
    run("mount", &["-o", "remount,bind,ro", &target.to_string_lossy()]).await.map(|_| ())
}

/// Unmounts `target` if it is mounted.
pub async fn unmount(target: &Path) -> Result<(), CsiError> {
    if is_mountpoint(target) {
        run("umount", &[&target.to_string_lossy()]).await?;
    }
    Ok(())
}

/// The file system on `device` (None: none).
pub async fn fs_type_of(device: &Path) -> Result<Option<String>, CsiError> {
    let out = tokio::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(device)
        .output()
        .await
        .map_err(|e| CsiError::Internal(format!("cannot run blkid: {e}")))?;
    // blkid exits 2 when it finds nothing.
    let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(if t.is_empty() { None } else { Some(t) })
}

/// Makes file system `fstype` (ext4 or xfs) on `device`.
pub async fn mkfs(device: &Path, fstype: &str) -> Result<(), CsiError> {
    let dev = device.to_string_lossy().to_string();
    match fstype {
        "ext4" => run("mkfs.ext4", &["-q", "-F", &dev]).await.map(|_| ()),
        "xfs" => run("mkfs.xfs", &["-q", "-f", &dev]).await.map(|_| ()),
        other => Err(CsiError::InvalidArgument(format!("cannot make file system {other:?}"))),
    }
}

/// Grows the file system mounted at `path` on `device` to the device's size.
pub async fn grow_fs(device: &Path, path: &Path, fstype: &str) -> Result<(), CsiError> {
    match fstype {
        "ext4" => run("resize2fs", &[&device.to_string_lossy()]).await.map(|_| ()),
        "xfs" => run("xfs_growfs", &[&path.to_string_lossy()]).await.map(|_| ()),
        other => Err(CsiError::InvalidArgument(format!("cannot grow file system {other:?}"))),
    }
}

/// Unmounts `target` lazily (`umount -l`) if it is mounted: for a mount whose FUSE server died
/// (it answers ENOTCONN) or that is still busy; it goes once nothing uses it.
pub async fn unmount_lazy(target: &Path) -> Result<(), CsiError> {
    if is_mountpoint(target) {
        run("umount", &["-l", &target.to_string_lossy()]).await?;
    }
    Ok(())
}

/// The mount options of the mount at `path` (per /proc/self/mountinfo; None: not a mount point).
pub fn mount_options(path: &Path) -> Option<Vec<String>> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = real.to_string_lossy().replace(' ', "\\040");
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The last mount at a path is the one seen there.
    let line = info.lines().rev().find(|l| l.split(' ').nth(4) == Some(want.as_str()))?;
    Some(line.split(' ').nth(5)?.split(',').map(String::from).collect())
}

/// What statvfs reports about a mounted file system, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub available_inodes: u64,
}

/// statvfs of `path`; the error is the OS error (ENOTCONN: a FUSE mount whose server is gone).
pub fn statvfs(path: &Path) -> std::io::Result<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid C string; `out` is written by statvfs before it is read.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut out) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let f = out.f_frsize;
    Ok(FsStats {
        total_bytes: out.f_blocks * f,
        free_bytes: out.f_bfree * f,
        available_bytes: out.f_bavail * f,
        total_inodes: out.f_files,
        free_inodes: out.f_ffree,
        available_inodes: out.f_favail,
    })
}

/// Refuses paths a CSI request must not carry: relative, or with a `..` segment.
pub fn check_path(field: &str, path: &str) -> Result<(), CsiError> {
    if path.is_empty() {
        return Err(CsiError::InvalidArgument(format!("{field} is required")));
    }
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(CsiError::InvalidArgument(format!("{field} must be an absolute path without '..', got {path:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_mountpoints() {
        assert!(check_path("target_path", "/var/lib/kubelet/pods/x").is_ok());
        assert!(check_path("target_path", "relative/x").is_err());
        assert!(check_path("target_path", "/a/../etc").is_err());
        assert!(check_path("target_path", "").is_err());
        assert!(is_mountpoint(Path::new("/proc")));
        assert!(!is_mountpoint(Path::new("/proc/self")));
        assert!(mount_options(Path::new("/proc")).is_some_and(|o| !o.is_empty()));
        assert!(mount_options(Path::new("/proc/self")).is_none());
        assert!(statvfs(Path::new("/")).is_ok_and(|s| s.total_bytes > 0));
        assert!(statvfs(Path::new("/no/such/path")).is_err());
    }
}
