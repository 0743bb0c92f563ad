//! The CSI Node service: the node plugin registers itself in the metadata service (so
//! ControllerPublish can tell a real node from a typo) and attaches volumes here: NodeStage opens
//! the volume engine at the publication's fencing generation, attaches it as a block device
//! (FUSE + loop), makes the file system on first use and mounts it at the staging path;
//! NodePublish bind-mounts it (or, for raw block, the device) into the pod; the reverse calls
//! undo each step. The data path runs inside this process for now.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use block_frontend::BlockDevice;
use block_frontend::fuse_loop::FuseLoop;
use cairn_proto::csi::v1::node_server::Node;
use cairn_proto::csi::v1::node_service_capability::{self, rpc::Type as Rpc};
use cairn_proto::csi::v1::volume_capability::AccessType;
use cairn_proto::csi::v1::*;
use csi_kit::CsiError;
use csi_kit::error::invalid;
use csi_kit::mount;
use tonic::{Request, Response, Status};
use volume_engine::{EngineError, Geometry, Volume};

use crate::Driver;
use crate::params;
use crate::records::{NodeRecord, RECORD_VERSION, now_ms};

/// A volume staged on this node.
pub struct Staged {
    device: Box<dyn BlockDevice>,
    volume: Arc<Volume>,
    staging: PathBuf,
    /// The file system mounted at the staging path; empty for raw block.
    fs_type: String,
}

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

fn engine_err(e: EngineError) -> CsiError {
    match e {
        EngineError::Fenced { .. } => CsiError::FailedPrecondition(format!("{e}: the volume was published elsewhere")),
        other => CsiError::Unavailable(other.to_string()),
    }
}

fn frontend_err(e: block_frontend::FrontendError) -> CsiError {
    CsiError::Internal(e.to_string())
}

