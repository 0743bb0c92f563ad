//! `cairn fs list` against a real metadata node: filesystems made as csi-fs makes them (one with
//! a mounted client registered as a mount process registers it, one copied from it, one made by
//! no CSI driver), shown with kind, quota, usage, origin and mounted clients as a table and as
//! JSON; errors (a bad endpoint, a corrupt record) are one line on stderr and a non-zero exit.

use std::process::{Command, Output};

use integration_tests::bin;
use integration_tests::meta::meta_cluster;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn cairn(meta: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn")).args(["--meta", meta]).args(args).output().expect("run cairn")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cairn failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failure: a non-zero exit, nothing on stdout, one line on stderr (returned).
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure: {}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn json(meta: &str) -> Vec<Value> {
    let text = ok(&cairn(meta, &["fs", "list", "--json"]));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    v.as_array().unwrap_or_else(|| panic!("not a JSON array:\n{text}")).clone()
}

fn by_id<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|v| v["id"] == id).unwrap_or_else(|| panic!("no {id} in {list:?}"))
}

fn row<'a>(table: &'a str, id: &str) -> &'a str {
    table.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no {id} row:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_fs_list_shows_quota_usage_origin_and_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = meta_cluster(1, dir.path(), &[]);
    let api = meta[0].addrs.api.clone();

    // Nothing yet.
    assert_eq!(ok(&cairn(&api, &["fs", "list"])).trim(), "no filesystems");
    assert!(json(&api).is_empty());

    // A volume's filesystem (a csi-fs volume id, no volume record: no name), mounted read-write
    // on node-a and read-only on node-b; a copy of it; one made outside csi-fs.
    let mc = metadata_client::MetaClient::new(std::slice::from_ref(&api)).unwrap();
    let vol = "fs-0123456789abcdef0123456789abcdef";
    let copy = "fs-fedcba9876543210fedcba9876543210";
    let other = "team-share";
    let rec = fs_meta::filesystem::create(&mc, vol, 64 * MIB).await.unwrap();
    assert_eq!(rec.quota_bytes, 64 * MIB);
    let now = fs_meta::filesystem::now_ms();
    fs_meta::filesystem::register_client(&mc, vol, "node-a-0001", "node-a", false, now).await.unwrap();
    fs_meta::filesystem::register_client(&mc, vol, "node-b-0002", "node-b", true, now).await.unwrap();
    fs_meta::filesystem::copy(&mc, vol, copy, 128 * MIB).await.unwrap();
    fs_meta::filesystem::create(&mc, other, 3 << 30).await.unwrap();

    // The table: one row each, in id order, columns aligned with the header.
    let table = ok(&cairn(&api, &["fs", "list"]));
    let header = table.lines().next().unwrap();
    for col in ["ID", "KIND", "NAME", "QUOTA", "USED", "INODES", "ORIGIN", "CLIENTS"] {
        assert!(header.contains(col), "{table}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    let v = row(&table, vol);
    for cell in ["volume", "64.0 MiB", "0 B", "node-a:rw,node-b:ro"] {
        assert!(v.contains(cell), "{cell:?} missing:\n{table}");
    }
    let c = row(&table, copy);
    for cell in ["volume", "128.0 MiB", vol] {
        assert!(c.contains(cell), "{cell:?} missing:\n{table}");
    }
    assert!(c.ends_with(" -"), "a copy has no clients:\n{table}");
    let o = row(&table, other);
    assert!(o.contains("other") && o.contains("3.0 GiB"), "{table}");
    let at = |line: &str, s: &str| line.find(s).unwrap();
    assert_eq!(at(v, "node-a:rw"), at(header, "CLIENTS"), "{table}");
    assert_eq!(at(c, vol), at(header, "ORIGIN"), "{table}");
    let ids: Vec<&str> = table.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids, [vol, copy, other], "id order");

    // JSON.
    let list = json(&api);
    assert_eq!(list.len(), 3, "{list:?}");
    let v = by_id(&list, vol);
    assert_eq!((v["kind"].as_str(), v["name"].as_str()), (Some("volume"), None), "{v}");
    assert_eq!((v["quota_bytes"].as_u64(), v["used_bytes"].as_u64()), (Some(64 * MIB), Some(0)), "{v}");
    assert_eq!(v["used_inodes"], 1, "the root directory: {v}");
    assert_eq!((v["origin"].clone(), v["deleting"].as_bool()), (Value::Null, Some(false)), "{v}");
    assert!(v["created"].as_str().unwrap().ends_with(" UTC"), "{v}");
    let mut clients: Vec<(String, String, String)> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].to_string(), c["node"].to_string(), c["mode"].to_string()))
        .collect();
    clients.sort();
    assert_eq!(
        clients,
        [
            ("\"node-a-0001\"".into(), "\"node-a\"".into(), "\"rw\"".into()),
            ("\"node-b-0002\"".into(), "\"node-b\"".into(), "\"ro\"".into())
        ]
    );
    let c = by_id(&list, copy);
    assert_eq!((c["quota_bytes"].as_u64(), c["origin"].as_str()), (Some(128 * MIB), Some(vol)), "{c}");
    assert_eq!(c["clients"], serde_json::json!([]));
    assert_eq!(by_id(&list, other)["kind"], "other");

    // The clients unmount: none listed.
    for id in ["node-a-0001", "node-b-0002"] {
        fs_meta::filesystem::unregister_client(&mc, vol, id).await.unwrap();
    }
    assert!(row(&ok(&cairn(&api, &["fs", "list"])), vol).ends_with(" -"));

    // Errors: one readable line, a non-zero exit.
    let err = one_line_error(&cairn("http://[::1", &["fs", "list"]));
    assert!(err.contains("metadata"), "{err}");
    mc.put(format!("fs/rec/{}", "zz-broken").as_bytes(), b"{not json").await.unwrap();
    let err = one_line_error(&cairn(&api, &["fs", "list", "--json"]));
    assert!(err.contains("fs/rec/zz-broken"), "names the bad record: {err}");
    one_line_error(&cairn(&api, &["fs", "list"]));
}
