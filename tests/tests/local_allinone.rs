//! `cairn-local`, the README's first command, as a user runs it: it comes up on its own, writes
//! `data/local.env`, clients pointed by that file work (the cairn CLI, and the aws CLI against its
//! S3 endpoint with the first access key, CSI clients on the csi-block and csi-fs sockets — as
//! root, a block volume and a shared filesystem attached on the local node), and SIGTERM stops it
//! cleanly.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{bin, free_port, random_bytes};

#[test]
fn local_system_publishes_its_env_file_and_serves_clients() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = || format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(bin("cairn-local"))
        .arg("--data")
        .arg(&data)
        .args(["--node-listen", &addr(), "--node-http", &addr()])
        .args(["--meta-listen", &addr(), "--meta-peer", &addr(), "--meta-http", &addr()])
        .args(["--s3-listen", &addr(), "--s3-http", &addr(), "--csi-block-http", &addr()])
        .args(["--csi-fs-http", &addr()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let env_path = data.join("local.env");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env_path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "cairn-local exited early");
        assert!(Instant::now() < deadline, "no local.env after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id();
    let guard = Kill(child);
    let env: HashMap<String, String> = std::fs::read_to_string(&env_path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
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
    let py = integration_tests::s3::python();
    let aws = |args: &[&str]| {
        let out = Command::new(py)
            .args(["-m", "awscli"])
            .args(args)
            .env_clear()
            .envs(&env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
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
        let v = c
            .create_volume(CreateVolumeRequest {
                name: "pv-local".into(),
                capacity_range: Some(CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 }),
                volume_capabilities: vec![VolumeCapability {
                    access_mode: Some(AccessMode { mode: 1 }),
                    access_type: Some(AccessType::Block(BlockVolume {})),
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v.capacity_bytes, 64 << 20);
        // As root, the local node `local-1` attaches it: its data path is `cairn-local
        // volume-server`, and the raw device takes a write and reads it back.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            struct Unmount(std::path::PathBuf);
            impl Drop for Unmount {
                fn drop(&mut self) {
                    integration_tests::csi::cleanup_mounts_under(&self.0);
                }
            }
            let _unmount = Unmount(data.clone());
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
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                kill_fs_mounts_under(&self.0);
                integration_tests::csi::cleanup_mounts_under(&self.0);
            }
        }
        let _cleanup = Cleanup(data.clone());
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

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let mut guard = guard;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = guard.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "cairn-local ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!env_path.exists(), "local.env must go away when the system stops");
}

/// SIGKILLs every `fs-mount` process (a staged filesystem's FUSE client, which outlives its node
/// plugin by design) serving a volume under `data` — what a failed test would leave running.
/// cairn-local itself names `data` too, and is left alone.
fn kill_fs_mounts_under(data: &std::path::Path) {
    let prefix = data.to_string_lossy().as_bytes().to_vec();
    let Ok(rd) = std::fs::read_dir("/proc") else { return };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"fs-mount"[..]) && args.get(2).is_some_and(|a| a.starts_with(&prefix)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
