//! The operator CLI against a real node: a file round trip through chunks, stats, scrub, GC,
//! and one-line errors.

use std::process::Command;

use integration_tests::{NodeProc, bin, random_bytes};

fn cairn(node: &NodeProc, args: &[&str]) -> std::process::Output {
    Command::new(bin("cairn")).args(["--node", &node.grpc]).args(args).output().expect("run cairn")
}

#[test]
fn file_round_trip_stats_scrub_gc() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n"), &[]);
    let file = dir.path().join("in.bin");
    let data = random_bytes(5 * 1024 * 1024 + 123);
    std::fs::write(&file, &data).unwrap();
    let manifest = dir.path().join("in.manifest.json");
    let out = cairn(
        &node,
        &["chunk", "put", file.to_str().unwrap(), "--chunk-size", "1048576", "-o", manifest.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["chunks"].as_array().unwrap().len(), 6);
    assert_eq!(m["size"], 5 * 1024 * 1024 + 123);

    let back = dir.path().join("out.bin");
    let out = cairn(&node, &["chunk", "get", manifest.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == data);

    let out = cairn(&node, &["node", "stats", "--json"]);
    assert!(out.status.success());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["chunks"], 6);

    let out = cairn(&node, &["node", "scrub"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked 6 chunks"));

    let out = cairn(&node, &["node", "gc"]);
    assert!(out.status.success());
}

#[test]
fn errors_are_one_readable_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n"), &[]);
    let out = cairn(&node, &["chunk", "put", "/nonexistent/file"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot open /nonexistent/file"), "{err}");

    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, r#"{"version":1,"size":5,"chunk_size":5,"blake3":"","chunks":["00"]}"#).unwrap();
    let out = cairn(&node, &["chunk", "get", bogus.to_str().unwrap(), "-o", "/tmp/never"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("invalid chunk hash"), "{err}");

    let out = Command::new(bin("cairn")).args(["--node", "http://127.0.0.1:1", "node", "stats"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to storage node http://127.0.0.1:1"), "{err}");
}
