//! The `cairn.meta.v1.Kv` service: reads (linearizable through the leader, or serializable
//! locally), writes through Raft, transactions, prefix watches and whole-keyspace backups.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use cairn_proto::meta::v1 as pb;
use cairn_proto::meta::v1::kv_server::Kv;
use daemon_kit::metrics::RpcMetrics;
use futures::Stream;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::MetaError;
use crate::batcher::Batcher;
use crate::state_machine::{BackupView, KeyValue, Shared};
use crate::types::{Command, CommandResult, MetaNode, NodeId};
use crate::validate;

const RANGE_DEFAULT: usize = 1000;
const RANGE_MAX: usize = 10_000;
/// A backup message is sent once it holds about this many encoded bytes (the last pair added
/// may bring at most 4 KiB + 1 MiB more: well under the 4 MiB a client decodes by default).
const BACKUP_CHUNK_BYTES: usize = 1 << 20;
/// Most bytes protobuf adds to a pair's key and value (tags, lengths, two revisions).
const BACKUP_PAIR_OVERHEAD: usize = 40;
/// Backup messages encoded ahead of the client.
const BACKUP_AHEAD: usize = 2;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct KvService {
    batcher: Batcher,
    sm: Arc<Shared>,
    rpc: RpcMetrics,
    /// Turns true at shutdown: open watch streams end (graceful shutdown waits for streams).
    stop: tokio::sync::watch::Receiver<bool>,
}

pub(crate) fn from_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, MetaNode>>) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            MetaError::NotLeader(f.leader_node.map(|n| n.api_addr))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => MetaError::InvalidArgument(c.to_string()),
        RaftError::Fatal(f) => MetaError::Unavailable(f.to_string()),
    }
}

pub(crate) fn from_read_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, MetaNode>>) -> MetaError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
            MetaError::NotLeader(f.leader_node.map(|n| n.api_addr))
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => MetaError::Unavailable(q.to_string()),
        RaftError::Fatal(f) => MetaError::Unavailable(f.to_string()),
    }
}

fn to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue { key: kv.key, value: kv.value, create_revision: kv.create_revision, mod_revision: kv.mod_revision }
}

impl KvService {
    /// Serves `raft` and its state machine.
    pub fn new(batcher: Batcher, sm: Arc<Shared>, rpc: RpcMetrics, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        KvService { batcher, sm, rpc, stop }
    }

    /// Replicates a command (batched with concurrent ones); an answer means it is committed
    /// and applied.
    async fn write(&self, cmd: Command) -> Result<CommandResult, Status> {
        self.batcher.propose(cmd).await
    }

    /// Waits until this node may serve a linearizable read (it is the leader, a quorum confirms
    /// it, and everything committed before the read is applied).
    async fn linearize(&self, serializable: bool) -> Result<(), Status> {
        if serializable {
            return Ok(());
        }
        self.batcher.linearize().await
    }

