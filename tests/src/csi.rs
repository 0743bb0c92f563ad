//! CSI driver processes for tests: start a driver binary on a unix socket in a temp dir, wait
//! for `/healthz`, connect gRPC clients over the socket as the sidecars and the kubelet do, and
//! SIGKILL or restart it. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use tonic::transport::Channel;

use crate::daemon::Daemon;
use crate::free_port;

/// One running CSI driver process and its socket.
pub struct CsiProc {
    daemon: Daemon,
    /// Its CSI socket.
    pub socket: PathBuf,
}

impl CsiProc {
    /// Starts `binary` (e.g. `csi-block`) with its socket at `dir/<name>.sock` and `args`, and
    /// waits until it is healthy.
    pub fn start(binary: &'static str, dir: &Path, name: &str, args: &[&str]) -> CsiProc {
        let socket = dir.join(format!("{name}.sock"));
        let http = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut all: Vec<String> = vec![
            "--endpoint".into(),
            format!("unix://{}", socket.display()),
            "--http-listen".into(),
            format!("{http}"),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        CsiProc { daemon: Daemon::start(binary, all, dir.join(format!("{name}.log")), http), socket }
    }

    /// A gRPC channel over the socket.
    pub async fn channel(&self) -> Channel {
        csi_kit::connect_unix(&self.socket).await.expect("connect to the CSI socket")
    }

    /// SIGKILL, start again with the same flags, wait until healthy.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// Unmounts (lazily) every mount under `dir` and detaches every loop device whose backing file
/// is under it — what a CSI node test leaves behind when it fails midway. Deepest first.
pub fn cleanup_mounts_under(dir: &Path) {
    let prefix = dir.to_string_lossy().to_string();
    if let Ok(out) = Command::new("losetup").arg("-a").output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&prefix)
                && let Some(dev) = line.split(':').next()
            {
                let _ = Command::new("losetup").args(["-d", dev]).output();
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(String::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).output();
    }
}

/// SIGKILLs every process (other than this one) with a command-line argument under `dir` — the
/// per-volume processes a CSI node plugin starts in their own process group (csi-fs's
/// `fs-mount`, csi-block's `volume-server`), which outlive the plugin by design and so are not
/// killed with it when a test fails midway.
pub fn kill_processes_under(dir: &Path) {
    let prefix = dir.to_string_lossy().as_bytes().to_vec();
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else { return };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        if cmd.split(|b| *b == 0).skip(1).any(|a| a.starts_with(&prefix)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The mount points under `dir` (per /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// The RPC types a Controller service reports in ControllerGetCapabilities.
pub async fn controller_rpcs(c: &mut cairn_proto::csi::v1::controller_client::ControllerClient<Channel>) -> Vec<i32> {
    use cairn_proto::csi::v1::{ControllerGetCapabilitiesRequest, controller_service_capability::Type};
    let caps = c.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.expect("capabilities");
    caps.into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect()
}

/// The RPC types a Node service reports in NodeGetCapabilities.
pub async fn node_rpcs(n: &mut cairn_proto::csi::v1::node_client::NodeClient<Channel>) -> Vec<i32> {
    use cairn_proto::csi::v1::{NodeGetCapabilitiesRequest, node_service_capability::Type};
    let caps = n.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.expect("capabilities");
    caps.into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect()
}

/// A volume capability: a mount of `fs_type` (empty: the driver's default) with `flags`, or a
/// raw block device when `fs_type` is None.
pub fn cap(
    mode: cairn_proto::csi::v1::volume_capability::access_mode::Mode,
    fs_type: Option<&str>,
    flags: &[&str],
) -> cairn_proto::csi::v1::VolumeCapability {
    use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    cairn_proto::csi::v1::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(match fs_type {
            Some(f) => AccessType::Mount(MountVolume {
                fs_type: f.into(),
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            None => AccessType::Block(BlockVolume {}),
        }),
    }
}

/// Where the kubelet stages and publishes one volume.
#[derive(Debug, Clone)]
pub struct KubeletPaths {
    /// The staging path (NodeStageVolume).
    pub staging: PathBuf,
    /// The pod's target path (NodePublishVolume).
    pub target: PathBuf,
}

impl KubeletPaths {
    /// `root/kubelet/staging/<name>` and `root/kubelet/pods/<pod>/volumes/<name>`.
    pub fn new(root: &Path, pod: &str, name: &str) -> KubeletPaths {
        KubeletPaths {
            staging: root.join("kubelet/staging").join(name),
            target: root.join("kubelet/pods").join(pod).join("volumes").join(name),
        }
    }
}

/// What the kubelet passes along for one volume: its id, the ControllerPublishVolume context,
/// the volume context CreateVolume returned, and the capability.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The volume id.
    pub volume_id: String,
    /// ControllerPublishVolume's publish context (empty without that step).
    pub publish_context: std::collections::HashMap<String, String>,
    /// CreateVolume's volume context.
    pub volume_context: std::collections::HashMap<String, String>,
    /// The capability staged and published.
    pub cap: cairn_proto::csi::v1::VolumeCapability,
}

/// NodeStageVolume then NodePublishVolume (read-write), as the kubelet does (it makes the
/// staging directory and the target's parent first).
pub async fn stage_and_publish(
    n: &mut cairn_proto::csi::v1::node_client::NodeClient<Channel>,
    a: &Attachment,
    p: &KubeletPaths,
) -> Result<(), tonic::Status> {
    use cairn_proto::csi::v1::{NodePublishVolumeRequest, NodeStageVolumeRequest};
    for d in [Some(p.staging.as_path()), p.target.parent()].into_iter().flatten() {
        std::fs::create_dir_all(d).map_err(|e| tonic::Status::internal(format!("mkdir {}: {e}", d.display())))?;
    }
    n.node_stage_volume(NodeStageVolumeRequest {
        volume_id: a.volume_id.clone(),
        publish_context: a.publish_context.clone(),
        staging_target_path: p.staging.to_string_lossy().into(),
        volume_capability: Some(a.cap.clone()),
        volume_context: a.volume_context.clone(),
        ..Default::default()
    })
    .await?;
    n.node_publish_volume(NodePublishVolumeRequest {
        volume_id: a.volume_id.clone(),
        publish_context: a.publish_context.clone(),
        staging_target_path: p.staging.to_string_lossy().into(),
        target_path: p.target.to_string_lossy().into(),
        volume_capability: Some(a.cap.clone()),
        volume_context: a.volume_context.clone(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// NodeUnpublishVolume then NodeUnstageVolume, as the kubelet does.
pub async fn unpublish_and_unstage(
    n: &mut cairn_proto::csi::v1::node_client::NodeClient<Channel>,
    volume_id: &str,
    p: &KubeletPaths,
) -> Result<(), tonic::Status> {
    use cairn_proto::csi::v1::{NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest};
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: p.target.to_string_lossy().into(),
    })
    .await?;
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: p.staging.to_string_lossy().into(),
    })
    .await?;
    Ok(())
}

/// A channel over the CSI socket at `sock` once the plugin's Probe says ready (up to 60 s).
pub async fn ready_channel(sock: &Path) -> Channel {
    use cairn_proto::csi::v1::ProbeRequest;
    use cairn_proto::csi::v1::identity_client::IdentityClient;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(ch) = csi_kit::connect_unix(sock).await
            && let Ok(r) = IdentityClient::new(ch.clone()).probe(ProbeRequest {}).await
            && r.into_inner().ready == Some(true)
        {
            return ch;
        }
        assert!(std::time::Instant::now() < deadline, "{} never ready", sock.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
