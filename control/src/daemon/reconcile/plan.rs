//! What the local dataplane must hold, as a pure function of the desired
//! state, and the steps that take it from what it holds to that.
//!
//! [`plan`] turns the store's view of this host (its containers, the
//! networks they use) and gossip's view of the swarm (live members, their
//! keys and their endpoint records) into a [`DpState`]: networks, local
//! endpoints, remote peers and hosts' keys. [`observe`] reads the same
//! shape out of the dataplane's listings, keeping only what the control
//! plane owns ([`Owner::Control`]), so entries made by hand are never
//! touched. [`diff`] lists the [`Op`]s that turn one into the other, in an
//! order the dataplane accepts (keys and networks before what uses them,
//! removals before additions that could collide).
//!
//! Nothing here remembers what it did: libnetwork's peerdb is replayed
//! into a new sandbox the same way (`peerDbUpdateSandbox`). After a
//! dataplane restart the observed state is empty and the diff puts
//! everything back; after `swarm leave` the desired state is empty and the
//! diff removes everything the swarm programmed.
//!
//! Rules:
//! - A network is declared on this host while a running container here
//!   uses it (Docker: an overlay appears on a node when a task or container
//!   there needs it, and leaves with the last one).
//! - A remote record is a peer only if its network is declared here, its
//!   VTEP is a live member's and not ours, and it collides with no local
//!   endpoint (a local endpoint always wins: the record is old news about a
//!   container that moved here).
//! - Records of one MAC are merged into one peer with all its addresses
//!   (IPv4 and IPv6); if they disagree on the VTEP, the newest record's
//!   VTEP wins.
//! - Every live member but this host gets its key (`vtep_add`).
//! - An endpoint's MTU is its network's given MTU, else what this host's
//!   underlay carries ([`Network::mtu_on`], the same rule `vxnet dp
//!   attach` applies). An endpoint whose MTU alone differs from that (the
//!   underlay's MTU changed after it was attached) is not re-attached,
//!   which would cut its connections: [`mtu_drift`] reports it.
//! - A network's flooding setting goes to the dataplane with it.
//! - Every VIP-mode service on a network declared here gets its VIP
//!   (`service_set`), IPv4 and IPv6 apart, with the addresses of the tasks
//!   alive on that network ([`Live`]) as backends. With none alive the
//!   service still exists: the dataplane refuses connections at once (TCP
//!   RST) instead of letting them time out.
//! - Every declared network gets its gateways (answered by the dataplane)
//!   and egress unless it is `--internal`. A container's default route
//!   goes through its first network that is not internal (Docker's rule);
//!   a container only on internal networks has none.
//! - In a swarm, the host link exists ([`HostLinkSpec`]). While a service
//!   publishes a port through the routing mesh, every node declares the
//!   ingress network, its host link stands for the node's ingress
//!   endpoint (announced by gossip like a container's), and the port is
//!   published with the service's ingress VIP (the same Maglev table on
//!   every node). A `mode=host` port is published only where a task of
//!   the service is alive, to the local tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use vxnet_api::dp::{
    self, AttachTarget, BackendSpec, DetachTarget, EndpointInfo, EndpointKind, FdbEntry, FdbKind,
    HostLinkInfo, IngressEndpoint, NetworkInfo, Owner, PortInfo, PortTo, ServiceInfo, VtepInfo,
};
use vxnet_api::model::{PortProtocol, PublishMode};
use vxnet_api::{IpNet, Ipv4Net, MacAddr, PublicKey, Vni};
use vxnet_proto::mtu::Underlay;

use super::names::Live;
use crate::daemon::gossip::GossipView;
use crate::daemon::runtime::Runtime;
use crate::model::{Container, EndpointMode, Network, Node, Service};

/// One container of this host the plan gives endpoints to, with the
/// host-side facts only this host knows.
#[derive(Clone, Copy, Debug)]
pub struct LocalContainer<'a> {
    pub container: &'a Container,
    pub runtime: &'a Runtime,
}

