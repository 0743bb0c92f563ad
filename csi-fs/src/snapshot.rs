//! CreateSnapshot, DeleteSnapshot and ListSnapshots. A snapshot is a copy of its volume's
//! filesystem (fs-meta's `copy`: metadata copied, every file block's chunk shared by a new
//! reference), never mounted; a volume made from it is another copy. Files written while the
//! copy runs may land before or after it: consistent per block, not across files.

use cairn_proto::csi::v1::*;
use csi_kit::error::invalid;
use csi_kit::records::check_name;
use csi_kit::{Created, CsiError};

use crate::records::*;
use crate::{Driver, fs_error};

/// Most snapshots ListSnapshots returns in one page.
const LIST_PAGE_MAX: u32 = 1000;

fn to_csi(s: &SnapshotRecord) -> Snapshot {
    Snapshot {
        size_bytes: s.size_bytes as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: (s.created_unix_ms / 1000) as i64,
            nanos: ((s.created_unix_ms % 1000) * 1_000_000) as i32,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
    }
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
        return Err(CsiError::Unavailable(format!("volume {} is still being made; retry", vol.id)));
    }
    let rec = SnapshotRecord {
        version: RECORD_VERSION,
        id: new_snapshot_id(),
        name: r.name.clone(),
        source_volume: vol.id.clone(),
        size_bytes: vol.capacity_bytes,
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
        // Cut (or finish cutting, after a crash): copy the volume's filesystem.
        fs_meta::filesystem::copy(d.volumes.meta(), &vol.id, &snap.id, snap.size_bytes).await.map_err(fs_error)?;
        let snap = d.volumes.snapshot_ready(&snap.id).await?;
        tracing::info!(snapshot = %snap.id, volume = %vol.id, "snapshot cut");
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
    if r.max_entries < 0 {
        return Err(invalid("max_entries must not be negative"));
    }
    if !r.snapshot_id.is_empty() {
        let found = d.volumes.snapshot(&r.snapshot_id).await?.map(|(_, s)| s);
        let entries = found
            .filter(|s| r.source_volume_id.is_empty() || s.source_volume == r.source_volume_id)
            .map(|s| list_snapshots_response::Entry { snapshot: Some(to_csi(&s)) })
            .into_iter()
            .collect();
        return Ok(ListSnapshotsResponse { entries, next_token: String::new() });
    }
    if !r.starting_token.is_empty() && !is_snapshot_id(&r.starting_token) {
        return Err(CsiError::Aborted(format!(
            "starting_token {:?} is not a token ListSnapshots gave",
            r.starting_token
        )));
    }
    let max = if r.max_entries == 0 { LIST_PAGE_MAX } else { (r.max_entries as u32).min(LIST_PAGE_MAX) };
    // Filtering by source reads on until a page is full or the snapshots end.
    let (mut entries, mut after) = (Vec::new(), r.starting_token.clone());
    loop {
        let (recs, more) = d.volumes.list_snapshots(&after, max).await?;
        for s in &recs {
            if entries.len() as u32 == max {
                return Ok(ListSnapshotsResponse { entries, next_token: after });
            }
            after = s.id.clone();
            if r.source_volume_id.is_empty() || s.source_volume == r.source_volume_id {
                entries.push(list_snapshots_response::Entry { snapshot: Some(to_csi(s)) });
            }
        }
        if !more || recs.is_empty() {
            return Ok(ListSnapshotsResponse { entries, next_token: String::new() });
        }
        if entries.len() as u32 == max {
            return Ok(ListSnapshotsResponse { entries, next_token: after });
        }
    }
}
