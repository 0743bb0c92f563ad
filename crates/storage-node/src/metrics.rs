//! Prometheus metrics of a storage node: engine and journal figures read at scrape time, RPC
//! counts and latencies.

use std::sync::Arc;

use chunk_engine::{ChunkEngine, EngineStats};
use cluster::RepairProgress;

use crate::{JournalStats, PoolGcStats, PutTracker, RepairStats};
use daemon_kit::metrics::{RpcMetrics, ScrapeCollector};
use prometheus::Registry;
use std::sync::atomic::Ordering;

/// The node's registry plus per-RPC instruments.
pub struct NodeMetrics {
    /// Everything `/metrics` serves.
    pub registry: Registry,
    /// `cairn_node_rpc_total` and `cairn_node_rpc_seconds`.
    pub rpc: RpcMetrics,
}

impl NodeMetrics {
    /// Registers the engine series and the RPC instruments.
    pub fn new(
        engine: Arc<ChunkEngine>,
        repair: Arc<RepairStats>,
        pool_gc: Arc<PoolGcStats>,
        tracker: Arc<PutTracker>,
        journals: Arc<JournalStats>,
        node_id: &str,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let engine_series = ScrapeCollector::<EngineStats>::new(move || engine.stats())
            .gauge("cairn_node_capacity_bytes", "Size of the filesystem holding the data directory", |s| {
                s.total_bytes as f64
            })?
            .gauge("cairn_node_free_bytes", "Space available on that filesystem", |s| s.free_bytes as f64)?
            .gauge("cairn_node_used_bytes", "Bytes in segment files", |s| s.used_bytes as f64)?
            .gauge("cairn_node_dead_bytes", "Bytes in segment files no live chunk uses", |s| s.dead_bytes as f64)?
            .gauge("cairn_node_logical_bytes", "Sum of chunk length times references", |s| s.logical_bytes as f64)?
            .gauge("cairn_node_physical_bytes", "Sum of distinct chunk lengths", |s| s.physical_bytes as f64)?
            .gauge("cairn_node_dedup_ratio", "Logical over physical bytes", |s| s.dedup_ratio)?
            .gauge("cairn_node_chunks", "Distinct chunks stored", |s| s.chunks as f64)?
            .gauge("cairn_node_segments", "Segment files", |s| s.segments as f64)?
            .counter("cairn_node_chunk_puts_total", "Chunk puts, deduplicated ones included", |s| s.puts as f64)?
            .counter("cairn_node_chunk_put_bytes_total", "Bytes offered to put", |s| s.put_bytes as f64)?
            .counter("cairn_node_dedup_hits_total", "Puts that only added a reference", |s| s.dedup_hits as f64)?
            .counter("cairn_node_chunk_gets_total", "Chunk gets served", |s| s.gets as f64)?
            .counter("cairn_node_chunk_get_bytes_total", "Bytes served by gets", |s| s.get_bytes as f64)?
            .counter(
                "cairn_node_corruptions_total",
                "Chunk copies that failed verification and were quarantined",
                |s| s.corruptions as f64,
            )?
            .counter("cairn_node_commit_batches_total", "Group commits (fsync rounds)", |s| s.commit_batches as f64)?
            .counter("cairn_node_commit_ops_total", "Index operations committed", |s| s.commit_ops as f64)?
            .counter("cairn_node_gc_runs_total", "Garbage collection passes", |s| s.gc_runs as f64)?
            .counter("cairn_node_gc_reclaimed_bytes_total", "Bytes given back to the filesystem by GC", |s| {
                s.gc_reclaimed_bytes as f64
            })?
            .counter("cairn_node_gc_moved_bytes_total", "Live bytes GC copied out of sparse segments", |s| {
                s.gc_moved_bytes as f64
            })?;
        registry.register(Box::new(engine_series))?;
        let id = node_id.to_string();
        let repair_series = ScrapeCollector::<RepairProgress>::new(move || repair.snapshot(&id))
            .counter("cairn_node_repair_passes_total", "Reconciliation passes started", |p| p.passes as f64)?
            .gauge("cairn_node_repair_active", "1 while a reconciliation pass runs", |p| f64::from(u8::from(p.active)))?
            .gauge("cairn_node_repair_pass_total_chunks", "Local chunks when the pass started", |p| {
                p.pass_total as f64
            })?
            .gauge("cairn_node_repair_pass_scanned_chunks", "Local chunks examined in this pass", |p| {
                p.pass_scanned as f64
            })?
            .gauge("cairn_node_repair_pending_chunks", "Copies found missing, not yet made", |p| {
                p.pending_chunks as f64
            })?
            .gauge("cairn_node_repair_pending_bytes", "Bytes of those copies", |p| p.pending_bytes as f64)?
            .gauge(
                "cairn_node_repair_under_replicated_chunks",
                "Coordinated chunks short of R reachable copies",
                |p| p.under_replicated as f64,
            )?
            .counter("cairn_node_repair_copied_chunks_total", "Copies pushed to other nodes", |p| {
                p.copied_chunks as f64
            })?
            .counter("cairn_node_repair_copied_bytes_total", "Bytes pushed to other nodes", |p| p.copied_bytes as f64)?
            .counter("cairn_node_repair_dropped_chunks_total", "Surplus local copies dropped", |p| {
                p.dropped_chunks as f64
            })?
            .counter("cairn_node_repair_healed_chunks_total", "Damaged local copies replaced", |p| {
                p.healed_chunks as f64
            })?
            .counter("cairn_node_repair_errors_total", "Failed repair attempts", |p| p.errors as f64)?
            .gauge("cairn_node_repair_rate_bytes_per_second", "Push rate of the current pass", |p| {
                p.rate_bytes_per_sec
            })?;
        registry.register(Box::new(repair_series))?;
        let pool_gc_series = ScrapeCollector::<PoolGcFigures>::new(move || PoolGcFigures::read(&pool_gc, &tracker))
            .counter("cairn_node_pool_gc_sweeps_total", "Pool GC sweeps finished on this node", |p| p.sweeps as f64)?
            .counter("cairn_node_pool_gc_deleted_chunks_total", "Unreferenced chunks pool GC deleted here", |p| {
                p.deleted_chunks as f64
            })?
            .counter("cairn_node_pool_gc_deleted_bytes_total", "Bytes of those chunks", |p| p.deleted_bytes as f64)?
            .gauge(
                "cairn_node_pool_gc_held_chunks",
                "Unreferenced chunks the last sweep kept as put within the write window",
                |p| p.held_chunks as f64,
            )?
            .gauge("cairn_node_pool_gc_held_bytes", "Bytes of those chunks", |p| p.held_bytes as f64)?
            .gauge("cairn_node_pool_gc_last_examined_chunks", "Local chunks the last sweep examined", |p| {
                p.last_examined as f64
            })?
            .gauge("cairn_node_pool_gc_last_sweep_seconds", "Duration of the last sweep", |p| {
                p.last_sweep_ms as f64 / 1000.0
            })?
            .gauge("cairn_node_pool_gc_last_epoch", "Last pool GC round swept here", |p| p.last_epoch as f64)?
            .gauge("cairn_node_pool_gc_tracked_puts", "Chunks in the put history (puts within the window)", |p| {
                p.tracked as f64
            })?
            .counter("cairn_node_released_chunks_total", "Chunks deleted at once on their writer's release", |p| {
                p.released_chunks as f64
            })?
            .counter("cairn_node_released_bytes_total", "Bytes of those chunks", |p| p.released_bytes as f64)?
            .counter(
                "cairn_node_release_held_chunks_total",
                "Released chunks kept for pool GC (put within the window by another writer)",
                |p| p.release_held as f64,
            )?;
        registry.register(Box::new(pool_gc_series))?;
        let journal_series = ScrapeCollector::<JournalFigures>::new(move || JournalFigures::read(&journals))
            .counter("cairn_node_journal_appends_total", "Journal records appended (fsynced)", |j| j.appends as f64)?
            .counter("cairn_node_journal_appended_bytes_total", "Payload bytes of those records", |j| {
                j.appended_bytes as f64
            })?
            .counter("cairn_node_journal_trims_total", "Journal trims and drops", |j| j.trims as f64)?
            .counter(
                "cairn_node_journal_reclaimed_bytes_total",
                "Bytes of journal files removed by trims and drops",
                |j| j.reclaimed_bytes as f64,
            )?
            .counter(
                "cairn_node_journal_corrupt_records_total",
                "Journal records found damaged when their journal was loaded (skipped, never returned)",
                |j| j.corrupt_records as f64,
            )?
            .gauge("cairn_node_journal_bytes", "Bytes in journal segment files", |j| j.held_bytes as f64)?;
        registry.register(Box::new(journal_series))?;
        let rpc = RpcMetrics::register(&registry, "cairn_node")?;
        Ok(NodeMetrics { registry, rpc })
    }
}

