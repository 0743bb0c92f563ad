//! Chunk records inside segment files: a 64-byte self-checking header followed by the data.
//!
//! Header layout (little endian): magic u32 `CHK1`, version u16, flags u16, length u32,
//! reserved u32, blake3 hash [32], crc32 of bytes 0..48 u32, zero padding to 64 bytes.
//! A record starts at a multiple of its segment's alignment; a torn or overwritten header fails
//! the magic or CRC check, torn data fails the hash check.

use crate::ChunkHash;

pub(crate) const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"CHK1");
pub(crate) const RECORD_VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 64;

/// The decoded header of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub hash: ChunkHash,
}

impl RecordHeader {
    pub(crate) fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_LEN];
        out.fill(0);
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[16..48].copy_from_slice(&self.hash.0);
        let crc = crc32fast::hash(&out[0..48]);
        out[48..52].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and checks a header; the error says what is wrong with it.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, String> {
        if buf.len() < HEADER_LEN {
            return Err(format!("record header truncated to {} bytes", buf.len()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(0) != RECORD_MAGIC {
            return Err("record header has a bad magic".into());
        }
        let crc = crc32fast::hash(&buf[0..48]);
        if crc != u32_at(48) {
            return Err("record header fails its checksum".into());
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if version != RECORD_VERSION {
            return Err(format!("record format version {version} is not supported"));
        }
        Ok(RecordHeader { len: u32_at(8), hash: ChunkHash(buf[16..48].try_into().expect("32 bytes")) })
    }
}

/// Bytes a record of `len` data bytes occupies in a segment aligned to `align`.
pub(crate) fn record_span(len: u32, align: u64) -> u64 {
    (HEADER_LEN as u64 + len as u64).next_multiple_of(align)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_damage() {
        let h = RecordHeader { len: 12345, hash: ChunkHash::of(b"x") };
        let mut buf = [0u8; HEADER_LEN];
        h.encode(&mut buf);
        assert_eq!(RecordHeader::decode(&buf).unwrap(), h);
        let mut bad = buf;
        bad[9] ^= 1;
        assert!(RecordHeader::decode(&bad).unwrap_err().contains("checksum"));
        let mut bad = buf;
        bad[0] = 0;
        assert!(RecordHeader::decode(&bad).unwrap_err().contains("magic"));
        assert!(RecordHeader::decode(&[0u8; 10]).is_err());
    }

    #[test]
    fn spans_are_aligned() {
        assert_eq!(record_span(0, 64), 64);
        assert_eq!(record_span(1, 64), 128);
        assert_eq!(record_span(4096 - 64, 4096), 4096);
        assert_eq!(record_span(4096, 4096), 8192);
    }
}
