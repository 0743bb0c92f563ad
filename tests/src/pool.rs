//! A small pool for data-path tests: one metadata node and storage nodes `n1..` on loopback
//! (fast heartbeats, down after 1.5 s), and the chunk client tests and helper binaries use on it.

use std::time::Duration;

use cluster::{ChunkClient, ClientConfig, Timeouts};
use metadata_client::MetaClient;

use crate::NodeProc;
use crate::meta::{MetaProc, meta_cluster};

/// The running pool; every process is killed when it drops.
pub struct Stack {
    pub nodes: Vec<NodeProc>,
    pub meta_procs: Vec<MetaProc>,
    pub meta: MetaClient,
    /// The metadata node's API address.
    pub api: String,
    pub dir: tempfile::TempDir,
}

/// Starts one metadata node and `nodes` storage nodes keeping `replicas` copies.
pub fn start(nodes: usize, replicas: usize) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta_procs = meta_cluster(1, dir.path(), &[]);
    let api = meta_procs[0].addrs.api.clone();
    let r = replicas.to_string();
    let nodes = (1..=nodes)
        .map(|i| {
            let id = format!("n{i}");
            let args = ["--meta", &api, "--node-id", &id, "--host", &id, "--replicas", &r];
            let timing = ["--heartbeat-ms", "200", "--down-after-ms", "1500"];
            NodeProc::start(&dir.path().join(&id), &[&args[..], &timing[..]].concat())
        })
        .collect();
    let meta = MetaClient::new(std::slice::from_ref(&api)).expect("metadata client");
    Stack { nodes, meta_procs, meta, api, dir }
}

/// A chunk client with `replicas` copies and minimum `min`, with the pool's fast timeouts,
/// once `replicas` nodes are up.
pub async fn client(meta: &MetaClient, replicas: usize, min: usize) -> ChunkClient {
    let cfg = ClientConfig {
        replicas,
        min_replicas: min,
        timeouts: Timeouts { down_after: Duration::from_millis(1500), out_after: Duration::from_secs(600) },
        rpc_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let c = ChunkClient::new(meta.clone(), cfg).await.expect("chunk client");
    c.wait_for_up(replicas, Duration::from_secs(30)).await.expect("storage nodes up");
    c
}
