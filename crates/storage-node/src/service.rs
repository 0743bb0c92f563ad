//! The `cairn.chunk.v1.ChunkStore` gRPC service over a [`ChunkEngine`] and a [`JournalStore`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_proto::chunk::v1 as pb;
use cairn_proto::chunk::v1::chunk_store_server::ChunkStore;
use chunk_engine::{ChunkEngine, ChunkError, ChunkHash, ChunkInfo};
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::NodeError;
use crate::PutTracker;
use crate::journal::{JournalError, JournalStore};
use crate::metrics::NodeMetrics;

use node_client::STREAM_PIECE;
const LIST_DEFAULT: usize = 1000;
const LIST_MAX: usize = 10_000;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ChunkService {
    engine: Arc<ChunkEngine>,
    journals: Arc<JournalStore>,
    metrics: Arc<NodeMetrics>,
    tracker: Arc<PutTracker>,
    /// Present when the node is in a pool (a metadata service holds the reference keys).
    releaser: Option<Arc<crate::release::Releaser>>,
    /// Set while segment GC runs behind the dead space: puts wait up to `STALL_MAX` first.
    stall: tokio::sync::watch::Receiver<bool>,
}

/// The longest a put waits for segment GC to catch up: long enough that an overwrite load
/// slows to the pace GC gives space back (a GC pass clears the flag when it ends), far below
/// the clients' RPC timeouts (30 s). The flag is dropped when GC cannot help, so a stall never
/// outlasts a stuck GC.
const STALL_MAX: std::time::Duration = std::time::Duration::from_secs(20);

fn status(e: ChunkError) -> Status {
    NodeError::Engine(e).into()
}

fn parse_hash(b: &[u8]) -> Result<ChunkHash, Status> {
    ChunkHash::from_slice(b).map_err(status)
}

fn state(hash: ChunkHash, info: Option<ChunkInfo>) -> pb::ChunkState {
    pb::ChunkState {
        hash: hash.0.to_vec(),
        present: info.is_some(),
        length: info.map_or(0, |i| i.len),
        refs: info.map_or(0, |i| i.refs),
        quarantined: info.is_some_and(|i| i.quarantined),
    }
}

impl ChunkService {
    /// Serves `engine` and `journals`, recording into `metrics` and noting puts in `tracker` for
    /// pool GC.
    pub fn new(
        engine: Arc<ChunkEngine>,
        journals: Arc<JournalStore>,
        metrics: Arc<NodeMetrics>,
        tracker: Arc<PutTracker>,
        releaser: Option<Arc<crate::release::Releaser>>,
        stall: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        ChunkService { engine, journals, metrics, tracker, releaser, stall }
    }

    /// Runs blocking engine work off the async threads, records the request, maps errors.
    async fn blocking<T: Send + 'static>(
        &self,
        method: &str,
        started: Instant,
        work: impl FnOnce(&ChunkEngine) -> Result<T, ChunkError> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        let res = match tokio::task::spawn_blocking(move || work(&engine)).await {
            Ok(r) => r.map_err(status),
            Err(e) => Err(Status::internal(format!("engine task failed: {e}"))),
        };
        self.metrics.rpc.observe_result(method, started, &res);
        res
    }

    /// Runs blocking journal work off the async threads, records the request, maps errors.
    async fn journal<T: Send + 'static>(
        &self,
        method: &str,
        started: Instant,
        work: impl FnOnce(&JournalStore) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, Status> {
        let journals = self.journals.clone();
        let res = match tokio::task::spawn_blocking(move || work(&journals)).await {
            Ok(r) => r.map_err(|e| Status::from(NodeError::Journal(e))),
            Err(e) => Err(Status::internal(format!("journal task failed: {e}"))),
        };
        self.metrics.rpc.observe_result(method, started, &res);
        res
    }

    /// The data of the chunk `req` asks for, checked as it asks (recorded as a Get); shared by
    /// the Get route and the generated service.
    pub(crate) async fn get_data(&self, req: pb::GetRequest) -> Result<Bytes, Status> {
        let started = Instant::now();
        let hash = parse_hash(&req.hash)?;
        if req.caller_verifies {
            self.blocking("Get", started, move |e| e.get_for_copy(&hash)).await
        } else {
            self.blocking("Get", started, move |e| e.get(&hash)).await
        }
    }

    /// Stores the chunk `receive` assembles (given the largest chunk size), recording the request
    /// and noting the chunk for pool GC; shared by the Put route and the generated service.
    pub(crate) async fn put_assembled<F>(&self, receive: impl FnOnce(u32) -> F) -> Result<pb::PutResponse, Status>
    where
        F: std::future::Future<Output = Result<PutAssembly, Status>>,
    {
        let started = Instant::now();
        let received = receive(self.engine.config().max_chunk_size).await.and_then(PutAssembly::finish);
        if received.is_err() {
            self.metrics.rpc.observe_result("Put", started, &received);
        }
        let (claimed, writer, pieces) = received?;
        // Space back-pressure: an overwrite load must not outrun segment GC.
        let mut stall = self.stall.clone();
        let _ = tokio::time::timeout(STALL_MAX.saturating_sub(started.elapsed()), stall.wait_for(|s| !*s)).await;
        if let Some(h) = &claimed {
            self.tracker.record_by(h, writer); // before the put is acknowledged (pool GC)
        }
        let tracker = self.tracker.clone();
        let out = self
            .blocking("Put", started, move |e| {
                let pieces: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
                let out = e.put_pieces(claimed.as_ref(), &pieces)?;
                if claimed.is_none() {
                    tracker.record_by(&out.hash, writer);
                }
                Ok(out)
            })
            .await?;
        Ok(pb::PutResponse { hash: out.hash.0.to_vec(), deduplicated: out.deduplicated, refs: out.refs })
    }
}

