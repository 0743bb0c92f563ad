//! The journal's on-disk formats — the state file, the segment header, the record — each with
//! the encoder its writer uses and the decoder its reader uses.
//!
//! ```text
//! STATE (JSON, format_version::json): {"version":1,"epoch":E,"trimmed_upto":T}
//! segment header (40 bytes):  magic "CAIRNJNL" | version u32 | header length u32 | number u64
//!                             | salt u64 | check: blake3(bytes 0..32)[..8]
//! record (48 + payload):      magic "JRC1" | payload length u32 | seq u64 | epoch u64
//!                             | header check: blake3(salt ‖ bytes 0..24)[..8]
//!                             | checksum: blake3(salt ‖ bytes 0..24 ‖ payload)[..16] | payload
//! ```
//! Integers are little-endian. The salt is random per segment file, so a record image found
//! inside another record's payload (or copied from another file) never verifies there.

use serde::{Deserialize, Serialize};

use super::JournalError;

/// The version of every journal format this build writes (and the newest it reads).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The state file in a journal's directory.
pub(crate) const STATE_FILE: &str = "STATE";
/// The extension of segment files (`<number, 20 digits>.jseg`).
pub(crate) const SEGMENT_EXT: &str = "jseg";

const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNJNL";
/// Bytes of the segment header; records start here.
pub(crate) const SEGMENT_HEADER_LEN: usize = 40;
const RECORD_MAGIC: &[u8; 4] = b"JRC1";
/// Bytes of a record before its payload.
pub(crate) const RECORD_HEADER_LEN: usize = 48;

/// A journal's durable state: the highest epoch sealed or appended, and the trim point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    /// The highest epoch sealed or appended; appends of lower epochs are refused.
    pub epoch: u64,
    /// Records with seq <= this are forgotten (and appends of them refused).
    pub trimmed_upto: u64,
}

impl State {
    /// The state file's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        format_version::json::encode(self, FORMAT_VERSION)
    }

    /// Reads what [`encode`](Self::encode) wrote; `what` names the file in errors.
    pub(crate) fn decode(what: &str, bytes: &[u8]) -> Result<State, JournalError> {
        match format_version::json::decode(what, bytes, FORMAT_VERSION) {
            Ok((_, s)) => Ok(s),
            Err(format_version::json::JsonRecordError::Newer(e)) => Err(JournalError::Format(e.to_string())),
            Err(e) => Err(JournalError::Corrupt(e.to_string())),
        }
    }
}

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The number in the file's name.
    pub number: u64,
    /// Mixed into every record's checks.
    pub salt: u64,
}

/// Why a segment header does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadHeader {
    /// Shorter than a header, wrong magic or check: torn or damaged.
    Damaged(&'static str),
    /// Written by a newer release (the message names both versions).
    Newer(String),
}

fn check8(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().as_bytes()[..8].try_into().expect("8 bytes")
}

impl SegmentHeader {
    /// The header's bytes.
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.number.to_le_bytes());
        b[24..32].copy_from_slice(&self.salt.to_le_bytes());
        let check = check8(&[&b[0..32]]);
        b[32..40].copy_from_slice(&check);
        b
    }

    /// Reads a header from the first bytes of a segment file (`what` names it in errors).
    pub(crate) fn decode(what: &str, b: &[u8]) -> Result<SegmentHeader, BadHeader> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(BadHeader::Damaged("shorter than a segment header"));
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err(BadHeader::Damaged("bad magic"));
        }
        if b[32..40] != check8(&[&b[0..32]]) {
            return Err(BadHeader::Damaged("header check fails"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        format_version::check(format!("journal segment {what}"), u32_at(8), FORMAT_VERSION)
            .map_err(|e| BadHeader::Newer(e.to_string()))?;
        if u32_at(12) as usize != SEGMENT_HEADER_LEN {
            return Err(BadHeader::Damaged("unexpected header length"));
        }
        Ok(SegmentHeader { number: u64_at(16), salt: u64_at(24) })
    }
}

/// A record's header: what it says about itself, its header check verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Payload bytes after the header.
    pub len: u32,
    pub seq: u64,
    pub epoch: u64,
    /// blake3(salt ‖ header fields ‖ payload), first 16 bytes.
    checksum: [u8; 16],
}

/// The hasher after `salt` and a record's first 24 bytes (shared by both checks).
fn fields_hasher(salt: u64, fields: &[u8]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(fields);
    h
}

fn first<const N: usize>(h: &blake3::Hasher) -> [u8; N] {
    h.finalize().as_bytes()[..N].try_into().expect("N <= 32")
}