/// Everything the plan reads.
#[derive(Clone, Copy, Debug)]
pub struct Desired<'a> {
    /// This host's VTEP (the dataplane's local address).
    pub own_vtep: IpAddr,
    /// What carries it (the dataplane's `show`); `None` from a dataplane
    /// that does not say, and then networks' recorded MTUs are used.
    pub underlay: Option<Underlay>,
    /// Every network the store knows.
    pub networks: &'a [Network],
    /// The containers whose endpoints must exist (running, with their
    /// namespace in place).
    pub containers: &'a [LocalContainer<'a>],
    pub gossip: &'a GossipView,
    /// Every service the store knows.
    pub services: &'a [Service],
    /// Every container the store knows (this host's and its peers'): the
    /// candidates for backends.
    pub tasks: &'a [Container],
    /// Which tasks are alive where.
    pub live: &'a Live,
    /// This node's record, in a swarm.
    pub node: Option<&'a Node>,
    /// The host link's subnet (`None`: no host link, no published ports
    /// and no egress here).
    pub host_link_subnet: Option<Ipv4Net>,
}

/// Where a local endpoint is plugged in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointKey {
    /// A TAP named `ifname` inside namespace `netns`.
    Netns { netns: String, ifname: String },
    /// Another runtime's veth, bridged.
    Veth(String),
}

/// A local endpoint's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub vni: Vni,
    pub mac: MacAddr,
    /// Sorted.
    pub ips: Vec<IpNet>,
    /// Bytes.
    pub mtu: u32,
    /// Sorted; default routes (the container's first network only).
    pub gateways: Vec<IpAddr>,
}

impl EndpointSpec {
    /// Equal but for the MTU.
    fn same_but_mtu(&self, other: &EndpointSpec) -> bool {
        self.mtu != other.mtu
            && EndpointSpec {
                mtu: other.mtu,
                ..self.clone()
            } == *other
    }
}

/// A remote endpoint: its addresses behind one VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub ips: BTreeSet<IpAddr>,
    pub vtep: IpAddr,
}

/// How a declared network routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSpec {
    pub encrypted: bool,
    /// Sorted.
    pub gateways: Vec<IpAddr>,
    pub egress: bool,
    pub ingress: bool,
    /// Replicate flooded frames to other hosts.
    pub flood: bool,
}

/// The host link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLinkSpec {
    pub subnet: Ipv4Net,
    /// Bytes.
    pub mtu: u32,
    pub ingress: Option<IngressEndpoint>,
}

/// A published port here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub target: u16,
    pub vni: Vni,
    /// Backends sorted by address, with their MACs.
    pub to: PortTo,
}

/// The part of a dataplane's state the control plane manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DpState {
    pub networks: BTreeMap<Vni, NetSpec>,
    pub endpoints: BTreeMap<EndpointKey, EndpointSpec>,
    pub peers: BTreeMap<(Vni, MacAddr), PeerSpec>,
    pub vteps: BTreeMap<IpAddr, PublicKey>,
    /// (VNI, VIP) -> backends (address, MAC).
    pub services: BTreeMap<(Vni, IpAddr), BTreeSet<(IpAddr, MacAddr)>>,
    pub host_link: Option<HostLinkSpec>,
    pub ports: BTreeMap<(PortProtocol, u16), PortSpec>,
}

/// An endpoint to announce by gossip: (network id, address, MAC).
pub type Announcement = (String, IpAddr, MacAddr);

