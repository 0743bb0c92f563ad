//! What the operator CLI reads about shared filesystems, straight from the metadata service:
//! every filesystem with its capacity (quota), usage (bytes and inodes), the CSI volume or
//! snapshot it is, and the clients that have it mounted.

use csi_kit::CsiError;
use fs_meta::filesystem::ClientRecord;
use metadata_client::MetaClient;

use crate::fs_error;
use crate::records::{is_snapshot_id, is_volume_id};
use crate::volumes::Volumes;

/// What a filesystem is to the CSI driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    /// A volume, with its CSI name (the PV name), if its record is there.
    Volume { name: Option<String> },
    /// A snapshot of `source_volume`, with its CSI name.
    Snapshot { name: Option<String>, source_volume: Option<String> },
    /// Not made by csi-fs.
    Other,
}

/// One filesystem as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub id: String,
    pub kind: FsKind,
    /// The quota: bytes its files may hold.
    pub capacity_bytes: u64,
    /// Sum of its file sizes.
    pub used_bytes: u64,
    /// Inodes in use.
    pub used_inodes: u64,
    /// The filesystem it was copied from (a snapshot, or a cloned volume).
    pub origin: Option<String>,
    /// Being deleted: no longer mountable.
    pub deleting: bool,
    pub created_unix_ms: u64,
    /// The clients that have it mounted now.
    pub clients: Vec<ClientRecord>,
}

/// Every filesystem, in id order, with its usage, CSI identity and mounted clients.
pub async fn list_filesystems(meta: &MetaClient) -> Result<Vec<FsInfo>, CsiError> {
    let volumes = Volumes::new(meta.clone());
    let mut out = Vec::new();
    for rec in fs_meta::filesystem::list(meta).await.map_err(fs_error)? {
        let usage = match fs_meta::filesystem::usage(meta, &rec.id).await {
            Ok(u) => u,
            // Deleted since it was listed, or half deleted.
            Err(fs_meta::FsError::NoFilesystem(_)) => fs_meta::Usage::default(),
            Err(e) => return Err(fs_error(e)),
        };
        let kind = if is_volume_id(&rec.id) {
            FsKind::Volume { name: volumes.get(&rec.id).await?.map(|(_, v)| v.name) }
        } else if is_snapshot_id(&rec.id) {
            let s = volumes.snapshot(&rec.id).await?.map(|(_, s)| s);
            FsKind::Snapshot { name: s.as_ref().map(|s| s.name.clone()), source_volume: s.map(|s| s.source_volume) }
        } else {
            FsKind::Other
        };
        out.push(FsInfo {
            clients: fs_meta::filesystem::clients(meta, &rec.id).await.map_err(fs_error)?,
            id: rec.id,
            kind,
            capacity_bytes: rec.quota_bytes,
            used_bytes: usage.bytes,
            used_inodes: usage.inodes,
            origin: rec.origin,
            deleting: rec.deleting,
            created_unix_ms: rec.created_ms,
        });
    }
    Ok(out)
}
