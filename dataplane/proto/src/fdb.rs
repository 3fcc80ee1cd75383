//! Per-VNI forwarding tables.
//!
//! The table is built by the control side (API requests) and published to
//! the workers as an immutable `Arc<Fdb>`: workers read it without locks and
//! pick up a new version between batches. Every mutation validates first and
//! changes nothing when it fails.
//!
//! Besides the tables it holds the underlay the datagrams leave over (its
//! MTU bounds the frames the engine sends, see [`crate::mtu`]) and, per
//! VNI, what head-end replication needs: the VTEPs to copy flooded frames
//! to, derived from the remote entries (no separate list to keep in sync),
//! and the network's flooding policy ([`crate::replication`]).

use crate::crypto::session::Session;
use crate::lb::service::{BackendFilter, Service};
use crate::mtu::Underlay;
use crate::replication::{self, FloodPolicy, SharedReplication};
use crate::wire::{MacAddr, Vni};
use rustc_hash::FxHashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

/// The key-rotation session with one peer host, shared by the workers: a
/// worker locks it once per message it seals or opens (a whole GSO frame
/// on send), never across a batch.
pub type PeerSession = Arc<Mutex<Session>>;

/// A dataplane port: one TAP device (one native endpoint, or the bridge that
/// holds several sidecar endpoints of one VNI). Small dense integers.
pub type PortId = u32;

/// Where frames for a MAC go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Local(PortId),
    Remote(IpAddr),
}

/// Forwarding state of one VNI.
#[derive(Debug, Clone, Default)]
pub struct VniTable {
    /// Unicast MAC -> where it lives.
    pub macs: FxHashMap<MacAddr, Dest>,
    /// Overlay IP -> MAC, answered by the ARP/ND proxy.
    pub ips: FxHashMap<IpAddr, MacAddr>,
    /// Default VTEPs for broadcast and unknown unicast (kernel interop).
    pub flood: Vec<IpAddr>,
    /// Where flooded frames are copied to: every VTEP behind a remote
    /// entry, then the `flood` VTEPs not among them. Derived; kept up to
    /// date by every change of `macs` or `flood`.
    pub replicate: Vec<IpAddr>,
    /// Local ports on this VNI (broadcast delivery).
    pub ports: Vec<PortId>,
    /// Every frame of this VNI between hosts must be ESP: plain VXLAN for it
    /// is dropped, and nothing is sent before an SA exists.
    pub encrypted: bool,
    /// Whether and how fast flooded frames are replicated to other hosts.
    pub policy: FloodPolicy,
    /// The rate limiter and counters of replication (shared by every
    /// version of this table).
    pub replication: SharedReplication,
    /// Services by VIP: connections to a VIP are balanced over its
    /// backends (`crate::lb`). Shared, immutable builds: cloning the table
    /// does not copy their Maglev tables.
    pub services: FxHashMap<IpAddr, Arc<Service>>,
    /// Every backend of those services, for the cheap test of whether a
    /// frame may be the reply of a balanced flow.
    pub backends: BackendFilter,
    /// The network's gateway addresses and the MACs the dataplane answers
    /// ARP/ND for them with ([`crate::lb::service::vip_mac`]): a frame to
    /// one of those MACs is routed by the dataplane (`engine/mesh.rs`).
    pub gateways: Vec<(IpAddr, MacAddr)>,
    /// Its containers reach the outside through the host link (not an
    /// `--internal` network).
    pub egress: bool,
    /// The swarm's ingress network: flows from outside clients that
    /// arrive here from another node are tracked so that their replies
    /// return through that node.
    pub ingress: bool,
}

impl VniTable {
    fn is_unused(&self) -> bool {
        self.macs.is_empty()
            && self.flood.is_empty()
            && self.ports.is_empty()
            && !self.encrypted
            && self.policy == FloodPolicy::default()
            && self.services.is_empty()
            && self.gateways.is_empty()
            && !self.egress
            && !self.ingress
    }

    /// Whether `mac` is one of the gateway MACs of this network.
    #[inline]
    pub fn is_gateway_mac(&self, mac: MacAddr) -> bool {
        self.gateways.iter().any(|(_, m)| *m == mac)
    }

    /// Recomputes [`VniTable::replicate`] from the remote entries and the
    /// flood VTEPs.
    fn refresh_replicate(&mut self) {
        let mut vteps: Vec<IpAddr> = self
            .macs
            .values()
            .filter_map(|d| match d {
                Dest::Remote(v) => Some(*v),
                Dest::Local(_) => None,
            })
            .collect();
        vteps.sort_unstable();
        vteps.dedup();
        for v in &self.flood {
            if !vteps.contains(v) {
                vteps.push(*v);
            }
        }
        self.replicate = vteps;
    }

    /// The VIP whose MAC is `mac`, if any.
    fn vip_with_mac(&self, mac: MacAddr) -> Option<IpAddr> {
        self.services
            .values()
            .find(|s| s.mac() == mac)
            .map(|s| s.vip())
    }
}

/// A local port and the endpoint MACs behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub vni: Vni,
    /// Source MACs accepted from this port (anti-spoofing).
    pub macs: Vec<MacAddr>,
}

