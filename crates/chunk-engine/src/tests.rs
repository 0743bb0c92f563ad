//! Engine tests on a temporary data directory: durability across reopen, dedup, corruption,
//! scrub, GC, recovery of torn tails, format pinning and bad input.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rand::RngCore;

use crate::{ChunkEngine, ChunkError, ChunkHash, EngineConfig};

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// The first segment file in the data directory (tests that write one segment).
fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("segments")).unwrap().next().unwrap().unwrap().path()
}

fn cfg(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_size = 1 << 20;
    c
}

/// Disk space the segment files take (allocated blocks: large-record segments are preallocated).
fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir.join("segments")).unwrap() {
        total += e.unwrap().metadata().unwrap().blocks() * 512;
    }
    total
}

#[test]
fn put_get_roundtrip_small_and_large_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let small = random(100);
    let large = random(300_000);
    let empty = Vec::new();
    let (hs, hl, he) = {
        let e = ChunkEngine::open(cfg(dir.path())).unwrap();
        let hs = e.put(&small).unwrap().hash;
        let hl = e.put(&large).unwrap().hash;
        let he = e.put(&empty).unwrap().hash;
        assert_eq!(hs, ChunkHash::of(&small));
        assert_eq!(&e.get(&hs).unwrap()[..], &small[..]);
        assert_eq!(&e.get(&hl).unwrap()[..], &large[..]);
        (hs, hl, he)
    };
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    assert_eq!(&e.get(&hs).unwrap()[..], &small[..]);
    assert_eq!(&e.get(&hl).unwrap()[..], &large[..]);
    assert!(e.get(&he).unwrap().is_empty());
    assert_eq!(e.stats().chunks, 3);
}

#[test]
fn dedup_stores_once_and_counts_references() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let data = random(200_000);
    let a = e.put(&data).unwrap();
    let used = e.stats().used_bytes;
    let b = e.put(&data).unwrap();
    assert!(!a.deduplicated && b.deduplicated);
    assert_eq!(b.refs, 2);
    let s = e.stats();
    assert_eq!(s.used_bytes, used, "second put must write no data");
    assert_eq!(s.physical_bytes, 200_000);
    assert_eq!(s.logical_bytes, 400_000);
    assert!((s.dedup_ratio - 2.0).abs() < 1e-9);
    assert_eq!(e.add_ref(&a.hash).unwrap(), 3);
    assert_eq!(e.unref(&a.hash).unwrap(), 2);
    assert_eq!(e.unref(&a.hash).unwrap(), 1);
    assert_eq!(e.unref(&a.hash).unwrap(), 0);
    assert!(matches!(e.get(&a.hash), Err(ChunkError::NotFound(_))));
    assert!(matches!(e.unref(&a.hash), Err(ChunkError::NotFound(_))));
    assert!(matches!(e.add_ref(&a.hash), Err(ChunkError::NotFound(_))));
}

#[test]
fn concurrent_puts_of_same_chunk_keep_exact_refcount() {
    // A small chunk (written by the committer) and a large one (written by the putting thread).
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    for (n, len) in [3000usize, 70_000].into_iter().enumerate() {
        let data = Arc::new(random(len));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (e, d) = (e.clone(), data.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        e.put(&d).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let info = e.info(&ChunkHash::of(&data)).unwrap().unwrap();
        assert_eq!(info.refs, 80);
        let s = e.stats();
        assert_eq!(s.chunks, n as u64 + 1);
        assert_eq!(&e.get(&ChunkHash::of(&data)).unwrap()[..], &data[..]);
    }
}

fn flip_byte_of(dir: &std::path::Path, needle: &[u8]) {
    for ent in std::fs::read_dir(dir.join("segments")).unwrap() {
        let path = ent.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[bytes[pos + 10] ^ 0x55], (pos + 10) as u64).unwrap();
            f.sync_all().unwrap();
            return;
        }
    }
    panic!("data not found in any segment");
}

