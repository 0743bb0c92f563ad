//! `cairn volume list|snapshots|rebuild` against a real pool (one metadata node, three storage
//! nodes, R=3) and a csi-block controller: two volumes made over the CSI socket (one written by
//! the test playing its attached node with the volume engine), a snapshot; the CLI shows sizes,
//! flushed data, replicas, health and attachments, refuses an unknown volume in one line, and
//! reports the written volume degraded once a storage node is SIGKILLed.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::identity_client::IdentityClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume};
use cairn_proto::csi::v1::*;
use integration_tests::csi::CsiProc;
use integration_tests::meta::meta_cluster;
use integration_tests::{NodeProc, bin, random_bytes};
use serde_json::Value;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 64 << 10;

fn cairn(meta: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn")).args(["--meta", meta]).args(args).output().expect("run cairn")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cairn failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(meta: &str, args: &[&str]) -> Vec<Value> {
    let text = ok(&cairn(meta, args));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}):\n{text}"));
    v.as_array().unwrap_or_else(|| panic!("{args:?} is not a JSON array:\n{text}")).clone()
}

/// The entry of `list` whose `id` is `id`.
fn by_id<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|v| v["id"] == id).unwrap_or_else(|| panic!("no {id} in {list:?}"))
}

/// The line of `table` that starts with `id`.
fn row<'a>(table: &'a str, id: &str) -> &'a str {
    table.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no {id} row:\n{table}"))
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

