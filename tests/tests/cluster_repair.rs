//! Repair, rebalance and scrub healing across real storage-node processes: a SIGKILLed node's
//! chunks get back to R copies, a returning node receives only what it lacks and surplus copies
//! go away, a new node receives its share, a damaged copy is replaced from a good replica.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunk_engine::ChunkHash;
use cluster::{ChunkClient, ClientConfig, REPAIR_PREFIX, RepairProgress, Timeouts};
use integration_tests::meta::{MetaProc, meta_cluster};
use integration_tests::{NodeProc, flip_byte, random_bytes};
use metadata_client::MetaClient;

const DOWN_MS: u64 = 1000;
const OUT_MS: u64 = 3000;

struct Pool {
    _meta: Vec<MetaProc>,
    meta_api: String,
    nodes: BTreeMap<String, NodeProc>,
    dir: tempfile::TempDir,
}

impl Pool {
    fn start(n: usize) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let meta = meta_cluster(1, dir.path(), &[]);
        let meta_api = meta[0].addrs.api.clone();
        let mut pool = Pool { _meta: meta, meta_api, nodes: BTreeMap::new(), dir };
        for i in 1..=n {
            pool.start_node(&format!("n{i}"));
        }
        pool
    }

    fn start_node(&mut self, id: &str) {
        let args = [
            "--meta",
            &self.meta_api,
            "--node-id",
            id,
            "--host",
            id,
            "--heartbeat-ms",
            "200",
            "--down-after-ms",
            &DOWN_MS.to_string(),
            "--out-after-ms",
            &OUT_MS.to_string(),
            "--repair-interval-secs",
            "2",
            "--repair-rate-mib",
            "0",
            "--replicas",
            "3",
        ];
        let node = NodeProc::start(&self.dir.path().join(id), &args);
        self.nodes.insert(id.to_string(), node);
    }

    /// Which live nodes hold a good copy of each chunk.
    async fn holders(&self, hashes: &[ChunkHash]) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new(); hashes.len()];
        for (id, n) in &self.nodes {
            let states = n.client().await.has(hashes).await.unwrap();
            for (i, s) in states.iter().enumerate() {
                if s.present && !s.quarantined {
                    out[i].push(id.clone());
                }
            }
        }
        out
    }

    async fn puts_on(&self, id: &str) -> u64 {
        self.nodes[id].client().await.stats().await.unwrap().puts
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        replicas: 3,
        min_replicas: 2,
        timeouts: Timeouts { down_after: Duration::from_millis(DOWN_MS), out_after: Duration::from_millis(OUT_MS) },
        rpc_timeout: Duration::from_secs(20),
        max_inflight: 16,
        ..ClientConfig::default()
    }
}

