//! The open segments and the two append lanes (O_DIRECT for large records, buffered for small):
//! where the next record goes, and rolling over to a fresh segment when one is full.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::ChunkError;
use crate::segment::{BUFFERED_ALIGN, DIRECT_ALIGN, SEGMENT_HEADER_LEN, Segment};
use crate::stats::{Accounting, SegmentSpace};

/// Lane of records written with O_DIRECT (4 KiB aligned).
pub(crate) const DIRECT_LANE: usize = 0;
/// Lane of small records written through the page cache (64-byte aligned).
pub(crate) const SMALL_LANE: usize = 1;

/// How far ahead of its appends the small lane zero-fills its segment (see
/// [`Segment::zero_fill`]; the large lane fallocates in larger steps, its O_DIRECT writes being
/// large; small records may trickle in, so space is only taken as needed).
const SMALL_PREALLOC: u64 = 4 << 20;
/// How far ahead of its appends the O_DIRECT lane fallocates its segment: in steps, so a young
/// or small node does not hold a whole segment of allocated, unwritten space.
const DIRECT_PREALLOC: u64 = 32 << 20;

struct Lane {
    align: u64,
    active: Option<Arc<Segment>>,
    next_off: u64,
    /// The active segment is allocated up to here.
    allocated: u64,
}

/// Every open segment plus the active segment of each lane.
pub(crate) struct SegmentSet {
    dir: PathBuf,
    segment_size: u64,
    direct_io: bool,
    map: RwLock<HashMap<u64, Arc<Segment>>>,
    lanes: [Mutex<Lane>; 2],
    next_id: AtomicU64,
    acct: Arc<Mutex<Accounting>>,
}

impl SegmentSet {
    pub(crate) fn new(
        dir: PathBuf,
        segment_size: u64,
        direct_io: bool,
        opened: HashMap<u64, Arc<Segment>>,
        max_id: u64,
        acct: Arc<Mutex<Accounting>>,
    ) -> Self {
        let lane = |align| Mutex::new(Lane { align, active: None, next_off: 0, allocated: 0 });
        SegmentSet {
            dir,
            segment_size,
            direct_io,
            map: RwLock::new(opened),
            lanes: [lane(DIRECT_ALIGN), lane(BUFFERED_ALIGN)],
            next_id: AtomicU64::new(max_id + 1),
            acct,
        }
    }

    pub(crate) fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// The alignment of records in `lane`.
    pub(crate) fn align(&self, lane: usize) -> u64 {
        self.lanes[lane].lock().expect("lane lock").align
    }

    /// Reserves `span` bytes in the active segment of `lane` (starting a new segment when the
    /// active one is full) and returns the segment and offset. The segment's `inflight` is
    /// raised; the caller lowers it once the record's index operation is committed or abandoned.
    pub(crate) fn reserve(&self, lane: usize, span: u64) -> Result<(Arc<Segment>, u64), ChunkError> {
        let mut lane = self.lanes[lane].lock().expect("lane lock");
        let full = lane.next_off + span > self.segment_size && lane.next_off > SEGMENT_HEADER_LEN;
        if lane.active.is_none() || full {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let seg = Arc::new(Segment::create(&self.dir, id, lane.align, self.direct_io)?);
            lane.allocated = 0;
            self.map.write().expect("segments lock").insert(id, seg.clone());
            *self.acct.lock().expect("accounting lock").seg(id) =
                SegmentSpace { size: SEGMENT_HEADER_LEN, live: 0, align: lane.align };
            lane.active = Some(seg);
            lane.next_off = SEGMENT_HEADER_LEN;
        }
        let seg = lane.active.clone().expect("active segment");
        if lane.next_off + span > lane.allocated {
            let step = if lane.align == DIRECT_ALIGN { DIRECT_PREALLOC } else { SMALL_PREALLOC };
            let end = (lane.next_off + span + step).min(self.segment_size.max(lane.next_off + span));
            if lane.align == DIRECT_ALIGN {
                seg.preallocate(end);
            } else {
                seg.zero_fill(lane.allocated.max(lane.next_off), end);
            }
            lane.allocated = end;
        }
        let off = lane.next_off;
        lane.next_off += span;
        seg.inflight.fetch_add(1, Ordering::AcqRel);
        self.acct.lock().expect("accounting lock").seg(seg.id).size = lane.next_off;
        Ok((seg, off))
    }

    /// The open segment `id`.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Segment>> {
        self.map.read().expect("segments lock").get(&id).cloned()
    }

    /// Forgets segment `id` (GC deleted it) and returns it.
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<Segment>> {
        self.map.write().expect("segments lock").remove(&id)
    }

    /// Ids of the segments new records are appended to (never GC candidates).
    pub(crate) fn active_ids(&self) -> HashSet<u64> {
        self.lanes.iter().filter_map(|l| l.lock().expect("lane lock").active.as_ref().map(|s| s.id)).collect()
    }
}