/// CreateVolume, retried while the pool is still coming up.
async fn create(c: &mut ControllerClient<Channel>, name: &str, bytes: u64) -> Volume {
    let req = CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: bytes as i64, limit_bytes: 0 }),
        volume_capabilities: vec![block_cap()],
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.create_volume(req.clone()).await {
            Ok(r) => return r.into_inner().volume.unwrap(),
            Err(s) => assert!(Instant::now() < deadline, "CreateVolume {name}: {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ControllerPublish to node-a; the publication's generation.
async fn publish(c: &mut ControllerClient<Channel>, vol: &str, readonly: bool) -> u64 {
    let ctx: HashMap<String, String> = c
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: vol.into(),
            node_id: "node-a".into(),
            volume_capability: Some(block_cap()),
            readonly,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    ctx["generation"].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_volume_list_snapshots_rebuild_and_a_dead_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();
    let mut nodes: Vec<NodeProc> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            NodeProc::start(
                &dir.path().join(id),
                &[
                    "--meta",
                    &api,
                    "--node-id",
                    id,
                    "--host",
                    id,
                    "--replicas",
                    "3",
                    "--heartbeat-ms",
                    "200",
                    "--down-after-ms",
                    "1000",
                    // The killed node stays down (not out) for the rest of the test.
                    "--out-after-ms",
                    "60000",
                ],
            )
        })
        .collect();
    let state = dir.path().join("state").to_string_lossy().to_string();
    let ctrl = CsiProc::start(
        "csi-block",
        dir.path(),
        "ctrl",
        &[
            "--meta",
            &api,
            "--controller",
            "true",
            "--node-id",
            "node-a",
            "--state-dir",
            &state,
            "--default-replicas",
            "3",
        ],
    );
    let ch = ctrl.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut c = ControllerClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(30);
    while id.probe(ProbeRequest {}).await.unwrap().into_inner().ready != Some(true) {
        assert!(Instant::now() < deadline, "probe never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No volumes yet.
    assert_eq!(ok(&cairn(&api, &["volume", "list"])).trim(), "no block volumes");
    assert!(json(&api, &["volume", "list", "--json"]).is_empty());
    assert!(json(&api, &["volume", "snapshots", "--json"]).is_empty());

    // Two volumes: `data` written by the test playing its attached node (read-write), `empty`
    // published read-only and never written.
    let data = create(&mut c, "pv-data", 8 * MIB).await.volume_id;
    let empty = create(&mut c, "pv-empty", 1 << 30).await.volume_id;
    let generation = publish(&mut c, &data, false).await;
    publish(&mut c, &empty, true).await;
    let meta_client = metadata_client::MetaClient::new(std::slice::from_ref(&api)).unwrap();
    let pool = cluster::ChunkClient::new(meta_client.clone(), cluster::ClientConfig::default()).await.unwrap();
    assert_eq!(pool.config().replicas, 3, "the pool's R");
    let geometry = volume_engine::Geometry { capacity: 8 * MIB, block_size: BLOCK };
    let vol = volume_engine::Volume::open(meta_client, pool, &data, geometry, generation).await.unwrap();
    // 16 blocks at 0 and one at 4 MiB: 17 blocks of distinct random data, 17 chunks.
    vol.write(0, &random_bytes(MIB as usize)).await.unwrap();
    vol.write(4 * MIB, &random_bytes(BLOCK as usize)).await.unwrap();
    vol.flush().await.unwrap();
    let snap = c
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: data.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    // Whole blocks: the flush folded them into the map (small writes would be in the journal).
    vol.fold().await.unwrap();

    // The table.
    let table = ok(&cairn(&api, &["volume", "list"]));
    let header = table.lines().next().unwrap();
    for col in ["ID", "NAME", "SIZE", "USED", "REPLICAS", "HEALTH", "ATTACHED"] {
        assert!(header.contains(col), "{table}");
    }
    assert_eq!(table.lines().count(), 3, "{table}");
    let d = row(&table, &data);
    for cell in ["pv-data", "8.0 MiB", "1.1 MiB", "3 (min 2)", "healthy", "node-a:rw"] {
        assert!(d.contains(cell), "{cell:?} missing:\n{table}");
    }
    let e = row(&table, &empty);
    for cell in ["pv-empty", "1.0 GiB", "0 B", "3 (min 2)", "healthy", "node-a:ro"] {
        assert!(e.contains(cell), "{cell:?} missing:\n{table}");
    }
    // Aligned: every column starts where its header does.
    let at = |line: &str, s: &str| line.find(s).unwrap();
    assert_eq!(at(d, "3 (min 2)"), at(header, "REPLICAS"), "{table}");
    assert_eq!(at(e, "3 (min 2)"), at(header, "REPLICAS"), "{table}");

    // JSON.
    let list = json(&api, &["volume", "list", "--json"]);
    assert_eq!(list.len(), 2, "{list:?}");
    let d = by_id(&list, &data);
    assert_eq!(d["name"], "pv-data");
    assert_eq!(d["size_bytes"], 8 * MIB);
    assert_eq!(d["used_bytes"], 17 * BLOCK);
    assert_eq!(d["block_size"], BLOCK);
    assert_eq!((d["replicas"].as_u64(), d["min_replicas"].as_u64()), (Some(3), Some(2)));
    assert_eq!(d["health"], "healthy", "{d}");
    assert_eq!((d["chunks"].as_u64(), d["complete_chunks"].as_u64()), (Some(17), Some(17)), "{d}");
    assert_eq!(d["missing_copies"], 0);
    assert_eq!(d["attached"], serde_json::json!([{"node": "node-a", "mode": "rw"}]));
    let e = by_id(&list, &empty);
    assert_eq!((e["size_bytes"].as_u64(), e["used_bytes"].as_u64()), (Some(1 << 30), Some(0)));
    assert_eq!((e["health"].as_str(), e["chunks"].as_u64()), (Some("healthy"), Some(0)));
    assert_eq!(e["attached"], serde_json::json!([{"node": "node-a", "mode": "ro"}]));

    // Snapshots.
    let table = ok(&cairn(&api, &["volume", "snapshots"]));
    let header = table.lines().next().unwrap();
    for col in ["ID", "SOURCE VOLUME", "SIZE", "READY", "CREATED"] {
        assert!(header.contains(col), "{table}");
    }
    let s = row(&table, &snap.snapshot_id);
    assert!(s.contains(&data) && s.contains("8.0 MiB") && s.contains("yes") && s.ends_with(" UTC"), "{table}");
    let snaps = json(&api, &["volume", "snapshots", "--json"]);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let s = &snaps[0];
    assert_eq!((s["id"].as_str(), s["source_volume"].as_str()), (Some(snap.snapshot_id.as_str()), Some(data.as_str())));
    assert_eq!((s["size_bytes"].as_u64(), s["ready"].as_bool()), (Some(8 * MIB), Some(true)));
    let created = snap.creation_time.unwrap();
    assert_eq!(s["created_unix_ms"].as_u64(), Some(created.seconds as u64 * 1000 + created.nanos as u64 / 1_000_000));
    assert!(s["created"].as_str().unwrap().ends_with(" UTC"), "{s}");

    // Rebuild, healthy: every chunk of `data` fully replicated, every storage node idle.
    let shown = ok(&cairn(&api, &["volume", "rebuild"]));
    let d = row(&shown, &data);
    assert!(d.contains("[==============================]") && d.contains("17/17 (100.0%)"), "{shown}");
    assert!(d.ends_with(" 0  healthy"), "{shown}");
    assert!(row(&shown, &empty).contains("0/0 (100.0%)"), "{shown}");
    assert!(shown.contains("\npool repair:\n"), "{shown}");
    for n in ["n1", "n2", "n3"] {
        assert!(row(&shown, n).contains(" up "), "{shown}");
    }
    // One volume only; `--watch` ends at once when every volume is healthy.
    let shown = ok(&cairn(&api, &["volume", "rebuild", "--volume", &empty]));
    assert!(shown.contains(&empty) && !shown.contains(&data), "{shown}");
    let shown = ok(&cairn(&api, &["volume", "rebuild", "--watch"]));
    assert!(shown.trim_end().ends_with("every volume is fully replicated"), "{shown}");

    // An unknown volume: one line on stderr, a non-zero exit.
    for unknown in ["blk-00000000000000000000000000000000", "pv-data"] {
        let out = cairn(&api, &["volume", "rebuild", "--volume", unknown]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("error: no volume \"{unknown}\"")), "{err}");
        assert!(out.stdout.is_empty());
    }

    // SIGKILL n3: every chunk of `data` misses its copy there.
    nodes[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    let d = loop {
        let list = json(&api, &["volume", "list", "--json"]);
        let d = by_id(&list, &data).clone();
        if d["health"] == "degraded" {
            assert_eq!(by_id(&list, &empty)["health"], "healthy", "no data, no copies missing");
            break d;
        }
        assert!(Instant::now() < deadline, "never degraded: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((d["chunks"].as_u64(), d["complete_chunks"].as_u64()), (Some(17), Some(0)), "{d}");
    assert_eq!((d["missing_copies"].as_u64(), d["used_bytes"].as_u64()), (Some(17), Some(17 * BLOCK)), "{d}");
    let table = ok(&cairn(&api, &["volume", "list"]));
    assert!(row(&table, &data).contains("degraded 0.0% (17 copies missing)"), "{table}");

    // Rebuild shows it (and n3 down once its heartbeat is stale); with `--watch` it keeps
    // watching, since two nodes cannot hold three copies.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = ok(&cairn(&api, &["volume", "rebuild"]));
        if row(&shown, "n3").contains(" down") {
            break shown;
        }
        assert!(Instant::now() < deadline, "n3 never down:\n{shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d = row(&shown, &data);
    assert!(d.contains("0/17 (0.0%)") && d.ends_with(" 17  degraded"), "{shown}");
    let mut watch = Command::new(bin("cairn"))
        .args(["--meta", &api, "volume", "rebuild", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(watch.try_wait().unwrap().is_none(), "--watch ended with a degraded volume");
    watch.kill().unwrap();
    let out = watch.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(row(&shown, &data).contains("degraded"), "{shown}");
    drop(vol);
}
