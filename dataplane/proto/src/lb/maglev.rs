//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! This module owns the lookup table: `M` entries (M prime), each naming a
//! backend, filled so that every backend owns about `M / N` entries and a
//! change of the backend set moves few entries. A flow goes to
//! `table[flow_hash % M]`.
//!
//! Each backend has a permutation of `0..M` given by two hashes of its key
//! (its address): `offset = h0 % M`, `skip = h1 % (M - 1) + 1`, position
//! `j` being `(offset + j * skip) % M` (a full cycle because M is prime).
//! Backends take turns, in the order given, each claiming the next entry
//! of its permutation that is still free, until the table is full
//! (the paper's Pseudocode 1). The permutation is computed as it is walked
//! rather than stored (N × M words for 1,000 backends would be 64 MB).
//!
//! Every host must build the same table: callers pass the backends in an
//! order every host agrees on (sorted by address, see
//! [`super::service::Service`]) and the hashes have fixed seeds. Removing
//! one of N backends moves its ~M/N entries and, as the paper measures,
//! a few more; adding one takes ~M/(N+1). Tested below.
//!
//! Cilium uses the same construction (`pkg/maglev`, default M 16381).
use super::hash::{addr_bits, hash_words};
use std::fmt;
use std::net::IpAddr;

/// Default table size: prime, 16 × the largest backend set a table must
/// spread evenly (1,024), as Cilium's default.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;
/// Table sizes allowed (both prime bounds inclusive). 65537 suits services
/// with hundreds of backends; the paper uses 65537 in production.
pub const MIN_TABLE_SIZE: u32 = 251;
pub const MAX_TABLE_SIZE: u32 = 1_048_573;

/// Seeds of the two permutation hashes and of the flow hash. Fixed: they
/// are part of what every host must agree on.
const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"
const SEED_FLOW: u64 = 0x666c_6f77_6861_7368; // "flowhash"

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not a prime within [MIN_TABLE_SIZE, MAX_TABLE_SIZE].
    BadSize(u32),
    /// More backends than the table has entries (or than an entry can name).
    TooManyBackends { backends: usize, size: u32 },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaglevError::BadSize(m) => write!(
                f,
                "Maglev table size {m} must be a prime from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE} (e.g. 16381 or 65537)"
            ),
            MaglevError::TooManyBackends { backends, size } => write!(
                f,
                "{backends} backends do not fit a Maglev table of {size} entries"
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// A built lookup table: entry `i` is the index of a backend in the slice
/// the table was built from.
#[derive(Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Box<[u16]>,
    size: u32,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("size", &self.size)
            .field("filled", &!self.table.is_empty())
            .finish()
    }
}

/// True if `n` is prime (trial division; sizes are at most ~2^20).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

impl Maglev {
    /// Checks a table size without building anything.
    pub fn check_size(size: u32) -> Result<(), MaglevError> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) || !is_prime(size) {
            return Err(MaglevError::BadSize(size));
        }
        Ok(())
    }

    /// Builds the table of `size` entries for `backends`, in the order
    /// given (the caller's stable order). With no backend, the table is
    /// empty and every lookup answers `None`.
    pub fn new(backends: &[IpAddr], size: u32) -> Result<Maglev, MaglevError> {
        Self::check_size(size)?;
        let n = backends.len();
        if n > size as usize || n > usize::from(u16::MAX) {
            return Err(MaglevError::TooManyBackends { backends: n, size });
        }
        if n == 0 {
            return Ok(Maglev {
                table: Box::new([]),
                size,
            });
        }
        let m = u64::from(size);
        // (current position, skip) per backend: position j of the
        // permutation is offset + j * skip (mod M), walked by adding skip.
        let mut walk: Vec<(u64, u64)> = backends
            .iter()
            .map(|ip| {
                let bits = addr_bits(*ip);
                let words = [bits as u64, (bits >> 64) as u64];
                let offset = hash_words(SEED_OFFSET, &words) % m;
                let skip = hash_words(SEED_SKIP, &words) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        const FREE: u16 = u16::MAX;
        let mut table = vec![FREE; size as usize].into_boxed_slice();
        let mut filled = 0usize;
        'fill: loop {
            for (i, (pos, skip)) in walk.iter_mut().enumerate() {
                // Each permutation visits every entry once in M steps, and
                // a free entry exists while filled < M: this terminates.
                while table[*pos as usize] != FREE {
                    *pos = (*pos + *skip) % m;
                }
                table[*pos as usize] = i as u16;
                *pos = (*pos + *skip) % m;
                filled += 1;
                if filled == size as usize {
                    break 'fill;
                }
            }
        }
        Ok(Maglev { table, size })
    }

    /// The backend index for a flow hash, `None` when there is no backend.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let i = (flow_hash % u64::from(self.size)) as usize;
        self.table.get(i).map(|b| usize::from(*b))
    }

    /// Entries in the table (M).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The raw table (empty with no backend).
    pub fn entries(&self) -> &[u16] {
        &self.table
    }
}

