//! The metadata-service layout of the object store: key names and the versioned JSON records
//! stored under them (access keys, buckets, object versions, multipart uploads and parts).
//!
//! ```text
//! s3/keys/<access key id>            AccessKey
//! s3/buckets/<bucket>                BucketRecord
//! s3/o/<bucket>/<key>                ObjectRecord: the current version (never a delete marker)
//! s3/v/<bucket>/<key>\0<sort id>     ObjectRecord: every version, newest first per key
//! s3/u/<bucket>/<key>\0<upload id>   UploadRecord: a multipart upload in progress
//! s3/p/<upload id>/<part number:05>  PartRecord
//! ```
//! Keys never contain `\0` (control characters are refused), so `\0` ends a key unambiguously,
//! and listing a bucket is a range scan of its `s3/o/` (or `s3/v/`) span in key order.

use std::collections::BTreeMap;

use base64::Engine as _;
use chunk_engine::ChunkHash;
use serde::{Deserialize, Serialize};

use crate::error::{ObjectdError, Result};

/// Format version of every record below.
pub const RECORD_VERSION: u32 = 1;

pub const KEYS_PREFIX: &str = "s3/keys/";
pub const BUCKETS_PREFIX: &str = "s3/buckets/";

pub fn access_key_key(id: &str) -> Vec<u8> {
    format!("{KEYS_PREFIX}{id}").into_bytes()
}
pub fn bucket_key(bucket: &str) -> Vec<u8> {
    format!("{BUCKETS_PREFIX}{bucket}").into_bytes()
}
/// Start of a bucket's current-version span; object keys follow.
pub fn heads_prefix(bucket: &str) -> Vec<u8> {
    format!("s3/o/{bucket}/").into_bytes()
}
pub fn head_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = heads_prefix(bucket);
    k.extend_from_slice(key.as_bytes());
    k
}
/// Start of a bucket's all-versions span.
pub fn versions_prefix(bucket: &str) -> Vec<u8> {
    format!("s3/v/{bucket}/").into_bytes()
}
/// Start of one key's versions (each followed by its sort id).
pub fn key_versions_prefix(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = versions_prefix(bucket);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k
}
pub fn version_key(bucket: &str, key: &str, sort_id: &str) -> Vec<u8> {
    let mut k = key_versions_prefix(bucket, key);
    k.extend_from_slice(sort_id.as_bytes());
    k
}
pub fn uploads_prefix(bucket: &str) -> Vec<u8> {
    format!("s3/u/{bucket}/").into_bytes()
}
pub fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut k = uploads_prefix(bucket);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(upload_id.as_bytes());
    k
}
pub fn parts_prefix(upload_id: &str) -> Vec<u8> {
    format!("s3/p/{upload_id}/").into_bytes()
}
pub fn part_key(upload_id: &str, part: i32) -> Vec<u8> {
    format!("s3/p/{upload_id}/{part:05}").into_bytes()
}

/// The end (exclusive) of the span of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; 1] // the whole keyspace (never reached: our prefixes are ASCII)
}

/// What a grant lets a key do on a bucket; each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// GET, HEAD and listing.
    Read,
    /// Also PUT, DELETE, copy and multipart uploads.
    Write,
    /// Also deleting the bucket and changing its settings.
    Owner,
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "read" => Ok(Permission::Read),
            "write" => Ok(Permission::Write),
            "owner" => Ok(Permission::Owner),
            other => Err(format!("unknown permission {other:?} (read, write or owner)")),
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Owner => "owner",
        })
    }
}

/// An access key: its secret (needed to check SigV4 signatures) and what it may do.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub version: u32,
    pub id: String,
    pub secret: String,
    pub name: String,
    pub created_unix_ms: u64,
    /// Owner of every bucket, may create buckets.
    #[serde(default)]
    pub admin: bool,
    /// May create buckets (and owns those it creates).
    #[serde(default)]
    pub create_buckets: bool,
    /// Per-bucket permissions.
    #[serde(default)]
    pub grants: BTreeMap<String, Permission>,
}

impl std::fmt::Debug for AccessKey {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("admin", &self.admin)
            .field("create_buckets", &self.create_buckets)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

impl AccessKey {
    /// A new key with a random id (`CK` + 18 upper-case alphanumerics) and a 40-character secret.
    pub fn generate(name: &str, admin: bool, create_buckets: bool) -> AccessKey {
        use rand::Rng;
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let id: String = std::iter::once("CK".to_string())
            .chain((0..18).map(|_| (UPPER[rng.gen_range(0..UPPER.len())] as char).to_string()))
            .collect();
        let secret: String = (0..40).map(|_| ANY[rng.gen_range(0..ANY.len())] as char).collect();
        AccessKey {
            version: RECORD_VERSION,
            id,
            secret,
            name: name.to_string(),
            created_unix_ms: now_ms(),
            admin,
            create_buckets,
            grants: BTreeMap::new(),
        }
    }

    /// What this key may do on `bucket` (`owner` names the bucket's creator).
    pub fn permission(&self, bucket: &str, owner: Option<&str>) -> Option<Permission> {
        if self.admin || owner == Some(self.id.as_str()) {
            return Some(Permission::Owner);
        }
        self.grants.get(bucket).copied()
    }
}

/// Versioning state of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Versioning {
    /// Never enabled: every write replaces the `null` version.
    #[default]
    Off,
    Enabled,
    Suspended,
}

