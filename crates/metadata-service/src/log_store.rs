//! The Raft log, vote and committed index, durable in a [`KvEngine`] (RocksDB in production).
//!
//! Keys: `l` + index (u64 big endian) → bincode entry; `m/vote`, `m/purged`, `m/committed`.
//! Appends are written with sync (fsync of the write-ahead log) off the async threads, and
//! openraft batches many proposals into one append, so many commits share one fsync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use kv_engine::{KvEngine, WriteBatch, for_each_in_range, prefix_end};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};

use crate::types::{NodeId, StorageError, TypeConfig, decode, encode};

const LOG_PREFIX: &[u8] = b"l";
const VOTE: &[u8] = b"m/vote";
const PURGED: &[u8] = b"m/purged";
const COMMITTED: &[u8] = b"m/committed";

fn log_key(index: u64) -> Vec<u8> {
    let mut k = LOG_PREFIX.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

/// The log store; clones share the same engine, cached last log id and flusher.
#[derive(Clone)]
pub struct LogStore {
    kv: Arc<dyn KvEngine>,
    last: Arc<Mutex<Option<LogId<NodeId>>>>,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Makes appended entries durable: takes every waiting append, fsyncs once, then acknowledges
/// them in order (group commit for the Raft log).
fn run_flusher(kv: Arc<dyn KvEngine>, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let res = kv.flush().map_err(|e| e.to_string());
        for cb in waiting {
            cb.log_io_completed(res.clone().map_err(std::io::Error::other));
        }
    }
}

impl LogStore {
    /// Opens the store over `kv`, finding the last entry.
    pub fn open(kv: Arc<dyn KvEngine>) -> Result<Self, StorageError> {
        let mut last_raw: Option<Vec<u8>> = None;
        for_each_in_range(&*kv, LOG_PREFIX, prefix_end(LOG_PREFIX).as_deref(), 1024, |_, v| {
            last_raw = Some(v.to_vec());
            Ok(())
        })
        .map_err(read_err)?;
        let last = match last_raw {
            Some(v) => Some(decode::<Entry<TypeConfig>>(&v).map_err(read_err)?.log_id),
            None => None,
        };
        let (flusher, rx) = std::sync::mpsc::channel();
        let flush_kv = kv.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(flush_kv, rx))
            .map_err(write_err)?;
        Ok(LogStore { kv, last: Arc::new(Mutex::new(last)), flusher })
    }

    fn read_meta<T: for<'a> serde::Deserialize<'a>>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.kv.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(log_key(x + 1)),
            Bound::Excluded(x) => Some(log_key(*x)),
            Bound::Unbounded => prefix_end(LOG_PREFIX),
        };
        let mut out = Vec::new();
        for_each_in_range(&*self.kv, &log_key(start), end.as_deref(), 1024, |_, v| {
            out.push(v.to_vec());
            Ok(())
        })
        .map_err(read_err)?;
        out.iter().map(|v| decode(v).map_err(read_err)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId<NodeId>> = self.read_meta(PURGED)?;
        let last = (*self.last.lock().expect("log lock")).or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(VOTE.to_vec(), encode(vote));
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || kv.write(b, true))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())))?
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(COMMITTED.to_vec(), encode(&committed));
        self.kv.write(b, false).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.read_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::new();
        let mut last = None;
        for e in entries {
            b.put(log_key(e.log_id.index), encode(&e));
            last = Some(e.log_id);
        }
        // Written (unsynced) now so that readers see the entries when this returns; the flusher
        // thread makes them durable, sharing one fsync among every append waiting, then tells
        // openraft.
        self.kv.write(b, false).map_err(write_err)?;
        if last.is_some() {
            *self.last.lock().expect("log lock") = last;
        }
        self.flusher.send(callback).map_err(|_| write_err("log flusher stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        for_each_in_range(&*self.kv, &log_key(log_id.index), prefix_end(LOG_PREFIX).as_deref(), 1024, |k, _| {
            b.delete(k.to_vec());
            Ok(())
        })
        .map_err(read_err)?;
        self.kv.write(b, true).map_err(write_err)?;
        let prev = if log_id.index == 0 {
            None
        } else {
            self.try_get_log_entries(log_id.index - 1..log_id.index).await?.pop().map(|e| e.log_id)
        };
        *self.last.lock().expect("log lock") = prev;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(PURGED.to_vec(), encode(&Some(log_id)));
        for_each_in_range(&*self.kv, &log_key(0), Some(&log_key(log_id.index + 1)), 1024, |k, _| {
            b.delete(k.to_vec());
            Ok(())
        })
        .map_err(read_err)?;
        self.kv.write(b, true).map_err(write_err)?;
        let mut last = self.last.lock().expect("log lock");
        if last.is_none_or(|l| l.index <= log_id.index) {
            *last = None; // everything up to the purge point is gone; get_log_state falls back to `purged`
        }
        Ok(())
    }
}
