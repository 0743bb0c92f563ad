//! csi-block: the CSI driver for thin, replicated block volumes. The Identity, Controller and
//! Node services are served on one unix socket; every piece of controller state (volumes, their
//! publications, registered nodes) lives in the metadata service, so a restarted controller
//! forgets nothing.

pub mod admin;
mod attach;
pub mod config;
mod controller;
pub mod datapath;
mod identity;
mod nbd_export;
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
use csi_kit::InFlight;
use daemon_kit::metrics::RpcMetrics;
use daemon_kit::{HttpState, serve_http};

pub use config::{CsiBlockArgs, CsiBlockConfig};

use crate::volumes::Volumes;

/// What every service shares; cheap to clone.
#[derive(Clone)]
pub struct Driver {
    cfg: Arc<CsiBlockConfig>,
    volumes: Volumes,
    inflight: InFlight,
    metrics: RpcMetrics,
    /// Node service: the volumes staged on this node (as recorded under the state directory).
    staged: Arc<tokio::sync::Mutex<std::collections::HashMap<String, attach::StagedState>>>,
    /// Controller: the pool client replica health is checked with, made at first use.
    pool: Arc<tokio::sync::OnceCell<cluster::ChunkClient>>,
}

impl Driver {
    /// The topology segment every node plugin reports and every volume is accessible from:
    /// volumes live in the pool, so any node running the node plugin can attach them.
    fn topology(&self) -> std::collections::HashMap<String, String> {
        [(format!("{}/pool", self.cfg.driver_name), "default".to_string())].into()
    }
}

/// Serves the configured CSI services on the socket until `shutdown` resolves.
pub async fn run(cfg: CsiBlockConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let tls = cfg.tls();
    mtls::install_client_identity(&tls).map_err(|e| e.to_string())?;
    let meta = metadata_client::MetaClient::new(&cfg.meta).map_err(|e| e.to_string())?;
    let registry = prometheus::Registry::new();
    let metrics = RpcMetrics::register(&registry, "csi_block").map_err(|e| e.to_string())?;
    let ready = Arc::new(AtomicBool::new(false));
    let health = ready.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let http = serve_http(
        cfg.http_listen,
        HttpState {
            registry,
            health: Arc::new(move || {
                if health.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("registering with the metadata service".into())
                }
            }),
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
            Some(_) => datapath::DATAPATH.load_all(&cfg.state_dir),
            None => Default::default(),
        })),
        pool: Default::default(),
    };
    let carried = driver.staged.lock().await.len();
    if carried > 0 {
        tracing::info!(volumes = carried, "volumes staged before this start carry on");
    }
    let mut shutdown = Box::pin(shutdown);
    if cfg.node_id.is_some() && !node::register(&driver, &mut shutdown).await {
        let _ = stop_tx.send(true);
        return Ok(());
    }
    let incoming = daemon_kit::bind_unix(&cfg.socket())?;
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
        "csi-block serving"
    );
    let out = router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(|e| format!("CSI server: {e}"));
    let _ = std::fs::remove_file(cfg.socket());
    let _ = stop_tx.send(true);
    let _ = http.await;
    out
}
