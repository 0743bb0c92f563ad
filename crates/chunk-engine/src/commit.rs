//! Group commit: the single thread that changes the index.
//!
//! Writers of large chunks append their records to O_DIRECT segments themselves; small chunks are
//! handed over whole and the committer writes the new ones of a batch as one contiguous write
//! (a chunk already stored only gains a reference, and no write happens while a sync runs). For
//! each batch it then fdatasyncs every segment the batch points into, applies all operations as
//! one index batch written with sync, and only then answers. Many concurrent puts therefore share
//! one pair of fsyncs. Writers of large records write and queue under a shared I/O gate that a
//! commit takes exclusively: the commit first waits for the writes in flight, so their requests
//! join its batch, and then syncs without a 4 MiB write competing with it (on this virtual disk a
//! sync issued behind concurrent writes took ~4 ms instead of ~0.4 ms; batches doubled).
//! Being the only index writer, it also resolves races (two puts of the same
//! chunk, an unref racing a GC move) without locks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use kv_engine::{KvEngine, WriteBatch};

use crate::index::{IndexEntry, Location, chunk_key};
use crate::lanes::{SMALL_LANE, SegmentSet};
use crate::record::{HEADER_LEN, RecordHeader, record_span};
use crate::segment::Segment;
use crate::stats::{Accounting, Counters, bump};
use crate::{ChunkError, ChunkHash};

/// Most requests folded into one commit.
const MAX_BATCH: usize = 4096;

/// One change to the index.
pub(crate) enum Op {
    /// A record for `hash` was written at `loc`: index it, or add a reference if the chunk
    /// already exists (the new record is then dead space).
    Insert { hash: ChunkHash, loc: Location, seg: Arc<Segment> },
    /// Store a small chunk: add a reference if it exists, else the committer writes its record.
    InsertSmall { hash: ChunkHash, data: Vec<u8> },
    /// Add a reference to an existing chunk; `healthy_only` refuses quarantined chunks.
    AddRef { hash: ChunkHash, healthy_only: bool },
    /// Drop a reference; the entry goes when none are left.
    Unref { hash: ChunkHash },
    /// GC copied the record at `from` to `to`: repoint the entry if it is still at `from`.
    Relocate { hash: ChunkHash, from: Location, to: Location, seg: Arc<Segment> },
    /// The copy at `loc` failed verification: flag it, unless the entry has moved on.
    Quarantine { hash: ChunkHash, loc: Location },
}

/// The answer to one [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpResult {
    /// Reference count after the operation (0: the entry is gone).
    Refs(u64),
    /// Insert outcome: whether the chunk was already there, and its references now.
    Inserted { dedup: bool, refs: u64 },
    /// No (suitable) entry for the hash.
    NotFound,
    /// Relocate or quarantine: whether the entry was changed.
    Applied(bool),
}

/// What a writer gets back for its request.
pub(crate) type Answer = Result<Vec<OpResult>, String>;

/// A one-shot slot the committer answers a request in; the writer sleeps on it with a plain
/// futex wait. (A channel's receive spins and yields first: sixteen writers doing that on two
/// cores delayed the committer and its syncs enough to double the time of a commit.)
#[derive(Default)]
pub(crate) struct Reply {
    slot: Mutex<Option<Answer>>,
    ready: Condvar,
}

impl Reply {
    fn send(&self, answer: Answer) {
        *self.slot.lock().expect("reply lock") = Some(answer);
        self.ready.notify_one();
    }

    /// Sleeps until the answer is in.
    pub(crate) fn wait(&self) -> Answer {
        let mut slot = self.slot.lock().expect("reply lock");
        loop {
            match slot.take() {
                Some(answer) => return answer,
                None => slot = self.ready.wait(slot).expect("reply lock"),
            }
        }
    }
}

/// Operations to commit together, and where to answer. A request dropped unanswered (the
/// committer stopped) answers with an error, so no writer waits forever.
pub(crate) struct Request {
    pub ops: Vec<Op>,
    pub reply: Arc<Reply>,
    answered: bool,
}

impl Request {
    pub(crate) fn new(ops: Vec<Op>, reply: Arc<Reply>) -> Self {
        Request { ops, reply, answered: false }
    }