fn capability(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability, CsiError> {
    let cap = cap.ok_or_else(|| invalid("volume_capability is required"))?;
    if let Some(why) = params::capability_problem(cap) {
        return Err(invalid(why));
    }
    Ok(cap)
}

fn is_block(cap: &VolumeCapability) -> bool {
    matches!(cap.access_type, Some(AccessType::Block(_)))
}

impl Driver {
    async fn pool_client(&self) -> Result<cluster::ChunkClient, CsiError> {
        self.pool
            .get_or_try_init(|| async {
                let cfg = cluster::ClientConfig { min_replicas: 1, ..Default::default() };
                cluster::ChunkClient::new(self.volumes.meta.clone(), cfg)
                    .await
                    .map_err(|e| CsiError::Unavailable(format!("storage pool: {e}")))
            })
            .await
            .cloned()
    }

    async fn node_stage(&self, r: NodeStageVolumeRequest) -> Result<NodeStageVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        let cap = capability(r.volume_capability.as_ref())?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let staging = PathBuf::from(&r.staging_target_path);
        if let Some(st) = self.staged.lock().await.get(&r.volume_id) {
            if st.staging != staging {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {} is staged at {}, not {}",
                    r.volume_id,
                    st.staging.display(),
                    staging.display()
                )));
            }
            return Ok(NodeStageVolumeResponse {});
        }
        let Some((_, rec)) = self.volumes.get(&r.volume_id).await? else {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        };
        let generation: u64 = r
            .publish_context
            .get("generation")
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| invalid("publish_context lacks the generation ControllerPublishVolume returned"))?;
        let geometry = Geometry { capacity: rec.capacity_bytes, block_size: u64::from(rec.block_size) };
        let pool = self.pool_client().await?;
        let volume = Arc::new(
            Volume::open(self.volumes.meta.clone(), pool, &rec.id, geometry, generation).await.map_err(engine_err)?,
        );
        let fuse_dir = self.cfg.state_dir.join("fuse").join(&rec.id);
        let device = FuseLoop::attach(volume.clone(), &fuse_dir).await.map_err(frontend_err)?;
        let device: Box<dyn BlockDevice> = Box::new(device);
        let fs_type = if is_block(cap) {
            String::new()
        } else {
            let want = match &cap.access_type {
                Some(AccessType::Mount(m)) if !m.fs_type.is_empty() => m.fs_type.clone(),
                _ if !rec.fs_type.is_empty() => rec.fs_type.clone(),
                _ => "ext4".to_string(),
            };
            let staged = async {
                match mount::fs_type_of(device.path()).await? {
                    None => mount::mkfs(device.path(), &want).await?,
                    Some(have) if have != want => {
                        return Err(CsiError::FailedPrecondition(format!(
                            "volume {} holds {have}, not {want}",
                            rec.id
                        )));
                    }
                    Some(_) => {}
                }
                tokio::fs::create_dir_all(&staging)
                    .await
                    .map_err(|e| CsiError::Internal(format!("create {}: {e}", staging.display())))?;
                let flags = match &cap.access_type {
                    Some(AccessType::Mount(m)) => m.mount_flags.clone(),
                    _ => Vec::new(),
                };
                mount::mount(device.path(), &staging, &want, &flags).await
            };
            if let Err(e) = staged.await {
                let _ = device.detach().await;
                return Err(e);
            }
            want
        };
        tracing::info!(volume = %rec.id, device = %device.path().display(), staging = %staging.display(), "volume staged");
        self.staged.lock().await.insert(rec.id.clone(), Staged { device, volume, staging, fs_type });
        Ok(NodeStageVolumeResponse {})
    }

    async fn node_unstage(&self, r: NodeUnstageVolumeRequest) -> Result<NodeUnstageVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let Some(st) = self.staged.lock().await.remove(&r.volume_id) else {
            return Ok(NodeUnstageVolumeResponse {});
        };
        let out = async {
            if !st.fs_type.is_empty() {
                mount::unmount(&st.staging).await?;
            }
            st.device.detach().await.map_err(frontend_err)
        };
        out.await?;
        tracing::info!(volume = %r.volume_id, "volume unstaged");
        Ok(NodeUnstageVolumeResponse {})
    }

    async fn node_publish(&self, r: NodePublishVolumeRequest) -> Result<NodePublishVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("target_path", &r.target_path)?;
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        let cap = capability(r.volume_capability.as_ref())?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let target = PathBuf::from(&r.target_path);
        let staged = self.staged.lock().await;
        let Some(st) = staged.get(&r.volume_id) else {
            return Err(CsiError::FailedPrecondition(format!("volume {} is not staged on this node", r.volume_id)));
        };
        if mount::is_mountpoint(&target) {
            return Ok(NodePublishVolumeResponse {});
        }
        let io = |what: &str, e: std::io::Error| CsiError::Internal(format!("{what} {}: {e}", target.display()));
        let source: &Path = if is_block(cap) {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| io("create parent of", e))?;
            }
            tokio::fs::OpenOptions::new().create(true).append(true).open(&target).await.map_err(|e| io("create", e))?;
            st.device.path()
        } else {
            tokio::fs::create_dir_all(&target).await.map_err(|e| io("create", e))?;
            &st.staging
        };
        mount::mount(source, &target, "", &[]).await?;
        if r.readonly {
            mount::remount_read_only(&target).await?;
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
        mount::unmount(&target).await?;
        match tokio::fs::metadata(&target).await {
            Ok(m) if m.is_dir() => {
                let _ = tokio::fs::remove_dir(&target).await;
            }
            Ok(_) => {
                let _ = tokio::fs::remove_file(&target).await;
            }
            Err(_) => {}
        }
        Ok(NodeUnpublishVolumeResponse {})
    }

    async fn node_stats(&self, r: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("volume_path", &r.volume_path)?;
        let staged = self.staged.lock().await;
        let Some(st) = staged.get(&r.volume_id) else {
            return Err(CsiError::NotFound(format!("volume {} is not staged on this node", r.volume_id)));
        };
        let g = st.volume.geometry().await;
        let used_blocks = st.volume.allocated_blocks().await * g.block_size;
        let usage = if st.fs_type.is_empty() {
            vec![VolumeUsage {
                available: (g.capacity - used_blocks.min(g.capacity)) as i64,
                total: g.capacity as i64,
                used: used_blocks.min(g.capacity) as i64,
                unit: volume_usage::Unit::Bytes as i32,
            }]
        } else {
            let s = statvfs(Path::new(&r.volume_path))?;
            let f = s.f_frsize;
            vec![
                VolumeUsage {
                    available: (s.f_bavail * f) as i64,
                    total: (s.f_blocks * f) as i64,
                    used: ((s.f_blocks - s.f_bfree) * f) as i64,
                    unit: volume_usage::Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: s.f_favail as i64,
                    total: s.f_files as i64,
                    used: (s.f_files - s.f_ffree) as i64,
                    unit: volume_usage::Unit::Inodes as i32,
                },
            ]
        };
        Ok(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(VolumeCondition { abnormal: false, message: "attached".into() }),
        })
    }

    async fn node_expand(&self, r: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("volume_path", &r.volume_path)?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let Some((_, rec)) = self.volumes.get(&r.volume_id).await? else {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        };
        let staged = self.staged.lock().await;
        let Some(st) = staged.get(&r.volume_id) else {
            return Err(CsiError::NotFound(format!("volume {} is not staged on this node", r.volume_id)));
        };
        if st.volume.geometry().await.capacity < rec.capacity_bytes {
            st.volume.grow(rec.capacity_bytes).await.map_err(engine_err)?;
            mount::run("losetup", &["-c", &st.device.path().to_string_lossy()]).await?;
        }
        if !st.fs_type.is_empty() {
            mount::grow_fs(st.device.path(), &st.staging, &st.fs_type).await?;
        }
        Ok(NodeExpandVolumeResponse { capacity_bytes: rec.capacity_bytes as i64 })
    }
}

fn statvfs(path: &Path) -> Result<libc::statvfs, CsiError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| invalid("volume_path holds a NUL byte"))?;
    // SAFETY: `c` is a valid C string; `out` is written by statvfs before it is read.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut out) } != 0 {
        return Err(CsiError::NotFound(format!("volume_path {}: {}", path.display(), std::io::Error::last_os_error())));
    }
    Ok(out)
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
        r: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "NodeExpandVolume", &id, self.node_expand(r)).await
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
