//! The FUSE operations: the namespace calls go to `fs-meta`, file data to [`crate::files`].
//! Permission checks are the kernel's (`default_permissions`); with POSIX ACLs on, the kernel
//! leaves the umask to the filesystem, so creations apply the caller's umask here.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroU32;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{ChunkClient, IoRetry};
use fs_meta::inode::Dentry;
use fs_meta::locks::{LockKind, LockOwner};
use fs_meta::namespace::{NewInode, RenameFlags, SetAttrs, Unlinked};
use fs_meta::{FsError, Inode, Kind, Namespace};
use fuse3::raw::prelude::*;
use fuse3::{Errno, Result as FuseResult};
use futures::stream::{self, Stream};

use crate::attr::{errno, file_attr, file_type, from_fuse_time};
use crate::files::{DataPath, OpenFiles};

/// How long the kernel keeps an entry or attributes without asking. Attributes changed by
/// anyone are dropped from the kernel as the watch announces them, and at every open (so
/// close-to-open holds); an entry another client removed or renamed may resolve here for up to
/// this long (its open then fails: the open re-reads the inode), as with JuiceFS's default entry
/// cache. Without it every path component of every call was one more request (a create cost
/// three lookups; a stat two lookups and a getattr).
const TTL: Duration = Duration::from_secs(1);
const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
const FALLOC_FL_ZERO_RANGE: u32 = 0x10;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
/// How long a quota reading is trusted for refusing writes early.
const QUOTA_FRESH: Duration = Duration::from_millis(500);

/// The quota as last read, and the growth this client made since.
struct QuotaView {
    read_at: Option<Instant>,
    quota: u64,
    used: u64,
}

/// Runs one operation `$call` (a namespace or file-data call, awaited here), retrying it while
/// it fails transiently — the metadata service or storage nodes unreachable — for the mount's
/// I/O timeout; its reply's errno otherwise. Every retried operation either was not applied (a
/// transaction the service refused to take) or is idempotent (file data is kept in memory until
/// its commit succeeds). A macro, not a closure: calls borrow lock guards and arguments.
macro_rules! io {
    ($client:expr, $op:literal, $call:expr) => {{
        let mut attempts = $client.retry.attempts($op);
        loop {
            match $call.await {
                Ok(v) => break Ok(attempts.succeeded(v)),
                Err(e) => {
                    if let Err(e) = attempts.failed(e, FsError::is_transient).await {
                        break Err(errno(e));
                    }
                }
            }
        }
    }};
}

/// A directory's entries as taken at opendir (`.` and `..` first).
type Listing = Vec<(Vec<u8>, Dentry)>;

/// Serves one mounted filesystem; cheap to clone.
#[derive(Clone)]
pub struct Client(Arc<Inner>);

pub struct Inner {
    ns: Namespace,
    /// This mount's id: the holder of its locks.
    client_id: String,
    pool: ChunkClient,
    /// This client as a writer of the pool that releases what its commits replace.
    writer: Arc<crate::writer::PoolWriter>,
    /// Chunks of file blocks read or written recently, shared by every file of the mount.
    cache: cluster::read_cache::ReadCache,
    read_only: bool,
    files: OpenFiles,
    /// Open file handles: handle → inode.
    handles: Mutex<HashMap<u64, u64>>,
    /// Open directory handles: handle → the listing taken at opendir.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    quota: Mutex<QuotaView>,
    /// (inode, kernel lock owner) that took a lock here: a FLUSH by that owner (a close of any
    /// of its descriptors) releases its fcntl locks on the inode, as POSIX says — the kernel
    /// leaves that to a FUSE server that implements locks.
    lockers: Mutex<std::collections::HashSet<(u64, u64)>>,
    /// The mount's channel for telling the kernel to drop cached attributes (set once mounted).
    kernel: std::sync::OnceLock<fuse3::notify::Notify>,
    /// How long an operation that failed transiently is retried before it fails with EIO.
    retry: IoRetry,
}

