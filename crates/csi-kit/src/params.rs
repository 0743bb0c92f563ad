//! The checks both drivers make of what a request asks for: volume capabilities (access mode
//! and access type, by each driver's `Capabilities`) and the capacity range (whole MiB, a
//! default and a largest size per driver) — each refusal an InvalidArgument or OutOfRange with a
//! message naming the field.

use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cairn_proto::csi::v1::{CapacityRange, VolumeCapability};

use crate::error::{CsiError, invalid};

/// Volumes are sized in whole MiB.
pub const MIB: u64 = 1 << 20;

/// Every access mode the CSI spec names.
pub const ALL_MODES: &[Mode] = &[
    Mode::SingleNodeWriter,
    Mode::SingleNodeReaderOnly,
    Mode::SingleNodeSingleWriter,
    Mode::SingleNodeMultiWriter,
    Mode::MultiNodeReaderOnly,
    Mode::MultiNodeSingleWriter,
    Mode::MultiNodeMultiWriter,
];

/// A volume capability of access mode `mode`: mount access with `fs_type` when given, else
/// raw block.
pub fn capability(mode: Mode, fs_type: Option<&str>) -> VolumeCapability {
    let mount = |f: &str| AccessType::Mount(MountVolume { fs_type: f.into(), ..Default::default() });
    let access_type = fs_type.map_or(AccessType::Block(BlockVolume {}), mount);
    VolumeCapability { access_mode: Some(AccessMode { mode: mode as i32 }), access_type: Some(access_type) }
}

/// What volume capabilities a driver serves, and how its refusals read.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// The access modes offered.
    pub modes: &'static [Mode],
    /// Follows "access mode X is not offered" in the refusal of any other mode.
    pub modes_note: &'static str,
    /// The access types named when a capability has none ("block or mount").
    pub access_types: &'static str,
    /// None: raw block access is offered; else why not.
    pub block_refused: Option<&'static str>,
    /// File systems a mount capability may name (or leave empty).
    pub fs_types: &'static [&'static str],
    /// Names `fs_types` in the refusal of another ("one of ext4, xfs").
    pub fs_types_note: &'static str,
}

impl Capabilities {
    /// Whether access mode `mode` (an `AccessMode.Mode` number) is offered.
    pub fn supports(&self, mode: i32) -> bool {
        Mode::try_from(mode).is_ok_and(|m| self.modes.contains(&m))
    }

    /// Why this driver cannot serve `cap` (None: it can).
    pub fn problem(&self, cap: &VolumeCapability) -> Option<String> {
        let Some(mode) = cap.access_mode.as_ref() else {
            return Some("a volume capability has no access_mode".into());
        };
        if !self.supports(mode.mode) {
            let name = Mode::try_from(mode.mode).map(|m| m.as_str_name()).unwrap_or("unknown");
            return Some(format!("access mode {name} is not offered{}", self.modes_note));
        }
        match &cap.access_type {
            None => Some(format!("a volume capability has no access_type ({})", self.access_types)),
            Some(AccessType::Block(_)) => self.block_refused.map(String::from),
            Some(AccessType::Mount(m)) if m.fs_type.is_empty() || self.fs_types.contains(&m.fs_type.as_str()) => None,
            Some(AccessType::Mount(m)) => {
                Some(format!("fs_type {:?} is not offered ({})", m.fs_type, self.fs_types_note))
            }
        }
    }

    /// Checks one capability (a Node or ControllerPublish call's): present and served.
    pub fn check<'a>(&self, cap: Option<&'a VolumeCapability>) -> Result<&'a VolumeCapability, CsiError> {
        let cap = cap.ok_or_else(|| invalid("volume_capability is required"))?;
        match self.problem(cap) {
            Some(why) => Err(invalid(why)),
            None => Ok(cap),
        }
    }

    /// Checks CreateVolume's capabilities: at least one, and each served and then passed to
    /// `each` (a driver's own checks across them), in order.
    pub fn check_all(
        &self,
        caps: &[VolumeCapability],
        mut each: impl FnMut(&VolumeCapability) -> Result<(), CsiError>,
    ) -> Result<(), CsiError> {
        if caps.is_empty() {
            return Err(invalid("volume_capabilities is required"));
        }
        for cap in caps {
            if let Some(why) = self.problem(cap) {
                return Err(invalid(why));
            }
            each(cap)?;
        }
        Ok(())
    }
}

/// The size to create for `range`: the required bytes rounded up to whole MiB (`default` when
/// no size is asked for), within the limit and at most `max`.
pub fn capacity(range: Option<&CapacityRange>, default: u64, max: u64) -> Result<u64, CsiError> {
    let (req, lim) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if req < 0 || lim < 0 {
        return Err(invalid("capacity_range bytes must not be negative"));
    }
    let (req, lim) = (req as u64, lim as u64);
    if lim != 0 && req > lim {
        return Err(CsiError::OutOfRange(format!("required_bytes {req} exceeds limit_bytes {lim}")));
    }
    let want = if req == 0 { if lim == 0 { default } else { lim.min(default) } } else { req };
    let mut size = want.div_ceil(MIB) * MIB;
    if lim != 0 && size > lim {
        size = lim / MIB * MIB;
    }
    if size < want || size == 0 {
        return Err(CsiError::OutOfRange(format!(
            "volumes are sized in whole MiB; none fits between {req} and {lim} bytes"
        )));
    }
    if size > max {
        return Err(CsiError::OutOfRange(format!("{size} bytes exceeds the largest volume, {max} bytes")));
    }
    Ok(size)
}

