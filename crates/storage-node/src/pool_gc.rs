//! This node's part in garbage collection across the pool: when a round starts it records every
//! chunk put here from then on, waits out the writers' window, then deletes its local chunks that
//! no reference key names and that were not put since — see `docs/ARCHITECTURE.md`, "Garbage
//! collection across the pool", for why no referenced chunk can be deleted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chunk_engine::{ChunkEngine, ChunkHash};
use cluster::gc::{GcSweep, current_epoch, report_sweep, sweeps};
use cluster::nodemap::now_unix_ms;
use metadata_client::MetaClient;
use tokio::sync::watch;

/// Chunks examined per step of a sweep.
const PAGE: usize = 512;

/// The chunks put on this node since the current round began tracking (None: no round).
#[derive(Default)]
pub struct PutTracker {
    since: Mutex<Option<HashSet<ChunkHash>>>,
}

impl PutTracker {
    /// Notes a put (or an added reference) of `hash`; call before the put is acknowledged.
    pub fn record(&self, hash: &ChunkHash) {
        if let Some(set) = self.since.lock().expect("tracker lock").as_mut() {
            set.insert(*hash);
        }
    }

    fn start(&self) {
        *self.since.lock().expect("tracker lock") = Some(HashSet::new());
    }

    fn stop(&self) {
        *self.since.lock().expect("tracker lock") = None;
    }

    fn was_put(&self, hash: &ChunkHash) -> bool {
        self.since.lock().expect("tracker lock").as_ref().is_some_and(|s| s.contains(hash))
    }
}

/// When this node starts rounds itself: every `every` (0: never) if it is the lowest-id node up.
pub struct RoundStarter {
    /// Time between rounds.
    pub every: Duration,
    /// The node map, to tell whether this node is the lowest-id one up.
    pub map: watch::Receiver<Arc<cluster::NodeMap>>,
    /// When nodes count as up.
    pub timeouts: cluster::Timeouts,
    /// When this node started (no round is started before it has run for `every`).
    pub since: std::time::Instant,
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
            match cluster::gc::start_epoch(meta, cluster::gc::WRITE_WINDOW).await {
                Ok(e) => tracing::info!(epoch = e.epoch, "started a pool GC round"),
                Err(e) => tracing::warn!(error = %e, "could not start a pool GC round"),
            }
        }
    }
}

/// Follows the GC epoch record and takes part in every round not yet swept here; starts rounds
/// per `starter`.
pub async fn pool_gc_loop(
    engine: Arc<ChunkEngine>,
    meta: MetaClient,
    tracker: Arc<PutTracker>,
    node_id: String,
    starter: RoundStarter,
    mut stop: watch::Receiver<bool>,
) {
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
        match sweeps(&meta, epoch.epoch).await {
            Ok(done) if done.iter().any(|s| s.node == node_id) => continue,
            Ok(_) => {}
            Err(_) => continue,
        }
        // Track from now; every chunk put before now has its reference committed within the
        // window (the writers' contract), so after the window the reference scan sees it.
        tracker.start();
        tracing::info!(epoch = epoch.epoch, window_ms = epoch.write_window_ms, "pool GC round: tracking puts");
        // A newer round started meanwhile is folded in: tracking since `t0` covers it too, so the
        // sweep waits for its window from `t0` and answers for it.
        let t0 = std::time::Instant::now();
        let mut epoch = epoch;
        loop {
            let window = Duration::from_millis(epoch.write_window_ms);
            let Some(left) = window.checked_sub(t0.elapsed()).filter(|d| !d.is_zero()) else { break };
            tokio::select! {
                _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
                _ = stop.wait_for(|s| *s) => { tracker.stop(); return; }
            }
            if let Ok(Some(newer)) = current_epoch(&meta).await
                && newer.epoch > epoch.epoch
            {
                epoch = newer;
            }
        }
        let res = sweep(&engine, &meta, &tracker, &node_id).await;
        tracker.stop();
        match res {
            Ok(s) => {
                tracing::info!(epoch = epoch.epoch, deleted = s.deleted, bytes = s.deleted_bytes, "pool GC sweep done");
                if let Err(e) = report_sweep(&meta, epoch.epoch, &s).await {
                    tracing::warn!(error = %e, "cannot report the GC sweep; the round runs again here");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pool GC sweep failed; it runs again"),
        }
    }
}

/// Deletes local chunks without a reference key that were not put since tracking began.
async fn sweep(
    engine: &Arc<ChunkEngine>,
    meta: &MetaClient,
    tracker: &PutTracker,
    node_id: &str,
) -> Result<GcSweep, String> {
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
        // Which of these chunks have a reference: one ordered scan over their key span.
        let referenced = cluster::refs::referenced_between(meta, &first.0, &last.0).await.map_err(|e| e.to_string())?;
        for (hash, info) in page {
            out.examined += 1;
            if referenced.contains(&hash) || tracker.was_put(&hash) {
                continue;
            }
            let (e, refs) = (engine.clone(), info.refs);
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
                Ok(0) => {
                    out.deleted += 1;
                    out.deleted_bytes += info.len as u64;
                }
                Ok(_) => {} // put again meanwhile: it stays
                Err(chunk_engine::ChunkError::NotFound(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    out.finished_unix_ms = now_unix_ms();
    Ok(out)
}
