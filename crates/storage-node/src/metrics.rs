//! Prometheus metrics of a storage node: engine figures read at scrape time, RPC counts and latencies.

use std::sync::Arc;
use std::time::Instant;

use chunk_engine::{ChunkEngine, EngineStats};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::Status;

type Read = fn(&EngineStats) -> f64;

enum Series {
    Gauge(Gauge, Read),
    Counter(Counter, Read),
}

/// Exposes [`EngineStats`] as Prometheus series, computed when scraped.
struct EngineCollector {
    engine: Arc<ChunkEngine>,
    series: Vec<Series>,
    descs: Vec<Desc>,
}

impl EngineCollector {
    fn new(engine: Arc<ChunkEngine>) -> prometheus::Result<Self> {
        let g = |name: &str, help: &str, read: Read| -> prometheus::Result<Series> {
            Ok(Series::Gauge(Gauge::with_opts(Opts::new(name, help))?, read))
        };
        let c = |name: &str, help: &str, read: Read| -> prometheus::Result<Series> {
            Ok(Series::Counter(Counter::with_opts(Opts::new(name, help))?, read))
        };
        let series = vec![
            g("cairn_node_capacity_bytes", "Size of the filesystem holding the data directory", |s| {
                s.total_bytes as f64
            })?,
            g("cairn_node_free_bytes", "Space available on that filesystem", |s| s.free_bytes as f64)?,
            g("cairn_node_used_bytes", "Bytes in segment files", |s| s.used_bytes as f64)?,
            g("cairn_node_dead_bytes", "Bytes in segment files no live chunk uses", |s| s.dead_bytes as f64)?,
            g("cairn_node_logical_bytes", "Sum of chunk length times references", |s| s.logical_bytes as f64)?,
            g("cairn_node_physical_bytes", "Sum of distinct chunk lengths", |s| s.physical_bytes as f64)?,
            g("cairn_node_dedup_ratio", "Logical over physical bytes", |s| s.dedup_ratio)?,
            g("cairn_node_chunks", "Distinct chunks stored", |s| s.chunks as f64)?,
            g("cairn_node_segments", "Segment files", |s| s.segments as f64)?,
            c("cairn_node_chunk_puts_total", "Chunk puts, deduplicated ones included", |s| s.puts as f64)?,
            c("cairn_node_chunk_put_bytes_total", "Bytes offered to put", |s| s.put_bytes as f64)?,
            c("cairn_node_dedup_hits_total", "Puts that only added a reference", |s| s.dedup_hits as f64)?,
            c("cairn_node_chunk_gets_total", "Chunk gets served", |s| s.gets as f64)?,
            c("cairn_node_chunk_get_bytes_total", "Bytes served by gets", |s| s.get_bytes as f64)?,
            c("cairn_node_corruptions_total", "Chunk copies that failed verification and were quarantined", |s| {
                s.corruptions as f64
            })?,
            c("cairn_node_commit_batches_total", "Group commits (fsync rounds)", |s| s.commit_batches as f64)?,
            c("cairn_node_commit_ops_total", "Index operations committed", |s| s.commit_ops as f64)?,
            c("cairn_node_gc_runs_total", "Garbage collection passes", |s| s.gc_runs as f64)?,
            c("cairn_node_gc_reclaimed_bytes_total", "Bytes given back to the filesystem by GC", |s| {
                s.gc_reclaimed_bytes as f64
            })?,
            c("cairn_node_gc_moved_bytes_total", "Live bytes GC copied out of sparse segments", |s| {
                s.gc_moved_bytes as f64
            })?,
        ];
        let descs = series
            .iter()
            .flat_map(|s| match s {
                Series::Gauge(m, _) => m.desc().into_iter().cloned().collect::<Vec<_>>(),
                Series::Counter(m, _) => m.desc().into_iter().cloned().collect(),
            })
            .collect();
        Ok(EngineCollector { engine, series, descs })
    }
}

impl Collector for EngineCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.engine.stats();
        self.series
            .iter()
            .flat_map(|s| match s {
                Series::Gauge(m, read) => {
                    m.set(read(&stats));
                    m.collect()
                }
                Series::Counter(m, read) => {
                    m.reset();
                    m.inc_by(read(&stats));
                    m.collect()
                }
            })
            .collect()
    }
}

/// The node's registry plus per-RPC instruments.
pub struct NodeMetrics {
    /// Everything `/metrics` serves.
    pub registry: Registry,
    rpcs: IntCounterVec,
    latency: HistogramVec,
}

impl NodeMetrics {
    /// Registers the engine collector and the RPC instruments.
    pub fn new(engine: Arc<ChunkEngine>) -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry.register(Box::new(EngineCollector::new(engine)?))?;
        let rpcs = IntCounterVec::new(
            Opts::new("cairn_node_rpc_total", "gRPC requests by method and status code"),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("cairn_node_rpc_seconds", "gRPC request latency by method")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18)?),
            &["method"],
        )?;
        registry.register(Box::new(rpcs.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(NodeMetrics { registry, rpcs, latency })
    }

    /// Records one finished request.
    pub fn observe<T>(&self, method: &str, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.rpcs.with_label_values(&[method, &code]).inc();
        self.latency.with_label_values(&[method]).observe(started.elapsed().as_secs_f64());
    }
}
