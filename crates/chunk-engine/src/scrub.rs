//! Scrub: read and verify every stored chunk, quarantine and report the damaged ones.

use kv_engine::{for_each_in_range, prefix_end};
use serde::Serialize;

use crate::engine::ChunkEngine;
use crate::index::{CHUNK_PREFIX, IndexEntry, hash_of_key};
use crate::{ChunkError, ChunkHash};

/// Progress of a running scrub, reported every few chunks.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ScrubProgress {
    /// Chunks looked at so far.
    pub checked: u64,
    /// Chunks in the index when the scrub started.
    pub total: u64,
    /// Bytes verified so far.
    pub bytes: u64,
    /// Damaged chunks found so far.
    pub damaged: u64,
}

/// The outcome of a scrub.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubReport {
    /// Chunks looked at.
    pub checked: u64,
    /// Bytes verified.
    pub bytes: u64,
    /// Chunks whose stored copy is bad (found now or quarantined before), in hash order.
    pub damaged: Vec<ChunkHash>,
}

/// Progress callbacks happen every this many chunks (and at the end).
const PROGRESS_EVERY: u64 = 64;

impl ChunkEngine {
    /// Verifies every chunk. Damaged copies are quarantined (reads then fail with
    /// [`ChunkError::Corrupt`] until the chunk is put again).
    pub fn scrub(&self, mut progress: impl FnMut(&ScrubProgress)) -> Result<ScrubReport, ChunkError> {
        let mut p = ScrubProgress { total: self.acct.lock().expect("accounting lock").chunks, ..Default::default() };
        let mut report = ScrubReport::default();
        let mut failure: Option<ChunkError> = None;
        let mut visit = |k: &[u8], v: &[u8]| -> Result<(), ChunkError> {
            let hash = hash_of_key(k)?;
            let e = IndexEntry::decode(v)?;
            p.checked += 1;
            if e.quarantined {
                report.damaged.push(hash);
            } else {
                match self.read_verified(&hash, &e.loc)? {
                    Ok(data) => p.bytes += data.len() as u64,
                    Err(detail) => {
                        if self.entry(&hash)?.map(|n| n.loc) == Some(e.loc) {
                            self.quarantine(&hash, e.loc, &detail)?;
                            report.damaged.push(hash);
                        }
                    }
                }
            }
            p.damaged = report.damaged.len() as u64;
            if p.checked.is_multiple_of(PROGRESS_EVERY) {
                progress(&p);
            }
            Ok(())
        };
        for_each_in_range(&*self.kv, CHUNK_PREFIX, prefix_end(CHUNK_PREFIX).as_deref(), 1024, |k, v| {
            visit(k, v).map_err(|e| {
                let msg = e.to_string();
                failure = Some(e);
                kv_engine::KvError::Backend(msg)
            })
        })
        .map_err(|e| failure.take().unwrap_or(ChunkError::Index(e)))?;
        p.total = p.total.max(p.checked);
        progress(&p);
        report.checked = p.checked;
        report.bytes = p.bytes;
        Ok(report)
    }
}
