//! The storage node as a user drives it over gRPC and HTTP: dedup, corruption + scrub, GC,
//! bad input, pinned format, metrics and health.

use std::os::unix::fs::FileExt;

use bytes::Bytes;
use chunk_engine::ChunkHash;
use integration_tests::{NodeProc, du, http_get, random_bytes};
use tonic::Code;

/// Flips the first byte of `needle` wherever it lies in the node's segment files (node stopped).
fn flip_byte_at(data_dir: &std::path::Path, needle: &[u8]) {
    let mut flipped = false;
    for e in std::fs::read_dir(data_dir.join("segments")).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(&[bytes[pos] ^ 0xff], pos as u64).unwrap();
            f.sync_all().unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "the bytes to damage are in no segment");
}

#[tokio::test(flavor = "multi_thread")]
async fn same_data_put_twice_takes_the_space_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n"), &[]);
    let c = node.client().await;
    let data = Bytes::from(random_bytes(3 << 20));
    let first = c.put(None, data.clone()).await.unwrap();
    let used = c.stats().await.unwrap().used_bytes;
    let disk = du(&node.dir.join("segments"));
    let second = c.put(None, data.clone()).await.unwrap();
    assert!(!first.deduplicated && second.deduplicated);
    assert_eq!(second.refs, 2);
    let s = c.stats().await.unwrap();
    assert_eq!(s.used_bytes, used);
    assert_eq!(du(&node.dir.join("segments")), disk, "no data written for the duplicate");
    assert_eq!(s.physical_bytes, 3 << 20);
    assert_eq!(s.logical_bytes, 6 << 20);
    assert!((s.dedup_ratio - 2.0).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_byte_is_a_corruption_error_and_scrub_names_that_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("n");
    let mut node = NodeProc::start(&data_dir, &[]);
    let c = node.client().await;
    let chunks: Vec<Vec<u8>> = (0..10).map(|i| random_bytes(10_000 + i * 70_000)).collect();
    let mut hashes = Vec::new();
    for d in &chunks {
        hashes.push(ChunkHash::from_slice(&c.put(None, Bytes::from(d.clone())).await.unwrap().hash).unwrap());
    }
    assert!(node.terminate().success());
    // Flip one byte in the middle of chunk 4's data on disk.
    let victim = 4;
    let needle = &chunks[victim][5000..5064];
    flip_byte_at(&data_dir, needle);
    let node = NodeProc::start(&data_dir, &[]);
    let c = node.client().await;
    let err = c.get(&hashes[victim]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    let mut events = c.scrub().await.unwrap();
    let mut last = None;
    while let Some(ev) = events.next().await.unwrap() {
        last = Some(ev);
    }
    let last = last.unwrap();
    assert!(last.done);
    assert_eq!(last.checked, 10);
    assert_eq!(last.damaged, vec![hashes[victim].0.to_vec()]);
    for (i, h) in hashes.iter().enumerate() {
        if i != victim {
            assert_eq!(&c.get(h).await.unwrap()[..], &chunks[i][..]);
        }
    }
    let (_, metrics) = http_get(node.http, "/metrics").unwrap();
    assert!(metrics.contains("cairn_node_corruptions_total 1"), "{metrics}");
    // A good copy put again repairs it.
    c.put(Some(hashes[victim]), Bytes::from(chunks[victim].clone())).await.unwrap();
    assert_eq!(&c.get(&hashes[victim]).await.unwrap()[..], &chunks[victim][..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_after_unreferencing_most_chunks_shrinks_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n"), &["--segment-size", "4194304", "--gc-interval-secs", "0"]);
    let c = node.client().await;
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..48 {
        let d = random_bytes(700_000);
        let h = ChunkHash::from_slice(&c.put(None, Bytes::from(d.clone())).await.unwrap().hash).unwrap();
        if i % 8 == 0 { kept.push((h, d)) } else { dropped.push(h) }
    }
    let before = du(&node.dir.join("segments"));
    for h in &dropped {
        assert_eq!(c.unref(h).await.unwrap(), 0);
    }
    // Seal the active segment so every old one is eligible.
    let mut filler = Vec::new();
    for _ in 0..6 {
        let d = random_bytes(700_000);
        filler.push((ChunkHash::from_slice(&c.put(None, Bytes::from(d.clone())).await.unwrap().hash).unwrap(), d));
    }
    let r = c.gc().await.unwrap();
    assert!(r.segments_removed > 0, "{r:?}");
    let after = du(&node.dir.join("segments"));
    let live = (kept.len() + filler.len()) as u64 * 700_000;
    assert!(after < before / 2, "segments {before} -> {after} bytes");
    assert!(after < live * 2 + (8 << 20), "segments {after} bytes for {live} live bytes");
    for (h, d) in kept.iter().chain(&filler) {
        assert_eq!(&c.get(h).await.unwrap()[..], &d[..]);
    }
    for h in dropped.iter().take(3) {
        assert_eq!(c.get(h).await.unwrap_err().code(), Some(Code::NotFound));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_codes_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n"), &["--max-chunk-size", "1048576"]);
    let c = node.client().await;
    let data = Bytes::from(random_bytes(1000));
    let wrong = ChunkHash::of(b"not this data");
    let err = c.put(Some(wrong), data.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("claimed"), "{err}");
    assert_eq!(c.stats().await.unwrap().chunks, 0);
    let err = c.get(&wrong).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    let err = c.put(None, Bytes::from(vec![1u8; (1 << 20) + 1])).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let err = c.unref(&wrong).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    let states = c.has(&[wrong]).await.unwrap();
    assert!(!states[0].present);
    // Raw protocol misuse: a short hash and a length that the data does not match.
    let mut raw = cairn_proto_client(&node.grpc).await;
    let bad_hash =
        raw.get(cairn_proto::chunk::v1::GetRequest { hash: vec![1, 2, 3], caller_verifies: false }).await.unwrap_err();
    assert_eq!(bad_hash.code(), Code::InvalidArgument);
    let short = cairn_proto::chunk::v1::PutRequest { hash: vec![], length: 100, data: vec![0; 10].into(), ..Default::default() };
    let err = raw.put(tokio_stream_iter(vec![short])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("10 of its declared 100"), "{}", err.message());
}

async fn cairn_proto_client(
    url: &str,
) -> cairn_proto::chunk::v1::chunk_store_client::ChunkStoreClient<tonic::transport::Channel> {
    cairn_proto::chunk::v1::chunk_store_client::ChunkStoreClient::connect(url.to_string()).await.unwrap()
}

fn tokio_stream_iter<T: Send + 'static>(v: Vec<T>) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    tokio_stream::iter(v)
}

#[tokio::test(flavor = "multi_thread")]
async fn data_directory_formatted_with_other_settings_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("n");
    let mut node = NodeProc::start(&data_dir, &[]);
    assert!(node.terminate().success());
    let (status, stderr) = NodeProc::start_expecting_failure(&data_dir, &["--max-chunk-size", "1048576"]);
    assert!(!status.success());
    let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(line.contains("max_chunk_size 4194304 on disk vs 1048576 configured"), "{stderr}");
    assert!(line.contains("refusing to start"), "{stderr}");
    // A bad setting is refused before anything starts.
    let (status, stderr) = NodeProc::start_expecting_failure(&data_dir, &["--gc-live-threshold", "7"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("gc_live_threshold"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n"), &[]);
    let c = node.client().await;
    c.put(None, Bytes::from_static(b"hello")).await.unwrap();
    let (code, body) = http_get(node.http, "/healthz").unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http_get(node.http, "/metrics").unwrap();
    assert_eq!(code, 200);
    for series in [
        "cairn_node_chunks 1",
        "cairn_node_capacity_bytes",
        "cairn_node_rpc_total{code=\"OK\",method=\"Put\"} 1",
        "cairn_node_commit_batches_total",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    let listed = c.list(None, 10).await.unwrap();
    assert_eq!(listed.chunks.len(), 1);
    assert!(listed.next_after.is_empty());
}

/// Ranged reads: the node reads the part asked for, the client checks it against the chunk's
/// group CVs (which it checks against the name). A damaged 4 KiB group fails its check while
/// the other groups of the chunk still read; asking for the CVs makes the node verify the whole
/// copy, which it then quarantines (DATA_LOSS).
#[tokio::test(flavor = "multi_thread")]
async fn ranged_reads_verify_the_part_they_read() {
    use node_client::ClientError;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("n");
    let mut node = NodeProc::start(&data_dir, &[]);
    let c = node.client().await;
    let chunks: Vec<Vec<u8>> = [3000, 70_000, (1 << 20) + 5].iter().map(|n| random_bytes(*n)).collect();
    let mut hashes = Vec::new();
    for d in &chunks {
        hashes.push(ChunkHash::from_slice(&c.put(None, Bytes::from(d.clone())).await.unwrap().hash).unwrap());
    }
    let mut kept_cvs = Vec::new();
    for (d, h) in chunks.iter().zip(&hashes) {
        let len = d.len() as u64;
        let (total, got, cvs) = c.get_range(h, 100, 5000, None).await.unwrap();
        assert_eq!(total, len);
        assert_eq!(&got[..], &d[100..5100.min(d.len())]);
        let cvs = cvs.expect("asked for the CVs");
        assert_eq!(cvs.len(), chunk_engine::tree::groups_of(len));
        for (off, n) in [(0u64, 1u64), (len - 7, 100), (len, 10), (4096 * 3 + 1, 9000)] {
            let (_, got, none) = c.get_range(h, off, n, Some(&cvs)).await.unwrap();
            assert!(none.is_none());
            let (a, b) = ((off as usize).min(d.len()), ((off + n) as usize).min(d.len()));
            assert_eq!(&got[..], &d[a..b], "{n} bytes at {off} of a chunk of {len}");
        }
        kept_cvs.push(cvs);
    }
    assert!(node.terminate().success());
    // Flip one byte of group 3 of the large chunk on disk.
    let big = &chunks[2];
    let needle = &big[3 * 4096 + 100..3 * 4096 + 164];
    flip_byte_at(&data_dir, needle);
    let node = NodeProc::start(&data_dir, &[]);
    let c = node.client().await;
    let (_, got, _) = c.get_range(&hashes[2], 10 * 4096, 4096, Some(&kept_cvs[2])).await.unwrap();
    assert_eq!(&got[..], &big[10 * 4096..11 * 4096], "an intact group of a damaged chunk reads");
    let err = c.get_range(&hashes[2], 3 * 4096 + 50, 100, Some(&kept_cvs[2])).await.unwrap_err();
    assert!(matches!(err, ClientError::BadData { .. }), "the damaged group fails its check: {err}");
    let err = c.get_range(&hashes[2], 0, 10, None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "asking for the CVs verifies the copy: {err}");
    let err = c.get_range(&hashes[2], 10 * 4096, 10, Some(&kept_cvs[2])).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "quarantined: {err}");
    for i in 0..2 {
        let (_, got, _) = c.get_range(&hashes[i], 0, 64, Some(&kept_cvs[i])).await.unwrap();
        assert_eq!(&got[..], &chunks[i][..64]);
    }
}

/// Write journals through the client: every acknowledged append survives a SIGKILL (records of
/// up to the largest payload, read back in pages); a seal at a newer epoch fences the older
/// writer, also after a restart; trims and drops give the space back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journal_appends_survive_sigkill_and_a_seal_fences_older_writers() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("n");
    let mut node = NodeProc::start(&data_dir, &[]);
    let c = node.client().await;
    // Large records first: pages of the read are full, and one record is the largest allowed.
    let big = Bytes::from(random_bytes(node_client::JOURNAL_MAX_PAYLOAD));
    let mut acked: BTreeMap<(usize, u64), Bytes> = BTreeMap::new();
    for seq in 1..=3 {
        let p = if seq == 2 { big.clone() } else { Bytes::from(random_bytes(3 << 20)) };
        assert_eq!(c.journal_append("vol-0", 1, seq, p.clone()).await.unwrap(), seq);
        acked.insert((0, seq), p);
    }
    let too_big = Bytes::from(vec![7u8; node_client::JOURNAL_MAX_PAYLOAD + 1]);
    let err = c.journal_append("vol-0", 1, 4, too_big).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let err = c.journal_append("bad/name", 1, 1, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    // Two writers on each of three journals (odd and even seqs: their appends share syncs)
    // until the node is killed under them.
    let acked = Arc::new(Mutex::new(acked));
    let mut writers = Vec::new();
    for (j, k) in (0..3usize).flat_map(|j| [(j, 0u64), (j, 1)]) {
        let (c, acked) = (c.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0u64.. {
                let seq = if j == 0 { 4 } else { 1 } + 2 * i + k;
                let len = [100, 4096, 65_536, 700_000][(seq as usize + j) % 4];
                let p = Bytes::from(random_bytes(len));
                match c.journal_append(&format!("vol-{j}"), 1, seq, p.clone()).await {
                    Ok(last) => {
                        assert!(last >= seq, "{last} < {seq}");
                        acked.lock().unwrap().insert((j, seq), p);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(rand::random::<u64>() % 700 + 300)).await;
    node.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "too few appends to mean anything: {}", acked.len());
    eprintln!("{} journal appends acknowledged before the kill", acked.len());
    node.restart();
    let c = node.client().await;
    let mut last = [0u64; 3];
    for j in 0..3usize {
        let (records, epoch) = c.journal_read(&format!("vol-{j}"), 0).await.unwrap();
        assert_eq!(epoch, 1);
        let held: BTreeMap<u64, Bytes> = records.into_iter().map(|r| (r.seq, r.payload)).collect();
        for ((_, seq), p) in acked.range((j, 0)..(j + 1, 0)) {
            let got = held.get(seq).unwrap_or_else(|| panic!("vol-{j}: acknowledged record {seq} lost"));
            assert!(got == p, "vol-{j}: record {seq} differs");
            last[j] = *seq;
        }
        // At most the appends in flight when the node died may be there unacknowledged.
        assert!(held.len() <= acked.range((j, 0)..(j + 1, 0)).count() + 2);
    }
    assert_eq!(c.journal_read("vol-0", 1).await.unwrap().0[0].payload, big);

    // A new writer seals at epoch 2: the old one is refused, the new one appends.
    let s = c.journal_seal("vol-0", 2).await.unwrap();
    assert_eq!(s.epoch, 2);
    let acked_0 = acked.range((0, 0)..(1, 0)).count() as u64;
    assert!(s.last_seq >= last[0] && s.records >= acked_0 && s.trimmed_upto == 0, "{s:?}");
    let next = s.last_seq + 1;
    let err = c.journal_append("vol-0", 1, next, Bytes::from_static(b"old writer")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("sealed at epoch 2; this writer's epoch is 1"), "{err}");
    c.journal_append("vol-0", 2, next, Bytes::from_static(b"new writer")).await.unwrap();
    assert!(node.terminate().success());
    node.restart();
    let c = node.client().await;
    let err = c.journal_append("vol-0", 1, next + 1, Bytes::from_static(b"old writer")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "the seal survives a restart: {err}");
    let (records, epoch) = c.journal_read("vol-0", next - 1).await.unwrap();
    assert_eq!(epoch, 2);
    assert_eq!((records.len(), records[0].epoch, &records[0].payload[..]), (1, 2, &b"new writer"[..]));

    // Trims: what is trimmed is no longer read, and trimming all of it gives the files back.
    let jdir = data_dir.join("journals");
    c.journal_trim("vol-0", 2, false).await.unwrap();
    let (records, _) = c.journal_read("vol-0", 0).await.unwrap();
    assert_eq!(records.first().map(|r| r.seq), Some(3));
    let err = c.journal_append("vol-0", 2, 1, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    let before = du(&jdir.join("vol-0"));
    let reclaimed = c.journal_trim("vol-0", next, false).await.unwrap();
    assert!(reclaimed > 0 && reclaimed <= before, "{reclaimed} of {before}");
    assert!(c.journal_read("vol-0", 0).await.unwrap().0.is_empty());
    assert!(du(&jdir.join("vol-0")) < 1024, "only the state file is left");
    // Drop: the journal is gone (and reads as never written).
    let before = du(&jdir.join("vol-1"));
    assert_eq!(c.journal_trim("vol-1", u64::MAX, true).await.unwrap(), before);
    assert!(!jdir.join("vol-1").exists());
    assert_eq!(c.journal_read("vol-1", 0).await.unwrap(), (vec![], 0));
    c.journal_append("vol-2", 1, last[2] + 100, Bytes::from_static(b"after")).await.unwrap();
    let (_, metrics) = http_get(node.http, "/metrics").unwrap();
    let series = ["cairn_node_journal_appends_total 1", "cairn_node_journal_trims_total 3", "cairn_node_journal_bytes"];
    for series in series {
        assert!(metrics.contains(series), "missing {series} in:\n{metrics}");
    }
}
