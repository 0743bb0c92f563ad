//! The CSI Node service: the node plugin registers itself in the metadata service (so
//! ControllerPublish can tell a real node from a typo) and attaches volumes here: NodeStage starts
//! the volume's data path (a process of its own, `datapath.rs`, serving the volume engine at the
//! publication's fencing generation as a FUSE file), attaches that file with a loop device,
//! makes the file system on first use and mounts it at the staging path; NodePublish bind-mounts
//! it (or, for raw block, the device) into the pod; the reverse calls undo each step. What is
//! staged is kept on disk, so a restarted plugin carries on; a data path found dead is restarted.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::csi::v1::node_server::Node;
use cairn_proto::csi::v1::node_service_capability::{self, rpc::Type as Rpc};
use cairn_proto::csi::v1::volume_capability::AccessType;
use cairn_proto::csi::v1::*;
use csi_kit::CsiError;
use csi_kit::error::invalid;
use csi_kit::mount;
use tonic::{Request, Response, Status};

use crate::Driver;
use crate::attach::{self, StagedState};
use crate::datapath::{DATAPATH, DatapathSpec, SPEC_VERSION, volume_file};
use crate::params;
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

fn frontend_err(e: block_frontend::FrontendError) -> CsiError {
    CsiError::Internal(e.to_string())
}

fn is_block(cap: &VolumeCapability) -> bool {
    matches!(cap.access_type, Some(AccessType::Block(_)))
}

/// The device number a path's mount is on (a file system) or is (a device node).
fn dev_of(path: &Path, block: bool) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    Some(if block { m.rdev() } else { m.dev() })
}

impl Driver {
    /// Undoes a stage: unmounts the staging path, detaches the loop device, flushes and ends the
    /// data path. `force` (a dead data path): unmounts lazily, skips the flush, and does not wait
    /// for the old loop device, which pods' stale bind mounts may still hold until NodePublish
    /// replaces them (it clears itself once let go).
    async fn teardown(&self, st: &StagedState, force: bool) -> Result<(), CsiError> {
        let d = DATAPATH.volume_dir(&self.cfg.state_dir, &st.volume_id);
        if !st.fs_type.is_empty() && mount::is_mountpoint(&st.staging) {
            if force {
                mount::run("umount", &["-l", &st.staging.to_string_lossy()]).await?;
            } else {
                mount::unmount(&st.staging).await?;
            }
        }
        if force {
            let _ = mount::run("losetup", &["-d", &st.device.to_string_lossy()]).await;
        } else {
            block_frontend::fuse_loop::loop_detach(&volume_file(&d), Some(&st.device)).await.map_err(frontend_err)?;
        }
        attach::stop(&d, st.pid, !force).await?;
        d.forget(force);
        Ok(())
    }

