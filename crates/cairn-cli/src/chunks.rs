//! `cairn chunk put|get|rm`: store a local file as chunks and read it back by manifest. With a
//! metadata endpoint the chunks go to the pool (R copies) and are kept by reference keys owned
//! by the manifest (`cli:<id>`) until `rm`; with only `--node`, to that one node.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use chunk_engine::ChunkHash;
use clap::Subcommand;
use cluster::refs::{commit_refs, drop_refs};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chunk_store::Store;
use crate::manifest::{MANIFEST_VERSION, Manifest};
use crate::progress::bytes_bar;

/// Chunk transfers in flight at once.
const PARALLEL: usize = 4;
/// References committed per metadata transaction group while a put runs (well within the write
/// window however large the file).
const REF_BATCH: usize = 128;

/// Chunk commands. With `--meta`/`CAIRN_META` they use the storage pool; with only `--node`
/// (or `--node` given on the command line and no `--meta` there), that one storage node.
#[derive(Subcommand)]
pub enum ChunkCmd {
    /// Cut FILE into chunks, store them, and print (or write) the manifest. In the pool the
    /// chunks are kept (referenced) until `cairn chunk rm MANIFEST`.
    Put {
        /// The file to store.
        file: PathBuf,
        /// Chunk size in bytes (at most the nodes' maximum chunk size).
        #[arg(long, default_value_t = 4 << 20)]
        chunk_size: u64,
        /// Write the manifest here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Read the file described by MANIFEST back, verifying every chunk and the whole file.
    Get {
        /// The manifest written by `put`.
        manifest: PathBuf,
        /// Where to write the file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Drop the pool references of the file described by MANIFEST: the next pool GC round may
    /// collect its chunks (those no other owner references).
    Rm {
        /// The manifest written by `put`.
        manifest: PathBuf,
    },
}

pub async fn run(node: &str, meta: Option<&str>, cmd: ChunkCmd) -> anyhow::Result<()> {
    match cmd {
        ChunkCmd::Put { file, chunk_size, output } => {
            put(&Store::open(node, meta).await?, file, chunk_size, output).await
        }
        ChunkCmd::Get { manifest, output } => {
            let m = read_manifest(&manifest).await?;
            get(&Store::open(node, meta).await?, m, output).await
        }
        ChunkCmd::Rm { manifest } => {
            let m = read_manifest(&manifest).await?;
            let Some(meta) = meta else {
                anyhow::bail!("chunk rm needs the metadata service: give --meta or set CAIRN_META");
            };
            rm(&Store::open(node, Some(meta)).await?, &manifest, m).await
        }
    }
}

async fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let text = tokio::fs::read_to_string(path).await.with_context(|| format!("cannot read {}", path.display()))?;
    Manifest::parse(&text).with_context(|| format!("{}", path.display()))
}

fn hashes_of(m: &Manifest) -> anyhow::Result<Vec<ChunkHash>> {
    Ok(m.chunks.iter().map(|h| h.parse::<ChunkHash>()).collect::<Result<Vec<_>, _>>()?)
}

async fn put(store: &Store, file: PathBuf, chunk_size: u64, output: Option<PathBuf>) -> anyhow::Result<()> {
    if chunk_size == 0 {
        anyhow::bail!("--chunk-size must be greater than 0");
    }
    if let Some(max) = store.max_chunk_size().await?
        && chunk_size > max
    {
        anyhow::bail!("--chunk-size {chunk_size} exceeds the node's maximum chunk size of {max}");
    }
    let mut f = tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await?.len();
    let id = Manifest::new_id();
    let owner = format!("cli:{id}");
    let bar = bytes_bar(size, "put");
    let mut whole = blake3::Hasher::new();
    // Read sequentially; upload with bounded parallelism; commit references as uploads finish.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(PARALLEL);
    let uploads = {
        let (store, bar, owner) = (store.clone(), bar.clone(), owner.clone());
        tokio::spawn(async move { upload(store, rx, bar, &owner).await })
    };
    let mut remaining = size;
    let mut read_error = None;
    while remaining > 0 {
        let n = remaining.min(chunk_size) as usize;
        let mut buf = vec![0u8; n];
        if let Err(e) = f.read_exact(&mut buf).await {
            read_error = Some(anyhow::Error::new(e).context(format!("reading {}", file.display())));
            break;
        }
        whole.update(&buf);
        remaining -= n as u64;
        if tx.send(Bytes::from(buf)).await.is_err() {
            break; // the uploader stopped on an error; it reports it below
        }
    }
    drop(tx);
    let (hashes, referenced, upload_error) = uploads.await.context("upload task")?;
    bar.finish_and_clear();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: Some(id),
        size,
        chunk_size,
        blake3: whole.finalize().to_hex().to_string(),
        chunks: hashes.iter().map(|h| h.to_hex().to_string()).collect(),
    };
    let written = match (read_error.or(upload_error), &output) {
        (Some(e), _) => Err(e),
        (None, Some(p)) => write_durably(p, manifest.to_text()).await,
        (None, None) => {
            print!("{}", manifest.to_text());
            Ok(())
        }
    };
    if let Err(e) = written {
        // Nothing names these references now: drop them so pool GC can have the chunks.
        if let (Some(meta), false) = (store.meta(), referenced.is_empty()) {
            let refs: Vec<ChunkHash> = referenced.into_iter().collect();
            if let Err(d) = drop_refs(meta, &owner, &refs).await {
                return Err(e.context(format!("and the references of {owner} could not be dropped ({d})")));
            }
        }
        return Err(e);
    }
    Ok(())
}

