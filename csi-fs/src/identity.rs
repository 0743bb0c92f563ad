//! The CSI Identity service: who the plugin is, what it offers, and whether the pool is reachable.

use cairn_proto::csi::v1::identity_server::Identity;
use cairn_proto::csi::v1::plugin_capability::{self, Service, VolumeExpansion, volume_expansion};
use cairn_proto::csi::v1::*;
use tonic::{Request, Response, Status};

use crate::Driver;

fn service(t: plugin_capability::service::Type) -> PluginCapability {
    PluginCapability { r#type: Some(plugin_capability::Type::Service(Service { r#type: t as i32 })) }
}

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _r: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        csi_kit::rpc(&self.metrics, "GetPluginInfo", "", async {
            Ok(GetPluginInfoResponse {
                name: self.cfg.driver_name.clone(),
                vendor_version: env!("CARGO_PKG_VERSION").into(),
                manifest: [("project".to_string(), "cairn".to_string())].into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _r: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        csi_kit::rpc(&self.metrics, "GetPluginCapabilities", "", async {
            let mut capabilities = vec![service(Type::VolumeAccessibilityConstraints)];
            if self.cfg.controller {
                capabilities.push(service(Type::ControllerService));
            }
            // The quota grows while mounted; no node step is needed.
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                })),
            });
            Ok(GetPluginCapabilitiesResponse { capabilities })
        })
        .await
    }

    /// Ready once the metadata service answers and at least one storage node is up.
    async fn probe(&self, _r: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        csi_kit::rpc(&self.metrics, "Probe", "", async {
            let ready = match self.volumes.pool().await {
                Ok((up, _)) => !up.is_empty(),
                Err(e) => {
                    tracing::debug!(error = %e, "probe: pool not reachable");
                    false
                }
            };
            Ok(ProbeResponse { ready: Some(ready) })
        })
        .await
    }
}
