//! The shared filesystem's client on a node: a multithreaded low-level FUSE daemon (fuse3, each
//! request its own task) over the namespace in the metadata service (`fs-meta`) and file blocks
//! as content-hashed chunks in the pool (`cluster::ChunkClient`). Consistency across clients is
//! close-to-open: a close or fsync commits the file's blocks and size; an open re-reads them.
//! The kernel caches entries and attributes for a second; attributes changed by anyone are
//! dropped from it as the metadata watch announces them, and at every open.

mod attr;
mod files;
mod ops;
mod writer;

use cluster::ChunkClient;
use fs_meta::{FsError, Namespace};
use fuse3::MountOptions;
use fuse3::raw::{MountHandle, Session};
use metadata_client::MetaClient;
use std::path::Path;

pub use ops::Client;

/// Failures of mounting and serving.
#[derive(Debug, thiserror::Error)]
pub enum FsClientError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Which filesystem to mount, and as whom.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub fs_id: String,
    /// This mount's id (unique per mount; registered in the metadata service while mounted).
    pub client_id: String,
    /// The node it runs on.
    pub node: String,
    pub read_only: bool,
    /// How long an operation that fails because the metadata service or storage nodes are
    /// unreachable is retried before the call fails with EIO (0: at once).
    pub io_timeout: std::time::Duration,
    /// Bytes of file blocks read or written recently that the mount keeps in memory, shared by
    /// its files (0: none; each open file still keeps its last few blocks).
    pub read_cache_bytes: u64,
}

/// A mounted filesystem.
pub struct Mounted {
    handle: MountHandle,
    client: Client,
    meta: MetaClient,
    opts: ClientOptions,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// How often a mounted client refreshes its record (its locks live as long as it does).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// Async requests (read-ahead, async direct I/O) the kernel keeps in flight to this client
/// (FUSE_INIT's `max_background`; the kernel's default is 12).
const MAX_BACKGROUND: u16 = 128;

/// Mounts filesystem `opts.fs_id` at `mountpoint` (created if missing) and serves it until
/// unmounted.
pub async fn mount(
    meta: MetaClient,
    pool: ChunkClient,
    opts: ClientOptions,
    mountpoint: &Path,
) -> Result<Mounted, FsClientError> {
    let ns = Namespace::open(meta.clone(), &opts.fs_id).await?;
    tokio::fs::create_dir_all(mountpoint)
        .await
        .map_err(|source| FsClientError::Io { what: format!("create {}", mountpoint.display()), source })?;
    let client = Client::new(ns, pool, &opts.client_id, opts.read_only, cluster::IoRetry::new(opts.io_timeout))
        .with_read_cache(opts.read_cache_bytes);
    let mut mo = MountOptions::default();
    mo.fs_name(format!("cairnfs-{}", opts.fs_id))
        .allow_other(true)
        .default_permissions(true)
        .read_only(opts.read_only)
        .max_background(MAX_BACKGROUND);
    let handle = Session::new(mo)
        .mount(client.clone(), mountpoint)
        .await
        .map_err(|source| FsClientError::Io { what: format!("FUSE mount at {}", mountpoint.display()), source })?;
    if let Some(n) = handle.notify() {
        client.set_kernel(n);
    }
    // Kept for the heartbeats, which rewrite the record with it.
    let mounted_ms = fs_meta::filesystem::now_ms();
    fs_meta::filesystem::register_client(&meta, &opts.fs_id, &opts.client_id, &opts.node, opts.read_only, mounted_ms)
        .await?;
    // One task for everything beside the FUSE session (aborted at unmount): the heartbeat of
    // the client record, the metadata watch, the inode count.
    let heartbeat = {
        let (meta, o, c) = (meta.clone(), opts.clone(), client.clone());
        tokio::spawn(async move {
            let beat = async {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    if let Err(e) = fs_meta::filesystem::register_client(
                        &meta,
                        &o.fs_id,
                        &o.client_id,
                        &o.node,
                        o.read_only,
                        mounted_ms,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "client heartbeat failed");
                    }
                }
            };
            tokio::join!(beat, c.background());
        })
    };
    tracing::info!(fs = %opts.fs_id, client = %opts.client_id, at = %mountpoint.display(), "filesystem mounted");
    Ok(Mounted { handle, client, meta, opts, heartbeat })
}

impl Mounted {
    /// The client serving the mount.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Resolves when someone else unmounted the mount (the FUSE session ended).
    pub async fn ended(&mut self) -> Result<(), FsClientError> {
        let r = (&mut self.handle).await;
        self.heartbeat.abort();
        self.client.flush_all().await?;
        let _ = fs_meta::filesystem::unregister_client(&self.meta, &self.opts.fs_id, &self.opts.client_id).await;
        r.map_err(|source| FsClientError::Io { what: "FUSE session".into(), source })
    }

    /// Flushes every open file's data, unmounts, unregisters the client.
    pub async fn unmount(self) -> Result<(), FsClientError> {
        let flushed = self.client.flush_all().await;
        self.heartbeat.abort();
        self.handle.unmount().await.map_err(|source| FsClientError::Io { what: "unmount".into(), source })?;
        fs_meta::filesystem::unregister_client(&self.meta, &self.opts.fs_id, &self.opts.client_id).await?;
        flushed.map_err(FsClientError::from)
    }
}
