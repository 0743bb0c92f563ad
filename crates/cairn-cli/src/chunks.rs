//! `cairn chunk put|get`: store a local file as chunks on a node and read it back by manifest.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use chunk_engine::ChunkHash;
use clap::Subcommand;
use futures::{StreamExt, TryStreamExt};
use node_client::NodeClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::manifest::{MANIFEST_VERSION, Manifest};
use crate::progress::bytes_bar;

/// Chunk transfers in flight at once.
const PARALLEL: usize = 4;

/// Chunk commands.
#[derive(Subcommand)]
pub enum ChunkCmd {
    /// Cut FILE into chunks, store them, and print (or write) the manifest.
    Put {
        /// The file to store.
        file: PathBuf,
        /// Chunk size in bytes (at most the node's maximum chunk size).
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
}

pub async fn run(node: &str, cmd: ChunkCmd) -> anyhow::Result<()> {
    match cmd {
        ChunkCmd::Put { file, chunk_size, output } => put(node, file, chunk_size, output).await,
        ChunkCmd::Get { manifest, output } => get(node, manifest, output).await,
    }
}

async fn put(node: &str, file: PathBuf, chunk_size: u64, output: Option<PathBuf>) -> anyhow::Result<()> {
    if chunk_size == 0 {
        anyhow::bail!("--chunk-size must be greater than 0");
    }
    let client = NodeClient::connect(node).await?;
    let max = client.stats().await?.max_chunk_size as u64;
    if chunk_size > max {
        anyhow::bail!("--chunk-size {chunk_size} exceeds the node's maximum chunk size of {max}");
    }
    let mut f = tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await?.len();
    let bar = bytes_bar(size, "put");
    let mut whole = blake3::Hasher::new();
    let mut pieces = Vec::new();
    let mut remaining = size;
    // Read sequentially; upload with bounded parallelism.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(PARALLEL);
    let uploads = {
        let client = client.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            tokio_stream_from(rx)
                .map(|data: Bytes| {
                    let client = client.clone();
                    let bar = bar.clone();
                    async move {
                        let hash = ChunkHash::of(&data);
                        let len = data.len() as u64;
                        client.put(Some(hash), data).await?;
                        bar.inc(len);
                        Ok::<_, anyhow::Error>(hash)
                    }
                })
                .buffered(PARALLEL)
                .try_collect::<Vec<_>>()
                .await
        })
    };
    while remaining > 0 {
        let n = remaining.min(chunk_size) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf).await.with_context(|| format!("reading {}", file.display()))?;
        whole.update(&buf);
        remaining -= n as u64;
        if tx.send(Bytes::from(buf)).await.is_err() {
            break; // the uploader stopped on an error; it reports it below
        }
    }
    drop(tx);
    let hashes = uploads.await.context("upload task")??;
    pieces.extend(hashes.iter().map(|h| h.to_hex()));
    bar.finish_and_clear();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        size,
        chunk_size,
        blake3: whole.finalize().to_hex().to_string(),
        chunks: pieces,
    };
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    match output {
        Some(p) => tokio::fs::write(&p, text).await.with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn get(node: &str, manifest: PathBuf, output: PathBuf) -> anyhow::Result<()> {
    let text =
        tokio::fs::read_to_string(&manifest).await.with_context(|| format!("cannot read {}", manifest.display()))?;
    let m = Manifest::parse(&text).with_context(|| format!("{}", manifest.display()))?;
    let hashes = m.chunks.iter().map(|h| h.parse::<ChunkHash>()).collect::<Result<Vec<_>, _>>()?;
    let client = NodeClient::connect(node).await?;
    let tmp = output.with_extension("partial");
    let mut out = tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
    let bar = bytes_bar(m.size, "get");
    let mut whole = blake3::Hasher::new();
    let mut fetches = futures::stream::iter(hashes.into_iter().map(|h| {
        let client = client.clone();
        async move { client.get(&h).await }
    }))
    .buffered(PARALLEL);
    let mut written = 0u64;
    while let Some(data) = fetches.next().await {
        let data = data?;
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
    Ok(())
}
