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

impl ChunkEngine {
    /// Runs one GC pass (one at a time; a second caller waits for the first).
    pub fn gc(&self) -> Result<GcReport, ChunkError> {
        let _only_one = self.gc_lock.lock().expect("gc lock");
        bump(&self.counters.gc_runs, 1);
        let active: HashSet<u64> = self.segs.active_ids();
        let candidates: HashSet<u64> = {
            let acct = self.acct.lock().expect("accounting lock");
            acct.segments
                .iter()
                .filter(|(id, s)| {
                    let payload = s.size.saturating_sub(SEGMENT_HEADER_LEN);
                    !active.contains(id) && (s.live as f64) < self.cfg.gc_live_threshold * payload as f64
                        || !active.contains(id) && s.live == 0
                })
                .map(|(id, _)| *id)
                .filter(|id| self.segment(*id).is_none_or(|s| s.inflight.load(Ordering::Acquire) == 0))
                .collect()
        };
        let mut report = GcReport { segments_examined: candidates.len() as u64, ..Default::default() };
        if candidates.is_empty() {
            return Ok(report);
        }

        let mut live = Vec::new();
        for_each_in_range(&*self.kv, CHUNK_PREFIX, prefix_end(CHUNK_PREFIX).as_deref(), 4096, |k, v| {
            let e = IndexEntry::decode(v).map_err(|e| kv_engine::KvError::Backend(e.to_string()))?;
            if !e.quarantined && candidates.contains(&e.loc.seg) {
                let h = hash_of_key(k).map_err(|e| kv_engine::KvError::Backend(e.to_string()))?;
                live.push((h, e.loc));
            }
            Ok(())
        })?;

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
        bump(&self.counters.gc_moved_bytes, report.bytes_moved);

        for id in candidates {
            let empty = self.acct.lock().expect("accounting lock").segments.get(&id).is_some_and(|s| s.live == 0);
            if !empty {
                continue; // a put revived a quarantined chunk into it meanwhile, or a move lost a race
            }
            let Some(seg) = self.segs.remove(id) else { continue };
            let size = seg.file_len().unwrap_or(0);
            std::fs::remove_file(seg.path())
                .map_err(|e| ChunkError::io(format!("remove {}", seg.path().display()), e))?;
            self.acct.lock().expect("accounting lock").segments.remove(&id);
            report.segments_removed += 1;
            report.bytes_reclaimed += size;
        }
        if report.segments_removed > 0 {
            sync_dir(self.segs.dir())?;
        }
        bump(&self.counters.gc_reclaimed_bytes, report.bytes_reclaimed);
        tracing::info!(?report, "gc pass done");
        Ok(report)
    }
}
