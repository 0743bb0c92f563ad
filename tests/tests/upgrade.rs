//! Upgrade safety: a `cairn-local` data directory written by the previous release
//! (`tests/fixtures/local-<commit>.tar.xz`, made by `make_fixture` below with that release's
//! binaries) starts under this build, and everything its expected-contents JSON lists reads back
//! through real clients: S3 objects (a versioned bucket by version id, a multipart object, an
//! upload left open) with boto3, metadata keys with the `cairn` CLI, a csi-block volume and its
//! snapshot staged through CSI, a csi-fs filesystem's files through its FUSE mount, a
//! `cairn chunk put` file by its manifest. Then it takes new writes and restarts once more.
//!
//! To make a new fixture with the binaries in `target/debug` (as root):
//! `CAIRN_FIXTURE_OUT=$PWD/tests/fixtures cargo test -p integration-tests --test upgrade make_fixture -- --ignored`

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cairn_proto::csi::v1::*;
use integration_tests::bin;
use integration_tests::local::LocalSystem;
use integration_tests::s3::{python, repo_root};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// The fixture this build must start: the previous release's data directory.
const FIXTURE: &str = "local-ce8ed57";
const MIB: usize = 1 << 20;
const BLOCK_BYTES: usize = 32 * MIB;

/// `len` bytes of numbered text lines tagged `tag`: distinct, and small once compressed.
fn pattern(tag: &str, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(format!("{tag} {i:010}\n").as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Runs `cairn` with the system's env; asserts success, returns stdout trimmed.
fn cairn(sys: &LocalSystem, args: &[&str]) -> String {
    let out = Command::new(bin("cairn")).envs(&sys.env).args(args).output().unwrap();
    assert!(out.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `tests/fixtures/upgrade_s3.py <mode> <dir>` with boto3; returns its JSON.
fn s3_script(sys: &LocalSystem, mode: &str, dir: &Path) -> Value {
    let out = Command::new(python())
        .arg(repo_root().join("tests/fixtures/upgrade_s3.py"))
        .args([mode, dir.to_str().unwrap()])
        .env_clear()
        .envs(&sys.env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "upgrade_s3.py {mode}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("upgrade_s3.py prints JSON")
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

fn fs_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::MultiNodeMultiWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

/// A CSI driver's socket, once its probe says ready.
async fn csi(sock: &Path) -> Channel {
    let ch = csi_kit::connect_unix(sock).await.unwrap();
    let mut id = identity_client::IdentityClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while id.probe(ProbeRequest {}).await.ok().and_then(|r| r.into_inner().ready) != Some(true) {
        assert!(Instant::now() < deadline, "{} never ready", sock.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ch
}

async fn create(ch: &Channel, name: &str, bytes: usize, cap: VolumeCapability, src: Option<String>) -> String {
    let mut c = controller_client::ControllerClient::new(ch.clone());
    let req = CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: bytes as i64, limit_bytes: 0 }),
        volume_capabilities: vec![cap],
        volume_content_source: src.map(|snapshot_id| VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource { snapshot_id })),
        }),
        ..Default::default()
    };
    c.create_volume(req)
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// ControllerPublish on `local-1` (block volumes), NodeStage and NodePublish at `<base>/staging` and
/// `<base>/target`, `f` on the target path, then all of it undone.
async fn attached<T>(
    ch: &Channel,
    volume_id: &str,
    cap: VolumeCapability,
    base: &Path,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let mut c = controller_client::ControllerClient::new(ch.clone());
    let mut n = node_client::NodeClient::new(ch.clone());
    let (staging, target) = (base.join("staging"), base.join("target"));
    // Shared filesystems need no attachment (csi-fs offers no ControllerPublish).
    let controller = matches!(cap.access_type, Some(AccessType::Block(_)));
    let mut ctx = Default::default();
    if controller {
        ctx = c
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: volume_id.into(),
                node_id: "local-1".into(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("ControllerPublish {volume_id}: {e}"))
            .into_inner()
            .publish_context;
    }
    n.node_stage_volume(NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        publish_context: ctx,
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("NodeStage {volume_id}: {e}"));
    n.node_publish_volume(NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.to_string_lossy().into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(cap),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("NodePublish {volume_id}: {e}"));
    let out = f(&target);
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_string_lossy().into(),
    })
    .await
    .unwrap();
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.to_string_lossy().into(),
    })
    .await
    .unwrap();
    if controller {
        c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            node_id: "local-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    out
}

