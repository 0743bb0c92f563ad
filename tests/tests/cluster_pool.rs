//! The pool: storage nodes register in the node map, the replicated chunk client places R copies
//! where placement says, and reads survive SIGKILLed nodes (real processes on loopback).

use std::time::Duration;

use bytes::Bytes;
use chunk_engine::ChunkHash;
use cluster::{ChunkClient, ClientConfig, NodeState, PoolSettings, Timeouts, UNDER_PREFIX};
use integration_tests::meta::meta_cluster;
use integration_tests::{NodeProc, flip_byte, random_bytes};
use metadata_client::MetaClient;

struct Pool {
    _meta: Vec<integration_tests::meta::MetaProc>,
    meta_api: String,
    nodes: Vec<NodeProc>,
    _dir: tempfile::TempDir,
}

fn start_pool(n: usize) -> Pool {
    start_pool_with(n, 3)
}

fn start_pool_with(n: usize, replicas: usize) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let meta = meta_cluster(1, dir.path(), &[]);
    let meta_api = meta[0].addrs.api.clone();
    let nodes = (1..=n)
        .map(|i| {
            let id = format!("n{i}");
            let zone = format!("z{}", i % 3);
            NodeProc::start(
                &dir.path().join(&id),
                &[
                    "--meta",
                    &meta_api,
                    "--node-id",
                    &id,
                    "--zone",
                    &zone,
                    "--host",
                    &id,
                    "--heartbeat-ms",
                    "200",
                    "--down-after-ms",
                    "1500",
                    "--replicas",
                    &replicas.to_string(),
                    "--repair-interval-secs",
                    "2",
                ],
            )
        })
        .collect();
    Pool { _meta: meta, meta_api, nodes, _dir: dir }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        replicas: 3,
        min_replicas: 2,
        timeouts: Timeouts { down_after: Duration::from_millis(1500), out_after: Duration::from_secs(600) },
        rpc_timeout: Duration::from_secs(10),
        max_inflight: 16,
        ..ClientConfig::default()
    }
}

