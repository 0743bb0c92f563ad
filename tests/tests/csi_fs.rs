//! csi-fs over its real unix socket, driven as the Kubernetes sidecars and two kubelets drive
//! it: identity and probe, CreateVolume idempotency and refusals, paging, snapshots, clones and
//! expansion (controller only); then, as root, one volume staged and published on two nodes at
//! once — a file written through one node read through the other, renames, deletes and appends
//! seen across — snapshot and clone contents, read-only publication, a mount process SIGKILLed
//! under a writer fsyncing file after file and recovered (every acknowledged file reads back
//! through both nodes), and teardown leaving no mount behind. Each failure carries the gRPC code the
//! CSI spec names.

use std::io::Write;
use std::path::{Path, PathBuf};
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
const DRIVER: &str = "fs.csi.cairn.io";

fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
    integration_tests::csi::cap(mode, fs, &[])
}

fn rwx() -> VolumeCapability {
    cap(Mode::MultiNodeMultiWriter, Some(""))
}

fn create_req(name: &str, required: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: required, limit_bytes: 0 }),
        volume_capabilities: vec![rwx()],
        ..Default::default()
    }
}

fn from_source(name: &str, size: i64, src: volume_content_source::Type) -> CreateVolumeRequest {
    CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource { r#type: Some(src) }),
        ..create_req(name, size)
    }
}

fn snapshot_src(id: &str) -> volume_content_source::Type {
    volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource { snapshot_id: id.into() })
}

fn volume_src(id: &str) -> volume_content_source::Type {
    volume_content_source::Type::Volume(volume_content_source::VolumeSource { volume_id: id.into() })
}

