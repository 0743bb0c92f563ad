//! The chunk engine: opening and recovering a data directory, put, get, references, listing.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use kv_engine::{KvEngine, RocksEngine, WriteBatch, for_each_in_range, prefix_end};

use crate::aligned::{AlignedBuf, BufPools};
use crate::commit::{Committer, Op, OpResult, Reply, Request};
use crate::format::{PinnedSettings, format_or_check};
use crate::fsutil::{fs_capacity, sync_dir};
use crate::index::{CHUNK_PREFIX, IndexEntry, Location, chunk_key, hash_of_key};
use crate::lanes::{DIRECT_LANE, SMALL_LANE, SegmentSet};
use crate::record::{HEADER_LEN, RecordHeader, record_span};
use crate::segment::{DIRECT_ALIGN, SEGMENT_HEADER_LEN, Segment, parse_segment_name};
use crate::stats::{Accounting, Counters, EngineStats, bump};
use crate::{ChunkError, ChunkHash, DEFAULT_MAX_CHUNK_SIZE};

/// Largest maximum chunk size a data directory may be formatted with.
const MAX_CHUNK_SIZE_LIMIT: u32 = 64 << 20;

/// How to open a data directory.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (FORMAT file, `index/`, `segments/`).
    pub dir: PathBuf,
    /// Largest chunk, in bytes; pinned when the directory is formatted.
    pub max_chunk_size: u32,
    /// A segment is sealed and a new one started when it would grow past this many bytes.
    pub segment_size: u64,
    /// Write large records with O_DIRECT (falls back to buffered I/O where unsupported).
    pub direct_io: bool,
    /// Chunks of at least this many bytes go to O_DIRECT segments, smaller ones to buffered ones.
    pub direct_min_len: u32,
    /// GC rewrites sealed segments whose live fraction is below this (0.0–1.0).
    pub gc_live_threshold: f64,
    /// Dead bytes in sealed segments may reach this fraction of the live bytes; past it
    /// [`ChunkEngine::gc_due`] says a pass is due and GC also rewrites the emptiest sealed
    /// segments (whatever their live fraction) until the dead bytes left are under half of it
    /// (so passes are not run for every few dead bytes). 0: no such bound.
    pub gc_max_dead_ratio: f64,
}

impl EngineConfig {
    /// Defaults for a data directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            dir: dir.into(),
            max_chunk_size: DEFAULT_MAX_CHUNK_SIZE,
            segment_size: 64 << 20,
            direct_io: true,
            direct_min_len: 64 << 10,
            gc_live_threshold: 0.5,
            gc_max_dead_ratio: 0.2,
        }
    }

    /// Checks the settings; the error is one readable line.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_chunk_size == 0 || self.max_chunk_size > MAX_CHUNK_SIZE_LIMIT {
            return Err(format!(
                "max_chunk_size must be between 1 and {MAX_CHUNK_SIZE_LIMIT} bytes, got {}",
                self.max_chunk_size
            ));
        }
        if self.segment_size < (1 << 20) {
            return Err(format!("segment_size must be at least 1 MiB, got {}", self.segment_size));
        }
        if !(0.0..=1.0).contains(&self.gc_live_threshold) {
            return Err(format!("gc_live_threshold must be within 0.0..=1.0, got {}", self.gc_live_threshold));
        }
        if !(self.gc_max_dead_ratio == 0.0 || (0.05..=10.0).contains(&self.gc_max_dead_ratio)) {
            return Err(format!("gc_max_dead_ratio must be 0 (off) or within 0.05..=10, got {}", self.gc_max_dead_ratio));
        }
        Ok(())
    }
}

/// The bytes of a record to append.
pub(crate) enum RecordData<'a> {
    /// The chunk itself.
    Slice(&'a [u8]),
    /// An aligned write buffer holding the chunk's `len` bytes after the header space (from
    /// `hash_for_put`).
    Prepared(AlignedBuf, usize),
}