/// The plan: the dataplane state, and which container each endpoint is
/// for (so a failed attach is blamed on the right container) and what to
/// announce for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub state: DpState,
    /// Endpoint -> container id.
    pub owners: BTreeMap<EndpointKey, String>,
    /// Endpoint -> what gossip announces for it.
    pub announce: BTreeMap<EndpointKey, Vec<Announcement>>,
    /// What gossip announces for this node itself (its ingress endpoint).
    pub announce_node: Vec<Announcement>,
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// What the dataplane must hold.
pub fn plan(d: &Desired<'_>) -> Plan {
    let mut p = Plan::default();
    let net_of = |id: &str| d.networks.iter().find(|n| n.id == id);
    // Local endpoints, and the networks they need.
    for lc in d.containers {
        let c = lc.container;
        // The default route goes through the first network that is not
        // internal.
        let routed = c
            .attachments
            .iter()
            .position(|a| net_of(&a.network).is_some_and(|n| !n.internal));
        for (i, a) in c.attachments.iter().enumerate() {
            let Some(net) = net_of(&a.network) else {
                continue;
            };
            let Some(key) = endpoint_key(lc.runtime, &net.id) else {
                continue;
            };
            let mut ips = vec![IpNet::new_assert(
                IpAddr::V4(a.ipv4),
                net.ipv4.subnet.prefix_len(),
            )];
            let sidecar = lc.runtime.veth.is_some();
            // Another runtime's container keeps its own default route.
            let primary = routed == Some(i) && !lc.runtime.external;
            let mut gateways = Vec::new();
            if primary {
                gateways.push(IpAddr::V4(net.ipv4.gateway));
            }
            if let (Some(v6), Some(cfg)) = (a.ipv6, &net.ipv6) {
                ips.push(IpNet::new_assert(IpAddr::V6(v6), cfg.subnet.prefix_len()));
                if primary {
                    gateways.push(IpAddr::V6(cfg.gateway));
                }
            }
            if sidecar {
                gateways.clear();
            }
            p.state.networks.insert(net.vni, net_spec(net));
            let mtu = match d.underlay {
                Some(u) => net.mtu_on(u),
                None => u32::from(net.mtu),
            };
            p.state.endpoints.insert(
                key.clone(),
                EndpointSpec {
                    vni: net.vni,
                    mac: a.mac,
                    ips: sorted(ips),
                    mtu,
                    gateways: sorted(gateways),
                },
            );
            p.owners.insert(key.clone(), c.id.clone());
            p.announce
                .insert(key, a.ips().map(|ip| (net.id.clone(), ip, a.mac)).collect());
        }
    }

    // The routing mesh: the ingress network on every node of the swarm
    // while a service publishes through it.
    let ingress = d.networks.iter().find(|n| n.ingress);
    let mesh = d.services.iter().any(|s| s.uses_ingress());
    let mut ingress_endpoint = None;
    if let (Some(node), Some(net), true, Some(_)) = (d.node, ingress, mesh, d.host_link_subnet) {
        if let Some(ip) = node.ingress_ipv4 {
            p.state.networks.insert(net.vni, net_spec(net));
            ingress_endpoint = Some(IngressEndpoint { vni: net.vni, ip });
            let mac = MacAddr::from_ip(IpAddr::V4(ip));
            p.announce_node.push((net.id.clone(), IpAddr::V4(ip), mac));
        }
    }
    if let (Some(_), Some(subnet)) = (d.node, d.host_link_subnet) {
        p.state.host_link = Some(HostLinkSpec {
            subnet,
            mtu: ingress.map_or(1450, |n| {
                d.underlay.map_or(u32::from(n.mtu), |u| n.mtu_on(u))
            }),
            ingress: ingress_endpoint,
        });
    }

    // Remote peers: live records of declared networks, merged per MAC.
    let own_ingress: Option<(Vni, MacAddr, IpAddr)> = ingress_endpoint.map(|e| {
        let ip = IpAddr::V4(e.ip);
        (e.vni, MacAddr::from_ip(ip), ip)
    });
    p.state.peers = peers(d, &p.state, own_ingress);

    // Every live member's key.
    for m in &d.gossip.members {
        if m.data_addr != d.own_vtep {
            p.state
                .vteps
                .insert(m.data_addr, PublicKey::from_bytes(m.public_key));
        }
    }
    p.state.services = services(d, &p.state.networks);
    if p.state.host_link.is_some() {
        p.state.ports = ports(d, &p.state.networks, ingress);
    }
    p
}

