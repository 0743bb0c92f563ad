//! Tests of the journal store on a temporary data directory: round trips, replacement, reopen,
//! torn tails, damage, sealing, trimming, dropping and names.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;

fn store(dir: &Path, limit: u64) -> JournalStore {
    JournalStore::open(dir, limit).unwrap()
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// (seq, epoch, payload) of every record after `after`, paging like the client.
fn all(s: &JournalStore, name: &str, after: u64) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = s.read(name, after, 0).unwrap();
        out.extend(page.records.iter().map(|r| (r.seq, r.epoch, r.payload.to_vec())));
        match page.records.last() {
            Some(r) if page.more => after = r.seq,
            _ => return out,
        }
    }
}

fn seqs(s: &JournalStore, name: &str) -> Vec<u64> {
    all(s, name, 0).into_iter().map(|r| r.0).collect()
}

fn segment_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(JOURNALS_DIR).join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == format::SEGMENT_EXT))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

/// Offset of record number `i` (0-based) in a segment of records with `len`-byte payloads.
fn record_offset(i: u64, len: usize) -> u64 {
    (format::SEGMENT_HEADER_LEN + i as usize * (format::RECORD_HEADER_LEN + len)) as u64
}

#[test]
fn appended_records_read_back_in_seq_order_with_paging() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    let mut highest = 0;
    for seq in [3, 1, 2, 5, 4] {
        highest = seq.max(highest);
        assert_eq!(s.append("vol-1", 1, seq, &payload(seq, 100 + seq as usize)).unwrap(), highest);
    }
    assert_eq!(s.append("vol-1", 1, 6, b"x").unwrap(), 6, "the highest seq held");
    let got = all(&s, "vol-1", 0);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    for (seq, epoch, p) in &got[..5] {
        assert_eq!((*epoch, p), (1, &payload(*seq, 100 + *seq as usize)));
    }
    assert_eq!(all(&s, "vol-1", 4).iter().map(|r| r.0).collect::<Vec<_>>(), vec![5, 6]);
    // A small budget: pages of what fits, at least one record each, `more` until the end.
    let page = s.read("vol-1", 0, 1).unwrap();
    assert_eq!((page.records.len(), page.more, page.epoch), (1, true, 1));
    let page = s.read("vol-1", 0, 2 * (101 + node_client::JOURNAL_RECORD_OVERHEAD as u64) + 10).unwrap();
    assert_eq!(page.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(page.more);
    let page = s.read("vol-1", 5, 1).unwrap();
    assert_eq!((page.records.len(), page.more), (1, false));
    let info = s.seal("vol-1", 0).unwrap();
    assert_eq!(
        info,
        SealInfo { epoch: 1, last_seq: 6, trimmed_upto: 0, records: 6, bytes: 101 + 102 + 103 + 104 + 105 + 1 }
    );
}

#[test]
fn a_record_of_a_seq_already_held_replaces_it_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), 300); // a few records per segment file
        for seq in 1..=6 {
            s.append("j", 1, seq, &payload(seq, 100)).unwrap();
        }
        s.append("j", 2, 2, b"second version of 2").unwrap();
        s.append("j", 2, 6, b"second version of 6").unwrap();
        let got = all(&s, "j", 0);
        assert_eq!(got.len(), 6);
        assert_eq!(got[1], (2, 2, b"second version of 2".to_vec()));
        assert_eq!(got[5], (6, 2, b"second version of 6".to_vec()));
        assert_eq!(s.seal("j", 0).unwrap().records, 6);
        assert!(segment_files(dir.path(), "j").len() >= 3);
    }
    let s = store(dir.path(), 300);
    let got = all(&s, "j", 0);
    assert_eq!(got.len(), 6);
    assert_eq!(got[1], (2, 2, b"second version of 2".to_vec()));
    assert_eq!(got[5], (6, 2, b"second version of 6".to_vec()));
    assert_eq!(got[0], (1, 1, payload(1, 100)));
}

