//! csi-block over its real unix socket, driven as the Kubernetes sidecars drive it: identity and
//! probe, CreateVolume idempotency and refusals, paging, single-node attachment with a second
//! node plugin, expansion, validation, and a controller SIGKILLed and restarted forgetting
//! nothing — each failure with the gRPC code the CSI spec names.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::identity_client::IdentityClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::*;
use integration_tests::NodeProc;
use integration_tests::csi::CsiProc;
use integration_tests::meta::meta_cluster;
use tonic::Code;
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;

fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
    integration_tests::csi::cap(mode, fs, &[])
}

fn create_req(name: &str, required: i64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: required, limit_bytes: 0 }),
        volume_capabilities: vec![cap(Mode::SingleNodeWriter, Some("ext4"))],
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn publish_req(vol: &str, node: &str, mode: Mode, readonly: bool) -> ControllerPublishVolumeRequest {
    ControllerPublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        volume_capability: Some(cap(mode, Some("ext4"))),
        readonly,
        ..Default::default()
    }
}

fn offers_controller(caps: &GetPluginCapabilitiesResponse) -> bool {
    use plugin_capability::service::Type;
    caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(plugin_capability::Type::Service(s)) if s.r#type == Type::ControllerService as i32)
    })
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            assert!(!s.message().is_empty(), "{:?} without a message", s.code());
            s.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_block_controller_over_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let _node = NodeProc::start(
        &dir.path().join("n1"),
        &["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"],
    );
    let mut ctrl = CsiProc::start(
        "csi-block",
        dir.path(),
        "ctrl",
        &["--meta", &api, "--node-id", "node-a", "--default-replicas", "1"],
    );
    let node_b = CsiProc::start(
        "csi-block",
        dir.path(),
        "node-b",
        &["--meta", &api, "--controller", "false", "--node-id", "node-b"],
    );
    let meta_client = metadata_client::MetaClient::new(std::slice::from_ref(&api)).unwrap();
    let ch: Channel = ctrl.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut c = ControllerClient::new(ch);

    // Identity: name, capabilities, and ready once a storage node is up.
    let info = id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "block.csi.cairn.io");
    assert!(!info.vendor_version.is_empty());
    let caps = id.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(offers_controller(&caps), "controller service: {caps:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while id.probe(ProbeRequest {}).await.unwrap().into_inner().ready != Some(true) {
        assert!(Instant::now() < deadline, "probe never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node_only = IdentityClient::new(node_b.channel().await)
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!offers_controller(&node_only), "a node-only plugin offers no controller: {node_only:?}");

    // CreateVolume: rounded to MiB, idempotent by name, incompatible repeats refused.
    let v1 = c.create_volume(create_req("pv-1", 100 * MIB + 1, &[])).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(v1.capacity_bytes, 101 * MIB);
    assert_eq!(v1.volume_context.get("fsType").map(String::as_str), Some("ext4"));
    assert_eq!(v1.accessible_topology.len(), 1);
    let again = c.create_volume(create_req("pv-1", 100 * MIB, &[])).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again.volume_id, v1.volume_id, "same name, compatible: same volume");
    assert_eq!(code(c.create_volume(create_req("pv-1", 200 * MIB, &[])).await), Code::AlreadyExists);
    assert_eq!(
        code(c.create_volume(create_req("pv-1", 100 * MIB, &[("blockSize", "4096")])).await),
        Code::AlreadyExists
    );

    // Refusals, each with the spec's code.
    assert_eq!(code(c.create_volume(create_req("", MIB, &[])).await), Code::InvalidArgument);
    let mut no_caps = create_req("pv-x", MIB, &[]);
    no_caps.volume_capabilities.clear();
    assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument);
    let mut rwx = create_req("pv-x", MIB, &[]);
    rwx.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, None)];
    assert_eq!(code(c.create_volume(rwx).await), Code::InvalidArgument);
    assert_eq!(code(c.create_volume(create_req("pv-x", MIB, &[("replica", "1")])).await), Code::InvalidArgument);
    // the pool keeps one copy of every chunk: a volume cannot ask for three
    assert_eq!(code(c.create_volume(create_req("pv-x", MIB, &[("replicas", "3")])).await), Code::InvalidArgument);
    let mut lies = create_req("pv-x", 10 * MIB, &[]);
    lies.capacity_range = Some(CapacityRange { required_bytes: 10 * MIB, limit_bytes: MIB });
    assert_eq!(code(c.create_volume(lies).await), Code::OutOfRange);
    let mut clone = create_req("pv-x", MIB, &[]);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
            volume_id: v1.volume_id.clone(),
        })),
    });
    assert_eq!(code(c.create_volume(clone.clone()).await), Code::OutOfRange, "a clone smaller than its source");
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(volume_content_source::VolumeSource {
            volume_id: "blk-00000000000000000000000000000009".into(),
        })),
    });
    assert_eq!(code(c.create_volume(clone).await), Code::NotFound, "a clone of a volume that does not exist");

    // ListVolumes pages through every volume exactly once; a made-up token is ABORTED.
    let mut ids = vec![v1.volume_id.clone()];
    for i in 0..4 {
        let mut r = create_req(&format!("pv-page-{i}"), MIB, &[]);
        r.volume_capabilities = vec![cap(Mode::SingleNodeWriter, None)];
        ids.push(c.create_volume(r).await.unwrap().into_inner().volume.unwrap().volume_id);
    }
    let (mut seen, mut token) = (Vec::new(), String::new());
    for _ in 0..10 {
        let page = c
            .list_volumes(ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.iter().map(|e| e.volume.as_ref().unwrap().volume_id.clone()));
        token = page.next_token;
        if token.is_empty() {
            break;
        }
    }
    ids.sort();
    assert_eq!(seen, ids, "every volume once, in id order");
    assert_eq!(
        code(c.list_volumes(ListVolumesRequest { max_entries: 2, starting_token: "../x".into() }).await),
        Code::Aborted
    );

    // Attach to exactly one node at a time.
    let vid = v1.volume_id.clone();
    let p = c.controller_publish_volume(publish_req(&vid, "node-a", Mode::SingleNodeWriter, false)).await.unwrap();
    let gen_a: u64 = p.into_inner().publish_context["generation"].parse().unwrap();
    c.controller_publish_volume(publish_req(&vid, "node-a", Mode::SingleNodeWriter, false)).await.unwrap();
    assert_eq!(
        code(c.controller_publish_volume(publish_req(&vid, "node-b", Mode::SingleNodeWriter, false)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(c.controller_publish_volume(publish_req(&vid, "node-a", Mode::SingleNodeWriter, true)).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(c.controller_publish_volume(publish_req(&vid, "no-such-node", Mode::SingleNodeWriter, false)).await),
        Code::NotFound
    );
    assert_eq!(
        code(c.controller_publish_volume(publish_req("blk-0000", "node-a", Mode::SingleNodeWriter, false)).await),
        Code::NotFound
    );
    let got =
        c.controller_get_volume(ControllerGetVolumeRequest { volume_id: vid.clone() }).await.unwrap().into_inner();
    let status = got.status.unwrap();
    assert_eq!(status.published_node_ids, vec!["node-a".to_string()]);
    assert!(!status.volume_condition.unwrap().abnormal);
    assert_eq!(
        code(c.delete_volume(DeleteVolumeRequest { volume_id: vid.clone(), ..Default::default() }).await),
        Code::FailedPrecondition,
        "a published volume is not deleted"
    );
    let unpub =
        ControllerUnpublishVolumeRequest { volume_id: vid.clone(), node_id: "node-a".into(), ..Default::default() };
    c.controller_unpublish_volume(unpub.clone()).await.unwrap();
    c.controller_unpublish_volume(unpub).await.unwrap();
    let p = c.controller_publish_volume(publish_req(&vid, "node-b", Mode::SingleNodeWriter, false)).await.unwrap();
    let gen_b: u64 = p.into_inner().publish_context["generation"].parse().unwrap();
    assert!(gen_b > gen_a, "each attachment fences the one before: {gen_a} then {gen_b}");
    assert_eq!(
        volume_engine::current_generation(&meta_client, &vid).await.unwrap(),
        Some(gen_b),
        "the volume engine's fence moved with the publication"
    );

    // Many readers: MULTI_NODE_READER_ONLY attaches to both nodes.
    let mut rox = create_req("pv-rox", MIB, &[]);
    rox.volume_capabilities = vec![cap(Mode::MultiNodeReaderOnly, Some("ext4"))];
    let rox = c.create_volume(rox).await.unwrap().into_inner().volume.unwrap().volume_id;
    for n in ["node-a", "node-b"] {
        c.controller_publish_volume(publish_req(&rox, n, Mode::MultiNodeReaderOnly, true)).await.unwrap();
    }

    // Expansion grows, never shrinks.
    let grown = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vid.clone(),
            capacity_range: Some(CapacityRange { required_bytes: 300 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((grown.capacity_bytes, grown.node_expansion_required), (300 * MIB, true));
    let shrink = ControllerExpandVolumeRequest {
        volume_id: vid.clone(),
        capacity_range: Some(CapacityRange { required_bytes: 10 * MIB, limit_bytes: 20 * MIB }),
        ..Default::default()
    };
    assert_eq!(code(c.controller_expand_volume(shrink).await), Code::OutOfRange);

    // ValidateVolumeCapabilities.
    let validate = |caps: Vec<VolumeCapability>, id: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = c.validate_volume_capabilities(validate(vec![cap(Mode::SingleNodeWriter, Some("ext4"))], &vid)).await;
    assert!(ok.unwrap().into_inner().confirmed.is_some());
    let no = c.validate_volume_capabilities(validate(vec![cap(Mode::SingleNodeWriter, Some("xfs"))], &vid)).await;
    let no = no.unwrap().into_inner();
    assert!(no.confirmed.is_none() && no.message.contains("ext4"), "{no:?}");
    let unknown = validate(vec![cap(Mode::SingleNodeWriter, None)], "blk-00000000000000000000000000000000");
    assert_eq!(code(c.validate_volume_capabilities(unknown).await), Code::NotFound);

    // Snapshots and clones: the test plays the attached node with the volume engine (at the
    // publication's generation), writes, snapshots, writes more, and restores and clones.
    let mut data_req = create_req("pv-data", 8 * MIB, &[]);
    data_req.volume_capabilities = vec![cap(Mode::SingleNodeWriter, None)];
    let data = c.create_volume(data_req).await.unwrap().into_inner().volume.unwrap();
    let gen_of = |p: tonic::Response<ControllerPublishVolumeResponse>| -> u64 {
        p.into_inner().publish_context["generation"].parse().unwrap()
    };
    let g = c.controller_publish_volume(publish_req(&data.volume_id, "node-a", Mode::SingleNodeWriter, false)).await;
    let pool = cluster::ChunkClient::new(
        meta_client.clone(),
        cluster::ClientConfig { replicas: 1, min_replicas: 1, ..Default::default() },
    )
    .await
    .unwrap();
    let geometry = volume_engine::Geometry { capacity: 8 << 20, block_size: 64 << 10 };
    let attach = |id: String, generation: u64| {
        let (m, p) = (meta_client.clone(), pool.clone());
        async move { volume_engine::Volume::open(m, p, &id, geometry, generation).await.unwrap() }
    };
    let vol = attach(data.volume_id.clone(), gen_of(g.unwrap())).await;
    let first: Vec<u8> = (0..3 * MIB as usize + 123).map(|i| (i % 253) as u8).collect();
    vol.write(4096, &first).await.unwrap();
    vol.flush().await.unwrap();
    let snap_req = |name: &str, src: &str| CreateSnapshotRequest {
        source_volume_id: src.into(),
        name: name.into(),
        ..Default::default()
    };
    let snap = c.create_snapshot(snap_req("snap-1", &data.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert!(snap.ready_to_use && snap.size_bytes == 8 * MIB && snap.source_volume_id == data.volume_id, "{snap:?}");
    let again = c.create_snapshot(snap_req("snap-1", &data.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id, "same name, same source: same snapshot");
    assert_eq!(code(c.create_snapshot(snap_req("snap-1", &vid)).await), Code::AlreadyExists);
    assert_eq!(
        code(c.create_snapshot(snap_req("snap-2", "blk-00000000000000000000000000000009")).await),
        Code::NotFound
    );
    assert_eq!(code(c.create_snapshot(snap_req("", &data.volume_id)).await), Code::InvalidArgument);
    // The volume moves on after the snapshot.
    vol.write(0, &vec![0xEE; MIB as usize]).await.unwrap();
    vol.flush().await.unwrap();
    let mut now = vec![0u8; 8 * MIB as usize];
    now[4096..4096 + first.len()].copy_from_slice(&first);
    now[..MIB as usize].fill(0xEE);
    let mut at_snap = vec![0u8; 8 * MIB as usize];
    at_snap[4096..4096 + first.len()].copy_from_slice(&first);

    let from = |name: &str, src: volume_content_source::Type, size: i64| {
        let mut r = create_req(name, size, &[]);
        r.volume_capabilities = vec![cap(Mode::SingleNodeWriter, None)];
        r.volume_content_source = Some(VolumeContentSource { r#type: Some(src) });
        r
    };
    let snap_src = volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
        snapshot_id: snap.snapshot_id.clone(),
    });
    let vol_src =
        volume_content_source::Type::Volume(volume_content_source::VolumeSource { volume_id: data.volume_id.clone() });
    assert_eq!(code(c.create_volume(from("pv-small", snap_src.clone(), MIB)).await), Code::OutOfRange);
    let restored = c.create_volume(from("pv-restore", snap_src.clone(), 8 * MIB)).await.unwrap().into_inner();
    let restored = restored.volume.unwrap();
    assert!(restored.content_source.is_some());
    let cloned = c.create_volume(from("pv-clone", vol_src, 8 * MIB)).await.unwrap().into_inner().volume.unwrap();
    for (v, want, what) in
        [(&restored, &at_snap, "restore = the volume at the snapshot"), (&cloned, &now, "clone = the volume now")]
    {
        let g = c.controller_publish_volume(publish_req(&v.volume_id, "node-a", Mode::SingleNodeWriter, false)).await;
        let e = attach(v.volume_id.clone(), gen_of(g.unwrap())).await;
        assert!(e.read(0, 8 << 20).await.unwrap() == *want, "{what}");
    }
    let listed = c
        .list_snapshots(ListSnapshotsRequest { source_volume_id: data.volume_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let bad_token = ListSnapshotsRequest { starting_token: "nope".into(), ..Default::default() };
    assert_eq!(code(c.list_snapshots(bad_token).await), Code::Aborted);
    let del = DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
    c.delete_snapshot(del.clone()).await.unwrap();
    c.delete_snapshot(del).await.unwrap();
    let by_id = ListSnapshotsRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
    assert!(c.list_snapshots(by_id).await.unwrap().into_inner().entries.is_empty());
    // The restored volume keeps its blocks after its snapshot is gone (its own references).
    let g =
        c.controller_publish_volume(publish_req(&restored.volume_id, "node-a", Mode::SingleNodeWriter, false)).await;
    let e = attach(restored.volume_id.clone(), gen_of(g.unwrap())).await;
    assert!(e.read(0, 8 << 20).await.unwrap() == at_snap, "restore survives its snapshot's deletion");

    let capacity = c.get_capacity(GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(capacity.available_capacity > 0, "{capacity:?}");

    // The controller is SIGKILLed and restarted: nothing is forgotten.
    ctrl.restart();
    let mut c = ControllerClient::new(ctrl.channel().await);
    let got =
        c.controller_get_volume(ControllerGetVolumeRequest { volume_id: vid.clone() }).await.unwrap().into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 300 * MIB);
    assert_eq!(got.status.unwrap().published_node_ids, vec!["node-b".to_string()]);
    assert_eq!(
        code(c.controller_publish_volume(publish_req(&vid, "node-a", Mode::SingleNodeWriter, false)).await),
        Code::FailedPrecondition,
        "the attachment to node-b outlived the restart"
    );

    // Node plugin b: its id and topology.
    let mut nb = NodeClient::new(node_b.channel().await);
    let info = nb.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-b");
    assert_eq!(info.accessible_topology.unwrap().segments, v1.accessible_topology[0].segments);

    // Deleting: unpublish everywhere, delete, delete again (idempotent), gone.
    for v in [&vid, &rox] {
        let all = ControllerUnpublishVolumeRequest { volume_id: v.to_string(), ..Default::default() };
        c.controller_unpublish_volume(all).await.unwrap();
        let del = DeleteVolumeRequest { volume_id: v.to_string(), ..Default::default() };
        c.delete_volume(del.clone()).await.unwrap();
        c.delete_volume(del).await.unwrap();
        assert_eq!(
            code(c.controller_get_volume(ControllerGetVolumeRequest { volume_id: v.to_string() }).await),
            Code::NotFound
        );
        assert_eq!(volume_engine::current_generation(&meta_client, v).await.unwrap(), None);
    }
    // The name is free again: a new volume of that name gets a new id.
    let v1b = c.create_volume(create_req("pv-1", MIB, &[])).await.unwrap().into_inner().volume.unwrap();
    assert_ne!(v1b.volume_id, vid);
    assert!(!ctrl.log_text().contains("panicked"), "{}", ctrl.log_text());
}

/// Removes every mount and loop device under the test's directory, even when it fails.
struct MountCleanup(std::path::PathBuf);

impl Drop for MountCleanup {
    fn drop(&mut self) {
        integration_tests::csi::cleanup_mounts_under(&self.0);
    }
}

fn stage_req(
    vol: &str,
    ctx: &HashMap<String, String>,
    staging: &std::path::Path,
    c: VolumeCapability,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: vol.into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(c),
        ..Default::default()
    }
}

fn node_publish_req(
    vol: &str,
    staging: &std::path::Path,
    target: &std::path::Path,
    c: VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: staging.to_string_lossy().into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(c),
        readonly,
        ..Default::default()
    }
}

/// ControllerPublishVolume to `node` (single writer); its publish context.
async fn attach_ctx(c: &mut ControllerClient<Channel>, vol: &str, node: &str) -> HashMap<String, String> {
    c.controller_publish_volume(publish_req(vol, node, Mode::SingleNodeWriter, false))
        .await
        .unwrap()
        .into_inner()
        .publish_context
}

/// NodeGetVolumeStats of `vol` at `path`: (byte usage, the whole answer).
async fn byte_stats(
    n: &mut NodeClient<Channel>,
    vol: &str,
    path: &std::path::Path,
) -> (VolumeUsage, NodeGetVolumeStatsResponse) {
    let stats = n
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.into(),
            volume_path: path.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = stats.usage.iter().find(|u| u.unit == volume_usage::Unit::Bytes as i32).cloned().unwrap();
    (bytes, stats)
}

/// The file system type and source device of the mount at `path` (from /proc/self/mountinfo).
fn mount_of(path: &std::path::Path) -> Option<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path.to_string_lossy().as_ref()))
        .and_then(|l| l.split(" - ").nth(1))
        .map(|l| {
            let mut f = l.split(' ');
            (f.next().unwrap_or_default().to_string(), f.next().unwrap_or_default().to_string())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csi_block_kubelet_sequence_mounts_for_real() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mounts");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = MountCleanup(dir.path().to_path_buf());
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let _node = NodeProc::start(
        &dir.path().join("n1"),
        &["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"],
    );
    let state = dir.path().join("state");
    let state_s = state.to_string_lossy().to_string();
    let plugin = CsiProc::start(
        "csi-block",
        dir.path(),
        "plugin",
        &["--meta", &api, "--node-id", "node-a", "--default-replicas", "1", "--state-dir", &state_s],
    );
    let ch = plugin.channel().await;
    let mut c = ControllerClient::new(ch.clone());
    let mut n = NodeClient::new(ch);
    let fs_cap = || cap(Mode::SingleNodeWriter, Some("ext4"));

    // Filesystem volume: publish, stage (mkfs on first use), publish into a "pod", use.
    let vol = c.create_volume(create_req("pv-fs", 64 * MIB, &[])).await.unwrap().into_inner().volume.unwrap().volume_id;
    let ctx = attach_ctx(&mut c, &vol, "node-a").await;
    let staging = dir.path().join("kubelet/staging/pv-fs");
    let target = dir.path().join("kubelet/pods/p1/volumes/pv-fs");
    // An unknown volume is NOT_FOUND whatever the path looks like (the spec's order); an
    // empty path is still INVALID_ARGUMENT.
    for path in ["relative/path", "/abs/path"] {
        let stats = NodeGetVolumeStatsRequest { volume_id: "blk-nope".into(), volume_path: path.into(), ..Default::default() };
        assert_eq!(code(n.node_get_volume_stats(stats).await), Code::NotFound, "stats at {path}");
        let expand = NodeExpandVolumeRequest { volume_id: "blk-nope".into(), volume_path: path.into(), ..Default::default() };
        assert_eq!(code(n.node_expand_volume(expand).await), Code::NotFound, "expand at {path}");
    }
    let empty = NodeGetVolumeStatsRequest { volume_id: "blk-nope".into(), ..Default::default() };
    assert_eq!(code(n.node_get_volume_stats(empty).await), Code::InvalidArgument);
    let mut no_gen = stage_req(&vol, &ctx, &staging, fs_cap());
    no_gen.publish_context.clear();
    assert_eq!(code(n.node_stage_volume(no_gen).await), Code::InvalidArgument);
    assert_eq!(
        code(n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await),
        Code::FailedPrecondition,
        "publish before stage"
    );
    n.node_stage_volume(stage_req(&vol, &ctx, &staging, fs_cap())).await.unwrap();
    n.node_stage_volume(stage_req(&vol, &ctx, &staging, fs_cap())).await.unwrap();
    let dotdot = dir.path().join("kubelet/pods/../../etc");
    assert_eq!(
        code(n.node_publish_volume(node_publish_req(&vol, &staging, &dotdot, fs_cap(), false)).await),
        Code::InvalidArgument
    );
    n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await.unwrap();
    n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await.unwrap();
    let payload = integration_tests::random_bytes(3 << 20);
    std::fs::write(target.join("app.db"), &payload).unwrap();
    std::fs::File::open(target.join("app.db")).unwrap().sync_all().unwrap();
    let (bytes, stats) = byte_stats(&mut n, &vol, &target).await;
    assert!(bytes.total > 50 * MIB && bytes.used >= 3 * MIB, "{stats:?}");
    assert!(stats.usage.iter().any(|u| u.unit == volume_usage::Unit::Inodes as i32 && u.total > 0));

    // A read-only publication refuses writes.
    let ro_target = dir.path().join("kubelet/pods/p2/volumes/pv-fs");
    n.node_publish_volume(node_publish_req(&vol, &staging, &ro_target, fs_cap(), true)).await.unwrap();
    assert!(std::fs::write(ro_target.join("nope"), b"x").is_err(), "read-only publication took a write");
    assert!(std::fs::read(ro_target.join("app.db")).unwrap() == payload);

    // Online expansion: controller, then node; the file system grows while mounted.
    c.controller_expand_volume(ControllerExpandVolumeRequest {
        volume_id: vol.clone(),
        capacity_range: Some(CapacityRange { required_bytes: 128 * MIB, limit_bytes: 0 }),
        ..Default::default()
    })
    .await
    .unwrap();
    let expanded = n
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: vol.clone(),
            volume_path: target.to_string_lossy().into(),
            ..Default::default()
        })
        .await;
    // The device grows in any case (loop capacity re-read from the FUSE file).
    let (_, dev) = mount_of(&staging).expect("staging mount's device");
    let out = std::process::Command::new("blockdev").args(["--getsize64", &dev]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (128 * MIB).to_string(), "the device grew");
    // Growing a mounted ext4 needs CAP_SYS_RESOURCE (a privileged node plugin has it; some
    // sandboxes, this machine's included, drop it): with it the file system grows online,
    // without it NodeExpandVolume says why.
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:").map(|v| u64::from_str_radix(v.trim(), 16).unwrap()))
        .unwrap();
    if cap_eff & (1 << 24) != 0 {
        expanded.unwrap();
        let (bytes, stats) = byte_stats(&mut n, &vol, &target).await;
        assert!(bytes.total > 100 * MIB, "grown online: {stats:?}");
    } else {
        let err = expanded.unwrap_err();
        assert!(err.message().contains("resize2fs"), "{err:?}");
        eprintln!("no CAP_SYS_RESOURCE here: the device grew, the mounted ext4 could not ({})", err.message());
    }

    // Tear down as the kubelet does, then attach again: the data is there.
    for t in [&target, &ro_target] {
        let r = NodeUnpublishVolumeRequest { volume_id: vol.clone(), target_path: t.to_string_lossy().into() };
        n.node_unpublish_volume(r.clone()).await.unwrap();
        n.node_unpublish_volume(r).await.unwrap();
        assert!(!t.exists());
    }
    let unstage =
        NodeUnstageVolumeRequest { volume_id: vol.clone(), staging_target_path: staging.to_string_lossy().into() };
    n.node_unstage_volume(unstage.clone()).await.unwrap();
    n.node_unstage_volume(unstage.clone()).await.unwrap();
    let unpub =
        ControllerUnpublishVolumeRequest { volume_id: vol.clone(), node_id: "node-a".into(), ..Default::default() };
    c.controller_unpublish_volume(unpub.clone()).await.unwrap();
    let ctx2 = attach_ctx(&mut c, &vol, "node-a").await;
    assert_ne!(ctx2["generation"], ctx["generation"]);
    n.node_stage_volume(stage_req(&vol, &ctx2, &staging, fs_cap())).await.unwrap();
    n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await.unwrap();
    assert!(std::fs::read(target.join("app.db")).unwrap() == payload, "the data outlived detach and re-attach");
    let r = NodeUnpublishVolumeRequest { volume_id: vol.clone(), target_path: target.to_string_lossy().into() };
    n.node_unpublish_volume(r).await.unwrap();
    n.node_unstage_volume(unstage).await.unwrap();
    c.controller_unpublish_volume(unpub).await.unwrap();

    // xfs, made on first stage (xfs needs 300 MiB; the volume is thin).
    let mut xr = create_req("pv-xfs", 320 * MIB, &[]);
    xr.volume_capabilities = vec![cap(Mode::SingleNodeWriter, Some("xfs"))];
    let xv = c.create_volume(xr).await.unwrap().into_inner().volume.unwrap().volume_id;
    let xctx = attach_ctx(&mut c, &xv, "node-a").await;
    let (xstaging, xtarget) = (dir.path().join("kubelet/staging/pv-xfs"), dir.path().join("kubelet/pods/p4/pv-xfs"));
    let xcap = || cap(Mode::SingleNodeWriter, Some("xfs"));
    n.node_stage_volume(stage_req(&xv, &xctx, &xstaging, xcap())).await.unwrap();
    n.node_publish_volume(node_publish_req(&xv, &xstaging, &xtarget, xcap(), false)).await.unwrap();
    std::fs::write(xtarget.join("x.txt"), b"on xfs").unwrap();
    assert_eq!(mount_of(&xtarget).map(|(fstype, _)| fstype).as_deref(), Some("xfs"));
    // Online expansion of a mounted xfs (xfs_growfs needs no CAP_SYS_RESOURCE): the file system
    // the pod sees grows.
    let (before, _) = byte_stats(&mut n, &xv, &xtarget).await;
    c.controller_expand_volume(ControllerExpandVolumeRequest {
        volume_id: xv.clone(),
        capacity_range: Some(CapacityRange { required_bytes: 640 * MIB, limit_bytes: 0 }),
        ..Default::default()
    })
    .await
    .unwrap();
    let grown = n
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: xv.clone(),
            volume_path: xtarget.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 640 * MIB);
    let (after, stats) = byte_stats(&mut n, &xv, &xtarget).await;
    assert!(after.total > before.total + 250 * MIB, "xfs grew online: {} -> {} ({stats:?})", before.total, after.total);
    assert_eq!(std::fs::read(xtarget.join("x.txt")).unwrap(), b"on xfs");
    let r = NodeUnpublishVolumeRequest { volume_id: xv.clone(), target_path: xtarget.to_string_lossy().into() };
    n.node_unpublish_volume(r).await.unwrap();
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: xv.clone(),
        staging_target_path: xstaging.to_string_lossy().into(),
    })
    .await
    .unwrap();

    // Raw block volume: the device itself is published at the target path.
    let mut raw = create_req("pv-raw", 16 * MIB, &[]);
    raw.volume_capabilities = vec![cap(Mode::SingleNodeWriter, None)];
    let rv = c.create_volume(raw).await.unwrap().into_inner().volume.unwrap().volume_id;
    let rctx = attach_ctx(&mut c, &rv, "node-a").await;
    let rstaging = dir.path().join("kubelet/staging/pv-raw");
    let rtarget = dir.path().join("kubelet/pods/p3/volumeDevices/pv-raw");
    let bcap = || cap(Mode::SingleNodeWriter, None);
    n.node_stage_volume(stage_req(&rv, &rctx, &rstaging, bcap())).await.unwrap();
    n.node_publish_volume(node_publish_req(&rv, &rstaging, &rtarget, bcap(), false)).await.unwrap();
    let block = integration_tests::random_bytes(1 << 20);
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&rtarget).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(&block).unwrap();
        f.sync_all().unwrap();
        let mut back = vec![0u8; block.len()];
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(back == block, "raw block device reads back what was written");
    }
    let r = NodeUnpublishVolumeRequest { volume_id: rv.clone(), target_path: rtarget.to_string_lossy().into() };
    n.node_unpublish_volume(r).await.unwrap();
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: rv.clone(),
        staging_target_path: rstaging.to_string_lossy().into(),
    })
    .await
    .unwrap();
    assert!(!plugin.log_text().contains("panicked"), "{}", plugin.log_text());
}

