//! What the operator CLI (`cairn volume ...`) reads, straight from the metadata service: every
//! volume and snapshot record, and how far a volume's flushed blocks are from fully replicated.

use std::future::Future;

use cluster::ChunkClient;
use csi_kit::CsiError;
use metadata_client::MetaClient;
pub use volume_engine::ReplicaHealth;

use crate::records::{SnapshotRecord, VolumeRecord};
use crate::volumes::Volumes;

/// Records read per page.
const PAGE: u32 = 1000;

/// Every record `page(after)` gives, a page at a time (`after`: the last id read; empty at first).
async fn all_pages<T, Fut>(mut page: impl FnMut(String) -> Fut, id: impl Fn(&T) -> &str) -> Result<Vec<T>, CsiError>
where
    Fut: Future<Output = Result<(Vec<T>, bool), CsiError>>,
{
    let mut out: Vec<T> = Vec::new();
    loop {
        let after = out.last().map(|r| id(r).to_string()).unwrap_or_default();
        let (recs, more) = page(after).await?;
        let empty = recs.is_empty();
        out.extend(recs);
        if !more || empty {
            return Ok(out);
        }
    }
}

/// Every volume, in id order.
pub async fn list_volumes(meta: &MetaClient) -> Result<Vec<VolumeRecord>, CsiError> {
    let v = Volumes::new(meta.clone());
    all_pages(
        |after| {
            let v = v.clone();
            async move { v.list(&after, PAGE).await }
        },
        |r: &VolumeRecord| &r.id,
    )
    .await
}

/// Every snapshot, in id order.
pub async fn list_snapshots(meta: &MetaClient) -> Result<Vec<SnapshotRecord>, CsiError> {
    let v = Volumes::new(meta.clone());
    all_pages(
        |after| {
            let v = v.clone();
            async move { v.list_snapshots(&after, PAGE).await }
        },
        |r: &SnapshotRecord| &r.id,
    )
    .await
}

/// The volume `id` (None: no such volume, or not a volume id).
pub async fn get_volume(meta: &MetaClient, id: &str) -> Result<Option<VolumeRecord>, CsiError> {
    Ok(Volumes::new(meta.clone()).get(id).await?.map(|(_, rec)| rec))
}

/// Checks every flushed block of volume `id` against the pool (`chunks`: a client of it):
/// chunks, the fully replicated ones and the copies missing.
pub async fn volume_health(meta: &MetaClient, chunks: &ChunkClient, id: &str) -> Result<ReplicaHealth, CsiError> {
    volume_engine::replica_health(meta, chunks, id)
        .await
        .map_err(|e| CsiError::Unavailable(format!("checking the replicas of {id}: {e}")))
}

/// Bytes of flushed data volume `rec` holds (its blocks holding data, per `health`).
pub fn volume_usage(rec: &VolumeRecord, health: &ReplicaHealth) -> u64 {
    health.blocks.saturating_mul(u64::from(rec.block_size)).min(rec.capacity_bytes)
}