#[test]
fn segment_numbers_grow_with_creation_even_when_seqs_go_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), 1);
        s.append("j", 1, 100, b"a").unwrap();
        s.append("j", 1, 50, b"b").unwrap();
        s.append("j", 1, 100, b"c").unwrap();
    }
    let names: Vec<String> =
        segment_files(dir.path(), "j").iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["00000000000000000100.jseg", "00000000000000000101.jseg", "00000000000000000102.jseg"]);
    let s = store(dir.path(), 1);
    assert_eq!(all(&s, "j", 0), vec![(50, 1, b"b".to_vec()), (100, 1, b"c".to_vec())]);
}

#[test]
fn a_new_store_on_the_same_directory_holds_the_same_records_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = store(dir.path(), 1000);
        for seq in 1..=20 {
            s.append("a", 3, seq, &payload(seq, 90)).unwrap();
        }
        s.append("b", 7, 1, b"other journal").unwrap();
        (all(&s, "a", 0), s.seal("a", 0).unwrap())
    };
    let s = store(dir.path(), 1000);
    assert_eq!(all(&s, "a", 0), before.0);
    assert_eq!(s.seal("a", 0).unwrap(), before.1);
    assert_eq!(s.read("a", 0, 0).unwrap().epoch, 3);
    assert_eq!(all(&s, "b", 0), vec![(1, 7, b"other journal".to_vec())]);
    assert_eq!(s.stats().held_bytes.load(Ordering::Relaxed), crate_du(&dir.path().join(JOURNALS_DIR), true));
}

/// Bytes of the files under `dir` (only segment files with `segments_only`).
fn crate_du(dir: &Path, segments_only: bool) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            total += crate_du(&e.path(), segments_only);
        } else if !segments_only || e.path().extension().is_some_and(|x| x == format::SEGMENT_EXT) {
            total += m.len();
        }
    }
    total
}

#[test]
fn a_torn_tail_is_cut_away_on_reopen_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
        for seq in 1..=5 {
            s.append("j", 1, seq, &payload(seq, 1000)).unwrap();
        }
    }
    let seg = segment_files(dir.path(), "j").pop().unwrap();
    // Record 5 half written, then garbage (a crash in the middle of an append).
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let cut = record_offset(4, 1000) + 500;
    f.set_len(cut).unwrap();
    f.write_all_at(&[0xa5; 3000], cut).unwrap();
    drop(f);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert_eq!(seqs(&s, "j"), vec![1, 2, 3, 4]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), record_offset(4, 1000), "the tail is cut off the file");
    s.append("j", 1, 5, &payload(5, 1000)).unwrap();
    s.append("j", 1, 6, &payload(6, 1000)).unwrap();
    drop(s);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    let got = all(&s, "j", 0);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(got[4].2, payload(5, 1000));
    assert_eq!(s.stats().corrupt_records.load(Ordering::Relaxed), 0, "a torn tail is no damage");
}

#[test]
fn a_segment_whose_header_never_became_durable_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), 1);
        s.append("j", 1, 1, b"one").unwrap();
    }
    let torn = dir.path().join(JOURNALS_DIR).join("j").join(format::segment_file_name(2));
    std::fs::write(&torn, b"CAIRN").unwrap();
    let s = store(dir.path(), 1);
    assert_eq!(seqs(&s, "j"), vec![1]);
    assert!(!torn.exists());
    s.append("j", 1, 2, b"two").unwrap();
    assert_eq!(seqs(&store(dir.path(), 1), "j"), vec![1, 2]);
}

