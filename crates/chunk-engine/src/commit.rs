//! Group commit: the single thread that decides every index change, and the thread that writes it.
//!
//! Writers of large chunks append their records to O_DIRECT segments themselves; small chunks are
//! handed over whole and the committer writes the new ones of a batch as one contiguous write
//! (a chunk already stored only gains a reference, and no write happens while a sync runs). For
//! each batch it then fdatasyncs every segment the batch points into and hands the batch's index
//! changes to the index thread, which writes them as one index batch with sync and only then
//! answers. Many concurrent puts therefore share one pair of fsyncs, and the two syncs of
//! consecutive batches overlap: while batch N's index write syncs, batch N+1's records are
//! written and synced (one batch at most waits for the index thread). Writers of large records
//! write and queue under a shared I/O gate that a commit takes exclusively: the commit first
//! waits for the writes in flight, so their requests join its batch, and then syncs without a
//! 4 MiB write competing with it (on this virtual disk a sync issued behind concurrent writes
//! took ~4 ms instead of ~0.4 ms; batches doubled).
//! Being the only one deciding index changes, the committer also resolves races (two puts of the
//! same chunk, an unref racing a GC move) without locks: it looks entries up in its own batch,
//! then in the batches handed on but not yet written, then in the index.
//! If an index write fails, that batch and the ones decided on top of it are answered with the
//! error, and the committer starts afresh from what the index holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Runs until every sender is gone, then waits for the index thread to finish.
    pub(crate) fn run(self, rx: Receiver<Request>) {
        let shared = Arc::new(IndexShared::default());
        // One batch is being written to the index while the next is prepared; the one after
        // that waits in the hand-off.
        let jobs = Arc::new(Handoff::default());
        let job_rx = jobs.clone();
        let indexer = Indexer {
            kv: self.kv.clone(),
            acct: self.acct.clone(),
            counters: self.counters.clone(),
            shared: shared.clone(),
        };
        let index_thread =
            match std::thread::Builder::new().name("chunk-index".into()).spawn(move || indexer.run(job_rx)) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the index thread; the engine takes no writes");
                    return;
                }
            };
        let mut pending = Pending::default();
        let mut seq = 0u64;
        let mut fresh = false;
        while let Ok(first) = rx.recv() {
            let mut reqs = vec![first];
            drain(&rx, &mut reqs);
            if shared.failed.swap(false, Ordering::AcqRel) {
                // What was handed on may never reach the index: decide from the index alone.
                pending.map.clear();
                fresh = true;
            }
            pending.prune(shared.committed.load(Ordering::Acquire));
            seq += 1;
            match self.commit(&rx, &mut reqs, &mut pending, seq) {
                Ok(mut job) => {
                    job.reqs = reqs;
                    job.fresh = std::mem::take(&mut fresh);
                    if !jobs.send(job) {
                        // The index thread is gone; the dropped requests answer with an error.
                        tracing::error!("the index thread stopped; the engine takes no writes");
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "group commit failed; nothing in it was acknowledged");
                    let msg = e.to_string();
                    for req in reqs {
                        req.answer(Err(msg.clone()));
                    }
                }
            }
        }
        jobs.close();
        let _ = index_thread.join();
    }

    /// Decides and prepares the batch `seq` of `reqs`, plus the requests that arrive while their
    /// records are being written (writers woken by the previous commit catch this one instead of
    /// waiting for the next); returns it synced and ready for the index thread.
    fn commit(
        &self,
        rx: &Receiver<Request>,
        reqs: &mut Vec<Request>,
        pending: &mut Pending,
        seq: u64,
    ) -> Result<Job, ChunkError> {
        // 1. Compute the new entries against the index plus the changes not yet written to it,
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
        let gate = self.io_gate.write().expect("io gate");
        drain(rx, reqs);
        loop {
            for req in &reqs[results.len()..] {
                let mut out = Vec::with_capacity(req.ops.len());
                for op in &req.ops {
                    nops += 1;
                    if let Op::Insert { seg, .. } | Op::Relocate { seg, .. } = op {
                        to_sync.entry(seg.id).or_insert_with(|| seg.clone());
                    }
                    let mut cx = Cx { overlay: &mut overlay, pending, batch: &mut batch, d: &mut delta };
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
        let synced = std::time::Instant::now();
        for seg in to_sync.values() {
            seg.sync()?;
        }
        bump(&self.counters.segment_sync_micros, synced.elapsed().as_micros() as u64);
        drop(gate);
        // 3. The index write is the index thread's; later batches see these changes meanwhile.
        for (hash, e) in overlay {
            pending.map.insert(hash, (e, seq));
        }
        Ok(Job { seq, fresh: false, batch, delta, reqs: Vec::new(), results, nops, _staged: staged })
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

    /// The entry for `hash` as of everything before the op: this batch's own changes, then those
    /// of batches handed to the index thread, then the index.
    fn lookup(&self, hash: &ChunkHash, cx: &Cx<'_>) -> Result<Option<IndexEntry>, ChunkError> {
        if let Some(e) = cx.overlay.get(hash) {
            return Ok(*e);
        }
        if let Some((e, _)) = cx.pending.map.get(hash) {
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
    pending: &'a Pending,
    batch: &'a mut WriteBatch,
    d: &'a mut Delta,
}

/// Index changes handed to the index thread and perhaps not yet written, with the batch that made
/// them.
#[derive(Default)]
struct Pending {
    map: HashMap<ChunkHash, (Option<IndexEntry>, u64)>,
}

impl Pending {
    /// Forgets the changes of batches up to `committed`: the index has them (or newer ones here).
    fn prune(&mut self, committed: u64) {
        self.map.retain(|_, (_, seq)| *seq > committed);
    }
}

/// What the committer and the index thread share.
#[derive(Default)]
struct IndexShared {
    /// The last batch the index thread finished with.
    committed: AtomicU64,
    /// An index write failed since the committer last looked.
    failed: AtomicBool,
}

/// One decided, synced batch on its way to the index.
struct Job {
    seq: u64,
    /// The first batch decided after a failure was seen: it no longer depends on failed ones.
    fresh: bool,
    batch: WriteBatch,
    delta: Delta,
    reqs: Vec<Request>,
    results: Vec<Vec<OpResult>>,
    nops: u64,
    /// Keeps the small-lane segments this batch wrote to away from GC until it is indexed.
    _staged: Staged,
}

/// A one-slot hand-off between the committer and the index thread that sleeps on plain futex
/// waits (the standard channels spin and yield first, which on two cores took CPU from the
/// writers and syncs; see [`Reply`]).
struct Handoff<T> {
    state: Mutex<HandoffState<T>>,
    changed: Condvar,
}

struct HandoffState<T> {
    slot: Option<T>,
    closed: bool,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff { state: Mutex::new(HandoffState { slot: None, closed: false }), changed: Condvar::new() }
    }
}

impl<T> Handoff<T> {
    /// Hands `job` over once the slot is free; false when the receiver has stopped.
    fn send(&self, job: T) -> bool {
        let mut st = self.state.lock().expect("handoff lock");
        while st.slot.is_some() && !st.closed {
            st = self.changed.wait(st).expect("handoff lock");
        }
        if st.closed {
            return false;
        }
        st.slot = Some(job);
        self.changed.notify_all();
        // Rendezvous: return once the index thread has it, so the next batch is prepared while
        // this one is written and no more.
        while st.slot.is_some() && !st.closed {
            st = self.changed.wait(st).expect("handoff lock");
        }
        true
    }

    /// The next job; None once closed and drained.
    fn recv(&self) -> Option<T> {
        let mut st = self.state.lock().expect("handoff lock");
        loop {
            if let Some(job) = st.slot.take() {
                drop(st);
                self.changed.notify_all();
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.changed.wait(st).expect("handoff lock");
        }
    }

    /// No more jobs: the receiver stops once the slot is empty, a sender gives up. A job left in
    /// the slot is dropped with the hand-off (its requests then answer with an error).
    fn close(&self) {
        self.state.lock().expect("handoff lock").closed = true;
        self.changed.notify_all();
    }
}

/// The thread that writes decided batches to the index, in order, and answers their requests.
struct Indexer {
    kv: Arc<dyn KvEngine>,
    acct: Arc<Mutex<Accounting>>,
    counters: Arc<Counters>,
    shared: Arc<IndexShared>,
}

impl Indexer {
    fn run(self, jobs: Arc<Handoff<Job>>) {
        // However this thread ends (a panic included), the committer must not wait for it.
        struct CloseOnExit(Arc<Handoff<Job>>);
        impl Drop for CloseOnExit {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        let _close = CloseOnExit(jobs.clone());
        // After a failed write, the batches decided on top of it are refused until a fresh one.
        let mut failed: Option<String> = None;
        while let Some(job) = jobs.recv() {
            if job.fresh {
                failed = None;
            }
            let started = std::time::Instant::now();
            let outcome = match &failed {
                Some(msg) => Err(format!("not applied: an earlier index write failed ({msg})")),
                None if job.batch.is_empty() => Ok(()),
                None => self.kv.write(job.batch, true).map_err(|e| {
                    tracing::error!(error = %e, "index write failed; nothing in its batch was acknowledged");
                    let msg = ChunkError::from(e).to_string();
                    failed = Some(msg.clone());
                    self.shared.failed.store(true, Ordering::Release);
                    msg
                }),
            };
            if outcome.is_ok() {
                job.delta.apply(&mut self.acct.lock().expect("accounting lock"));
                bump(&self.counters.commit_batches, 1);
                bump(&self.counters.commit_ops, job.nops);
                bump(&self.counters.index_write_micros, started.elapsed().as_micros() as u64);
            }
            self.shared.committed.store(job.seq, Ordering::Release);
            match outcome {
                Ok(()) => {
                    for (req, res) in job.reqs.into_iter().zip(job.results) {
                        req.answer(Ok(res));
                    }
                }
                Err(msg) => {
                    for req in job.reqs {
                        req.answer(Err(msg.clone()));
                    }
                }
            }
        }
    }
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
