//! This client as a releasing writer of the pool (see `cluster::ChunkClient::release`): its
//! puts carry its writer id and a number, and once a commit has removed references it releases
//! those chunks, vouching for every put of its own that no commit in progress relies on. Flushes
//! of different files run at once, so a put's number stays *in flight* from before the put
//! until the commit that references it is done or given up; a release vouches only for numbers
//! below every one in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chunk_engine::ChunkHash;
use cluster::ChunkClient;

/// The client's writer identity and its puts in flight.
pub struct PoolWriter {
    id: u64,
    next: AtomicU64,
    /// Numbers of puts whose commit is not done yet (number → tickets holding it).
    in_flight: Mutex<BTreeMap<u64, usize>>,
}

/// A put's number, in flight while held: hold it until the commit that references the chunk
/// is done or given up.
pub struct Ticket {
    writer: Arc<PoolWriter>,
    seq: u64,
}

impl Ticket {
    /// Who puts: this writer, with this ticket's number.
    pub fn writer(&self) -> cluster::Writer {
        cluster::Writer { id: self.writer.id, seq: self.seq }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut f = self.writer.in_flight.lock().expect("in-flight lock");
        if let Some(n) = f.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                f.remove(&self.seq);
            }
        }
    }
}

impl PoolWriter {
    pub fn new() -> Arc<PoolWriter> {
        Arc::new(PoolWriter { id: cluster::Writer::new_id(), next: AtomicU64::new(1), in_flight: Mutex::default() })
    }

    /// A fresh number for a put about to be made, in flight until the ticket is dropped.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let mut f = self.in_flight.lock().expect("in-flight lock");
        // Taken under the lock: a release never sees a number handed out but not yet in flight.
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        *f.entry(seq).or_default() += 1;
        Ticket { writer: self.clone(), seq }
    }

    /// The highest number this writer vouches for: every put numbered up to it is committed
    /// or given up.
    pub fn settled(&self) -> u64 {
        let f = self.in_flight.lock().expect("in-flight lock");
        match f.keys().next() {
            Some(first) => first - 1,
            None => self.next.load(Ordering::Relaxed) - 1,
        }
    }

    /// Releases chunks whose references a commit of this client removed, in the background:
    /// the nodes delete those nothing else holds at once, pool GC the rest.
    pub fn release(&self, pool: &ChunkClient, mut hashes: Vec<ChunkHash>) {
        if hashes.is_empty() {
            return;
        }
        hashes.sort_unstable();
        hashes.dedup();
        let (pool, id, upto) = (pool.clone(), self.id, self.settled());
        tokio::spawn(async move {
            let deleted = pool.release(&hashes, id, upto).await;
            tracing::trace!(released = hashes.len(), deleted, "released replaced file blocks");
        });
    }
}

/// How long the puts of a commit that failed stay in flight: a commit reported failed (a
/// timeout) may still be in the metadata service's log and apply later, relying on them.
const FAILED_COMMIT_HOLD: std::time::Duration = std::time::Duration::from_secs(120);

/// Keeps the tickets of a commit that failed in flight for a while (see [`FAILED_COMMIT_HOLD`]).
pub fn hold_after_failure(tickets: Vec<Ticket>) {
    if tickets.is_empty() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(FAILED_COMMIT_HOLD).await;
        drop(tickets);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_vouches_only_below_every_put_in_flight() {
        let w = PoolWriter::new();
        assert_eq!(w.settled(), 0);
        let a = w.ticket();
        let b = w.ticket();
        let c = w.ticket();
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 3));
        assert_eq!(w.settled(), 0, "put 1 is in flight");
        drop(b);
        assert_eq!(w.settled(), 0, "put 1 still is");
        drop(a);
        assert_eq!(w.settled(), 2, "put 3 is in flight");
        drop(c);
        assert_eq!(w.settled(), 3);
        let d = w.ticket();
        assert_eq!(d.writer().seq, 4);
        assert_eq!(w.settled(), 3);
    }
}
