//! The data of files open on this client: each open inode has one [`OpenFile`] shared by its
//! handles, holding the size this client sees, written blocks not yet in the pool (dirty) and a
//! few recently read blocks. Flushing (fsync, close) puts the dirty blocks as chunks and commits
//! them with the size in the metadata service — what close-to-open consistency promises other
//! clients. A partial-block write reads the block first; blocks of zeros are stored as holes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use chunk_engine::ChunkHash;
use cluster::ChunkClient;
use fs_meta::{FsError, Namespace, Timestamp};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::writer::{PoolWriter, Ticket};

/// Dirty bytes one file may hold before its writes are flushed to the pool.
const MAX_DIRTY: usize = 64 << 20;
/// Clean blocks kept per open file for reads.
const CLEAN_BLOCKS: usize = 8;
/// Chunk puts (and gets) in flight per flush.
const PUTS_IN_FLIGHT: usize = 8;
/// Blocks fetched ahead of a sequential reader.
const READ_AHEAD: u64 = 8;
/// A block put this long ago is put again before its reference is committed: pool GC may
/// collect a chunk left unreferenced for its write window (`cluster::gc::WRITE_WINDOW`).
const STALE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(300);

/// What a flush committed: (block, its chunk, its bytes) and the chunks the commit replaced.
type Committed = (Vec<(u64, Option<ChunkHash>, Bytes)>, Vec<ChunkHash>);

/// A finished block being put in the pool while the writer goes on (write-behind).
struct Upload {
    data: Bytes,
    /// The put's number, in flight until the flush that commits it is done.
    ticket: Ticket,
    task: tokio::task::JoinHandle<Result<(Option<ChunkHash>, std::time::Instant), cluster::ClusterError>>,
}

/// What one open inode holds on this client.
pub struct OpenFile {
    pub ino: u64,
    pub state: tokio::sync::Mutex<FileState>,
    /// Handles open on it.
    pub opens: AtomicUsize,
    /// Its last name went while open: free it when the last handle closes.
    pub unlinked: AtomicBool,
}

/// The file's contents as this client sees them.
pub struct FileState {
    pub size: u64,
    /// Chunks of blocks holding data, as committed (loaded on first use).
    map: Option<BTreeMap<u64, ChunkHash>>,
    dirty: BTreeMap<u64, BytesMut>,
    /// Blocks a write finished, being put meanwhile; committed by the next flush.
    uploads: BTreeMap<u64, Upload>,
    clean: HashMap<u64, Bytes>,
    clean_order: VecDeque<u64>,
    /// Time of the last write not yet committed.
    mtime: Option<Timestamp>,
    /// Chunks being fetched ahead of a sequential reader (by hash: a chunk never changes).
    ahead: HashMap<ChunkHash, tokio::task::JoinHandle<Result<Bytes, cluster::ClusterError>>>,
    /// The block read last, to tell a sequential reader.
    last_read: Option<u64>,
    /// Moves to the next block in a row so far (read-ahead starts at two: one step from a
    /// random reader is chance).
    run: u32,
}

impl OpenFile {
    pub fn new(ino: u64, size: u64) -> OpenFile {
        OpenFile {
            ino,
            state: tokio::sync::Mutex::new(FileState {
                size,
                map: None,
                dirty: BTreeMap::new(),
                uploads: BTreeMap::new(),
                clean: HashMap::new(),
                clean_order: VecDeque::new(),
                mtime: None,
                ahead: HashMap::new(),
                last_read: None,
                run: 0,
            }),
            opens: AtomicUsize::new(0),
            unlinked: AtomicBool::new(false),
        }
    }

    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Relaxed)
    }
}

/// What a file's data operations need.
pub struct DataPath<'a> {
    pub ns: &'a Namespace,
    pub pool: &'a ChunkClient,
    /// This client as a writer that releases what its commits replace.
    pub writer: &'a Arc<PoolWriter>,
    /// Chunks read or written recently, shared by the mount's files.
    pub cache: &'a cluster::read_cache::ReadCache,
}

impl FileState {
    /// Forgets what was read, so the next read sees other clients' committed writes (an open
    /// with no local writes pending: close-to-open).
    pub fn revalidate(&mut self, size: u64) {
        if self.dirty.is_empty() && self.uploads.is_empty() {
            self.size = size;
            self.map = None;
            self.clean.clear();
            self.clean_order.clear();
            self.drop_ahead();
        }
    }

    fn drop_ahead(&mut self) {
        for (_, h) in self.ahead.drain() {
            h.abort();
        }
        self.last_read = None;
        self.run = 0;
    }

