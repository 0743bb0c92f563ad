//! Advisory file locks (fcntl and flock) shared by every client of a filesystem: each lock
//! owner's ranges on an inode are one key, and every change bumps the inode's lock version
//! under a compare-and-set, so two clients on different nodes can never both take conflicting
//! locks. A lock of a client that stopped heart-beating (crashed node) is void and removed by
//! the next conflicting request.
//!
//! ```text
//! fs/n/<fs>/l/<ino:016x>/<client>/<owner:016x>   LockSet (JSON): the owner's ranges
//! fs/n/<fs>/lv/<ino:016x>                        the inode's lock version (bumped on change)
//! ```

use serde::{Deserialize, Serialize};

use metadata_client::{Txn, prefix_end};

use crate::filesystem::{ClientRecord, RECORD_VERSION};
use crate::inode::corrupt;
use crate::namespace::Namespace;
use crate::{FsError, RETRIES, Result, keys};

/// A client whose heartbeat is older than this holds no locks.
pub const CLIENT_DEAD_AFTER_MS: u64 = 60_000;

/// What a range is locked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Read,
    Write,
}

/// One locked byte range, `start..=end` (`end` = `u64::MAX`: to the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockSet {
    version: u32,
    ranges: Vec<LockRange>,
}

impl LockSet {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lock set serializes")
    }
    fn decode(key: &[u8], v: &[u8]) -> Result<LockSet> {
        crate::inode::decode_versioned(key, v, RECORD_VERSION)
    }
}

/// Who holds a lock: the client (mount) and the kernel's lock owner within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    pub client: String,
    pub owner: u64,
}

fn lock_prefix(fs: &str, ino: u64) -> Vec<u8> {
    format!("fs/n/{fs}/l/{ino:016x}/").into_bytes()
}

fn lock_key(fs: &str, ino: u64, who: &LockOwner) -> Vec<u8> {
    format!("fs/n/{fs}/l/{ino:016x}/{}/{:016x}", who.client, who.owner).into_bytes()
}

fn version_key(fs: &str, ino: u64) -> Vec<u8> {
    format!("fs/n/{fs}/lv/{ino:016x}").into_bytes()
}

/// The (client, owner) a lock key names.
fn owner_of(prefix_len: usize, key: &[u8]) -> Option<LockOwner> {
    let tail = std::str::from_utf8(&key[prefix_len..]).ok()?;
    let (client, owner) = tail.rsplit_once('/')?;
    Some(LockOwner { client: client.to_string(), owner: u64::from_str_radix(owner, 16).ok()? })
}

fn overlaps(a: &LockRange, start: u64, end: u64) -> bool {
    a.start <= end && start <= a.end
}

/// `ranges` with `start..=end` set to `kind` (or unlocked, `None`), as POSIX defines it:
/// overlapped ranges are cut, the rest kept.
pub fn apply(ranges: &[LockRange], start: u64, end: u64, kind: Option<LockKind>, pid: u32) -> Vec<LockRange> {
    let mut out = Vec::new();
    for r in ranges {
        if !overlaps(r, start, end) {
            out.push(*r);
            continue;
        }
        if r.start < start {
            out.push(LockRange { end: start - 1, ..*r });
        }
        if r.end > end {
            out.push(LockRange { start: end + 1, ..*r });
        }
    }
    if let Some(kind) = kind {
        out.push(LockRange { start, end, kind, pid });
    }
    out.sort_by_key(|r| r.start);
    out
}

impl Namespace {
    /// Every lock on `ino` with its holder; the lock version's revision; the keys of dead
    /// clients' locks.
    async fn locks_of(&self, ino: u64) -> Result<(u64, Vec<(LockOwner, LockRange)>, Vec<Vec<u8>>)> {
        let vkey = version_key(&self.fs, ino);
        let vrev = self.meta.get(&vkey).await?.map(|kv| kv.mod_revision).unwrap_or(0);
        let prefix = lock_prefix(&self.fs, ino);
        let page = self.meta.range(&prefix, &prefix_end(&prefix), 4096).await?;
        let now = crate::filesystem::now_ms();
        let mut alive = std::collections::HashMap::new();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for kv in &page.kvs {
            let who = owner_of(prefix.len(), &kv.key).ok_or_else(|| corrupt(&kv.key, "lock key".into()))?;
            let live = match alive.get(&who.client) {
                Some(l) => *l,
                None => {
                    let l = match self.meta.get(&keys::client(&self.fs, &who.client)).await? {
                        Some(c) => match ClientRecord::decode(&c.key, &c.value) {
                            Ok(r) => now.saturating_sub(r.heartbeat_ms.max(r.mounted_ms)) < CLIENT_DEAD_AFTER_MS,
                            // A newer release's client: not ours to declare dead.
                            Err(e @ FsError::Newer(_)) => return Err(e),
                            Err(_) => false,
                        },
                        None => false,
                    };
                    alive.insert(who.client.clone(), l);
                    l
                }
            };
            if !live {
                dead.push(kv.key.clone());
                continue;
            }
            let set = LockSet::decode(&kv.key, &kv.value)?;
            out.extend(set.ranges.into_iter().map(|r| (who.clone(), r)));
        }
        Ok((vrev, out, dead))
    }