impl std::ops::Deref for Client {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Client {
    /// A client of `ns` whose operations retry transient failures (see [`FsError::is_transient`])
    /// as `retry` says.
    pub fn new(ns: Namespace, pool: ChunkClient, client_id: &str, read_only: bool, retry: IoRetry) -> Client {
        Client(Arc::new(Inner {
            retry,
            ns,
            client_id: client_id.to_string(),
            pool,
            writer: crate::writer::PoolWriter::new(),
            cache: cluster::read_cache::ReadCache::new(0),
            read_only,
            files: OpenFiles::default(),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            quota: Mutex::new(QuotaView { read_at: None, quota: 0, used: 0 }),
            lockers: Mutex::new(std::collections::HashSet::new()),
            kernel: std::sync::OnceLock::new(),
        }))
    }

    /// The same client with a read cache of `bytes` (before it serves anything).
    pub fn with_read_cache(self, bytes: u64) -> Client {
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => {
                inner.cache = cluster::read_cache::ReadCache::new(bytes);
                Client(Arc::new(inner))
            }
            Err(shared) => Client(shared),
        }
    }

    /// The read cache's hits, misses and contents.
    pub fn read_cache_stats(&self) -> cluster::read_cache::ReadCacheStats {
        self.cache.stats()
    }

