//! The node map: storage nodes' registrations and heartbeats and the operator's admin state, kept
//! in the metadata service under `cluster/`, and the state (up, down, draining, out) each node is in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::meta::v1::WatchEvent;
use futures::StreamExt;
use metadata_client::MetaClient;
use placement::PlacementNode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ClusterError;

/// Everything the cluster keeps in the metadata service starts with this.
pub const CLUSTER_PREFIX: &[u8] = b"cluster/";
/// `cluster/nodes/<id>` → [`NodeRecord`] (JSON), written by the node itself.
pub const NODES_PREFIX: &str = "cluster/nodes/";
/// `cluster/admin/<id>` → [`AdminState`] (JSON), written by the operator.
pub const ADMIN_PREFIX: &str = "cluster/admin/";
/// Format version of [`NodeRecord`].
pub const NODE_RECORD_VERSION: u32 = 1;

/// What a storage node says about itself at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Format version ([`NODE_RECORD_VERSION`]).
    pub version: u32,
    /// Stable node id (unique in the cluster).
    pub id: String,
    /// gRPC address clients reach it at (`host:port`).
    pub addr: String,
    /// Failure domain: zone (empty when unknown).
    pub zone: String,
    /// Failure domain: host (empty when unknown).
    pub host: String,
    /// Bytes of the data filesystem.
    pub capacity_bytes: u64,
    /// Bytes free on it.
    pub free_bytes: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes in segment files (absent from records of earlier releases).
    #[serde(default)]
    pub used_bytes: u64,
    /// Of those, bytes no live chunk uses: dead space segment GC gives back.
    #[serde(default)]
    pub dead_bytes: u64,
    /// The node's wall clock at the heartbeat, in milliseconds since the Unix epoch.
    pub heartbeat_unix_ms: u64,
}

/// What the operator decided about a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Normal member.
    #[default]
    In,
    /// Takes no new chunks; its chunks are copied elsewhere, then it can be removed.
    Draining,
    /// Not a member: its chunks are re-replicated elsewhere.
    Out,
}

/// The state a node is in, from its heartbeat age and its admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating; takes reads and writes.
    Up,
    /// No heartbeat for `down_after`: skipped by writes (chunks become under-replicated), tried
    /// last by reads; keeps its place so that nothing moves for a short outage.
    Down,
    /// Drained by the operator: readable, takes nothing new.
    Draining,
    /// Down for longer than `out_after`, or removed by the operator: its chunks are repaired
    /// onto the remaining nodes.
    Out,
}

/// How long a silent node stays up, then down, before it is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No heartbeat for this long: down.
    pub down_after: Duration,
    /// No heartbeat for this long: out.
    pub out_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { down_after: Duration::from_secs(10), out_after: Duration::from_secs(600) }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A snapshot of the node map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMap {
    /// Registered nodes by id.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Admin states by id (absent: [`AdminState::In`]).
    pub admin: BTreeMap<String, AdminState>,
    /// Metadata revision this snapshot reflects.
    pub revision: u64,
}

impl NodeMap {
    /// Reads the whole map (linearizable).
    pub async fn load(meta: &MetaClient) -> Result<NodeMap, ClusterError> {
        let mut map = NodeMap::default();
        let end = prefix_end(CLUSTER_PREFIX);
        let mut start = CLUSTER_PREFIX.to_vec();
        loop {
            let page = meta.range(&start, &end, 1000).await?;
            map.revision = map.revision.max(page.revision);
            for kv in page.kvs {
                map.set(&kv.key, Some(&kv.value));
            }
            match page.next_key {
                Some(k) => start = k,
                None => return Ok(map),
            }
        }
    }

