//! The replicated chunk client every frontend uses: puts to the R placed nodes in parallel, reads
//! from the first healthy replica with verification and fallback, bounded and timed everywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chunk_engine::ChunkHash;
use metadata_client::MetaClient;
use node_client::{ClientError, NodeClient};
pub use node_client::Writer;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::nodemap::{NodeMap, NodeState, Timeouts, now_unix_ms, watch_node_map};
use crate::{ClusterError, PoolSettings};

/// `cluster/under/<hash hex>` → [`UnderReplicated`] (JSON): chunks acknowledged with fewer than R
/// copies, for repair to complete.
pub const UNDER_PREFIX: &str = "cluster/under/";

/// How the client replicates.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Copies of every chunk (R).
    pub replicas: usize,
    /// Fewest durable copies a put may be acknowledged with when placed nodes are down; the chunk
    /// is then recorded as under-replicated.
    pub min_replicas: usize,
    /// When nodes count as down and out.
    pub timeouts: Timeouts,
    /// Deadline of one call to one storage node.
    pub rpc_timeout: Duration,
    /// Most chunk transfers in flight from this client at once.
    pub max_inflight: usize,
    /// This client's zone and host: reads prefer replicas on the same host, then the same zone.
    pub local_zone: Option<String>,
    /// See `local_zone`.
    pub local_host: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            replicas: 3,
            min_replicas: 2,
            timeouts: Timeouts::default(),
            rpc_timeout: Duration::from_secs(30),
            max_inflight: 64,
            local_zone: None,
            local_host: None,
        }
    }
}

impl ClientConfig {
    /// Checks the settings; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 || self.replicas > 16 {
            return Err(format!("replicas must be between 1 and 16, got {}", self.replicas));
        }
        if self.min_replicas == 0 || self.min_replicas > self.replicas {
            return Err(format!(
                "min_replicas must be between 1 and replicas ({}), got {}",
                self.replicas, self.min_replicas
            ));
        }
        if self.max_inflight == 0 {
            return Err("max_inflight must be at least 1".into());
        }
        Ok(())
    }
}

/// Format version of [`UnderReplicated`] (a `"version"` beside its fields; records from before
/// it read as 1).
pub const UNDER_RECORD_VERSION: u32 = 1;

/// A chunk acknowledged with fewer than R copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderReplicated {
    /// Nodes that hold a durable copy.
    pub have: Vec<String>,
    /// Placed nodes the put could not reach.
    pub missing: Vec<String>,
    /// When it was recorded (ms since the Unix epoch).
    pub at_unix_ms: u64,
}

impl UnderReplicated {
    /// As stored: JSON with `"version"`.
    pub fn encode(&self) -> Vec<u8> {
        format_version::json::encode(self, UNDER_RECORD_VERSION)
    }

    /// As read from `key` (a record without a version is version 1; a newer one is refused).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self, format_version::json::JsonRecordError> {
        format_version::json::decode(key, bytes, UNDER_RECORD_VERSION).map(|(_, r)| r)
    }
}

/// What a put achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// The chunk's name.
    pub hash: ChunkHash,
    /// Nodes holding a durable copy.
    pub stored_on: Vec<String>,
    /// True when fewer than R copies were made (and the chunk was recorded for repair).
    pub under_replicated: bool,
    /// When the put was acknowledged: its reference must be committed within the write window.
    pub acked_at: std::time::Instant,
}

struct Inner {
    meta: MetaClient,
    cfg: ClientConfig,
    map: watch::Receiver<Arc<NodeMap>>,
    conns: Mutex<HashMap<String, NodeClient>>,
    inflight: Semaphore,
    /// Group CVs of chunks read in parts, checked against their names.
    cvs: Mutex<chunk_engine::cv_cache::CvCache>,
}

/// The pool's chunk client; cheap to clone.
#[derive(Clone)]
pub struct ChunkClient {
    inner: Arc<Inner>,
}

/// One placed node, as the client sees it at the time of a call.
#[derive(Debug, Clone)]
struct Target {
    id: String,
    addr: String,
    state: NodeState,
    zone: String,
    host: String,
}

