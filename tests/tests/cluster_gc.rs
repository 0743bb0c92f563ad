//! Garbage collection across the pool under concurrent writes (real processes): references to
//! half the data are dropped while new data is written; afterwards every referenced chunk reads
//! back and every unreferenced one is gone from every node.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunk_engine::ChunkHash;
use cluster::refs::{commit_refs, drop_refs};
use cluster::{ChunkClient, ClientConfig, Timeouts};
use integration_tests::meta::meta_cluster;
use integration_tests::{NodeProc, random_bytes};
use metadata_client::MetaClient;

const WINDOW: Duration = Duration::from_millis(2000);

async fn write_owned(client: &ChunkClient, meta: &MetaClient, owner: &str, n: usize) -> Vec<(ChunkHash, Bytes)> {
    let mut out = Vec::new();
    let mut puts = Vec::new();
    for _ in 0..n {
        let data = Bytes::from(random_bytes(20_000));
        let rep = client.put(data.clone()).await.unwrap();
        puts.push((rep.hash, rep.acked_at));
        out.push((rep.hash, data));
    }
    commit_refs(meta, owner, &puts, WINDOW).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_referenced_chunks_and_reclaims_the_rest_under_writes() {
    let dir = tempfile::tempdir().unwrap();
    let meta_procs = meta_cluster(1, dir.path(), &[]);
    let api = meta_procs[0].addrs.api.clone();
    let nodes: Vec<NodeProc> = (1..=4)
        .map(|i| {
            let id = format!("n{i}");
            NodeProc::start(
                &dir.path().join(&id),
                &[
                    "--meta",
                    &api,
                    "--node-id",
                    &id,
                    "--host",
                    &id,
                    "--heartbeat-ms",
                    "200",
                    "--replicas",
                    "3",
                    "--pool-gc-interval-secs",
                    "0",
                ],
            )
        })
        .collect();
    let meta = MetaClient::new(&[&api]).unwrap();
    let cfg = ClientConfig { replicas: 3, min_replicas: 3, timeouts: Timeouts::default(), ..ClientConfig::default() };
    let client = ChunkClient::new(meta.clone(), cfg).await.unwrap();
    client.wait_for_up(4, Duration::from_secs(30)).await.unwrap();

    let keep = write_owned(&client, &meta, "obj/keep", 40).await;
    let doomed = write_owned(&client, &meta, "obj/doomed", 40).await;
    // A chunk put but never referenced (a writer that died before its commit).
    let orphan = client.put(Bytes::from(random_bytes(9_000))).await.unwrap().hash;
    let last_put = Instant::now();

    // Writers keep going through the whole round.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, meta, stop) = (client.clone(), meta.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                written.extend(write_owned(&client, &meta, &format!("obj/new-{i}"), 3).await);
                i += 1;
            }
            written
        })
    };
    let epoch = cluster::gc::start_epoch(&meta, WINDOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let doomed_hashes: Vec<ChunkHash> = doomed.iter().map(|c| c.0).collect();
    drop_refs(&meta, "obj/doomed", &doomed_hashes).await.unwrap();

    // Every node sweeps once per round; a second round catches references dropped mid-round.
    let wait_round = |epoch: u64| {
        let meta = meta.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = cluster::gc::sweeps(&meta, epoch).await.unwrap();
                if done.len() == 4 {
                    return done;
                }
                assert!(Instant::now() < deadline, "round {epoch}: only {} of 4 nodes swept", done.len());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_round(epoch.epoch).await;
    // New nodes know their whole history and sweep at once: chunks put within the window are
    // held (their writer may be about to commit), so the second round comes a window later.
    tokio::time::sleep((WINDOW + Duration::from_millis(300)).saturating_sub(last_put.elapsed())).await;
    let second = cluster::gc::start_epoch(&meta, WINDOW).await.unwrap();
    assert_eq!(second.epoch, epoch.epoch + 1);
    let done = wait_round(second.epoch).await;
    stop.store(true, Ordering::Relaxed);
    let new = writer.await.unwrap();
    assert!(new.len() >= 6, "the writer made only {} chunks during GC", new.len());

    // Referenced data, including everything written while GC ran, reads back.
    for (h, d) in keep.iter().chain(new.iter()) {
        assert_eq!(&client.get(h).await.unwrap(), d, "referenced chunk {h} lost");
    }
    // Unreferenced chunks are gone from every node.
    let keep_set: HashSet<ChunkHash> = keep.iter().chain(new.iter()).map(|c| c.0).collect();
    let mut gone: Vec<ChunkHash> = doomed_hashes.clone();
    gone.push(orphan);
    for n in &nodes {
        let c = n.client().await;
        for s in c.has(&gone).await.unwrap() {
            assert!(!s.present || s.refs == 0, "unreferenced chunk still on {}: {s:?}", n.grpc);
        }
        let listed = c.list(None, 10_000).await.unwrap();
        for ch in listed.chunks {
            let h = ChunkHash(ch.hash.as_slice().try_into().unwrap());
            assert!(keep_set.contains(&h), "{} holds a chunk nobody references: {h}", n.grpc);
        }
    }
    let deleted: u64 = done.iter().map(|s| s.deleted).sum();
    eprintln!("gc: second round deleted {deleted} copies; sweeps {done:?}");
}