    /// Applies one watch event.
    pub fn apply(&mut self, ev: &WatchEvent) {
        if let Some(kv) = &ev.kv {
            self.set(&kv.key, if ev.deleted { None } else { Some(&kv.value) });
        }
        self.revision = self.revision.max(ev.revision);
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(key) = std::str::from_utf8(key) else { return };
        if let Some(id) = key.strip_prefix(NODES_PREFIX) {
            match value.map(serde_json::from_slice::<NodeRecord>) {
                Some(Ok(r)) if r.version == NODE_RECORD_VERSION => {
                    self.nodes.insert(id.to_string(), r);
                }
                Some(Ok(r)) => tracing::warn!(node = id, version = r.version, "node record of unknown version ignored"),
                Some(Err(e)) => tracing::warn!(node = id, error = %e, "unreadable node record ignored"),
                None => {
                    self.nodes.remove(id);
                }
            }
        } else if let Some(id) = key.strip_prefix(ADMIN_PREFIX) {
            match value.map(serde_json::from_slice::<AdminState>) {
                Some(Ok(a)) => {
                    self.admin.insert(id.to_string(), a);
                }
                Some(Err(e)) => tracing::warn!(node = id, error = %e, "unreadable admin state ignored"),
                None => {
                    self.admin.remove(id);
                }
            }
        }
    }

    /// The admin state of `id`.
    pub fn admin_state(&self, id: &str) -> AdminState {
        self.admin.get(id).copied().unwrap_or_default()
    }

    /// The state of node `id` at `now_ms`, or None if it never registered.
    pub fn state(&self, id: &str, now_ms: u64, t: &Timeouts) -> Option<NodeState> {
        let r = self.nodes.get(id)?;
        let age = Duration::from_millis(now_ms.saturating_sub(r.heartbeat_unix_ms));
        Some(match self.admin_state(id) {
            AdminState::Out => NodeState::Out,
            _ if age > t.out_after => NodeState::Out,
            AdminState::Draining => NodeState::Draining,
            AdminState::In if age > t.down_after => NodeState::Down,
            AdminState::In => NodeState::Up,
        })
    }

    /// The nodes placement chooses from: up and down nodes weighted by capacity (a short outage
    /// moves nothing), draining nodes with weight 0 (ranked for reads, given nothing new); out
    /// nodes are not members.
    pub fn placement_nodes(&self, now_ms: u64, t: &Timeouts) -> Vec<PlacementNode> {
        self.nodes
            .values()
            .filter_map(|r| {
                let weight = match self.state(&r.id, now_ms, t)? {
                    NodeState::Up | NodeState::Down => r.capacity_bytes.max(1),
                    NodeState::Draining => 0,
                    NodeState::Out => return None,
                };
                Some(PlacementNode { id: r.id.clone(), weight, zone: r.zone.clone(), host: r.host.clone() })
            })
            .collect()
    }
}

pub(crate) use metadata_client::prefix_end;

/// Keeps a [`NodeMap`] current from the metadata service's watch (no polling); re-reads the
/// whole map whenever the watch breaks.
pub fn watch_node_map(meta: MetaClient, initial: NodeMap) -> watch::Receiver<Arc<NodeMap>> {
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return;
            }
            // Watch first, then read: nothing between the read and the watch is missed.
            let stream = match meta.watch(CLUSTER_PREFIX).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "node map watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let mut map = match NodeMap::load(&meta).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "node map read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            tx.send_replace(Arc::new(map.clone()));
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) if ev.revision > map.revision => {
                        map.apply(&ev);
                        if tx.send(Arc::new(map.clone())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "node map watch ended; re-reading");
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Writes `record()` under `cluster/nodes/<id>` now and every `every` until `stop` resolves.
/// A failed heartbeat is logged and retried at the next tick.
pub async fn heartbeat_loop(
    meta: MetaClient,
    every: Duration,
    record: impl Fn() -> NodeRecord + Send + 'static,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let r = record();
        let key = format!("{NODES_PREFIX}{}", r.id);
        let value = serde_json::to_vec(&r).expect("node record serializes");
        match tokio::time::timeout(every.max(Duration::from_secs(1)) * 3, meta.put(key.as_bytes(), &value)).await {
            Ok(Ok(_)) => {
                if failing {
                    tracing::info!("heartbeats reach the metadata service again");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("heartbeat timed out");
                }
                failing = true;
            }
        }
    }
}

