//! A bounded read cache of chunk contents (a volume's attachment keeps one for its blocks, a
//! filesystem mount one for its files): a read (or the read half of a partial write) that finds
//! its chunk here skips the fetch from the pool and its verification. Chunks are named by their
//! content hash, so an entry never goes stale: an overwritten block maps to another chunk.
//! Entries are the verified bytes the pool returned, or the bytes a flush has just committed
//! (hot: they were written a moment ago).
//!
//! Eviction is CLOCK (second chance): a hit marks the entry; the hand passes over marked entries
//! once, clearing the mark, and evicts the first unmarked one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chunk_engine::ChunkHash;

/// Hits, misses and what the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
    pub capacity: u64,
}

/// Chunk contents by hash, at most `capacity` bytes of them.
pub struct ReadCache {
    capacity: u64,
    inner: Mutex<Clock>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Clock {
    /// Hash → (content, referenced since the hand last passed).
    map: HashMap<ChunkHash, (Bytes, bool)>,
    /// The hand's order: oldest first.
    ring: VecDeque<ChunkHash>,
    bytes: u64,
}

impl ReadCache {
    /// A cache of at most `capacity` bytes (0: caches nothing).
    pub fn new(capacity: u64) -> Self {
        ReadCache { capacity, inner: Mutex::default(), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// The content of `hash`, if cached (marks it recently used).
    pub fn get(&self, hash: &ChunkHash) -> Option<Bytes> {
        if self.capacity == 0 {
            return None;
        }
        let mut c = self.inner.lock().expect("read cache lock");
        match c.map.get_mut(hash) {
            Some((data, referenced)) => {
                *referenced = true;
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(data.clone())
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps `data` as the content of `hash` (the caller vouches that it is: verified by the
    /// pool, or what it just wrote under that name), evicting others past the capacity.
    pub fn insert(&self, hash: ChunkHash, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut c = self.inner.lock().expect("read cache lock");
        if c.map.contains_key(&hash) {
            return;
        }
        while c.bytes + len > self.capacity {
            let Some(victim) = c.ring.pop_front() else { break };
            let referenced = c.map.get(&victim).map(|(_, r)| *r);
            match referenced {
                Some(true) => {
                    if let Some(e) = c.map.get_mut(&victim) {
                        e.1 = false;
                    }
                    c.ring.push_back(victim);
                }
                Some(false) => {
                    if let Some((d, _)) = c.map.remove(&victim) {
                        c.bytes -= d.len() as u64;
                    }
                }
                None => {}
            }
        }
        c.bytes += len;
        c.map.insert(hash, (data, false));
        c.ring.push_back(hash);
    }

    pub fn stats(&self) -> ReadCacheStats {
        let c = self.inner.lock().expect("read cache lock");
        ReadCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: c.map.len() as u64,
            bytes: c.bytes,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> (ChunkHash, Bytes) {
        let data = Bytes::from(vec![n; len]);
        (ChunkHash::of(&data), data)
    }

    #[test]
    fn holds_at_most_its_capacity_and_keeps_what_is_used() {
        let cache = ReadCache::new(3 * 100);
        let (a, b, c, d) = (chunk(1, 100), chunk(2, 100), chunk(3, 100), chunk(4, 100));
        for (h, data) in [&a, &b, &c] {
            cache.insert(*h, data.clone());
        }
        assert_eq!(cache.get(&a.0), Some(a.1.clone()));
        cache.insert(d.0, d.1.clone()); // a was used: b goes instead
        assert!(cache.get(&b.0).is_none());
        assert_eq!(cache.get(&a.0), Some(a.1.clone()));
        assert_eq!(cache.get(&d.0), Some(d.1.clone()));
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.hits, s.misses), (3, 300, 3, 1));
    }

    #[test]
    fn nothing_larger_than_the_cache_and_nothing_at_zero() {
        let cache = ReadCache::new(50);
        let (h, data) = chunk(1, 100);
        cache.insert(h, data);
        assert!(cache.get(&h).is_none());
        let off = ReadCache::new(0);
        let (h, data) = chunk(2, 10);
        off.insert(h, data);
        assert!(off.get(&h).is_none());
        assert_eq!(off.stats().misses, 0, "a disabled cache counts nothing");
    }

    #[test]
    fn every_entry_can_be_evicted_when_all_are_marked() {
        let cache = ReadCache::new(200);
        let (a, b, c) = (chunk(1, 100), chunk(2, 100), chunk(3, 100));
        cache.insert(a.0, a.1.clone());
        cache.insert(b.0, b.1.clone());
        cache.get(&a.0);
        cache.get(&b.0);
        cache.insert(c.0, c.1.clone());
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes), (2, 200));
        assert_eq!(cache.get(&c.0), Some(c.1));
    }
}
