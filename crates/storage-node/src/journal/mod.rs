//! Per-volume write journals on the node (`JournalAppend/Read/Trim/Seal`): the store of named
//! journals under `<data_dir>/journals/`, loaded on first use, one lock each; its error type and
//! counters. One journal's files and index are in `log` (its loading in `scan`, its group commit
//! in `commit`), the on-disk formats in `format`.
//!
//! ```text
//! <data_dir>/journals/<name>/STATE                  epoch and trim point (JSON, versioned)
//! <data_dir>/journals/<name>/<first seq, 20 digits>.jseg   segment files of records
//! <data_dir>/journals/+dropped/                     journals being removed (emptied at start)
//! ```
//! The chunk engine owns `FORMAT`, `index/` and `segments/` beside it and looks at nothing else.

mod commit;
mod format;
mod log;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use node_client::{JOURNAL_MAX_PAYLOAD, JOURNAL_READ_MAX};

use commit::Outcome;
use log::Journal;

/// A new segment file is started once the current one is this large (in production).
pub const DEFAULT_SEGMENT_LIMIT: u64 = 64 << 20;
/// The directory under `<data_dir>` holding the journals.
const JOURNALS_DIR: &str = "journals";
/// Where dropped journals go before they are deleted: not a valid journal name.
const TRASH_DIR: &str = "+dropped";
/// The longest journal name.
const MAX_NAME: usize = 200;

/// What a journal operation can fail with; mapped to gRPC codes in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The request is malformed: journal name, seq, payload (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The journal is sealed at a newer epoch than the writer's (FAILED_PRECONDITION).
    #[error("journal {journal} sealed at epoch {sealed}; this writer's epoch is {epoch}")]
    Sealed {
        /// The journal.
        journal: String,
        /// Its epoch.
        sealed: u64,
        /// The writer's.
        epoch: u64,
    },
    /// The record's seq is at or below the journal's trim point (FAILED_PRECONDITION).
    #[error("journal {journal} record {seq} already trimmed (the journal is trimmed up to {trimmed_upto})")]
    Trimmed {
        /// The journal.
        journal: String,
        /// The record's seq.
        seq: u64,
        /// The trim point.
        trimmed_upto: u64,
    },
    /// Stored bytes fail their checks (DATA_LOSS).
    #[error("{0}")]
    Corrupt(String),
    /// A file was written by a newer release (INTERNAL: not FAILED_PRECONDITION, which writers
    /// read as being fenced).
    #[error("{0}")]
    Format(String),
    /// A file operation failed (INTERNAL).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>, source: std::io::Error) -> JournalError {
    JournalError::Io { context: context.into(), source }
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(format!("fsync directory {}", dir.display()), e))
}

/// Subtracts without wrapping below 0.
fn sub_saturating(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

/// Counters of the journal store (read by `/metrics`).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records appended.
    pub appends: AtomicU64,
    /// Their payload bytes.
    pub appended_bytes: AtomicU64,
    /// Trims and drops.
    pub trims: AtomicU64,
    /// Bytes of journal files removed by trims and drops.
    pub reclaimed_bytes: AtomicU64,
    /// Records (or segment headers) found damaged while loading a journal, and skipped.
    pub corrupt_records: AtomicU64,
    /// Bytes in segment files now.
    pub held_bytes: AtomicU64,
}

/// One record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub seq: u64,
    pub epoch: u64,
    pub payload: Bytes,
}

/// One page of a journal read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPage {
    /// In seq order.
    pub records: Vec<JournalRecord>,
    /// Some records after these were left out (read on after the last one).
    pub more: bool,
    /// The journal's epoch.
    pub epoch: u64,
}

/// A journal's state, as a seal returns it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealInfo {
    pub epoch: u64,
    /// The highest seq held (0: none).
    pub last_seq: u64,
    pub trimmed_upto: u64,
    /// Records held (not trimmed) and their payload bytes.
    pub records: u64,
    pub bytes: u64,
}

/// A journal's place in the store: loaded on first use; `gone` once dropped (a caller that
/// waited for it looks the name up again).
#[derive(Default)]
struct Slot {
    journal: Option<Journal>,
    gone: bool,
}

