//! Group commit: the single thread that changes the index.
//!
//! Writers append their records to segments themselves, then hand index operations to the
//! committer. It takes everything queued, fdatasyncs each segment those operations point into,
//! applies all operations as one index batch written with sync, and only then answers. Many
//! concurrent puts therefore share one pair of fsyncs. Being the only index writer, it also
//! resolves races (two puts of the same chunk, an unref racing a GC move) without locks.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use kv_engine::{KvEngine, WriteBatch};

use crate::index::{IndexEntry, Location, chunk_key};
use crate::record::record_span;
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

pub(crate) struct Request {
    pub ops: Vec<Op>,
    pub reply: SyncSender<Result<Vec<OpResult>, String>>,
}

pub(crate) struct Committer {
    pub kv: Arc<dyn KvEngine>,
    pub acct: Arc<Mutex<Accounting>>,
    pub counters: Arc<Counters>,
}

impl Committer {
    /// Runs until every sender is gone.
    pub(crate) fn run(self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut reqs = vec![first];
            while reqs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            match self.commit(&reqs) {
                Ok(results) => {
                    for (req, res) in reqs.into_iter().zip(results) {
                        let _ = req.reply.send(Ok(res));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "group commit failed; nothing in it was acknowledged");
                    let msg = e.to_string();
                    for req in reqs {
                        let _ = req.reply.send(Err(msg.clone()));
                    }
                }
            }
        }
    }

    fn commit(&self, reqs: &[Request]) -> Result<Vec<Vec<OpResult>>, ChunkError> {
        // 1. Make the records durable before anything points at them.
        let mut to_sync: HashMap<u64, &Arc<Segment>> = HashMap::new();
        for op in reqs.iter().flat_map(|r| &r.ops) {
            if let Op::Insert { seg, .. } | Op::Relocate { seg, .. } = op {
                to_sync.entry(seg.id).or_insert(seg);
            }
        }
        for seg in to_sync.values() {
            seg.sync()?;
        }
        // 2. Compute the new entries against the committed index plus this batch's own changes.
        let mut overlay: HashMap<ChunkHash, Option<IndexEntry>> = HashMap::new();
        let mut batch = WriteBatch::new();
        let mut delta = Delta::default();
        let mut results = Vec::with_capacity(reqs.len());
        let mut nops = 0u64;
        for req in reqs {
            let mut out = Vec::with_capacity(req.ops.len());
            for op in &req.ops {
                nops += 1;
                out.push(self.apply(op, &mut overlay, &mut batch, &mut delta)?);
            }
            results.push(out);
        }
        // 3. One durable index write for all of it.
        if !batch.is_empty() {
            self.kv.write(batch, true)?;
        }
        delta.apply(&mut self.acct.lock().expect("accounting lock"));
        bump(&self.counters.commit_batches, 1);
        bump(&self.counters.commit_ops, nops);
        Ok(results)
    }

    fn lookup(
        &self,
        hash: &ChunkHash,
        overlay: &HashMap<ChunkHash, Option<IndexEntry>>,
    ) -> Result<Option<IndexEntry>, ChunkError> {
        if let Some(e) = overlay.get(hash) {
            return Ok(*e);
        }
        match self.kv.get(&chunk_key(hash))? {
            Some(v) => Ok(Some(IndexEntry::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn apply(
        &self,
        op: &Op,
        overlay: &mut HashMap<ChunkHash, Option<IndexEntry>>,
        batch: &mut WriteBatch,
        d: &mut Delta,
    ) -> Result<OpResult, ChunkError> {
        let mut set =
            |overlay: &mut HashMap<ChunkHash, Option<IndexEntry>>, hash: &ChunkHash, e: Option<IndexEntry>| {
                match e {
                    Some(e) => batch.put(chunk_key(hash), e.encode()),
                    None => batch.delete(chunk_key(hash)),
                }
                overlay.insert(*hash, e);
            };
        Ok(match op {
            Op::Insert { hash, loc, seg } => {
                let span = record_span(loc.len, seg.align);
                match self.lookup(hash, overlay)? {
                    Some(mut e) if !e.quarantined => {
                        e.refs += 1;
                        d.logical += loc.len as i64;
                        set(overlay, hash, Some(e));
                        OpResult::Inserted { dedup: true, refs: e.refs }
                    }
                    Some(mut e) => {
                        // A healthy copy replaces the quarantined one.
                        e.refs += 1;
                        e.loc = *loc;
                        e.quarantined = false;
                        d.live(loc.seg, span as i64);
                        d.logical += loc.len as i64;
                        set(overlay, hash, Some(e));
                        OpResult::Inserted { dedup: false, refs: e.refs }
                    }
                    None => {
                        let e = IndexEntry { loc: *loc, refs: 1, quarantined: false };
                        d.live(loc.seg, span as i64);
                        d.chunks += 1;
                        d.physical += loc.len as i64;
                        d.logical += loc.len as i64;
                        set(overlay, hash, Some(e));
                        OpResult::Inserted { dedup: false, refs: 1 }
                    }
                }
            }
            Op::AddRef { hash, healthy_only } => match self.lookup(hash, overlay)? {
                Some(e) if *healthy_only && e.quarantined => OpResult::NotFound,
                Some(mut e) => {
                    e.refs += 1;
                    d.logical += e.loc.len as i64;
                    set(overlay, hash, Some(e));
                    OpResult::Refs(e.refs)
                }
                None => OpResult::NotFound,
            },
            Op::Unref { hash } => match self.lookup(hash, overlay)? {
                Some(mut e) => {
                    e.refs -= 1;
                    d.logical -= e.loc.len as i64;
                    if e.refs == 0 {
                        if !e.quarantined {
                            d.live(e.loc.seg, -(self.span_of(&e) as i64));
                        }
                        d.chunks -= 1;
                        d.physical -= e.loc.len as i64;
                        set(overlay, hash, None);
                    } else {
                        set(overlay, hash, Some(e));
                    }
                    OpResult::Refs(e.refs)
                }
                None => OpResult::NotFound,
            },
            Op::Relocate { hash, from, to, seg } => match self.lookup(hash, overlay)? {
                Some(mut e) if e.loc == *from && !e.quarantined => {
                    d.live(from.seg, -(self.span_of(&e) as i64));
                    d.live(to.seg, record_span(to.len, seg.align) as i64);
                    e.loc = *to;
                    set(overlay, hash, Some(e));
                    OpResult::Applied(true)
                }
                _ => OpResult::Applied(false),
            },
            Op::Quarantine { hash, loc } => match self.lookup(hash, overlay)? {
                Some(mut e) if e.loc == *loc && !e.quarantined => {
                    d.live(loc.seg, -(self.span_of(&e) as i64));
                    e.quarantined = true;
                    set(overlay, hash, Some(e));
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
