//! The block volume engine, run on the node a volume is attached to. A volume is `capacity`
//! bytes cut into blocks of `block_size`; each block ever written is one content-hashed chunk in
//! the pool, put through a [`ChunkClient`] with the volume's replica count, and read back
//! verified. Never-written and trimmed blocks hold no chunk (thin).
//!
//! Writes land in memory as byte extents over their blocks ([`overlay`]), nothing read first.
//! [`Volume::flush`] appends the writes since the last flush, in order, to the volume's
//! **write journal**: a log on R storage nodes, acknowledged once the volume's minimum of them
//! have it fsynced (see [`cluster::journal`]). A flush is acknowledged only then, so what it
//! acknowledged survives the loss of this node. In the background a **fold** ([`fold`]) turns
//! the unfolded extents into content-hashed chunks (each block's chunk read once, patched, put)
//! and commits the block map in large batches with the journal's folded point, in transactions
//! conditioned on the volume's fencing generation; the journal then forgets what was folded.
//! An attachment seals the journal at its generation before it replays it ([`journal`]), so a
//! superseded attachment can neither append nor commit. While a snapshot or clone is cut the
//! volume is frozen ([`freeze`]): folds wait, so the copied block map plus the journal's
//! unfolded records ([`snapshot_blocks`]) are the state a crash at that moment would leave.

mod error;
mod fold;
pub mod journal;
pub mod keys;
pub mod overlay;
pub mod record;

pub use cluster::read_cache::{ReadCache, ReadCacheStats};
pub use journal::{copy_journal, delete_journal, snapshot_blocks};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunk_engine::ChunkHash;
use cluster::refs::{add_refs, remove_refs};
use cluster::{ChunkClient, IoRetry};
use futures::stream::{self, StreamExt, TryStreamExt};
use metadata_client::{MetaClient, Txn};
use tokio::sync::{Mutex, RwLock};

pub use error::{EngineError, Result};
use overlay::Overlay;
use record::{JournalState, WriteOp};

/// Most blocks one block-map transaction commits. A folded block that replaced another takes
/// three operations (its map entry, the old chunk's reference removed, the new one's added); the
/// metadata service takes at most 256 per transaction.
const BLOCKS_PER_TXN: usize = 64;
/// Unfolded bytes past which a write waits for a fold (the write cache's size).
pub const MAX_DIRTY_BYTES: u64 = 256 << 20;
/// Unjournaled bytes past which [`Volume::writeback`] appends them to the journal in the
/// background, so flushes find little left to send.
pub const WRITEBACK_BYTES: u64 = 32 << 20;
/// Unfolded bytes past which [`Volume::writeback`] folds in the background.
pub const FOLD_BYTES: u64 = 64 << 20;
/// A volume with no write for this long has its unfolded writes folded.
pub const FOLD_IDLE: Duration = Duration::from_secs(2);
/// How long unfolded writes wait at most before a background fold takes them (busy or not).
pub const FOLD_MAX_AGE: Duration = Duration::from_secs(30);
/// Blocks a fold commits at a time (their memory is given back batch by batch).
const FOLD_BATCH: usize = 1024;
/// Block-map transactions in flight during a fold.
const TXNS_IN_FLIGHT: usize = 8;
/// Chunk puts (and reads) in flight during a fold.
const FLUSH_DEPTH: usize = 32;
/// Journal records in flight during a flush.
const APPENDS_IN_FLIGHT: usize = 4;

/// The shape of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub capacity: u64,
    pub block_size: u64,
}

/// What is in memory beside the committed map.
#[derive(Default)]
struct State {
    /// Every write not yet folded (journaled or not).
    overlay: Overlay,
    /// Writes not yet appended to the journal, in order.
    pending: Vec<WriteOp>,
    pending_bytes: u64,
    /// The last write's stamp.
    stamp: u64,
    /// The last journal seq given to a record.
    seq: u64,
    /// When the last write came, and the first write not folded yet.
    last_write: Option<Instant>,
    unfolded_since: Option<Instant>,
    /// The last seq whose append has returned (so a trim up to it races no append).
    appended: u64,
}