/// A journal's locks. `slot` guards the journal; `sync` is held by the one thread running a
/// group commit (or flushing before another operation), always taken before `slot`.
#[derive(Default)]
struct Entry {
    slot: Mutex<Slot>,
    sync: Mutex<()>,
}

/// The node's journals. Operations block on file I/O (call them off the async threads); each
/// journal has its own lock, so different journals proceed in parallel.
pub struct JournalStore {
    root: PathBuf,
    trash: PathBuf,
    segment_limit: u64,
    journals: Mutex<HashMap<String, Arc<Entry>>>,
    stats: Arc<JournalStats>,
    /// Makes dropped journals' names in the trash unique.
    drops: AtomicU64,
}

/// Refuses a name that is not 1 to 200 of `A-Z a-z 0-9 . _ -`, or is `.` or `..`.
fn validate_name(name: &str) -> Result<(), JournalError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(JournalError::Invalid(format!(
            "bad journal name {name:?}: 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ -, not . or .."
        )))
    }
}

impl JournalStore {
    /// The journals under `<data_dir>/journals` (nothing is created until a journal is written),
    /// each segment file closed once it passes `segment_limit` bytes. Finishes removing journals
    /// dropped before a crash (a failure to is only logged).
    pub fn open(data_dir: &Path, segment_limit: u64) -> Result<JournalStore, JournalError> {
        let root = data_dir.join(JOURNALS_DIR);
        let trash = root.join(TRASH_DIR);
        if trash.exists()
            && let Err(e) = std::fs::remove_dir_all(&trash)
        {
            tracing::warn!(path = %trash.display(), error = %e, "cannot delete dropped journals");
        }
        // Segment bytes on disk, for the gauge (kept up to date from here on).
        let mut held = 0;
        if let Ok(rd) = std::fs::read_dir(&root) {
            for dir in rd.flatten() {
                for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                    if f.file_name().to_str().and_then(format::parse_segment_file_name).is_some() {
                        held += f.metadata().map_or(0, |m| m.len());
                    }
                }
            }
        }
        let stats = Arc::new(JournalStats { held_bytes: AtomicU64::new(held), ..Default::default() });
        Ok(JournalStore {
            root,
            trash,
            segment_limit: segment_limit.max(1),
            journals: Mutex::default(),
            stats,
            // Unique across restarts too, should the trash not have been emptied.
            drops: AtomicU64::new(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            ),
        })
    }

    /// The store's counters.
    pub fn stats(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    /// Appends record `seq` of `epoch` to `journal` (created if need be), fsynced when this
    /// returns; the journal's highest seq. A record of a seq already held replaces it.
    pub fn append(&self, journal: &str, epoch: u64, seq: u64, payload: &[u8]) -> Result<u64, JournalError> {
        validate_name(journal)?;
        if payload.is_empty() {
            return Err(JournalError::Invalid(format!("journal {journal} record {seq}: empty payload")));
        }
        if payload.len() > JOURNAL_MAX_PAYLOAD {
            return Err(JournalError::Invalid(format!(
                "journal {journal} record {seq}: payload of {} bytes, the most is {JOURNAL_MAX_PAYLOAD}",
                payload.len()
            )));
        }
        if seq == 0 {
            return Err(JournalError::Invalid(format!("journal {journal}: record seqs start at 1")));
        }
        let (entry, outcome) = self.with(journal, true, false, |j| j.write(epoch, seq, payload))?.expect("created");
        // Group commit: whoever takes the sync lock first syncs every record written by then;
        // the others find their answer when they get it (or run the next commit).
        let sync = entry.sync.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = decided(journal, &outcome) {
            return done;
        }
        let batch = lock_slot(&entry.slot).journal.as_mut().map(|j| j.take_batch());
        if let Some(batch) = batch {
            let synced = batch.sync();
            let mut slot = lock_slot(&entry.slot);
            match (synced, slot.journal.as_mut()) {
                (Ok(()), Some(j)) => j.apply(batch),
                (Ok(()), None) => batch.fail(std::io::ErrorKind::Other, "the journal was reloaded during the append"),
                (Err(e), _) => {
                    batch.fail(e.kind(), &e.to_string());
                    slot.journal = None; // loaded again from disk; writes since fail too
                }
            }
        }
        drop(sync);
        decided(journal, &outcome).unwrap_or_else(|| {
            Err(io_err(format!("journal {journal}: append not durable"), std::io::Error::other("left undecided")))
        })
    }

    /// Records of `journal` with seq > `after` (and above its trim point), in seq order, up to
    /// about `max_bytes` (0: the most, [`JOURNAL_READ_MAX`]). A journal never written reads as
    /// an empty page at epoch 0 (nothing is created).
    pub fn read(&self, journal: &str, after: u64, max_bytes: u64) -> Result<ReadPage, JournalError> {
        validate_name(journal)?;
        let budget = match max_bytes {
            0 => JOURNAL_READ_MAX,
            n => (n.min(JOURNAL_READ_MAX as u64)) as usize,
        };
        Ok(self.with(journal, false, true, |j| j.read(after, budget))?.map(|(_, p)| p).unwrap_or_default())
    }

    /// Forgets the records of `journal` with seq <= `upto` and removes the files only they
    /// needed; with `drop`, removes the whole journal. The bytes removed.
    pub fn trim(&self, journal: &str, upto: u64, drop: bool) -> Result<u64, JournalError> {
        validate_name(journal)?;
        self.stats.trims.fetch_add(1, Ordering::Relaxed);
        let r = if drop {
            let unique = self.drops.fetch_add(1, Ordering::Relaxed);
            self.with(journal, false, true, |j| j.destroy(&self.trash, unique))?
        } else {
            self.with(journal, false, true, |j| j.trim(upto))?
        };
        Ok(r.map_or(0, |(_, n)| n))
    }

    /// Raises the epoch of `journal` to `epoch` (never lowers it; saved before this returns);
    /// its state.
    pub fn seal(&self, journal: &str, epoch: u64) -> Result<SealInfo, JournalError> {
        validate_name(journal)?;
        let r = self.with(journal, epoch > 0, true, |j| j.seal(epoch))?;
        Ok(r.map(|(_, s)| s).unwrap_or_default())
    }

    /// Runs `f` on the journal `name` under its lock, loading it first if need be; with
    /// `flush`, once every record written before is durable and indexed. Without `create`, a
    /// journal neither in memory nor on disk is left alone: `None`.
    fn with<T>(
        &self,
        name: &str,
        create: bool,
        flush: bool,
        f: impl FnOnce(&mut Journal) -> Result<T, JournalError>,
    ) -> Result<Option<(Arc<Entry>, T)>, JournalError> {
        let dir = self.root.join(name);
        let mut f = Some(f);
        loop {
            let known = self.map().get(name).cloned();
            let entry = match known {
                Some(e) => e,
                None => {
                    if !create && !dir.exists() {
                        return Ok(None);
                    }
                    self.map().entry(name.to_string()).or_default().clone()
                }
            };
            let sync = flush.then(|| entry.sync.lock().unwrap_or_else(|e| e.into_inner()));
            let mut guard = lock_slot(&entry.slot);
            if guard.gone {
                continue; // dropped while we waited: look the name up again
            }
            if guard.journal.is_none() {
                guard.journal = Some(Journal::load(name, dir.clone(), self.segment_limit, self.stats.clone())?);
            }
            let j = guard.journal.as_mut().expect("loaded above");
            if flush && let Err(e) = j.flush() {
                guard.journal = None; // loaded again from disk
                return Err(e);
            }
            let r = (f.take().expect("called once"))(j);
            if j.dropped {
                guard.gone = true;
                let mut map = self.map();
                if map.get(name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    map.remove(name);
                }
            }
            drop(guard);
            drop(sync);
            return r.map(|t| Some((entry, t)));
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.journals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the append waiting on `outcome` ended, if it has.
fn decided(journal: &str, outcome: &Receiver<Outcome>) -> Option<Result<u64, JournalError>> {
    match outcome.try_recv() {
        Ok(Ok(last)) => Some(Ok(last)),
        Ok(Err((kind, why))) => {
            Some(Err(io_err(format!("journal {journal}: append not durable"), std::io::Error::new(kind, why))))
        }
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => Some(Err(io_err(
            format!("journal {journal}: append not durable"),
            std::io::Error::other("the journal was reloaded before its sync"),
        ))),
    }
}

/// Locks a journal's slot; after a panic under the lock, the journal is loaded again from disk.
fn lock_slot(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| {
        slot.clear_poison();
        let mut g = poisoned.into_inner();
        g.journal = None;
        g
    })
}
