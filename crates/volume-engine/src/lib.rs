//! The block volume engine, run on the node a volume is attached to. A volume is `capacity`
//! bytes cut into blocks of `block_size`; each block ever written is one content-hashed chunk in
//! the pool, put through a [`ChunkClient`] with the volume's replica count (acknowledged once
//! every placed replica that answered made it durable, never with fewer than the volume's
//! minimum), and read back verified. Never-written and trimmed blocks hold no chunk (thin).
//!
//! Writes land in a dirty set in memory, like a disk's volatile write cache; [`Volume::flush`]
//! puts the dirty blocks as chunks and commits their block-map entries (with their chunk
//! references) to the metadata service in transactions conditioned on the volume's fencing
//! generation. A flush is acknowledged only after that commit, so what a flush acknowledged
//! survives the loss of this node; an attachment whose generation was superseded (the volume
//! was published elsewhere) can no longer commit anything. While a snapshot or clone is cut the
//! volume is frozen ([`freeze`]): commits wait, so the copied block map ([`copy_map`]) is the
//! state a crash at that moment would leave.

mod error;
pub mod keys;

pub use cluster::read_cache::{ReadCache, ReadCacheStats};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chunk_engine::ChunkHash;
use cluster::refs::{add_refs, remove_refs};
use cluster::{ChunkClient, IoRetry};
use futures::stream::{self, StreamExt, TryStreamExt};
use metadata_client::{MetaClient, Txn};
use tokio::sync::{Mutex, RwLock};

pub use error::{EngineError, Result};

/// Most blocks one block-map transaction commits. A flushed block that replaced another takes
/// three operations (its map entry, the old chunk's reference removed, the new one's added); the
/// metadata service takes at most 256 per transaction.
const BLOCKS_PER_TXN: usize = 64;
/// Unflushed bytes past which a write waits for a flush (the write cache's size).
pub const MAX_DIRTY_BYTES: u64 = 256 << 20;
/// Unflushed bytes past which [`Volume::writeback`] starts a flush in the background, so
/// flushing overlaps writing and writers seldom wait at `MAX_DIRTY_BYTES`.
pub const WRITEBACK_BYTES: u64 = 32 << 20;
/// Block-map transactions in flight during a flush.
const TXNS_IN_FLIGHT: usize = 8;
/// Chunk puts in flight during a flush.
const FLUSH_DEPTH: usize = 32;

/// The shape of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub capacity: u64,
    pub block_size: u64,
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
    /// Blocks written since the last flush began (None: trimmed to zeros).
    dirty: Mutex<BTreeMap<u64, Option<Bytes>>>,
    /// Blocks a running flush is committing; readable until it ends.
    flushing: RwLock<Arc<BTreeMap<u64, Option<Bytes>>>>,
    /// One flush at a time.
    flush_lock: Mutex<()>,
    /// Counts dirty sets taken by flushes (a read-modify-write checks it did not miss one).
    taken: AtomicU64,
    /// Set once a commit found another generation: nothing more is written.
    fenced: std::sync::atomic::AtomicBool,
    /// Woken when the dirty set passes `WRITEBACK_BYTES`.
    pressure: tokio::sync::Notify,
    /// How long reads, writes and flushes retry transient failures (none unless set).
    retry: IoRetry,
    /// This attachment's writer id: its puts carry it, so it can release the chunks it
    /// replaces at once (see [`ChunkClient::release`]).
    writer: u64,
    /// Flushes begun; each flush's puts carry its number.
    flushes: AtomicU64,
    /// Chunk contents recently read or flushed (none unless set).
    cache: ReadCache,
}

