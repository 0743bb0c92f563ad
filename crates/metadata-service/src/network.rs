//! Raft peer traffic over gRPC: the client side (openraft's network factory) and the server side
//! (`cairn.meta.v1.RaftPeer`). Payloads are openraft's own messages, bincode-encoded.

use std::time::Duration;

use cairn_proto::meta::v1::RaftMessage;
use cairn_proto::meta::v1::raft_peer_client::RaftPeerClient;
use cairn_proto::meta::v1::raft_peer_server::RaftPeer;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::types::{MetaNode, NodeId, Raft, TypeConfig, decode, encode};

/// Largest peer message (snapshot chunks are 3 MiB by default).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Creates one [`PeerClient`] per target node.
#[derive(Clone, Default)]
pub struct PeerNetwork;

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MetaNode) -> PeerClient {
        PeerClient { target, addr: node.peer_addr.clone(), client: None }
    }
}

/// The connection to one peer, made lazily and reused.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftPeerClient<Channel>>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, MetaNode, RaftError<NodeId, E>>>;

impl PeerClient {
    fn client(&mut self) -> Result<RaftPeerClient<Channel>, NetworkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ep = mtls::endpoint(&self.addr, mtls::process_client_config().as_ref())
            .map_err(|e| NetworkError::new(&std::io::Error::other(e)))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1));
        let c = RaftPeerClient::new(ep.connect_lazy())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<Req, Resp, E>(&mut self, kind: Kind, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut c = self.client().map_err(RPCError::Network)?;
        let mut msg = Request::new(RaftMessage { payload: encode(req) });
        msg.set_timeout(ttl);
        let sent = async {
            match kind {
                Kind::Append => c.append_entries(msg).await,
                Kind::Vote => c.vote(msg).await,
                Kind::Snapshot => c.install_snapshot(msg).await,
            }
        };
        let res = tokio::time::timeout(ttl, sent).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let reply = res.map_err(|s| {
            self.client = None; // reconnect next time
            RPCError::Unreachable(Unreachable::new(&s))
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Kind::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Kind::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Kind::Vote, &rpc, option.hard_ttl()).await
    }
}

/// The server side: hands peer messages to the local Raft.
pub struct PeerService {
    raft: Raft,
}

impl PeerService {
    /// Serves `raft`.
    pub fn new(raft: Raft) -> Self {
        PeerService { raft }
    }
}

fn bad_payload(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.into_inner().payload).map_err(bad_payload)?;
        let res = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftMessage { payload: encode(&res) }))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(&req.into_inner().payload).map_err(bad_payload)?;
        let res = self.raft.vote(rpc).await;
        Ok(Response::new(RaftMessage { payload: encode(&res) }))
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.into_inner().payload).map_err(bad_payload)?;
        let res = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftMessage { payload: encode(&res) }))
    }
}