/// One attached volume.
pub struct Volume {
    meta: MetaClient,
    chunks: ChunkClient,
    id: String,
    geometry: RwLock<Geometry>,
    generation: u64,
    /// Committed block map: block index → chunk.
    map: RwLock<HashMap<u64, ChunkHash>>,
    /// Unfolded and unjournaled writes (locked before `map` when both are).
    state: Mutex<State>,
    /// The journal and its state record as last committed.
    journal: RwLock<cluster::journal::Journal>,
    jstate: Mutex<JournalState>,
    /// One flush (journal append batch) at a time.
    flush_lock: Mutex<()>,
    /// One fold at a time.
    fold_lock: Mutex<()>,
    /// Set when a journal replica failed an append or is gone: the journal moves after a fold.
    relocate: AtomicBool,
    /// Journal replicas that failed an append since the journal last moved.
    failed_replicas: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Set once a commit or append found another generation: nothing more is written.
    fenced: AtomicBool,
    /// Wakes [`Self::writeback`].
    pressure: tokio::sync::Notify,
    /// Wakes writers waiting for room (a fold batch gave some back).
    room: tokio::sync::Notify,
    /// How long reads, writes and flushes retry transient failures (none unless set).
    retry: IoRetry,
    /// This attachment's writer id: its puts carry it, so it can release the chunks it
    /// replaces at once (see [`ChunkClient::release`]).
    writer: u64,
    /// Folds begun; each fold's puts carry its number.
    folds: AtomicU64,
    /// Chunk contents recently read or folded (none unless set).
    cache: ReadCache,
}

impl Volume {
    /// Attaches volume `id` at fencing `generation` (the one its publication wrote with
    /// [`set_generation`]), loads its block map, seals its journal at `generation` and replays
    /// what the journal holds past its folded point. `chunks` must be configured with the
    /// volume's replicas and minimum.
    pub async fn open(
        meta: MetaClient,
        chunks: ChunkClient,
        id: &str,
        geometry: Geometry,
        generation: u64,
    ) -> Result<Volume> {
        if geometry.block_size == 0
            || !geometry.block_size.is_power_of_two()
            || !geometry.capacity.is_multiple_of(geometry.block_size)
        {
            return Err(EngineError::Invalid(format!("bad geometry {geometry:?}")));
        }
        let current = current_generation(&meta, id).await?;
        if current != Some(generation) {
            return Err(EngineError::Fenced { volume: id.to_string(), generation, current });
        }
        let mut map = HashMap::new();
        let prefix = keys::map_prefix(id);
        let end = keys::prefix_end(&prefix);
        let mut start = prefix.clone();
        loop {
            let page = meta.range(&start, &end, 4096).await?;
            for kv in &page.kvs {
                let (idx, hash) = keys::map_entry(&prefix, &kv.key, &kv.value)?;
                map.insert(idx, hash);
            }
            match page.next_key {
                Some(k) => start = k,
                None => break,
            }
        }
        let jstate = journal::attach_state(&meta, &chunks, id, generation).await?;
        let jr = cluster::journal::Journal::new(chunks.clone(), &jstate.name, jstate.nodes.clone(), generation);
        let entries = jr.seal(jstate.folded).await.map_err(|e| fenced_or(e, id, generation))?;
        let mut state = State { seq: jstate.folded, appended: jstate.folded, ..State::default() };
        let mut replayed = 0usize;
        for e in &entries {
            for op in record::decode(&e.payload)? {
                Self::check_range(&geometry, op.offset, op.len)?;
                state.stamp += 1;
                lay(&mut state.overlay, geometry.block_size, &op, state.stamp);
                replayed += 1;
            }
            state.seq = state.seq.max(e.seq);
        }
        state.appended = state.seq;
        let relocate = jstate.nodes.iter().any(|n| !chunks.node_up(n));
        tracing::info!(
            volume = id,
            blocks = map.len(),
            generation,
            journal = %jstate.name,
            records = entries.len(),
            replayed,
            "volume attached"
        );
        Ok(Volume {
            meta,
            chunks,
            id: id.to_string(),
            geometry: RwLock::new(geometry),
            generation,
            map: RwLock::new(map),
            state: Mutex::new(state),
            journal: RwLock::new(jr),
            jstate: Mutex::new(jstate),
            flush_lock: Mutex::new(()),
            fold_lock: Mutex::new(()),
            relocate: AtomicBool::new(relocate),
            failed_replicas: Default::default(),
            fenced: AtomicBool::new(false),
            pressure: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
            retry: IoRetry::none(),
            writer: cluster::Writer::new_id(),
            folds: AtomicU64::new(0),
            cache: ReadCache::new(0),
        })
    }