    fn answer(mut self, answer: Answer) {
        self.answered = true;
        self.reply.send(answer);
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if !self.answered {
            self.reply.send(Err("the commit thread stopped before answering".into()));
        }
    }
}

pub(crate) struct Committer {
    pub kv: Arc<dyn KvEngine>,
    pub segs: Arc<SegmentSet>,
    pub acct: Arc<Mutex<Accounting>>,
    pub counters: Arc<Counters>,
    /// Writers of large records hold it shared from their write until their request is queued;
    /// a commit holds it exclusively, so it batches every finished write and syncs alone.
    pub io_gate: Arc<RwLock<()>>,
}

impl Committer {
    /// Runs until every sender is gone.
    pub(crate) fn run(self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut reqs = vec![first];
            drain(&rx, &mut reqs);
            let outcome = self.commit(&rx, &mut reqs).map_err(|e| {
                tracing::error!(error = %e, "group commit failed; nothing in it was acknowledged");
                e.to_string()
            });
            match outcome {
                Ok(results) => {
                    for (req, res) in reqs.into_iter().zip(results) {
                        req.answer(Ok(res));
                    }
                }
                Err(msg) => {
                    for req in reqs {
                        req.answer(Err(msg.clone()));
                    }
                }
            }
        }
    }

    /// Commits `reqs`, plus the requests that arrive while their records are being written
    /// (writers woken by the previous commit catch this one instead of waiting for the next).
    fn commit(&self, rx: &Receiver<Request>, reqs: &mut Vec<Request>) -> Result<Vec<Vec<OpResult>>, ChunkError> {
        // 1. Compute the new entries against the committed index plus this batch's own changes,
        //    and write the records of new small chunks.
        let mut staged = Staged::default();
        let mut overlay: HashMap<ChunkHash, Option<IndexEntry>> = HashMap::new();
        let mut batch = WriteBatch::new();
        let mut delta = Delta::default();
        let mut results = Vec::with_capacity(reqs.len());
        let mut nops = 0u64;
        let mut to_sync: HashMap<u64, Arc<Segment>> = HashMap::new();
        // Wait for the large-record writes in flight; their requests are queued by the time the
        // gate is ours, and are drained below into this batch.
        let _gate = self.io_gate.write().expect("io gate");
        drain(rx, reqs);
        loop {
            for req in &reqs[results.len()..] {
                let mut out = Vec::with_capacity(req.ops.len());
                for op in &req.ops {
                    nops += 1;
                    if let Op::Insert { seg, .. } | Op::Relocate { seg, .. } = op {
                        to_sync.entry(seg.id).or_insert_with(|| seg.clone());
                    }
                    let mut cx = Cx { overlay: &mut overlay, batch: &mut batch, d: &mut delta };
                    out.push(self.apply(op, &mut cx, &mut staged)?);
                }
                results.push(out);
            }
            for w in &staged.writes[staged.written..] {
                w.seg.write_at(&w.buf, w.off)?;
                to_sync.entry(w.seg.id).or_insert_with(|| w.seg.clone());
            }
            staged.written = staged.writes.len();
            if !drain(rx, reqs) {
                break;
            }
        }
        // 2. Make every record the batch points at durable.
        let started = std::time::Instant::now();
        for seg in to_sync.values() {
            seg.sync()?;
        }
        let synced = std::time::Instant::now();
        // 3. One durable index write for all of it. (Handing it to a second thread so that the
        //    next batch's records sync meanwhile was tried: on this machine single puts got ~15 %
        //    slower, 16 writers and 4 MiB ingest no faster; see chunk-bench's stage timings.)
        if !batch.is_empty() {
            self.kv.write(batch, true)?;
        }
        bump(&self.counters.segment_sync_micros, (synced - started).as_micros() as u64);
        bump(&self.counters.index_write_micros, synced.elapsed().as_micros() as u64);
        delta.apply(&mut self.acct.lock().expect("accounting lock"));
        bump(&self.counters.commit_batches, 1);
        bump(&self.counters.commit_ops, nops);
        Ok(results)
    }

    /// Reserves room for a small chunk's record in the small lane and stages its bytes.
    fn stage_small(&self, hash: &ChunkHash, data: &[u8], staged: &mut Staged) -> Result<Location, ChunkError> {
        let span = record_span(data.len() as u32, self.segs.align(SMALL_LANE)) as usize;
        let (seg, off) = self.segs.reserve(SMALL_LANE, span as u64)?;
        let open = staged.writes.len() > staged.written;
        let w = match staged.writes.last_mut() {
            Some(w) if open && w.seg.id == seg.id && w.off + w.buf.len() as u64 == off => {
                seg.inflight.fetch_sub(1, Ordering::AcqRel); // the write already holds one
                w
            }
            _ => {
                staged.writes.push(StagedWrite { seg: seg.clone(), off, buf: Vec::with_capacity(64 << 10) });
                staged.writes.last_mut().expect("just pushed")
            }
        };
        let start = w.buf.len();
        w.buf.resize(start + span, 0);
        RecordHeader { len: data.len() as u32, hash: *hash }.encode(&mut w.buf[start..start + HEADER_LEN]);
        w.buf[start + HEADER_LEN..start + HEADER_LEN + data.len()].copy_from_slice(data);
        Ok(Location { seg: seg.id, off, len: data.len() as u32 })
    }

    /// The entry for `hash` as of everything before the op: this batch's own changes, then the
    /// committed index.
    fn lookup(&self, hash: &ChunkHash, cx: &Cx<'_>) -> Result<Option<IndexEntry>, ChunkError> {
        if let Some(e) = cx.overlay.get(hash) {
            return Ok(*e);
        }
        match self.kv.get(&chunk_key(hash))? {
            Some(v) => Ok(Some(IndexEntry::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn apply(&self, op: &Op, cx: &mut Cx<'_>, staged: &mut Staged) -> Result<OpResult, ChunkError> {
        let set = |cx: &mut Cx<'_>, hash: &ChunkHash, e: Option<IndexEntry>| {
            match e {
                Some(e) => cx.batch.put(chunk_key(hash), e.encode()),
                None => cx.batch.delete(chunk_key(hash)),
            }
            cx.overlay.insert(*hash, e);
        };
        Ok(match op {
            Op::Insert { hash, loc, seg } => {
                let span = record_span(loc.len, seg.align);
                match self.lookup(hash, cx)? {
                    Some(mut e) if !e.quarantined => {
                        e.refs += 1;
                        cx.d.logical += loc.len as i64;
                        set(cx, hash, Some(e));
                        OpResult::Inserted { dedup: true, refs: e.refs }
                    }
                    Some(mut e) => {
                        // A healthy copy replaces the quarantined one.
                        e.refs += 1;
                        e.loc = *loc;
                        e.quarantined = false;
                        cx.d.live(loc.seg, span as i64);
                        cx.d.logical += loc.len as i64;
                        set(cx, hash, Some(e));
                        OpResult::Inserted { dedup: false, refs: e.refs }
                    }
                    None => {
                        let e = IndexEntry { loc: *loc, refs: 1, quarantined: false };
                        cx.d.live(loc.seg, span as i64);
                        cx.d.chunks += 1;
                        cx.d.physical += loc.len as i64;
                        cx.d.logical += loc.len as i64;
                        set(cx, hash, Some(e));
                        OpResult::Inserted { dedup: false, refs: 1 }
                    }
                }
            }
            Op::InsertSmall { hash, data } => match self.lookup(hash, cx)? {
                Some(mut e) if !e.quarantined => {
                    e.refs += 1;
                    cx.d.logical += data.len() as i64;
                    set(cx, hash, Some(e));
                    OpResult::Inserted { dedup: true, refs: e.refs }
                }
                found => {
                    let loc = self.stage_small(hash, data, staged)?;
                    let span = record_span(loc.len, self.segs.align(SMALL_LANE));
                    cx.d.live(loc.seg, span as i64);
                    cx.d.logical += loc.len as i64;
                    let e = match found {
                        // A healthy copy replaces the quarantined one.
                        Some(e) => IndexEntry { loc, refs: e.refs + 1, quarantined: false },
                        None => {
                            cx.d.chunks += 1;
                            cx.d.physical += loc.len as i64;
                            IndexEntry { loc, refs: 1, quarantined: false }
                        }
                    };
                    set(cx, hash, Some(e));
                    OpResult::Inserted { dedup: false, refs: e.refs }
                }
            },
            Op::AddRef { hash, healthy_only } => match self.lookup(hash, cx)? {
                Some(e) if *healthy_only && e.quarantined => OpResult::NotFound,
                Some(mut e) => {
                    e.refs += 1;
                    cx.d.logical += e.loc.len as i64;
                    set(cx, hash, Some(e));
                    OpResult::Refs(e.refs)
                }
                None => OpResult::NotFound,
            },
            Op::Unref { hash } => match self.lookup(hash, cx)? {
                Some(mut e) => {
                    e.refs -= 1;
                    cx.d.logical -= e.loc.len as i64;
                    if e.refs == 0 {
                        if !e.quarantined {
                            cx.d.live(e.loc.seg, -(self.span_of(&e) as i64));
                        }
                        cx.d.chunks -= 1;
                        cx.d.physical -= e.loc.len as i64;
                        set(cx, hash, None);
                    } else {
                        set(cx, hash, Some(e));
                    }
                    OpResult::Refs(e.refs)
                }
                None => OpResult::NotFound,
            },
            Op::Relocate { hash, from, to, seg } => match self.lookup(hash, cx)? {
                Some(mut e) if e.loc == *from && !e.quarantined => {
                    cx.d.live(from.seg, -(self.span_of(&e) as i64));
                    cx.d.live(to.seg, record_span(to.len, seg.align) as i64);
                    e.loc = *to;
                    set(cx, hash, Some(e));
                    OpResult::Applied(true)
                }
                _ => OpResult::Applied(false),
            },
            Op::Quarantine { hash, loc } => match self.lookup(hash, cx)? {
                Some(mut e) if e.loc == *loc && !e.quarantined => {
                    cx.d.live(loc.seg, -(self.span_of(&e) as i64));
                    e.quarantined = true;
                    set(cx, hash, Some(e));
                    OpResult::Applied(true)
                }
                _ => OpResult::Applied(false),
            },
        })
    }

    fn span_of(&self, e: &IndexEntry) -> u64 {
        let acct = self.acct.lock().expect("accounting lock");
        let align = acct.segments.get(&e.loc.seg).map_or(1, |s| s.align.max(1));
        record_span(e.loc.len, align)
    }
}

/// What applying one op works against and produces.
struct Cx<'a> {
    overlay: &'a mut HashMap<ChunkHash, Option<IndexEntry>>,
    batch: &'a mut WriteBatch,
    d: &'a mut Delta,
}

/// Moves queued requests into `reqs` (up to [`MAX_BATCH`]); true when it moved any.
fn drain(rx: &Receiver<Request>, reqs: &mut Vec<Request>) -> bool {
    let before = reqs.len();
    while reqs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => reqs.push(r),
            Err(_) => break,
        }
    }
    reqs.len() > before
}

