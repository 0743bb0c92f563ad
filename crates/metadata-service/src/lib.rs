//! The metadata service: one ordered keyspace of byte keys and values, replicated by Raft
//! (`openraft`) across 1, 3 or 5 voters, with the log and the state machine in RocksDB (through
//! `kv-engine`). Serves the `Kv` and `Admin` APIs to clients and `RaftPeer` to other nodes.

mod admin_service;
mod batcher;
mod config;
mod error;
mod kv_service;
mod log_store;
mod network;
mod state_machine;
pub mod types;
mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::meta::v1::admin_server::AdminServer;
use cairn_proto::meta::v1::kv_server::KvServer;
use cairn_proto::meta::v1::raft_peer_server::RaftPeerServer;
use daemon_kit::metrics::{RpcMetrics, ScrapeCollector};
use daemon_kit::{HttpState, serve_http};
use kv_engine::{KvEngine, RocksEngine};
use openraft::{RaftMetrics, ServerState, SnapshotPolicy};
use prometheus::Registry;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use batcher::QUORUM_WAIT;
pub use config::{MetaArgs, MetaConfig, parse_members};
pub use error::{LEADER_HEADER, MetaError};
pub use validate::{MAX_KEY, MAX_TXN_ITEMS, MAX_VALUE};

use crate::admin_service::AdminService;
use crate::kv_service::KvService;
use crate::log_store::LogStore;
use crate::network::{MAX_PEER_MESSAGE, PeerNetwork, PeerService};
use crate::state_machine::StateMachine;
use crate::types::{MetaNode, NodeId, Raft};

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn internal(e: impl ToString) -> MetaError {
    MetaError::Internal(e.to_string())
}

async fn listen(addr: std::net::SocketAddr) -> Result<TcpIncoming, MetaError> {
    let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetaError::Bind { addr, source })?;
    TcpIncoming::from_listener(l, true, Some(Duration::from_secs(60))).map_err(internal)
}

/// Version of the data directory's layout and encodings (`raft-log/` and `state/` keys,
/// `snapshot.bin`), kept in its `FORMAT` file; a directory from before that file counts as 1.
pub const DATA_FORMAT_VERSION: u32 = 1;