#[test]
fn corruption_is_detected_quarantined_and_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let good: Vec<_> = (0..20).map(|i| random(1000 + i * 5000)).collect();
    let hashes: Vec<_> = good.iter().map(|d| e.put(d).unwrap().hash).collect();
    let victim = 7;
    flip_byte_of(dir.path(), &good[victim][..64]);
    match e.get(&hashes[victim]) {
        Err(ChunkError::Corrupt { hash, .. }) => assert_eq!(hash, hashes[victim]),
        other => panic!("expected corruption, got {other:?}"),
    }
    // Quarantined: stays an error, never data.
    assert!(matches!(e.get(&hashes[victim]), Err(ChunkError::Corrupt { .. })));
    assert_eq!(e.stats().corruptions, 1);
    let report = e.scrub(|_| {}).unwrap();
    assert_eq!(report.damaged, vec![hashes[victim]]);
    assert_eq!(report.checked, 20);
    for (i, h) in hashes.iter().enumerate() {
        if i != victim {
            assert_eq!(&e.get(h).unwrap()[..], &good[i][..]);
        }
    }
    // Repair by putting the good data again.
    e.put(&good[victim]).unwrap();
    assert_eq!(&e.get(&hashes[victim]).unwrap()[..], &good[victim][..]);
    assert!(e.scrub(|_| {}).unwrap().damaged.is_empty());
}

#[test]
fn scrub_finds_corruption_nobody_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let data: Vec<_> = (0..5).map(|_| random(90_000)).collect();
    let hashes: Vec<_> = data.iter().map(|d| e.put(d).unwrap().hash).collect();
    flip_byte_of(dir.path(), &data[3][1000..1064]);
    let mut last = None;
    let report = e.scrub(|p| last = Some(*p)).unwrap();
    assert_eq!(report.damaged, vec![hashes[3]]);
    assert_eq!(last.unwrap().checked, 5);
}

#[test]
fn gc_gives_space_back_and_keeps_live_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let data: Vec<_> = (0..60).map(|_| random(100_000)).collect();
    let hashes: Vec<_> = data.iter().map(|d| e.put(d).unwrap().hash).collect();
    let before = du(dir.path());
    assert!(before >= 6_000_000);
    for h in hashes.iter().skip(6) {
        e.unref(h).unwrap();
    }
    // Seal the active segments by filling them, so GC may take every old one.
    let filler: Vec<_> = (0..12).map(|_| random(100_000)).collect();
    let filler_hashes: Vec<_> = filler.iter().map(|d| e.put(d).unwrap().hash).collect();
    let report = e.gc().unwrap();
    assert!(report.segments_removed >= 3, "{report:?}");
    let after = du(dir.path());
    // Half the old segments are gone; what is left includes the preallocated active segment.
    assert!(after <= before / 2, "disk usage {before} -> {after}");
    for (h, d) in hashes.iter().zip(&data).take(6) {
        assert_eq!(&e.get(h).unwrap()[..], &d[..]);
    }
    for (h, d) in filler_hashes.iter().zip(&filler) {
        assert_eq!(&e.get(h).unwrap()[..], &d[..]);
    }
    drop(e);
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    for (h, d) in hashes.iter().zip(&data).take(6) {
        assert_eq!(&e.get(h).unwrap()[..], &d[..]);
    }
    assert!(matches!(e.get(&hashes[30]), Err(ChunkError::NotFound(_))));
}

#[test]
fn gc_runs_while_writers_and_readers_work() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let keep: Vec<_> = (0..20).map(|_| random(50_000)).collect();
    let keep_h: Vec<_> = keep.iter().map(|d| e.put(d).unwrap().hash).collect();
    for _ in 0..40 {
        let h = e.put(&random(50_000)).unwrap().hash;
        e.unref(&h).unwrap();
    }
    let writer = {
        let e = e.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            for _ in 0..100 {
                let d = random(30_000);
                out.push((e.put(&d).unwrap().hash, d));
            }
            out
        })
    };
    for _ in 0..3 {
        e.gc().unwrap();
        for (h, d) in keep_h.iter().zip(&keep) {
            assert_eq!(&e.get(h).unwrap()[..], &d[..]);
        }
    }
    for (h, d) in writer.join().unwrap() {
        assert_eq!(&e.get(&h).unwrap()[..], &d[..]);
    }
}

