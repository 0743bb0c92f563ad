//! The data-path process of one staged volume (`<exe> volume-server <dir>`): it opens the volume
//! engine at the publication's generation and serves the volume as one file in a FUSE mount
//! (`<dir>/fuse/volume`, which the node plugin attaches with a loop device) and, when asked, over
//! NBD. SIGTERM (NodeUnstage) or someone unmounting the FUSE mount flushes the engine and ends
//! it. Running it apart from the node plugin (its own process group, the `ready` and `error`
//! files, the plugin's start, stop and staged records) is `csi_kit::child`'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use csi_kit::CsiError;
use csi_kit::child::{ChildDir, ChildKind, ChildSpec};
use serde::{Deserialize, Serialize};
use volume_engine::{EngineError, Geometry, Volume};

use crate::volumes::Volumes;

/// The data path as a child of the node plugin: `<exe> volume-server <dir>` (the csi-block or
/// cairn-local binary), logging to `datapath.log`, serving the volume file in `<dir>/fuse`.
pub static DATAPATH: ChildKind = ChildKind {
    subcommand: "volume-server",
    name: "csi-block volume-server",
    noun: "the data path",
    log: "datapath.log",
    mount: "fuse",
    probe: block_frontend::fuse_file::FILE_NAME,
};
/// Format of `spec.json`.
pub const SPEC_VERSION: u32 = 1;

/// What a data-path process serves, written by the node plugin to `<dir>/spec.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Seconds I/O is retried while the pool or the metadata service is unreachable before it
    /// fails with EIO (the volume's `ioTimeout`; specs written before it existed: the default).
    #[serde(default = "io_timeout_default")]
    pub io_timeout_secs: u64,
    /// Bytes of read cache (the node plugin's `read_cache_mib`; specs written before it
    /// existed: none).
    #[serde(default)]
    pub read_cache_bytes: u64,
}

fn io_timeout_default() -> u64 {
    csi_kit::params::DEFAULT_IO_TIMEOUT_SECS
}

csi_kit::versioned!(SPEC_VERSION => DatapathSpec);

impl ChildSpec for DatapathSpec {
    fn log_filter(&self) -> String {
        self.log.clone()
    }
}

impl DatapathSpec {
    fn tls(&self) -> mtls::TlsFiles {
        mtls::TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }
}

/// The volume as one file in the data path's FUSE mount (what the loop device attaches).
pub fn volume_file(d: &ChildDir) -> PathBuf {
    d.mount_point().join(block_frontend::fuse_file::FILE_NAME)
}

/// Runs the data path if the process was started as one (`<exe> volume-server <dir>`); every
/// binary that may host the node plugin calls this first in `main`.
pub fn main_if_requested() -> Option<ExitCode> {
    DATAPATH.main_if_requested(serve)
}

async fn serve(spec: DatapathSpec, dir: ChildDir, shutdown: daemon_kit::ShutdownSignal) -> Result<(), String> {
    let volume = Arc::new(dir.report(open(&spec)).await?);
    let fuse = dir.mount_point();
    // A mount left by an earlier data path of this volume that died is dead (ENOTCONN).
    let _ = csi_kit::mount::unmount_lazy(&fuse).await;
    let writeback = tokio::spawn(volume.clone().writeback());
    let mut mount = block_frontend::fuse_loop::mount_file(volume.clone(), &fuse).await.map_err(|e| e.to_string())?;
    let nbd = match &spec.nbd_socket {
        Some(path) => Some(crate::nbd_export::start(volume.clone(), path).map_err(|e| e.to_string())?),
        None => None,
    };
    dir.set_ready()?;
    tracing::info!(volume = %spec.volume_id, generation = spec.generation, file = %volume_file(&dir).display(), "volume served");
    let unmounted_by_someone = tokio::select! {
        _ = shutdown => false,
        r = &mut mount => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "FUSE session ended");
            }
            true
        }
    };
    dir.clear_ready();
    if let Some(n) = nbd {
        n.stop().await;
    }
    writeback.abort();
    // Flushed to the journal, then folded, so the next attachment has nothing to replay.
    let flushed = volume.close().await;
    if !unmounted_by_someone {
        mount.unmount().await.map_err(|e| format!("unmount {}: {e}", fuse.display()))?;
    }
    flushed.map_err(|e| format!("final flush of {}: {e}", spec.volume_id))?;
    let cache = volume.read_cache_stats();
    tracing::info!(
        volume = %spec.volume_id,
        cache_hits = cache.hits,
        cache_misses = cache.misses,
        "volume flushed and no longer served"
    );
    Ok(())
}

