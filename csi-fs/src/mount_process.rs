//! The FUSE client process of one staged volume (`<exe> fs-mount <dir>`): it mounts the
//! volume's filesystem with fs-client at `<dir>/mnt` (which the node plugin bind-mounts onto
//! the staging path) and writes `<dir>/ready` (its pid) once mounted, or `<dir>/error`
//! (`CODE<TAB>message`) if it cannot. It runs in its own process group, apart from the node
//! plugin, so a plugin restart or crash leaves mounted volumes working; the plugin finds it
//! again through the files in `<dir>`. SIGTERM (NodeUnstage) flushes every open file, unmounts
//! and unregisters the client; someone else unmounting the mount ends it too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use csi_kit::CsiError;
use serde::{Deserialize, Serialize};

use crate::fs_error;

/// The subcommand that runs a mount process (first argument of the csi-fs binary, or of any
/// binary hosting the node plugin, whose `main` calls [`main_if_requested`] first).
pub const SUBCOMMAND: &str = "fs-mount";
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
    /// The volume's directory (not stored: it is where the file is).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The files of a mount process's directory (`<state_dir>/volumes/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountDir(pub PathBuf);

impl MountDir {
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    /// Where the filesystem is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.0.join("mnt")
    }
    /// Written (with the pid) once the filesystem is mounted.
    pub fn ready(&self) -> PathBuf {
        self.0.join("ready")
    }
    /// Written when the mount process could not mount: `CODE<TAB>message`.
    pub fn error(&self) -> PathBuf {
        self.0.join("error")
    }
    /// The node plugin's record of the stage (`staged.json`).
    pub fn staged(&self) -> PathBuf {
        self.0.join("staged.json")
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("mount.log")
    }
}

impl MountSpec {
    /// Reads `<dir>/spec.json`.
    pub fn load(dir: &Path) -> Result<MountSpec, String> {
        let path = MountDir(dir.to_path_buf()).spec();
        let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut s: MountSpec = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.version != SPEC_VERSION {
            return Err(format!("{}: format version {} (this build reads {SPEC_VERSION})", path.display(), s.version));
        }
        s.dir = dir.to_path_buf();
        Ok(s)
    }

    /// Writes `<dir>/spec.json` atomically.
    pub fn store(&self) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("serializes");
        daemon_kit::write_file_atomic(&MountDir(self.dir.clone()).spec(), &text, 0o600)
    }

    fn tls(&self) -> mtls::TlsFiles {
        mtls::TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }
}

/// Runs the mount process if the process was started as one (`<exe> fs-mount <dir>`); every
/// binary that may host the node plugin calls this first in `main`.
pub fn main_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SUBCOMMAND {
        return None;
    }
    let spec = match args.next() {
        Some(dir) => MountSpec::load(Path::new(&dir)),
        None => Err(format!("usage: {SUBCOMMAND} <volume directory>")),
    };
    Some(daemon_kit::run_daemon("csi-fs fs-mount", spec, |s| s.log.clone(), serve))
}

/// The CSI code word of an error, as the error file carries it.
fn code_word(e: &CsiError) -> &'static str {
    match e {
        CsiError::NotFound(_) => "NOT_FOUND",
        CsiError::FailedPrecondition(_) => "FAILED_PRECONDITION",
        CsiError::Unavailable(_) | CsiError::Meta(_) => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// Reads the error a mount process left, as the CSI error the node plugin answers with.
pub fn read_error(dir: &MountDir) -> Option<CsiError> {
    let text = std::fs::read_to_string(dir.error()).ok()?;
    Some(parse_error(&text))
}

fn parse_error(text: &str) -> CsiError {
    let (code, msg) = text.split_once('\t').unwrap_or(("INTERNAL", text));
    let msg = msg.trim().to_string();
    match code {
        "NOT_FOUND" => CsiError::NotFound(msg),
        "FAILED_PRECONDITION" => CsiError::FailedPrecondition(msg),
        "UNAVAILABLE" => CsiError::Unavailable(msg),
        _ => CsiError::Internal(msg),
    }
}

async fn serve(spec: MountSpec, mut shutdown: daemon_kit::ShutdownSignal) -> Result<(), String> {
    let dir = MountDir(spec.dir.clone());
    let _ = std::fs::remove_file(dir.error());
    let (meta, mut mounted) = match mount(&spec, &dir).await {
        Ok(m) => m,
        Err(e) => {
            let _ = daemon_kit::write_file_atomic(&dir.error(), format!("{}\t{e}", code_word(&e)).as_bytes(), 0o600);
            return Err(e.to_string());
        }
    };
    daemon_kit::write_file_atomic(&dir.ready(), std::process::id().to_string().as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", dir.ready().display()))?;
    tracing::info!(fs = %spec.fs_id, client = %spec.client_id, read_only = spec.read_only, mnt = %dir.mnt().display(), "filesystem mounted");
    let unmounted_by_someone = tokio::select! {
        _ = &mut shutdown => false,
        r = mounted.ended() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "FUSE session ended with an error");
            }
            true
        }
    };
    let _ = std::fs::remove_file(dir.ready());
    if unmounted_by_someone {
        // The mount is gone already; only the client's registration is left to remove.
        drop(mounted);
        if let Err(e) = fs_meta::filesystem::unregister_client(&meta, &spec.fs_id, &spec.client_id).await {
            tracing::warn!(error = %e, "cannot unregister the client");
        }
        tracing::info!(fs = %spec.fs_id, "filesystem unmounted by someone else");
        return Ok(());
    }
    mounted.unmount().await.map_err(|e| format!("unmount {}: {e}", dir.mnt().display()))?;
    tracing::info!(fs = %spec.fs_id, "filesystem flushed and unmounted");
    Ok(())
}

/// Connects to the metadata service and the pool, checks the filesystem, and mounts it.
async fn mount(
    spec: &MountSpec,
    dir: &MountDir,
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
    let mnt = dir.mnt();
    if csi_kit::mount::is_mountpoint(&mnt) {
        let _ = csi_kit::mount::run("umount", &["-l", &mnt.to_string_lossy()]).await;
    }
    std::fs::create_dir_all(&mnt).map_err(|e| CsiError::Internal(format!("create {}: {e}", mnt.display())))?;
    let opts = fs_client::ClientOptions {
        fs_id: spec.fs_id.clone(),
        client_id: spec.client_id.clone(),
        node: spec.node.clone(),
        read_only: spec.read_only,
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
    fn spec_round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
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
            dir: dir.path().to_path_buf(),
        };
        spec.store().unwrap();
        assert_eq!(MountSpec::load(dir.path()).unwrap(), spec);
        let mut text: serde_json::Value =
            serde_json::from_slice(&std::fs::read(MountDir(spec.dir.clone()).spec()).unwrap()).unwrap();
        text["version"] = 9.into();
        std::fs::write(MountDir(spec.dir.clone()).spec(), text.to_string()).unwrap();
        assert!(MountSpec::load(dir.path()).unwrap_err().contains("format version 9"));
        assert!(MountSpec::load(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn error_files_carry_the_code() {
        let e = CsiError::NotFound("filesystem fs-1 does not exist".into());
        let back = parse_error(&format!("{}\t{e}", code_word(&e)));
        assert_eq!((back.code(), back.to_string()), (tonic::Code::NotFound, e.to_string()));
        assert_eq!(parse_error("UNAVAILABLE\tpool down\n").code(), tonic::Code::Unavailable);
        assert_eq!(parse_error("garbage").code(), tonic::Code::Internal);
    }
}
