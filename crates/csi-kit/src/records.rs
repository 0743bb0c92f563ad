//! Versioned JSON records in the metadata service, as both drivers keep them: decoding that
//! refuses unknown format versions, the CSI name and node-id rules, and `RecordStore` — a record
//! and its name entry created together (`absent` conditions, one transaction, so CreateVolume
//! and CreateSnapshot are idempotent by name) and records listed in pages in key order.

use metadata_client::{KeyValue, MetaClient, Txn, prefix_end};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CsiError, invalid};

/// Records that carry a format version.
pub trait Versioned {
    /// The format version this build writes and reads.
    const FORMAT: u32;
    /// The version a decoded record carries.
    fn format_version(&self) -> u32;
}

/// Implements `Versioned` for record types whose `version` field carries the format:
/// `versioned!(FORMAT => TypeA, TypeB)`.
#[macro_export]
macro_rules! versioned {
    ($format:expr => $($t:ty),+ $(,)?) => {
        $(impl $crate::records::Versioned for $t {
            const FORMAT: u32 = $format;
            fn format_version(&self) -> u32 {
                self.version
            }
        })+
    };
}

/// Decodes the record at `key` (INTERNAL when it cannot be read). The version is read first,
/// so a record a newer release wrote is refused by the one rule of `format_version::check` — one
/// line naming both versions — even when its fields changed; older versions are read.
pub fn decode<T: DeserializeOwned + Versioned>(key: &[u8], value: &[u8]) -> Result<T, CsiError> {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        #[serde(default = "format_version::v1")]
        version: u32,
    }
    let what = format!("record {}", String::from_utf8_lossy(key));
    let bad = |why: String| CsiError::Internal(format!("{what}: {why}"));
    let v: VersionOnly = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    format_version::check(&what, v.version, T::FORMAT).map_err(|e| CsiError::Internal(e.to_string()))?;
    serde_json::from_slice(value).map_err(|e| bad(e.to_string()))
}

/// A record as stored (JSON).
pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    serde_json::to_vec(rec).expect("records always serialize")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// CSI names of volumes and snapshots: 1–253 characters without control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), CsiError> {
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(invalid(format!("{field} is required: 1-253 characters without control characters")));
    }
    Ok(())
}

/// Node ids (Kubernetes node names): 1–253 characters of `[A-Za-z0-9._-]`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 253 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("node id must be 1-253 characters of letters, digits, '.', '_' and '-', got {id:?}"));
    }
    Ok(())
}

/// CSI driver names: at most 63 characters, alphanumerics, `-` and `.`, starting and ending
/// with an alphanumeric (the spec's rule).
pub fn valid_driver_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
}

/// What a create found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    New(T),
    Existing(T),
}

/// Versioned records in the metadata service; cheap to clone.
#[derive(Clone)]
pub struct RecordStore {
    pub meta: MetaClient,
}

impl RecordStore {
    /// The record at `key` with its metadata entry (None: absent).
    pub async fn record<T: Versioned + DeserializeOwned>(&self, key: &[u8]) -> Result<Option<(KeyValue, T)>, CsiError> {
        match self.meta.get(key).await? {
            Some(kv) => {
                let rec = decode(key, &kv.value)?;
                Ok(Some((kv, rec)))
            }
            None => Ok(None),
        }
    }

    /// The record a name entry at `name_key` points at (`key_of` makes the record's key from
    /// the id the entry holds), if any.
    pub async fn named<T: Versioned + DeserializeOwned>(
        &self,
        name_key: &[u8],
        key_of: impl Fn(&str) -> Vec<u8>,
    ) -> Result<Option<T>, CsiError> {
        match self.meta.get(name_key).await? {
            Some(kv) => Ok(self.record(&key_of(&String::from_utf8_lossy(&kv.value))).await?.map(|(_, r)| r)),
            None => Ok(None),
        }
    }

    /// Stores `rec` (id `id`) under `key_of(id)` and the name entry `name_key` (holding the id)
    /// in one transaction conditioned on both being absent, unless a record of that name exists,
    /// which is returned instead. `extra` adds to the creating transaction.
    pub async fn create_named<T: Versioned + DeserializeOwned + Serialize>(
        &self,
        rec: T,
        (name_key, id): (&[u8], &str),
        key_of: impl Fn(&str) -> Vec<u8>,
        extra: impl Fn(Txn) -> Txn,
    ) -> Result<Created<T>, CsiError> {
        let key = key_of(id);
        for _ in 0..16 {
            if let Some(existing) = self.named(name_key, &key_of).await? {
                return Ok(Created::Existing(existing));
            }
            let txn = Txn::new().absent(name_key).absent(&key).put(name_key, id.as_bytes()).put(&key, &encode(&rec));
            if self.meta.txn(extra(txn)).await?.succeeded {
                return Ok(Created::New(rec));
            }
        }
        Err(CsiError::Aborted(format!("{} is being created by another call", String::from_utf8_lossy(name_key))))
    }

    /// Up to `max` records under `prefix` after `after_key` (None: from the start) in key
    /// order, and whether more follow.
    pub async fn page<T: Versioned + DeserializeOwned>(
        &self,
        prefix: &str,
        after_key: Option<Vec<u8>>,
        max: u32,
    ) -> Result<(Vec<T>, bool), CsiError> {
        let start = match after_key {
            Some(mut k) => {
                k.push(0);
                k
            }
            None => prefix.as_bytes().to_vec(),
        };
        let page = self.meta.range(&start, &prefix_end(prefix.as_bytes()), max).await?;
        let recs = page.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect::<Result<Vec<_>, _>>()?;
        Ok((recs, page.next_key.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct R {
        version: u32,
    }
    crate::versioned!(1 => R);

    #[test]
    fn versions_names_and_node_ids() {
        assert!(decode::<R>(b"k", &encode(&R { version: 1 })).is_ok());
        let e = decode::<R>(b"k", &encode(&R { version: 7 })).err().unwrap();
        assert_eq!(e.to_string(), "record k has format version 7; this build reads up to version 1");
        assert!(decode::<R>(b"k", b"{").is_err());
        assert!(check_name("name", "pv-1").is_ok());
        assert!(check_name("name", "").is_err() && check_name("name", "a\nb").is_err());
        assert!(check_name("name", &"x".repeat(254)).is_err());
        assert!(check_node_id("worker-1.example").is_ok());
        assert!(check_node_id("a/b").is_err() && check_node_id("").is_err());
        assert!(valid_driver_name("fs.csi.cairn.io") && !valid_driver_name("-x") && !valid_driver_name("a_b"));
    }
}
