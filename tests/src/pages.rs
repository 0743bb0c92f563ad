//! Self-describing 4 KiB pages for crash tests of the block data path: round `r`'s `k`-th page
//! names its seed, round and index and is filled from them, and lands on a slot chosen from
//! them too, so a checker can tell, for any page read back, which write made it (or that it is
//! damaged) and what the last acknowledged write of each slot was.

/// Pages a round writes.
pub const PAGES_PER_ROUND: u64 = 48;
const MAGIC: &[u8; 4] = b"PG01";

fn mix(seed: u64, r: u64, k: u64) -> u64 {
    let mut x = seed ^ r.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x
}

/// The slot (page index in a volume of `pages` pages) round `r`'s page `k` goes to.
pub fn slot_of(seed: u64, r: u64, k: u64, pages: u64) -> u64 {
    mix(seed, r, k) % pages
}

/// Round `r`'s page `k`.
pub fn page_of(seed: u64, r: u64, k: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(4096);
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&seed.to_le_bytes());
    p.extend_from_slice(&r.to_le_bytes());
    p.extend_from_slice(&k.to_le_bytes());
    let mut x = mix(seed, r, k) | 1;
    while p.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes()[..(4096 - p.len()).min(8)]);
    }
    p
}

/// What a page read back is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Never written.
    Zeros,
    /// Written by round `r`, index `k`, intact.
    Written { r: u64, k: u64 },
    /// Neither: a torn or foreign page.
    Damaged,
}

/// Which write `bytes` (4 KiB) is.
pub fn parse(seed: u64, bytes: &[u8]) -> Page {
    if bytes.iter().all(|b| *b == 0) {
        return Page::Zeros;
    }
    if bytes.len() != 4096 || &bytes[..4] != MAGIC {
        return Page::Damaged;
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (s, r, k) = (word(4), word(12), word(20));
    if s != seed || page_of(seed, r, k) != bytes {
        return Page::Damaged;
    }
    Page::Written { r, k }
}

/// Checks a volume image of `pages` pages written by rounds `rounds` (in order) of `seed`, of
/// which those in `acked` were acknowledged: every slot holds its last acknowledged write or a
/// later one made for it (by a round in `rounds`), intact. Returns the problems found (empty:
/// all good).
pub fn check(seed: u64, image: &[u8], rounds: &[u64], acked: &[u64]) -> Vec<String> {
    let pages = image.len() as u64 / 4096;
    let mut last: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
    for &r in acked {
        for k in 0..PAGES_PER_ROUND {
            last.insert(slot_of(seed, r, k, pages), (r, k));
        }
    }
    let mut problems = Vec::new();
    for slot in 0..pages {
        let got = parse(seed, &image[(slot * 4096) as usize..((slot + 1) * 4096) as usize]);
        let want = last.get(&slot).copied();
        let ok = match (got, want) {
            (Page::Damaged, _) => false,
            (Page::Zeros, None) => true,
            (Page::Zeros, Some(_)) => false,
            (Page::Written { r, k }, w) => {
                slot_of(seed, r, k, pages) == slot
                    && rounds.contains(&r)
                    && w.is_none_or(|w| (r, k) >= w)
            }
        };
        if !ok {
            problems.push(format!("slot {slot}: holds {got:?}, last acknowledged write {want:?}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_name_themselves_and_the_checker_finds_losses() {
        let seed = 9;
        let pages = 64u64;
        let mut image = vec![0u8; (pages * 4096) as usize];
        let put = |image: &mut Vec<u8>, r: u64| {
            for k in 0..PAGES_PER_ROUND {
                let s = slot_of(seed, r, k, pages) as usize;
                image[s * 4096..(s + 1) * 4096].copy_from_slice(&page_of(seed, r, k));
            }
        };
        put(&mut image, 1);
        put(&mut image, 2);
        assert!(check(seed, &image, &[1, 2], &[1, 2]).is_empty());
        assert!(check(seed, &image, &[1, 2, 3], &[1]).is_empty(), "an unacknowledged round may show");
        let mut lost = image.clone();
        let s = slot_of(seed, 2, 0, pages) as usize;
        lost[s * 4096..(s + 1) * 4096].fill(0);
        assert!(!check(seed, &lost, &[1, 2], &[1, 2]).is_empty(), "a lost acknowledged page is found");
        let mut torn = image.clone();
        torn[s * 4096 + 100] ^= 1;
        assert_eq!(parse(seed, &torn[s * 4096..(s + 1) * 4096]), Page::Damaged);
        assert!(!check(seed, &torn, &[1, 2], &[1, 2]).is_empty());
    }
}
