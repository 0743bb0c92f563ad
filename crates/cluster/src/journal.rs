//! Replicated write journals: one writer's log held on a fixed set of storage nodes (its
//! replicas), appended to on all of them and acknowledged once `min_replicas` have it fsynced;
//! sealed by each new writer at its epoch (its fencing generation) so that an old writer's
//! appends are refused; read back as the union of what a quorum of replicas holds.

use std::time::Duration;

use bytes::Bytes;
use node_client::{ClientError, NodeClient};

use crate::client::ChunkClient;
use crate::error::ClusterError;
use crate::nodemap::{NodeState, now_unix_ms};

/// One record of a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: u64,
    pub epoch: u64,
    pub payload: Bytes,
}

/// What an append achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Replicas holding the record fsynced.
    pub stored_on: Vec<String>,
    /// Replicas that failed (down, unreachable, refused).
    pub failed: Vec<String>,
}

/// A journal as its writer holds it: its name, replicas and the writer's epoch.
#[derive(Clone)]
pub struct Journal {
    chunks: ChunkClient,
    name: String,
    nodes: Vec<String>,
    epoch: u64,
}

impl ChunkClient {
    /// The nodes a new journal named `name` goes on: the R up nodes its name ranks first
    /// (spread like chunks, by the pool's placement), none of `exclude`.
    pub fn journal_placement(&self, name: &str, exclude: &[String]) -> Vec<String> {
        let key = chunk_engine::ChunkHash::of(format!("journal:{name}").as_bytes());
        let map = self.node_map();
        let now = now_unix_ms();
        let t = &self.config().timeouts;
        let nodes = map.placement_nodes(now, t);
        placement::rank(&key.0, &nodes, nodes.len())
            .into_iter()
            .filter(|n| map.state(&n.id, now, t) == Some(NodeState::Up) && !exclude.contains(&n.id))
            .take(self.config().replicas)
            .map(|n| n.id.clone())
            .collect()
    }

    /// Whether node `id` is up in the node map.
    pub fn node_up(&self, id: &str) -> bool {
        let map = self.node_map();
        map.state(id, now_unix_ms(), &self.config().timeouts) == Some(NodeState::Up)
    }

    /// A connection to node `id` (by its address in the node map).
    pub(crate) async fn node(&self, id: &str) -> Result<NodeClient, ClusterError> {
        let addr = self
            .node_map()
            .nodes
            .get(id)
            .map(|r| r.addr.clone())
            .ok_or_else(|| ClusterError::Unavailable(format!("storage node {id} is not in the pool")))?;
        self.conn(&addr).await.map_err(|e| ClusterError::Unavailable(e.to_string()))
    }
}

/// Whether a node refused because the journal is sealed at a newer epoch (the node refuses
/// an append below its trim point with the same code: that is not fencing).
fn sealed(e: &ClientError) -> bool {
    e.code() == Some(tonic::Code::FailedPrecondition) && e.to_string().contains("sealed at epoch")
}