/// Waits until every chunk is held by exactly its placed nodes (no fewer, no surplus).
async fn wait_exactly_placed(pool: &Pool, client: &ChunkClient, hashes: &[ChunkHash], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let held = pool.holders(hashes).await;
        let mut wrong = 0;
        let mut example = None;
        for (h, mut have) in hashes.iter().zip(held) {
            let mut placed = client.placed(h);
            placed.sort();
            have.sort();
            if have != placed {
                wrong += 1;
                example.get_or_insert((h.to_string(), have, placed));
            }
        }
        if wrong == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{wrong} chunks not exactly on their placed nodes, e.g. {example:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Puts `n` unique chunks of `len` bytes, 8 at a time (data made from one random buffer with a
/// counter in front, so making it costs nothing).
async fn write_parallel(client: &ChunkClient, n: usize, len: usize) -> Vec<(ChunkHash, Bytes)> {
    use futures::StreamExt;
    let base = Bytes::from(random_bytes(len));
    let salt: u64 = rand::random();
    futures::stream::iter(0..n as u64)
        .map(|i| {
            let mut d = base.to_vec();
            d[..8].copy_from_slice(&(salt ^ i).to_le_bytes());
            let d = Bytes::from(d);
            async move {
                let rep = client.put(d.clone()).await.unwrap();
                assert!(!rep.under_replicated, "{rep:?}");
                (rep.hash, d)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn write(client: &ChunkClient, n: usize, len: usize) -> Vec<(ChunkHash, Bytes)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let data = Bytes::from(random_bytes(len));
        let rep = client.put(data.clone()).await.unwrap();
        out.push((rep.hash, data));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_node_is_repaired_and_returning_node_gets_only_what_it_lacks() {
    let mut pool = Pool::start(5);
    let meta = MetaClient::new(&[&pool.meta_api]).unwrap();
    let client = ChunkClient::new(meta.clone(), config()).await.unwrap();
    client.wait_for_up(5, Duration::from_secs(30)).await.unwrap();
    // 1 GiB of unique 4 MiB chunks (CAIRN_TEST_POOL_MIB overrides, e.g. for a quick local run).
    let mib: usize = std::env::var("CAIRN_TEST_POOL_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let started = Instant::now();
    let mut chunks = write_parallel(&client, mib / 4, 4 << 20).await;
    eprintln!("wrote {mib} MiB with R=3 in {:?}", started.elapsed());
    let hashes: Vec<ChunkHash> = chunks.iter().map(|c| c.0).collect();
    wait_exactly_placed(&pool, &client, &hashes, Duration::from_secs(30)).await;
    let on_n1: HashSet<ChunkHash> =
        hashes.iter().filter(|h| client.placed(h).contains(&"n1".into())).copied().collect();
    assert!(on_n1.len() > 10, "only {} chunks on n1", on_n1.len());

    // SIGKILL n1: reads go on; once it is out, its chunks get back to three copies elsewhere.
    let repair_started = Instant::now();
    pool.nodes.get_mut("n1").unwrap().kill9();
    let dead = pool.nodes.remove("n1").unwrap();
    for (h, d) in &chunks {
        assert_eq!(&client.get(h).await.unwrap(), d);
    }
    // Written while n1 is gone: those placed on n1 (as the pool stood then) have two copies.
    let during = write(&client, 20, 64 << 10).await;
    tokio::time::sleep(Duration::from_millis(OUT_MS + 500)).await;
    for h in &hashes {
        assert!(!client.placed(h).contains(&"n1".into()), "n1 still placed after it went out");
    }
    chunks.extend(during.iter().cloned());
    let all: Vec<ChunkHash> = chunks.iter().map(|c| c.0).collect();
    wait_exactly_placed(&pool, &client, &all, Duration::from_secs(120)).await;
    eprintln!("repaired {} chunks of n1 within {:?} of the kill", on_n1.len(), repair_started.elapsed());
    for (h, d) in &chunks {
        assert_eq!(&client.get(h).await.unwrap(), d);
    }

    // n1 returns with its old data: it receives only chunks it lacks (those written while it was
    // gone that placement gives it), and the copies repair made elsewhere for it are dropped.
    drop(dead);
    pool.start_node("n1");
    client.wait_for_up(5, Duration::from_secs(30)).await.unwrap();
    wait_exactly_placed(&pool, &client, &all, Duration::from_secs(120)).await;
    let lacked = during.iter().filter(|(h, _)| client.placed(h).contains(&"n1".into())).count() as u64;
    // n1 dropped none of its own copies (it once did when its first pass ran on a node map that
    // still showed it out, and then had them all pushed back).
    let progress = meta.get(format!("{REPAIR_PREFIX}n1").as_bytes()).await.unwrap().expect("n1 publishes progress");
    let progress: RepairProgress = serde_json::from_slice(&progress.value).unwrap();
    assert_eq!(progress.dropped_chunks, 0, "returning n1 dropped its own copies: {progress:?}");
    assert_eq!(pool.puts_on("n1").await, lacked, "n1 received chunks it already had");
    // The under-replication records of the chunks written while n1 was gone are cleared.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = meta.range(b"cluster/under/", b"cluster/under0", 1000).await.unwrap().kvs.len();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} under-replication records never cleared");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (h, d) in &chunks {
        assert_eq!(&client.get(h).await.unwrap(), d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_receives_its_share_and_damaged_copy_is_healed() {
    let mut pool = Pool::start(5);
    let meta = MetaClient::new(&[&pool.meta_api]).unwrap();
    let client = ChunkClient::new(meta, config()).await.unwrap();
    client.wait_for_up(5, Duration::from_secs(30)).await.unwrap();
    let chunks = write(&client, 120, 32 << 10).await;
    let hashes: Vec<ChunkHash> = chunks.iter().map(|c| c.0).collect();
    wait_exactly_placed(&pool, &client, &hashes, Duration::from_secs(30)).await;

    // A sixth node joins: it receives about a sixth of all copies, and nothing else moves.
    pool.start_node("n6");
    client.wait_for_up(6, Duration::from_secs(30)).await.unwrap();
    wait_exactly_placed(&pool, &client, &hashes, Duration::from_secs(60)).await;
    let got = pool.puts_on("n6").await;
    let fair = (hashes.len() * 3) as f64 / 6.0;
    eprintln!("rebalance: n6 received {got} copies, fair share {fair:.0}");
    assert!((got as f64) > fair * 0.6 && (got as f64) < fair * 1.4, "n6 received {got}, fair share {fair:.0}");
    let on_n6 = hashes.iter().filter(|h| client.placed(h).contains(&"n6".into())).count() as u64;
    assert_eq!(got, on_n6, "n6 received copies placement does not give it");

    // Damage one copy on disk; scrub finds it, the reconciler replaces it from a good replica.
    let (victim, data) = &chunks[7];
    let holder = client.placed(victim)[1].clone();
    flip_byte(&pool.nodes[&holder].dir, &data[..64]);
    let mut events = pool.nodes[&holder].client().await.scrub().await.unwrap();
    while events.next().await.unwrap().is_some() {}
    let st = pool.nodes[&holder].client().await.has(&[*victim]).await.unwrap();
    assert!(st[0].quarantined, "scrub did not flag the damaged copy");
    assert_eq!(&client.get(victim).await.unwrap(), data);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = pool.nodes[&holder].client().await.has(&[*victim]).await.unwrap();
        if st[0].present && !st[0].quarantined {
            break;
        }
        assert!(Instant::now() < deadline, "damaged copy on {holder} never healed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let direct = pool.nodes[&holder].client().await.get(victim).await.unwrap();
    assert_eq!(&direct, data);
}
