//! The CSI Controller service: create, delete, list, validate, expand and inspect volumes, pool
//! capacity, and attaching a volume to one node at a time (ControllerPublish / Unpublish). Every
//! call for one volume holds its in-flight guard, so a concurrent call answers ABORTED.

use std::collections::HashMap;

use cairn_proto::csi::v1::controller_server::Controller;
use cairn_proto::csi::v1::controller_service_capability::{self, rpc::Type as Rpc};
use cairn_proto::csi::v1::*;
use csi_kit::error::invalid;
use csi_kit::records::check_name;
use csi_kit::{Created, CsiError};
use tonic::{Request, Response, Status};

use crate::Driver;
use crate::params::{self, Access};
use crate::records::*;

/// Most volumes ListVolumes returns in one page.
const LIST_PAGE_MAX: u32 = 1000;

impl Driver {
    fn volume(&self, rec: &VolumeRecord) -> Volume {
        let mut ctx = HashMap::new();
        ctx.insert("replicas".to_string(), rec.replicas.to_string());
        ctx.insert("blockSize".to_string(), rec.block_size.to_string());
        if !rec.fs_type.is_empty() {
            ctx.insert("fsType".to_string(), rec.fs_type.clone());
        }
        Volume {
            capacity_bytes: rec.capacity_bytes as i64,
            volume_id: rec.id.clone(),
            volume_context: ctx,
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
        let access = params::check_capabilities(&r.volume_capabilities)?;
        let mut p = params::parse_parameters(&r.parameters, self.cfg.default_replicas)?;
        // A copy shares the source's blocks, so it has the source's block size and at least its size.
        let source = match r.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => {
                let Some((_, snap)) = self.volumes.snapshot(&s.snapshot_id).await? else {
                    return Err(CsiError::NotFound(format!("snapshot {} does not exist", s.snapshot_id)));
                };
                if !snap.ready {
                    return Err(CsiError::Unavailable(format!("snapshot {} is still being cut; retry", snap.id)));
                }
                Some((Source::Snapshot(snap.id), snap.size_bytes, snap.block_size))
            }
            Some(volume_content_source::Type::Volume(v)) => {
                let Some((_, vol)) = self.volumes.get(&v.volume_id).await? else {
                    return Err(CsiError::NotFound(format!("volume {} does not exist", v.volume_id)));
                };
                Some((Source::Volume(vol.id), vol.capacity_bytes, vol.block_size))
            }
        };
        if let Some((src, size, block_size)) = &source {
            if r.parameters.contains_key("blockSize") && p.block_size != *block_size {
                return Err(invalid(format!(
                    "parameter blockSize {} differs from the source's {block_size}: a copy shares the source's blocks",
                    p.block_size
                )));
            }
            p.block_size = *block_size;
            let capacity = params::capacity(r.capacity_range.as_ref())?;
            if capacity < *size {
                return Err(CsiError::OutOfRange(format!(
                    "{capacity} bytes is smaller than the source {src:?} ({size} bytes)"
                )));
            }
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
        let capacity = params::capacity(r.capacity_range.as_ref())?;
        let fs_type = match access {
            Access::Block => String::new(),
            Access::Mount { fs_type: Some(f) } => f,
            Access::Mount { fs_type: None } => p.fs_type.clone().unwrap_or_else(|| "ext4".into()),
        };
        // Repair keeps every chunk at the pool's copy count; a volume cannot ask for another yet.
        if let Some(pool) =
            cluster::PoolSettings::load(self.volumes.meta()).await.map_err(|e| CsiError::Unavailable(e.to_string()))?
            && pool.replicas != p.replicas as usize
        {
            return Err(invalid(format!(
                "parameter replicas: this pool keeps {} copies of every block; other counts per volume are not offered yet",
                pool.replicas
            )));
        }
        let up = self.volumes.pool().await?;
        if (up.len() as u32) < p.min_replicas {
            return Err(CsiError::ResourceExhausted(format!(
                "{} storage nodes are up; this volume needs at least {} (minReplicas)",
                up.len(),
                p.min_replicas
            )));
        }
        let rec = VolumeRecord {
            version: RECORD_VERSION,
            id: new_volume_id(),
            name: r.name.clone(),
            capacity_bytes: capacity,
            block_size: p.block_size,
            replicas: p.replicas,
            min_replicas: p.min_replicas,
            fs_type,
            created_unix_ms: now_ms(),
            generation: 1,
            published: Default::default(),
            populated: source.is_none(),
            source: source.map(|(s, _, _)| s),
            io_timeout_secs: p.io_timeout_secs,
        };
        let rec = match self.volumes.create(rec.clone()).await? {
            Created::New(v) => {
                tracing::info!(volume = %v.id, name = %v.name, bytes = v.capacity_bytes, replicas = v.replicas, "volume created");
                v
            }
            Created::Existing(v) => {
                let same = params::fits(v.capacity_bytes, r.capacity_range.as_ref())
                    && v.replicas == rec.replicas
                    && v.min_replicas == rec.min_replicas
                    && v.block_size == rec.block_size
                    && v.fs_type == rec.fs_type
                    && v.source == rec.source;
                if !same {
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {} exists as {} with other size or parameters",
                        v.name, v.id
                    )));
                }
                v
            }
        };
        let rec = if rec.populated { rec } else { self.populate(rec).await? };
        Ok(CreateVolumeResponse { volume: Some(self.volume(&rec)) })
    }

    /// Copies a new volume's source blocks in (sharing chunks; a source volume is frozen
    /// meanwhile), then marks it populated. Run again by a repeated CreateVolume after a crash.
    async fn populate(&self, rec: VolumeRecord) -> Result<VolumeRecord, CsiError> {
        let bs = rec.block_size as u64;
        let blocks = match &rec.source {
            Some(Source::Snapshot(s)) => self.volumes.copy_blocks(&self.pool_client().await?, s, &rec.id, bs, false).await?,
            Some(Source::Volume(v)) => self.volumes.copy_blocks(&self.pool_client().await?, v, &rec.id, bs, true).await?,
            None => 0,
        };
        let rec = self
            .volumes
            .update(&rec.id, |v| {
                let was = v.populated;
                v.populated = true;
                Ok(!was)
            })
            .await?;
        tracing::info!(volume = %rec.id, source = ?rec.source, blocks, "volume populated from its source");
        Ok(rec)
    }

    async fn publish(&self, r: ControllerPublishVolumeRequest) -> Result<ControllerPublishVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        if r.node_id.is_empty() {
            return Err(invalid("node_id is required"));
        }
        let cap = params::CAPABILITIES.check(r.volume_capability.as_ref())?;
        let mode = cap.access_mode.as_ref().map_or(0, |m| m.mode);
        let _busy = self.inflight.begin(&r.volume_id)?;
        if self.volumes.get(&r.volume_id).await?.is_none() {
            return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
        }
        if !self.volumes.node_exists(&r.node_id).await? {
            return Err(CsiError::NotFound(format!("node {} has no csi-block node plugin registered", r.node_id)));
        }
        let rec = self
            .volumes
            .update(&r.volume_id, |v| {
                if !v.populated {
                    return Err(CsiError::Aborted(format!("volume {} is still being copied from its source", v.id)));
                }
                if let Some(p) = v.published.get(&r.node_id) {
                    if p.readonly != r.readonly || p.mode != mode {
                        return Err(CsiError::AlreadyExists(format!(
                            "volume {} is published to {} with another access mode or read-only flag",
                            v.id, r.node_id
                        )));
                    }
                    return Ok(false);
                }
                let shared = params::multi_node(mode) && v.published.values().all(|p| params::multi_node(p.mode));
                if !shared && let Some(other) = v.published.keys().next() {
                    return Err(CsiError::FailedPrecondition(format!(
                        "volume {} is attached to node {other}; unpublish it there first",
                        v.id
                    )));
                }
                v.generation += 1;
                v.published
                    .insert(r.node_id.clone(), Publication { mode, readonly: r.readonly, since_unix_ms: now_ms() });
                Ok(true)
            })
            .await?;
        tracing::info!(volume = %rec.id, node = %r.node_id, generation = rec.generation, "volume published");
        Ok(ControllerPublishVolumeResponse {
            publish_context: [("generation".to_string(), rec.generation.to_string())].into(),
        })
    }

    async fn unpublish(
        &self,
        r: ControllerUnpublishVolumeRequest,
    ) -> Result<ControllerUnpublishVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        let _busy = self.inflight.begin(&r.volume_id)?;
        let out = self
            .volumes
            .update(&r.volume_id, |v| {
                let before = v.published.len();
                if r.node_id.is_empty() {
                    v.published.clear();
                } else {
                    v.published.remove(&r.node_id);
                }
                let changed = v.published.len() != before;
                if changed {
                    v.generation += 1;
                }
                Ok(changed)
            })
            .await;
        match out {
            // A volume that is gone is unpublished everywhere (the spec's answer is OK).
            Ok(_) | Err(CsiError::NotFound(_)) => Ok(ControllerUnpublishVolumeResponse {}),
            Err(e) => Err(e),
        }
    }

    async fn expand(&self, r: ControllerExpandVolumeRequest) -> Result<ControllerExpandVolumeResponse, CsiError> {
        if r.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        let range = r.capacity_range.as_ref().ok_or_else(|| invalid("capacity_range is required"))?;
        let want = params::capacity(Some(range))?;
        let _busy = self.inflight.begin(&r.volume_id)?;
        let rec = self
            .volumes
            .update(&r.volume_id, |v| {
                if v.capacity_bytes >= want {
                    if range.limit_bytes > 0 && v.capacity_bytes > range.limit_bytes as u64 {
                        return Err(CsiError::OutOfRange(format!(
                            "volume {} is {} bytes; volumes do not shrink",
                            v.id, v.capacity_bytes
                        )));
                    }
                    return Ok(false);
                }
                v.capacity_bytes = want;
                Ok(true)
            })
            .await?;
        Ok(ControllerExpandVolumeResponse { capacity_bytes: rec.capacity_bytes as i64, node_expansion_required: true })
    }
}

