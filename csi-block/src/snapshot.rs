//! CreateSnapshot, DeleteSnapshot and ListSnapshots. A snapshot is a copy of its volume's block
//! map taken while the volume is frozen (its attachment's commits wait), so it is exactly what a
//! crash at that moment would leave; it shares the volume's chunks, so it is instant and takes
//! no space until the volume diverges.

use cairn_proto::csi::v1::*;
use csi_kit::error::invalid;
use csi_kit::records::check_name;
use csi_kit::snapshots::{self, SnapshotLayout, StoredSnapshots};
use csi_kit::{Created, CsiError};

use crate::Driver;
use crate::records::*;

/// Most snapshots ListSnapshots returns in one page.
const LIST_PAGE_MAX: u32 = 1000;

/// Snapshot records and their CSI form, as ListSnapshots reads them.
const LAYOUT: SnapshotLayout<SnapshotRecord> =
    SnapshotLayout { prefix: SNAPSHOTS_PREFIX, key_of: snapshot_key, is_id: is_snapshot_id, to_csi };

fn to_csi(s: &SnapshotRecord) -> Snapshot {
    snapshots::snapshot(&s.id, &s.source_volume, s.size_bytes, s.created_unix_ms, s.ready)
}

pub async fn create(d: &Driver, r: CreateSnapshotRequest) -> Result<CreateSnapshotResponse, CsiError> {
    check_name("name", &r.name)?;
    if r.source_volume_id.is_empty() {
        return Err(invalid("source_volume_id is required"));
    }
    let _busy = d.inflight.begin(&format!("snapshot:{}", r.name))?;
    let Some((_, vol)) = d.volumes.get(&r.source_volume_id).await? else {
        return Err(CsiError::NotFound(format!("volume {} does not exist", r.source_volume_id)));
    };
    if !vol.populated {
        return Err(CsiError::Unavailable(format!("volume {} is still being copied from its source; retry", vol.id)));
    }
    let rec = SnapshotRecord {
        version: RECORD_VERSION,
        id: new_snapshot_id(),
        name: r.name.clone(),
        source_volume: vol.id.clone(),
        size_bytes: vol.capacity_bytes,
        block_size: vol.block_size,
        created_unix_ms: now_ms(),
        ready: false,
    };
    let snap = match d.volumes.create_snapshot(rec).await? {
        Created::New(s) => s,
        Created::Existing(s) if s.source_volume == vol.id => s,
        Created::Existing(s) => {
            return Err(CsiError::AlreadyExists(format!(
                "snapshot {} exists as {} of another volume ({})",
                s.name, s.id, s.source_volume
            )));
        }
    };
    let snap = if snap.ready {
        snap
    } else {
        // Cut (or finish cutting, after a crash): copy the frozen volume's block map.
        let pool = d.pool_client().await?;
        let blocks = d.volumes.copy_blocks(&pool, &vol.id, &snap.id, vol.block_size as u64, true).await?;
        let snap = d.volumes.snapshot_ready(&snap.id).await?;
        tracing::info!(snapshot = %snap.id, volume = %vol.id, blocks, "snapshot cut");
        snap
    };
    Ok(CreateSnapshotResponse { snapshot: Some(to_csi(&snap)) })
}

pub async fn delete(d: &Driver, r: DeleteSnapshotRequest) -> Result<DeleteSnapshotResponse, CsiError> {
    if r.snapshot_id.is_empty() {
        return Err(invalid("snapshot_id is required"));
    }
    let _busy = d.inflight.begin(&r.snapshot_id)?;
    d.volumes.delete_snapshot(&r.snapshot_id).await?;
    Ok(DeleteSnapshotResponse {})
}

pub async fn list(d: &Driver, r: ListSnapshotsRequest) -> Result<ListSnapshotsResponse, CsiError> {
    snapshots::list(&StoredSnapshots { store: &d.volumes.store, layout: &LAYOUT }, &r, LIST_PAGE_MAX).await
}