/// Remote peers: live records of declared networks, merged per MAC; a
/// record colliding with a local endpoint (or this node's ingress
/// endpoint) is left out.
fn peers(
    d: &Desired<'_>,
    state: &DpState,
    own_ingress: Option<(Vni, MacAddr, IpAddr)>,
) -> BTreeMap<(Vni, MacAddr), PeerSpec> {
    let mut out = BTreeMap::new();
    let net_of = |id: &str| d.networks.iter().find(|n| n.id == id);
    let mut local_macs: BTreeSet<(Vni, MacAddr)> =
        state.endpoints.values().map(|e| (e.vni, e.mac)).collect();
    let mut local_ips: BTreeSet<(Vni, IpAddr)> = state
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().map(move |n| (e.vni, n.addr())))
        .collect();
    if let Some((vni, mac, ip)) = own_ingress {
        local_macs.insert((vni, mac));
        local_ips.insert((vni, ip));
    }
    let live: BTreeSet<IpAddr> = d.gossip.members.iter().map(|m| m.data_addr).collect();
    // (vni, mac) -> [(version, vtep, ip)]
    type Seen = Vec<(u64, IpAddr, IpAddr)>;
    let mut by_mac: BTreeMap<(Vni, MacAddr), Seen> = BTreeMap::new();
    for r in &d.gossip.records {
        if r.removed || r.vtep == d.own_vtep || !live.contains(&r.vtep) {
            continue;
        }
        let Some(net) = net_of(&r.network_id) else {
            continue;
        };
        if !state.networks.contains_key(&net.vni) {
            continue;
        }
        let mac = MacAddr(r.mac);
        if local_macs.contains(&(net.vni, mac)) || local_ips.contains(&(net.vni, r.ip)) {
            continue;
        }
        by_mac
            .entry((net.vni, mac))
            .or_default()
            .push((r.version, r.vtep, r.ip));
    }
    for (key, recs) in by_mac {
        let Some(&(_, vtep, _)) = recs.iter().max() else {
            continue;
        };
        let ips = recs
            .iter()
            .filter(|(_, v, _)| *v == vtep)
            .map(|(_, _, ip)| *ip)
            .collect();
        out.insert(key, PeerSpec { ips, vtep });
    }
    out
}

/// How `net` routes (see the module's rules).
fn net_spec(net: &Network) -> NetSpec {
    let mut gateways = vec![IpAddr::V4(net.ipv4.gateway)];
    if let Some(c) = &net.ipv6 {
        gateways.push(IpAddr::V6(c.gateway));
    }
    NetSpec {
        encrypted: net.encrypted,
        gateways: sorted(gateways),
        egress: !net.internal,
        ingress: net.ingress,
        flood: net.flood,
    }
}

/// The ports published here: ingress ones through the VIP of their
/// service on the ingress network (when it is declared), host ones to the
/// service's tasks alive on this node.
fn ports(
    d: &Desired<'_>,
    declared: &BTreeMap<Vni, NetSpec>,
    ingress: Option<&Network>,
) -> BTreeMap<(PortProtocol, u16), PortSpec> {
    let mut out = BTreeMap::new();
    let me = d.node.map(|n| n.id.as_str());
    for s in d.services {
        for port in &s.ports {
            let spec = match port.publish_mode {
                PublishMode::Ingress => {
                    let Some(net) = ingress.filter(|n| declared.contains_key(&n.vni)) else {
                        continue;
                    };
                    let Some(vip) = s.vip(&net.id) else { continue };
                    PortSpec {
                        target: port.target_port,
                        vni: net.vni,
                        to: PortTo::Vip(IpAddr::V4(vip.ipv4)),
                    }
                }
                PublishMode::Host => {
                    // The tasks here, on their first network (their
                    // default route's: replies come back that way).
                    let mut vni = None;
                    let mut backends = BTreeMap::new();
                    for t in d.tasks.iter().filter(|c| {
                        Some(c.node.as_str()) == me
                            && c.task.as_ref().is_some_and(|t| t.service == s.id)
                    }) {
                        let Some(a) = t.attachments.first() else {
                            continue;
                        };
                        let Some(net) = d.networks.iter().find(|n| n.id == a.network) else {
                            continue;
                        };
                        if !declared.contains_key(&net.vni) || !d.live.counts(t, &net.id) {
                            continue;
                        }
                        vni = Some(net.vni);
                        backends.insert(IpAddr::V4(a.ipv4), a.mac);
                    }
                    let Some(vni) = vni else { continue };
                    PortSpec {
                        target: port.target_port,
                        vni,
                        to: PortTo::Backends(
                            backends
                                .into_iter()
                                .map(|(ip, mac)| BackendSpec { ip, mac: Some(mac) })
                                .collect(),
                        ),
                    }
                }
            };
            out.insert((port.protocol, port.published_port), spec);
        }
    }
    out
}

