//! `cairn meta backup` and `cairn meta restore` against real `metadata-node` processes: a backup
//! taken through a follower (the client follows it to the leader) restores every key and value
//! into a fresh group; writes after the backup are not in it; a group that holds keys, a
//! truncated file and a damaged file are refused with one readable line and nothing written.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use cairn_proto::meta::v1 as pb;
use integration_tests::meta::{MetaProc, meta_cluster};
use integration_tests::{bin, random_bytes};
use metadata_client::MetaClient;

fn cairn(meta: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn")).args(["--meta", meta]).args(args).output().expect("run cairn")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cairn failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one error line of a failed command.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "cairn should have failed: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Every key and value, read linearizably through `api`'s group.
async fn everything(api: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = MetaClient::new(&[api]).unwrap();
    let mut out = BTreeMap::new();
    let mut start = Vec::new();
    loop {
        let page = c.range(&start, b"", 1000).await.unwrap();
        out.extend(page.kvs.into_iter().map(|kv| (kv.key, kv.value)));
        match page.next_key {
            Some(k) => start = k,
            None => return out,
        }
    }
}

/// The `N` after `word` in `line` ("backed up 412 keys, ...").
fn number_after(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words[i + 1].parse().unwrap_or_else(|_| panic!("no number after {word:?} in {line:?}"))
}

/// `n` voters with their data under `dir` (created).
fn group(n: u64, dir: &std::path::Path) -> Vec<MetaProc> {
    std::fs::create_dir_all(dir).unwrap();
    meta_cluster(n, dir, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_restores_into_a_fresh_group_and_bad_restores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = group(3, &dir.path().join("src"));
    let eps: Vec<String> = src.iter().map(|n| n.addrs.api.clone()).collect();
    let c = MetaClient::new(&eps).unwrap();

    // A few hundred keys: text, random bytes, bytes around 0x00 and 0xff, an empty value, a
    // large value, binary keys; some overwritten, some deleted.
    let mut want: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..400u32 {
        let key = format!("k/{:02}/{i:04}", i % 7).into_bytes();
        let value = match i % 4 {
            0 => format!("text value {i}").into_bytes(),
            1 => random_bytes((i as usize * 37) % 4000),
            2 => vec![0x00, 0xff, b'\n', 0x80, i as u8, 0x00],
            _ => Vec::new(),
        };
        want.insert(key, value);
    }
    want.insert(b"big".to_vec(), random_bytes(900 * 1024));
    want.insert(vec![0x00, 0x01, 0xfe], b"binary key".to_vec());
    want.insert(vec![0xff; 40], random_bytes(100));
    let mut tasks = Vec::new();
    for (n, part) in want.clone().into_iter().collect::<Vec<_>>().chunks(50).enumerate() {
        let (c, part) = (c.clone(), part.to_vec());
        tasks.push(tokio::spawn(async move {
            for (k, v) in part {
                // Written twice: the first value is overwritten.
                c.put(&k, format!("old {n}").as_bytes()).await.unwrap();
                c.put(&k, &v).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..20 {
        c.put(format!("gone/{i}").as_bytes(), b"deleted before the backup").await.unwrap();
        c.delete(format!("gone/{i}").as_bytes()).await.unwrap();
    }
    let revision = c.status().await.unwrap().revision;

    // A follower does not serve a backup: it names the leader, as for other leader-only calls.
    let leader = c.status().await.unwrap().leader_id;
    let follower = src.iter().find(|n| n.addrs.id != leader).unwrap();
    let mut raw = pb::kv_client::KvClient::connect(format!("http://{}", follower.addrs.api)).await.unwrap();
    let err = raw.backup(pb::BackupRequest {}).await.expect_err("a follower must not serve a backup");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let hint = err.metadata().get("x-cairn-leader").expect("leader hint").to_str().unwrap().to_string();
    assert_eq!(hint, src[leader as usize - 1].addrs.api);
    // Through that follower only: the client follows it to the leader.
    let file = dir.path().join("meta.backup");
    let line = ok(&cairn(&follower.addrs.api, &["meta", "backup", "-o", file.to_str().unwrap()]));
    eprintln!("{}", line.trim());
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert_eq!(number_after(&line, "up"), want.len() as u64, "{line}");
    assert_eq!(number_after(&line, "keys"), std::fs::metadata(&file).unwrap().len(), "{line}");
    assert_eq!(number_after(&line, "revision"), revision, "{line}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // Not in the backup: written after it.
    c.put(b"after-backup", b"x").await.unwrap();

    let dst = group(1, &dir.path().join("dst"));
    let api = dst[0].addrs.api.clone();
    let line = ok(&cairn(&api, &["meta", "restore", file.to_str().unwrap()]));
    eprintln!("{}", line.trim());
    assert_eq!(number_after(&line, "restored"), want.len() as u64, "{line}");
    let got = everything(&api).await;
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert!(got.get(k) == Some(v), "key {} differs after the restore", String::from_utf8_lossy(k));
    }
    // Revisions are the new group's own: one per restore transaction.
    let d = MetaClient::new(&[&api]).unwrap();
    let restored_at = d.status().await.unwrap().revision;
    assert!(restored_at < revision / 10, "{restored_at} restore transactions for {} keys", want.len());
    assert!(d.get(b"big").await.unwrap().unwrap().mod_revision <= restored_at);

    // Into a group that holds keys: refused, nothing changes.
    let err = refused(&cairn(&api, &["meta", "restore", file.to_str().unwrap()]));
    assert!(err.contains("already holds keys") && err.contains("fresh"), "{err}");
    eprintln!("{err}");
    assert_eq!(everything(&api).await.len(), want.len());

    // Truncated and damaged files: refused before anything is written.
    let empty = group(1, &dir.path().join("empty"));
    let empty_api = empty[0].addrs.api.clone();
    let bytes = std::fs::read(&file).unwrap();
    let truncated = dir.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let err = refused(&cairn(&empty_api, &["meta", "restore", truncated.to_str().unwrap()]));
    assert!(err.contains("not a usable backup") && err.contains("damaged or truncated"), "{err}");
    let mut damaged_bytes = bytes.clone();
    damaged_bytes[bytes.len() / 2] ^= 0x40;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &damaged_bytes).unwrap();
    let err = refused(&cairn(&empty_api, &["meta", "restore", damaged.to_str().unwrap()]));
    assert!(err.contains("checksum mismatch"), "{err}");
    eprintln!("{err}");
    let err = refused(&cairn(&empty_api, &["meta", "restore", dir.path().join("missing").to_str().unwrap()]));
    assert!(err.contains("cannot open"), "{err}");
    assert!(everything(&empty_api).await.is_empty(), "a refused restore wrote keys");
}
