//! An in-memory [`KvEngine`] over a `BTreeMap`: the reference semantics for conformance tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::{BatchOp, KvEngine, KvError, KvPair, KvSnapshot, Visit, WriteBatch};

/// A volatile ordered map; `sync` and `flush` are no-ops.
#[derive(Default)]
pub struct MemEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvEngine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.read().expect("mem engine lock").get(key).cloned())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<(), KvError> {
        let mut map = self.map.write().expect("mem engine lock");
        for op in batch.into_ops() {
            match op {
                BatchOp::Put(k, v) => {
                    map.insert(k, v);
                }
                BatchOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KvPair>, KvError> {
        let map = self.map.read().expect("mem engine lock");
        let upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        if let Some(e) = end
            && e <= start
        {
            return Ok(Vec::new());
        }
        Ok(map
            .range((Bound::Included(start.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn snapshot(&self) -> Result<Box<dyn KvSnapshot>, KvError> {
        Ok(Box::new(MemSnapshot(self.map.read().expect("mem engine lock").clone())))
    }
}

/// A copy of the map.
struct MemSnapshot(BTreeMap<Vec<u8>, Vec<u8>>);

impl KvSnapshot for MemSnapshot {
    fn for_each(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> Result<(), KvError> {
        for (k, v) in self.0.range(start.to_vec()..) {
            if end.is_some_and(|e| k.as_slice() >= e) {
                break;
            }
            visit(k, v)?;
        }
        Ok(())
    }
}
