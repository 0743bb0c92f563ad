//! Chunk data on the wire without copying it: `ChunkStore/Put` and `ChunkStore/Get` streams. The
//! sender sends each piece as its own HTTP/2 data frame behind a small gRPC + protobuf prefix; the
//! storage node cuts the `data` field of each received put message out of the frames as slices.
//!
//! The messages are ordinary gRPC-framed `PutRequest`s and `GetResponse`s (any gRPC client may
//! call Put and Get); only the encoding and decoding skip the copies tonic's generic codec makes
//! (one per replica on the client and one per put on the node — about a fifth of the CPU a
//! replicated put costs here — and one per get on the node).

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_proto::chunk::v1 as pb;
use prost::Message;
use tonic::Status;

/// The HTTP/2 path of the Put method.
pub const PUT_PATH: &str = "/cairn.chunk.v1.ChunkStore/Put";
/// The HTTP/2 path of the Get method.
pub const GET_PATH: &str = "/cairn.chunk.v1.ChunkStore/Get";
/// gRPC message header: compression flag and big-endian length.
const GRPC_HEADER: usize = 5;
/// Protobuf field numbers of `PutRequest`.
const FIELD_HASH: u64 = 1;
const FIELD_LENGTH: u64 = 2;
const FIELD_DATA: u64 = 3;
const FIELD_WRITER: u64 = 4;
const FIELD_WRITER_SEQ: u64 = 5;
/// Protobuf field number of `GetResponse.data`.
const GET_FIELD_DATA: u32 = 2;

/// The frames of a put stream for `data`, pieces of at most `piece` bytes: per message a small
/// prefix (gRPC header, `hash` and `length` on the first, the `data` key and length) and the
/// piece itself, a slice of `data`. `writer` goes on the first message (see [`crate::Writer`]).
pub fn encode_put(claimed: Option<&[u8]>, writer: crate::Writer, data: &Bytes, piece: usize) -> Vec<Bytes> {
    encode_pieces(data, piece, FIELD_DATA as u32, |first| pb::PutRequest {
        hash: if first { claimed.map(<[u8]>::to_vec).unwrap_or_default() } else { Vec::new() },
        length: if first { data.len() as u64 } else { 0 },
        data: Bytes::new(),
        writer: if first { writer.id } else { 0 },
        writer_seq: if first { writer.seq } else { 0 },
    })
}

/// The frames of a get answer carrying `data`, as [`encode_put`]'s: `length` on the first message,
/// each piece a slice of `data`.
pub fn encode_get(data: &Bytes, piece: usize) -> Vec<Bytes> {
    encode_pieces(data, piece, GET_FIELD_DATA, |first| pb::GetResponse {
        length: if first { data.len() as u64 } else { 0 },
        data: Bytes::new(),
    })
}

/// Messages of `data` in pieces of at most `piece` bytes: `head(first)` encodes each message's
/// other fields, then the piece follows as field `data_field`, a frame of its own.
fn encode_pieces<M: Message>(data: &Bytes, piece: usize, data_field: u32, head: impl Fn(bool) -> M) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(2 * (data.len() / piece + 1));
    let mut off = 0;
    loop {
        let end = (off + piece).min(data.len());
        let head = head(off == 0);
        let n = end - off;
        let mut key = BytesMut::with_capacity(11);
        if n > 0 {
            prost::encoding::encode_key(data_field, prost::encoding::WireType::LengthDelimited, &mut key);
            prost::encoding::encode_varint(n as u64, &mut key);
        }
        let len = head.encoded_len() + key.len() + n;
        let mut prefix = BytesMut::with_capacity(GRPC_HEADER + len - n);
        grpc_header(&mut prefix, len);
        head.encode(&mut prefix).expect("capacity reserved");
        prefix.put_slice(&key);
        frames.push(prefix.freeze());
        if n > 0 {
            frames.push(data.slice(off..end));
        }
        off = end;
        if off >= data.len() {
            return frames;
        }
    }
}

/// The single gRPC message of a unary request body (a get request), decoded; `None` when the
/// body is not exactly one uncompressed message.
pub fn decode_unary<M: Message + Default>(body: &[u8]) -> Option<M> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if flag != 0 || rest.len() != 4 + len {
        return None;
    }
    M::decode(&rest[4..]).ok()
}

/// One gRPC message: header and the encoded `msg` (the node's answer to a put).
pub fn encode_message(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(GRPC_HEADER + len);
    grpc_header(&mut buf, len);
    msg.encode(&mut buf).expect("capacity reserved");
    buf.freeze()
}

/// The gRPC message header: not compressed, `len` bytes follow.
fn grpc_header(buf: &mut BytesMut, len: usize) {
    buf.put_u8(0);
    buf.put_u32(len as u32);
}

