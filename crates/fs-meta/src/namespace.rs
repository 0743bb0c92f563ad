//! One filesystem's namespace as a client sees it: lookups, creation of every kind of inode,
//! hard links, unlink, rmdir, rename (atomic, across directories, replacing, exchanging),
//! attributes, extended attributes, statfs. Each change reads what it depends on, then commits
//! one transaction conditioned on those keys' revisions; a lost race is re-read and retried.
//! Atime policy: `noatime` — reads never write the access time; it is set at creation and by
//! explicit `utimes`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chunk_engine::ChunkHash;
use futures::StreamExt;
use metadata_client::{MetaClient, Txn, TxnOutcome, prefix_end};

use crate::cache::MetaCache;

use crate::filesystem::{FsRecord, RECORD_VERSION, Usage};
use crate::inode::{Dentry, Inode, Kind, Timestamp, corrupt};
use crate::{FsError, NAME_MAX, RETRIES, ROOT_INO, Result, keys};

/// Inode numbers a client reserves at a time.
const INO_BATCH: u64 = 1024;
/// Most links one inode may have.
const LINK_MAX: u32 = 65_000;

/// Flags of [`Namespace::rename`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` when the target exists.
    pub noreplace: bool,
    /// Swap source and target (both must exist).
    pub exchange: bool,
}

/// Attribute changes of [`Namespace::setattr`] (size changes go through `blocks::truncate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttrs {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// What a new inode is made of.
#[derive(Debug, Clone)]
pub struct NewInode {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Option<Vec<u8>>,
}

/// An unlinked inode whose last name went: its data is freed by [`Namespace::purge`] once no
/// handle of this client has it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unlinked {
    pub ino: u64,
}

/// Inodes read and changed within one operation, committed together.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) inodes: BTreeMap<u64, (u64, Inode)>,
}

/// One filesystem's namespace; cheap to share behind an `Arc`.
pub struct Namespace {
    pub(crate) meta: MetaClient,
    pub(crate) fs: String,
    pub(crate) block_size: u64,
    inos: Mutex<(u64, u64)>,
    cache: MetaCache,
    /// Inodes made minus inodes freed by this client, not yet added to the usage record
    /// (inodes are counted, not limited: [`Self::flush_usage`] adds them every second).
    pending_inodes: AtomicI64,
}

pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid(format!("file name {:?}", String::from_utf8_lossy(name))));
    }
    Ok(())
}

