//! `cairn-local`, the README's first command, as a user runs it: it comes up on its own, writes
//! `data/local.env`, clients pointed by that file work (the cairn CLI, and the aws CLI against its
//! S3 endpoint with the first access key, CSI clients on the csi-block and csi-fs sockets — as
//! root, a block volume and a shared filesystem attached on the local node), and SIGTERM stops it
//! cleanly.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::local::LocalSystem;
use integration_tests::{bin, random_bytes};

#[test]
fn local_system_publishes_its_env_file_and_serves_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut local = LocalSystem::start(dir.path());
    let data = local.data.clone();
    let env = local.env.clone();
    for key in [
        "CAIRN_NODE",
        "CAIRN_META",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "CSI_BLOCK_ENDPOINT",
        "CAIRN_CSI_BLOCK_METRICS_URL",
        "CSI_FS_ENDPOINT",
        "CAIRN_CSI_FS_METRICS_URL",
    ] {
        assert!(env.contains_key(key), "local.env lacks {key}: {env:?}");
    }
    let cairn = |args: &[&str]| Command::new(bin("cairn")).envs(&env).args(args).output().unwrap();
    let out = cairn(&["meta", "put", "hello", "world"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cairn(&["meta", "get", "hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "world");
    let file = dir.path().join("f.bin");
    std::fs::write(&file, random_bytes(300_000)).unwrap();
    let out = cairn(&["chunk", "put", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `set -a; . data/local.env` and the aws CLI works at once.
    let aws = |args: &[&str]| aws_with(&env, dir.path(), args);
    aws(&["s3", "mb", "s3://local-first"]);
    aws(&["s3", "cp", "--no-progress", file.to_str().unwrap(), "s3://local-first/f.bin"]);
    let back = dir.path().join("back.bin");
    aws(&["s3", "cp", "--no-progress", "s3://local-first/f.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
    assert!(aws(&["s3", "ls", "s3://local-first"]).contains("f.bin"));

    // CSI_BLOCK_ENDPOINT answers as a CSI plugin does: identity, probe, a volume made and deleted.
    let sock = env["CSI_BLOCK_ENDPOINT"].strip_prefix("unix://").expect("a unix:// endpoint").to_string();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume};
        use cairn_proto::csi::v1::*;
        let ch = csi_kit::connect_unix(std::path::Path::new(&sock)).await.unwrap();
        let mut id = identity_client::IdentityClient::new(ch.clone());
        let info = id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.name, "block.csi.cairn.io");
        let deadline = Instant::now() + Duration::from_secs(30);
        while id.probe(ProbeRequest {}).await.unwrap().into_inner().ready != Some(true) {
            assert!(Instant::now() < deadline, "csi-block never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut c = controller_client::ControllerClient::new(ch);
        let v = create_raw_volume(&mut c, "pv-local", 64 << 20).await;
        assert_eq!(v.capacity_bytes, 64 << 20);
        // As root, the local node `local-1` attaches it: its data path is `cairn-local
        // volume-server`, and the raw device takes a write and reads it back.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let block = || VolumeCapability {
                access_mode: Some(AccessMode { mode: 1 }),
                access_type: Some(AccessType::Block(BlockVolume {})),
            };
            let ctx = c
                .controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    node_id: "local-1".into(),
                    volume_capability: Some(block()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .publish_context;
            let (staging, target) = (data.join("kubelet/staging"), data.join("kubelet/pod/dev"));
            let mut n = node_client::NodeClient::new(csi_kit::connect_unix(std::path::Path::new(&sock)).await.unwrap());
            n.node_stage_volume(NodeStageVolumeRequest {
                volume_id: v.volume_id.clone(),
                publish_context: ctx,
                staging_target_path: staging.to_string_lossy().into(),
                volume_capability: Some(block()),
                ..Default::default()
            })
            .await
            .unwrap();
            n.node_publish_volume(NodePublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: staging.to_string_lossy().into(),
                target_path: target.to_string_lossy().into(),
                volume_capability: Some(block()),
                ..Default::default()
            })
            .await
            .unwrap();
            {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&target).unwrap();
                let bytes = random_bytes(1 << 20);
                f.write_all_at(&bytes, 8 << 20).unwrap();
                f.sync_all().unwrap();
                let mut back = vec![0u8; bytes.len()];
                f.read_exact_at(&mut back, 8 << 20).unwrap();
                assert!(back == bytes, "the local volume reads back what was written");
            }
            n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                target_path: target.to_string_lossy().into(),
            })
            .await
            .unwrap();
            n.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: staging.to_string_lossy().into(),
            })
            .await
            .unwrap();
            c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                node_id: "local-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        c.delete_volume(DeleteVolumeRequest { volume_id: v.volume_id, ..Default::default() }).await.unwrap();
    });

    // CSI_FS_ENDPOINT: the shared-filesystem driver, controller and node `local-1` in one.
    let fs_sock = env["CSI_FS_ENDPOINT"].strip_prefix("unix://").expect("a unix:// endpoint").to_string();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
        use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
        use cairn_proto::csi::v1::*;
        let ch = csi_kit::connect_unix(std::path::Path::new(&fs_sock)).await.unwrap();
        let mut id = identity_client::IdentityClient::new(ch.clone());
        let info = id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.name, "fs.csi.cairn.io");
        let deadline = Instant::now() + Duration::from_secs(30);
        while id.probe(ProbeRequest {}).await.unwrap().into_inner().ready != Some(true) {
            assert!(Instant::now() < deadline, "csi-fs never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // As root: a shared filesystem made, staged and published on `local-1` (its FUSE client
        // is `cairn-local fs-mount`), a file written and read back, then all of it taken down.
        let rwx = || VolumeCapability {
            access_mode: Some(AccessMode { mode: Mode::MultiNodeMultiWriter as i32 }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        };
        let mut c = controller_client::ControllerClient::new(ch.clone());
        let v = c
            .create_volume(CreateVolumeRequest {
                name: "pv-local-fs".into(),
                capacity_range: Some(CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 }),
                volume_capabilities: vec![rwx()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v.capacity_bytes, 64 << 20);
        let (staging, target) = (data.join("kubelet/fs-staging"), data.join("kubelet/pod/fs"));
        let mut n = node_client::NodeClient::new(ch);
        n.node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.to_string_lossy().into(),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
        n.node_publish_volume(NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.to_string_lossy().into(),
            target_path: target.to_string_lossy().into(),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
        {
            use std::io::Write;
            let bytes = random_bytes(3 << 20);
            let mut f = std::fs::File::create(target.join("hello.bin")).unwrap();
            f.write_all(&bytes).unwrap();
            f.sync_all().unwrap();
            drop(f);
            assert!(std::fs::read(target.join("hello.bin")).unwrap() == bytes, "the filesystem reads back");
            assert!(std::fs::read(staging.join("hello.bin")).unwrap() == bytes, "the same at the staging path");
        }
        n.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            target_path: target.to_string_lossy().into(),
        })
        .await
        .unwrap();
        n.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.to_string_lossy().into(),
        })
        .await
        .unwrap();
        assert_eq!(integration_tests::csi::mounts_under(&data), Vec::<String>::new(), "mounts left behind");
        c.delete_volume(DeleteVolumeRequest { volume_id: v.volume_id, ..Default::default() }).await.unwrap();
    });

    local.stop();
}

