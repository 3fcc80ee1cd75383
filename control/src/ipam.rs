//! Address management, sans-IO: which subnet a new network gets from the
//! pool, and which address a gateway or container gets inside a network.
//!
//! Nothing here touches the store. [`crate::networks`] and
//! [`crate::containers`] load the current allocations into an
//! [`AddressSpace`], ask it for an address, and persist the answer as an
//! [`crate::model::AddressAlloc`] in the same transaction as the record that
//! uses it; that record plus a `require_absent` guard is what makes "never
//! handed out twice" hold across restarts.
//!
//! Addresses are handled as `u128` offsets so IPv4 and IPv6 share one
//! allocator. The lowest free address is chosen; the search walks the sorted
//! allocated set, so its cost is bounded by the number of allocations, not by
//! the size of the range (an IPv6 /64 is fine).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::error::{ControlError, Result};
use crate::model::AddressPool;

/// Whether two prefixes share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks a pool given at `swarm init`.
pub fn check_pool(pool: &AddressPool) -> Result<()> {
    let min = pool.base.prefix_len();
    if pool.size < min || pool.size > 30 {
        return Err(ControlError::InvalidPool {
            base: IpNet::V4(pool.base),
            size: pool.size,
            min,
        });
    }
    Ok(())
}

/// The first subnet of `pool` that overlaps none of `used`.
pub fn next_subnet(pool: &AddressPool, used: &[IpNet]) -> Result<Ipv4Net> {
    check_pool(pool)?;
    let exhausted = || ControlError::PoolExhausted {
        pool: IpNet::V4(pool.base),
        size: pool.size,
    };
    let candidates = pool
        .base
        .trunc()
        .subnets(pool.size)
        .map_err(|_| exhausted())?;
    candidates
        .into_iter()
        .find(|c| !used.iter().any(|u| overlaps(&IpNet::V4(*c), u)))
        .ok_or_else(exhausted)
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, x: u128) -> IpAddr {
    if v4 {
        // Callers only pass values derived from an IPv4 subnet.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(x).unwrap_or(u32::MAX)))
    } else {
        IpAddr::V6(Ipv6Addr::from(x))
    }
}

/// Checks a subnet given for a network: large enough to hold a gateway and
/// at least one container.
pub fn check_subnet(subnet: &IpNet) -> Result<()> {
    if subnet.network() != subnet.addr() {
        return Err(ControlError::InvalidAddressing(format!(
            "subnet {subnet} has host bits set; did you mean {}?",
            subnet.trunc()
        )));
    }
    let max = match subnet {
        IpNet::V4(_) => 30,
        IpNet::V6(_) => 126,
    };
    if subnet.prefix_len() > max {
        return Err(ControlError::InvalidAddressing(format!(
            "subnet {subnet} is too small; use /{max} or larger"
        )));
    }
    if let Some((_, what)) = RESERVED
        .iter()
        .map(|(n, what)| (n.parse::<IpNet>().expect("a valid literal"), what))
        .find(|(n, _)| overlaps(n, subnet))
    {
        return Err(ControlError::InvalidAddressing(format!(
            "subnet {subnet} overlaps {what}, which containers cannot use; use a private range such as 10.0.0.0/8 or fd00::/8"
        )));
    }
    Ok(())
}

/// Ranges no network may take: packets to or from them never pass as
/// ordinary unicast (RFC 6890; RFC 4291 section 2.5.5.2 for IPv4-mapped,
/// section 2.5.6 for link-local, which each interface has of its own),
/// and 198.18.0.0/15 (RFC 2544), where the dataplanes' host links live
/// (`DEFAULT_HOST_LINK_SUBNET`): a container there could take the mesh
/// address.
const RESERVED: [(&str, &str); 10] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local addresses (169.254.0.0/16)"),
    (
        "198.18.0.0/15",
        "the range of vxnet's host links (198.18.0.0/15)",
    ),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    (
        "240.0.0.0/4",
        "reserved addresses and the broadcast address (240.0.0.0/4)",
    ),
    ("::/127", "the unspecified and loopback addresses (::/127)"),
    ("::ffff:0:0/96", "IPv4-mapped addresses (::ffff:0:0/96)"),
    ("fe80::/10", "link-local addresses (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
];

/// The usable addresses of one subnet of one network and which of them are
/// taken.
#[derive(Clone, Debug)]
pub struct AddressSpace {
    network: String,
    subnet: IpNet,
    /// Where automatic allocation draws from (`--ip-range` or the subnet).
    range: IpNet,
    taken: BTreeSet<u128>,
}

