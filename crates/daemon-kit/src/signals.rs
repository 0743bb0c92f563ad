//! Shutdown signals: SIGTERM and SIGINT both mean "finish in-flight work, then exit".

/// The future [`shutdown_signal`] returns.
pub type ShutdownSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> ShutdownSignal {
    Box::pin(wait_for_signal())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
}
