//! This node's part in garbage collection across the pool: for every round it has not swept, once
//! its put history (`PutTracker`, kept from the node's start) reaches back the round's write
//! window, it deletes its local chunks that no reference key names and that were not put within
//! the window before the reference scan — see `docs/ARCHITECTURE.md`, "Garbage collection across
//! the pool", for why no referenced chunk can be deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chunk_engine::{ChunkEngine, ChunkHash};
use cluster::gc::{GcSweep, current_epoch, report_sweep, sweeps};
use cluster::nodemap::now_unix_ms;
use metadata_client::MetaClient;
use tokio::sync::watch;

use crate::PutTracker;

/// Chunks examined per step of a sweep.
const PAGE: usize = 512;

/// Pool GC figures of this node for `/metrics`.
#[derive(Default)]
pub struct PoolGcStats {
    /// Sweeps finished.
    pub sweeps: AtomicU64,
    /// Chunks deleted by them.
    pub deleted_chunks: AtomicU64,
    /// Bytes of those.
    pub deleted_bytes: AtomicU64,
    /// Unreferenced chunks the last sweep kept because they were put within the window.
    pub held_chunks: AtomicU64,
    /// Bytes of those: garbage, unless a writer is about to reference them.
    pub held_bytes: AtomicU64,
    /// Local chunks the last sweep examined.
    pub last_examined: AtomicU64,
    /// How long the last sweep took, in milliseconds.
    pub last_sweep_ms: AtomicU64,
    /// Last epoch swept here.
    pub last_epoch: AtomicU64,
    /// Chunks deleted at once on their writers' release.
    pub released_chunks: AtomicU64,
    /// Bytes of those.
    pub released_bytes: AtomicU64,
    /// Released chunks kept for pool GC (put within the window by someone else).
    pub release_held: AtomicU64,
}

impl PoolGcStats {
    fn note(&self, epoch: u64, s: &GcSweep) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.deleted_chunks.fetch_add(s.deleted, Ordering::Relaxed);
        self.deleted_bytes.fetch_add(s.deleted_bytes, Ordering::Relaxed);
        self.held_chunks.store(s.held, Ordering::Relaxed);
        self.held_bytes.store(s.held_bytes, Ordering::Relaxed);
        self.last_examined.store(s.examined, Ordering::Relaxed);
        self.last_sweep_ms.store(s.duration_ms, Ordering::Relaxed);
        self.last_epoch.store(epoch, Ordering::Relaxed);
    }
}

/// When this node starts rounds itself: every `every` (0: never) if it is the lowest-id node up.
pub struct RoundStarter {
    /// Time between rounds.
    pub every: Duration,
    /// The writers' window the rounds it starts carry.
    pub window: Duration,
    /// The node map, to tell whether this node is the lowest-id one up.
    pub map: watch::Receiver<Arc<cluster::NodeMap>>,
    /// When nodes count as up.
    pub timeouts: cluster::Timeouts,
    /// When this node started (no round is started before it has run for `every`).
    pub since: Instant,
}

impl RoundStarter {
    async fn maybe_start(&self, meta: &MetaClient, node_id: &str) {
        if self.every.is_zero() {
            return;
        }
        let first_up = {
            let map = self.map.borrow();
            let now = now_unix_ms();
            map.nodes.keys().find(|id| map.state(id, now, &self.timeouts) == Some(cluster::NodeState::Up)).cloned()
        };
        if first_up.as_deref() != Some(node_id) {
            return;
        }
        let due = match current_epoch(meta).await {
            Ok(Some(e)) => now_unix_ms().saturating_sub(e.started_unix_ms) >= self.every.as_millis() as u64,
            Ok(None) => self.since.elapsed() >= self.every,
            Err(_) => false,
        };
        if due {
            match cluster::gc::start_epoch(meta, self.window).await {
                Ok(e) => tracing::debug!(epoch = e.epoch, "started a pool GC round"),
                Err(e) => tracing::warn!(error = %e, "could not start a pool GC round"),
            }
        }
    }
}

