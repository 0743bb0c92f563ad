//! Loading a journal: its state file, then its segment files in order, each record checked; a
//! torn tail of the last file cut off, damage elsewhere skipped (and counted).

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::format::{
    BadHeader, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, STATE_FILE, SegmentHeader, State,
    parse_segment_file_name, record_magic_positions,
};
use super::log::{Journal, Loc, Segment};
use super::{JournalError, JournalStats, io_err, sub_saturating, sync_dir};

/// What reading one record found.
enum Found {
    Valid(RecordHeader),
    /// Damaged or torn; the header when it held (its seq and length are then trustworthy).
    Bad(Option<RecordHeader>),
}

impl Journal {
    /// Loads the journal in `dir` (nothing on disk: an empty journal, nothing created), cutting a
    /// torn tail off its last segment and skipping damaged records elsewhere.
    pub(super) fn load(
        name: &str,
        dir: PathBuf,
        segment_limit: u64,
        stats: Arc<JournalStats>,
    ) -> Result<Journal, JournalError> {
        let mut j = Journal::empty(name, dir, segment_limit, stats);
        match fs::metadata(&j.dir) {
            Ok(m) if m.is_dir() => j.exists = true,
            Ok(_) => return Err(JournalError::Corrupt(format!("{} is not a directory", j.dir.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(j),
            Err(e) => return Err(io_err(format!("stat {}", j.dir.display()), e)),
        }
        let state_path = j.dir.join(STATE_FILE);
        match fs::read(&state_path) {
            Ok(b) => j.state = State::decode(&state_path.display().to_string(), &b)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("read {}", state_path.display()), e)),
        }
        let mut files = Vec::new();
        let rd = fs::read_dir(&j.dir).map_err(|e| io_err(format!("list {}", j.dir.display()), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| io_err(format!("list {}", j.dir.display()), e))?;
            if let Some(n) = ent.file_name().to_str().and_then(parse_segment_file_name) {
                files.push((n, ent.path()));
            }
        }
        files.sort();
        let count = files.len();
        for (i, (number, path)) in files.into_iter().enumerate() {
            j.scan_segment(number, path, i + 1 == count)?;
        }
        Ok(j)
    }

    /// Adds the segment `number` and the records it holds.
    fn scan_segment(&mut self, number: u64, path: PathBuf, last: bool) -> Result<(), JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(last)
            .open(&path)
            .map_err(|e| io_err(format!("open {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| io_err(format!("stat {}", path.display()), e))?.len();
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        let got = read_up_to(&file, 0, &mut head).map_err(|e| io_err(format!("read {}", path.display()), e))?;
        let header = match SegmentHeader::decode(&path.display().to_string(), &head[..got]) {
            Ok(h) if h.number == number => Ok(h),
            Ok(_) => Err("its header names another segment"),
            Err(BadHeader::Newer(m)) => return Err(JournalError::Format(m)),
            Err(BadHeader::Damaged(why)) => Err(why),
        };
        let header = match header {
            Ok(h) => h,
            Err(_) if last && len < SEGMENT_HEADER_LEN as u64 => {
                // Created, then the crash came before its header (and first record) were durable.
                tracing::warn!(journal = %self.name, segment = %path.display(), "removing a journal segment with a torn header");
                fs::remove_file(&path).map_err(|e| io_err(format!("remove {}", path.display()), e))?;
                sync_dir(&self.dir)?;
                sub_saturating(&self.stats.held_bytes, len);
                return Ok(());
            }
            Err(why) => {
                tracing::warn!(journal = %self.name, segment = %path.display(), why, "journal segment header damaged: its records are lost");
                self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                let seg = Segment { path, salt: 0, size: len, live: 0, appendable: false };
                self.segments.insert(number, seg);
                return Ok(());
            }
        };
        let salt = header.salt;
        self.segments.insert(number, Segment { path: path.clone(), salt, size: len, live: 0, appendable: true });
        let mut off = SEGMENT_HEADER_LEN as u64;
        let mut buf = Vec::new();
        let ctx = |e| io_err(format!("read {}", path.display()), e);
        while off < len {
            match read_record(&file, salt, off, len, &mut buf).map_err(ctx)? {
                Found::Valid(h) => {
                    let loc = Loc { seg: number, off, len: h.len, epoch: h.epoch, damaged: false };
                    self.put_index(h.seq, loc);
                    off += h.span();
                }
                Found::Bad(h) => match find_next_record(&file, salt, off + 1, len, &mut buf).map_err(ctx)? {
                    Some(next) => {
                        // Damage with a good record after it: not an append cut short.
                        tracing::warn!(journal = %self.name, segment = %path.display(), offset = off, seq = ?h.map(|h| h.seq), "damaged journal record skipped");
                        self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        self.seg_mut(number).appendable = false;
                        off = match h {
                            Some(h) => {
                                self.put_index(
                                    h.seq,
                                    Loc { seg: number, off, len: h.len, epoch: h.epoch, damaged: true },
                                );
                                // Its header holds: the next record starts after it.
                                if off + h.span() <= next { off + h.span() } else { next }
                            }
                            None => next,
                        };
                    }
                    None if last => {
                        // The append in flight when the node stopped: never acknowledged.
                        tracing::info!(journal = %self.name, segment = %path.display(), offset = off, dropped = len - off, "cutting the torn tail of a journal segment");
                        file.set_len(off).map_err(|e| io_err(format!("truncate {}", path.display()), e))?;
                        file.sync_all().map_err(|e| io_err(format!("fsync {}", path.display()), e))?;
                        sub_saturating(&self.stats.held_bytes, len - off);
                        self.seg_mut(number).size = off;
                        break;
                    }
                    None => {
                        tracing::warn!(journal = %self.name, segment = %path.display(), offset = off, lost = len - off, seq = ?h.map(|h| h.seq), "the rest of a journal segment is damaged: its records are lost");
                        self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        self.seg_mut(number).appendable = false;
                        if let Some(h) = h {
                            self.put_index(h.seq, Loc { seg: number, off, len: h.len, epoch: h.epoch, damaged: true });
                        }
                        break;
                    }
                },
            }
        }
        Ok(())
    }
}

/// Reads into `buf` from `off` until it is full or the file ends; the bytes read.
fn read_up_to(f: &File, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The record at `off` of a segment of `len` bytes with `salt` (`buf` holds its payload after).
fn read_record(f: &File, salt: u64, off: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<Found> {
    if len - off < RECORD_HEADER_LEN as u64 {
        return Ok(Found::Bad(None));
    }
    let mut head = [0u8; RECORD_HEADER_LEN];
    f.read_exact_at(&mut head, off)?;
    let Some(h) = RecordHeader::decode(salt, &head) else { return Ok(Found::Bad(None)) };
    if off + h.span() > len {
        return Ok(Found::Bad(Some(h)));
    }
    buf.resize(h.len as usize, 0);
    f.read_exact_at(buf, off + RECORD_HEADER_LEN as u64)?;
    Ok(if h.verifies(salt, buf) { Found::Valid(h) } else { Found::Bad(Some(h)) })
}

/// The offset of the first valid record at or after `from`, if any (after a damaged one).
fn find_next_record(f: &File, salt: u64, from: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let mut pos = from;
    let mut window = Vec::new();
    while pos + RECORD_HEADER_LEN as u64 <= len {
        // Each window overlaps the next by 3 bytes, so that a magic across the edge is found once.
        let n = (WINDOW + 3).min(len - pos) as usize;
        window.resize(n, 0);
        f.read_exact_at(&mut window, pos)?;
        for i in record_magic_positions(&window) {
            let at = pos + i as u64;
            if let Found::Valid(_) = read_record(f, salt, at, len, buf)? {
                return Ok(Some(at));
            }
        }
        pos += WINDOW;
    }
    Ok(None)
}