    /// The first lock of another owner that conflicts with `kind` on `start..=end`.
    pub async fn test_lock(
        &self,
        ino: u64,
        who: &LockOwner,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Result<Option<LockRange>> {
        let (_, all, _) = self.locks_of(ino).await?;
        Ok(all
            .into_iter()
            .find(|(o, r)| {
                o != who && overlaps(r, start, end) && (kind == LockKind::Write || r.kind == LockKind::Write)
            })
            .map(|(_, r)| r))
    }

    /// Sets (`Some`) or releases (`None`) `who`'s lock on `start..=end`. Returns the
    /// conflicting lock instead when another owner holds one (nothing changed then).
    pub async fn set_lock(
        &self,
        ino: u64,
        who: &LockOwner,
        start: u64,
        end: u64,
        kind: Option<LockKind>,
        pid: u32,
    ) -> Result<Option<LockRange>> {
        let key = lock_key(&self.fs, ino, who);
        let vkey = version_key(&self.fs, ino);
        for _ in 0..RETRIES {
            let (vrev, all, dead) = self.locks_of(ino).await?;
            if let Some(k) = kind
                && let Some((_, r)) = all.iter().find(|(o, r)| {
                    o != who && overlaps(r, start, end) && (k == LockKind::Write || r.kind == LockKind::Write)
                })
            {
                return Ok(Some(*r));
            }
            let mine: Vec<LockRange> = all.iter().filter(|(o, _)| o == who).map(|(_, r)| *r).collect();
            let next = apply(&mine, start, end, kind, pid);
            if next == mine && dead.is_empty() {
                return Ok(None);
            }
            let mut txn = Txn::new().mod_revision_equals(&vkey, vrev).put(&vkey, b"");
            for d in &dead {
                txn = txn.delete(d);
            }
            txn = if next.is_empty() {
                txn.delete(&key)
            } else {
                let set = LockSet { version: RECORD_VERSION, ranges: next };
                txn.put(&key, &set.encode())
            };
            if self.meta.txn(txn).await?.succeeded {
                return Ok(None);
            }
        }
        Err(FsError::Contended(format!("locks of {ino}")))
    }

    /// Releases every lock `who` holds on `ino`.
    pub async fn release_locks(&self, ino: u64, who: &LockOwner) -> Result<()> {
        self.set_lock(ino, who, 0, u64::MAX, None, 0).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, kind: LockKind) -> LockRange {
        LockRange { start, end, kind, pid: 1 }
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lock_sets_round_trip(
            ranges in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<bool>(), any::<u32>()).prop_map(|(start, end, w, pid)| LockRange {
                    start, end, kind: if w { LockKind::Write } else { LockKind::Read }, pid,
                }),
                0..6,
            ),
        ) {
            let set = LockSet { version: RECORD_VERSION, ranges };
            prop_assert_eq!(LockSet::decode(b"k", &set.encode()).unwrap(), set);
        }
    }

    #[test]
    fn a_newer_lock_set_is_refused_in_one_line() {
        let set = LockSet { version: RECORD_VERSION + 1, ranges: vec![r(0, 9, LockKind::Write)] };
        let e = LockSet::decode(b"fs/n/x/l/1", &set.encode()).unwrap_err();
        assert_eq!(e.to_string(), "record fs/n/x/l/1 has format version 2; this build reads up to version 1");
    }

    #[test]
    fn setting_a_range_cuts_what_it_overlaps() {
        let held = vec![r(0, 99, LockKind::Read)];
        let next = apply(&held, 10, 19, Some(LockKind::Write), 1);
        assert_eq!(next, vec![r(0, 9, LockKind::Read), r(10, 19, LockKind::Write), r(20, 99, LockKind::Read)]);
        let freed = apply(&next, 0, u64::MAX, None, 0);
        assert!(freed.is_empty());
        let tail = apply(&held, 50, u64::MAX, None, 0);
        assert_eq!(tail, vec![r(0, 49, LockKind::Read)]);
    }

    #[test]
    fn lock_keys_name_their_owner() {
        let who = LockOwner { client: "node-a-1f".into(), owner: 0xabc };
        let p = lock_prefix("fs-1", 5);
        assert_eq!(owner_of(p.len(), &lock_key("fs-1", 5, &who)), Some(who));
    }
}