#[test]
fn torn_tail_is_dropped_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(5000);
    let h = {
        let e = ChunkEngine::open(cfg(dir.path())).unwrap();
        e.put(&data).unwrap().hash
    };
    // Simulate a crash mid-append: garbage after the last indexed record (and after the zeros
    // the small lane writes ahead of its appends).
    let seg = first_segment(dir.path());
    let record_end = crate::segment::SEGMENT_HEADER_LEN
        + crate::record::record_span(data.len() as u32, crate::segment::BUFFERED_ALIGN);
    assert!(std::fs::metadata(&seg).unwrap().len() > record_end, "zero-filled ahead");
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&random(3000)).unwrap();
    // And a segment whose header never made it.
    std::fs::write(dir.path().join("segments/0000000099.seg"), b"CAIRN").unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), record_end, "cut after the last record");
    assert!(!dir.path().join("segments/0000000099.seg").exists());
    assert_eq!(&e.get(&h).unwrap()[..], &data[..]);
    let h2 = e.put(&random(10)).unwrap().hash;
    assert!(e.get(&h2).is_ok());
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_chunk_size = 1 << 20;
    let e = ChunkEngine::open(c).unwrap();
    assert!(matches!(e.put(&vec![0u8; (1 << 20) + 1]), Err(ChunkError::TooLarge { .. })));
    let data = random(100);
    let wrong = ChunkHash::of(b"something else");
    assert!(matches!(e.put_verified(&wrong, &data), Err(ChunkError::HashMismatch { .. })));
    assert!(e.info(&ChunkHash::of(&data)).unwrap().is_none(), "refused data is not stored");
    assert!(matches!(e.get(&wrong), Err(ChunkError::NotFound(_))));
    assert!(matches!("xyz".parse::<ChunkHash>(), Err(ChunkError::InvalidHash(_))));
}

