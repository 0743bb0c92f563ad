//! The Raft log, vote and committed index, durable in a [`KvEngine`] (RocksDB in production).
//!
//! Keys: `l` + index (u64 big endian) → bincode entry; `m/vote`, `m/purged`, `m/committed`, each
//! a [`MetaRecord`] that names the one type it is written and read as.
//! Appends are written with sync (fsync of the write-ahead log) off the async threads, and
//! openraft batches many proposals into one append, so many commits share one fsync.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use kv_engine::{KvEngine, WriteBatch, for_each_in_range, prefix_end};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};

use crate::types::{NodeId, StorageError, TypeConfig, decode, encode};

const LOG_PREFIX: &[u8] = b"l";

/// A value kept under one fixed key, with the one type it is both written and read as: a writer
/// and a reader cannot disagree on it. (They once did: the purged id was written as
/// `Option<LogId>` and read as `LogId`, so a voter whose log had been purged once could never
/// start again.)
pub(crate) struct MetaRecord<T> {
    key: &'static [u8],
    _type: PhantomData<fn() -> T>,
}

impl<T: serde::Serialize + for<'a> serde::Deserialize<'a>> MetaRecord<T> {
    const fn new(key: &'static [u8]) -> Self {
        MetaRecord { key, _type: PhantomData }
    }

    fn put(&self, b: &mut WriteBatch, value: &T) {
        b.put(self.key.to_vec(), encode(value));
    }

    fn read(&self, kv: &dyn KvEngine) -> Result<Option<T>, StorageError> {
        match kv.get(self.key).map_err(read_err)? {
            Some(v) => {
                Ok(Some(decode(&v).map_err(|e| read_err(format!("{}: {e}", String::from_utf8_lossy(self.key))))?))
            }
            None => Ok(None),
        }
    }
}

/// The vote.
const VOTE: MetaRecord<Vote<NodeId>> = MetaRecord::new(b"m/vote");
/// The last purged log id (`Some` once anything was purged; every release wrote the `Option`).
const PURGED: MetaRecord<Option<LogId<NodeId>>> = MetaRecord::new(b"m/purged");
/// The last committed log id openraft told us.
const COMMITTED: MetaRecord<Option<LogId<NodeId>>> = MetaRecord::new(b"m/committed");

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

/// The log store; clones share the same engine, cached last log id, recent entries and flusher.
#[derive(Clone)]
pub struct LogStore {
    kv: Arc<dyn KvEngine>,
    last: Arc<Mutex<Option<LogId<NodeId>>>>,
    recent: Arc<Mutex<Recent>>,
    flusher: Arc<Flusher>,
}

/// The thread that fsyncs the log, and the way to stop it: [`Flusher::stop`] closes its queue and
/// waits for it to end, so that it no longer holds the database when the process exits (RocksDB
/// still open in a live thread while `exit` runs its static destructors is a crash).
pub struct Flusher {
    tx: Mutex<Option<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    fn send(&self, cb: LogFlushed<TypeConfig>) -> Result<(), StorageError> {
        let tx = self.tx.lock().expect("flusher lock");
        match tx.as_ref().map(|tx| tx.send(cb)) {
            Some(Ok(())) => Ok(()),
            _ => Err(write_err("log flusher stopped")),
        }
    }