impl Journal {
    /// The journal `name` on `nodes`, written at `epoch`. Nothing is sent: see [`Self::seal`].
    pub fn new(chunks: ChunkClient, name: &str, nodes: Vec<String>, epoch: u64) -> Journal {
        Journal { chunks, name: name.to_string(), nodes, epoch }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Appends acknowledged by at least this many replicas.
    pub fn min_replicas(&self) -> usize {
        self.chunks.config().min_replicas.clamp(1, self.nodes.len().max(1))
    }

    /// Replicas that must answer a seal and a read so that every acknowledged append is seen:
    /// any `min_replicas` that acknowledged one meet any this many.
    pub fn read_quorum(&self) -> usize {
        (self.nodes.len() + 1).saturating_sub(self.min_replicas()).max(1)
    }

    fn timeout(&self) -> Duration {
        self.chunks.config().rpc_timeout
    }

    /// Runs `f` against every replica at once; each result beside its node.
    async fn on_all<T, F, Fut>(&self, f: F) -> Vec<(String, Result<T, ClientError>)>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let calls = self.nodes.iter().map(|id| {
            let f = &f;
            async move {
                let r = async {
                    let c = self
                        .chunks
                        .node(id)
                        .await
                        .map_err(|e| ClientError::Connect { endpoint: id.clone(), reason: e.to_string() })?;
                    match tokio::time::timeout(self.timeout(), f(c)).await {
                        Ok(r) => r,
                        Err(_) => Err(ClientError::Connect { endpoint: id.clone(), reason: "timed out".into() }),
                    }
                }
                .await;
                (id.clone(), r)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Seals the journal at this writer's epoch on its replicas (appends of older epochs are
    /// refused from then on) and reads back every record after `after`: the union of what the
    /// replicas that answered hold, a record kept only if no record of a newer epoch has a
    /// lower or equal seq (an older writer's unacknowledged tail, overtaken). Fails unless a
    /// read quorum answered; fails with [`ClusterError::Fenced`] if a replica is sealed at a
    /// newer epoch.
    pub async fn seal(&self, after: u64) -> Result<Vec<JournalEntry>, ClusterError> {
        let name = self.name.clone();
        let epoch = self.epoch;
        let sealed_at = self
            .on_all(|c| {
                let name = name.clone();
                async move { c.journal_seal(&name, epoch).await }
            })
            .await;
        let mut answered = Vec::new();
        let mut errors = Vec::new();
        for (id, r) in sealed_at {
            match r {
                Ok(s) if s.epoch > epoch => {
                    return Err(ClusterError::Fenced(format!(
                        "journal {} is sealed at epoch {} on {id}, past this writer's {epoch}",
                        self.name, s.epoch
                    )));
                }
                Ok(_) => answered.push(id),
                Err(e) => errors.push(format!("{id}: {e}")),
            }
        }
        if answered.len() < self.read_quorum() {
            return Err(ClusterError::Unavailable(format!(
                "journal {}: {} of {} replicas answered, {} needed: {}",
                self.name,
                answered.len(),
                self.nodes.len(),
                self.read_quorum(),
                errors.join("; ")
            )));
        }
        self.read_from(&answered, after, errors).await
    }

    /// Reads every record after `after` without sealing (a reader beside the writer, such as a
    /// snapshot): as [`Self::seal`] reads, from every replica that answers.
    pub async fn read(&self, after: u64) -> Result<Vec<JournalEntry>, ClusterError> {
        self.read_from(&self.nodes, after, Vec::new()).await
    }

    async fn read_from(&self, nodes: &[String], after: u64, mut errors: Vec<String>) -> Result<Vec<JournalEntry>, ClusterError> {
        let mut all = Vec::new();
        let mut read = 0;
        for id in nodes {
            let call = async {
                let c = self.chunks.node(id).await.map_err(|e| e.to_string())?;
                c.journal_read(&self.name, after).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(self.timeout() * 4, call).await {
                Ok(Ok((records, _))) => {
                    read += 1;
                    all.extend(records.into_iter().map(|r| JournalEntry { seq: r.seq, epoch: r.epoch, payload: r.payload }));
                }
                Ok(Err(e)) => errors.push(format!("{id}: {e}")),
                Err(_) => errors.push(format!("{id}: read timed out")),
            }
        }
        if read < self.read_quorum() {
            return Err(ClusterError::Unavailable(format!(
                "journal {}: {read} replicas read, {} needed: {}",
                self.name,
                self.read_quorum(),
                errors.join("; ")
            )));
        }
        Ok(merge(all))
    }

    /// Appends record `seq` on every replica; acknowledged once at least
    /// [`min_replicas`](Self::min_replicas) have it fsynced.
    pub async fn append(&self, seq: u64, payload: Bytes) -> Result<AppendReport, ClusterError> {
        let name = self.name.clone();
        let epoch = self.epoch;
        let results = self
            .on_all(|c| {
                let (name, payload) = (name.clone(), payload.clone());
                async move { c.journal_append(&name, epoch, seq, payload).await }
            })
            .await;
        let mut report = AppendReport::default();
        let mut errors = Vec::new();
        for (id, r) in results {
            match r {
                Ok(_) => report.stored_on.push(id),
                Err(e) if sealed(&e) => {
                    return Err(ClusterError::Fenced(format!("journal {}: {e}", self.name)));
                }
                Err(e) => {
                    errors.push(format!("{id}: {e}"));
                    report.failed.push(id);
                }
            }
        }
        if report.stored_on.len() < self.min_replicas() {
            return Err(ClusterError::Unavailable(format!(
                "journal {} record {seq}: {} of {} replicas durable, {} needed: {}",
                self.name,
                report.stored_on.len(),
                self.nodes.len(),
                self.min_replicas(),
                errors.join("; ")
            )));
        }
        Ok(report)
    }

    /// Tells the replicas to forget records up to `upto` (folded). Best effort: a replica that
    /// misses it forgets them at the next trim. Returns the bytes reclaimed.
    pub async fn trim(&self, upto: u64) -> u64 {
        let name = self.name.clone();
        self.on_all(|c| {
            let name = name.clone();
            async move { c.journal_trim(&name, upto, false).await }
        })
        .await
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .sum()
    }

    /// Removes the journal from its replicas (best effort); how many answered.
    pub async fn drop_all(&self) -> usize {
        let name = self.name.clone();
        self.on_all(|c| {
            let name = name.clone();
            async move { c.journal_trim(&name, u64::MAX, true).await }
        })
        .await
        .into_iter()
        .filter(|(_, r)| r.is_ok())
        .count()
    }
}

/// The records a journal's readers keep from the union of its replicas, in seq order: for one
/// seq the newest epoch's record; and a record only if no newer epoch wrote at a lower or equal
/// seq (a new writer continues after what it read, so an older epoch's records past that point
/// are a tail it never acknowledged).
pub fn merge(mut all: Vec<JournalEntry>) -> Vec<JournalEntry> {
    all.sort_by(|a, b| a.seq.cmp(&b.seq).then(b.epoch.cmp(&a.epoch)));
    all.dedup_by(|later, first| later.seq == first.seq);
    let mut out = Vec::with_capacity(all.len());
    let mut newest = 0u64;
    for r in all {
        if r.epoch >= newest {
            newest = r.epoch;
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, epoch: u64, p: &str) -> JournalEntry {
        JournalEntry { seq, epoch, payload: Bytes::copy_from_slice(p.as_bytes()) }
    }

    #[test]
    fn merge_keeps_one_record_per_seq_and_drops_an_overtaken_tail() {
        // Replica A has the old writer's unacknowledged 3 and 4; B and C have the new writer's 3.
        let all = vec![e(1, 1, "a"), e(2, 1, "b"), e(3, 1, "old3"), e(4, 1, "old4"), e(1, 1, "a"), e(3, 2, "new3")];
        let m = merge(all);
        assert_eq!(m, vec![e(1, 1, "a"), e(2, 1, "b"), e(3, 2, "new3")]);
        // Gaps are kept (a record no replica has is a write never acknowledged).
        assert_eq!(merge(vec![e(5, 1, "x"), e(2, 1, "y")]), vec![e(2, 1, "y"), e(5, 1, "x")]);
        assert!(merge(Vec::new()).is_empty());
    }
}
