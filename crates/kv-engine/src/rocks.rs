//! The RocksDB implementation of [`KvEngine`]; the only module in the workspace that names RocksDB.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options, SnapshotWithThreadMode, WriteOptions};

use crate::{BatchOp, KvEngine, KvError, KvPair, KvSnapshot, Visit, WriteBatch};

/// A RocksDB database used as one ordered keyspace.
pub struct RocksEngine {
    /// Shared with the snapshots taken of it, which must not outlive it.
    db: Arc<DB>,
}

impl RocksEngine {
    /// Opens (creating if missing) the database in directory `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(8 << 20);
        // Reuse WAL files: syncing an overwrite of an existing file skips the file-size update
        // an append needs, which is most of a small synced write here.
        opts.set_recycle_log_file_num(4);
        // Bloom filters make lookups of absent keys (every new chunk, every create) cheap.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&Cache::new_lru_cache(64 << 20));
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.1);
        let db = DB::open(&opts, path)
            .map_err(|e| KvError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(Self { db: Arc::new(db) })
    }
}

fn backend(e: rocksdb::Error) -> KvError {
    KvError::Backend(e.to_string())
}

impl KvEngine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.db.get(key).map_err(backend)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), KvError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put(k, v) => wb.put(k, v),
                BatchOp::Delete(k) => wb.delete(k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(backend)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KvPair>, KvError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.db.iterator(IteratorMode::From(start, Direction::Forward)) {
            let (k, v) = item.map_err(backend)?;
            if let Some(e) = end
                && k.as_ref() >= e
            {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), KvError> {
        self.db.flush_wal(true).map_err(backend)
    }

    fn snapshot(&self) -> Result<Box<dyn KvSnapshot>, KvError> {
        let db = self.db.clone();
        let snap = db.snapshot();
        // SAFETY: the snapshot borrows the `DB`, which sits on the heap behind the `Arc` stored
        // beside it in `RocksSnapshot`: it never moves, and it is dropped only after the snapshot
        // (fields drop in declaration order), so the borrow is valid for the snapshot's whole life.
        let snap =
            unsafe { std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(snap) };
        Ok(Box::new(RocksSnapshot { snap, _db: db }))
    }
}

/// A RocksDB snapshot and the database it reads from.
struct RocksSnapshot {
    /// Declared before `_db`, so it is released first.
    snap: SnapshotWithThreadMode<'static, DB>,
    _db: Arc<DB>,
}

impl KvSnapshot for RocksSnapshot {
    fn for_each(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> Result<(), KvError> {
        for item in self.snap.iterator(IteratorMode::From(start, Direction::Forward)) {
            let (k, v) = item.map_err(backend)?;
            if end.is_some_and(|e| k.as_ref() >= e) {
                break;
            }
            visit(&k, &v)?;
        }
        Ok(())
    }
}
