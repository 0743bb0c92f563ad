//! Crash tests of the block volume's write journal, with real storage nodes and a real
//! attachment process (`volume-writer`) killed with SIGKILL: between an append and a fold, and
//! during folds; each new attachment replays the journal and every acknowledged write is back.
//! A journal replica lost is rebuilt elsewhere, and writes go on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::pages;
use integration_tests::bin;
use integration_tests::pool::{client as pool, start};
use metadata_client::{MetaClient, Txn};
use volume_engine::{Geometry, Volume, set_generation};

const BS: u64 = 64 << 10;

async fn publish(meta: &MetaClient, id: &str, generation: u64) {
    assert!(meta.txn(set_generation(Txn::new(), id, generation)).await.unwrap().succeeded);
}

/// A `volume-writer` process; killed when dropped.
struct Writer {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Writer {
    fn start(api: &str, id: &str, generation: u64, seed: u64, capacity: u64, first: u64, fold_every: u64) -> Writer {
        let mut child = Command::new(bin("volume-writer"))
            .args(["--meta", api, "--volume", id, "--seed", &seed.to_string()])
            .args(["--generation", &generation.to_string(), "--capacity", &capacity.to_string()])
            .args(["--first-round", &first.to_string(), "--fold-every", &fold_every.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Writer { child, lines }
    }

    /// Reads lines until `pred` holds for one (panics after a minute).
    fn wait_for(&self, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("volume-writer went quiet");
            let hit = pred(&line);
            seen.push(line);
            if hit {
                return;
            }
        }
    }

    /// SIGKILLs it and returns every line it printed.
    fn kill(mut self, mut seen: Vec<String>) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            seen.push(l);
        }
        seen
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn acked_of(lines: &[String]) -> Option<u64> {
    lines.iter().filter_map(|l| l.strip_prefix("acked ")).filter_map(|r| r.parse().ok()).max()
}

/// Attachments SIGKILLed again and again at random points (with folds running beside the
/// writes every other round, so kills land before, during and after folds): each next
/// attachment replays the journal, and every acknowledged page reads back exactly, from the
/// replaying attachment and from one attached after it folded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journal_replay_after_sigkill_gives_back_every_acknowledged_write() {
    let s = start(1, 1);
    let chunks = pool(&s.meta, 1, 1).await;
    let id = "blk-0000000000000000000000000000a001";
    let capacity = 256 * BS; // 4,096 pages: rounds overwrite each other's pages
    let g = Geometry { capacity, block_size: BS };
    let seed = 0x1234_5678;
    let mut rounds: Vec<u64> = Vec::new();
    let mut acked = 0u64;
    let mut acked_rounds: Vec<u64> = Vec::new();
    let mut generation = 0;
    let mut folds_cut = 0;
    let kills = 6;
    for life in 0..kills {
        generation += 1;
        publish(&s.meta, id, generation).await;
        let first = rounds.last().map_or(1, |r| r + 1);
        let w = Writer::start(&s.api, id, generation, seed, capacity, first, 2);
        let mut seen = Vec::new();
        // Kill after a different number of acknowledged rounds each life (3..=13).
        let target = first + 3 + (life as u64 * 7) % 11;
        w.wait_for(&mut seen, |l| l.strip_prefix("acked ").and_then(|r| r.parse::<u64>().ok()) >= Some(target));
        // Half the lives die at once, half a moment later (mid-write or mid-fold).
        if life % 2 == 1 {
            std::thread::sleep(Duration::from_millis(5 + 13 * life as u64));
        }
        let seen = w.kill(seen);
        let last_acked = acked_of(&seen).expect("some round acknowledged");
        let folds = seen.iter().filter(|l| *l == "folded").count();
        // The killed attachment may have been writing the next round, or folding.
        rounds.extend(first..=last_acked + 1);
        acked_rounds.extend(first..=last_acked);
        acked = last_acked;
        if folds > 0 {
            folds_cut += 1;
        }

        // A new attachment replays the journal: every acknowledged page is there.
        generation += 1;
        publish(&s.meta, id, generation).await;
        let v = Volume::open(s.meta.clone(), chunks.clone(), id, g, generation).await.unwrap();
        let image = v.read(0, capacity).await.unwrap();
        let problems = pages::check(seed, &image, &rounds, &acked_rounds);
        assert!(problems.is_empty(), "life {life}, acked {acked}: {} pages wrong: {:?}", problems.len(), &problems[..problems.len().min(5)]);
        // Folded and attached again: the same image, now from chunks.
        v.fold().await.unwrap();
        drop(v);
        generation += 1;
        publish(&s.meta, id, generation).await;
        let v = Volume::open(s.meta.clone(), chunks.clone(), id, g, generation).await.unwrap();
        assert!(v.read(0, capacity).await.unwrap() == image, "life {life}: the folded image differs");
        drop(v);
        eprintln!("life {life}: acked {acked}, {folds} folds completed before the kill");
    }
    eprintln!("{kills} attachments killed, {folds_cut} after at least one fold; last acknowledged round {acked}");
}

/// A journal replica SIGKILLed: appends go on acknowledged by the others (R = 3, minimum 2),
/// the attachment moves its journal to nodes that are up (after folding what it held), and a
/// new attachment, with the old replica still down, reads back every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_journal_replica_is_rebuilt_on_another_node() {
    let mut s = start(4, 3);
    let chunks = pool(&s.meta, 3, 2).await;
    let id = "blk-0000000000000000000000000000a002";
    let g = Geometry { capacity: 64 * BS, block_size: BS };
    publish(&s.meta, id, 1).await;
    let v = std::sync::Arc::new(Volume::open(s.meta.clone(), chunks.clone(), id, g, 1).await.unwrap());
    let before = v.journal_state().await;
    assert_eq!(before.nodes.len(), 3);
    let mut model = vec![0u8; g.capacity as usize];
    let mut write = |v: std::sync::Arc<Volume>, off: u64, byte: u8| {
        model[off as usize..(off + 4096) as usize].fill(byte);
        async move { v.write(off, &[byte; 4096]).await.unwrap() }
    };
    for i in 0..20u64 {
        write(v.clone(), i * 3 * 4096, i as u8 + 1).await;
    }
    v.flush().await.unwrap();

