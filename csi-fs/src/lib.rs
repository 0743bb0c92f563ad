//! csi-fs: the CSI driver for a shared POSIX filesystem (ReadWriteMany). The Identity,
//! Controller and Node services are served on one unix socket; a volume is one filesystem of
//! fs-meta (its id the volume's, its quota the volume's capacity), mounted on every node that
//! stages it by a FUSE client process of its own. Every piece of controller state lives in the
//! metadata service, so a restarted controller forgets nothing.

pub mod admin;
mod attach;
pub mod config;
mod controller;
mod identity;
pub mod mount_process;
mod node;
pub mod params;
pub mod records;
mod snapshot;
mod volumes;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_proto::csi::v1::controller_server::ControllerServer;
use cairn_proto::csi::v1::identity_server::IdentityServer;
use cairn_proto::csi::v1::node_server::NodeServer;
use csi_kit::{CsiError, InFlight};
use daemon_kit::metrics::RpcMetrics;
use daemon_kit::{HttpState, serve_http};
use fs_meta::FsError;

pub use config::{CsiFsArgs, CsiFsConfig};

use crate::volumes::Volumes;

/// What every service shares; cheap to clone.
#[derive(Clone)]
pub struct Driver {
    cfg: Arc<CsiFsConfig>,
    volumes: Volumes,
    inflight: InFlight,
    metrics: RpcMetrics,
    /// Node service: the volumes staged on this node (as recorded under the state directory).
    staged: Arc<tokio::sync::Mutex<std::collections::HashMap<String, attach::StagedState>>>,
}

impl Driver {
    /// The topology segment every node plugin reports and every volume is accessible from:
    /// filesystems live in the pool, so any node running the node plugin can mount them.
    fn topology(&self) -> std::collections::HashMap<String, String> {
        [(format!("{}/pool", self.cfg.driver_name), "default".to_string())].into()
    }
}

/// The CSI error for a filesystem-namespace failure.
pub(crate) fn fs_error(e: FsError) -> CsiError {
    match e {
        FsError::NoFilesystem(id) => CsiError::NotFound(format!("filesystem {id} does not exist")),
        FsError::Contended(what) => CsiError::Aborted(format!("too much contention on {what}; retry")),
        FsError::Meta(e) => CsiError::Meta(e),
        FsError::Pool(e) => CsiError::Unavailable(format!("storage pool: {e}")),
        FsError::Quota { quota } => CsiError::ResourceExhausted(format!("quota of {quota} bytes exceeded")),
        other => CsiError::Internal(other.to_string()),
    }
}

/// Serves the configured CSI services on the socket until `shutdown` resolves.
pub async fn run(cfg: CsiFsConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let tls = cfg.tls();
    mtls::install_client_identity(&tls).map_err(|e| e.to_string())?;
    let meta = metadata_client::MetaClient::new(&cfg.meta).map_err(|e| e.to_string())?;
    let registry = prometheus::Registry::new();
    let metrics = RpcMetrics::register(&registry, "csi_fs").map_err(|e| e.to_string())?;
    let ready = Arc::new(AtomicBool::new(false));
    let health = ready.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let http = serve_http(
        cfg.http_listen,
        HttpState {
            registry,
            health: Arc::new(move || if health.load(Ordering::Relaxed) { Ok(()) } else { Err("starting".into()) }),
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let http = tokio::spawn(http);

    let driver = Driver {
        cfg: Arc::new(cfg.clone()),
        volumes: Volumes::new(meta),
        inflight: InFlight::default(),
        metrics,
        staged: Arc::new(tokio::sync::Mutex::new(match cfg.node_id {
            Some(_) => mount_process::MOUNT_PROCESS.load_all(&cfg.state_dir),
            None => Default::default(),
        })),
    };
    let carried = driver.staged.lock().await.len();
    if carried > 0 {
        tracing::info!(volumes = carried, "volumes staged before this start carry on");
    }
    let incoming = match daemon_kit::bind_unix(&cfg.socket()) {
        Ok(i) => i,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = http.await;
            return Err(e);
        }
    };
    let mut server = tonic::transport::Server::builder();
    let router = server
        .add_service(IdentityServer::new(identity::identity(&driver)))
        .add_optional_service(cfg.controller.then(|| ControllerServer::new(driver.clone())))
        .add_optional_service(cfg.node_id.is_some().then(|| NodeServer::new(driver.clone())));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        endpoint = %cfg.endpoint,
        controller = cfg.controller,
        node = cfg.node_id.as_deref().unwrap_or("-"),
        driver = %cfg.driver_name,
        "csi-fs serving"
    );
    let out = router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(|e| format!("CSI server: {e}"));
    let _ = std::fs::remove_file(cfg.socket());
    let _ = stop_tx.send(true);
    let _ = http.await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn filesystem_errors_keep_the_spec_codes() {
        assert_eq!(fs_error(FsError::NoFilesystem("fs-1".into())).code(), Code::NotFound);
        assert_eq!(fs_error(FsError::Contended("k".into())).code(), Code::Aborted);
        assert_eq!(fs_error(FsError::Quota { quota: 1 }).code(), Code::ResourceExhausted);
        let corrupt = fs_error(FsError::Corrupt { key: "fs/rec/x".into(), message: "bad".into() });
        assert_eq!(corrupt.code(), Code::Internal);
        assert!(corrupt.to_string().contains("fs/rec/x"), "{corrupt}");
    }
}
