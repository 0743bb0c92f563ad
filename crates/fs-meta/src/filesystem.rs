//! Whole filesystems: create (an empty root), look up, set the quota, read the usage, copy
//! (snapshots and clones share chunks, copying only metadata) and delete (every key and chunk
//! reference released; pool GC then reclaims the chunks).

use chunk_engine::ChunkHash;
use cluster::refs::ref_key;
use metadata_client::{MetaClient, Txn, prefix_end};
use serde::{Deserialize, Serialize};

use crate::inode::{Inode, Kind, corrupt, decode_versioned};
use crate::{FsError, ROOT_INO, Result, keys};

/// Format of filesystem and usage records.
pub const RECORD_VERSION: u32 = 1;
/// Default size of a file block (one chunk in the pool).
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// Keys changed per transaction when copying or deleting (each may carry a reference too).
const PAGE: u32 = 96;

/// A filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRecord {
    pub version: u32,
    pub id: String,
    /// Bytes its files may hold in total (sum of file sizes).
    pub quota_bytes: u64,
    /// Size of a file block.
    pub block_size: u32,
    pub created_ms: u64,
    /// The filesystem it was copied from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Set while it is being deleted: it can no longer be mounted.
    #[serde(default)]
    pub deleting: bool,
}

/// What a filesystem uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    pub version: u32,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Inodes in use.
    pub inodes: u64,
}

impl Usage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("usage serializes")
    }
    pub fn decode(key: &[u8], v: &[u8]) -> Result<Usage> {
        decode_versioned(key, v, RECORD_VERSION)
    }
}

