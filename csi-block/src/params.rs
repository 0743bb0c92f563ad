//! What a CreateVolume asks for, checked: StorageClass parameters, volume capabilities (access
//! mode and type) and the capacity range — each refusal an InvalidArgument or OutOfRange with a
//! message naming the field.

use std::collections::HashMap;

use cairn_proto::csi::v1::volume_capability::AccessType;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::{CapacityRange, VolumeCapability};
use csi_kit::CsiError;
use csi_kit::error::invalid;
use csi_kit::params::Capabilities;
pub use csi_kit::params::{MIB, fits};

/// Most replicas a volume may ask for.
pub const MAX_REPLICAS: u32 = 5;
/// The size of a volume whose claim names none.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The largest volume.
pub const MAX_CAPACITY: u64 = 64 << 40;
/// Block size when the StorageClass names none.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;
/// File systems NodeStage can make.
pub const FS_TYPES: [&str; 2] = ["ext4", "xfs"];

/// Failure domain the replicas of a block are spread over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    Zone,
    Host,
}

/// The StorageClass parameters a volume is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    pub replicas: u32,
    pub min_replicas: u32,
    pub block_size: u32,
    /// `fsType` parameter, when given.
    pub fs_type: Option<String>,
    pub spread: Spread,
    /// `ioTimeout`: seconds the data path retries I/O while the pool or metadata service is
    /// unreachable (0: fail at once).
    pub io_timeout_secs: u64,
}

/// The parameters a StorageClass may set (others are refused, so a typo is not silently ignored).
pub const KNOWN_PARAMETERS: [&str; 6] =
    ["replicas", "minReplicas", "blockSize", "fsType", "failureDomain", csi_kit::params::IO_TIMEOUT];

/// Parses StorageClass parameters. Keys the Kubernetes sidecars add (`csi.storage.k8s.io/...`)
/// are ignored.
pub fn parse_parameters(p: &HashMap<String, String>, default_replicas: u32) -> Result<VolumeParams, CsiError> {
    for k in p.keys() {
        if !KNOWN_PARAMETERS.contains(&k.as_str()) && !k.starts_with("csi.storage.k8s.io/") {
            return Err(invalid(format!("unknown parameter {k:?} (known: {})", KNOWN_PARAMETERS.join(", "))));
        }
    }
    let num = |k: &str, lo: u64, hi: u64| -> Result<Option<u64>, CsiError> {
        match p.get(k) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                _ => Err(invalid(format!("parameter {k} must be a whole number from {lo} to {hi}, got {v:?}"))),
            },
        }
    };
    let replicas = num("replicas", 1, MAX_REPLICAS.into())?.map_or(default_replicas, |n| n as u32);
    let min_replicas = match num("minReplicas", 1, MAX_REPLICAS.into())? {
        Some(m) if m as u32 > replicas => {
            return Err(invalid(format!("parameter minReplicas ({m}) exceeds replicas ({replicas})")));
        }
        Some(m) => m as u32,
        None => replicas.div_ceil(2).max(1),
    };
    let block_size = match num("blockSize", 4096, 1 << 20)? {
        Some(b) if !b.is_power_of_two() => {
            return Err(invalid(format!("parameter blockSize must be a power of two from 4096 to 1048576, got {b}")));
        }
        Some(b) => b as u32,
        None => DEFAULT_BLOCK_SIZE,
    };
    let fs_type = match p.get("fsType") {
        Some(f) if !FS_TYPES.contains(&f.as_str()) => {
            return Err(invalid(format!("parameter fsType must be one of {}, got {f:?}", FS_TYPES.join(", "))));
        }
        other => other.cloned(),
    };
    let spread = match p.get("failureDomain").map(String::as_str) {
        None | Some("host") => Spread::Host,
        Some("zone") => Spread::Zone,
        Some(o) => return Err(invalid(format!("parameter failureDomain must be host or zone, got {o:?}"))),
    };
    let io_timeout_secs = csi_kit::params::io_timeout(p.get("ioTimeout").map(String::as_str), "parameter ioTimeout")?;
    Ok(VolumeParams { replicas, min_replicas, block_size, fs_type, spread, io_timeout_secs })
}

/// The volume capabilities a block volume offers: one node at a time, or many nodes reading;
/// raw block or a file system of `FS_TYPES`.
pub const CAPABILITIES: Capabilities = Capabilities {
    modes: &[
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
    ],
    modes_note: " by block volumes (single-node modes and MULTI_NODE_READER_ONLY are)",
    access_types: "block or mount",
    block_refused: None,
    fs_types: &FS_TYPES,
    fs_types_note: "one of ext4, xfs",
};

/// Whether `mode` lets several nodes attach at once.
pub fn multi_node(mode: i32) -> bool {
    Mode::try_from(mode) == Ok(Mode::MultiNodeReaderOnly)
}

/// Why this driver cannot serve `cap` (None: it can).
pub fn capability_problem(cap: &VolumeCapability) -> Option<String> {
    CAPABILITIES.problem(cap)
}

/// How a new volume will be accessed: raw block, or mounted with a file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount { fs_type: Option<String> },
}

/// Checks CreateVolume's capabilities: at least one, all served, and not both block and mount.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<Access, CsiError> {
    let mut access: Option<Access> = None;
    CAPABILITIES.check_all(caps, |cap| {
        let this = match &cap.access_type {
            Some(AccessType::Mount(m)) => Access::Mount { fs_type: Some(m.fs_type.clone()).filter(|f| !f.is_empty()) },
            _ => Access::Block,
        };
        match (&access, &this) {
            (None, _) => access = Some(this),
            (Some(Access::Block), Access::Block) => {}
            (Some(Access::Mount { fs_type: a }), Access::Mount { fs_type: b }) if a == b || b.is_none() => {}
            (Some(Access::Mount { fs_type: None }), Access::Mount { .. }) => access = Some(this),
            _ => return Err(invalid("volume_capabilities mix block and mount access, or two file systems")),
        }
        Ok(())
    })?;
    Ok(access.expect("at least one capability"))
}

