//! A cache of group CVs ([`crate::tree`]): for each chunk read in parts, the CVs of its 4 KiB
//! groups, checked against its name once, so later parts are verified alone (the chunk client)
//! or answered without reading the whole chunk again (the engine). Bounded in bytes; the
//! oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::ChunkHash;
use crate::tree::Cv;

/// Bytes of CVs a cache keeps by default: 32 per 4 KiB group, so 32 MiB covers 4 GiB of chunks.
pub const CV_CACHE_BYTES: usize = 32 << 20;

pub struct CvCache {
    map: HashMap<ChunkHash, Arc<Vec<Cv>>>,
    order: VecDeque<ChunkHash>,
    bytes: usize,
    max: usize,
}

impl CvCache {
    pub fn new(max: usize) -> CvCache {
        CvCache { map: HashMap::new(), order: VecDeque::new(), bytes: 0, max }
    }

    pub fn get(&self, hash: &ChunkHash) -> Option<Arc<Vec<Cv>>> {
        self.map.get(hash).cloned()
    }

    /// Keeps `cvs` (already checked against `hash`), dropping the oldest entries past the bound.
    pub fn insert(&mut self, hash: ChunkHash, cvs: Vec<Cv>) {
        let size = cvs.len() * 32;
        if size > self.max || self.map.contains_key(&hash) {
            return;
        }
        while self.bytes + size > self.max {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(v) = self.map.remove(&old) {
                self.bytes -= v.len() * 32;
            }
        }
        self.bytes += size;
        self.order.push_back(hash);
        self.map.insert(hash, Arc::new(cvs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_bytes_dropping_the_oldest() {
        let mut c = CvCache::new(32 * 10);
        let h = |i: u8| ChunkHash::of(&[i]);
        c.insert(h(1), vec![[1; 32]; 4]);
        c.insert(h(2), vec![[2; 32]; 4]);
        assert!(c.get(&h(1)).is_some() && c.get(&h(2)).is_some());
        c.insert(h(3), vec![[3; 32]; 4]);
        assert!(c.get(&h(1)).is_none(), "the oldest went");
        assert_eq!(c.get(&h(3)).unwrap()[0], [3; 32]);
        assert!(c.bytes <= c.max);
        c.insert(h(4), vec![[4; 32]; 11]);
        assert!(c.get(&h(4)).is_none(), "larger than the whole cache: not kept");
    }
}