impl AddressSpace {
    /// A space for `subnet` (already checked with [`check_subnet`]), drawing
    /// from `range` when given; `network` names it in errors.
    pub fn new(network: &str, subnet: IpNet, range: Option<IpNet>) -> Result<Self> {
        check_subnet(&subnet)?;
        let range = match range {
            None => subnet,
            Some(r) => {
                if r.network() != r.addr() {
                    return Err(ControlError::InvalidAddressing(format!(
                        "ip-range {r} has host bits set; did you mean {}?",
                        r.trunc()
                    )));
                }
                if !subnet.contains(&r) {
                    return Err(ControlError::InvalidAddressing(format!(
                        "ip-range {r} is not inside subnet {subnet}"
                    )));
                }
                r
            }
        };
        Ok(Self {
            network: network.to_owned(),
            subnet,
            range,
            taken: BTreeSet::new(),
        })
    }

    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    fn is_v4(&self) -> bool {
        matches!(self.subnet, IpNet::V4(_))
    }

    /// First and last address a host may use in the subnet: not the network
    /// address, and for IPv4 not the broadcast address.
    fn usable_bounds(&self) -> (u128, u128) {
        let first = to_u128(self.subnet.network()) + 1;
        let last = to_u128(self.subnet.broadcast()) - u128::from(self.is_v4());
        (first, last)
    }

    /// Why `ip` cannot be held by anyone in this subnet, if it cannot.
    pub fn unusable_reason(&self, ip: IpAddr) -> Option<String> {
        if !self.subnet.contains(&ip) {
            return Some(format!("it is outside subnet {}", self.subnet));
        }
        let (first, last) = self.usable_bounds();
        let x = to_u128(ip);
        if x < first {
            return Some(format!("it is the network address of {}", self.subnet));
        }
        if x > last {
            return Some(format!("it is the broadcast address of {}", self.subnet));
        }
        None
    }

    pub fn is_taken(&self, ip: IpAddr) -> bool {
        self.taken.contains(&to_u128(ip))
    }

    /// Records an address held already (loaded from the store). Addresses of
    /// another family or subnet are ignored: they belong to another space.
    pub fn mark_taken(&mut self, ip: IpAddr) {
        if self.subnet.contains(&ip) {
            self.taken.insert(to_u128(ip));
        }
    }

    /// The default gateway: the first usable address of the subnet.
    pub fn default_gateway(&self) -> IpAddr {
        from_u128(self.is_v4(), self.usable_bounds().0)
    }

    /// Takes `ip` if it is usable and free.
    pub fn take(&mut self, ip: IpAddr, owner_of: impl FnOnce(IpAddr) -> String) -> Result<IpAddr> {
        if let Some(reason) = self.unusable_reason(ip) {
            return Err(ControlError::AddressNotUsable {
                ip,
                network: self.network.clone(),
                reason,
            });
        }
        if !self.taken.insert(to_u128(ip)) {
            return Err(ControlError::AddressInUse {
                ip,
                network: self.network.clone(),
                owner: owner_of(ip),
            });
        }
        Ok(ip)
    }

    /// Takes the lowest free address of the range.
    pub fn allocate(&mut self) -> Result<IpAddr> {
        let (ufirst, ulast) = self.usable_bounds();
        let first = to_u128(self.range.network()).max(ufirst);
        let last = to_u128(self.range.broadcast()).min(ulast);
        let exhausted = || ControlError::AddressesExhausted {
            network: self.network.clone(),
            range: self.range,
        };
        if first > last {
            return Err(exhausted());
        }
        let mut candidate = first;
        for &t in self.taken.range(first..=last) {
            if t != candidate {
                break;
            }
            // `t == candidate <= last <= u128::MAX - 1` for any real subnet
            // (the broadcast/last address is excluded or above), but stay
            // total anyway.
            match candidate.checked_add(1) {
                Some(c) => candidate = c,
                None => return Err(exhausted()),
            }
        }
        if candidate > last {
            return Err(exhausted());
        }
        self.taken.insert(candidate);
        Ok(from_u128(self.is_v4(), candidate))
    }

