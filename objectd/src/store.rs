//! The object store's state as every operation sees it: the metadata client, the pool's chunk
//! client, the watched caches, and the one transaction that makes a new object version (or a
//! delete marker) current — with its chunk references, in one atomic step.

use std::sync::Arc;
use std::time::Instant;

use chunk_engine::ChunkHash;
use cluster::ChunkClient;
use cluster::refs::{add_refs, remove_refs};
use metadata_client::{KeyValue, MetaClient, Txn};
use s3s::S3ErrorCode;

use crate::cache::{Cache, Cached};
use crate::config::ObjectdConfig;
use crate::error::{ObjectdError, Result, s3err};
use crate::metrics::Metrics;
use crate::records::*;

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub meta: MetaClient,
    pub chunks: ChunkClient,
    pub cfg: Arc<ObjectdConfig>,
    pub keys: Cache<AccessKey>,
    pub buckets: Cache<BucketRecord>,
    pub metrics: Arc<Metrics>,
}

/// Chunks a writer put and must reference within the pool's write window.
pub type Acked = Vec<(ChunkHash, Instant)>;

/// Extra parts of a version commit: conditions that must hold (with the error to answer when
/// one does not) and operations applied with it.
#[derive(Default)]
pub struct Extra {
    pub conditions: Vec<(Cond, ObjectdError)>,
    pub deletes: Vec<Vec<u8>>,
    /// References of other owners to drop (parts folded into an object).
    pub drop_refs: Vec<(String, Vec<ChunkHash>)>,
}

/// A condition of [`Extra`].
pub enum Cond {
    Exists(Vec<u8>),
    ModRev(Vec<u8>, u64),
}

/// S3 key rules: 1–1024 bytes, no control characters, no `..` segment.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(s3err(S3ErrorCode::InvalidArgument, "The object key must not be empty."));
    }
    if key.len() > 1024 {
        return Err(s3err(S3ErrorCode::KeyTooLongError, "Your key is too long (the limit is 1024 bytes)."));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(s3err(S3ErrorCode::InvalidArgument, "The object key must not contain control characters."));
    }
    if key.split('/').any(|seg| seg == "..") {
        return Err(s3err(S3ErrorCode::InvalidArgument, "The object key must not contain a '..' path segment."));
    }
    Ok(())
}

pub fn no_such_bucket(b: &str) -> ObjectdError {
    s3err(S3ErrorCode::NoSuchBucket, format!("The specified bucket {b} does not exist."))
}

pub fn no_such_key() -> ObjectdError {
    s3err(S3ErrorCode::NoSuchKey, "The specified key does not exist.")
}

pub fn no_such_version() -> ObjectdError {
    s3err(S3ErrorCode::NoSuchVersion, "The specified version does not exist.")
}

/// An error about a delete marker, with the headers S3 sends for one.
fn delete_marker_error(code: S3ErrorCode, msg: &'static str, version_id: &str) -> ObjectdError {
    let mut e = s3s::S3Error::with_message(code, msg);
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    h.insert("x-amz-delete-marker", http::HeaderValue::from_static("true"));
    if let Ok(v) = http::HeaderValue::from_str(version_id) {
        h.insert("x-amz-version-id", v);
    }
    e.set_headers(h);
    ObjectdError::S3(e)
}

impl Store {
    /// The bucket, from the cache (or a direct read); NoSuchBucket if missing or being deleted.
    pub async fn bucket(&self, name: &str) -> Result<Cached<BucketRecord>> {
        match self.buckets.get(name).await? {
            Some(b) if !b.rec.deleting => Ok(b),
            _ => Err(no_such_bucket(name)),
        }
    }

    /// The bucket read directly from the metadata service.
    pub async fn bucket_fresh(&self, name: &str) -> Result<Cached<BucketRecord>> {
        match self.buckets.refresh(name).await? {
            Some(b) if !b.rec.deleting => Ok(b),
            _ => Err(no_such_bucket(name)),
        }
    }

