//! One rule for every versioned format in Cairn (data directories, files, records in the
//! metadata service): what an earlier release wrote is read, a newer version is refused with one
//! readable line naming both versions, and a record written before it carried a version reads
//! as version 1 ([`v1`] as its serde default).

mod format_file;
pub mod json;

pub use format_file::{FORMAT_FILE, FormatFile, FormatFileError, open_or_init};

/// A format newer than this build reads: "`<what>` has format version N; this build reads up to
/// version M".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} has format version {found}; this build reads up to version {supported}")]
pub struct NewerFormat {
    /// What carries the version ("metadata data directory /x", "record s3/b/x").
    pub what: String,
    /// The version found.
    pub found: u32,
    /// The newest version this build reads.
    pub supported: u32,
}

/// Accepts `found` when this build reads it (1..=`supported`; 0 counts as 1, the version of
/// whatever was written before versions were); refuses a newer one.
pub fn check(what: impl std::fmt::Display, found: u32, supported: u32) -> Result<u32, NewerFormat> {
    if found > supported {
        return Err(NewerFormat { what: what.to_string(), found, supported });
    }
    Ok(found.max(1))
}

/// The version of a record written before its type carried one: `#[serde(default = "format_version::v1")]`.
pub fn v1() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_and_current_versions_pass_newer_ones_are_refused_in_one_line() {
        assert_eq!(check("x", 1, 2), Ok(1));
        assert_eq!(check("x", 2, 2), Ok(2));
        assert_eq!(check("x", 0, 2), Ok(1), "no version: version 1");
        let e = check("metadata data directory /x", 3, 2).unwrap_err();
        assert_eq!(e.to_string(), "metadata data directory /x has format version 3; this build reads up to version 2");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn the_serde_default_is_version_1() {
        #[derive(serde::Deserialize)]
        struct R {
            #[serde(default = "crate::v1")]
            version: u32,
        }
        let r: R = serde_json::from_str("{}").unwrap();
        assert_eq!(r.version, 1);
    }
}