    /// Gives `ip` back; false if it was not taken.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        self.taken.remove(&to_u128(ip))
    }

    pub fn taken_count(&self) -> usize {
        self.taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_rng::TestRng;
    use rand_core::RngCore;
    use std::collections::BTreeMap;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn pool(base: &str, size: u8) -> AddressPool {
        AddressPool {
            base: base.parse().unwrap(),
            size,
        }
    }

    #[test]
    fn overlap_cases() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/24")));
        assert!(overlaps(&net("10.1.0.0/24"), &net("10.0.0.0/8")));
        assert!(overlaps(&net("10.1.0.0/24"), &net("10.1.0.0/24")));
        assert!(!overlaps(&net("10.1.0.0/24"), &net("10.1.1.0/24")));
        assert!(!overlaps(&net("10.1.0.0/24"), &net("fd00::/64")));
    }

    #[test]
    fn subnets_come_from_the_pool_without_overlap() {
        let p = AddressPool::default();
        let mut used = Vec::new();
        let a = next_subnet(&p, &used).unwrap();
        assert_eq!(a.to_string(), "10.0.0.0/24");
        used.push(IpNet::V4(a));
        // A user-given subnet in the middle is skipped, and a larger one
        // covering several candidates too.
        used.push(net("10.0.1.0/24"));
        used.push(net("10.0.2.0/23"));
        assert_eq!(next_subnet(&p, &used).unwrap().to_string(), "10.0.4.0/24");
        // A configured pool and size.
        let p = pool("192.168.0.0/16", 26);
        assert_eq!(
            next_subnet(&p, &[net("192.168.0.0/26")])
                .unwrap()
                .to_string(),
            "192.168.0.64/26"
        );
    }

    #[test]
    fn pool_exhaustion_and_bad_pools() {
        let p = pool("192.168.0.0/24", 25);
        let used = [net("192.168.0.0/25"), net("192.168.0.128/25")];
        let e = next_subnet(&p, &used).unwrap_err();
        assert!(matches!(e, ControlError::PoolExhausted { .. }));
        assert!(e.to_string().contains("no free /25"), "{e}");
        assert!(matches!(
            check_pool(&pool("10.0.0.0/16", 8)),
            Err(ControlError::InvalidPool { .. })
        ));
        assert!(check_pool(&pool("10.0.0.0/16", 31)).is_err());
        assert!(check_pool(&pool("10.0.0.0/16", 16)).is_ok());
    }

    #[test]
    fn subnet_checks() {
        assert!(check_subnet(&net("10.0.0.0/30")).is_ok());
        assert!(check_subnet(&net("10.0.0.0/31")).is_err());
        let e = check_subnet(&net("10.0.0.5/24")).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.0.0.0/24"), "{e}");
        assert!(check_subnet(&net("fd00::/64")).is_ok());
        for (bad, what) in [
            ("127.1.0.0/16", "loopback"),
            ("0.0.0.0/24", "this network"),
            ("224.1.0.0/24", "multicast"),
            ("::ffff:10.1.2.0/120", "IPv4-mapped"),
            ("fe80::/64", "link-local"),
            ("ff02::/64", "multicast"),
            ("::/64", "unspecified"),
            ("0.0.0.0/0", "this network"),
            ("169.254.1.0/24", "link-local"),
            ("198.18.0.0/16", "host links"),
            ("255.255.255.0/24", "broadcast"),
            ("240.0.0.0/24", "reserved"),
        ] {
            let e = check_subnet(&net(bad)).unwrap_err().to_string();
            assert!(
                e.contains(what) && e.contains("private range"),
                "{bad}: {e}"
            );
        }
        assert!(check_subnet(&net("fd00::/127")).is_err());
    }

    #[test]
    fn gateway_reserved_and_edges_unusable() {
        let mut s = AddressSpace::new("n", net("10.0.0.0/24"), None).unwrap();
        let gw = s.default_gateway();
        assert_eq!(gw, ip("10.0.0.1"));
        s.take(gw, |_| "gw".into()).unwrap();
        assert_eq!(s.allocate().unwrap(), ip("10.0.0.2"));
        assert!(matches!(
            s.take(ip("10.0.0.0"), |_| String::new()),
            Err(ControlError::AddressNotUsable { .. })
        ));
        let e = s.take(ip("10.0.0.255"), |_| String::new()).unwrap_err();
        assert!(e.to_string().contains("broadcast"), "{e}");
        let e = s.take(ip("10.0.1.3"), |_| String::new()).unwrap_err();
        assert!(e.to_string().contains("outside subnet"), "{e}");
        let e = s.take(ip("10.0.0.2"), |_| "web".into()).unwrap_err();
        assert!(e.to_string().contains("in use on network n by web"), "{e}");
        // A requested address is honoured and then skipped by allocate.
        assert_eq!(
            s.take(ip("10.0.0.3"), |_| String::new()).unwrap(),
            ip("10.0.0.3")
        );
        assert_eq!(s.allocate().unwrap(), ip("10.0.0.4"));
        // Released addresses come back.
        assert!(s.release(ip("10.0.0.2")));
        assert!(!s.release(ip("10.0.0.2")));
        assert_eq!(s.allocate().unwrap(), ip("10.0.0.2"));
    }

    #[test]
    fn ip_range_bounds_allocation_and_exhausts() {
        let mut s = AddressSpace::new("n", net("10.0.0.0/24"), Some(net("10.0.0.252/30"))).unwrap();
        s.take(s.default_gateway(), |_| String::new()).unwrap();
        assert_eq!(s.allocate().unwrap(), ip("10.0.0.252"));
        assert_eq!(s.allocate().unwrap(), ip("10.0.0.253"));
        assert_eq!(s.allocate().unwrap(), ip("10.0.0.254"));
        // .255 is the broadcast address.
        let e = s.allocate().unwrap_err();
        assert!(matches!(e, ControlError::AddressesExhausted { .. }));
        assert!(e.to_string().contains("10.0.0.252/30"), "{e}");
        // A specific address outside the range but inside the subnet is
        // still honoured.
        assert_eq!(
            s.take(ip("10.0.0.9"), |_| String::new()).unwrap(),
            ip("10.0.0.9")
        );

        assert!(AddressSpace::new("n", net("10.0.0.0/24"), Some(net("10.0.1.0/28"))).is_err());
        assert!(AddressSpace::new("n", net("10.0.0.0/24"), Some(net("10.0.0.1/28"))).is_err());
    }

    #[test]
    fn ipv6_allocation() {
        let mut s = AddressSpace::new("n", net("fd00:1::/64"), None).unwrap();
        assert_eq!(s.default_gateway(), ip("fd00:1::1"));
        s.take(ip("fd00:1::1"), |_| String::new()).unwrap();
        assert_eq!(s.allocate().unwrap(), ip("fd00:1::2"));
        // The last address is usable in IPv6 (no broadcast).
        assert!(
            s.take(ip("fd00:1::ffff:ffff:ffff:ffff"), |_| String::new())
                .is_ok()
        );
        assert!(s.take(ip("fd00:1::"), |_| String::new()).is_err());
        // IPv4 addresses are not part of this space.
        s.mark_taken(ip("10.0.0.1"));
        assert_eq!(s.taken_count(), 3);
    }

    /// Property: random allocate/take/release sequences never hand out an
    /// address that is still held, always stay inside the range, and only
    /// report exhaustion when the range really is full.
    #[test]
    fn random_sequences_never_double_allocate() {
        for seed in 1..40u64 {
            let mut rng = TestRng(seed);
            let (subnet, range) = match seed % 3 {
                0 => (net("10.1.0.0/26"), None),
                1 => (net("10.1.0.0/24"), Some(net("10.1.0.64/28"))),
                _ => (net("fd00::/120"), Some(net("fd00::80/121"))),
            };
            let mut s = AddressSpace::new("n", subnet, range).unwrap();
            let gw = s.default_gateway();
            s.take(gw, |_| String::new()).unwrap();
            let range = range.unwrap_or(subnet);
            let mut held: BTreeMap<IpAddr, ()> = BTreeMap::new();
            let all = |n: IpNet| -> Vec<IpAddr> {
                n.subnets(n.max_prefix_len())
                    .unwrap()
                    .map(|a| a.addr())
                    .collect()
            };
            let capacity = all(range)
                .into_iter()
                .filter(|a| s.unusable_reason(*a).is_none() && *a != gw)
                .count();
            for _ in 0..600 {
                match rng.next_u32() % 4 {
                    0 | 1 => match s.allocate() {
                        Ok(a) => {
                            assert!(range.contains(&a), "{a} outside {range}");
                            assert_ne!(a, gw);
                            assert!(held.insert(a, ()).is_none(), "{a} handed out twice");
                        }
                        Err(ControlError::AddressesExhausted { .. }) => {
                            let in_range = held.keys().filter(|a| range.contains(*a)).count();
                            assert_eq!(in_range, capacity, "exhausted early");
                        }
                        Err(e) => panic!("{e}"),
                    },
                    2 => {
                        if let Some(a) = held
                            .keys()
                            .nth(rng.next_u32() as usize % held.len().max(1))
                            .copied()
                        {
                            assert!(s.release(a));
                            held.remove(&a);
                        }
                    }
                    _ => {
                        // Request a random address of the subnet.
                        let hosts = all(subnet);
                        let want = hosts[rng.next_u32() as usize % hosts.len()];
                        let r = s.take(want, |_| String::new());
                        let free = want != gw
                            && !held.contains_key(&want)
                            && s.unusable_reason(want).is_none();
                        assert_eq!(r.is_ok(), free, "take {want}");
                        if r.is_ok() {
                            held.insert(want, ());
                        }
                    }
                }
                assert_eq!(s.taken_count(), held.len() + 1);
            }
        }
    }
}