    fn dp(&self) -> DataPath<'_> {
        DataPath { ns: &self.ns, pool: &self.pool, writer: &self.writer, cache: &self.cache }
    }

    fn writable(&self) -> FuseResult<()> {
        if self.read_only { Err(libc::EROFS.into()) } else { Ok(()) }
    }

    /// What runs beside the mount: the watch that keeps the metadata cache true, and the
    /// usage record's inode count brought up to date every second.
    pub async fn background(&self) {
        let usage = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = self.ns.flush_usage().await {
                    tracing::warn!(error = %e, "updating the inode count failed; retried");
                }
            }
        };
        // Inodes changed (by anyone) leave the kernel's attribute cache; a burst is sent once
        // per inode.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let follow = self.ns.follow(move |ino| {
            let _ = tx.send(ino);
        });
        let invalidate = async {
            while let Some(first) = rx.recv().await {
                let mut inos = std::collections::HashSet::from([first]);
                while let Ok(ino) = rx.try_recv() {
                    inos.insert(ino);
                }
                for ino in inos {
                    self.forget_attrs(ino).await;
                }
            }
        };
        tokio::join!(follow, usage, invalidate);
    }

    /// The kernel's channel for invalidations, given once the filesystem is mounted.
    pub(crate) fn set_kernel(&self, notify: fuse3::notify::Notify) {
        let _ = self.kernel.set(notify);
    }

    /// Drops inode `ino`'s attributes from the kernel's cache (its next stat or read past the
    /// size it knew asks again). Only attributes: dropping entries or pages waits on kernel
    /// locks that a request in progress may hold.
    async fn forget_attrs(&self, ino: u64) {
        if let Some(k) = self.kernel.get() {
            k.clone().invalid_inode(ino, -1, 0).await;
        }
    }

    /// Commits every open file's writes and the inode count (unmount, shutdown).
    pub async fn flush_all(&self) -> Result<(), FsError> {
        let mut first_err = None;
        for f in self.files.all() {
            if let Err(e) = f.state.lock().await.flush(&self.dp(), f.ino).await {
                tracing::warn!(ino = f.ino, error = %e, "flush at unmount failed");
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.ns.flush_usage().await {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn attr_of(&self, ino: u64, i: &Inode) -> FileAttr {
        let size = match self.files.get(ino) {
            Some(f) if i.kind == Kind::File => Some(f.state.lock().await.size),
            _ => None,
        };
        file_attr(ino, i, size)
    }

    async fn entry(&self, ino: u64, i: &Inode) -> ReplyEntry {
        ReplyEntry { ttl: TTL, attr: self.attr_of(ino, i).await, generation: 0 }
    }

    /// Frees an inode whose last name went, now or when its last local handle closes.
    async fn unlinked(&self, u: Option<Unlinked>) {
        let Some(u) = u else { return };
        if let Some(f) = self.files.get(u.ino) {
            f.unlinked.store(true, Ordering::Relaxed);
            return;
        }
        match self.ns.purge(u).await {
            Ok(freed) => self.writer.release(&self.pool, freed),
            Err(e) => tracing::warn!(ino = u.ino, error = %e, "freeing an unlinked file failed; it stays an orphan"),
        }
    }

    /// Refuses growth past the quota early (the commit checks it again, exactly).
    async fn check_growth(&self, grow: u64) -> FuseResult<()> {
        if grow == 0 {
            return Ok(());
        }
        let stale = self.quota.lock().expect("quota lock").read_at.is_none_or(|t| t.elapsed() > QUOTA_FRESH);
        if stale {
            let (rec, usage) = io!(self, "statfs", self.ns.statfs())?;
            let mut q = self.quota.lock().expect("quota lock");
            *q = QuotaView { read_at: Some(Instant::now()), quota: rec.quota_bytes, used: usage.bytes };
        }
        let mut q = self.quota.lock().expect("quota lock");
        if q.used.saturating_add(grow) > q.quota {
            return Err(libc::EDQUOT.into());
        }
        q.used += grow;
        Ok(())
    }

    fn owner(&self, lock_owner: u64) -> LockOwner {
        LockOwner { client: self.client_id.clone(), owner: lock_owner }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    async fn open_file(&self, ino: u64, i: &Inode) -> u64 {
        let f = self.files.open(ino, i.size);
        f.state.lock().await.revalidate(i.size);
        let fh = self.new_fh();
        self.handles.lock().expect("handles lock").insert(fh, ino);
        fh
    }

    async fn make(&self, parent: u64, name: &OsStr, new: NewInode) -> FuseResult<(u64, Inode)> {
        self.writable()?;
        io!(self, "create", self.ns.create(parent, name.as_bytes(), new.clone()))
    }
}

impl Filesystem for Client {
    async fn init(&self, _req: Request) -> FuseResult<ReplyInit> {
        Ok(ReplyInit { max_write: NonZeroU32::new(1 << 20).expect("non-zero") })
    }

    async fn destroy(&self, _req: Request) {
        let _ = self.flush_all().await;
    }

    async fn lookup(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<ReplyEntry> {
        let (ino, i) = io!(self, "lookup", self.ns.lookup(parent, name.as_bytes()))?;
        Ok(self.entry(ino, &i).await)
    }

    async fn getattr(&self, _req: Request, inode: u64, _fh: Option<u64>, _flags: u32) -> FuseResult<ReplyAttr> {
        let (_, i) = io!(self, "inode", self.ns.inode(inode))?;
        Ok(ReplyAttr { ttl: TTL, attr: self.attr_of(inode, &i).await })
    }

    async fn setattr(&self, _req: Request, inode: u64, _fh: Option<u64>, set: SetAttr) -> FuseResult<ReplyAttr> {
        self.writable()?;
        if let Some(size) = set.size {
            let (_, i) = io!(self, "inode", self.ns.inode(inode))?;
            if i.kind != Kind::File {
                return Err(if i.kind == Kind::Dir { libc::EISDIR } else { libc::EINVAL }.into());
            }
            let f = self.files.open(inode, i.size);
            let r = async {
                let mut st = f.state.lock().await;
                if size > st.size {
                    self.check_growth(size - st.size).await?;
                }
                io!(self, "truncate", st.truncate(&self.dp(), inode, size))
            }
            .await;
            self.files.close(inode);
            r?;
        }
        let attrs = SetAttrs {
            perm: set.mode,
            uid: set.uid,
            gid: set.gid,
            atime: set.atime.map(from_fuse_time),
            mtime: set.mtime.map(from_fuse_time),
        };
        let i = if attrs.perm.is_some()
            || attrs.uid.is_some()
            || attrs.gid.is_some()
            || attrs.atime.is_some()
            || attrs.mtime.is_some()
        {
            io!(self, "setattr", self.ns.setattr(inode, attrs))?
        } else {
            io!(self, "inode", self.ns.inode(inode))?.1
        };
        Ok(ReplyAttr { ttl: TTL, attr: self.attr_of(inode, &i).await })
    }

    async fn readlink(&self, _req: Request, inode: u64) -> FuseResult<ReplyData> {
        let (_, i) = io!(self, "inode", self.ns.inode(inode))?;
        match i.target {
            Some(t) if i.kind == Kind::Symlink => Ok(ReplyData { data: Bytes::from(t) }),
            _ => Err(libc::EINVAL.into()),
        }
    }

    async fn symlink(&self, req: Request, parent: u64, name: &OsStr, link: &OsStr) -> FuseResult<ReplyEntry> {
        if link.len() > 4095 {
            return Err(libc::ENAMETOOLONG.into());
        }
        let new = NewInode {
            kind: Kind::Symlink,
            perm: 0o777,
            uid: req.uid,
            gid: req.gid,
            rdev: 0,
            target: Some(link.as_bytes().to_vec()),
        };
        let (ino, i) = self.make(parent, name, new).await?;
        Ok(self.entry(ino, &i).await)
    }

    async fn mknod(&self, req: Request, parent: u64, name: &OsStr, mode: u32, rdev: u32) -> FuseResult<ReplyEntry> {
        let kind = Kind::from_mode(mode).map_err(errno)?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(libc::EINVAL.into());
        }
        let perm = mode & 0o7777; // the kernel took the umask off (no FUSE_DONT_MASK)
        let new = NewInode { kind, perm, uid: req.uid, gid: req.gid, rdev, target: None };
        let (ino, i) = self.make(parent, name, new).await?;
        Ok(self.entry(ino, &i).await)
    }

    async fn mkdir(&self, req: Request, parent: u64, name: &OsStr, mode: u32, umask: u32) -> FuseResult<ReplyEntry> {
        let new = NewInode {
            kind: Kind::Dir,
            perm: mode & 0o7777 & !umask,
            uid: req.uid,
            gid: req.gid,
            rdev: 0,
            target: None,
        };
        let (ino, i) = self.make(parent, name, new).await?;
        Ok(self.entry(ino, &i).await)
    }

    async fn unlink(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<()> {
        self.writable()?;
        let open = |ino: u64| self.files.get(ino).is_some();
        let u = io!(self, "unlink", self.ns.unlink(parent, name.as_bytes(), &open))?;
        self.unlinked(u).await;
        Ok(())
    }

    async fn rmdir(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<()> {
        self.writable()?;
        io!(self, "rmdir", self.ns.rmdir(parent, name.as_bytes()))
    }

    async fn rename(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FuseResult<()> {
        self.rename2(req, parent, name, new_parent, new_name, 0).await
    }

    async fn rename2(
        &self,
        _req: Request,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FuseResult<()> {
        self.writable()?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == (RENAME_NOREPLACE | RENAME_EXCHANGE)
        {
            return Err(libc::EINVAL.into());
        }
        let f = RenameFlags { noreplace: flags & RENAME_NOREPLACE != 0, exchange: flags & RENAME_EXCHANGE != 0 };
        let u = io!(self, "rename", self.ns.rename(parent, name.as_bytes(), new_parent, new_name.as_bytes(), f))?;
        self.unlinked(u).await;
        Ok(())
    }

    async fn link(&self, _req: Request, inode: u64, new_parent: u64, new_name: &OsStr) -> FuseResult<ReplyEntry> {
        self.writable()?;
        let i = io!(self, "link", self.ns.link(inode, new_parent, new_name.as_bytes()))?;
        Ok(self.entry(inode, &i).await)
    }

    async fn open(&self, _req: Request, inode: u64, flags: u32) -> FuseResult<ReplyOpen> {
        // Close-to-open: what other clients committed before this open is seen.
        let (_, i) = io!(self, "inode_fresh", self.ns.inode_fresh(inode))?;
        if i.kind == Kind::Dir {
            return Err(libc::EISDIR.into());
        }
        // ... and the kernel forgets the attributes it holds (the size above all), so a stat or
        // a read past its old size asks again: the watch may not have told it yet.
        self.forget_attrs(inode).await;
        let acc = flags as i32 & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            self.writable()?;
        }
        let fh = self.open_file(inode, &i).await;
        if flags as i32 & libc::O_TRUNC != 0 && acc != libc::O_RDONLY && i.size > 0 {
            let f = self.files.get(inode).ok_or_else(|| Errno::from(libc::EIO))?;
            io!(self, "truncate", f.state.lock().await.truncate(&self.dp(), inode, 0))?;
        }
        Ok(ReplyOpen { fh, flags: 0 })
    }

    async fn create(&self, req: Request, parent: u64, name: &OsStr, mode: u32, flags: u32) -> FuseResult<ReplyCreated> {
        let perm = mode & 0o7777; // the kernel took the umask off (no FUSE_DONT_MASK)
        let new = NewInode { kind: Kind::File, perm, uid: req.uid, gid: req.gid, rdev: 0, target: None };
        let (ino, i) = self.make(parent, name, new).await?;
        let fh = self.open_file(ino, &i).await;
        let _ = flags;
        Ok(ReplyCreated { ttl: TTL, attr: self.attr_of(ino, &i).await, generation: 0, fh, flags: 0 })
    }

    async fn read(&self, _req: Request, inode: u64, _fh: u64, offset: u64, size: u32) -> FuseResult<ReplyData> {
        let f = self.files.get(inode).ok_or_else(|| Errno::from(libc::EBADF))?;
        let data = io!(self, "read", f.state.lock().await.read(&self.dp(), inode, offset, u64::from(size)))?;
        Ok(ReplyData { data })
    }

    async fn write(
        &self,
        _req: Request,
        inode: u64,
        _fh: u64,
        offset: u64,
        data: &[u8],
        _write_flags: u32,
        _flags: u32,
    ) -> FuseResult<ReplyWrite> {
        self.writable()?;
        let f = self.files.get(inode).ok_or_else(|| Errno::from(libc::EBADF))?;
        let mut st = f.state.lock().await;
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| Errno::from(libc::EFBIG))?;
        if end > st.size {
            self.check_growth(end - st.size).await?;
        }
        io!(self, "write", st.write(&self.dp(), inode, offset, data))?;
        Ok(ReplyWrite { written: data.len() as u32 })
    }

    async fn statfs(&self, _req: Request, _inode: u64) -> FuseResult<ReplyStatFs> {
        let (rec, usage) = io!(self, "statfs", self.ns.statfs())?;
        const BSIZE: u64 = 4096;
        let blocks = rec.quota_bytes / BSIZE;
        let used = usage.bytes.div_ceil(BSIZE);
        let free = blocks.saturating_sub(used);
        // Inodes are not limited: report a large pool of which the used ones are taken.
        let files = (1u64 << 32).max(usage.inodes * 2);
        Ok(ReplyStatFs {
            blocks,
            bfree: free,
            bavail: free,
            files,
            ffree: files - usage.inodes,
            bsize: BSIZE as u32,
            namelen: fs_meta::NAME_MAX as u32,
            frsize: BSIZE as u32,
        })
    }

    async fn flush(&self, _req: Request, inode: u64, _fh: u64, lock_owner: u64) -> FuseResult<()> {
        if self.lockers.lock().expect("lockers lock").remove(&(inode, lock_owner)) {
            io!(self, "release_locks", self.ns.release_locks(inode, &self.owner(lock_owner)))?;
        }
        if let Some(f) = self.files.get(inode) {
            io!(self, "flush", f.state.lock().await.flush(&self.dp(), inode))?;
        }
        Ok(())
    }

    async fn release(
        &self,
        _req: Request,
        inode: u64,
        fh: u64,
        _flags: u32,
        lock_owner: u64,
        _flush: bool,
    ) -> FuseResult<()> {
        self.handles.lock().expect("handles lock").remove(&fh);
        // flock locks go with the open file (the kernel names their owner here).
        if lock_owner != 0
            && let Err(e) = self.ns.release_locks(inode, &self.owner(lock_owner)).await
        {
            tracing::warn!(ino = inode, error = %e, "releasing locks at close failed");
        }
        let flushed = match self.files.get(inode) {
            Some(f) => io!(self, "flush", f.state.lock().await.flush(&self.dp(), inode)),
            None => Ok(()),
        };
        if let Some(last) = self.files.close(inode)
            && last.is_unlinked()
        {
            self.unlinked(Some(Unlinked { ino: inode })).await;
        }
        flushed
    }

    async fn fsync(&self, _req: Request, inode: u64, _fh: u64, _datasync: bool) -> FuseResult<()> {
        if let Some(f) = self.files.get(inode) {
            io!(self, "flush", f.state.lock().await.flush(&self.dp(), inode))?;
        }
        Ok(())
    }

    async fn setxattr(
        &self,
        _req: Request,
        inode: u64,
        name: &OsStr,
        value: &[u8],
        flags: u32,
        _position: u32,
    ) -> FuseResult<()> {
        self.writable()?;
        let (create, replace) = (flags & XATTR_CREATE != 0, flags & XATTR_REPLACE != 0);
        io!(self, "setxattr", self.ns.setxattr(inode, name.as_bytes(), value, create, replace))
    }

    async fn getxattr(&self, _req: Request, inode: u64, name: &OsStr, size: u32) -> FuseResult<ReplyXAttr> {
        let v = io!(self, "getxattr", self.ns.getxattr(inode, name.as_bytes()))?;
        xattr_reply(v, size)
    }

    async fn listxattr(&self, _req: Request, inode: u64, size: u32) -> FuseResult<ReplyXAttr> {
        let mut all = Vec::new();
        for n in io!(self, "listxattr", self.ns.listxattr(inode))? {
            all.extend_from_slice(&n);
            all.push(0);
        }
        xattr_reply(all, size)
    }

    async fn removexattr(&self, _req: Request, inode: u64, name: &OsStr) -> FuseResult<()> {
        self.writable()?;
        io!(self, "removexattr", self.ns.removexattr(inode, name.as_bytes()))
    }

    async fn opendir(&self, _req: Request, inode: u64, _flags: u32) -> FuseResult<ReplyOpen> {
        let (_, i) = io!(self, "inode", self.ns.inode(inode))?;
        if i.kind != Kind::Dir {
            return Err(libc::ENOTDIR.into());
        }
        let mut list = vec![(b".".to_vec(), Dentry { ino: inode, kind: Kind::Dir })];
        list.push((b"..".to_vec(), Dentry { ino: if i.parent == 0 { inode } else { i.parent }, kind: Kind::Dir }));
        list.extend(io!(self, "readdir", self.ns.readdir(inode))?);
        let fh = self.new_fh();
        self.dirs.lock().expect("dirs lock").insert(fh, Arc::new(list));
        Ok(ReplyOpen { fh, flags: 0 })
    }

    async fn readdir<'a>(
        &'a self,
        _req: Request,
        _parent: u64,
        fh: u64,
        offset: i64,
    ) -> FuseResult<ReplyDirectory<impl Stream<Item = FuseResult<DirectoryEntry>> + Send + 'a>> {
        let list = self.dirs.lock().expect("dirs lock").get(&fh).cloned().ok_or_else(|| Errno::from(libc::EBADF))?;
        let entries: Vec<FuseResult<DirectoryEntry>> = list
            .iter()
            .enumerate()
            .skip(offset.max(0) as usize)
            .map(|(n, (name, d))| {
                Ok(DirectoryEntry {
                    inode: d.ino,
                    kind: file_type(d.kind),
                    name: OsString::from_vec(name.clone()),
                    offset: n as i64 + 1,
                })
            })
            .collect();
        Ok(ReplyDirectory { entries: stream::iter(entries) })
    }

    async fn readdirplus<'a>(
        &'a self,
        _req: Request,
        _parent: u64,
        fh: u64,
        offset: u64,
        _lock_owner: u64,
    ) -> FuseResult<ReplyDirectoryPlus<impl Stream<Item = FuseResult<DirectoryEntryPlus>> + Send + 'a>> {
        let list = self.dirs.lock().expect("dirs lock").get(&fh).cloned().ok_or_else(|| Errno::from(libc::EBADF))?;
        let mut entries = Vec::new();
        for (n, (name, d)) in list.iter().enumerate().skip(offset as usize) {
            let i = match self.ns.inode(d.ino).await {
                Ok((_, i)) => i,
                Err(FsError::NotFound) => continue, // removed since the listing was taken
                Err(e) => return Err(errno(e)),
            };
            entries.push(Ok(DirectoryEntryPlus {
                inode: d.ino,
                generation: 0,
                kind: file_type(d.kind),
                name: OsString::from_vec(name.clone()),
                offset: n as i64 + 1,
                attr: self.attr_of(d.ino, &i).await,
                entry_ttl: TTL,
                attr_ttl: TTL,
            }));
        }
        Ok(ReplyDirectoryPlus { entries: stream::iter(entries) })
    }

    async fn releasedir(&self, _req: Request, _inode: u64, fh: u64, _flags: u32) -> FuseResult<()> {
        self.dirs.lock().expect("dirs lock").remove(&fh);
        Ok(())
    }

    async fn fsyncdir(&self, _req: Request, _inode: u64, _fh: u64, _datasync: bool) -> FuseResult<()> {
        Ok(()) // every namespace change is durable when its call returns
    }

    async fn access(&self, _req: Request, _inode: u64, _mask: u32) -> FuseResult<()> {
        Ok(()) // the kernel checks permissions (default_permissions)
    }

    #[allow(clippy::too_many_arguments)]
    async fn getlk(
        &self,
        _req: Request,
        inode: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
    ) -> FuseResult<ReplyLock> {
        let kind = if r#type as i32 == libc::F_RDLCK { LockKind::Read } else { LockKind::Write };
        match io!(self, "test_lock", self.ns.test_lock(inode, &self.owner(lock_owner), start, end, kind))? {
            Some(r) => Ok(ReplyLock { start: r.start, end: r.end, r#type: lock_type(r.kind), pid: r.pid }),
            None => Ok(ReplyLock { start, end, r#type: libc::F_UNLCK as u32, pid }),
        }
    }

    /// Takes or releases an fcntl or flock lock; a blocking request polls until the holder
    /// lets go (100 ms apart; locks of a crashed client expire with its heartbeat).
    #[allow(clippy::too_many_arguments)]
    async fn setlk(
        &self,
        _req: Request,
        inode: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
        block: bool,
    ) -> FuseResult<()> {
        let mut wait = Duration::from_millis(10);
        loop {
            match self.lock_call(inode, lock_owner, start, end, r#type, pid).await? {
                None => return Ok(()),
                Some(_) if !block => return Err(libc::EAGAIN.into()),
                Some(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    async fn interrupt(&self, _req: Request, _unique: u64) -> FuseResult<()> {
        Ok(())
    }

    async fn fallocate(
        &self,
        _req: Request,
        inode: u64,
        _fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> FuseResult<()> {
        self.writable()?;
        let f = self.files.get(inode).ok_or_else(|| Errno::from(libc::EBADF))?;
        let mut st = f.state.lock().await;
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
            if mode & FALLOC_FL_PUNCH_HOLE != 0 && mode & FALLOC_FL_KEEP_SIZE == 0 {
                return Err(libc::EINVAL.into());
            }
            io!(self, "zero_range", st.zero_range(&self.dp(), inode, offset, length))?;
            let end = offset + length;
            if mode & FALLOC_FL_KEEP_SIZE == 0 && end > st.size {
                self.check_growth(end - st.size).await?;
                io!(self, "truncate", st.truncate(&self.dp(), inode, end))?;
            }
            return Ok(());
        }
        if mode & !FALLOC_FL_KEEP_SIZE != 0 {
            return Err(libc::EOPNOTSUPP.into());
        }
        // Space is taken on write (thin); only the size changes, within the quota.
        let end = offset.checked_add(length).ok_or_else(|| Errno::from(libc::EFBIG))?;
        if mode & FALLOC_FL_KEEP_SIZE == 0 && end > st.size {
            self.check_growth(end - st.size).await?;
            io!(self, "truncate", st.truncate(&self.dp(), inode, end))?;
        }
        Ok(())
    }
}

impl Client {
    async fn lock_call(
        &self,
        inode: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
    ) -> FuseResult<Option<fs_meta::locks::LockRange>> {
        let kind = match r#type as i32 {
            libc::F_RDLCK => Some(LockKind::Read),
            libc::F_WRLCK => Some(LockKind::Write),
            libc::F_UNLCK => None,
            _ => return Err(libc::EINVAL.into()),
        };
        let held = io!(self, "set_lock", self.ns.set_lock(inode, &self.owner(lock_owner), start, end, kind, pid))?;
        if kind.is_some() && held.is_none() {
            self.lockers.lock().expect("lockers lock").insert((inode, lock_owner));
        }
        Ok(held)
    }
}

fn lock_type(k: LockKind) -> u32 {
    (match k {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }) as u32
}

fn xattr_reply(v: Vec<u8>, size: u32) -> FuseResult<ReplyXAttr> {
    if size == 0 {
        return Ok(ReplyXAttr::Size(v.len() as u32));
    }
    if v.len() > size as usize {
        return Err(libc::ERANGE.into());
    }
    Ok(ReplyXAttr::Data(Bytes::from(v)))
}