/// The StorageClass parameter (and csi-fs mount option, `ioTimeout=<s>`) naming how many
/// seconds a volume's I/O waits out an unreachable metadata service or storage nodes before it
/// fails with EIO; 0 fails at once.
pub const IO_TIMEOUT: &str = "ioTimeout";
/// The I/O timeout when none is set (open-iscsi's `replacement_timeout`).
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 120;
/// The longest I/O timeout (a day).
pub const MAX_IO_TIMEOUT_SECS: u64 = 86_400;

/// The I/O timeout `value` of `where_` (e.g. "parameter ioTimeout") names, in seconds: the
/// default when absent; a whole number from 0 to a day, else InvalidArgument.
pub fn io_timeout(value: Option<&str>, where_: &str) -> Result<u64, CsiError> {
    let Some(v) = value else { return Ok(DEFAULT_IO_TIMEOUT_SECS) };
    match v.trim().parse::<u64>() {
        Ok(n) if n <= MAX_IO_TIMEOUT_SECS => Ok(n),
        _ => Err(invalid(format!(
            "{where_} must be a whole number of seconds from 0 to {MAX_IO_TIMEOUT_SECS}, got {v:?}"
        ))),
    }
}

/// Whether a volume of `size` bytes satisfies `range`.
pub fn fits(size: u64, range: Option<&CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    size >= r.required_bytes.max(0) as u64 && (r.limit_bytes <= 0 || size <= r.limit_bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_timeout_is_checked_and_defaults_to_two_minutes() {
        assert_eq!(io_timeout(None, "parameter ioTimeout").unwrap(), 120);
        assert_eq!(io_timeout(Some("0"), "parameter ioTimeout").unwrap(), 0);
        assert_eq!(io_timeout(Some(" 30 "), "parameter ioTimeout").unwrap(), 30);
        for bad in ["-1", "1.5", "2m", "", "86401"] {
            let e = io_timeout(Some(bad), "parameter ioTimeout").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains("parameter ioTimeout"), "{e}");
        }
    }

    const CAPS: Capabilities = Capabilities {
        modes: &[Mode::SingleNodeWriter],
        modes_note: " here",
        access_types: "mount",
        block_refused: Some("no block"),
        fs_types: &["ext4"],
        fs_types_note: "empty or ext4",
    };

    fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
        capability(mode, fs)
    }

    #[test]
    fn capabilities() {
        assert!(CAPS.supports(Mode::SingleNodeWriter as i32) && !CAPS.supports(99));
        assert_eq!(CAPS.problem(&cap(Mode::SingleNodeWriter, Some(""))), None);
        assert_eq!(CAPS.problem(&cap(Mode::SingleNodeWriter, Some("ext4"))), None);
        assert_eq!(CAPS.problem(&cap(Mode::SingleNodeWriter, None)).as_deref(), Some("no block"));
        let mode = CAPS.problem(&cap(Mode::MultiNodeMultiWriter, Some(""))).unwrap();
        assert_eq!(mode, "access mode MULTI_NODE_MULTI_WRITER is not offered here");
        let fs = CAPS.problem(&cap(Mode::SingleNodeWriter, Some("xfs"))).unwrap();
        assert_eq!(fs, "fs_type \"xfs\" is not offered (empty or ext4)");
        let no_type = VolumeCapability { access_type: None, ..cap(Mode::SingleNodeWriter, None) };
        assert_eq!(CAPS.problem(&no_type).unwrap(), "a volume capability has no access_type (mount)");
        let no_mode = VolumeCapability { access_mode: None, ..cap(Mode::SingleNodeWriter, None) };
        assert!(CAPS.problem(&no_mode).unwrap().contains("access_mode"));
        assert_eq!(CAPS.check(None).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(CAPS.check(Some(&cap(Mode::SingleNodeWriter, Some("")))).is_ok());
        assert_eq!(CAPS.check_all(&[], |_| Ok(())).unwrap_err().to_string(), "volume_capabilities is required");
        let mut seen = 0;
        CAPS.check_all(&[cap(Mode::SingleNodeWriter, Some("")), cap(Mode::SingleNodeWriter, Some("ext4"))], |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 2);
    }

    #[test]
    fn capacity_ranges() {
        let r = |req: i64, lim: i64| Some(CapacityRange { required_bytes: req, limit_bytes: lim });
        let c = |range: Option<CapacityRange>| capacity(range.as_ref(), 1 << 30, 1 << 40);
        assert_eq!(c(None).unwrap(), 1 << 30);
        assert_eq!(c(r(1, 0)).unwrap(), MIB);
        assert_eq!(c(r(0, 10 * MIB as i64)).unwrap(), 10 * MIB);
        assert_eq!(c(r(MIB as i64 + 1, 2 * MIB as i64 - 1)).unwrap_err().code(), tonic::Code::OutOfRange);
        assert_eq!(c(r(10, 5)).unwrap_err().code(), tonic::Code::OutOfRange);
        assert_eq!(c(r(-1, 0)).unwrap_err().code(), tonic::Code::InvalidArgument);
        let big = c(r(i64::MAX, 0)).unwrap_err();
        assert!(big.to_string().contains("exceeds the largest volume, 1099511627776 bytes"), "{big}");
        assert!(fits(6 * MIB, r(5 * MIB as i64, 0).as_ref()) && !fits(6 * MIB, r(0, 5 * MIB as i64).as_ref()));
        assert!(fits(6 * MIB, None));
    }
}