#[test]
fn damage_found_at_load_skips_that_record_and_damage_found_later_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
        for seq in 1..=5 {
            s.append("j", 1, seq, &payload(seq, 1000)).unwrap();
        }
    }
    let seg = segment_files(dir.path(), "j").pop().unwrap();
    // A payload byte of record 2 (seq 3), and the length field of record 3 (seq 4).
    flip(&seg, record_offset(2, 1000) + format::RECORD_HEADER_LEN as u64 + 10);
    flip(&seg, record_offset(3, 1000) + 5);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    let got = all(&s, "j", 0);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 5], "damaged records are never returned");
    assert_eq!(got[2].2, payload(5, 1000));
    assert_eq!(s.stats().corrupt_records.load(Ordering::Relaxed), 2);
    // Appends go to a new segment (never after damage) and everything holds after a reopen.
    s.append("j", 1, 6, b"six").unwrap();
    assert_eq!(segment_files(dir.path(), "j").len(), 2);
    drop(s);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert_eq!(seqs(&s, "j"), vec![1, 2, 5, 6]);
    // Damage after the load: the read that meets it fails, naming the record.
    flip(&seg, record_offset(1, 1000) + format::RECORD_HEADER_LEN as u64 + 999);
    let e = s.read("j", 0, 0).unwrap_err();
    assert!(matches!(e, JournalError::Corrupt(_)), "{e}");
    assert_eq!(crate::journal_error_code(&e), tonic::Code::DataLoss);
    assert!(e.to_string().contains("record 2"), "{e}");
    assert_eq!(seqs_after(&s, "j", 2), vec![5, 6]);
}

fn seqs_after(s: &JournalStore, name: &str, after: u64) -> Vec<u64> {
    all(s, name, after).into_iter().map(|r| r.0).collect()
}

#[test]
fn a_damaged_newer_record_never_lets_an_older_one_of_its_seq_come_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
        s.append("j", 1, 1, &payload(1, 100)).unwrap();
        s.append("j", 1, 2, &payload(2, 100)).unwrap();
        s.append("j", 2, 1, &payload(9, 100)).unwrap(); // replaces seq 1
        s.append("j", 2, 3, &payload(3, 100)).unwrap();
    }
    let seg = segment_files(dir.path(), "j").pop().unwrap();
    flip(&seg, record_offset(2, 100) + format::RECORD_HEADER_LEN as u64 + 1);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert_eq!(seqs(&s, "j"), vec![2, 3], "neither version of seq 1");
    assert_eq!(s.seal("j", 0).unwrap().last_seq, 3);
}

#[test]
fn a_segment_with_a_damaged_header_loses_its_records_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), 1);
        for seq in 1..=3 {
            s.append("j", 1, seq, &payload(seq, 10)).unwrap();
        }
    }
    let segs = segment_files(dir.path(), "j");
    flip(&segs[1], 20);
    let s = store(dir.path(), 1);
    assert_eq!(seqs(&s, "j"), vec![1, 3]);
    assert_eq!(s.stats().corrupt_records.load(Ordering::Relaxed), 1);
}

#[test]
fn a_seal_refuses_older_writers_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
        s.append("j", 1, 1, b"one").unwrap();
        let info = s.seal("j", 5).unwrap();
        assert_eq!(info, SealInfo { epoch: 5, last_seq: 1, trimmed_upto: 0, records: 1, bytes: 3 });
        let e = s.append("j", 4, 2, b"late").unwrap_err();
        assert_eq!(e.to_string(), "journal j sealed at epoch 5; this writer's epoch is 4");
        assert_eq!(crate::journal_error_code(&e), tonic::Code::FailedPrecondition);
        assert_eq!(s.seal("j", 3).unwrap().epoch, 5, "a seal never lowers the epoch");
        s.append("j", 5, 2, b"two").unwrap();
        s.append("j", 6, 3, b"three").unwrap(); // a newer writer raises the epoch by appending
    }
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert_eq!(s.read("j", 0, 0).unwrap().epoch, 6);
    assert!(matches!(s.append("j", 5, 4, b"x"), Err(JournalError::Sealed { sealed: 6, epoch: 5, .. })));
    assert_eq!(all(&s, "j", 0), vec![(1, 1, b"one".to_vec()), (2, 5, b"two".to_vec()), (3, 6, b"three".to_vec())]);
    // A seal of a journal never written creates it at that epoch.
    assert_eq!(s.seal("fresh", 9).unwrap(), SealInfo { epoch: 9, ..Default::default() });
    drop(s);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert!(matches!(s.append("fresh", 8, 1, b"x"), Err(JournalError::Sealed { .. })));
}

