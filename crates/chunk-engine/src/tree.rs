//! Sub-chunk verification: a chunk's name is the blake3 hash of its bytes, and blake3 is a tree,
//! so the chaining values (CVs) of a chunk's 4 KiB groups rebuild its name. A reader that holds
//! a chunk's group CVs, checked once against the name, verifies any group it reads alone: a
//! 4 KiB read of a 1 MiB chunk reads and hashes about 4 KiB.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

use crate::ChunkHash;

/// Bytes per verified group (a power of two, at least blake3's 1 KiB chunk).
pub const GROUP: usize = 4096;

/// One group's chaining value.
pub type Cv = ChainingValue;

/// The CVs of the groups of a chunk whose bytes are `data` (none for a chunk of one group or
/// less: such a chunk is read and hashed whole).
pub fn group_cvs(data: &[u8]) -> Vec<Cv> {
    if data.len() <= GROUP {
        return Vec::new();
    }
    data.chunks(GROUP)
        .enumerate()
        .map(|(i, g)| blake3::Hasher::new().set_input_offset((i * GROUP) as u64).update(g).finalize_non_root())
        .collect()
}

/// The number of groups of a chunk of `len` bytes that has group CVs (0 for one group or less).
pub fn groups_of(len: u64) -> usize {
    if len <= GROUP as u64 { 0 } else { len.div_ceil(GROUP as u64) as usize }
}

/// The name of the chunk of `len` bytes whose group CVs are `cvs`, or `None` when their count
/// does not fit `len`.
pub fn root_of(cvs: &[Cv], len: u64) -> Option<ChunkHash> {
    if cvs.len() != groups_of(len) || cvs.is_empty() {
        return None;
    }
    let left = left_subtree_len(len);
    let l = subtree(cvs, 0, left);
    let r = subtree(cvs, (left / GROUP as u64) as usize, len - left);
    Some(ChunkHash(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()))
}

/// The CV of the subtree of `len` bytes starting at group `first` (not the root).
fn subtree(cvs: &[Cv], first: usize, len: u64) -> Cv {
    if len <= GROUP as u64 {
        return cvs[first];
    }
    // Splits of more than one group fall on group boundaries: GROUP is a power of two and the
    // left subtree is the largest power of two below `len`.
    let left = left_subtree_len(len);
    let l = subtree(cvs, first, left);
    let r = subtree(cvs, first + (left / GROUP as u64) as usize, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// Whether `data`, the bytes of groups `first..` of a chunk (the last one possibly short, at
/// the chunk's end), matches `cvs`, the chunk's group CVs.
pub fn groups_match(cvs: &[Cv], first: usize, data: &[u8]) -> bool {
    let n = data.len().div_ceil(GROUP);
    if data.is_empty() || first + n > cvs.len() {
        return false;
    }
    data.chunks(GROUP).enumerate().all(|(i, g)| {
        let at = ((first + i) * GROUP) as u64;
        blake3::Hasher::new().set_input_offset(at).update(g).finalize_non_root() == cvs[first + i]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
    }

    #[test]
    fn group_cvs_rebuild_the_name_for_every_shape() {
        let mut lens = vec![GROUP + 1, 2 * GROUP, 2 * GROUP + 1, 3 * GROUP + 100, 5 * GROUP, 64 << 10, (64 << 10) - 1];
        lens.extend([(1 << 20) - 7, 1 << 20, (1 << 20) + 4096 * 3 + 5, 4 << 20]);
        for k in 1..40 {
            lens.push(GROUP + k * 1531);
        }
        for (n, len) in lens.into_iter().enumerate() {
            let data = bytes(len, n as u8);
            let cvs = group_cvs(&data);
            assert_eq!(cvs.len(), groups_of(len as u64), "len {len}");
            assert_eq!(root_of(&cvs, len as u64), Some(ChunkHash::of(&data)), "len {len}");
            // Every group checks alone; a changed byte or a group shown at another index fails.
            for g in 0..cvs.len() {
                let end = ((g + 1) * GROUP).min(len);
                assert!(groups_match(&cvs, g, &data[g * GROUP..end]), "len {len} group {g}");
            }
            assert!(groups_match(&cvs, 0, &data[..(2 * GROUP).min(len)]));
            let mut bad = data[..GROUP].to_vec();
            bad[77] ^= 1;
            assert!(!groups_match(&cvs, 0, &bad), "len {len}: a flipped bit passed");
            if cvs.len() > 2 {
                assert!(!groups_match(&cvs, 1, &data[..GROUP]), "len {len}: group 0 passed as group 1");
            }
            // A changed CV no longer rebuilds the name; a wrong length is refused.
            let mut forged = cvs.clone();
            forged[cvs.len() / 2][0] ^= 1;
            assert_ne!(root_of(&forged, len as u64), Some(ChunkHash::of(&data)));
            assert_eq!(root_of(&cvs, len as u64 + GROUP as u64), None);
        }
    }

    #[test]
    fn small_chunks_have_no_group_cvs() {
        for len in [0, 1, 1024, GROUP] {
            assert!(group_cvs(&bytes(len, 1)).is_empty());
            assert_eq!(groups_of(len as u64), 0);
            assert_eq!(root_of(&[], len as u64), None);
        }
    }
}
