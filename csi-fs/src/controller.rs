//! The CSI Controller service: create (empty, from a snapshot, or cloned), delete, list,
//! validate and expand volumes, and the pool's capacity. A volume is one filesystem whose quota
//! is its capacity; shared filesystems need no attachment, so there is no ControllerPublish.
//! Every call for one volume (or name) holds its in-flight guard: a concurrent call is ABORTED.

use cairn_proto::csi::v1::controller_server::Controller;
use cairn_proto::csi::v1::controller_service_capability::{self, rpc::Type as Rpc};
use cairn_proto::csi::v1::*;
use csi_kit::error::invalid;
use csi_kit::records::check_name;
use csi_kit::{Created, CsiError};
use tonic::{Request, Response, Status};

use crate::records::*;
use crate::{Driver, fs_error, params};

/// Most volumes ListVolumes returns in one page.
const LIST_PAGE_MAX: u32 = 1000;

impl Driver {
    pub(crate) fn volume(&self, rec: &VolumeRecord) -> Volume {
        Volume {
            capacity_bytes: rec.capacity_bytes as i64,
            volume_id: rec.id.clone(),
            volume_context: [("fsType".to_string(), params::FS_TYPE.to_string())].into(),
            content_source: rec.source.as_ref().map(|src| VolumeContentSource {
                r#type: Some(match src {
                    Source::Snapshot(id) => {
                        volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                            snapshot_id: id.clone(),
                        })
                    }
                    Source::Volume(id) => volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                        volume_id: id.clone(),
                    }),
                }),
            }),
            accessible_topology: vec![Topology { segments: self.topology() }],
        }
    }

    async fn create(&self, r: CreateVolumeRequest) -> Result<CreateVolumeResponse, CsiError> {
        check_name("name", &r.name)?;
        let _busy = self.inflight.begin(&format!("name:{}", r.name))?;
        params::check_capabilities(&r.volume_capabilities)?;
        params::check_parameters(&r.parameters)?;
        let capacity = params::capacity(r.capacity_range.as_ref())?;
        // A copy holds what its source holds, so it is at least the source's size.
        let source = match r.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => {
                let Some((_, snap)) = self.volumes.snapshot(&s.snapshot_id).await? else {
                    return Err(CsiError::NotFound(format!("snapshot {} does not exist", s.snapshot_id)));
                };
                if !snap.ready {
                    return Err(CsiError::Unavailable(format!("snapshot {} is still being cut; retry", snap.id)));
                }
                Some((Source::Snapshot(snap.id), snap.size_bytes))
            }
            Some(volume_content_source::Type::Volume(v)) => {
                let Some((_, vol)) = self.volumes.get(&v.volume_id).await? else {
                    return Err(CsiError::NotFound(format!("volume {} does not exist", v.volume_id)));
                };
                if !vol.populated {
                    return Err(CsiError::Unavailable(format!("volume {} is still being made; retry", vol.id)));
                }
                Some((Source::Volume(vol.id), vol.capacity_bytes))
            }
        };
        if let Some((src, size)) = &source
            && capacity < *size
        {
            return Err(CsiError::OutOfRange(format!(
                "{capacity} bytes is smaller than the source {src:?} ({size} bytes)"
            )));
        }
        if let Some(req) = &r.accessibility_requirements {
            let ours = self.topology();
            let fits = |t: &Topology| t.segments.iter().all(|(k, v)| ours.get(k) == Some(v));
            if !req.requisite.is_empty() && !req.requisite.iter().any(fits) {
                return Err(CsiError::ResourceExhausted(
                    "accessibility_requirements: no requisite topology is served by this pool".into(),
                ));
            }
        }
        let rec = VolumeRecord {
            version: RECORD_VERSION,
            id: new_volume_id(),
            name: r.name.clone(),
            capacity_bytes: capacity,
            created_unix_ms: now_ms(),
            source: source.map(|(s, _)| s),
            populated: false,
            io_timeout_secs: params::io_timeout(&r.parameters)?,
        };
        let rec = match self.volumes.create(rec.clone()).await? {
            Created::New(v) => {
                tracing::info!(volume = %v.id, name = %v.name, bytes = v.capacity_bytes, source = ?v.source, "volume created");
                v
            }
            Created::Existing(v) => {
                if !params::fits(v.capacity_bytes, r.capacity_range.as_ref()) || v.source != rec.source {
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {} exists as {} with another size ({} bytes) or content source",
                        v.name, v.id, v.capacity_bytes
                    )));
                }
                v
            }
        };
        let rec = if rec.populated { rec } else { self.populate(rec).await? };
        Ok(CreateVolumeResponse { volume: Some(self.volume(&rec)) })
    }

    /// Makes a new volume's filesystem (empty, or a copy of its source sharing its chunks), then
    /// marks it populated. Run again by a repeated CreateVolume after a crash (both steps are
    /// idempotent).
    async fn populate(&self, rec: VolumeRecord) -> Result<VolumeRecord, CsiError> {
        let meta = self.volumes.meta();
        match &rec.source {
            None => fs_meta::filesystem::create(meta, &rec.id, rec.capacity_bytes).await,
            Some(Source::Snapshot(from) | Source::Volume(from)) => {
                fs_meta::filesystem::copy(meta, from, &rec.id, rec.capacity_bytes).await
            }
        }
        .map_err(fs_error)?;
        let rec = self
            .volumes
            .update(&rec.id, |v| {
                let was = v.populated;
                v.populated = true;
                Ok(!was)
            })
            .await?;
        tracing::info!(volume = %rec.id, source = ?rec.source, "volume's filesystem made");
        Ok(rec)
    }

    async fn expand(&self, r: ControllerExpandVolumeRequest) -> Result<ControllerExpandVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        let range = r.capacity_range.as_ref().ok_or_else(|| invalid("capacity_range is required"))?;
        let want = params::capacity(Some(range))?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let Some((_, rec)) = self.volumes.get(&r.volume_id).await? else {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        };
        if !rec.populated {
            return Err(CsiError::Unavailable(format!("volume {} is still being made; retry", rec.id)));
        }
        if range.limit_bytes > 0 && rec.capacity_bytes > range.limit_bytes as u64 {
            return Err(CsiError::OutOfRange(format!(
                "volume {} is {} bytes; volumes do not shrink",
                rec.id, rec.capacity_bytes
            )));
        }
        let target = rec.capacity_bytes.max(want);
        // The quota first: a crash between the two leaves the record behind, and a retry sets both.
        fs_meta::filesystem::set_quota(self.volumes.meta(), &rec.id, target).await.map_err(fs_error)?;
        let rec = self
            .volumes
            .update(&rec.id, |v| {
                if v.capacity_bytes >= target {
                    return Ok(false);
                }
                v.capacity_bytes = target;
                Ok(true)
            })
            .await?;
        tracing::info!(volume = %rec.id, bytes = rec.capacity_bytes, "volume expanded");
        Ok(ControllerExpandVolumeResponse { capacity_bytes: rec.capacity_bytes as i64, node_expansion_required: false })
    }

    async fn validate(
        &self,
        r: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        if r.volume_capabilities.is_empty() {
            return Err(invalid("volume_capabilities is required"));
        }
        if self.volumes.get(&r.volume_id).await?.is_none() {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        }
        let problem = r
            .volume_capabilities
            .iter()
            .find_map(params::capability_problem)
            .or_else(|| params::check_parameters(&r.parameters).err().map(|e| e.to_string()));
        Ok(match problem {
            Some(message) => ValidateVolumeCapabilitiesResponse { confirmed: None, message },
            None => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
        })
    }

    async fn list(&self, r: ListVolumesRequest) -> Result<ListVolumesResponse, CsiError> {
        if r.max_entries < 0 {
            return Err(invalid("max_entries must not be negative"));
        }
        if !r.starting_token.is_empty() && !is_volume_id(&r.starting_token) {
            return Err(CsiError::Aborted(format!(
                "starting_token {:?} is not a token ListVolumes gave",
                r.starting_token
            )));
        }
        let max = if r.max_entries == 0 { LIST_PAGE_MAX } else { (r.max_entries as u32).min(LIST_PAGE_MAX) };
        let (recs, more) = self.volumes.list(&r.starting_token, max).await?;
        let next_token = if more { recs.last().map(|v| v.id.clone()).unwrap_or_default() } else { String::new() };
        let entries =
            recs.iter().map(|v| list_volumes_response::Entry { volume: Some(self.volume(v)), status: None }).collect();
        Ok(ListVolumesResponse { entries, next_token })
    }

    async fn capacity(&self, r: GetCapacityRequest) -> Result<GetCapacityResponse, CsiError> {
        if let Some(c) = r.volume_capabilities.iter().find_map(params::capability_problem) {
            return Err(invalid(c));
        }
        params::check_parameters(&r.parameters)?;
        // Every chunk is kept R times, on R different nodes: the pool's free bytes over R.
        let (up, replicas) = self.volumes.pool().await?;
        let free: u64 = if up.len() < replicas { 0 } else { up.iter().map(|(_, f)| f).sum() };
        let available = free / replicas as u64;
        Ok(GetCapacityResponse {
            available_capacity: available.min(i64::MAX as u64) as i64,
            maximum_volume_size: Some(params::MAX_CAPACITY as i64),
            minimum_volume_size: Some(params::MIB as i64),
        })
    }
}