/// The local system tells what runs where and how to stop it, stops cleanly on SIGTERM, and a
/// second start on the same data directory has everything the first one held: metadata keys, S3
/// objects (with the same first access key) and CSI volumes.
#[test]
fn local_system_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obj.bin");
    std::fs::write(&file, random_bytes(5 << 20)).unwrap();
    let aws = |env: &HashMap<String, String>, args: &[&str]| aws_with(env, dir.path(), args);
    let cairn = |env: &HashMap<String, String>, args: &[&str]| {
        let out = Command::new(bin("cairn")).envs(env).args(args).output().unwrap();
        assert!(out.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let create_volume = |env: &HashMap<String, String>| -> String {
        let sock = env["CSI_BLOCK_ENDPOINT"].strip_prefix("unix://").unwrap().to_string();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let ch = csi_kit::connect_unix(std::path::Path::new(&sock)).await.unwrap();
            let mut c = cairn_proto::csi::v1::controller_client::ControllerClient::new(ch);
            create_raw_volume(&mut c, "pv-kept", 32 << 20).await.volume_id
        })
    };

    let mut first = LocalSystem::start(dir.path());
    let log = std::fs::read_to_string(dir.path().join("cairn-local.log")).unwrap();
    for what in
        ["S3 (objectd)", "metadata service", "storage node", "csi-block", "csi-fs", "stop: Ctrl-C or kill -TERM"]
    {
        assert!(log.contains(what), "cairn-local does not say where {what:?} is:\n{log}");
    }
    let env1 = first.env.clone();
    cairn(&env1, &["meta", "put", "kept", "across-restarts"]);
    aws(&env1, &["s3", "mb", "s3://kept"]);
    aws(&env1, &["s3", "cp", "--no-progress", file.to_str().unwrap(), "s3://kept/obj.bin"]);
    let volume = create_volume(&env1);
    first.stop();
    drop(first);

    let second = LocalSystem::start(dir.path());
    let env2 = second.env.clone();
    assert_eq!(env1["AWS_ACCESS_KEY_ID"], env2["AWS_ACCESS_KEY_ID"], "the first access key is kept");
    assert_eq!(cairn(&env2, &["meta", "get", "kept"]), "across-restarts");
    let back = dir.path().join("back.bin");
    aws(&env2, &["s3", "cp", "--no-progress", "s3://kept/obj.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&file).unwrap(), "the object survives a restart");
    assert_eq!(create_volume(&env2), volume, "CreateVolume by the same name finds the same volume");
}

/// Started as the README does (`--data ./data` from its own directory), every path `local.env`
/// names is absolute, so it works from any directory; and its console shows our crates at info
/// but no dependency below warn (unless RUST_LOG says otherwise).
#[test]
fn local_env_paths_are_absolute_and_console_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let mut local = LocalSystem::start_relative(dir.path());
    let mut paths = 0;
    for (k, v) in &local.env {
        let path = v.strip_prefix("unix://").unwrap_or(v);
        if v.starts_with("http://") || !path.contains('/') {
            continue;
        }
        paths += 1;
        let p = std::path::Path::new(path);
        assert!(p.is_absolute(), "local.env: {k}={v} is not an absolute path");
        assert!(p.exists(), "local.env: {k}={v} does not exist");
    }
    for k in ["CAIRN_TLS_CA", "CAIRN_TLS_CERT", "CAIRN_TLS_KEY", "CAIRN_DATA", "CSI_BLOCK_ENDPOINT"] {
        assert!(local.env.contains_key(k), "local.env lacks {k}");
    }
    assert!(paths >= 5, "local.env names too few paths: {:?}", local.env);
    local.stop();
    if std::env::var_os("RUST_LOG").is_none() {
        let log = strip_ansi(&std::fs::read_to_string(dir.path().join("cairn-local.log")).unwrap());
        let info_targets: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split_once(" INFO ").map(|(_, r)| r.split([':', ' ']).next().unwrap_or("")))
            .collect();
        assert!(info_targets.iter().any(|t| t.starts_with("cairn_local")), "no info line of ours:\n{log}");
        let ours = [
            "cairn",
            "objectd",
            "storage_node",
            "metadata_service",
            "csi_",
            "cluster",
            "fs_",
            "volume_engine",
            "daemon_kit",
            "chunk_engine",
            "kv_engine",
            "mtls",
            "node_client",
            "metadata_client",
            "block_frontend",
            "local_allinone",
            "format_version",
            "placement",
        ];
        for t in info_targets {
            assert!(ours.iter().any(|o| t.starts_with(o)), "a dependency logs at info ({t}):\n{log}");
        }
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// CreateVolume of a raw block volume (single-node writer) of `bytes` named `name`.
async fn create_raw_volume(
    c: &mut cairn_proto::csi::v1::controller_client::ControllerClient<tonic::transport::Channel>,
    name: &str,
    bytes: i64,
) -> cairn_proto::csi::v1::Volume {
    use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume};
    use cairn_proto::csi::v1::*;
    let cap = VolumeCapability {
        access_mode: Some(AccessMode { mode: 1 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let req = CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![cap],
        ..Default::default()
    };
    c.create_volume(req).await.unwrap_or_else(|e| panic!("CreateVolume {name}: {e}")).into_inner().volume.unwrap()
}

/// Runs the aws CLI with exactly `env` (what `set -a; . data/local.env` gives a shell) and
/// `home` as HOME; asserts it succeeds and returns its stdout.
fn aws_with(env: &HashMap<String, String>, home: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(integration_tests::s3::python())
        .args(["-m", "awscli"])
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