/// The size to create for `range`: the required bytes rounded up to whole MiB (1 GiB when no
/// size is asked for), within the limit.
pub fn capacity(range: Option<&CapacityRange>) -> Result<u64, CsiError> {
    csi_kit::params::capacity(range, DEFAULT_CAPACITY, MAX_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::csi::v1::volume_capability::AccessMode;
    use csi_kit::params::capability as cap;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn storage_class_parameters() {
        let p = parse_parameters(&params(&[]), 3).unwrap();
        assert_eq!((p.replicas, p.min_replicas, p.block_size, p.spread), (3, 2, DEFAULT_BLOCK_SIZE, Spread::Host));
        assert_eq!(p.io_timeout_secs, 120);
        assert_eq!(parse_parameters(&params(&[("ioTimeout", "0")]), 3).unwrap().io_timeout_secs, 0);
        assert_eq!(parse_parameters(&params(&[("ioTimeout", "15")]), 3).unwrap().io_timeout_secs, 15);
        let p = parse_parameters(
            &params(&[("replicas", "2"), ("blockSize", "4096"), ("fsType", "xfs"), ("failureDomain", "zone")]),
            3,
        )
        .unwrap();
        assert_eq!((p.replicas, p.min_replicas, p.block_size), (2, 1, 4096));
        assert_eq!((p.fs_type.as_deref(), p.spread), (Some("xfs"), Spread::Zone));
        // the sidecars' own keys pass
        parse_parameters(&params(&[("csi.storage.k8s.io/pvc/name", "data")]), 1).unwrap();
        for bad in [
            ("replicas", "0"),
            ("replicas", "9"),
            ("replicas", "two"),
            ("blockSize", "5000"),
            ("fsType", "btrfs"),
            ("failureDomain", "rack"),
            ("replica", "3"),
            ("ioTimeout", "-1"),
            ("ioTimeout", "2m"),
        ] {
            let e = parse_parameters(&params(&[bad]), 3).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains(bad.0), "{bad:?}: {e}");
        }
        let e = parse_parameters(&params(&[("replicas", "1"), ("minReplicas", "2")]), 3).unwrap_err();
        assert!(e.to_string().contains("minReplicas"));
    }

    #[test]
    fn capabilities() {
        assert_eq!(check_capabilities(&[cap(Mode::SingleNodeWriter, None)]).unwrap(), Access::Block);
        assert_eq!(
            check_capabilities(&[cap(Mode::SingleNodeWriter, Some("xfs"))]).unwrap(),
            Access::Mount { fs_type: Some("xfs".into()) }
        );
        assert_eq!(
            check_capabilities(&[cap(Mode::MultiNodeReaderOnly, Some(""))]).unwrap(),
            Access::Mount { fs_type: None }
        );
        assert!(check_capabilities(&[]).is_err());
        assert!(check_capabilities(&[cap(Mode::MultiNodeMultiWriter, None)]).is_err());
        assert!(check_capabilities(&[cap(Mode::SingleNodeWriter, Some("zfs"))]).is_err());
        assert!(
            check_capabilities(&[cap(Mode::SingleNodeWriter, None), cap(Mode::SingleNodeWriter, Some("ext4"))])
                .is_err()
        );
        let no_type = VolumeCapability { access_mode: Some(AccessMode { mode: 1 }), access_type: None };
        assert!(capability_problem(&no_type).unwrap().contains("access_type"));
        let mode = capability_problem(&cap(Mode::MultiNodeMultiWriter, None)).unwrap();
        assert_eq!(
            mode,
            "access mode MULTI_NODE_MULTI_WRITER is not offered by block volumes (single-node modes and MULTI_NODE_READER_ONLY are)"
        );
        let fs = capability_problem(&cap(Mode::SingleNodeWriter, Some("zfs"))).unwrap();
        assert_eq!(fs, format!("fs_type \"zfs\" is not offered (one of {})", FS_TYPES.join(", ")));
    }

    #[test]
    fn capacity_ranges() {
        let r = |req: i64, lim: i64| Some(CapacityRange { required_bytes: req, limit_bytes: lim });
        assert_eq!(capacity(None).unwrap(), DEFAULT_CAPACITY);
        assert_eq!(capacity(r(1, 0).as_ref()).unwrap(), MIB);
        assert_eq!(capacity(r(5 * MIB as i64 + 1, 0).as_ref()).unwrap(), 6 * MIB);
        assert_eq!(capacity(r(0, 10 * MIB as i64).as_ref()).unwrap(), 10 * MIB);
        assert_eq!(
            capacity(r(MIB as i64 + 1, 2 * MIB as i64 - 1).as_ref()).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(capacity(r(10, 5).as_ref()).unwrap_err().code(), tonic::Code::OutOfRange);
        assert_eq!(capacity(r(-1, 0).as_ref()).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(capacity(r(i64::MAX, 0).as_ref()).unwrap_err().code(), tonic::Code::OutOfRange);
        assert!(fits(6 * MIB, r(5 * MIB as i64, 0).as_ref()) && !fits(6 * MIB, r(0, 5 * MIB as i64).as_ref()));
    }
}
