//! Index entries: chunk hash → (segment, offset, length, reference count, quarantine flag).
//!
//! Key: `c` + 32-byte hash. Value (30 bytes): version u8, flags u8, segment u64, offset u64,
//! length u32, references u64, little endian.

use crate::{ChunkError, ChunkHash};

pub(crate) const CHUNK_PREFIX: &[u8] = b"c";
const ENTRY_VERSION: u8 = 1;
const ENTRY_LEN: usize = 30;
const FLAG_QUARANTINED: u8 = 1;

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// One chunk's index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub loc: Location,
    pub refs: u64,
    pub quarantined: bool,
}

pub(crate) fn chunk_key(hash: &ChunkHash) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.extend_from_slice(CHUNK_PREFIX);
    k.extend_from_slice(&hash.0);
    k
}

pub(crate) fn hash_of_key(key: &[u8]) -> Result<ChunkHash, ChunkError> {
    ChunkHash::from_slice(&key[CHUNK_PREFIX.len()..])
}

impl IndexEntry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ENTRY_LEN);
        v.push(ENTRY_VERSION);
        v.push(if self.quarantined { FLAG_QUARANTINED } else { 0 });
        v.extend_from_slice(&self.loc.seg.to_le_bytes());
        v.extend_from_slice(&self.loc.off.to_le_bytes());
        v.extend_from_slice(&self.loc.len.to_le_bytes());
        v.extend_from_slice(&self.refs.to_le_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self, ChunkError> {
        if v.len() != ENTRY_LEN || v[0] != ENTRY_VERSION {
            return Err(ChunkError::BadIndexEntry(hex::encode(v)));
        }
        let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8"));
        Ok(IndexEntry {
            quarantined: v[1] & FLAG_QUARANTINED != 0,
            loc: Location {
                seg: u64_at(2),
                off: u64_at(10),
                len: u32::from_le_bytes(v[18..22].try_into().expect("4")),
            },
            refs: u64_at(22),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_roundtrip() {
        let e = IndexEntry { loc: Location { seg: 7, off: 4096 * 3, len: 99 }, refs: 5, quarantined: true };
        assert_eq!(IndexEntry::decode(&e.encode()).unwrap(), e);
        assert!(IndexEntry::decode(&[2u8; 30]).is_err());
        let k = chunk_key(&ChunkHash([9; 32]));
        assert_eq!(hash_of_key(&k).unwrap(), ChunkHash([9; 32]));
    }
}
