//! Release: a writer that has committed the removal of its references says which chunks it no
//! longer needs, and this node deletes at once each one that no reference key names and that
//! nobody else put within the write window — the pool-GC sweep's rule applied to one chunk,
//! skipping only the releasing writer's own puts it vouches for (see `docs/ARCHITECTURE.md`,
//! "Release after commit"). Whatever is held stays for the next pool-GC round.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_proto::chunk::v1 as pb;
use chunk_engine::{ChunkEngine, ChunkHash};
use futures::StreamExt;
use metadata_client::MetaClient;

use crate::pool_gc::{PoolGcStats, delete_unreferenced};
use crate::PutTracker;

/// Chunks of one release examined at a time (each one reference scan).
const IN_FLIGHT: usize = 32;

/// What a node needs to release chunks: the pool's reference index and its put history.
pub struct Releaser {
    /// The chunks.
    pub engine: Arc<ChunkEngine>,
    /// The metadata service holding the reference keys.
    pub meta: MetaClient,
    /// This node's put history.
    pub tracker: Arc<PutTracker>,
    /// The writers' window (`pool_gc_window_secs`).
    pub window: Duration,
    /// Where released chunks are counted.
    pub stats: Arc<PoolGcStats>,
}

/// How one chunk of a release ended.
enum Outcome {
    Deleted(u64),
    Referenced,
    Held,
}

impl Releaser {
    /// Releases `hashes` for `writer` (non-zero), which vouches for its puts up to `upto`.
    pub async fn release(&self, hashes: Vec<ChunkHash>, writer: u64, upto: u64) -> Result<pb::ReleaseResponse, String> {
        let mut out = pb::ReleaseResponse::default();
        // Puts before the history began may await their reference: as a sweep, wait a window.
        if !self.tracker.covers(self.window) {
            out.held = hashes.len() as u64;
            self.stats.release_held.fetch_add(out.held, Ordering::Relaxed);
            return Ok(out);
        }
        let mut results = futures::stream::iter(hashes).map(|h| self.one(h, writer, upto)).buffer_unordered(IN_FLIGHT);
        while let Some(r) = results.next().await {
            match r? {
                Outcome::Deleted(bytes) => {
                    out.deleted += 1;
                    out.deleted_bytes += bytes;
                }
                Outcome::Referenced => out.referenced += 1,
                Outcome::Held => out.held += 1,
            }
        }
        self.stats.released_chunks.fetch_add(out.deleted, Ordering::Relaxed);
        self.stats.released_bytes.fetch_add(out.deleted_bytes, Ordering::Relaxed);
        self.stats.release_held.fetch_add(out.held, Ordering::Relaxed);
        Ok(out)
    }

    async fn one(&self, hash: ChunkHash, writer: u64, upto: u64) -> Result<Outcome, String> {
        let e = self.engine.clone();
        let Some(info) = tokio::task::spawn_blocking(move || e.info(&hash))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
        else {
            return Ok(Outcome::Deleted(0)); // not here (already gone)
        };
        // As a sweep's page: the scan starts at `s`, puts from s − W on may still be committed.
        let scan_start = Instant::now();
        let Some(since) = scan_start.checked_sub(self.window) else { return Ok(Outcome::Held) };
        let (start, end) = cluster::refs::refs_of(&hash);
        let refs = self.meta.range(&start, &end, 1).await.map_err(|e| e.to_string())?;
        if !refs.kvs.is_empty() {
            return Ok(Outcome::Referenced);
        }
        if self.tracker.put_since_except(&hash, since, writer, upto) {
            return Ok(Outcome::Held);
        }
        match delete_unreferenced(&self.engine, hash, info.refs).await? {
            true => Ok(Outcome::Deleted(info.len as u64)),
            false => Ok(Outcome::Held), // put again meanwhile
        }
    }
}
