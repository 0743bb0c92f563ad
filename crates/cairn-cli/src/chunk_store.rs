//! Where `cairn chunk` commands store and read chunks: the storage pool (replicated puts, verified
//! reads with fallback to other replicas, references in the metadata service) or, without a
//! metadata endpoint, one standalone storage node.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use chunk_engine::ChunkHash;
use cluster::{ChunkClient, ClientConfig};
use metadata_client::MetaClient;
use node_client::NodeClient;

/// A chunk store.
#[derive(Clone)]
pub enum Store {
    /// One storage node: nothing references the chunks (its own GC keeps them).
    Node(Box<NodeClient>),
    /// The pool: chunks are put on the pool's R nodes and kept by reference keys.
    Pool { meta: MetaClient, client: ChunkClient },
}

impl Store {
    /// The store named by the CLI's flags: the pool when `meta` is given, else `node`.
    pub async fn open(node: &str, meta: Option<&str>) -> anyhow::Result<Store> {
        match meta {
            Some(eps) => {
                let list: Vec<&str> = eps.split(',').collect();
                let meta = MetaClient::new(&list).context("metadata service")?;
                let client = ChunkClient::new(meta.clone(), ClientConfig::default()).await.context("storage pool")?;
                Ok(Store::Pool { meta, client })
            }
            None => Ok(Store::Node(Box::new(NodeClient::connect(node).await?))),
        }
    }

    /// The metadata service, for commands that only change references.
    pub fn meta(&self) -> Option<&MetaClient> {
        match self {
            Store::Pool { meta, .. } => Some(meta),
            Store::Node(_) => None,
        }
    }

    /// The largest chunk the store takes, when it can say (a standalone node can).
    pub async fn max_chunk_size(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Store::Node(c) => Ok(Some(c.stats().await?.max_chunk_size as u64)),
            Store::Pool { .. } => Ok(None),
        }
    }

    /// Stores one chunk; returns its hash and when the put was acknowledged (its reference must
    /// be committed within the write window of that moment).
    pub async fn put(&self, data: Bytes) -> anyhow::Result<(ChunkHash, Instant)> {
        match self {
            Store::Node(c) => {
                let hash = ChunkHash::of(&data);
                c.put(Some(hash), data).await?;
                Ok((hash, Instant::now()))
            }
            Store::Pool { client, .. } => {
                let r = client.put(data).await?;
                Ok((r.hash, r.acked_at))
            }
        }
    }

    /// Reads one chunk, verified (the pool falls back to other replicas).
    pub async fn get(&self, hash: &ChunkHash) -> anyhow::Result<Bytes> {
        match self {
            Store::Node(c) => Ok(c.get(hash).await?),
            Store::Pool { client, .. } => Ok(client.get(hash).await?),
        }
    }
}