    /// Keeps up to `bytes` of chunk contents in memory: blocks read or folded recently are
    /// served from there, without a fetch from the pool (see [`ReadCache`]).
    pub fn with_read_cache(mut self, bytes: u64) -> Self {
        self.cache = ReadCache::new(bytes);
        self
    }

    /// The read cache's hits, misses and size.
    pub fn read_cache_stats(&self) -> ReadCacheStats {
        self.cache.stats()
    }

    /// Makes reads, writes, flushes and folds retry while they fail transiently (the pool or
    /// the metadata service unreachable: [`EngineError::is_transient`]) for `retry`'s timeout
    /// before failing; without it they fail at once.
    pub fn with_io_retry(mut self, retry: IoRetry) -> Self {
        self.retry = retry;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn geometry(&self) -> Geometry {
        *self.geometry.read().await
    }

    /// Grows the volume (online expansion); the new blocks read as zeros.
    pub async fn grow(&self, capacity: u64) -> Result<()> {
        let mut g = self.geometry.write().await;
        if capacity < g.capacity || !capacity.is_multiple_of(g.block_size) {
            return Err(EngineError::Invalid(format!("cannot resize {} to {capacity} bytes", g.capacity)));
        }
        g.capacity = capacity;
        Ok(())
    }

    /// Blocks holding data in the committed map (folded), for usage reports.
    pub async fn allocated_blocks(&self) -> u64 {
        self.map.read().await.len() as u64
    }

    /// The journal's name and nodes, and the seq folded up to.
    pub async fn journal_state(&self) -> JournalState {
        self.jstate.lock().await.clone()
    }

    fn check_range(g: &Geometry, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > g.capacity) {
            return Err(EngineError::OutOfRange { offset, len, capacity: g.capacity });
        }
        Ok(())
    }

