//! objectd's Prometheus metrics: requests by method and status, latency, bytes in and out.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Every metric objectd exports on `/metrics`.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub seconds: HistogramVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub mpu_aborted: IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("cairn_s3_requests_total", "S3 requests by HTTP method and status"),
            &["method", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("cairn_s3_request_seconds", "S3 request latency until the response head")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["method"],
        )?;
        let bytes_in = IntCounter::new("cairn_s3_bytes_in_total", "Request body bytes announced by Content-Length")?;
        let bytes_out = IntCounter::new("cairn_s3_bytes_out_total", "Response body bytes announced by Content-Length")?;
        let mpu_aborted =
            IntCounter::new("cairn_s3_multipart_expired_total", "Abandoned multipart uploads aborted by the sweep")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(bytes_in.clone()))?;
        registry.register(Box::new(bytes_out.clone()))?;
        registry.register(Box::new(mpu_aborted.clone()))?;
        Ok(Metrics { registry, requests, seconds, bytes_in, bytes_out, mpu_aborted })
    }
}