/// Opens the engine: the volume's record gives its shape and minimum replicas.
async fn open(spec: &DatapathSpec) -> Result<Volume, CsiError> {
    mtls::install_client_identity(&spec.tls()).map_err(|e| CsiError::Internal(e.to_string()))?;
    let meta = metadata_client::MetaClient::new(&spec.meta).map_err(|e| CsiError::Internal(e.to_string()))?;
    let volumes = Volumes::new(meta.clone());
    let Some((_, rec)) = volumes.get(&spec.volume_id).await? else {
        return Err(CsiError::NotFound(format!("volume {} does not exist", spec.volume_id)));
    };
    let cfg = cluster::ClientConfig { min_replicas: rec.min_replicas.max(1) as usize, ..Default::default() };
    let pool = cluster::ChunkClient::new(meta.clone(), cfg)
        .await
        .map_err(|e| CsiError::Unavailable(format!("storage pool: {e}")))?;
    let geometry = Geometry { capacity: rec.capacity_bytes, block_size: u64::from(rec.block_size) };
    let volume = Volume::open(meta, pool, &rec.id, geometry, spec.generation).await.map_err(|e| match e {
        EngineError::Fenced { .. } => CsiError::FailedPrecondition(format!("{e}: the volume was published elsewhere")),
        other => CsiError::Unavailable(other.to_string()),
    })?;
    Ok(volume
        .with_io_retry(cluster::IoRetry::new(std::time::Duration::from_secs(spec.io_timeout_secs)))
        .with_read_cache(spec.read_cache_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_older_specs_get_the_default_io_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = DatapathSpec {
            version: SPEC_VERSION,
            volume_id: "blk-00000000000000000000000000000001".into(),
            generation: 3,
            meta: vec!["127.0.0.1:1".into()],
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            log: "info".into(),
            nbd_socket: None,
            io_timeout_secs: 7,
            read_cache_bytes: 64 << 20,
        };
        let d = DATAPATH.dir(tmp.path());
        std::fs::write(d.spec(), serde_json::to_vec(&spec).unwrap()).unwrap();
        let back: DatapathSpec = d.load_spec().unwrap();
        assert_eq!((back.volume_id, back.generation, back.io_timeout_secs), (spec.volume_id.clone(), 3, 7));
        // A spec as releases before `ioTimeout` wrote it.
        let mut old = serde_json::to_value(&spec).unwrap();
        old.as_object_mut().unwrap().remove("io_timeout_secs");
        std::fs::write(d.spec(), serde_json::to_vec(&old).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("read_cache_bytes");
        std::fs::write(d.spec(), serde_json::to_vec(&old).unwrap()).unwrap();
        let old = d.load_spec::<DatapathSpec>().unwrap();
        assert_eq!((old.io_timeout_secs, old.read_cache_bytes), (120, 0));
        // A newer spec (with a field this build does not know) is refused as newer, in one line.
        let mut newer = serde_json::to_value(&spec).unwrap();
        newer["version"] = (SPEC_VERSION + 1).into();
        newer["queue_depth"] = 64.into();
        std::fs::write(d.spec(), serde_json::to_vec(&newer).unwrap()).unwrap();
        let e = d.load_spec::<DatapathSpec>().unwrap_err();
        assert!(e.ends_with("spec.json has format version 2; this build reads up to version 1"), "{e}");
    }

    use csi_kit::testing::{opt_path, spec_round_trip};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn specs_round_trip_through_the_spec_file(
            (volume_id, log, generation, io_timeout_secs) in (".*", ".*", any::<u64>(), any::<u64>()),
            read_cache_bytes in any::<u64>(),
            meta in proptest::collection::vec(".*", 0..4),
            (tls_ca, tls_cert, tls_key, nbd_socket) in (opt_path(), opt_path(), opt_path(), opt_path()),
        ) {
            let spec = DatapathSpec {
                version: SPEC_VERSION, volume_id, generation, meta, tls_ca, tls_cert, tls_key, log, nbd_socket,
                io_timeout_secs, read_cache_bytes,
            };
            prop_assert_eq!(spec_round_trip(&DATAPATH, &spec).unwrap(), spec);
        }
    }
}
