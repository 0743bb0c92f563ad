//! The FUSE client process of one staged volume (`<exe> fs-mount <dir>`): it mounts the
//! volume's filesystem with fs-client at `<dir>/mnt` (which the node plugin bind-mounts onto
//! the staging path) and writes `<dir>/ready` (its pid) once mounted, or `<dir>/error`
//! (`CODE<TAB>message`) if it cannot. SIGTERM (NodeUnstage) flushes every open file, unmounts
//! and unregisters the client; someone else unmounting the mount ends it too. Running it apart
//! from the node plugin (its own process group, the `ready` and `error` files, the plugin's
//! start, stop and staged records) is `csi_kit::child`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use csi_kit::CsiError;
use csi_kit::child::{ChildDir, ChildKind, ChildSpec};
use serde::{Deserialize, Serialize};

use crate::fs_error;

/// The mount process as a child of the node plugin: `<exe> fs-mount <dir>` (the csi-fs binary,
/// or any binary hosting the node plugin, whose `main` calls [`main_if_requested`] first),
/// logging to `mount.log`, the filesystem mounted at `<dir>/mnt`.
pub static MOUNT_PROCESS: ChildKind = ChildKind {
    subcommand: "fs-mount",
    name: "csi-fs fs-mount",
    noun: "the mount process",
    log: "mount.log",
    mount: "mnt",
    probe: "",
};
/// Format of `spec.json`.
pub const SPEC_VERSION: u32 = 1;

/// What a mount process mounts, written by the node plugin to `<dir>/spec.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub version: u32,
    /// The filesystem (the volume's id).
    pub fs_id: String,
    /// This mount's client id, registered with the filesystem while mounted (node id and a
    /// random suffix: every stage is a new client).
    pub client_id: String,
    /// The node it runs on.
    pub node: String,
    /// Mount read-only (a reader-only access mode).
    pub read_only: bool,
    /// Metadata service endpoints.
    pub meta: Vec<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Log filter.
    pub log: String,
    /// Seconds operations retry while the metadata service or storage nodes are unreachable
    /// before failing with EIO (specs written before it existed: the default).
    #[serde(default = "io_timeout_default")]
    pub io_timeout_secs: u64,
    /// Bytes of read cache (the node plugin's `read_cache_mib`; specs written before it: none).
    #[serde(default)]
    pub read_cache_bytes: u64,
}

fn io_timeout_default() -> u64 {
    csi_kit::params::DEFAULT_IO_TIMEOUT_SECS
}

csi_kit::versioned!(SPEC_VERSION => MountSpec);

impl ChildSpec for MountSpec {
    fn log_filter(&self) -> String {
        self.log.clone()
    }
}

impl MountSpec {
    fn tls(&self) -> mtls::TlsFiles {
        mtls::TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }
}

/// Runs the mount process if the process was started as one (`<exe> fs-mount <dir>`); every
/// binary that may host the node plugin calls this first in `main`.
pub fn main_if_requested() -> Option<ExitCode> {
    MOUNT_PROCESS.main_if_requested(serve)
}

async fn serve(spec: MountSpec, dir: ChildDir, mut shutdown: daemon_kit::ShutdownSignal) -> Result<(), String> {
    let (meta, mut mounted) = dir.report(mount(&spec, &dir)).await?;
    dir.set_ready()?;
    tracing::info!(fs = %spec.fs_id, client = %spec.client_id, read_only = spec.read_only, mnt = %dir.mount_point().display(), "filesystem mounted");
    let unmounted_by_someone = tokio::select! {
        _ = &mut shutdown => false,
        r = mounted.ended() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "FUSE session ended with an error");
            }
            true
        }
    };
    dir.clear_ready();
    if unmounted_by_someone {
        // The mount is gone already; only the client's registration is left to remove.
        drop(mounted);
        if let Err(e) = fs_meta::filesystem::unregister_client(&meta, &spec.fs_id, &spec.client_id).await {
            tracing::warn!(error = %e, "cannot unregister the client");
        }
        tracing::info!(fs = %spec.fs_id, "filesystem unmounted by someone else");
        return Ok(());
    }
    mounted.unmount().await.map_err(|e| format!("unmount {}: {e}", dir.mount_point().display()))?;
    tracing::info!(fs = %spec.fs_id, "filesystem flushed and unmounted");
    Ok(())
}