impl Namespace {
    /// Opens filesystem `fs` (which must exist and not be being deleted).
    pub async fn open(meta: MetaClient, fs: &str) -> Result<Namespace> {
        let Some((_, rec)) = crate::filesystem::get(&meta, fs).await? else {
            return Err(FsError::NoFilesystem(fs.to_string()));
        };
        if rec.deleting {
            return Err(FsError::NoFilesystem(fs.to_string()));
        }
        Ok(Namespace {
            meta,
            fs: fs.to_string(),
            block_size: u64::from(rec.block_size),
            inos: Mutex::new((0, 0)),
            cache: MetaCache::default(),
            pending_inodes: AtomicI64::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.fs
    }

    /// Bytes per file block (one chunk).
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    /// The filesystem's record (quota) and usage.
    pub async fn statfs(&self) -> Result<(FsRecord, Usage)> {
        let Some((_, rec)) = crate::filesystem::get(&self.meta, &self.fs).await? else {
            return Err(FsError::NoFilesystem(self.fs.clone()));
        };
        let mut usage = crate::filesystem::usage(&self.meta, &self.fs).await?;
        usage.inodes = usage.inodes.saturating_add_signed(self.pending_inodes.load(Ordering::Relaxed));
        Ok((rec, usage))
    }

    /// Runs a transaction; the keys it names leave this client's cache (changed, or found
    /// changed by someone else).
    pub(crate) async fn commit(&self, txn: Txn) -> Result<TxnOutcome> {
        let keys: Vec<Vec<u8>> = txn.keys().map(<[u8]>::to_vec).collect();
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            txn.writes().into_iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
        let ticket = self.cache.ticket();
        let out = match self.meta.txn(txn).await {
            // The leader went away with the transaction in flight: read back what it wrote.
            Err(metadata_client::MetaClientError::Indeterminate(why)) => self.settle(&writes, &why).await,
            other => other,
        };
        self.cache.forget(keys.iter().map(Vec::as_slice));
        if !out.as_ref().is_ok_and(|o| o.succeeded) {
            self.cache.unsure(keys.iter().map(Vec::as_slice));
        }
        // What this client wrote (or deleted) is known at the transaction's revision: keep it,
        // so the next operation on the same directory or inode needs no read (the watch drops
        // it as soon as anyone changes it again).
        if let Ok(o) = &out
            && o.succeeded
        {
            for (k, v) in &writes {
                self.cache.insert(ticket, k, o.revision, v.as_deref());
            }
        }
        Ok(out?)
    }

    /// The outcome of a transaction whose answer was lost: applied when every key it writes holds
    /// what it wrote (values here carry inode numbers and timestamps, so another writer's equal
    /// value is not a practical worry) and every key it deletes is gone; otherwise reported as
    /// not applied (no failed condition named), so the operation reads again and retries. A
    /// transaction that writes nothing is reported not applied.
    async fn settle(
        &self,
        writes: &[(Vec<u8>, Option<Vec<u8>>)],
        why: &str,
    ) -> std::result::Result<TxnOutcome, metadata_client::MetaClientError> {
        let mut revision = 0;
        let mut applied = !writes.is_empty();
        for (k, v) in writes {
            let now = self.meta.get(k).await?;
            match (now, v) {
                (Some(kv), Some(v)) if kv.value == *v => revision = revision.max(kv.mod_revision),
                (None, None) => {}
                _ => {
                    applied = false;
                    break;
                }
            }
        }
        tracing::info!(applied, reason = why, "a transaction's answer was lost; settled by reading back its keys");
        Ok(TxnOutcome { succeeded: applied, failed_condition: None, revision })
    }

    /// A key's value and mod revision (or its absence), from the cache when the watch vouches
    /// for it.
    async fn cached_get(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        if let Some((rev, hit)) = self.cache.get(key) {
            return Ok(hit.map(|v| (rev, v)));
        }
        let ticket = self.cache.ticket();
        match self.meta.get_at(key).await? {
            (Some(kv), _) => {
                self.cache.insert(ticket, key, kv.mod_revision, Some(&kv.value));
                Ok(Some((kv.mod_revision, kv.value)))
            }
            (None, seen) => {
                self.cache.insert(ticket, key, seen, None);
                Ok(None)
            }
        }
    }

    /// Keeps the cache true by following the filesystem's changes; runs until dropped. While
    /// the watch is down nothing is cached. `inode_changed` hears of every inode changed (by
    /// anyone), for caches kept beyond this one (the kernel's).
    pub async fn follow(&self, inode_changed: impl Fn(u64)) {
        loop {
            if let Ok(mut events) = self.meta.watch(&keys::ns(&self.fs)).await {
                self.cache.set_watching(true);
                while let Some(Ok(ev)) = events.next().await {
                    if let Some(kv) = ev.kv {
                        self.cache.changed(&kv.key, ev.revision);
                        if let Some(ino) = keys::inode_of(&self.fs, &kv.key) {
                            inode_changed(ino);
                        }
                    }
                }
                self.cache.set_watching(false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Adds this client's inode count changes to the usage record.
    pub async fn flush_usage(&self) -> Result<()> {
        let delta = self.pending_inodes.swap(0, Ordering::Relaxed);
        if delta == 0 {
            return Ok(());
        }
        for _ in 0..RETRIES {
            let (rev, mut u) = self.usage_rev().await?;
            u.inodes = u.inodes.saturating_add_signed(delta);
            let key = keys::usage(&self.fs);
            match self.commit(Txn::new().mod_revision_equals(&key, rev).put(&key, &u.encode())).await {
                Ok(o) if o.succeeded => return Ok(()),
                Ok(_) => continue,
                Err(e) => {
                    self.pending_inodes.fetch_add(delta, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.pending_inodes.fetch_add(delta, Ordering::Relaxed);
        Err(FsError::Contended("usage".into()))
    }

    /// Inode `ino` with its revision.
    pub async fn inode(&self, ino: u64) -> Result<(u64, Inode)> {
        let key = keys::inode(&self.fs, ino);
        match self.cached_get(&key).await? {
            Some((rev, v)) => Ok((rev, Inode::decode(&key, &v)?)),
            None => Err(FsError::NotFound),
        }
    }

    /// Inode `ino` as the metadata service has it now (open: close-to-open consistency).
    pub async fn inode_fresh(&self, ino: u64) -> Result<(u64, Inode)> {
        let key = keys::inode(&self.fs, ino);
        self.cache.forget(std::iter::once(key.as_slice()));
        self.inode(ino).await
    }

    async fn dentry(&self, parent: u64, name: &[u8]) -> Result<Option<(Vec<u8>, Dentry)>> {
        let key = keys::dentry(&self.fs, parent, name);
        match self.cached_get(&key).await? {
            Some((_, v)) => Ok(Some((v.clone(), Dentry::decode(&key, &v)?))),
            None => Ok(None),
        }
    }

    async fn dir_inode(&self, ino: u64) -> Result<(u64, Inode)> {
        let (rev, i) = self.inode(ino).await?;
        if i.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if i.nlink == 0 {
            return Err(FsError::NotFound);
        }
        Ok((rev, i))
    }

    /// The inode `name` in directory `parent` names.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Inode)> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let Some((_, d)) = self.dentry(parent, name).await? else {
            return Err(FsError::NotFound);
        };
        let (_, i) = self.inode(d.ino).await?;
        Ok((d.ino, i))
    }

    /// Every entry of directory `ino` in name order.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<(Vec<u8>, Dentry)>> {
        let prefix = keys::dir(&self.fs, ino);
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        let mut out = Vec::new();
        loop {
            let page = self.meta.range(&from, &end, 1024).await?;
            for kv in &page.kvs {
                out.push((kv.key[prefix.len()..].to_vec(), Dentry::decode(&kv.key, &kv.value)?));
            }
            match page.next_key {
                Some(k) => from = k,
                None => return Ok(out),
            }
        }
    }

    async fn alloc_ino(&self) -> Result<u64> {
        {
            let mut r = self.inos.lock().expect("ino lock");
            if r.0 < r.1 {
                r.0 += 1;
                return Ok(r.0 - 1);
            }
        }
        let key = keys::next_ino(&self.fs);
        for _ in 0..RETRIES {
            let kv = self.meta.get(&key).await?.ok_or_else(|| FsError::NoFilesystem(self.fs.clone()))?;
            let next: u64 = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt(&key, "not a number".into()))?;
            let end = next + INO_BATCH;
            let txn = Txn::new().mod_revision_equals(&key, kv.mod_revision).put(&key, end.to_string().as_bytes());
            if self.commit(txn).await?.succeeded {
                let mut r = self.inos.lock().expect("ino lock");
                *r = (next + 1, end);
                return Ok(next);
            }
        }
        Err(FsError::Contended("inode numbers".into()))
    }

    pub(crate) async fn usage_rev(&self) -> Result<(u64, Usage)> {
        let key = keys::usage(&self.fs);
        let kv = self.meta.get(&key).await?.ok_or_else(|| FsError::NoFilesystem(self.fs.clone()))?;
        Ok((kv.mod_revision, Usage::decode(&key, &kv.value)?))
    }

    /// Adds the usage change and the changed inodes (each conditioned on the revision it was
    /// read at) to `txn`.
    pub(crate) fn finish(&self, mut txn: Txn, changes: &Changes, usage: Option<(u64, Usage)>) -> Txn {
        for (ino, (rev, inode)) in &changes.inodes {
            let key = keys::inode(&self.fs, *ino);
            txn = txn.mod_revision_equals(&key, *rev).put(&key, &inode.encode());
        }
        if let Some((rev, u)) = usage {
            let key = keys::usage(&self.fs);
            txn = txn.mod_revision_equals(&key, rev).put(&key, &Usage { version: RECORD_VERSION, ..u }.encode());
        }
        txn
    }

    /// Creates `name` in `parent` (any kind); `Exists` when the name is taken.
    pub async fn create(&self, parent: u64, name: &[u8], new: NewInode) -> Result<(u64, Inode)> {
        check_name(name)?;
        let ino = self.alloc_ino().await?;
        for _ in 0..RETRIES {
            let (prev, mut p) = self.dir_inode(parent).await?;
            let mut inode = Inode::new(new.kind, new.perm, new.uid, new.gid);
            inode.rdev = new.rdev;
            if let Some(t) = &new.target {
                inode.size = t.len() as u64;
                inode.target = Some(t.clone());
            }
            // setgid directories hand their group (and, to subdirectories, the bit) down.
            if p.perm & libc::S_ISGID != 0 {
                inode.gid = p.gid;
                if new.kind == Kind::Dir {
                    inode.perm |= libc::S_ISGID;
                }
            }
            if new.kind == Kind::Dir {
                inode.parent = parent;
                if p.nlink >= LINK_MAX {
                    return Err(FsError::TooManyLinks);
                }
                p.nlink += 1;
            }
            p.entries += 1;
            p.mtime = inode.ctime;
            p.ctime = inode.ctime;
            let dkey = keys::dentry(&self.fs, parent, name);
            let mut changes = Changes::default();
            changes.inodes.insert(parent, (prev, p));
            let ikey = keys::inode(&self.fs, ino);
            // The entry's absence is the first condition: failing it means the name is taken.
            let txn = Txn::new()
                .absent(&dkey)
                .absent(&ikey)
                .put(&dkey, &Dentry { ino, kind: new.kind }.encode())
                .put(&ikey, &inode.encode());
            let ticket = self.cache.ticket();
            let out = self.commit(self.finish(txn, &changes, None)).await?;
            if out.succeeded {
                self.pending_inodes.fetch_add(1, Ordering::Relaxed);
                if new.kind == Kind::Dir {
                    // Made empty here: a name looked up in it needs no read until the watch
                    // announces a change of it.
                    self.cache.made_empty(ticket, &keys::dir(&self.fs, ino), out.revision);
                }
                return Ok((ino, inode));
            }
            if out.failed_condition == Some(0) {
                return Err(FsError::Exists);
            }
        }
        Err(FsError::Contended(format!("create in directory {parent}")))
    }

    /// A new name `name` in `parent` for inode `ino` (not a directory).
    pub async fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Inode> {
        check_name(name)?;
        for _ in 0..RETRIES {
            let (irev, mut i) = self.inode(ino).await?;
            if i.kind == Kind::Dir {
                return Err(FsError::NotPermitted("hard links to directories".into()));
            }
            if i.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if i.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            let (prev, mut p) = self.dir_inode(parent).await?;
            if self.dentry(parent, name).await?.is_some() {
                return Err(FsError::Exists);
            }
            let now = Timestamp::now();
            i.nlink += 1;
            i.ctime = now;
            p.entries += 1;
            p.mtime = now;
            p.ctime = now;
            let dkey = keys::dentry(&self.fs, parent, name);
            let mut changes = Changes::default();
            changes.inodes.insert(ino, (irev, i.clone()));
            changes.inodes.insert(parent, (prev, p));
            let txn = Txn::new().absent(&dkey).put(&dkey, &Dentry { ino, kind: i.kind }.encode());
            if self.commit(self.finish(txn, &changes, None)).await?.succeeded {
                return Ok(i);
            }
        }
        Err(FsError::Contended(format!("link in directory {parent}")))
    }

    /// Removes the name `name` (not a directory) from `parent`. When it was the inode's last
    /// name, the inode is kept as an orphan and returned: free it with [`Self::purge`] once
    /// nothing has it open.
    pub async fn unlink(
        &self,
        parent: u64,
        name: &[u8],
        is_open: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Option<Unlinked>> {
        for _ in 0..RETRIES {
            let (prev, mut p) = self.dir_inode(parent).await?;
            let Some((dval, d)) = self.dentry(parent, name).await? else {
                return Err(FsError::NotFound);
            };
            if d.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let (irev, mut i) = self.inode(d.ino).await?;
            // Exact: the inode goes (below) only at the revision this was read at.
            let xattrs = i.xattrs;
            let now = Timestamp::now();
            i.nlink = i.nlink.saturating_sub(1);
            i.ctime = now;
            p.entries = p.entries.saturating_sub(1);
            p.mtime = now;
            p.ctime = now;
            let dkey = keys::dentry(&self.fs, parent, name);
            let mut txn = Txn::new().value_equals(&dkey, &dval).delete(&dkey);
            let gone = i.nlink == 0;
            // An inode without data (no blocks, no bytes in the usage) that nothing here has
            // open goes in the same transaction; others become orphans, freed by `purge`.
            let at_once = gone && (i.kind != Kind::File || i.size == 0) && !is_open(d.ino);
            let mut changes = Changes::default();
            if at_once {
                let ikey = keys::inode(&self.fs, d.ino);
                txn = txn.mod_revision_equals(&ikey, irev).delete(&ikey);
            } else {
                if gone {
                    txn = txn.put(&keys::orphan(&self.fs, d.ino), b"");
                }
                changes.inodes.insert(d.ino, (irev, i));
            }
            changes.inodes.insert(parent, (prev, p));
            if self.commit(self.finish(txn, &changes, None)).await?.succeeded {
                if at_once {
                    self.pending_inodes.fetch_sub(1, Ordering::Relaxed);
                    if xattrs {
                        self.delete_xattrs(d.ino).await?;
                    }
                    return Ok(None);
                }
                return Ok(gone.then_some(Unlinked { ino: d.ino }));
            }
        }
        Err(FsError::Contended(format!("unlink in directory {parent}")))
    }

    /// Removes the empty directory `name` from `parent`.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir of .".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        for _ in 0..RETRIES {
            let (prev, mut p) = self.dir_inode(parent).await?;
            let Some((dval, d)) = self.dentry(parent, name).await? else {
                return Err(FsError::NotFound);
            };
            if d.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let (irev, i) = self.inode(d.ino).await?;
            if i.entries > 0 {
                return Err(FsError::NotEmpty);
            }
            let now = Timestamp::now();
            p.entries = p.entries.saturating_sub(1);
            p.nlink = p.nlink.saturating_sub(1);
            p.mtime = now;
            p.ctime = now;
            let dkey = keys::dentry(&self.fs, parent, name);
            let ikey = keys::inode(&self.fs, d.ino);
            let txn =
                Txn::new().value_equals(&dkey, &dval).mod_revision_equals(&ikey, irev).delete(&dkey).delete(&ikey);
            let mut changes = Changes::default();
            changes.inodes.insert(parent, (prev, p));
            if self.commit(self.finish(txn, &changes, None)).await?.succeeded {
                self.pending_inodes.fetch_sub(1, Ordering::Relaxed);
                if i.xattrs {
                    self.delete_xattrs(d.ino).await?;
                }
                return Ok(());
            }
        }
        Err(FsError::Contended(format!("rmdir in directory {parent}")))
    }

    /// Whether directory `dir` is `ancestor` or lies under it.
    async fn is_within(&self, mut dir: u64, ancestor: u64) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.inode(dir).await?.1.parent;
        }
        Err(FsError::Invalid("directory tree deeper than 4096 levels".into()))
    }

    /// Renames `from_parent/from` to `to_parent/to` in one transaction. A replaced file that
    /// lost its last name is returned, as from [`Self::unlink`].
    pub async fn rename(
        &self,
        from_parent: u64,
        from: &[u8],
        to_parent: u64,
        to: &[u8],
        flags: RenameFlags,
    ) -> Result<Option<Unlinked>> {
        check_name(to)?;
        for _ in 0..RETRIES {
            let mut changes = Changes::default();
            let (r1, p1) = self.dir_inode(from_parent).await?;
            changes.inodes.insert(from_parent, (r1, p1));
            if to_parent != from_parent {
                let (r2, p2) = self.dir_inode(to_parent).await?;
                changes.inodes.insert(to_parent, (r2, p2));
            }
            let Some((sval, s)) = self.dentry(from_parent, from).await? else {
                return Err(FsError::NotFound);
            };
            let target = self.dentry(to_parent, to).await?;
            if let Some((_, t)) = &target
                && t.ino == s.ino
            {
                return Ok(None); // the same inode under both names: nothing to do
            }
            if flags.noreplace && target.is_some() {
                return Err(FsError::Exists);
            }
            if flags.exchange && target.is_none() {
                return Err(FsError::NotFound);
            }
            if s.kind == Kind::Dir && to_parent != from_parent && self.is_within(to_parent, s.ino).await? {
                return Err(FsError::Invalid("a directory cannot move under itself".into()));
            }
            if let Some((_, t)) = &target
                && t.kind == Kind::Dir
                && !flags.exchange
                && self.is_within(from_parent, t.ino).await?
            {
                return Err(FsError::NotEmpty);
            }
            let now = Timestamp::now();
            let skey = keys::dentry(&self.fs, from_parent, from);
            let tkey = keys::dentry(&self.fs, to_parent, to);
            let mut txn = Txn::new().value_equals(&skey, &sval);
            let (srev, mut si) = self.inode(s.ino).await?;
            si.ctime = now;
            let mut dropped_dir = false;
            let mut orphaned = None;
            match &target {
                None => {
                    txn = txn.absent(&tkey).delete(&skey).put(&tkey, &s.encode());
                    changes.inodes.get_mut(&from_parent).expect("read").1.entries -= 1;
                    changes.inodes.get_mut(&to_parent).expect("read").1.entries += 1;
                    if s.kind == Kind::Dir && from_parent != to_parent {
                        changes.inodes.get_mut(&from_parent).expect("read").1.nlink -= 1;
                        changes.inodes.get_mut(&to_parent).expect("read").1.nlink += 1;
                        si.parent = to_parent;
                    }
                }
                Some((tval, t)) if flags.exchange => {
                    txn = txn.value_equals(&tkey, tval).put(&skey, &t.encode()).put(&tkey, &s.encode());
                    let (trev, mut ti) = self.inode(t.ino).await?;
                    ti.ctime = now;
                    if from_parent != to_parent {
                        let dirs = i32::from(s.kind == Kind::Dir) - i32::from(t.kind == Kind::Dir);
                        let a = &mut changes.inodes.get_mut(&from_parent).expect("read").1;
                        a.nlink = (a.nlink as i64 - i64::from(dirs)) as u32;
                        let b = &mut changes.inodes.get_mut(&to_parent).expect("read").1;
                        b.nlink = (b.nlink as i64 + i64::from(dirs)) as u32;
                        if s.kind == Kind::Dir {
                            si.parent = to_parent;
                        }
                        if t.kind == Kind::Dir {
                            ti.parent = from_parent;
                        }
                    }
                    changes.inodes.insert(t.ino, (trev, ti));
                }
                Some((tval, t)) => {
                    match (s.kind == Kind::Dir, t.kind == Kind::Dir) {
                        (false, true) => return Err(FsError::IsDir),
                        (true, false) => return Err(FsError::NotDir),
                        _ => {}
                    }
                    let (trev, mut ti) = self.inode(t.ino).await?;
                    txn = txn.value_equals(&tkey, tval).delete(&skey).put(&tkey, &s.encode());
                    changes.inodes.get_mut(&from_parent).expect("read").1.entries -= 1;
                    let tkey_i = keys::inode(&self.fs, t.ino);
                    if t.kind == Kind::Dir {
                        if ti.entries > 0 {
                            return Err(FsError::NotEmpty);
                        }
                        // The replaced directory goes; the moved one takes its place.
                        txn = txn.mod_revision_equals(&tkey_i, trev).delete(&tkey_i);
                        dropped_dir = true;
                        if from_parent != to_parent {
                            changes.inodes.get_mut(&from_parent).expect("read").1.nlink -= 1;
                            si.parent = to_parent;
                        } else {
                            changes.inodes.get_mut(&to_parent).expect("read").1.nlink -= 1;
                        }
                    } else {
                        ti.nlink = ti.nlink.saturating_sub(1);
                        ti.ctime = now;
                        if ti.nlink == 0 {
                            txn = txn.put(&keys::orphan(&self.fs, t.ino), b"");
                            orphaned = Some(Unlinked { ino: t.ino });
                        }
                        changes.inodes.insert(t.ino, (trev, ti));
                    }
                }
            }
            changes.inodes.insert(s.ino, (srev, si));
            for p in [from_parent, to_parent] {
                let i = &mut changes.inodes.get_mut(&p).expect("read").1;
                i.mtime = now;
                i.ctime = now;
            }
            if self.commit(self.finish(txn, &changes, None)).await?.succeeded {
                if dropped_dir {
                    self.pending_inodes.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some((_, t)) = &target
                    && t.kind == Kind::Dir
                    && !flags.exchange
                {
                    self.delete_xattrs(t.ino).await?;
                }
                return Ok(orphaned);
            }
        }
        Err(FsError::Contended("rename".into()))
    }

    /// Changes attributes; ctime becomes now. Changing the owner or group clears set-id bits
    /// (as Linux filesystems do for non-directories).
    pub async fn setattr(&self, ino: u64, set: SetAttrs) -> Result<Inode> {
        for _ in 0..RETRIES {
            let (rev, mut i) = self.inode(ino).await?;
            if let Some(p) = set.perm {
                i.perm = p & 0o7777;
            }
            let owner_changed = set.uid.is_some_and(|u| u != i.uid) || set.gid.is_some_and(|g| g != i.gid);
            if let Some(u) = set.uid {
                i.uid = u;
            }
            if let Some(g) = set.gid {
                i.gid = g;
            }
            if owner_changed && i.kind != Kind::Dir && set.perm.is_none() {
                i.perm &= !(libc::S_ISUID | libc::S_ISGID);
            }
            if let Some(t) = set.atime {
                i.atime = t;
            }
            if let Some(t) = set.mtime {
                i.mtime = t;
            }
            i.ctime = Timestamp::now();
            let mut changes = Changes::default();
            changes.inodes.insert(ino, (rev, i.clone()));
            if self.commit(self.finish(Txn::new(), &changes, None)).await?.succeeded {
                return Ok(i);
            }
        }
        Err(FsError::Contended(format!("setattr of {ino}")))
    }

    /// An extended attribute's value.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        match self.meta.get(&keys::xattr(&self.fs, ino, name)).await? {
            Some(kv) => Ok(kv.value),
            None => {
                self.inode(ino).await?;
                Err(FsError::NoAttr)
            }
        }
    }

    /// Sets an extended attribute (`create`: must not exist; `replace`: must exist).
    pub async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], create: bool, replace: bool) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::Invalid("attribute name length".into()));
        }
        if value.len() > 64 * 1024 {
            return Err(FsError::Invalid("attribute value longer than 64 KiB".into()));
        }
        let (rev, mut i) = self.inode(ino).await?;
        let key = keys::xattr(&self.fs, ino, name);
        let mut txn = Txn::new();
        if create {
            txn = txn.absent(&key);
        }
        if replace {
            txn = txn.exists(&key);
        }
        i.ctime = Timestamp::now();
        i.xattrs = true;
        let ikey = keys::inode(&self.fs, ino);
        txn = txn.mod_revision_equals(&ikey, rev).put(&key, value).put(&ikey, &i.encode());
        let out = self.commit(txn).await?;
        if out.succeeded {
            return Ok(());
        }
        match out.failed_condition {
            Some(0) if create => Err(FsError::Exists),
            Some(0) if replace => Err(FsError::NoAttr),
            _ => Err(FsError::Contended(format!("setxattr of {ino}"))),
        }
    }

    /// The names of inode `ino`'s extended attributes.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        self.inode(ino).await?;
        let prefix = keys::xattrs(&self.fs, ino);
        let page = self.meta.range(&prefix, &prefix_end(&prefix), 4096).await?;
        Ok(page.kvs.iter().map(|kv| kv.key[prefix.len()..].to_vec()).collect())
    }

    /// Removes an extended attribute.
    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let key = keys::xattr(&self.fs, ino, name);
        if self.commit(Txn::new().exists(&key).delete(&key)).await?.succeeded {
            Ok(())
        } else {
            self.inode(ino).await?;
            Err(FsError::NoAttr)
        }
    }

    async fn delete_xattrs(&self, ino: u64) -> Result<()> {
        let prefix = keys::xattrs(&self.fs, ino);
        let end = prefix_end(&prefix);
        loop {
            let page = self.meta.range(&prefix, &end, 128).await?;
            if page.kvs.is_empty() {
                return Ok(());
            }
            let mut txn = Txn::new();
            for kv in &page.kvs {
                txn = txn.delete(&kv.key);
            }
            self.commit(txn).await?;
        }
    }

    /// Frees an orphaned inode: its blocks and their references, its attributes, the inode
    /// and its orphan mark, and its bytes and inode from the usage. Returns the chunks the
    /// blocks held (whose references went), which the caller may release.
    pub async fn purge(&self, orphan: Unlinked) -> Result<Vec<ChunkHash>> {
        let ino = orphan.ino;
        let okey = keys::orphan(&self.fs, ino);
        if self.meta.get(&okey).await?.is_none() {
            return Ok(Vec::new()); // already purged, or relinked (never: nlink 0 has no name)
        }
        let dropped = crate::blocks::drop_blocks_from(self, ino, 0).await?;
        self.delete_xattrs(ino).await?;
        for _ in 0..RETRIES {
            let (irev, i) = match self.inode(ino).await {
                Ok(x) => x,
                Err(FsError::NotFound) => {
                    self.meta.delete(&okey).await?;
                    return Ok(dropped);
                }
                Err(e) => return Err(e),
            };
            let (urev, mut u) = self.usage_rev().await?;
            u.bytes = u.bytes.saturating_sub(if i.kind == Kind::File { i.size } else { 0 });
            let ikey = keys::inode(&self.fs, ino);
            let txn = Txn::new().mod_revision_equals(&ikey, irev).delete(&ikey).delete(&okey);
            if self.commit(self.finish(txn, &Changes::default(), Some((urev, u)))).await?.succeeded {
                self.pending_inodes.fetch_sub(1, Ordering::Relaxed);
                return Ok(dropped);
            }
        }
        Err(FsError::Contended(format!("purge of {ino}")))
    }

    /// The orphans of this filesystem (inodes unlinked while open somewhere).
    pub async fn orphans(&self) -> Result<Vec<Unlinked>> {
        let prefix = keys::orphans(&self.fs);
        let page = self.meta.range(&prefix, &prefix_end(&prefix), 4096).await?;
        Ok(page
            .kvs
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(&kv.key[prefix.len()..]).ok().and_then(|s| u64::from_str_radix(s, 16).ok())
            })
            .map(|ino| Unlinked { ino })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name(b"a").is_ok());
        assert!(matches!(check_name(&[b'x'; 256]), Err(FsError::NameTooLong)));
        assert!(check_name(&[b'x'; 255]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(matches!(check_name(bad), Err(FsError::Invalid(_))), "{bad:?}");
        }
    }
}