impl RecordData<'_> {
    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// The chunk's bytes.
    fn bytes(&self) -> &[u8] {
        match self {
            RecordData::Slice(d) => d,
            RecordData::Prepared(buf, len) => &buf.as_ref()[HEADER_LEN..HEADER_LEN + len],
        }
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The chunk's name.
    pub hash: ChunkHash,
    /// True when the chunk was already stored and only a reference was added.
    pub deduplicated: bool,
    /// References after the put.
    pub refs: u64,
}

/// What the index says about one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Length in bytes.
    pub len: u32,
    /// Reference count.
    pub refs: u64,
    /// The stored copy failed verification; it must be re-put (repair) before it can be read.
    pub quarantined: bool,
}

/// A chunk store on one local data directory. Cheap to share behind an `Arc`; all methods block.
pub struct ChunkEngine {
    pub(crate) cfg: EngineConfig,
    pub(crate) kv: Arc<dyn KvEngine>,
    pub(crate) segs: Arc<SegmentSet>,
    pub(crate) acct: Arc<Mutex<Accounting>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) gc_lock: Mutex<()>,
    tx: RwLock<Option<Sender<Request>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    buf_pool: BufPools,
    io_gate: Arc<RwLock<()>>,
    /// Group CVs computed for ranged reads (from verified copies), so the next reader that asks
    /// for them does not make the whole chunk read again.
    cvs: Mutex<crate::cv_cache::CvCache>,
}

