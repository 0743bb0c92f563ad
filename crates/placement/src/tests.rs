//! Unit tests for [`crate::rank`] and [`crate::place`]: determinism, failure domains, weighting, movement.

use std::collections::HashSet;

use crate::score::mix64;
use crate::{PlacementNode, place, rank};

/// A cheap deterministic stream of uniformly distributed chunk hashes (splitmix64, not blake3).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    fn chunk(&mut self) -> [u8; 32] {
        let mut c = [0u8; 32];
        for part in c.chunks_exact_mut(8) {
            part.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        c
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

fn node(id: &str, weight: u64, zone: &str, host: &str) -> PlacementNode {
    PlacementNode { id: id.into(), weight, zone: zone.into(), host: host.into() }
}

/// `zones` × `hosts` × `per_host` nodes of weight 1, ids `z{z}-h{h}-n{n}`.
fn cluster(zones: usize, hosts: usize, per_host: usize) -> Vec<PlacementNode> {
    let mut nodes = Vec::new();
    for z in 0..zones {
        for h in 0..hosts {
            for n in 0..per_host {
                nodes.push(node(&format!("z{z}-h{h}-n{n}"), 1, &format!("z{z}"), &format!("h{h}")));
            }
        }
    }
    nodes
}

/// `count` nodes of weight 1, each in its own zone and host, ids `n0`, `n1`, ….
fn flat(count: usize) -> Vec<PlacementNode> {
    (0..count).map(|i| node(&format!("n{i}"), 1, &format!("z{i}"), &format!("h{i}"))).collect()
}

fn ids(nodes: &[&PlacementNode]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

fn id_set(nodes: &[&PlacementNode]) -> HashSet<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

#[test]
fn deterministic_and_independent_of_input_order() {
    let mut nodes = cluster(3, 2, 2);
    nodes[3].weight = 0;
    nodes[5].weight = 7;
    let mut rng = Rng(1);
    let chunks: Vec<[u8; 32]> = (0..2_000).map(|_| rng.chunk()).collect();
    let expected: Vec<Vec<String>> = chunks.iter().map(|c| ids(&rank(c, &nodes, 3))).collect();
    for _ in 0..5 {
        let mut shuffled = nodes.clone();
        rng.shuffle(&mut shuffled);
        for (c, want) in chunks.iter().zip(&expected) {
            assert_eq!(&ids(&rank(c, &shuffled, 3)), want);
            assert_eq!(ids(&place(c, &shuffled, 3)), want[..3]);
        }
    }
}

#[test]
fn ranking_is_pinned() {
    // Placement is a contract between every client and release: a change here moves all data.
    let nodes = cluster(3, 2, 1);
    let chunk: [u8; 32] = std::array::from_fn(|i| i as u8);
    assert_eq!(ids(&rank(&chunk, &nodes, 3)), PINNED);
}

/// Checked against an independent Python model: rendezvous order is z2-h1, z0-h0, z2-h0, z1-h0, z1-h1,
/// z0-h1; the zone rule skips z2-h0 for the third replica.
const PINNED: [&str; 6] = ["z2-h1-n0", "z0-h0-n0", "z1-h0-n0", "z2-h0-n0", "z1-h1-n0", "z0-h1-n0"];

#[test]
fn replicas_span_zones() {
    let nodes = cluster(3, 2, 2);
    let mut rng = Rng(2);
    for _ in 0..5_000 {
        let placed = place(&rng.chunk(), &nodes, 3);
        assert_eq!(placed.len(), 3);
        assert_eq!(placed.iter().map(|n| &n.zone).collect::<HashSet<_>>().len(), 3, "{:?}", ids(&placed));
    }
}

#[test]
fn replicas_span_hosts_within_one_zone() {
    let nodes = cluster(1, 4, 2);
    let mut rng = Rng(3);
    for _ in 0..5_000 {
        let placed = place(&rng.chunk(), &nodes, 3);
        assert_eq!(placed.len(), 3);
        assert_eq!(placed.iter().map(|n| &n.host).collect::<HashSet<_>>().len(), 3, "{:?}", ids(&placed));
    }
}

#[test]
fn fewer_domains_than_r_still_gives_r_distinct_nodes() {
    // Two zones, three hosts (two in z0), two nodes per host; R=4 uses both zones and all three hosts.
    let mut nodes = cluster(1, 2, 2);
    nodes.extend(cluster(2, 1, 2).into_iter().filter(|n| n.zone == "z1"));
    let single_host = cluster(1, 1, 3);
    let mut rng = Rng(4);
    for _ in 0..5_000 {
        let chunk = rng.chunk();
        let placed = place(&chunk, &nodes, 4);
        assert_eq!(id_set(&placed).len(), 4, "{:?}", ids(&placed));
        assert_eq!(placed.iter().map(|n| &n.zone).collect::<HashSet<_>>().len(), 2, "{:?}", ids(&placed));
        assert_eq!(placed.iter().map(|n| (&n.zone, &n.host)).collect::<HashSet<_>>().len(), 3, "{:?}", ids(&placed));
        assert_eq!(id_set(&place(&chunk, &single_host, 3)).len(), 3);
    }
}

#[test]
fn share_follows_weight() {
    let mut nodes = flat(3);
    nodes[2].weight = 2;
    let mut rng = Rng(5);
    let chunks = 20_000;
    let heavy = (0..chunks).filter(|_| place(&rng.chunk(), &nodes, 1)[0].id == "n2").count();
    let share = heavy as f64 / chunks as f64;
    eprintln!("weights 1:1:2, R=1: heavy node share {share:.4} (ideal 0.5)");
    assert!((share - 0.5).abs() <= 0.03, "heavy share {share}");
}

/// Places `chunks` chunks on `before` and `after` (R=3); returns the fraction of all replicas that moved
/// and asserts every moved replica moved to `added`.
fn moved_on_add(before: &[PlacementNode], after: &[PlacementNode], added: &str, chunks: usize) -> f64 {
    let mut rng = Rng(6);
    let mut moved = 0;
    for _ in 0..chunks {
        let chunk = rng.chunk();
        let (old, new) = (id_set(&place(&chunk, before, 3)), id_set(&place(&chunk, after, 3)));
        let gained: Vec<_> = new.difference(&old).collect();
        assert!(gained.iter().all(|id| *id == added), "replicas moved to {gained:?}");
        assert_eq!(old.difference(&new).count(), gained.len());
        moved += gained.len();
    }
    moved as f64 / (chunks * 3) as f64
}

#[test]
fn adding_a_node_moves_only_its_share() {
    let before = flat(5);
    let after = flat(6);
    let fraction = moved_on_add(&before, &after, "n5", 20_000);
    // The new node ends up with 1/6 of all replicas (R/6 = 0.5 per chunk); nothing else may move.
    let ideal = 1.0 / 6.0;
    eprintln!("add 6th node (R=3, 20k chunks): {fraction:.4} of replicas moved (ideal {ideal:.4})");
    assert!(fraction <= ideal * 1.3 && fraction >= ideal * 0.7, "moved {fraction}");
}

#[test]
fn adding_a_node_to_a_zoned_cluster_moves_only_its_share() {
    // 3 zones × 2 hosts, one replica per zone; a third host in z0 takes 1/3 of z0's replicas = 1/9.
    let before = cluster(3, 2, 1);
    let mut after = before.clone();
    after.push(node("z0-h2-n0", 1, "z0", "h2"));
    let fraction = moved_on_add(&before, &after, "z0-h2-n0", 20_000);
    let ideal = 1.0 / 9.0;
    eprintln!("add a host to one of 3 zones (R=3, 20k chunks): {fraction:.4} of replicas moved (ideal {ideal:.4})");
    assert!(fraction <= ideal * 1.3 && fraction >= ideal * 0.7, "moved {fraction}");
}

#[test]
fn removing_a_node_moves_only_its_replicas() {
    let before = flat(6);
    let after: Vec<_> = before.iter().filter(|n| n.id != "n2").cloned().collect();
    let mut rng = Rng(7);
    let chunks = 20_000;
    let mut changed = 0;
    for _ in 0..chunks {
        let chunk = rng.chunk();
        let (old, new) = (place(&chunk, &before, 3), place(&chunk, &after, 3));
        let (old_set, new_set) = (id_set(&old), id_set(&new));
        if old_set.contains("n2") {
            changed += 1;
            assert_eq!(old_set.difference(&new_set).collect::<Vec<_>>(), ["n2"]);
            assert_eq!(new_set.difference(&old_set).count(), 1);
        } else {
            assert_eq!(ids(&old), ids(&new));
        }
    }
    let fraction = changed as f64 / chunks as f64;
    eprintln!("remove 1 of 6 nodes (R=3, 20k chunks): {fraction:.4} of chunks changed, one replica each (ideal 0.5)");
}

#[test]
fn zero_weight_node_is_ranked_but_never_placed() {
    let mut nodes = flat(4);
    nodes[1].weight = 0;
    let mut rng = Rng(8);
    for _ in 0..5_000 {
        let chunk = rng.chunk();
        assert!(place(&chunk, &nodes, 3).iter().all(|n| n.id != "n1"));
        let ranked = rank(&chunk, &nodes, 3);
        assert_eq!(ranked.len(), 4);
        assert_eq!(ranked[3].id, "n1");
        // Asking for more replicas than there are nodes with weight gives only those.
        assert_eq!(ids(&place(&chunk, &nodes, 4)), ids(&ranked[..3]));
    }
    for n in &mut nodes {
        n.weight = 0;
    }
    let chunk = rng.chunk();
    assert!(place(&chunk, &nodes, 3).is_empty());
    assert_eq!(rank(&chunk, &nodes, 3).len(), 4);
}
