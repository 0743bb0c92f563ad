//! The raw-disk baselines: sequential O_DIRECT writes of 4 MiB blocks into one file, timed
//! including the final fdatasync (as chunk-bench measures it), and the disk copying to itself
//! (reading some files while writing others), the most a repair on one disk can reach.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use chunk_engine::AlignedBuf;
use rand::RngCore;

use crate::{BLOCK, Res};

/// A buffer aligned for O_DIRECT (the engine's), filled with random bytes.
fn random_block(len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(len);
    rand::thread_rng().fill_bytes(buf.as_mut_slice());
    buf
}

/// Sequential O_DIRECT write of `total` bytes in 4 MiB blocks to `path`, timed including the
/// final fdatasync; the file is removed afterwards.
pub fn direct_write(path: &Path, total: usize) -> Res<Duration> {
    let start = Instant::now();
    write_file(path, total)?;
    let d = start.elapsed();
    std::fs::remove_file(path)?;
    Ok(d)
}

/// Streams each way in [`direct_copy`]: a repair has many copies in flight, and this disk moves
/// more with several requests queued than with one.
pub const COPY_STREAMS: usize = 4;

/// The disk copying to itself, as a repair on one disk must: `total` bytes read sequentially
/// with O_DIRECT from [`COPY_STREAMS`] files while as many bytes are written to as many others,
/// all streams at once; returns the time until all finished (writes timed including their
/// fdatasync) and the bytes moved each way. The sources are written (untimed) first; every file
/// is removed afterwards.
pub fn direct_copy(dir: &Path, total: usize) -> Res<(Duration, usize)> {
    use std::io::Read;
    let per = (total / COPY_STREAMS).next_multiple_of(BLOCK);
    let srcs: Vec<_> = (0..COPY_STREAMS).map(|i| dir.join(format!("copy-src-{i}.dat"))).collect();
    let dsts: Vec<_> = (0..COPY_STREAMS).map(|i| dir.join(format!("copy-dst-{i}.dat"))).collect();
    for src in &srcs {
        write_file(src, per)?;
    }
    let start = Instant::now();
    let outcome = std::thread::scope(|s| -> Res<()> {
        let writers: Vec<_> = dsts.iter().map(|dst| s.spawn(move || write_file(dst, per))).collect();
        let readers: Vec<_> = srcs
            .iter()
            .map(|src| {
                s.spawn(move || -> Res<()> {
                    let mut r = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(src)
                        .map_err(|e| format!("open {}: {e}", src.display()))?;
                    let mut buf = random_block(BLOCK);
                    for _ in 0..per / BLOCK {
                        r.read_exact(buf.as_mut_slice())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in writers.into_iter().chain(readers) {
            h.join().map_err(|_| "copy stream panicked")??;
        }
        Ok(())
    });
    let d = start.elapsed();
    for f in srcs.iter().chain(&dsts) {
        let _ = std::fs::remove_file(f);
    }
    outcome?;
    Ok((d, per * COPY_STREAMS))
}

/// Writes `total` bytes to `path` with O_DIRECT in 4 MiB blocks, then fdatasyncs.
fn write_file(path: &Path, total: usize) -> Res<()> {
    let buf = random_block(BLOCK);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    for _ in 0..total / BLOCK {
        f.write_all(buf.as_ref())?;
    }
    f.sync_data()?;
    Ok(())
}
