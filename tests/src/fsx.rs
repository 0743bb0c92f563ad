//! fsx-style file exerciser: random writes, truncates, hole punches, reads, fsyncs and
//! reopen-through-another-path checks of one file against an in-memory model. Used by the
//! filesystem and block-volume tests and, for long runs, by the `fsx` binary.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use rand::{Rng, SeedableRng};

/// How one run goes.
#[derive(Debug, Clone, Copy)]
pub struct FsxOptions {
    pub seed: u64,
    pub ops: u64,
    /// The file stays below this size.
    pub max_len: u64,
    /// Largest write or read.
    pub max_io: u64,
    /// Whether to punch holes (fallocate); a file system that cannot is told once and skipped.
    pub punch: bool,
}

impl Default for FsxOptions {
    fn default() -> Self {
        FsxOptions { seed: 1, ops: 1000, max_len: 6 << 20, max_io: 300_000, punch: true }
    }
}

/// Runs `o.ops` operations on `<a>/<name>`, checking reads against the model, and (when `b` is
/// another path to the same directory, such as a second client's mount) the whole file through
/// `b` after closes and fsyncs. Ends with an fsync; returns the model (the file's contents).
pub fn fsx(a: &Path, b: &Path, name: &str, o: FsxOptions) -> Result<Vec<u8>, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let mut model: Vec<u8> = Vec::new();
    let open = |truncate: bool| {
        OpenOptions::new().create(true).read(true).write(true).truncate(truncate).open(a.join(name))
    };
    let mut f = open(true).map_err(|e| format!("open: {e}"))?;
    let mut punch = o.punch;
    let check_whole = |op: u64, model: &[u8], what: &str| -> Result<(), String> {
        let mut got = Vec::new();
        File::open(b.join(name)).and_then(|mut g| g.read_to_end(&mut got)).map_err(|e| format!("op {op}: {e}"))?;
        if got.len() != model.len() {
            return Err(format!("op {op}: {what}: size {} != model {}", got.len(), model.len()));
        }
        if let Some(at) = got.iter().zip(model).position(|(x, y)| x != y) {
            return Err(format!("op {op}: {what}: first difference at byte {at}"));
        }
        Ok(())
    };
    for op in 0..o.ops {
        match rng.gen_range(0..20) {
            0..=8 => {
                let off = rng.gen_range(0..o.max_len);
                let len = rng.gen_range(1..o.max_io).min(o.max_len - off) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                f.write_all_at(&data, off).map_err(|e| format!("op {op}: write {len} at {off}: {e}"))?;
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            9 => {
                let len = rng.gen_range(0..o.max_len) as usize;
                f.set_len(len as u64).map_err(|e| format!("op {op}: truncate to {len}: {e}"))?;
                model.resize(len, 0);
            }
            10 if punch && !model.is_empty() => {
                let off = rng.gen_range(0..model.len());
                let len = rng.gen_range(1..o.max_io as usize).min(model.len() - off);
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: fallocate on an open descriptor we own, plain integer arguments.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        punch = false;
                        continue;
                    }
                    return Err(format!("op {op}: punch {len} at {off}: {e}"));
                }
                model[off..off + len].fill(0);
            }
            11..=15 => {
                if model.is_empty() {
                    continue;
                }
                let off = rng.gen_range(0..model.len());
                let len = rng.gen_range(1..o.max_io as usize).min(model.len() - off);
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, off as u64).map_err(|e| format!("op {op}: read {len} at {off}: {e}"))?;
                if buf != model[off..off + len] {
                    let at = buf.iter().zip(&model[off..]).position(|(x, y)| x != y).unwrap_or(0);
                    return Err(format!("op {op}: read {len} at {off} differs from the model at byte {}", off + at));
                }
            }
            16..=17 => {
                f.sync_data().map_err(|e| format!("op {op}: fdatasync: {e}"))?;
            }
            18 => {
                drop(f);
                check_whole(op, &model, "after close")?;
                f = open(false).map_err(|e| format!("op {op}: reopen: {e}"))?;
            }
            _ => {
                f.sync_all().map_err(|e| format!("op {op}: fsync: {e}"))?;
                check_whole(op, &model, "after fsync")?;
            }
        }
    }
    f.sync_all().map_err(|e| format!("final fsync: {e}"))?;
    drop(f);
    check_whole(o.ops, &model, "at the end")?;
    Ok(model)
}