fn snap_req(name: &str, src: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest { source_volume_id: src.into(), name: name.into(), ..Default::default() }
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

/// A metadata node, a storage node (R=1) and its address for `--meta`.
fn pool(dir: &Path) -> (Vec<integration_tests::meta::MetaProc>, NodeProc, String) {
    let meta = meta_cluster(1, dir, &[]);
    let api = meta[0].addrs.api.clone();
    let node = NodeProc::start(
        &dir.join("n1"),
        &["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"],
    );
    (meta, node, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_fs_controller_over_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_meta, _node, api) = pool(dir.path());
    let mut ctrl = CsiProc::start("csi-fs", dir.path(), "ctrl", &["--meta", &api]);
    let node_only = CsiProc::start(
        "csi-fs",
        dir.path(),
        "node-b",
        &[
            "--meta",
            &api,
            "--controller",
            "false",
            "--node-id",
            "node-b",
            "--state-dir",
            &dir.path().join("sb").to_string_lossy(),
        ],
    );
    let ch = ctrl.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut c = ControllerClient::new(ch);

    // Identity: name, capabilities, and ready once a storage node is up.
    let info = id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER);
    assert!(!info.vendor_version.is_empty());
    let caps = id.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(offers_controller(&caps), "controller service: {caps:?}");
    assert!(
        caps.capabilities.iter().any(|c| matches!(&c.r#type, Some(plugin_capability::Type::VolumeExpansion(e))
            if e.r#type == plugin_capability::volume_expansion::Type::Online as i32)),
        "online expansion: {caps:?}"
    );
    integration_tests::csi::ready_channel(&ctrl.socket).await;
    let node_caps = IdentityClient::new(node_only.channel().await)
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!offers_controller(&node_caps), "a node-only plugin offers no controller: {node_caps:?}");
    let ctrl_caps = integration_tests::csi::controller_rpcs(&mut c).await;
    use controller_service_capability::rpc::Type as Rpc;
    for want in [
        Rpc::CreateDeleteVolume,
        Rpc::CreateDeleteSnapshot,
        Rpc::ListSnapshots,
        Rpc::CloneVolume,
        Rpc::ExpandVolume,
        Rpc::ListVolumes,
        Rpc::GetCapacity,
    ] {
        assert!(ctrl_caps.contains(&(want as i32)), "{want:?} missing: {ctrl_caps:?}");
    }
    assert!(!ctrl_caps.contains(&(Rpc::PublishUnpublishVolume as i32)), "shared filesystems need no attachment");

    // CreateVolume: rounded to MiB, 1 GiB by default, idempotent by name, incompatible repeats refused.
    let v1 = c.create_volume(create_req("pv-1", 100 * MIB + 1)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(v1.capacity_bytes, 101 * MIB);
    assert!(v1.volume_id.starts_with("fs-") && v1.volume_id.len() == 35, "{}", v1.volume_id);
    assert_eq!(v1.accessible_topology.len(), 1);
    assert_eq!(v1.accessible_topology[0].segments.get(&format!("{DRIVER}/pool")).map(String::as_str), Some("default"));
    let again = c.create_volume(create_req("pv-1", 100 * MIB)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again.volume_id, v1.volume_id, "same name, compatible: same volume");
    assert_eq!(code(c.create_volume(create_req("pv-1", 200 * MIB)).await), Code::AlreadyExists);
    let mut dflt = create_req("pv-default", 0);
    dflt.capacity_range = None;
    assert_eq!(c.create_volume(dflt).await.unwrap().into_inner().volume.unwrap().capacity_bytes, 1 << 30);

    // Refusals, each with the spec's code.
    assert_eq!(code(c.create_volume(create_req("", MIB)).await), Code::InvalidArgument);
    let mut no_caps = create_req("pv-x", MIB);
    no_caps.volume_capabilities.clear();
    assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument);
    let mut block = create_req("pv-x", MIB);
    block.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, None)];
    assert_eq!(code(c.create_volume(block).await), Code::InvalidArgument, "block access");
    let mut ext4 = create_req("pv-x", MIB);
    ext4.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, Some("ext4"))];
    assert_eq!(code(c.create_volume(ext4).await), Code::InvalidArgument, "another fs_type");
    let mut named = create_req("pv-x", MIB);
    named.volume_capabilities = vec![cap(Mode::SingleNodeWriter, Some("cairnfs"))];
    named.name = "pv-cairnfs".into();
    c.create_volume(named).await.unwrap();
    let mut typo = create_req("pv-x", MIB);
    typo.parameters.insert("replica".into(), "1".into());
    assert_eq!(code(c.create_volume(typo).await), Code::InvalidArgument);
    let mut lies = create_req("pv-x", 10 * MIB);
    lies.capacity_range = Some(CapacityRange { required_bytes: 10 * MIB, limit_bytes: MIB });
    assert_eq!(code(c.create_volume(lies).await), Code::OutOfRange);
    assert_eq!(
        code(c.create_volume(from_source("pv-x", MIB, volume_src(&v1.volume_id))).await),
        Code::OutOfRange,
        "a clone smaller than its source"
    );
    assert_eq!(
        code(c.create_volume(from_source("pv-x", 200 * MIB, volume_src("fs-00000000000000000000000000000009"))).await),
        Code::NotFound,
        "a clone of a volume that does not exist"
    );
    assert_eq!(
        code(
            c.create_volume(from_source("pv-x", 200 * MIB, snapshot_src("fss-00000000000000000000000000000009"))).await
        ),
        Code::NotFound,
        "a volume from a snapshot that does not exist"
    );

    // ListVolumes pages through every volume exactly once; a made-up token is ABORTED.
    let mut ids = vec![v1.volume_id.clone()];
    for i in 0..3 {
        ids.push(
            c.create_volume(create_req(&format!("pv-page-{i}"), MIB))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    let (mut seen, mut token) = (Vec::new(), String::new());
    for _ in 0..20 {
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
    assert!(ids.iter().all(|i| seen.contains(i)), "every volume listed: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "once each, in id order");
    assert_eq!(
        code(c.list_volumes(ListVolumesRequest { max_entries: 2, starting_token: "../x".into() }).await),
        Code::Aborted
    );

    // ValidateVolumeCapabilities.
    let validate = |caps: Vec<VolumeCapability>, id: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let vid = v1.volume_id.clone();
    let ok = c.validate_volume_capabilities(validate(vec![rwx()], &vid)).await.unwrap().into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let no = c
        .validate_volume_capabilities(validate(vec![cap(Mode::MultiNodeMultiWriter, None)], &vid))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && no.message.contains("block"), "{no:?}");
    let unknown = validate(vec![rwx()], "fs-00000000000000000000000000000000");
    assert_eq!(code(c.validate_volume_capabilities(unknown).await), Code::NotFound);
    assert_eq!(code(c.validate_volume_capabilities(validate(vec![], &vid)).await), Code::InvalidArgument);

    // Expansion grows, never shrinks, and needs no node step.
    let grow = |id: &str, req: i64, lim: i64| ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange { required_bytes: req, limit_bytes: lim }),
        ..Default::default()
    };
    let grown = c.controller_expand_volume(grow(&vid, 300 * MIB, 0)).await.unwrap().into_inner();
    assert_eq!((grown.capacity_bytes, grown.node_expansion_required), (300 * MIB, false));
    let same = c.controller_expand_volume(grow(&vid, 10 * MIB, 0)).await.unwrap().into_inner();
    assert_eq!(same.capacity_bytes, 300 * MIB, "a smaller request leaves the volume as it is");
    assert_eq!(code(c.controller_expand_volume(grow(&vid, 10 * MIB, 20 * MIB)).await), Code::OutOfRange);
    assert_eq!(
        code(c.controller_expand_volume(grow("fs-00000000000000000000000000000000", MIB, 0)).await),
        Code::NotFound
    );

    // Snapshots: idempotent by name, listed by source, restorable, deletable twice.
    let snap = c.create_snapshot(snap_req("snap-1", &vid)).await.unwrap().into_inner().snapshot.unwrap();
    assert!(snap.ready_to_use && snap.source_volume_id == vid && snap.size_bytes == 300 * MIB, "{snap:?}");
    assert!(snap.snapshot_id.starts_with("fss-"), "{}", snap.snapshot_id);
    let again = c.create_snapshot(snap_req("snap-1", &vid)).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id, "same name, same source: same snapshot");
    assert_eq!(code(c.create_snapshot(snap_req("snap-1", &ids[1])).await), Code::AlreadyExists);
    assert_eq!(
        code(c.create_snapshot(snap_req("snap-2", "fs-00000000000000000000000000000009")).await),
        Code::NotFound
    );
    assert_eq!(code(c.create_snapshot(snap_req("", &vid)).await), Code::InvalidArgument);
    assert_eq!(code(c.create_snapshot(snap_req("snap-2", "")).await), Code::InvalidArgument);
    let listed = c
        .list_snapshots(ListSnapshotsRequest { source_volume_id: vid.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let bad_token = ListSnapshotsRequest { starting_token: "nope".into(), ..Default::default() };
    assert_eq!(code(c.list_snapshots(bad_token).await), Code::Aborted);
    assert_eq!(
        code(c.create_volume(from_source("pv-small", 10 * MIB, snapshot_src(&snap.snapshot_id))).await),
        Code::OutOfRange,
        "a restore smaller than the snapshot"
    );
    let restored = c
        .create_volume(from_source("pv-restore", 300 * MIB, snapshot_src(&snap.snapshot_id)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(restored.content_source.is_some());
    let restored_again = c
        .create_volume(from_source("pv-restore", 300 * MIB, snapshot_src(&snap.snapshot_id)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored_again.volume_id, restored.volume_id);
    assert_eq!(
        code(c.create_volume(from_source("pv-restore", 300 * MIB, volume_src(&vid))).await),
        Code::AlreadyExists,
        "same name, other source"
    );
    let del = DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
    c.delete_snapshot(del.clone()).await.unwrap();
    c.delete_snapshot(del).await.unwrap();
    let by_id = ListSnapshotsRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
    assert!(c.list_snapshots(by_id).await.unwrap().into_inner().entries.is_empty());

    let capacity = c.get_capacity(GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(capacity.available_capacity > 0, "{capacity:?}");

    // No attachment: ControllerPublish is not offered.
    let publish =
        ControllerPublishVolumeRequest { volume_id: vid.clone(), node_id: "node-b".into(), ..Default::default() };
    assert_eq!(code(c.controller_publish_volume(publish).await), Code::Unimplemented);

    // The controller is SIGKILLed and restarted: nothing is forgotten.
    ctrl.restart();
    let mut c = ControllerClient::new(ctrl.channel().await);
    let again = c.create_volume(create_req("pv-1", 300 * MIB)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!((again.volume_id.as_str(), again.capacity_bytes), (vid.as_str(), 300 * MIB));

    // Node plugin b: its id and topology.
    let mut nb = NodeClient::new(node_only.channel().await);
    let info = nb.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-b");
    assert_eq!(info.accessible_topology.unwrap().segments, v1.accessible_topology[0].segments);

    // The CLI's view: every filesystem with its quota and usage.
    let meta_client = metadata_client::MetaClient::new(std::slice::from_ref(&api)).unwrap();
    let all = csi_fs::admin::list_filesystems(&meta_client).await.unwrap();
    let mine = all.iter().find(|f| f.id == vid).expect("the volume's filesystem");
    assert_eq!((mine.capacity_bytes, mine.used_bytes), (300 * MIB as u64, 0));
    assert!(matches!(&mine.kind, csi_fs::admin::FsKind::Volume { name: Some(n) } if n == "pv-1"), "{mine:?}");

    // Deleting: twice (idempotent), then the name is free again.
    for v in [&vid, &restored.volume_id] {
        let del = DeleteVolumeRequest { volume_id: v.to_string(), ..Default::default() };
        c.delete_volume(del.clone()).await.unwrap();
        c.delete_volume(del).await.unwrap();
    }
    let gone = csi_fs::admin::list_filesystems(&meta_client).await.unwrap();
    assert!(!gone.iter().any(|f| f.id == vid), "the filesystem went with its volume");
    c.delete_volume(DeleteVolumeRequest { volume_id: "nonsense".into(), ..Default::default() }).await.unwrap();
    let v1b = c.create_volume(create_req("pv-1", MIB)).await.unwrap().into_inner().volume.unwrap();
    assert_ne!(v1b.volume_id, vid);
    assert!(!ctrl.log_text().contains("panicked"), "{}", ctrl.log_text());
}

/// Kills the per-volume mount processes and removes every mount under the test's directory,
/// even when the test fails midway.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        integration_tests::csi::kill_processes_under(&self.0);
        integration_tests::csi::cleanup_mounts_under(&self.0);
    }
}

/// One node's kubelet paths for a volume.
struct Paths {
    staging: PathBuf,
    target: PathBuf,
}

impl Paths {
    fn new(root: &Path, node: &str, pv: &str) -> Paths {
        Paths {
            staging: root.join(format!("kubelet-{node}/plugins/staging/{pv}")),
            target: root.join(format!("kubelet-{node}/pods/p1/volumes/{pv}")),
        }
    }
}

fn stage_req(vol: &str, staging: &Path, c: VolumeCapability) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(c),
        ..Default::default()
    }
}

fn publish_req(vol: &str, p: &Paths, target: &Path, readonly: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: p.staging.to_string_lossy().into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(rwx()),
        readonly,
        ..Default::default()
    }
}

async fn stage_and_publish(n: &mut NodeClient<Channel>, vol: &str, p: &Paths) {
    n.node_stage_volume(stage_req(vol, &p.staging, rwx())).await.unwrap();
    n.node_publish_volume(publish_req(vol, p, &p.target, false)).await.unwrap();
}

async fn unpublish_and_unstage(n: &mut NodeClient<Channel>, vol: &str, p: &Paths) {
    let r = NodeUnpublishVolumeRequest { volume_id: vol.into(), target_path: p.target.to_string_lossy().into() };
    n.node_unpublish_volume(r.clone()).await.unwrap();
    n.node_unpublish_volume(r).await.unwrap();
    assert!(!p.target.exists(), "unpublish removes the target");
    let r = NodeUnstageVolumeRequest { volume_id: vol.into(), staging_target_path: p.staging.to_string_lossy().into() };
    n.node_unstage_volume(r.clone()).await.unwrap();
    n.node_unstage_volume(r).await.unwrap();
}

/// NodeGetVolumeStats of `vol` at `path`: (byte usage, the whole answer).
async fn stats(
    n: &mut NodeClient<Channel>,
    vol: &str,
    path: &Path,
) -> (Option<VolumeUsage>, NodeGetVolumeStatsResponse) {
    let s = n
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.into(),
            volume_path: path.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (s.usage.iter().find(|u| u.unit == volume_usage::Unit::Bytes as i32).cloned(), s)
}

/// The pid of the mount process serving `vol` on a node plugin whose state directory is `state`.
fn mount_pid(state: &Path, vol: &str) -> u32 {
    let text = std::fs::read(state.join("volumes").join(vol).join("staged.json")).expect("staged.json");
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// A file the writer fsynced: its name and contents.
type Acked = (String, Vec<u8>);

/// A thread writing files through a mount in a loop: each written, fsynced (`sync_all`), then
/// recorded as acknowledged with its contents. It stops at the first error — that file not
/// recorded — which must come after `killed` is set (the mount process SIGKILLed under it).
struct Writer {
    acked: std::sync::Arc<std::sync::Mutex<Vec<Acked>>>,
    killed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<std::io::Error>,
}

impl Writer {
    /// Files written at most (a kill that never stops the writer fails the test, not the disk).
    const MAX_FILES: usize = 5000;

    fn start(dir: PathBuf) -> Writer {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (list, stop) = (acked.clone(), killed.clone());
        let handle = std::thread::spawn(move || {
            for i in 0..Self::MAX_FILES {
                let name = format!("f-{i:05}.bin");
                // 64 KiB to 256 KiB and a few odd bytes: whole blocks, partial blocks.
                let bytes = integration_tests::random_bytes((64 << 10) * (1 + i % 4) + i % 7);
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(dir.join(&name))?;
                    f.write_all(&bytes)?;
                    f.sync_all()
                };
                if let Err(e) = write() {
                    assert!(
                        stop.load(std::sync::atomic::Ordering::SeqCst),
                        "writing {name} failed before the mount process was killed: {e}"
                    );
                    return e;
                }
                list.lock().unwrap().push((name, bytes));
            }
            panic!("the writer wrote {} files and never saw the mount die", Self::MAX_FILES);
        });
        Writer { acked, killed, handle }
    }

    fn acknowledged(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits for the writer to stop at its first error (the dead mount's ENOTCONN, or
    /// ECONNABORTED for a call in flight when the connection was torn down); the files it
    /// acknowledged.
    async fn join(self) -> Vec<Acked> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.handle.is_finished() {
            assert!(Instant::now() < deadline, "the writer is still running 30 s after the kill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = match self.handle.join() {
            Ok(e) => e,
            Err(p) => std::panic::resume_unwind(p),
        };
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)),
            "the writer's first error is not the dead mount's: {err:?}"
        );
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        assert!(acked.len() >= 20, "{} files acknowledged", acked.len());
        eprintln!("writer: {} files acknowledged before the kill, then {err}", acked.len());
        acked
    }
}

