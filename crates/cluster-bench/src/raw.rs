//! The raw-disk baseline, as chunk-bench measures it: sequential O_DIRECT writes of 4 MiB blocks
//! into one file, timed including the final fdatasync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::{BLOCK, Res};

const ALIGN: usize = 4096;

/// A heap buffer aligned for O_DIRECT, filled with random bytes.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn random(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("valid layout");
        // SAFETY: len is non-zero (callers pass BLOCK).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut buf = AlignedBuf { ptr, layout };
        rand::thread_rng().fill_bytes(buf.as_mut());
        buf
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `random` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Sequential O_DIRECT write of `total` bytes in 4 MiB blocks to `path`, timed including the
/// final fdatasync; the file is removed afterwards.
pub fn direct_write(path: &Path, total: usize) -> Res<Duration> {
    let buf = AlignedBuf::random(BLOCK);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let start = Instant::now();
    for _ in 0..total / BLOCK {
        f.write_all(buf.as_ref())?;
    }
    f.sync_data()?;
    let d = start.elapsed();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(d)
}
