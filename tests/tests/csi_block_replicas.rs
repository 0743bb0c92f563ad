//! A replicated block volume (R=3 over 5 storage nodes) in use while a storage node is
//! SIGKILLed: the writer sees no error, the controller reports the volume degraded, the pool's
//! repair rebuilds the missing copies (the volume is healthy again), and the whole volume's
//! checksum matches what was written — read on the node that wrote it and again on another node,
//! whose NBD export of the volume then passes qemu-img convert and qemu-io's verified patterns.

use std::time::{Duration, Instant};

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume};
use cairn_proto::csi::v1::*;
use integration_tests::NodeProc;
use integration_tests::csi::{CsiProc, cleanup_mounts_under};
use integration_tests::meta::meta_cluster;
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::Channel;

const MIB: usize = 1 << 20;
const SIZE: usize = 32 * MIB;

struct MountCleanup(std::path::PathBuf);

impl Drop for MountCleanup {
    fn drop(&mut self) {
        cleanup_mounts_under(&self.0);
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

/// ControllerPublish to `node`, NodeStage and NodePublish on `n`: the device file in the "pod".
async fn attach(
    c: &mut ControllerClient<Channel>,
    n: &mut NodeClient<Channel>,
    vol: &str,
    node: &str,
    root: &std::path::Path,
) -> std::path::PathBuf {
    let ctx = c
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: vol.into(),
            node_id: node.into(),
            volume_capability: Some(block_cap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    let (staging, target) = (root.join(node).join("staging"), root.join(node).join("pod/dev"));
    n.node_stage_volume(NodeStageVolumeRequest {
        volume_id: vol.into(),
        publish_context: ctx,
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(block_cap()),
        ..Default::default()
    })
    .await
    .unwrap();
    n.node_publish_volume(NodePublishVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: staging.to_string_lossy().into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(block_cap()),
        ..Default::default()
    })
    .await
    .unwrap();
    target
}

async fn detach(
    c: &mut ControllerClient<Channel>,
    n: &mut NodeClient<Channel>,
    vol: &str,
    node: &str,
    root: &std::path::Path,
) {
    let (staging, target) = (root.join(node).join("staging"), root.join(node).join("pod/dev"));
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: vol.into(),
        target_path: target.to_string_lossy().into(),
    })
    .await
    .unwrap();
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: staging.to_string_lossy().into(),
    })
    .await
    .unwrap();
    c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn condition(c: &mut ControllerClient<Channel>, vol: &str) -> VolumeCondition {
    c.controller_get_volume(ControllerGetVolumeRequest { volume_id: vol.into() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .volume_condition
        .unwrap()
}

/// Runs a qemu tool (argv[0] first); it must succeed and report no failure. Its output.
fn qemu(argv: &[&str]) -> String {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (qemu-utils): {e}", argv[0]));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{argv:?}: {}\n{text}", out.status);
    assert!(!text.to_lowercase().contains("fail"), "{argv:?} reported a failure:\n{text}");
    text
}

fn whole_device_hash(dev: &std::path::Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(dev).expect("read the whole device"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csi_block_volume_rides_out_a_storage_node_sigkill_and_rebuilds() {
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
    let mut nodes: Vec<NodeProc> = (1..=5)
        .map(|i| {
            let id = format!("n{i}");
            NodeProc::start(
                &dir.path().join(&id),
                &[
                    "--meta",
                    &api,
                    "--node-id",
                    &id,
                    "--host",
                    &id,
                    "--replicas",
                    "3",
                    "--heartbeat-ms",
                    "200",
                    "--down-after-ms",
                    "1000",
                    "--out-after-ms",
                    "4000",
                    "--repair-interval-secs",
                    "2",
                    "--repair-rate-mib",
                    "0",
                ],
            )
        })
        .collect();
    let state_a = dir.path().join("state-a").to_string_lossy().to_string();
    let state_b = dir.path().join("state-b").to_string_lossy().to_string();
    let plugin = CsiProc::start(
        "csi-block",
        dir.path(),
        "plugin-a",
        &["--meta", &api, "--node-id", "node-a", "--state-dir", &state_a],
    );
    let plugin_b = CsiProc::start(
        "csi-block",
        dir.path(),
        "plugin-b",
        &[
            "--meta",
            &api,
            "--node-id",
            "node-b",
            "--controller",
            "false",
            "--state-dir",
            &state_b,
            "--nbd-export",
            "true",
        ],
    );
    let mut c = ControllerClient::new(plugin.channel().await);
    let mut n = NodeClient::new(plugin.channel().await);
    let mut nb = NodeClient::new(plugin_b.channel().await);
    let vol = c
        .create_volume(CreateVolumeRequest {
            name: "pv-r3".into(),
            capacity_range: Some(CapacityRange { required_bytes: SIZE as i64, limit_bytes: 0 }),
            volume_capabilities: vec![block_cap()],
            parameters: [("replicas".to_string(), "3".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let root = dir.path().join("kubelet");
    let dev = attach(&mut c, &mut n, &vol, "node-a", &root).await;

    // The writer: random extents, an fsync every 8 writes, a model of what the volume holds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dev) = (stop.clone(), dev.clone());
        std::thread::spawn(move || -> Result<(Vec<u8>, usize), String> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&dev).map_err(|e| e.to_string())?;
            let mut model = vec![0u8; SIZE];
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let len = rng.gen_range(1..=64) * 4096;
                let off = rng.gen_range(0..(SIZE - len) / 4096) * 4096;
                rng.fill_bytes(&mut model[off..off + len]);
                f.write_all_at(&model[off..off + len], off as u64).map_err(|e| format!("write {n}: {e}"))?;
                n += 1;
                if n % 8 == 0 {
                    f.sync_data().map_err(|e| format!("fsync after write {n}: {e}"))?;
                }
            }
            f.sync_data().map_err(|e| format!("last fsync: {e}"))?;
            Ok((model, n))
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!condition(&mut c, &vol).await.abnormal, "healthy before the kill");
    nodes[1].kill9();
    let t0 = Instant::now();
    let degraded = loop {
        let cond = condition(&mut c, &vol).await;
        if cond.abnormal {
            break cond;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never reported degraded: {cond:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(degraded.message.contains("degraded"), "{degraded:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (model, writes) = writer.join().unwrap().expect("the writer saw no error while a storage node died");
    assert!(writes > 16, "only {writes} writes");
    eprintln!("{writes} writes; degraded after the kill: {}", degraded.message);

    // The pool rebuilds the copies the dead node held; the volume is healthy again.
    let t0 = Instant::now();
    loop {
        let cond = condition(&mut c, &vol).await;
        if !cond.abnormal {
            eprintln!("healthy again after {:?}: {}", t0.elapsed(), cond.message);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "not rebuilt: {cond:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let want = blake3::hash(&model);
    assert_eq!(whole_device_hash(&dev), want, "the volume holds what was written (node-a)");
    detach(&mut c, &mut n, &vol, "node-a", &root).await;
    let dev_b = attach(&mut c, &mut nb, &vol, "node-b", &root).await;
    assert_eq!(whole_device_hash(&dev_b), want, "the volume holds what was written (node-b, from the pool)");

    // node-b also exports the attached volume over NBD: qemu-img copies the whole volume out,
    // qemu-io writes, reads back and verifies patterns, zeroes and discards.
    let sock = dir.path().join("state-b/volumes").join(&vol).join("nbd.sock");
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let info = qemu(&["qemu-img", "info", "-f", "raw", &uri]);
    assert!(info.contains(&format!("{SIZE} bytes")), "{info}");
    let copy = dir.path().join("copy.raw");
    qemu(&["qemu-img", "convert", "-f", "raw", "-O", "raw", &uri, &copy.to_string_lossy()]);
    assert_eq!(blake3::hash(&std::fs::read(&copy).unwrap()), want, "qemu-img convert of the whole volume");
    qemu(&[
        "qemu-io",
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0x5a 1M 2M",
        "-c",
        "read -P 0x5a 1M 2M",
        "-c",
        "write -P 0x11 3000 5000",
        "-c",
        "read -P 0x11 3000 5000",
        "-c",
        "write -z 4M 1M",
        "-c",
        "read -P 0 4M 1M",
        "-c",
        "discard 8M 1M",
        "-c",
        "read -P 0 8M 1M",
        "-c",
        "flush",
    ]);
    qemu(&["qemu-io", "-f", "raw", &uri, "-c", "read -P 0x5a 1M 2M", "-c", "read -P 0x11 3000 5000"]);
    detach(&mut c, &mut nb, &vol, "node-b", &root).await;
    for p in [&plugin, &plugin_b] {
        assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
    }
}