#[test]
fn trims_remove_whole_segment_files_and_hold_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limit = record_offset(4, 100); // four records per segment file
    let s = store(dir.path(), limit);
    for seq in 1..=12 {
        s.append("j", 1, seq, &payload(seq, 100)).unwrap();
    }
    assert_eq!(segment_files(dir.path(), "j").len(), 3);
    let held = s.stats().held_bytes.load(Ordering::Relaxed);
    assert_eq!(held, 3 * limit);
    // Up to 6: the first file only (the second still holds 7 and 8).
    assert_eq!(s.trim("j", 6, false).unwrap(), limit);
    assert_eq!(segment_files(dir.path(), "j").len(), 2);
    assert_eq!(seqs(&s, "j"), (7..=12).collect::<Vec<_>>());
    assert_eq!(s.seal("j", 0).unwrap().trimmed_upto, 6);
    assert!(matches!(s.append("j", 1, 6, b"x"), Err(JournalError::Trimmed { .. })));
    assert_eq!(s.trim("j", 3, false).unwrap(), 0, "a trim never goes back");
    drop(s);
    let s = store(dir.path(), limit);
    assert_eq!(seqs(&s, "j"), (7..=12).collect::<Vec<_>>());
    assert_eq!(all(&s, "j", 0)[0].2, payload(7, 100));
    let e = s.append("j", 1, 5, b"x").unwrap_err();
    assert!(e.to_string().contains("already trimmed"), "{e}");
    assert_eq!(crate::journal_error_code(&e), tonic::Code::FailedPrecondition);
    // Everything: the last file goes too, and the next append starts a new one.
    assert_eq!(s.trim("j", 12, false).unwrap(), 2 * limit);
    assert!(segment_files(dir.path(), "j").is_empty());
    assert_eq!(s.stats().held_bytes.load(Ordering::Relaxed), 0);
    assert!(seqs(&s, "j").is_empty());
    s.append("j", 1, 13, b"thirteen").unwrap();
    assert_eq!(segment_files(dir.path(), "j").len(), 1);
    drop(s);
    let s = store(dir.path(), limit);
    assert_eq!(all(&s, "j", 0), vec![(13, 1, b"thirteen".to_vec())]);
    assert_eq!(s.seal("j", 0).unwrap(), SealInfo { epoch: 1, last_seq: 13, trimmed_upto: 12, records: 1, bytes: 8 });
}

#[test]
fn a_segment_whose_records_were_all_replaced_goes_at_the_next_trim() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), record_offset(2, 10));
    for seq in [10, 11, 10, 11, 12] {
        s.append("j", 1, seq, &payload(seq, 10)).unwrap();
    }
    assert_eq!(segment_files(dir.path(), "j").len(), 3);
    s.trim("j", 0, false).unwrap();
    assert_eq!(segment_files(dir.path(), "j").len(), 2);
    drop(s);
    assert_eq!(seqs(&store(dir.path(), 64), "j"), vec![10, 11, 12]);
}

#[test]
fn drop_removes_the_journal_and_a_later_append_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    for seq in 1..=3 {
        s.append("j", 4, seq, &payload(seq, 1000)).unwrap();
    }
    s.append("keep", 1, 1, b"k").unwrap();
    let jdir = dir.path().join(JOURNALS_DIR).join("j");
    let on_disk = crate_du(&jdir, false);
    assert_eq!(s.trim("j", u64::MAX, true).unwrap(), on_disk);
    assert!(!jdir.exists());
    assert_eq!(s.read("j", 0, 0).unwrap(), ReadPage::default());
    assert!(!jdir.exists(), "a read creates nothing");
    assert_eq!(s.trim("j", 0, true).unwrap(), 0, "dropping twice is fine");
    s.append("j", 1, 1, b"new life").unwrap();
    assert_eq!(all(&s, "j", 0), vec![(1, 1, b"new life".to_vec())]);
    assert_eq!(all(&s, "keep", 0), vec![(1, 1, b"k".to_vec())]);
    // A drop interrupted by a crash (its directory renamed, not yet deleted) is finished at open.
    let trash = dir.path().join(JOURNALS_DIR).join(TRASH_DIR).join("j.7");
    std::fs::create_dir_all(&trash).unwrap();
    std::fs::write(trash.join(format::segment_file_name(1)), b"left over").unwrap();
    drop(s);
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert!(!trash.exists());
    assert_eq!(seqs(&s, "j"), vec![1]);
}