    /// The current version of `key` with its metadata revision.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<(KeyValue, ObjectRecord)>> {
        let k = head_key(bucket, key);
        match self.meta.get(&k).await? {
            Some(kv) => {
                let rec = decode(&k, &kv.value)?;
                Ok(Some((kv, rec)))
            }
            None => Ok(None),
        }
    }

    /// Every version of `key`, newest first (up to `limit`).
    pub async fn versions_of(&self, bucket: &str, key: &str, limit: u32) -> Result<Vec<(KeyValue, ObjectRecord)>> {
        let start = key_versions_prefix(bucket, key);
        let end = prefix_end(&start);
        let page = self.meta.range(&start, &end, limit).await?;
        page.kvs
            .into_iter()
            .map(|kv| {
                let rec = decode(&kv.key, &kv.value)?;
                Ok((kv, rec))
            })
            .collect()
    }

    /// A given version of `key` (`null` included) with its metadata entry.
    pub async fn version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Option<(KeyValue, ObjectRecord)>> {
        if version_id == "null" {
            return Ok(self.versions_of(bucket, key, 10_000).await?.into_iter().find(|(_, r)| r.version_id == "null"));
        }
        if version_id.len() != 24 || !version_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(s3err(S3ErrorCode::InvalidArgument, "Invalid version id specified"));
        }
        let k = version_key(bucket, key, version_id);
        match self.meta.get(&k).await? {
            Some(kv) => {
                let rec = decode(&k, &kv.value)?;
                Ok(Some((kv, rec)))
            }
            None => Ok(None),
        }
    }

    /// The object a read names: a given version, else the current one. A delete marker named by
    /// version answers MethodNotAllowed like S3; no current version answers NoSuchKey.
    pub async fn object_for_read(&self, bucket: &str, key: &str, version_id: Option<&str>) -> Result<ObjectRecord> {
        check_key(key)?;
        match version_id {
            Some(v) => {
                for _ in 0..16 {
                    match self.version(bucket, key, v).await? {
                        Some((_, r)) if r.delete_marker => {
                            return Err(delete_marker_error(
                                S3ErrorCode::MethodNotAllowed,
                                "The specified method is not allowed against this resource.",
                                &r.version_id,
                            ));
                        }
                        // The current version's bytes are in the current-version entry; if it
                        // stopped being current meanwhile, its own entry is whole again.
                        Some((_, r)) if r.data_in_head => match self.head(bucket, key).await? {
                            Some((_, h)) if h.sort_id == r.sort_id => return Ok(h),
                            _ => continue,
                        },
                        Some((_, r)) => return Ok(r),
                        None => {
                            self.bucket(bucket).await?;
                            return Err(no_such_version());
                        }
                    }
                }
                Err(ObjectdError::Conflict)
            }
            None => match self.head(bucket, key).await? {
                Some((_, r)) => Ok(r),
                None => {
                    self.bucket(bucket).await?;
                    // When the newest version is a delete marker, S3 says so in the headers.
                    let newest = self.versions_of(bucket, key, 1).await?.into_iter().next();
                    match newest {
                        Some((_, m)) if m.delete_marker => Err(delete_marker_error(
                            S3ErrorCode::NoSuchKey,
                            "The specified key does not exist.",
                            &m.version_id,
                        )),
                        _ => Err(no_such_key()),
                    }
                }
            },
        }
    }

    /// Makes `rec` the newest version of `key` (a delete marker removes the current version) in
    /// one transaction with its chunk references (`acked`: chunks put for it, which must still
    /// be inside the pool's write window), replacing the `null` version unless the bucket keeps
    /// versions. `if_none_match`: refuse when a current version exists. Retries when another
    /// writer got in between.
    pub async fn commit_version(
        &self,
        bucket: &str,
        key: &str,
        mut rec: ObjectRecord,
        acked: &Acked,
        if_none_match: bool,
        mut extra: Extra,
    ) -> Result<ObjectRecord> {
        let window = cluster::gc::WRITE_WINDOW;
        if let Some((h, at)) = acked.iter().find(|(_, at)| at.elapsed() >= window - window / 4) {
            return Err(ObjectdError::Cluster(cluster::ClusterError::Stale(format!(
                "chunk {h} was put {:?} ago, past the write window",
                at.elapsed()
            ))));
        }
        let hashes = rec.chunk_hashes()?;
        let mut fresh = false;
        for attempt in 0..16u32 {
            let b = if fresh { self.bucket_fresh(bucket).await? } else { self.bucket(bucket).await? };
            // A first attempt assumes a new key (no current version to read); if the key exists,
            // its condition fails and the next attempt reads it. Suspended buckets may hold a
            // null version without a current one, so they always read.
            let optimistic = attempt == 0 && b.rec.versioning != Versioning::Suspended;
            let head = if optimistic { None } else { self.head(bucket, key).await? };
            if if_none_match && head.is_some() {
                return Err(s3err(
                    S3ErrorCode::PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold",
                ));
            }
            // The new version is the newest, also in the version listing, whatever the clocks.
            if let Some((_, h)) = head.as_ref().filter(|(_, h)| h.sort_id <= rec.sort_id) {
                rec.sort_id = sort_id_after(&h.sort_id);
            }
            let keeps_versions = b.rec.versioning == Versioning::Enabled;
            rec.version_id = if keeps_versions { rec.sort_id.clone() } else { "null".into() };
            // The version this write replaces: the null one, unless the bucket keeps versions.
            let replaced: Option<(KeyValue, ObjectRecord)> = if keeps_versions {
                None
            } else if let Some((_, h)) = head.as_ref().filter(|(_, h)| h.version_id == "null") {
                let vk = version_key(bucket, key, &h.sort_id);
                self.meta.get(&vk).await?.map(|kv| (kv, h.clone()))
            } else if b.rec.versioning == Versioning::Suspended {
                self.versions_of(bucket, key, 10_000).await?.into_iter().find(|(_, r)| r.version_id == "null")
            } else {
                None
            };
            // The current version this write keeps as an older one: its entry must hold its
            // inline bytes from now on (see `ObjectRecord::data_in_head`).
            let demoted = head
                .as_ref()
                .filter(|(_, h)| h.inline.is_some() && replaced.as_ref().is_none_or(|(_, r)| r.sort_id != h.sort_id))
                .map(|(kv, h)| (version_key(bucket, key, &h.sort_id), kv.value.clone()));
            let hk = head_key(bucket, key);
            let mut txn = Txn::new().value_equals(&bucket_key(bucket), &b.raw);
            txn = match &head {
                Some((kv, _)) => txn.mod_revision_equals(&hk, kv.mod_revision),
                None => txn.absent(&hk),
            };
            if let Some((kv, _)) = &replaced {
                txn = txn.mod_revision_equals(&kv.key, kv.mod_revision);
            }
            if let Some((vk, _)) = &demoted {
                txn = txn.exists(vk);
            }
            let fixed = 1 + 1 + usize::from(replaced.is_some()) + usize::from(demoted.is_some());
            for (c, _) in &extra.conditions {
                txn = match c {
                    Cond::Exists(k) => txn.exists(k),
                    Cond::ModRev(k, r) => txn.mod_revision_equals(k, *r),
                };
            }
            txn = if rec.delete_marker { txn.delete(&hk) } else { txn.put(&hk, &encode(&rec)) };
            txn = txn.put(&version_key(bucket, key, &rec.sort_id), &rec.encode_as_current_version_entry());
            if let Some((vk, whole)) = &demoted {
                txn = txn.put(vk, whole);
            }
            if let Some((kv, old)) = &replaced {
                txn = txn.delete(&kv.key);
                txn = remove_refs(txn, &old.chunk_hashes()?, &old.data_owner);
            }
            for k in &extra.deletes {
                txn = txn.delete(k);
            }
            for (owner, hs) in &extra.drop_refs {
                txn = remove_refs(txn, hs, owner);
            }
            txn = add_refs(txn, &hashes, &rec.data_owner);
            let out = self.meta.txn(txn).await?;
            if out.succeeded {
                if let Some((_, old)) = &replaced {
                    let mut gone = old.chunk_hashes()?;
                    gone.retain(|h| !hashes.contains(h));
                    self.release(gone);
                }
                tracing::debug!(
                    bucket,
                    key,
                    sort_id = %rec.sort_id,
                    replaced = replaced.as_ref().map(|(_, r)| r.sort_id.as_str()),
                    head = head.as_ref().map(|(_, h)| h.sort_id.as_str()),
                    delete_marker = rec.delete_marker,
                    size = rec.size,
                    attempt,
                    "version committed"
                );
                return Ok(rec);
            }
            // Only a changed bucket record needs a fresh read of it; a cached one is otherwise fine.
            fresh = out.failed_condition == Some(0);
            if if_none_match && out.failed_condition == Some(1) {
                return Err(s3err(
                    S3ErrorCode::PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold",
                ));
            }
            if let Some(i) = out.failed_condition.filter(|i| *i >= fixed)
                && let Some((_, err)) = std::mem::take(&mut extra.conditions).into_iter().nth(i - fixed)
            {
                return Err(err);
            }
            tracing::debug!(attempt, bucket, "version commit raced another writer; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 5)).await;
        }
        Err(ObjectdError::Conflict)
    }

    /// Tells the storage nodes, in the background, that chunks whose references a committed
    /// transaction removed are no longer needed here: a node deletes at once each one that no
    /// reference key names and nobody put within the write window (an overwritten or deleted
    /// object's space comes back without waiting for a pool GC round); the rest wait for pool
    /// GC. The release names a writer of its own, so it vouches for no put.
    pub(crate) fn release(&self, hashes: Vec<ChunkHash>) {
        if hashes.is_empty() {
            return;
        }
        let chunks = self.chunks.clone();
        tokio::spawn(async move {
            let deleted = chunks.release(&hashes, cluster::Writer::new_id(), 0).await;
            tracing::trace!(released = hashes.len(), deleted, "released the chunks of a replaced version");
        });
    }

    /// Whether `key` has no current version, answered by a transaction (so ordered after every
    /// write that entered the metadata log before it), not by a read.
    pub async fn confirm_absent(&self, bucket: &str, key: &str) -> Result<bool> {
        Ok(self.meta.txn(Txn::new().absent(&head_key(bucket, key))).await?.succeeded)
    }

    /// Deletes one stored version (by its entry) with its references; when it was the current
    /// version, the next newest (unless a delete marker) becomes current.
    pub async fn delete_version(&self, bucket: &str, key: &str, target: &KeyValue, rec: &ObjectRecord) -> Result<()> {
        for _ in 0..16 {
            let head = self.head(bucket, key).await?;
            let hk = head_key(bucket, key);
            let mut txn = Txn::new().mod_revision_equals(&target.key, target.mod_revision);
            txn = match &head {
                Some((kv, _)) => txn.mod_revision_equals(&hk, kv.mod_revision),
                None => txn.absent(&hk),
            };
            txn = txn.delete(&target.key);
            txn = remove_refs(txn, &rec.chunk_hashes()?, &rec.data_owner);
            // Which version is newest once this one is gone?
            let newest_other = self.versions_of(bucket, key, 2).await?.into_iter().find(|(kv, _)| kv.key != target.key);
            let is_newest = newest_other.as_ref().is_none_or(|(kv, _)| target.key < kv.key);
            if is_newest {
                match &newest_other {
                    Some((kv, next)) if !next.delete_marker => {
                        txn = txn.mod_revision_equals(&kv.key, kv.mod_revision).put(&hk, &kv.value);
                    }
                    _ => txn = txn.delete(&hk),
                }
            }
            if self.meta.txn(txn).await?.succeeded {
                self.release(rec.chunk_hashes()?);
                tracing::debug!(
                    bucket,
                    key,
                    sort_id = %rec.sort_id,
                    promoted = newest_other.as_ref().filter(|_| is_newest).map(|(_, n)| n.sort_id.as_str()),
                    "version deleted"
                );
                return Ok(());
            }
            if self.meta.get(&target.key).await?.is_none() {
                return Ok(()); // someone else deleted it
            }
        }
        Err(ObjectdError::Conflict)
    }
}
