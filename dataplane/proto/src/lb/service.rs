//! A service: one VIP of one network and the backends its connections are
//! spread over, with the Maglev table built for them.
//!
//! A [`Service`] is immutable once built. The control side builds a new
//! one (and its table) for every change, off the packet path, and
//! publishes it inside the forwarding table (`Fdb`); workers pick it up
//! between batches like any other FDB change, so the packet path takes no
//! lock. Each build gets a new [`Service::generation`], which lets a
//! conntrack entry notice cheaply that the backend set changed under it.
//!
//! Backends are kept sorted by address, the key every host agrees on, so
//! every host builds the same Maglev table from the same set whatever
//! order it was given in.
use super::maglev::{Maglev, MaglevError};
use crate::wire::MacAddr;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most backends one service may have. Bounded so that a request stays
/// small (each backend is ~50 bytes of JSON in a 64 KB request) and every
/// backend gets at least 16 entries of the default 16381-entry table.
pub const MAX_BACKENDS: usize = 1024;

/// One backend: a task's overlay address and the MAC frames to it carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Why a service could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// The VIP is not a unicast address a container could use.
    BadVip(IpAddr),
    /// A backend is of the other address family than the VIP (the NAT
    /// rewrites addresses in place; IPv4 and IPv6 headers differ in size).
    FamilyMismatch {
        vip: IpAddr,
        backend: IpAddr,
    },
    /// A backend is not a unicast address, or its MAC is not unicast.
    BadBackend(IpAddr),
    /// The same backend address twice.
    Duplicate(IpAddr),
    /// The VIP is listed as its own backend.
    VipAsBackend(IpAddr),
    TooMany(usize),
    Table(MaglevError),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::BadVip(ip) => write!(
                f,
                "VIP {ip} is not a unicast address; give an address from the network's subnet"
            ),
            ServiceError::FamilyMismatch { vip, backend } => write!(
                f,
                "backend {backend} and VIP {vip} are of different address families; an IPv4 VIP needs IPv4 backends and an IPv6 VIP IPv6 ones"
            ),
            ServiceError::BadBackend(ip) => {
                write!(f, "backend {ip} needs a unicast address and a unicast MAC")
            }
            ServiceError::Duplicate(ip) => write!(f, "backend {ip} is listed twice"),
            ServiceError::VipAsBackend(ip) => {
                write!(f, "the VIP {ip} cannot be one of its own backends")
            }
            ServiceError::TooMany(n) => {
                write!(f, "{n} backends; a service has at most {MAX_BACKENDS}")
            }
            ServiceError::Table(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServiceError {}

/// The MAC the ARP/ND proxy answers for a VIP, and that replies from the
/// VIP carry: `06:56:` ("V") followed by the address's last four bytes.
/// Locally administered unicast (first byte 0x06), and never one Docker
/// derives for a container (those start `02:42:`), so a VIP's MAC never
/// collides with an endpoint's derived MAC. The same on every host.
pub fn vip_mac(vip: IpAddr) -> MacAddr {
    let t: [u8; 4] = match vip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    MacAddr([0x06, 0x56, t[0], t[1], t[2], t[3]])
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
    }
}

/// A 1024-bit filter of backend addresses, keyed by their last four bytes:
/// "maybe" for every backend of a network's services, "no" for most other
/// addresses. Only a frame from a backend can be the reply of a balanced
/// flow, so frames from anyone else (most traffic on a network that has
/// services) skip the conntrack lookup after one bit test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendFilter([u64; 16]);

impl BackendFilter {
    #[inline]
    fn bit(tail: [u8; 4]) -> usize {
        (u32::from_be_bytes(tail).wrapping_mul(0x9e37_79b1) >> 22) as usize
    }

    fn tail(ip: IpAddr) -> [u8; 4] {
        match ip {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        }
    }

