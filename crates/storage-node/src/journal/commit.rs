//! Group commit of appends: records are written under the journal's lock, then one thread
//! fsyncs every file written since the last commit (the lock free meanwhile, so other appends
//! keep writing), indexes those records and answers each writer.

use std::fs::File;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use super::JournalError;
use super::io_err;
use super::log::{Journal, Loc};

/// How an append ended: the highest seq held once it was durable, or why it is not.
pub(super) type Outcome = Result<u64, (ErrorKind, String)>;

/// A record written, not yet durable: indexed once a sync covers it, then its writer is told.
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) loc: Loc,
    pub(super) done: SyncSender<Outcome>,
}

/// Records written and the files to sync for them, taken by one group commit.
pub(super) struct Batch {
    /// The journal instance they belong to (a reloaded journal is another).
    instance: u64,
    files: Vec<Arc<File>>,
    pending: Vec<Pending>,
}

impl Batch {
    /// Fsyncs the files the batch's records are in.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.files.iter().try_for_each(|f| f.sync_data())
    }

    /// Tells every writer in the batch that its append failed.
    pub(super) fn fail(self, kind: ErrorKind, why: &str) {
        for p in self.pending {
            let _ = p.done.send(Err((kind, why.to_string())));
        }
    }
}

impl Journal {
    /// The records written since the last batch and the files to sync for them.
    pub(super) fn take_batch(&mut self) -> Batch {
        Batch {
            instance: self.instance,
            files: std::mem::take(&mut self.dirty),
            pending: std::mem::take(&mut self.pending),
        }
    }

    /// Indexes the records of a batch now durable and tells their writers. A batch taken
    /// from another instance (the journal was reloaded meanwhile) fails instead.
    pub(super) fn apply(&mut self, batch: Batch) {
        if batch.instance != self.instance || self.dropped {
            return batch.fail(ErrorKind::Other, "the journal was reloaded or dropped during the append");
        }
        for p in &batch.pending {
            self.put_counted(p.seq, p.loc);
            self.stats.appends.fetch_add(1, Ordering::Relaxed);
            self.stats.appended_bytes.fetch_add(p.loc.len as u64, Ordering::Relaxed);
        }
        let last = self.last_seq();
        for p in batch.pending {
            let _ = p.done.send(Ok(last));
        }
    }

    /// Makes every record written so far durable and indexed (their writers are told), before
    /// an operation that must see them: a seal must not miss an append acknowledged after it.
    /// On failure the writers are told, and the caller must drop this instance.
    pub(super) fn flush(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() && self.dirty.is_empty() {
            return Ok(());
        }
        let batch = self.take_batch();
        match batch.sync() {
            Ok(()) => {
                self.apply(batch);
                Ok(())
            }
            Err(e) => {
                batch.fail(e.kind(), &e.to_string());
                Err(io_err(format!("fsync journal {}", self.name), e))
            }
        }
    }
}