impl ChunkService {
    async fn release_call(&self, req: pb::ReleaseRequest) -> Result<pb::ReleaseResponse, Status> {
        let Some(releaser) = &self.releaser else {
            return Err(Status::failed_precondition("a standalone node has no reference index: nothing is released"));
        };
        if req.writer == 0 {
            return Err(Status::invalid_argument("release needs a writer id (non-zero)"));
        }
        let hashes = req.hashes.iter().map(|h| parse_hash(h)).collect::<Result<Vec<_>, _>>()?;
        releaser
            .release(hashes, req.writer, req.upto_seq)
            .await
            .map_err(|e| Status::unavailable(format!("release: {e}")))
    }
}

/// A put's chunk as it arrives: the claimed hash, the declared length, and the data pieces as
/// received (the engine copies them into its write buffer while hashing; they are never joined).
pub(crate) struct PutAssembly {
    claimed: Option<ChunkHash>,
    writer: node_client::Writer,
    len: usize,
    got: usize,
    pieces: Vec<Bytes>,
}

impl PutAssembly {
    /// From the first message's `hash` (may be empty), `length` and writer.
    pub(crate) fn start(hash: &[u8], length: u64, writer: node_client::Writer, max_chunk: u32) -> Result<Self, Status> {
        let claimed = if hash.is_empty() { None } else { Some(parse_hash(hash)?) };
        if length > max_chunk as u64 {
            return Err(status(ChunkError::TooLarge { len: length as usize, max: max_chunk }));
        }
        let len = length as usize;
        Ok(PutAssembly { claimed, writer, len, got: 0, pieces: Vec::with_capacity(len / STREAM_PIECE + 1) })
    }

    /// Adds the next piece of data.
    pub(crate) fn add(&mut self, piece: Bytes) -> Result<(), Status> {
        if self.got + piece.len() > self.len {
            return Err(Status::invalid_argument(format!(
                "put sent more than its declared length of {} bytes",
                self.len
            )));
        }
        self.got += piece.len();
        if !piece.is_empty() {
            self.pieces.push(piece);
        }
        Ok(())
    }

    /// The claimed hash, the writer and the pieces, once exactly the declared length has arrived.
    fn finish(self) -> Result<(Option<ChunkHash>, node_client::Writer, Vec<Bytes>), Status> {
        if self.got != self.len {
            return Err(Status::invalid_argument(format!(
                "put stream ended after {} of its declared {} bytes",
                self.got, self.len
            )));
        }
        Ok((self.claimed, self.writer, self.pieces))
    }
}

