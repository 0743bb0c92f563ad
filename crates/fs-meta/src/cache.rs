//! A client's cache of inodes and directory entries, kept true by the metadata service's watch
//! on the filesystem's keys: an event for a key drops it unless the entry holds that very change,
//! and a read (or this client's own committed write) is cached only when no event newer than
//! its revision has been seen for that key. A key read as absent is cached too, at the revision
//! the read saw (a negative entry: the kernel asks for missing names on every create and
//! failed lookup). While the watch is down
//! nothing is cached (and everything cached is dropped), so a client never serves an entry
//! another client changed longer ago than the watch's delivery delay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Entries kept before the cache starts over.
const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
struct Maps {
    /// key → (mod revision, value), or (revision the read saw, None) for a key absent then
    entries: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
    /// key → revision of the newest event seen for it
    events: HashMap<Vec<u8>, u64>,
    /// key prefix of a directory this client made → the revision it was made at (empty then):
    /// a key under it that no event changed since is known absent
    complete: HashMap<Vec<u8>, u64>,
}

impl Maps {
    /// The revision of the directory this client made that holds `key`, when no event changed
    /// `key` since (so `key` is absent).
    fn absent_by_dir(&self, key: &[u8]) -> Option<u64> {
        let made = *dir_of(key).and_then(|d| self.complete.get(d))?;
        self.events.get(key).is_none_or(|rev| *rev <= made).then_some(made)
    }
}

/// The prefix of `key` up to and including its last `/` (a directory entry's directory).
fn dir_of(key: &[u8]) -> Option<&[u8]> {
    key.iter().rposition(|b| *b == b'/').map(|i| &key[..=i])
}

/// See the module documentation.
#[derive(Default)]
pub struct MetaCache {
    maps: Mutex<Maps>,
    watching: AtomicBool,
    /// Bumped whenever the watch comes up or goes down: a read begun under another generation
    /// may have missed a change, so it is not cached.
    generation: AtomicU64,
}

impl MetaCache {
    /// The cached value (`Some(None)`: known absent) with its revision; a key not cached in a
    /// directory this client made is absent at the directory's revision unless an event since
    /// says otherwise.
    pub fn get(&self, key: &[u8]) -> Option<(u64, Option<Vec<u8>>)> {
        let m = self.maps.lock().expect("cache lock");
        m.entries.get(key).cloned().or_else(|| m.absent_by_dir(key).map(|made| (made, None)))
    }

    /// Directory `dir` (the prefix of its keys) was made empty by this client at `revision` (the
    /// transaction began with `ticket`): until an event under it says otherwise, a name in it
    /// that is not cached is absent, with no read.
    pub fn made_empty(&self, ticket: Option<u64>, dir: &[u8], revision: u64) {
        let mut m = self.maps.lock().expect("cache lock");
        if ticket.is_none() || ticket != self.ticket() {
            return;
        }
        if m.complete.len() >= MAX_ENTRIES {
            m.complete.clear();
        }
        m.complete.insert(dir.to_vec(), revision);
    }

    /// Whether `key` (not cached) is known absent: it is in a directory this client made, and
    /// no change of it was announced since.
    pub fn known_absent(&self, key: &[u8]) -> bool {
        self.maps.lock().expect("cache lock").absent_by_dir(key).is_some()
    }