    async fn metered<T>(&self, method: &str, f: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let started = Instant::now();
        let r = f.await;
        self.rpc.observe_result(method, started, &r);
        r
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Why a backup walk stopped early.
enum Cut {
    /// The client went away.
    Gone,
    /// The node is shutting down.
    Stopping,
    /// Reading the view failed.
    Failed(MetaError),
}

/// Sends one backup message, waiting while the client is behind, unless shutdown begins.
fn send_chunk(
    rt: &tokio::runtime::Handle,
    tx: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    chunk: pb::BackupChunk,
) -> Result<(), Cut> {
    rt.block_on(async {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => Err(Cut::Stopping),
            r = tx.send(Ok(chunk)) => r.map_err(|_| Cut::Gone),
        }
    })
}

/// Reads the whole view and sends it in messages of about [`BACKUP_CHUNK_BYTES`], the header
/// first and the end marker last; returns how many pairs it sent. Runs on a blocking thread
/// (the walk reads RocksDB); a client that reads slowly holds the walk back.
fn send_backup(
    rt: &tokio::runtime::Handle,
    view: BackupView,
    tx: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<u64, Cut> {
    let header = pb::BackupHeader {
        revision: view.revision,
        applied_index: view.applied.map_or(0, |l| l.index),
        applied_term: view.applied.map_or(0, |l| l.leader_id.term),
    };
    let mut chunk = pb::BackupChunk { header: Some(header), ..Default::default() };
    let (mut bytes, mut keys) = (0usize, 0u64);
    let mut cut = None;
    let walked = view.for_each(|kv| {
        bytes += kv.key.len() + kv.value.len() + BACKUP_PAIR_OVERHEAD;
        keys += 1;
        chunk.kvs.push(to_pb(kv));
        if bytes >= BACKUP_CHUNK_BYTES {
            if let Err(c) = send_chunk(rt, tx, stop, std::mem::take(&mut chunk)) {
                cut = Some(c);
                return Err(kv_engine::KvError::Backend("backup cut off".into()));
            }
            bytes = 0;
        }
        Ok(())
    });
    if let Some(c) = cut {
        return Err(c);
    }
    walked.map_err(|e| Cut::Failed(e.into()))?;
    chunk.end = Some(pb::BackupEnd { keys });
    send_chunk(rt, tx, stop, chunk)?;
    Ok(keys)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.metered("Get", async {
            let req = req.into_inner();
            validate::key(&req.key, "key")?;
            self.linearize(req.serializable).await?;
            // Taken before the read, so the read saw at least this revision: a key found absent
            // was absent at it (a client caching absences relies on that).
            let revision = self.sm.revision();
            let kv = self.sm.get(&req.key).map_err(MetaError::from)?;
            Ok(Response::new(pb::GetResponse { found: kv.is_some(), kv: kv.map(to_pb), revision }))
        })
        .await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.metered("Put", async {
            let req = req.into_inner();
            validate::key(&req.key, "key")?;
            validate::value(&req.value, "value")?;
            let r = self.write(Command::Put { key: req.key, value: req.value }).await?;
            Ok(Response::new(pb::PutResponse { revision: r.revision }))
        })
        .await
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        self.metered("Delete", async {
            let req = req.into_inner();
            validate::key(&req.key, "key")?;
            let r = self.write(Command::Delete { key: req.key }).await?;
            Ok(Response::new(pb::DeleteResponse { deleted: r.deleted, revision: r.revision }))
        })
        .await
    }

    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        self.metered("Range", async {
            let req = req.into_inner();
            if req.start.len() > validate::MAX_KEY || req.end.len() > validate::MAX_KEY {
                return Err(MetaError::InvalidArgument(format!(
                    "range bounds are limited to {} bytes",
                    validate::MAX_KEY
                ))
                .into());
            }
            if !req.end.is_empty() && req.end < req.start {
                return Err(MetaError::InvalidArgument("range end sorts before its start".into()).into());
            }
            let limit = match req.limit as usize {
                0 => RANGE_DEFAULT,
                n => n.min(RANGE_MAX),
            };
            self.linearize(req.serializable).await?;
            let end = if req.end.is_empty() { None } else { Some(req.end.as_slice()) };
            // One extra tells whether another page follows.
            let mut kvs = self.sm.range(&req.start, end, limit + 1).map_err(MetaError::from)?;
            let next_key = if kvs.len() > limit { kvs.pop().map(|kv| kv.key).unwrap_or_default() } else { Vec::new() };
            Ok(Response::new(pb::RangeResponse {
                kvs: kvs.into_iter().map(to_pb).collect(),
                next_key,
                revision: self.sm.revision(),
            }))
        })
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.metered("Txn", async {
            let cmd = validate::txn(req.into_inner())?;
            let r = self.write(cmd).await?;
            Ok(Response::new(txn_response(r)))
        })
        .await
    }

