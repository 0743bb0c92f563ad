//! Chunk placement: a pure, deterministic map from a chunk hash and the storage nodes to an ordered list
//! of nodes, so any client finds a chunk's replicas without asking anyone.
//!
//! The algorithm is weighted rendezvous hashing (highest random weight): every (chunk, node) pair gets a
//! key `-ln(u) / weight` from a stable hash (see `score`), and smaller keys rank first. A node therefore
//! leads a chunk's ranking with probability proportional to its weight, and adding or removing a node
//! only moves the chunks that node wins or held. [`rank`] then picks the first `r` replicas greedily in
//! that order so they span failure domains: distinct zones while zones last, then distinct hosts while
//! hosts last, then any node.

mod score;

use std::collections::HashSet;

/// One storage node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlacementNode {
    /// Unique, stable id of the node; it is hashed, so renaming a node moves its data.
    pub id: String,
    /// Usable capacity in bytes; the node's share of new data is proportional to it. 0 = takes no new
    /// data (draining or full): it never holds one of the first `r` replicas but is still ranked.
    pub weight: u64,
    /// Failure domain above the host (rack, room, availability zone).
    pub zone: String,
    /// Machine the node runs on. Hosts are told apart within their zone: (zone, host) names one host.
    pub host: String,
}

/// Ranks all nodes for a chunk: the first `r` honour failure domains (distinct zones while enough zones
/// with weight > 0 exist, then distinct hosts while enough hosts exist, then the best remaining nodes),
/// then all the others in rendezvous order (readers fall back along this list; repair uses it). Nodes of
/// weight 0 come after every node of weight > 0, so fewer than `r` are placed if there are too few.
///
/// The result depends only on the chunk, `r` and the set of nodes, never on the order of `nodes`
/// (ids are assumed unique; equal keys, which are astronomically unlikely, are ordered by id).
pub fn rank<'a>(chunk: &[u8; 32], nodes: &'a [PlacementNode], r: usize) -> Vec<&'a PlacementNode> {
    // Rendezvous order: weight > 0 by key; weight 0 after them, by their unweighted draw.
    let mut order: Vec<(bool, f64, &PlacementNode)> = nodes
        .iter()
        .map(|n| {
            let d = score::draw(chunk, &n.id);
            (n.weight == 0, score::key(d, n.weight.max(1)), n)
        })
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then_with(|| a.2.id.cmp(&b.2.id)));
    let order: Vec<&PlacementNode> = order.into_iter().map(|(_, _, n)| n).collect();

    // Greedy replica choice over the weighted prefix, loosening the failure-domain rule pass by pass.
    let eligible = order.iter().take_while(|n| n.weight > 0).count();
    let want = r.min(eligible);
    let mut taken = vec![false; order.len()];
    let mut chosen = Vec::with_capacity(order.len());
    let mut zones = HashSet::new();
    let mut hosts = HashSet::new();
    for pass in 0..3 {
        for (i, n) in order[..eligible].iter().enumerate() {
            if chosen.len() == want {
                break;
            }
            let ok = match pass {
                0 => !zones.contains(n.zone.as_str()),
                1 => !hosts.contains(&(n.zone.as_str(), n.host.as_str())),
                _ => true,
            };
            if ok && !taken[i] {
                taken[i] = true;
                zones.insert(n.zone.as_str());
                hosts.insert((n.zone.as_str(), n.host.as_str()));
                chosen.push(*n);
            }
        }
    }
    chosen.extend(order.iter().zip(&taken).filter(|(_, t)| !**t).map(|(n, _)| *n));
    chosen
}

/// The first `r` nodes of [`rank`]: where a chunk's replicas live (fewer if fewer than `r` nodes have
/// weight > 0).
pub fn place<'a>(chunk: &[u8; 32], nodes: &'a [PlacementNode], r: usize) -> Vec<&'a PlacementNode> {
    let mut ranked = rank(chunk, nodes, r);
    ranked.truncate(r.min(nodes.iter().filter(|n| n.weight > 0).count()));
    ranked
}

#[cfg(test)]
mod tests;
