//! The data-path process of one staged volume (`<exe> volume-server <dir>`): it opens the volume
//! engine at the publication's generation and serves the volume as one file in a FUSE mount
//! (`<dir>/fuse/volume`, which the node plugin attaches with a loop device) and, when asked, over
//! NBD. It runs in its own process group, apart from the node plugin, so a plugin restart or
//! crash leaves mounted volumes working; the plugin finds it again through the files in `<dir>`.
//! SIGTERM (NodeUnstage) or someone unmounting the FUSE mount flushes the engine and ends it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use csi_kit::CsiError;
use serde::{Deserialize, Serialize};
use volume_engine::{EngineError, Geometry, Volume};

use crate::volumes::Volumes;

/// The subcommand that runs a data path (first argument of the csi-block or cairn-local binary).
pub const SUBCOMMAND: &str = "volume-server";
/// Format of `spec.json`.
pub const SPEC_VERSION: u32 = 1;

/// What a data-path process serves, written by the node plugin to `<dir>/spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathSpec {
    pub version: u32,
    pub volume_id: String,
    /// The fencing generation of the publication (from ControllerPublish's context).
    pub generation: u64,
    /// Metadata service endpoints.
    pub meta: Vec<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Log filter.
    pub log: String,
    /// Also export the volume over NBD on this unix socket.
    #[serde(default)]
    pub nbd_socket: Option<PathBuf>,
    /// The volume's directory (not stored: it is where the file is).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The files of a data path's directory.
pub struct DatapathDir(pub PathBuf);

impl DatapathDir {
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    /// The FUSE mount point; the volume is the file `volume` in it.
    pub fn fuse(&self) -> PathBuf {
        self.0.join("fuse")
    }
    pub fn file(&self) -> PathBuf {
        self.fuse().join(block_frontend::fuse_file::FILE_NAME)
    }
    /// Written (with the pid) once the volume is served.
    pub fn ready(&self) -> PathBuf {
        self.0.join("ready")
    }
    /// Written when the data path could not start: `CODE<TAB>message`.
    pub fn error(&self) -> PathBuf {
        self.0.join("error")
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("datapath.log")
    }
}

impl DatapathSpec {
    /// Reads `<dir>/spec.json`.
    pub fn load(dir: &Path) -> Result<DatapathSpec, String> {
        let path = DatapathDir(dir.to_path_buf()).spec();
        let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut s: DatapathSpec = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.version != SPEC_VERSION {
            return Err(format!("{}: format version {} (this build reads {SPEC_VERSION})", path.display(), s.version));
        }
        s.dir = dir.to_path_buf();
        Ok(s)
    }

    /// Writes `<dir>/spec.json` atomically.
    pub fn store(&self) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("serializes");
        daemon_kit::write_file_atomic(&DatapathDir(self.dir.clone()).spec(), &text, 0o600)
    }

    fn tls(&self) -> mtls::TlsFiles {
        mtls::TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }
}

/// Runs the data path if the process was started as one (`<exe> volume-server <dir>`); every
/// binary that may host the node plugin calls this first in `main`.
pub fn main_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SUBCOMMAND {
        return None;
    }
    let spec = match args.next() {
        Some(dir) => DatapathSpec::load(Path::new(&dir)),
        None => Err(format!("usage: {SUBCOMMAND} <volume directory>")),
    };
    Some(daemon_kit::run_daemon("csi-block volume-server", spec, |s| s.log.clone(), serve))
}