    /// Bytes `s..e` of block `idx` as they are now: unfolded extents over the committed chunk,
    /// which is read only where the extents leave holes (a ranged read when `e - s` is part of
    /// the block, see [`ChunkClient::get_range`]; a whole, cached read otherwise).
    async fn block_range(&self, idx: u64, bs: u64, s: u64, e: u64) -> Result<Bytes> {
        loop {
            let (pieces, hash) = {
                let st = self.state.lock().await;
                let map = self.map.read().await;
                (st.overlay.pieces(idx, s, e), map.get(&idx).copied())
            };
            if overlay::covers(&pieces, s, e) {
                let mut out = vec![0u8; (e - s) as usize];
                overlay::apply(&mut out, s, &pieces);
                return Ok(Bytes::from(out));
            }
            let base = match hash {
                None => Ok(Bytes::from(vec![0u8; (e - s) as usize])),
                Some(h) => self.chunk_part(idx, &h, bs, s, e).await,
            };
            match base {
                Ok(b) if pieces.is_empty() => return Ok(b),
                Ok(b) => {
                    let mut out = b.to_vec();
                    overlay::apply(&mut out, s, &pieces);
                    return Ok(Bytes::from(out));
                }
                // Folded meanwhile: its old chunk may be released already; read again.
                Err(_) if self.map.read().await.get(&idx).copied() != hash => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Bytes `s..e` of chunk `h`, block `idx`'s committed content.
    async fn chunk_part(&self, idx: u64, h: &ChunkHash, bs: u64, s: u64, e: u64) -> Result<Bytes> {
        if let Some(d) = self.cache.get(h) {
            return Ok(d.slice(s as usize..e as usize));
        }
        if e - s < bs {
            return match self.chunks.get_range(h, s, e - s).await? {
                d if d.len() as u64 == e - s => Ok(d),
                d => Err(EngineError::Corrupt(format!(
                    "block {idx} of {} is shorter than {bs}: {} of {} bytes at {s}",
                    self.id,
                    d.len(),
                    e - s
                ))),
            };
        }
        let data = self.chunks.get(h).await?;
        if data.len() as u64 != bs {
            return Err(EngineError::Corrupt(format!("block {idx} of {} is {} bytes", self.id, data.len())));
        }
        self.cache.insert(*h, data.clone());
        Ok(data)
    }

    /// Reads `len` bytes at `offset` (retrying transient failures, see [`Self::with_io_retry`]).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.retry.run("volume read", EngineError::is_transient, || self.read_once(offset, len)).await
    }

    async fn read_once(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let g = self.geometry().await;
        Self::check_range(&g, offset, len)?;
        let bs = g.block_size;
        let (first, last) = (offset / bs, (offset + len).div_ceil(bs));
        let parts = stream::iter(first..last).map(|i| {
            let base = i * bs;
            let s = offset.max(base) - base;
            let e = (offset + len).min(base + bs) - base;
            self.block_range(i, bs, s, e)
        });
        let parts: Vec<Bytes> = parts.buffered(FLUSH_DEPTH).try_collect().await?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part").to_vec());
        }
        let mut out = Vec::with_capacity(len as usize);
        for p in &parts {
            out.extend_from_slice(p);
        }
        Ok(out)
    }

    /// Writes `data` at `offset` (into memory and the next flush's records). `None` data (with
    /// `len`) writes zeros: trim and write-zeroes.
    async fn put_range(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        self.check_fence()?;
        let g = self.geometry().await;
        Self::check_range(&g, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let op = WriteOp { offset, len, data: data.map(Bytes::copy_from_slice) };
        let (pending, unfolded) = {
            let mut st = self.state.lock().await;
            st.stamp += 1;
            let stamp = st.stamp;
            lay(&mut st.overlay, g.block_size, &op, stamp);
            let now = Instant::now();
            st.last_write = Some(now);
            st.unfolded_since.get_or_insert(now);
            for piece in split(op, record::RECORD_MAX as u64) {
                st.pending_bytes += piece.encoded_len() as u64;
                st.pending.push(piece);
            }
            (st.pending_bytes, st.overlay.bytes())
        };
        // A bounded write cache: past these the background writer appends and folds; past
        // MAX_DIRTY_BYTES the writer waits for a fold.
        if pending > WRITEBACK_BYTES || unfolded > FOLD_BYTES {
            self.pressure.notify_one();
        }
        if unfolded > MAX_DIRTY_BYTES {
            self.wait_for_room().await?;
        }
        Ok(())
    }

    /// Waits until no more than `MAX_DIRTY_BYTES` are unfolded: for the running fold's next
    /// batch, or folding itself when no fold runs.
    async fn wait_for_room(&self) -> Result<()> {
        loop {
            if self.state.lock().await.overlay.bytes() <= MAX_DIRTY_BYTES {
                return Ok(());
            }
            let room = self.room.notified();
            if self.fold_lock.try_lock().is_ok() {
                self.fold_once().await?;
                continue;
            }
            self.pressure.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), room).await;
            self.check_fence()?;
        }
    }