    async fn txn_batch(&self, req: Request<pb::TxnBatchRequest>) -> Result<Response<pb::TxnBatchResponse>, Status> {
        self.metered("TxnBatch", async {
            let cmd = validate::txn_batch(req.into_inner())?;
            let r = self.write(cmd).await?;
            Ok(Response::new(pb::TxnBatchResponse { results: r.batch.into_iter().map(txn_response).collect() }))
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let prefix = req.into_inner().prefix;
        let mut rx = self.sm.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("metadata node shutting down; re-watch"))).await;
                        return;
                    }
                };
                let item = match next {
                    Ok(ev) if ev.kv.key.starts_with(&prefix) => Ok(pb::WatchEvent {
                        revision: ev.kv.mod_revision,
                        deleted: ev.deleted,
                        kv: Some(to_pb(ev.kv.clone())),
                    }),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        Err(Status::aborted(format!("watcher fell {n} events behind; read again and re-watch")))
                    }
                    Err(RecvError::Closed) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    type BackupStream = BackupStream;

    async fn backup(&self, _req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let view = self
            .metered("Backup", async {
                // The same check a linearizable read passes: the view then holds every write
                // acknowledged before this call.
                self.linearize(false).await?;
                Ok(self.sm.backup_view().map_err(MetaError::from)?)
            })
            .await?;
        let (tx, out) = tokio::sync::mpsc::channel(BACKUP_AHEAD);
        let mut stop = self.stop.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let revision = view.revision;
            let failed = match send_backup(&rt, view, &tx, &mut stop) {
                Ok(keys) => {
                    tracing::info!(keys, revision, elapsed = ?started.elapsed(), "backup streamed");
                    return;
                }
                Err(Cut::Gone) => {
                    tracing::warn!(revision, "backup client went away before the end");
                    return;
                }
                Err(Cut::Stopping) => MetaError::Unavailable("metadata node is shutting down; backup cut off".into()),
                Err(Cut::Failed(e)) => e,
            };
            tracing::warn!(revision, error = %failed, "backup failed");
            // Tell the client why, unless it is not reading and the node is going away anyway.
            rt.block_on(async {
                tokio::select! {
                    biased;
                    _ = tx.send(Err(failed.into())) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }
}

/// A transaction's answer on the wire.
fn txn_response(r: CommandResult) -> pb::TxnResponse {
    pb::TxnResponse {
        succeeded: r.succeeded,
        failed_condition: r.failed_condition.map_or(-1, |i| i as i32),
        revision: r.revision,
    }
}

#[cfg(test)]
mod tests {
    use kv_engine::MemEngine;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use prost::Message;

    use super::*;
    use crate::state_machine::StateMachine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backup_messages_stay_small_and_carry_every_pair_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(Arc::new(MemEngine::new()), dir.path().join("snapshot.bin")).unwrap();
        // Many tiny pairs (protobuf overhead dominates) and a few of the largest.
        let mut cmds: Vec<Command> =
            (0..60_000u32).map(|i| Command::Put { key: i.to_be_bytes().to_vec(), value: Vec::new() }).collect();
        for i in 0..3u8 {
            cmds.push(Command::Put {
                key: vec![0xff; validate::MAX_KEY - 1 + i as usize],
                value: vec![i; validate::MAX_VALUE],
            });
        }
        let entry = Entry::<crate::types::TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Command::Batch(cmds)),
        };
        sm.apply([entry]).await.unwrap();
        let view = sm.shared().backup_view().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(BACKUP_AHEAD);
        let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let rt = tokio::runtime::Handle::current();
        let sender = tokio::task::spawn_blocking(move || send_backup(&rt, view, &tx, &mut stop).ok());
        let (mut messages, mut keys, mut last): (usize, u64, Option<Vec<u8>>) = (0, 0, None);
        let mut header = None;
        let mut end = None;
        while let Some(m) = rx.recv().await {
            let m = m.unwrap();
            assert!(m.encoded_len() < 3 << 20, "message {messages} is {} bytes", m.encoded_len());
            assert_eq!(m.header.is_some(), messages == 0, "the header comes first and only first");
            header = header.or(m.header);
            assert!(end.is_none(), "nothing follows the end marker");
            end = m.end;
            for kv in &m.kvs {
                assert!(last.as_ref().is_none_or(|l| *l < kv.key), "keys in order, once each");
                last = Some(kv.key.clone());
            }
            keys += m.kvs.len() as u64;
            messages += 1;
        }
        assert_eq!(sender.await.unwrap(), Some(60_003));
        assert_eq!(keys, 60_003);
        assert_eq!(end, Some(pb::BackupEnd { keys }));
        assert_eq!(header, Some(pb::BackupHeader { revision: 60_003, applied_index: 1, applied_term: 1 }));
        assert!(messages >= 5, "{messages} messages");
    }
}