/// Follows the GC epoch record and sweeps every round not yet swept here as soon as the put
/// history covers its window; starts rounds per `starter`.
pub async fn pool_gc_loop(
    engine: Arc<ChunkEngine>,
    meta: MetaClient,
    tracker: Arc<PutTracker>,
    stats: Arc<PoolGcStats>,
    node_id: String,
    starter: RoundStarter,
    mut stop: watch::Receiver<bool>,
) {
    let mut waiting_logged = 0;
    let mut last_reported: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        starter.maybe_start(&meta, &node_id).await;
        let epoch = match current_epoch(&meta).await {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the GC epoch");
                continue;
            }
        };
        if last_reported == Some(epoch.epoch) {
            continue;
        }
        match sweeps(&meta, epoch.epoch).await {
            Ok(done) if done.iter().any(|s| s.node == node_id) => {
                last_reported = Some(epoch.epoch);
                continue;
            }
            Ok(_) => {}
            Err(_) => continue,
        }
        let window = Duration::from_millis(epoch.write_window_ms);
        // Every chunk put before the history began may still await its reference: sweep only
        // once the history reaches back a whole window (after a start, W of waiting).
        if !tracker.covers(window) {
            if waiting_logged != epoch.epoch {
                tracing::info!(
                    epoch = epoch.epoch,
                    window_ms = epoch.write_window_ms,
                    "pool GC round: waiting until this node's put history covers the window"
                );
                waiting_logged = epoch.epoch;
            }
            continue;
        }
        match sweep(&engine, &meta, &tracker, window, &node_id).await {
            Ok(s) => {
                tracing::info!(
                    epoch = epoch.epoch,
                    examined = s.examined,
                    deleted = s.deleted,
                    bytes = s.deleted_bytes,
                    held_bytes = s.held_bytes,
                    ms = s.duration_ms,
                    "pool GC sweep done"
                );
                stats.note(epoch.epoch, &s);
                match report_sweep(&meta, epoch.epoch, &s).await {
                    Ok(()) => {
                        last_reported = Some(epoch.epoch);
                        if let Err(e) = cluster::gc::forget_sweeps_before(&meta, &node_id, epoch.epoch).await {
                            tracing::debug!(error = %e, "cannot remove older sweep reports");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot report the GC sweep; the round runs again here"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "pool GC sweep failed; it runs again"),
        }
    }
}

/// Drops the `refs` local references of a chunk found unreferenced and not put within the
/// window: true when it is gone; false when a put raced the check (its reference stays) or it
/// was gone already.
pub(crate) async fn delete_unreferenced(engine: &Arc<ChunkEngine>, hash: ChunkHash, refs: u64) -> Result<bool, String> {
    let e = engine.clone();
    let dropped = tokio::task::spawn_blocking(move || {
        let mut left = refs;
        for _ in 0..refs {
            left = e.unref(&hash)?;
        }
        Ok::<u64, chunk_engine::ChunkError>(left)
    })
    .await
    .map_err(|e| e.to_string())?;
    match dropped {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(chunk_engine::ChunkError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Deletes local chunks without a reference key that were not put within `window` before the
/// reference scan of their page.
async fn sweep(
    engine: &Arc<ChunkEngine>,
    meta: &MetaClient,
    tracker: &PutTracker,
    window: Duration,
    node_id: &str,
) -> Result<GcSweep, String> {
    let started = Instant::now();
    let mut out = GcSweep { node: node_id.to_string(), ..Default::default() };
    let mut after: Option<ChunkHash> = None;
    loop {
        let e = engine.clone();
        let page = tokio::task::spawn_blocking(move || e.list(after.as_ref(), PAGE))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else { break };
        after = Some(last.0);
        // Puts from here on, and from a window before, may still get their reference committed
        // after the scan: they are kept.
        let scan_start = Instant::now();
        let Some(since) = scan_start.checked_sub(window) else { return Err("window reaches before boot".into()) };
        // Which of these chunks have a reference: one ordered scan over their key span.
        let referenced = cluster::refs::referenced_between(meta, &first.0, &last.0).await.map_err(|e| e.to_string())?;
        for (hash, info) in page {
            out.examined += 1;
            if referenced.contains(&hash) {
                continue;
            }
            if tracker.put_since(&hash, since) {
                out.held += 1;
                out.held_bytes += info.len as u64;
                continue;
            }
            if delete_unreferenced(engine, hash, info.refs).await? {
                out.deleted += 1;
                out.deleted_bytes += info.len as u64;
            }
        }
    }
    out.finished_unix_ms = now_unix_ms();
    out.duration_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}
