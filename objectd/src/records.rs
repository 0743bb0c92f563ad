//! The metadata-service layout of the object store: key names and the versioned JSON records
//! stored under them (access keys, buckets, object versions, multipart uploads and parts).
//! A record's bytes are its JSON, then — only for an object stored inline — a NUL byte and the
//! object's raw bytes (JSON never holds a raw NUL, so the first one ends it).
//!
//! ```text
//! s3/keys/<access key id>            AccessKey
//! s3/buckets/<bucket>                BucketRecord
//! s3/o/<bucket>/<key>                ObjectRecord: the current version (never a delete marker)
//! s3/v/<bucket>/<key>\0<sort id>     ObjectRecord: every version, newest first per key; the
//!                                    current version's entry leaves its inline bytes to s3/o/
//! s3/u/<bucket>/<key>\0<upload id>   UploadRecord: a multipart upload in progress
//! s3/p/<upload id>/<part number:05>  PartRecord
//! ```
//! Keys never contain `\0` (control characters are refused), so `\0` ends a key unambiguously,
//! and listing a bucket is a range scan of its `s3/o/` (or `s3/v/`) span in key order.

use std::collections::BTreeMap;

use chunk_engine::ChunkHash;
use serde::{Deserialize, Serialize};

use crate::error::{ObjectdError, Result};

/// Format version of the access-key, bucket, upload and part records.
pub const RECORD_VERSION: u32 = 1;
/// Format version of object records. 2: inline bytes raw after the JSON, and the current
/// version's entry without them (`data_in_head`); 1 held them base64 in the JSON.
pub const OBJECT_RECORD_VERSION: u32 = 2;

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

pub use metadata_client::prefix_end;

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
    /// Small objects' bytes, stored raw after the JSON (see the module's note).
    #[serde(skip)]
    pub inline: Option<Vec<u8>>,
    /// This version entry leaves out the inline bytes: the key's current-version entry holds
    /// them. Only the current version's entry is written so; it is written whole again when the
    /// version stops being current.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_in_head: bool,
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
    /// The record as its version entry holds it while it is the current version: without the
    /// inline bytes, which the current-version entry holds, so a small PUT writes them once.
    pub fn encode_as_current_version_entry(&self) -> Vec<u8> {
        if self.inline.is_none() {
            return encode(self);
        }
        let slim = ObjectRecord { inline: None, data_in_head: true, ..self.clone() };
        encode(&slim)
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

/// Decodes a record. The version is read first: a newer one is refused by the one rule of
/// `format_version::check` (one line naming both versions), even when its fields changed; one
/// older than the oldest this build still reads (object records of format 1) is refused too.
pub fn decode<T: Versioned>(key: &[u8], value: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(default = "format_version::v1")]
        version: u32,
    }
    let key_text = String::from_utf8_lossy(key).into_owned();
    let bad = |why: String| ObjectdError::Record { key: key_text.clone(), why };
    let (json, tail) = match value.iter().position(|b| *b == 0) {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    };
    let v: VersionOnly = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let found = format_version::check(format!("record {key_text}"), v.version, T::CURRENT)?;
    if found < T::OLDEST {
        return Err(bad(format!("format version {found} (this objectd reads {} to {})", T::OLDEST, T::CURRENT)));
    }
    let mut rec: T = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    if let Some(tail) = tail
        && !rec.set_tail(tail)
    {
        return Err(bad("bytes after the record".into()));
    }
    Ok(rec)
}

/// A record's stored bytes: its JSON, then a NUL byte and its tail when it has one.
pub fn encode<T: Versioned>(rec: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(rec).expect("records always serialize");
    if let Some(tail) = rec.tail() {
        out.reserve_exact(1 + tail.len());
        out.push(0);
        out.extend_from_slice(tail);
    }
    out
}

