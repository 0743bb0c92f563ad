//! objectd: the S3-compatible object store. Object data is chunks in the pool (through the
//! replicated [`cluster::ChunkClient`]); buckets, the object index, multipart state and access
//! keys live in the metadata service, so objectd keeps no state of its own and any number of
//! instances can serve the same buckets.

pub mod admin;
mod auth;
mod auth_edge;
mod buckets;
mod cache;
mod checksum;
pub mod config;
mod copy;
mod data;
mod error;
mod host;
mod http;
mod list;
mod metrics;
mod multipart;
mod object_delete;
mod object_rw;
pub mod records;
mod service;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleError;
use cluster::{ChunkClient, ClientConfig};
use daemon_kit::{HttpState, serve_http};
use s3s::service::S3ServiceBuilder;

pub use config::{ObjectdArgs, ObjectdConfig};
pub use error::ObjectdError;
pub use records::Permission;

use crate::cache::Cache;
use crate::records::{AccessKey, BucketRecord};
use crate::store::Store;

/// Connects to the metadata service and the pool, waiting as long as it takes (or until
/// `shutdown`).
async fn connect(
    cfg: &ObjectdConfig,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<(metadata_client::MetaClient, ChunkClient)>, ObjectdError> {
    let meta = metadata_client::MetaClient::new(&cfg.meta).map_err(|e| ObjectdError::Config(e.to_string()))?;
    loop {
        let attempt = async {
            let chunks =
                ChunkClient::new(meta.clone(), ClientConfig { min_replicas: 1, ..ClientConfig::default() }).await?;
            Ok::<_, cluster::ClusterError>(chunks)
        };
        match attempt.await {
            Ok(c) => return Ok(Some((meta, c))),
            Err(cluster::ClusterError::Config(m)) => return Err(ObjectdError::Config(m)),
            Err(e) => tracing::warn!(error = %e, "cannot reach the metadata service yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut *shutdown => return Ok(None),
        }
    }
}

/// Serves S3 until `shutdown` resolves; requests in flight then finish.
pub async fn run(cfg: ObjectdConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ObjectdError> {
    let tls = cfg.tls();
    mtls::install_client_identity(&tls).map_err(|e| ObjectdError::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ObjectdError::Bind { addr: cfg.listen, source })?;
    let metrics = Arc::new(metrics::Metrics::new().map_err(|e| ObjectdError::Serve(e.to_string()))?);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let health = ready.clone();
    let http = serve_http(
        cfg.http_listen,
        HttpState {
            registry: metrics.registry.clone(),
            health: Arc::new(move || {
                if health.load(Ordering::Relaxed) { Ok(()) } else { Err("connecting to the pool".into()) }
            }),
        },
        stopped(stop_rx.clone()),
    )
    .await?;
    let http = tokio::spawn(http);

    let mut shutdown = Box::pin(shutdown);
    let Some((meta, chunks)) = connect(&cfg, &mut shutdown).await? else {
        let _ = stop_tx.send(true);
        return Ok(());
    };
    if let (Some(id), Some(secret)) = (&cfg.admin_access_key_id, &cfg.admin_secret_access_key) {
        // Every replica does this at start; the compare-and-set makes them agree.
        admin::sync_admin_key(&meta, id, &secret.0, "admin").await?;
        tracing::info!(access_key = %id, "admin access key in place");
    }
    let store = Store {
        keys: Cache::<AccessKey>::follow(meta.clone(), records::KEYS_PREFIX),
        buckets: Cache::<BucketRecord>::follow(meta.clone(), records::BUCKETS_PREFIX),
        meta,
        chunks,
        cfg: Arc::new(cfg.clone()),
        metrics: metrics.clone(),
    };
    let s3 = {
        let mut b = S3ServiceBuilder::new(service::Objectd { store: store.clone() });
        b.set_auth(auth::KeyAuth { keys: store.keys.clone() });
        b.set_access(auth::BucketAccess { keys: store.keys.clone(), buckets: store.buckets.clone() });
        b.set_host(host::Domains(cfg.domain.clone()));
        b.build()
    };
    let s3 = HandleError::new(s3, |e: s3s::HttpError| async move {
        tracing::warn!(error = ?e, "request failed below the S3 layer");
        http::xml_error(::http::StatusCode::BAD_REQUEST, "BadRequest", "The request could not be read.", "")
    });
    let app =
        Router::new().fallback_service(s3).layer(axum::middleware::from_fn_with_state(metrics.clone(), http::edge));
    if cfg.mpu_sweep_secs > 0 {
        tokio::spawn(multipart::sweep_abandoned(
            store.clone(),
            Duration::from_secs(cfg.mpu_expiry_secs),
            Duration::from_secs(cfg.mpu_sweep_secs),
        ));
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(listen = %cfg.listen, region = %cfg.region, "objectd serving S3");
    http::serve(listener, app, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}
