//! The operator CLI against a real pool (one metadata node, three storage nodes): `cairn cluster
//! status` shows every node's state and capacity, `cairn node drain|undrain|remove` change the
//! admin state (and refuse an unknown id), a SIGKILLed node shows as down after the down timeout.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::meta::meta_cluster;
use integration_tests::{NodeProc, bin};
use serde_json::Value;

const DOWN_MS: u64 = 1000;
/// Long enough that the killed node stays down (not out) for the rest of the test.
const OUT_MS: u64 = 60_000;

fn cairn(meta: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn")).args(["--meta", meta]).args(args).output().expect("run cairn")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cairn failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cluster status --json`: no timeout flags, it judges states with the pool's own settings.
fn status(meta: &str) -> Value {
    let v: Value = serde_json::from_str(&ok(&cairn(meta, &["cluster", "status", "--json"]))).expect("status is JSON");
    assert_eq!((v["down_after_ms"].as_u64(), v["out_after_ms"].as_u64()), (Some(DOWN_MS), Some(OUT_MS)), "{v}");
    v
}

/// Each node's state, in id order.
fn states(v: &Value) -> Vec<(String, String)> {
    v["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["state"].as_str().unwrap().to_string()))
        .collect()
}

fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Polls `cluster status` until the node states are `want` (at most `within`).
fn wait_states(meta: &str, want: &[(&str, &str)], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = status(meta);
        if states(&v) == expect(want) {
            return v;
        }
        assert!(Instant::now() < deadline, "node states {:?}, want {want:?}", states(&v));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_drain_undrain_remove_and_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let (down, out) = (DOWN_MS.to_string(), OUT_MS.to_string());
        let args = [
            "--meta",
            &api,
            "--node-id",
            id,
            "--host",
            id,
            "--heartbeat-ms",
            "200",
            "--down-after-ms",
            &down,
            "--out-after-ms",
            &out,
            "--repair-interval-secs",
            "2",
            "--replicas",
            "3",
            // Rounds only on demand: the test starts round 1 itself.
            "--pool-gc-interval-secs",
            "0",
        ];
        nodes.push(NodeProc::start(&dir.path().join(id), &args));
    }

    // All three up, with their capacity.
    let v = wait_states(&api, &[("n1", "up"), ("n2", "up"), ("n3", "up")], Duration::from_secs(10));
    for n in v["nodes"].as_array().unwrap() {
        assert!(n["capacity_bytes"].as_u64().unwrap() > 0, "{n}");
        assert!(n["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{n}");
        assert_eq!(n["host"], n["id"]);
    }
    assert_eq!(v["under_replicated"]["total"], 0);
    assert_eq!(v["down_after_ms"], DOWN_MS);
    assert_eq!(v["replicas"], 3);

    // Drain n2, refuse an unknown id, undrain n2.
    let said = ok(&cairn(&api, &["node", "drain", "n2"]));
    assert!(said.starts_with("n2 draining") && said.contains("cairn cluster status --watch"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    let v = status(&api);
    assert_eq!(states(&v), expect(&[("n1", "up"), ("n2", "draining"), ("n3", "up")]));
    assert_eq!(v["nodes"][1]["admin"], "draining");

    let out = cairn(&api, &["node", "remove", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: node \"nope\" is not in the node map (registered: n1, n2, n3)"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(states(&status(&api)).len(), 3, "an unknown id was added to the node map");

    let said = ok(&cairn(&api, &["node", "undrain", "n2"]));
    assert!(said.starts_with("n2 in"), "{said}");
    let v = status(&api);
    assert_eq!(states(&v), expect(&[("n1", "up"), ("n2", "up"), ("n3", "up")]));
    assert_eq!(v["nodes"][1]["admin"], "in");

    // A pool GC round on demand: every node sweeps after the window and reports it.
    let said = ok(&cairn(&api, &["cluster", "gc", "--window-secs", "1"]));
    assert!(said.starts_with("GC round 1 started"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ok(&cairn(&api, &["meta", "scan", "cluster/gc/done/1/"]));
        if out.lines().filter(|l| l.contains("cluster/gc/done/1/")).count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not every node swept round 1: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGKILL n3: down once its last heartbeat is older than the down timeout.
    let killed = Instant::now();
    nodes[2].kill9();
    wait_states(&api, &[("n1", "up"), ("n2", "up"), ("n3", "down")], Duration::from_secs(5));
    assert!(killed.elapsed() >= Duration::from_millis(DOWN_MS - 300), "down after {:?}", killed.elapsed());

    // The table says the same; `--watch` on an idle pool ends by itself with the table.
    let table = ok(&cairn(&api, &["cluster", "status"]));
    let row = table.lines().find(|l| l.starts_with("n3 ")).unwrap_or_else(|| panic!("no n3 row:\n{table}"));
    assert!(row.contains(" down "), "{table}");
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .starts_with("pool: 3 copies per chunk; a silent node is down after 1.0s, out after 60s"),
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().starts_with("ID "), "{table}");
    assert!(table.contains("under-replicated chunks: 0"), "{table}");
    let started = Instant::now();
    let watched = ok(&cairn(&api, &["cluster", "status", "--watch"]));
    assert!(started.elapsed() < Duration::from_secs(10), "--watch took {:?}", started.elapsed());
    assert!(watched.contains("repair: idle"), "{watched}");
}
