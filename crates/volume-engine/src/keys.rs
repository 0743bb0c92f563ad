//! The engine's keys in the metadata service.
//!
//! ```text
//! vol/gen/<volume id>                  fencing generation (decimal): only an attachment at it commits
//! vol/freeze/<volume id>               present while a snapshot is cut: commits wait (value: expiry, ms)
//! vol/journal/<volume id>              where the volume's write journal is, how far it is folded (JSON)
//! vol/map/<volume id>/<index:016x>     chunk hash (hex) of a block that holds data
//! cluster/refs/<chunk>/vol:<id>:<idx>  the block's chunk reference (cluster::refs)
//! ```

use chunk_engine::ChunkHash;

use crate::error::{EngineError, Result};

pub fn generation_key(id: &str) -> Vec<u8> {
    format!("vol/gen/{id}").into_bytes()
}

pub fn freeze_key(id: &str) -> Vec<u8> {
    format!("vol/freeze/{id}").into_bytes()
}

pub fn journal_key(id: &str) -> Vec<u8> {
    format!("vol/journal/{id}").into_bytes()
}

pub fn map_prefix(id: &str) -> Vec<u8> {
    format!("vol/map/{id}/").into_bytes()
}

pub fn map_key(id: &str, idx: u64) -> Vec<u8> {
    format!("vol/map/{id}/{idx:016x}").into_bytes()
}

/// The reference owner of block `idx` of volume `id`.
pub fn owner(id: &str, idx: u64) -> String {
    format!("vol:{id}:{idx}")
}

/// A block-map entry under `prefix`: its block index and chunk.
pub fn map_entry(prefix: &[u8], key: &[u8], value: &[u8]) -> Result<(u64, ChunkHash)> {
    let idx = block_of(prefix, key)?;
    let hash = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EngineError::Corrupt(format!("block map entry {}", String::from_utf8_lossy(key))))?;
    Ok((idx, hash))
}

/// The block index of a map key under `prefix`.
pub fn block_of(prefix: &[u8], key: &[u8]) -> Result<u64> {
    key.strip_prefix(prefix)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| EngineError::Corrupt(format!("block map key {}", String::from_utf8_lossy(key))))
}

pub use metadata_client::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys_sort_by_block_and_parse_back() {
        let p = map_prefix("blk-1");
        assert!(map_key("blk-1", 2) < map_key("blk-1", 10));
        assert_eq!(block_of(&p, &map_key("blk-1", 77)).unwrap(), 77);
        assert!(block_of(&p, b"vol/map/blk-1/zz").is_err());
        assert!(prefix_end(&p) > map_key("blk-1", u64::MAX));
        // another volume's keys are outside the span
        assert!(!map_key("blk-10", 0).starts_with(&p));
    }
}
