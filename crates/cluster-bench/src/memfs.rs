//! A file system held in memory, served over FUSE with the shared filesystem client's mount
//! options and TTLs (fuse3, every request its own task, `max_background` 128, entries and
//! attributes cached by the kernel for a second): fs-bench's measure of what FUSE alone
//! reaches on this machine, the ceiling for any file system behind it. Files, directories, reads, writes, truncation; no
//! links, locks or xattrs.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuse3::raw::prelude::*;
use fuse3::raw::{MountHandle, Session};
use fuse3::{Errno, MountOptions, Result as FuseResult};
use futures::stream::{self, Stream};

const ROOT: u64 = 1;
/// As the shared filesystem client: the kernel keeps entries and attributes for a second.
const TTL: Duration = Duration::from_secs(1);
/// As the shared filesystem client.
const MAX_BACKGROUND: u16 = 128;

struct Node {
    kind: FileType,
    perm: u16,
    uid: u32,
    gid: u32,
    parent: u64,
    data: Vec<u8>,
    entries: BTreeMap<OsString, u64>,
    mtime: SystemTime,
}

/// The file system: every node under one lock (its critical sections are map operations and
/// copies).
pub struct MemFs {
    nodes: Mutex<(u64, HashMap<u64, Node>)>,
}

impl Default for MemFs {
    fn default() -> Self {
        let root = Node {
            kind: FileType::Directory,
            perm: 0o777,
            uid: 0,
            gid: 0,
            parent: ROOT,
            data: Vec::new(),
            entries: BTreeMap::new(),
            mtime: SystemTime::now(),
        };
        MemFs { nodes: Mutex::new((ROOT + 1, HashMap::from([(ROOT, root)]))) }
    }
}

/// Mounts an empty [`MemFs`] at `at` (created if missing).
pub async fn mount(at: &Path) -> std::io::Result<MountHandle> {
    std::fs::create_dir_all(at)?;
    let mut mo = MountOptions::default();
    mo.fs_name("cairn-memfs").allow_other(true).default_permissions(true).max_background(MAX_BACKGROUND);
    Session::new(mo).mount(MemFs::default(), at).await
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let t = n.mtime.into();
    FileAttr {
        ino,
        size: n.data.len() as u64,
        blocks: (n.data.len() as u64).div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        kind: n.kind,
        perm: n.perm,
        nlink: if n.kind == FileType::Directory { 2 } else { 1 },
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 1 << 20,
    }
}

fn enoent() -> Errno {
    libc::ENOENT.into()
}

impl MemFs {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Node>)> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn make(&self, req: &Request, parent: u64, name: &OsStr, kind: FileType, mode: u32) -> FuseResult<FileAttr> {
        let mut g = self.lock();
        let (next, nodes) = &mut *g;
        let p = nodes.get_mut(&parent).ok_or_else(enoent)?;
        if p.kind != FileType::Directory {
            return Err(libc::ENOTDIR.into());
        }
        if p.entries.contains_key(name) {
            return Err(libc::EEXIST.into());
        }
        let ino = *next;
        *next += 1;
        p.entries.insert(name.to_os_string(), ino);
        let n = Node {
            kind,
            perm: (mode & 0o7777) as u16,
            uid: req.uid,
            gid: req.gid,
            parent,
            data: Vec::new(),
            entries: BTreeMap::new(),
            mtime: SystemTime::now(),
        };
        let a = attr(ino, &n);
        nodes.insert(ino, n);
        Ok(a)
    }

    /// Directory `dir`'s entries from `skip` on ("." and ".." first): their offsets (of the next
    /// entry), names and attributes.
    fn listing(&self, dir: u64, skip: u64) -> FuseResult<Vec<(i64, OsString, FileAttr)>> {
        let g = self.lock();
        let d = g.1.get(&dir).ok_or_else(enoent)?;
        let parent = g.1.get(&d.parent).ok_or_else(enoent)?;
        let mut all = vec![(OsString::from("."), attr(dir, d)), ("..".into(), attr(d.parent, parent))];
        for (name, ino) in &d.entries {
            if let Some(n) = g.1.get(ino) {
                all.push((name.clone(), attr(*ino, n)));
            }
        }
        Ok(all.into_iter().enumerate().skip(skip as usize).map(|(i, (name, a))| (i as i64 + 1, name, a)).collect())
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> FuseResult<()> {
        let mut g = self.lock();
        let nodes = &mut g.1;
        let ino = *nodes.get(&parent).ok_or_else(enoent)?.entries.get(name).ok_or_else(enoent)?;
        let n = nodes.get(&ino).ok_or_else(enoent)?;
        match (dir, n.kind == FileType::Directory) {
            (true, false) => return Err(libc::ENOTDIR.into()),
            (false, true) => return Err(libc::EISDIR.into()),
            (true, true) if !n.entries.is_empty() => return Err(libc::ENOTEMPTY.into()),
            _ => {}
        }
        nodes.remove(&ino);
        nodes.get_mut(&parent).ok_or_else(enoent)?.entries.remove(name);
        Ok(())
    }
}