/// The VIPs of services on the networks declared here, with their live
/// tasks as backends.
fn services(
    d: &Desired<'_>,
    declared: &BTreeMap<Vni, NetSpec>,
) -> BTreeMap<(Vni, IpAddr), BTreeSet<(IpAddr, MacAddr)>> {
    let mut out: BTreeMap<(Vni, IpAddr), BTreeSet<(IpAddr, MacAddr)>> = BTreeMap::new();
    for s in d.services {
        if s.endpoint_mode != EndpointMode::Vip {
            continue;
        }
        for vip in &s.vips {
            let Some(net) = d.networks.iter().find(|n| n.id == vip.network) else {
                continue;
            };
            if !declared.contains_key(&net.vni) {
                continue;
            }
            let tasks = d.tasks.iter().filter(|c| {
                c.task.as_ref().is_some_and(|t| t.service == s.id) && d.live.counts(c, &net.id)
            });
            let mut v4 = BTreeSet::new();
            let mut v6 = BTreeSet::new();
            for t in tasks {
                let Some(a) = t.attachment(&net.id) else {
                    continue;
                };
                v4.insert((IpAddr::V4(a.ipv4), a.mac));
                if let Some(ip) = a.ipv6 {
                    v6.insert((IpAddr::V6(ip), a.mac));
                }
            }
            out.insert((net.vni, IpAddr::V4(vip.ipv4)), v4);
            if let Some(ip) = vip.ipv6 {
                out.insert((net.vni, IpAddr::V6(ip)), v6);
            }
        }
    }
    out
}

/// Where the endpoint of `network_id` of a container lives.
pub fn endpoint_key(rt: &Runtime, network_id: &str) -> Option<EndpointKey> {
    match &rt.veth {
        Some(v) => Some(EndpointKey::Veth(v.clone())),
        None => rt.ifname(network_id).map(|i| EndpointKey::Netns {
            netns: rt.netns.clone(),
            ifname: i.to_owned(),
        }),
    }
}

/// The dataplane's listings.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub networks: Vec<NetworkInfo>,
    pub endpoints: Vec<EndpointInfo>,
    pub fdb: Vec<FdbEntry>,
    pub vteps: Vec<VtepInfo>,
    pub services: Vec<ServiceInfo>,
    pub host_link: Option<HostLinkInfo>,
    pub ports: Vec<PortInfo>,
}

/// What of the dataplane's state the control plane owns.
pub fn observe(o: &Observed) -> DpState {
    let mine = |owner: &Owner| *owner == Owner::Control;
    let mut s = DpState::default();
    for n in o.networks.iter().filter(|n| mine(&n.owner)) {
        s.networks.insert(
            n.vni,
            NetSpec {
                encrypted: n.encrypted,
                flood: n.flood,
                gateways: sorted(n.gateways.clone()),
                egress: n.egress,
                ingress: n.ingress,
            },
        );
    }
    // A link whose firewall table is not whole counts as missing: setting
    // it again writes the table again.
    s.host_link = o
        .host_link
        .as_ref()
        .filter(|h| mine(&h.owner) && h.firewall_ok)
        .map(|h| HostLinkSpec {
            subnet: h.subnet,
            mtu: h.mtu,
            ingress: h.ingress,
        });
    for port in o.ports.iter().filter(|p| mine(&p.owner) && p.in_firewall) {
        s.ports.insert(
            (port.protocol, port.published),
            PortSpec {
                target: port.target,
                vni: port.vni,
                to: port.to.clone(),
            },
        );
    }
    for e in o.endpoints.iter().filter(|e| mine(&e.owner)) {
        let key = match e.kind {
            EndpointKind::Native => EndpointKey::Netns {
                netns: e.location.clone(),
                ifname: e.ifname.clone(),
            },
            EndpointKind::Sidecar => EndpointKey::Veth(e.ifname.clone()),
        };
        s.endpoints.insert(
            key,
            EndpointSpec {
                vni: e.vni,
                mac: e.mac,
                ips: sorted(e.ips.clone()),
                mtu: e.mtu,
                gateways: sorted(e.gateways.clone()),
            },
        );
    }
    for f in o.fdb.iter().filter(|f| mine(&f.owner)) {
        if let (FdbKind::Remote, Some(mac), Some(vtep)) = (f.kind, f.mac, f.vtep) {
            s.peers.insert(
                (f.vni, mac),
                PeerSpec {
                    ips: f.ips.iter().copied().collect(),
                    vtep,
                },
            );
        }
    }
    for v in o.vteps.iter().filter(|v| mine(&v.owner)) {
        s.vteps.insert(v.vtep, v.pubkey);
    }
    for svc in o.services.iter().filter(|v| mine(&v.owner)) {
        s.services.insert(
            (svc.vni, svc.vip),
            svc.backends.iter().map(|b| (b.ip, b.mac)).collect(),
        );
    }
    s
}

