//! Ordered key-value storage behind our own trait, so no other crate ever names RocksDB.
//!
//! [`KvEngine`] is the whole contract: point reads, ordered range scans and atomic write batches
//! (optionally fsynced), and point-in-time read views ([`KvSnapshot`]) that long scans read from
//! while writes go on. [`RocksEngine`] is the production implementation; [`MemEngine`] exists
//! so the same conformance tests (see `tests` below) pin down the semantics every engine must keep.

mod batch;
mod error;
mod mem;
mod rocks;

pub use batch::{BatchOp, WriteBatch};
pub use error::KvError;
pub use mem::MemEngine;
pub use rocks::RocksEngine;

/// A key-value pair as returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Ordered byte-keyed storage with atomic batches.
pub trait KvEngine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Applies every operation of `batch` atomically; with `sync` the call returns only once the
    /// batch is durable on disk (write-ahead log fsynced).
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), KvError>;

    /// Returns up to `limit` pairs with `start <= key < end` (no `end`: to the end of the keyspace),
    /// in key order.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KvPair>, KvError>;

    /// Makes every write so far durable (for writes that were made without `sync`).
    fn flush(&self) -> Result<(), KvError>;

    /// A read-only view of the keyspace as it is now: writes made after this call are not seen
    /// through it. Cheap to take; it pins what it sees until dropped.
    fn snapshot(&self) -> Result<Box<dyn KvSnapshot>, KvError>;
}

/// What [`KvSnapshot::for_each`] calls with each pair; an error stops the walk.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), KvError> + 'a;

/// A point-in-time view taken by [`KvEngine::snapshot`].
pub trait KvSnapshot: Send + Sync {
    /// Visits every pair with `start <= key < end` (no `end`: to the end of the keyspace) in key
    /// order, as of the moment the view was taken; stops at the first error `visit` returns.
    fn for_each(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> Result<(), KvError>;
}

/// Visits every pair with `start <= key < end` in key order, paging through the engine in
/// batches of `page` pairs so that a scan of millions of keys never holds them all in memory.
pub fn for_each_in_range<E: KvEngine + ?Sized>(
    engine: &E,
    start: &[u8],
    end: Option<&[u8]>,
    page: usize,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let mut cursor = start.to_vec();
    loop {
        let pairs = engine.scan(&cursor, end, page)?;
        let full = pairs.len() == page;
        for (k, v) in &pairs {
            visit(k, v)?;
        }
        match pairs.last() {
            Some((k, _)) if full => {
                cursor = k.clone();
                cursor.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// Returns the smallest key greater than every key that starts with `prefix` (None: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod conformance;