impl Driver {
    /// The pool client the controller checks replicas with, made at first use.
    pub(crate) async fn pool_client(&self) -> Result<cluster::ChunkClient, CsiError> {
        self.pool
            .get_or_try_init(|| async {
                cluster::ChunkClient::new(self.volumes.meta().clone(), cluster::ClientConfig::default())
                    .await
                    .map_err(|e| CsiError::Unavailable(format!("storage pool: {e}")))
            })
            .await
            .cloned()
    }

    /// A volume's condition: abnormal (degraded) while a replica of any of its blocks is
    /// missing — a storage node down, or a rebuild not finished — or while fewer storage nodes
    /// are up than it has replicas.
    async fn condition(&self, up: usize, rec: &VolumeRecord) -> Result<VolumeCondition, CsiError> {
        let pool = self.pool_client().await?;
        let h = volume_engine::replica_health(self.volumes.meta(), &pool, &rec.id)
            .await
            .map_err(|e| CsiError::Unavailable(format!("checking replicas: {e}")))?;
        Ok(if h.degraded() {
            VolumeCondition {
                abnormal: true,
                message: format!(
                    "degraded: {} replica copies missing; {} of {} chunks fully replicated ({:.1}%)",
                    h.missing_copies,
                    h.complete,
                    h.chunks,
                    h.progress() * 100.0
                ),
            }
        } else if (up as u32) < rec.replicas {
            VolumeCondition {
                abnormal: true,
                message: format!("degraded: {up} of {} replica nodes are up", rec.replicas),
            }
        } else {
            VolumeCondition {
                abnormal: false,
                message: format!("healthy: {} chunks, {} replicas each", h.chunks, rec.replicas),
            }
        })
    }
}

