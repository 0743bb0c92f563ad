//! Volume and node records in the metadata service: read, create (idempotent by name), change
//! under a revision check, delete with the name entry, list in pages, register node plugins.

use cluster::nodemap::{NodeMap, NodeState, Timeouts, now_unix_ms};
use csi_kit::{Created, CsiError, RecordStore};
use metadata_client::{KeyValue, MetaClient, Txn};

use crate::records::*;

/// The volume store every handler uses; cheap to clone.
#[derive(Clone)]
pub struct Volumes {
    pub store: RecordStore,
}

impl Volumes {
    pub fn new(meta: MetaClient) -> Volumes {
        Volumes { store: RecordStore { meta } }
    }

    pub fn meta(&self) -> &MetaClient {
        &self.store.meta
    }

    /// The volume `id` with its metadata entry (None: no such volume).
    pub async fn get(&self, id: &str) -> Result<Option<(KeyValue, VolumeRecord)>, CsiError> {
        if !is_volume_id(id) {
            return Ok(None);
        }
        self.store.record(&volume_key(id)).await
    }

    /// Stores `rec` under its name unless a volume of that name exists, which is returned instead.
    pub async fn create(&self, rec: VolumeRecord) -> Result<Created<VolumeRecord>, CsiError> {
        let (name, id, generation) = (name_key(&rec.name), rec.id.clone(), rec.generation);
        let fence = |txn| volume_engine::set_generation(txn, &id, generation);
        self.store.create_named(rec, (&name, &id), volume_key, fence).await
    }

