//! The metadata-service layout of csi-block: key names and the versioned JSON records under them.
//!
//! ```text
//! csi/block/v/<volume id>     VolumeRecord: size, replicas, block size, file system, publications
//! csi/block/name/<name>       the volume id created for a CSI volume name (idempotent CreateVolume)
//! csi/block/node/<node id>    NodeRecord: a node plugin that registered (ControllerPublish targets)
//! csi/block/s/<snapshot id>   SnapshotRecord: source volume, size, block size, ready
//! csi/block/sname/<name>      the snapshot id created for a CSI snapshot name
//! ```
//! Block data (of volumes and snapshots alike) is the volume engine's: `vol/map/<id>/...`.
//! A volume's record and its name entry are written and deleted together in one transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use csi_kit::records::{check_node_id, decode, encode, now_ms};
pub use metadata_client::prefix_end;

/// Format version of every record below.
pub const RECORD_VERSION: u32 = 1;

pub const VOLUMES_PREFIX: &str = "csi/block/v/";
pub const NAMES_PREFIX: &str = "csi/block/name/";
pub const NODES_PREFIX: &str = "csi/block/node/";
pub const SNAPSHOTS_PREFIX: &str = "csi/block/s/";
pub const SNAPSHOT_NAMES_PREFIX: &str = "csi/block/sname/";

pub fn snapshot_key(id: &str) -> Vec<u8> {
    format!("{SNAPSHOTS_PREFIX}{id}").into_bytes()
}

pub fn snapshot_name_key(name: &str) -> Vec<u8> {
    format!("{SNAPSHOT_NAMES_PREFIX}{name}").into_bytes()
}

/// A new snapshot id: `snap-` and 32 hex digits.
pub fn new_snapshot_id() -> String {
    format!("snap-{:032x}", rand::random::<u128>())
}

/// Snapshot ids this driver hands out.
pub fn is_snapshot_id(id: &str) -> bool {
    id.len() == 37 && id.starts_with("snap-") && id[5..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn volume_key(id: &str) -> Vec<u8> {
    format!("{VOLUMES_PREFIX}{id}").into_bytes()
}

pub fn name_key(name: &str) -> Vec<u8> {
    format!("{NAMES_PREFIX}{name}").into_bytes()
}

pub fn node_key(id: &str) -> Vec<u8> {
    format!("{NODES_PREFIX}{id}").into_bytes()
}

/// A new volume id: `blk-` and 32 hex digits.
pub fn new_volume_id() -> String {
    format!("blk-{:032x}", rand::random::<u128>())
}

/// Volume ids this driver hands out; anything else is unknown (NOT_FOUND), never a key lookup
/// with slashes or dots in it.
pub fn is_volume_id(id: &str) -> bool {
    id.len() == 36 && id.starts_with("blk-") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// How a volume is attached to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The CSI access mode it was published with (`AccessMode.Mode` number).
    pub mode: i32,
    pub readonly: bool,
    pub since_unix_ms: u64,
}

/// One block volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub version: u32,
    pub id: String,
    /// The CSI name CreateVolume was called with (the PV name).
    pub name: String,
    pub capacity_bytes: u64,
    /// Bytes per block of the volume engine.
    pub block_size: u32,
    /// Copies of every block.
    pub replicas: u32,
    /// Fewest replicas a write may land on.
    pub min_replicas: u32,
    /// File system made on first stage for mount access (`ext4`, `xfs`); empty for raw block.
    pub fs_type: String,
    pub created_unix_ms: u64,
    /// Raised at every publication change, so a node holding an older attachment is fenced.
    pub generation: u64,
    /// Nodes it is published to.
    #[serde(default)]
    pub published: BTreeMap<String, Publication>,
    /// What its first content is a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// False until the source's blocks are in; such a volume is not published.
    #[serde(default = "populated_default")]
    pub populated: bool,
    /// Seconds its data path retries I/O while the pool or the metadata service is unreachable
    /// (StorageClass `ioTimeout`; records written before it existed get the default).
    #[serde(default = "io_timeout_default")]
    pub io_timeout_secs: u64,
}

fn populated_default() -> bool {
    true
}

fn io_timeout_default() -> u64 {
    csi_kit::params::DEFAULT_IO_TIMEOUT_SECS
}

/// The content source of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

/// A snapshot of a volume: a copy of its block map at one point, sharing its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub version: u32,
    pub id: String,
    /// The CSI name CreateSnapshot was called with.
    pub name: String,
    pub source_volume: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub created_unix_ms: u64,
    /// True once the block map is copied.
    pub ready: bool,
}

/// A node plugin, registered when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub version: u32,
    pub id: String,
    /// Topology segments it reported (NodeGetInfo).
    pub topology: BTreeMap<String, String>,
    pub registered_unix_ms: u64,
}

