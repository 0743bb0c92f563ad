//! Lifecycle: the local all-in-one, aged fast (a metadata snapshot and log purge every 200
//! entries, 16 MiB segments collected every few seconds, scrubs, a pool GC round between
//! rounds), crashes as a whole — SIGKILL of every process, mounts and loop devices taken away
//! as a reboot would — at random moments under load on all three frontends at once:
//! - S3: PUTs (0 B to 3 MiB), overwrites, DELETEs and multipart uploads, three clients;
//! - the shared filesystem: whole-file replacement by write, fsync, rename, fsync of the
//!   directory, and unlinks;
//! - a raw block volume: 4 KiB records written with O_DIRECT across it, then fdatasync.
//!
//! After each restart the volumes are staged and published again (as the kubelet does) and
//! every acknowledged write is checked: the last acknowledged state or one begun after it,
//! never another, never a mix, never a partial object. `CAIRN_LIFECYCLE_ROUNDS` sets the rounds
//! (default 3); `scripts/soak.sh` runs many.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::*;
use integration_tests::csi::{self, Attachment, KubeletPaths};
use integration_tests::lifecycle::{SENTINEL, Tally, block_writer, fs_writer};
use integration_tests::local::LocalSystem;
use integration_tests::s3::{python, repo_root};
use rand::Rng;
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;
const BLOCK_SIZE: i64 = 64 * MIB;
const SLOTS: u64 = 256;
const STRIDE: u64 = (BLOCK_SIZE as u64) / SLOTS;

fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
    csi::cap(mode, fs, &[])
}

/// The two volumes and how to (re)attach them through the CSI sockets.
struct Volumes {
    block: Attachment,
    block_paths: KubeletPaths,
    fs: Attachment,
    fs_paths: KubeletPaths,
}

async fn channel(sys: &LocalSystem, key: &str) -> Channel {
    csi_kit::connect_unix(&sys.socket(key)).await.expect("connect to a CSI socket")
}

async fn create_volumes(sys: &LocalSystem, root: &Path) -> Volumes {
    let mut bc = ControllerClient::new(channel(sys, "CSI_BLOCK_ENDPOINT").await);
    let block = bc
        .create_volume(CreateVolumeRequest {
            name: "life-block".into(),
            capacity_range: Some(CapacityRange { required_bytes: BLOCK_SIZE, limit_bytes: 0 }),
            volume_capabilities: vec![cap(Mode::SingleNodeWriter, None)],
            ..Default::default()
        })
        .await
        .expect("create the block volume")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    let block_ctx = bc
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: block.clone(),
            node_id: "local-1".into(),
            volume_capability: Some(cap(Mode::SingleNodeWriter, None)),
            ..Default::default()
        })
        .await
        .expect("attach the block volume")
        .into_inner()
        .publish_context;
    let mut fc = ControllerClient::new(channel(sys, "CSI_FS_ENDPOINT").await);
    let fs = fc
        .create_volume(CreateVolumeRequest {
            name: "life-fs".into(),
            capacity_range: Some(CapacityRange { required_bytes: 256 * MIB, limit_bytes: 0 }),
            volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter, Some(""))],
            ..Default::default()
        })
        .await
        .expect("create the filesystem")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    Volumes {
        block: Attachment {
            volume_id: block,
            publish_context: block_ctx,
            volume_context: HashMap::new(),
            cap: cap(Mode::SingleNodeWriter, None),
        },
        block_paths: KubeletPaths {
            staging: root.join("kubelet/plugins/staging/life-block"),
            target: root.join("kubelet/pods/p1/volumeDevices/life-block"),
        },
        fs: Attachment {
            volume_id: fs,
            publish_context: HashMap::new(),
            volume_context: HashMap::new(),
            cap: cap(Mode::MultiNodeMultiWriter, Some("")),
        },
        fs_paths: KubeletPaths::new(root, "p1", "life-fs"),
    }
}

