//! What a request asks of a shared-filesystem volume, checked: StorageClass parameters, volume
//! capabilities (access mode and type: mount only, fs_type empty or `cairnfs`) and the capacity
//! range — each refusal an InvalidArgument or OutOfRange with a message naming the field.

use std::collections::HashMap;

use cairn_proto::csi::v1::volume_capability::AccessType;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::{CapacityRange, VolumeCapability};
use csi_kit::CsiError;
use csi_kit::error::invalid;
use csi_kit::params::{ALL_MODES, Capabilities};
pub use csi_kit::params::{MIB, fits};

/// The size of a volume whose claim names none.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The largest volume (its filesystem's quota).
pub const MAX_CAPACITY: u64 = 1 << 50;
/// The file system type a mount capability may name (or leave empty).
pub const FS_TYPE: &str = "cairnfs";

/// The parameters a StorageClass may set (others are refused, so a typo is not silently ignored).
pub const KNOWN_PARAMETERS: [&str; 2] = ["fsType", csi_kit::params::IO_TIMEOUT];

/// Checks StorageClass parameters. Keys the Kubernetes sidecars add (`csi.storage.k8s.io/...`)
/// pass.
pub fn check_parameters(p: &HashMap<String, String>) -> Result<(), CsiError> {
    for (k, v) in p {
        if k.starts_with("csi.storage.k8s.io/") {
            continue;
        }
        if !KNOWN_PARAMETERS.contains(&k.as_str()) {
            return Err(invalid(format!("unknown parameter {k:?} (known: {})", KNOWN_PARAMETERS.join(", "))));
        }
        if k == "fsType" && !v.is_empty() && v != FS_TYPE {
            return Err(invalid(format!("parameter fsType must be {FS_TYPE}, got {v:?}")));
        }
    }
    io_timeout(p)?;
    Ok(())
}

/// The `ioTimeout` StorageClass parameter: seconds a mount's operations retry while the
/// metadata service or storage nodes are unreachable (the default when absent).
pub fn io_timeout(p: &HashMap<String, String>) -> Result<u64, CsiError> {
    csi_kit::params::io_timeout(p.get(csi_kit::params::IO_TIMEOUT).map(String::as_str), "parameter ioTimeout")
}

/// The `ioTimeout=<seconds>` mount option of a stage's capability, which overrides the
/// volume's (None: not given).
pub fn io_timeout_flag(cap: &VolumeCapability) -> Result<Option<u64>, CsiError> {
    let Some(AccessType::Mount(m)) = &cap.access_type else { return Ok(None) };
    let prefix = format!("{}=", csi_kit::params::IO_TIMEOUT);
    match m.mount_flags.iter().rev().find_map(|f| f.strip_prefix(&prefix)) {
        None => Ok(None),
        Some(v) => csi_kit::params::io_timeout(Some(v), "mount option ioTimeout").map(Some),
    }
}

/// The volume capabilities a shared filesystem offers: every access mode the spec names, mount
/// access only, its file system `cairnfs` (or none named).
pub const CAPABILITIES: Capabilities = Capabilities {
    modes: ALL_MODES,
    modes_note: "",
    access_types: "mount",
    block_refused: Some("block access is not offered by shared filesystem volumes; use mount access"),
    fs_types: &[FS_TYPE],
    fs_types_note: "empty or cairnfs",
};

/// Whether `cap` only reads: such a stage mounts the filesystem read-only.
pub fn read_only(cap: &VolumeCapability) -> bool {
    matches!(
        cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode)),
        Some(Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly))
    )
}

/// Why this driver cannot serve `cap` (None: it can).
pub fn capability_problem(cap: &VolumeCapability) -> Option<String> {
    CAPABILITIES.problem(cap)
}