fn rpc_cap(t: Rpc) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc { r#type: t as i32 })),
    }
}

/// What the Controller service offers.
pub const CAPABILITIES: [Rpc; 8] = [
    Rpc::CreateDeleteVolume,
    Rpc::CreateDeleteSnapshot,
    Rpc::ListSnapshots,
    Rpc::CloneVolume,
    Rpc::ExpandVolume,
    Rpc::ListVolumes,
    Rpc::GetCapacity,
    Rpc::SingleNodeMultiWriter,
];

fn unoffered<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{what} is not offered by csi-fs")))
}

#[tonic::async_trait]
impl Controller for Driver {
    async fn create_volume(&self, r: Request<CreateVolumeRequest>) -> Result<Response<CreateVolumeResponse>, Status> {
        let r = r.into_inner();
        let name = r.name.clone();
        csi_kit::rpc(&self.metrics, "CreateVolume", &name, self.create(r)).await
    }

    async fn delete_volume(&self, r: Request<DeleteVolumeRequest>) -> Result<Response<DeleteVolumeResponse>, Status> {
        let id = r.into_inner().volume_id;
        csi_kit::rpc(&self.metrics, "DeleteVolume", &id, async {
            if id.is_empty() {
                return Err(invalid("volume_id is required"));
            }
            let _busy = self.inflight.begin(&id)?;
            self.volumes.delete(&id).await?;
            tracing::info!(volume = %id, "volume deleted");
            Ok(DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _r: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        unoffered("ControllerPublishVolume (shared filesystems need no attachment)")
    }

    async fn controller_unpublish_volume(
        &self,
        _r: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        unoffered("ControllerUnpublishVolume (shared filesystems need no attachment)")
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "ValidateVolumeCapabilities", &id, self.validate(r)).await
    }

    async fn list_volumes(&self, r: Request<ListVolumesRequest>) -> Result<Response<ListVolumesResponse>, Status> {
        csi_kit::rpc(&self.metrics, "ListVolumes", "", self.list(r.into_inner())).await
    }

    async fn get_capacity(&self, r: Request<GetCapacityRequest>) -> Result<Response<GetCapacityResponse>, Status> {
        csi_kit::rpc(&self.metrics, "GetCapacity", "", self.capacity(r.into_inner())).await
    }

    async fn controller_get_capabilities(
        &self,
        _r: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        csi_kit::rpc(&self.metrics, "ControllerGetCapabilities", "", async {
            Ok(ControllerGetCapabilitiesResponse { capabilities: CAPABILITIES.into_iter().map(rpc_cap).collect() })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        r: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let id = r.source_volume_id.clone();
        csi_kit::rpc(&self.metrics, "CreateSnapshot", &id, crate::snapshot::create(self, r)).await
    }

    async fn delete_snapshot(
        &self,
        r: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let r = r.into_inner();
        let id = r.snapshot_id.clone();
        csi_kit::rpc(&self.metrics, "DeleteSnapshot", &id, crate::snapshot::delete(self, r)).await
    }

    async fn list_snapshots(
        &self,
        r: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        csi_kit::rpc(&self.metrics, "ListSnapshots", "", crate::snapshot::list(self, r.into_inner())).await
    }

    async fn get_snapshot(&self, _r: Request<GetSnapshotRequest>) -> Result<Response<GetSnapshotResponse>, Status> {
        unoffered("GetSnapshot")
    }

    async fn controller_expand_volume(
        &self,
        r: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "ControllerExpandVolume", &id, self.expand(r)).await
    }

    async fn controller_get_volume(
        &self,
        _r: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        unoffered("ControllerGetVolume")
    }

    async fn controller_modify_volume(
        &self,
        _r: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unoffered("ControllerModifyVolume")
    }
}