/// Records that carry a format version (and maybe raw bytes after their JSON).
pub trait Versioned: Serialize + serde::de::DeserializeOwned {
    /// The format version this build writes (and the newest it reads).
    const CURRENT: u32 = RECORD_VERSION;
    /// The oldest format version this build reads.
    const OLDEST: u32 = 1;
    fn format_version(&self) -> u32;
    /// Raw bytes stored after the JSON.
    fn tail(&self) -> Option<&[u8]> {
        None
    }
    /// Takes the raw bytes stored after the JSON; false when this record has none.
    fn set_tail(&mut self, _tail: &[u8]) -> bool {
        false
    }
}
macro_rules! versioned {
    ($($t:ty),*) => { $( impl Versioned for $t { fn format_version(&self) -> u32 { self.version } } )* };
}
versioned!(AccessKey, BucketRecord, UploadRecord, PartRecord);

impl Versioned for ObjectRecord {
    const CURRENT: u32 = OBJECT_RECORD_VERSION;
    const OLDEST: u32 = OBJECT_RECORD_VERSION;
    fn format_version(&self) -> u32 {
        self.version
    }
    fn tail(&self) -> Option<&[u8]> {
        self.inline.as_deref()
    }
    fn set_tail(&mut self, tail: &[u8]) -> bool {
        self.inline = Some(tail.to_vec());
        true
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A new version's sort id: later versions sort first (inverted nanoseconds), random suffix.
pub fn new_sort_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    format!("{:016x}{:08x}", u64::MAX - nanos, rand::random::<u32>())
}

/// A sort id that sorts before (is newer than) `current`: now's, or just newer than `current`
/// when its clock ran ahead of ours (another objectd's skewed clock, a step back of our own).
/// A version committed over a current one is always the newest in the listing too.
pub fn sort_id_after(current: &str) -> String {
    let now = new_sort_id();
    if now.as_str() < current {
        return now;
    }
    match current.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()) {
        Some(v) if v > 0 => format!("{:016x}{:08x}", v - 1, rand::random::<u32>()),
        _ => now, // not one of ours: keep the clock's
    }
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
    fn a_version_over_one_from_a_clock_ahead_still_sorts_first() {
        let behind = new_sort_id();
        assert!(sort_id_after(&behind) < behind, "now's id, newer");
        let ahead = format!("{:016x}{:08x}", 5u64, 7u32); // far in the future
        let after = sort_id_after(&ahead);
        assert!(after < ahead);
        assert_eq!(&after[..16], &format!("{:016x}", 4u64));
        assert_eq!(after.len(), ahead.len());
        assert!(!sort_id_after("garbage").is_empty());
    }

    fn small_object(data: &[u8]) -> ObjectRecord {
        let mut headers = ObjectHeaders::default();
        // a NUL inside a string must not be taken for the end of the JSON
        headers.user.insert("note".into(), "a\0b".into());
        ObjectRecord {
            version: OBJECT_RECORD_VERSION,
            version_id: "null".into(),
            sort_id: new_sort_id(),
            delete_marker: false,
            size: data.len() as u64,
            etag: "e".into(),
            last_modified_unix_ms: 1,
            data_owner: "s3:x".into(),
            chunks: Vec::new(),
            inline: Some(data.to_vec()),
            data_in_head: false,
            parts: Vec::new(),
            headers,
            checksums: Checksums::default(),
            writer: "w".into(),
        }
    }