/// The host link: the dataplane's TAP in the host's own network namespace
/// (`vxnet0`), through which published ports come in and containers reach
/// the outside (see `engine/mesh.rs` for the paths). Its subnet is vxnet's
/// own: the host's side has the first address, the dataplane answers for
/// the second (the mesh address, where the host's firewall sends published
/// ports) and for the egress addresses from [`EGRESS_FIRST`] on, one per
/// local container address, which the host's firewall masquerades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub port: PortId,
    /// The subnet's first address and its prefix length.
    pub net: Ipv4Addr,
    pub prefix: u8,
    /// The MAC of the host's side (the TAP's kernel side).
    pub host_mac: MacAddr,
    /// This node's endpoint on the ingress network, if it has one: the
    /// host's side of the link stands for it there (its MAC is `host_mac`).
    pub ingress: Option<(Vni, Ipv4Addr)>,
}

/// Offset of the first egress address in the host link's subnet.
pub const EGRESS_FIRST: u32 = 256;

impl HostLink {
    /// The host side's address: the subnet's first.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net).wrapping_add(1))
    }

    /// The address the dataplane answers published ports on: the second.
    pub fn mesh_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net).wrapping_add(2))
    }

    /// The MAC the dataplane's side of the link answers with.
    pub fn link_mac(&self) -> MacAddr {
        crate::lb::service::vip_mac(IpAddr::V4(self.mesh_ip()))
    }

    fn size(&self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    /// Whether `ip` is in the link's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(u32::from(self.net)) < self.size()
    }

    /// The egress address of slot `index`, if the subnet has room for it
    /// (its broadcast address excluded).
    pub fn egress_addr(&self, index: u32) -> Option<Ipv4Addr> {
        let off = EGRESS_FIRST.checked_add(index)?;
        (off < self.size().saturating_sub(1))
            .then(|| Ipv4Addr::from(u32::from(self.net).wrapping_add(off)))
    }

    /// The slot an egress address stands for.
    pub fn egress_index(&self, ip: Ipv4Addr) -> Option<u32> {
        let off = u32::from(ip).wrapping_sub(u32::from(self.net));
        (off >= EGRESS_FIRST && off < self.size().saturating_sub(1)).then(|| off - EGRESS_FIRST)
    }
}

/// A local container address that may reach the outside: the slot's index
/// gives its egress address ([`HostLink::egress_addr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressSlot {
    pub vni: Vni,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub port: PortId,
}

/// Where a published port's connections go.
#[derive(Debug, Clone)]
pub enum PublishedTo {
    /// Ingress mode: balanced over the service with this VIP on the
    /// published port's VNI (the ingress network), with the VIP's own
    /// Maglev table, so every node picks the same task for a flow.
    Vip(IpAddr),
    /// Host mode: balanced over these local tasks.
    Tasks(Arc<Service>),
}

/// A port published on the host (TCP or UDP), as the engine uses it.
#[derive(Debug, Clone)]
pub struct Published {
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub port: u16,
    /// The port the tasks listen on.
    pub target_port: u16,
    /// The network the tasks are reached on.
    pub vni: Vni,
    pub to: PublishedTo,
}

/// Why a table change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdbError {
    MacInUse {
        vni: Vni,
        mac: MacAddr,
        by: String,
    },
    IpInUse {
        vni: Vni,
        ip: IpAddr,
        by: String,
    },
    NotMulticastSafe(MacAddr),
    PortOnOtherVni {
        port: PortId,
        vni: Vni,
    },
    NoSuchPeer {
        vni: Vni,
        mac: MacAddr,
    },
    NoSuchFlood {
        vni: Vni,
        vtep: IpAddr,
    },
    FloodExists {
        vni: Vni,
        vtep: IpAddr,
    },
    NoSuchService {
        vni: Vni,
        vip: IpAddr,
    },
    /// A service's backend is the VIP of another service.
    BackendIsVip {
        vni: Vni,
        ip: IpAddr,
    },
    /// A backend's MAC differs from the MAC the table knows for its address.
    BackendMac {
        vni: Vni,
        ip: IpAddr,
        given: MacAddr,
        known: MacAddr,
    },
    /// Ports are published through the host link, which is not set up.
    NoHostLink,
    NoSuchPort {
        proto: u8,
        port: u16,
    },
}

impl fmt::Display for FdbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdbError::MacInUse { vni, mac, by } => {
                write!(f, "MAC {mac} is already used on VNI {vni} by {by}")
            }
            FdbError::IpInUse { vni, ip, by } => {
                write!(f, "IP {ip} is already used on VNI {vni} by {by}")
            }
            FdbError::NotMulticastSafe(mac) => {
                write!(
                    f,
                    "MAC {mac} is a multicast or zero address; an endpoint needs a unicast MAC"
                )
            }
            FdbError::PortOnOtherVni { port, vni } => {
                write!(f, "port {port} already belongs to VNI {vni}")
            }
            FdbError::NoSuchPeer { vni, mac } => {
                write!(f, "no remote endpoint with MAC {mac} on VNI {vni}")
            }
            FdbError::NoSuchFlood { vni, vtep } => {
                write!(f, "VTEP {vtep} is not a flood VTEP of VNI {vni}")
            }
            FdbError::FloodExists { vni, vtep } => {
                write!(f, "VTEP {vtep} is already a flood VTEP of VNI {vni}")
            }
            FdbError::NoSuchService { vni, vip } => {
                write!(f, "no service has VIP {vip} on VNI {vni}")
            }
            FdbError::BackendIsVip { vni, ip } => write!(
                f,
                "backend {ip} is the VIP of another service on VNI {vni}; give task addresses"
            ),
            FdbError::BackendMac {
                vni,
                ip,
                given,
                known,
            } => write!(
                f,
                "backend {ip} is given MAC {given}, but VNI {vni} knows {ip} at {known}; omit the MAC or give {known}"
            ),
            FdbError::NoHostLink => write!(
                f,
                "the host link is not set up; ports are published through it (`vxnet dp host-link set`)"
            ),
            FdbError::NoSuchPort { proto, port } => write!(
                f,
                "{} port {port} is not published here; see `vxnet dp ports`",
                if *proto == 17 { "UDP" } else { "TCP" }
            ),
        }
    }
}