    /// The filter of every backend of `services`.
    pub fn of<'a>(services: impl IntoIterator<Item = &'a Service>) -> BackendFilter {
        let mut f = BackendFilter::default();
        for s in services {
            for b in s.backends() {
                let i = Self::bit(Self::tail(b.ip));
                f.0[i / 64] |= 1 << (i % 64);
            }
        }
        f
    }

    pub fn may_contain(&self, ip: IpAddr) -> bool {
        self.test(Self::tail(ip))
    }

    #[inline]
    fn test(&self, tail: [u8; 4]) -> bool {
        let i = Self::bit(tail);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether the source address of an Ethernet frame (IPv4 or IPv6) may
    /// be a backend; false for anything else.
    #[inline]
    pub fn may_contain_src(&self, frame: &[u8]) -> bool {
        let at = match frame.get(12..14) {
            Some([0x08, 0x00]) => 14 + 12,
            Some([0x86, 0xdd]) => 14 + 20,
            _ => return false,
        };
        match frame.get(at..at + 4) {
            Some(t) => self.test([t[0], t[1], t[2], t[3]]),
            None => false,
        }
    }
}

/// Source of [`Service::generation`]: unique per build in this process.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A VIP and its backends (sorted by address) with their Maglev table.
#[derive(Debug)]
pub struct Service {
    vip: IpAddr,
    mac: MacAddr,
    backends: Box<[Backend]>,
    table: Maglev,
    generation: u64,
}