/// Whether `op` only adds to what the dataplane holds (`have`): a VTEP,
/// a network, a remote peer, or an endpoint not attached yet. Everything
/// else removes or replaces state (a service's or port's backends, the
/// host link) and waits while gossip syncs.
pub fn additive(op: &Op, have: &DpState) -> bool {
    match op {
        Op::VtepAdd(..) | Op::NetworkAdd(..) | Op::PeerAdd { .. } => true,
        Op::Attach(key, _) => !have.endpoints.contains_key(key),
        _ => false,
    }
}

/// One change to the dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    VtepAdd(IpAddr, PublicKey),
    NetworkAdd(Vni, NetSpec),
    /// The network's egress turned on after its ports (the same request
    /// as [`Op::NetworkAdd`], with the spec in full).
    EgressOn(Vni, NetSpec),
    HostLinkSet(HostLinkSpec),
    HostLinkDel,
    PortSet {
        protocol: PortProtocol,
        published: u16,
        spec: PortSpec,
    },
    PortDel {
        protocol: PortProtocol,
        published: u16,
    },
    Detach(EndpointKey),
    PeerDel {
        vni: Vni,
        mac: MacAddr,
        /// Only these addresses; the whole entry when empty.
        ips: Vec<IpAddr>,
    },
    Attach(EndpointKey, EndpointSpec),
    PeerAdd {
        vni: Vni,
        mac: MacAddr,
        ips: Vec<IpAddr>,
        vtep: IpAddr,
    },
    /// Creates the service or replaces its backends.
    ServiceSet {
        vni: Vni,
        vip: IpAddr,
        backends: Vec<(IpAddr, MacAddr)>,
    },
    ServiceDel {
        vni: Vni,
        vip: IpAddr,
    },
    NetworkDel(Vni),
    VtepDel(IpAddr),
}

impl Op {
    /// The API request this step sends, tagged as the control plane's.
    pub fn request(&self) -> dp::Request {
        use vxnet_api::Call;
        match self {
            Op::VtepAdd(vtep, key) => dp::VtepAdd {
                vtep: *vtep,
                pubkey: *key,
                owner: Owner::Control,
            }
            .into_request(),
            Op::NetworkAdd(vni, n) | Op::EgressOn(vni, n) => dp::NetworkAdd {
                vni: *vni,
                encrypted: n.encrypted,
                gateways: n.gateways.clone(),
                egress: n.egress,
                ingress: n.ingress,
                flood: n.flood,
                flood_rate: None,
                owner: Owner::Control,
            }
            .into_request(),
            Op::HostLinkSet(h) => dp::HostLinkSet {
                ifname: None,
                subnet: h.subnet,
                mtu: Some(h.mtu),
                ingress: h.ingress,
                owner: Owner::Control,
            }
            .into_request(),
            Op::HostLinkDel => dp::HostLinkDel {}.into_request(),
            Op::PortSet {
                protocol,
                published,
                spec,
            } => dp::PortSet {
                protocol: *protocol,
                published: *published,
                target: spec.target,
                vni: spec.vni,
                to: spec.to.clone(),
                owner: Owner::Control,
            }
            .into_request(),
            Op::PortDel {
                protocol,
                published,
            } => dp::PortDel {
                protocol: *protocol,
                published: *published,
            }
            .into_request(),
            Op::Detach(key) => dp::Detach {
                target: match key {
                    EndpointKey::Netns { netns, ifname } => DetachTarget::Netns {
                        netns: netns.clone(),
                        ifname: Some(ifname.clone()),
                    },
                    EndpointKey::Veth(v) => DetachTarget::Veth(v.clone()),
                },
            }
            .into_request(),
            Op::PeerDel { vni, mac, ips } => dp::PeerDel {
                vni: *vni,
                mac: *mac,
                ips: ips.clone(),
            }
            .into_request(),
            Op::Attach(key, spec) => {
                let (target, ifname, mac) = match key {
                    EndpointKey::Netns { netns, ifname } => (
                        AttachTarget::Netns(netns.clone()),
                        Some(ifname.clone()),
                        spec.mac,
                    ),
                    EndpointKey::Veth(v) => (AttachTarget::Veth(v.clone()), None, spec.mac),
                };
                dp::Attach {
                    target,
                    vni: spec.vni,
                    ips: spec.ips.clone(),
                    mac: Some(mac),
                    mtu: Some(spec.mtu),
                    gateways: spec.gateways.clone(),
                    ifname,
                    owner: Owner::Control,
                }
                .into_request()
            }
            Op::PeerAdd {
                vni,
                mac,
                ips,
                vtep,
            } => dp::PeerAdd {
                vni: *vni,
                mac: *mac,
                ips: ips.clone(),
                vtep: *vtep,
                owner: Owner::Control,
            }
            .into_request(),
            Op::ServiceSet { vni, vip, backends } => dp::ServiceSet {
                vni: *vni,
                vip: *vip,
                backends: backends
                    .iter()
                    .map(|(ip, mac)| dp::BackendSpec {
                        ip: *ip,
                        mac: Some(*mac),
                    })
                    .collect(),
                owner: Owner::Control,
            }
            .into_request(),
            Op::ServiceDel { vni, vip } => dp::ServiceDel {
                vni: *vni,
                vip: *vip,
            }
            .into_request(),
            Op::NetworkDel(vni) => dp::NetworkDel { vni: *vni }.into_request(),
            Op::VtepDel(vtep) => dp::VtepDel { vtep: *vtep }.into_request(),
        }
    }
}