impl FsRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record serializes")
    }
    pub fn decode(key: &[u8], v: &[u8]) -> Result<FsRecord> {
        decode_versioned(key, v, RECORD_VERSION)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Looks up filesystem `id` with the revision of its record.
pub async fn get(meta: &MetaClient, id: &str) -> Result<Option<(u64, FsRecord)>> {
    let key = keys::record(id);
    match meta.get(&key).await? {
        Some(kv) => Ok(Some((kv.mod_revision, FsRecord::decode(&key, &kv.value)?))),
        None => Ok(None),
    }
}

/// Every filesystem, in id order.
pub async fn list(meta: &MetaClient) -> Result<Vec<FsRecord>> {
    let start = keys::RECORDS.as_bytes().to_vec();
    let end = prefix_end(&start);
    let mut out = Vec::new();
    let mut from = start;
    loop {
        let page = meta.range(&from, &end, 256).await?;
        for kv in &page.kvs {
            out.push(FsRecord::decode(&kv.key, &kv.value)?);
        }
        match page.next_key {
            Some(k) => from = k,
            None => return Ok(out),
        }
    }
}

/// Creates an empty filesystem (a root directory, mode 0777 so any pod user may write) unless
/// it exists; returns its record either way.
pub async fn create(meta: &MetaClient, id: &str, quota_bytes: u64) -> Result<FsRecord> {
    let rec = FsRecord {
        version: RECORD_VERSION,
        id: id.to_string(),
        quota_bytes,
        block_size: DEFAULT_BLOCK_SIZE,
        created_ms: now_ms(),
        origin: None,
        deleting: false,
    };
    let mut root = Inode::new(Kind::Dir, 0o777, 0, 0);
    root.parent = ROOT_INO;
    let usage = Usage { version: RECORD_VERSION, bytes: 0, inodes: 1 };
    let key = keys::record(id);
    let txn = Txn::new()
        .absent(&key)
        .put(&key, &rec.encode())
        .put(&keys::usage(id), &usage.encode())
        .put(&keys::next_ino(id), (ROOT_INO + 1).to_string().as_bytes())
        .put(&keys::inode(id, ROOT_INO), &root.encode());
    if meta.txn(txn).await?.succeeded {
        return Ok(rec);
    }
    get(meta, id).await?.map(|(_, r)| r).ok_or_else(|| FsError::Contended(id.to_string()))
}

/// Sets the quota (raising or lowering it; lowering below the usage only stops growth).
pub async fn set_quota(meta: &MetaClient, id: &str, quota_bytes: u64) -> Result<FsRecord> {
    for _ in 0..crate::RETRIES {
        let Some((rev, mut rec)) = get(meta, id).await? else {
            return Err(FsError::NoFilesystem(id.to_string()));
        };
        if rec.quota_bytes == quota_bytes {
            return Ok(rec);
        }
        rec.quota_bytes = quota_bytes;
        let key = keys::record(id);
        if meta.txn(Txn::new().mod_revision_equals(&key, rev).put(&key, &rec.encode())).await?.succeeded {
            return Ok(rec);
        }
    }
    Err(FsError::Contended(id.to_string()))
}

/// What filesystem `id` uses.
pub async fn usage(meta: &MetaClient, id: &str) -> Result<Usage> {
    let key = keys::usage(id);
    match meta.get(&key).await? {
        Some(kv) => Usage::decode(&key, &kv.value),
        None => Err(FsError::NoFilesystem(id.to_string())),
    }
}

/// Deletes filesystem `id`: marks it deleting (no new mounts), releases every key and chunk
/// reference, then the record. Deleting an absent filesystem succeeds; a deletion cut short
/// is finished by the next call.
pub async fn delete(meta: &MetaClient, id: &str) -> Result<()> {
    let key = keys::record(id);
    loop {
        let Some((rev, mut rec)) = get(meta, id).await? else {
            // Keys of a deletion cut short after the record went cannot exist: the record goes last.
            return Ok(());
        };
        if rec.deleting {
            break;
        }
        rec.deleting = true;
        if meta.txn(Txn::new().mod_revision_equals(&key, rev).put(&key, &rec.encode())).await?.succeeded {
            break;
        }
    }
    let start = keys::ns(id);
    let end = prefix_end(&start);
    let blocks_prefix = format!("fs/n/{id}/b/").into_bytes();
    loop {
        let page = meta.range(&start, &end, PAGE).await?;
        if page.kvs.is_empty() {
            break;
        }
        let mut txn = Txn::new();
        for kv in &page.kvs {
            txn = txn.delete(&kv.key);
            if kv.key.starts_with(&blocks_prefix)
                && let Some((ino, idx)) = block_of(&kv.key)
                && let Ok(h) = ChunkHash::from_slice(&kv.value)
            {
                txn = txn.delete(&ref_key(&h, &keys::ref_owner(id, ino, idx)));
            }
        }
        meta.txn(txn).await?;
    }
    meta.delete(&key).await?;
    Ok(())
}

/// The inode and index of a block-map key.
pub(crate) fn block_of(key: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.rsplitn(3, '/');
    let idx = u64::from_str_radix(parts.next()?, 16).ok()?;
    let ino = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((ino, idx))
}

/// Copies filesystem `src` into a new filesystem `dst` with `quota_bytes`: every inode, entry,
/// attribute and block-map entry, each block's chunk shared by a new reference (added only
/// while the source's reference still exists, so pool GC can never have taken the chunk). Files
/// written while the copy runs may be copied before or after the change; a snapshot of a
/// filesystem in use is consistent per block, not across files. Copying again into the same
/// `dst` after a failure redoes it; the record is written last, so a half-made copy is never a
/// filesystem.
pub async fn copy(meta: &MetaClient, src: &str, dst: &str, quota_bytes: u64) -> Result<FsRecord> {
    if let Some((_, r)) = get(meta, dst).await? {
        return Ok(r);
    }
    let Some((_, src_rec)) = get(meta, src).await? else {
        return Err(FsError::NoFilesystem(src.to_string()));
    };
    let start = keys::ns(src);
    let end = prefix_end(&start);
    let skip: Vec<Vec<u8>> =
        ["c/", "o/", "l/", "lv/"].iter().map(|p| [keys::ns(src), p.as_bytes().to_vec()].concat()).collect();
    let blocks_prefix = format!("fs/n/{src}/b/").into_bytes();
    let mut from = start.clone();
    loop {
        let page = meta.range(&from, &end, PAGE).await?;
        let mut txn = Txn::new();
        for kv in &page.kvs {
            if skip.iter().any(|p| kv.key.starts_with(p)) {
                continue;
            }
            let mut new_key = keys::ns(dst);
            new_key.extend_from_slice(&kv.key[start.len()..]);
            if kv.key.starts_with(&blocks_prefix) {
                copy_block(meta, src, dst, &kv.key, &new_key, kv.value.clone()).await?;
                continue;
            }
            txn = txn.put(&new_key, &kv.value);
        }
        meta.txn(txn).await?;
        match page.next_key {
            Some(k) => from = k,
            None => break,
        }
    }
    let rec = FsRecord {
        version: RECORD_VERSION,
        id: dst.to_string(),
        quota_bytes,
        block_size: src_rec.block_size,
        created_ms: now_ms(),
        origin: Some(src.to_string()),
        deleting: false,
    };
    let key = keys::record(dst);
    meta.txn(Txn::new().absent(&key).put(&key, &rec.encode())).await?;
    Ok(get(meta, dst).await?.map(|(_, r)| r).unwrap_or(rec))
}

/// Copies one block-map entry with a reference conditioned on the source's; when the source
/// block changed meanwhile, the copy takes its new chunk (or none, if it was removed).
async fn copy_block(
    meta: &MetaClient,
    src: &str,
    dst: &str,
    key: &[u8],
    new_key: &[u8],
    mut value: Vec<u8>,
) -> Result<()> {
    let Some((ino, idx)) = block_of(key) else {
        return Err(corrupt(key, "not a block key".into()));
    };
    for _ in 0..crate::RETRIES {
        let h = ChunkHash::from_slice(&value).map_err(|e| corrupt(key, e.to_string()))?;
        let txn = Txn::new()
            .exists(&ref_key(&h, &keys::ref_owner(src, ino, idx)))
            .put(new_key, &value)
            .put(&ref_key(&h, &keys::ref_owner(dst, ino, idx)), b"");
        if meta.txn(txn).await?.succeeded {
            return Ok(());
        }
        match meta.get(key).await? {
            Some(kv) => value = kv.value,
            None => return Ok(()),
        }
    }
    Err(FsError::Contended(String::from_utf8_lossy(key).into_owned()))
}

/// A mounted client, registered while its mount lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub version: u32,
    pub id: String,
    /// The node it runs on.
    pub node: String,
    pub mounted_ms: u64,
    /// Last sign of life (refreshed while mounted); a client silent for
    /// [`crate::locks::CLIENT_DEAD_AFTER_MS`] holds no locks.
    #[serde(default)]
    pub heartbeat_ms: u64,
    pub read_only: bool,
}

