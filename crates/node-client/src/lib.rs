//! The client for one storage node (`cairn.chunk.v1.ChunkStore`): connects, streams chunks in
//! and out, verifies what it reads. Every component that talks to storage nodes uses it.

pub mod chunk_wire;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use cairn_proto::chunk::v1 as pb;
use cairn_proto::chunk::v1::chunk_store_client::ChunkStoreClient;
use chunk_engine::ChunkHash;
use chunk_engine::tree::{Cv, GROUP, groups_match, groups_of, root_of};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Streaming};

/// Data bytes per streamed message, both ways (the storage node uses the same piece size).
pub const STREAM_PIECE: usize = 1 << 20;
/// HTTP/2 flow-control window per stream, both ways: a whole 4 MiB chunk in flight (the 64 KiB
/// default limits a stream to a few hundred MB/s even on loopback).
pub const STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection (many streams share one connection).
pub const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest payload of one journal record (whatever the node's `max_chunk_size`).
pub const JOURNAL_MAX_PAYLOAD: usize = 4 << 20;
/// The most a JournalRead answer carries: payload plus [`JOURNAL_RECORD_OVERHEAD`] per record,
/// except that a first record larger than that comes alone.
pub const JOURNAL_READ_MAX: usize = 4 << 20;
/// What a journal record costs a JournalRead answer beyond its payload (its encoded seq, epoch,
/// tags and lengths), counted against [`JOURNAL_READ_MAX`].
pub const JOURNAL_RECORD_OVERHEAD: usize = 32;
/// The largest answer this client decodes: a JournalRead page (one largest record, or
/// [`JOURNAL_READ_MAX`] of them) or two stream pieces, with room to spare.
const MAX_DECODED_MESSAGE: usize = JOURNAL_READ_MAX + 2 * STREAM_PIECE;

/// Who puts a chunk: a writer that may later [release](NodeClient::release) it, and the number of
/// the batch the put belongs to (non-decreasing per writer). The default, id 0, is anonymous:
/// the node never lets anyone's release skip over an anonymous put.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writer {
    /// Random, non-zero for a writer that releases; 0: anonymous.
    pub id: u64,
    /// The writer's batch number of this put.
    pub seq: u64,
}

impl Writer {
    /// A fresh random writer id (never 0), one per writer instance (an attachment, a client).
    pub fn new_id() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        h.write_u128(now.as_nanos());
        h.write_u32(std::process::id());
        h.finish().max(1)
    }
}

/// What a call to a storage node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is malformed or unreachable.
    #[error("cannot connect to storage node {endpoint}: {reason}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered with an error.
    #[error("storage node {endpoint}: {code:?}: {message}")]
    Rpc {
        /// The node.
        endpoint: String,
        /// gRPC status code.
        code: Code,
        /// The node's message.
        message: String,
    },
    /// The node sent data that does not hash to what was asked for.
    #[error("storage node {endpoint} returned data for {hash} that does not verify")]
    BadData {
        /// The node.
        endpoint: String,
        /// The chunk asked for.
        hash: ChunkHash,
    },
}

impl ClientError {
    /// The gRPC code, for errors the node returned.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to one storage node; cheap to clone.
#[derive(Clone)]
pub struct NodeClient {
    endpoint: String,
    channel: Channel,
    inner: ChunkStoreClient<Channel>,
    /// Whether [`get`](Self::get) hashes what arrives (and the node, told so, does not). Each
    /// read is verified once: here on a transport without integrity of its own (plaintext TCP);
    /// by the node otherwise, since TLS records are authenticated and a unix socket is a kernel
    /// copy on this machine, so both deliver what the node verified.
    verify_reads: bool,
}

impl NodeClient {
    /// Connects to `endpoint` (`host:port`, any scheme ignored), with this process's TLS identity
    /// when one is installed (see `mtls::install_client_identity`).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, mtls::process_client_config()).await
    }

    /// Connects to `endpoint` with the given TLS client config (None: plaintext). An endpoint
    /// `unix:///path` is the node's unix socket on this machine: plaintext whatever `tls` says
    /// (the socket's mode decides who may connect).
    pub async fn connect_with(endpoint: &str, tls: Option<ClientTlsConfig>) -> Result<Self, ClientError> {
        let url = endpoint.to_string();
        let verify_reads = mtls::unix_path(endpoint).is_none() && tls.is_none();
        let channel = mtls::connect(endpoint, tls.as_ref(), |ep| {
            ep.initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .connect_timeout(std::time::Duration::from_secs(5))
        })
        .await
        .map_err(|reason| ClientError::Connect { endpoint: url.clone(), reason })?;
        let inner = ChunkStoreClient::new(channel.clone()).max_decoding_message_size(MAX_DECODED_MESSAGE);
        Ok(NodeClient { endpoint: url, channel, inner, verify_reads })
    }