impl ChunkEngine {
    /// Opens `cfg.dir`, formatting it when empty, and recovers from any crash: index entries are
    /// the truth, record bytes past the last indexed record of a segment are cut off, segments
    /// with a torn header are removed, and new records always go to fresh segments.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>, ChunkError> {
        cfg.validate().map_err(ChunkError::FormatMismatch)?;
        let dir = cfg.dir.clone();
        let seg_dir = dir.join("segments");
        for d in [&dir, &seg_dir] {
            fs::create_dir_all(d).map_err(|e| ChunkError::io(format!("create {}", d.display()), e))?;
        }
        format_or_check(&dir, &PinnedSettings::current(cfg.max_chunk_size))?;
        let kv: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&dir.join("index"))?);
        Self::open_on(cfg, kv)
    }

    /// [`open`](Self::open) on a given index store (tests wrap RocksDB to inject failures).
    pub(crate) fn open_on(cfg: EngineConfig, kv: Arc<dyn KvEngine>) -> Result<Arc<Self>, ChunkError> {
        let dir = cfg.dir.clone();
        let seg_dir = dir.join("segments");

        let (segments, broken, max_id) = open_segments(&seg_dir, cfg.direct_io)?;
        let mut acct = Accounting::default();
        let mut max_end: HashMap<u64, u64> = HashMap::new();
        let mut lost = WriteBatch::new();
        for_each_in_range(&*kv, CHUNK_PREFIX, prefix_end(CHUNK_PREFIX).as_deref(), 4096, |k, v| {
            let mut e = IndexEntry::decode(v).map_err(|e| kv_engine::KvError::Backend(e.to_string()))?;
            acct.chunks += 1;
            acct.physical += e.loc.len as u64;
            acct.logical += e.loc.len as u64 * e.refs;
            if e.quarantined {
                return Ok(());
            }
            match segments.get(&e.loc.seg) {
                Some(seg) => {
                    let span = record_span(e.loc.len, seg.align);
                    acct.seg(seg.id).live += span;
                    let end = max_end.entry(seg.id).or_default();
                    *end = (*end).max(e.loc.off + span);
                }
                None => {
                    tracing::error!(chunk = %hex::encode(&k[1..]), segment = e.loc.seg, "segment file missing; chunk quarantined");
                    e.quarantined = true;
                    lost.put(k.to_vec(), e.encode());
                }
            }
            Ok(())
        })?;
        if !lost.is_empty() {
            kv.write(lost, true)?;
        }
        for path in broken {
            tracing::warn!(path = %path.display(), "removing segment with a torn header (crash while it was created)");
            fs::remove_file(&path).map_err(|e| ChunkError::io(format!("remove {}", path.display()), e))?;
            sync_dir(&seg_dir)?;
        }
        for seg in segments.values() {
            let end = max_end.get(&seg.id).copied().unwrap_or(SEGMENT_HEADER_LEN).max(SEGMENT_HEADER_LEN);
            let len = seg.file_len()?;
            if len > end {
                tracing::info!(segment = seg.id, dropped = len - end, "dropping unacknowledged tail of segment");
                seg.truncate(end)?;
            }
            let s = acct.seg(seg.id);
            s.size = end;
            s.align = seg.align;
        }

        let acct = Arc::new(Mutex::new(acct));
        let segs = Arc::new(SegmentSet::new(seg_dir, cfg.segment_size, cfg.direct_io, segments, max_id, acct.clone()));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = channel();
        let io_gate = Arc::new(RwLock::new(()));
        let committer = Committer {
            kv: kv.clone(),
            segs: segs.clone(),
            acct: acct.clone(),
            counters: counters.clone(),
            io_gate: io_gate.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("chunk-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| ChunkError::io("spawn commit thread", e))?;
        Ok(Arc::new(ChunkEngine {
            kv,
            segs,
            acct,
            counters,
            gc_lock: Mutex::new(()),
            tx: RwLock::new(Some(tx)),
            committer: Mutex::new(Some(handle)),
            buf_pool: BufPools::new(record_span(cfg.max_chunk_size, DIRECT_ALIGN) as usize),
            cvs: Mutex::new(crate::cv_cache::CvCache::new(crate::cv_cache::CV_CACHE_BYTES)),
            io_gate,
            cfg,
        }))
    }

    /// The settings this engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Stores `data` (durably) and returns its hash; an existing chunk only gains a reference.
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome, ChunkError> {
        self.put_pieces(None, &[data])
    }

    /// Like [`put`](Self::put), but refuses data whose hash is not `claimed`.
    pub fn put_verified(&self, claimed: &ChunkHash, data: &[u8]) -> Result<PutOutcome, ChunkError> {
        self.put_pieces(Some(claimed), &[data])
    }

    /// Stores the chunk made of `pieces` in order (as a network stream delivers it), refusing it
    /// when `claimed` is given and differs from its hash. The pieces are hashed and copied into
    /// the write buffer in one pass; they are never joined first.
    pub fn put_pieces(&self, claimed: Option<&ChunkHash>, pieces: &[&[u8]]) -> Result<PutOutcome, ChunkError> {
        let len = pieces.iter().map(|p| p.len()).sum();
        self.check_len(len)?;
        let (actual, prepared) = self.hash_for_put(pieces, len);
        if let Some(claimed) = claimed
            && actual != *claimed
        {
            if let Some(buf) = prepared {
                self.give_buf(buf);
            }
            return Err(ChunkError::HashMismatch { claimed: *claimed, actual });
        }
        self.put_hashed(actual, pieces, len, prepared)
    }

    fn goes_direct(&self, len: usize) -> bool {
        self.cfg.direct_io && len >= self.cfg.direct_min_len as usize
    }

    /// Hashes a chunk for a put. Chunks bound for O_DIRECT segments are copied into an aligned
    /// write buffer and hashed in the same pass, each piece while it is still in cache, so the
    /// data crosses the memory bus once instead of twice.
    fn hash_for_put(&self, pieces: &[&[u8]], len: usize) -> (ChunkHash, Option<AlignedBuf>) {
        const PIECE: usize = 64 << 10;
        let mut hasher = blake3::Hasher::new();
        if !self.goes_direct(len) {
            pieces.iter().for_each(|p| {
                hasher.update(p);
            });
            return (ChunkHash(*hasher.finalize().as_bytes()), None);
        }
        let mut buf = self.take_buf(record_span(len as u32, DIRECT_ALIGN) as usize);
        let mut dst = &mut buf.as_mut_slice()[HEADER_LEN..HEADER_LEN + len];
        for piece in pieces {
            let (here, rest) = dst.split_at_mut(piece.len());
            for (src, d) in piece.chunks(PIECE).zip(here.chunks_mut(PIECE)) {
                d.copy_from_slice(src);
                hasher.update(d);
            }
            dst = rest;
        }
        (ChunkHash(*hasher.finalize().as_bytes()), Some(buf))
    }

    fn check_len(&self, len: usize) -> Result<(), ChunkError> {
        if len > self.cfg.max_chunk_size as usize {
            return Err(ChunkError::TooLarge { len, max: self.cfg.max_chunk_size });
        }
        Ok(())
    }

    fn put_hashed(
        &self,
        hash: ChunkHash,
        pieces: &[&[u8]],
        len: usize,
        prepared: Option<AlignedBuf>,
    ) -> Result<PutOutcome, ChunkError> {
        bump(&self.counters.puts, 1);
        bump(&self.counters.put_bytes, len as u64);
        let Some(prepared) = prepared else {
            // Small chunk: the committer checks for a stored copy and writes the record itself,
            // together with the rest of its batch in one write.
            return match self.commit_one(Op::InsertSmall { hash, data: pieces.concat() })? {
                OpResult::Inserted { dedup, refs } => {
                    if dedup {
                        bump(&self.counters.dedup_hits, 1);
                    }
                    Ok(PutOutcome { hash, deduplicated: dedup, refs })
                }
                other => unreachable!("insert answered {other:?}"),
            };
        };
        if matches!(self.entry(&hash)?, Some(e) if !e.quarantined)
            && let OpResult::Refs(refs) = self.commit_one(Op::AddRef { hash, healthy_only: true })?
        {
            bump(&self.counters.dedup_hits, 1);
            self.give_buf(prepared);
            return Ok(PutOutcome { hash, deduplicated: true, refs });
        }
        // The record is written and its commit queued under the I/O gate: the committer closes
        // the gate before it syncs, so every write that finished is in its batch and no write
        // competes with the sync (see `commit`).
        let gate = self.io_gate.read().expect("io gate");
        let (seg, loc) = self.append(&hash, RecordData::Prepared(prepared, len))?;
        let queued = self.submit(vec![Op::Insert { hash, loc, seg: seg.clone() }]);
        drop(gate);
        let res = queued.and_then(wait_reply).map(|mut r| r.pop().expect("one result per op"));
        seg.inflight.fetch_sub(1, Ordering::AcqRel);
        match res? {
            OpResult::Inserted { dedup, refs } => {
                if dedup {
                    bump(&self.counters.dedup_hits, 1);
                }
                Ok(PutOutcome { hash, deduplicated: dedup, refs })
            }
            other => unreachable!("insert answered {other:?}"),
        }
    }

    /// Appends a record to the active segment of the right lane; the caller must commit an
    /// operation for it and then decrement the segment's `inflight`.
    pub(crate) fn append(
        &self,
        hash: &ChunkHash,
        data: RecordData<'_>,
    ) -> Result<(Arc<Segment>, Location), ChunkError> {
        let len = data.len();
        let lane = if self.goes_direct(len) { DIRECT_LANE } else { SMALL_LANE };
        let span = record_span(len as u32, self.segs.align(lane));
        let (seg, off) = self.segs.reserve(lane, span)?;
        let header = RecordHeader { len: len as u32, hash: *hash };
        let written = if seg.align == DIRECT_ALIGN {
            let mut buf = match data {
                RecordData::Prepared(buf, _) => buf,
                RecordData::Slice(d) => {
                    let mut buf = self.take_buf(span as usize);
                    buf.as_mut_slice()[HEADER_LEN..HEADER_LEN + len].copy_from_slice(d);
                    buf
                }
            };
            let b = buf.as_mut_slice();
            header.encode(&mut b[..HEADER_LEN]);
            b[HEADER_LEN + len..span as usize].fill(0);
            let r = seg.write_at(&buf.as_ref()[..span as usize], off);
            self.give_buf(buf);
            r
        } else {
            let mut b = vec![0u8; span as usize];
            header.encode(&mut b[..HEADER_LEN]);
            b[HEADER_LEN..HEADER_LEN + len].copy_from_slice(data.bytes());
            seg.write_at(&b, off)
        };
        if let Err(e) = written {
            seg.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        let loc = Location { seg: seg.id, off, len: len as u32 };
        Ok((seg, loc))
    }

    fn take_buf(&self, len: usize) -> AlignedBuf {
        self.buf_pool.take(len)
    }

    fn give_buf(&self, buf: AlignedBuf) {
        self.buf_pool.give(buf);
    }

    /// Reads and verifies a chunk. A copy that fails verification is quarantined and reported as
    /// [`ChunkError::Corrupt`]; its bytes are never returned.
    pub fn get(&self, hash: &ChunkHash) -> Result<Bytes, ChunkError> {
        self.read_chunk(hash, true)
    }

    /// Reads a chunk for a receiver that verifies it before storing it (a repair copy to another
    /// node): the record header is checked but the data is not hashed here, which would be done
    /// twice otherwise. When the receiver refuses the data, [`get`](Self::get) checks this copy
    /// (and quarantines it if it is bad).
    pub fn get_for_copy(&self, hash: &ChunkHash) -> Result<Bytes, ChunkError> {
        self.read_chunk(hash, false)
    }

    /// Reads bytes `off..off + len` of a chunk (cut at its end) and its length, reading only
    /// the disk blocks they span and verifying nothing: the caller checks them against the
    /// chunk's group CVs ([`crate::tree`]) and, when they fail, reads the chunk whole with
    /// [`get`](Self::get), which verifies (and quarantines a damaged copy).
    pub fn read_range(&self, hash: &ChunkHash, off: u64, len: u64) -> Result<(u32, Bytes), ChunkError> {
        let e = self.entry(hash)?.ok_or(ChunkError::NotFound(*hash))?;
        if e.quarantined {
            return Err(quarantined(hash));
        }
        let total = e.loc.len as u64;
        let (start, end) = (off.min(total), off.saturating_add(len).min(total));
        let Some(seg) = self.segment(e.loc.seg) else {
            return Err(ChunkError::Corrupt { hash: *hash, detail: format!("segment {} is missing", e.loc.seg) });
        };
        let from = e.loc.off + HEADER_LEN as u64 + start;
        let to = e.loc.off + HEADER_LEN as u64 + end;
        let align = seg.align.max(1);
        let first = from / align * align;
        let raw = seg.read_at(first, to.next_multiple_of(align) - first, &self.buf_pool)?;
        bump(&self.counters.gets, 1);
        bump(&self.counters.get_bytes, end - start);
        Ok((e.loc.len, raw.slice((from - first) as usize..(to - first) as usize)))
    }

    /// A chunk's group CVs ([`crate::tree`]) and its length, from the whole chunk read once and
    /// verified by them (a copy that fails is quarantined, as by [`get`](Self::get)); kept in
    /// memory (bounded) for the next reader.
    pub fn group_cvs(&self, hash: &ChunkHash) -> Result<(u32, Vec<crate::tree::Cv>), ChunkError> {
        if let Some(cvs) = self.cvs.lock().expect("cv cache lock").get(hash)
            && let Some(e) = self.entry(hash)?
            && !e.quarantined
        {
            return Ok((e.loc.len, cvs.to_vec()));
        }
        let data = self.read_chunk(hash, false)?;
        let cvs = crate::tree::group_cvs(&data);
        let good = if cvs.is_empty() {
            ChunkHash::of(&data) == *hash
        } else {
            crate::tree::root_of(&cvs, data.len() as u64) == Some(*hash)
        };
        if !good {
            // Verify it the usual way: that quarantines the copy and says what is wrong.
            self.get(hash)?;
        }
        self.cvs.lock().expect("cv cache lock").insert(*hash, cvs.clone());
        Ok((data.len() as u32, cvs))
    }

    fn read_chunk(&self, hash: &ChunkHash, hash_data: bool) -> Result<Bytes, ChunkError> {
        for _ in 0..4 {
            let e = self.entry(hash)?.ok_or(ChunkError::NotFound(*hash))?;
            if e.quarantined {
                return Err(quarantined(hash));
            }
            match self.read_record(hash, &e.loc, hash_data)? {
                Ok(data) => {
                    bump(&self.counters.gets, 1);
                    bump(&self.counters.get_bytes, data.len() as u64);
                    return Ok(data);
                }
                Err(detail) => {
                    if self.entry(hash)?.map(|n| n.loc) != Some(e.loc) {
                        continue; // moved by GC while we read: read the new copy
                    }
                    self.quarantine(hash, e.loc, &detail)?;
                    return Err(ChunkError::Corrupt { hash: *hash, detail });
                }
            }
        }
        Err(ChunkError::NotFound(*hash))
    }

    /// Reads the record at `loc` and checks header and hash. Inner `Err` is a verification
    /// failure (what was wrong); outer `Err` an I/O error.
    pub(crate) fn read_verified(&self, hash: &ChunkHash, loc: &Location) -> Result<Result<Bytes, String>, ChunkError> {
        self.read_record(hash, loc, true)
    }

    /// [`read_verified`](Self::read_verified), hashing the data only with `hash_data`.
    fn read_record(
        &self,
        hash: &ChunkHash,
        loc: &Location,
        hash_data: bool,
    ) -> Result<Result<Bytes, String>, ChunkError> {
        let Some(seg) = self.segment(loc.seg) else {
            return Ok(Err(format!("segment {} is missing", loc.seg)));
        };
        let span = record_span(loc.len, seg.align);
        let raw = seg.read_at(loc.off, span, &self.buf_pool)?;
        let header = match RecordHeader::decode(&raw) {
            Ok(h) => h,
            Err(why) => return Ok(Err(format!("segment {} offset {}: {why}", loc.seg, loc.off))),
        };
        if header.hash != *hash || header.len != loc.len {
            return Ok(Err(format!("segment {} offset {}: record belongs to another chunk", loc.seg, loc.off)));
        }
        let data = raw.slice(HEADER_LEN..HEADER_LEN + loc.len as usize);
        if !hash_data {
            return Ok(Ok(data));
        }
        let actual = ChunkHash::of(&data);
        if actual != *hash {
            return Ok(Err(format!("segment {} offset {}: data hashes to {actual}", loc.seg, loc.off)));
        }
        Ok(Ok(data))
    }

    pub(crate) fn quarantine(&self, hash: &ChunkHash, loc: Location, detail: &str) -> Result<(), ChunkError> {
        bump(&self.counters.corruptions, 1);
        tracing::error!(chunk = %hash, %detail, "chunk failed verification; quarantined");
        self.commit_one(Op::Quarantine { hash: *hash, loc })?;
        Ok(())
    }

    /// The index entry of a chunk, if any.
    pub fn info(&self, hash: &ChunkHash) -> Result<Option<ChunkInfo>, ChunkError> {
        Ok(self.entry(hash)?.map(|e| ChunkInfo { len: e.loc.len, refs: e.refs, quarantined: e.quarantined }))
    }

    /// Adds a reference to a stored chunk and returns the new count.
    pub fn add_ref(&self, hash: &ChunkHash) -> Result<u64, ChunkError> {
        match self.commit_one(Op::AddRef { hash: *hash, healthy_only: false })? {
            OpResult::Refs(n) => Ok(n),
            _ => Err(ChunkError::NotFound(*hash)),
        }
    }

    /// Drops a reference and returns the count left; at 0 the chunk is gone (its space is
    /// reclaimed by GC).
    pub fn unref(&self, hash: &ChunkHash) -> Result<u64, ChunkError> {
        match self.commit_one(Op::Unref { hash: *hash })? {
            OpResult::Refs(n) => Ok(n),
            _ => Err(ChunkError::NotFound(*hash)),
        }
    }

    /// Up to `limit` chunks in hash order, starting after `after`.
    pub fn list(&self, after: Option<&ChunkHash>, limit: usize) -> Result<Vec<(ChunkHash, ChunkInfo)>, ChunkError> {
        let start = match after {
            Some(h) => {
                let mut k = chunk_key(h);
                k.push(0);
                k
            }
            None => CHUNK_PREFIX.to_vec(),
        };
        let end = prefix_end(CHUNK_PREFIX);
        self.kv
            .scan(&start, end.as_deref(), limit)?
            .into_iter()
            .map(|(k, v)| {
                let e = IndexEntry::decode(&v)?;
                Ok((hash_of_key(&k)?, ChunkInfo { len: e.loc.len, refs: e.refs, quarantined: e.quarantined }))
            })
            .collect()
    }

    /// Capacity and activity figures.
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats::default();
        {
            let acct = self.acct.lock().expect("accounting lock");
            for seg in acct.segments.values() {
                s.used_bytes += seg.size;
                s.dead_bytes += seg.size.saturating_sub(SEGMENT_HEADER_LEN + seg.live);
            }
            s.segments = acct.segments.len() as u64;
            s.chunks = acct.chunks;
            s.physical_bytes = acct.physical;
            s.logical_bytes = acct.logical;
        }
        s.dedup_ratio = if s.physical_bytes == 0 { 1.0 } else { s.logical_bytes as f64 / s.physical_bytes as f64 };
        (s.total_bytes, s.free_bytes) = fs_capacity(&self.cfg.dir);
        self.counters.fill(&mut s);
        s
    }

    pub(crate) fn entry(&self, hash: &ChunkHash) -> Result<Option<IndexEntry>, ChunkError> {
        match self.kv.get(&chunk_key(hash))? {
            Some(v) => Ok(Some(IndexEntry::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn segment(&self, id: u64) -> Option<Arc<Segment>> {
        self.segs.get(id)
    }

    pub(crate) fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, ChunkError> {
        self.submit(ops).and_then(wait_reply)
    }

    /// Queues `ops` for the committer; the answer comes on the returned channel.
    fn submit(&self, ops: Vec<Op>) -> Result<Arc<Reply>, ChunkError> {
        let reply = Arc::new(Reply::default());
        let tx = self.tx.read().expect("commit channel lock");
        let tx = tx.as_ref().ok_or(ChunkError::Closed)?;
        tx.send(Request::new(ops, reply.clone())).map_err(|_| ChunkError::Closed)?;
        Ok(reply)
    }

    fn commit_one(&self, op: Op) -> Result<OpResult, ChunkError> {
        Ok(self.commit(vec![op])?.pop().expect("one result per op"))
    }

    /// False once [`close`](Self::close) has been called.
    pub fn is_open(&self) -> bool {
        self.tx.read().expect("commit channel lock").is_some()
    }

    /// Stops the commit thread after it has finished what is queued. Later calls fail with
    /// [`ChunkError::Closed`]. Called by `Drop` too.
    pub fn close(&self) {
        self.tx.write().expect("commit channel lock").take();
        if let Some(h) = self.committer.lock().expect("committer lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for ChunkEngine {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits for the committer's answer to a submitted request.
fn wait_reply(reply: Arc<Reply>) -> Result<Vec<OpResult>, ChunkError> {
    reply.wait().map_err(|msg| ChunkError::io("group commit", std::io::Error::other(msg)))
}

type OpenedSegments = (HashMap<u64, Arc<Segment>>, Vec<PathBuf>, u64);

fn open_segments(seg_dir: &Path, direct: bool) -> Result<OpenedSegments, ChunkError> {
    let mut segments = HashMap::new();
    let mut broken = Vec::new();
    let mut max_id = 0;
    let rd = fs::read_dir(seg_dir).map_err(|e| ChunkError::io(format!("list {}", seg_dir.display()), e))?;
    for ent in rd {
        let ent = ent.map_err(|e| ChunkError::io(format!("list {}", seg_dir.display()), e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(id) = parse_segment_name(&name) else { continue };
        max_id = max_id.max(id);
        match Segment::open(seg_dir, id, direct) {
            Ok(seg) => {
                segments.insert(id, Arc::new(seg));
            }
            Err(e) => {
                tracing::warn!(error = %e, "segment unreadable");
                broken.push(ent.path());
            }
        }
    }
    Ok((segments, broken, max_id))
}

/// The answer for a chunk whose copy is quarantined.
fn quarantined(hash: &ChunkHash) -> ChunkError {
    ChunkError::Corrupt { hash: *hash, detail: "quarantined after failing verification; awaiting repair".into() }
}
