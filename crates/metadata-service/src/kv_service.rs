//! The `cairn.meta.v1.Kv` service: reads (linearizable through the leader, or serializable
//! locally), writes through Raft, transactions and prefix watches.

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
use crate::state_machine::{KeyValue, Shared};
use crate::types::{Command, CommandResult, MetaNode, NodeId};
use crate::validate;

const RANGE_DEFAULT: usize = 1000;
const RANGE_MAX: usize = 10_000;

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

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.metered("Get", async {
            let req = req.into_inner();
            validate::key(&req.key, "key")?;
            self.linearize(req.serializable).await?;
            let kv = self.sm.get(&req.key).map_err(MetaError::from)?;
            Ok(Response::new(pb::GetResponse { found: kv.is_some(), kv: kv.map(to_pb), revision: self.sm.revision() }))
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
            Ok(Response::new(pb::TxnResponse {
                succeeded: r.succeeded,
                failed_condition: r.failed_condition.map_or(-1, |i| i as i32),
                revision: r.revision,
            }))
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
}