/// NodeStage + NodePublish of both volumes (again after a crash: staging finds the dead data
/// paths and recovers them).
async fn attach(sys: &LocalSystem, v: &Volumes) {
    let mut bn = NodeClient::new(channel(sys, "CSI_BLOCK_ENDPOINT").await);
    csi::stage_and_publish(&mut bn, &v.block, &v.block_paths)
        .await
        .unwrap_or_else(|e| panic!("stage and publish the block volume: {e}\n{}", sys.log()));
    let mut fnode = NodeClient::new(channel(sys, "CSI_FS_ENDPOINT").await);
    csi::stage_and_publish(&mut fnode, &v.fs, &v.fs_paths)
        .await
        .unwrap_or_else(|e| panic!("stage and publish the filesystem: {e}\n{}", sys.log()));
}

/// The S3 load process (`tests/s3/lifecycle.py load`), with the local system's endpoint and key.
struct S3Load {
    child: Child,
    ledger: PathBuf,
    env: Vec<(String, String)>,
}

impl S3Load {
    /// The environment for an endpoint and key.
    fn env_for(endpoint: &str, key: &(String, String)) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.into()),
            ("AWS_ACCESS_KEY_ID".into(), key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), key.1.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ];
        env.push(("AWS_CONFIG_FILE".into(), "/dev/null".into()));
        env.push(("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()));
        env.push(("PYTHONUNBUFFERED".into(), "1".into()));
        env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
        env
    }

    fn command(env: &[(String, String)], args: &[&str]) -> Command {
        let mut c = Command::new(python());
        c.arg(repo_root().join("tests/s3/lifecycle.py")).args(args).envs(env.iter().cloned()).stdin(Stdio::null());
        c
    }

    /// The local system's endpoint and first key.
    fn env_of(sys: &LocalSystem) -> Vec<(String, String)> {
        let key = (sys.var("AWS_ACCESS_KEY_ID").to_string(), sys.var("AWS_SECRET_ACCESS_KEY").to_string());
        S3Load::env_for(sys.var("AWS_ENDPOINT_URL"), &key)
    }

    fn start(env: Vec<(String, String)>, root: &Path) -> S3Load {
        let ledger = root.join("s3-ledger.jsonl");
        let log = std::fs::File::create(root.join("s3-load.log")).expect("log");
        let child = S3Load::command(&env, &["load", &ledger.to_string_lossy()])
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start the S3 load");
        S3Load { child, ledger, env }
    }

    fn acked(&self) -> u64 {
        std::fs::read_to_string(&self.ledger).unwrap_or_default().matches("\"st\": \"ack\"").count() as u64
    }

    /// Operations that failed (errors seen by the client) so far.
    fn errors(&self) -> u64 {
        std::fs::read_to_string(&self.ledger).unwrap_or_default().matches("\"st\": \"err\"").count() as u64
    }

    /// Waits until one more operation is acknowledged.
    fn wait_for_ack(&self, within: Duration) {
        let before = self.acked();
        let deadline = Instant::now() + within;
        while self.acked() == before {
            assert!(Instant::now() < deadline, "no S3 write acknowledged in {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn flag(&self, suffix: &str) -> PathBuf {
        PathBuf::from(format!("{}{suffix}", self.ledger.display()))
    }

    fn pause(&mut self) {
        std::fs::write(self.flag(".pause"), b"").expect("pause flag");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.flag(".paused").exists() {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                panic!("the S3 load exited with {st}");
            }
            assert!(Instant::now() < deadline, "the S3 load did not pause in 300 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resume(&self) {
        let _ = std::fs::remove_file(self.flag(".pause"));
    }

    /// Runs the check (the load paused): its counts.
    fn check(&self) -> Tally {
        let out =
            S3Load::command(&self.env, &["verify", &self.ledger.to_string_lossy()]).output().expect("run the S3 check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the S3 check failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.stderr.is_empty() {
            eprintln!("S3 check:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let line = stdout.lines().last().unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("S3 check printed {line:?}: {e}"));
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
        Tally { acked: n("acked"), checked: n("keys"), lost: n("lost"), wrong: n("wrong"), partial: n("partial") }
    }
}

impl Drop for S3Load {
    fn drop(&mut self) {
        let _ = std::fs::write(self.flag(".stop"), b"");
        let _ = self.resume_and_wait();
    }
}

impl S3Load {
    fn resume_and_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.resume();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// A value of a Prometheus series (summed over its labels), or 0.
fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let Ok((200, body)) = integration_tests::http_get(addr, "/metrics") else { return 0.0 };
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `cairn` with the local system's environment; panics with its output on failure.
fn cairn(sys: &LocalSystem, args: &[&str]) -> String {
    let out =
        Command::new(integration_tests::bin("cairn")).args(args).envs(sys.env.iter()).output().expect("run cairn");
    assert!(
        out.status.success(),
        "cairn {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rounds() -> usize {
    std::env::var("CAIRN_LIFECYCLE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_local_system_crashes_under_load_on_every_frontend_and_loses_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mounts");
        return;
    }
    python();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut sys = LocalSystem::start_with(
        root,
        &[
            "--snapshot-logs",
            "200",
            "--segment-size",
            &(16 << 20).to_string(),
            "--gc-interval-secs",
            "3",
            "--scrub-interval-secs",
            "7",
        ],
    );
    let meta_http = sys.addr("--meta-http");
    let node_http = sys.addr("--node-http");
    let vols = create_volumes(&sys, root).await;
    attach(&sys, &vols).await;
    std::fs::write(vols.fs_paths.target.join(SENTINEL), b"").expect("sentinel");

    // The load's own files live apart: a crash kills every process that names the root.
    let harness = tempfile::tempdir().expect("tempdir");
    let mut s3 = S3Load::start(S3Load::env_of(&sys), harness.path());
    let block = block_writer(&vols.block_paths.target, SLOTS, STRIDE, rand::thread_rng().r#gen());
    let fs = fs_writer(&vols.fs_paths.target, 12, rand::thread_rng().r#gen());
    let (mut totals, mut gc_runs, mut snapshots) = ([Tally::default(); 3], 0.0, 0.0);
    let started = Instant::now();
    let n = rounds();
    for round in 1..=n {
        // Load for a while, each writer acknowledging something, then a crash at a random moment.
        block.wait_for_acks(1, Duration::from_secs(120));
        fs.wait_for_acks(1, Duration::from_secs(120));
        s3.wait_for_ack(Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(500..4000)));
        gc_runs += metric(node_http, "cairn_node_gc_runs_total");
        snapshots = metric(meta_http, "cairn_meta_snapshot_index").max(snapshots);
        sys.crash();
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..2000)));
        sys.restart();
        attach(&sys, &vols).await;

        block.pause(Duration::from_secs(120));
        fs.pause(Duration::from_secs(120));
        s3.pause();
        let found =
            [block.check_slots(&vols.block_paths.target, STRIDE), fs.check_files(&vols.fs_paths.target), s3.check()];
        eprintln!(
            "lifecycle round {round}/{n} ({:?}): block {:?}; fs {:?}; s3 {:?}",
            started.elapsed(),
            found[0],
            found[1],
            found[2]
        );
        if found.iter().any(|f| !f.clean())
            && let Some(keep) = std::env::var_os("CAIRN_LIFECYCLE_KEEP")
        {
            // For a post-mortem: the writers' ledgers and the system's data directory.
            let keep = std::path::PathBuf::from(keep).join(format!("round-{round}"));
            std::fs::create_dir_all(&keep).ok();
            let _ = std::process::Command::new("cp").arg("-a").arg(harness.path()).arg(keep.join("harness")).status();
            std::fs::write(keep.join("system.log"), sys.log()).ok();
            eprintln!("kept the ledgers in {} and the data in {}", keep.display(), dir.path().display());
            std::mem::forget(dir);
            std::mem::forget(harness);
            panic!("round {round}: acknowledged writes lost, wrong or partial: {found:?}");
        }
        for (t, f) in totals.iter_mut().zip(found) {
            assert!(f.clean(), "round {round}: acknowledged writes lost, wrong or partial: {f:?}\n{}", sys.log());
            let acked = f.acked;
            t.add(f);
            t.acked = acked; // the writers count from their start
        }
        // Age the pool: a GC round while nothing writes (its short window is safe only then).
        cairn(&sys, &["cluster", "gc", "--window-secs", "1"]);
        std::thread::sleep(Duration::from_secs(3));
        block.resume();
        fs.resume();
        s3.resume();
    }
    block.pause(Duration::from_secs(120));
    fs.pause(Duration::from_secs(120));
    s3.pause();
    let names = ["block", "fs", "s3"];
    for (name, t) in names.iter().zip(totals) {
        eprintln!(
            "lifecycle summary: {name}: {n} crash rounds, {} acknowledged writes, {} checks, lost {}, wrong {}, partial {}",
            t.acked, t.checked, t.lost, t.wrong, t.partial
        );
    }
    eprintln!(
        "lifecycle aging: metadata snapshot index {snapshots} (one snapshot and log purge per 200 entries), \
         segment GC passes {gc_runs}, block sessions {}, fs sessions {}",
        block.sessions(),
        fs.sessions()
    );
    assert!(totals.iter().all(|t| t.acked > 0), "every frontend acknowledged writes: {totals:?}");
    assert!(snapshots >= 400.0, "the metadata log was compacted at least twice: snapshot index {snapshots}");
}

/// The pool test's three loads: block writes on a raw device, filesystem writes on a csi-fs
/// mount, S3.
struct PoolLoad<'a> {
    block: &'a integration_tests::lifecycle::Writer<integration_tests::lifecycle::BlockLedger>,
    dev: &'a Path,
    fs: &'a integration_tests::lifecycle::Writer<integration_tests::lifecycle::FsLedger>,
    mnt: &'a Path,
}

/// Pauses the writers and the S3 load, checks everything, resumes; returns the three tallies
/// (block, fs, s3).
fn check_all(what: &str, l: &PoolLoad, s3: &mut S3Load) -> [Tally; 3] {
    l.block.pause(Duration::from_secs(180));
    l.fs.pause(Duration::from_secs(180));
    s3.pause();
    let found = [l.block.check_slots(l.dev, STRIDE), l.fs.check_files(l.mnt), s3.check()];
    eprintln!(
        "lifecycle pool, after {what}: block {:?}; fs {:?}; s3 {:?}; sessions ended so far: block {:?}, fs {:?}; \
         S3 errors so far {}",
        found[0],
        found[1],
        found[2],
        l.block.errors(),
        l.fs.errors(),
        s3.errors()
    );
    for f in &found {
        assert!(f.clean(), "after {what}: acknowledged writes lost, wrong or partial: {f:?}");
    }
    l.block.resume();
    l.fs.resume();
    s3.resume();
    found
}

/// Pauses the two writers, checks them, resumes (the S3 load goes on: its pause waits for
/// requests in flight, which costs tens of seconds); returns the block and fs tallies.
fn check_writers(what: &str, l: &PoolLoad) -> [Tally; 2] {
    l.block.pause(Duration::from_secs(180));
    l.fs.pause(Duration::from_secs(180));
    let found = [l.block.check_slots(l.dev, STRIDE), l.fs.check_files(l.mnt)];
    eprintln!(
        "lifecycle pool, after {what}: block {:?}; fs {:?}; sessions ended so far: block {:?}, fs {:?}",
        found[0],
        found[1],
        l.block.errors(),
        l.fs.errors()
    );
    for f in &found {
        assert!(f.clean(), "after {what}: acknowledged writes lost, wrong or partial: {f:?}");
    }
    l.block.resume();
    l.fs.resume();
    found
}

/// Writes `data` to `path` and fsyncs it in a thread of its own (it blocks while the pool
/// cannot store a chunk); the handle gives the outcome.
fn write_in_background(path: PathBuf, data: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&data)?;
        f.sync_all()
    })
}

