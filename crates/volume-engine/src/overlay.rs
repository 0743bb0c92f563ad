//! A volume's unfolded writes: per block, non-overlapping byte extents laid over the block's
//! committed chunk (the newest write wins where they overlap), each tagged with the stamp of the
//! write that made it, so a fold can drop exactly what it folded.

use std::collections::BTreeMap;

use bytes::Bytes;

/// One extent: bytes `start..end` of its block (the key holds `start`); `None` data is zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext {
    pub end: u64,
    pub data: Option<Bytes>,
    pub stamp: u64,
}

/// A block's extents by start offset.
pub type Extents = BTreeMap<u64, Ext>;

/// Unfolded writes of a whole volume.
#[derive(Debug, Default)]
pub struct Overlay {
    blocks: BTreeMap<u64, Extents>,
    bytes: u64,
}

impl Overlay {
    /// Bytes the extents cover (zeros included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks with extents.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Lays `data` (zeros when `None`; else `end - start` bytes) over bytes `start..end` of
    /// block `block`.
    pub fn insert(&mut self, block: u64, start: u64, end: u64, data: Option<Bytes>, stamp: u64) {
        debug_assert!(start < end);
        debug_assert!(data.as_ref().is_none_or(|d| d.len() as u64 == end - start));
        let ex = self.blocks.entry(block).or_default();
        let mut hits = Vec::new();
        if let Some((&a, x)) = ex.range(..start).next_back()
            && x.end > start
        {
            hits.push(a);
        }
        hits.extend(ex.range(start..end).map(|(a, _)| *a));
        for a in hits {
            let x = ex.remove(&a).expect("hit is present");
            self.bytes -= x.end - a;
            if a < start {
                let data = x.data.as_ref().map(|d| d.slice(..(start - a) as usize));
                ex.insert(a, Ext { end: start, data, stamp: x.stamp });
                self.bytes += start - a;
            }
            if x.end > end {
                let data = x.data.as_ref().map(|d| d.slice((end - a) as usize..));
                ex.insert(end, Ext { end: x.end, data, stamp: x.stamp });
                self.bytes += x.end - end;
            }
        }
        ex.insert(start, Ext { end, data, stamp });
        self.bytes += end - start;
    }

    /// The extents of `block` cut to bytes `s..e`, as (start, end, data) in order.
    pub fn pieces(&self, block: u64, s: u64, e: u64) -> Vec<(u64, u64, Option<Bytes>)> {
        let Some(ex) = self.blocks.get(&block) else { return Vec::new() };
        let mut out = Vec::new();
        let first = ex.range(..=s).next_back().map(|(a, _)| *a).unwrap_or(s);
        for (&a, x) in ex.range(first..e) {
            let (ps, pe) = (a.max(s), x.end.min(e));
            if ps >= pe {
                continue;
            }
            let data = x.data.as_ref().map(|d| d.slice((ps - a) as usize..(pe - a) as usize));
            out.push((ps, pe, data));
        }
        out
    }

    /// All extents of `block` (a copy, for a fold).
    pub fn extents(&self, block: u64) -> Option<Extents> {
        self.blocks.get(&block).cloned()
    }

    /// Every block with extents and a copy of them.
    pub fn snapshot(&self) -> Vec<(u64, Extents)> {
        self.blocks.iter().map(|(b, x)| (*b, x.clone())).collect()
    }

    /// Removes the extents of `block` made by writes stamped `upto` or earlier (folded into its
    /// chunk); newer ones stay.
    pub fn remove_upto(&mut self, block: u64, upto: u64) {
        let Some(ex) = self.blocks.get_mut(&block) else { return };
        let bytes = &mut self.bytes;
        ex.retain(|a, x| {
            let keep = x.stamp > upto;
            if !keep {
                *bytes -= x.end - a;
            }
            keep
        });
        if ex.is_empty() {
            self.blocks.remove(&block);
        }
    }
}

/// Whether `pieces` (in order, as [`Overlay::pieces`] gives them) cover all of `s..e`.
pub fn covers(pieces: &[(u64, u64, Option<Bytes>)], s: u64, e: u64) -> bool {
    let mut at = s;
    for (ps, pe, _) in pieces {
        if *ps > at {
            return false;
        }
        at = at.max(*pe);
    }
    at >= e
}

