//! `cairn chunk put|get|rm` against a real pool (one metadata node, three storage nodes, R=3):
//! a put file survives a pool GC round and reads back byte-identical, every copy exists right
//! after the put, reads fall back past corrupt copies and a SIGKILLed node, `rm` then a round
//! frees the chunks, and a version-1 manifest still reads.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chunk_engine::ChunkHash;
use integration_tests::meta::meta_cluster;
use integration_tests::{NodeProc, bin, flip_byte, random_bytes};
use serde_json::Value;

const CHUNK: usize = 1 << 20;

fn cairn(meta: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn"))
        .env_remove("CAIRN_META")
        .env_remove("CAIRN_NODE")
        .args(["--meta", meta])
        .args(args)
        .output()
        .expect("run cairn")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cairn failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one-line error of a failed run.
fn err(out: &Output) -> String {
    assert!(!out.status.success(), "cairn succeeded: {}", String::from_utf8_lossy(&out.stdout));
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

fn put(meta: &str, file: &Path, manifest: &Path) -> (Value, Vec<ChunkHash>) {
    let size = CHUNK.to_string();
    ok(&cairn(
        meta,
        &["chunk", "put", file.to_str().unwrap(), "--chunk-size", &size, "-o", manifest.to_str().unwrap()],
    ));
    let m: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let hashes = m["chunks"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().parse().unwrap()).collect();
    (m, hashes)
}

fn get(meta: &str, manifest: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    ok(&cairn(meta, &["chunk", "get", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()]));
    std::fs::read(out).unwrap()
}

/// Starts a pool GC round with a 1 s window and waits until all three nodes swept it. Chunks
/// put within the window are held, so the round starts once the last puts are older than it.
fn gc_round(meta: &str) {
    std::thread::sleep(Duration::from_millis(1500));
    let said = ok(&cairn(meta, &["cluster", "gc", "--window-secs", "1"]));
    let epoch: u64 = said.split_whitespace().nth(2).and_then(|e| e.parse().ok()).expect("round number");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ok(&cairn(meta, &["meta", "scan", &format!("cluster/gc/done/{epoch}/")]));
        if out.lines().filter(|l| l.contains(&format!("cluster/gc/done/{epoch}/"))).count() == 3 {
            return;
        }
        assert!(Instant::now() < deadline, "not every node swept round {epoch}: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many of `hashes` node `n` holds (with at least one reference on the node).
fn held(rt: &tokio::runtime::Runtime, n: &NodeProc, hashes: &[ChunkHash]) -> usize {
    rt.block_on(async {
        let c = n.client().await;
        c.has(hashes).await.unwrap().iter().filter(|s| s.present && s.refs > 0).count()
    })
}

#[test]
fn put_survives_pool_gc_reads_past_bad_copies_and_rm_frees() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meta_procs = meta_cluster(1, dir.path(), &[]);
    let api = meta_procs[0].addrs.api.clone();
    let mut nodes: Vec<NodeProc> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
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
                "1000",
                "--out-after-ms",
                "600000",
                "--replicas",
                "3",
                // Rounds only when the test starts them (with its short window).
                "--pool-gc-interval-secs",
                "0",
            ];
            NodeProc::start(&dir.path().join(id), &args)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok(&cairn(&api, &["cluster", "status"])).lines().filter(|l| l.contains(" up ")).count() == 3 {
        assert!(Instant::now() < deadline, "three nodes not up");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Two files put through the pool: every chunk on all three nodes at once.
    let (keep_file, drop_file) = (dir.path().join("keep.bin"), dir.path().join("drop.bin"));
    let keep = random_bytes(3 * CHUNK + 17);
    std::fs::write(&keep_file, &keep).unwrap();
    std::fs::write(&drop_file, random_bytes(2 * CHUNK)).unwrap();
    let (keep_m, drop_m) = (dir.path().join("keep.json"), dir.path().join("drop.json"));
    let (m, keep_hashes) = put(&api, &keep_file, &keep_m);
    assert_eq!(m["version"], 2);
    assert_eq!(m["id"].as_str().unwrap().len(), 32, "{m}");
    assert_eq!(keep_hashes.len(), 4);
    let (m2, drop_hashes) = put(&api, &drop_file, &drop_m);
    assert_ne!(m["id"], m2["id"], "each put has its own id");
    for n in &nodes {
        assert_eq!(held(&rt, n, &keep_hashes), 4, "{} lacks copies right after put", n.grpc);
        assert_eq!(held(&rt, n, &drop_hashes), 2, "{} lacks copies right after put", n.grpc);
    }
    let refs = ok(&cairn(&api, &["meta", "scan", "cluster/refs/"]));
    let owner = format!("cli:{}", m["id"].as_str().unwrap());
    assert_eq!(refs.lines().filter(|l| l.contains(&owner)).count(), 4, "{refs}");

    // rm drops one file's references; a GC round then frees its chunks and keeps the other's.
    let said = ok(&cairn(&api, &["chunk", "rm", drop_m.to_str().unwrap()]));
    assert!(said.contains("references to 2 chunks"), "{said}");
    gc_round(&api);
    for n in &nodes {
        assert_eq!(held(&rt, n, &drop_hashes), 0, "{} still holds chunks of a removed file", n.grpc);
        assert_eq!(held(&rt, n, &keep_hashes), 4, "pool GC took referenced chunks from {}", n.grpc);
    }
    let back = dir.path().join("back.bin");
    assert!(get(&api, &keep_m, &back) == keep, "file differs after a GC round");
    let e = err(&cairn(&api, &["chunk", "get", drop_m.to_str().unwrap(), "-o", back.to_str().unwrap()]));
    assert!(e.starts_with("error: ") && e.contains("not found"), "{e}");

    // Corrupt the copies of the three full chunks on n1 and n2: reads fall back to n3's good ones.
    for n in &nodes[..2] {
        for i in 0..3 {
            flip_byte(&n.dir, &keep[i * CHUNK..i * CHUNK + 64]);
        }
    }
    assert!(get(&api, &keep_m, &back) == keep, "file differs with two corrupt copies");
    // (The damage is real: n1 alone, as a standalone node, cannot serve the file.)
    let out = Command::new(bin("cairn"))
        .env_remove("CAIRN_META")
        .args(["--node", &nodes[0].grpc, "chunk", "get", keep_m.to_str().unwrap(), "-o", back.to_str().unwrap()])
        .output()
        .unwrap();
    let e = err(&out);
    assert!(e.starts_with("error: "), "{e}");

    // A version-1 manifest (no id, no references) of the same chunks still reads.
    let mut v1 = m.clone();
    v1.as_object_mut().unwrap().remove("id");
    v1["version"] = 1.into();
    let v1_m = dir.path().join("v1.json");
    std::fs::write(&v1_m, serde_json::to_string_pretty(&v1).unwrap()).unwrap();
    assert!(get(&api, &v1_m, &back) == keep, "version-1 manifest read differs");
    let e = err(&cairn(&api, &["chunk", "rm", v1_m.to_str().unwrap()]));
    assert!(e.contains("version-1 manifest"), "{e}");

    // One node SIGKILLed: still readable (from the remaining good copies).
    nodes[0].kill9();
    assert!(get(&api, &keep_m, &back) == keep, "file differs with a node down");

    // rm without a metadata endpoint, and a garbage manifest: one-line errors.
    let out = Command::new(bin("cairn"))
        .env_remove("CAIRN_META")
        .args(["--node", &nodes[1].grpc, "chunk", "rm", keep_m.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(err(&out).contains("needs the metadata service"));
    std::fs::write(dir.path().join("bad.json"), "{").unwrap();
    let bad = dir.path().join("bad.json");
    let e = err(&cairn(&api, &["chunk", "get", bad.to_str().unwrap(), "-o", back.to_str().unwrap()]));
    assert!(e.contains("not a chunk manifest"), "{e}");
}