    /// The address this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn rpc(&self, s: tonic::Status) -> ClientError {
        ClientError::Rpc { endpoint: self.endpoint.clone(), code: s.code(), message: s.message().to_string() }
    }

    /// Stores a chunk; with `claimed` the node refuses data with another hash. The pieces go out
    /// as slices of `data` (see [`chunk_wire`]), not through tonic's copying encoder.
    pub async fn put(&self, claimed: Option<ChunkHash>, data: Bytes) -> Result<pb::PutResponse, ClientError> {
        self.put_as(claimed, Writer::default(), data).await
    }

    /// [`put`](Self::put) on behalf of `writer` (see [`Writer`]).
    pub async fn put_as(
        &self,
        claimed: Option<ChunkHash>,
        writer: Writer,
        data: Bytes,
    ) -> Result<pb::PutResponse, ClientError> {
        self.put_call(claimed, writer, data).await.map_err(|s| self.rpc(s))
    }

    async fn put_call(
        &self,
        claimed: Option<ChunkHash>,
        writer: Writer,
        data: Bytes,
    ) -> Result<pb::PutResponse, tonic::Status> {
        use tonic::codec::Codec;
        use tonic::codegen::Service;
        let frames = chunk_wire::encode_put(claimed.as_ref().map(|h| &h.0[..]), writer, &data, STREAM_PIECE);
        let req = tonic::codegen::http::Request::builder()
            .method(tonic::codegen::http::Method::POST)
            .uri(chunk_wire::PUT_PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::boxed(Frames(frames.into())))
            .map_err(|e| tonic::Status::internal(format!("put request: {e}")))?;
        let mut ch = self.channel.clone();
        std::future::poll_fn(|cx| ch.poll_ready(cx)).await.map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        let resp = ch.call(req).await.map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        // As tonic's own client: a trailers-only answer carries the status in its headers.
        let trailers_only = tonic::Status::from_header_map(resp.headers());
        if let Some(status) = &trailers_only
            && status.code() != Code::Ok
        {
            return Err(status.clone());
        }
        let code = resp.status();
        let decoder = tonic::codec::ProstCodec::<pb::PutRequest, pb::PutResponse>::default().decoder();
        let mut body = if trailers_only.is_some() {
            Streaming::new_empty(decoder, resp.into_body())
        } else {
            Streaming::new_response(decoder, resp.into_body(), code, None, Some(64 << 10))
        };
        let msg = body.message().await?.ok_or_else(|| tonic::Status::internal("put answered without a message"))?;
        body.trailers().await?;
        Ok(msg)
    }

    /// Reads a chunk, verified once: by the node, or here on plaintext TCP (see `verify_reads`),
    /// where the node is told so and skips its own hashing. Data that fails the check here is
    /// asked for again with the node verifying, so a damaged copy on its disk is quarantined
    /// there (and answered with DATA_LOSS) rather than only refused here.
    pub async fn get(&self, hash: &ChunkHash) -> Result<Bytes, ClientError> {
        let data = self.fetch(hash, self.verify_reads).await?;
        if !self.verify_reads || ChunkHash::of(&data) == *hash {
            return Ok(data);
        }
        let again = self.fetch(hash, false).await?;
        if ChunkHash::of(&again) != *hash {
            return Err(ClientError::BadData { endpoint: self.endpoint.clone(), hash: *hash });
        }
        Ok(again)
    }

    /// Reads bytes `off..off + len` of chunk `hash` (cut at its end) and the chunk's length,
    /// verified here: against `cvs`, the chunk's group CVs when the caller has them (checked
    /// against the name before), or else against the CVs the node sends, checked against the
    /// name first and returned for the caller to keep. Whole 4 KiB groups are read and checked;
    /// the answer is the bytes asked for. A chunk of one group or less is read and hashed whole.
    pub async fn get_range(
        &self,
        hash: &ChunkHash,
        off: u64,
        len: u64,
        cvs: Option<&[Cv]>,
    ) -> Result<(u64, Bytes, Option<Vec<Cv>>), ClientError> {
        let g = GROUP as u64;
        let (from, to) = (off / g * g, off.saturating_add(len).next_multiple_of(g));
        let req =
            pb::GetRangeRequest { hash: hash.0.to_vec(), offset: from, length: to - from, want_cvs: cvs.is_none() };
        let mut c = self.inner.clone();
        let r = c.get_range(req).await.map_err(|s| self.rpc(s))?.into_inner();
        let bad = || ClientError::BadData { endpoint: self.endpoint.clone(), hash: *hash };
        let total = r.chunk_length;
        let got = (to.min(total).saturating_sub(from.min(total))) as usize;
        if r.data.len() != got {
            return Err(bad());
        }
        let sent: Option<Vec<Cv>> = match cvs {
            Some(_) => None,
            None => {
                if r.cvs.len() % 32 != 0 {
                    return Err(bad());
                }
                Some(r.cvs.chunks(32).map(|c| c.try_into().expect("32 bytes")).collect())
            }
        };
        let cvs_now: &[Cv] = cvs.or(sent.as_deref()).unwrap_or_default();
        if total <= g {
            // No group CVs: the read covers the whole chunk (or nothing past it).
            if !cvs_now.is_empty() || (from < total && ChunkHash::of(&r.data) != *hash) {
                return Err(bad());
            }
        } else {
            if cvs_now.len() != groups_of(total) {
                return Err(bad());
            }
            if sent.is_some() && root_of(cvs_now, total) != Some(*hash) {
                return Err(bad());
            }
            if !r.data.is_empty() && !groups_match(cvs_now, (from / g) as usize, &r.data) {
                return Err(bad());
            }
        }
        let start = (off.min(total) - from.min(total)) as usize;
        let end = (off.saturating_add(len).min(total).saturating_sub(from.min(total))) as usize;
        Ok((total, r.data.slice(start..end.max(start)), sent))
    }

    async fn fetch(&self, hash: &ChunkHash, caller_verifies: bool) -> Result<Bytes, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::GetRequest { hash: hash.0.to_vec(), caller_verifies };
        let mut stream = c.get(req).await.map_err(|s| self.rpc(s))?.into_inner();
        // A chunk of up to one piece comes as one message: its data is the answer as decoded,
        // with no copy; a longer one is joined here.
        let Some(first) = stream.message().await.map_err(|s| self.rpc(s))? else { return Ok(Bytes::new()) };
        let Some(mut more) = stream.message().await.map_err(|s| self.rpc(s))? else { return Ok(first.data) };
        let mut buf = Vec::with_capacity(first.length as usize);
        buf.extend_from_slice(&first.data);
        loop {
            buf.extend_from_slice(&more.data);
            match stream.message().await.map_err(|s| self.rpc(s))? {
                Some(m) => more = m,
                None => return Ok(Bytes::from(buf)),
            }
        }
    }

    /// What the node holds of each hash.
    pub async fn has(&self, hashes: &[ChunkHash]) -> Result<Vec<pb::ChunkState>, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::HasRequest { hashes: hashes.iter().map(|h| h.0.to_vec()).collect() };
        c.has(req).await.map(|r| r.into_inner().chunks).map_err(|s| self.rpc(s))
    }

    /// Adds a reference; returns the new count.
    pub async fn add_ref(&self, hash: &ChunkHash) -> Result<u64, ClientError> {
        let mut c = self.inner.clone();
        c.r#ref(pb::RefRequest { hash: hash.0.to_vec() }).await.map(|r| r.into_inner().refs).map_err(|s| self.rpc(s))
    }

    /// Drops a reference; returns the count left.
    pub async fn unref(&self, hash: &ChunkHash) -> Result<u64, ClientError> {
        let mut c = self.inner.clone();
        c.unref(pb::RefRequest { hash: hash.0.to_vec() }).await.map(|r| r.into_inner().refs).map_err(|s| self.rpc(s))
    }

    /// One page of the node's chunks, after `after`.
    pub async fn list(&self, after: Option<&ChunkHash>, limit: u32) -> Result<pb::ListResponse, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::ListRequest { after: after.map(|h| h.0.to_vec()).unwrap_or_default(), limit };
        c.list(req).await.map(|r| r.into_inner()).map_err(|s| self.rpc(s))
    }

    /// Capacity and counters.
    pub async fn stats(&self) -> Result<pb::StatsResponse, ClientError> {
        let mut c = self.inner.clone();
        c.stats(pb::StatsRequest {}).await.map(|r| r.into_inner()).map_err(|s| self.rpc(s))
    }

    /// Starts a scrub; the stream yields progress and finally the report.
    pub async fn scrub(&self) -> Result<ScrubEvents, ClientError> {
        let mut c = self.inner.clone();
        let stream = c.scrub(pb::ScrubRequest {}).await.map_err(|s| self.rpc(s))?.into_inner();
        Ok(ScrubEvents { client: self.clone(), stream })
    }

    /// Tells the node that `writer` no longer needs `hashes` (it committed the removal of its
    /// references and relies on none of its puts numbered up to `upto_seq`): the node deletes
    /// those nothing else holds.
    pub async fn release(
        &self,
        hashes: &[ChunkHash],
        writer: u64,
        upto_seq: u64,
    ) -> Result<pb::ReleaseResponse, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::ReleaseRequest { hashes: hashes.iter().map(|h| h.0.to_vec()).collect(), writer, upto_seq };
        c.release(req).await.map(|r| r.into_inner()).map_err(|s| self.rpc(s))
    }

    /// Runs a GC pass now.
    pub async fn gc(&self) -> Result<pb::GcResponse, ClientError> {
        let mut c = self.inner.clone();
        c.gc(pb::GcRequest {}).await.map(|r| r.into_inner()).map_err(|s| self.rpc(s))
    }

    /// Appends one record to `journal` (fsynced on the node when this returns); the journal's highest seq.
    ///
    /// A record whose seq the journal holds replaces it. FAILED_PRECONDITION when the journal is
    /// sealed at a higher epoch, or `seq` is at or below its trim point; INVALID_ARGUMENT for a
    /// bad name, an empty payload or one over [`JOURNAL_MAX_PAYLOAD`].
    pub async fn journal_append(
        &self,
        journal: &str,
        epoch: u64,
        seq: u64,
        payload: Bytes,
    ) -> Result<u64, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::JournalAppendRequest { journal: journal.to_string(), epoch, seq, payload };
        c.journal_append(req).await.map(|r| r.into_inner().last_seq).map_err(|s| self.rpc(s))
    }

    /// Every record of `journal` with seq > `after_seq`, in seq order (pages through JournalRead), and the journal's epoch.
    ///
    /// A journal the node never held reads as no records at epoch 0. DATA_LOSS when a record
    /// the node holds fails its checksum.
    pub async fn journal_read(
        &self,
        journal: &str,
        after_seq: u64,
    ) -> Result<(Vec<pb::JournalRecord>, u64), ClientError> {
        let mut c = self.inner.clone();
        let mut records = Vec::new();
        let mut after = after_seq;
        loop {
            let req = pb::JournalReadRequest { journal: journal.to_string(), after_seq: after, max_bytes: 0 };
            let page = c.journal_read(req).await.map_err(|s| self.rpc(s))?.into_inner();
            let last = page.records.last().map(|r| r.seq);
            records.extend(page.records);
            match last {
                Some(seq) if page.more => after = seq,
                _ => return Ok((records, page.epoch)),
            }
        }
    }

    /// Forgets records <= `upto_seq` (or the whole journal with `drop`); bytes reclaimed.
    pub async fn journal_trim(&self, journal: &str, upto_seq: u64, drop: bool) -> Result<u64, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::JournalTrimRequest { journal: journal.to_string(), upto_seq, drop };
        c.journal_trim(req).await.map(|r| r.into_inner().reclaimed_bytes).map_err(|s| self.rpc(s))
    }

    /// Raises the journal's epoch to at least `epoch`; its state.
    pub async fn journal_seal(&self, journal: &str, epoch: u64) -> Result<pb::JournalSealResponse, ClientError> {
        let mut c = self.inner.clone();
        let req = pb::JournalSealRequest { journal: journal.to_string(), epoch };
        c.journal_seal(req).await.map(|r| r.into_inner()).map_err(|s| self.rpc(s))
    }
}

/// A request body of ready frames, sent as they are.
struct Frames(std::collections::VecDeque<Bytes>);

impl tonic::codegen::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

/// Progress events of a running scrub.
pub struct ScrubEvents {
    client: NodeClient,
    stream: Streaming<pb::ScrubEvent>,
}

impl ScrubEvents {
    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<pb::ScrubEvent>, ClientError> {
        self.stream.message().await.map_err(|s| self.client.rpc(s))
    }
}