impl std::error::Error for FdbError {}

/// All forwarding state of a dataplane.
#[derive(Debug, Clone)]
pub struct Fdb {
    vnis: FxHashMap<Vni, VniTable>,
    ports: Vec<Option<Port>>,
    /// Key-rotation sessions by peer VTEP address.
    peers: FxHashMap<IpAddr, PeerSession>,
    /// The host link, once set up.
    host: Option<HostLink>,
    /// Published ports by (protocol, port).
    published: FxHashMap<(u8, u16), Published>,
    /// (VNI, port's target) of every published port, for the cheap test
    /// of whether a packet may be a published port's reply.
    published_targets: Vec<(Vni, u8, u16)>,
    /// Local IPv4 container addresses by egress slot, and back.
    egress: Vec<Option<EgressSlot>>,
    egress_of: FxHashMap<(Vni, Ipv4Addr), u32>,
    underlay: Underlay,
    /// [`Underlay::max_frame`] of `underlay`, plain and encrypted.
    max_frame: [usize; 2],
    /// Frames per second a VNI floods when its policy sets no rate.
    flood_rate: u32,
}

impl Default for Fdb {
    /// Empty, with no MTU limit (see [`Fdb::set_underlay`]), the default
    /// flood rate, and no host link.
    fn default() -> Self {
        Fdb {
            vnis: FxHashMap::default(),
            ports: Vec::new(),
            peers: FxHashMap::default(),
            host: None,
            published: FxHashMap::default(),
            published_targets: Vec::new(),
            egress: Vec::new(),
            egress_of: FxHashMap::default(),
            underlay: Underlay::UNLIMITED,
            max_frame: [usize::MAX; 2],
            flood_rate: replication::DEFAULT_RATE,
        }
    }
}

fn describe(dest: Dest) -> String {
    match dest {
        Dest::Local(p) => format!("local port {p}"),
        Dest::Remote(v) => format!("a remote endpoint behind {v}"),
    }
}

impl Fdb {
    #[inline]
    pub fn vni(&self, vni: Vni) -> Option<&VniTable> {
        self.vnis.get(&vni)
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    pub fn vnis(&self) -> impl Iterator<Item = (Vni, &VniTable)> {
        self.vnis.iter().map(|(v, t)| (*v, t))
    }

    /// Sets the underlay the datagrams leave over (its MTU may change
    /// while running).
    pub fn set_underlay(&mut self, u: Underlay) {
        self.underlay = u;
        self.max_frame = [u.max_frame(false), u.max_frame(true)];
    }

    pub fn underlay(&self) -> Underlay {
        self.underlay
    }

    /// The longest inner frame that fits the underlay after encapsulation
    /// (with ESP when `encrypted`).
    #[inline]
    pub fn max_frame(&self, encrypted: bool) -> usize {
        self.max_frame[usize::from(encrypted)]
    }

    /// Frames per second each VNI may flood unless its policy says.
    pub fn set_flood_rate(&mut self, rate: u32) {
        self.flood_rate = rate;
    }

    /// The flood rate that applies to `t`.
    pub fn flood_rate(&self, t: &VniTable) -> u32 {
        t.policy.rate.unwrap_or(self.flood_rate)
    }

    /// Sets the flooding policy of `vni` (declaring it if new).
    pub fn set_flood_policy(&mut self, vni: Vni, policy: FloodPolicy) {
        let t = self.vnis.entry(vni).or_default();
        t.policy = policy;
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
    }

    /// The session with the host at `vtep`, if keys were set up with it.
    #[inline]
    pub fn peer(&self, vtep: IpAddr) -> Option<&PeerSession> {
        self.peers.get(&vtep)
    }

    pub fn peers(&self) -> impl Iterator<Item = (IpAddr, &PeerSession)> {
        self.peers.iter().map(|(a, s)| (*a, s))
    }

    pub fn set_peer(&mut self, vtep: IpAddr, session: PeerSession) {
        self.peers.insert(vtep, session);
    }

    pub fn remove_peer(&mut self, vtep: IpAddr) -> Option<PeerSession> {
        self.peers.remove(&vtep)
    }

    /// Marks `vni` encrypted or plain (declaring it if new).
    pub fn set_encrypted(&mut self, vni: Vni, encrypted: bool) {
        let t = self.vnis.entry(vni).or_default();
        t.encrypted = encrypted;
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
    }

    /// Removes everything of `vni` but local endpoints (which keep it).
    pub fn remove_vni(&mut self, vni: Vni) {
        let Some(t) = self.vnis.get_mut(&vni) else {
            return;
        };
        t.macs.retain(|_, d| matches!(d, Dest::Local(_)));
        let macs = &t.macs;
        t.ips.retain(|_, m| macs.contains_key(m));
        t.flood.clear();
        t.encrypted = false;
        t.gateways.clear();
        t.egress = false;
        t.ingress = false;
        t.policy = FloodPolicy::default();
        t.refresh_replicate();
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
    }

    pub fn is_encrypted(&self, vni: Vni) -> bool {
        self.vnis.get(&vni).is_some_and(|t| t.encrypted)
    }

    /// A port id no port uses.
    pub fn free_port(&self) -> PortId {
        self.ports
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.ports.len()) as PortId
    }

