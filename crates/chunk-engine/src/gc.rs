//! Garbage collection: rewrite sparse sealed segments and give their space back.
//!
//! A sealed segment whose live fraction is under the threshold has its live records copied to
//! the active segments (verified on the way; a bad copy is quarantined, not copied), the index is
//! repointed through the committer (so a racing unref or put stays correct), and once nothing
//! live is left in it the file is deleted. Reads and writes go on meanwhile: readers that race a
//! move retry on the new location, and writers never use sealed segments.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use kv_engine::{for_each_in_range, prefix_end};
use serde::Serialize;

use crate::ChunkError;
use crate::commit::Op;
use crate::engine::{ChunkEngine, RecordData};
use crate::fsutil::sync_dir;
use crate::index::{CHUNK_PREFIX, IndexEntry, hash_of_key};
use crate::segment::SEGMENT_HEADER_LEN;
use crate::stats::bump;

/// Moves committed per index batch during GC.
const GC_BATCH: usize = 32;

/// What one GC pass did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// Sealed segments under the live threshold.
    pub segments_examined: u64,
    /// Segment files deleted.
    pub segments_removed: u64,
    /// Bytes those files took.
    pub bytes_reclaimed: u64,
    /// Live chunks copied out of them.
    pub chunks_moved: u64,
    /// Bytes of those chunks.
    pub bytes_moved: u64,
}

/// Which sealed segments (id, payload bytes, live bytes) a pass rewrites, emptiest first: those
/// under the live threshold (or empty), then, if the dead bytes of the rest exceed
/// `max_dead_ratio` × all live bytes (0: no bound), the emptiest of the rest until the dead
/// bytes left are under half that — the least live data moved per byte given back.
fn pick(sealed: &[(u64, u64, u64)], threshold: f64, max_dead_ratio: f64, live_total: u64) -> Vec<u64> {
    let mut picked = Vec::new();
    let mut rest = Vec::new();
    let fraction = |p: u64, l: u64| l as f64 / p.max(1) as f64;
    let mut sorted = sealed.to_vec();
    sorted.sort_by(|a, b| fraction(a.1, a.2).total_cmp(&fraction(b.1, b.2)).then(a.0.cmp(&b.0)));
    for (id, payload, live) in sorted {
        if live == 0 || (live as f64) < threshold * payload as f64 {
            picked.push(id);
        } else {
            rest.push((id, payload, live));
        }
    }
    if max_dead_ratio > 0.0 {
        let mut dead: u64 = rest.iter().map(|(_, p, l)| p.saturating_sub(*l)).sum();
        if dead as f64 > max_dead_ratio * live_total as f64 {
            let target = (max_dead_ratio / 2.0 * live_total as f64) as u64;
            for (id, payload, live) in rest {
                if dead <= target {
                    break;
                }
                dead -= payload.saturating_sub(live);
                picked.push(id);
            }
        }
    }
    picked
}

impl ChunkEngine {
    /// Sealed segments as (id, payload, live), skipping those with reservations in flight.
    fn sealed_segments(&self) -> (Vec<(u64, u64, u64)>, u64) {
        let active: HashSet<u64> = self.segs.active_ids();
        let acct = self.acct.lock().expect("accounting lock");
        let live_total = acct.segments.values().map(|s| s.live).sum();
        let sealed = acct
            .segments
            .iter()
            .filter(|(id, _)| !active.contains(id))
            .map(|(id, s)| (*id, s.size.saturating_sub(SEGMENT_HEADER_LEN), s.live))
            .collect();
        (sealed, live_total)
    }

    /// Whether a GC pass would rewrite anything: a sealed segment under the live threshold, or
    /// more dead bytes in sealed segments than `gc_max_dead_ratio` allows. Reads only the
    /// accounting (cheap enough to ask every second).
    pub fn gc_due(&self) -> bool {
        let (sealed, live_total) = self.sealed_segments();
        !pick(&sealed, self.cfg.gc_live_threshold, self.cfg.gc_max_dead_ratio, live_total).is_empty()
    }

    /// Whether the dead bytes in sealed segments exceed `factor` × `gc_max_dead_ratio` of the
    /// live bytes and a segment's size (never with the bound off). The node holds puts back while this is true at
    /// 1.5, so that segment GC keeps up with an overwrite load.
    pub fn dead_over(&self, factor: f64) -> bool {
        if self.cfg.gc_max_dead_ratio <= 0.0 {
            return false;
        }
        let (sealed, live_total) = self.sealed_segments();
        let dead: u64 = sealed.iter().map(|(_, p, l)| p.saturating_sub(*l)).sum();
        // Never for less than a segment of dead space (a small or emptied node).
        dead > self.cfg.segment_size && dead as f64 > factor * self.cfg.gc_max_dead_ratio * live_total as f64
    }

