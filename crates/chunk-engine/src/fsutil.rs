//! Durable file helpers: write-temp-fsync-rename-fsync-dir, directory fsync, filesystem capacity.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::ChunkError;

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ChunkError::io(format!("fsync directory {}", dir.display()), e))
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn durable_write(path: &Path, bytes: &[u8]) -> Result<(), ChunkError> {
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ChunkError::io(ctx("create"), e))?;
    f.write_all(bytes).map_err(|e| ChunkError::io(ctx("write"), e))?;
    f.sync_all().map_err(|e| ChunkError::io(ctx("fsync"), e))?;
    fs::rename(&tmp, path).map_err(|e| ChunkError::io(format!("rename to {}", path.display()), e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// (total, available) bytes of the filesystem holding `path`.
pub(crate) fn fs_capacity(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    let frsize = s.f_frsize as u64;
    (s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize)
}
