//! A volume attachment for crash tests: attaches volume `--volume` at `--generation` and writes
//! self-describing 4 KiB pages in rounds (round r writes pages `volume_writer_page(seed, r, k)`
//! at `volume_writer_slot(seed, r, k)`), flushing after each round and printing `acked <r>` once
//! the flush returned; with `--fold-every N` a fold runs beside the writes every N rounds, so a
//! SIGKILL may land before, during or after one. Runs until killed (or `--rounds`).

use std::sync::Arc;

use integration_tests::pages::{PAGES_PER_ROUND, page_of, slot_of};
use metadata_client::MetaClient;
use volume_engine::{Geometry, Volume};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| arg(&args, n).unwrap_or_else(|| panic!("{n} is required"));
    let meta = MetaClient::new(&[need("--meta")]).expect("meta client");
    let id = need("--volume");
    let generation: u64 = need("--generation").parse().expect("generation");
    let seed: u64 = need("--seed").parse().expect("seed");
    let replicas: usize = arg(&args, "--replicas").map_or(1, |r| r.parse().expect("replicas"));
    let min: usize = arg(&args, "--min-replicas").map_or(1, |r| r.parse().expect("min"));
    let capacity: u64 = need("--capacity").parse().expect("capacity");
    let fold_every: u64 = arg(&args, "--fold-every").map_or(0, |r| r.parse().expect("fold every"));
    let rounds: u64 = arg(&args, "--rounds").map_or(u64::MAX, |r| r.parse().expect("rounds"));
    let start: u64 = arg(&args, "--first-round").map_or(1, |r| r.parse().expect("first round"));
    let chunks = integration_tests::pool::client(&meta, replicas, min).await;
    let g = Geometry { capacity, block_size: 64 << 10 };
    let v = Arc::new(Volume::open(meta, chunks, &id, g, generation).await.expect("attach"));
    println!("attached");
    let pages = capacity / 4096;
    let mut folding: Option<tokio::task::JoinHandle<()>> = None;
    for r in start..start.saturating_add(rounds) {
        for k in 0..PAGES_PER_ROUND {
            let slot = slot_of(seed, r, k, pages);
            v.write(slot * 4096, &page_of(seed, r, k)).await.expect("write");
        }
        v.flush().await.expect("flush");
        println!("acked {r}");
        if fold_every > 0 && r % fold_every == 0 && folding.as_ref().is_none_or(|f| f.is_finished()) {
            let v = v.clone();
            folding = Some(tokio::spawn(async move {
                v.fold().await.expect("fold");
                println!("folded");
            }));
        }
    }
    if let Some(f) = folding {
        f.await.expect("fold task");
    }
}