/// One `PutRequest` whose `data` is a list of slices of the received frames.
#[derive(Debug, Default)]
pub struct PutMessage {
    /// Claimed hash (first message only).
    pub hash: Vec<u8>,
    /// Total chunk length (first message only).
    pub length: u64,
    /// Who puts it (first message only; the default: anonymous).
    pub writer: crate::Writer,
    /// The data field, in order.
    pub data: Vec<Bytes>,
}

/// Reassembles `PutRequest` messages from received body frames.
#[derive(Debug, Default)]
pub struct PutDecoder {
    queue: Parts,
}

impl PutDecoder {
    /// Adds a received data frame.
    pub fn push(&mut self, frame: Bytes) {
        self.queue.push(frame);
    }

    /// The next whole message, once all of it has arrived; messages over `max` bytes are refused.
    pub fn next(&mut self, max: usize) -> Result<Option<PutMessage>, Status> {
        if self.queue.len < GRPC_HEADER {
            return Ok(None);
        }
        let mut header = [0u8; GRPC_HEADER];
        self.queue.peek(&mut header);
        if header[0] != 0 {
            return Err(Status::unimplemented("compressed put messages are not supported"));
        }
        let len = u32::from_be_bytes(header[1..].try_into().expect("4 bytes")) as usize;
        if len > max {
            return Err(Status::resource_exhausted(format!("put message of {len} bytes exceeds the limit of {max}")));
        }
        if self.queue.len < GRPC_HEADER + len {
            return Ok(None);
        }
        self.queue.take(GRPC_HEADER);
        let mut msg = Parts::default();
        for p in self.queue.take(len) {
            msg.push(p);
        }
        parse(msg).map(Some)
    }

    /// True when no partial message is buffered (the stream may end here).
    pub fn is_empty(&self) -> bool {
        self.queue.len == 0
    }
}

fn parse(mut m: Parts) -> Result<PutMessage, Status> {
    let bad = |what: &str| Status::invalid_argument(format!("malformed PutRequest: {what}"));
    let mut out = PutMessage::default();
    while m.len > 0 {
        let key = m.varint().ok_or_else(|| bad("truncated key"))?;
        match (key >> 3, key & 7) {
            (FIELD_LENGTH, 0) => out.length = m.varint().ok_or_else(|| bad("truncated length"))?,
            (FIELD_WRITER, 0) => out.writer.id = m.varint().ok_or_else(|| bad("truncated writer"))?,
            (FIELD_WRITER_SEQ, 0) => out.writer.seq = m.varint().ok_or_else(|| bad("truncated writer_seq"))?,
            (_, 0) => {
                m.varint().ok_or_else(|| bad("truncated varint"))?;
            }
            (field, 2) => {
                let n = m.varint().ok_or_else(|| bad("truncated field length"))? as usize;
                if n > m.len {
                    return Err(bad("field longer than the message"));
                }
                let parts = m.take(n);
                match field {
                    FIELD_DATA => out.data.extend(parts),
                    FIELD_HASH => out.hash = parts.concat(),
                    _ => {}
                }
            }
            (_, 1) if m.len >= 8 => drop(m.take(8)),
            (_, 5) if m.len >= 4 => drop(m.take(4)),
            _ => return Err(bad("unsupported wire type")),
        }
    }
    Ok(out)
}

/// A byte queue made of received frames; taking bytes slices them, never copies.
#[derive(Debug, Default)]
struct Parts {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Parts {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }

