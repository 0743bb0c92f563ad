//! Chunk names: 32-byte blake3 hashes, shown as 64 hex digits.

use std::fmt;
use std::str::FromStr;

use crate::ChunkError;

/// Above this size the hash is computed on all cores.
const PARALLEL_HASH_MIN: usize = 256 << 10;

/// The blake3 hash that names a chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// Hashes `data`, in parallel when it is large.
    pub fn of(data: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        if data.len() >= PARALLEL_HASH_MIN {
            h.update_rayon(data);
        } else {
            h.update(data);
        }
        ChunkHash(*h.finalize().as_bytes())
    }

    /// The 64-hex-digit form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Builds a hash from raw bytes, which must be exactly 32.
    pub fn from_slice(b: &[u8]) -> Result<Self, ChunkError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| ChunkError::InvalidHash(format!("{} bytes", b.len())))?;
        Ok(ChunkHash(arr))
    }
}

impl FromStr for ChunkHash {
    type Err = ChunkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ChunkError::InvalidHash(s.to_string()))?;
        Ok(ChunkHash(out))
    }
}

impl serde::Serialize for ChunkHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({})", &self.to_hex()[..16])
    }
}