/// Runs a metadata node until `shutdown` resolves.
pub async fn run(cfg: MetaConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), MetaError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| MetaError::Storage(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    format_version::open_or_init(&cfg.data_dir, "metadata data directory", DATA_FORMAT_VERSION)
        .map_err(|e| MetaError::Format(e.to_string()))?;
    let log_kv: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&cfg.data_dir.join("raft-log"))?);
    let sm_kv: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&cfg.data_dir.join("state"))?);
    let log_store = LogStore::open(log_kv).map_err(|e| MetaError::Storage(e.to_string()))?;
    let sm =
        StateMachine::open(sm_kv, cfg.data_dir.join("snapshot.bin")).map_err(|e| MetaError::Storage(e.to_string()))?;
    let shared = sm.shared();
    let flusher = log_store.flusher();

    let raft_cfg = openraft::Config {
        cluster_name: "cairn-meta".into(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: (cfg.snapshot_logs / 10).max(100),
        purge_batch_size: 64,
        max_payload_entries: 1000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| MetaError::Config(e.to_string()))?;
    let raft = Raft::new(cfg.id, Arc::new(raft_cfg), PeerNetwork, log_store, sm).await.map_err(internal)?;

    // Bind everything before initialising, so that peers can reach us at once.
    let registry = Registry::new();
    let rpc = RpcMetrics::register(&registry, "cairn_meta").map_err(internal)?;
    register_raft_metrics(&registry, &raft, shared.clone()).map_err(internal)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let peer_incoming = listen(cfg.peer_listen).await?;
    let api_incoming = listen(cfg.listen).await?;
    let health_raft = raft.clone();
    let http = serve_http(
        cfg.http_listen,
        HttpState {
            registry,
            health: Arc::new(move || {
                let m = health_raft.metrics().borrow().clone();
                match (&m.running_state, m.current_leader) {
                    (Err(e), _) => Err(format!("raft stopped: {e}")),
                    (Ok(()), None) => Err("no leader known".into()),
                    (Ok(()), Some(_)) => Ok(()),
                }
            }),
        },
        stopped(stop_rx.clone()),
    )
    .await?;
    let tls = cfg.tls();
    mtls::install_client_identity(&tls).map_err(|e| MetaError::Config(e.to_string()))?;
    let server = || -> Result<Server, MetaError> {
        let mut b = Server::builder();
        if let Some(t) = tls.server_config().map_err(|e| MetaError::Config(e.to_string()))? {
            b = b.tls_config(t).map_err(|e| MetaError::Config(format!("TLS: {e}")))?;
        }
        Ok(b)
    };
    let peer = server()?
        .add_service(
            RaftPeerServer::new(PeerService::new(raft.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
        .serve_with_incoming_shutdown(peer_incoming, stopped(stop_rx.clone()));
    let kv = KvServer::new(KvService::new(
        batcher::Batcher::start(raft.clone()),
        shared.clone(),
        rpc.clone(),
        stop_rx.clone(),
    ));
    let admin = AdminServer::new(AdminService::new(raft.clone(), shared.clone(), rpc));
    // The same API on the unix socket, if any: plaintext, guarded by the socket's mode.
    let local = match &cfg.unix_socket {
        Some(path) => {
            let incoming = daemon_kit::bind_unix(path).map_err(MetaError::Config)?;
            let serve = Server::builder()
                .add_service(kv.clone())
                .add_service(admin.clone())
                .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let api = server()?
        .add_service(kv)
        .add_service(admin)
        .serve_with_incoming_shutdown(api_incoming, stopped(stop_rx.clone()));
    let peer = tokio::spawn(peer);
    let api = tokio::spawn(api);
    let http = tokio::spawn(http);

    initialise(&cfg, &raft).await?;
    tracing::info!(id = cfg.id, api = %cfg.listen, unix = ?cfg.unix_socket, peer = %cfg.peer_listen, http = %cfg.http_listen, "metadata node ready");

    shutdown.await;
    let _ = stop_tx.send(true);
    let (a, p, h) = tokio::join!(api, peer, http);
    if let Some(local) = local {
        local.await.map_err(internal)?.map_err(internal)?;
    }
    if let Some(path) = &cfg.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    raft.shutdown().await.map_err(internal)?;
    flusher.stop().await;
    tracing::info!("metadata node stopped cleanly");
    a.map_err(internal)?.map_err(internal)?;
    p.map_err(internal)?.map_err(internal)?;
    h.map_err(internal)??;
    Ok(())
}

/// Initialises the group once: a single voter (no `initial_members`), or — on the lowest id of
/// `initial_members` — the listed voters. Nodes started with `join` wait to be added.
async fn initialise(cfg: &MetaConfig, raft: &Raft) -> Result<(), MetaError> {
    if cfg.join || raft.is_initialized().await.map_err(internal)? {
        return Ok(());
    }
    let mut members = cfg.members()?;
    if members.is_empty() {
        members.insert(cfg.id, cfg.me());
    }
    if members.keys().next() != Some(&cfg.id) {
        return Ok(()); // the lowest id initialises; we learn the group from it
    }
    match raft.initialize(members.clone()).await {
        Ok(()) => {
            tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "raft group initialised");
            Ok(())
        }
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(internal(e)),
    }
}

struct RaftSnapshot {
    m: RaftMetrics<NodeId, MetaNode>,
    revision: u64,
}

fn register_raft_metrics(registry: &Registry, raft: &Raft, sm: Arc<state_machine::Shared>) -> prometheus::Result<()> {
    let rx = raft.metrics();
    let c =
        ScrapeCollector::<RaftSnapshot>::new(move || RaftSnapshot { m: rx.borrow().clone(), revision: sm.revision() })
            .gauge("cairn_meta_is_leader", "1 when this node is the Raft leader", |s| {
                (s.m.state == ServerState::Leader) as u8 as f64
            })?
            .gauge("cairn_meta_leader_id", "Id of the leader this node knows (0: none)", |s| {
                s.m.current_leader.unwrap_or(0) as f64
            })?
            .gauge("cairn_meta_term", "Current Raft term", |s| s.m.current_term as f64)?
            .gauge("cairn_meta_last_log_index", "Index of the last log entry", |s| {
                s.m.last_log_index.unwrap_or(0) as f64
            })?
            .gauge("cairn_meta_commit_index", "Index of the last entry applied (committed) on this node", |s| {
                s.m.last_applied.map_or(0, |l| l.index) as f64
            })?
            .gauge("cairn_meta_apply_lag", "Log entries written but not yet applied", |s| {
                s.m.last_log_index.unwrap_or(0).saturating_sub(s.m.last_applied.map_or(0, |l| l.index)) as f64
            })?
            .gauge("cairn_meta_snapshot_index", "Last log index in the current snapshot", |s| {
                s.m.snapshot.map_or(0, |l| l.index) as f64
            })?
            .gauge("cairn_meta_voters", "Voters in the current membership", |s| {
                s.m.membership_config.membership().voter_ids().count() as f64
            })?
            .gauge("cairn_meta_revision", "Store revision", |s| s.revision as f64)?;
    registry.register(Box::new(c))
}