    #[test]
    fn inline_bytes_are_stored_raw_after_the_json() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect(); // NULs included
        let rec = small_object(&data);
        let stored = encode(&rec);
        assert!(stored.len() < 4096 + 400, "raw, not base64: {} bytes", stored.len());
        let back: ObjectRecord = decode(b"k", &stored).unwrap();
        assert_eq!(back, rec);
        // an empty inline object keeps its (empty) bytes
        let empty = small_object(b"");
        assert_eq!(decode::<ObjectRecord>(b"k", &encode(&empty)).unwrap().inline, Some(Vec::new()));
        // the current version's entry leaves the bytes out and says where they are
        let entry: ObjectRecord = decode(b"k", &rec.encode_as_current_version_entry()).unwrap();
        assert_eq!((entry.inline, entry.data_in_head, entry.size), (None, true, 4096));
        // records without a tail refuse one
        let mut b = encode(&AccessKey::generate("t", false, false));
        b.extend_from_slice(b"\0junk");
        assert!(decode::<AccessKey>(b"k", &b).unwrap_err().to_string().contains("bytes after the record"));
        // format 1 object records (base64 inline in the JSON) are refused, not misread
        let mut v1 = serde_json::to_value(&rec).unwrap();
        v1["version"] = 1.into();
        let err = decode::<ObjectRecord>(b"k", &serde_json::to_vec(&v1).unwrap()).unwrap_err();
        assert!(err.to_string().contains("format version 1"), "{err}");
    }

    #[test]
    fn records_refuse_other_versions_and_hide_secrets() {
        let mut k = AccessKey::generate("t", false, true);
        assert!(!format!("{k:?}").contains(&k.secret));
        k.version = 9;
        let err = decode::<AccessKey>(b"s3/keys/x", &encode(&k)).unwrap_err();
        assert_eq!(err.to_string(), "record s3/keys/x has format version 9; this build reads up to version 1");
    }

    #[test]
    fn every_record_kind_refuses_a_newer_version_in_one_line() {
        let one_line = |e: ObjectdError, key: &str, found: u32, supported: u32| {
            assert_eq!(
                e.to_string(),
                format!("record {key} has format version {found}; this build reads up to version {supported}")
            );
        };
        let mut b = serde_json::to_value(bucket("b")).unwrap();
        b["version"] = 2.into();
        b["replication"] = "none".into(); // a field this build does not know
        one_line(
            decode::<BucketRecord>(b"s3/buckets/b", &serde_json::to_vec(&b).unwrap()).unwrap_err(),
            "s3/buckets/b",
            2,
            1,
        );
        let o = ObjectRecord { version: OBJECT_RECORD_VERSION + 1, ..small_object(b"x") };
        one_line(decode::<ObjectRecord>(b"s3/o/b/k", &encode(&o)).unwrap_err(), "s3/o/b/k", 3, 2);
        let u = UploadRecord { version: 2, ..upload() };
        one_line(decode::<UploadRecord>(b"s3/u/b/k", &encode(&u)).unwrap_err(), "s3/u/b/k", 2, 1);
        let p = PartRecord { version: 5, ..part(vec![]) };
        one_line(decode::<PartRecord>(b"s3/p/u/00001", &encode(&p)).unwrap_err(), "s3/p/u/00001", 5, 1);
    }

    fn bucket(name: &str) -> BucketRecord {
        BucketRecord {
            version: RECORD_VERSION,
            name: name.into(),
            created_unix_ms: 1,
            owner: "CK1".into(),
            versioning: Versioning::Enabled,
            public_read: false,
            deleting: false,
        }
    }

    fn upload() -> UploadRecord {
        UploadRecord {
            version: RECORD_VERSION,
            upload_id: new_id(),
            bucket: "b".into(),
            key: "k".into(),
            initiated_unix_ms: 1,
            initiator: "CK1".into(),
            headers: ObjectHeaders::default(),
            checksum_algorithm: Some("CRC32".into()),
        }
    }

    fn part(chunks: Vec<ChunkRef>) -> PartRecord {
        PartRecord {
            version: RECORD_VERSION,
            part_number: 1,
            size: 5,
            etag: "e".into(),
            last_modified_unix_ms: 1,
            data_owner: "s3:o".into(),
            chunks,
            checksums: Checksums::default(),
        }
    }

    use proptest::prelude::*;

    fn opt() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".*")
    }

    fn headers() -> impl Strategy<Value = ObjectHeaders> {
        (opt(), opt(), opt(), opt(), opt(), proptest::collection::btree_map(".*", ".*", 0..3)).prop_map(
            |(content_type, content_encoding, content_disposition, content_language, cache_control, user)| {
                ObjectHeaders {
                    content_type,
                    content_encoding,
                    content_disposition,
                    content_language,
                    cache_control,
                    expires: None,
                    user,
                }
            },
        )
    }

    fn checksums() -> impl Strategy<Value = Checksums> {
        (opt(), opt(), opt(), opt(), opt()).prop_map(|(crc32, crc32c, sha1, sha256, crc64nvme)| Checksums {
            crc32,
            crc32c,
            sha1,
            sha256,
            crc64nvme,
        })
    }

    fn chunks() -> impl Strategy<Value = Vec<ChunkRef>> {
        proptest::collection::vec(("[0-9a-f]{64}", any::<u64>()).prop_map(|(h, n)| ChunkRef { h, n }), 0..4)
    }

    fn permission() -> impl Strategy<Value = Permission> {
        prop_oneof![Just(Permission::Read), Just(Permission::Write), Just(Permission::Owner)]
    }

    proptest! {
        #[test]
        fn object_records_round_trip(
            (version_id, sort_id, etag, data_owner, writer) in (".*", ".*", ".*", ".*", ".*"),
            (delete_marker, size, last_modified_unix_ms) in (any::<bool>(), any::<u64>(), any::<u64>()),
            chunks in chunks(),
            inline in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            parts in proptest::collection::vec(any::<u64>(), 0..4),
            (headers, checksums) in (headers(), checksums()),
        ) {
            let rec = ObjectRecord {
                version: OBJECT_RECORD_VERSION, version_id, sort_id, delete_marker, size, etag, last_modified_unix_ms,
                data_owner, chunks, inline, data_in_head: false, parts, headers, checksums, writer,
            };
            prop_assert_eq!(&decode::<ObjectRecord>(b"k", &encode(&rec)).unwrap(), &rec);
            // The current version's entry: the same record without its inline bytes.
            let entry = decode::<ObjectRecord>(b"k", &rec.encode_as_current_version_entry()).unwrap();
            let slim = ObjectRecord { inline: None, data_in_head: rec.inline.is_some(), ..rec.clone() };
            prop_assert_eq!(entry, slim);
        }

        #[test]
        fn key_bucket_upload_and_part_records_round_trip(
            (id, secret, name) in (".*", ".*", ".*"),
            (admin, create_buckets, public_read, deleting, t) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
            grants in proptest::collection::btree_map(".*", permission(), 0..4),
            versioning in prop_oneof![Just(Versioning::Off), Just(Versioning::Enabled), Just(Versioning::Suspended)],
            (headers, checksums, chunks) in (headers(), checksums(), chunks()),
            (part_number, checksum_algorithm) in (any::<i32>(), opt()),
        ) {
            let k = AccessKey {
                version: RECORD_VERSION, id: id.clone(), secret: secret.clone(), name: name.clone(), created_unix_ms: t,
                admin, create_buckets, grants,
            };
            prop_assert!(decode::<AccessKey>(b"k", &encode(&k)).unwrap() == k);
            let b = BucketRecord {
                version: RECORD_VERSION, name: name.clone(), created_unix_ms: t, owner: id.clone(), versioning,
                public_read, deleting,
            };
            prop_assert_eq!(decode::<BucketRecord>(b"k", &encode(&b)).unwrap(), b);
            let u = UploadRecord {
                version: RECORD_VERSION, upload_id: secret.clone(), bucket: name.clone(), key: id.clone(),
                initiated_unix_ms: t, initiator: id.clone(), headers, checksum_algorithm,
            };
            prop_assert_eq!(decode::<UploadRecord>(b"k", &encode(&u)).unwrap(), u);
            let p = PartRecord {
                version: RECORD_VERSION, part_number, size: t, etag: secret, last_modified_unix_ms: t, data_owner: name,
                chunks, checksums,
            };
            prop_assert_eq!(decode::<PartRecord>(b"k", &encode(&p)).unwrap(), p);
        }
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