/// Stores every chunk from `rx` and, in the pool, commits `owner`'s references to them in
/// groups. Returns the hashes in file order, the chunks referenced so far, and the first error.
async fn upload(
    store: Store,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    bar: indicatif::ProgressBar,
    owner: &str,
) -> (Vec<ChunkHash>, BTreeSet<ChunkHash>, Option<anyhow::Error>) {
    let mut puts = tokio_stream_from(rx)
        .map(|data: Bytes| {
            let (store, bar) = (store.clone(), bar.clone());
            async move {
                let len = data.len() as u64;
                let r = store.put(data).await;
                bar.inc(len);
                r
            }
        })
        .buffered(PARALLEL);
    let mut hashes = Vec::new();
    let mut referenced = BTreeSet::new();
    let mut pending: Vec<(ChunkHash, Instant)> = Vec::new();
    let commit = async |pending: &mut Vec<(ChunkHash, Instant)>, referenced: &mut BTreeSet<ChunkHash>| {
        if let Some(meta) = store.meta()
            && !pending.is_empty()
        {
            commit_refs(meta, owner, pending, cluster::gc::WRITE_WINDOW)
                .await
                .with_context(|| format!("committing the references of {owner}"))?;
        }
        referenced.extend(pending.drain(..).map(|p| p.0));
        Ok::<_, anyhow::Error>(())
    };
    while let Some(r) = puts.next().await {
        match r {
            Ok((hash, at)) => {
                hashes.push(hash);
                pending.push((hash, at));
                if pending.len() >= REF_BATCH
                    && let Err(e) = commit(&mut pending, &mut referenced).await
                {
                    return (hashes, referenced, Some(e));
                }
            }
            Err(e) => return (hashes, referenced, Some(e)),
        }
    }
    let err = commit(&mut pending, &mut referenced).await.err();
    (hashes, referenced, err)
}

/// Writes `text` to `path`: temp file, fsync, rename, fsync the directory.
async fn write_durably(path: &Path, text: String) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes()).await.with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, path).await.with_context(|| format!("cannot write {}", path.display()))?;
    sync_parent(path).await
}

async fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tokio::fs::File::open(&dir).await?.sync_all().await?;
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn get(store: &Store, m: Manifest, output: PathBuf) -> anyhow::Result<()> {
    let hashes = hashes_of(&m)?;
    let tmp = output.with_extension("partial");
    let mut out = tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
    let bar = bytes_bar(m.size, "get");
    let mut whole = blake3::Hasher::new();
    let mut fetches = futures::stream::iter(hashes.into_iter().map(|h| {
        let store = store.clone();
        async move { store.get(&h).await }
    }))
    .buffered(PARALLEL);
    let mut written = 0u64;
    while let Some(data) = fetches.next().await {
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        whole.update(&data);
        out.write_all(&data).await?;
        written += data.len() as u64;
        bar.inc(data.len() as u64);
    }
    out.sync_all().await?;
    bar.finish_and_clear();
    let got = whole.finalize().to_hex().to_string();
    if written != m.size || got != m.blake3 {
        let _ = tokio::fs::remove_file(&tmp).await;
        anyhow::bail!("reassembled file does not match the manifest ({written} bytes, blake3 {got})");
    }
    tokio::fs::rename(&tmp, &output).await.with_context(|| format!("cannot rename to {}", output.display()))?;
    sync_parent(&output).await
}

async fn rm(store: &Store, path: &Path, m: Manifest) -> anyhow::Result<()> {
    let (Some(owner), Some(meta)) = (m.owner(), store.meta()) else {
        anyhow::bail!(
            "{} is a version-1 manifest: its chunks have no pool references to drop (node GC or pool GC reclaims them)",
            path.display()
        );
    };
    let hashes: Vec<ChunkHash> = hashes_of(&m)?.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    drop_refs(meta, &owner, &hashes).await.with_context(|| format!("dropping the references of {owner}"))?;
    println!(
        "dropped {owner}'s references to {} chunks; the next pool GC round collects those nothing else references",
        hashes.len()
    );
    Ok(())
}
