//! The metadata service as three (or one) real daemon processes on loopback: leader failover
//! with no acknowledged write lost, snapshot catch-up, partitions, compare-and-set, bad input,
//! membership changes and watches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::meta::v1 as pb;
use futures::StreamExt;
use integration_tests::meta::{MetaAddrs, MetaProc, NetNs, meta_cluster};
use metadata_client::{MetaClient, MetaClientError, Txn};
use tonic::Code;

fn client(nodes: &[MetaProc]) -> MetaClient {
    let eps: Vec<String> = nodes.iter().map(|n| n.addrs.api.clone()).collect();
    MetaClient::new(&eps).unwrap()
}

async fn leader_id(c: &MetaClient) -> u64 {
    c.status().await.unwrap().leader_id
}

/// Every key and value as node `n` sees it (its own state, no leader involved).
async fn full_scan(api: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = MetaClient::new(&[api]).unwrap();
    let mut out = BTreeMap::new();
    let mut start = Vec::new();
    loop {
        let page = c.range_serializable(&start, b"", 1000).await.unwrap();
        for kv in page.kvs {
            out.insert(kv.key, kv.value);
        }
        match page.next_key {
            Some(k) => start = k,
            None => return out,
        }
    }
}

/// Waits until every running node has applied the same index, at least `min`.
async fn wait_converged(nodes: &[MetaProc], min: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut applied = Vec::new();
        for n in nodes.iter().filter(|n| n.running()) {
            applied.push(MetaClient::status_of(&n.addrs.api).await.map(|s| s.last_applied).unwrap_or(0));
        }
        if applied.iter().all(|a| *a >= min && *a == applied[0]) {
            return;
        }
        assert!(Instant::now() < deadline, "nodes did not converge: applied {applied:?}, want >= {min}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_loses_no_acknowledged_write_and_replicas_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = meta_cluster(3, dir.path(), &[]);
    let c = client(&nodes);
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("stream/{w}/{i:06}").into_bytes();
                let val = format!("v{i}").into_bytes();
                let txn = Txn::new().absent(&key).put(&key, &val).put(format!("last/{w}").as_bytes(), &val);
                match c.txn(txn).await {
                    Ok(o) if o.succeeded => {
                        acked.lock().unwrap().insert(key, val);
                    }
                    Ok(o) => panic!("fresh key refused: {o:?}"),
                    Err(MetaClientError::Indeterminate(_)) => {} // outcome unknown: not acknowledged
                    Err(e) => panic!("writer {w}: {e}"),
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = leader_id(&c).await;
    let before = acked.lock().unwrap().len();
    nodes[(old - 1) as usize].kill9();
    let killed_at = Instant::now();
    // A new leader must be elected and serving.
    let probe = MetaClient::new(&nodes.iter().filter(|n| n.running()).map(|n| n.addrs.api.clone()).collect::<Vec<_>>())
        .unwrap();
    probe.put(b"probe/after-failover", b"1").await.unwrap();
    let failover = killed_at.elapsed();
    let new = leader_id(&probe).await;
    assert_ne!(new, old);
    eprintln!("leader {old} killed; leader {new} serving writes after {failover:?}");
    assert!(failover < Duration::from_secs(15), "failover took {failover:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > before, "writes must continue after the failover");
    nodes[(old - 1) as usize].restart();
    let last = probe.status().await.unwrap().last_applied;
    wait_converged(&nodes, last).await;
    let scans = [
        full_scan(&nodes[0].addrs.api).await,
        full_scan(&nodes[1].addrs.api).await,
        full_scan(&nodes[2].addrs.api).await,
    ];
    assert_eq!(scans[0], scans[1], "nodes 1 and 2 disagree");
    assert_eq!(scans[1], scans[2], "nodes 2 and 3 disagree");
    for (k, v) in &acked {
        assert_eq!(scans[0].get(k), Some(v), "acknowledged write {} lost", String::from_utf8_lossy(k));
    }
    eprintln!("{} acknowledged transactions, all present on all 3 nodes", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_that_missed_many_writes_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = meta_cluster(3, dir.path(), &["--snapshot-logs", "100"]);
    let c = client(&nodes);
    let leader = leader_id(&c).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap() as usize - 1;
    nodes[follower].kill9();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                c.put(format!("bulk/{w:02}/{i:04}").as_bytes(), &[w as u8; 100]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Concurrent puts are batched into few log entries; sequential ones make sure the log grows
    // well past what the leader keeps after a snapshot.
    for i in 0..400 {
        c.put(format!("seq/{i:04}").as_bytes(), b"s").await.unwrap();
    }
    let st = c.status().await.unwrap();
    assert!(st.snapshot_index > 300, "leader should have compacted its log: {st:?}");
    nodes[follower].restart();
    wait_converged(&nodes, st.last_applied).await;
    let mine = full_scan(&nodes[follower].addrs.api).await;
    assert_eq!(mine.len(), 2000);
    assert_eq!(mine, full_scan(&nodes[leader as usize - 1].addrs.api).await);
    assert!(nodes[follower].log_text().contains("snapshot installed"), "{}", nodes[follower].log_text());
}

/// Sequential puts `prefix/0000..n` (each its own log entry).
async fn put_seq(c: &MetaClient, prefix: &str, n: usize, expect: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
    for i in 0..n {
        let (k, v) = (format!("{prefix}/{i:04}").into_bytes(), format!("{prefix}-{i}").into_bytes());
        c.put(&k, &v).await.unwrap();
        expect.insert(k, v);
    }
}

/// Aged voters restart: every voter's log purged several times (a snapshot every 50 entries)
/// and one voter caught up by installing the leader's snapshot, then every voter SIGKILLed and
/// started again, then stopped cleanly and started again: they start, elect a leader, and hold
/// every acknowledged write. (A voter whose log had been purged once used to fail every start:
/// the purged-log id was written as one type and read as another.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voters_restart_after_log_purges_and_after_installing_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = meta_cluster(3, dir.path(), &["--snapshot-logs", "50"]);
    let c = client(&nodes);
    let mut expect = BTreeMap::new();
    let leader = leader_id(&c).await;
    let lagging = (1..=3).find(|i| *i != leader).unwrap() as usize - 1;
    nodes[lagging].kill9();
    put_seq(&c, "a", 600, &mut expect).await;
    let st = c.status().await.unwrap();
    assert!(st.snapshot_index >= 500, "the leader should have compacted its log several times: {st:?}");
    nodes[lagging].restart();
    wait_converged(&nodes, st.last_applied).await;
    assert!(nodes[lagging].log_text().contains("snapshot installed"), "{}", nodes[lagging].log_text());
    // Now the voter that installed the snapshot purges its own log too.
    put_seq(&c, "b", 400, &mut expect).await;
    wait_converged(&nodes, c.status().await.unwrap().last_applied).await;
    for n in &nodes {
        let s = MetaClient::status_of(&n.addrs.api).await.unwrap();
        assert!(s.snapshot_index >= 900, "voter {} has not compacted: {s:?}", n.addrs.id);
    }
    for round in 0..2 {
        for n in nodes.iter_mut() {
            if round == 0 {
                n.kill9();
            } else {
                assert!(n.terminate().success(), "voter {} did not stop cleanly:\n{}", n.addrs.id, n.log_text());
            }
        }
        for n in nodes.iter_mut() {
            n.restart();
        }
        for n in nodes.iter_mut() {
            n.wait_healthy(Duration::from_secs(60));
        }
        let c = client(&nodes);
        put_seq(&c, &format!("r{round}"), 60, &mut expect).await;
        let last = c.status().await.unwrap().last_applied;
        wait_converged(&nodes, last).await;
        for n in &nodes {
            let got = full_scan(&n.addrs.api).await;
            assert_eq!(got.len(), expect.len(), "voter {} after restart round {round}", n.addrs.id);
            assert!(got == expect, "voter {} holds other values after restart round {round}", n.addrs.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_increments_end_exact() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = meta_cluster(3, dir.path(), &[]);
    let c = client(&nodes);
    const CLIENTS: u64 = 8;
    const EACH: u64 = 25;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..EACH {
                loop {
                    let cur = c.get(b"counter").await.unwrap();
                    let (n, rev) = match &cur {
                        Some(kv) => {
                            (String::from_utf8(kv.value.clone()).unwrap().parse::<u64>().unwrap(), kv.mod_revision)
                        }
                        None => (0, 0),
                    };
                    let t =
                        Txn::new().mod_revision_equals(b"counter", rev).put(b"counter", (n + 1).to_string().as_bytes());
                    let o = c.txn(t).await.unwrap();
                    if o.succeeded {
                        break;
                    }
                    assert_eq!(o.failed_condition, Some(0));
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let v = c.get(b"counter").await.unwrap().unwrap();
    assert_eq!(String::from_utf8(v.value).unwrap(), (CLIENTS * EACH).to_string());
    eprintln!("{} increments, {conflicts} compare-and-set conflicts retried", CLIENTS * EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_waiting_together_go_in_one_call_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = meta_cluster(1, dir.path(), &[]);
    let c = client(&nodes);
    c.put(b"b/taken", b"x").await.unwrap();
    // Many at once on one client: most create a key, some find their condition false, and in
    // the second round one is malformed (its batch is refused whole, then sent one by one).
    // Each answer is its own, whatever else shared its call.
    for round in [0..150u32, 150..200] {
        let tasks: Vec<_> = round
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let key = format!("b/k{i:03}").into_bytes();
                    let t = match i {
                        7 | 77 | 170 => Txn::new().absent(b"b/taken").put(&key, b"never"),
                        163 => Txn::new().put(b"", b"malformed"),
                        _ => Txn::new().absent(&key).put(&key, i.to_string().as_bytes()),
                    };
                    (i, c.txn(t).await)
                })
            })
            .collect();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            let key = format!("b/k{i:03}").into_bytes();
            match i {
                7 | 77 | 170 => {
                    let o = r.unwrap();
                    assert!(!o.succeeded && o.failed_condition == Some(0), "{i}: {o:?}");
                    assert!(c.get(&key).await.unwrap().is_none());
                }
                163 => assert!(matches!(r, Err(MetaClientError::InvalidArgument(_))), "{i}: {r:?}"),
                _ => {
                    let o = r.unwrap();
                    assert!(o.succeeded, "{i}: {o:?}");
                    let kv = c.get(&key).await.unwrap().unwrap();
                    assert_eq!((kv.value, kv.mod_revision), (i.to_string().into_bytes(), o.revision));
                }
            }
        }
    }
    // They did travel together: the node answered batches.
    let (_, body) = integration_tests::http_get(nodes[0].addrs.http, "/metrics").unwrap();
    let batches: f64 = body
        .lines()
        .find(|l| l.starts_with("cairn_meta_rpc_total{code=\"OK\",method=\"TxnBatch\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(batches >= 1.0, "no TxnBatch call answered:\n{body}");
    // A batch is all or nothing only in being malformed: the service refuses a batch holding a
    // bad transaction whole, and applies nothing of it.
    let mut raw = pb::kv_client::KvClient::connect(format!("http://{}", nodes[0].addrs.api)).await.unwrap();
    let good = pb::TxnRequest {
        conditions: vec![],
        ops: vec![pb::Op { key: b"b/raw".to_vec(), value: b"v".to_vec(), delete: false }],
    };
    let bad = pb::TxnRequest {
        conditions: vec![],
        ops: vec![pb::Op { key: Vec::new(), value: b"v".to_vec(), delete: false }],
    };
    let e = raw.txn_batch(pb::TxnBatchRequest { txns: vec![good.clone(), bad] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("transaction 1 of the batch"), "{}", e.message());
    assert!(c.get(b"b/raw").await.unwrap().is_none());
    let e = raw.txn_batch(pb::TxnBatchRequest { txns: vec![] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let r = raw.txn_batch(pb::TxnBatchRequest { txns: vec![good.clone(), good] }).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 2);
    assert!(r.results.iter().all(|t| t.succeeded && t.revision > 0));
    assert!(r.results[1].revision > r.results[0].revision, "applied in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = meta_cluster(1, dir.path(), &[]);
    let c = client(&nodes);
    for r in [
        c.put(b"", b"v").await.map(|_| ()),
        c.put(&vec![b'k'; metadata_service_limits::MAX_KEY + 1], b"v").await.map(|_| ()),
        c.put(b"k", &vec![0; metadata_service_limits::MAX_VALUE + 1]).await.map(|_| ()),
        c.get(b"").await.map(|_| ()),
        c.txn(Txn::new()).await.map(|_| ()),
        c.txn(Txn::new().absent(b"")).await.map(|_| ()),
        c.range(b"b", b"a", 10).await.map(|_| ()),
    ] {
        match r {
            Err(MetaClientError::InvalidArgument(m)) => assert!(!m.is_empty()),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    // A condition kind the server does not know, sent raw.
    let mut raw = pb::kv_client::KvClient::connect(format!("http://{}", nodes[0].addrs.api)).await.unwrap();
    let bad = pb::TxnRequest {
        conditions: vec![pb::Condition { key: b"k".to_vec(), kind: 42, value: vec![], mod_revision: 0 }],
        ops: vec![],
    };
    let err = raw.txn(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("unknown kind"), "{}", err.message());
    // Nothing was written by any of it.
    assert!(c.range(b"", b"", 10).await.unwrap().kvs.is_empty());
}

mod metadata_service_limits {
    pub const MAX_KEY: usize = 4096;
    pub const MAX_VALUE: usize = 1 << 20;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_side_of_a_partition_cannot_commit_and_majority_can() {
    let dir = tempfile::tempdir().unwrap();
    // Node 1 lives in its own network namespace: one link for Raft peer traffic (which we cut)
    // and one for its client API (which stays up, so we can watch it fail to commit).
    let (ns, links) = NetNs::new(2);
    let (peer_link, api_link) = (&links[0], &links[1]);
    let port = |_: ()| integration_tests::free_port();
    let a1 = MetaAddrs {
        id: 1,
        api: format!("{}:{}", api_link.ns_ip, port(())),
        peer: format!("{}:{}", peer_link.ns_ip, port(())),
        http: format!("{}:{}", api_link.ns_ip, port(())).parse().unwrap(),
    };
    let others: Vec<MetaAddrs> = (2..=3)
        .map(|id| MetaAddrs {
            id,
            api: format!("127.0.0.1:{}", port(())),
            peer: format!("{}:{}", peer_link.host_ip, port(())),
            http: format!("127.0.0.1:{}", port(())).parse().unwrap(),
        })
        .collect();
    let members = std::iter::once(&a1).chain(&others).map(MetaAddrs::member).collect::<Vec<_>>().join(",");
    let args = vec!["--initial-members".to_string(), members];
    let mut nodes = vec![MetaProc::spawn(a1.clone(), &dir.path().join("m1"), &args, Some(&ns.name))];
    for a in &others {
        nodes.push(MetaProc::spawn(a.clone(), &dir.path().join(format!("m{}", a.id)), &args, None));
    }
    for n in &mut nodes {
        n.wait_healthy(Duration::from_secs(60));
    }
    let all = client(&nodes);
    all.put(b"before", b"1").await.unwrap();
    let leader_before = leader_id(&all).await;

    ns.set_link(peer_link, false);
    // The minority (node 1 alone) must not commit, whatever role it had. Ask it directly, with
    // no redirect-following client in between.
    let mut raw = pb::kv_client::KvClient::connect(format!("http://{}", a1.api)).await.unwrap();
    let started = Instant::now();
    let res = raw.put(pb::PutRequest { key: b"minority".to_vec(), value: b"x".to_vec() }).await;
    match &res {
        Err(s) => assert!(
            matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded),
            "minority write failed with an unexpected code: {s:?}"
        ),
        Ok(_) => panic!("the minority committed a write"),
    }
    eprintln!("minority write refused after {:?}: {:?}", started.elapsed(), res.unwrap_err().code());
    // The majority keeps committing (electing a new leader if node 1 led).
    let majority = MetaClient::new(&[&others[0].api, &others[1].api]).unwrap();
    for i in 0..50 {
        majority.put(format!("majority/{i:02}").as_bytes(), b"y").await.unwrap();
    }
    let leader_during = leader_id(&majority).await;
    assert_ne!(leader_during, 1);
    eprintln!("leader before {leader_before}, during partition {leader_during}");

    ns.set_link(peer_link, true);
    let last = majority.status().await.unwrap().last_applied;
    wait_converged(&nodes, last).await;
    let s1 = full_scan(&a1.api).await;
    assert_eq!(s1, full_scan(&others[0].api).await);
    assert!(!s1.contains_key(b"minority".as_slice()), "the minority's write must never appear");
    assert_eq!(s1.keys().filter(|k| k.starts_with(b"majority/")).count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voters_are_added_and_removed_and_new_ones_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = meta_cluster(1, dir.path(), &["--snapshot-logs", "50"]);
    let c = client(&first);
    for i in 0..120 {
        c.put(format!("pre/{i:03}").as_bytes(), b"v").await.unwrap();
    }
    let mut joiners = Vec::new();
    for id in 2..=3 {
        let a = MetaAddrs::loopback(id);
        let p = MetaProc::spawn(
            a.clone(),
            &dir.path().join(format!("j{id}")),
            &["--join".to_string(), "true".to_string()],
            None,
        );
        let out = std::process::Command::new(integration_tests::bin("cairn"))
            .args(["--meta", &first[0].addrs.api, "meta", "add-voter", &id.to_string(), &a.api, &a.peer])
            .output()
            .unwrap();
        assert!(out.status.success(), "add-voter: {}", String::from_utf8_lossy(&out.stderr));
        joiners.push(p);
    }
    let st = c.status().await.unwrap();
    assert_eq!(st.voters.len(), 3, "{st:?}");
    c.put(b"after-join", b"1").await.unwrap();
    let all: Vec<MetaProc> = first.drain(..).chain(joiners).collect();
    let last = c.status().await.unwrap().last_applied;
    wait_converged(&all, last).await;
    assert_eq!(full_scan(&all[2].addrs.api).await.len(), 121);
    // Remove one voter through the CLI; the group goes on with two.
    let out = std::process::Command::new(integration_tests::bin("cairn"))
        .args(["--meta", &all[0].addrs.api, "meta", "remove-voter", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "remove-voter: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.status().await.unwrap().voters.len(), 2);
    c.put(b"after-remove", b"1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sees_changes_under_its_prefix_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = meta_cluster(1, dir.path(), &[]);
    let c = client(&nodes);
    let mut w = Box::pin(c.watch(b"nodes/").await.unwrap());
    c.put(b"other/x", b"0").await.unwrap();
    c.put(b"nodes/a", b"1").await.unwrap();
    c.put(b"nodes/b", b"2").await.unwrap();
    c.delete(b"nodes/a").await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap().unwrap();
        seen.push((String::from_utf8(ev.kv.unwrap().key).unwrap(), ev.deleted, ev.revision));
    }
    assert_eq!(
        seen.iter().map(|s| (s.0.as_str(), s.1)).collect::<Vec<_>>(),
        vec![("nodes/a", false), ("nodes/b", false), ("nodes/a", true)]
    );
    assert!(seen.windows(2).all(|p| p[0].2 < p[1].2), "revisions must increase: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_clean_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = meta_cluster(3, dir.path(), &[]);
    let c = client(&nodes);
    for i in 0..20 {
        c.put(format!("m/{i}").as_bytes(), b"v").await.unwrap();
    }
    let leader = leader_id(&c).await as usize - 1;
    let (code, body) = integration_tests::http_get(nodes[leader].addrs.http, "/metrics").unwrap();
    assert_eq!(code, 200);
    for series in [
        "cairn_meta_is_leader 1",
        "cairn_meta_term ",
        "cairn_meta_commit_index ",
        "cairn_meta_apply_lag ",
        "cairn_meta_voters 3",
        "cairn_meta_rpc_total{code=\"OK\",method=\"Put\"}",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    let (code, _) = integration_tests::http_get(nodes[(leader + 1) % 3].addrs.http, "/healthz").unwrap();
    assert_eq!(code, 200);
    let follower = (leader + 1) % 3;
    let st = nodes[follower].terminate();
    assert!(st.success(), "{st:?}");
    assert!(nodes[follower].log_text().contains("stopped cleanly"));
    c.put(b"after-sigterm", b"1").await.unwrap();
    nodes[follower].restart();
    let last = c.status().await.unwrap().last_applied;
    wait_converged(&nodes, last).await;
    assert_eq!(full_scan(&nodes[follower].addrs.api).await.len(), 21);
}