/// Writes `bytes` at `offset` of the raw block device at `dev` and fsyncs.
fn write_dev(dev: &Path, offset: usize, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dev).unwrap();
    f.write_all_at(bytes, offset as u64).unwrap();
    f.sync_all().unwrap();
}

/// The first `len` bytes of the raw block device at `dev`.
fn read_dev(dev: &Path, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(dev).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, 0).unwrap();
    v
}

/// The files a filesystem fixture holds: path → contents.
fn fs_files() -> BTreeMap<&'static str, Vec<u8>> {
    BTreeMap::from([
        ("hello.txt", b"hello from the previous release\n".to_vec()),
        ("sub/data.bin", pattern("fs-data", 2 * MIB + 17)),
        ("sub/deeper/empty", Vec::new()),
    ])
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the upgrade test stages CSI volumes: run it as root");
}

/// Makes the fixture with the binaries in `target/debug` (the release being frozen) and writes
/// `<CAIRN_FIXTURE_OUT>/<FIXTURE>.tar.xz` and `<FIXTURE>.expected.json`. Run by hand.
#[test]
#[ignore = "makes a fixture: run by hand with CAIRN_FIXTURE_OUT set"]
fn make_fixture() {
    assert_root();
    let out = PathBuf::from(std::env::var("CAIRN_FIXTURE_OUT").expect("CAIRN_FIXTURE_OUT"));
    let commit = String::from_utf8(
        Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(repo_root()).output().unwrap().stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut sys = LocalSystem::start(root);

    // Metadata keys.
    let keys = BTreeMap::from([("fixture/alpha", "one"), ("fixture/beta", "two"), ("fixture/ünï", "çödé")]);
    for (k, v) in &keys {
        cairn(&sys, &["meta", "put", k, v]);
    }
    // A file stored as chunks; its manifest goes beside the data directory.
    let chunk_file = root.join("chunk.bin");
    let chunk_bytes = pattern("chunk", 300_000);
    std::fs::write(&chunk_file, &chunk_bytes).unwrap();
    let manifest = root.join("chunk-manifest.json");
    cairn(&sys, &["chunk", "put", chunk_file.to_str().unwrap(), "--output", manifest.to_str().unwrap()]);

    // S3: a plain object, two versions of one key, a multipart object, an upload left open.
    let s3 = root.join("s3");
    std::fs::create_dir(&s3).unwrap();
    let bodies = [
        ("small.txt", pattern("small", 4000)),
        ("doc-v1.txt", pattern("doc-v1", 20_000)),
        ("doc-v2.txt", pattern("doc-v2", 30_000)),
        ("big.bin", pattern("big", 6 * MIB + 1234)),
    ];
    for (name, b) in &bodies {
        std::fs::write(s3.join(name), b).unwrap();
    }
    let mut s3_exp = s3_script(&sys, "write", &s3);
    for (name, b) in &bodies {
        s3_exp[format!("blake3:{name}")] = json!(hash(b));
    }

    // csi-block: a volume written, snapshotted, written again.
    let (a, b) = (pattern("block-a", MIB), pattern("block-b", 64 << 10));
    let mut at_snap = vec![0u8; BLOCK_BYTES];
    at_snap[4 * MIB..5 * MIB].copy_from_slice(&a);
    let mut now = at_snap.clone();
    now[..b.len()].copy_from_slice(&b);
    let fs_sock = sys.socket("CSI_FS_ENDPOINT");
    let block_sock = sys.socket("CSI_BLOCK_ENDPOINT");
    let work = root.join("kubelet");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (volume_id, snapshot_id, fs_id) = rt.block_on(async {
        let ch = csi(&block_sock).await;
        let vid = create(&ch, "pv-fixture-block", BLOCK_BYTES, block_cap(), None).await;
        attached(&ch, &vid, block_cap(), &work.join("b1"), |dev| write_dev(dev, 4 * MIB, &a)).await;
        let mut c = controller_client::ControllerClient::new(ch.clone());
        let snap = c
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: vid.clone(),
                name: "snap-fixture".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        attached(&ch, &vid, block_cap(), &work.join("b2"), |dev| {
            write_dev(dev, 0, &b);
            assert!(read_dev(dev, BLOCK_BYTES) == now, "the volume reads back");
        })
        .await;

        // csi-fs: a filesystem with a few files.
        let ch = csi(&fs_sock).await;
        let fid = create(&ch, "pv-fixture-fs", 64 * MIB, fs_cap(), None).await;
        attached(&ch, &fid, fs_cap(), &work.join("f1"), |mnt| {
            for (p, bytes) in fs_files() {
                let path = mnt.join(p);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, bytes).unwrap();
                std::fs::File::open(&path).unwrap().sync_all().unwrap();
            }
        })
        .await;
        (vid, snap.snapshot_id, fid)
    });
    sys.stop();
    drop(sys);

    // Strip what a restart does not need (RocksDB's text logs, the kubelet dirs).
    let _ = std::fs::remove_dir_all(&work);
    let strip =
        Command::new("sh").arg("-c").arg("find data -name 'LOG*' -type f -delete").current_dir(root).status().unwrap();
    assert!(strip.success());
    let tarball = out.join(format!("{FIXTURE}.tar.xz"));
    let st = Command::new("tar")
        .args(["--sparse", "--numeric-owner", "-cJf", tarball.to_str().unwrap(), "data", "chunk-manifest.json"])
        .current_dir(root)
        .status()
        .unwrap();
    assert!(st.success(), "tar");
    let expected = json!({
        "made_by": commit,
        "meta": keys,
        "chunk": { "manifest": "chunk-manifest.json", "blake3": hash(&chunk_bytes), "bytes": chunk_bytes.len() },
        "s3": s3_exp,
        "block": {
            "volume_id": volume_id, "bytes": BLOCK_BYTES,
            "volume_blake3": hash(&now), "snapshot_id": snapshot_id, "snapshot_blake3": hash(&at_snap),
        },
        "fs": {
            "volume_id": fs_id,
            "files": fs_files().into_iter().map(|(p, b)| (p, hash(&b))).collect::<BTreeMap<_, _>>(),
        },
    });
    std::fs::write(
        out.join(format!("{FIXTURE}.expected.json")),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

/// Everything the fixture's JSON lists reads back from `sys` (`first`: the upload left open is
/// still open; later it has been completed).
fn check_fixture(sys: &LocalSystem, exp: &Value, scratch: &Path, first: bool) {
    std::fs::create_dir_all(scratch).unwrap();
    for (k, v) in exp["meta"].as_object().unwrap() {
        assert_eq!(cairn(sys, &["meta", "get", k]), v.as_str().unwrap(), "metadata key {k}");
    }
    // The chunk-put file, by the manifest the previous release printed.
    let back = scratch.join("chunk-back.bin");
    let manifest = sys.root.join(exp["chunk"]["manifest"].as_str().unwrap());
    cairn(sys, &["chunk", "get", manifest.to_str().unwrap(), "--output", back.to_str().unwrap()]);
    assert_eq!(hash(&std::fs::read(&back).unwrap()), exp["chunk"]["blake3"], "the chunk-put file");

    // S3 with boto3.
    let s3 = scratch.join("s3");
    std::fs::create_dir_all(&s3).unwrap();
    std::fs::write(s3.join("expected.json"), exp["s3"].to_string()).unwrap();
    let listed = s3_script(sys, "read", &s3);
    let body = |name: &str| hash(&std::fs::read(s3.join(format!("got-{name}"))).unwrap());
    let want = |name: &str| exp["s3"][format!("blake3:{name}")].clone();
    assert_eq!(body("small.txt"), want("small.txt"), "plain object");
    assert_eq!(body("doc-v1.txt"), want("doc-v1.txt"), "first version by id");
    assert_eq!(body("doc-v2.txt"), want("doc-v2.txt"), "second version by id");
    assert_eq!(body("doc-latest.txt"), want("doc-v2.txt"), "latest version");
    assert_eq!(body("big.bin"), want("big.bin"), "multipart object");
    let mut versions = vec![exp["s3"]["doc_v1"].clone(), exp["s3"]["doc_v2"].clone()];
    versions.sort_by_key(|v| v.to_string());
    assert_eq!(listed["versions"], json!(versions), "ListObjectVersions");
    assert_eq!(
        listed["uploads"].as_array().unwrap().contains(&json!(["open.bin", exp["s3"]["open_upload"]])),
        first,
        "the open upload is listed until it is completed: {listed}"
    );
    for b in ["multi", "plain", "versioned"] {
        assert!(listed["buckets"].as_array().unwrap().contains(&json!(b)), "bucket {b}: {listed}");
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The block volume staged through CSI and read back; the filesystem's files.
        let ch = csi(&sys.socket("CSI_BLOCK_ENDPOINT")).await;
        let vid = exp["block"]["volume_id"].as_str().unwrap();
        let got = attached(&ch, vid, block_cap(), &scratch.join("blk"), |dev| hash(&read_dev(dev, BLOCK_BYTES))).await;
        assert_eq!(got, exp["block"]["volume_blake3"], "the block volume's bytes");
        let ch = csi(&sys.socket("CSI_FS_ENDPOINT")).await;
        let fid = exp["fs"]["volume_id"].as_str().unwrap();
        attached(&ch, fid, fs_cap(), &scratch.join("fs"), |mnt| {
            for (p, h) in exp["fs"]["files"].as_object().unwrap() {
                assert_eq!(&json!(hash(&std::fs::read(mnt.join(p)).unwrap())), h, "file {p}");
            }
        })
        .await;
    });
}

#[test]
fn previous_release_data_starts_and_reads_back() {
    assert_root();
    let fixtures = repo_root().join("tests/fixtures");
    let exp: Value =
        serde_json::from_slice(&std::fs::read(fixtures.join(format!("{FIXTURE}.expected.json"))).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let st = Command::new("tar")
        .args(["-xJf", fixtures.join(format!("{FIXTURE}.tar.xz")).to_str().unwrap()])
        .current_dir(root)
        .status()
        .unwrap();
    assert!(st.success(), "unpack the fixture");
    let scratch = root.join("scratch");
    std::fs::create_dir(&scratch).unwrap();

    assert!(!root.join("data/meta/FORMAT").exists(), "the previous release wrote no metadata FORMAT file");
    let mut sys = LocalSystem::start(root);
    // The unversioned metadata directory is version 1 from now on.
    let f: Value = serde_json::from_slice(&std::fs::read(root.join("data/meta/FORMAT")).unwrap()).unwrap();
    assert_eq!(f, json!({"format_version": 1}));
    check_fixture(&sys, &exp, &scratch.join("1"), true);

    // New writes on the upgraded data: a key, an object, the open upload completed, a volume
    // restored from the old snapshot.
    cairn(&sys, &["meta", "put", "after/upgrade", "yes"]);
    let new_obj = pattern("after-upgrade", 100_000);
    let py = format!(
        r#"
import boto3, os, sys
from botocore.config import Config
c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ.get("AWS_REGION", "us-east-1"), config=Config(s3={{"addressing_style": "path"}}))
c.put_object(Bucket="versioned", Key="after.txt", Body=open(sys.argv[1], "rb").read())
p = c.list_parts(Bucket="multi", Key="open.bin", UploadId="{up}")["Parts"]
c.complete_multipart_upload(Bucket="multi", Key="open.bin", UploadId="{up}", MultipartUpload={{"Parts": [{{"PartNumber": x["PartNumber"], "ETag": x["ETag"]}} for x in p]}})
"#,
        up = exp["s3"]["open_upload"].as_str().unwrap()
    );
    let new_file = scratch.join("after.txt");
    std::fs::write(&new_file, &new_obj).unwrap();
    let out = Command::new(python())
        .args(["-c", &py, new_file.to_str().unwrap()])
        .env_clear()
        .envs(&sys.env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &scratch)
        .output()
        .unwrap();
    assert!(out.status.success(), "new S3 writes: {}", String::from_utf8_lossy(&out.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let restored = rt.block_on(async {
        let ch = csi(&sys.socket("CSI_BLOCK_ENDPOINT")).await;
        let snap = exp["block"]["snapshot_id"].as_str().unwrap().to_string();
        let rid = create(&ch, "pv-after-upgrade", BLOCK_BYTES, block_cap(), Some(snap)).await;
        let got =
            attached(&ch, &rid, block_cap(), &scratch.join("restore"), |dev| hash(&read_dev(dev, BLOCK_BYTES))).await;
        assert_eq!(got, exp["block"]["snapshot_blake3"], "a volume restored from the old snapshot");
        rid
    });
    sys.stop();
    drop(sys);

    // Once more: the old contents and the new writes.
    let sys = LocalSystem::start(root);
    check_fixture(&sys, &exp, &scratch.join("2"), false);
    assert_eq!(cairn(&sys, &["meta", "get", "after/upgrade"]), "yes");
    let py = r#"
import boto3, os, sys
from botocore.config import Config
c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ.get("AWS_REGION", "us-east-1"), config=Config(s3={"addressing_style": "path"}))
sys.stdout.buffer.write(c.get_object(Bucket="versioned", Key="after.txt")["Body"].read())
sys.stdout.buffer.write(c.get_object(Bucket="multi", Key="open.bin")["Body"].read())
"#;
    let out = Command::new(python())
        .args(["-c", py])
        .env_clear()
        .envs(&sys.env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &scratch)
        .output()
        .unwrap();
    assert!(out.status.success(), "GET after.txt: {}", String::from_utf8_lossy(&out.stderr));
    let mut want = new_obj.clone();
    want.extend_from_slice(&pattern("small", 4000));
    assert!(out.stdout == want, "the object written after the upgrade, then the upload completed after it");
    rt.block_on(async {
        let ch = csi(&sys.socket("CSI_BLOCK_ENDPOINT")).await;
        let got =
            attached(&ch, &restored, block_cap(), &scratch.join("restore2"), |dev| hash(&read_dev(dev, BLOCK_BYTES)))
                .await;
        assert_eq!(got, exp["block"]["snapshot_blake3"], "the restored volume after a restart");
    });
}

/// Bumps the `format_version` in the JSON `FORMAT` file at `path` past this build's; returns
/// (this build's version, the one written).
fn bump_format(path: &Path) -> (u64, u64) {
    let mut f: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let have = f["format_version"].as_u64().expect("a format_version");
    f["format_version"] = json!(have + 1);
    std::fs::write(path, serde_json::to_vec(&f).unwrap()).unwrap();
    (have, have + 1)
}

/// The last non-empty line of a daemon's output.
fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default()
}

/// A storage node on a data directory written by a newer release refuses to start, in one line
/// naming both versions.
#[test]
fn storage_node_refuses_a_newer_data_directory() {
    use integration_tests::NodeProc;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let mut node = NodeProc::start(&data, &[]);
    assert!(node.terminate().success());
    let (have, newer) = bump_format(&data.join("FORMAT"));
    let (status, stderr) = NodeProc::start_expecting_failure(&data, &[]);
    assert!(!status.success(), "{stderr}");
    let want = format!(
        "chunk data directory {} has format version {newer}; this build reads up to version {have}; refusing to start",
        data.display()
    );
    assert!(last_line(&stderr).ends_with(&want), "{stderr}");
}

/// A metadata node writes a `FORMAT` file on first start, and on a directory written by a newer
/// release refuses to start, in one line naming both versions.
#[test]
fn metadata_node_refuses_a_newer_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = integration_tests::meta::meta_cluster(1, dir.path(), &[]);
    assert!(nodes[0].terminate().success());
    let data = dir.path().join("m1");
    let (have, newer) = bump_format(&data.join("FORMAT"));
    assert_eq!(have, 1, "this build writes metadata format 1");
    let a = integration_tests::meta::MetaAddrs::loopback(1);
    let out = Command::new(bin("metadata-node"))
        .args(["--id", "1", "--data-dir", data.to_str().unwrap(), "--listen", &a.api, "--peer-listen", &a.peer])
        .args(["--http-listen", &a.http.to_string(), "--initial-members", &a.member()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let want = format!(
        "metadata data directory {} has format version {newer}; this build reads up to version {have}",
        data.display()
    );
    assert!(last_line(&stderr).ends_with(&want), "{stderr}");
    // The data is untouched: with the file put back, it starts and is healthy.
    std::fs::write(data.join("FORMAT"), br#"{"format_version": 1}"#).unwrap();
    nodes[0].restart();
    nodes[0].wait_healthy(Duration::from_secs(60));
}
