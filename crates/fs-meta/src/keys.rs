//! Key layout of the shared filesystem in the metadata service.
//!
//! ```text
//! fs/rec/<fs id>                          FsRecord (JSON): quota, block size, origin
//! fs/n/<fs id>/usage                      Usage (JSON): bytes and inodes in use
//! fs/n/<fs id>/next                       next unallocated inode number (decimal)
//! fs/n/<fs id>/i/<ino:016x>               Inode (JSON)
//! fs/n/<fs id>/d/<parent:016x>/<name>     Dentry (JSON): the entry's inode and kind
//! fs/n/<fs id>/b/<ino:016x>/<idx:016x>    a file block's chunk hash (32 raw bytes)
//! fs/n/<fs id>/x/<ino:016x>/<name>        an extended attribute's value (raw)
//! fs/n/<fs id>/o/<ino:016x>               an unlinked inode whose data is still to be freed
//! fs/n/<fs id>/c/<client id>              a mounted client (JSON, with its heartbeat)
//! fs/n/<fs id>/l/<ino:016x>/<client>/<owner:016x>   an owner's advisory locks (see `locks`)
//! fs/n/<fs id>/lv/<ino:016x>              an inode's lock version
//! cluster/refs/<chunk>/fs:<fs id>:<ino>:<idx>   the block's chunk reference
//! ```

/// The record of filesystem `fs`.
pub fn record(fs: &str) -> Vec<u8> {
    format!("fs/rec/{fs}").into_bytes()
}

/// Prefix of every filesystem record.
pub const RECORDS: &str = "fs/rec/";

/// Prefix of everything inside filesystem `fs`.
pub fn ns(fs: &str) -> Vec<u8> {
    format!("fs/n/{fs}/").into_bytes()
}

pub fn usage(fs: &str) -> Vec<u8> {
    format!("fs/n/{fs}/usage").into_bytes()
}

pub fn next_ino(fs: &str) -> Vec<u8> {
    format!("fs/n/{fs}/next").into_bytes()
}

pub fn inode(fs: &str, ino: u64) -> Vec<u8> {
    format!("fs/n/{fs}/i/{ino:016x}").into_bytes()
}

/// The inode number of an inode key of filesystem `fs` (`None` for any other key).
pub fn inode_of(fs: &str, key: &[u8]) -> Option<u64> {
    let hex = key.strip_prefix(format!("fs/n/{fs}/i/").as_bytes())?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Prefix of directory `parent`'s entries.
pub fn dir(fs: &str, parent: u64) -> Vec<u8> {
    format!("fs/n/{fs}/d/{parent:016x}/").into_bytes()
}

pub fn dentry(fs: &str, parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = dir(fs, parent);
    k.extend_from_slice(name);
    k
}

/// Prefix of file `ino`'s block map.
pub fn blocks(fs: &str, ino: u64) -> Vec<u8> {
    format!("fs/n/{fs}/b/{ino:016x}/").into_bytes()
}

pub fn block(fs: &str, ino: u64, idx: u64) -> Vec<u8> {
    format!("fs/n/{fs}/b/{ino:016x}/{idx:016x}").into_bytes()
}

/// The block index at the end of a block-map key.
pub fn block_index(key: &[u8]) -> Option<u64> {
    let tail = key.rsplit(|b| *b == b'/').next()?;
    u64::from_str_radix(std::str::from_utf8(tail).ok()?, 16).ok()
}

/// Prefix of inode `ino`'s extended attributes.
pub fn xattrs(fs: &str, ino: u64) -> Vec<u8> {
    format!("fs/n/{fs}/x/{ino:016x}/").into_bytes()
}

pub fn xattr(fs: &str, ino: u64, name: &[u8]) -> Vec<u8> {
    let mut k = xattrs(fs, ino);
    k.extend_from_slice(name);
    k
}

pub fn orphan(fs: &str, ino: u64) -> Vec<u8> {
    format!("fs/n/{fs}/o/{ino:016x}").into_bytes()
}

pub fn orphans(fs: &str) -> Vec<u8> {
    format!("fs/n/{fs}/o/").into_bytes()
}

pub fn client(fs: &str, id: &str) -> Vec<u8> {
    format!("fs/n/{fs}/c/{id}").into_bytes()
}

pub fn clients(fs: &str) -> Vec<u8> {
    format!("fs/n/{fs}/c/").into_bytes()
}

/// The owner name of a file block's chunk reference.
pub fn ref_owner(fs: &str, ino: u64, idx: u64) -> String {
    format!("fs:{fs}:{ino}:{idx}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_sort_by_index_and_parse_back() {
        let a = block("fs-1", 7, 2);
        let b = block("fs-1", 7, 16);
        assert!(a < b);
        assert!(a.starts_with(&blocks("fs-1", 7)));
        assert_eq!(block_index(&b), Some(16));
        assert_eq!(block_index(b"fs/n/x/b/0/zz"), None);
    }

    #[test]
    fn entries_of_one_directory_share_a_prefix_no_other_directory_has() {
        let d1 = dentry("f", 1, b"a");
        assert!(d1.starts_with(&dir("f", 1)));
        assert!(!dentry("f", 0x10, b"a").starts_with(&dir("f", 1)));
        assert!(!usage("f").starts_with(&dir("f", 1)));
    }

    #[test]
    fn an_inode_key_names_its_inode_and_no_other_key_does() {
        assert_eq!(inode_of("f", &inode("f", 0x2a)), Some(0x2a));
        assert_eq!(inode_of("f", &inode("f", u64::MAX)), Some(u64::MAX));
        assert_eq!(inode_of("g", &inode("f", 7)), None, "another filesystem's inode");
        assert_eq!(inode_of("f", &dentry("f", 7, b"name")), None);
        assert_eq!(inode_of("f", &block("f", 7, 1)), None);
        assert_eq!(inode_of("f", b"fs/n/f/i/xyz"), None);
    }
}