    /// Whether `mac` with `ips` may be added to `vni`. A local endpoint
    /// (`local`) may take over what remote entries hold: the endpoint here
    /// is the truth, a remote record about the same MAC or address is old
    /// news (the container moved here). A remote entry may take over
    /// addresses of other remote MACs (an address moved to a new MAC), but
    /// never what a local endpoint holds.
    fn check_new(
        &self,
        vni: Vni,
        mac: MacAddr,
        ips: &[IpAddr],
        local: bool,
    ) -> Result<(), FdbError> {
        if mac.is_multicast() || mac.is_zero() {
            return Err(FdbError::NotMulticastSafe(mac));
        }
        let Some(t) = self.vnis.get(&vni) else {
            return Ok(());
        };
        if let Some(vip) = t.vip_with_mac(mac) {
            return Err(FdbError::MacInUse {
                vni,
                mac,
                by: format!("the VIP {vip}"),
            });
        }
        if let Some(ip) = ips.iter().find(|ip| t.services.contains_key(ip)) {
            return Err(FdbError::IpInUse {
                vni,
                ip: *ip,
                by: "a service (it is a VIP)".into(),
            });
        }
        let blocks = |d: &Dest| match d {
            Dest::Local(_) => true,
            Dest::Remote(_) => false,
        };
        if let Some(d) = t.macs.get(&mac) {
            if blocks(d) {
                return Err(FdbError::MacInUse {
                    vni,
                    mac,
                    by: describe(*d),
                });
            }
        }
        for ip in ips {
            let Some(owner) = t.ips.get(ip) else { continue };
            if *owner == mac {
                continue;
            }
            let dest = t.macs.get(owner);
            if dest.is_some_and(blocks) || (dest.is_none() && !local) {
                let by = dest.map_or_else(
                    || owner.to_string(),
                    |d| format!("{owner} ({})", describe(*d)),
                );
                return Err(FdbError::IpInUse { vni, ip: *ip, by });
            }
        }
        Ok(())
    }

    /// Drops what remote entries of `vni` hold of `mac` and `ips`, for a
    /// local endpoint taking them over.
    fn evict_remote(&mut self, vni: Vni, mac: MacAddr, ips: &[IpAddr]) {
        let Some(t) = self.vnis.get_mut(&vni) else {
            return;
        };
        if matches!(t.macs.get(&mac), Some(Dest::Remote(_))) {
            t.macs.remove(&mac);
            t.ips.retain(|_, m| *m != mac);
        }
        for ip in ips {
            if let Some(owner) = t.ips.get(ip).copied() {
                if matches!(t.macs.get(&owner), Some(Dest::Remote(_))) {
                    t.ips.remove(ip);
                }
            }
        }
        t.refresh_replicate();
    }

    /// Checks that a local endpoint could be added, without adding it.
    pub fn check_local(
        &self,
        port: PortId,
        vni: Vni,
        mac: MacAddr,
        ips: &[IpAddr],
    ) -> Result<(), FdbError> {
        if let Some(p) = self.port(port) {
            if p.vni != vni {
                return Err(FdbError::PortOnOtherVni { port, vni: p.vni });
            }
        }
        self.check_new(vni, mac, ips, true)
    }

    /// Adds an endpoint behind local `port`. Remote entries with the same
    /// MAC or addresses are dropped: the local endpoint wins.
    pub fn add_local(
        &mut self,
        port: PortId,
        vni: Vni,
        mac: MacAddr,
        ips: &[IpAddr],
    ) -> Result<(), FdbError> {
        self.check_local(port, vni, mac, ips)?;
        self.evict_remote(vni, mac, ips);
        let idx = port as usize;
        if self.ports.len() <= idx {
            self.ports.resize(idx + 1, None);
        }
        let p = self.ports[idx].get_or_insert_with(|| Port {
            vni,
            macs: Vec::new(),
        });
        p.macs.push(mac);
        let t = self.vnis.entry(vni).or_default();
        if !t.ports.contains(&port) {
            t.ports.push(port);
        }
        t.macs.insert(mac, Dest::Local(port));
        for ip in ips {
            t.ips.insert(*ip, mac);
        }
        for ip in ips {
            if let IpAddr::V4(v4) = ip {
                self.add_egress_slot(EgressSlot {
                    vni,
                    ip: *v4,
                    mac,
                    port,
                });
            }
        }
        Ok(())
    }

