//! objectd SIGKILLed under concurrent uploads (single PUTs and multipart): after a restart every
//! acknowledged object reads back byte-identical, nothing partial is listed or readable, and
//! one pool GC round leaves on the storage node exactly the chunks some reference names — the
//! chunks of uploads the crash cut short are reclaimed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use integration_tests::s3::{S3Stack, python, tail};
use metadata_client::MetaClient;

/// The GC round's write window (the node waits this long after it starts tracking puts).
const WINDOW: Duration = Duration::from_millis(2000);

fn count_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().filter(|l| !l.trim().is_empty()).count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_objectd_sigkill_and_gc_reclaims_the_rest() {
    python();
    let mut s = S3Stack::start();
    let admin = s.create_key("admin", &["--admin"]);
    let acked = s.dir.path().join("acked.jsonl");
    let acked_arg = acked.display().to_string();

    // Upload in the background; SIGKILL objectd once three uploads are acknowledged.
    let mut up = s.spawn_py(&admin, "crash_uploads", &["upload", &acked_arg], &[]);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if count_lines(&acked) >= 3 {
            break;
        }
        if let Some(st) = up.exited() {
            panic!(
                "the uploader exited ({st}) before three uploads were acknowledged\nstdout: {}\nstderr: {}\nobjectd:\n{}",
                up.stdout(),
                up.stderr(),
                tail(s.objectd_log_path(), 60)
            );
        }
        assert!(Instant::now() < deadline, "fewer than three uploads acknowledged in 600 s:\n{}", up.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill9_objectd();
    let killed_at = Instant::now();
    let at_kill = count_lines(&acked);
    let st = up.wait(Duration::from_secs(300)).expect("the uploader did not finish within 300 s of the kill");
    assert!(st.success(), "the uploader failed ({st}):\nstdout: {}\nstderr: {}", up.stdout(), up.stderr());
    eprintln!("uploader (objectd killed with {at_kill} acknowledged):\n{}", up.stdout());
    let n_acked = count_lines(&acked);
    assert!((3..=12).contains(&n_acked), "{n_acked} acknowledged");

    s.restart_objectd();
    // Checks the objects, then aborts the multipart uploads the crash left behind.
    s.run_py(&admin, "crash_uploads", &["verify", &acked_arg], &[]);

    // Garbage: chunks the node holds that no reference names (cut-short uploads, aborted parts).
    let meta = MetaClient::new(&[&s.meta_api]).expect("metadata client");
    let before_refs = integration_tests::s3::referenced_chunks(&meta).await;
    let before = s.node_chunks().await;
    let dangling: Vec<&String> = before_refs.iter().filter(|h| !before.contains_key(*h)).collect();
    assert!(dangling.is_empty(), "references to chunks the node does not hold: {dangling:?}");
    let garbage = before.keys().filter(|h| !before_refs.contains(*h)).count();
    eprintln!(
        "before GC: node holds {} chunks, {} referenced, {garbage} unreferenced",
        before.len(),
        before_refs.len()
    );

    // One pool GC round with a short window; objectd is idle, so nothing is written during it.
    // The last puts came before the kill: start the round once they are a window old, or the
    // sweep rightly holds the chunks they left (a fast run reaches here within the window).
    let quiet = killed_at + WINDOW + Duration::from_millis(500);
    if let Some(wait) = quiet.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    let epoch = cluster::gc::start_epoch(&meta, WINDOW).await.expect("start GC round");
    let deadline = Instant::now() + Duration::from_secs(120);
    let sweep = loop {
        let done = cluster::gc::sweeps(&meta, epoch.epoch).await.expect("read sweeps");
        if let Some(sw) = done.into_iter().find(|d| d.node == "n1") {
            break sw;
        }
        assert!(Instant::now() < deadline, "GC round {} not swept by n1 within 120 s", epoch.epoch);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("GC sweep: {sweep:?}");

    let refs = integration_tests::s3::referenced_chunks(&meta).await;
    let after = s.node_chunks().await;
    let held: BTreeSet<String> = after.keys().cloned().collect();
    let leaked: Vec<&String> = held.difference(&refs).collect();
    let lost: Vec<&String> = refs.difference(&held).collect();
    assert!(leaked.is_empty(), "{} chunks on the node that nothing references after GC: {leaked:?}", leaked.len());
    assert!(lost.is_empty(), "{} referenced chunks missing from the node: {lost:?}", lost.len());
    assert_eq!(refs, before_refs, "GC changed the references");
    let stats = s.node.client().await.stats().await.expect("node stats");
    eprintln!(
        "after GC: {} chunks referenced and held ({} bytes); node stats: chunks {}",
        held.len(),
        after.values().sum::<u64>(),
        stats.chunks
    );
    let held_bytes: u64 = after.values().sum();
    assert!(
        held_bytes >= n_acked as u64 * 24 * 1024 * 1024,
        "the node holds {held_bytes} bytes of chunks, less than the {n_acked} acknowledged objects of 24 MiB"
    );

    // Everything still reads back after GC.
    s.run_py(&admin, "crash_uploads", &["verify", &acked_arg], &[]);
}
