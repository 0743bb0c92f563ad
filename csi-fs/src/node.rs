//! The CSI Node service. NodeStage starts the volume's mount process (`mount_process.rs`, a
//! process of its own so mounts outlive the plugin) which mounts the shared filesystem at
//! `<state_dir>/volumes/<id>/mnt`, and bind-mounts that onto the staging path; NodePublish
//! bind-mounts the staging path into the pod (read-only when asked); the reverse calls undo each
//! step. What is staged is kept on disk, so a restarted plugin carries on; a mount found dead
//! (ENOTCONN) is replaced by NodeStage, and NodePublish rebinds a pod's stale bind mount.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_proto::csi::v1::node_server::Node;
use cairn_proto::csi::v1::node_service_capability::{self, rpc::Type as Rpc};
use cairn_proto::csi::v1::*;
use csi_kit::CsiError;
use csi_kit::error::invalid;
use csi_kit::mount;
use tonic::{Request, Response, Status};

use crate::attach::{self, StagedState};
use crate::mount_process::{MOUNT_PROCESS, MountSpec, SPEC_VERSION};
use crate::{Driver, params};

/// What the Node service offers.
pub const CAPABILITIES: [Rpc; 4] =
    [Rpc::StageUnstageVolume, Rpc::GetVolumeStats, Rpc::VolumeCondition, Rpc::SingleNodeMultiWriter];

/// The device number of the file system `path` is on (None: it does not answer).
async fn dev_of(path: &Path) -> Option<u64> {
    tokio::fs::metadata(path).await.ok().map(|m| m.dev())
}