    // One journal replica dies.
    let victim: usize = before.nodes[0].trim_start_matches('n').parse::<usize>().unwrap() - 1;
    s.nodes[victim].kill9();
    let writeback = tokio::spawn(v.clone().writeback());
    for i in 20..40u64 {
        write(v.clone(), i * 3 * 4096, i as u8 + 1).await;
    }
    v.flush().await.unwrap(); // acknowledged by the two replicas left
    // The writeback task moves the journal (once the node counts as down).
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let st = v.journal_state().await;
        if st.name != before.name {
            break st;
        }
        assert!(Instant::now() < deadline, "the journal never moved off the dead replica");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after.nodes.len(), 3, "{after:?}");
    assert!(!after.nodes.contains(&before.nodes[0]), "{after:?}");
    // The old journal is gone from the replicas that are up.
    for n in &before.nodes[1..] {
        let i: usize = n.trim_start_matches('n').parse::<usize>().unwrap() - 1;
        let c = s.nodes[i].client().await;
        let (records, _) = c.journal_read(&before.name, 0).await.unwrap();
        assert!(records.is_empty(), "{n} still holds the old journal");
    }
    for i in 40..60u64 {
        write(v.clone(), i * 3 * 4096, i as u8 + 1).await;
    }
    v.flush().await.unwrap(); // in the new journal only
    writeback.abort();
    let _ = writeback.await;
    drop(v);

    publish(&s.meta, id, 2).await;
    let v2 = Volume::open(s.meta.clone(), chunks.clone(), id, g, 2).await.unwrap();
    assert!(v2.read(0, g.capacity).await.unwrap() == model, "acknowledged writes lost across the move");
}
