//! Volumes ride out an outage of the system under them: ext4 on a csi-block volume and a csi-fs
//! mount, staged and published through cairn-local's CSI sockets, while cairn-local (metadata
//! service, storage node, plugins) is SIGKILLed and started again on the same data a few
//! seconds later. I/O issued in the gap blocks (the data path and the FUSE client retry for the
//! volume's `ioTimeout`) and completes once the system is back; nothing fails, ext4 stays
//! read-write with no error recorded, and every byte written before reads back.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::*;
use integration_tests::csi::{self, Attachment, KubeletPaths};
use integration_tests::local::LocalSystem;
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
    eprintln!("skipped: needs root for FUSE, loop devices and mounts");
    false
}

fn cap(mode: Mode, fs: &str, flags: &[&str]) -> VolumeCapability {
    csi::cap(mode, Some(fs), flags)
}

/// Controller and node clients of a plugin's socket, once its probe says ready.
async fn plugin(sock: &Path) -> (ControllerClient<Channel>, NodeClient<Channel>) {
    let ch = csi::ready_channel(sock).await;
    (ControllerClient::new(ch.clone()), NodeClient::new(ch))
}

/// File `i`'s bytes: distinct per file and per position.
fn file_bytes(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((j * 31 + i * 7 + j / 4099) % 251) as u8).collect()
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The mount options of the mount at `path` (from /proc/mounts).
fn mount_options(path: &Path) -> Option<(String, String)> {
    std::fs::read_to_string("/proc/mounts").unwrap().lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&path.to_string_lossy().as_ref())).then(|| (f[0].to_string(), f[3].to_string()))
    })
}

/// Writes `data` to `path` and fsyncs it in a thread of its own (it blocks while the system is
/// down); the handle gives the outcome.
fn write_in_background(path: PathBuf, data: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || write_synced(&path, &data))
}

/// Waits up to `within` for `h` to finish and gives its outcome.
fn finish(h: std::thread::JoinHandle<std::io::Result<()>>, within: Duration, what: &str) -> std::io::Result<()> {
    let deadline = Instant::now() + within;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "{what} still blocked {within:?} after the system came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    h.join().expect("writer thread")
}