impl Volume {
    /// Attaches volume `id` at fencing `generation` (the one its publication wrote with
    /// [`set_generation`]) and loads its block map. `chunks` must be configured with the
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
        tracing::info!(volume = id, blocks = map.len(), generation, "volume attached");
        Ok(Volume {
            meta,
            chunks,
            id: id.to_string(),
            geometry: RwLock::new(geometry),
            generation,
            map: RwLock::new(map),
            dirty: Mutex::new(BTreeMap::new()),
            flushing: RwLock::new(Arc::new(BTreeMap::new())),
            flush_lock: Mutex::new(()),
            taken: AtomicU64::new(0),
            fenced: std::sync::atomic::AtomicBool::new(false),
            pressure: tokio::sync::Notify::new(),
            retry: IoRetry::none(),
            writer: cluster::Writer::new_id(),
            flushes: AtomicU64::new(0),
            cache: ReadCache::new(0),
        })
    }

    /// Keeps up to `bytes` of chunk contents in memory: blocks read or flushed recently are
    /// served from there, without a fetch from the pool (see [`ReadCache`]).
    pub fn with_read_cache(mut self, bytes: u64) -> Self {
        self.cache = ReadCache::new(bytes);
        self
    }

    /// The read cache's hits, misses and size.
    pub fn read_cache_stats(&self) -> ReadCacheStats {
        self.cache.stats()
    }

    /// Makes reads, writes and flushes retry while they fail transiently (the pool or the
    /// metadata service unreachable: [`EngineError::is_transient`]) for `retry`'s timeout
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

    /// Blocks holding data (committed), for usage reports.
    pub async fn allocated_blocks(&self) -> u64 {
        self.map.read().await.len() as u64
    }

    fn check_range(g: &Geometry, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > g.capacity) {
            return Err(EngineError::OutOfRange { offset, len, capacity: g.capacity });
        }
        Ok(())
    }

    /// The current content of block `idx` (a whole block), zeros when it holds nothing.
    async fn block(&self, idx: u64, bs: u64) -> Result<Bytes> {
        if let Some(b) = self.dirty.lock().await.get(&idx) {
            return Ok(b.clone().unwrap_or_else(|| Bytes::from(vec![0u8; bs as usize])));
        }
        if let Some(b) = self.flushing.read().await.get(&idx) {
            return Ok(b.clone().unwrap_or_else(|| Bytes::from(vec![0u8; bs as usize])));
        }
        let hash = self.map.read().await.get(&idx).copied();
        match hash {
            None => Ok(Bytes::from(vec![0u8; bs as usize])),
            Some(h) => {
                if let Some(d) = self.cache.get(&h) {
                    return Ok(d);
                }
                let data = match self.chunks.get(&h).await {
                    Ok(d) => {
                        self.cache.insert(h, d.clone());
                        d
                    }
                    // Overwritten meanwhile: its old chunk may be released already; the block
                    // is now in the dirty or flushing set or the map points elsewhere.
                    Err(_) if self.moved_on(idx, &h).await => return Box::pin(self.block(idx, bs)).await,
                    Err(e) => return Err(e.into()),
                };
                if data.len() as u64 != bs {
                    return Err(EngineError::Corrupt(format!("block {idx} of {} is {} bytes", self.id, data.len())));
                }
                Ok(data)
            }
        }
    }

    /// Bytes `s..e` of block `idx`: from memory when the block is there, else a ranged read
    /// of its chunk (about `e - s` bytes read and verified, see [`ChunkClient::get_range`]).
    async fn block_part(&self, idx: u64, bs: u64, s: u64, e: u64) -> Result<Bytes> {
        let zeros = || Bytes::from(vec![0u8; (e - s) as usize]);
        if let Some(b) = self.dirty.lock().await.get(&idx) {
            return Ok(b.as_ref().map_or_else(zeros, |b| b.slice(s as usize..e as usize)));
        }
        if let Some(b) = self.flushing.read().await.get(&idx) {
            return Ok(b.as_ref().map_or_else(zeros, |b| b.slice(s as usize..e as usize)));
        }
        let Some(h) = self.map.read().await.get(&idx).copied() else { return Ok(zeros()) };
        if let Some(d) = self.cache.get(&h) {
            return Ok(d.slice(s as usize..e as usize));
        }
        match self.chunks.get_range(&h, s, e - s).await {
            Ok(d) if d.len() as u64 == e - s => Ok(d),
            Ok(d) => Err(EngineError::Corrupt(format!("block {idx} of {} is shorter than {bs}: {} of {} bytes at {s}", self.id, d.len(), e - s))),
            // Overwritten meanwhile (see `block`).
            Err(_) if self.moved_on(idx, &h).await => Box::pin(self.block_part(idx, bs, s, e)).await,
            Err(err) => Err(err.into()),
        }
    }

    /// Whether block `idx` no longer reads from chunk `h` (written or committed since).
    async fn moved_on(&self, idx: u64, h: &ChunkHash) -> bool {
        self.dirty.lock().await.contains_key(&idx)
            || self.flushing.read().await.contains_key(&idx)
            || self.map.read().await.get(&idx) != Some(h)
    }

    /// Reads `len` bytes at `offset` (retrying transient failures, see [`Self::with_io_retry`]).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.retry.run("volume read", EngineError::is_transient, || self.read_once(offset, len)).await
    }

    async fn read_once(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let g = self.geometry().await;
        Self::check_range(&g, offset, len)?;
        let bs = g.block_size;
        let mut out = Vec::with_capacity(len as usize);
        let (first, last) = (offset / bs, (offset + len).div_ceil(bs));
        if last == first + 1 && len < bs {
            // Part of one block: read about that part, not the whole block.
            let s = offset - first * bs;
            return Ok(self.block_part(first, bs, s, s + len).await?.to_vec());
        }
        let blocks: Vec<Bytes> =
            stream::iter(first..last).map(|i| self.block(i, bs)).buffered(FLUSH_DEPTH).try_collect().await?;
        for (n, b) in blocks.iter().enumerate() {
            let base = (first + n as u64) * bs;
            let s = offset.max(base) - base;
            let e = (offset + len).min(base + bs) - base;
            out.extend_from_slice(&b[s as usize..e as usize]);
        }
        Ok(out)
    }

    /// Writes `data` at `offset` (into the dirty set; durable after the next flush). `None`
    /// data (with `len`) writes zeros: trim and write-zeroes.
    async fn put_range(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        self.check_fence()?;
        let g = self.geometry().await;
        Self::check_range(&g, offset, len)?;
        let bs = g.block_size;
        let mut pos = offset;
        while pos < offset + len {
            let idx = pos / bs;
            let base = idx * bs;
            let s = pos - base;
            let e = (offset + len).min(base + bs) - base;
            let piece = data.map(|d| &d[(pos - offset) as usize..(pos - offset + e - s) as usize]);
            let whole = s == 0 && e == bs;
            let patch = |cur: &mut Vec<u8>| match piece {
                Some(p) => cur[s as usize..e as usize].copy_from_slice(p),
                None => cur[s as usize..e as usize].fill(0),
            };
            let thin = |cur: Vec<u8>| if cur.iter().all(|b| *b == 0) { None } else { Some(Bytes::from(cur)) };
            let mut dirty = self.dirty.lock().await;
            if whole {
                dirty.insert(idx, piece.filter(|p| p.iter().any(|b| *b != 0)).map(Bytes::copy_from_slice));
            } else if let Some(cur) = dirty.get(&idx) {
                // Patched under the lock: two writes into one block never lose each other.
                let mut cur = cur.as_ref().map_or_else(|| vec![0u8; bs as usize], |b| b.to_vec());
                patch(&mut cur);
                dirty.insert(idx, thin(cur));
            } else {
                // Fetch the block without holding the lock. A write into it that got in
                // meanwhile is either still dirty (patched instead of the fetched copy) or was
                // taken by a flush, which moves `taken`: then fetch again.
                let mut taken = self.taken.load(Ordering::Acquire);
                drop(dirty);
                loop {
                    let base = self.block(idx, bs).await?;
                    let mut dirty = self.dirty.lock().await;
                    let mut cur = match dirty.get(&idx) {
                        Some(c) => c.as_ref().map_or_else(|| vec![0u8; bs as usize], |b| b.to_vec()),
                        None if self.taken.load(Ordering::Acquire) != taken => {
                            taken = self.taken.load(Ordering::Acquire);
                            continue;
                        }
                        None => base.to_vec(),
                    };
                    patch(&mut cur);
                    dirty.insert(idx, thin(cur));
                    break;
                }
            }
            pos = base + e;
        }
        // A bounded write cache: past WRITEBACK_BYTES a background flush starts (see
        // `writeback`), past MAX_DIRTY_BYTES the writer waits for a flush.
        let dirty = self.dirty.lock().await.len() as u64 * bs;
        if dirty > WRITEBACK_BYTES {
            self.pressure.notify_one();
        }
        if dirty > MAX_DIRTY_BYTES {
            self.flush_once().await?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` (retrying transient failures: writing the same bytes again is
    /// harmless).
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        self.retry.run("volume write", EngineError::is_transient, || self.put_range(offset, len, Some(data))).await
    }

    /// Zeroes `len` bytes at `offset`; whole blocks are released (thin again).
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.retry.run("volume write-zeroes", EngineError::is_transient, || self.put_range(offset, len, None)).await
    }

    /// Flushes in the background whenever more than `WRITEBACK_BYTES` are dirty; runs until the
    /// volume is fenced (spawn it beside the front end; abort it when detaching). A failed flush
    /// is logged and retried by the next one (its blocks stay dirty).
    pub async fn writeback(self: Arc<Self>) {
        loop {
            self.pressure.notified().await;
            while self.dirty_bytes().await > WRITEBACK_BYTES {
                match self.flush().await {
                    Ok(()) => {}
                    Err(EngineError::Fenced { .. }) => return,
                    Err(e) => {
                        tracing::warn!(volume = %self.id, error = %e, "background flush failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Bytes written and not yet flushed.
    pub async fn dirty_bytes(&self) -> u64 {
        let bs = self.geometry().await.block_size;
        self.dirty.lock().await.len() as u64 * bs
    }

    fn check_fence(&self) -> Result<()> {
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(EngineError::Fenced { volume: self.id.clone(), generation: self.generation, current: None });
        }
        Ok(())
    }

    /// Makes every write before this call durable: puts the dirty blocks as replicated chunks,
    /// then commits the block map under the fencing generation. On failure the blocks stay
    /// dirty (unless fenced), transient failures are retried (see [`Self::with_io_retry`]), and
    /// the error is returned.
    pub async fn flush(&self) -> Result<()> {
        self.retry.run("volume flush", EngineError::is_transient, || self.flush_once()).await
    }

    async fn flush_once(&self) -> Result<()> {
        let _one = self.flush_lock.lock().await;
        self.check_fence()?;
        let batch = {
            // The batch becomes readable as "flushing" before the dirty set lets go of it.
            let mut dirty = self.dirty.lock().await;
            if dirty.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut *dirty));
            *self.flushing.write().await = batch.clone();
            self.taken.fetch_add(1, Ordering::AcqRel);
            batch
        };
        let seq = self.flushes.fetch_add(1, Ordering::AcqRel) + 1;
        let out = self.commit(&batch, seq).await;
        if out.is_err() && !self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            // Put back what was not overwritten meanwhile, so the next flush retries it.
            let mut dirty = self.dirty.lock().await;
            for (idx, b) in batch.iter() {
                dirty.entry(*idx).or_insert_with(|| b.clone());
            }
        }
        *self.flushing.write().await = Arc::new(BTreeMap::new());
        out
    }

    /// Puts the batch's blocks (as flush number `seq` of this writer) and commits the map; then
    /// releases the chunks the batch replaced, so their space comes back at once rather than
    /// at a pool-GC round (the nodes keep any that something else holds).
    async fn commit(&self, batch: &BTreeMap<u64, Option<Bytes>>, seq: u64) -> Result<()> {
        // Owned items, so the flush future is Send for any caller (spawned tasks included).
        let items: Vec<(u64, Option<Bytes>)> = batch.iter().map(|(i, b)| (*i, b.clone())).collect();
        let client = self.chunks.clone();
        let writer = cluster::Writer { id: self.writer, seq };
        let puts: Vec<(u64, Option<ChunkHash>)> = stream::iter(items)
            .map(move |(idx, b)| {
                let client = client.clone();
                async move {
                    match b {
                        Some(data) => Ok::<_, EngineError>((idx, Some(client.put_as(data, writer).await?.hash))),
                        None => Ok((idx, None)),
                    }
                }
            })
            .buffered(FLUSH_DEPTH)
            .try_collect()
            .await?;
        // Groups touch disjoint blocks: their transactions go in parallel, so the metadata
        // service commits several in one Raft entry.
        // (Owned groups: a closure over borrowed slices would not make a `Send` future.)
        let groups: Vec<Vec<(u64, Option<ChunkHash>)>> = puts.chunks(BLOCKS_PER_TXN).map(<[_]>::to_vec).collect();
        let replaced: Vec<Vec<ChunkHash>> = stream::iter(groups)
            .map(|group| async move { self.commit_group(&group).await })
            .buffer_unordered(TXNS_IN_FLIGHT)
            .try_collect()
            .await?;
        // Every put of this flush is committed (and of earlier flushes: one flush at a time), so
        // this writer vouches for its puts up to `seq`. Chunks this batch still maps are kept.
        // What was just written is what is read next (a database re-reads its pages).
        for (idx, h) in &puts {
            if let (Some(h), Some(Some(data))) = (h, batch.get(idx)) {
                self.cache.insert(*h, data.clone());
            }
        }
        let kept: std::collections::HashSet<ChunkHash> = puts.iter().filter_map(|(_, h)| *h).collect();
        let mut released: Vec<ChunkHash> = replaced.into_iter().flatten().filter(|h| !kept.contains(h)).collect();
        released.sort_unstable();
        released.dedup();
        if !released.is_empty() {
            let (chunks, id) = (self.chunks.clone(), self.id.clone());
            let writer = self.writer;
            tokio::spawn(async move {
                let deleted = chunks.release(&released, writer, seq).await;
                tracing::trace!(volume = %id, released = released.len(), deleted, "released replaced blocks");
            });
        }
        Ok(())
    }

    /// Commits one group of flushed blocks: map entries and reference changes, conditioned on
    /// the fencing generation (waiting out a freeze).
    /// Returns the chunks whose references the group removed.
    async fn commit_group(&self, group: &[(u64, Option<ChunkHash>)]) -> Result<Vec<ChunkHash>> {
        let gen_key = keys::generation_key(&self.id);
        let gen_val = self.generation.to_string();
        let old: Vec<Option<ChunkHash>> = {
            let map = self.map.read().await;
            group.iter().map(|(i, _)| map.get(i).copied()).collect()
        };
        let mut txn = Txn::new().value_equals(&gen_key, gen_val.as_bytes()).absent(&keys::freeze_key(&self.id));
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
        let mut out = self.meta.txn(txn.clone()).await?;
        // Frozen while a snapshot or clone is cut: wait for the thaw (or the freeze's expiry).
        while out.failed_condition == Some(1) {
            wait_for_thaw(&self.meta, &self.id).await?;
            out = self.meta.txn(txn.clone()).await?;
        }
        if !out.succeeded {
            self.fenced.store(true, std::sync::atomic::Ordering::Relaxed);
            let current = current_generation(&self.meta, &self.id).await.ok().flatten();
            tracing::warn!(volume = %self.id, generation = self.generation, ?current, "attachment fenced; writes refused");
            return Err(EngineError::Fenced { volume: self.id.clone(), generation: self.generation, current });
        }
        let mut map = self.map.write().await;
        for (idx, new) in group {
            match new {
                Some(h) => map.insert(*idx, *h),
                None => map.remove(idx),
            };
        }
        let removed = group.iter().zip(old).filter(|((_, new), old)| new != old).filter_map(|(_, old)| old).collect();
        Ok(removed)
    }
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
