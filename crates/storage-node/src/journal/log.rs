//! One journal, in memory and on disk: its state file, its segment files and its seq index
//! (rebuilt at load by `scan`); append (write, then group commit), read, trim, seal and
//! removal. The caller ([`super::JournalStore`]) holds the journal's lock around each call.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use bytes::Bytes;
use node_client::JOURNAL_RECORD_OVERHEAD;

use super::commit::{Outcome, Pending};
use super::format::{
    RECORD_HEADER_LEN, RecordHeader, STATE_FILE, SegmentHeader, State, encode_record, parse_segment_file_name,
    segment_file_name,
};
use super::{JournalError, JournalRecord, JournalStats, ReadPage, SealInfo, io_err, sub_saturating, sync_dir};

/// Where a record lies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    /// The segment's number.
    pub(super) seg: u64,
    /// Offset of the record's header.
    pub(super) off: u64,
    /// Payload bytes.
    pub(super) len: u32,
    pub(super) epoch: u64,
    /// Failed its checks when the journal was loaded: never returned, but it still hides any
    /// older record of its seq (so that one cannot come back) and keeps its segment.
    pub(super) damaged: bool,
}

/// One segment file.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) salt: u64,
    /// File length (valid records end here in an appendable segment).
    pub(super) size: u64,
    /// Index entries pointing into it; at 0 the file can go.
    pub(super) live: u64,
    /// False for a segment in which damage was found: appends go to a new one.
    pub(super) appendable: bool,
}

/// Tells journal instances apart (see `commit::Batch`).
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A journal's state, segments and index; see the module doc.
pub(super) struct Journal {
    pub(super) instance: u64,
    pub(super) name: String,
    pub(super) dir: PathBuf,
    /// Whether its directory exists (a journal never written has none).
    pub(super) exists: bool,
    pub(super) state: State,
    index: BTreeMap<u64, Loc>,
    /// By number: the scan order and the append order.
    pub(super) segments: BTreeMap<u64, Segment>,
    /// The last segment, open for appends: (its number, the file).
    active: Option<(u64, Arc<File>)>,
    /// Files written since the last batch was taken, and the records written to them.
    pub(super) dirty: Vec<Arc<File>>,
    pub(super) pending: Vec<Pending>,
    /// Readable (undamaged) records in the index and their payload bytes.
    records: u64,
    payload_bytes: u64,
    segment_limit: u64,
    pub(super) stats: Arc<JournalStats>,
    /// Set once [`destroy`](Self::destroy) removed it: the store forgets it.
    pub(super) dropped: bool,
}

impl Journal {
    /// A journal with nothing in it (yet: see `load`).
    pub(super) fn empty(name: &str, dir: PathBuf, segment_limit: u64, stats: Arc<JournalStats>) -> Journal {
        Journal {
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            dir,
            exists: false,
            state: State::default(),
            index: BTreeMap::new(),
            segments: BTreeMap::new(),
            active: None,
            dirty: Vec::new(),
            pending: Vec::new(),
            records: 0,
            payload_bytes: 0,
            segment_limit,
            stats,
            dropped: false,
        }
    }

    pub(super) fn seg_mut(&mut self, number: u64) -> &mut Segment {
        self.segments.get_mut(&number).expect("segment of an index entry")
    }

    /// Points `seq` at `loc` (a record of a trimmed seq is forgotten at once).
    pub(super) fn put_index(&mut self, seq: u64, loc: Loc) {
        self.seg_mut(loc.seg).live += 1;
        self.put_counted(seq, loc);
    }

    /// [`put_index`](Self::put_index) for a record already counted in its segment's `live`
    /// (a pending one: counted when written, so that no trim removes its file meanwhile).
    pub(super) fn put_counted(&mut self, seq: u64, loc: Loc) {
        if seq <= self.state.trimmed_upto {
            self.seg_mut(loc.seg).live -= 1;
            return;
        }
        if let Some(old) = self.index.insert(seq, loc) {
            self.unaccount(old);
        }
        if !loc.damaged {
            self.records += 1;
            self.payload_bytes += loc.len as u64;
        }
    }

    /// Takes a record that left the index off its segment's and the journal's counts.
    fn unaccount(&mut self, loc: Loc) {
        self.seg_mut(loc.seg).live -= 1;
        if !loc.damaged {
            self.records -= 1;
            self.payload_bytes -= loc.len as u64;
        }
    }