    async fn node_stage(&self, r: NodeStageVolumeRequest) -> Result<NodeStageVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        mount::check_path("staging_target_path", &r.staging_target_path)?;
        let cap = params::CAPABILITIES.check(r.volume_capability.as_ref())?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let staging = PathBuf::from(&r.staging_target_path);
        let earlier = self.staged.lock().await.get(&r.volume_id).cloned();
        if let Some(st) = earlier {
            if st.staging != staging {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {} is staged at {}, not {}",
                    r.volume_id,
                    st.staging.display(),
                    staging.display()
                )));
            }
            let d = DATAPATH.volume_dir(&self.cfg.state_dir, &st.volume_id);
            if d.serving().await && (st.fs_type.is_empty() || mount::is_mountpoint(&staging)) {
                return Ok(NodeStageVolumeResponse {});
            }
            // The data path died (its FUSE mount answers ENOTCONN) or the mount is gone:
            // take the remains away and stage afresh.
            tracing::warn!(volume = %st.volume_id, "staged volume found dead; recovering it");
            self.teardown(&st, true).await?;
            self.staged.lock().await.remove(&st.volume_id);
        }
        let Some((_, rec)) = self.volumes.get(&r.volume_id).await? else {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        };
        let generation: u64 = r
            .publish_context
            .get("generation")
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| invalid("publish_context lacks the generation ControllerPublishVolume returned"))?;
        let d = DATAPATH.volume_dir(&self.cfg.state_dir, &rec.id);
        let spec = DatapathSpec {
            version: SPEC_VERSION,
            volume_id: rec.id.clone(),
            generation,
            meta: self.cfg.meta.clone(),
            tls_ca: self.cfg.tls_ca.clone(),
            tls_cert: self.cfg.tls_cert.clone(),
            tls_key: self.cfg.tls_key.clone(),
            log: self.cfg.log.clone(),
            nbd_socket: self.cfg.nbd_export.then(|| d.path().join("nbd.sock")),
            io_timeout_secs: rec.io_timeout_secs,
            read_cache_bytes: self.cfg.read_cache_mib << 20,
        };
        let pid = d.start(&spec).await?;
        let mut st = StagedState {
            version: attach::STAGED_VERSION,
            volume_id: rec.id.clone(),
            generation,
            staging: staging.clone(),
            fs_type: String::new(),
            device: PathBuf::new(),
            pid,
        };
        let made = async {
            st.device = block_frontend::fuse_loop::loop_attach(&volume_file(&d)).await.map_err(frontend_err)?;
            if !is_block(cap) {
                let want = match &cap.access_type {
                    Some(AccessType::Mount(m)) if !m.fs_type.is_empty() => m.fs_type.clone(),
                    _ if !rec.fs_type.is_empty() => rec.fs_type.clone(),
                    _ => "ext4".to_string(),
                };
                match mount::fs_type_of(&st.device).await? {
                    None => mount::mkfs(&st.device, &want).await?,
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
                mount::mount(&st.device, &staging, &want, &flags).await?;
                st.fs_type = want;
            }
            d.store_staged(&st)
        };
        if let Err(e) = made.await {
            if let Err(e2) = self.teardown(&st, false).await {
                tracing::warn!(volume = %rec.id, error = %e2, "cleaning up a failed stage");
            }
            return Err(e);
        }
        tracing::info!(volume = %rec.id, device = %st.device.display(), staging = %staging.display(), pid, "volume staged");
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
        let d = DATAPATH.volume_dir(&self.cfg.state_dir, &st.volume_id);
        self.teardown(&st, !d.serving().await).await?;
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
        let cap = params::CAPABILITIES.check(r.volume_capability.as_ref())?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let target = PathBuf::from(&r.target_path);
        let Some(st) = self.staged.lock().await.get(&r.volume_id).cloned() else {
            return Err(CsiError::FailedPrecondition(format!("volume {} is not staged on this node", r.volume_id)));
        };
        let block = is_block(cap);
        let source: &Path = if block { &st.device } else { &st.staging };
        if mount::is_mountpoint(&target) {
            // Published already; unless it still shows an earlier stage (the data path died
            // and NodeStage recovered it): then bind the live one instead.
            if dev_of(&target, block).is_some() && dev_of(&target, block) == dev_of(source, block) {
                return Ok(NodePublishVolumeResponse {});
            }
            tracing::warn!(volume = %r.volume_id, target = %target.display(), "stale publication; binding the live stage");
            mount::run("umount", &["-l", &target.to_string_lossy()]).await?;
        }
        let io = |what: &str, e: std::io::Error| CsiError::Internal(format!("{what} {}: {e}", target.display()));
        if block {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| io("create parent of", e))?;
            }
            tokio::fs::OpenOptions::new().create(true).append(true).open(&target).await.map_err(|e| io("create", e))?;
        } else {
            tokio::fs::create_dir_all(&target).await.map_err(|e| io("create", e))?;
        }
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
        if r.volume_path.is_empty() {
            return Err(invalid("volume_path is required"));
        }
        // An unknown volume is NOT_FOUND whatever its path looks like (the spec's order).
        let Some(st) = self.staged.lock().await.get(&r.volume_id).cloned() else {
            return Err(CsiError::NotFound(format!("volume {} is not staged on this node", r.volume_id)));
        };
        mount::check_path("volume_path", &r.volume_path)?;
        let d = DATAPATH.volume_dir(&self.cfg.state_dir, &st.volume_id);
        // The data path's file: its size is the volume's, its blocks the ones holding data. A
        // dead data path answers ENOTCONN: the volume is abnormal until NodeStage recovers it.
        let file = std::fs::metadata(volume_file(&d));
        let condition = match &file {
            Ok(_) => VolumeCondition { abnormal: false, message: "attached".into() },
            Err(e) => {
                VolumeCondition { abnormal: true, message: format!("the volume's data path is not serving: {e}") }
            }
        };
        let usage = if st.fs_type.is_empty() {
            let (cap, used) = file.map(|m| (m.len(), (m.blocks() * 512).min(m.len()))).unwrap_or((0, 0));
            vec![VolumeUsage {
                available: (cap - used) as i64,
                total: cap as i64,
                used: used as i64,
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
        Ok(NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) })
    }

    async fn node_expand(&self, r: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        if r.volume_path.is_empty() {
            return Err(invalid("volume_path is required"));
        }
        let _busy = self.inflight.begin(&r.volume_id)?;
        // An unknown volume is NOT_FOUND whatever its path looks like (the spec's order).
        let Some((_, rec)) = self.volumes.get(&r.volume_id).await? else {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        };
        let Some(st) = self.staged.lock().await.get(&r.volume_id).cloned() else {
            return Err(CsiError::NotFound(format!("volume {} is not staged on this node", r.volume_id)));
        };
        mount::check_path("volume_path", &r.volume_path)?;
        let file = volume_file(&DATAPATH.volume_dir(&self.cfg.state_dir, &st.volume_id));
        let cap = rec.capacity_bytes;
        // Growing the data path's file grows the engine (the FUSE server's setattr).
        tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&file)?;
            if f.metadata()?.len() < cap { f.set_len(cap) } else { Ok(()) }
        })
        .await
        .map_err(|e| CsiError::Internal(e.to_string()))?
        .map_err(|e| CsiError::Internal(format!("growing the volume's device: {e}")))?;
        mount::run("losetup", &["-c", &st.device.to_string_lossy()]).await?;
        if !st.fs_type.is_empty() {
            mount::grow_fs(&st.device, &st.staging, &st.fs_type).await?;
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
