//! The volume's persisted journal formats: the payload of one journal record (the writes of a
//! flush, in order) and the journal's state record in the metadata service (where the journal
//! is and how far it is folded).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Format version of a journal record's payload (its first byte).
pub const PAYLOAD_VERSION: u8 = 1;
/// Payload bytes per journal record at most (a flush writes more as several records).
pub const RECORD_MAX: usize = 1 << 20;

/// One write: `len` bytes at volume offset `offset`; `None` data is zeros (trim, write-zeroes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    pub offset: u64,
    pub len: u64,
    pub data: Option<Bytes>,
}

impl WriteOp {
    /// Bytes it takes in a payload.
    pub fn encoded_len(&self) -> usize {
        17 + self.data.as_ref().map_or(0, |d| d.len())
    }
}

const KIND_DATA: u8 = 0;
const KIND_ZEROS: u8 = 1;

/// The payload of a record holding `ops`, in order.
pub fn encode(ops: &[WriteOp]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + ops.iter().map(WriteOp::encoded_len).sum::<usize>());
    b.put_u8(PAYLOAD_VERSION);
    b.put_u32_le(ops.len() as u32);
    for op in ops {
        b.put_u64_le(op.offset);
        b.put_u64_le(op.len);
        match &op.data {
            Some(d) => {
                b.put_u8(KIND_DATA);
                b.put_slice(d);
            }
            None => b.put_u8(KIND_ZEROS),
        }
    }
    b.freeze()
}

/// The writes a record's payload holds (data as slices of `payload`).
pub fn decode(payload: &Bytes) -> Result<Vec<WriteOp>> {
    let bad = |why: &str| EngineError::Corrupt(format!("journal record: {why}"));
    let mut b = payload.clone();
    if b.remaining() < 5 {
        return Err(bad("too short"));
    }
    let v = b.get_u8();
    if v != PAYLOAD_VERSION {
        return Err(bad(&format!("payload version {v}, this release reads {PAYLOAD_VERSION}")));
    }
    let n = b.get_u32_le() as usize;
    let mut ops = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        if b.remaining() < 17 {
            return Err(bad("cut short"));
        }
        let offset = b.get_u64_le();
        let len = b.get_u64_le();
        let data = match b.get_u8() {
            KIND_DATA => {
                if (b.remaining() as u64) < len {
                    return Err(bad("data cut short"));
                }
                Some(b.split_to(len as usize))
            }
            KIND_ZEROS => None,
            k => return Err(bad(&format!("unknown write kind {k}"))),
        };
        ops.push(WriteOp { offset, len, data });
    }
    if b.has_remaining() {
        return Err(bad("trailing bytes"));
    }
    Ok(ops)
}

/// Cuts `ops` into record payloads of at most about [`RECORD_MAX`] bytes each, in order.
pub fn records(ops: &[WriteOp]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, op) in ops.iter().enumerate() {
        if i > start && size + op.encoded_len() > RECORD_MAX {
            out.push(encode(&ops[start..i]));
            start = i;
            size = 0;
        }
        size += op.encoded_len();
    }
    if start < ops.len() {
        out.push(encode(&ops[start..]));
    }
    out
}

/// Format version of [`JournalState`].
pub const STATE_VERSION: u32 = 1;

/// Where a volume's journal is and how far it is folded (`vol/journal/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    /// The journal's name on its nodes (a new name each time it moves).
    pub name: String,
    /// The storage nodes holding it.
    pub nodes: Vec<String>,
    /// Every record up to this seq is folded into the block map.
    pub folded: u64,
}

impl JournalState {
    pub fn encode(&self) -> Vec<u8> {
        format_version::json::encode(self, STATE_VERSION)
    }

    pub fn decode(what: &str, bytes: &[u8]) -> Result<Self> {
        format_version::json::decode(what, bytes, STATE_VERSION)
            .map(|(_, s)| s)
            .map_err(|e| EngineError::Corrupt(e.to_string()))
    }
}

/// The journal name for incarnation `n` of volume `id`'s journal (storage nodes take
/// `[A-Za-z0-9._-]`: other bytes are written as `%xx`-free hex).
pub fn journal_name(id: &str, n: u64) -> String {
    let safe = id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') && !id.is_empty();
    let base = if safe && id.len() <= 150 {
        id.to_string()
    } else {
        chunk_engine::ChunkHash::of(id.as_bytes()).to_string()
    };
    format!("{base}.{n}")
}

/// The incarnation number in a journal name made by [`journal_name`].
pub fn incarnation(name: &str) -> u64 {
    name.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_refuse_damage() {
        let ops = vec![
            WriteOp { offset: 4096, len: 5, data: Some(Bytes::from_static(b"hello")) },
            WriteOp { offset: 1 << 40, len: 1 << 20, data: None },
            WriteOp { offset: 0, len: 0, data: Some(Bytes::new()) },
        ];
        let p = encode(&ops);
        assert_eq!(decode(&p).unwrap(), ops);
        for cut in [0, 4, 10, p.len() - 1] {
            assert!(decode(&p.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut newer = p.to_vec();
        newer[0] = PAYLOAD_VERSION + 1;
        assert!(decode(&Bytes::from(newer)).unwrap_err().to_string().contains("version"));
        let mut trailing = p.to_vec();
        trailing.push(0);
        assert!(decode(&Bytes::from(trailing)).is_err());
    }

    #[test]
    fn records_split_at_the_size_limit_and_keep_order() {
        let ops: Vec<WriteOp> = (0..40)
            .map(|i| WriteOp { offset: i * 65536, len: 65536, data: Some(Bytes::from(vec![i as u8; 65536])) })
            .collect();
        let recs = records(&ops);
        assert!(recs.len() >= 3);
        assert!(recs.iter().all(|r| r.len() <= RECORD_MAX + 64));
        let back: Vec<WriteOp> = recs.iter().flat_map(|r| decode(r).unwrap()).collect();
        assert_eq!(back, ops);
        // One write larger than the limit is a record of its own.
        let big = vec![WriteOp { offset: 0, len: 3 << 20, data: Some(Bytes::from(vec![1; 3 << 20])) }];
        assert_eq!(records(&big).len(), 1);
        assert!(records(&[]).is_empty());
    }

    #[test]
    fn journal_state_round_trips_with_its_reader() {
        let s = JournalState { name: journal_name("pvc-1", 3), nodes: vec!["n1".into(), "n2".into()], folded: 77 };
        assert_eq!(JournalState::decode("k", &s.encode()).unwrap(), s);
        assert!(String::from_utf8(s.encode()).unwrap().contains("\"version\":1"));
        let newer = format_version::json::encode(&s, STATE_VERSION + 1);
        assert!(JournalState::decode("k", &newer).is_err());
    }

    #[test]
    fn journal_names_are_safe_and_carry_their_incarnation() {
        assert_eq!(journal_name("pvc-abc_1", 2), "pvc-abc_1.2");
        let odd = journal_name("vol/with spaces", 1);
        assert!(odd.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        assert_eq!(incarnation(&odd), 1);
        assert_eq!(incarnation(&journal_name("x", 9)), 9);
    }
}