    /// Writes a record, not yet durable: the receiver hears how the append ends, once a group
    /// commit or a flush (`commit`) covers it. Reads do not see it before.
    pub(super) fn write(&mut self, epoch: u64, seq: u64, payload: &[u8]) -> Result<Receiver<Outcome>, JournalError> {
        if epoch < self.state.epoch {
            return Err(JournalError::Sealed { journal: self.name.clone(), sealed: self.state.epoch, epoch });
        }
        if seq <= self.state.trimmed_upto {
            return Err(JournalError::Trimmed {
                journal: self.name.clone(),
                seq,
                trimmed_upto: self.state.trimmed_upto,
            });
        }
        self.ensure_dir()?;
        if epoch > self.state.epoch {
            self.save_state(State { epoch, ..self.state })?;
        }
        let last = self.segments.last_key_value().map(|(&n, s)| (n, s.appendable && s.size < self.segment_limit));
        let (number, off, new) = match last {
            Some((n, true)) => {
                if self.active.as_ref().is_none_or(|(a, _)| *a != n) {
                    let path = &self.segments[&n].path;
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(path)
                        .map_err(|e| io_err(format!("open {}", path.display()), e))?;
                    self.active = Some((n, Arc::new(f)));
                }
                (n, self.segments[&n].size, false)
            }
            // Numbers grow with creation (the scan order): the first seq, unless an earlier
            // segment already has a number that large (seqs need not come in order).
            Some((n, false)) => (seq.max(n.saturating_add(1)), 0, true),
            None => (seq, 0, true),
        };
        let path = self.dir.join(segment_file_name(number));
        let ctx = |what: &str| format!("{what} {}", path.display());
        let written = if new {
            let salt = random_salt();
            let mut bytes = SegmentHeader { number, salt }.encode().to_vec();
            let record_off = bytes.len() as u64;
            bytes.extend_from_slice(&encode_record(salt, seq, epoch, payload));
            // A leftover of a failed creation may carry this number: it holds nothing acknowledged.
            // The new file and its entry are made durable here; the group commit syncs it again.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io_err(ctx("create"), e))?;
            let done = f
                .write_all_at(&bytes, 0)
                .and_then(|()| f.sync_data())
                .map_err(|e| io_err(ctx("write"), e))
                .and_then(|()| sync_dir(&self.dir));
            if let Err(e) = done {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            self.segments.insert(number, Segment { path: path.clone(), salt, size: 0, live: 0, appendable: true });
            self.active = Some((number, Arc::new(f)));
            (record_off, bytes.len() as u64)
        } else {
            let salt = self.segments[&number].salt;
            let bytes = encode_record(salt, seq, epoch, payload);
            let (_, f) = self.active.as_ref().expect("opened above");
            if let Err(e) = f.write_all_at(&bytes, off) {
                // Cut what may have reached the file; later appends write at `off` anyway.
                let _ = f.set_len(off);
                return Err(io_err(ctx("append to"), e));
            }
            (off, bytes.len() as u64)
        };
        let (record_off, added) = written;
        let seg = self.seg_mut(number);
        seg.size = off + added;
        seg.live += 1; // pending: its file stays
        self.stats.held_bytes.fetch_add(added, Ordering::Relaxed);
        let file = self.active.as_ref().expect("the file written").1.clone();
        if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.dirty.push(file);
        }
        let (done, outcome) = sync_channel(1);
        let loc = Loc { seg: number, off: record_off, len: payload.len() as u32, epoch, damaged: false };
        self.pending.push(Pending { seq, loc, done });
        Ok(outcome)
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.index.last_key_value().map_or(0, |(&s, _)| s)
    }