/// Whether process `pid` exists and is not a zombie.
/// Waits (up to 5 s) until a path's existence on one node is `want`: a bare lookup there answers from
/// that client's watch-kept cache, which trails the other node's commit by the watch's delivery.
async fn exists_eventually(path: &Path, want: bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while path.exists() != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    path.exists()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csi_fs_two_nodes_share_one_filesystem() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE and mounts");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let _cleanup = Cleanup(root.clone());
    let (_meta, _node, api) = pool(&root);
    let (state_a, state_b) = (root.join("state-a"), root.join("state-b"));
    let plugin_a = CsiProc::start(
        "csi-fs",
        &root,
        "node-a",
        &["--meta", &api, "--node-id", "node-a", "--controller", "true", "--state-dir", &state_a.to_string_lossy()],
    );
    let mut plugin_b = CsiProc::start(
        "csi-fs",
        &root,
        "node-b",
        &["--meta", &api, "--node-id", "node-b", "--controller", "false", "--state-dir", &state_b.to_string_lossy()],
    );
    integration_tests::csi::ready_channel(&plugin_a.socket).await;
    let mut c = ControllerClient::new(plugin_a.channel().await);
    let mut na = NodeClient::new(plugin_a.channel().await);
    let mut nb = NodeClient::new(plugin_b.channel().await);
    // An unknown volume is NOT_FOUND whatever the path looks like (the spec's order).
    for path in ["relative/path", "/abs/path"] {
        let stats = NodeGetVolumeStatsRequest { volume_id: "fs-nope".into(), volume_path: path.into(), ..Default::default() };
        assert_eq!(code(nb.node_get_volume_stats(stats).await), Code::NotFound, "stats at {path}");
    }

    let node_caps = nb.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    use node_service_capability::rpc::Type as NodeRpc;
    let has = |t: NodeRpc| {
        node_caps
            .capabilities
            .iter()
            .any(|c| matches!(&c.r#type, Some(node_service_capability::Type::Rpc(r)) if r.r#type == t as i32))
    };
    assert!(has(NodeRpc::StageUnstageVolume) && has(NodeRpc::GetVolumeStats) && has(NodeRpc::VolumeCondition));
    let info = na.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-a");
    assert_eq!(
        info.accessible_topology.unwrap().segments.get(&format!("{DRIVER}/pool")).map(String::as_str),
        Some("default")
    );

    // One volume, staged and published on both nodes (twice each: idempotent).
    let vol = c.create_volume(create_req("pv-shared", 64 * MIB)).await.unwrap().into_inner().volume.unwrap().volume_id;
    let (pa, pb) = (Paths::new(&root, "a", "pv-shared"), Paths::new(&root, "b", "pv-shared"));
    for (n, p) in [(&mut na, &pa), (&mut nb, &pb)] {
        stage_and_publish(n, &vol, p).await;
        stage_and_publish(n, &vol, p).await;
    }

    // Bad input, each with the spec's code.
    let unknown = "fs-00000000000000000000000000000000";
    let other = Paths::new(&root, "a", "pv-other");
    assert_eq!(code(na.node_stage_volume(stage_req(unknown, &other.staging, rwx())).await), Code::NotFound);
    assert_eq!(code(na.node_stage_volume(stage_req("../../etc", &other.staging, rwx())).await), Code::NotFound);
    assert_eq!(
        code(na.node_stage_volume(stage_req(&vol, &pa.staging, cap(Mode::MultiNodeMultiWriter, None))).await),
        Code::InvalidArgument,
        "block access"
    );
    assert_eq!(code(na.node_stage_volume(stage_req("", &other.staging, rwx())).await), Code::InvalidArgument);
    assert_eq!(code(na.node_stage_volume(stage_req(&vol, Path::new(""), rwx())).await), Code::InvalidArgument);
    let mut no_cap = stage_req(&vol, &pa.staging, rwx());
    no_cap.volume_capability = None;
    assert_eq!(code(na.node_stage_volume(no_cap).await), Code::InvalidArgument);
    let dotdot = root.join("kubelet-a/pods/../../../etc/x");
    assert_eq!(
        code(na.node_stage_volume(stage_req(&vol, &dotdot, rwx())).await),
        Code::InvalidArgument,
        "staging path with .."
    );
    assert_eq!(code(na.node_publish_volume(publish_req(&vol, &pa, &dotdot, false)).await), Code::InvalidArgument);
    let mut no_target = publish_req(&vol, &pa, &pa.target, false);
    no_target.target_path.clear();
    assert_eq!(code(na.node_publish_volume(no_target).await), Code::InvalidArgument);
    let unstaged =
        c.create_volume(create_req("pv-unstaged", MIB)).await.unwrap().into_inner().volume.unwrap().volume_id;
    assert_eq!(
        code(na.node_publish_volume(publish_req(&unstaged, &other, &other.target, false)).await),
        Code::FailedPrecondition,
        "publish before stage"
    );
    assert_eq!(
        code(
            na.node_unpublish_volume(NodeUnpublishVolumeRequest { volume_id: vol.clone(), target_path: String::new() })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(code(c.create_volume(create_req("pv-shared", 128 * MIB)).await), Code::AlreadyExists);
    assert_eq!(
        code(
            na.node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: unknown.into(),
                volume_path: pa.target.to_string_lossy().into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // Written through node-a, read through node-b; renames, deletes and appends seen across.
    let (ta, tb) = (&pa.target, &pb.target);
    let payload = integration_tests::random_bytes(3 << 20);
    std::fs::write(ta.join("data.bin"), &payload).unwrap();
    std::fs::write(ta.join("hello.txt"), b"hello from a").unwrap();
    assert!(std::fs::read(tb.join("data.bin")).unwrap() == payload, "node-b reads what node-a wrote");
    assert_eq!(std::fs::read(tb.join("hello.txt")).unwrap(), b"hello from a");
    std::fs::rename(tb.join("hello.txt"), tb.join("greeting.txt")).unwrap();
    assert!(!exists_eventually(&ta.join("hello.txt"), false).await, "node-a sees the rename's old name gone");
    assert_eq!(std::fs::read(ta.join("greeting.txt")).unwrap(), b"hello from a");
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(tb.join("greeting.txt")).unwrap();
        f.write_all(b", and b").unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(std::fs::read(ta.join("greeting.txt")).unwrap(), b"hello from a, and b", "node-a sees b's append");
    std::fs::create_dir(ta.join("sub")).unwrap();
    std::fs::write(ta.join("sub/x"), b"x").unwrap();
    assert!(tb.join("sub").is_dir());
    std::fs::remove_file(ta.join("sub/x")).unwrap();
    assert!(!exists_eventually(&tb.join("sub/x"), false).await, "node-b sees the delete");
    std::fs::remove_dir(tb.join("sub")).unwrap();
    assert!(!exists_eventually(&ta.join("sub"), false).await, "node-a sees the rmdir");
    let mut names: Vec<String> =
        std::fs::read_dir(tb).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["data.bin", "greeting.txt"]);

    // Stats: the quota is the capacity; usage counts the files.
    let (bytes, st) = stats(&mut na, &vol, ta).await;
    let bytes = bytes.unwrap_or_else(|| panic!("no byte usage: {st:?}"));
    assert_eq!(bytes.total, 64 * MIB, "{st:?}");
    assert!(bytes.used >= 3 * MIB, "{st:?}");
    assert!(st.usage.iter().any(|u| u.unit == volume_usage::Unit::Inodes as i32 && u.used >= 3), "{st:?}");
    assert!(!st.volume_condition.as_ref().unwrap().abnormal, "{st:?}");

    // Online expansion: the pods see the larger quota at once.
    let grown = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.clone(),
            capacity_range: Some(CapacityRange { required_bytes: 128 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((grown.capacity_bytes, grown.node_expansion_required), (128 * MIB, false));
    let (bytes, st) = stats(&mut nb, &vol, tb).await;
    assert_eq!(bytes.map(|b| b.total), Some(128 * MIB), "{st:?}");

    // A read-only publication on node-b refuses writes and reads.
    let ro = root.join("kubelet-b/pods/p2/volumes/pv-shared");
    nb.node_publish_volume(publish_req(&vol, &pb, &ro, true)).await.unwrap();
    nb.node_publish_volume(publish_req(&vol, &pb, &ro, true)).await.unwrap();
    assert_eq!(
        code(nb.node_publish_volume(publish_req(&vol, &pb, &ro, false)).await),
        Code::AlreadyExists,
        "published read-only there already"
    );
    assert!(std::fs::write(ro.join("nope"), b"x").is_err(), "a read-only publication took a write");
    assert!(std::fs::read(ro.join("data.bin")).unwrap() == payload);
    let r = NodeUnpublishVolumeRequest { volume_id: vol.clone(), target_path: ro.to_string_lossy().into() };
    nb.node_unpublish_volume(r).await.unwrap();

    // Snapshot, then the volume moves on; a restore holds the files as they were, a clone as they are.
    std::fs::write(ta.join("state.txt"), b"before").unwrap();
    let snap = c.create_snapshot(snap_req("snap-shared", &vol)).await.unwrap().into_inner().snapshot.unwrap();
    assert!(snap.ready_to_use, "{snap:?}");
    std::fs::write(ta.join("state.txt"), b"after").unwrap();
    std::fs::write(tb.join("late.txt"), b"late").unwrap();
    let restored = c
        .create_volume(from_source("pv-restored", 128 * MIB, snapshot_src(&snap.snapshot_id)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let cloned = c
        .create_volume(from_source("pv-cloned", 128 * MIB, volume_src(&vol)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let (pr, pc) = (Paths::new(&root, "b", "pv-restored"), Paths::new(&root, "a", "pv-cloned"));
    stage_and_publish(&mut nb, &restored, &pr).await;
    stage_and_publish(&mut na, &cloned, &pc).await;
    assert_eq!(std::fs::read(pr.target.join("state.txt")).unwrap(), b"before", "restore = the volume at the snapshot");
    assert!(!pr.target.join("late.txt").exists(), "restore has nothing written after the snapshot");
    assert!(std::fs::read(pr.target.join("data.bin")).unwrap() == payload);
    assert_eq!(std::fs::read(pc.target.join("state.txt")).unwrap(), b"after", "clone = the volume now");
    assert_eq!(std::fs::read(pc.target.join("late.txt")).unwrap(), b"late");
    std::fs::write(pr.target.join("state.txt"), b"restored and changed").unwrap();
    assert_eq!(std::fs::read(ta.join("state.txt")).unwrap(), b"after", "copies are independent");
    unpublish_and_unstage(&mut nb, &restored, &pr).await;
    unpublish_and_unstage(&mut na, &cloned, &pc).await;

    // The mount process on node-a dies under load: a writer fsyncs file after file through
    // node-a; SIGKILL lands while it runs, and its next call fails (the mount is dead). The
    // volume reports abnormal; NodeStage starts a new mount process and NodePublish replaces the
    // pod's stale bind mount. Node-b never noticed. Every file whose fsync returned is there.
    let first = mount_pid(&state_a, &vol);
    std::fs::create_dir(ta.join("load")).unwrap();
    let writer = Writer::start(ta.join("load"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while writer.acknowledged() < 20 {
        if writer.handle.is_finished() {
            writer.join().await;
            panic!("the writer stopped before the kill");
        }
        assert!(Instant::now() < deadline, "the writer acknowledged {} files in 60 s", writer.acknowledged());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.killed.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: kill has no memory-safety preconditions; the pid is the plugin's child.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(first) {
        assert!(Instant::now() < deadline, "mount process {first} survived SIGKILL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = writer.join().await;
    let (_, st) = stats(&mut na, &vol, ta).await;
    assert!(st.volume_condition.as_ref().unwrap().abnormal, "a dead mount not reported: {st:?}");
    na.node_stage_volume(stage_req(&vol, &pa.staging, rwx())).await.unwrap();
    assert_ne!(mount_pid(&state_a, &vol), first, "a new mount process serves the volume");
    na.node_publish_volume(publish_req(&vol, &pa, ta, false)).await.unwrap();
    assert!(std::fs::read(ta.join("data.bin")).unwrap() == payload, "the data after recovery");
    std::fs::write(ta.join("recovered.txt"), b"yes").unwrap();
    assert_eq!(std::fs::read(tb.join("recovered.txt")).unwrap(), b"yes");
    let (_, st) = stats(&mut na, &vol, ta).await;
    assert!(!st.volume_condition.as_ref().unwrap().abnormal, "{st:?}");
    for (name, bytes) in &acked {
        for (node, t) in [("node-a (recovered)", ta), ("node-b", tb)] {
            let back = std::fs::read(t.join("load").join(name))
                .unwrap_or_else(|e| panic!("{name}, fsynced before the kill, is unreadable through {node}: {e}"));
            assert!(back == *bytes, "{name}, fsynced before the kill, reads back other bytes through {node}");
        }
    }

    // Node-b's plugin is SIGKILLed and restarted: its mount process keeps serving, and the new
    // plugin knows the volume is staged (stage and publish again are no-ops).
    let pid_b = mount_pid(&state_b, &vol);
    plugin_b.restart();
    let mut nb = NodeClient::new(plugin_b.channel().await);
    assert_eq!(std::fs::read(tb.join("recovered.txt")).unwrap(), b"yes", "the mount outlived its plugin");
    stage_and_publish(&mut nb, &vol, &pb).await;
    assert_eq!(mount_pid(&state_b, &vol), pid_b, "the mount process kept running");
    let (_, st) = stats(&mut nb, &vol, tb).await;
    assert!(!st.volume_condition.as_ref().unwrap().abnormal, "{st:?}");

    // Tear down on both nodes: no mount and no mount process is left.
    let pids = [mount_pid(&state_a, &vol), mount_pid(&state_b, &vol)];
    unpublish_and_unstage(&mut na, &vol, &pa).await;
    unpublish_and_unstage(&mut nb, &vol, &pb).await;
    assert_eq!(integration_tests::csi::mounts_under(&root), Vec::<String>::new(), "mounts left behind");
    for pid in pids {
        assert!(!running(pid), "mount process {pid} still running after unstage");
    }
    assert!(!state_a.join("volumes").join(&vol).exists(), "unstage leaves no state behind");
    // Stage again on node-b: everything is still there.
    stage_and_publish(&mut nb, &vol, &pb).await;
    assert_eq!(std::fs::read(tb.join("greeting.txt")).unwrap(), b"hello from a, and b");
    unpublish_and_unstage(&mut nb, &vol, &pb).await;
    c.delete_volume(DeleteVolumeRequest { volume_id: vol.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(code(nb.node_stage_volume(stage_req(&vol, &pb.staging, rwx())).await), Code::NotFound);
    assert_eq!(integration_tests::csi::mounts_under(&root), Vec::<String>::new());
    for p in [&plugin_a, &plugin_b] {
        assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
    }
}