#[test]
fn unknown_journals_read_empty_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    assert_eq!(s.read("nobody", 0, 0).unwrap(), ReadPage::default());
    assert_eq!(s.trim("nobody", 10, false).unwrap(), 0);
    assert_eq!(s.seal("nobody", 0).unwrap(), SealInfo::default());
    assert!(!dir.path().join(JOURNALS_DIR).exists());
    assert!(s.map().is_empty(), "nothing kept in memory for a read of nothing");
}

#[test]
fn bad_names_and_records_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), DEFAULT_SEGMENT_LIMIT);
    let long = "x".repeat(201);
    for bad in ["", ".", "..", "a/b", "a b", "ü", "+dropped", long.as_str()] {
        let e = s.append(bad, 1, 1, b"x").unwrap_err();
        assert!(matches!(e, JournalError::Invalid(_)), "{bad:?}: {e}");
        assert_eq!(crate::journal_error_code(&e), tonic::Code::InvalidArgument);
        assert!(matches!(s.read(bad, 0, 0), Err(JournalError::Invalid(_))), "{bad:?}");
        assert!(matches!(s.trim(bad, 0, true), Err(JournalError::Invalid(_))), "{bad:?}");
        assert!(matches!(s.seal(bad, 1), Err(JournalError::Invalid(_))), "{bad:?}");
    }
    for good in ["a", "...", "vol-1.journal_2", &"y".repeat(200)] {
        s.append(good, 1, 1, b"x").unwrap();
    }
    assert!(matches!(s.append("j", 1, 1, b""), Err(JournalError::Invalid(_))));
    assert!(matches!(s.append("j", 1, 0, b"x"), Err(JournalError::Invalid(_))));
    let big = vec![0u8; node_client::JOURNAL_MAX_PAYLOAD + 1];
    assert!(matches!(s.append("j", 1, 1, &big), Err(JournalError::Invalid(_))));
    s.append("j", 1, 1, &big[1..]).unwrap();
    assert_eq!(all(&s, "j", 0)[0].2.len(), node_client::JOURNAL_MAX_PAYLOAD);
}

#[test]
fn appends_from_many_threads_to_several_journals_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(store(dir.path(), 4096));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let name = format!("j{}", t % 3);
                for i in 0..40 {
                    let seq = t * 1000 + i + 1;
                    s.append(&name, 1, seq, &payload(seq, 200)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(s);
    let s = store(dir.path(), 4096);
    let total: usize = (0..3).map(|j| all(&s, &format!("j{j}"), 0).len()).sum();
    assert_eq!(total, 8 * 40);
    for (seq, _, p) in all(&s, "j1", 0) {
        assert_eq!(p, payload(seq, 200));
    }
}

#[test]
fn a_seal_sees_every_append_acknowledged_at_the_older_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(store(dir.path(), 64 << 10));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..6u64)
        .map(|t| {
            let (s, acked) = (s.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let seq = t * 1_000_000 + i + 1;
                    match s.append("j", 1, seq, &payload(seq, 3000)) {
                        Ok(last) => {
                            assert!(last >= seq);
                            acked.lock().unwrap().push(seq);
                        }
                        Err(JournalError::Sealed { .. }) => return,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let info = s.seal("j", 2).unwrap();
    let read = seqs(&s, "j");
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "{}", acked.len());
    assert_eq!(info.records as usize, read.len());
    assert_eq!(read.len(), acked.len(), "every acknowledged append, and only those, is there after the seal");
    drop(s);
    assert_eq!(seqs(&store(dir.path(), 64 << 10), "j").len(), acked.len());
}