/// Registers a mounted client, or refreshes its heartbeat (call it every few seconds while
/// mounted): one put. `mounted_ms` is when it mounted ([`now_ms`] at the first registration),
/// which the caller keeps.
pub async fn register_client(
    meta: &MetaClient,
    fs: &str,
    id: &str,
    node: &str,
    read_only: bool,
    mounted_ms: u64,
) -> Result<()> {
    let rec = ClientRecord {
        version: RECORD_VERSION,
        id: id.to_string(),
        node: node.to_string(),
        mounted_ms,
        heartbeat_ms: now_ms(),
        read_only,
    };
    meta.put(&keys::client(fs, id), &rec.encode()).await?;
    Ok(())
}

/// Removes a client's registration.
pub async fn unregister_client(meta: &MetaClient, fs: &str, id: &str) -> Result<()> {
    meta.delete(&keys::client(fs, id)).await?;
    Ok(())
}

/// The clients that have filesystem `fs` mounted.
pub async fn clients(meta: &MetaClient, fs: &str) -> Result<Vec<ClientRecord>> {
    let start = keys::clients(fs);
    let end = prefix_end(&start);
    let page = meta.range(&start, &end, 1024).await?;
    page.kvs.iter().map(|kv| ClientRecord::decode(&kv.key, &kv.value)).collect()
}