/// Checks one capability (a Node call's): present and served.
pub fn check_capability(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability, CsiError> {
    CAPABILITIES.check(cap)
}

/// Checks CreateVolume's capabilities: at least one, all served.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<(), CsiError> {
    CAPABILITIES.check_all(caps, |_| Ok(()))
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
        check_parameters(&params(&[])).unwrap();
        check_parameters(&params(&[("fsType", "cairnfs"), ("csi.storage.k8s.io/pvc/name", "data")])).unwrap();
        assert_eq!(io_timeout(&params(&[])).unwrap(), 120);
        assert_eq!(io_timeout(&params(&[("ioTimeout", "0")])).unwrap(), 0);
        check_parameters(&params(&[("ioTimeout", "30")])).unwrap();
        for bad in [("fsType", "ext4"), ("replicas", "3"), ("ioTimeout", "soon"), ("ioTimeout", "-5")] {
            let e = check_parameters(&params(&[bad])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains(bad.0), "{bad:?}: {e}");
        }
    }

    #[test]
    fn io_timeout_mount_option() {
        let with = |flags: &[&str]| {
            let mut c = cap(Mode::SingleNodeWriter, Some(""));
            if let Some(AccessType::Mount(m)) = c.access_type.as_mut() {
                m.mount_flags = flags.iter().map(|f| f.to_string()).collect();
            }
            c
        };
        assert_eq!(io_timeout_flag(&with(&[])).unwrap(), None);
        assert_eq!(io_timeout_flag(&with(&["noatime", "ioTimeout=7"])).unwrap(), Some(7));
        let e = io_timeout_flag(&with(&["ioTimeout=x"])).unwrap_err();
        assert!(e.to_string().contains("mount option ioTimeout"), "{e}");
    }

    #[test]
    fn capabilities() {
        for m in [
            Mode::MultiNodeMultiWriter,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            check_capabilities(&[cap(m, Some("")), cap(m, Some(FS_TYPE))]).unwrap();
        }
        assert!(check_capabilities(&[]).is_err());
        assert!(check_capabilities(&[cap(Mode::Unknown, Some(""))]).is_err());
        let block = check_capabilities(&[cap(Mode::MultiNodeMultiWriter, None)]).unwrap_err();
        assert!(block.to_string().contains("block"), "{block}");
        assert!(check_capabilities(&[cap(Mode::MultiNodeMultiWriter, Some("ext4"))]).is_err());
        let no_type = VolumeCapability { access_mode: Some(AccessMode { mode: 5 }), access_type: None };
        assert!(capability_problem(&no_type).unwrap().contains("access_type"));
        let fs = capability_problem(&cap(Mode::MultiNodeMultiWriter, Some("ext4"))).unwrap();
        assert_eq!(fs, format!("fs_type \"ext4\" is not offered (empty or {FS_TYPE})"));
        let mode = capability_problem(&cap(Mode::Unknown, Some(""))).unwrap();
        assert_eq!(mode, "access mode UNKNOWN is not offered");
        let no_mode = VolumeCapability { access_mode: None, ..cap(Mode::MultiNodeMultiWriter, Some("")) };
        assert!(capability_problem(&no_mode).unwrap().contains("access_mode"));
        assert_eq!(check_capability(None).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(read_only(&cap(Mode::MultiNodeReaderOnly, Some(""))));
        assert!(read_only(&cap(Mode::SingleNodeReaderOnly, Some(""))));
        assert!(!read_only(&cap(Mode::MultiNodeMultiWriter, Some(""))));
    }

    #[test]
    fn capacity_ranges() {
        let r = |req: i64, lim: i64| Some(CapacityRange { required_bytes: req, limit_bytes: lim });
        assert_eq!(capacity(None).unwrap(), DEFAULT_CAPACITY);
        assert_eq!(capacity(r(0, 0).as_ref()).unwrap(), DEFAULT_CAPACITY);
        assert_eq!(capacity(r(1, 0).as_ref()).unwrap(), MIB);
        assert_eq!(capacity(r(64 * MIB as i64, 0).as_ref()).unwrap(), 64 * MIB);
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
        assert!(fits(6 * MIB, None));
    }
}