/// One record's bytes — header then payload — for a segment with `salt`.
pub(crate) fn encode_record(salt: u64, seq: u64, epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    b.extend_from_slice(RECORD_MAGIC);
    b.extend_from_slice(&u32::try_from(payload.len()).expect("payload under 4 GiB").to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    let mut h = fields_hasher(salt, &b[0..24]);
    let header_check: [u8; 8] = first(&h);
    h.update(payload);
    let checksum: [u8; 16] = first(&h);
    b.extend_from_slice(&header_check);
    b.extend_from_slice(&checksum);
    b.extend_from_slice(payload);
    b
}

impl RecordHeader {
    /// The header in `b` (at least [`RECORD_HEADER_LEN`] bytes), if its magic and header check
    /// hold for a segment with `salt`; its length can then be trusted.
    pub(crate) fn decode(salt: u64, b: &[u8]) -> Option<RecordHeader> {
        if b.len() < RECORD_HEADER_LEN || &b[0..4] != RECORD_MAGIC {
            return None;
        }
        let h = fields_hasher(salt, &b[0..24]);
        if b[24..32] != first::<8>(&h) {
            return None;
        }
        Some(RecordHeader {
            len: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            epoch: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            checksum: b[32..48].try_into().expect("16 bytes"),
        })
    }

    /// Whether `payload` is what this header's checksum covers.
    pub(crate) fn verifies(&self, salt: u64, payload: &[u8]) -> bool {
        if payload.len() != self.len as usize {
            return false;
        }
        let mut fields = [0u8; 24];
        fields[0..4].copy_from_slice(RECORD_MAGIC);
        fields[4..8].copy_from_slice(&self.len.to_le_bytes());
        fields[8..16].copy_from_slice(&self.seq.to_le_bytes());
        fields[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        let mut h = fields_hasher(salt, &fields);
        h.update(payload);
        first::<16>(&h) == self.checksum
    }

    /// Bytes the record takes in its segment.
    pub(crate) fn span(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + self.len as u64
    }
}

/// Where the magic of a record may start in `b`: the offsets to try when looking for the next
/// record after a damaged one.
pub(crate) fn record_magic_positions(b: &[u8]) -> impl Iterator<Item = usize> + '_ {
    b.windows(RECORD_MAGIC.len()).enumerate().filter(|(_, w)| *w == RECORD_MAGIC).map(|(i, _)| i)
}

/// A segment file's name.
pub(crate) fn segment_file_name(number: u64) -> String {
    format!("{number:020}.{SEGMENT_EXT}")
}

/// The number of a segment file's name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_reader_and_a_newer_version_is_refused() {
        let s = State { epoch: 7, trimmed_upto: 42 };
        let bytes = s.encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], FORMAT_VERSION);
        assert_eq!(State::decode("j/STATE", &bytes).unwrap(), s);
        let newer = br#"{"version": 2, "epoch": 1, "trimmed_upto": 0}"#;
        let e = State::decode("j/STATE", newer).unwrap_err();
        assert!(matches!(e, JournalError::Format(_)), "{e}");
        assert!(e.to_string().contains("format version 2"), "{e}");
        assert!(matches!(State::decode("j/STATE", b"{not json"), Err(JournalError::Corrupt(_))));
    }

    #[test]
    fn segment_header_round_trips_and_damage_or_newer_versions_are_named() {
        let h = SegmentHeader { number: 12345, salt: 0xdead_beef_0bad_cafe };
        let b = h.encode();
        assert_eq!(&b[0..8], b"CAIRNJNL");
        assert_eq!(SegmentHeader::decode("x", &b), Ok(h));
        assert!(matches!(SegmentHeader::decode("x", &b[..20]), Err(BadHeader::Damaged(_))));
        let mut bad = b;
        bad[17] ^= 1;
        assert!(matches!(SegmentHeader::decode("x", &bad), Err(BadHeader::Damaged(_))));
        // A newer version, with a check that holds: refused as newer, not as damaged.
        let mut newer = b;
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        let check = check8(&[&newer[0..32]]);
        newer[32..40].copy_from_slice(&check);
        match SegmentHeader::decode("x", &newer) {
            Err(BadHeader::Newer(m)) => assert!(m.contains("version 2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn record_round_trips_and_every_damaged_byte_is_caught() {
        let salt = 99;
        let b = encode_record(salt, 5, 3, b"hello journal");
        assert_eq!(b.len(), RECORD_HEADER_LEN + 13);
        let h = RecordHeader::decode(salt, &b).unwrap();
        assert_eq!((h.len, h.seq, h.epoch, h.span()), (13, 5, 3, b.len() as u64));
        assert!(h.verifies(salt, &b[RECORD_HEADER_LEN..]));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x10;
            let ok = RecordHeader::decode(salt, &d).is_some_and(|h| h.verifies(salt, &d[RECORD_HEADER_LEN..]));
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
        assert!(RecordHeader::decode(salt + 1, &b).is_none(), "another segment's salt");
        assert_eq!(record_magic_positions(&[&b[..], &b[..]].concat()).collect::<Vec<_>>(), vec![0, b.len()]);
    }

    #[test]
    fn segment_file_names_sort_by_number_and_parse_back() {
        assert_eq!(segment_file_name(42), "00000000000000000042.jseg");
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_file_name(9) < segment_file_name(10));
        for bad in ["42.jseg", "STATE", "0000000000000000004x.jseg", "00000000000000000042.tmp"] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }
}