/// Unmounts `target`; a mount that will not go (busy, or its FUSE server dead) goes lazily.
async fn unmount_or_detach(target: &Path) -> Result<(), CsiError> {
    if let Err(e) = mount::unmount(target).await {
        tracing::info!(target = %target.display(), error = %e, "unmounting lazily");
        mount::unmount_lazy(target).await?;
    }
    Ok(())
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CsiError {
    CsiError::Internal(format!("{what} {}: {e}", path.display()))
}

impl Driver {
    /// Undoes a stage: unmounts the staging bind, ends the mount process (it flushes, unmounts
    /// and unregisters) and forgets the stage. `dead` (the mount process is gone): unmounts
    /// lazily and keeps the log, which tells why it died.
    async fn teardown(&self, st: &StagedState, dead: bool) -> Result<(), CsiError> {
        let d = MOUNT_PROCESS.volume_dir(&self.cfg.state_dir, &st.volume_id);
        if dead {
            mount::unmount_lazy(&st.staging).await?;
        } else {
            unmount_or_detach(&st.staging).await?;
        }
        d.stop(st.pid).await?;
        d.forget(dead);
        Ok(())
    }

    async fn node_stage(&self, r: NodeStageVolumeRequest) -> Result<NodeStageVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        let cap = params::check_capability(r.volume_capability.as_ref())?;
        let read_only = params::read_only(cap);
        let _busy = self.inflight.begin(&r.volume_id)?;
        let staging = PathBuf::from(&r.staging_target_path);
        let earlier = self.staged.lock().await.get(&r.volume_id).cloned();
        if let Some(st) = earlier {
            if st.staging != staging || st.read_only != read_only {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {} is staged at {} ({}), not {} ({})",
                    r.volume_id,
                    st.staging.display(),
                    if st.read_only { "read-only" } else { "read-write" },
                    staging.display(),
                    if read_only { "read-only" } else { "read-write" },
                )));
            }
            let d = MOUNT_PROCESS.volume_dir(&self.cfg.state_dir, &st.volume_id);
            if d.serving().await && mount::is_mountpoint(&staging) && csi_kit::child::alive(&staging).await {
                return Ok(NodeStageVolumeResponse {});
            }
            // The mount process died (its FUSE mount answers ENOTCONN) or a mount is gone: take
            // the remains away and stage afresh.
            tracing::warn!(volume = %st.volume_id, "staged volume found dead; recovering it");
            self.teardown(&st, true).await?;
            self.staged.lock().await.remove(&st.volume_id);
        }
        let Some((_, rec)) = self.volumes.get(&r.volume_id).await? else {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        };
        if !rec.populated {
            return Err(CsiError::Unavailable(format!("volume {} is still being made; retry", rec.id)));
        }
        let node = self.cfg.node_id.clone().unwrap_or_default();
        let d = MOUNT_PROCESS.volume_dir(&self.cfg.state_dir, &rec.id);
        let spec = MountSpec {
            version: SPEC_VERSION,
            fs_id: rec.id.clone(),
            client_id: format!("{node}-{:08x}", rand::random::<u32>()),
            node,
            read_only,
            meta: self.cfg.meta.clone(),
            tls_ca: self.cfg.tls_ca.clone(),
            tls_cert: self.cfg.tls_cert.clone(),
            tls_key: self.cfg.tls_key.clone(),
            log: self.cfg.log.clone(),
            io_timeout_secs: params::io_timeout_flag(cap)?.unwrap_or(rec.io_timeout_secs),
            read_cache_bytes: self.cfg.read_cache_mib << 20,
        };
        let pid = d.start(&spec).await?;
        let st = StagedState {
            version: attach::STAGED_VERSION,
            volume_id: rec.id.clone(),
            staging: staging.clone(),
            client_id: spec.client_id.clone(),
            read_only,
            pid,
        };
        let made = async {
            tokio::fs::create_dir_all(&staging).await.map_err(|e| io_err("create", &staging, e))?;
            // Whatever an earlier plugin left mounted there is not this stage.
            mount::unmount_lazy(&staging).await?;
            mount::mount(&d.mount_point(), &staging, "", &[]).await?;
            if read_only {
                mount::remount_read_only(&staging).await?;
            }
            d.store_staged(&st)
        };
        if let Err(e) = made.await {
            if let Err(e2) = self.teardown(&st, false).await {
                tracing::warn!(volume = %rec.id, error = %e2, "cleaning up a failed stage");
            }
            return Err(e);
        }
        tracing::info!(volume = %rec.id, client = %st.client_id, staging = %staging.display(), pid, read_only, "volume staged");
        self.staged.lock().await.insert(rec.id.clone(), st);
        Ok(NodeStageVolumeResponse {})
    }

    async fn node_unstage(&self, r: NodeUnstageVolumeRequest) -> Result<NodeUnstageVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let Some(st) = self.staged.lock().await.get(&r.volume_id).cloned() else {
            return Ok(NodeUnstageVolumeResponse {});
        };
        let d = MOUNT_PROCESS.volume_dir(&self.cfg.state_dir, &st.volume_id);
        let dead = !d.serving().await;
        self.teardown(&st, dead).await?;
        self.staged.lock().await.remove(&r.volume_id);
        tracing::info!(volume = %r.volume_id, "volume unstaged");
        Ok(NodeUnstageVolumeResponse {})
    }

    async fn node_publish(&self, r: NodePublishVolumeRequest) -> Result<NodePublishVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("target_path", &r.target_path)?;
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        params::check_capability(r.volume_capability.as_ref())?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let target = PathBuf::from(&r.target_path);
        let Some(st) = self.staged.lock().await.get(&r.volume_id).cloned() else {
            return Err(CsiError::FailedPrecondition(format!("volume {} is not staged on this node", r.volume_id)));
        };
        if st.staging != Path::new(&r.staging_target_path) {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {} is staged at {}, not {}",
                r.volume_id,
                st.staging.display(),
                r.staging_target_path
            )));
        }
        let read_only = r.readonly || st.read_only;
        if mount::is_mountpoint(&target) {
            // Published already; unless it shows a mount that died (NodeStage has replaced it
            // since): then bind the live one instead.
            let live = dev_of(&target).await;
            if live.is_some() && live == dev_of(&st.staging).await {
                let is_ro = mount::mount_options(&target).is_some_and(|o| o.iter().any(|f| f == "ro"));
                if is_ro != read_only {
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {} is published at {} {}",
                        r.volume_id,
                        target.display(),
                        if is_ro { "read-only" } else { "read-write" }
                    )));
                }
                return Ok(NodePublishVolumeResponse {});
            }
            tracing::warn!(volume = %r.volume_id, target = %target.display(), "stale publication; binding the live stage");
            mount::unmount_lazy(&target).await?;
        }
        tokio::fs::create_dir_all(&target).await.map_err(|e| io_err("create", &target, e))?;
        mount::mount(&st.staging, &target, "", &[]).await?;
        if read_only && let Err(e) = mount::remount_read_only(&target).await {
            let _ = mount::unmount(&target).await;
            return Err(e);
        }
        Ok(NodePublishVolumeResponse {})
    }

    async fn node_unpublish(&self, r: NodeUnpublishVolumeRequest) -> Result<NodeUnpublishVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("target_path", &r.target_path)?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let target = PathBuf::from(&r.target_path);
        unmount_or_detach(&target).await?;
        if let Err(e) = tokio::fs::remove_dir(&target).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_err("remove", &target, e));
        }
        Ok(NodeUnpublishVolumeResponse {})
    }

    async fn node_stats(&self, r: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        if r.volume_path.is_empty() {
            return Err(invalid("volume_path is required"));
        }
        // An unknown volume is NOT_FOUND whatever its path looks like (the spec's order).
        if !self.staged.lock().await.contains_key(&r.volume_id) {
            return Err(CsiError::NotFound(format!("volume {} is not staged on this node", r.volume_id)));
        }
        mount::check_path("volume_path", &r.volume_path)?;
        let path = PathBuf::from(&r.volume_path);
        let stats = tokio::task::spawn_blocking(move || mount::statvfs(&path))
            .await
            .map_err(|e| CsiError::Internal(e.to_string()))?;
        let s = match stats {
            Ok(s) => s,
            // A mount whose process died answers ENOTCONN: abnormal until NodeStage recovers it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                return Ok(NodeGetVolumeStatsResponse {
                    usage: Vec::new(),
                    volume_condition: Some(VolumeCondition {
                        abnormal: true,
                        message: format!("the volume's filesystem client is not serving: {e}"),
                    }),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CsiError::NotFound(format!("volume_path {}: {e}", r.volume_path)));
            }
            Err(e) => return Err(CsiError::Internal(format!("statvfs {}: {e}", r.volume_path))),
        };
        let usage = vec![
            VolumeUsage {
                available: s.available_bytes as i64,
                total: s.total_bytes as i64,
                used: s.total_bytes.saturating_sub(s.free_bytes) as i64,
                unit: volume_usage::Unit::Bytes as i32,
            },
            VolumeUsage {
                available: s.available_inodes as i64,
                total: s.total_inodes as i64,
                used: s.total_inodes.saturating_sub(s.free_inodes) as i64,
                unit: volume_usage::Unit::Inodes as i32,
            },
        ];
        Ok(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(VolumeCondition { abnormal: false, message: "mounted".into() }),
        })
    }
}

#[tonic::async_trait]
impl Node for Driver {
    async fn node_stage_volume(
        &self,
        r: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "NodeStageVolume", &id, self.node_stage(r)).await
    }

    async fn node_unstage_volume(
        &self,
        r: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "NodeUnstageVolume", &id, self.node_unstage(r)).await
    }

    async fn node_publish_volume(
        &self,
        r: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "NodePublishVolume", &id, self.node_publish(r)).await
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "NodeUnpublishVolume", &id, self.node_unpublish(r)).await
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "NodeGetVolumeStats", &id, self.node_stats(r)).await
    }

    async fn node_expand_volume(
        &self,
        _r: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume is not needed: a filesystem's quota grows while mounted"))
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        csi_kit::rpc(&self.metrics, "NodeGetCapabilities", "", async {
            Ok(NodeGetCapabilitiesResponse {
                capabilities: CAPABILITIES
                    .into_iter()
                    .map(|t| NodeServiceCapability {
                        r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                            r#type: t as i32,
                        })),
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
