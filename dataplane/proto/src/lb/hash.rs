//! The load balancer's hash: 64-bit words in, a well-mixed 64-bit value
//! out, with a seed. Pure arithmetic, the same result on every host and
//! every build, which Maglev needs (every host must pick the same backend
//! for a flow). Not cryptographic: conntrack uses a per-dataplane random
//! seed so that a container cannot aim flows at one bucket of another
//! host's table.
//!
//! Each word is absorbed with a multiply and rotate (the xxHash/MurmurHash
//! round shape) and the result goes through MurmurHash3's 64-bit finalizer
//! (`fmix64`), which makes every input bit affect every output bit.
use std::net::IpAddr;

const P1: u64 = 0x9e37_79b9_7f4a_7c15;
const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// MurmurHash3 `fmix64`.
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hashes `words` with `seed`.
#[inline]
pub fn hash_words(seed: u64, words: &[u64]) -> u64 {
    let mut h = seed ^ P2;
    for w in words {
        h ^= w.wrapping_mul(P1).rotate_left(31).wrapping_mul(P2);
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P2);
    }
    fmix64(h ^ words.len() as u64)
}

/// An address as 128 bits, IPv4 as its IPv4-mapped IPv6 form (so that the
/// two families never share a value a real overlay address would have).
#[inline]
pub fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_seeded() {
        // Deterministic, seed-dependent, input-dependent (the values every
        // host must agree on are pinned in maglev's tests).
        assert_eq!(hash_words(0, &[1, 2, 3]), hash_words(0, &[1, 2, 3]));
        assert_ne!(hash_words(0, &[1, 2, 3]), hash_words(1, &[1, 2, 3]));
        assert_ne!(hash_words(0, &[1, 2, 3]), hash_words(0, &[1, 2, 4]));
        assert_ne!(hash_words(0, &[0]), hash_words(0, &[0, 0]));
        assert_ne!(
            addr_bits("10.0.0.1".parse().unwrap()),
            addr_bits("::a00:1".parse().unwrap())
        );
    }

    #[test]
    fn one_bit_flips_about_half_the_output() {
        let mut total = 0u32;
        let n = 64 * 4;
        for bit in 0..64 {
            for word in 0..4 {
                let mut w = [0x1234_5678_9abc_def0u64, 7, 1 << 40, u64::MAX];
                let a = hash_words(42, &w);
                w[word] ^= 1 << bit;
                total += (a ^ hash_words(42, &w)).count_ones();
            }
        }
        let avg = f64::from(total) / f64::from(n);
        assert!((28.0..36.0).contains(&avg), "avalanche {avg} bits of 64");
    }
}