csi_kit::versioned!(RECORD_VERSION => VolumeRecord, SnapshotRecord, NodeRecord);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_records() {
        let id = new_volume_id();
        assert!(is_volume_id(&id), "{id}");
        assert!(!is_volume_id("blk-../../etc"));
        assert!(!is_volume_id("vol-1"));
        assert!(check_node_id("worker-1.example").is_ok());
        assert!(check_node_id("a/b").is_err() && check_node_id("").is_err());
        let n = NodeRecord { version: 9, id: "n".into(), topology: BTreeMap::new(), registered_unix_ms: 0 };
        let err = decode::<NodeRecord>(b"k", &encode(&n)).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");
        assert!(prefix_end(VOLUMES_PREFIX.as_bytes()) > volume_key(&id));
    }

    #[test]
    fn volume_records_keep_their_io_timeout_and_older_ones_get_the_default() {
        let rec = VolumeRecord {
            version: RECORD_VERSION,
            id: new_volume_id(),
            name: "pv".into(),
            capacity_bytes: 1 << 30,
            block_size: 65536,
            replicas: 3,
            min_replicas: 2,
            fs_type: "ext4".into(),
            created_unix_ms: 1,
            generation: 4,
            published: BTreeMap::new(),
            source: None,
            populated: true,
            io_timeout_secs: 30,
        };
        assert_eq!(decode::<VolumeRecord>(b"k", &encode(&rec)).unwrap(), rec);
        // A record as releases before `ioTimeout` wrote it.
        let old = br#"{"version":1,"id":"blk-00000000000000000000000000000001","name":"pv","capacity_bytes":1073741824,
            "block_size":65536,"replicas":3,"min_replicas":2,"fs_type":"ext4","created_unix_ms":1,"generation":4}"#;
        let old: VolumeRecord = decode(b"k", old).unwrap();
        assert_eq!(old.io_timeout_secs, csi_kit::params::DEFAULT_IO_TIMEOUT_SECS);
    }

    #[test]
    fn newer_records_are_refused_in_one_line() {
        let s = SnapshotRecord {
            version: RECORD_VERSION + 1,
            id: new_snapshot_id(),
            name: "s".into(),
            source_volume: new_volume_id(),
            size_bytes: 1,
            block_size: 4096,
            created_unix_ms: 1,
            ready: true,
        };
        let e = decode::<SnapshotRecord>(&snapshot_key(&s.id), &encode(&s)).unwrap_err().to_string();
        assert_eq!(e, format!("record csi/block/s/{} has format version 2; this build reads up to version 1", s.id));
        // A newer volume record with a field this build does not know is refused as newer too.
        let mut v = serde_json::to_value(NodeRecord {
            version: 1,
            id: "n".into(),
            topology: BTreeMap::new(),
            registered_unix_ms: 0,
        })
        .unwrap();
        v["version"] = 3.into();
        v["zone_weights"] = serde_json::json!({"a": 1});
        let e = decode::<NodeRecord>(b"csi/block/node/n", &serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
        assert!(e.ends_with("has format version 3; this build reads up to version 1") && !e.contains('\n'), "{e}");
    }

    use proptest::prelude::*;

    fn publication() -> impl Strategy<Value = Publication> {
        (any::<i32>(), any::<bool>(), any::<u64>()).prop_map(|(mode, readonly, since_unix_ms)| Publication {
            mode,
            readonly,
            since_unix_ms,
        })
    }

    fn source() -> impl Strategy<Value = Option<Source>> {
        prop_oneof![
            Just(None),
            ".*".prop_map(|s| Some(Source::Snapshot(s))),
            ".*".prop_map(|s| Some(Source::Volume(s)))
        ]
    }

    proptest! {
        #[test]
        fn volume_records_round_trip(
            (id, name, fs_type) in (".*", ".*", "(ext4|xfs|)"),
            (capacity_bytes, block_size, replicas, min_replicas) in (any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()),
            (created_unix_ms, generation, io_timeout_secs, populated) in (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
            published in proptest::collection::btree_map(".*", publication(), 0..4),
            source in source(),
        ) {
            let rec = VolumeRecord {
                version: RECORD_VERSION, id, name, capacity_bytes, block_size, replicas, min_replicas, fs_type,
                created_unix_ms, generation, published, source, populated, io_timeout_secs,
            };
            prop_assert_eq!(decode::<VolumeRecord>(b"k", &encode(&rec)).unwrap(), rec);
        }

        #[test]
        fn snapshot_and_node_records_round_trip(
            (id, name, source_volume) in (".*", ".*", ".*"),
            (size_bytes, block_size, created_unix_ms, ready) in (any::<u64>(), any::<u32>(), any::<u64>(), any::<bool>()),
            topology in proptest::collection::btree_map(".*", ".*", 0..4),
        ) {
            let s = SnapshotRecord {
                version: RECORD_VERSION, id: id.clone(), name, source_volume, size_bytes, block_size, created_unix_ms, ready,
            };
            prop_assert_eq!(decode::<SnapshotRecord>(b"k", &encode(&s)).unwrap(), s);
            let n = NodeRecord { version: RECORD_VERSION, id, topology, registered_unix_ms: created_unix_ms };
            prop_assert_eq!(decode::<NodeRecord>(b"k", &encode(&n)).unwrap(), n);
        }
    }
}