#[test]
fn other_settings_refuse_to_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    drop(ChunkEngine::open(cfg(dir.path())).unwrap());
    let mut c = cfg(dir.path());
    c.max_chunk_size = 1 << 20;
    let err = ChunkEngine::open(c).err().expect("must refuse");
    let msg = err.to_string();
    assert!(matches!(err, ChunkError::FormatMismatch(_)));
    assert!(msg.contains("max_chunk_size 4194304 on disk vs 1048576 configured"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn a_newer_format_refuses_to_start_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(ChunkEngine::open(cfg(dir.path())).unwrap());
    let path = dir.path().join("FORMAT");
    let mut pinned: crate::PinnedSettings = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(pinned, crate::PinnedSettings::current(cfg(dir.path()).max_chunk_size), "FORMAT round-trips");
    pinned.format_version = crate::FORMAT_VERSION + 1;
    std::fs::write(&path, serde_json::to_vec(&pinned).unwrap()).unwrap();
    let msg = ChunkEngine::open(cfg(dir.path())).err().expect("must refuse").to_string();
    let want = format!(
        "chunk data directory {} has format version {}; this build reads up to version {}; refusing to start",
        dir.path().display(),
        crate::FORMAT_VERSION + 1,
        crate::FORMAT_VERSION
    );
    assert_eq!(msg, want);
}

#[test]
fn list_pages_through_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    for i in 0..25u32 {
        e.put(&i.to_le_bytes()).unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = e.list(after.as_ref(), 10).unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().0);
        seen.extend(page.into_iter().map(|(h, _)| h));
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn recycled_buffers_never_leak_old_bytes_into_puts_or_gets() {
    // Puts and gets of large chunks reuse aligned buffers; interleave sizes so a recycled buffer
    // always held a longer chunk before, and keep some gets alive while others recycle.
    let dir = tempfile::tempdir().unwrap();
    let mut c = EngineConfig::new(dir.path());
    c.segment_size = 8 << 20;
    let e = ChunkEngine::open(c).unwrap();
    let chunks: Vec<Vec<u8>> = [1 << 20, 70_000, 300_000, 65_536, 1 << 20].iter().map(|&n| random(n)).collect();
    let pieces: Vec<&[u8]> = chunks[0].chunks(100_000).collect();
    let first = e.put_pieces(None, &pieces).unwrap();
    assert_eq!(first.hash, ChunkHash::of(&chunks[0]));
    let hashes: Vec<ChunkHash> = chunks.iter().map(|d| e.put(d).unwrap().hash).collect();
    let mut held = Vec::new();
    for round in 0..20 {
        for (h, d) in hashes.iter().zip(&chunks).rev() {
            let got = e.get(h).unwrap();
            assert_eq!(&got[..], &d[..]);
            if round % 3 == 0 {
                held.push((got, d));
            }
        }
    }
    for (got, d) in held {
        assert_eq!(&got[..], &d[..]);
    }
    let wrong = ChunkHash::of(b"something else");
    assert!(matches!(e.put_pieces(Some(&wrong), &pieces), Err(ChunkError::HashMismatch { .. })));
}

#[test]
fn copies_for_a_verifying_receiver_skip_the_hash_but_get_still_catches_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let good = random(200_000);
    let h = e.put(&good).unwrap().hash;
    assert_eq!(&e.get_for_copy(&h).unwrap()[..], &good[..]);
    flip_byte_of(dir.path(), &good[..64]);
    // The copy goes out as stored (the receiver's hash check refuses it) ...
    let copy = e.get_for_copy(&h).unwrap();
    assert_ne!(&copy[..], &good[..]);
    assert_ne!(ChunkHash::of(&copy), h);
    // ... and the check the sender then runs quarantines it.
    assert!(matches!(e.get(&h), Err(ChunkError::Corrupt { .. })));
    assert!(matches!(e.get_for_copy(&h), Err(ChunkError::Corrupt { .. })));
    assert!(matches!(e.get_for_copy(&ChunkHash::of(b"absent")), Err(ChunkError::NotFound(_))));
}

#[test]
fn preallocated_segment_tail_is_cut_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(300_000);
    let h = {
        let e = ChunkEngine::open(cfg(dir.path())).unwrap();
        e.put(&data).unwrap().hash
    };
    let seg = first_segment(dir.path());
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 1 << 20, "preallocated to the segment size");
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!((300_000..1 << 20).contains(&len), "tail cut to the last record: {len}");
    assert_eq!(&e.get(&h).unwrap()[..], &data[..]);
    let more = random(200_000);
    let h2 = e.put(&more).unwrap().hash;
    assert_eq!(&e.get(&h2).unwrap()[..], &more[..]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "new records go to a fresh segment");
}

/// The index store with writes that fail on demand.
struct FailingKv {
    inner: kv_engine::RocksEngine,
    fail: std::sync::atomic::AtomicBool,
}

impl kv_engine::KvEngine for FailingKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, kv_engine::KvError> {
        self.inner.get(key)
    }

    fn write(&self, batch: kv_engine::WriteBatch, sync: bool) -> Result<(), kv_engine::KvError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kv_engine::KvError::Backend("injected write failure".into()));
        }
        self.inner.write(batch, sync)
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<kv_engine::KvPair>, kv_engine::KvError> {
        self.inner.scan(start, end, limit)
    }

    fn flush(&self) -> Result<(), kv_engine::KvError> {
        self.inner.flush()
    }

    fn snapshot(&self) -> Result<Box<dyn kv_engine::KvSnapshot>, kv_engine::KvError> {
        self.inner.snapshot()
    }
}