    /// Notes a read of block `idx`: one more step of a run of blocks in a row, the same block
    /// again, or a jump.
    fn step(&mut self, idx: u64) {
        match self.last_read {
            Some(l) if l + 1 == idx => self.run += 1,
            Some(l) if l == idx => {}
            None if idx == 0 => self.run = 2, // from the start: a reader of the whole file
            _ => self.run = 0,
        }
        self.last_read = Some(idx);
    }

    /// Starts fetching the blocks after `idx` when the reader goes block after block.
    fn read_ahead(&mut self, dp: &DataPath<'_>, idx: u64) {
        self.step(idx);
        if self.run < 2 {
            return;
        }
        if self.ahead.len() > 4 * READ_AHEAD as usize {
            // Fetched ahead and never read (the reader went elsewhere): let them go.
            for (_, h) in self.ahead.drain() {
                h.abort();
            }
        }
        let Some(map) = self.map.as_ref() else { return };
        let want: Vec<ChunkHash> = (idx + 1..=idx + READ_AHEAD)
            .filter(|i| !self.clean.contains_key(i) && !self.dirty.contains_key(i))
            .filter_map(|i| map.get(&i).copied())
            .filter(|h| !self.ahead.contains_key(h))
            .collect();
        for h in want {
            let pool = dp.pool.clone();
            self.ahead.insert(h, tokio::spawn(async move { pool.get(&h).await }));
        }
    }