    /// Writes `data` at `offset` (retrying transient failures: writing the same bytes again is
    /// harmless).
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        self.retry.run("volume write", EngineError::is_transient, || self.put_range(offset, len, Some(data))).await
    }

    /// Zeroes `len` bytes at `offset`; whole blocks are released (thin again) when folded.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.retry.run("volume write-zeroes", EngineError::is_transient, || self.put_range(offset, len, None)).await
    }

    /// Appends in the background whenever more than `WRITEBACK_BYTES` are unjournaled, folds
    /// when more than `FOLD_BYTES` are unfolded, the volume has been idle `FOLD_IDLE` or the
    /// oldest unfolded write is `FOLD_MAX_AGE` old, and moves the
    /// journal off a failed replica; runs until the volume is fenced (spawn it beside the front
    /// end; abort it when detaching). Failures are logged and retried.
    pub async fn writeback(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.pressure.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let (pending, unfolded, due) = {
                let st = self.state.lock().await;
                let idle = st.last_write.is_none_or(|t| t.elapsed() > FOLD_IDLE);
                let old = st.unfolded_since.is_some_and(|t| t.elapsed() > FOLD_MAX_AGE);
                (st.pending_bytes, st.overlay.bytes(), !st.overlay.is_empty() && (idle || old))
            };
            let mut out = Ok(());
            if pending > WRITEBACK_BYTES {
                out = self.flush().await;
            }
            if out.is_ok() && (unfolded > FOLD_BYTES || due) {
                tracing::debug!(volume = %self.id, unfolded, due, "background fold");
                out = self.fold().await;
            }
            if out.is_ok() && self.relocate.load(Ordering::Acquire) {
                out = self.relocate_journal().await;
            }
            match out {
                Ok(()) => {}
                Err(EngineError::Fenced { .. }) => return,
                Err(e) => {
                    tracing::warn!(volume = %self.id, error = %e, "background write-back failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Bytes written and not yet appended to the journal.
    pub async fn dirty_bytes(&self) -> u64 {
        self.state.lock().await.pending_bytes
    }

    /// Bytes written and not yet folded into chunks.
    pub async fn unfolded_bytes(&self) -> u64 {
        self.state.lock().await.overlay.bytes()
    }

    fn check_fence(&self) -> Result<()> {
        if self.fenced.load(Ordering::Relaxed) {
            return Err(EngineError::Fenced { volume: self.id.clone(), generation: self.generation, current: None });
        }
        Ok(())
    }

    /// The engine error for a journal failure (a newer epoch fences this attachment).
    fn journal_error(&self, e: cluster::ClusterError) -> EngineError {
        if matches!(e, cluster::ClusterError::Fenced(_)) {
            self.fenced.store(true, Ordering::Relaxed);
            tracing::warn!(volume = %self.id, generation = self.generation, error = %e, "attachment fenced; writes refused");
        }
        fenced_or(e, &self.id, self.generation)
    }

    /// Makes every write before this call durable: appends the writes since the last flush,
    /// in order, to the journal (acknowledged once the volume's minimum of replicas have them
    /// fsynced). On failure the writes stay pending (unless fenced), transient failures are
    /// retried (see [`Self::with_io_retry`]), and the error is returned.
    pub async fn flush(&self) -> Result<()> {
        self.retry.run("volume flush", EngineError::is_transient, || self.flush_once()).await
    }

    async fn flush_once(&self) -> Result<()> {
        let _one = self.flush_lock.lock().await;
        self.check_fence()?;
        let bs = self.geometry().await.block_size;
        let (ops, first, payloads) = {
            let mut st = self.state.lock().await;
            if st.pending.is_empty() {
                return Ok(());
            }
            // Mostly whole blocks (a sequential stream): fold them instead, so their bytes are
            // written once, as chunks, not to the journal first.
            let whole: u64 = st.pending.iter().filter(|o| o.len >= bs && o.data.is_some()).map(|o| o.len).sum();
            let all: u64 = st.pending.iter().map(|o| o.len).sum();
            if all >= bs && whole * 4 >= all * 3 {
                drop(st);
                return self.fold_pass(true).await;
            }
            let ops = std::mem::take(&mut st.pending);
            st.pending_bytes = 0;
            let payloads = record::records(&ops);
            let first = st.seq + 1;
            st.seq += payloads.len() as u64;
            (ops, first, payloads)
        };
        let last = first + payloads.len() as u64 - 1;
        let t0 = std::time::Instant::now();
        let nops = ops.len();
        let journal = self.journal.read().await.clone();
        let results: Vec<_> = stream::iter(payloads.into_iter().enumerate())
            .map(|(i, p)| journal.append(first + i as u64, p))
            .buffered(APPENDS_IN_FLIGHT)
            .collect()
            .await;
        let mut out = Ok(());
        for r in results {
            match r {
                Ok(report) if !report.failed.is_empty() => {
                    tracing::warn!(volume = %self.id, failed = ?report.failed, "journal replica failed; moving the journal");
                    self.failed_replicas.lock().expect("failed replicas lock").extend(report.failed);
                    self.relocate.store(true, Ordering::Release);
                    self.pressure.notify_one();
                }
                Ok(_) => {}
                Err(e) if out.is_ok() => out = Err(self.journal_error(e)),
                Err(_) => {}
            }
        }
        tracing::debug!(volume = %self.id, writes = nops, records = last + 1 - first, took = ?t0.elapsed(), "flushed to the journal");
        let mut st = self.state.lock().await;
        st.appended = st.appended.max(last);
        if out.is_err() && !self.fenced.load(Ordering::Relaxed) {
            // Put the writes back before the ones made meanwhile, so the next flush sends them
            // again, in order.
            let mut back = ops;
            back.append(&mut st.pending);
            st.pending_bytes = back.iter().map(|o| o.encoded_len() as u64).sum();
            st.pending = back;
        }
        out
    }

    /// Flushes, then folds everything unfolded (so the next attachment has nothing to replay);
    /// call when detaching. A fold that fails leaves the journal holding the writes.
    pub async fn close(&self) -> Result<()> {
        self.flush().await?;
        if let Err(e) = self.fold().await {
            tracing::warn!(volume = %self.id, error = %e, "final fold failed; the journal keeps the writes");
        }
        Ok(())
    }

    /// A transaction conditioned on the fencing generation (condition 0) and on no freeze
    /// (condition 1), for [`Self::commit_txn`].
    fn guarded(&self) -> Txn {
        let gen_key = keys::generation_key(&self.id);
        let gen_val = self.generation.to_string();
        Txn::new().value_equals(&gen_key, gen_val.as_bytes()).absent(&keys::freeze_key(&self.id))
    }

    /// Commits `txn` (made from [`Self::guarded`]), waiting out a freeze; a superseded
    /// generation fences this attachment.
    async fn commit_txn(&self, txn: Txn) -> Result<()> {
        let mut out = self.meta.txn(txn.clone()).await?;
        // Frozen while a snapshot or clone is cut: wait for the thaw (or the freeze's expiry).
        while out.failed_condition == Some(1) {
            wait_for_thaw(&self.meta, &self.id).await?;
            out = self.meta.txn(txn.clone()).await?;
        }
        if !out.succeeded {
            self.fenced.store(true, Ordering::Relaxed);
            let current = current_generation(&self.meta, &self.id).await.ok().flatten();
            tracing::warn!(volume = %self.id, generation = self.generation, ?current, "attachment fenced; writes refused");
            return Err(EngineError::Fenced { volume: self.id.clone(), generation: self.generation, current });
        }
        Ok(())
    }

    /// Commits one group of folded blocks: map entries and reference changes. Returns the
    /// chunks whose references the group removed. The caller updates `map`.
    async fn commit_group(&self, group: &[(u64, Option<ChunkHash>)]) -> Result<Vec<ChunkHash>> {
        let old: Vec<Option<ChunkHash>> = {
            let map = self.map.read().await;
            group.iter().map(|(i, _)| map.get(i).copied()).collect()
        };
        let mut txn = self.guarded();
        for ((idx, new), old) in group.iter().zip(&old) {
            if new == old {
                continue;
            }
            let owner = keys::owner(&self.id, *idx);
            let k = keys::map_key(&self.id, *idx);
            if let Some(o) = old {
                txn = remove_refs(txn, std::slice::from_ref(o), &owner);
            }
            txn = match new {
                Some(h) => add_refs(txn.put(&k, h.to_string().as_bytes()), std::slice::from_ref(h), &owner),
                None => txn.delete(&k),
            };
        }
        self.commit_txn(txn).await?;
        let removed = group.iter().zip(old).filter(|((_, new), old)| new != old).filter_map(|(_, old)| old).collect();
        Ok(removed)
    }
}

/// `e` as an engine error: a journal sealed at a newer epoch is this attachment fenced.
fn fenced_or(e: cluster::ClusterError, id: &str, generation: u64) -> EngineError {
    match e {
        cluster::ClusterError::Fenced(_) => EngineError::Fenced { volume: id.to_string(), generation, current: None },
        e => EngineError::Cluster(e),
    }
}

/// Lays write `op` over the blocks it touches, stamped `stamp`.
fn lay(overlay: &mut Overlay, bs: u64, op: &WriteOp, stamp: u64) {
    let end = op.offset + op.len;
    let mut pos = op.offset;
    while pos < end {
        let idx = pos / bs;
        let base = idx * bs;
        let (s, e) = (pos - base, end.min(base + bs) - base);
        let at = (pos - op.offset) as usize;
        let data = op.data.as_ref().map(|d| d.slice(at..at + (e - s) as usize));
        overlay.insert(idx, s, e, data, stamp);
        pos = base + e;
    }
}

/// `op` cut into writes of at most `max` bytes each.
fn split(op: WriteOp, max: u64) -> Vec<WriteOp> {
    if op.len <= max {
        return vec![op];
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < op.len {
        let n = max.min(op.len - at);
        let data = op.data.as_ref().map(|d| d.slice(at as usize..(at + n) as usize));
        out.push(WriteOp { offset: op.offset + at, len: n, data });
        at += n;
    }
    out
}

/// How far a volume's blocks are from being fully replicated in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaHealth {
    /// Blocks holding data (flushed).
    pub blocks: u64,
    /// Distinct chunks those blocks are.
    pub chunks: u64,
    /// Chunks all of whose placed replicas are up and hold a good copy.
    pub complete: u64,
    /// Copies missing across all chunks (0: healthy).
    pub missing_copies: u64,
}

impl ReplicaHealth {
    /// Whether a replica of some block is missing (a node down or out, a rebuild not done).
    pub fn degraded(&self) -> bool {
        self.complete < self.chunks
    }
    /// Fraction of chunks fully replicated (1.0 when there are none).
    pub fn progress(&self) -> f64 {
        if self.chunks == 0 { 1.0 } else { self.complete as f64 / self.chunks as f64 }
    }
}

/// Checks every flushed block of volume (or snapshot) `id` against the pool: for each chunk,
/// do all of its R placed nodes hold a good copy? (One `Has` call per node per 256 chunks.)
pub async fn replica_health(meta: &MetaClient, chunks: &ChunkClient, id: &str) -> Result<ReplicaHealth> {
    let (blocks, hashes) = mapped_chunks(meta, id).await?;
    let hashes: Vec<ChunkHash> = hashes.into_iter().collect();
    let r = chunks.config().replicas;
    let mut counts = chunks.placed_copies(&hashes).await?;
    // A block overwritten since the map was read may have had its old chunk released already:
    // a chunk the volume no longer maps is not a missing copy.
    if counts.iter().any(|c| *c < r) {
        let (_, now) = mapped_chunks(meta, id).await?;
        for (h, c) in hashes.iter().zip(counts.iter_mut()) {
            if *c < r && !now.contains(h) {
                *c = r;
            }
        }
    }
    Ok(ReplicaHealth {
        blocks,
        chunks: hashes.len() as u64,
        complete: counts.iter().filter(|c| **c >= r).count() as u64,
        missing_copies: counts.iter().map(|c| r.saturating_sub(*c) as u64).sum(),
    })
}

/// The blocks volume (or snapshot) `id` maps and the distinct chunks they are.
async fn mapped_chunks(meta: &MetaClient, id: &str) -> Result<(u64, std::collections::HashSet<ChunkHash>)> {
    let prefix = keys::map_prefix(id);
    let end = keys::prefix_end(&prefix);
    let mut start = prefix.clone();
    let mut blocks = 0u64;
    let mut hashes = std::collections::HashSet::new();
    loop {
        let page = meta.range(&start, &end, 4096).await?;
        for kv in &page.kvs {
            let (_, hash) = keys::map_entry(&prefix, &kv.key, &kv.value)?;
            blocks += 1;
            hashes.insert(hash);
        }
        match page.next_key {
            Some(k) => start = k,
            None => return Ok((blocks, hashes)),
        }
    }
}

/// How long a freeze holds writes at most: a controller that died while cutting a snapshot
/// does not stall the volume for longer.
pub const FREEZE_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Holds commits of volume `id` (its attachment's flushes wait) so that its block map can be
/// copied at one point: what a crash at that moment would leave, i.e. crash-consistent.
pub async fn freeze(meta: &MetaClient, id: &str) -> Result<()> {
    let until = unix_ms() + FREEZE_MAX.as_millis() as u64;
    meta.put(&keys::freeze_key(id), until.to_string().as_bytes()).await?;
    Ok(())
}

/// Lets commits of volume `id` go on.
pub async fn thaw(meta: &MetaClient, id: &str) -> Result<()> {
    meta.delete(&keys::freeze_key(id)).await?;
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Waits until volume `id` is thawed; a freeze past its expiry is removed.
async fn wait_for_thaw(meta: &MetaClient, id: &str) -> Result<()> {
    let k = keys::freeze_key(id);
    loop {
        let Some(kv) = meta.get(&k).await? else { return Ok(()) };
        let until: u64 = std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if unix_ms() > until {
            tracing::warn!(volume = id, "a freeze outlived its expiry; removing it");
            meta.txn(Txn::new().mod_revision_equals(&k, kv.mod_revision).delete(&k)).await?;
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Copies the block map of `from` (a volume or snapshot id) to `to`, with `to`'s own chunk
/// references — no data is copied, the blocks share chunks. Idempotent: a copy cut short is
/// finished by running it again. Freeze `from` around it if it is attached.
pub async fn copy_map(meta: &MetaClient, from: &str, to: &str) -> Result<u64> {
    let prefix = keys::map_prefix(from);
    let end = keys::prefix_end(&prefix);
    let mut start = prefix.clone();
    let mut copied = 0;
    loop {
        let page = meta.range(&start, &end, BLOCKS_PER_TXN as u32).await?;
        let mut txn = Txn::new();
        for kv in &page.kvs {
            let (idx, h) = keys::map_entry(&prefix, &kv.key, &kv.value)?;
            // The source entry must still be there: a reference is only added to a live chunk.
            txn = txn.mod_revision_equals(&kv.key, kv.mod_revision);
            txn = add_refs(txn.put(&keys::map_key(to, idx), &kv.value), &[h], &keys::owner(to, idx));
        }
        if !page.kvs.is_empty() {
            if !meta.txn(txn).await?.succeeded {
                return Err(EngineError::Invalid(format!(
                    "{from} changed while its blocks were copied; freeze it first"
                )));
            }
            copied += page.kvs.len() as u64;
        }
        match page.next_key {
            Some(k) => start = k,
            None => return Ok(copied),
        }
    }
}

/// The fencing generation volume `id` is attached at (None: never published).
pub async fn current_generation(meta: &MetaClient, id: &str) -> Result<Option<u64>> {
    match meta.get(&keys::generation_key(id)).await? {
        None => Ok(None),
        Some(kv) => std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| EngineError::Corrupt(format!("generation of {id}"))),
    }
}

/// Adds to `txn` the write of volume `id`'s fencing generation (done with each publication
/// change, in the same transaction as the controller's own record).
pub fn set_generation(txn: Txn, id: &str, generation: u64) -> Txn {
    txn.put(&keys::generation_key(id), generation.to_string().as_bytes())
}

/// Adds to `txn` the removal of volume `id`'s fencing generation; its block map and references
/// are removed by [`delete_data`].
pub fn clear_generation(txn: Txn, id: &str) -> Txn {
    txn.delete(&keys::generation_key(id))
}

/// Removes every block-map entry of volume `id` with its chunk references, in batches (pool GC
/// then reclaims the chunks no one else uses). Call after the volume's record is gone.
pub async fn delete_data(meta: &MetaClient, id: &str) -> Result<u64> {
    let prefix = keys::map_prefix(id);
    let end = keys::prefix_end(&prefix);
    let mut removed = 0;
    loop {
        let page = meta.range(&prefix, &end, BLOCKS_PER_TXN as u32).await?;
        if page.kvs.is_empty() {
            return Ok(removed);
        }
        let mut txn = Txn::new();
        for kv in &page.kvs {
            txn = txn.mod_revision_equals(&kv.key, kv.mod_revision).delete(&kv.key);
            // A corrupt entry goes too; only a readable one names a reference to drop.
            if let Ok((idx, h)) = keys::map_entry(&prefix, &kv.key, &kv.value) {
                txn = remove_refs(txn, &[h], &keys::owner(id, idx));
            }
        }
        if meta.txn(txn).await?.succeeded {
            removed += page.kvs.len() as u64;
        }
    }
}
