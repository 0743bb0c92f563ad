//! Versioned JSON records for types that carry no version field of their own: the record's
//! fields with `"version": N` beside them. A record written before it carried a version reads as
//! version 1; a newer one is refused ([`crate::NewerFormat`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A record and its format version, flattened into one JSON object.
#[derive(Serialize, Deserialize)]
struct Tagged<T> {
    #[serde(default = "crate::v1")]
    version: u32,
    #[serde(flatten)]
    record: T,
}

/// Why a versioned JSON record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonRecordError {
    /// Written by a newer release.
    #[error(transparent)]
    Newer(#[from] crate::NewerFormat),
    /// Not JSON of the record's shape.
    #[error("{what} is unreadable: {why}")]
    Unreadable { what: String, why: String },
}

/// `record` as JSON with `"version": version` beside its fields.
pub fn encode<T: Serialize>(record: &T, version: u32) -> Vec<u8> {
    #[derive(Serialize)]
    struct TaggedRef<'a, T> {
        version: u32,
        #[serde(flatten)]
        record: &'a T,
    }
    serde_json::to_vec(&TaggedRef { version, record }).expect("records serialize")
}

/// Reads what [`encode`] wrote (or the bare record an earlier release wrote, as version 1),
/// refusing versions newer than `supported`. `what` names the record in errors.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8], supported: u32) -> Result<(u32, T), JsonRecordError> {
    // The version first, so that a newer record is refused as newer, not as unreadable.
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(default = "crate::v1")]
        version: u32,
    }
    let unreadable = |e: serde_json::Error| JsonRecordError::Unreadable { what: what.to_string(), why: e.to_string() };
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(unreadable)?;
    let version = crate::check(format!("record {what}"), v.version, supported)?;
    let t: Tagged<T> = serde_json::from_slice(bytes).map_err(unreadable)?;
    Ok((version, t.record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct R {
        a: u64,
        b: String,
    }

    #[test]
    fn round_trips_and_reads_bare_records_as_version_1() {
        let r = R { a: 7, b: "x".into() };
        let bytes = encode(&r, 2);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["version"], 2);
        assert_eq!(decode::<R>("r", &bytes, 2).unwrap(), (2, r.clone()));
        let bare = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode::<R>("r", &bare, 2).unwrap(), (1, r));
    }

    #[test]
    fn newer_is_refused_naming_both_versions_and_garbage_is_unreadable() {
        let bytes = encode(&R { a: 1, b: String::new() }, 3);
        let e = decode::<R>("cluster/x", &bytes, 2).unwrap_err().to_string();
        assert_eq!(e, "record cluster/x has format version 3; this build reads up to version 2");
        let e = decode::<R>("cluster/x", b"{\"version\": 3, \"other\": true}", 2).unwrap_err().to_string();
        assert!(e.contains("format version 3"), "newer wins over a changed shape: {e}");
        assert!(matches!(decode::<R>("x", b"nope", 2), Err(JsonRecordError::Unreadable { .. })));
    }
}
