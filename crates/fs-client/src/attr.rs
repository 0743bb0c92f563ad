//! Conversions between the namespace's inodes and FUSE's attributes and errors.

use fs_meta::{FsError, Inode, Kind, Timestamp};
use fuse3::raw::prelude::{FileAttr, FileType};
use fuse3::{Errno, Timestamp as FuseTime};

pub fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
    }
}

pub fn fuse_time(t: Timestamp) -> FuseTime {
    FuseTime::new(t.secs(), t.nanos())
}

pub fn from_fuse_time(t: FuseTime) -> Timestamp {
    Timestamp::from_parts(t.sec, t.nsec)
}

/// The attributes of inode `ino`; `size` overrides the stored size (a file with writes not yet
/// committed).
pub fn file_attr(ino: u64, i: &Inode, size: Option<u64>) -> FileAttr {
    let size = size.unwrap_or(i.size);
    FileAttr {
        ino,
        size,
        blocks: if i.kind == Kind::File { size.div_ceil(512) } else { 0 },
        atime: fuse_time(i.atime),
        mtime: fuse_time(i.mtime),
        ctime: fuse_time(i.ctime),
        kind: file_type(i.kind),
        perm: (i.perm & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 1 << 20,
    }
}

/// The errno for a namespace error; unexpected ones are logged.
pub fn errno(e: FsError) -> Errno {
    match &e {
        FsError::Meta(_) | FsError::Pool(_) | FsError::Corrupt { .. } | FsError::Newer(_) | FsError::Contended(_) => {
            tracing::warn!(error = %e, "filesystem operation failed");
        }
        _ => {}
    }
    e.errno().into()
}
