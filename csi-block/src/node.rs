//! The CSI Node service: the node plugin registers itself in the metadata service (so
//! ControllerPublish can tell a real node from a typo), reports its id and topology, and its
//! capabilities. Staging and publishing need the volume engine and its kernel front end, which
//! are not built yet: those calls answer UNIMPLEMENTED.

use std::future::Future;
use std::time::Duration;

use cairn_proto::csi::v1::node_server::Node;
use cairn_proto::csi::v1::node_service_capability::{self, rpc::Type as Rpc};
use cairn_proto::csi::v1::*;
use tonic::{Request, Response, Status};

use crate::Driver;
use crate::records::{NodeRecord, RECORD_VERSION, now_ms};

/// Registers this node plugin, retrying until the metadata service answers; false if
/// `shutdown` came first.
pub async fn register(d: &Driver, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
    let id = d.cfg.node_id.clone().expect("node service configured");
    let rec = NodeRecord {
        version: RECORD_VERSION,
        id: id.clone(),
        topology: d.topology().into_iter().collect(),
        registered_unix_ms: now_ms(),
    };
    loop {
        match d.volumes.register_node(&rec).await {
            Ok(()) => {
                tracing::info!(node = %id, "node plugin registered");
                return true;
            }
            Err(e) => tracing::warn!(error = %e, "cannot register the node plugin yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut *shutdown => return false,
        }
    }
}

fn unbuilt<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{what}: the block volume engine is not built yet")))
}

#[tonic::async_trait]
impl Node for Driver {
    async fn node_stage_volume(
        &self,
        _r: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        unbuilt("NodeStageVolume")
    }

    async fn node_unstage_volume(
        &self,
        _r: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        unbuilt("NodeUnstageVolume")
    }

    async fn node_publish_volume(
        &self,
        _r: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        unbuilt("NodePublishVolume")
    }

    async fn node_unpublish_volume(
        &self,
        _r: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        unbuilt("NodeUnpublishVolume")
    }

    async fn node_get_volume_stats(
        &self,
        _r: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        unbuilt("NodeGetVolumeStats")
    }

    async fn node_expand_volume(
        &self,
        _r: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        unbuilt("NodeExpandVolume")
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        csi_kit::rpc(&self.metrics, "NodeGetCapabilities", "", async {
            Ok(NodeGetCapabilitiesResponse {
                capabilities: [
                    Rpc::StageUnstageVolume,
                    Rpc::GetVolumeStats,
                    Rpc::ExpandVolume,
                    Rpc::VolumeCondition,
                    Rpc::SingleNodeMultiWriter,
                ]
                .into_iter()
                .map(|t| NodeServiceCapability {
                    r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type: t as i32 })),
                })
                .collect(),
            })
        })
        .await
    }

    async fn node_get_info(&self, _r: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        csi_kit::rpc(&self.metrics, "NodeGetInfo", "", async {
            Ok(NodeGetInfoResponse {
                node_id: self.cfg.node_id.clone().unwrap_or_default(),
                max_volumes_per_node: 0,
                accessible_topology: Some(Topology { segments: self.topology() }),
            })
        })
        .await
    }
}