impl Filesystem for MemFs {
    async fn init(&self, _req: Request) -> FuseResult<ReplyInit> {
        Ok(ReplyInit { max_write: NonZeroU32::new(1 << 20).expect("non-zero") })
    }

    async fn destroy(&self, _req: Request) {}

    async fn lookup(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<ReplyEntry> {
        let g = self.lock();
        let ino = *g.1.get(&parent).ok_or_else(enoent)?.entries.get(name).ok_or_else(enoent)?;
        let n = g.1.get(&ino).ok_or_else(enoent)?;
        Ok(ReplyEntry { ttl: TTL, attr: attr(ino, n), generation: 0 })
    }

    async fn getattr(&self, _req: Request, inode: u64, _fh: Option<u64>, _flags: u32) -> FuseResult<ReplyAttr> {
        let g = self.lock();
        Ok(ReplyAttr { ttl: TTL, attr: attr(inode, g.1.get(&inode).ok_or_else(enoent)?) })
    }

    async fn setattr(&self, _req: Request, inode: u64, _fh: Option<u64>, set: SetAttr) -> FuseResult<ReplyAttr> {
        let mut g = self.lock();
        let n = g.1.get_mut(&inode).ok_or_else(enoent)?;
        if let Some(size) = set.size {
            n.data.resize(size as usize, 0);
        }
        if let Some(mode) = set.mode {
            n.perm = (mode & 0o7777) as u16;
        }
        n.uid = set.uid.unwrap_or(n.uid);
        n.gid = set.gid.unwrap_or(n.gid);
        n.mtime = SystemTime::now();
        Ok(ReplyAttr { ttl: TTL, attr: attr(inode, n) })
    }

    async fn mkdir(&self, req: Request, parent: u64, name: &OsStr, mode: u32, umask: u32) -> FuseResult<ReplyEntry> {
        let attr = self.make(&req, parent, name, FileType::Directory, mode & !umask)?;
        Ok(ReplyEntry { ttl: TTL, attr, generation: 0 })
    }

    async fn unlink(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<()> {
        self.remove(parent, name, false)
    }

    async fn rmdir(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<()> {
        self.remove(parent, name, true)
    }

    async fn open(&self, _req: Request, inode: u64, _flags: u32) -> FuseResult<ReplyOpen> {
        self.lock().1.get(&inode).ok_or_else(enoent)?;
        Ok(ReplyOpen { fh: 0, flags: 0 })
    }

    async fn create(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _flags: u32,
    ) -> FuseResult<ReplyCreated> {
        let attr = self.make(&req, parent, name, FileType::RegularFile, mode)?;
        Ok(ReplyCreated { ttl: TTL, attr, generation: 0, fh: 0, flags: 0 })
    }

    async fn read(&self, _req: Request, inode: u64, _fh: u64, offset: u64, size: u32) -> FuseResult<ReplyData> {
        let g = self.lock();
        let d = &g.1.get(&inode).ok_or_else(enoent)?.data;
        let start = (offset as usize).min(d.len());
        let end = start.saturating_add(size as usize).min(d.len());
        Ok(ReplyData { data: Bytes::copy_from_slice(&d[start..end]) })
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
        let mut g = self.lock();
        let d = &mut g.1.get_mut(&inode).ok_or_else(enoent)?.data;
        let end = offset as usize + data.len();
        if d.len() < end {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(data);
        Ok(ReplyWrite { written: data.len() as u32 })
    }

    async fn statfs(&self, _req: Request, _inode: u64) -> FuseResult<ReplyStatFs> {
        let blocks = 1 << 30;
        Ok(ReplyStatFs {
            blocks,
            bfree: blocks,
            bavail: blocks,
            files: 1 << 30,
            ffree: 1 << 30,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }

    async fn flush(&self, _req: Request, _inode: u64, _fh: u64, _lock_owner: u64) -> FuseResult<()> {
        Ok(())
    }

    async fn release(
        &self,
        _req: Request,
        _inode: u64,
        _fh: u64,
        _flags: u32,
        _owner: u64,
        _flush: bool,
    ) -> FuseResult<()> {
        Ok(())
    }

    async fn fsync(&self, _req: Request, _inode: u64, _fh: u64, _datasync: bool) -> FuseResult<()> {
        Ok(())
    }

    async fn opendir(&self, _req: Request, inode: u64, _flags: u32) -> FuseResult<ReplyOpen> {
        match self.lock().1.get(&inode) {
            Some(n) if n.kind == FileType::Directory => Ok(ReplyOpen { fh: 0, flags: 0 }),
            Some(_) => Err(libc::ENOTDIR.into()),
            None => Err(enoent()),
        }
    }

    async fn readdir<'a>(
        &'a self,
        _req: Request,
        parent: u64,
        _fh: u64,
        offset: i64,
    ) -> FuseResult<ReplyDirectory<impl Stream<Item = FuseResult<DirectoryEntry>> + Send + 'a>> {
        let entries: Vec<FuseResult<DirectoryEntry>> = self
            .listing(parent, offset.max(0) as u64)?
            .into_iter()
            .map(|(offset, name, attr)| Ok(DirectoryEntry { inode: attr.ino, kind: attr.kind, name, offset }))
            .collect();
        Ok(ReplyDirectory { entries: stream::iter(entries) })
    }

    async fn readdirplus<'a>(
        &'a self,
        _req: Request,
        parent: u64,
        _fh: u64,
        offset: u64,
        _lock_owner: u64,
    ) -> FuseResult<ReplyDirectoryPlus<impl Stream<Item = FuseResult<DirectoryEntryPlus>> + Send + 'a>> {
        let entries: Vec<FuseResult<DirectoryEntryPlus>> = self
            .listing(parent, offset)?
            .into_iter()
            .map(|(offset, name, attr)| {
                Ok(DirectoryEntryPlus {
                    inode: attr.ino,
                    generation: 0,
                    kind: attr.kind,
                    name,
                    offset,
                    attr,
                    entry_ttl: TTL,
                    attr_ttl: TTL,
                })
            })
            .collect();
        Ok(ReplyDirectoryPlus { entries: stream::iter(entries) })
    }

    async fn releasedir(&self, _req: Request, _inode: u64, _fh: u64, _flags: u32) -> FuseResult<()> {
        Ok(())
    }

    async fn access(&self, _req: Request, _inode: u64, _mask: u32) -> FuseResult<()> {
        Ok(())
    }

    /// No locks (the benchmark takes none).
    #[allow(clippy::too_many_arguments)]
    async fn getlk(
        &self,
        _req: Request,
        _inode: u64,
        _fh: u64,
        _lock_owner: u64,
        _start: u64,
        _end: u64,
        _type: u32,
        _pid: u32,
    ) -> FuseResult<ReplyLock> {
        Err(libc::ENOLCK.into())
    }

    #[allow(clippy::too_many_arguments)]
    async fn setlk(
        &self,
        _req: Request,
        _inode: u64,
        _fh: u64,
        _lock_owner: u64,
        _start: u64,
        _end: u64,
        _type: u32,
        _pid: u32,
        _block: bool,
    ) -> FuseResult<()> {
        Err(libc::ENOLCK.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (a FUSE mount): files and directories made, written, read back, listed and
    /// removed through the kernel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memfs_serves_files_and_directories_through_the_kernel() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts FUSE and needs root");
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("mnt");
        let handle = mount(&at).await.unwrap();
        let at2 = at.clone();
        let checked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir(at2.join("d"))?;
            std::fs::write(at2.join("d/f"), b"hello memfs")?;
            assert_eq!(std::fs::read(at2.join("d/f"))?, b"hello memfs");
            assert_eq!(std::fs::metadata(at2.join("d/f"))?.len(), 11);
            let names: Vec<_> =
                std::fs::read_dir(at2.join("d"))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
            assert_eq!(names, vec![OsString::from("f")]);
            assert_eq!(std::fs::remove_dir(at2.join("d")).map_err(|e| e.raw_os_error()), Err(Some(libc::ENOTEMPTY)));
            std::fs::remove_file(at2.join("d/f"))?;
            std::fs::remove_dir(at2.join("d"))?;
            assert!(!at2.join("d").exists());
            Ok(())
        })
        .await;
        // Unmounted before anything is asserted, so a failure leaves no mount behind.
        handle.unmount().await.unwrap();
        checked.unwrap().unwrap();
    }
}
