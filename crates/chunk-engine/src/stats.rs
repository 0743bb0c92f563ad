//! Space accounting (per segment, logical vs physical) and the engine's operation counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Bytes in one segment: `size` is the file's extent in use, `live` the spans of indexed,
/// healthy records in it, `align` its record alignment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SegmentSpace {
    pub size: u64,
    pub live: u64,
    pub align: u64,
}

/// What the engine stores, kept up to date by the committer (the only index writer).
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    pub segments: HashMap<u64, SegmentSpace>,
    /// Distinct chunks in the index.
    pub chunks: u64,
    /// Sum of distinct chunk lengths (what is stored once).
    pub physical: u64,
    /// Sum of chunk length × references (what callers think they stored).
    pub logical: u64,
}

impl Accounting {
    pub(crate) fn seg(&mut self, id: u64) -> &mut SegmentSpace {
        self.segments.entry(id).or_default()
    }
}

/// Monotonic counters, exported as Prometheus counters by the daemon.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub corruptions: AtomicU64,
    pub commit_batches: AtomicU64,
    pub commit_ops: AtomicU64,
    pub segment_sync_micros: AtomicU64,
    pub index_write_micros: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_reclaimed_bytes: AtomicU64,
    pub gc_moved_bytes: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// A snapshot of capacity and activity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineStats {
    /// Size of the filesystem holding the data directory.
    pub total_bytes: u64,
    /// Space still available on that filesystem.
    pub free_bytes: u64,
    /// Bytes taken by segment files.
    pub used_bytes: u64,
    /// Bytes in segment files that no live chunk uses (reclaimable by GC).
    pub dead_bytes: u64,
    /// Sum of chunk length × references.
    pub logical_bytes: u64,
    /// Sum of distinct chunk lengths.
    pub physical_bytes: u64,
    /// logical / physical (1.0 when empty).
    pub dedup_ratio: f64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Segment files.
    pub segments: u64,
    /// Chunk puts (including deduplicated ones).
    pub puts: u64,
    /// Bytes offered to put.
    pub put_bytes: u64,
    /// Puts that found the chunk already stored and only added a reference.
    pub dedup_hits: u64,
    /// Chunk gets served.
    pub gets: u64,
    /// Bytes returned by gets.
    pub get_bytes: u64,
    /// Copies found corrupt (by reads, scrub or GC) and quarantined.
    pub corruptions: u64,
    /// Group commits (fsync rounds) done.
    pub commit_batches: u64,
    /// Index operations committed in them.
    pub commit_ops: u64,
    /// Time commits spent in segment fdatasyncs.
    pub segment_sync_micros: u64,
    /// Time commits spent writing the index durably.
    pub index_write_micros: u64,
    /// Garbage collection passes.
    pub gc_runs: u64,
    /// Bytes given back to the filesystem by GC.
    pub gc_reclaimed_bytes: u64,
    /// Live bytes GC copied out of sparse segments.
    pub gc_moved_bytes: u64,
}

impl Counters {
    pub(crate) fn fill(&self, s: &mut EngineStats) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.puts = g(&self.puts);
        s.put_bytes = g(&self.put_bytes);
        s.dedup_hits = g(&self.dedup_hits);
        s.gets = g(&self.gets);
        s.get_bytes = g(&self.get_bytes);
        s.corruptions = g(&self.corruptions);
        s.commit_batches = g(&self.commit_batches);
        s.commit_ops = g(&self.commit_ops);
        s.segment_sync_micros = g(&self.segment_sync_micros);
        s.index_write_micros = g(&self.index_write_micros);
        s.gc_runs = g(&self.gc_runs);
        s.gc_reclaimed_bytes = g(&self.gc_reclaimed_bytes);
        s.gc_moved_bytes = g(&self.gc_moved_bytes);
    }
}