#[test]
fn a_failed_index_write_loses_no_acknowledged_put_and_leaves_no_phantom_reference() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    ChunkEngine::open(cfg(dir.path())).unwrap().close(); // formats the directory
    let kv = Arc::new(FailingKv {
        inner: kv_engine::RocksEngine::open(&dir.path().join("index")).unwrap(),
        fail: Default::default(),
    });
    let e = ChunkEngine::open_on(cfg(dir.path()), kv.clone()).unwrap();
    let (a, b, big) = (random(3000), random(5000), random(300 << 10));
    let ha = e.put(&a).unwrap().hash;

    kv.fail.store(true, SeqCst);
    assert!(e.put(&b).is_err(), "a put whose index write failed is not acknowledged");
    assert!(e.put(&big).is_err());
    assert!(e.put(&a).is_err(), "nor is a reference");
    kv.fail.store(false, SeqCst);

    // The failed changes are forgotten: the next puts start from what the index holds.
    let pb = e.put(&b).unwrap();
    assert_eq!((pb.deduplicated, pb.refs), (false, 1), "no phantom copy of the failed put");
    assert_eq!(e.put(&big).unwrap().refs, 1);
    assert_eq!(e.put(&a).unwrap().refs, 2, "the failed reference was not counted");
    assert_eq!(&e.get(&ha).unwrap()[..], &a[..]);
    assert_eq!(&e.get(&pb.hash).unwrap()[..], &b[..]);
    e.close();
    drop((e, kv));

    // And after a restart too.
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    assert_eq!(&e.get(&pb.hash).unwrap()[..], &b[..]);
    assert_eq!(e.stats().chunks, 3);
}

/// A ranged read returns exactly the bytes asked for (cut at the chunk's end), from small and
/// large (O_DIRECT) records alike, and the group CVs verify them and rebuild the chunk's name;
/// a damaged copy fails `group_cvs` and is quarantined.
#[test]
fn ranged_reads_and_group_cvs_verify_parts_of_chunks() {
    use crate::tree::{GROUP, groups_match, root_of};
    let dir = tempfile::tempdir().unwrap();
    let e = ChunkEngine::open(cfg(dir.path())).unwrap();
    for len in [3000usize, 4097, 20_000, 65_536, 300_001] {
        let data = random(len);
        let h = e.put(&data).unwrap().hash;
        let (total, cvs) = e.group_cvs(&h).unwrap();
        assert_eq!(total as usize, len);
        if len > GROUP {
            assert_eq!(root_of(&cvs, len as u64), Some(h));
        }
        for (off, n) in [(0u64, 1u64), (0, 4096), (100, 5000), (4096, 4096), (len as u64 - 1, 10), (len as u64, 5)] {
            let (total, got) = e.read_range(&h, off, n).unwrap();
            assert_eq!(total as usize, len);
            let (a, b) = ((off as usize).min(len), ((off + n) as usize).min(len));
            assert_eq!(&got[..], &data[a..b], "len {len} off {off} n {n}");
        }
        if len > GROUP {
            let g = (len / GROUP) / 2;
            let (_, part) = e.read_range(&h, (g * GROUP) as u64, GROUP as u64).unwrap();
            assert!(groups_match(&cvs, g, &part));
        }
    }
    // The CVs are kept: asking again reads nothing.
    let big = e.put(&random(200_000)).unwrap().hash;
    let first = e.group_cvs(&big).unwrap();
    let read = e.stats().get_bytes;
    assert_eq!(e.group_cvs(&big).unwrap(), first);
    assert_eq!(e.stats().get_bytes, read, "the second ask read the chunk again");
    let victim = random(50_000);
    let h = e.put(&victim).unwrap().hash;
    flip_byte_of(dir.path(), &victim[..64]);
    assert!(matches!(e.group_cvs(&h), Err(ChunkError::Corrupt { .. })));
    assert!(matches!(e.read_range(&h, 0, 10), Err(ChunkError::Corrupt { .. })), "quarantined");
}