/// Lays `pieces` over `out`, which holds bytes `s..` of the block.
pub fn apply(out: &mut [u8], s: u64, pieces: &[(u64, u64, Option<Bytes>)]) {
    for (ps, pe, data) in pieces {
        let dst = &mut out[(ps - s) as usize..(pe - s) as usize];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
    }
}

/// Lays a block's `extents` over `block` (the whole block).
pub fn apply_extents(block: &mut [u8], extents: &Extents) {
    for (a, x) in extents {
        let dst = &mut block[*a as usize..x.end as usize];
        match &x.data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
    }
}

/// Whether `extents` cover the whole of a block of `bs` bytes.
pub fn covers_block(extents: &Extents, bs: u64) -> bool {
    let mut at = 0;
    for (a, x) in extents {
        if *a > at {
            return false;
        }
        at = at.max(x.end);
    }
    at >= bs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain byte array kept beside the overlay: the model it must match.
    fn check(ov: &Overlay, model: &[Option<u8>], bs: u64) {
        let mut got = vec![0xEEu8; bs as usize];
        let pieces = ov.pieces(0, 0, bs);
        apply(&mut got, 0, &pieces);
        let mut covered = 0;
        for (i, m) in model.iter().enumerate() {
            if let Some(v) = m {
                assert_eq!(got[i], *v, "byte {i}");
                covered += 1;
            } else {
                assert_eq!(got[i], 0xEE, "byte {i} should be untouched");
            }
        }
        assert_eq!(ov.bytes(), covered, "bytes accounted");
        // Pieces are disjoint and ordered.
        for w in pieces.windows(2) {
            assert!(w[0].1 <= w[1].0);
        }
    }

    #[test]
    fn overlapping_writes_keep_the_newest_bytes() {
        let bs = 64;
        let mut ov = Overlay::default();
        let mut model = vec![None; bs as usize];
        let mut seed = 7u64;
        for stamp in 1..400u64 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let s = (seed >> 33) % bs;
            let e = s + 1 + (seed >> 20) % (bs - s);
            let zero = (seed >> 10).is_multiple_of(5);
            let v = (stamp % 251) as u8 + 1;
            let data = (!zero).then(|| Bytes::from(vec![v; (e - s) as usize]));
            ov.insert(0, s, e, data, stamp);
            for b in &mut model[s as usize..e as usize] {
                *b = Some(if zero { 0 } else { v });
            }
            check(&ov, &model, bs);
        }
    }

    #[test]
    fn pieces_cut_to_the_range_and_cover_tells_holes() {
        let mut ov = Overlay::default();
        ov.insert(3, 10, 20, Some(Bytes::from_static(&[1; 10])), 1);
        ov.insert(3, 20, 30, None, 2);
        let p = ov.pieces(3, 15, 25);
        assert_eq!(p, vec![(15, 20, Some(Bytes::from_static(&[1; 5]))), (20, 25, None)]);
        assert!(covers(&p, 15, 25));
        assert!(!covers(&ov.pieces(3, 5, 25), 5, 25));
        assert!(!covers(&ov.pieces(3, 25, 35), 25, 35));
        assert!(ov.pieces(4, 0, 10).is_empty());
        assert!(!covers_block(&ov.extents(3).unwrap(), 64));
        ov.insert(3, 0, 64, None, 3);
        assert!(covers_block(&ov.extents(3).unwrap(), 64));
    }

    #[test]
    fn a_fold_removes_only_what_it_folded() {
        let mut ov = Overlay::default();
        ov.insert(1, 0, 8, Some(Bytes::from_static(b"aaaaaaaa")), 1);
        ov.insert(1, 4, 6, Some(Bytes::from_static(b"bb")), 5);
        // Folded up to stamp 3: the newer write stays, the older one's remnants go.
        ov.remove_upto(1, 3);
        assert_eq!(ov.pieces(1, 0, 8), vec![(4, 6, Some(Bytes::from_static(b"bb")))]);
        assert_eq!(ov.bytes(), 2);
        ov.remove_upto(1, 5);
        assert!(ov.is_empty());
        assert_eq!(ov.bytes(), 0);
    }

    #[test]
    fn apply_extents_builds_the_block() {
        let mut ov = Overlay::default();
        ov.insert(0, 2, 4, Some(Bytes::from_static(b"xy")), 1);
        ov.insert(0, 6, 8, None, 2);
        let mut b = vec![9u8; 8];
        apply_extents(&mut b, &ov.extents(0).unwrap());
        assert_eq!(b, vec![9, 9, b'x', b'y', 9, 9, 0, 0]);
    }
}