fn rpc_cap(t: Rpc) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc { r#type: t as i32 })),
    }
}

fn unoffered<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{what} is not offered by csi-block yet")))
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
            let pool = self.pool_client().await?;
            self.volumes.delete(&pool, &id).await?;
            tracing::info!(volume = %id, "volume deleted");
            Ok(DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        r: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "ControllerPublishVolume", &id, self.publish(r)).await
    }

    async fn controller_unpublish_volume(
        &self,
        r: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "ControllerUnpublishVolume", &id, self.unpublish(r)).await
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        csi_kit::rpc(&self.metrics, "ValidateVolumeCapabilities", &id, async {
            if r.volume_id.is_empty() {
                return Err(invalid("volume_id is required"));
            }
            if r.volume_capabilities.is_empty() {
                return Err(invalid("volume_capabilities is required"));
            }
            let Some((_, v)) = self.volumes.get(&r.volume_id).await? else {
                return Err(CsiError::NotFound(format!("volume {} does not exist", r.volume_id)));
            };
            let problem = r.volume_capabilities.iter().find_map(|c| {
                params::capability_problem(c).or_else(|| match &c.access_type {
                    Some(volume_capability::AccessType::Mount(m))
                        if !m.fs_type.is_empty() && !v.fs_type.is_empty() && m.fs_type != v.fs_type =>
                    {
                        Some(format!("volume {} is formatted {}, not {}", v.id, v.fs_type, m.fs_type))
                    }
                    _ => None,
                })
            });
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
        })
        .await
    }

    async fn list_volumes(&self, r: Request<ListVolumesRequest>) -> Result<Response<ListVolumesResponse>, Status> {
        let r = r.into_inner();
        csi_kit::rpc(&self.metrics, "ListVolumes", "", async {
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
            let mut entries = Vec::with_capacity(recs.len());
            let up = self.volumes.pool().await?.len();
            for v in &recs {
                entries.push(list_volumes_response::Entry {
                    volume: Some(self.volume(v)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: v.published.keys().cloned().collect(),
                        volume_condition: Some(self.condition(up, v).await?),
                    }),
                });
            }
            Ok(ListVolumesResponse { entries, next_token })
        })
        .await
    }

    async fn get_capacity(&self, r: Request<GetCapacityRequest>) -> Result<Response<GetCapacityResponse>, Status> {
        let r = r.into_inner();
        csi_kit::rpc(&self.metrics, "GetCapacity", "", async {
            if let Some(c) = r.volume_capabilities.iter().find_map(params::capability_problem) {
                return Err(invalid(c));
            }
            let p = params::parse_parameters(&r.parameters, self.cfg.default_replicas)?;
            let up = self.volumes.pool().await?;
            // Every replica on its own node: the space for one more volume is bounded by the
            // replicas-th fullest node, approximated by the pool's free bytes over the replicas.
            let free: u64 = if (up.len() as u32) < p.min_replicas { 0 } else { up.iter().map(|(_, f)| f).sum() };
            let available = free / u64::from(p.replicas);
            Ok(GetCapacityResponse {
                available_capacity: available.min(i64::MAX as u64) as i64,
                maximum_volume_size: Some(params::MAX_CAPACITY as i64),
                minimum_volume_size: Some(params::MIB as i64),
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _r: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        csi_kit::rpc(&self.metrics, "ControllerGetCapabilities", "", async {
            Ok(ControllerGetCapabilitiesResponse {
                capabilities: [
                    Rpc::CreateDeleteVolume,
                    Rpc::PublishUnpublishVolume,
                    Rpc::ListVolumes,
                    Rpc::GetCapacity,
                    Rpc::PublishReadonly,
                    Rpc::ExpandVolume,
                    Rpc::ListVolumesPublishedNodes,
                    Rpc::VolumeCondition,
                    Rpc::GetVolume,
                    Rpc::SingleNodeMultiWriter,
                    Rpc::CreateDeleteSnapshot,
                    Rpc::ListSnapshots,
                    Rpc::CloneVolume,
                ]
                .into_iter()
                .map(rpc_cap)
                .collect(),
            })
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
        r: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let id = r.into_inner().volume_id;
        csi_kit::rpc(&self.metrics, "ControllerGetVolume", &id, async {
            if id.is_empty() {
                return Err(invalid("volume_id is required"));
            }
            let Some((_, v)) = self.volumes.get(&id).await? else {
                return Err(CsiError::NotFound(format!("volume {id} does not exist")));
            };
            Ok(ControllerGetVolumeResponse {
                volume: Some(self.volume(&v)),
                status: Some(controller_get_volume_response::VolumeStatus {
                    published_node_ids: v.published.keys().cloned().collect(),
                    volume_condition: Some(self.condition(self.volumes.pool().await?.len(), &v).await?),
                }),
            })
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        _r: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unoffered("ControllerModifyVolume")
    }
}
