//! Inodes and directory entries as stored (JSON with a format version).

use serde::{Deserialize, Serialize};

use crate::{FsError, Result};

/// Format of inode and directory-entry records.
pub const INODE_VERSION: u32 = 1;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl Kind {
    /// The `S_IF*` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
        }
    }

    /// The kind named by a `mode`'s `S_IFMT` bits (a plain file when none are set).
    pub fn from_mode(mode: u32) -> Result<Kind> {
        Ok(match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            other => return Err(FsError::Invalid(format!("file type {other:o}"))),
        })
    }
}

/// A point in time: nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    pub fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    pub fn nanos(self) -> u32 {
        self.0.rem_euclid(1_000_000_000) as u32
    }

    pub fn from_parts(secs: i64, nanos: u32) -> Timestamp {
        Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(i64::from(nanos)))
    }
}

/// An inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub version: u32,
    pub kind: Kind,
    /// Permission bits (`0o7777`), without the type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Directory entries naming it; for a directory 2 + its subdirectories.
    pub nlink: u32,
    /// Bytes (files), entries (directories), target length (symlinks).
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    #[serde(default)]
    pub rdev: u32,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
    /// A directory's parent (directories have exactly one).
    #[serde(default)]
    pub parent: u64,
    /// A directory's number of entries.
    #[serde(default)]
    pub entries: u64,
    /// Whether it may have extended attributes: set by its first setxattr, never cleared.
    /// Without it, removing the inode needs no read of its attributes. Records written before
    /// the field existed read as true.
    #[serde(default = "may_have_xattrs")]
    pub xattrs: bool,
}

fn may_have_xattrs() -> bool {
    true
}

impl Inode {
    /// A new inode of `kind`, owned by `uid`/`gid`, timestamps now.
    pub fn new(kind: Kind, perm: u32, uid: u32, gid: u32) -> Inode {
        let now = Timestamp::now();
        Inode {
            version: INODE_VERSION,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            target: None,
            xattrs: false,
            parent: 0,
            entries: 0,
        }
    }

    /// The full `st_mode`.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an inode serializes")
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<Inode> {
        decode_versioned(key, value, INODE_VERSION)
    }
}

/// A directory entry: the inode it names and that inode's kind (for readdir without reading
/// every inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    pub ino: u64,
    pub kind: Kind,
}

impl Dentry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a dentry serializes")
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<Dentry> {
        serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))
    }
}

/// Decodes a versioned JSON record at `key`: the version is read first, so a record a newer
/// release wrote is refused by `format_version::check`'s one rule (one line naming both
/// versions) even when its fields changed; older versions are read.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8], supported: u32) -> Result<T> {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(default = "format_version::v1")]
        version: u32,
    }
    let v: VersionOnly = serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))?;
    format_version::check(format!("record {}", String::from_utf8_lossy(key)), v.version, supported)?;
    serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))
}

pub(crate) fn corrupt(key: &[u8], message: String) -> FsError {
    FsError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips_and_refuses_other_versions() {
        let mut i = Inode::new(Kind::Symlink, 0o777, 10, 20);
        i.target = Some(b"a/b".to_vec());
        let bytes = i.encode();
        assert_eq!(Inode::decode(b"k", &bytes).unwrap(), i);
        assert_eq!(i.mode(), libc::S_IFLNK | 0o777);
        let mut other = i.clone();
        other.version = 9;
        let e = Inode::decode(b"fs/n/x/i/1", &other.encode()).unwrap_err();
        assert!(matches!(e, FsError::Newer(_)), "{e:?}");
        assert_eq!(e.to_string(), "record fs/n/x/i/1 has format version 9; this build reads up to version 1");
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn records_from_before_the_xattr_flag_may_have_attributes() {
        let i = Inode::new(Kind::File, 0o644, 1, 1);
        assert!(!i.xattrs, "a new inode has none");
        let mut v: serde_json::Value = serde_json::from_slice(&i.encode()).unwrap();
        v.as_object_mut().unwrap().remove("xattrs");
        let old = Inode::decode(b"k", &serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(old.xattrs, "an older record must still have its attributes looked for");
    }

    #[test]
    fn kinds_follow_mode_bits() {
        assert_eq!(Kind::from_mode(0o644).unwrap(), Kind::File);
        assert_eq!(Kind::from_mode(libc::S_IFDIR | 0o755).unwrap(), Kind::Dir);
        assert_eq!(Kind::from_mode(libc::S_IFIFO).unwrap(), Kind::Fifo);
    }

    #[test]
    fn timestamps_split_into_seconds_and_nanoseconds() {
        let t = Timestamp::from_parts(12, 345);
        assert_eq!((t.secs(), t.nanos()), (12, 345));
        let before = Timestamp(-1);
        assert_eq!((before.secs(), before.nanos()), (-1, 999_999_999));
    }

    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            Just(Kind::Symlink),
            Just(Kind::Fifo),
            Just(Kind::Socket),
            Just(Kind::Char),
            Just(Kind::Block),
        ]
    }

    proptest! {
        #[test]
        fn inodes_and_dentries_round_trip(
            kind in kind(),
            (perm, uid, gid, nlink, rdev) in (0..0o10000u32, any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
            (size, parent, entries, xattrs) in (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
            times in proptest::array::uniform4(any::<i64>()),
            target in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            ino in any::<u64>(),
        ) {
            let i = Inode {
                version: INODE_VERSION, kind, perm, uid, gid, nlink, size,
                atime: Timestamp(times[0]), mtime: Timestamp(times[1]), ctime: Timestamp(times[2]),
                crtime: Timestamp(times[3]), rdev, target, parent, entries, xattrs,
            };
            prop_assert_eq!(Inode::decode(b"k", &i.encode()).unwrap(), i.clone());
            prop_assert_eq!(i.mode() & 0o7777, perm);
            let d = Dentry { ino, kind };
            prop_assert_eq!(Dentry::decode(b"k", &d.encode()).unwrap(), d);
        }
    }
}
