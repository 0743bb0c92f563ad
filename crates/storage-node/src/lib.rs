//! The storage-node daemon: a [`chunk_engine::ChunkEngine`] and the volumes' write journals
//! ([`JournalStore`]) served over gRPC (`cairn.chunk.v1.ChunkStore`), with `/metrics`, `/healthz`, background GC and clean
//! shutdown. The client side lives in the `node-client` crate.

mod config;
mod error;
mod journal;
mod metrics;
mod pool_gc;
mod put_tracker;
mod release;
mod repair;
mod routes;
mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chunk_engine::ChunkEngine;
use daemon_kit::{HttpState, serve_http};
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use config::{NodeArgs, NodeConfig};
pub use error::{NodeError, chunk_error_code, journal_error_code};
pub use journal::{JournalError, JournalStats, JournalStore};
pub use metrics::NodeMetrics;
pub use pool_gc::PoolGcStats;
pub use put_tracker::PutTracker;
pub use repair::{Reconciler, RepairConfig, RepairStats};
pub use routes::ChunkStoreRoutes;
pub use service::ChunkService;

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs a storage node until `shutdown` resolves: in-flight requests then finish, the commit
/// thread drains, and the engine closes (nothing half-written).
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    let tls = cfg.tls();
    mtls::install_client_identity(&tls).map_err(|e| NodeError::Config(e.to_string()))?;
    let mut shutdown = Box::pin(shutdown);
    // A pool member first agrees with the pool on R and the timeouts (the first one sets them),
    // waiting for the metadata service as long as it takes (or until told to stop).
    let meta = if cfg.meta.is_empty() {
        None
    } else {
        let meta = metadata_client::MetaClient::new(&cfg.meta).map_err(|e| NodeError::Config(e.to_string()))?;
        let settings = cluster::PoolSettings::new(cfg.replicas, cfg.timeouts());
        loop {
            match settings.establish(&meta).await {
                Ok(()) => break,
                Err(cluster::ClusterError::Config(m)) => return Err(NodeError::Config(m)),
                Err(e) => tracing::warn!(error = %e, "cannot reach the metadata service to join the pool; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
        Some(meta)
    };
    let engine_cfg = cfg.engine();
    let engine = tokio::task::spawn_blocking(move || ChunkEngine::open(engine_cfg))
        .await
        .map_err(|e| NodeError::Serve(format!("engine open task: {e}")))??;
    let data_dir = cfg.data_dir.clone();
    let journals = tokio::task::spawn_blocking(move || JournalStore::open(&data_dir, journal::DEFAULT_SEGMENT_LIMIT))
        .await
        .map_err(|e| NodeError::Serve(format!("journal store open task: {e}")))??;
    let journals = Arc::new(journals);
    let repair_stats = Arc::new(RepairStats::default());
    let pool_gc_stats = Arc::new(PoolGcStats::default());
    // Put history for pool GC, kept from the start (a sweep needs it to reach back a window).
    let tracker = Arc::new(PutTracker::new(Duration::from_secs(cfg.pool_gc_window_secs)));
    if engine.stats().chunks == 0 {
        tracker.complete_from_start(); // a new (or emptied) node: no put awaits a reference
    }
    let metrics = Arc::new(
        NodeMetrics::new(
            engine.clone(),
            repair_stats.clone(),
            pool_gc_stats.clone(),
            tracker.clone(),
            journals.stats(),
            &cfg.node_id,
        )
        .map_err(|e| NodeError::Serve(e.to_string()))?,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| NodeError::Bind { addr: cfg.listen, source })?;
    let incoming = TcpIncoming::from_listener(listener, true, Some(Duration::from_secs(60)))
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    let health_engine = engine.clone();
    let http = serve_http(
        cfg.http_listen,
        HttpState {
            registry: metrics.registry.clone(),
            health: Arc::new(move || if health_engine.is_open() { Ok(()) } else { Err("engine closed".into()) }),
        },
        stopped(stop_rx.clone()),
    )
    .await?;

    let releaser = meta.as_ref().map(|meta| {
        Arc::new(release::Releaser {
            engine: engine.clone(),
            meta: meta.clone(),
            tracker: tracker.clone(),
            window: Duration::from_secs(cfg.pool_gc_window_secs),
            stats: pool_gc_stats.clone(),
        })
    });
    // Set by segment GC while dead space runs ahead of it; puts are held back meanwhile.
    let (stall, stalled) = watch::channel(false);
    let service = ChunkService::new(engine.clone(), journals, metrics.clone(), tracker.clone(), releaser, stalled);
    // A whole chunk, or a whole journal record, in one message.
    let max_msg =
        (engine.config().max_chunk_size as usize).max(node_client::JOURNAL_MAX_PAYLOAD) + 2 * node_client::STREAM_PIECE;
    // Windows and frames sized for whole chunks in flight (see node_client), on both listeners.
    let server = || {
        Server::builder()
            .initial_stream_window_size(node_client::STREAM_WINDOW)
            .initial_connection_window_size(node_client::CONNECTION_WINDOW)
            .max_frame_size(node_client::STREAM_PIECE as u32)
    };
    let mut builder = server();
    if let Some(server_tls) = tls.server_config().map_err(|e| NodeError::Config(e.to_string()))? {
        builder = builder.tls_config(server_tls).map_err(|e| NodeError::Config(format!("TLS: {e}")))?;
    }
    let routes = ChunkStoreRoutes::new(service, max_msg);
    // The same service on the unix socket, if any: plaintext, guarded by the socket's mode.
    let local = match &cfg.unix_socket {
        Some(path) => {
            let listener = daemon_kit::bind_unix(path).map_err(NodeError::Serve)?;
            let serve =
                server().add_service(routes.clone()).serve_with_incoming_shutdown(listener, stopped(stop_rx.clone()));
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let grpc = builder.add_service(routes);
    let grpc = grpc.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

    let gc = tokio::spawn(segment_gc_loop(engine.clone(), cfg.gc_interval_secs, stall, stop_rx.clone()));
    // Background scrub: damaged copies get quarantined; the reconciler replaces them from a replica.
    tokio::spawn(periodic(
        engine.clone(),
        cfg.scrub_interval_secs,
        stop_rx.clone(),
        "scrub",
        |e| e.scrub(|_| {}),
        |r| {
            if r.damaged.is_empty() {
                tracing::info!(checked = r.checked, "background scrub: all chunks verify");
            } else {
                tracing::error!(
                    checked = r.checked,
                    damaged = r.damaged.len(),
                    "background scrub found damaged chunks"
                );
            }
        },
    ));
    if let Some(meta) = meta {
        let (e, c) = (engine.clone(), cfg.clone());
        let record = move || {
            let s = e.stats();
            cluster::NodeRecord {
                version: cluster::nodemap::NODE_RECORD_VERSION,
                id: c.node_id.clone(),
                addr: c.advertise.clone(),
                zone: c.zone.clone(),
                host: c.host.clone(),
                capacity_bytes: s.total_bytes,
                free_bytes: s.free_bytes,
                chunks: s.chunks,
                used_bytes: s.used_bytes,
                dead_bytes: s.dead_bytes,
                heartbeat_unix_ms: cluster::nodemap::now_unix_ms(),
            }
        };
        let every = Duration::from_millis(cfg.heartbeat_ms);
        tokio::spawn(cluster::nodemap::heartbeat_loop(meta.clone(), every, record, stopped(stop_rx.clone())));
        let map = cluster::nodemap::watch_node_map(meta.clone(), cluster::NodeMap::default());
        let map_for_gc = map.clone();
        let repair_cfg = RepairConfig {
            self_id: cfg.node_id.clone(),
            replicas: cfg.replicas,
            timeouts: cfg.timeouts(),
            interval: Duration::from_secs(cfg.repair_interval_secs),
            rate_bytes_per_sec: cfg.repair_rate_mib << 20,
        };
        let reconciler =
            Reconciler::new(engine.clone(), meta.clone(), map, repair_cfg, repair_stats.clone(), tracker.clone());
        tokio::spawn(reconciler.run(stop_rx.clone()));
        let starter = pool_gc::RoundStarter {
            every: Duration::from_secs(cfg.pool_gc_interval_secs),
            window: Duration::from_secs(cfg.pool_gc_window_secs),
            map: map_for_gc,
            timeouts: cfg.timeouts(),
            since: std::time::Instant::now(),
        };
        tokio::spawn(pool_gc::pool_gc_loop(
            engine.clone(),
            meta,
            tracker,
            pool_gc_stats,
            cfg.node_id.clone(),
            starter,
            stop_rx.clone(),
        ));
        tracing::info!(node_id = %cfg.node_id, meta = ?cfg.meta, "joining the node map");
    }
    tracing::info!(grpc = %cfg.listen, unix = ?cfg.unix_socket, http = %cfg.http_listen, data_dir = %cfg.data_dir.display(), "storage node ready");
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (g, h) = tokio::join!(grpc, http);
    if let Some(local) = local {
        match local.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "unix socket gRPC server"),
            Err(e) => tracing::warn!(error = %e, "unix socket gRPC task"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(path) = &cfg.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    let _ = gc.await;
    tokio::task::spawn_blocking(move || engine.close()).await.ok();
    tracing::info!("storage node stopped cleanly");
    g.map_err(|e| NodeError::Serve(e.to_string()))?;
    h?;
    Ok(())
}

/// Runs blocking engine `job` every `every_secs` (0: never) until `stop`, logging failures.
/// Segment GC: a pass every `every_secs` (0: never), and at once whenever the engine says one is
/// due (dead bytes past `gc_max_dead_ratio` of live, or a segment under the threshold), checked
/// every second from the accounting.
///
/// While the dead bytes in sealed segments exceed the bound, `stall` is set: puts wait (a
/// bounded time each) so that an overwrite load cannot outrun GC and fill the disk.
async fn segment_gc_loop(
    engine: Arc<ChunkEngine>,
    every_secs: u64,
    stall: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    if every_secs == 0 {
        return;
    }
    // GC passes take seconds under an overwrite load, and dead space grows meanwhile: the stall
    // is re-evaluated on its own, ten times a second, not between passes.
    let stuck_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (engine, stuck_flag, mut stop) = (engine.clone(), stuck_flag.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(STALL_CHECK) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let over = !stuck_flag.load(std::sync::atomic::Ordering::Relaxed) && engine.dead_over(STALL_FACTOR);
                if stall.send_replace(over) != over {
                    tracing::info!(stalled = over, "puts {} while segment GC catches up", if over { "held back" } else { "resume" });
                }
            }
            stall.send_replace(false);
        });
    }
    let every = Duration::from_secs(every_secs);
    let mut last = std::time::Instant::now();
    // A due pass that gave nothing back (segments busy) is not repeated before the interval
    // (`stuck_flag`, which also lifts the stall).
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let stuck = stuck_flag.load(std::sync::atomic::Ordering::Relaxed);
        if last.elapsed() < every && (stuck || !engine.gc_due()) {
            continue;
        }
        last = std::time::Instant::now();
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.gc()).await {
            Ok(Ok(r)) if r.segments_removed > 0 => {
                stuck_flag.store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(reclaimed = r.bytes_reclaimed, moved = r.bytes_moved, "background gc")
            }
            Ok(Ok(_)) => {
                stuck_flag.store(true, std::sync::atomic::Ordering::Relaxed); // GC cannot help: no stall
            }
            Ok(Err(e)) => tracing::error!(error = %e, "background gc failed"),
            Err(e) => tracing::error!(error = %e, "background gc task failed"),
        }
    }
}

/// Puts are held back while sealed segments' dead bytes exceed this many times the GC bound.
const STALL_FACTOR: f64 = 1.0;
/// How often the stall is re-evaluated.
const STALL_CHECK: Duration = Duration::from_millis(100);

async fn periodic<T: Send + 'static>(
    engine: Arc<ChunkEngine>,
    every_secs: u64,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    job: fn(&ChunkEngine) -> Result<T, chunk_engine::ChunkError>,
    done: fn(&T),
) {
    if every_secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(every_secs));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || job(&e)).await {
            Ok(Ok(r)) => done(&r),
            Ok(Err(e)) => tracing::error!(error = %e, "background {what} failed"),
            Err(e) => tracing::error!(error = %e, "background {what} task failed"),
        }
    }
}
