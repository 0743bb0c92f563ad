//! The sliding window of chunk puts a storage node keeps for pool GC: which chunks were put (or
//! referenced) here within the last write window, recorded before each put is acknowledged.
//! Kept continuously from the node's start, so a sweep needs no wait of its own: a chunk put at
//! or after `since` is known as long as the history reaches back to `since`.
//!
//! Compact: a chunk is remembered by the first 8 bytes of its hash with the time of its last put
//! (two chunks sharing a prefix only keep each other one window longer — never deleted early),
//! and one-second buckets list what to forget once they are older than the retention.
//!
//! Each entry also says who put it: one writer (with the highest batch number of its puts), or
//! "anonymous or several". A writer's release may skip over its own puts only (see
//! `release.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chunk_engine::ChunkHash;
use node_client::Writer;

/// Width of one bucket of the window.
const BUCKET_MS: u64 = 1000;

/// The chunks put on this node within the retention (at least every round's write window).
pub struct PutTracker {
    base: Instant,
    inner: Mutex<Window>,
}

struct Window {
    /// Puts are forgotten once this much older than now.
    retention_ms: u64,
    /// History is complete from this time on (ms since `base`): the tracker's start, or the end
    /// of the last bucket forgotten.
    complete_from_ms: u64,
    /// Nothing was stored on this node before the tracker began (its chunk store was empty):
    /// the history is complete from the beginning of time, not only from the start.
    since_forever: bool,
    /// Chunk key → its last put.
    last_put: HashMap<u64, Put>,
    /// Oldest first: (bucket start, keys put in it).
    buckets: VecDeque<(u64, Vec<u64>)>,
}

/// The last put of a chunk key, and who put it since the entry appeared.
#[derive(Debug, Clone, Copy)]
struct Put {
    /// Time of the last put (ms since `base`).
    at: u64,
    /// The one writer of every put the entry has seen; 0: anonymous, or more than one writer.
    writer: u64,
    /// That writer's highest batch number among them.
    seq: u64,
}

fn key(hash: &ChunkHash) -> u64 {
    u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes"))
}

impl Default for PutTracker {
    fn default() -> Self {
        PutTracker::new(cluster::gc::WRITE_WINDOW)
    }
}

impl PutTracker {
    /// Starts tracking now, keeping puts for `retention`.
    pub fn new(retention: Duration) -> Self {
        PutTracker {
            base: Instant::now(),
            inner: Mutex::new(Window {
                retention_ms: retention.as_millis() as u64,
                complete_from_ms: 0,
                since_forever: false,
                last_put: HashMap::new(),
                buckets: VecDeque::new(),
            }),
        }
    }

    /// Says that the node stored no chunk before the tracker began (an empty chunk store at
    /// start): no put before the start can be awaiting its reference, so sweeps and releases
    /// need not wait a window of uptime.
    pub fn complete_from_start(&self) {
        self.inner.lock().expect("tracker lock").since_forever = true;
    }