/// Sets the operator's admin state for node `id`.
pub async fn set_admin_state(meta: &MetaClient, id: &str, state: AdminState) -> Result<(), ClusterError> {
    let key = format!("{ADMIN_PREFIX}{id}");
    meta.put(key.as_bytes(), &serde_json::to_vec(&state).expect("admin state serializes")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, hb: u64) -> NodeRecord {
        NodeRecord {
            version: NODE_RECORD_VERSION,
            id: id.into(),
            addr: "127.0.0.1:1".into(),
            zone: "z".into(),
            host: id.into(),
            capacity_bytes: 100,
            free_bytes: 50,
            chunks: 0,
            used_bytes: 10,
            dead_bytes: 4,
            heartbeat_unix_ms: hb,
        }
    }

    #[test]
    fn node_records_round_trip_and_earlier_ones_still_read() {
        let r = rec("a", 7);
        assert_eq!(serde_json::from_slice::<NodeRecord>(&serde_json::to_vec(&r).unwrap()).unwrap(), r);
        let old = br#"{"version":1,"id":"a","addr":"x:1","zone":"","host":"","capacity_bytes":9,"free_bytes":3,"chunks":2,"heartbeat_unix_ms":5}"#;
        let back: NodeRecord = serde_json::from_slice(old).unwrap();
        assert_eq!((back.chunks, back.used_bytes, back.dead_bytes), (2, 0, 0));
    }

    #[test]
    fn states_follow_heartbeat_age_and_admin() {
        let t = Timeouts { down_after: Duration::from_secs(10), out_after: Duration::from_secs(60) };
        let mut m = NodeMap::default();
        for (id, hb) in [("a", 100_000), ("b", 85_000), ("c", 10_000), ("d", 100_000), ("e", 100_000)] {
            m.nodes.insert(id.into(), rec(id, hb));
        }
        m.admin.insert("d".into(), AdminState::Draining);
        m.admin.insert("e".into(), AdminState::Out);
        let now = 100_000;
        assert_eq!(m.state("a", now, &t), Some(NodeState::Up));
        assert_eq!(m.state("b", now, &t), Some(NodeState::Down));
        assert_eq!(m.state("c", now, &t), Some(NodeState::Out));
        assert_eq!(m.state("d", now, &t), Some(NodeState::Draining));
        assert_eq!(m.state("e", now, &t), Some(NodeState::Out));
        assert_eq!(m.state("zz", now, &t), None);
        let p = m.placement_nodes(now, &t);
        let ids: Vec<_> = p.iter().map(|n| (n.id.as_str(), n.weight)).collect();
        assert_eq!(ids, vec![("a", 100), ("b", 100), ("d", 0)]);
    }

    #[test]
    fn watch_events_update_the_map() {
        use cairn_proto::meta::v1::KeyValue;
        let mut m = NodeMap::default();
        let put = |k: &str, v: Vec<u8>, rev| WatchEvent {
            kv: Some(KeyValue { key: k.as_bytes().to_vec(), value: v, create_revision: rev, mod_revision: rev }),
            deleted: false,
            revision: rev,
        };
        m.apply(&put("cluster/nodes/a", serde_json::to_vec(&rec("a", 1)).unwrap(), 5));
        m.apply(&put("cluster/admin/a", serde_json::to_vec(&AdminState::Draining).unwrap(), 6));
        m.apply(&put("cluster/nodes/b", b"not json".to_vec(), 7));
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.admin_state("a"), AdminState::Draining);
        assert_eq!(m.revision, 7);
        let mut del = put("cluster/nodes/a", Vec::new(), 8);
        del.deleted = true;
        m.apply(&del);
        assert!(m.nodes.is_empty());
    }
}