    /// Bytes written and not yet committed (dirty or being put).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.values().map(|b| b.len()).sum::<usize>() + self.uploads.values().map(|u| u.data.len()).sum::<usize>()
    }

    /// Block `idx` as written and not yet committed, if it is.
    fn written(&self, idx: u64) -> Option<&[u8]> {
        self.dirty.get(&idx).map(|b| &b[..]).or_else(|| self.uploads.get(&idx).map(|u| &u.data[..]))
    }

    /// Starts putting a block the writer finished, so the pool works while the writer goes on.
    fn start_upload(&mut self, dp: &DataPath<'_>, idx: u64) {
        let Some(block) = self.dirty.remove(&idx) else { return };
        let data = block.freeze();
        let (pool, put) = (dp.pool.clone(), data.clone());
        let ticket = dp.writer.ticket();
        let writer = ticket.writer();
        let task = tokio::spawn(async move {
            if put.iter().all(|b| *b == 0) {
                return Ok((None, std::time::Instant::now()));
            }
            pool.put_as(put, writer).await.map(|r| (Some(r.hash), r.acked_at))
        });
        self.uploads.insert(idx, Upload { data, ticket, task });
    }

    async fn map<'s>(&'s mut self, dp: &DataPath<'_>, ino: u64) -> Result<&'s BTreeMap<u64, ChunkHash>, FsError> {
        if self.map.is_none() {
            let all = dp.ns.block_map(ino, 0, u64::MAX).await?;
            self.map = Some(all.into_iter().collect());
        }
        Ok(self.map.as_ref().expect("loaded"))
    }

    /// Block `idx` as committed (zeros for a hole), `bs` bytes.
    async fn committed_block(&mut self, dp: &DataPath<'_>, ino: u64, idx: u64) -> Result<Bytes, FsError> {
        if let Some(b) = self.clean.get(&idx) {
            return Ok(b.clone());
        }
        let bs = dp.ns.block_size() as usize;
        let hash = self.map(dp, ino).await?.get(&idx).copied();
        let data = match hash {
            Some(h) => {
                let fetched = match (dp.cache.get(&h), self.ahead.remove(&h)) {
                    (Some(d), _) => Ok(d),
                    (None, Some(task)) => {
                        task.await.unwrap_or_else(|e| Err(cluster::ClusterError::Unavailable(e.to_string())))
                    }
                    (None, None) => dp.pool.get(&h).await,
                };
                if let Ok(d) = &fetched {
                    dp.cache.insert(h, d.clone());
                }
                let mut d = match fetched {
                    Ok(d) => d,
                    // Another client replaced the block and released its old chunk since this
                    // client read the map: read the block as it is now.
                    Err(cluster::ClusterError::NotFound(_)) if self.moved_on(dp, ino, idx, h).await? => {
                        return Box::pin(self.committed_block(dp, ino, idx)).await;
                    }
                    Err(e) => return Err(e.into()),
                };
                if d.len() < bs {
                    let mut full = BytesMut::zeroed(bs);
                    full[..d.len()].copy_from_slice(&d);
                    d = full.freeze();
                }
                d
            }
            None => Bytes::from(vec![0u8; bs]),
        };
        self.clean.insert(idx, data.clone());
        self.clean_order.push_back(idx);
        while self.clean_order.len() > CLEAN_BLOCKS {
            if let Some(old) = self.clean_order.pop_front() {
                self.clean.remove(&old);
            }
        }
        self.read_ahead(dp, idx);
        Ok(data)
    }

    /// Whether block `idx` no longer holds chunk `h` in the committed map (re-read; the cached
    /// map is brought up to date for it).
    async fn moved_on(&mut self, dp: &DataPath<'_>, ino: u64, idx: u64, h: ChunkHash) -> Result<bool, FsError> {
        let now = dp.ns.block_map(ino, idx, idx + 1).await?.first().map(|(_, h)| *h);
        if let Some(map) = self.map.as_mut() {
            match now {
                Some(n) => map.insert(idx, n),
                None => map.remove(&idx),
            };
        }
        Ok(now != Some(h))
    }

    /// Bytes `from..to` of committed block `idx`. A reader going block after block gets whole
    /// blocks (kept, and the next ones fetched ahead); any other read of a block not at hand
    /// reads only about the bytes it asks for from the pool (a ranged read of the chunk), so a
    /// random 4 KiB read costs about 4 KiB rather than the block.
    async fn committed_part(
        &mut self,
        dp: &DataPath<'_>,
        ino: u64,
        idx: u64,
        from: usize,
        to: usize,
    ) -> Result<Bytes, FsError> {
        // Whole blocks once the reader has gone on to the next block twice in a row (a reader
        // going through a block in pieces reads it in parts until then).
        self.step(idx);
        if self.run >= 2 || self.clean.contains_key(&idx) {
            return Ok(self.committed_block(dp, ino, idx).await?.slice(from..to));
        }
        let Some(h) = self.map(dp, ino).await?.get(&idx).copied() else {
            return Ok(Bytes::from(vec![0u8; to - from]));
        };
        if self.ahead.contains_key(&h) {
            return Ok(self.committed_block(dp, ino, idx).await?.slice(from..to));
        }
        let data = match dp.cache.get(&h) {
            Some(whole) => Ok(whole.slice(from.min(whole.len())..to.min(whole.len()))),
            None => dp.pool.get_range(&h, from as u64, (to - from) as u64).await,
        };
        let data = match data {
            Ok(d) => d,
            Err(cluster::ClusterError::NotFound(_)) if self.moved_on(dp, ino, idx, h).await? => {
                return Box::pin(self.committed_part(dp, ino, idx, from, to)).await;
            }
            Err(e) => return Err(e.into()),
        };
        if data.len() == to - from {
            return Ok(data);
        }
        // The chunk ends before the block does: the rest of the block is zeros.
        let mut full = BytesMut::zeroed(to - from);
        full[..data.len()].copy_from_slice(&data);
        Ok(full.freeze())
    }

    /// Reads up to `len` bytes at `offset` (short at the end of the file).
    pub async fn read(&mut self, dp: &DataPath<'_>, ino: u64, offset: u64, len: u64) -> Result<Bytes, FsError> {
        let end = (offset + len).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let bs = dp.ns.block_size();
        let (first, last) = (offset / bs, (end - 1) / bs);
        if first == last {
            let from = (offset - first * bs) as usize;
            let to = (end - first * bs) as usize;
            if let Some(d) = self.written(first) {
                return Ok(Bytes::copy_from_slice(&d[from..to]));
            }
            return self.committed_part(dp, ino, first, from, to).await;
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for idx in first..=last {
            let from = if idx == first { (offset - idx * bs) as usize } else { 0 };
            let to = if idx == last { (end - idx * bs) as usize } else { bs as usize };
            if let Some(d) = self.written(idx) {
                out.extend_from_slice(&d[from..to]);
            } else {
                out.extend_from_slice(&self.committed_block(dp, ino, idx).await?[from..to]);
            }
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset` into dirty blocks; a block the write finishes starts on its way
    /// to the pool at once; flushes when too much is uncommitted.
    pub async fn write(&mut self, dp: &DataPath<'_>, ino: u64, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let bs = dp.ns.block_size();
        let mut at = offset;
        let mut rest = data;
        let mut finished = Vec::new();
        while !rest.is_empty() {
            let idx = at / bs;
            let within = (at - idx * bs) as usize;
            let n = rest.len().min(bs as usize - within);
            if within == 0 && n == bs as usize {
                // A whole block: copied in once, whatever was there (or being put) is moot.
                if let Some(up) = self.uploads.remove(&idx) {
                    up.task.abort();
                }
                self.dirty.insert(idx, BytesMut::from(&rest[..n]));
            } else {
                if !self.dirty.contains_key(&idx) {
                    let buf = if let Some(up) = self.uploads.remove(&idx) {
                        // Written again while being put: that put is moot.
                        up.task.abort();
                        BytesMut::from(&up.data[..])
                    } else if idx * bs >= self.size {
                        BytesMut::zeroed(bs as usize)
                    } else {
                        BytesMut::from(&self.committed_block(dp, ino, idx).await?[..])
                    };
                    self.dirty.insert(idx, buf);
                }
                let block = self.dirty.get_mut(&idx).expect("inserted");
                block[within..within + n].copy_from_slice(&rest[..n]);
            }
            self.clean.remove(&idx);
            if within + n == bs as usize {
                finished.push(idx);
            }
            at += n as u64;
            rest = &rest[n..];
        }
        self.size = self.size.max(offset + data.len() as u64);
        self.mtime = Some(Timestamp::now());
        for idx in finished {
            self.start_upload(dp, idx);
        }
        if self.dirty_bytes() > MAX_DIRTY {
            self.flush(dp, ino).await?;
        }
        Ok(())
    }

    /// Puts the dirty blocks in the pool (and waits for the blocks being put) and commits them
    /// with the size. On failure nothing is lost: every block stays written, to be flushed again.
    pub async fn flush(&mut self, dp: &DataPath<'_>, ino: u64) -> Result<(), FsError> {
        let Some(mtime) = self.mtime else {
            return Ok(());
        };
        let bs = dp.ns.block_size();
        let size = self.size;
        // (index, bytes, the chunk already put for them if still good)
        let mut blocks: Vec<(u64, Bytes, Option<Option<ChunkHash>>)> = Vec::new();
        for (idx, b) in self.dirty.iter().filter(|(idx, _)| **idx * bs < size) {
            // The last block keeps only the bytes inside the file: the rest is zero anyway.
            let keep = ((size - idx * bs).min(bs)) as usize;
            let mut b = b.clone();
            b[keep..].fill(0);
            blocks.push((*idx, b.freeze(), None));
        }
        let uploads = std::mem::take(&mut self.uploads);
        let mut uploaded = Vec::new();
        // Every put this flush commits stays in flight until the commit is done.
        let mut tickets: Vec<Ticket> = Vec::new();
        for (idx, up) in uploads {
            uploaded.push(idx);
            tickets.push(up.ticket);
            let put = match up.task.await {
                Ok(Ok((h, at))) if at.elapsed() < STALE_UPLOAD => Some(h),
                _ => None, // failed, cut short, or too old for the GC window: put again
            };
            if idx * bs >= size {
                continue;
            }
            let keep = ((size - idx * bs).min(bs)) as usize;
            if keep < bs as usize && up.data[keep..].iter().any(|b| *b != 0) {
                let mut b = BytesMut::from(&up.data[..]);
                b[keep..].fill(0);
                blocks.push((idx, b.freeze(), None));
            } else {
                blocks.push((idx, up.data, put));
            }
        }
        blocks.sort_by_key(|b| b.0);
        let (pool, writer) = (dp.pool, dp.writer);
        let mut jobs = Vec::with_capacity(blocks.len());
        for (idx, data, done) in &blocks {
            let mut w = None;
            if done.is_none() && data.iter().any(|b| *b != 0) {
                let t = writer.ticket();
                w = Some(t.writer());
                tickets.push(t);
            }
            jobs.push((*idx, data.clone(), *done, w));
        }
        let result: Result<Committed, FsError> = async {
            let put: Vec<(u64, Option<ChunkHash>, Bytes)> = stream::iter(jobs)
                .map(|(idx, data, done, w)| async move {
                    if let Some(h) = done {
                        return Ok::<_, FsError>((idx, h, data));
                    }
                    match w {
                        None => Ok((idx, None, data)),
                        Some(w) => Ok((idx, Some(pool.put_as(data.clone(), w).await?.hash), data)),
                    }
                })
                .buffered(PUTS_IN_FLIGHT)
                .try_collect()
                .await?;
            let commits: Vec<(u64, Option<ChunkHash>)> = put.iter().map(|(i, h, _)| (*i, *h)).collect();
            let (_, replaced) = dp.ns.commit_blocks(ino, &commits, size, mtime).await?;
            Ok((put, replaced))
        }
        .await;
        let (put, replaced) = match result {
            Ok(p) => p,
            Err(e) => {
                // The blocks that were being put are written data still: keep them.
                for (idx, data, _) in blocks.into_iter().filter(|b| uploaded.contains(&b.0)) {
                    self.dirty.insert(idx, BytesMut::from(&data[..]));
                }
                crate::writer::hold_after_failure(tickets);
                return Err(e);
            }
        };
        drop(tickets);
        let kept: std::collections::HashSet<ChunkHash> = put.iter().filter_map(|(_, h, _)| *h).collect();
        writer.release(pool, replaced.into_iter().filter(|h| !kept.contains(h)).collect());
        for (idx, h, data) in put {
            if let Some(h) = h {
                // What was just written is what is read next (a database re-reads its pages).
                dp.cache.insert(h, data.clone());
            }
            // A map not loaded yet will be read with these commits in it.
            if let Some(map) = self.map.as_mut() {
                match h {
                    Some(h) => map.insert(idx, h),
                    None => map.remove(&idx),
                };
            }
            self.clean.insert(idx, data);
            self.clean_order.push_back(idx);
        }
        while self.clean_order.len() > CLEAN_BLOCKS {
            if let Some(old) = self.clean_order.pop_front() {
                self.clean.remove(&old);
            }
        }
        self.dirty.clear();
        self.mtime = None;
        Ok(())
    }

    /// Sets the size (after flushing): blocks past the end go, the bytes of the last block past
    /// the end become zeros.
    pub async fn truncate(&mut self, dp: &DataPath<'_>, ino: u64, size: u64) -> Result<(), FsError> {
        self.flush(dp, ino).await?;
        let bs = dp.ns.block_size();
        let mut tail = None;
        if size < self.size && !size.is_multiple_of(bs) {
            let idx = size / bs;
            if self.map(dp, ino).await?.contains_key(&idx) {
                let mut b = BytesMut::from(&self.committed_block(dp, ino, idx).await?[..]);
                b[(size % bs) as usize..].fill(0);
                let b = b.freeze();
                if b.iter().all(|x| *x == 0) {
                    tail = Some((idx, None, None));
                } else {
                    // In flight until the truncate that commits it is done.
                    let ticket = dp.writer.ticket();
                    let h = dp.pool.put_as(b, ticket.writer()).await?.hash;
                    tail = Some((idx, Some(h), Some(ticket)));
                }
            }
        }
        let result = dp.ns.truncate(ino, size, tail.as_ref().map(|(i, h, _)| (*i, *h))).await;
        let tickets: Vec<Ticket> = tail.and_then(|t| t.2).into_iter().collect();
        match result {
            Ok(replaced) => {
                drop(tickets);
                dp.writer.release(dp.pool, replaced);
            }
            Err(e) => {
                crate::writer::hold_after_failure(tickets);
                return Err(e);
            }
        }
        self.size = size;
        self.map = None;
        self.drop_ahead();
        self.clean.clear();
        self.clean_order.clear();
        Ok(())
    }

    /// Zeroes `len` bytes at `offset` within the file (punch hole / zero range).
    pub async fn zero_range(&mut self, dp: &DataPath<'_>, ino: u64, offset: u64, len: u64) -> Result<(), FsError> {
        let end = (offset + len).min(self.size);
        if offset >= end {
            return Ok(());
        }
        let zeros = vec![0u8; (end - offset).min(1 << 20) as usize];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write(dp, ino, at, &zeros[..n]).await?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Open files of this client by inode.
#[derive(Default)]
pub struct OpenFiles {
    files: std::sync::Mutex<HashMap<u64, Arc<OpenFile>>>,
}

impl OpenFiles {
    /// The open state of `ino`, made with `size` if it is not open yet; counts one more open.
    pub fn open(&self, ino: u64, size: u64) -> Arc<OpenFile> {
        let mut files = self.files.lock().expect("files lock");
        let f = files.entry(ino).or_insert_with(|| Arc::new(OpenFile::new(ino, size))).clone();
        f.opens.fetch_add(1, Ordering::Relaxed);
        f
    }

    pub fn get(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("files lock").get(&ino).cloned()
    }

    /// Counts one open less; returns the file when it was the last.
    pub fn close(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let mut files = self.files.lock().expect("files lock");
        let f = files.get(&ino)?.clone();
        if f.opens.fetch_sub(1, Ordering::Relaxed) == 1 {
            files.remove(&ino);
            return Some(f);
        }
        None
    }

    pub fn all(&self) -> Vec<Arc<OpenFile>> {
        self.files.lock().expect("files lock").values().cloned().collect()
    }
}