    /// Copies the first `out.len()` bytes without consuming them (the caller checked the length).
    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for p in &self.parts {
            let n = (out.len() - filled).min(p.len());
            out[filled..filled + n].copy_from_slice(&p[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
    }

    /// The next `n` bytes as slices (the caller checked the length).
    fn take(&mut self, mut n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.len -= n;
        while n > 0 {
            let front = self.parts.front_mut().expect("length checked");
            if front.len() <= n {
                n -= front.len();
                out.push(self.parts.pop_front().expect("front exists"));
            } else {
                out.push(front.split_to(n));
                n = 0;
            }
        }
        out
    }

    fn byte(&mut self) -> Option<u8> {
        let front = self.parts.front_mut()?;
        let b = front.get_u8();
        self.len -= 1;
        if front.is_empty() {
            self.parts.pop_front();
        }
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(frames: Vec<Bytes>, split: usize) -> Vec<PutMessage> {
        // Re-cut the frames into pieces of `split` bytes, as HTTP/2 may deliver them.
        let all: Vec<u8> = frames.concat();
        let mut d = PutDecoder::default();
        let mut out = Vec::new();
        for c in all.chunks(split) {
            d.push(Bytes::copy_from_slice(c));
            while let Some(m) = d.next(usize::MAX).unwrap() {
                out.push(m);
            }
        }
        assert!(d.is_empty());
        out
    }

    #[test]
    fn encoded_stream_is_standard_protobuf_and_decodes_back_whatever_the_frame_cuts() {
        let data = Bytes::from((0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let hash = [7u8; 32];
        let frames = encode_put(Some(&hash), crate::Writer::default(), &data, 4096);
        // prost decodes the same bytes as three ordinary messages.
        let all = Bytes::from(frames.concat());
        let mut rest = all.clone();
        let mut joined = Vec::new();
        for i in 0..3 {
            assert_eq!(rest[0], 0);
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            let m = pb::PutRequest::decode(&rest[5..5 + len]).unwrap();
            assert_eq!(m.hash.is_empty(), i > 0);
            joined.extend_from_slice(&m.data);
            rest = rest.slice(5 + len..);
        }
        assert!(rest.is_empty());
        assert_eq!(joined, data);
        for split in [1, 3, 5, 4096, 5000, 100_000] {
            let msgs = decode_all(frames.clone(), split);
            assert_eq!(msgs.len(), 3);
            assert_eq!(msgs[0].hash, hash);
            assert_eq!(msgs[0].length, 10_000);
            let got: Vec<u8> = msgs.iter().flat_map(|m| m.data.iter().flat_map(|b| b.iter().copied())).collect();
            assert_eq!(got, data);
        }
    }

    #[test]
    fn the_writer_rides_on_the_first_message_only() {
        let data = Bytes::from(vec![9u8; 9000]);
        let writer = crate::Writer { id: u64::MAX - 3, seq: 300 };
        let frames = encode_put(None, writer, &data, 4096);
        let msgs = decode_all(frames.clone(), 7);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].writer, writer);
        assert!(msgs[1..].iter().all(|m| m.writer == crate::Writer::default()));
        // And prost reads the same fields.
        let all = Bytes::from(frames.concat());
        let len = u32::from_be_bytes(all[1..5].try_into().unwrap()) as usize;
        let m = pb::PutRequest::decode(&all[5..5 + len]).unwrap();
        assert_eq!((m.writer, m.writer_seq), (writer.id, writer.seq));
    }

    #[test]
    fn get_answers_are_standard_protobuf_and_requests_decode() {
        let data = Bytes::from((0..10_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        let frames = encode_get(&data, 4096);
        assert_eq!(frames.len(), 6, "three messages, each a prefix and a slice");
        let mut rest = Bytes::from(frames.concat());
        let mut joined = Vec::new();
        for i in 0..3 {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            let m = pb::GetResponse::decode(&rest[5..5 + len]).unwrap();
            assert_eq!(m.length, if i == 0 { 10_000 } else { 0 });
            joined.extend_from_slice(&m.data);
            rest = rest.slice(5 + len..);
        }
        assert!(rest.is_empty());
        assert_eq!(joined, data);
        let empty = Bytes::from(encode_get(&Bytes::new(), 4096).concat());
        let m = pb::GetResponse::decode(&empty[5..]).unwrap();
        assert_eq!((m.length, m.data.len()), (0, 0));

        let req = pb::GetRequest { hash: vec![9; 32], caller_verifies: true };
        let body = encode_message(&req);
        assert_eq!(decode_unary::<pb::GetRequest>(&body), Some(req));
        assert_eq!(decode_unary::<pb::GetRequest>(&body[..body.len() - 1]), None, "truncated");
        let mut compressed = body.to_vec();
        compressed[0] = 1;
        assert_eq!(decode_unary::<pb::GetRequest>(&compressed), None, "compressed");
        assert_eq!(decode_unary::<pb::GetRequest>(&[]), None);
    }

    #[test]
    fn prost_encoded_messages_decode_too_and_limits_hold() {
        let m = pb::PutRequest { hash: vec![1; 32], length: 3, data: Bytes::from_static(b"abc"), ..Default::default() };
        let mut buf = vec![0u8];
        buf.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut buf).unwrap();
        let msgs = decode_all(vec![Bytes::from(buf.clone())], 2);
        assert_eq!((msgs[0].length, msgs[0].data.concat()), (3, b"abc".to_vec()));
        let mut d = PutDecoder::default();
        d.push(Bytes::from(buf));
        assert_eq!(d.next(10).unwrap_err().code(), tonic::Code::ResourceExhausted);
        let mut d = PutDecoder::default();
        d.push(Bytes::from_static(&[0, 0, 0, 0, 2, 0x1a, 0x05]));
        assert_eq!(d.next(100).unwrap_err().code(), tonic::Code::InvalidArgument);
        let empty = encode_put(None, crate::Writer::default(), &Bytes::new(), 4096);
        let msgs = decode_all(empty, 7);
        assert_eq!((msgs.len(), msgs[0].length, msgs[0].data.len()), (1, 0, 0));
    }
}
