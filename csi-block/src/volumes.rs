//! Volume and node records in the metadata service: read, create (idempotent by name), change
//! under a revision check, delete with the name entry, list in pages, register node plugins.

use cluster::nodemap::{NodeMap, NodeState, Timeouts, now_unix_ms};
use csi_kit::CsiError;
use metadata_client::{KeyValue, MetaClient, Txn};

use crate::records::*;

/// The volume store every handler uses; cheap to clone.
#[derive(Clone)]
pub struct Volumes {
    pub meta: MetaClient,
}

/// What CreateVolume found or made.
pub enum Created {
    New(VolumeRecord),
    Existing(VolumeRecord),
}

impl Volumes {
    /// The volume `id` with its metadata entry (None: no such volume).
    pub async fn get(&self, id: &str) -> Result<Option<(KeyValue, VolumeRecord)>, CsiError> {
        if !is_volume_id(id) {
            return Ok(None);
        }
        let k = volume_key(id);
        match self.meta.get(&k).await? {
            Some(kv) => {
                let rec = decode(&k, &kv.value)?;
                Ok(Some((kv, rec)))
            }
            None => Ok(None),
        }
    }

    /// The volume created for CSI name `name`, if any.
    pub async fn by_name(&self, name: &str) -> Result<Option<VolumeRecord>, CsiError> {
        match self.meta.get(&name_key(name)).await? {
            Some(kv) => Ok(self.get(&String::from_utf8_lossy(&kv.value)).await?.map(|(_, r)| r)),
            None => Ok(None),
        }
    }

    /// Stores `rec` under its name unless a volume of that name exists, which is returned instead.
    pub async fn create(&self, rec: VolumeRecord) -> Result<Created, CsiError> {
        for _ in 0..16 {
            if let Some(existing) = self.by_name(&rec.name).await? {
                return Ok(Created::Existing(existing));
            }
            let nk = name_key(&rec.name);
            let txn = Txn::new()
                .absent(&nk)
                .absent(&volume_key(&rec.id))
                .put(&nk, rec.id.as_bytes())
                .put(&volume_key(&rec.id), &encode(&rec));
            let txn = volume_engine::set_generation(txn, &rec.id, rec.generation);
            if self.meta.txn(txn).await?.succeeded {
                return Ok(Created::New(rec));
            }
        }
        Err(CsiError::Aborted(format!("volume {} is being created by another call", rec.name)))
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
            if self.meta.txn(txn).await?.succeeded {
                return Ok(rec);
            }
        }
        Err(CsiError::Aborted(format!("volume {id} is changing under another call; retry")))
    }

    /// Deletes volume `id`: its blocks' map entries and chunk references first (pool GC then
    /// reclaims the chunks), then its record, name entry and fence. FailedPrecondition while it
    /// is published.
    pub async fn delete(&self, id: &str) -> Result<(), CsiError> {
        for _ in 0..16 {
            let Some((kv, rec)) = self.get(id).await? else { return Ok(()) };
            if !rec.published.is_empty() {
                let nodes: Vec<&str> = rec.published.keys().map(String::as_str).collect();
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {id} is still published to {}; unpublish it first",
                    nodes.join(", ")
                )));
            }
            let blocks =
                volume_engine::delete_data(&self.meta, id).await.map_err(|e| CsiError::Unavailable(e.to_string()))?;
            tracing::info!(volume = %id, blocks, "volume data released");
            let txn =
                Txn::new().mod_revision_equals(&kv.key, kv.mod_revision).delete(&kv.key).delete(&name_key(&rec.name));
            let txn = volume_engine::clear_generation(txn, id);
            if self.meta.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(CsiError::Aborted(format!("volume {id} is changing under another call; retry")))
    }

    /// Up to `max` volumes after `after` (a volume id; empty: from the start) in id order, and
    /// whether more follow.
    pub async fn list(&self, after: &str, max: u32) -> Result<(Vec<VolumeRecord>, bool), CsiError> {
        let start = if after.is_empty() {
            VOLUMES_PREFIX.as_bytes().to_vec()
        } else {
            let mut k = volume_key(after);
            k.push(0);
            k
        };
        let end = prefix_end(VOLUMES_PREFIX.as_bytes());
        let page = self.meta.range(&start, &end, max).await?;
        let more = page.next_key.is_some();
        let recs = page.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect::<Result<Vec<_>, _>>()?;
        Ok((recs, more))
    }

    /// Whether node plugin `id` registered.
    pub async fn node_exists(&self, id: &str) -> Result<bool, CsiError> {
        if check_node_id(id).is_err() {
            return Ok(false);
        }
        Ok(self.meta.get(&node_key(id)).await?.is_some())
    }

    /// Records node plugin `rec` (a restart overwrites its earlier record).
    pub async fn register_node(&self, rec: &NodeRecord) -> Result<(), CsiError> {
        self.meta.put(&node_key(&rec.id), &encode(rec)).await?;
        Ok(())
    }

    /// The storage nodes that are up and their free bytes.
    pub async fn pool(&self) -> Result<Vec<(String, u64)>, CsiError> {
        let map = NodeMap::load(&self.meta).await.map_err(|e| CsiError::Unavailable(format!("storage pool: {e}")))?;
        let (now, t) = (now_unix_ms(), Timeouts::default());
        Ok(map
            .nodes
            .values()
            .filter(|n| map.state(&n.id, now, &t) == Some(NodeState::Up))
            .map(|n| (n.id.clone(), n.free_bytes))
            .collect())
    }
}
