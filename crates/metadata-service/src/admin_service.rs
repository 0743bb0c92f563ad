//! The `cairn.meta.v1.Admin` service: status and voter membership changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use cairn_proto::meta::v1 as pb;
use cairn_proto::meta::v1::admin_server::Admin;
use daemon_kit::metrics::RpcMetrics;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use crate::MetaError;
use crate::kv_service::from_write_error;
use crate::state_machine::Shared;
use crate::types::{MetaNode, NodeId, Raft};

/// The admin service.
#[derive(Clone)]
pub struct AdminService {
    raft: Raft,
    sm: Arc<Shared>,
    rpc: RpcMetrics,
}

fn member(id: NodeId, n: &MetaNode) -> pb::Member {
    pb::Member { id, api_addr: n.api_addr.clone(), peer_addr: n.peer_addr.clone() }
}

impl AdminService {
    /// Serves `raft`.
    pub fn new(raft: Raft, sm: Arc<Shared>, rpc: RpcMetrics) -> Self {
        AdminService { raft, sm, rpc }
    }

    fn membership(&self) -> pb::MembershipResponse {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let mem = m.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let mut out = pb::MembershipResponse::default();
        for (id, node) in mem.nodes() {
            if voters.contains(id) {
                out.voters.push(member(*id, node));
            } else {
                out.learners.push(member(*id, node));
            }
        }
        out
    }

    fn require_leader(&self) -> Result<BTreeSet<NodeId>, MetaError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            let leader = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.api_addr.clone()));
            return Err(MetaError::NotLeader(leader));
        }
        Ok(m.membership_config.membership().voter_ids().collect())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = self.membership();
        let leader_api = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.api_addr.clone()))
            .unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            id: m.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_api_addr: leader_api,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            state: format!("{:?}", m.state),
            voters: membership.voters,
            learners: membership.learners,
            revision: self.sm.revision(),
        }))
    }

    async fn add_voter(&self, req: Request<pb::AddVoterRequest>) -> Result<Response<pb::MembershipResponse>, Status> {
        let started = Instant::now();
        let res = async {
            let m = req.into_inner().member.ok_or_else(|| MetaError::InvalidArgument("member is required".into()))?;
            if m.id == 0 || m.api_addr.is_empty() || m.peer_addr.is_empty() {
                return Err(MetaError::InvalidArgument("member needs a non-zero id, api_addr and peer_addr".into()));
            }
            let mut voters = self.require_leader()?;
            let node = MetaNode { api_addr: m.api_addr, peer_addr: m.peer_addr };
            // As a learner first: it catches up from the log or a snapshot before it votes.
            self.raft.add_learner(m.id, node, true).await.map_err(from_write_error)?;
            voters.insert(m.id);
            self.raft.change_membership(voters, false).await.map_err(from_write_error)?;
            tracing::info!(id = m.id, "voter added");
            Ok(Response::new(self.membership()))
        }
        .await
        .map_err(Status::from);
        self.rpc.observe_result("AddVoter", started, &res);
        res
    }

    async fn remove_voter(
        &self,
        req: Request<pb::RemoveVoterRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let started = Instant::now();
        let res = async {
            let id = req.into_inner().id;
            let mut voters = self.require_leader()?;
            if !voters.remove(&id) {
                return Err(MetaError::InvalidArgument(format!("node {id} is not a voter")));
            }
            if voters.is_empty() {
                return Err(MetaError::InvalidArgument("cannot remove the last voter".into()));
            }
            self.raft.change_membership(voters, false).await.map_err(from_write_error)?;
            tracing::info!(id, "voter removed");
            Ok(Response::new(self.membership()))
        }
        .await
        .map_err(Status::from);
        self.rpc.observe_result("RemoveVoter", started, &res);
        res
    }
}