/// Connects to the metadata service and the pool, checks the filesystem, and mounts it.
async fn mount(
    spec: &MountSpec,
    dir: &ChildDir,
) -> Result<(metadata_client::MetaClient, fs_client::Mounted), CsiError> {
    mtls::install_client_identity(&spec.tls()).map_err(|e| CsiError::Internal(e.to_string()))?;
    let meta = metadata_client::MetaClient::new(&spec.meta).map_err(|e| CsiError::Internal(e.to_string()))?;
    match fs_meta::filesystem::get(&meta, &spec.fs_id).await.map_err(fs_error)? {
        None => return Err(CsiError::NotFound(format!("filesystem {} does not exist", spec.fs_id))),
        Some((_, rec)) if rec.deleting => {
            return Err(CsiError::NotFound(format!("filesystem {} is being deleted", spec.fs_id)));
        }
        Some(_) => {}
    }
    let pool = cluster::ChunkClient::new(meta.clone(), cluster::ClientConfig::default())
        .await
        .map_err(|e| CsiError::Unavailable(format!("storage pool: {e}")))?;
    // A mount left by an earlier process of this volume that died is dead (ENOTCONN).
    let mnt = dir.mount_point();
    let _ = csi_kit::mount::unmount_lazy(&mnt).await;
    std::fs::create_dir_all(&mnt).map_err(|e| CsiError::Internal(format!("create {}: {e}", mnt.display())))?;
    let opts = fs_client::ClientOptions {
        fs_id: spec.fs_id.clone(),
        client_id: spec.client_id.clone(),
        node: spec.node.clone(),
        read_only: spec.read_only,
        io_timeout: std::time::Duration::from_secs(spec.io_timeout_secs),
        read_cache_bytes: spec.read_cache_bytes,
    };
    let mounted = fs_client::mount(meta.clone(), pool, opts, &mnt)
        .await
        .map_err(|e| CsiError::Unavailable(format!("mounting {} at {}: {e}", spec.fs_id, mnt.display())))?;
    Ok((meta, mounted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = MountSpec {
            version: SPEC_VERSION,
            fs_id: "fs-0".into(),
            client_id: "node-a-0000abcd".into(),
            node: "node-a".into(),
            read_only: true,
            meta: vec!["127.0.0.1:1".into()],
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            log: "info".into(),
            io_timeout_secs: 5,
            read_cache_bytes: 64 << 20,
        };
        let d = MOUNT_PROCESS.dir(tmp.path());
        std::fs::write(d.spec(), serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(d.load_spec::<MountSpec>().unwrap(), spec);
        // A spec as releases before `ioTimeout` wrote it.
        let mut old = serde_json::to_value(&spec).unwrap();
        old.as_object_mut().unwrap().remove("io_timeout_secs");
        old.as_object_mut().unwrap().remove("read_cache_bytes");
        std::fs::write(d.spec(), serde_json::to_vec(&old).unwrap()).unwrap();
        let read = d.load_spec::<MountSpec>().unwrap();
        assert_eq!((read.io_timeout_secs, read.read_cache_bytes), (120, 0));
        // A newer spec (with a field this build does not know) is refused as newer, in one line.
        let mut newer = serde_json::to_value(&spec).unwrap();
        newer["version"] = (SPEC_VERSION + 1).into();
        newer["cache_mb"] = 64.into();
        std::fs::write(d.spec(), serde_json::to_vec(&newer).unwrap()).unwrap();
        let e = d.load_spec::<MountSpec>().unwrap_err();
        assert!(e.ends_with("spec.json has format version 2; this build reads up to version 1"), "{e}");
    }

    use csi_kit::testing::{opt_path, spec_round_trip};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn specs_round_trip_through_the_spec_file(
            (fs_id, client_id, node, log) in (".*", ".*", ".*", ".*"),
            (read_only, io_timeout_secs, read_cache_bytes) in (any::<bool>(), any::<u64>(), any::<u64>()),
            meta in proptest::collection::vec(".*", 0..4),
            (tls_ca, tls_cert, tls_key) in (opt_path(), opt_path(), opt_path()),
        ) {
            let spec = MountSpec {
                version: SPEC_VERSION, fs_id, client_id, node, read_only, meta, tls_ca, tls_cert, tls_key, log,
                io_timeout_secs, read_cache_bytes,
            };
            prop_assert_eq!(spec_round_trip(&MOUNT_PROCESS, &spec).unwrap(), spec);
        }
    }
}