impl ClientRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a client record serializes")
    }
    pub fn decode(key: &[u8], v: &[u8]) -> Result<ClientRecord> {
        decode_versioned(key, v, RECORD_VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_name_their_inode_and_index() {
        assert_eq!(block_of(&keys::block("fs-a", 0x12, 3)), Some((0x12, 3)));
        assert_eq!(block_of(b"fs/n/x/b/zz/1"), None);
    }

    fn fs_record(version: u32) -> FsRecord {
        FsRecord {
            version,
            id: "x".into(),
            quota_bytes: 1,
            block_size: DEFAULT_BLOCK_SIZE,
            created_ms: 0,
            origin: None,
            deleting: false,
        }
    }

    #[test]
    fn records_refuse_other_versions() {
        let r = fs_record(2);
        assert!(FsRecord::decode(b"k", &r.encode()).is_err());
        let ok = FsRecord { version: RECORD_VERSION, ..r };
        assert_eq!(FsRecord::decode(b"k", &ok.encode()).unwrap(), ok);
    }

    #[test]
    fn newer_records_are_refused_in_one_line() {
        let line = |e: FsError| {
            assert!(matches!(e, FsError::Newer(_)), "{e:?}");
            e.to_string()
        };
        assert_eq!(
            line(FsRecord::decode(b"fs/rec/x", &fs_record(2).encode()).unwrap_err()),
            "record fs/rec/x has format version 2; this build reads up to version 1"
        );
        let u = Usage { version: 3, bytes: 1, inodes: 1 };
        assert_eq!(
            line(Usage::decode(b"fs/n/x/u", &u.encode()).unwrap_err()),
            "record fs/n/x/u has format version 3; this build reads up to version 1"
        );
        let mut c = serde_json::to_value(ClientRecord {
            version: 1,
            id: "c".into(),
            node: "n".into(),
            mounted_ms: 1,
            heartbeat_ms: 1,
            read_only: false,
        })
        .unwrap();
        c["version"] = 2.into();
        c["caps"] = "new".into();
        assert_eq!(
            line(ClientRecord::decode(b"fs/n/x/c/c", &serde_json::to_vec(&c).unwrap()).unwrap_err()),
            "record fs/n/x/c/c has format version 2; this build reads up to version 1"
        );
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn filesystem_usage_and_client_records_round_trip(
            (id, origin, node) in (".*", proptest::option::of(".*"), ".*"),
            (quota_bytes, block_size, created_ms, deleting) in (any::<u64>(), any::<u32>(), any::<u64>(), any::<bool>()),
            (bytes, inodes, heartbeat_ms, read_only) in (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
        ) {
            let r = FsRecord { version: RECORD_VERSION, id: id.clone(), quota_bytes, block_size, created_ms, origin, deleting };
            prop_assert_eq!(FsRecord::decode(b"k", &r.encode()).unwrap(), r);
            let u = Usage { version: RECORD_VERSION, bytes, inodes };
            prop_assert_eq!(Usage::decode(b"k", &u.encode()).unwrap(), u);
            let c = ClientRecord { version: RECORD_VERSION, id, node, mounted_ms: created_ms, heartbeat_ms, read_only };
            prop_assert_eq!(ClientRecord::decode(b"k", &c.encode()).unwrap(), c);
        }

        #[test]
        fn chunk_map_values_are_the_chunk_hash(data in proptest::collection::vec(any::<u8>(), 0..64), cut in 0..32usize) {
            // A block key's value is the raw hash of its chunk (what `blocks` writes and reads).
            let h = ChunkHash::of(&data);
            prop_assert!(ChunkHash::from_slice(&h.0).unwrap() == h);
            prop_assert!(ChunkHash::from_slice(&h.0[..cut]).is_err(), "a short value is refused");
        }
    }
}