async fn holders(pool: &Pool, hash: &ChunkHash) -> Vec<String> {
    let mut out = Vec::new();
    for (i, n) in pool.nodes.iter().enumerate() {
        let st = n.client().await.has(&[*hash]).await.unwrap();
        if st[0].refs > 0 {
            out.push(format!("n{}", i + 1));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_chunks_survive_killed_nodes() {
    let mut pool = start_pool(5);
    let meta = MetaClient::new(&[&pool.meta_api]).unwrap();
    let client = ChunkClient::new(meta.clone(), client_config()).await.unwrap();
    client.wait_for_up(5, Duration::from_secs(30)).await.unwrap();
    let map = client.node_map();
    assert_eq!(map.nodes.len(), 5);
    assert_eq!(map.nodes["n2"].zone, "z2");
    assert!(map.nodes["n1"].capacity_bytes > 0);

    // Every chunk lands on exactly its three placed nodes, in three different zones.
    let mut chunks = Vec::new();
    for i in 0..40 {
        let data = Bytes::from(random_bytes(1000 + i * 20_000));
        let rep = client.put(data.clone()).await.unwrap();
        assert!(!rep.under_replicated, "{rep:?}");
        let mut placed = client.placed(&rep.hash);
        placed.sort();
        let mut stored = rep.stored_on.clone();
        stored.sort();
        assert_eq!(stored, placed);
        let zones: std::collections::HashSet<_> = placed.iter().map(|id| map.nodes[id].zone.clone()).collect();
        assert_eq!(zones.len(), 3, "replicas of {} share a zone: {placed:?}", rep.hash);
        chunks.push((rep.hash, data));
    }
    for (hash, _) in chunks.iter().take(10) {
        assert_eq!(holders(&pool, hash).await, {
            let mut p = client.placed(hash);
            p.sort();
            p
        });
    }

    // SIGKILL one node: every chunk still reads back verified, at once.
    pool.nodes[0].kill9();
    for (hash, data) in &chunks {
        assert_eq!(&client.get(hash).await.unwrap(), data);
    }
    // The node map notices (no polling by us: the client follows the watch).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = client.node_map();
        if m.state("n1", cluster::nodemap::now_unix_ms(), &client_config().timeouts) == Some(NodeState::Down) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "n1 never went down in the node map");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Writes go on with a node down: chunks placed on it are acknowledged with two copies and
    // recorded as under-replicated.
    let mut under = 0;
    for i in 0..30 {
        let data = Bytes::from(random_bytes(5000 + i));
        let rep = client.put(data.clone()).await.unwrap();
        let placed = client.placed(&rep.hash);
        assert_eq!(rep.under_replicated, placed.contains(&"n1".to_string()), "{rep:?} placed {placed:?}");
        if rep.under_replicated {
            under += 1;
            assert_eq!(rep.stored_on.len(), 2);
            let key = format!("{UNDER_PREFIX}{}", rep.hash);
            assert!(meta.get(key.as_bytes()).await.unwrap().is_some(), "under-replicated chunk not recorded");
        }
        chunks.push((rep.hash, data));
    }
    assert!(under > 5, "only {under} of 30 chunks were placed on the down node");

    // Kill a second node: with R=3 everything written before still reads.
    pool.nodes[3].kill9();
    for (hash, data) in &chunks {
        assert_eq!(&client.get(hash).await.unwrap(), data, "chunk {hash}");
    }
    // A chunk nobody stored is NotFound, not an error about the dead nodes... unless they might
    // hold it: with nodes down the client cannot tell, so it says unavailable.
    let missing = ChunkHash::of(b"never stored");
    assert!(client.get(&missing).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_copy_is_skipped_and_unknown_chunk_is_not_found() {
    let pool = start_pool(3);
    let meta = MetaClient::new(&[&pool.meta_api]).unwrap();
    let client = ChunkClient::new(meta, client_config()).await.unwrap();
    client.wait_for_up(3, Duration::from_secs(30)).await.unwrap();
    assert!(matches!(client.get(&ChunkHash::of(b"nothing")).await, Err(cluster::ClusterError::NotFound(_))));

    let data = Bytes::from(random_bytes(200_000));
    let rep = client.put(data.clone()).await.unwrap();
    assert_eq!(rep.stored_on.len(), 3);
    // Damage the copy on the first node reads go to.
    let first = client.placed(&rep.hash)[0].clone();
    let idx: usize = first[1..].parse::<usize>().unwrap() - 1;
    flip_byte(&pool.nodes[idx].dir, &data[..64]);
    assert_eq!(client.get(&rep.hash).await.unwrap(), data);
    // The damaged copy is quarantined on its node.
    let st = pool.nodes[idx].client().await.has(&[rep.hash]).await.unwrap();
    assert!(st[0].quarantined, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_agree_with_the_pool_on_copies_and_timeouts() {
    let pool = start_pool(1);
    let meta = MetaClient::new(&[&pool.meta_api]).unwrap();
    // The first node set the pool's settings from its own configuration.
    let settings = PoolSettings::load(&meta).await.unwrap().expect("the first node records the pool settings");
    let expected = Timeouts { down_after: Duration::from_millis(1500), out_after: Duration::from_secs(600) };
    assert_eq!(settings, PoolSettings::new(3, expected));

    // A node configured for another R, or other timeouts, refuses to join with one readable line.
    for (flag, value) in [("--replicas", "2"), ("--out-after-ms", "60000")] {
        let dir = pool._dir.path().join(format!("odd{flag}"));
        let args = [
            "--meta",
            &pool.meta_api,
            "--node-id",
            "odd",
            "--heartbeat-ms",
            "200",
            "--down-after-ms",
            "1500",
            flag,
            value,
        ];
        let (status, log) = NodeProc::start_expecting_failure(&dir, &args);
        assert!(!status.success(), "a node configured unlike the pool started");
        assert!(log.contains("this pool keeps 3 copies") && log.contains("configure it like the pool"), "{log}");
    }
    assert!(!ChunkClient::new(meta.clone(), client_config()).await.unwrap().node_map().nodes.contains_key("odd"));

    // A client takes R and the timeouts from the pool, whatever it was configured with.
    let cfg = ClientConfig { replicas: 5, min_replicas: 4, timeouts: Timeouts::default(), ..client_config() };
    let client = ChunkClient::new(meta.clone(), cfg).await.unwrap();
    assert_eq!((client.config().replicas, client.config().min_replicas, client.config().timeouts), (3, 3, expected));
    let cfg = ClientConfig { replicas: 1, min_replicas: 1, timeouts: Timeouts::default(), ..client_config() };
    let client = ChunkClient::new(meta, cfg).await.unwrap();
    client.wait_for_up(1, Duration::from_secs(30)).await.unwrap();
    let rep = client.put(Bytes::from(random_bytes(4096))).await.unwrap();
    assert_eq!(rep.stored_on, vec!["n1".to_string()]);
    assert!(rep.under_replicated, "one copy is short of the pool's 3: {rep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_over_chunks_only_it_holds() {
    // R=1: the draining node holds the only copy of its chunks, so it must push them itself.
    let pool = start_pool_with(2, 1);
    let meta = MetaClient::new(&[&pool.meta_api]).unwrap();
    let client = ChunkClient::new(meta.clone(), client_config()).await.unwrap();
    client.wait_for_up(2, Duration::from_secs(30)).await.unwrap();
    let mut chunks = Vec::new();
    for _ in 0..40 {
        let data = Bytes::from(random_bytes(8192));
        chunks.push((client.put(data.clone()).await.unwrap().hash, data));
    }
    let on_n1 = chunks.iter().filter(|(h, _)| client.placed(h) == ["n1"]).count();
    assert!(on_n1 > 5, "only {on_n1} of 40 chunks on n1");

    cluster::nodemap::set_admin_state(&meta, "n1", cluster::AdminState::Draining).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (h, data) in &chunks {
        loop {
            if holders(&pool, h).await == ["n2"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chunk {h} still not only on n2: {:?}",
                holders(&pool, h).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(&client.get(h).await.unwrap(), data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_the_metadata_service_joins_once_it_is_up() {
    use integration_tests::meta::{MetaAddrs, MetaProc};
    let dir = tempfile::tempdir().unwrap();
    let addrs = MetaAddrs::loopback(1);
    let api = addrs.api.clone();
    let node_dir = dir.path().join("n1");
    let node = std::thread::spawn(move || {
        NodeProc::start(
            &node_dir,
            &["--meta", &api, "--node-id", "n1", "--heartbeat-ms", "200", "--down-after-ms", "1500"],
        )
    });
    // Longer than the metadata client's own 20 s of retries: the node keeps waiting regardless.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(!node.is_finished(), "the node came up without a metadata service");
    let args = vec!["--initial-members".to_string(), addrs.member()];
    let mut meta_proc = MetaProc::spawn(addrs.clone(), &dir.path().join("m1"), &args, None);
    meta_proc.wait_healthy(Duration::from_secs(60));
    let node = tokio::task::spawn_blocking(move || node.join().expect("node start")).await.unwrap();
    let meta = MetaClient::new(&[&addrs.api]).unwrap();
    assert_eq!(PoolSettings::load(&meta).await.unwrap().map(|s| s.replicas), Some(3));
    let client = ChunkClient::new(meta, client_config()).await.unwrap();
    client.wait_for_up(1, Duration::from_secs(30)).await.unwrap();
    drop(node);
}