/// A bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub version: u32,
    pub name: String,
    pub created_unix_ms: u64,
    /// Access key id of its creator.
    pub owner: String,
    #[serde(default)]
    pub versioning: Versioning,
    /// Anonymous GET, HEAD and listing allowed.
    #[serde(default)]
    pub public_read: bool,
    /// Set while a DeleteBucket checks emptiness: writes that read the bucket before fail.
    #[serde(default)]
    pub deleting: bool,
}

/// One chunk of an object's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// blake3 hash (hex).
    pub h: String,
    /// Length in bytes.
    pub n: u64,
}

impl ChunkRef {
    pub fn hash(&self) -> Result<ChunkHash> {
        self.h.parse().map_err(|e| ObjectdError::Record { key: self.h.clone(), why: format!("bad chunk hash: {e}") })
    }
}

/// Checksums an object was uploaded with (base64, as S3 returns them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Checksums {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
}

/// HTTP headers stored with an object and returned on GET/HEAD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<s3s::dto::Timestamp>,
    /// `x-amz-meta-*` without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

/// One version of an object (or a delete marker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub version: u32,
    /// What S3 clients see: `null` or the sort id.
    pub version_id: String,
    /// Orders versions of a key newest first.
    pub sort_id: String,
    #[serde(default)]
    pub delete_marker: bool,
    pub size: u64,
    /// Without quotes: hex MD5, or `<hex>-<parts>` for multipart uploads.
    pub etag: String,
    pub last_modified_unix_ms: u64,
    /// The owner name of this version's chunk references (`cluster/refs/<chunk>/<owner>`).
    pub data_owner: String,
    /// Data in order (empty when inline or empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// Small objects' bytes (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Sizes of the parts of a multipart upload, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
    #[serde(default)]
    pub headers: ObjectHeaders,
    #[serde(default)]
    pub checksums: Checksums,
    /// Access key that wrote it.
    #[serde(default)]
    pub writer: String,
}

impl ObjectRecord {
    pub fn inline_bytes(&self) -> Result<Vec<u8>> {
        match &self.inline {
            None => Ok(Vec::new()),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ObjectdError::Record { key: self.sort_id.clone(), why: format!("inline data: {e}") }),
        }
    }

    pub fn chunk_hashes(&self) -> Result<Vec<ChunkHash>> {
        self.chunks.iter().map(ChunkRef::hash).collect()
    }

    pub fn quoted_etag(&self) -> String {
        format!("\"{}\"", self.etag)
    }
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub version: u32,
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub initiated_unix_ms: u64,
    pub initiator: String,
    #[serde(default)]
    pub headers: ObjectHeaders,
    /// Checksum algorithm declared at creation (upper case, e.g. `CRC32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub version: u32,
    pub part_number: i32,
    pub size: u64,
    /// Hex MD5 of the part's bytes, without quotes.
    pub etag: String,
    pub last_modified_unix_ms: u64,
    /// The owner name of this part's chunk references.
    pub data_owner: String,
    pub chunks: Vec<ChunkRef>,
    #[serde(default)]
    pub checksums: Checksums,
}

/// Decodes a record, refusing unknown format versions.
pub fn decode<T: serde::de::DeserializeOwned + Versioned>(key: &[u8], value: &[u8]) -> Result<T> {
    let rec: T = serde_json::from_slice(value)
        .map_err(|e| ObjectdError::Record { key: String::from_utf8_lossy(key).into_owned(), why: e.to_string() })?;
    if rec.format_version() != RECORD_VERSION {
        return Err(ObjectdError::Record {
            key: String::from_utf8_lossy(key).into_owned(),
            why: format!("format version {} (this objectd reads {RECORD_VERSION})", rec.format_version()),
        });
    }
    Ok(rec)
}

pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    serde_json::to_vec(rec).expect("records always serialize")
}

/// Records that carry a format version.
pub trait Versioned {
    fn format_version(&self) -> u32;
}
macro_rules! versioned {
    ($($t:ty),*) => { $( impl Versioned for $t { fn format_version(&self) -> u32 { self.version } } )* };
}
versioned!(AccessKey, BucketRecord, ObjectRecord, UploadRecord, PartRecord);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A new version's sort id: later versions sort first (inverted nanoseconds), random suffix.
pub fn new_sort_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    format!("{:016x}{:08x}", u64::MAX - nanos, rand::random::<u32>())
}

/// A new random id (hex, 128 bits) for uploads and data owners.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_sort_first_and_keys_nest() {
        let a = new_sort_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_sort_id();
        assert!(b < a);
        let k = version_key("b", "dir/x", &a);
        let p = key_versions_prefix("b", "dir/x");
        assert!(k.starts_with(&p));
        // `dir/x` versions do not fall in `dir/x2`'s span, nor the reverse.
        assert!(!version_key("b", "dir/x2", &a).starts_with(&p));
        assert!(prefix_end(&p) > k);
    }

    #[test]
    fn records_refuse_other_versions_and_hide_secrets() {
        let mut k = AccessKey::generate("t", false, true);
        assert!(!format!("{k:?}").contains(&k.secret));
        k.version = 9;
        let err = decode::<AccessKey>(b"s3/keys/x", &encode(&k)).unwrap_err();
        assert!(err.to_string().contains("format version 9"));
    }

    #[test]
    fn permissions_order() {
        let mut k = AccessKey::generate("t", false, false);
        k.grants.insert("b".into(), Permission::Read);
        assert_eq!(k.permission("b", None), Some(Permission::Read));
        assert_eq!(k.permission("c", None), None);
        assert_eq!(k.permission("c", Some(&k.id.clone())), Some(Permission::Owner));
        assert!(Permission::Read < Permission::Write && Permission::Write < Permission::Owner);
    }
}
