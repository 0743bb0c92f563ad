//! The per-(chunk, node) rendezvous draw and its weighted key, computed bit-identically everywhere.
//!
//! Every client must rank nodes the same way, so nothing here may depend on the process, platform or
//! release: the node id is hashed with FNV-1a 64 (not `std`'s randomly seeded hasher), bits are mixed
//! with the splitmix64 finalizer, and `-ln(u)` is computed by [`neg_ln`] from IEEE-754 basic operations
//! only (each correctly rounded, so identical on every platform) instead of `f64::ln`, which calls the
//! platform's libm and may differ in the last bit between systems.

/// The splitmix64 finalizer: a bijection on `u64` with full avalanche.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a 64 of `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The uniformly distributed 64-bit draw for `node_id` and `chunk` (a blake3 hash, so its first 8
/// bytes are already uniform).
pub(crate) fn draw(chunk: &[u8; 32], node_id: &str) -> u64 {
    let chunk_bits = u64::from_le_bytes(chunk[..8].try_into().unwrap());
    mix64(chunk_bits ^ mix64(fnv1a64(node_id.as_bytes())))
}

/// The rendezvous key of a draw for a node of `weight` > 0: `-ln(u) / weight` with `u` in (0, 1]
/// taken from the draw's top 53 bits. It is exponentially distributed with rate `weight`, so the node
/// with the smallest key wins with probability proportional to its weight.
pub(crate) fn key(draw: u64, weight: u64) -> f64 {
    debug_assert!(weight > 0);
    neg_ln(unit(draw)) / weight as f64
}

/// Maps a draw to `u` in (0, 1], exactly (`u = k / 2^53`, `k` in 1..=2^53).
pub(crate) fn unit(draw: u64) -> f64 {
    ((draw >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `-ln(u)` for `u` in (0, 1] (normal numbers only), accurate to about one ulp.
///
/// `u = m · 2^e` with `m` in [√½, √2), then `ln m = 2·atanh(s)` with `s = (m-1)/(m+1)`, `|s| < 0.172`,
/// summed as the odd series `s + s³/3 + … + s²³/23` (the next term is below 2^-60 relative).
pub(crate) fn neg_ln(u: f64) -> f64 {
    debug_assert!(u > 0.0 && u <= 1.0 && u.is_normal());
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // Horner over 1/1 + s²/3 + s⁴/5 + … + s²²/23.
    let series = (0..12).rev().fold(0.0, |acc, k| acc * s2 + 1.0 / (2 * k + 1) as f64);
    -(e as f64 * std::f64::consts::LN_2 + 2.0 * s * series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_ln_matches_libm() {
        let mut state = 7u64;
        for i in 0..100_000u64 {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let u = if i < 64 { unit(u64::MAX >> i) } else { unit(mix64(state)) };
            let (ours, libm) = (neg_ln(u), -u.ln());
            assert!(
                (ours - libm).abs() <= 4.0 * f64::EPSILON * libm.max(1e-300),
                "u={u:e} ours={ours:e} libm={libm:e}"
            );
        }
        assert_eq!(neg_ln(1.0), 0.0);
        assert!((neg_ln(unit(0)) - 53.0 * std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn draws_are_pinned() {
        // These values are part of the on-disk contract: every client and release must compute them.
        let mut chunk = [0u8; 32];
        chunk[..8].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(draw(&chunk, "node-1"), PINNED_DRAW);
    }

    const PINNED_DRAW: u64 = 0xd3273f3bec169fd9;
}
