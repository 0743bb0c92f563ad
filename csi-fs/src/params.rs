//! What a request asks of a shared-filesystem volume, checked: StorageClass parameters, volume
//! capabilities (access mode and type: mount only, fs_type empty or `cairnfs`) and the capacity
//! range — each refusal an InvalidArgument or OutOfRange with a message naming the field.

use std::collections::HashMap;

use cairn_proto::csi::v1::volume_capability::AccessType;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::{CapacityRange, VolumeCapability};
use csi_kit::CsiError;
use csi_kit::error::invalid;

/// Volumes are sized in whole MiB.
pub const MIB: u64 = 1 << 20;
/// The size of a volume whose claim names none.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The largest volume (its filesystem's quota).
pub const MAX_CAPACITY: u64 = 1 << 50;
/// The file system type a mount capability may name (or leave empty).
pub const FS_TYPE: &str = "cairnfs";

/// The parameters a StorageClass may set (others are refused, so a typo is not silently ignored).
pub const KNOWN_PARAMETERS: [&str; 1] = ["fsType"];

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
    Ok(())
}

/// Access modes a shared filesystem offers: every one the spec names.
pub fn supported_mode(mode: i32) -> bool {
    matches!(
        Mode::try_from(mode),
        Ok(Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter
            | Mode::MultiNodeReaderOnly
            | Mode::MultiNodeSingleWriter
            | Mode::MultiNodeMultiWriter)
    )
}

/// Whether `cap` only reads: such a stage mounts the filesystem read-only.
pub fn read_only(cap: &VolumeCapability) -> bool {
    matches!(
        cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode)),
        Some(Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly))
    )
}

/// Why this driver cannot serve `cap` (None: it can).
pub fn capability_problem(cap: &VolumeCapability) -> Option<String> {
    let Some(mode) = cap.access_mode.as_ref() else {
        return Some("a volume capability has no access_mode".into());
    };
    if !supported_mode(mode.mode) {
        let name = Mode::try_from(mode.mode).map(|m| m.as_str_name()).unwrap_or("unknown");
        return Some(format!("access mode {name} is not offered"));
    }
    match &cap.access_type {
        None => Some("a volume capability has no access_type (mount)".into()),
        Some(AccessType::Block(_)) => {
            Some("block access is not offered by shared filesystem volumes; use mount access".into())
        }
        Some(AccessType::Mount(m)) if m.fs_type.is_empty() || m.fs_type == FS_TYPE => None,
        Some(AccessType::Mount(m)) => Some(format!("fs_type {:?} is not offered (empty or {FS_TYPE})", m.fs_type)),
    }
}

/// Checks one capability (a Node call's): present and served.
pub fn check_capability(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability, CsiError> {
    let cap = cap.ok_or_else(|| invalid("volume_capability is required"))?;
    match capability_problem(cap) {
        Some(why) => Err(invalid(why)),
        None => Ok(cap),
    }
}

/// Checks CreateVolume's capabilities: at least one, all served.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<(), CsiError> {
    if caps.is_empty() {
        return Err(invalid("volume_capabilities is required"));
    }
    match caps.iter().find_map(capability_problem) {
        Some(why) => Err(invalid(why)),
        None => Ok(()),
    }
}

/// The size to create for `range`: the required bytes rounded up to whole MiB (1 GiB when no
/// size is asked for), within the limit.
pub fn capacity(range: Option<&CapacityRange>) -> Result<u64, CsiError> {
    let (req, lim) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if req < 0 || lim < 0 {
        return Err(invalid("capacity_range bytes must not be negative"));
    }
    let (req, lim) = (req as u64, lim as u64);
    if lim != 0 && req > lim {
        return Err(CsiError::OutOfRange(format!("required_bytes {req} exceeds limit_bytes {lim}")));
    }
    let want = if req == 0 { if lim == 0 { DEFAULT_CAPACITY } else { lim.min(DEFAULT_CAPACITY) } } else { req };
    let mut size = want.div_ceil(MIB) * MIB;
    if lim != 0 && size > lim {
        size = lim / MIB * MIB;
    }
    if size < want || size == 0 {
        return Err(CsiError::OutOfRange(format!(
            "volumes are sized in whole MiB; none fits between {req} and {lim} bytes"
        )));
    }
    if size > MAX_CAPACITY {
        return Err(CsiError::OutOfRange(format!("{size} bytes exceeds the largest volume, {MAX_CAPACITY} bytes")));
    }
    Ok(size)
}

/// Whether a volume of `size` bytes satisfies `range`.
pub fn fits(size: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    size >= r.required_bytes.max(0) as u64 && (r.limit_bytes <= 0 || size <= r.limit_bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::csi::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(match fs {
                Some(f) => AccessType::Mount(MountVolume { fs_type: f.into(), ..Default::default() }),
                None => AccessType::Block(BlockVolume {}),
            }),
        }
    }

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn storage_class_parameters() {
        check_parameters(&params(&[])).unwrap();
        check_parameters(&params(&[("fsType", "cairnfs"), ("csi.storage.k8s.io/pvc/name", "data")])).unwrap();
        for bad in [("fsType", "ext4"), ("replicas", "3")] {
            let e = check_parameters(&params(&[bad])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains(bad.0), "{bad:?}: {e}");
        }
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
