//! The FUSE + loop front end for real (root: FUSE mount, loop device, mkfs, mount): a volume
//! attached as /dev/loopN, formatted ext4, written through the file system, detached; then a
//! fresh attachment (a new engine, the block map and the journal to go by) mounts it and reads
//! every byte back; and fsx on ext4 with folds running, then a replay. Cleans up its mounts and
//! loop devices even when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use block_frontend::BlockDevice;
use block_frontend::fuse_loop::FuseLoop;
use cluster::{ChunkClient, ClientConfig};
use integration_tests::meta::meta_cluster;
use integration_tests::{NodeProc, random_bytes};
use metadata_client::{MetaClient, Txn};
use volume_engine::{Geometry, Volume, set_generation};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unmounts (lazily) and detaches whatever the test left behind, even on panic.
struct Cleanup {
    fs: PathBuf,
    fuse: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.fs).output();
        if let Ok(out) = Command::new("losetup").arg("-j").arg(self.fuse.join("volume")).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).output();
                }
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.fuse).output();
    }
}

fn mount_fs(dev: &Path, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    run("mount", &[&dev.to_string_lossy(), &at.to_string_lossy()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext4_on_a_volume_over_fuse_and_loop() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let _node = NodeProc::start(
        &dir.path().join("n1"),
        &["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"],
    );
    let mc = MetaClient::new(std::slice::from_ref(&api)).unwrap();
    let pool = ChunkClient::new(mc.clone(), ClientConfig { replicas: 1, min_replicas: 1, ..Default::default() })
        .await
        .unwrap();
    pool.wait_for_up(1, Duration::from_secs(30)).await.unwrap();
    let id = "blk-00000000000000000000000000000003";
    assert!(mc.txn(set_generation(Txn::new(), id, 1)).await.unwrap().succeeded);
    let g = Geometry { capacity: 64 << 20, block_size: 64 << 10 };
    let (fuse, fs) = (dir.path().join("fuse"), dir.path().join("fs"));
    let _cleanup = Cleanup { fs: fs.clone(), fuse: fuse.clone() };

    let vol = Arc::new(Volume::open(mc.clone(), pool.clone(), id, g, 1).await.unwrap());
    let dev: Box<dyn BlockDevice> = Box::new(FuseLoop::attach(vol.clone(), &fuse).await.unwrap());
    let devp = dev.path().to_path_buf();
    assert!(devp.to_string_lossy().starts_with("/dev/loop"), "{}", devp.display());
    let size: u64 = run("blockdev", &["--getsize64", &devp.to_string_lossy()]).trim().parse().unwrap();
    assert_eq!(size, g.capacity, "the device is the volume's size");
    let dev_s = devp.to_string_lossy().to_string();
    tokio::task::spawn_blocking(move || run("mkfs.ext4", &["-q", "-F", &dev_s])).await.unwrap();
    mount_fs(&devp, &fs);
    let payload = random_bytes(5 << 20 | 12345);
    let tree = fs.join("a/b/c");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("data.bin"), &payload).unwrap();
    std::fs::File::open(tree.join("data.bin")).unwrap().sync_all().unwrap();
    run("umount", &[&fs.to_string_lossy()]);
    dev.detach().await.unwrap();
    vol.fold().await.unwrap(); // from the journal into chunks
    assert!(vol.allocated_blocks().await > 80, "the file's blocks are in the pool: {}", vol.allocated_blocks().await);
    drop(vol);

    // A fresh attachment knows only the block map: everything is there.
    let vol = Arc::new(Volume::open(mc.clone(), pool.clone(), id, g, 1).await.unwrap());
    let dev: Box<dyn BlockDevice> = Box::new(FuseLoop::attach(vol.clone(), &fuse).await.unwrap());
    let dev_s = dev.path().to_string_lossy().to_string();
    let fsck =
        tokio::task::spawn_blocking(move || Command::new("fsck.ext4").args(["-n", "-f", &dev_s]).output().unwrap())
            .await
            .unwrap();
    assert!(fsck.status.success(), "fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    mount_fs(dev.path(), &fs);
    assert!(std::fs::read(tree.join("data.bin")).unwrap() == payload, "the file reads back byte for byte");
    run("umount", &[&fs.to_string_lossy()]);
    dev.detach().await.unwrap();
}

/// fsx on ext4 on a volume whose writes go through the journal, with folds running beside it
/// (so reads meet unfolded extents, folded chunks and everything between); then the attachment
/// is dropped without a final fold (as a crash after the last fsync would leave it), a new one
/// replays the journal, fsck finds ext4 clean and the file is exactly fsx's model.
/// `CAIRN_FSX_OPS` makes it a long run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_on_ext4_on_a_journaled_volume() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let _node = NodeProc::start(
        &dir.path().join("n1"),
        &["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"],
    );
    let mc = MetaClient::new(std::slice::from_ref(&api)).unwrap();
    let pool = ChunkClient::new(mc.clone(), ClientConfig { replicas: 1, min_replicas: 1, ..Default::default() })
        .await
        .unwrap();
    pool.wait_for_up(1, Duration::from_secs(30)).await.unwrap();
    let id = "blk-00000000000000000000000000000f5c";
    assert!(mc.txn(set_generation(Txn::new(), id, 1)).await.unwrap().succeeded);
    let g = Geometry { capacity: 128 << 20, block_size: 64 << 10 };
    let (fuse, fs) = (dir.path().join("fuse"), dir.path().join("fs"));
    let _cleanup = Cleanup { fs: fs.clone(), fuse: fuse.clone() };

    let vol = Arc::new(Volume::open(mc.clone(), pool.clone(), id, g, 1).await.unwrap());
    let dev: Box<dyn BlockDevice> = Box::new(FuseLoop::attach(vol.clone(), &fuse).await.unwrap());
    let dev_s = dev.path().to_string_lossy().to_string();
    tokio::task::spawn_blocking(move || run("mkfs.ext4", &["-q", "-F", &dev_s])).await.unwrap();
    mount_fs(dev.path(), &fs);
    // Folds every 300 ms while fsx runs.
    let folding = tokio::spawn({
        let vol = vol.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                vol.fold().await.unwrap();
            }
        }
    });
    let ops = std::env::var("CAIRN_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    let o = integration_tests::fsx::FsxOptions { seed: 0xF5C, ops, max_len: 24 << 20, ..Default::default() };
    let fs2 = fs.clone();
    let model = tokio::task::spawn_blocking(move || integration_tests::fsx::fsx(&fs2, &fs2, "fsx-file", o))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("fsx on ext4 on the volume: {e}"));
    folding.abort();
    let _ = folding.await;
    eprintln!("fsx: {ops} operations, final size {} bytes, no difference", model.len());
    // ext4's own state is fsynced by unmounting; then the attachment goes without folding.
    run("umount", &[&fs.to_string_lossy()]);
    dev.detach().await.unwrap();
    vol.flush().await.unwrap();
    assert!(vol.unfolded_bytes().await > 0 || ops < 10, "some writes are in the journal only");
    drop(vol);

    assert!(mc.txn(set_generation(Txn::new(), id, 2)).await.unwrap().succeeded);
    let vol = Arc::new(Volume::open(mc.clone(), pool.clone(), id, g, 2).await.unwrap());
    let dev: Box<dyn BlockDevice> = Box::new(FuseLoop::attach(vol.clone(), &fuse).await.unwrap());
    let dev_s = dev.path().to_string_lossy().to_string();
    let fsck =
        tokio::task::spawn_blocking(move || Command::new("fsck.ext4").args(["-n", "-f", &dev_s]).output().unwrap())
            .await
            .unwrap();
    assert!(fsck.status.success(), "fsck after replay: {}", String::from_utf8_lossy(&fsck.stdout));
    mount_fs(dev.path(), &fs);
    assert!(std::fs::read(fs.join("fsx-file")).unwrap() == model, "the file after replay differs from fsx's model");
    run("umount", &[&fs.to_string_lossy()]);
    dev.detach().await.unwrap();
}
