//! The FUSE file system that serves one volume as one file (`/volume`): reads and writes go to
//! its [`BlockBackend`] (the volume engine), fsync and close flush it, punching a hole zeroes
//! (and releases) blocks.
//! Each request runs as its own task (fuse3), so the loop device's requests are served at once.

use std::ffi::OsStr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuse3::raw::prelude::*;
use fuse3::{Errno, Result as FuseResult};
use futures::stream::{self, Stream};

use crate::backend::{BlockBackend, BlockError};

/// The file's name in the mount.
pub const FILE_NAME: &str = "volume";
const ROOT: u64 = 1;
const FILE: u64 = 2;
/// No attribute caching: the file grows when the volume is expanded.
const TTL: Duration = Duration::ZERO;
/// `FOPEN_DIRECT_IO` (fuse_kernel.h): no page cache in FUSE; the loop device is the cache.
const FOPEN_DIRECT_IO: u32 = 1;
/// `FOPEN_PARALLEL_DIRECT_WRITES` (Linux 6.2+; older kernels ignore it): direct writes to the
/// file are not serialised on its inode lock, so the loop device's queue reaches the engine.
const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
const FALLOC_FL_ZERO_RANGE: u32 = 0x10;

/// Serves one volume.
pub struct VolumeFile<B> {
    pub volume: Arc<B>,
    pub started: SystemTime,
}

fn errno(e: BlockError) -> Errno {
    (e.code() as i32).into()
}

impl<B: BlockBackend> VolumeFile<B> {
    async fn attr(&self, ino: u64) -> FileAttr {
        let t = self.started.into();
        let (kind, perm, size, blocks, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 0, 2)
        } else {
            // Thin: the file's blocks are the ones holding data (its usage).
            let used = self.volume.allocated().await;
            (FileType::RegularFile, 0o600, self.volume.size().await, used / 512, 1)
        };
        FileAttr {
            ino,
            size,
            blocks,
            atime: t,
            mtime: t,
            ctime: t,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}

impl<B: BlockBackend> Filesystem for VolumeFile<B> {
    async fn init(&self, _req: Request) -> FuseResult<ReplyInit> {
        Ok(ReplyInit { max_write: NonZeroU32::new(1 << 20).expect("non-zero") })
    }

    async fn destroy(&self, _req: Request) {}

    async fn lookup(&self, _req: Request, parent: u64, name: &OsStr) -> FuseResult<ReplyEntry> {
        if parent != ROOT || name != FILE_NAME {
            return Err(libc::ENOENT.into());
        }
        Ok(ReplyEntry { ttl: TTL, attr: self.attr(FILE).await, generation: 0 })
    }

    async fn getattr(&self, _req: Request, inode: u64, _fh: Option<u64>, _flags: u32) -> FuseResult<ReplyAttr> {
        if inode != ROOT && inode != FILE {
            return Err(libc::ENOENT.into());
        }
        Ok(ReplyAttr { ttl: TTL, attr: self.attr(inode).await })
    }

    async fn setattr(&self, _req: Request, inode: u64, _fh: Option<u64>, set: SetAttr) -> FuseResult<ReplyAttr> {
        // The file's size is the volume's: it only grows (expansion: the node plugin truncates
        // the file to the new capacity); shrinking is refused.
        if let Some(size) = set.size.filter(|_| inode == FILE) {
            let cap = self.volume.size().await;
            if size > cap {
                self.volume.grow(size).await.map_err(errno)?;
            } else if size < cap {
                return Err(libc::EPERM.into());
            }
        }
        Ok(ReplyAttr { ttl: TTL, attr: self.attr(inode).await })
    }

    async fn open(&self, _req: Request, inode: u64, _flags: u32) -> FuseResult<ReplyOpen> {
        if inode != FILE {
            return Err(libc::EISDIR.into());
        }
        Ok(ReplyOpen { fh: 0, flags: FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES })
    }

    async fn read(&self, _req: Request, _inode: u64, _fh: u64, offset: u64, size: u32) -> FuseResult<ReplyData> {
        let cap = self.volume.size().await;
        let len = u64::from(size).min(cap.saturating_sub(offset));
        if len == 0 {
            return Ok(ReplyData { data: Bytes::new() });
        }
        // `len` <= `size`, a u32.
        let data = self.volume.read(offset, len as u32).await.map_err(errno)?;
        Ok(ReplyData { data: Bytes::from(data) })
    }

    async fn write(
        &self,
        _req: Request,
        _inode: u64,
        _fh: u64,
        offset: u64,
        data: &[u8],
        _write_flags: u32,
        _flags: u32,
    ) -> FuseResult<ReplyWrite> {
        self.volume.write(offset, data).await.map_err(errno)?;
        Ok(ReplyWrite { written: data.len() as u32 })
    }

    async fn fsync(&self, _req: Request, _inode: u64, _fh: u64, _datasync: bool) -> FuseResult<()> {
        self.volume.flush().await.map_err(errno)
    }

    async fn flush(&self, _req: Request, _inode: u64, _fh: u64, _lock_owner: u64) -> FuseResult<()> {
        self.volume.flush().await.map_err(errno)
    }

    async fn release(
        &self,
        _req: Request,
        _inode: u64,
        _fh: u64,
        _flags: u32,
        _lock_owner: u64,
        _flush: bool,
    ) -> FuseResult<()> {
        self.volume.flush().await.map_err(errno)
    }

    async fn fallocate(
        &self,
        _req: Request,
        _inode: u64,
        _fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> FuseResult<()> {
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
            return self.volume.write_zeroes(offset, length).await.map_err(errno);
        }
        if mode & !FALLOC_FL_KEEP_SIZE == 0 {
            return Ok(()); // thin: space is taken on write
        }
        Err(libc::EOPNOTSUPP.into())
    }

    async fn statfs(&self, _req: Request, _inode: u64) -> FuseResult<ReplyStatFs> {
        let blocks = self.volume.size().await / 4096;
        Ok(ReplyStatFs { blocks, bfree: 0, bavail: 0, files: 1, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 })
    }

    /// The volume file takes no locks (a loop device holds it; nobody else should).
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

    async fn access(&self, _req: Request, _inode: u64, _mask: u32) -> FuseResult<()> {
        Ok(())
    }

    async fn opendir(&self, _req: Request, inode: u64, _flags: u32) -> FuseResult<ReplyOpen> {
        if inode != ROOT {
            return Err(libc::ENOTDIR.into());
        }
        Ok(ReplyOpen { fh: 0, flags: 0 })
    }

    async fn readdir<'a>(
        &'a self,
        _req: Request,
        _parent: u64,
        _fh: u64,
        offset: i64,
    ) -> FuseResult<ReplyDirectory<impl Stream<Item = FuseResult<DirectoryEntry>> + Send + 'a>> {
        let all = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, FILE_NAME),
        ];
        let entries: Vec<FuseResult<DirectoryEntry>> = all
            .into_iter()
            .enumerate()
            .skip(offset.max(0) as usize)
            .map(|(i, (inode, kind, name))| Ok(DirectoryEntry { inode, kind, name: name.into(), offset: i as i64 + 1 }))
            .collect();
        Ok(ReplyDirectory { entries: stream::iter(entries) })
    }
}