    /// Runs one GC pass (one at a time; a second caller waits for the first).
    pub fn gc(&self) -> Result<GcReport, ChunkError> {
        let _only_one = self.gc_lock.lock().expect("gc lock");
        bump(&self.counters.gc_runs, 1);
        let order: Vec<u64> = {
            let (sealed, live_total) = self.sealed_segments();
            pick(&sealed, self.cfg.gc_live_threshold, self.cfg.gc_max_dead_ratio, live_total)
                .into_iter()
                .filter(|id| self.segment(*id).is_none_or(|s| s.inflight.load(Ordering::Acquire) == 0))
                .collect()
        };
        let candidates: HashSet<u64> = order.iter().copied().collect();
        let mut report = GcReport { segments_examined: candidates.len() as u64, ..Default::default() };
        if candidates.is_empty() {
            return Ok(report);
        }

        // One index scan per pass; then segment by segment, emptiest first, each deleted as soon
        // as its live records have moved (the space held twice is one segment's live data).
        let mut live: std::collections::HashMap<u64, Vec<_>> = std::collections::HashMap::new();
        for_each_in_range(&*self.kv, CHUNK_PREFIX, prefix_end(CHUNK_PREFIX).as_deref(), 4096, |k, v| {
            let e = IndexEntry::decode(v).map_err(|e| kv_engine::KvError::Backend(e.to_string()))?;
            if !e.quarantined && candidates.contains(&e.loc.seg) {
                let h = hash_of_key(k).map_err(|e| kv_engine::KvError::Backend(e.to_string()))?;
                live.entry(e.loc.seg).or_default().push((h, e.loc));
            }
            Ok(())
        })?;
        for id in order {
            self.gc_segment(id, live.remove(&id).unwrap_or_default(), &mut report)?;
        }
        bump(&self.counters.gc_moved_bytes, report.bytes_moved);
        bump(&self.counters.gc_reclaimed_bytes, report.bytes_reclaimed);
        tracing::info!(?report, "gc pass done");
        Ok(report)
    }

    /// Moves segment `id`'s live records (`live`) to the active segments and deletes its file.
    fn gc_segment(
        &self,
        id: u64,
        live: Vec<(crate::ChunkHash, crate::index::Location)>,
        report: &mut GcReport,
    ) -> Result<(), ChunkError> {
        for group in live.chunks(GC_BATCH) {
            let mut ops = Vec::with_capacity(group.len());
            let mut reserved = Vec::new();
            for (hash, from) in group {
                match self.read_verified(hash, from)? {
                    Ok(data) => {
                        let (seg, to) = self.append(hash, RecordData::Slice(&data))?;
                        reserved.push(seg.clone());
                        ops.push(Op::Relocate { hash: *hash, from: *from, to, seg });
                        report.chunks_moved += 1;
                        report.bytes_moved += data.len() as u64;
                    }
                    Err(detail) => {
                        bump(&self.counters.corruptions, 1);
                        tracing::error!(chunk = %hash, %detail, "GC found a corrupt copy; quarantined");
                        ops.push(Op::Quarantine { hash: *hash, loc: *from });
                    }
                }
            }
            let res = if ops.is_empty() { Ok(Vec::new()) } else { self.commit(ops) };
            for seg in reserved {
                seg.inflight.fetch_sub(1, Ordering::AcqRel);
            }
            res?;
        }
        let empty = self.acct.lock().expect("accounting lock").segments.get(&id).is_some_and(|s| s.live == 0);
        if !empty {
            return Ok(()); // a put revived a quarantined chunk into it meanwhile, or a move lost a race
        }
        let Some(seg) = self.segs.remove(id) else { return Ok(()) };
        let size = seg.file_len().unwrap_or(0);
        std::fs::remove_file(seg.path()).map_err(|e| ChunkError::io(format!("remove {}", seg.path().display()), e))?;
        self.acct.lock().expect("accounting lock").segments.remove(&id);
        sync_dir(self.segs.dir())?;
        report.segments_removed += 1;
        report.bytes_reclaimed += size;
        Ok(())
    }
}

#[cfg(test)]
mod pick_tests {
    use super::pick;

    #[test]
    fn under_the_threshold_always_and_the_emptiest_while_dead_exceeds_the_bound() {
        // (id, payload, live): live fractions 0.9, 0.6, 0.7, 0.3, 0.0.
        let sealed = [(1, 100, 90), (2, 100, 60), (3, 100, 70), (4, 100, 30), (5, 100, 0)];
        // No bound: the threshold alone, emptiest first.
        assert_eq!(pick(&sealed, 0.5, 0.0, 250), vec![5, 4]);
        // Dead of the rest: 10 + 40 + 30 = 80 > 0.3 × 250 = 75: the emptiest (2) goes, leaving
        // 40 — not yet under half the bound (37.5), so 3 too.
        assert_eq!(pick(&sealed, 0.5, 0.3, 250), vec![5, 4, 2, 3]);
        // 80 > 0.2 × 250: down to 25 or less: 2 and 3 (10 left).
        assert_eq!(pick(&sealed, 0.5, 0.2, 250), vec![5, 4, 2, 3]);
        // Under the bound: nothing more than the threshold's.
        assert_eq!(pick(&sealed, 0.5, 0.4, 250), vec![5, 4]);
    }
}