    /// Records with seq > max(`after`, trim point), in seq order, while their payload (plus
    /// [`JOURNAL_RECORD_OVERHEAD`] each) fits in `budget` — always one at least.
    pub(super) fn read(&self, after: u64, budget: usize) -> Result<ReadPage, JournalError> {
        let mut page = ReadPage { records: Vec::new(), more: false, epoch: self.state.epoch };
        let Some(start) = after.max(self.state.trimmed_upto).checked_add(1) else { return Ok(page) };
        let mut files: HashMap<u64, File> = HashMap::new();
        let mut total = 0usize;
        for (&seq, loc) in self.index.range(start..) {
            if loc.damaged {
                continue;
            }
            let cost = loc.len as usize + JOURNAL_RECORD_OVERHEAD;
            if !page.records.is_empty() && total + cost > budget {
                page.more = true;
                break;
            }
            let seg = &self.segments[&loc.seg];
            let f = match files.entry(loc.seg) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(File::open(&seg.path).map_err(|e| io_err(format!("open {}", seg.path.display()), e))?)
                }
            };
            let mut buf = vec![0u8; RECORD_HEADER_LEN + loc.len as usize];
            let damaged = |why: &str| {
                JournalError::Corrupt(format!(
                    "journal {} record {seq} (segment {}, offset {}) {why}",
                    self.name,
                    seg.path.display(),
                    loc.off
                ))
            };
            match f.read_exact_at(&mut buf, loc.off) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Err(damaged("is cut short")),
                Err(e) => return Err(io_err(format!("read {}", seg.path.display()), e)),
            }
            let ok = RecordHeader::decode(seg.salt, &buf)
                .filter(|h| h.seq == seq && h.len == loc.len)
                .is_some_and(|h| h.verifies(seg.salt, &buf[RECORD_HEADER_LEN..]));
            if !ok {
                return Err(damaged("fails its checksum"));
            }
            let payload = Bytes::from(buf).slice(RECORD_HEADER_LEN..);
            page.records.push(JournalRecord { seq, epoch: loc.epoch, payload });
            total += cost;
        }
        Ok(page)
    }

    /// Forgets records with seq <= `upto` (the trim point saved first), then removes the segment
    /// files no remaining record needs; the bytes removed.
    pub(super) fn trim(&mut self, upto: u64) -> Result<u64, JournalError> {
        if !self.exists {
            return Ok(0); // nothing held: nothing to forget, and nothing is created
        }
        if upto > self.state.trimmed_upto {
            self.save_state(State { trimmed_upto: upto, ..self.state })?;
        }
        let kept = match self.state.trimmed_upto.checked_add(1) {
            Some(from) => self.index.split_off(&from),
            None => BTreeMap::new(),
        };
        for (_, loc) in std::mem::replace(&mut self.index, kept) {
            self.unaccount(loc);
        }
        self.remove_unneeded_segments()
    }

    /// Removes every segment no index entry points into (the last one too: the next append
    /// starts a new one); the bytes removed.
    fn remove_unneeded_segments(&mut self) -> Result<u64, JournalError> {
        let unneeded: Vec<u64> = self.segments.iter().filter(|(_, s)| s.live == 0).map(|(&n, _)| n).collect();
        let mut freed = 0;
        let mut result = Ok(());
        for n in &unneeded {
            let path = &self.segments[n].path;
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    result = Err(io_err(format!("remove {}", path.display()), e));
                    break;
                }
            }
            let seg = self.segments.remove(n).expect("listed above");
            if self.active.as_ref().is_some_and(|(a, _)| a == n) {
                self.active = None;
            }
            freed += seg.size;
            sub_saturating(&self.stats.held_bytes, seg.size);
        }
        if !unneeded.is_empty() {
            sync_dir(&self.dir)?;
        }
        self.stats.reclaimed_bytes.fetch_add(freed, Ordering::Relaxed);
        result.map(|()| freed)
    }

    /// Raises the epoch to `epoch` (saved before this returns); the journal's state.
    pub(super) fn seal(&mut self, epoch: u64) -> Result<SealInfo, JournalError> {
        if epoch > self.state.epoch {
            self.ensure_dir()?;
            self.save_state(State { epoch, ..self.state })?;
        }
        Ok(SealInfo {
            epoch: self.state.epoch,
            last_seq: self.last_seq(),
            trimmed_upto: self.state.trimmed_upto,
            records: self.records,
            bytes: self.payload_bytes,
        })
    }

    /// Removes the journal's directory: renamed into `trash` first (so that a crash never leaves
    /// half a journal — its records without its epoch), then deleted. The bytes removed.
    pub(super) fn destroy(&mut self, trash: &Path, unique: u64) -> Result<u64, JournalError> {
        let mut total = 0;
        let mut segment_bytes = 0;
        match fs::read_dir(&self.dir) {
            Ok(rd) => {
                for ent in rd.flatten() {
                    let len = ent.metadata().map_or(0, |m| m.len());
                    total += len;
                    if ent.file_name().to_str().and_then(parse_segment_file_name).is_some() {
                        segment_bytes += len;
                    }
                }
                let root = self.dir.parent().expect("journal directory has a parent").to_path_buf();
                fs::create_dir_all(trash).map_err(|e| io_err(format!("create {}", trash.display()), e))?;
                let to = trash.join(format!("{}.{unique}", self.name));
                fs::rename(&self.dir, &to)
                    .map_err(|e| io_err(format!("rename {} to {}", self.dir.display(), to.display()), e))?;
                sync_dir(&root)?;
                sync_dir(trash)?;
                if let Err(e) = fs::remove_dir_all(&to) {
                    tracing::warn!(journal = %self.name, path = %to.display(), error = %e, "cannot delete a dropped journal (retried at the next start)");
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("list {}", self.dir.display()), e)),
        }
        sub_saturating(&self.stats.held_bytes, segment_bytes);
        self.stats.reclaimed_bytes.fetch_add(total, Ordering::Relaxed);
        self.take_batch().fail(ErrorKind::NotFound, "the journal was dropped");
        self.active = None;
        self.index.clear();
        self.segments.clear();
        self.exists = false;
        self.dropped = true;
        Ok(total)
    }

    /// Creates the journal's directory (and the journals root) durably, once.
    fn ensure_dir(&mut self) -> Result<(), JournalError> {
        if self.exists {
            return Ok(());
        }
        let root = self.dir.parent().expect("journal directory has a parent");
        if !root.is_dir() {
            fs::create_dir_all(root).map_err(|e| io_err(format!("create {}", root.display()), e))?;
            if let Some(data_dir) = root.parent() {
                sync_dir(data_dir)?;
            }
        }
        match fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("create {}", self.dir.display()), e)),
        }
        sync_dir(root)?;
        self.exists = true;
        Ok(())
    }

    /// Replaces the state file durably (temp, fsync, rename, fsync directory), then adopts `s`.
    fn save_state(&mut self, s: State) -> Result<(), JournalError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all_at(&s.encode(), 0)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| io_err(format!("write {}", path.display()), e))?;
        sync_dir(&self.dir)?;
        self.state = s;
        Ok(())
    }
}

/// A fresh salt for a new segment file.
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish()
}