#[tonic::async_trait]
impl ChunkStore for ChunkService {
    /// Reached only if the Put route is not installed (`routes` serves Put in the daemon).
    async fn put(&self, req: Request<Streaming<pb::PutRequest>>) -> Result<Response<pb::PutResponse>, Status> {
        let mut stream = req.into_inner();
        let receive = |max_chunk: u32| async move {
            let first =
                stream.message().await?.ok_or_else(|| Status::invalid_argument("put stream carried no message"))?;
            let writer = node_client::Writer { id: first.writer, seq: first.writer_seq };
            let mut a = PutAssembly::start(&first.hash, first.length, writer, max_chunk)?;
            a.add(first.data)?;
            while let Some(m) = stream.message().await? {
                a.add(m.data)?;
            }
            Ok(a)
        };
        self.put_assembled(receive).await.map(Response::new)
    }

    type GetStream = BoxStream<pb::GetResponse>;

    /// Reached only if the Get route is not installed (`routes` serves Get in the daemon).
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let data = self.get_data(req.into_inner()).await?;
        let len = data.len() as u64;
        let mut pieces = Vec::with_capacity(data.len() / STREAM_PIECE + 1);
        let mut off = 0;
        loop {
            let end = (off + STREAM_PIECE).min(data.len());
            pieces.push(Ok(pb::GetResponse { length: if off == 0 { len } else { 0 }, data: data.slice(off..end) }));
            off = end;
            if off >= data.len() {
                break;
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces))))
    }

    async fn get_range(&self, req: Request<pb::GetRangeRequest>) -> Result<Response<pb::GetRangeResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let hash = parse_hash(&req.hash)?;
        let (offset, length, want_cvs) = (req.offset, req.length, req.want_cvs);
        let reply = self
            .blocking("GetRange", started, move |e| {
                let cvs = if want_cvs { Some(e.group_cvs(&hash)?.1) } else { None };
                let (len, data) = e.read_range(&hash, offset, length)?;
                Ok(pb::GetRangeResponse {
                    chunk_length: len as u64,
                    data,
                    cvs: cvs.map(|c| c.concat()).unwrap_or_default(),
                })
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn has(&self, req: Request<pb::HasRequest>) -> Result<Response<pb::HasResponse>, Status> {
        let started = Instant::now();
        let hashes = req.into_inner().hashes.iter().map(|h| parse_hash(h)).collect::<Result<Vec<_>, _>>()?;
        let chunks = self
            .blocking("Has", started, move |e| {
                hashes.into_iter().map(|h| Ok(state(h, e.info(&h)?))).collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(Response::new(pb::HasResponse { chunks }))
    }

    async fn r#ref(&self, req: Request<pb::RefRequest>) -> Result<Response<pb::RefResponse>, Status> {
        let started = Instant::now();
        let hash = parse_hash(&req.get_ref().hash)?;
        self.tracker.record(&hash);
        let refs = self.blocking("Ref", started, move |e| e.add_ref(&hash)).await?;
        Ok(Response::new(pb::RefResponse { refs }))
    }

    async fn unref(&self, req: Request<pb::RefRequest>) -> Result<Response<pb::RefResponse>, Status> {
        let started = Instant::now();
        let hash = parse_hash(&req.get_ref().hash)?;
        let refs = self.blocking("Unref", started, move |e| e.unref(&hash)).await?;
        Ok(Response::new(pb::RefResponse { refs }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let after = if req.after.is_empty() { None } else { Some(parse_hash(&req.after)?) };
        let limit = match req.limit as usize {
            0 => LIST_DEFAULT,
            n => n.min(LIST_MAX),
        };
        let page = self.blocking("List", started, move |e| e.list(after.as_ref(), limit)).await?;
        let next_after =
            if page.len() == limit { page.last().map(|(h, _)| h.0.to_vec()).unwrap_or_default() } else { Vec::new() };
        let chunks = page.into_iter().map(|(h, i)| state(h, Some(i))).collect();
        Ok(Response::new(pb::ListResponse { chunks, next_after }))
    }

    async fn stats(&self, _req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let started = Instant::now();
        let (s, max) = self.blocking("Stats", started, |e| Ok((e.stats(), e.config().max_chunk_size))).await?;
        Ok(Response::new(pb::StatsResponse {
            total_bytes: s.total_bytes,
            free_bytes: s.free_bytes,
            used_bytes: s.used_bytes,
            dead_bytes: s.dead_bytes,
            logical_bytes: s.logical_bytes,
            physical_bytes: s.physical_bytes,
            dedup_ratio: s.dedup_ratio,
            chunks: s.chunks,
            segments: s.segments,
            puts: s.puts,
            dedup_hits: s.dedup_hits,
            gets: s.gets,
            corruptions: s.corruptions,
            commit_batches: s.commit_batches,
            commit_ops: s.commit_ops,
            gc_runs: s.gc_runs,
            gc_reclaimed_bytes: s.gc_reclaimed_bytes,
            max_chunk_size: max,
            node_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    type ScrubStream = BoxStream<pb::ScrubEvent>;

    async fn scrub(&self, _req: Request<pb::ScrubRequest>) -> Result<Response<Self::ScrubStream>, Status> {
        let started = Instant::now();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let progress_tx = tx.clone();
            let res = engine.scrub(|p| {
                let _ = progress_tx.blocking_send(Ok(pb::ScrubEvent {
                    checked: p.checked,
                    total: p.total,
                    bytes: p.bytes,
                    damaged_count: p.damaged,
                    ..Default::default()
                }));
            });
            let res = res.map_err(status);
            metrics.rpc.observe_result("Scrub", started, &res);
            let last = res.map(|r| pb::ScrubEvent {
                checked: r.checked,
                total: r.checked,
                bytes: r.bytes,
                damaged_count: r.damaged.len() as u64,
                done: true,
                damaged: r.damaged.iter().map(|h| h.0.to_vec()).collect(),
            });
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let started = Instant::now();
        let res = self.release_call(req.into_inner()).await;
        self.metrics.rpc.observe_result("Release", started, &res);
        res.map(Response::new)
    }

    async fn journal_append(
        &self,
        req: Request<pb::JournalAppendRequest>,
    ) -> Result<Response<pb::JournalAppendResponse>, Status> {
        let started = Instant::now();
        let pb::JournalAppendRequest { journal, epoch, seq, payload } = req.into_inner();
        let last_seq =
            self.journal("JournalAppend", started, move |j| j.append(&journal, epoch, seq, &payload)).await?;
        Ok(Response::new(pb::JournalAppendResponse { last_seq }))
    }

    async fn journal_read(
        &self,
        req: Request<pb::JournalReadRequest>,
    ) -> Result<Response<pb::JournalReadResponse>, Status> {
        let started = Instant::now();
        let pb::JournalReadRequest { journal, after_seq, max_bytes } = req.into_inner();
        let page = self.journal("JournalRead", started, move |j| j.read(&journal, after_seq, max_bytes)).await?;
        let records = page
            .records
            .into_iter()
            .map(|r| pb::JournalRecord { seq: r.seq, epoch: r.epoch, payload: r.payload })
            .collect();
        Ok(Response::new(pb::JournalReadResponse { records, more: page.more, epoch: page.epoch }))
    }

    async fn journal_trim(
        &self,
        req: Request<pb::JournalTrimRequest>,
    ) -> Result<Response<pb::JournalTrimResponse>, Status> {
        let started = Instant::now();
        let pb::JournalTrimRequest { journal, upto_seq, drop } = req.into_inner();
        let reclaimed_bytes = self.journal("JournalTrim", started, move |j| j.trim(&journal, upto_seq, drop)).await?;
        Ok(Response::new(pb::JournalTrimResponse { reclaimed_bytes }))
    }

    async fn journal_seal(
        &self,
        req: Request<pb::JournalSealRequest>,
    ) -> Result<Response<pb::JournalSealResponse>, Status> {
        let started = Instant::now();
        let pb::JournalSealRequest { journal, epoch } = req.into_inner();
        let s = self.journal("JournalSeal", started, move |j| j.seal(&journal, epoch)).await?;
        Ok(Response::new(pb::JournalSealResponse {
            epoch: s.epoch,
            last_seq: s.last_seq,
            trimmed_upto: s.trimmed_upto,
            records: s.records,
            bytes: s.bytes,
        }))
    }

    async fn gc(&self, _req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        let started = Instant::now();
        let r = self.blocking("Gc", started, |e| e.gc()).await?;
        Ok(Response::new(pb::GcResponse {
            segments_examined: r.segments_examined,
            segments_removed: r.segments_removed,
            bytes_reclaimed: r.bytes_reclaimed,
            chunks_moved: r.chunks_moved,
            bytes_moved: r.bytes_moved,
        }))
    }
}
