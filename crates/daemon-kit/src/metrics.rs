//! Prometheus building blocks shared by the daemons: series computed at scrape time from a
//! snapshot of the daemon's state, and per-RPC counters and latency histograms.

use std::sync::Arc;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Reads one value out of a state snapshot `S`.
pub type Read<S> = fn(&S) -> f64;

enum Series<S> {
    Gauge(Gauge, Read<S>),
    Counter(Counter, Read<S>),
}

/// Series whose values are read from a fresh snapshot of `S` each time `/metrics` is scraped.
pub struct ScrapeCollector<S> {
    snapshot: Arc<dyn Fn() -> S + Send + Sync>,
    series: Vec<Series<S>>,
    descs: Vec<Desc>,
}

impl<S: 'static> ScrapeCollector<S> {
    /// A collector taking its snapshot from `snapshot`.
    pub fn new(snapshot: impl Fn() -> S + Send + Sync + 'static) -> Self {
        ScrapeCollector { snapshot: Arc::new(snapshot), series: Vec::new(), descs: Vec::new() }
    }

    /// Adds a gauge.
    pub fn gauge(mut self, name: &str, help: &str, read: Read<S>) -> prometheus::Result<Self> {
        let g = Gauge::with_opts(Opts::new(name, help))?;
        self.descs.extend(g.desc().into_iter().cloned());
        self.series.push(Series::Gauge(g, read));
        Ok(self)
    }

    /// Adds a counter (the value read must only grow).
    pub fn counter(mut self, name: &str, help: &str, read: Read<S>) -> prometheus::Result<Self> {
        let c = Counter::with_opts(Opts::new(name, help))?;
        self.descs.extend(c.desc().into_iter().cloned());
        self.series.push(Series::Counter(c, read));
        Ok(self)
    }
}

impl<S: 'static> Collector for ScrapeCollector<S> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = (self.snapshot)();
        self.series
            .iter()
            .flat_map(|series| match series {
                Series::Gauge(m, read) => {
                    m.set(read(&s));
                    m.collect()
                }
                Series::Counter(m, read) => {
                    m.reset();
                    m.inc_by(read(&s));
                    m.collect()
                }
            })
            .collect()
    }
}

/// `<prefix>_rpc_total{method,code}` and `<prefix>_rpc_seconds{method}`.
#[derive(Clone)]
pub struct RpcMetrics {
    calls: IntCounterVec,
    latency: HistogramVec,
}

impl RpcMetrics {
    /// Creates and registers the two series.
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new(format!("{prefix}_rpc_total"), "gRPC requests by method and status code"),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(format!("{prefix}_rpc_seconds"), "gRPC request latency by method")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18)?),
            &["method"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(RpcMetrics { calls, latency })
    }

    /// Records one finished request with its gRPC code (`None`: OK).
    pub fn observe(&self, method: &str, started: Instant, code: Option<tonic::Code>) {
        let code = code.map_or_else(|| "OK".to_string(), |c| format!("{c:?}"));
        self.calls.with_label_values(&[method, &code]).inc();
        self.latency.with_label_values(&[method]).observe(started.elapsed().as_secs_f64());
    }
}

/// Records a request's outcome from its result.
impl RpcMetrics {
    /// As [`observe`](Self::observe), reading the code from a gRPC result.
    pub fn observe_result<T>(&self, method: &str, started: Instant, result: &Result<T, tonic::Status>) {
        self.observe(method, started, result.as_ref().err().map(|s| s.code()));
    }
}