/// A copy of the journal figures at scrape time.
#[derive(Clone, Default)]
struct JournalFigures {
    appends: u64,
    appended_bytes: u64,
    trims: u64,
    reclaimed_bytes: u64,
    corrupt_records: u64,
    held_bytes: u64,
}

impl JournalFigures {
    fn read(s: &JournalStats) -> Self {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        JournalFigures {
            appends: r(&s.appends),
            appended_bytes: r(&s.appended_bytes),
            trims: r(&s.trims),
            reclaimed_bytes: r(&s.reclaimed_bytes),
            corrupt_records: r(&s.corrupt_records),
            held_bytes: r(&s.held_bytes),
        }
    }
}

/// A copy of the pool GC figures at scrape time.
#[derive(Clone, Default)]
struct PoolGcFigures {
    sweeps: u64,
    deleted_chunks: u64,
    deleted_bytes: u64,
    held_chunks: u64,
    held_bytes: u64,
    last_examined: u64,
    last_sweep_ms: u64,
    last_epoch: u64,
    tracked: u64,
    released_chunks: u64,
    released_bytes: u64,
    release_held: u64,
}

impl PoolGcFigures {
    fn read(s: &PoolGcStats, tracker: &PutTracker) -> Self {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        PoolGcFigures {
            sweeps: r(&s.sweeps),
            deleted_chunks: r(&s.deleted_chunks),
            deleted_bytes: r(&s.deleted_bytes),
            held_chunks: r(&s.held_chunks),
            held_bytes: r(&s.held_bytes),
            last_examined: r(&s.last_examined),
            last_sweep_ms: r(&s.last_sweep_ms),
            last_epoch: r(&s.last_epoch),
            tracked: tracker.tracked() as u64,
            released_chunks: r(&s.released_chunks),
            released_bytes: r(&s.released_bytes),
            release_held: r(&s.release_held),
        }
    }
}