/// Records of new small chunks written by the committer, contiguous runs merged into one write.
#[derive(Default)]
struct Staged {
    writes: Vec<StagedWrite>,
    /// `writes[..written]` are on their way to disk and take no more records.
    written: usize,
}

struct StagedWrite {
    seg: Arc<Segment>,
    off: u64,
    buf: Vec<u8>,
}

impl Drop for StagedWrite {
    fn drop(&mut self) {
        // Written and committed, or abandoned: either way GC may look at the segment again.
        self.seg.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accounting changes of one commit, applied after the index write succeeded.
#[derive(Default)]
struct Delta {
    live: HashMap<u64, i64>,
    chunks: i64,
    physical: i64,
    logical: i64,
}

impl Delta {
    fn live(&mut self, seg: u64, by: i64) {
        *self.live.entry(seg).or_default() += by;
    }

    fn apply(self, a: &mut Accounting) {
        for (seg, by) in self.live {
            let s = a.seg(seg);
            s.live = (s.live as i64 + by).max(0) as u64;
        }
        a.chunks = (a.chunks as i64 + self.chunks).max(0) as u64;
        a.physical = (a.physical as i64 + self.physical).max(0) as u64;
        a.logical = (a.logical as i64 + self.logical).max(0) as u64;
    }
}
