//! Files' block maps: block index → the chunk holding that block's bytes. Blocks never written
//! (holes) have no entry and read as zeros; no entry exists past the end of a file, and the last
//! block's bytes past the end are zero, so growing a file never uncovers old data. Commits
//! change the map, the chunk references, the size and the usage in one transaction per group of
//! blocks, conditioned on the inode's and the usage's revisions; growth past the quota fails
//! with [`FsError::Quota`].

use chunk_engine::ChunkHash;
use cluster::refs::ref_key;
use metadata_client::{Txn, prefix_end};

use crate::inode::{Kind, Timestamp, corrupt};
use crate::namespace::{Changes, Namespace};
use crate::{FsError, RETRIES, Result, keys};

/// Blocks per transaction (each is a map entry and up to two reference changes).
const GROUP: usize = 60;

impl Namespace {
    /// The chunks of blocks `from..to` of file `ino` that hold data, in index order.
    pub async fn block_map(&self, ino: u64, from: u64, to: u64) -> Result<Vec<(u64, ChunkHash)>> {
        let start = keys::block(&self.fs, ino, from);
        let end = keys::block(&self.fs, ino, to);
        let mut out = Vec::new();
        let mut at = start;
        loop {
            let page = self.meta.range(&at, &end, 1024).await?;
            for kv in &page.kvs {
                let idx = keys::block_index(&kv.key).ok_or_else(|| corrupt(&kv.key, "block key".into()))?;
                let h = ChunkHash::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e.to_string()))?;
                out.push((idx, h));
            }
            match page.next_key {
                Some(k) => at = k,
                None => return Ok(out),
            }
        }
    }

    async fn quota(&self) -> Result<u64> {
        match crate::filesystem::get(&self.meta, &self.fs).await? {
            Some((_, r)) => Ok(r.quota_bytes),
            None => Err(FsError::NoFilesystem(self.fs.clone())),
        }
    }

    /// Commits written blocks of file `ino` (each block's new chunk, `None` for a block that is
    /// now all zeros) and makes the file at least `size_at_least` bytes long, with mtime
    /// `mtime`. The chunks must have been put in the pool within the write window. Returns the
    /// size and the chunks whose references the commit removed (what the blocks held before),
    /// which the writer may release.
    pub async fn commit_blocks(
        &self,
        ino: u64,
        blocks: &[(u64, Option<ChunkHash>)],
        size_at_least: u64,
        mtime: Timestamp,
    ) -> Result<(u64, Vec<ChunkHash>)> {
        let mut size = 0;
        let mut replaced = Vec::new();
        let groups: Vec<&[(u64, Option<ChunkHash>)]> =
            if blocks.is_empty() { vec![&[][..]] } else { blocks.chunks(GROUP).collect() };
        let last = groups.len() - 1;
        for (n, group) in groups.into_iter().enumerate() {
            // Only the last group moves the size: blocks committed before it past the old end
            // stay unread until then.
            let want = if n == last { size_at_least } else { 0 };
            let (s, r) = self.commit_group(ino, group, want, mtime).await?;
            size = s;
            replaced.extend(r);
        }
        Ok((size, replaced))
    }

    async fn commit_group(
        &self,
        ino: u64,
        group: &[(u64, Option<ChunkHash>)],
        size_at_least: u64,
        mtime: Timestamp,
    ) -> Result<(u64, Vec<ChunkHash>)> {
        for _ in 0..RETRIES {
            let (irev, mut inode) = self.inode(ino).await?;
            if inode.kind != Kind::File {
                return Err(FsError::IsDir);
            }
            let old = match (group.first(), group.last()) {
                (Some(a), Some(b)) => self.block_map(ino, a.0.min(b.0), a.0.max(b.0) + 1).await?,
                _ => Vec::new(),
            };
            let mut txn = Txn::new();
            let mut replaced = Vec::new();
            for (idx, new) in group {
                let was = old.iter().find(|(i, _)| i == idx).map(|(_, h)| *h);
                if was == *new {
                    continue;
                }
                let owner = keys::ref_owner(&self.fs, ino, *idx);
                let bkey = keys::block(&self.fs, ino, *idx);
                if let Some(h) = was {
                    txn = txn.delete(&ref_key(&h, &owner));
                    replaced.push(h);
                }
                match new {
                    Some(h) => txn = txn.put(&bkey, &h.0).put(&ref_key(h, &owner), b""),
                    None => txn = txn.delete(&bkey),
                }
            }
            let mut usage = None;
            if size_at_least > inode.size {
                let (urev, mut u) = self.usage_rev().await?;
                let grow = size_at_least - inode.size;
                let quota = self.quota().await?;
                if u.bytes.saturating_add(grow) > quota {
                    return Err(FsError::Quota { quota });
                }
                u.bytes += grow;
                usage = Some((urev, u));
                inode.size = size_at_least;
            }
            if !group.is_empty() || usage.is_some() {
                inode.mtime = inode.mtime.max(mtime);
                inode.ctime = inode.ctime.max(mtime);
            }
            let size = inode.size;
            let mut changes = Changes::default();
            changes.inodes.insert(ino, (irev, inode));
            if self.commit(self.finish(txn, &changes, usage)).await?.succeeded {
                return Ok((size, replaced));
            }
        }
        Err(FsError::Contended(format!("block commit of {ino}")))
    }

    /// Sets file `ino`'s size. Blocks past the new end are dropped first; `tail` is the new
    /// chunk of the block the new end falls in (its bytes past the end zeroed), when the end
    /// is not on a block boundary and the block holds data. Returns the chunks whose references
    /// went (the dropped blocks' and the tail's old one).
    pub async fn truncate(
        &self,
        ino: u64,
        size: u64,
        tail: Option<(u64, Option<ChunkHash>)>,
    ) -> Result<Vec<ChunkHash>> {
        let keep = size.div_ceil(self.block_size);
        let (_, inode) = self.inode(ino).await?;
        if inode.kind != Kind::File {
            return Err(if inode.kind == Kind::Dir { FsError::IsDir } else { FsError::Invalid("not a file".into()) });
        }
        let mut replaced = Vec::new();
        if size < inode.size {
            replaced = drop_blocks_from(self, ino, keep).await?;
        }
        for _ in 0..RETRIES {
            let (irev, mut inode) = self.inode(ino).await?;
            let mut txn = Txn::new();
            let mut tail_was = None;
            if let Some((idx, new)) = tail {
                let was = self.block_map(ino, idx, idx + 1).await?.first().map(|(_, h)| *h);
                if was != new {
                    let owner = keys::ref_owner(&self.fs, ino, idx);
                    let bkey = keys::block(&self.fs, ino, idx);
                    if let Some(h) = was {
                        txn = txn.delete(&ref_key(&h, &owner));
                        tail_was = Some(h);
                    }
                    match new {
                        Some(h) => txn = txn.put(&bkey, &h.0).put(&ref_key(&h, &owner), b""),
                        None => txn = txn.delete(&bkey),
                    }
                }
            }
            let (urev, mut u) = self.usage_rev().await?;
            if size > inode.size {
                let quota = self.quota().await?;
                if u.bytes.saturating_add(size - inode.size) > quota {
                    return Err(FsError::Quota { quota });
                }
                u.bytes += size - inode.size;
            } else {
                u.bytes = u.bytes.saturating_sub(inode.size - size);
            }
            let now = Timestamp::now();
            inode.size = size;
            inode.mtime = now;
            inode.ctime = now;
            let mut changes = Changes::default();
            changes.inodes.insert(ino, (irev, inode));
            if self.commit(self.finish(txn, &changes, Some((urev, u)))).await?.succeeded {
                replaced.extend(tail_was);
                return Ok(replaced);
            }
        }
        Err(FsError::Contended(format!("truncate of {ino}")))
    }
}

/// Drops blocks `from..` of file `ino` and their references; returns the chunks they held.
pub(crate) async fn drop_blocks_from(ns: &Namespace, ino: u64, from: u64) -> Result<Vec<ChunkHash>> {
    let start = keys::block(&ns.fs, ino, from);
    let end = prefix_end(&keys::blocks(&ns.fs, ino));
    let mut dropped = Vec::new();
    loop {
        let page = ns.meta.range(&start, &end, 100).await?;
        if page.kvs.is_empty() {
            return Ok(dropped);
        }
        let mut txn = Txn::new();
        let mut these = Vec::new();
        for kv in &page.kvs {
            txn = txn.delete(&kv.key);
            if let (Some(idx), Ok(h)) = (keys::block_index(&kv.key), ChunkHash::from_slice(&kv.value)) {
                txn = txn.delete(&ref_key(&h, &keys::ref_owner(&ns.fs, ino, idx)));
                these.push(h);
            }
        }
        ns.commit(txn).await?;
        dropped.extend(these);
    }
}