/// Endpoints whose MTU alone differs from what they would get now (the
/// underlay's MTU changed since they were attached): (endpoint, MTU it
/// has, MTU it would get). [`diff`] leaves them alone; a re-attach (the
/// container's restart) gives them the new MTU. Until then the dataplane
/// answers their too-big frames with ICMP, so their TCP adapts.
pub fn mtu_drift(actual: &DpState, desired: &DpState) -> Vec<(EndpointKey, u32, u32)> {
    desired
        .endpoints
        .iter()
        .filter_map(|(key, want)| {
            let have = actual.endpoints.get(key)?;
            have.same_but_mtu(want)
                .then(|| (key.clone(), have.mtu, want.mtu))
        })
        .collect()
}

/// The steps from `actual` to `desired`, in the order to apply them.
pub fn diff(actual: &DpState, desired: &DpState) -> Vec<Op> {
    let mut vtep_add = Vec::new();
    let mut vtep_del = Vec::new();
    for (vtep, key) in &desired.vteps {
        if actual.vteps.get(vtep) != Some(key) {
            vtep_add.push(Op::VtepAdd(*vtep, *key));
        }
    }
    for vtep in actual.vteps.keys() {
        if !desired.vteps.contains_key(vtep) {
            vtep_del.push(Op::VtepDel(*vtep));
        }
    }

    let mut net_add = Vec::new();
    let mut net_del = Vec::new();
    for (vni, spec) in &desired.networks {
        if actual.networks.get(vni) != Some(spec) {
            net_add.push(Op::NetworkAdd(*vni, spec.clone()));
        }
    }
    for vni in actual.networks.keys() {
        if !desired.networks.contains_key(vni) {
            net_del.push(Op::NetworkDel(*vni));
        }
    }

    let mut detach = Vec::new();
    let mut attach = Vec::new();
    for (key, spec) in &desired.endpoints {
        match actual.endpoints.get(key) {
            Some(have) if have == spec => {}
            // Only the MTU: reported by `mtu_drift`, not re-attached.
            Some(have) if have.same_but_mtu(spec) => {}
            Some(_) => {
                detach.push(Op::Detach(key.clone()));
                attach.push(Op::Attach(key.clone(), spec.clone()));
            }
            None => attach.push(Op::Attach(key.clone(), spec.clone())),
        }
    }
    for key in actual.endpoints.keys() {
        if !desired.endpoints.contains_key(key) {
            detach.push(Op::Detach(key.clone()));
        }
    }

    let mut peer_del = Vec::new();
    let mut peer_add = Vec::new();
    for ((vni, mac), want) in &desired.peers {
        let add = |peer_add: &mut Vec<Op>| {
            peer_add.push(Op::PeerAdd {
                vni: *vni,
                mac: *mac,
                ips: want.ips.iter().copied().collect(),
                vtep: want.vtep,
            });
        };
        match actual.peers.get(&(*vni, *mac)) {
            Some(have) if have == want => {}
            Some(have) => {
                let stale: Vec<IpAddr> = have.ips.difference(&want.ips).copied().collect();
                if !stale.is_empty() {
                    peer_del.push(Op::PeerDel {
                        vni: *vni,
                        mac: *mac,
                        ips: stale,
                    });
                }
                add(&mut peer_add);
            }
            None => add(&mut peer_add),
        }
    }
    for (vni, mac) in actual.peers.keys() {
        if !desired.peers.contains_key(&(*vni, *mac)) {
            peer_del.push(Op::PeerDel {
                vni: *vni,
                mac: *mac,
                ips: Vec::new(),
            });
        }
    }

    let mut svc_del = Vec::new();
    let mut svc_set = Vec::new();
    for ((vni, vip), want) in &desired.services {
        if actual.services.get(&(*vni, *vip)) != Some(want) {
            svc_set.push(Op::ServiceSet {
                vni: *vni,
                vip: *vip,
                backends: want.iter().copied().collect(),
            });
        }
    }
    for (vni, vip) in actual.services.keys() {
        if !desired.services.contains_key(&(*vni, *vip)) {
            svc_del.push(Op::ServiceDel {
                vni: *vni,
                vip: *vip,
            });
        }
    }

    // A host link set anew (or replaced) starts without ports.
    let (link_set, link_del) = match (&actual.host_link, &desired.host_link) {
        (a, Some(want)) if a.as_ref() != Some(want) => (Some(Op::HostLinkSet(want.clone())), None),
        (Some(_), None) => (None, Some(Op::HostLinkDel)),
        _ => (None, None),
    };
    let mut port_set = Vec::new();
    let mut port_del = Vec::new();
    for ((protocol, published), spec) in &desired.ports {
        if link_set.is_some() || actual.ports.get(&(*protocol, *published)) != Some(spec) {
            port_set.push(Op::PortSet {
                protocol: *protocol,
                published: *published,
                spec: spec.clone(),
            });
        }
    }
    if link_del.is_none() {
        for (protocol, published) in actual.ports.keys() {
            if !desired.ports.contains_key(&(*protocol, *published)) {
                port_del.push(Op::PortDel {
                    protocol: *protocol,
                    published: *published,
                });
            }
        }
    }

    // A network (re)added with egress on, whose ports are set in this same
    // plan, gets egress only after them. Between its endpoints' attach and
    // the ports, a task's segment of a published-port connection (a
    // retransmission after this dataplane restarted) would otherwise look
    // like egress and leave from the host's address; the client's kernel
    // answers that with a reset, which reaches the task and kills the
    // connection. Until then such a segment is dropped, and retransmitted.
    let mut egress_on = Vec::new();
    for op in &mut net_add {
        if let Op::NetworkAdd(vni, spec) = op {
            let has_ports = port_set
                .iter()
                .any(|p| matches!(p, Op::PortSet { spec: ps, .. } if ps.vni == *vni));
            if spec.egress && has_ports {
                egress_on.push(Op::EgressOn(*vni, spec.clone()));
                spec.egress = false;
            }
        }
    }

    // Keys first (an encrypted peer is reachable as soon as it exists),
    // then networks and the host link, then what leaves before what
    // arrives (a peer taking over a departed endpoint's address; a port
    // unpublished before its service goes), services once their backends'
    // endpoints exist, ports once their services do, then what nothing
    // uses any more.
    let mut ops = Vec::new();
    ops.extend(vtep_add);
    ops.extend(net_add);
    ops.extend(link_set);
    ops.extend(port_del);
    ops.extend(svc_del);
    ops.extend(detach);
    ops.extend(peer_del);
    ops.extend(attach);
    ops.extend(peer_add);
    ops.extend(svc_set);
    ops.extend(port_set);
    ops.extend(egress_on);
    ops.extend(link_del);
    ops.extend(net_del);
    ops.extend(vtep_del);
    ops
}

#[cfg(test)]
mod mesh_tests;
#[cfg(test)]
mod tests;