impl Service {
    /// Validates and builds a service; `table_size` is the Maglev table's
    /// (prime) size. An empty backend list is allowed: new flows to the
    /// VIP are then refused (`lb`/`no_backend`).
    pub fn new(
        vip: IpAddr,
        mut backends: Vec<Backend>,
        table_size: u32,
    ) -> Result<Service, ServiceError> {
        if !is_unicast(vip) {
            return Err(ServiceError::BadVip(vip));
        }
        if backends.len() > MAX_BACKENDS {
            return Err(ServiceError::TooMany(backends.len()));
        }
        for b in &backends {
            if b.ip.is_ipv4() != vip.is_ipv4() {
                return Err(ServiceError::FamilyMismatch { vip, backend: b.ip });
            }
            if !is_unicast(b.ip) || b.mac.is_multicast() || b.mac.is_zero() {
                return Err(ServiceError::BadBackend(b.ip));
            }
            if b.ip == vip {
                return Err(ServiceError::VipAsBackend(vip));
            }
        }
        backends.sort_by_key(|b| b.ip);
        if let Some(w) = backends.windows(2).find(|w| w[0].ip == w[1].ip) {
            return Err(ServiceError::Duplicate(w[0].ip));
        }
        let ips: Vec<IpAddr> = backends.iter().map(|b| b.ip).collect();
        let table = Maglev::new(&ips, table_size).map_err(ServiceError::Table)?;
        Ok(Service {
            vip,
            mac: vip_mac(vip),
            backends: backends.into_boxed_slice(),
            table,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub fn vip(&self) -> IpAddr {
        self.vip
    }

    /// The VIP's MAC ([`vip_mac`]).
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The backends, sorted by address; indices are what [`Service::pick`]
    /// and [`Service::find`] return.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Unique per build: two services with the same generation are the
    /// same build, so a backend index taken from one is valid in the other.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn table_size(&self) -> u32 {
        self.table.size()
    }

    /// The backend Maglev gives a flow hash (see [`super::maglev::flow_hash`]).
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<(u16, &Backend)> {
        let i = self.table.lookup(flow_hash)?;
        self.backends.get(i).map(|b| (i as u16, b))
    }

    /// The index of the backend with address `ip`, if it is in the set.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Option<u16> {
        self.backends
            .binary_search_by(|b| b.ip.cmp(&ip))
            .ok()
            .map(|i| i as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(ip: &str) -> Backend {
        let ip: IpAddr = ip.parse().unwrap();
        Backend {
            ip,
            mac: MacAddr::from_ip(ip),
        }
    }

    #[test]
    fn backends_are_sorted_and_found() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let s = Service::new(vip, vec![b("10.0.0.9"), b("10.0.0.2"), b("10.0.0.10")], 251).unwrap();
        let ips: Vec<String> = s.backends().iter().map(|b| b.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.9", "10.0.0.10"]);
        assert_eq!(s.find("10.0.0.9".parse().unwrap()), Some(1));
        assert_eq!(s.find("10.0.0.3".parse().unwrap()), None);
        // Whatever order the set came in, the table is the same.
        let t = Service::new(vip, vec![b("10.0.0.10"), b("10.0.0.9"), b("10.0.0.2")], 251).unwrap();
        for h in 0..2000 {
            assert_eq!(s.pick(h).unwrap().1, t.pick(h).unwrap().1);
        }
        assert_ne!(s.generation(), t.generation());
        assert_eq!(s.mac(), MacAddr([0x06, 0x56, 10, 0, 0, 100]));
    }

    #[test]
    fn backend_filter_knows_every_backend_and_few_others() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let bs: Vec<Backend> = (2..50).map(|i| b(&format!("10.0.0.{i}"))).collect();
        let v6 = Service::new("fd00::100".parse().unwrap(), vec![b("fd00::7")], 251).unwrap();
        let s = Service::new(vip, bs.clone(), 251).unwrap();
        let f = BackendFilter::of([&s, &v6]);
        assert!(bs.iter().all(|b| f.may_contain(b.ip)));
        assert!(f.may_contain("fd00::7".parse().unwrap()));
        let others = (0..10_000u32)
            .map(|i| IpAddr::V4((0x0a01_0000 + i).into()))
            .filter(|ip| f.may_contain(*ip))
            .count();
        // 49 bits of 1024 set: about 5% false positives.
        assert!(others < 1000, "{others} of 10000 other addresses pass");
        // Read from frames: IPv4 and IPv6 source addresses.
        let mut v4 = vec![0u8; 34];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4[26..30].copy_from_slice(&[10, 0, 0, 7]);
        assert!(f.may_contain_src(&v4));
        let mut v6f = vec![0u8; 54];
        v6f[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6f[22..38].copy_from_slice(&"fd00::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert!(f.may_contain_src(&v6f));
        assert!(
            !f.may_contain_src(&v6f[..30]),
            "short frames are not read past"
        );
        assert!(!BackendFilter::default().may_contain_src(&v4));
    }

    #[test]
    fn refusals() {
        let v4: IpAddr = "10.0.0.100".parse().unwrap();
        let e = |vip: IpAddr, bs: Vec<Backend>| Service::new(vip, bs, 16_381).unwrap_err();
        assert_eq!(
            e(v4, vec![b("10.0.0.2"), b("10.0.0.2")]),
            ServiceError::Duplicate("10.0.0.2".parse().unwrap())
        );
        assert!(matches!(
            e(v4, vec![b("fd00::2")]),
            ServiceError::FamilyMismatch { .. }
        ));
        assert_eq!(e(v4, vec![b("10.0.0.100")]), ServiceError::VipAsBackend(v4));
        assert!(matches!(
            e("224.0.0.1".parse().unwrap(), vec![]),
            ServiceError::BadVip(_)
        ));
        assert!(matches!(
            e(v4, vec![b("0.0.0.0")]),
            ServiceError::BadBackend(_)
        ));
        let many: Vec<Backend> = (0..=MAX_BACKENDS as u32)
            .map(|i| {
                let ip = IpAddr::V4((0x0a01_0000 + i).into());
                Backend {
                    ip,
                    mac: MacAddr::from_ip(ip),
                }
            })
            .collect();
        assert_eq!(e(v4, many), ServiceError::TooMany(MAX_BACKENDS + 1));
        assert!(matches!(
            Service::new(v4, vec![], 16_380),
            Err(ServiceError::Table(MaglevError::BadSize(16_380)))
        ));
        // No backends is a valid (empty) service.
        let empty = Service::new(v4, vec![], 16_381).unwrap();
        assert!(empty.pick(7).is_none());
    }
}