    fn add_egress_slot(&mut self, slot: EgressSlot) {
        let key = (slot.vni, slot.ip);
        if let Some(&i) = self.egress_of.get(&key) {
            self.egress[i as usize] = Some(slot);
            return;
        }
        let i = match self.egress.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.egress.push(None);
                self.egress.len() - 1
            }
        };
        self.egress[i] = Some(slot);
        self.egress_of.insert(key, i as u32);
    }

    /// Removes a local endpoint; the port goes when its last endpoint does.
    pub fn remove_local(&mut self, port: PortId, mac: MacAddr) {
        let Some(Some(p)) = self.ports.get_mut(port as usize) else {
            return;
        };
        let vni = p.vni;
        p.macs.retain(|m| *m != mac);
        let port_gone = p.macs.is_empty();
        let gone: Vec<(Vni, Ipv4Addr)> = self
            .egress
            .iter()
            .flatten()
            .filter(|s| s.port == port && s.mac == mac)
            .map(|s| (s.vni, s.ip))
            .collect();
        for key in gone {
            if let Some(i) = self.egress_of.remove(&key) {
                self.egress[i as usize] = None;
            }
        }
        if port_gone {
            self.ports[port as usize] = None;
        }
        if let Some(t) = self.vnis.get_mut(&vni) {
            if t.macs.get(&mac) == Some(&Dest::Local(port)) {
                t.macs.remove(&mac);
                t.ips.retain(|_, m| *m != mac);
            }
            if port_gone {
                t.ports.retain(|x| *x != port);
            }
            if t.is_unused() {
                self.vnis.remove(&vni);
            }
        }
    }

    /// Adds a remote endpoint, or adds `ips` to the one `mac` has (an
    /// endpoint's addresses may arrive one at a time) and moves it to
    /// `vtep`. Addresses other remote MACs held move to `mac`; what a local
    /// endpoint holds is refused.
    pub fn add_remote(
        &mut self,
        vni: Vni,
        mac: MacAddr,
        ips: &[IpAddr],
        vtep: IpAddr,
    ) -> Result<(), FdbError> {
        self.check_new(vni, mac, ips, false)?;
        let t = self.vnis.entry(vni).or_default();
        t.macs.insert(mac, Dest::Remote(vtep));
        for ip in ips {
            t.ips.insert(*ip, mac);
        }
        t.refresh_replicate();
        Ok(())
    }

    /// Removes a remote endpoint (`ips` empty), or only some of its
    /// addresses.
    pub fn remove_remote(
        &mut self,
        vni: Vni,
        mac: MacAddr,
        ips: &[IpAddr],
    ) -> Result<(), FdbError> {
        let t = self
            .vnis
            .get_mut(&vni)
            .ok_or(FdbError::NoSuchPeer { vni, mac })?;
        if !matches!(t.macs.get(&mac), Some(Dest::Remote(_))) {
            return Err(FdbError::NoSuchPeer { vni, mac });
        }
        if ips.is_empty() {
            t.macs.remove(&mac);
            t.ips.retain(|_, m| *m != mac);
            t.refresh_replicate();
        } else {
            t.ips.retain(|ip, m| *m != mac || !ips.contains(ip));
        }
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
        Ok(())
    }

    /// Adds a service, or replaces the one with the same VIP (its whole
    /// backend set at once). Refused if the VIP or its MAC belongs to an
    /// endpoint, if a backend is another service's VIP, or if a backend's
    /// MAC contradicts the MAC the table knows for its address.
    pub fn set_service(&mut self, vni: Vni, service: Arc<Service>) -> Result<(), FdbError> {
        let vip = service.vip();
        if let Some(t) = self.vnis.get(&vni) {
            if let Some(owner) = t.ips.get(&vip) {
                let by = t.macs.get(owner).map_or_else(
                    || owner.to_string(),
                    |d| format!("{owner} ({})", describe(*d)),
                );
                return Err(FdbError::IpInUse { vni, ip: vip, by });
            }
            if let Some(d) = t.macs.get(&service.mac()) {
                return Err(FdbError::MacInUse {
                    vni,
                    mac: service.mac(),
                    by: describe(*d),
                });
            }
            for b in service.backends() {
                if b.ip != vip && t.services.contains_key(&b.ip) {
                    return Err(FdbError::BackendIsVip { vni, ip: b.ip });
                }
                if let Some(known) = t.ips.get(&b.ip) {
                    if *known != b.mac {
                        return Err(FdbError::BackendMac {
                            vni,
                            ip: b.ip,
                            given: b.mac,
                            known: *known,
                        });
                    }
                }
            }
        }
        let t = self.vnis.entry(vni).or_default();
        t.services.insert(vip, service);
        t.backends = BackendFilter::of(t.services.values().map(|s| &**s));
        Ok(())
    }

    /// Removes the service with VIP `vip` from `vni`.
    pub fn remove_service(&mut self, vni: Vni, vip: IpAddr) -> Result<Arc<Service>, FdbError> {
        let err = FdbError::NoSuchService { vni, vip };
        let t = self.vnis.get_mut(&vni).ok_or(err.clone())?;
        let s = t.services.remove(&vip).ok_or(err)?;
        t.backends = BackendFilter::of(t.services.values().map(|s| &**s));
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
        Ok(s)
    }

    /// True if some VNI has a service.
    pub fn has_services(&self) -> bool {
        self.vnis.values().any(|t| !t.services.is_empty())
    }

    /// Sets how `vni` routes: its gateway addresses (answered by the
    /// dataplane), whether it has egress, whether it is the ingress
    /// network. Declares the VNI if new.
    pub fn set_routing(&mut self, vni: Vni, gateways: &[IpAddr], egress: bool, ingress: bool) {
        let t = self.vnis.entry(vni).or_default();
        t.gateways = gateways
            .iter()
            .map(|ip| (*ip, crate::lb::service::vip_mac(*ip)))
            .collect();
        t.egress = egress;
        t.ingress = ingress;
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
    }

    #[inline]
    pub fn host(&self) -> Option<&HostLink> {
        self.host.as_ref()
    }

    /// Sets up (or replaces) the host link. Its ingress endpoint, if any,
    /// becomes a local endpoint of the ingress VNI behind the link's port;
    /// refused if its MAC or address is taken there.
    pub fn set_host_link(&mut self, link: HostLink) -> Result<(), FdbError> {
        let old = self.host.take();
        if let Some(o) = &old {
            self.forget_host_endpoint(o);
        }
        if let Some((vni, ip)) = link.ingress {
            if let Err(e) = self.check_new(vni, link.host_mac, &[IpAddr::V4(ip)], true) {
                if let Some(o) = old {
                    self.restore_host(o);
                }
                return Err(e);
            }
            self.evict_remote(vni, link.host_mac, &[IpAddr::V4(ip)]);
            let t = self.vnis.entry(vni).or_default();
            t.macs.insert(link.host_mac, Dest::Local(link.port));
            t.ips.insert(IpAddr::V4(ip), link.host_mac);
        }
        self.host = Some(link);
        Ok(())
    }

    fn restore_host(&mut self, o: HostLink) {
        if let Some((vni, ip)) = o.ingress {
            let t = self.vnis.entry(vni).or_default();
            t.macs.insert(o.host_mac, Dest::Local(o.port));
            t.ips.insert(IpAddr::V4(ip), o.host_mac);
        }
        self.host = Some(o);
    }

    fn forget_host_endpoint(&mut self, o: &HostLink) {
        if let Some((vni, ip)) = o.ingress {
            if let Some(t) = self.vnis.get_mut(&vni) {
                if t.macs.get(&o.host_mac) == Some(&Dest::Local(o.port)) {
                    t.macs.remove(&o.host_mac);
                }
                if t.ips.get(&IpAddr::V4(ip)) == Some(&o.host_mac) {
                    t.ips.remove(&IpAddr::V4(ip));
                }
                if t.is_unused() {
                    self.vnis.remove(&vni);
                }
            }
        }
    }

    /// Removes the host link and every published port (they came in
    /// through it).
    pub fn clear_host_link(&mut self) -> Option<HostLink> {
        let o = self.host.take()?;
        self.forget_host_endpoint(&o);
        self.published.clear();
        self.published_targets.clear();
        Some(o)
    }

    /// Publishes a port, or replaces what it leads to.
    pub fn set_published(&mut self, p: Published) -> Result<(), FdbError> {
        if self.host.is_none() {
            return Err(FdbError::NoHostLink);
        }
        self.published.insert((p.proto, p.port), p);
        self.index_published();
        Ok(())
    }

    pub fn remove_published(&mut self, proto: u8, port: u16) -> Result<Published, FdbError> {
        let p = self
            .published
            .remove(&(proto, port))
            .ok_or(FdbError::NoSuchPort { proto, port })?;
        self.index_published();
        Ok(p)
    }

    fn index_published(&mut self) {
        self.published_targets = self
            .published
            .values()
            .map(|p| (p.vni, p.proto, p.target_port))
            .collect();
        self.published_targets.sort_unstable();
        self.published_targets.dedup();
    }

    #[inline]
    pub fn published(&self, proto: u8, port: u16) -> Option<&Published> {
        self.published.get(&(proto, port))
    }

    pub fn published_ports(&self) -> impl Iterator<Item = &Published> {
        self.published.values()
    }

    /// Whether a packet on `vni` from port `sport` may be the reply of a
    /// published port's flow (a task answering from its target port).
    #[inline]
    pub fn may_be_published_reply(&self, vni: Vni, proto: u8, sport: u16) -> bool {
        self.published_targets.contains(&(vni, proto, sport))
    }

    /// The egress slot of local address `ip` on `vni`.
    #[inline]
    pub fn egress_slot_of(&self, vni: Vni, ip: Ipv4Addr) -> Option<u32> {
        self.egress_of.get(&(vni, ip)).copied()
    }

    #[inline]
    pub fn egress_slot(&self, index: u32) -> Option<&EgressSlot> {
        self.egress.get(index as usize).and_then(Option::as_ref)
    }

    /// Whether workers need a conntrack table: services, published ports
    /// or an ingress network exist.
    pub fn needs_conntrack(&self) -> bool {
        !self.published.is_empty()
            || self
                .vnis
                .values()
                .any(|t| !t.services.is_empty() || t.ingress)
    }

    pub fn add_flood(&mut self, vni: Vni, vtep: IpAddr) -> Result<(), FdbError> {
        let t = self.vnis.entry(vni).or_default();
        if t.flood.contains(&vtep) {
            return Err(FdbError::FloodExists { vni, vtep });
        }
        t.flood.push(vtep);
        t.refresh_replicate();
        Ok(())
    }

    pub fn remove_flood(&mut self, vni: Vni, vtep: IpAddr) -> Result<(), FdbError> {
        let t = self
            .vnis
            .get_mut(&vni)
            .ok_or(FdbError::NoSuchFlood { vni, vtep })?;
        let before = t.flood.len();
        t.flood.retain(|v| *v != vtep);
        if t.flood.len() == before {
            return Err(FdbError::NoSuchFlood { vni, vtep });
        }
        t.refresh_replicate();
        if t.is_unused() {
            self.vnis.remove(&vni);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni(n: u32) -> Vni {
        Vni::new(n).unwrap()
    }
    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0x42, 0, 0, 0, last])
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_and_remote_entries() {
        let mut f = Fdb::default();
        let p = f.free_port();
        f.add_local(p, vni(4096), mac(2), &[ip("10.0.0.2")])
            .unwrap();
        f.add_remote(vni(4096), mac(3), &[ip("10.0.0.3")], ip("192.0.2.2"))
            .unwrap();
        let t = f.vni(vni(4096)).unwrap();
        assert_eq!(t.macs[&mac(2)], Dest::Local(p));
        assert_eq!(t.macs[&mac(3)], Dest::Remote(ip("192.0.2.2")));
        assert_eq!(t.ips[&ip("10.0.0.3")], mac(3));
        assert_eq!(f.free_port(), p + 1);
        // Replacing a remote endpoint (it moved host) is allowed.
        f.add_remote(vni(4096), mac(3), &[ip("10.0.0.3")], ip("192.0.2.9"))
            .unwrap();
        assert_eq!(
            f.vni(vni(4096)).unwrap().macs[&mac(3)],
            Dest::Remote(ip("192.0.2.9"))
        );
    }

    #[test]
    fn remote_addresses_accumulate_and_leave_one_by_one() {
        let mut f = Fdb::default();
        let vtep = ip("192.0.2.2");
        f.add_remote(vni(7), mac(3), &[ip("10.0.0.3")], vtep)
            .unwrap();
        // The IPv6 address arrives later: the IPv4 one stays.
        f.add_remote(vni(7), mac(3), &[ip("fd00::3")], vtep)
            .unwrap();
        let t = f.vni(vni(7)).unwrap();
        assert_eq!(t.ips[&ip("10.0.0.3")], mac(3));
        assert_eq!(t.ips[&ip("fd00::3")], mac(3));
        f.remove_remote(vni(7), mac(3), &[ip("fd00::3")]).unwrap();
        let t = f.vni(vni(7)).unwrap();
        assert!(t.ips.contains_key(&ip("10.0.0.3")));
        assert!(!t.ips.contains_key(&ip("fd00::3")));
        assert!(t.macs.contains_key(&mac(3)));
        f.remove_remote(vni(7), mac(3), &[]).unwrap();
        assert!(f.vni(vni(7)).is_none());
    }

    #[test]
    fn an_address_moves_to_a_new_mac() {
        let mut f = Fdb::default();
        f.add_remote(vni(7), mac(3), &[ip("10.0.0.3")], ip("192.0.2.2"))
            .unwrap();
        f.add_remote(vni(7), mac(9), &[ip("10.0.0.3")], ip("192.0.2.4"))
            .unwrap();
        let t = f.vni(vni(7)).unwrap();
        assert_eq!(t.ips[&ip("10.0.0.3")], mac(9));
    }

    #[test]
    fn a_local_endpoint_wins_over_remote_entries() {
        let mut f = Fdb::default();
        // The container left host2 and came back here with the same
        // address and MAC before host2's withdrawal arrived.
        f.add_remote(vni(7), mac(3), &[ip("10.0.0.3")], ip("192.0.2.2"))
            .unwrap();
        f.add_remote(vni(7), mac(4), &[ip("10.0.0.4")], ip("192.0.2.2"))
            .unwrap();
        f.add_local(0, vni(7), mac(3), &[ip("10.0.0.3")]).unwrap();
        // Another MAC's address taken over too.
        f.add_local(1, vni(7), mac(5), &[ip("10.0.0.4")]).unwrap();
        let t = f.vni(vni(7)).unwrap();
        assert_eq!(t.macs[&mac(3)], Dest::Local(0));
        assert_eq!(t.ips[&ip("10.0.0.3")], mac(3));
        assert_eq!(t.ips[&ip("10.0.0.4")], mac(5));
        // And a late remote record cannot take them back.
        assert!(matches!(
            f.add_remote(vni(7), mac(3), &[], ip("192.0.2.2")),
            Err(FdbError::MacInUse { .. })
        ));
        assert!(matches!(
            f.add_remote(vni(7), mac(8), &[ip("10.0.0.4")], ip("192.0.2.2")),
            Err(FdbError::IpInUse { .. })
        ));
    }

    #[test]
    fn conflicts_change_nothing() {
        let mut f = Fdb::default();
        f.add_local(0, vni(7), mac(2), &[ip("10.0.0.2")]).unwrap();
        let before = format!("{f:?}");
        assert!(matches!(
            f.add_local(1, vni(7), mac(5), &[ip("10.0.0.2")]),
            Err(FdbError::IpInUse { .. })
        ));
        assert!(matches!(
            f.add_remote(vni(7), mac(2), &[], ip("192.0.2.2")),
            Err(FdbError::MacInUse { .. })
        ));
        assert!(matches!(
            f.add_local(0, vni(8), mac(9), &[]),
            Err(FdbError::PortOnOtherVni { .. })
        ));
        assert!(f.add_local(1, vni(7), MacAddr::BROADCAST, &[]).is_err());
        assert!(
            f.remove_remote(vni(7), mac(2), &[]).is_err(),
            "a local endpoint is not a peer"
        );
        assert_eq!(before, format!("{f:?}"));
        // The same IP on another VNI is fine: networks are isolated.
        f.add_local(1, vni(8), mac(5), &[ip("10.0.0.2")]).unwrap();
    }

    fn service(vip: &str, backends: &[(&str, MacAddr)]) -> Arc<Service> {
        use crate::lb::service::Backend;
        let bs = backends
            .iter()
            .map(|(i, m)| Backend { ip: ip(i), mac: *m })
            .collect();
        Arc::new(Service::new(ip(vip), bs, 251).unwrap())
    }

    #[test]
    fn services_and_endpoints_do_not_overlap() {
        let mut f = Fdb::default();
        f.add_local(0, vni(7), mac(2), &[ip("10.0.0.2")]).unwrap();
        f.add_remote(vni(7), mac(3), &[ip("10.0.0.3")], ip("192.0.2.2"))
            .unwrap();
        let before = format!("{f:?}");
        // The VIP may not be an endpoint's address...
        assert!(matches!(
            f.set_service(vni(7), service("10.0.0.2", &[])),
            Err(FdbError::IpInUse { .. })
        ));
        // ...nor a backend's MAC contradict the table.
        let e = f
            .set_service(vni(7), service("10.0.0.100", &[("10.0.0.3", mac(9))]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("knows 10.0.0.3 at 02:42:00:00:00:03"),
            "{e}"
        );
        assert_eq!(before, format!("{f:?}"), "refusals change nothing");
        f.set_service(vni(7), service("10.0.0.100", &[("10.0.0.3", mac(3))]))
            .unwrap();
        // A backend may not be a VIP.
        assert!(matches!(
            f.set_service(vni(7), service("10.0.0.101", &[("10.0.0.100", mac(8))])),
            Err(FdbError::BackendIsVip { .. })
        ));
        // An endpoint may not take a VIP's address or MAC.
        assert!(matches!(
            f.add_local(1, vni(7), mac(5), &[ip("10.0.0.100")]),
            Err(FdbError::IpInUse { .. })
        ));
        let vip_mac = crate::lb::service::vip_mac(ip("10.0.0.100"));
        assert!(matches!(
            f.add_remote(vni(7), vip_mac, &[], ip("192.0.2.2")),
            Err(FdbError::MacInUse { .. })
        ));
        // Replacing is allowed; removing twice is not.
        f.set_service(vni(7), service("10.0.0.100", &[])).unwrap();
        assert!(f.has_services());
        f.remove_service(vni(7), ip("10.0.0.100")).unwrap();
        assert!(matches!(
            f.remove_service(vni(7), ip("10.0.0.100")),
            Err(FdbError::NoSuchService { .. })
        ));
        // A VNI with only a service is kept, and goes with it.
        f.set_service(vni(9), service("10.9.0.100", &[])).unwrap();
        assert!(f.vni(vni(9)).is_some());
        f.remove_service(vni(9), ip("10.9.0.100")).unwrap();
        assert!(f.vni(vni(9)).is_none());
    }

    #[test]
    fn replication_targets_follow_remote_entries() {
        let mut f = Fdb::default();
        let (h2, h3, k) = (ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.9"));
        f.add_local(0, vni(7), mac(2), &[]).unwrap();
        f.add_remote(vni(7), mac(3), &[], h2).unwrap();
        f.add_remote(vni(7), mac(4), &[], h2).unwrap();
        f.add_remote(vni(7), mac(5), &[], h3).unwrap();
        f.add_flood(vni(7), h2).unwrap();
        f.add_flood(vni(7), k).unwrap();
        assert_eq!(f.vni(vni(7)).unwrap().replicate, vec![h2, h3, k]);
        // A MAC moves host: host3 keeps nothing on the VNI.
        f.add_remote(vni(7), mac(5), &[], h2).unwrap();
        assert_eq!(f.vni(vni(7)).unwrap().replicate, vec![h2, k]);
        f.remove_remote(vni(7), mac(3), &[]).unwrap();
        f.remove_remote(vni(7), mac(4), &[]).unwrap();
        f.remove_flood(vni(7), k).unwrap();
        assert_eq!(
            f.vni(vni(7)).unwrap().replicate,
            vec![h2],
            "mac 5 and a flood entry"
        );
        // A local endpoint taking over the last remote MAC.
        f.remove_flood(vni(7), h2).unwrap();
        f.add_local(1, vni(7), mac(5), &[]).unwrap();
        assert!(f.vni(vni(7)).unwrap().replicate.is_empty());
        f.add_remote(vni(8), mac(9), &[], h3).unwrap();
        f.remove_vni(vni(8));
        assert!(f.vni(vni(8)).is_none());
    }

    #[test]
    fn a_flood_policy_declares_the_vni_and_survives_edits() {
        let mut f = Fdb::default();
        let off = FloodPolicy {
            enabled: false,
            rate: None,
        };
        f.set_flood_policy(vni(7), off);
        assert_eq!(f.vni(vni(7)).unwrap().policy, off);
        let counters = Arc::clone(&f.vni(vni(7)).unwrap().replication);
        f.add_remote(vni(7), mac(3), &[], ip("192.0.2.2")).unwrap();
        let copy = f.clone();
        assert!(Arc::ptr_eq(
            &counters,
            &copy.vni(vni(7)).unwrap().replication
        ));
        assert_eq!(
            copy.flood_rate(copy.vni(vni(7)).unwrap()),
            replication::DEFAULT_RATE
        );
        f.set_flood_policy(vni(7), FloodPolicy::default());
        f.remove_remote(vni(7), mac(3), &[]).unwrap();
        assert!(
            f.vni(vni(7)).is_none(),
            "default policy and nothing else: gone"
        );
    }

    #[test]
    fn underlay_bounds_frames() {
        let mut f = Fdb::default();
        assert_eq!(f.max_frame(false), usize::MAX);
        f.set_underlay(Underlay::new(1400, false));
        assert_eq!(f.max_frame(false), 1364);
        assert_eq!(
            f.max_frame(true),
            Underlay::new(1400, false).max_frame(true)
        );
    }

    #[test]
    fn removal_cleans_up() {
        let mut f = Fdb::default();
        f.add_local(0, vni(7), mac(2), &[ip("10.0.0.2")]).unwrap();
        f.add_flood(vni(7), ip("192.0.2.2")).unwrap();
        assert!(f.add_flood(vni(7), ip("192.0.2.2")).is_err());
        f.remove_local(0, mac(2));
        assert!(f.port(0).is_none());
        let t = f.vni(vni(7)).unwrap();
        assert!(t.macs.is_empty() && t.ips.is_empty() && t.ports.is_empty());
        f.remove_flood(vni(7), ip("192.0.2.2")).unwrap();
        assert!(f.vni(vni(7)).is_none());
        assert!(f.remove_flood(vni(7), ip("192.0.2.2")).is_err());
    }
}
