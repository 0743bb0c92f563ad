//! Benchmarks of a real storage pool on loopback, shared parts: the throwaway pool of processes
//! (`pool`), raw-disk baselines (`raw`), CPU accounting (`cpu`), a file system in memory over
//! FUSE (`memfs`). The binaries: `cluster-bench` (replicated puts and repair), `block-bench` (fio
//! on block volumes) and `fs-bench` (the shared filesystem against ext4).

pub mod cpu;
pub mod memfs;
pub mod pool;
pub mod raw;

use std::path::Path;

/// What the benches return.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const MIB: usize = 1 << 20;
/// Chunk size of every put, and block size of the raw baseline.
pub const BLOCK: usize = 4 * MIB;

/// Removes and recreates `dir`.
pub fn fresh_dir(dir: &Path) -> Res<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", dir.display()).into()),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()).into())
}