/// A pool as `helm install` makes it (three metadata voters, four storage nodes holding R=3,
/// objectd, the csi-block and csi-fs plugins), aged (a metadata snapshot every 100 entries,
/// 16 MiB segments collected every 3 s), under block writes (a raw R=3 volume), filesystem
/// writes (a csi-fs mount: whole-file replacement with fsyncs, unlinks) and S3 load: first three
/// of the four storage nodes are frozen (SIGSTOP) for 8 s — below min replicas, a file's write
/// and fsync blocks, then completes; then single daemons are SIGKILLed and started again: every
/// storage node one after another (the first kept down past the pool's down threshold), every
/// voter (a rolling restart, as `helm upgrade` does), with one voter kept down long enough to
/// come back by installing the leader's snapshot; then objectd, the block node plugin, and the
/// block volume's data-path process (staged again, as the kubelet retries). After each, every
/// acknowledged write reads back exactly. Through the gap and the node and voter restarts the
/// block writer sees no error, nor do the S3 clients outside the gap, nor the filesystem writer
/// (a transaction whose answer the metadata leader's death cut off is settled by reading its
/// keys back); at the end the filesystem mount still takes a new file and unpublishes and
/// unstages cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_daemons_killed_one_by_one_under_load_lose_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mounts");
        return;
    }
    use integration_tests::NodeProc;
    use integration_tests::csi::{self, CsiProc};
    use integration_tests::daemon::Daemon;
    use integration_tests::meta::meta_cluster;

    python();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let _cleanup = Cleanup(root.to_path_buf());
    let mut voters = meta_cluster(3, root, &["--snapshot-logs", "100"]);
    let apis = voters.iter().map(|v| v.addrs.api.clone()).collect::<Vec<_>>().join(",");
    let segment = (16 << 20).to_string();
    let mut nodes: Vec<NodeProc> = (1..=4)
        .map(|i| {
            let id = format!("n{i}");
            NodeProc::start(
                &root.join(&id),
                &[
                    "--meta",
                    &apis,
                    "--node-id",
                    &id,
                    "--host",
                    &id,
                    "--replicas",
                    "3",
                    "--heartbeat-ms",
                    "200",
                    "--down-after-ms",
                    "3000",
                    "--out-after-ms",
                    "600000",
                    "--repair-interval-secs",
                    "2",
                    "--segment-size",
                    &segment,
                    "--gc-interval-secs",
                    "3",
                ],
            )
        })
        .collect();
    let s3_http: std::net::SocketAddr = format!("127.0.0.1:{}", integration_tests::free_port()).parse().unwrap();
    let s3_port = integration_tests::free_port();
    let mut objectd = Daemon::start(
        "objectd",
        vec![
            "--meta".into(),
            apis.clone(),
            "--listen".into(),
            format!("127.0.0.1:{s3_port}"),
            "--http-listen".into(),
            s3_http.to_string(),
            "--region".into(),
            "us-east-1".into(),
        ],
        root.join("objectd.log"),
        s3_http,
    );
    let key = {
        let out = Command::new(integration_tests::bin("cairn"))
            .args(["--meta", &apis, "s3", "key", "create", "--name", "life", "--admin"])
            .output()
            .expect("run cairn");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_else(|| panic!("{k} in {text}"))
        };
        (var("AWS_ACCESS_KEY_ID").to_string(), var("AWS_SECRET_ACCESS_KEY").to_string())
    };
    let state = root.join("csi-state").to_string_lossy().to_string();
    let mut plugin =
        CsiProc::start("csi-block", root, "plugin", &["--meta", &apis, "--node-id", "node-a", "--state-dir", &state]);
    let mut c = ControllerClient::new(plugin.channel().await);
    let bcap = || cap(Mode::SingleNodeWriter, None);
    let vol = c
        .create_volume(CreateVolumeRequest {
            name: "life-r3".into(),
            capacity_range: Some(CapacityRange { required_bytes: BLOCK_SIZE, limit_bytes: 0 }),
            volume_capabilities: vec![bcap()],
            parameters: [("replicas".to_string(), "3".to_string()), ("minReplicas".to_string(), "2".to_string())]
                .into(),
            ..Default::default()
        })
        .await
        .expect("create the volume")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    let ctx = c
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: vol.clone(),
            node_id: "node-a".into(),
            volume_capability: Some(bcap()),
            ..Default::default()
        })
        .await
        .expect("attach")
        .into_inner()
        .publish_context;
    let block_att =
        csi::Attachment { volume_id: vol.clone(), publish_context: ctx, volume_context: HashMap::new(), cap: bcap() };
    let block_paths =
        csi::KubeletPaths { staging: root.join("kubelet/staging/life-r3"), target: root.join("kubelet/pods/p1/dev") };
    let dev = block_paths.target.clone();
    let stage = async |ch: Channel| {
        csi::stage_and_publish(&mut NodeClient::new(ch), &block_att, &block_paths).await.expect("stage and publish");
    };
    stage(plugin.channel().await).await;

    // A shared filesystem on the same pool (R=3, at least 2 copies durable before a write is
    // acknowledged), staged and published through csi-fs's socket as the kubelet does.
    let fs_state = root.join("csi-fs-state").to_string_lossy().to_string();
    let fsplugin = CsiProc::start(
        "csi-fs",
        root,
        "fsplugin",
        &["--meta", &apis, "--node-id", "node-a", "--controller", "true", "--state-dir", &fs_state],
    );
    let fs_ch = csi::ready_channel(&fsplugin.socket).await;
    let fcap = csi::cap(Mode::MultiNodeMultiWriter, Some(""), &["ioTimeout=120"]);
    let fs_vol = ControllerClient::new(fs_ch.clone())
        .create_volume(CreateVolumeRequest {
            name: "life-fs".into(),
            capacity_range: Some(CapacityRange { required_bytes: 256 * MIB, limit_bytes: 0 }),
            volume_capabilities: vec![fcap.clone()],
            ..Default::default()
        })
        .await
        .expect("create the filesystem")
        .into_inner()
        .volume
        .expect("volume");
    let fs_att = csi::Attachment {
        volume_id: fs_vol.volume_id.clone(),
        publish_context: HashMap::new(),
        volume_context: fs_vol.volume_context.clone(),
        cap: fcap,
    };
    let fs_paths = csi::KubeletPaths::new(root, "p1", "life-fs");
    csi::stage_and_publish(&mut NodeClient::new(fs_ch.clone()), &fs_att, &fs_paths)
        .await
        .unwrap_or_else(|e| panic!("stage and publish the filesystem: {e}\n{}", fsplugin.log_text()));
    let mnt = fs_paths.target.clone();
    std::fs::write(mnt.join(SENTINEL), b"").expect("sentinel");

    let harness = tempfile::tempdir().expect("tempdir");
    let mut s3 = S3Load::start(S3Load::env_for(&format!("http://127.0.0.1:{s3_port}"), &key), harness.path());
    let block = block_writer(&dev, SLOTS, STRIDE, rand::thread_rng().r#gen());
    let fs = fs_writer(&mnt, 12, rand::thread_rng().r#gen());
    let load = PoolLoad { block: &block, dev: &dev, fs: &fs, mnt: &mnt };
    block.wait_for_acks(20, Duration::from_secs(120));
    fs.wait_for_acks(20, Duration::from_secs(120));
    s3.wait_for_ack(Duration::from_secs(300));
    check_all("warm-up", &load, &mut s3);

    let (sessions, fs_sessions, s3_errors) = (block.sessions(), fs.sessions(), s3.errors());
    // Three of the four storage nodes frozen (SIGSTOP) for 8 s, past --down-after-ms: they
    // answer nothing (calls to them hang; the pool marks them down), no chunk can get its 2
    // durable copies, so a file's write and fsync blocks, and completes once they answer again;
    // the writers ride through without an error. (Frozen rather than killed: while the block
    // volume's I/O is stuck, I/O to the host disk stalls too, so a node started then waits —
    // in its first fdatasync, or the spawn itself in a page fault — until that I/O gives up,
    // ~120 s. Seen with a diagnostic run; the kernel mechanism is not identified yet.)
    let s3_before_gap = s3.errors();
    let gap_bytes: Vec<u8> = (0..(1usize << 20)).map(|j| ((j * 31 + j / 4099) % 251) as u8).collect();
    for n in &nodes[1..] {
        n.signal(libc::SIGSTOP);
    }
    let gap_write = write_in_background(mnt.join("gap.bin"), gap_bytes.clone());
    std::thread::sleep(Duration::from_secs(8));
    let blocked = !gap_write.is_finished();
    for n in &nodes[1..] {
        n.signal(libc::SIGCONT);
    }
    assert!(blocked, "a write and fsync completed with one storage node of four answering (R=3, min 2)");
    let t0 = Instant::now();
    while !gap_write.is_finished() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the write issued in the gap still blocked 120 s after");
        std::thread::sleep(Duration::from_millis(100));
    }
    gap_write.join().expect("gap writer").expect("the write and fsync issued in the gap completed without error");
    eprintln!("lifecycle pool: the gap's write completed {:?} after the nodes were back", t0.elapsed());
    block.wait_for_acks(5, Duration::from_secs(120));
    fs.wait_for_acks(5, Duration::from_secs(120));
    let s3_gap_errors = s3.errors() - s3_before_gap;
    check_writers("three storage nodes frozen for 8 s", &load);
    assert!(std::fs::read(mnt.join("gap.bin")).expect("read gap.bin") == gap_bytes, "gap.bin reads back");

    // Rolling restart of the storage nodes, then of the voters: nothing may fail. The first
    // node stays down past --down-after-ms (the pool marks it down and places around it, still
    // meeting min replicas); the others come back after a second.
    for (i, n) in nodes.iter_mut().enumerate() {
        n.kill9();
        std::thread::sleep(Duration::from_secs(if i == 0 { 5 } else { 1 }));
        n.restart();
        block.wait_for_acks(5, Duration::from_secs(120));
        fs.wait_for_acks(5, Duration::from_secs(120));
        eprintln!("lifecycle pool: storage node n{} restarted", i + 1);
    }
    s3.wait_for_ack(Duration::from_secs(300));
    check_all("a rolling restart of the storage nodes", &load, &mut s3);
    // The filesystem writer through every storage-node outage (the gap and the rolling restart).
    let (fs_node_errors, fs_errors_before_voters) = (fs.sessions() - fs_sessions, fs.errors().len());

    let m = metadata_client::MetaClient::new(&voters.iter().map(|v| v.addrs.api.as_str()).collect::<Vec<_>>())
        .expect("metadata client");
    let lagging = {
        let leader = m.status().await.expect("status").leader_id;
        (1..=3u64).find(|i| *i != leader).expect("a follower") as usize - 1
    };
    for i in 0..voters.len() {
        voters[i].kill9();
        if i == lagging {
            // Down while hundreds of entries commit: it comes back by installing a snapshot.
            // (Block writes are journaled on storage nodes and commit to the metadata service
            // only when folded, so the test commits entries of its own as well.)
            block.wait_for_acks(300, Duration::from_secs(300));
            s3.wait_for_ack(Duration::from_secs(300));
            for k in 0..600 {
                m.put(format!("test/lagging/{k}").as_bytes(), b"x").await.expect("a metadata put");
            }
        } else {
            std::thread::sleep(Duration::from_secs(1));
        }
        voters[i].restart();
        voters[i].wait_healthy(Duration::from_secs(60));
        block.wait_for_acks(5, Duration::from_secs(120));
        fs.wait_for_acks(5, Duration::from_secs(120));
        eprintln!("lifecycle pool: voter {} restarted", i + 1);
    }
    s3.wait_for_ack(Duration::from_secs(300));
    check_all("a rolling restart of the voters", &load, &mut s3);
    // A file create that met the metadata leader's SIGKILL used to fail with EIO (the
    // transaction's outcome unknown); fs-meta settles such transactions by reading back their
    // keys, so the filesystem writer sees no error through the voters' restart either.
    let fs_voter_errors: Vec<String> = fs.errors().split_off(fs_errors_before_voters);
    assert!(fs_voter_errors.is_empty(), "the filesystem writer failed through the voters' restart: {fs_voter_errors:?}");
    let rolling_errors = (block.sessions() - sessions, fs_node_errors, s3.errors() - s3_errors - s3_gap_errors);
    // Repair settles: the volume is whole again (every chunk on its R nodes).
    let t0 = Instant::now();
    loop {
        let cond = c
            .controller_get_volume(ControllerGetVolumeRequest { volume_id: vol.clone() })
            .await
            .expect("ControllerGetVolume")
            .into_inner()
            .status
            .and_then(|s| s.volume_condition)
            .expect("a volume condition");
        if !cond.abnormal {
            eprintln!("lifecycle pool: the volume is whole {:?} after the rolling restarts", t0.elapsed());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "repair did not settle in 180 s: {cond:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        voters[lagging].log_text().contains("snapshot installed"),
        "voter {} came back without installing a snapshot:\n{}",
        lagging + 1,
        voters[lagging].log_text()
    );

    // objectd, the node plugin, the volume's data path.
    objectd.kill9();
    std::thread::sleep(Duration::from_secs(1));
    objectd.restart();
    s3.wait_for_ack(Duration::from_secs(300));
    check_all("objectd's restart", &load, &mut s3);
    plugin.restart();
    block.wait_for_acks(5, Duration::from_secs(120));
    check_all("the node plugin's restart", &load, &mut s3);
    let staged = std::fs::read(root.join("csi-state/volumes").join(&vol).join("staged.json")).expect("staged.json");
    let pid = serde_json::from_slice::<serde_json::Value>(&staged).expect("staged.json is JSON")["pid"]
        .as_u64()
        .expect("the data path's pid") as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));
    stage(plugin.channel().await).await;
    block.wait_for_acks(5, Duration::from_secs(120));
    let last = check_all("the data path's death and a new stage", &load, &mut s3);

    // The filesystem mount still works: a new file, then a clean unpublish and unstage.
    fs.pause(Duration::from_secs(180));
    std::fs::write(mnt.join("after.bin"), b"after the outages").expect("a new file on the mount");
    assert_eq!(std::fs::read(mnt.join("after.bin")).expect("read after.bin"), b"after the outages");
    csi::unpublish_and_unstage(&mut NodeClient::new(fs_ch), &fs_att.volume_id, &fs_paths)
        .await
        .expect("unpublish and unstage the filesystem");
    let left: Vec<String> = csi::mounts_under(root).into_iter().filter(|m| m.contains("life-fs")).collect();
    assert!(left.is_empty(), "filesystem mounts left behind: {left:?}");

    eprintln!(
        "lifecycle pool summary: block {} acknowledged writes, fs {}, s3 {} (last checks {:?} / {:?} / {:?}); \
         errors through the rolling restarts and the 8 s gap: block {}, fs {} (storage nodes), s3 {} (and \
         {s3_gap_errors} S3 errors in the gap, where S3 may fail); fs errors through the voters' restart: \
         {fs_voter_errors:?}",
        last[0].acked,
        last[1].acked,
        last[2].acked,
        last[0],
        last[1],
        last[2],
        rolling_errors.0,
        rolling_errors.1,
        rolling_errors.2
    );
    let s3_err_lines: Vec<String> = std::fs::read_to_string(&s3.ledger)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"st\": \"err\""))
        .map(String::from)
        .collect();
    assert_eq!(
        rolling_errors,
        (0, 0, 0),
        "the restarts made I/O fail (block sessions, fs sessions through the storage-node outages, S3 errors): \
         block {:?}; fs {:?}; S3 {s3_err_lines:?}",
        block.errors(),
        fs.errors()
    );
    let _ = &mut nodes;
}

/// Kills the per-volume processes and removes every mount under the test's directory, even when
/// the test fails midway.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        integration_tests::csi::kill_processes_under(&self.0);
        integration_tests::csi::cleanup_mounts_under(&self.0);
    }
}
