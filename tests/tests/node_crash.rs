//! Crash safety: a storage node SIGKILLed during concurrent puts keeps every acknowledged chunk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chunk_engine::ChunkHash;
use integration_tests::{NodeProc, random_bytes};
use rand::Rng;

const WRITERS: usize = 8;
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_chunks_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let acked: Arc<Mutex<Vec<(ChunkHash, usize)>>> = Arc::default();
    for round in 0..ROUNDS {
        let mut node = NodeProc::start(&data_dir, &["--segment-size", "8388608"]);
        let client = node.client().await;
        // Everything acknowledged before earlier kills must still be there and verify.
        let before = acked.lock().unwrap().clone();
        for (h, len) in before {
            let got =
                client.get(&h).await.unwrap_or_else(|e| panic!("round {round}: acknowledged chunk {h} lost: {e}"));
            assert_eq!(got.len(), len);
        }
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = client.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let len = match (w + i) % 4 {
                        0 => 4096,
                        1 => 100_000,
                        2 => 1 << 20,
                        _ => rand::thread_rng().gen_range(1..3_000_000),
                    };
                    let data = random_bytes(len);
                    let h = ChunkHash::of(&data);
                    match client.put(Some(h), Bytes::from(data)).await {
                        Ok(_) => acked.lock().unwrap().push((h, len)),
                        Err(_) => return,
                    }
                }
            }));
        }
        let delay = rand::thread_rng().gen_range(200..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill9();
        for w in writers {
            w.await.unwrap();
        }
        eprintln!("round {round}: killed after {delay} ms, {} chunks acknowledged so far", acked.lock().unwrap().len());
    }
    let node = NodeProc::start(&data_dir, &["--segment-size", "8388608"]);
    let client = node.client().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "too few puts to mean anything: {}", acked.len());
    for (h, len) in &acked {
        let got = client.get(h).await.unwrap_or_else(|e| panic!("acknowledged chunk {h} lost: {e}"));
        assert_eq!(got.len(), *len);
    }
    let s = client.stats().await.unwrap();
    assert!(s.chunks as usize >= acked.len());
    let mut events = client.scrub().await.unwrap();
    let mut last = None;
    while let Some(ev) = events.next().await.unwrap() {
        last = Some(ev);
    }
    let last = last.unwrap();
    assert!(last.done);
    assert_eq!(last.damaged_count, 0, "scrub after crashes found damage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_puts_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let mut node = NodeProc::start(&data_dir, &[]);
    let client = node.client().await;
    let acked: Arc<Mutex<Vec<ChunkHash>>> = Arc::default();
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let data = random_bytes(512 * 1024);
                let h = ChunkHash::of(&data);
                match client.put(Some(h), Bytes::from(data)).await {
                    Ok(_) => acked.lock().unwrap().push(h),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || {
        let st = node.terminate();
        (st, node.log_text())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "storage-node exit after SIGTERM: {:?}\n{}", status.0, status.1);
    assert!(status.1.contains("stopped cleanly"), "{}", status.1);
    for w in writers {
        w.await.unwrap();
    }
    let node = NodeProc::start(&data_dir, &[]);
    let client = node.client().await;
    let acked = acked.lock().unwrap().clone();
    for h in &acked {
        client.get(h).await.unwrap();
    }
}
