//! The daemon HTTP endpoint: `GET /metrics` (Prometheus text format) and `GET /healthz`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

/// Failure to serve HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("metrics endpoint failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the endpoint serves: the registry to encode and a health check.
#[derive(Clone)]
pub struct HttpState {
    /// Metrics of this daemon (collectors may compute values at scrape time).
    pub registry: Registry,
    /// Returns `Ok` when healthy, else the reason (answered with 503).
    pub health: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_string())], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    match (s.health)() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
    }
}

/// Binds `addr` now (so errors surface at start-up) and returns the server future, which runs
/// until `shutdown` resolves.
pub async fn serve_http(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), HttpError>>, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })?;
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(state);
    Ok(async move {
        axum::serve(listener, app).tcp_nodelay(true).with_graceful_shutdown(shutdown).await.map_err(HttpError::Serve)
    })
}