    /// `since` in ms after `base`; `None` when it is before the start and the history does not
    /// reach back there.
    fn since_ms(&self, w: &Window, since: Instant) -> Option<u64> {
        match since.checked_duration_since(self.base) {
            Some(d) => Some(d.as_millis() as u64),
            None if w.since_forever && w.complete_from_ms == 0 => Some(0),
            None => None,
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Notes an anonymous put (or an added reference, or a repair copy) of `hash`; call before
    /// it is acknowledged.
    pub fn record(&self, hash: &ChunkHash) {
        self.record_by(hash, Writer::default())
    }

    /// Notes a put of `hash` by `writer`; call before the put is acknowledged.
    pub fn record_by(&self, hash: &ChunkHash, writer: Writer) {
        let now = self.ms(Instant::now());
        let k = key(hash);
        let mut w = self.inner.lock().expect("tracker lock");
        let put = match w.last_put.get(&k) {
            None => Put { at: now, writer: writer.id, seq: writer.seq },
            Some(p) if p.writer == writer.id && writer.id != 0 => Put { at: now, writer: writer.id, seq: p.seq.max(writer.seq) },
            Some(_) => Put { at: now, writer: 0, seq: 0 },
        };
        w.last_put.insert(k, put);
        let bucket = now - now % BUCKET_MS;
        match w.buckets.back_mut() {
            Some((start, keys)) if *start == bucket => keys.push(k),
            _ => w.buckets.push_back((bucket, vec![k])),
        }
        w.expire(now);
    }

    /// Whether `hash` may have been put at or after `since`: true when it was, and when the
    /// history no longer (or not yet) reaches back to `since` — the caller then keeps the chunk.
    pub fn put_since(&self, hash: &ChunkHash, since: Instant) -> bool {
        let w = self.inner.lock().expect("tracker lock");
        let Some(since) = self.since_ms(&w, since) else { return true }; // before the start
        since < w.complete_from_ms || w.last_put.get(&key(hash)).is_some_and(|p| p.at >= since)
    }

    /// [`put_since`](Self::put_since), not counting puts by `writer` (non-zero) numbered up to
    /// `upto`: true when anyone else (or this writer in a later batch) may have put `hash` at or
    /// after `since`, or the history does not reach back to `since`.
    pub fn put_since_except(&self, hash: &ChunkHash, since: Instant, writer: u64, upto: u64) -> bool {
        let w = self.inner.lock().expect("tracker lock");
        let Some(since) = self.since_ms(&w, since) else { return true };
        if since < w.complete_from_ms {
            return true;
        }
        match w.last_put.get(&key(hash)) {
            None => false,
            Some(p) if p.at < since => false,
            Some(p) => !(writer != 0 && p.writer == writer && p.seq <= upto),
        }
    }

    /// Whether the history reaches back `window` from now, so a sweep may trust it. Widens the
    /// retention to `window` if it was shorter (history then fills up over the next `window`).
    pub fn covers(&self, window: Duration) -> bool {
        let now = self.ms(Instant::now());
        let window = window.as_millis() as u64;
        let mut w = self.inner.lock().expect("tracker lock");
        w.retention_ms = w.retention_ms.max(window);
        w.expire(now);
        (w.since_forever && w.complete_from_ms == 0) || (now >= window && now - window >= w.complete_from_ms)
    }

    /// Distinct chunks (by key) remembered now.
    pub fn tracked(&self) -> usize {
        let now = self.ms(Instant::now());
        let mut w = self.inner.lock().expect("tracker lock");
        w.expire(now);
        w.last_put.len()
    }
}

impl Window {
    /// Forgets buckets that ended more than the retention ago.
    fn expire(&mut self, now: u64) {
        while let Some((start, _)) = self.buckets.front() {
            let end = start + BUCKET_MS;
            if end + self.retention_ms >= now {
                break;
            }
            let (_, keys) = self.buckets.pop_front().expect("front exists");
            for k in keys {
                if self.last_put.get(&k).is_some_and(|p| p.at < end) {
                    self.last_put.remove(&k);
                }
            }
            self.complete_from_ms = self.complete_from_ms.max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> ChunkHash {
        ChunkHash::of(&i.to_le_bytes())
    }

    #[test]
    fn a_put_is_known_from_its_time_on_and_not_before() {
        let t = PutTracker::new(Duration::from_secs(60));
        let before = Instant::now();
        t.record(&h(1));
        assert!(t.put_since(&h(1), before));
        assert!(!t.put_since(&h(2), before));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!t.put_since(&h(1), Instant::now()), "a put before `since` does not count");
        t.record(&h(1));
        assert!(t.put_since(&h(1), before), "the last put counts");
    }

    #[test]
    fn history_before_the_start_is_unknown_so_chunks_are_kept() {
        let t = PutTracker::new(Duration::from_secs(60));
        let long_ago = Instant::now() - Duration::from_secs(10);
        // `since` before the tracker began: anything may have been put then.
        assert!(t.put_since(&h(7), long_ago));
        assert!(!t.covers(Duration::from_secs(5)));
        assert!(t.covers(Duration::ZERO));
    }

    #[test]
    fn puts_older_than_the_retention_are_forgotten_and_history_moves_on() {
        let t = PutTracker::new(Duration::from_millis(200));
        t.record(&h(1));
        std::thread::sleep(Duration::from_millis(1300));
        t.record(&h(2));
        assert_eq!(t.tracked(), 1, "the first bucket expired");
        // Asking about a time the forgotten bucket covered: unknown, so kept.
        let early = t.base + Duration::from_millis(10);
        assert!(t.put_since(&h(1), early));
        // After it: known, and h(1) was not put since.
        let later = Instant::now() - Duration::from_millis(100);
        assert!(!t.put_since(&h(1), later));
        assert!(t.put_since(&h(2), later));
        assert!(t.covers(Duration::from_millis(100)));
    }

    #[test]
    fn a_longer_window_widens_the_retention_but_waits_for_history() {
        let t = PutTracker::new(Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(1250));
        assert!(t.covers(Duration::from_millis(500)), "nothing expired yet: complete since start");
        t.record(&h(3));
        assert!(t.covers(Duration::from_secs(1)));
        assert!(!t.covers(Duration::from_secs(60)), "the node has not run that long");
        // The retention is now 60 s: the put stays known.
        std::thread::sleep(Duration::from_millis(1100));
        t.record(&h(4));
        assert_eq!(t.tracked(), 2);
    }

    #[test]
    fn a_writer_may_skip_over_its_own_earlier_puts_only() {
        let t = PutTracker::new(Duration::from_secs(60));
        let before = Instant::now();
        let me = Writer { id: 7, seq: 3 };
        t.record_by(&h(1), me);
        t.record_by(&h(1), Writer { id: 7, seq: 2 });
        assert!(t.put_since(&h(1), before), "still a put for everyone else");
        assert!(!t.put_since_except(&h(1), before, 7, 3), "its own puts up to 3");
        assert!(t.put_since_except(&h(1), before, 7, 2), "a put of batch 3 is not vouched for by 2");
        assert!(t.put_since_except(&h(1), before, 8, 99), "another writer's release");
        assert!(t.put_since_except(&h(1), before, 0, 99), "anonymous releases skip nothing");
        // Someone else puts it too: nobody may skip it any more.
        t.record_by(&h(1), Writer { id: 9, seq: 1 });
        t.record_by(&h(1), me);
        assert!(t.put_since_except(&h(1), before, 7, 100));
        // Anonymous puts (repair copies, refs) count for everyone.
        t.record_by(&h(2), me);
        t.record(&h(2));
        assert!(t.put_since_except(&h(2), before, 7, 100));
        // Never put: nothing holds it.
        assert!(!t.put_since_except(&h(3), before, 7, 0));
        // Before the history began: unknown, held.
        assert!(t.put_since_except(&h(3), before - Duration::from_secs(1), 7, 100));
    }

    #[test]
    fn a_node_that_started_empty_knows_its_whole_history() {
        let t = PutTracker::new(Duration::from_millis(200));
        t.complete_from_start();
        let long_ago = Instant::now() - Duration::from_secs(10);
        assert!(t.covers(Duration::from_millis(150)), "nothing was stored before the start");
        assert!(!t.put_since(&h(7), long_ago));
        t.record(&h(7));
        assert!(t.put_since(&h(7), long_ago));
        assert!(!t.put_since_except(&h(8), long_ago, 1, 1));
        // Once buckets are forgotten, only what the retention keeps is known.
        std::thread::sleep(Duration::from_millis(1300));
        t.record(&h(9));
        assert!(t.put_since(&h(8), long_ago), "the history no longer reaches back that far");
        assert!(!t.covers(Duration::from_secs(60)));
    }

    #[test]
    fn a_shared_prefix_only_keeps_chunks_longer() {
        let t = PutTracker::new(Duration::from_secs(60));
        let before = Instant::now();
        let a = h(1);
        let mut b = h(2);
        b.0[..8].copy_from_slice(&a.0[..8]);
        t.record(&a);
        assert!(t.put_since(&b, before), "an alias counts as put: kept, never deleted early");
    }
}