    /// Applies `change` to volume `id` and stores it, retrying when another writer got in
    /// between. `change` returns false when there is nothing to store. NotFound if missing.
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut VolumeRecord) -> Result<bool, CsiError>,
    ) -> Result<VolumeRecord, CsiError> {
        for _ in 0..16 {
            let Some((kv, mut rec)) = self.get(id).await? else {
                return Err(CsiError::NotFound(format!("volume {id} does not exist")));
            };
            let generation = rec.generation;
            if !change(&mut rec)? {
                return Ok(rec);
            }
            let mut txn = Txn::new().mod_revision_equals(&kv.key, kv.mod_revision).put(&kv.key, &encode(&rec));
            if rec.generation != generation {
                // The engine's fence moves with the record: an older attachment can no longer commit.
                txn = volume_engine::set_generation(txn, id, rec.generation);
            }
            if self.meta().txn(txn).await?.succeeded {
                return Ok(rec);
            }
        }
        Err(CsiError::Aborted(format!("volume {id} is changing under another call; retry")))
    }

    /// Deletes volume `id`: its blocks' map entries and chunk references first (pool GC then
    /// reclaims the chunks), then its record, name entry and fence. FailedPrecondition while it
    /// is published.
    pub async fn delete(&self, chunks: &cluster::ChunkClient, id: &str) -> Result<(), CsiError> {
        for _ in 0..16 {
            let Some((kv, rec)) = self.get(id).await? else { return Ok(()) };
            if !rec.published.is_empty() {
                let nodes: Vec<&str> = rec.published.keys().map(String::as_str).collect();
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {id} is still published to {}; unpublish it first",
                    nodes.join(", ")
                )));
            }
            volume_engine::delete_journal(self.meta(), chunks, id)
                .await
                .map_err(|e| CsiError::Unavailable(e.to_string()))?;
            let blocks =
                volume_engine::delete_data(self.meta(), id).await.map_err(|e| CsiError::Unavailable(e.to_string()))?;
            tracing::info!(volume = %id, blocks, "volume data released");
            let txn =
                Txn::new().mod_revision_equals(&kv.key, kv.mod_revision).delete(&kv.key).delete(&name_key(&rec.name));
            let txn = volume_engine::clear_generation(txn, id);
            if self.meta().txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(CsiError::Aborted(format!("volume {id} is changing under another call; retry")))
    }

    /// Up to `max` volumes after `after` (a volume id; empty: from the start) in id order, and
    /// whether more follow.
    pub async fn list(&self, after: &str, max: u32) -> Result<(Vec<VolumeRecord>, bool), CsiError> {
        self.store.page(VOLUMES_PREFIX, Some(after).filter(|a| !a.is_empty()).map(volume_key), max).await
    }

    /// The snapshot `id` with its metadata entry (None: no such snapshot).
    pub async fn snapshot(&self, id: &str) -> Result<Option<(KeyValue, SnapshotRecord)>, CsiError> {
        if !is_snapshot_id(id) {
            return Ok(None);
        }
        self.store.record(&snapshot_key(id)).await
    }

    /// Stores snapshot `rec` under its name unless one of that name exists (returned instead).
    pub async fn create_snapshot(&self, rec: SnapshotRecord) -> Result<Created<SnapshotRecord>, CsiError> {
        let (name, id) = (snapshot_name_key(&rec.name), rec.id.clone());
        self.store.create_named(rec, (&name, &id), snapshot_key, |txn| txn).await
    }

    /// Marks snapshot `id` ready.
    pub async fn snapshot_ready(&self, id: &str) -> Result<SnapshotRecord, CsiError> {
        loop {
            let Some((kv, mut rec)) = self.snapshot(id).await? else {
                return Err(CsiError::NotFound(format!("snapshot {id} does not exist")));
            };
            if rec.ready {
                return Ok(rec);
            }
            rec.ready = true;
            let txn = Txn::new().mod_revision_equals(&kv.key, kv.mod_revision).put(&kv.key, &encode(&rec));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(rec);
            }
        }
    }

    /// Deletes snapshot `id`: its block map and references, then its record and name entry.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), CsiError> {
        for _ in 0..16 {
            let Some((kv, rec)) = self.snapshot(id).await? else { return Ok(()) };
            volume_engine::delete_data(self.meta(), id).await.map_err(|e| CsiError::Unavailable(e.to_string()))?;
            let txn = Txn::new()
                .mod_revision_equals(&kv.key, kv.mod_revision)
                .delete(&kv.key)
                .delete(&snapshot_name_key(&rec.name));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(CsiError::Aborted(format!("snapshot {id} is changing under another call; retry")))
    }

    /// Up to `max` snapshots after `after` (a snapshot id) in id order, and whether more follow.
    pub async fn list_snapshots(&self, after: &str, max: u32) -> Result<(Vec<SnapshotRecord>, bool), CsiError> {
        self.store.page(SNAPSHOTS_PREFIX, Some(after).filter(|a| !a.is_empty()).map(snapshot_key), max).await
    }

    /// Copies the blocks of `from` into `to` (sharing chunks). A source volume (`live`) is
    /// frozen meanwhile and its journal's unfolded writes are laid over the copy, so the copy
    /// is crash-consistent (see [`volume_engine::snapshot_blocks`]).
    pub async fn copy_blocks(
        &self,
        chunks: &cluster::ChunkClient,
        from: &str,
        to: &str,
        block_size: u64,
        live: bool,
    ) -> Result<u64, CsiError> {
        let unavailable = |e: volume_engine::EngineError| CsiError::Unavailable(e.to_string());
        if live {
            volume_engine::snapshot_blocks(self.meta(), chunks, from, to, block_size).await.map_err(unavailable)
        } else {
            volume_engine::copy_map(self.meta(), from, to).await.map_err(unavailable)
        }
    }

    /// Whether node plugin `id` registered.
    pub async fn node_exists(&self, id: &str) -> Result<bool, CsiError> {
        if check_node_id(id).is_err() {
            return Ok(false);
        }
        Ok(self.meta().get(&node_key(id)).await?.is_some())
    }

    /// Records node plugin `rec` (a restart overwrites its earlier record).
    pub async fn register_node(&self, rec: &NodeRecord) -> Result<(), CsiError> {
        self.meta().put(&node_key(&rec.id), &encode(rec)).await?;
        Ok(())
    }

    /// The storage nodes that are up and their free bytes.
    pub async fn pool(&self) -> Result<Vec<(String, u64)>, CsiError> {
        let unavailable = |e: cluster::ClusterError| CsiError::Unavailable(format!("storage pool: {e}"));
        let map = NodeMap::load(self.meta()).await.map_err(unavailable)?;
        let t = cluster::PoolSettings::load(self.meta())
            .await
            .map_err(unavailable)?
            .map_or_else(Timeouts::default, |s| s.timeouts());
        let now = now_unix_ms();
        Ok(map
            .nodes
            .values()
            .filter(|n| map.state(&n.id, now, &t) == Some(NodeState::Up))
            .map(|n| (n.id.clone(), n.free_bytes))
            .collect())
    }
}

/// Ready once the metadata service answers and at least one storage node is up.
#[tonic::async_trait]
impl csi_kit::identity::Probe for Volumes {
    async fn ready(&self) -> Result<bool, CsiError> {
        Ok(!self.pool().await?.is_empty())
    }
}
