//! The CSI Identity service (`csi_kit::identity`) as csi-fs serves it: its name, what it offers,
//! and ready once the metadata service answers and at least one storage node is up.

use cairn_proto::csi::v1::plugin_capability::service::Type;
use cairn_proto::csi::v1::plugin_capability::volume_expansion;
use csi_kit::identity::{Identity, expansion, service};

use crate::Driver;
use crate::volumes::Volumes;

/// The Identity service of `d`: the controller service offered when it runs as controller; the
/// quota grows while mounted, so expansion is online and needs no node step.
pub fn identity(d: &Driver) -> Identity<Volumes> {
    let controller = d.cfg.controller.then_some(Type::ControllerService);
    let services = [Some(Type::VolumeAccessibilityConstraints), controller].into_iter().flatten().map(service);
    let offers = services.chain([expansion(volume_expansion::Type::Online)]);
    Identity::new(&d.cfg.driver_name, env!("CARGO_PKG_VERSION"), offers, d.volumes.clone(), d.metrics.clone())
}
