//! The CSI Identity service both drivers serve: who the plugin is (its name and version), what
//! it offers (the capability list it is made with), and whether it is ready (its `Probe`).

use cairn_proto::csi::v1::identity_server;
use cairn_proto::csi::v1::plugin_capability::{self, Service, VolumeExpansion};
use cairn_proto::csi::v1::*;
use daemon_kit::metrics::RpcMetrics;
use tonic::{Request, Response, Status};

use crate::error::CsiError;
use crate::server::rpc;

/// Whether a plugin can serve: asked at every Probe call.
#[tonic::async_trait]
pub trait Probe: Send + Sync + 'static {
    /// True when ready; an error (logged at debug level) answers not ready.
    async fn ready(&self) -> Result<bool, CsiError>;
}

/// A plugin capability naming a service (`ControllerService`, `VolumeAccessibilityConstraints`).
pub fn service(t: plugin_capability::service::Type) -> PluginCapability {
    PluginCapability { r#type: Some(plugin_capability::Type::Service(Service { r#type: t as i32 })) }
}

/// A plugin capability naming how volumes expand (online or offline).
pub fn expansion(t: plugin_capability::volume_expansion::Type) -> PluginCapability {
    PluginCapability { r#type: Some(plugin_capability::Type::VolumeExpansion(VolumeExpansion { r#type: t as i32 })) }
}

/// One plugin's Identity service.
pub struct Identity<P> {
    /// The CSI driver name (GetPluginInfo).
    pub name: String,
    /// The vendor version (GetPluginInfo).
    pub version: String,
    /// What GetPluginCapabilities answers.
    pub capabilities: Vec<PluginCapability>,
    /// What Probe asks.
    pub ready: P,
    /// Where the calls are counted.
    pub metrics: RpcMetrics,
}

impl<P> Identity<P> {
    /// The Identity service of driver `name` at `version`, offering `capabilities`.
    pub fn new(
        name: &str,
        version: &str,
        capabilities: impl IntoIterator<Item = PluginCapability>,
        ready: P,
        metrics: RpcMetrics,
    ) -> Identity<P> {
        let capabilities = capabilities.into_iter().collect();
        Identity { name: name.to_string(), version: version.to_string(), capabilities, ready, metrics }
    }
}

#[tonic::async_trait]
impl<P: Probe> identity_server::Identity for Identity<P> {
    async fn get_plugin_info(
        &self,
        _r: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        rpc(&self.metrics, "GetPluginInfo", "", async {
            Ok(GetPluginInfoResponse {
                name: self.name.clone(),
                vendor_version: self.version.clone(),
                manifest: [("project".to_string(), "cairn".to_string())].into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _r: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        rpc(&self.metrics, "GetPluginCapabilities", "", async {
            Ok(GetPluginCapabilitiesResponse { capabilities: self.capabilities.clone() })
        })
        .await
    }

    async fn probe(&self, _r: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        rpc(&self.metrics, "Probe", "", async {
            let ready = match self.ready.ready().await {
                Ok(ready) => ready,
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
