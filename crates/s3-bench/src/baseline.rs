//! The machine's own limits, measured in the same run as the S3 figures: the raw disk's
//! sequential write and read (4 MiB blocks with O_DIRECT, the write timed including its final
//! fdatasync — as chunk-bench measures it, and the path the chunk engine takes for large chunks)
//! and one core's MD5 and blake3 throughput (objectd computes the MD5 ETag of every PUT as the
//! bytes arrive; the pool names chunks by blake3).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use chunk_engine::AlignedBuf;
use md5::Digest;
use rand::RngCore;

use crate::Res;

const MIB: usize = 1 << 20;
/// Block size of the raw disk tests.
pub const BLOCK: usize = 4 * MIB;
/// Piece size fed to the hashers (about what one read from a socket hands over).
const HASH_PIECE: usize = 64 * 1024;

/// What the raw disk did.
pub struct Disk {
    pub write_mbps: f64,
    pub read_mbps: f64,
    /// False when the filesystem refused O_DIRECT and buffered I/O (+ fdatasync, cache dropped
    /// before reading) was measured instead.
    pub direct: bool,
    pub bytes: usize,
}

/// Writes then reads `total` bytes (rounded up to 4 MiB blocks) in `dir/raw.dat`, then removes it.
pub fn disk(dir: &Path, total: usize) -> Res<Disk> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let total = total.next_multiple_of(BLOCK);
    let path = dir.join("raw.dat");
    let result = (|| -> Res<Disk> {
        let direct = match open(&path, true, true) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
            Err(e) => return Err(format!("open {}: {e}", path.display()).into()),
        };
        let w = raw_write(&path, total, direct)?;
        let r = raw_read(&path, total, direct)?;
        Ok(Disk { write_mbps: mbps(total, w), read_mbps: mbps(total, r), direct, bytes: total })
    })();
    let _ = std::fs::remove_file(&path);
    result
}

pub fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

fn open(path: &Path, write: bool, direct: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(true).truncate(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Sequential write of `total` bytes in 4 MiB blocks, timed including the final fdatasync.
fn raw_write(path: &Path, total: usize, direct: bool) -> Res<Duration> {
    let buf = random_block(BLOCK);
    let mut f = open(path, true, direct).map_err(|e| format!("open {}: {e}", path.display()))?;
    let start = Instant::now();
    for _ in 0..total / BLOCK {
        f.write_all(buf.as_ref()).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    f.sync_data().map_err(|e| format!("fdatasync {}: {e}", path.display()))?;
    Ok(start.elapsed())
}

/// Sequential read of `total` bytes in 4 MiB blocks, after dropping the file's page cache.
fn raw_read(path: &Path, total: usize, direct: bool) -> Res<Duration> {
    drop_file_cache(path)?;
    let mut buf = random_block(BLOCK);
    let mut f = open(path, false, direct).map_err(|e| format!("open {}: {e}", path.display()))?;
    let start = Instant::now();
    for _ in 0..total / BLOCK {
        f.read_exact(buf.as_mut_slice()).map_err(|e| format!("read {}: {e}", path.display()))?;
    }
    let d = start.elapsed();
    std::hint::black_box(buf.as_ref()[0]);
    Ok(d)
}

/// Fsyncs `path` and asks the kernel to drop its (now clean) cached pages.
fn drop_file_cache(path: &Path) -> Res<()> {
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    f.sync_all()?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise {}: {}", path.display(), std::io::Error::from_raw_os_error(rc)).into());
    }
    Ok(())
}

/// One core's MD5 throughput in MB/s: 64 KiB pieces of random data for about `dur`.
pub fn md5_mbps(dur: Duration) -> f64 {
    hash_mbps(dur, |data| {
        let mut h = md5::Md5::new();
        for piece in data.chunks(HASH_PIECE) {
            h.update(piece);
        }
        std::hint::black_box(h.finalize());
    })
}

/// One core's blake3 throughput in MB/s (the single-threaded hasher, 64 KiB pieces).
pub fn blake3_mbps(dur: Duration) -> f64 {
    hash_mbps(dur, |data| {
        let mut h = blake3::Hasher::new();
        for piece in data.chunks(HASH_PIECE) {
            h.update(piece);
        }
        std::hint::black_box(h.finalize());
    })
}

/// Runs `hash` over a 16 MiB random buffer until `dur` has passed (after one warm-up pass).
fn hash_mbps(dur: Duration, hash: impl Fn(&[u8])) -> f64 {
    let mut data = vec![0u8; 16 * MIB];
    rand::thread_rng().fill_bytes(&mut data);
    hash(&data);
    let start = Instant::now();
    let mut bytes = 0;
    while start.elapsed() < dur {
        hash(&data);
        bytes += data.len();
    }
    mbps(bytes, start.elapsed())
}

/// A buffer aligned for O_DIRECT (the engine's), filled with random bytes.
fn random_block(len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(len);
    rand::thread_rng().fill_bytes(buf.as_mut_slice());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_round_trip_in_a_temp_dir() {
        let dir = std::env::temp_dir().join(format!("s3-bench-test-{}", std::process::id()));
        let d = disk(&dir, 8 * MIB).unwrap();
        assert_eq!(d.bytes, 8 * MIB);
        assert!(d.write_mbps > 0.0 && d.read_mbps > 0.0);
        assert!(!dir.join("raw.dat").exists());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn hashers_report_a_rate() {
        assert!(md5_mbps(Duration::from_millis(50)) > 1.0);
        assert!(blake3_mbps(Duration::from_millis(50)) > 1.0);
    }
}