/// The CSI code word of an error, as the error file carries it.
fn code_word(e: &CsiError) -> &'static str {
    match e {
        CsiError::NotFound(_) => "NOT_FOUND",
        CsiError::FailedPrecondition(_) => "FAILED_PRECONDITION",
        CsiError::Unavailable(_) => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// Reads the error a data path left, as the CSI error the node plugin answers with.
pub fn read_error(dir: &DatapathDir) -> Option<CsiError> {
    let text = std::fs::read_to_string(dir.error()).ok()?;
    let (code, msg) = text.split_once('\t').unwrap_or(("INTERNAL", text.as_str()));
    let msg = msg.trim().to_string();
    Some(match code {
        "NOT_FOUND" => CsiError::NotFound(msg),
        "FAILED_PRECONDITION" => CsiError::FailedPrecondition(msg),
        "UNAVAILABLE" => CsiError::Unavailable(msg),
        _ => CsiError::Internal(msg),
    })
}

async fn serve(spec: DatapathSpec, shutdown: daemon_kit::ShutdownSignal) -> Result<(), String> {
    let dir = DatapathDir(spec.dir.clone());
    let _ = std::fs::remove_file(dir.error());
    let volume = match open(&spec).await {
        Ok(v) => Arc::new(v),
        Err(e) => {
            let _ = daemon_kit::write_file_atomic(&dir.error(), format!("{}\t{e}", code_word(&e)).as_bytes(), 0o600);
            return Err(e.to_string());
        }
    };
    // A mount left by an earlier data path of this volume that died is dead (ENOTCONN).
    if csi_kit::mount::is_mountpoint(&dir.fuse()) {
        let _ = csi_kit::mount::run("umount", &["-l", &dir.fuse().to_string_lossy()]).await;
    }
    let writeback = tokio::spawn(volume.clone().writeback());
    let mut mount =
        block_frontend::fuse_loop::mount_file(volume.clone(), &dir.fuse()).await.map_err(|e| e.to_string())?;
    let nbd = match &spec.nbd_socket {
        Some(path) => Some(crate::nbd_export::start(volume.clone(), path).map_err(|e| e.to_string())?),
        None => None,
    };
    daemon_kit::write_file_atomic(&dir.ready(), std::process::id().to_string().as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", dir.ready().display()))?;
    tracing::info!(volume = %spec.volume_id, generation = spec.generation, file = %dir.file().display(), "volume served");
    let unmounted_by_someone = tokio::select! {
        _ = shutdown => false,
        r = &mut mount => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "FUSE session ended");
            }
            true
        }
    };
    let _ = std::fs::remove_file(dir.ready());
    if let Some(n) = nbd {
        n.stop().await;
    }
    writeback.abort();
    let flushed = volume.flush().await;
    if !unmounted_by_someone {
        mount.unmount().await.map_err(|e| format!("unmount {}: {e}", dir.fuse().display()))?;
    }
    flushed.map_err(|e| format!("final flush of {}: {e}", spec.volume_id))?;
    tracing::info!(volume = %spec.volume_id, "volume flushed and no longer served");
    Ok(())
}

/// Opens the engine: the volume's record gives its shape and minimum replicas.
async fn open(spec: &DatapathSpec) -> Result<Volume, CsiError> {
    mtls::install_client_identity(&spec.tls()).map_err(|e| CsiError::Internal(e.to_string()))?;
    let meta = metadata_client::MetaClient::new(&spec.meta).map_err(|e| CsiError::Internal(e.to_string()))?;
    let volumes = Volumes { meta: meta.clone() };
    let Some((_, rec)) = volumes.get(&spec.volume_id).await? else {
        return Err(CsiError::NotFound(format!("volume {} does not exist", spec.volume_id)));
    };
    let cfg = cluster::ClientConfig { min_replicas: rec.min_replicas.max(1) as usize, ..Default::default() };
    let pool = cluster::ChunkClient::new(meta.clone(), cfg)
        .await
        .map_err(|e| CsiError::Unavailable(format!("storage pool: {e}")))?;
    let geometry = Geometry { capacity: rec.capacity_bytes, block_size: u64::from(rec.block_size) };
    Volume::open(meta, pool, &rec.id, geometry, spec.generation).await.map_err(|e| match e {
        EngineError::Fenced { .. } => CsiError::FailedPrecondition(format!("{e}: the volume was published elsewhere")),
        other => CsiError::Unavailable(other.to_string()),
    })
}
