//! Serving CSI services on a unix socket, calling them over one, and the wrapper every RPC
//! handler runs in (metrics, one log line per failure, the error mapping).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

use daemon_kit::metrics::RpcMetrics;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::error::CsiError;

/// Runs one CSI call: records its outcome in `metrics`, logs a failure (method and message —
/// never the request, which may carry secrets), and maps the error to the spec's code.
pub async fn rpc<T>(
    metrics: &RpcMetrics,
    method: &'static str,
    volume: &str,
    call: impl Future<Output = Result<T, CsiError>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let started = Instant::now();
    let out = call.await.map(tonic::Response::new).map_err(|e| {
        tracing::info!(method, volume, code = ?e.code(), error = %e, "CSI call failed");
        tonic::Status::from(e)
    });
    metrics.observe_result(method, started, &out);
    out
}

/// A gRPC channel to a CSI socket (as the sidecars and the kubelet connect).
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://csi.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}