/// The data-path process serving `vol` on a node plugin whose state directory is `state`.
fn datapath_pid(state: &std::path::Path, vol: &str) -> u32 {
    let text = std::fs::read(state.join("volumes").join(vol).join("staged.json")).expect("staged.json");
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// File `i` a writer makes: 192 KiB of bytes that only file `i` has (xorshift seeded by `i`).
fn file_bytes(i: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
    (0..(192 << 10) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csi_block_mounts_outlive_the_node_plugin() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mounts");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = MountCleanup(dir.path().to_path_buf());
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let _node = NodeProc::start(
        &dir.path().join("n1"),
        &["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"],
    );
    let (state_a, state_b) = (dir.path().join("state-a"), dir.path().join("state-b"));
    let mut plugin = CsiProc::start(
        "csi-block",
        dir.path(),
        "plugin-a",
        &["--meta", &api, "--node-id", "node-a", "--default-replicas", "1", "--state-dir", &state_a.to_string_lossy()],
    );
    let plugin_b = CsiProc::start(
        "csi-block",
        dir.path(),
        "plugin-b",
        &["--meta", &api, "--node-id", "node-b", "--controller", "false", "--state-dir", &state_b.to_string_lossy()],
    );
    let mut c = ControllerClient::new(plugin.channel().await);
    let mut n = NodeClient::new(plugin.channel().await);
    let fs_cap = || cap(Mode::SingleNodeWriter, Some("ext4"));
    let vol =
        c.create_volume(create_req("pv-live", 64 * MIB, &[])).await.unwrap().into_inner().volume.unwrap().volume_id;
    let ctx = attach_ctx(&mut c, &vol, "node-a").await;
    let staging = dir.path().join("kubelet/staging/pv-live");
    let target = dir.path().join("kubelet/pods/p1/volumes/pv-live");
    n.node_stage_volume(stage_req(&vol, &ctx, &staging, fs_cap())).await.unwrap();
    n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await.unwrap();
    let first_pid = datapath_pid(&state_a, &vol);

    // A pod writes (and fsyncs) file after file while the node plugin is SIGKILLed and restarted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, target) = (stop.clone(), target.clone());
        std::thread::spawn(move || -> Result<usize, String> {
            // Paced and capped: 250 files of 192 KiB fit the 64 MiB volume.
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if i < 250 {
                    let path = target.join(format!("f{i}"));
                    std::fs::write(&path, file_bytes(i)).map_err(|e| format!("write f{i}: {e}"))?;
                    std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| format!("fsync f{i}: {e}"))?;
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(i)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    plugin.restart();
    let mut n = NodeClient::new(plugin.channel().await);
    // The restarted plugin knows the volume is staged: stage and publish again are no-ops.
    n.node_stage_volume(stage_req(&vol, &ctx, &staging, fs_cap())).await.unwrap();
    n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await.unwrap();
    assert_eq!(datapath_pid(&state_a, &vol), first_pid, "the data path kept running");
    let (_, stats) = byte_stats(&mut n, &vol, &target).await;
    assert!(!stats.volume_condition.as_ref().unwrap().abnormal, "{stats:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap().expect("the writer saw no error across the plugin restart");
    assert!(written >= 4, "only {written} files written");

    // The data path itself dies: the volume reports abnormal; NodeStage finds the dead FUSE mount
    // (ENOTCONN) and starts a new one, NodePublish replaces the pod's stale bind mount.
    // SAFETY: kill has no memory-safety preconditions; the pid is the test's own child's child.
    unsafe { libc::kill(first_pid as i32, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, stats) = byte_stats(&mut n, &vol, &target).await;
    assert!(stats.volume_condition.as_ref().unwrap().abnormal, "dead data path not reported: {stats:?}");
    n.node_stage_volume(stage_req(&vol, &ctx, &staging, fs_cap())).await.unwrap();
    assert_ne!(datapath_pid(&state_a, &vol), first_pid, "a new data path serves the volume");
    n.node_publish_volume(node_publish_req(&vol, &staging, &target, fs_cap(), false)).await.unwrap();
    for i in 0..written {
        let got = std::fs::read(target.join(format!("f{i}"))).unwrap_or_else(|e| panic!("f{i} after recovery: {e}"));
        assert!(got == file_bytes(i), "f{i} differs after recovery");
    }
    std::fs::write(target.join("after"), b"recovered").unwrap();
    std::fs::File::open(target.join("after")).unwrap().sync_all().unwrap();

    // Detach from node-a, attach on node-b: every file is there.
    let r = NodeUnpublishVolumeRequest { volume_id: vol.clone(), target_path: target.to_string_lossy().into() };
    n.node_unpublish_volume(r).await.unwrap();
    let unstage =
        NodeUnstageVolumeRequest { volume_id: vol.clone(), staging_target_path: staging.to_string_lossy().into() };
    n.node_unstage_volume(unstage).await.unwrap();
    assert!(!state_a.join("volumes").join(&vol).exists(), "unstage leaves nothing behind");
    c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: vol.clone(),
        node_id: "node-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ctx_b = attach_ctx(&mut c, &vol, "node-b").await;
    let mut nb = NodeClient::new(plugin_b.channel().await);
    let (staging_b, target_b) =
        (dir.path().join("kubelet-b/staging/pv-live"), dir.path().join("kubelet-b/pods/p9/pv-live"));
    nb.node_stage_volume(stage_req(&vol, &ctx_b, &staging_b, fs_cap())).await.unwrap();
    nb.node_publish_volume(node_publish_req(&vol, &staging_b, &target_b, fs_cap(), false)).await.unwrap();
    for i in 0..written {
        assert!(std::fs::read(target_b.join(format!("f{i}"))).unwrap() == file_bytes(i), "f{i} on node-b");
    }
    assert_eq!(std::fs::read(target_b.join("after")).unwrap(), b"recovered");
    let r = NodeUnpublishVolumeRequest { volume_id: vol.clone(), target_path: target_b.to_string_lossy().into() };
    nb.node_unpublish_volume(r).await.unwrap();
    nb.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: vol.clone(),
        staging_target_path: staging_b.to_string_lossy().into(),
    })
    .await
    .unwrap();
    for p in [&plugin, &plugin_b] {
        assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
    }
}
