//! The metadata-service layout of csi-fs: key names and the versioned JSON records under them.
//!
//! ```text
//! csi/fs/v/<volume id>       VolumeRecord: name, capacity (the filesystem's quota), source, populated
//! csi/fs/name/<name>         the volume id made for a CSI volume name (idempotent CreateVolume)
//! csi/fs/s/<snapshot id>     SnapshotRecord: source volume, size, ready
//! csi/fs/sname/<name>        the snapshot id made for a CSI snapshot name
//! ```
//! The filesystem itself is fs-meta's (`fs/rec/<id>`, `fs/n/<id>/...`): one filesystem per
//! volume and per snapshot, its id the volume's (`fs-` + 32 hex) or the snapshot's (`fss-` + 32
//! hex). A record and its name entry are written and deleted together in one transaction.

use serde::{Deserialize, Serialize};

pub use csi_kit::records::{check_node_id, decode, encode, now_ms};
pub use metadata_client::prefix_end;

/// Format version of every record below.
pub const RECORD_VERSION: u32 = 1;

pub const VOLUMES_PREFIX: &str = "csi/fs/v/";
pub const NAMES_PREFIX: &str = "csi/fs/name/";
pub const SNAPSHOTS_PREFIX: &str = "csi/fs/s/";
pub const SNAPSHOT_NAMES_PREFIX: &str = "csi/fs/sname/";

pub fn volume_key(id: &str) -> Vec<u8> {
    format!("{VOLUMES_PREFIX}{id}").into_bytes()
}

pub fn name_key(name: &str) -> Vec<u8> {
    format!("{NAMES_PREFIX}{name}").into_bytes()
}

pub fn snapshot_key(id: &str) -> Vec<u8> {
    format!("{SNAPSHOTS_PREFIX}{id}").into_bytes()
}

pub fn snapshot_name_key(name: &str) -> Vec<u8> {
    format!("{SNAPSHOT_NAMES_PREFIX}{name}").into_bytes()
}

fn hex_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