/// The hash that picks a flow's entry: over the inner 5-tuple (addresses,
/// protocol, ports) with a fixed seed, so every host computes the same.
#[inline]
pub fn flow_hash(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> u64 {
    let s = addr_bits(src);
    let d = addr_bits(dst);
    let rest = (u64::from(proto) << 32) | (u64::from(sport) << 16) | u64::from(dport);
    hash_words(
        SEED_FLOW,
        &[s as u64, (s >> 64) as u64, d as u64, (d >> 64) as u64, rest],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PINNED_HEAD: [u16; 16] = [2, 2, 2, 1, 2, 1, 0, 2, 1, 2, 1, 2, 1, 1, 1, 1];
    const PINNED_HASH: u64 = 12_383_071_132_958_911_298;

    fn backends(n: u32) -> Vec<IpAddr> {
        (0..n)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0100 + i)))
            .collect()
    }

    fn counts(t: &Maglev, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for e in t.entries() {
            c[usize::from(*e)] += 1;
        }
        c
    }

    /// Entries that name a different backend address in `b` than in `a`.
    fn moved(a: &Maglev, a_ips: &[IpAddr], b: &Maglev, b_ips: &[IpAddr]) -> usize {
        a.entries()
            .iter()
            .zip(b.entries())
            .filter(|(x, y)| a_ips[usize::from(**x)] != b_ips[usize::from(**y)])
            .count()
    }

    #[test]
    fn sizes_must_be_prime_and_bounded() {
        assert!(Maglev::new(&backends(3), 16_381).is_ok());
        assert!(Maglev::new(&backends(3), 65_537).is_ok());
        for bad in [0, 1, 250, 16_380, 65_536, 1_048_583, u32::MAX] {
            assert_eq!(
                Maglev::new(&backends(3), bad),
                Err(MaglevError::BadSize(bad)),
                "{bad}"
            );
        }
        assert!(matches!(
            Maglev::new(&backends(300), 251),
            Err(MaglevError::TooManyBackends { .. })
        ));
        assert!(is_prime(16_381) && is_prime(65_537) && is_prime(MAX_TABLE_SIZE));
        assert!(is_prime(MIN_TABLE_SIZE));
    }

    #[test]
    fn empty_set_answers_none() {
        let t = Maglev::new(&[], 16_381).unwrap();
        assert_eq!(t.lookup(12345), None);
        assert!(t.entries().is_empty());
    }

    #[test]
    fn every_backend_gets_a_fair_share() {
        for (n, m) in [
            (3u32, 16_381u32),
            (10, 16_381),
            (100, 16_381),
            (1000, 65_537),
        ] {
            let t = Maglev::new(&backends(n), m).unwrap();
            let c = counts(&t, n as usize);
            let fair = f64::from(m) / f64::from(n);
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            // The paper: imbalance stays within a few percent when M >> N;
            // the fill hands entries round-robin, so shares differ by at
            // most the entries a backend loses to its permutation's order.
            assert!(
                (*lo as f64) > fair * 0.9 && (*hi as f64) < fair * 1.1,
                "N={n} M={m}: shares {lo}..{hi}, fair {fair:.1}"
            );
        }
    }

    #[test]
    fn same_input_same_table() {
        let a = Maglev::new(&backends(50), 16_381).unwrap();
        let b = Maglev::new(&backends(50), 16_381).unwrap();
        assert_eq!(a, b, "two hosts build the same table");
    }

    #[test]
    fn removing_a_backend_moves_about_one_nth() {
        let m = 16_381u32;
        for n in [5u32, 20, 100] {
            let all = backends(n);
            let full = Maglev::new(&all, m).unwrap();
            for gone in [0, n as usize / 2, n as usize - 1] {
                let mut rest = all.clone();
                rest.remove(gone);
                let less = Maglev::new(&rest, m).unwrap();
                // Every entry of the removed backend must move...
                let owned = counts(&full, n as usize)[gone];
                let moved_total = moved(&full, &all, &less, &rest);
                // ...and few others: the paper (fig. 9) reports under 2%
                // extra disruption for M well above N.
                let extra = moved_total - owned;
                assert!(
                    (extra as f64) < f64::from(m) * 0.02,
                    "N={n} removing #{gone}: {owned} entries had to move, {extra} more did"
                );
                let fraction = moved_total as f64 / f64::from(m);
                assert!(
                    fraction < 1.0 / f64::from(n) + 0.02,
                    "N={n}: {:.2}% of flows moved, ideal {:.2}%",
                    fraction * 100.0,
                    100.0 / f64::from(n)
                );
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one() {
        let m = 16_381u32;
        for n in [4u32, 19, 99] {
            let before = backends(n);
            let mut after = backends(n + 1);
            // Keep the stable order: the newcomer sorts into the middle.
            after.swap(n as usize, n as usize / 2);
            after[..].sort();
            let a = Maglev::new(&before, m).unwrap();
            let b = Maglev::new(&after, m).unwrap();
            let moved = moved(&a, &before, &b, &after);
            let ideal = f64::from(m) / f64::from(n + 1);
            assert!(
                (moved as f64) < ideal + f64::from(m) * 0.02,
                "N={n}+1: {moved} entries moved, ideal {ideal:.0}"
            );
            // Entries that moved went to the newcomer (or were reshuffled
            // by the few collisions); none moved between old backends
            // beyond the same small margin.
            let to_new = a
                .entries()
                .iter()
                .zip(b.entries())
                .filter(|(x, y)| before[usize::from(**x)] != after[usize::from(**y)])
                .filter(|(_, y)| !before.contains(&after[usize::from(**y)]))
                .count();
            assert!(moved - to_new < (f64::from(m) * 0.02) as usize);
        }
    }

    #[test]
    fn flows_spread_over_backends() {
        let n = 7;
        let t = Maglev::new(&backends(n), DEFAULT_TABLE_SIZE).unwrap();
        let mut hits = vec![0u32; n as usize];
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        for port in 0..7000u16 {
            let h = flow_hash(client, vip, 6, 30_000 + port, 80);
            hits[t.lookup(h).unwrap()] += 1;
        }
        for (i, h) in hits.iter().enumerate() {
            assert!((800..1200).contains(h), "backend {i} got {h} of 7000 flows");
        }
    }

    /// Hosts running different builds must still agree: the hashes and
    /// the fill are a wire contract. This pins them; a change here must
    /// reach every host of a swarm at once.
    #[test]
    fn table_is_pinned_across_builds() {
        let t = Maglev::new(&backends(3), 251).unwrap();
        let head: Vec<u16> = t.entries()[..16].to_vec();
        let h = flow_hash(
            "10.0.0.2".parse().unwrap(),
            "10.0.0.100".parse().unwrap(),
            6,
            40000,
            80,
        );
        assert_eq!((head, h), (PINNED_HEAD.to_vec(), PINNED_HASH));
    }

    #[test]
    fn flow_hash_covers_every_field() {
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let h = flow_hash(a, b, 6, 1, 2);
        assert_eq!(h, flow_hash(a, b, 6, 1, 2));
        for other in [
            flow_hash(b, a, 6, 1, 2),
            flow_hash(a, b, 17, 1, 2),
            flow_hash(a, b, 6, 2, 1),
            flow_hash(a, "fd00::3".parse().unwrap(), 6, 1, 2),
        ] {
            assert_ne!(h, other);
        }
    }
}