    /// Stops the thread once the appends queued before this call are flushed and acknowledged.
    /// Call it after Raft has shut down: later appends fail.
    pub async fn stop(self: Arc<Self>) {
        drop(self.tx.lock().expect("flusher lock").take());
        let thread = self.thread.lock().expect("flusher lock").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for Flusher {
    /// The last log store is gone without [`Flusher::stop`] (an error path): end the thread
    /// here, so it cannot outlive the process's exit holding the database either.
    fn drop(&mut self) {
        if let Ok(tx) = self.tx.get_mut() {
            drop(tx.take());
        }
        if let Some(t) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = t.join();
        }
    }
}

/// The newest entries, consecutive, as appended: openraft reads each entry back right after
/// appending it (to apply it, or to send it to followers), and answering from memory saves a
/// RocksDB scan and a decode per entry. Only a read whose whole range is here is answered here;
/// anything else reads the store. Bounded by entries and by encoded bytes.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

const RECENT_MAX_ENTRIES: usize = 4096;
const RECENT_MAX_BYTES: usize = 64 << 20;

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, e: Entry<TypeConfig>, size: usize) {
        if let Some((back, _)) = self.entries.back()
            && back.log_id.index + 1 != e.log_id.index
        {
            self.clear();
        }
        self.entries.push_back((e, size));
        self.bytes += size;
        while self.entries.len() > RECENT_MAX_ENTRIES || self.bytes > RECENT_MAX_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, n)) = self.entries.pop_front() {
            self.bytes -= n;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `start..end` (end exclusive; None: to the newest), if all of them are here.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64; // exclusive
        let end = end.unwrap_or(last);
        if start < first || end > last || start > end {
            return None;
        }
        Some(self.entries.range((start - first) as usize..(end - first) as usize).map(|(e, _)| e.clone()).collect())
    }

    /// Forgets entries from `index` on (a truncated log).
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            if let Some((_, n)) = self.entries.pop_back() {
                self.bytes -= n;
            }
        }
    }

    /// Forgets entries up to and including `index` (a purged log).
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|i| i <= index) {
            self.pop_front();
        }
    }
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
        let (tx, rx) = std::sync::mpsc::channel();
        let flush_kv = kv.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(flush_kv, rx))
            .map_err(write_err)?;
        let flusher = Arc::new(Flusher { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) });
        Ok(LogStore { kv, last: Arc::new(Mutex::new(last)), recent: Arc::default(), flusher })
    }

    /// The flusher thread, to stop at shutdown.
    pub fn flusher(&self) -> Arc<Flusher> {
        self.flusher.clone()
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
        let end_index = match range.end_bound() {
            Bound::Included(x) => Some(x + 1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(hit) = self.recent.lock().expect("recent lock").get(start, end_index) {
            return Ok(hit);
        }
        let end = match end_index {
            Some(x) => Some(log_key(x)),
            None => prefix_end(LOG_PREFIX),
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
        let purged = PURGED.read(&*self.kv)?.flatten();
        let last = (*self.last.lock().expect("log lock")).or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        VOTE.put(&mut b, vote);
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || kv.write(b, true))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())))?
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        VOTE.read(&*self.kv)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        COMMITTED.put(&mut b, &committed);
        self.kv.write(b, false).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(COMMITTED.read(&*self.kv)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::new();
        let mut last = None;
        let mut fresh = Vec::new();
        for e in entries {
            let bytes = encode(&e);
            let n = bytes.len();
            b.put(log_key(e.log_id.index), bytes);
            last = Some(e.log_id);
            fresh.push((e, n));
        }
        // Written (unsynced) now so that readers see the entries when this returns; the flusher
        // thread makes them durable, sharing one fsync among every append waiting, then tells
        // openraft.
        self.kv.write(b, false).map_err(write_err)?;
        {
            let mut recent = self.recent.lock().expect("recent lock");
            for (e, n) in fresh {
                recent.push(e, n);
            }
        }
        if last.is_some() {
            *self.last.lock().expect("log lock") = last;
        }
        self.flusher.send(callback)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.recent.lock().expect("recent lock").truncate(log_id.index);
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
        self.recent.lock().expect("recent lock").purge(log_id.index);
        let mut b = WriteBatch::new();
        PURGED.put(&mut b, &Some(log_id));
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::types::Command::Put {
                key: format!("k{index}").into_bytes(),
                value: vec![index as u8; 100],
            }),
        }
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(entry(i), 100);
        }
        assert_eq!(indexes(r.get(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(r.get(8, Some(8))), Some(vec![]));
        assert_eq!(r.get(4, Some(7)), None, "starts before the first held entry");
        assert_eq!(r.get(6, Some(11)), None, "ends past the newest");
        r.truncate(8);
        assert_eq!(indexes(r.get(5, None)), Some(vec![5, 6, 7]));
        r.purge(5);
        assert_eq!(indexes(r.get(6, None)), Some(vec![6, 7]));
        assert_eq!(r.bytes, 200);
        // A gap (an append after entries we never saw) starts over.
        r.push(entry(20), 100);
        assert_eq!(indexes(r.get(20, None)), Some(vec![20]));
        assert_eq!(r.get(7, Some(8)), None);
    }

    #[test]
    fn recent_entries_are_bounded() {
        let mut r = Recent::default();
        for i in 0..(RECENT_MAX_ENTRIES as u64 + 10) {
            r.push(entry(i), 10);
        }
        assert_eq!(r.entries.len(), RECENT_MAX_ENTRIES);
        assert_eq!(r.first_index(), Some(10));
        r.push(entry(RECENT_MAX_ENTRIES as u64 + 10), RECENT_MAX_BYTES);
        assert_eq!(r.entries.len(), 1, "bytes bound too");
    }

    #[tokio::test]
    async fn reads_match_the_store_after_append_truncate_and_purge() {
        let kv: Arc<dyn KvEngine> = Arc::new(kv_engine::MemEngine::default());
        let mut store = LogStore::open(kv.clone()).unwrap();
        let mut fresh = LogStore::open(kv).unwrap(); // its cache stays empty: it reads the engine
        let append = |s: &mut LogStore, from: u64, to: u64| {
            let mut b = WriteBatch::new();
            let mut fresh = Vec::new();
            for i in from..to {
                let e = entry(i);
                let bytes = encode(&e);
                let n = bytes.len();
                b.put(log_key(i), bytes);
                fresh.push((e, n));
            }
            s.kv.write(b, false).unwrap();
            let mut r = s.recent.lock().unwrap();
            for (e, n) in fresh {
                r.push(e, n);
            }
        };
        append(&mut store, 1, 50);
        let cached = store.try_get_log_entries(10..20).await.unwrap();
        let stored = fresh.try_get_log_entries(10..20).await.unwrap();
        assert_eq!(cached, stored);
        store.truncate(LogId::new(CommittedLeaderId::new(1, 1), 30)).await.unwrap();
        assert_eq!(store.try_get_log_entries(25..).await.unwrap(), fresh.try_get_log_entries(25..).await.unwrap());
        assert_eq!(store.try_get_log_entries(25..).await.unwrap().len(), 5);
        store.purge(LogId::new(CommittedLeaderId::new(1, 1), 10)).await.unwrap();
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), fresh.try_get_log_entries(..).await.unwrap());
        assert_eq!(store.try_get_log_entries(..).await.unwrap().first().map(|e| e.log_id.index), Some(11));
    }

    fn id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    /// Writes entries as `append` does, without a flush callback (openraft makes those).
    fn put_entries(s: &LogStore, entries: &[Entry<TypeConfig>]) {
        let mut b = WriteBatch::new();
        for e in entries {
            b.put(log_key(e.log_id.index), encode(e));
        }
        s.kv.write(b, false).unwrap();
        if let Some(last) = entries.last() {
            *s.last.lock().unwrap() = Some(last.log_id);
        }
    }

    /// The bug that kept a purged voter from ever starting again: the state after a purge, read
    /// by a store opened afresh on the same engine, is the state before the restart.
    #[tokio::test]
    async fn log_state_after_purges_survives_reopening() {
        let kv: Arc<dyn KvEngine> = Arc::new(kv_engine::MemEngine::default());
        let mut store = LogStore::open(kv.clone()).unwrap();
        let entries: Vec<_> = (1..=300).map(|i| Entry { log_id: id(3, 2, i), ..entry(i) }).collect();
        put_entries(&store, &entries);
        for upto in [50, 120, 299] {
            store.purge(id(3, 2, upto)).await.unwrap();
            let before = store.get_log_state().await.unwrap();
            let mut reopened = LogStore::open(kv.clone()).unwrap();
            let after = reopened.get_log_state().await.unwrap();
            assert_eq!(after.last_purged_log_id, Some(id(3, 2, upto)));
            assert_eq!(after.last_log_id, Some(id(3, 2, 300)));
            assert_eq!((before.last_purged_log_id, before.last_log_id), (after.last_purged_log_id, after.last_log_id));
            let first = reopened.try_get_log_entries(..).await.unwrap().first().map(|e| e.log_id);
            assert_eq!(first, Some(id(3, 2, upto + 1)));
        }
        // Everything purged: the last log id is the purged one.
        store.purge(id(3, 2, 300)).await.unwrap();
        let state = LogStore::open(kv).unwrap().get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(id(3, 2, 300)), Some(id(3, 2, 300))));
    }

    #[tokio::test]
    async fn vote_and_committed_read_back_after_reopening() {
        let kv: Arc<dyn KvEngine> = Arc::new(kv_engine::MemEngine::default());
        let mut store = LogStore::open(kv.clone()).unwrap();
        let mut fresh = LogStore::open(kv.clone()).unwrap();
        assert_eq!(fresh.read_vote().await.unwrap(), None);
        assert_eq!(fresh.read_committed().await.unwrap(), None);
        let mut vote = Vote::new(7, 3);
        vote.commit();
        store.save_vote(&vote).await.unwrap();
        store.save_committed(Some(id(7, 3, 4242))).await.unwrap();
        let mut reopened = LogStore::open(kv.clone()).unwrap();
        assert_eq!(reopened.read_vote().await.unwrap(), Some(vote));
        assert_eq!(reopened.read_committed().await.unwrap(), Some(id(7, 3, 4242)));
        store.save_committed(None).await.unwrap();
        assert_eq!(LogStore::open(kv).unwrap().read_committed().await.unwrap(), None);
    }

    /// The bytes a release before [`MetaRecord`] wrote under `m/purged` (`encode(&Some(log_id))`)
    /// read as that id.
    #[test]
    fn purged_ids_written_by_earlier_releases_read_back() {
        let kv = kv_engine::MemEngine::default();
        let mut b = WriteBatch::new();
        b.put(b"m/purged".to_vec(), encode(&Some(id(1, 1, 2303744))));
        kv.write(b, true).unwrap();
        assert_eq!(PURGED.read(&kv).unwrap(), Some(Some(id(1, 1, 2303744))));
    }

    mod props {
        use openraft::{EntryPayload, Membership};
        use proptest::prelude::*;

        use super::*;
        use crate::types::{Command, Condition, MetaNode, TxnOp};

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..40)
        }

        fn command() -> impl Strategy<Value = Command> {
            let leaf = prop_oneof![
                (bytes(), bytes()).prop_map(|(key, value)| Command::Put { key, value }),
                bytes().prop_map(|key| Command::Delete { key }),
                (
                    proptest::collection::vec(
                        prop_oneof![
                            bytes().prop_map(Condition::Exists),
                            bytes().prop_map(Condition::Absent),
                            (bytes(), bytes()).prop_map(|(k, v)| Condition::ValueEquals(k, v)),
                            (bytes(), any::<u64>()).prop_map(|(k, r)| Condition::ModRevisionEquals(k, r)),
                        ],
                        0..4
                    ),
                    proptest::collection::vec(
                        prop_oneof![
                            (bytes(), bytes()).prop_map(|(k, v)| TxnOp::Put(k, v)),
                            bytes().prop_map(TxnOp::Delete),
                        ],
                        0..4
                    ),
                )
                    .prop_map(|(conditions, ops)| Command::Txn { conditions, ops }),
            ];
            leaf.prop_recursive(2, 16, 4, |inner| proptest::collection::vec(inner, 0..4).prop_map(Command::Batch))
        }

        fn payload() -> impl Strategy<Value = EntryPayload<TypeConfig>> {
            prop_oneof![
                Just(EntryPayload::Blank),
                command().prop_map(EntryPayload::Normal),
                proptest::collection::btree_map(1u64..6, ("[a-z0-9.:]{0,12}", "[a-z0-9.:]{0,12}"), 1..4).prop_map(
                    |m| {
                        let nodes = m
                            .into_iter()
                            .map(|(id, (api_addr, peer_addr))| (id, MetaNode { api_addr, peer_addr }))
                            .collect::<std::collections::BTreeMap<_, _>>();
                        let voters = nodes.keys().copied().collect::<std::collections::BTreeSet<_>>();
                        EntryPayload::Membership(Membership::new(vec![voters], nodes))
                    }
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Any entries, purged anywhere, read back from a store opened afresh exactly as
            /// they were written, and its log state names the purge point and the last entry.
            #[test]
            fn entries_and_purge_points_read_back_after_reopening(
                term in 1u64..1000,
                node in 1u64..1000,
                first in 1u64..1_000_000,
                payloads in proptest::collection::vec(payload(), 1..20),
                purge_at in any::<prop::sample::Index>(),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let kv: Arc<dyn KvEngine> = Arc::new(kv_engine::MemEngine::default());
                    let mut store = LogStore::open(kv.clone()).unwrap();
                    let entries: Vec<Entry<TypeConfig>> = payloads
                        .into_iter()
                        .enumerate()
                        .map(|(i, payload)| Entry { log_id: id(term, node, first + i as u64), payload })
                        .collect();
                    put_entries(&store, &entries);
                    let cut = purge_at.index(entries.len());
                    store.purge(entries[cut].log_id).await.unwrap();
                    let mut reopened = LogStore::open(kv).unwrap();
                    let state = reopened.get_log_state().await.unwrap();
                    prop_assert_eq!(state.last_purged_log_id, Some(entries[cut].log_id));
                    prop_assert_eq!(state.last_log_id, entries.last().map(|e| e.log_id));
                    let read = reopened.try_get_log_entries(..).await.unwrap();
                    prop_assert_eq!(&read[..], &entries[cut + 1..]);
                    Ok(())
                })?;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stopping_the_flusher_releases_the_database() {
        let kv: Arc<dyn KvEngine> = Arc::new(kv_engine::MemEngine::default());
        let store = LogStore::open(kv.clone()).unwrap();
        let flusher = store.flusher();
        assert_eq!(Arc::strong_count(&kv), 3, "ours, the store's and the flusher thread's");
        drop(store);
        flusher.clone().stop().await;
        // The thread has ended and dropped its handle: nothing outlives shutdown holding the
        // database (RocksDB open in a live thread while the process exits is a crash).
        assert_eq!(Arc::strong_count(&kv), 1);
        assert!(flusher.thread.lock().unwrap().is_none());
    }

    #[test]
    fn dropping_the_last_store_ends_the_flusher() {
        let kv: Arc<dyn KvEngine> = Arc::new(kv_engine::MemEngine::default());
        let store = LogStore::open(kv.clone()).unwrap();
        let copy = store.clone();
        drop(store);
        assert_eq!(Arc::strong_count(&kv), 3, "a clone keeps the store and its thread");
        drop(copy);
        assert_eq!(Arc::strong_count(&kv), 1, "the thread was joined and let go of the database");
    }
}
