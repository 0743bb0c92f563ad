//! The reference index: which owners (an object version, a file, a volume) use which chunks, kept
//! in the metadata service under `cluster/refs/<chunk hex>/<owner>` and changed in the same
//! transaction that changes the owner's own metadata. Pool GC deletes chunks no key names.
//!
//! The contract for writers (see `docs/ARCHITECTURE.md`, "Garbage collection across the pool"):
//! - chunks are put first, then their reference keys are committed within the write window
//!   ([`crate::gc::WRITE_WINDOW`] by default) of the put being acknowledged — otherwise put again;
//! - a reference to a chunk that is not put again (a copy, a clone) is added in a transaction
//!   conditioned on an existing reference key of that chunk still being there.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chunk_engine::ChunkHash;
use metadata_client::{MetaClient, Txn};

use crate::ClusterError;

/// Every reference key starts with this.
pub const REFS_PREFIX: &str = "cluster/refs/";

/// The key recording that `owner` uses `hash`. `owner` must not be empty.
pub fn ref_key(hash: &ChunkHash, owner: &str) -> Vec<u8> {
    format!("{REFS_PREFIX}{hash}/{owner}").into_bytes()
}

/// The key range holding every reference to `hash`.
pub fn refs_of(hash: &ChunkHash) -> (Vec<u8>, Vec<u8>) {
    let start = format!("{REFS_PREFIX}{hash}/").into_bytes();
    let end = crate::nodemap::prefix_end(&start);
    (start, end)
}

/// Adds `owner`'s references to `hashes` to a transaction the caller commits with its own
/// metadata change.
pub fn add_refs(mut txn: Txn, hashes: &[ChunkHash], owner: &str) -> Txn {
    for h in hashes {
        txn = txn.put(&ref_key(h, owner), b"");
    }
    txn
}

/// Removes `owner`'s references to `hashes` from the transaction.
pub fn remove_refs(mut txn: Txn, hashes: &[ChunkHash], owner: &str) -> Txn {
    for h in hashes {
        txn = txn.delete(&ref_key(h, owner));
    }
    txn
}

/// Commits `owner`'s references to chunks put at `put_at` (each within `window` of now), in
/// transactions of at most 128 keys. Chunks put longer ago may already have been collected:
/// the call then fails with [`ClusterError::Stale`] and the caller must put them again.
pub async fn commit_refs(
    meta: &MetaClient,
    owner: &str,
    chunks: &[(ChunkHash, Instant)],
    window: Duration,
) -> Result<(), ClusterError> {
    // Leave room for the commit itself (the client's own deadline is far below this margin).
    let limit = window.saturating_sub(window / 4);
    if let Some((h, at)) = chunks.iter().find(|(_, at)| at.elapsed() >= limit) {
        return Err(ClusterError::Stale(format!(
            "chunk {h} was put {:?} ago, past the write window of {window:?}; put it again",
            at.elapsed()
        )));
    }
    for group in chunks.chunks(128) {
        let hashes: Vec<ChunkHash> = group.iter().map(|c| c.0).collect();
        meta.txn(add_refs(Txn::new(), &hashes, owner)).await?;
    }
    Ok(())
}

/// Which chunks from `first` to `last` (in hash order, both included) have at least one
/// reference key: one ordered scan over their keys, in pages. Pool GC and repair ask this for a
/// page of local chunks at a time.
pub async fn referenced_between(
    meta: &MetaClient,
    first: &ChunkHash,
    last: &ChunkHash,
) -> Result<HashSet<ChunkHash>, ClusterError> {
    let (mut from, _) = refs_of(first);
    let (_, end) = refs_of(last);
    let mut referenced = HashSet::new();
    loop {
        let r = meta.range(&from, &end, 1000).await?;
        for kv in &r.kvs {
            let hash = std::str::from_utf8(&kv.key)
                .ok()
                .and_then(|k| k.strip_prefix(REFS_PREFIX))
                .and_then(|k| k.split('/').next())
                .and_then(|hex| hex.parse::<ChunkHash>().ok());
            if let Some(h) = hash {
                referenced.insert(h);
            }
        }
        match r.next_key {
            Some(k) => from = k,
            None => return Ok(referenced),
        }
    }
}

/// Drops `owner`'s references to `hashes`.
pub async fn drop_refs(meta: &MetaClient, owner: &str, hashes: &[ChunkHash]) -> Result<(), ClusterError> {
    for group in hashes.chunks(128) {
        meta.txn(remove_refs(Txn::new(), group, owner)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_chunk_then_owner() {
        let h = ChunkHash::of(b"x");
        let k = ref_key(&h, "obj/b/k");
        let (start, end) = refs_of(&h);
        assert!(k >= start && k < end);
        let other = ref_key(&ChunkHash::of(b"y"), "o");
        assert!(!(other >= start && other < end));
        assert!(String::from_utf8(k).unwrap().starts_with("cluster/refs/"));
    }
}