fn is_hex_id(id: &str, prefix: &str) -> bool {
    id.len() == prefix.len() + 32
        && id.starts_with(prefix)
        && id[prefix.len()..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new volume id (its filesystem's id too): `fs-` and 32 hex digits.
pub fn new_volume_id() -> String {
    hex_id("fs-")
}

/// Volume ids this driver hands out; anything else is unknown (NOT_FOUND), never a key lookup
/// with slashes or dots in it.
pub fn is_volume_id(id: &str) -> bool {
    is_hex_id(id, "fs-")
}

/// A new snapshot id (its copied filesystem's id too): `fss-` and 32 hex digits.
pub fn new_snapshot_id() -> String {
    hex_id("fss-")
}

/// Snapshot ids this driver hands out.
pub fn is_snapshot_id(id: &str) -> bool {
    is_hex_id(id, "fss-")
}

/// What a volume's first content is a copy of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

/// One shared-filesystem volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub version: u32,
    /// The volume id, also its filesystem's id.
    pub id: String,
    /// The CSI name CreateVolume was called with (the PV name).
    pub name: String,
    /// Bytes its files may hold (the filesystem's quota).
    pub capacity_bytes: u64,
    pub created_unix_ms: u64,
    /// What its first content is a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// False until its filesystem exists (made empty, or copied from the source); such a
    /// volume is not staged. A repeated CreateVolume finishes what a crash interrupted.
    pub populated: bool,
    /// Seconds its mounts retry operations while the metadata service or storage nodes are
    /// unreachable (StorageClass `ioTimeout`; records written before it existed get the
    /// default).
    #[serde(default = "io_timeout_default")]
    pub io_timeout_secs: u64,
}

fn io_timeout_default() -> u64 {
    csi_kit::params::DEFAULT_IO_TIMEOUT_SECS
}

/// A snapshot: a copy of its volume's filesystem (never mounted), sharing its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub version: u32,
    /// The snapshot id, also its copied filesystem's id.
    pub id: String,
    /// The CSI name CreateSnapshot was called with.
    pub name: String,
    pub source_volume: String,
    /// The source volume's capacity when the snapshot was cut (the least a restore may have).
    pub size_bytes: u64,
    pub created_unix_ms: u64,
    /// True once the filesystem is copied.
    pub ready: bool,
}

csi_kit::versioned!(RECORD_VERSION => VolumeRecord, SnapshotRecord);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keys_and_records() {
        let id = new_volume_id();
        assert!(is_volume_id(&id) && !is_snapshot_id(&id), "{id}");
        assert!(!is_volume_id("fs-../../etc") && !is_volume_id("blk-00000000000000000000000000000000"));
        assert!(!is_volume_id(&"fs-".chars().chain("A".repeat(32).chars()).collect::<String>()));
        let s = new_snapshot_id();
        assert!(is_snapshot_id(&s) && !is_volume_id(&s), "{s}");
        assert_eq!(volume_key("fs-1"), b"csi/fs/v/fs-1");
        assert_eq!(name_key("pv"), b"csi/fs/name/pv");
        assert_eq!(snapshot_key("fss-1"), b"csi/fs/s/fss-1");
        assert_eq!(snapshot_name_key("s"), b"csi/fs/sname/s");
        assert!(prefix_end(VOLUMES_PREFIX.as_bytes()) > volume_key(&id));
        assert!(!volume_key(&id).starts_with(SNAPSHOTS_PREFIX.as_bytes()));
        let rec = VolumeRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            name: "pv".into(),
            capacity_bytes: 1 << 30,
            created_unix_ms: 1,
            source: Some(Source::Snapshot(s.clone())),
            populated: false,
            io_timeout_secs: 9,
        };
        let text = encode(&rec);
        assert!(String::from_utf8_lossy(&text).contains("\"snapshot\""));
        assert_eq!(decode::<VolumeRecord>(b"k", &text).unwrap(), rec);
        // A record as releases before `ioTimeout` wrote it.
        let old = br#"{"version":1,"id":"fs-1","name":"pv","capacity_bytes":1,"created_unix_ms":1,"populated":true}"#;
        assert_eq!(decode::<VolumeRecord>(b"k", old).unwrap().io_timeout_secs, 120);
        let newer = VolumeRecord { version: 2, ..rec };
        let err = decode::<VolumeRecord>(b"csi/fs/v/fs-1", &encode(&newer)).unwrap_err();
        assert_eq!(err.to_string(), "record csi/fs/v/fs-1 has format version 2; this build reads up to version 1");
        let snap = SnapshotRecord {
            version: RECORD_VERSION,
            id: s,
            name: "snap".into(),
            source_volume: id,
            size_bytes: 1,
            created_unix_ms: 2,
            ready: true,
        };
        assert_eq!(decode::<SnapshotRecord>(b"k", &encode(&snap)).unwrap(), snap);
        let newer = SnapshotRecord { version: 2, ..snap };
        let err = decode::<SnapshotRecord>(b"csi/fs/s/x", &encode(&newer)).unwrap_err();
        assert_eq!(err.to_string(), "record csi/fs/s/x has format version 2; this build reads up to version 1");
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(
            (id, name, src) in (".*", ".*", ".*"),
            (capacity_bytes, created_unix_ms, io_timeout_secs) in (any::<u64>(), any::<u64>(), any::<u64>()),
            (populated, which) in (any::<bool>(), 0..3u8),
        ) {
            let source = match which {
                0 => None,
                1 => Some(Source::Snapshot(src.clone())),
                _ => Some(Source::Volume(src.clone())),
            };
            let rec = VolumeRecord {
                version: RECORD_VERSION, id: id.clone(), name: name.clone(), capacity_bytes, created_unix_ms, source,
                populated, io_timeout_secs,
            };
            prop_assert_eq!(decode::<VolumeRecord>(b"k", &encode(&rec)).unwrap(), rec);
            let snap = SnapshotRecord {
                version: RECORD_VERSION, id, name, source_volume: src, size_bytes: capacity_bytes, created_unix_ms,
                ready: populated,
            };
            prop_assert_eq!(decode::<SnapshotRecord>(b"k", &encode(&snap)).unwrap(), snap);
        }
    }
}