impl ChunkClient {
    /// Reads the node map from the metadata service and keeps following it. Copies per chunk and
    /// the node timeouts are the pool's ([`PoolSettings`], once a storage node has joined): `cfg`'s
    /// own apply only to a pool without settings yet, and `min_replicas` is capped at the pool's R.
    pub async fn new(meta: MetaClient, mut cfg: ClientConfig) -> Result<Self, ClusterError> {
        cfg.validate().map_err(ClusterError::Config)?;
        if let Some(pool) = PoolSettings::load(&meta).await? {
            if pool != PoolSettings::new(cfg.replicas, cfg.timeouts) {
                tracing::info!(?pool, "using the pool's copies per chunk and node timeouts");
            }
            cfg.replicas = pool.replicas;
            cfg.timeouts = pool.timeouts();
            cfg.min_replicas = cfg.min_replicas.min(pool.replicas);
            cfg.validate().map_err(ClusterError::Config)?;
        }
        let map = NodeMap::load(&meta).await?;
        let map = watch_node_map(meta.clone(), map);
        let inflight = Semaphore::new(cfg.max_inflight);
        Ok(ChunkClient {
            inner: Arc::new(Inner {
                meta,
                cfg,
                map,
                conns: Mutex::new(HashMap::new()),
                inflight,
                cvs: Mutex::new(chunk_engine::cv_cache::CvCache::new(chunk_engine::cv_cache::CV_CACHE_BYTES)),
            }),
        })
    }

    /// The settings this client works with (R and the timeouts as the pool has them).
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The node map as this client currently sees it.
    pub fn node_map(&self) -> Arc<NodeMap> {
        self.inner.map.borrow().clone()
    }

