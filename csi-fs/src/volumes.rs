//! Volume and snapshot records in the metadata service beside their filesystems (fs-meta):
//! read, create (idempotent by name), change under a revision check, delete (the filesystem
//! first, then the record with its name entry), list in pages; the pool's up storage nodes.

use cluster::nodemap::{NodeMap, NodeState, Timeouts, now_unix_ms};
use csi_kit::{Created, CsiError, RecordStore};
use metadata_client::{KeyValue, MetaClient, Txn};

use crate::fs_error;
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

    /// The volume `id` with its metadata entry (None: no such volume, or not a volume id).
    pub async fn get(&self, id: &str) -> Result<Option<(KeyValue, VolumeRecord)>, CsiError> {
        if !is_volume_id(id) {
            return Ok(None);
        }
        self.store.record(&volume_key(id)).await
    }

    /// Stores `rec` under its name unless a volume of that name exists, which is returned instead.
    pub async fn create(&self, rec: VolumeRecord) -> Result<Created<VolumeRecord>, CsiError> {
        let (name, id) = (name_key(&rec.name), rec.id.clone());
        self.store.create_named(rec, (&name, &id), volume_key, |txn| txn).await
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
            if !change(&mut rec)? {
                return Ok(rec);
            }
            let txn = Txn::new().mod_revision_equals(&kv.key, kv.mod_revision).put(&kv.key, &encode(&rec));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(rec);
            }
        }
        Err(CsiError::Aborted(format!("volume {id} is changing under another call; retry")))
    }

    /// Deletes volume `id`: its filesystem (every key and chunk reference; pool GC then reclaims
    /// the chunks), then its record and name entry. An unknown volume is deleted already.
    pub async fn delete(&self, id: &str) -> Result<(), CsiError> {
        for _ in 0..16 {
            let Some((kv, rec)) = self.get(id).await? else { return Ok(()) };
            let clients = fs_meta::filesystem::clients(self.meta(), id).await.map_err(fs_error)?;
            if !clients.is_empty() {
                let nodes: Vec<&str> = clients.iter().map(|c| c.node.as_str()).collect();
                tracing::warn!(volume = %id, nodes = ?nodes, "deleting a volume that clients still have mounted");
            }
            fs_meta::filesystem::delete(self.meta(), id).await.map_err(fs_error)?;
            let txn =
                Txn::new().mod_revision_equals(&kv.key, kv.mod_revision).delete(&kv.key).delete(&name_key(&rec.name));
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

    /// The snapshot `id` with its metadata entry (None: no such snapshot, or not a snapshot id).
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
        for _ in 0..16 {
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
        Err(CsiError::Aborted(format!("snapshot {id} is changing under another call; retry")))
    }

    /// Deletes snapshot `id`: its copied filesystem, then its record and name entry.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), CsiError> {
        for _ in 0..16 {
            let Some((kv, rec)) = self.snapshot(id).await? else { return Ok(()) };
            fs_meta::filesystem::delete(self.meta(), id).await.map_err(fs_error)?;
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

    /// The storage nodes that are up and their free bytes, and the pool's copies per chunk.
    pub async fn pool(&self) -> Result<(Vec<(String, u64)>, usize), CsiError> {
        let unavailable = |e: cluster::ClusterError| CsiError::Unavailable(format!("storage pool: {e}"));
        let map = NodeMap::load(self.meta()).await.map_err(unavailable)?;
        let settings = cluster::PoolSettings::load(self.meta()).await.map_err(unavailable)?;
        let replicas = settings.as_ref().map_or(cluster::ClientConfig::default().replicas, |s| s.replicas);
        let t = settings.map_or_else(Timeouts::default, |s| s.timeouts());
        let now = now_unix_ms();
        let up = map
            .nodes
            .values()
            .filter(|n| map.state(&n.id, now, &t) == Some(NodeState::Up))
            .map(|n| (n.id.clone(), n.free_bytes))
            .collect();
        Ok((up, replicas.max(1)))
    }
}

/// Ready once the metadata service answers and at least one storage node is up.
#[tonic::async_trait]
impl csi_kit::identity::Probe for Volumes {
    async fn ready(&self) -> Result<bool, CsiError> {
        Ok(!self.pool().await?.0.is_empty())
    }
}