/// SIGKILLs cairn-local, runs `during` (which starts I/O that must block), keeps the system down
/// for `gap`, starts it again.
fn outage(local: &mut LocalSystem, gap: Duration, during: impl FnOnce()) {
    local.kill9();
    let down = Instant::now();
    during();
    std::thread::sleep(gap.saturating_sub(down.elapsed()));
    local.restart();
    eprintln!("cairn-local down for {:?} (start included)", down.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_on_a_block_volume_survives_a_restart_of_the_local_system_still_writable() {
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut local = LocalSystem::start(dir.path());
    let sock = local.socket("CSI_BLOCK_ENDPOINT");
    let (mut c, mut n) = plugin(&sock).await;
    let node_id = n.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner().node_id;
    let fs_cap = || cap(Mode::SingleNodeWriter, "ext4", &[]);
    let params: HashMap<String, String> =
        [("replicas", "1"), ("minReplicas", "1"), ("ioTimeout", "90")].map(|(k, v)| (k.into(), v.into())).into();
    let vol = c
        .create_volume(CreateVolumeRequest {
            name: "pv-outage".into(),
            capacity_range: Some(CapacityRange { required_bytes: 128 * MIB, limit_bytes: 0 }),
            volume_capabilities: vec![fs_cap()],
            parameters: params,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let ctx = c
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            node_id: node_id.clone(),
            volume_capability: Some(fs_cap()),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    let paths = KubeletPaths::new(&local.root, "p1", "pv-outage");
    let att = Attachment {
        volume_id: vol.volume_id.clone(),
        publish_context: ctx,
        volume_context: vol.volume_context.clone(),
        cap: fs_cap(),
    };
    csi::stage_and_publish(&mut n, &att, &paths).await.unwrap();
    let (staging, target) = (paths.staging.clone(), paths.target.clone());
    let (dev, opts) = mount_options(&target).expect("published mount");
    assert!(opts.split(',').any(|o| o == "rw"), "published read-write: {opts}");
    let ext4_errors = PathBuf::from("/sys/fs/ext4").join(dev.trim_start_matches("/dev/")).join("errors_count");

    // Files written and fsynced before the outage.
    let before: Vec<(PathBuf, Vec<u8>)> =
        (0..12).map(|i| (target.join(format!("before-{i}.bin")), file_bytes(i, 300_000 + i * 4096))).collect();
    for (p, d) in &before {
        write_synced(p, d).unwrap();
    }

    // cairn-local goes away; a write and fsync in the gap blocks, then completes.
    let during = file_bytes(99, 2 << 20);
    let mut writer = None;
    outage(&mut local, Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(500));
        writer = Some(write_in_background(target.join("during.bin"), during.clone()));
        std::thread::sleep(Duration::from_secs(2));
        assert!(!writer.as_ref().unwrap().is_finished(), "an fsync returned while the whole system was down");
    });
    finish(writer.unwrap(), Duration::from_secs(90), "the write and fsync issued in the gap")
        .expect("the write and fsync issued during the outage completed without error");

    // Still read-write, no ext4 error recorded, new files can be made and synced.
    let (_, opts) = mount_options(&target).expect("still mounted");
    assert!(opts.split(',').any(|o| o == "rw"), "remounted read-only after the outage: {opts}");
    let (_, staging_opts) = mount_options(&staging).expect("staging still mounted");
    assert!(staging_opts.split(',').any(|o| o == "rw"), "staging remounted read-only: {staging_opts}");
    if let Ok(count) = std::fs::read_to_string(&ext4_errors) {
        assert_eq!(count.trim(), "0", "ext4 recorded errors ({})", ext4_errors.display());
    }
    write_synced(&target.join("after.bin"), b"written after the outage").expect("a new file after the outage");
    for (p, d) in &before {
        assert!(std::fs::read(p).unwrap() == *d, "{} changed across the outage", p.display());
    }
    assert!(std::fs::read(target.join("during.bin")).unwrap() == during, "during.bin reads back");

    // Tear down through the new plugin.
    let (mut c, mut n) = plugin(&local.socket("CSI_BLOCK_ENDPOINT")).await;
    csi::unpublish_and_unstage(&mut n, &vol.volume_id, &paths).await.unwrap();
    c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        node_id,
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_volume(DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(integration_tests::csi::mounts_under(&local.root), Vec::<String>::new(), "mounts left behind");
    local.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_filesystem_mount_blocks_and_completes_across_a_restart_of_the_local_system() {
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut local = LocalSystem::start(dir.path());
    let (mut c, mut n) = plugin(&local.socket("CSI_FS_ENDPOINT")).await;
    // The mount option overrides the StorageClass's ioTimeout (0 would fail at once).
    let fs_cap = || cap(Mode::MultiNodeMultiWriter, "", &["ioTimeout=90"]);
    let vol = c
        .create_volume(CreateVolumeRequest {
            name: "pv-fs-outage".into(),
            capacity_range: Some(CapacityRange { required_bytes: 256 * MIB, limit_bytes: 0 }),
            volume_capabilities: vec![fs_cap()],
            parameters: [("ioTimeout".to_string(), "0".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let paths = KubeletPaths::new(&local.root, "p1", "pv-fs-outage");
    let att = Attachment {
        volume_id: vol.volume_id.clone(),
        publish_context: HashMap::new(),
        volume_context: vol.volume_context.clone(),
        cap: fs_cap(),
    };
    csi::stage_and_publish(&mut n, &att, &paths).await.unwrap();
    let target = paths.target.clone();
    let before = file_bytes(1, 1 << 20);
    write_synced(&target.join("before.bin"), &before).unwrap();
    std::fs::create_dir(target.join("dir")).unwrap();

    // A file created before the outage is written and fsynced during it: the commit of its
    // blocks (pool puts, then the metadata transaction) waits for the system.
    let during = file_bytes(2, 3 << 20);
    let mut writer = None;
    outage(&mut local, Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(500));
        writer = Some(write_in_background(target.join("dir/during.bin"), during.clone()));
        std::thread::sleep(Duration::from_secs(2));
        assert!(!writer.as_ref().unwrap().is_finished(), "an fsync returned while the whole system was down");
    });
    finish(writer.unwrap(), Duration::from_secs(90), "the write and fsync issued in the gap")
        .expect("the write and fsync issued during the outage completed without error");
    assert!(std::fs::read(target.join("dir/during.bin")).unwrap() == during, "during.bin reads back");
    assert!(std::fs::read(target.join("before.bin")).unwrap() == before, "before.bin unchanged");
    write_synced(&target.join("after.bin"), b"after").expect("a new file after the outage");

    let (mut c, mut n) = plugin(&local.socket("CSI_FS_ENDPOINT")).await;
    csi::unpublish_and_unstage(&mut n, &vol.volume_id, &paths).await.unwrap();
    c.delete_volume(DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(integration_tests::csi::mounts_under(&local.root), Vec::<String>::new(), "mounts left behind");
    local.stop();
}