    /// Waits until the map shows at least `n` nodes up (for start-up and tests).
    pub async fn wait_for_up(&self, n: usize, within: Duration) -> Result<(), ClusterError> {
        let mut rx = self.inner.map.clone();
        let t = self.inner.cfg.timeouts;
        let enough = |m: &NodeMap| {
            let now = now_unix_ms();
            m.nodes.keys().filter(|id| m.state(id, now, &t) == Some(NodeState::Up)).count() >= n
        };
        let waited = tokio::time::timeout(within, async {
            loop {
                if enough(&rx.borrow_and_update()) {
                    return Ok(());
                }
                tokio::select! {
                    r = rx.changed() => r.map_err(|_| ClusterError::Unavailable("node map watcher stopped".into()))?,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(ClusterError::Unavailable(format!("fewer than {n} storage nodes up after {within:?}")))
        })
    }

    /// All nodes for `hash` in placement order (the first R are where it belongs), with their
    /// addresses and current states.
    fn ranked(&self, hash: &ChunkHash) -> Vec<Target> {
        let map = self.node_map();
        let now = now_unix_ms();
        let t = &self.inner.cfg.timeouts;
        let nodes = map.placement_nodes(now, t);
        placement::rank(&hash.0, &nodes, self.inner.cfg.replicas)
            .into_iter()
            .filter_map(|n| {
                let rec = map.nodes.get(&n.id)?;
                Some(Target {
                    id: n.id.clone(),
                    addr: rec.addr.clone(),
                    state: map.state(&n.id, now, t)?,
                    zone: rec.zone.clone(),
                    host: rec.host.clone(),
                })
            })
            .collect()
    }

    /// The R nodes `hash` is placed on.
    pub fn placed(&self, hash: &ChunkHash) -> Vec<String> {
        let r = self.inner.cfg.replicas;
        self.ranked(hash).into_iter().take(r).map(|t| t.id).collect()
    }

    /// For each chunk, how many of its R placed nodes are up and hold a good (present, not
    /// quarantined) copy: R means fully replicated. One `Has` call per node per 256 chunks; a
    /// node that does not answer holds nothing here.
    pub async fn placed_copies(&self, hashes: &[ChunkHash]) -> Result<Vec<usize>, ClusterError> {
        let r = self.inner.cfg.replicas;
        let mut per_node: HashMap<String, (String, Vec<usize>)> = HashMap::new();
        for (i, h) in hashes.iter().enumerate() {
            for t in self.ranked(h).into_iter().take(r) {
                if t.state == NodeState::Up {
                    per_node.entry(t.id).or_insert_with(|| (t.addr, Vec::new())).1.push(i);
                }
            }
        }
        let mut counts = vec![0usize; hashes.len()];
        for (_, (addr, idxs)) in per_node {
            for page in idxs.chunks(256) {
                let asked: Vec<ChunkHash> = page.iter().map(|i| hashes[*i]).collect();
                let call = async {
                    let c = self.conn(&addr).await?;
                    c.has(&asked).await
                };
                let Ok(Ok(states)) = tokio::time::timeout(self.inner.cfg.rpc_timeout, call).await else { continue };
                for (i, st) in page.iter().zip(states) {
                    if st.present && !st.quarantined {
                        counts[*i] += 1;
                    }
                }
            }
        }
        Ok(counts)
    }

    pub(crate) async fn conn(&self, addr: &str) -> Result<NodeClient, ClientError> {
        if let Some(c) = self.inner.conns.lock().expect("conns lock").get(addr) {
            return Ok(c.clone());
        }
        let c = NodeClient::connect(addr).await?;
        self.inner.conns.lock().expect("conns lock").insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Stores a chunk on its R placed nodes in parallel and returns once all are durable — or,
    /// when some placed nodes are down or fail, once at least `min_replicas` are, recording the
    /// chunk as under-replicated for repair.
    pub async fn put(&self, data: Bytes) -> Result<PutReport, ClusterError> {
        self.put_as(data, Writer::default()).await
    }

    /// [`put`](Self::put) on behalf of `writer`, which may later [`release`](Self::release) the
    /// chunk.
    pub async fn put_as(&self, data: Bytes, writer: Writer) -> Result<PutReport, ClusterError> {
        let hash = hash_of(&data).await;
        let _slot =
            self.inner.inflight.acquire().await.map_err(|_| ClusterError::Unavailable("client closed".into()))?;
        let cfg = &self.inner.cfg;
        let placed: Vec<Target> = self.ranked(&hash).into_iter().take(cfg.replicas).collect();
        if placed.len() < cfg.min_replicas {
            return Err(ClusterError::Unavailable(format!(
                "{} storage nodes in the pool, {} copies needed",
                placed.len(),
                cfg.min_replicas
            )));
        }
        let sends = placed.iter().map(|t| {
            let data = data.clone();
            async move {
                if t.state == NodeState::Down {
                    return Err(format!("{} is down", t.id));
                }
                let call = async {
                    let c = self.conn(&t.addr).await.map_err(|e| e.to_string())?;
                    c.put_as(Some(hash), writer, data).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(cfg.rpc_timeout, call).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(format!("{} timed out after {:?}", t.id, cfg.rpc_timeout)),
                }
            }
        });
        let results = futures::future::join_all(sends).await;
        let mut stored_on = Vec::new();
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        for (t, r) in placed.iter().zip(results) {
            match r {
                Ok(()) => stored_on.push(t.id.clone()),
                Err(e) => {
                    missing.push(t.id.clone());
                    errors.push(e);
                }
            }
        }
        if stored_on.len() < cfg.min_replicas {
            return Err(ClusterError::Unavailable(format!(
                "chunk {hash}: {} of {} copies durable, {} needed: {}",
                stored_on.len(),
                placed.len(),
                cfg.min_replicas,
                errors.join("; ")
            )));
        }
        let under = !missing.is_empty() || placed.len() < cfg.replicas;
        if under {
            tracing::debug!(chunk = %hash, ?missing, "chunk stored under-replicated");
            let rec = UnderReplicated { have: stored_on.clone(), missing, at_unix_ms: now_unix_ms() };
            let key = format!("{UNDER_PREFIX}{hash}");
            self.inner.meta.put(key.as_bytes(), &rec.encode()).await?;
        }
        Ok(PutReport { hash, stored_on, under_replicated: under, acked_at: std::time::Instant::now() })
    }

    /// Tells the placed nodes of each of `hashes` that `writer` no longer needs it: `writer` has
    /// committed the removal of its references and commits none relying on its puts numbered up
    /// to `upto`. Each node deletes the chunks nothing else holds (no reference key, no other
    /// put within the write window) at once; the rest stay for pool GC. Best effort: nodes that
    /// are down or fail are skipped (pool GC collects there). Returns the chunks deleted.
    pub async fn release(&self, hashes: &[ChunkHash], writer: u64, upto: u64) -> u64 {
        if writer == 0 || hashes.is_empty() {
            return 0;
        }
        let r = self.inner.cfg.replicas;
        let mut per_node: HashMap<String, (String, Vec<ChunkHash>)> = HashMap::new();
        for h in hashes {
            for t in self.ranked(h).into_iter().take(r) {
                if t.state == NodeState::Up {
                    per_node.entry(t.id).or_insert_with(|| (t.addr, Vec::new())).1.push(*h);
                }
            }
        }
        let calls = per_node.into_iter().map(|(id, (addr, hs))| async move {
            let mut deleted = 0;
            for page in hs.chunks(1024) {
                let call = async {
                    let c = self.conn(&addr).await?;
                    c.release(page, writer, upto).await
                };
                match tokio::time::timeout(self.inner.cfg.rpc_timeout, call).await {
                    Ok(Ok(r)) => deleted += r.deleted,
                    Ok(Err(e)) => {
                        tracing::debug!(node = %id, error = %e, "release refused; pool GC collects instead");
                        break;
                    }
                    Err(_) => break,
                }
            }
            deleted
        });
        futures::future::join_all(calls).await.into_iter().sum()
    }

    /// Reads a chunk from the first replica that has a good copy: placed nodes that are up
    /// first, then the rest of the ranking (copies left behind by moves), down nodes last. Every
    /// copy is verified; a bad one is reported and the next replica is tried.
    pub async fn get(&self, hash: &ChunkHash) -> Result<Bytes, ClusterError> {
        let _slot =
            self.inner.inflight.acquire().await.map_err(|_| ClusterError::Unavailable("client closed".into()))?;
        let order = read_order(self.ranked(hash), &self.inner.cfg);
        let mut errors = Vec::new();
        let mut all_not_found = true;
        for t in &order {
            let call = async {
                let c = self.conn(&t.addr).await?;
                c.get(hash).await
            };
            match tokio::time::timeout(self.inner.cfg.rpc_timeout, call).await {
                Ok(Ok(data)) => return Ok(data),
                Ok(Err(e)) => {
                    if matches!(&e, ClientError::BadData { .. } | ClientError::Rpc { code: tonic::Code::DataLoss, .. })
                    {
                        tracing::warn!(chunk = %hash, node = %t.id, error = %e, "bad copy; reading another replica");
                    }
                    all_not_found &= e.code() == Some(tonic::Code::NotFound);
                    errors.push(format!("{}: {e}", t.id));
                }
                Err(_) => {
                    all_not_found = false;
                    errors.push(format!("{}: timed out", t.id));
                }
            }
        }
        if all_not_found {
            return Err(ClusterError::NotFound(*hash));
        }
        Err(ClusterError::Unavailable(format!("chunk {hash}: no replica could serve it: {}", errors.join("; "))))
    }
}

impl ChunkClient {
    /// Reads bytes `off..off + len` of a chunk (cut at its end), reading and verifying about as
    /// many bytes as asked for rather than the whole chunk: 4 KiB groups checked against the
    /// chunk's group CVs, which this client keeps once it has checked them against the name
    /// (the first ranged read of a chunk brings them). Replicas are tried as by
    /// [`get`](Self::get); a copy that fails the check, or a node that cannot read ranges,
    /// is answered by a whole, verified [`get`](Self::get).
    pub async fn get_range(&self, hash: &ChunkHash, off: u64, len: u64) -> Result<Bytes, ClusterError> {
        let cached = self.inner.cvs.lock().expect("cv cache lock").get(hash);
        let order = read_order(self.ranked(hash), &self.inner.cfg);
        let mut errors = Vec::new();
        let mut all_not_found = true;
        {
            let _slot =
                self.inner.inflight.acquire().await.map_err(|_| ClusterError::Unavailable("client closed".into()))?;
            for t in &order {
                let call = async {
                    let c = self.conn(&t.addr).await?;
                    c.get_range(hash, off, len, cached.as_deref().map(|v| &v[..])).await
                };
                match tokio::time::timeout(self.inner.cfg.rpc_timeout, call).await {
                    Ok(Ok((_, data, sent))) => {
                        if let Some(cvs) = sent.filter(|c| !c.is_empty()) {
                            self.inner.cvs.lock().expect("cv cache lock").insert(*hash, cvs);
                        }
                        return Ok(data);
                    }
                    Ok(Err(e)) => {
                        let code = e.code();
                        if matches!(&e, ClientError::BadData { .. })
                            || matches!(code, Some(tonic::Code::DataLoss | tonic::Code::Unimplemented))
                        {
                            tracing::debug!(chunk = %hash, node = %t.id, error = %e, "ranged read refused; reading the chunk whole");
                            all_not_found = false;
                            break;
                        }
                        all_not_found &= code == Some(tonic::Code::NotFound);
                        errors.push(format!("{}: {e}", t.id));
                    }
                    Err(_) => {
                        all_not_found = false;
                        errors.push(format!("{}: timed out", t.id));
                    }
                }
            }
        }
        if all_not_found && !errors.is_empty() {
            return Err(ClusterError::NotFound(*hash));
        }
        // Whole and verified (a damaged copy is quarantined on its node), then cut.
        let data = self.get(hash).await?;
        let (a, b) = ((off as usize).min(data.len()), (off.saturating_add(len) as usize).min(data.len()));
        Ok(data.slice(a..b))
    }
}

/// The order reads try nodes in: placed copies before moved-away ones, the nearest of those
/// first (same host, then same zone); down and out nodes last; placement order otherwise.
fn read_order(ranked: Vec<Target>, cfg: &ClientConfig) -> Vec<Target> {
    let near = |t: &Target| {
        if cfg.local_host.as_deref() == Some(t.host.as_str()) && cfg.local_zone.as_deref().is_none_or(|z| z == t.zone) {
            0
        } else if cfg.local_zone.as_deref() == Some(t.zone.as_str()) {
            1
        } else {
            2
        }
    };
    let mut keyed: Vec<(usize, Target)> = ranked.into_iter().enumerate().collect();
    keyed.sort_by_key(|(i, t)| {
        let state = match t.state {
            NodeState::Up | NodeState::Draining => 0,
            NodeState::Down => 1,
            NodeState::Out => 2,
        };
        (state, usize::from(*i >= cfg.replicas), near(t))
    });
    keyed.into_iter().map(|(_, t)| t).collect()
}

async fn hash_of(data: &Bytes) -> ChunkHash {
    if data.len() < (256 << 10) {
        return ChunkHash::of(data);
    }
    let d = data.clone();
    tokio::task::spawn_blocking(move || ChunkHash::of(&d)).await.expect("hash task")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, zone: &str, host: &str, state: NodeState) -> Target {
        Target { id: id.into(), addr: String::new(), state, zone: zone.into(), host: host.into() }
    }

    #[test]
    fn reads_go_to_the_nearest_live_placed_copy_first() {
        let ranked = vec![
            t("a", "z1", "h1", NodeState::Up),
            t("b", "z2", "h2", NodeState::Down),
            t("c", "z3", "h3", NodeState::Up),
            t("d", "z3", "h4", NodeState::Up),
        ];
        let ids = |cfg: &ClientConfig| read_order(ranked.clone(), cfg).into_iter().map(|t| t.id).collect::<Vec<_>>();
        let mut cfg = ClientConfig { replicas: 3, ..ClientConfig::default() };
        assert_eq!(ids(&cfg), ["a", "c", "d", "b"]);
        cfg.local_zone = Some("z3".into());
        assert_eq!(ids(&cfg), ["c", "a", "d", "b"]);
        cfg.local_host = Some("h3".into());
        assert_eq!(ids(&cfg), ["c", "a", "d", "b"]);
        cfg.local_zone = Some("z1".into());
        cfg.local_host = Some("h1".into());
        assert_eq!(ids(&cfg), ["a", "c", "d", "b"]);
    }
}
