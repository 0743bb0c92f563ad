//! The block volume engine against a real metadata node and storage nodes: reads see writes at
//! once, flushed data survives the attachment (re-attached from the block map, read verified
//! from the pool, with a storage node SIGKILLed), thin zeros and trim, two writes into one block
//! never lose each other, random operations match a model byte for byte, a superseded
//! attachment is fenced, and deleting a volume's data drops its chunk references.

use std::time::Duration;

use integration_tests::pool::start;
use metadata_client::{MetaClient, Txn};
use rand::{Rng, SeedableRng};
use volume_engine::{EngineError, Geometry, Volume, delete_data, set_generation};

const BS: u64 = 64 << 10;

async fn publish(meta: &MetaClient, id: &str, generation: u64) {
    assert!(meta.txn(set_generation(Txn::new(), id, generation)).await.unwrap().succeeded);
}

async fn refs_of(meta: &MetaClient, id: &str) -> usize {
    let page = meta.range(b"cluster/refs/", b"cluster/refs0", 100_000).await.unwrap();
    page.kvs.iter().filter(|kv| String::from_utf8_lossy(&kv.key).contains(&format!("/vol:{id}:"))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_engine_on_a_replicated_pool() {
    let mut s = start(3, 2);
    let chunks = integration_tests::pool::client(&s.meta, 2, 1).await;
    let g = Geometry { capacity: 64 * BS, block_size: BS };
    let id = "blk-00000000000000000000000000000001";
    publish(&s.meta, id, 1).await;
    let v = Volume::open(s.meta.clone(), chunks.clone(), id, g, 1).await.unwrap();

    // Thin: never-written blocks read as zeros; nothing allocated.
    assert_eq!(v.read(0, 3 * BS).await.unwrap(), vec![0u8; 3 * BS as usize]);
    // A write across block edges (unaligned) reads back before and after the flush.
    let data: Vec<u8> = (0..(2 * BS + 999)).map(|i| (i % 251) as u8 + 1).collect();
    let off = BS - 4096 + 17;
    v.write(off, &data).await.unwrap();
    assert_eq!(v.read(off, data.len() as u64).await.unwrap(), data);
    v.flush().await.unwrap();
    assert_eq!(v.read(off, data.len() as u64).await.unwrap(), data);
    // Mostly whole blocks: the flush folded them (written once, as chunks, no journal record).
    assert_eq!(v.allocated_blocks().await, 3, "blocks 0, 1 and 2");
    assert_eq!(v.unfolded_bytes().await, 0);
    // A small write is flushed to the journal and folded later.
    v.write(off, &data[..100]).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(v.unfolded_bytes().await, 100, "in the journal, not folded yet");
    v.fold().await.unwrap();
    assert_eq!(v.unfolded_bytes().await, 0);
    assert_eq!(v.read(off, data.len() as u64).await.unwrap(), data);
    assert_eq!(refs_of(&s.meta, id).await, 3);
    // Outside the volume: refused, nothing written.
    assert!(matches!(v.write(g.capacity - 10, &[1u8; 20]).await, Err(EngineError::OutOfRange { .. })));

    // Two writes into one block at once never lose each other.
    let (a, b) = tokio::join!(v.write(10 * BS + 100, &[7u8; 100]), v.write(10 * BS + 4000, &[9u8; 100]));
    a.unwrap();
    b.unwrap();
    v.flush().await.unwrap();
    assert_eq!(v.read(10 * BS + 100, 100).await.unwrap(), vec![7u8; 100]);
    assert_eq!(v.read(10 * BS + 4000, 100).await.unwrap(), vec![9u8; 100]);

    // Re-attached (the node plugin restarted) with a storage node SIGKILLed: flushed data reads
    // back verified from the surviving replicas (the journal's, unfolded, replayed). With one
    // copy acknowledged enough, every journal replica must answer the new attachment, so the
    // node killed is one without the journal.
    let jnodes = v.journal_state().await.nodes;
    assert_eq!(jnodes.len(), 2, "{jnodes:?}");
    drop(v);
    let victim = (1..=3).map(|i| format!("n{i}")).position(|n| !jnodes.contains(&n)).unwrap();
    s.nodes[victim].kill9();
    let v = Volume::open(s.meta.clone(), chunks.clone(), id, g, 1).await.unwrap();
    assert_eq!(v.read(off, data.len() as u64).await.unwrap(), data);
    assert_eq!(v.read(10 * BS + 4000, 100).await.unwrap(), vec![9u8; 100]);

    // Zeroing whole blocks releases them (thin again); a partial zero keeps the rest.
    v.write_zeroes(BS, BS).await.unwrap();
    v.write_zeroes(10 * BS + 4000, 50).await.unwrap();
    v.flush().await.unwrap();
    v.fold().await.unwrap();
    assert_eq!(v.read(BS, BS).await.unwrap(), vec![0u8; BS as usize]);
    assert_eq!(v.read(10 * BS + 4000, 100).await.unwrap(), [vec![0u8; 50], vec![9u8; 50]].concat());
    assert_eq!(v.allocated_blocks().await, 3, "of 0, 1, 2 and 10, block 1 released");

    // Random writes, zeroes and flushes against a model; then a fresh attachment sees exactly
    // the model.
    let mut model = v.read(0, g.capacity).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for step in 0..300 {
        let off = rng.gen_range(0..g.capacity - 1);
        let len = rng.gen_range(1..=(3 * BS).min(g.capacity - off));
        match rng.gen_range(0..10) {
            0..=6 => {
                let buf: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                v.write(off, &buf).await.unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            7 => {
                v.write_zeroes(off, len).await.unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            8 => v.flush().await.unwrap(),
            _ => {
                let got = v.read(off, len).await.unwrap();
                assert!(got == model[off as usize..(off + len) as usize], "step {step}: read {len} at {off} differs");
            }
        }
    }
    v.flush().await.unwrap();
    drop(v);
    let v = Volume::open(s.meta.clone(), chunks.clone(), id, g, 1).await.unwrap();
    assert!(v.read(0, g.capacity).await.unwrap() == model, "re-attached volume differs from the model");

    // Frozen (a snapshot being cut): a fold waits for the thaw; the block map copied while
    // frozen, with the journal's unfolded records laid over it, is the state before that fold
    // (what was flushed), sharing its chunks.
    let half = rng.gen_range(0..g.capacity / 2);
    v.fold().await.unwrap();
    let buf: Vec<u8> = (0..3 * BS).map(|_| rng.r#gen()).collect();
    for (i, piece) in buf.chunks(4096).enumerate() {
        v.write(half + i as u64 * 4096, piece).await.unwrap(); // small writes: journaled
    }
    model[half as usize..(half + 3 * BS) as usize].copy_from_slice(&buf);
    v.flush().await.unwrap(); // in the journal only
    assert_eq!(v.unfolded_bytes().await, 3 * BS);
    volume_engine::freeze(&s.meta, id).await.unwrap();
    v.write(5 * BS, &[3u8; 4096]).await.unwrap(); // not flushed: not in the copy
    let fold = tokio::spawn({
        let v = std::sync::Arc::new(v);
        let v2 = v.clone();
        async move {
            v2.fold().await.unwrap();
            v2
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fold.is_finished(), "a fold must wait while the volume is frozen");
    let snap = "blk-00000000000000000000000000000002";
    volume_engine::copy_map(&s.meta, id, snap).await.unwrap();
    let laid = volume_engine::copy_journal(&s.meta, &chunks, id, snap, BS).await.unwrap();
    assert!(laid >= 3, "the unfolded write lands on 3 or 4 blocks of the copy: {laid}");
    volume_engine::thaw(&s.meta, id).await.unwrap();
    let v = std::sync::Arc::try_unwrap(fold.await.unwrap()).ok().unwrap();
    assert_eq!(v.read(5 * BS, 4096).await.unwrap(), vec![3u8; 4096]);
    publish(&s.meta, snap, 1).await;
    let sv = Volume::open(s.meta.clone(), chunks.clone(), snap, g, 1).await.unwrap();
    let copied = sv.allocated_blocks().await;
    assert!(sv.read(0, g.capacity).await.unwrap() == model, "the copy is the state at the freeze");
    model[(5 * BS) as usize..(5 * BS + 4096) as usize].fill(3);

    // Published elsewhere (generation 2): once the new attachment sealed the journal, the old
    // one can neither append nor fold, and cannot re-attach at its generation; the new one
    // sees everything flushed.
    v.flush().await.unwrap();
    publish(&s.meta, id, 2).await;
    let v2 = Volume::open(s.meta.clone(), chunks.clone(), id, g, 2).await.unwrap();
    v.write(0, &[1u8; 10]).await.unwrap();
    assert!(matches!(v.flush().await, Err(EngineError::Fenced { .. })));
    assert!(matches!(v.write(0, &[1u8; 10]).await, Err(EngineError::Fenced { .. })));
    assert!(matches!(v.fold().await, Err(EngineError::Fenced { .. })));
    assert!(matches!(
        Volume::open(s.meta.clone(), chunks.clone(), id, g, 1).await,
        Err(EngineError::Fenced { current: Some(2), .. })
    ));
    assert!(v2.read(0, g.capacity).await.unwrap() == model, "the fenced write must not show");
    v2.fold().await.unwrap();

    // Deleting the volume's data drops its map and every chunk reference.
    let held = v2.allocated_blocks().await;
    assert!(held > 0);
    assert_eq!(delete_data(&s.meta, id).await.unwrap(), held);
    assert_eq!(refs_of(&s.meta, id).await, 0);
    // the copy keeps its own references to the shared chunks
    assert_eq!(refs_of(&s.meta, snap).await as u64, copied);
    assert!(sv.read(0, g.capacity).await.unwrap()[..(5 * BS) as usize] == model[..(5 * BS) as usize]);
}

/// One flush that replaces hundreds of blocks (each replaced block is three operations in the
/// block-map transaction, which the metadata service caps at 256): committed in several
/// transactions, every block reads back, and the old chunks' references are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_engine_flushes_many_replaced_blocks() {
    let s = start(1, 1);
    let chunks = integration_tests::pool::client(&s.meta, 1, 1).await;
    let blocks = 300u64;
    let g = Geometry { capacity: blocks * BS, block_size: BS };
    let id = "blk-00000000000000000000000000000003";
    publish(&s.meta, id, 1).await;
    let v = Volume::open(s.meta.clone(), chunks, id, g, 1).await.unwrap();
    for round in 1..=2u8 {
        let data: Vec<u8> = (0..g.capacity).map(|i| ((i / BS) % 251) as u8 + round).collect();
        v.write(0, &data).await.unwrap();
        v.flush().await.unwrap();
        v.fold().await.unwrap();
        assert_eq!(v.read(0, g.capacity).await.unwrap(), data, "round {round}");
        assert_eq!(refs_of(&s.meta, id).await, blocks as usize, "one reference per block, round {round}");
    }
}

/// The read cache serves recently flushed and recently read blocks without the pool: with the
/// only storage node SIGKILLed, an attachment with a cache still reads them (and only them),
/// while one without a cache cannot read at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_cache_serves_recent_blocks_without_the_pool() {
    let mut s = start(1, 1);
    let chunks = integration_tests::pool::client(&s.meta, 1, 1).await;
    let blocks = 16u64;
    let g = Geometry { capacity: blocks * BS, block_size: BS };
    let (cached_id, plain_id) = ("blk-00000000000000000000000000000021", "blk-00000000000000000000000000000022");
    let data: Vec<u8> = (0..g.capacity).map(|i| ((i / BS) * 7 % 251) as u8 + 1).collect();
    for id in [cached_id, plain_id] {
        publish(&s.meta, id, 1).await;
        let v = Volume::open(s.meta.clone(), chunks.clone(), id, g, 1).await.unwrap();
        v.write(0, &data).await.unwrap();
        v.close().await.unwrap(); // flushed and folded: nothing left in the journal
    }
    // Re-attached: the cache (room for 4 blocks) starts empty; read blocks 0..4 through it.
    let cached =
        Volume::open(s.meta.clone(), chunks.clone(), cached_id, g, 1).await.unwrap().with_read_cache(4 * BS);
    assert_eq!(cached.read(0, 4 * BS).await.unwrap(), data[..(4 * BS) as usize]);
    let plain = Volume::open(s.meta.clone(), chunks.clone(), plain_id, g, 1).await.unwrap();
    assert_eq!(cached.read_cache_stats().misses, 4);

    s.nodes[0].kill9();
    assert_eq!(cached.read(BS, 2 * BS).await.unwrap(), data[BS as usize..(3 * BS) as usize], "served from the cache");
    assert!(cached.read(8 * BS, BS).await.is_err(), "a block never read is not in the cache");
    assert!(plain.read(0, BS).await.is_err(), "without a cache every read goes to the pool");
    let st = cached.read_cache_stats();
    assert!(st.hits >= 2 && st.bytes <= 4 * BS, "{st:?}");
}
