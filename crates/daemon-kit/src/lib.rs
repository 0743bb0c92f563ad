//! What every Cairn daemon shares: logging setup, shutdown signals, free-port binding and the
//! HTTP endpoint serving Prometheus `/metrics` and `/healthz`.

mod http;
pub mod metrics;
mod signals;

pub use http::{HttpError, HttpState, serve_http};
pub use signals::shutdown_signal;

/// Initialises `tracing` logs on stderr. `filter` uses `RUST_LOG` syntax (e.g. `info`,
/// `storage_node=debug`); `RUST_LOG`, when set, wins. Safe to call twice.
pub fn init_tracing(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt().with_env_filter(env).with_target(true).with_writer(std::io::stderr).try_init();
}