    /// Keys a transaction of this client touched but whose outcome is unknown or was refused:
    /// their directories are no longer known whole.
    pub fn unsure<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut m = self.maps.lock().expect("cache lock");
        for k in keys {
            if let Some(d) = dir_of(k) {
                m.complete.remove(d);
            }
        }
    }

    /// Taken before a read whose result may be cached: `None` while the watch is down.
    pub fn ticket(&self) -> Option<u64> {
        let g = self.generation.load(Ordering::Acquire);
        self.watching.load(Ordering::Acquire).then_some(g)
    }

    /// Caches a value read at `mod_revision` (the read began with `ticket`), or an absence seen
    /// by a read of at least revision `mod_revision` (`value` None), unless a newer change was
    /// announced or the watch went down or up meanwhile.
    pub fn insert(&self, ticket: Option<u64>, key: &[u8], mod_revision: u64, value: Option<&[u8]>) {
        let mut m = self.maps.lock().expect("cache lock");
        if ticket.is_none() || ticket != self.ticket() {
            return;
        }
        if m.events.get(key).is_some_and(|rev| *rev > mod_revision) {
            return;
        }
        if m.entries.len() >= MAX_ENTRIES {
            m.entries.clear();
        }
        m.entries.insert(key.to_vec(), (mod_revision, value.map(<[u8]>::to_vec)));
    }

    /// Drops keys this client just changed (or failed to change: its view was stale).
    pub fn forget<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut m = self.maps.lock().expect("cache lock");
        for k in keys {
            m.entries.remove(k);
        }
    }

    /// A change of `key` at `revision`, from the watch. An entry holding that very change (this
    /// client's own write, or a read of it) stays.
    pub fn changed(&self, key: &[u8], revision: u64) {
        let mut m = self.maps.lock().expect("cache lock");
        if m.entries.get(key).is_some_and(|(rev, _)| *rev < revision) {
            m.entries.remove(key);
        }
        if m.events.len() >= MAX_ENTRIES {
            // Forgetting event revisions is safe only if nothing read before them stays cached.
            m.events.clear();
            m.entries.clear();
            m.complete.clear();
        }
        let e = m.events.entry(key.to_vec()).or_insert(0);
        *e = (*e).max(revision);
    }

    /// The watch is up (from now on reads may be cached) or down (nothing is cached).
    pub fn set_watching(&self, on: bool) {
        let mut m = self.maps.lock().expect("cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.watching.store(on, Ordering::Release);
        m.entries.clear();
        m.events.clear();
        m.complete.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_made_here_knows_its_missing_names_until_an_event_says_otherwise() {
        let c = MetaCache::default();
        c.set_watching(true);
        assert!(!c.known_absent(b"d/7/x"), "a directory not made here");
        c.made_empty(c.ticket(), b"d/7/", 10);
        assert!(c.known_absent(b"d/7/x"));
        assert!(!c.known_absent(b"d/8/x"), "another directory");
        c.changed(b"d/7/x", 9);
        assert!(c.known_absent(b"d/7/x"), "an event older than the directory");
        c.changed(b"d/7/x", 11);
        assert!(!c.known_absent(b"d/7/x"), "someone made (or removed) it since");
        assert!(c.known_absent(b"d/7/y"), "the other names are still known");
        c.unsure([&b"d/7/z"[..]].into_iter());
        assert!(!c.known_absent(b"d/7/y"), "a transaction of unknown outcome in the directory");
        c.made_empty(c.ticket(), b"d/9/", 20);
        c.set_watching(false);
        c.set_watching(true);
        assert!(!c.known_absent(b"d/9/a"), "the watch went down: changes may have been missed");
        let stale = c.ticket();
        c.set_watching(false);
        c.set_watching(true);
        c.made_empty(stale, b"d/9/", 30);
        assert!(!c.known_absent(b"d/9/a"), "made while the watch was down and up");
    }

    #[test]
    fn nothing_is_cached_without_the_watch() {
        let c = MetaCache::default();
        c.insert(c.ticket(), b"k", 5, Some(b"v"));
        assert!(c.get(b"k").is_none());
        let before = c.ticket();
        c.set_watching(true);
        c.insert(before, b"k", 5, Some(b"v"));
        assert!(c.get(b"k").is_none(), "a read begun before the watch came up may have missed a change");
        c.insert(c.ticket(), b"k", 5, Some(b"v"));
        assert_eq!(c.get(b"k"), Some((5, Some(b"v".to_vec()))));
        let t = c.ticket();
        c.set_watching(false);
        assert!(c.get(b"k").is_none());
        c.set_watching(true);
        c.insert(t, b"k", 5, Some(b"v"));
        assert!(c.get(b"k").is_none(), "the watch went down during the read");
    }

    #[test]
    fn a_value_older_than_an_announced_change_is_not_cached() {
        let c = MetaCache::default();
        c.set_watching(true);
        c.changed(b"k", 9);
        c.insert(c.ticket(), b"k", 7, Some(b"old"));
        assert!(c.get(b"k").is_none(), "a read that raced with a newer change must not stick");
        c.insert(c.ticket(), b"k", 9, Some(b"new"));
        assert_eq!(c.get(b"k").unwrap().1.as_deref(), Some(&b"new"[..]));
        c.changed(b"k", 9);
        assert_eq!(
            c.get(b"k").unwrap().1.as_deref(),
            Some(&b"new"[..]),
            "the event of the change the entry holds keeps it"
        );
        c.changed(b"k", 10);
        assert!(c.get(b"k").is_none());
        c.insert(c.ticket(), b"x", 1, Some(b"v"));
        c.forget([&b"x"[..]].into_iter());
        assert!(c.get(b"x").is_none());
    }

    #[test]
    fn an_absence_is_cached_until_a_newer_change() {
        let c = MetaCache::default();
        c.set_watching(true);
        c.insert(c.ticket(), b"k", 7, None);
        assert_eq!(c.get(b"k"), Some((7, None)), "absent as of revision 7");
        c.changed(b"k", 7);
        assert_eq!(c.get(b"k"), Some((7, None)), "a change the read had seen leaves it");
        c.changed(b"k", 8);
        assert!(c.get(b"k").is_none(), "a create after the read drops the absence");
        c.insert(c.ticket(), b"k", 7, None);
        assert!(c.get(b"k").is_none(), "an absence read before an announced change must not stick");
    }
}
