//! The dataplane's local API: newline-delimited JSON over a Unix socket
//! (`/run/vxnet/dataplane.sock`), spoken by the `vxnet dp` CLI and by
//! `vxnet-control`'s reconciler.
//!
//! One request per line, one [`Response`](crate::Response) per line. Every
//! request is a struct that names its reply type ([`Call`](crate::Call));
//! [`Request`] is their tagged union on the wire. Unknown fields are
//! refused, so a typo (`"ip"` for `"ips"`) is an error instead of a peer
//! with no addresses. Every field is validated before anything changes,
//! and a refused request changes nothing.
//!
//! ```text
//! -> {"op":"peer_add","vni":4096,"mac":"02:42:0a:00:00:03","ips":["10.0.0.3"],"vtep":"192.0.2.2"}
//! <- {"ok":true,"result":null}
//! <- {"ok":false,"error":{"code":"invalid_argument","message":"VNI 0 is outside 1..=16777215"}}
//! ```
//!
//! Ownership: what `vxnet-control` programs is tagged [`Owner::Control`];
//! its reconciler removes only what it owns and leaves entries made by
//! hand (`vxnet dp ...`, [`Owner::User`]) alone.

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use vxnet_proto::crypto::keys::PublicKey;
use vxnet_proto::wire::{MacAddr, Vni};

use crate::calls;
pub use crate::model::PortProtocol;
pub use crate::observe::{Capture, CaptureMsg, LiveMsg, LiveTrace};
pub use crate::trace::{Trace, TraceReport, TraceWire};

/// Default path of the dataplane's API socket.
pub const DEFAULT_SOCKET: &str = "/run/vxnet/dataplane.sock";

/// Who programmed an entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Someone at the CLI (`vxnet dp ...`); the control plane never
    /// removes these.
    #[default]
    User,
    /// `vxnet-control`'s reconciler, which removes what it no longer wants.
    Control,
}

impl Owner {
    pub fn is_user(&self) -> bool {
        *self == Owner::User
    }
}

/// Where an endpoint's frames enter the dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AttachTarget {
    /// Native attach: a TAP created inside this network namespace (a name
    /// under /run/netns or a path such as /proc/PID/ns/net).
    Netns(String),
    /// Sidecar attach: this existing host-side veth is enslaved to the
    /// network's bridge, which also holds the dataplane's TAP.
    Veth(String),
}

/// `attach`: a container's interface on a VNI. Replies the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    pub target: AttachTarget,
    pub vni: Vni,
    /// One or more interface addresses with their prefix lengths
    /// (`10.0.0.2/24`, `fd00::2/64`), IPv4 and/or IPv6.
    pub ips: Vec<IpNet>,
    /// Defaults to one derived from the first address (02:42:...).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Bytes; defaults to what the underlay carries for the network: the
    /// MTU of the interface holding the local VTEP address minus 50 (IPv4
    /// VTEP) or 70 (IPv6), minus 42 more on an encrypted network (1450 and
    /// 1408 over a 1500-byte IPv4 underlay; [`vxnet_proto::mtu`]), unless
    /// the dataplane was started with `--mtu`.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Default routes to install, one per address family at most.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// Interface name inside the namespace; defaults to eth0.
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub owner: Owner,
}

/// Which endpoints to detach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DetachTarget {
    Id(u32),
    /// Every endpoint attached in this namespace (optionally one interface).
    Netns {
        netns: String,
        #[serde(default)]
        ifname: Option<String>,
    },
    Veth(String),
}

/// `detach`: replies the endpoints removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detach {
    pub target: DetachTarget,
}

/// Whether `ip` can be a host's address on the underlay, so a VTEP: not
/// unspecified, multicast or the IPv4 limited broadcast. The CLI and the
/// dataplane refuse the rest for `peer_add` and `flood_add`.
pub fn is_host_address(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || broadcast)
}

/// `peer_add`: a remote endpoint, `mac` with `ips` behind `vtep`.
///
/// Adds `ips` to what the FDB holds for `mac` (an endpoint's IPv6 address
/// learned after its IPv4 one keeps both); a `vtep` different from the
/// one recorded moves the MAC there. A MAC that is a local endpoint is
/// refused: a local endpoint always wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAdd {
    pub vni: Vni,
    pub mac: MacAddr,
    /// Overlay addresses of the endpoint (answered by the ARP/ND proxy).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    pub vtep: IpAddr,
    #[serde(default)]
    pub owner: Owner,
}

/// `peer_del`: forgets a remote MAC, or only some of its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerDel {
    pub vni: Vni,
    pub mac: MacAddr,
    /// Only these addresses; all of the MAC (the entry itself) when empty.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// `flood_add`: broadcast and unknown unicast of `vni` also go to `vtep`
/// (interop with a kernel VXLAN host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodAdd {
    pub vni: Vni,
    pub vtep: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodDel {
    pub vni: Vni,
    pub vtep: IpAddr,
}

/// `stats`: counters and drop reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {}

/// `fdb`: forwarding entries, of one VNI or all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fdb {
    #[serde(default)]
    pub vni: Option<Vni>,
}

/// `endpoints`: every attached endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {}

/// `show`: the dataplane's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Show {}

/// `network_add`: declares a network (VNI), whether its traffic must be
/// encrypted, its gateways and egress, and how its broadcast, multicast
/// and unknown-unicast frames are flooded. Declaring it again with the
/// same settings is a no-op; with other gateways or egress, they change;
/// the flooding settings of a declared network may change at any time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAdd {
    pub vni: Vni,
    #[serde(default)]
    pub encrypted: bool,
    /// The network's gateway addresses (one per family at most): the
    /// dataplane answers ARP/ND and ping for them, and routes what
    /// containers send to them (published ports' replies, egress).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// Containers reach the outside through the host link (a network made
    /// with `--internal` has none).
    #[serde(default)]
    pub egress: bool,
    /// The swarm's ingress network (routing-mesh flows are tracked on it).
    #[serde(default)]
    pub ingress: bool,
    /// Replicate flooded frames to every host with endpoints on the
    /// network (head-end replication); when false they only reach the
    /// network's endpoints on this host. Default true.
    #[serde(default = "yes")]
    pub flood: bool,
    /// Frames per second the network may flood from this host; the
    /// dataplane's `--flood-rate` when absent.
    #[serde(default)]
    pub flood_rate: Option<u32>,
    #[serde(default)]
    pub owner: Owner,
}

fn yes() -> bool {
    true
}

/// `network_del`: refused while endpoints are attached on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDel {
    pub vni: Vni,
}

/// `networks`: the declared networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Networks {}

/// `vtep_add`: another host's X25519 public key (static keying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtepAdd {
    pub vtep: IpAddr,
    pub pubkey: PublicKey,
    #[serde(default)]
    pub owner: Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtepDel {
    pub vtep: IpAddr,
}

/// `vteps`: the hosts whose keys this dataplane knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vteps {}

/// `rekey`: starts a key rotation with one host, or with all. Replies the
/// hosts a rotation started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rekey {
    #[serde(default)]
    pub vtep: Option<IpAddr>,
}

/// `sa`: security associations; keys only if the dataplane allows key
/// export (`--allow-key-export`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sa {
    #[serde(default)]
    pub show_keys: bool,
}

/// One backend of a service: a task's overlay address and its MAC.
/// Without a MAC, the dataplane takes the one its FDB knows for the
/// address (the endpoint or peer must be programmed first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub ip: IpAddr,
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// `service_set`: creates the service with VIP `vip` on `vni`, or
/// replaces its whole backend set at once. Connections to the VIP (any
/// port, TCP and UDP) are spread over the backends by Maglev hashing and
/// each stays on its backend (conntrack); flows to backends that stay are
/// never moved. An empty set refuses new connections. At most 1024
/// backends; refused when the dataplane runs more than one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSet {
    pub vni: Vni,
    pub vip: IpAddr,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    #[serde(default)]
    pub owner: Owner,
}

/// `service_del`: removes a service; its flows end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDel {
    pub vni: Vni,
    pub vip: IpAddr,
}

/// `services`: services (of one VNI, or all) with their backends and the
/// flows tracked to each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub vni: Option<Vni>,
}

/// `conntrack`: tracked flows to VIPs (of one VNI, or all), the first
/// `limit` (default 1000) in order of VNI, VIP, port, client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    #[serde(default)]
    pub vni: Option<Vni>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// This node's endpoint on the ingress network, which the host link's host
/// side stands for (its MAC is derived from the address: `02:42:` and the
/// address, as Docker derives them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressEndpoint {
    pub vni: Vni,
    pub ip: Ipv4Addr,
}

/// `host_link_set`: the dataplane's TAP in its own (the host's) network
/// namespace, through which published ports come in and containers reach
/// the outside, with the host's firewall table `ip vxnet` (nftables):
/// published ports are DNATed to the link's second address, egress from
/// the link's subnet is masqueraded. Nothing else of the host's firewall
/// is touched; the table and the TAP go with `host_link_del` and when the
/// dataplane stops. Setting it again with other settings replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLinkSet {
    /// The TAP's name (`vxnet0` by default).
    #[serde(default)]
    pub ifname: Option<String>,
    /// vxnet's own subnet on the link, at most /22 (room for the egress
    /// addresses): the host's side gets its first address.
    pub subnet: Ipv4Net,
    /// Bytes (the ingress network's MTU, so the host tells clients the
    /// path MTU).
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ingress: Option<IngressEndpoint>,
    #[serde(default)]
    pub owner: Owner,
}

/// `host_link_del`: removes the host link, its firewall table and every
/// published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLinkDel {}

/// `host_link`: the host link, if set up, with what the host's firewall
/// holds of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLink {}

/// Where a published port's connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PortTo {
    /// Ingress mode: balanced over this VIP's backends (its service on the
    /// port's VNI, the ingress network) with the VIP's Maglev table.
    Vip(IpAddr),
    /// Host mode: balanced over these local tasks.
    Backends(Vec<BackendSpec>),
}

/// `port_set`: publishes `protocol`/`published` on the host (through the
/// host link), leading to `target` on the tasks of network `vni`, or
/// changes where it leads. Refused without a host link, when `vni` is no
/// network here, or (ingress mode) when the VIP is no service on it: set
/// those first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSet {
    #[serde(default)]
    pub protocol: PortProtocol,
    pub published: u16,
    pub target: u16,
    pub vni: Vni,
    pub to: PortTo,
    #[serde(default)]
    pub owner: Owner,
}

/// `port_del`: unpublishes a port (its firewall element goes at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDel {
    #[serde(default)]
    pub protocol: PortProtocol,
    pub published: u16,
}

/// `ports`: the published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {}

/// Every request, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Attach(Attach),
    Detach(Detach),
    PeerAdd(PeerAdd),
    PeerDel(PeerDel),
    FloodAdd(FloodAdd),
    FloodDel(FloodDel),
    Stats(Stats),
    Fdb(Fdb),
    Endpoints(Endpoints),
    Show(Show),
    NetworkAdd(NetworkAdd),
    NetworkDel(NetworkDel),
    Networks(Networks),
    VtepAdd(VtepAdd),
    VtepDel(VtepDel),
    Vteps(Vteps),
    Rekey(Rekey),
    Sa(Sa),
    ServiceSet(ServiceSet),
    ServiceDel(ServiceDel),
    Services(Services),
    Conntrack(Conntrack),
    HostLinkSet(HostLinkSet),
    HostLinkDel(HostLinkDel),
    HostLink(HostLink),
    PortSet(PortSet),
    PortDel(PortDel),
    Ports(Ports),
    Trace(Trace),
    TraceWire(TraceWire),
    Capture(Capture),
    LiveTrace(LiveTrace),
}

calls!(Request;
    Attach(Attach) -> EndpointInfo,
    Detach(Detach) -> Vec<EndpointInfo>,
    PeerAdd(PeerAdd) -> (),
    PeerDel(PeerDel) -> (),
    FloodAdd(FloodAdd) -> (),
    FloodDel(FloodDel) -> (),
    Stats(Stats) -> StatsReport,
    Fdb(Fdb) -> Vec<FdbEntry>,
    Endpoints(Endpoints) -> Vec<EndpointInfo>,
    Show(Show) -> ShowReport,
    NetworkAdd(NetworkAdd) -> (),
    NetworkDel(NetworkDel) -> (),
    Networks(Networks) -> Vec<NetworkInfo>,
    VtepAdd(VtepAdd) -> (),
    VtepDel(VtepDel) -> (),
    Vteps(Vteps) -> Vec<VtepInfo>,
    Rekey(Rekey) -> Vec<IpAddr>,
    Sa(Sa) -> Vec<SaEntry>,
    ServiceSet(ServiceSet) -> (),
    ServiceDel(ServiceDel) -> (),
    Services(Services) -> Vec<ServiceInfo>,
    Conntrack(Conntrack) -> ConntrackReport,
    HostLinkSet(HostLinkSet) -> HostLinkInfo,
    HostLinkDel(HostLinkDel) -> (),
    HostLink(HostLink) -> Option<HostLinkInfo>,
    PortSet(PortSet) -> (),
    PortDel(PortDel) -> (),
    Ports(Ports) -> Vec<PortInfo>,
    Trace(Trace) -> TraceReport,
    TraceWire(TraceWire) -> TraceReport,
    Capture(Capture) -> CaptureMsg,
    LiveTrace(LiveTrace) -> LiveMsg,
);

/// How an endpoint is plugged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// A TAP owned by the dataplane, inside the container's namespace.
    Native,
    /// Another runtime's veth, bridged to the network's shared TAP.
    Sidecar,
}

impl std::fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointKind::Native => "native",
            EndpointKind::Sidecar => "sidecar",
        })
    }
}

/// An attached endpoint as listed by `vxnet dp endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointInfo {
    pub id: u32,
    pub vni: Vni,
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    /// Bytes.
    pub mtu: u32,
    /// Interface name inside the namespace (native) or the veth (sidecar).
    pub ifname: String,
    /// Namespace (native) or bridge (sidecar) it lives in.
    pub location: String,
    pub kind: EndpointKind,
    /// The dataplane's TAP for it.
    pub tap: String,
    /// Default routes installed with it.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// The largest MTU the underlay carries now for its network, bytes:
    /// less than `mtu` when the underlay's MTU shrank after the attach (its
    /// too-big frames are then answered with ICMP, so TCP adapts).
    #[serde(default)]
    pub path_mtu: u32,
    #[serde(default)]
    pub owner: Owner,
}

/// What an FDB entry forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdbKind {
    /// An endpoint on this host.
    Local,
    /// An endpoint behind another host's VTEP.
    Remote,
    /// A VTEP that gets broadcast and unknown unicast of the VNI.
    Flood,
}

impl std::fmt::Display for FdbKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FdbKind::Local => "local",
            FdbKind::Remote => "remote",
            FdbKind::Flood => "flood",
        })
    }
}

/// One forwarding entry as listed by `vxnet dp fdb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbEntry {
    pub vni: Vni,
    /// `None` for a flood entry.
    pub mac: Option<MacAddr>,
    pub ips: Vec<IpAddr>,
    pub kind: FdbKind,
    /// The local endpoint's id.
    #[serde(default)]
    pub endpoint: Option<u32>,
    /// The VTEP (remote and flood entries).
    #[serde(default)]
    pub vtep: Option<IpAddr>,
    #[serde(default)]
    pub owner: Owner,
}

/// `vxnet dp stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsReport {
    pub workers: usize,
    /// Every counter, in a fixed order.
    pub counters: Vec<CounterValue>,
    /// Every drop reason, grouped by stage.
    pub drops: Vec<DropCount>,
}

/// One counter, summed over the workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterValue {
    pub name: String,
    pub value: u64,
    /// What it counts.
    pub help: String,
}

/// Packets dropped for one reason at one stage of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropCount {
    pub stage: String,
    pub reason: String,
    pub count: u64,
    /// What the reason means.
    pub help: String,
}

/// A declared network, as listed by `vxnet dp network ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInfo {
    pub vni: Vni,
    pub encrypted: bool,
    /// Local endpoints on it.
    pub endpoints: usize,
    /// Remote endpoints known on it.
    pub peers: usize,
    /// Default MTU of endpoints attached to it, bytes (what the underlay
    /// carries now, unless the dataplane was started with `--mtu`).
    pub mtu: u32,
    /// Flooded frames are replicated to other hosts.
    #[serde(default = "yes")]
    pub flood: bool,
    /// Frames per second it may flood from this host.
    #[serde(default)]
    pub flood_rate: u32,
    /// What replication did on it since the dataplane started.
    #[serde(default)]
    pub flooding: FloodStats,
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    #[serde(default)]
    pub egress: bool,
    #[serde(default)]
    pub ingress: bool,
    #[serde(default)]
    pub owner: Owner,
}

/// The host link as `vxnet dp host-link` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLinkInfo {
    pub ifname: String,
    pub subnet: Ipv4Net,
    /// The host side's address (the subnet's first).
    pub host_ip: Ipv4Addr,
    /// Where the host's firewall sends published ports (the second).
    pub mesh_ip: Ipv4Addr,
    /// The host side's MAC.
    pub mac: MacAddr,
    pub mtu: u32,
    #[serde(default)]
    pub ingress: Option<IngressEndpoint>,
    /// The host's firewall holds vxnet's table with its chains as made.
    pub firewall_ok: bool,
    /// Why the firewall could not be read or written, if so.
    #[serde(default)]
    pub firewall_error: Option<String>,
    /// Local container addresses with an egress address.
    pub egress_addresses: usize,
    #[serde(default)]
    pub owner: Owner,
}

/// A published port as `vxnet dp ports` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortInfo {
    pub protocol: PortProtocol,
    pub published: u16,
    pub target: u16,
    pub vni: Vni,
    /// For host mode, the backends with their MACs, sorted by address.
    pub to: PortTo,
    /// The host's firewall sends the port to the dataplane (its element is
    /// in vxnet's set).
    pub in_firewall: bool,
    #[serde(default)]
    pub owner: Owner,
}

/// Head-end replication of one network on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodStats {
    /// Broadcast, multicast and unknown-unicast frames replicated.
    pub frames: u64,
    /// Datagrams they became (one per VTEP with endpoints on the network).
    pub copies: u64,
    /// Frames dropped by the flood rate.
    pub rate_limited: u64,
    /// Frames kept on this host because flooding is off.
    pub suppressed: u64,
}

/// A host whose key this dataplane knows (`vxnet dp vtep ls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtepInfo {
    pub vtep: IpAddr,
    pub pubkey: PublicKey,
    /// A handshake completed: encrypted traffic can flow.
    pub established: bool,
    pub generation: u32,
    /// A rotation is under way.
    pub rotating: bool,
    #[serde(default)]
    pub owner: Owner,
}

/// Which way an SA protects traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaDirection {
    In,
    Out,
}

/// Whether an SA is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaState {
    Active,
    /// Inbound in its grace period after a rotation, or outbound not yet
    /// used (make-before-break).
    Standby,
}

/// One security association (`vxnet dp sa`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaEntry {
    /// SPI as 0x-prefixed hex, as dissectors show it.
    pub spi: String,
    pub direction: SaDirection,
    /// The peer host's VTEP address.
    pub peer: IpAddr,
    pub vni: u32,
    pub generation: u32,
    pub packets: u64,
    pub age_secs: f64,
    pub state: SaState,
    /// Source and destination VTEP of the packets this SA protects.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// AES-GCM key and salt in hex; only with `show_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// A service as `vxnet dp services` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    pub vni: Vni,
    pub vip: IpAddr,
    /// The MAC the dataplane answers ARP/ND for the VIP with
    /// (`06:56:` and the address's last four bytes).
    pub mac: MacAddr,
    /// Entries of its Maglev table.
    pub table_size: u32,
    /// Sorted by address: the order every host builds its table in.
    pub backends: Vec<BackendInfo>,
    #[serde(default)]
    pub owner: Owner,
}

/// A backend of a listed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendInfo {
    pub ip: IpAddr,
    pub mac: MacAddr,
    /// Flows tracked to it through the VIP.
    pub flows: usize,
}

/// `vxnet dp conntrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackReport {
    /// Flows tracked (matching the filter); `entries` lists the first
    /// `limit` of them.
    pub total: usize,
    pub entries: Vec<ConntrackEntry>,
}

/// The transport protocol of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowProto {
    Tcp,
    Udp,
}

impl std::fmt::Display for FlowProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowProto::Tcp => "tcp",
            FlowProto::Udp => "udp",
        })
    }
}

/// Where a tracked flow is in its life (it decides the flow's timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// TCP: SYN seen, no answer yet (60 s).
    SynSent,
    /// TCP: answered (24 h idle).
    Established,
    /// TCP: FIN seen one way (120 s).
    Closing,
    /// TCP: FIN both ways, or RST (10 s).
    Closed,
    /// UDP: no answer yet (30 s).
    Unreplied,
    /// UDP: answered (30 s).
    Replied,
    /// UDP: traffic after an answer, a stream (120 s).
    Assured,
}

impl std::fmt::Display for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowState::SynSent => "syn_sent",
            FlowState::Established => "established",
            FlowState::Closing => "closing",
            FlowState::Closed => "closed",
            FlowState::Unreplied => "unreplied",
            FlowState::Replied => "replied",
            FlowState::Assured => "assured",
        })
    }
}

/// What a tracked flow is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// To a service VIP.
    #[default]
    Vip,
    /// To a published port (from the host link; `vip` is the mesh
    /// address, `port` the published port).
    Published,
    /// A routing-mesh flow arriving from another node, whose replies go
    /// back there (`vip` and `backend` are the task).
    Return,
}

/// One tracked flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackEntry {
    /// The backend's network.
    pub vni: Vni,
    #[serde(default)]
    pub kind: FlowKind,
    pub proto: FlowProto,
    pub client: IpAddr,
    pub client_port: u16,
    pub vip: IpAddr,
    /// The destination port, the same on the backend (VIP mode keeps it)
    /// but for a published port (`backend_port`).
    pub port: u16,
    pub backend: IpAddr,
    #[serde(default)]
    pub backend_port: u16,
    pub state: FlowState,
    pub age_secs: f64,
    pub idle_secs: f64,
    /// Seconds until it expires unless a packet comes.
    pub expires_secs: f64,
    /// Packets client → backend, and back.
    pub packets_out: u64,
    pub packets_in: u64,
}

/// How the dataplane's workers wait for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    /// Spin: lowest latency, a core per worker.
    Busy,
    /// Spin a while after the last packet, then sleep in epoll.
    Adaptive,
    /// Always sleep in epoll.
    Interrupt,
}

impl std::fmt::Display for PollMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PollMode::Busy => "busy",
            PollMode::Adaptive => "adaptive",
            PollMode::Interrupt => "interrupt",
        })
    }
}

/// `vxnet dp show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowReport {
    pub version: String,
    /// Random per process start: a changed value tells a client the
    /// dataplane restarted and lost what it was told.
    pub instance: u64,
    pub local_vtep: IpAddr,
    pub port: u16,
    pub workers: usize,
    pub poll: PollMode,
    pub gso: bool,
    pub gro: bool,
    pub endpoints: usize,
    pub vnis: usize,
    /// The host's X25519 public key.
    pub public_key: PublicKey,
    /// MTU of the interface holding the local VTEP address, bytes, as last
    /// read (every second); 0 from a dataplane that does not say.
    #[serde(default)]
    pub underlay_mtu: u32,
    /// Frames per second each network may flood unless it says.
    #[serde(default)]
    pub flood_rate: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Call;

    #[test]
    fn request_json_shape() {
        let r: Request = serde_json::from_str(
            r#"{"op":"peer_add","vni":4096,"mac":"02:42:0a:00:00:03","ips":["10.0.0.3"],"vtep":"192.0.2.2"}"#,
        )
        .unwrap();
        assert!(
            matches!(r, Request::PeerAdd(PeerAdd { vni, owner: Owner::User, .. }) if vni.get() == 4096)
        );
        assert_eq!(
            serde_json::to_string(&Stats {}.into_request()).unwrap(),
            r#"{"op":"stats"}"#
        );
        let a: Request = serde_json::from_str(
            r#"{"op":"attach","target":{"netns":"web1"},"vni":5,"ips":["10.0.0.2/24","fd00::2/64"]}"#,
        )
        .unwrap();
        let Request::Attach(a) = a else {
            panic!("not attach")
        };
        assert_eq!(a.ips[0].to_string(), "10.0.0.2/24");
        // Flooding is on unless a network says otherwise.
        let n: Request = serde_json::from_str(r#"{"op":"network_add","vni":5}"#).unwrap();
        assert!(matches!(
            n,
            Request::NetworkAdd(NetworkAdd {
                flood: true,
                flood_rate: None,
                ..
            })
        ));
        assert_eq!(a.ips[0].addr().to_string(), "10.0.0.2");
        let r: Request = serde_json::from_str(
            r#"{"op":"service_set","vni":4096,"vip":"10.0.0.100","backends":[{"ip":"10.0.0.2","mac":"02:42:0a:00:00:02"},{"ip":"10.0.0.3"}]}"#,
        )
        .unwrap();
        let Request::ServiceSet(s) = r else {
            panic!("not service_set")
        };
        assert_eq!((s.backends.len(), s.backends[1].mac), (2, None));
        assert_eq!(
            serde_json::to_string(
                &Conntrack {
                    vni: None,
                    limit: None
                }
                .into_request()
            )
            .unwrap(),
            r#"{"op":"conntrack","vni":null,"limit":null}"#
        );
        for bad in [
            r#"{"op":"peer_add","vni":0,"mac":"02:42:0a:00:00:03","vtep":"192.0.2.2"}"#,
            r#"{"op":"peer_add","vni":16777216,"mac":"02:42:0a:00:00:03","vtep":"192.0.2.2"}"#,
            r#"{"op":"peer_add","vni":5,"mac":"02:42:0a:00:00","vtep":"192.0.2.2"}"#,
            r#"{"op":"peer_add","vni":5,"mac":"02:42:0a:00:00:03","vtep":"192.0.2.300"}"#,
            // The typo of issue 8: `ip` for `ips` is refused, not dropped.
            r#"{"op":"peer_add","vni":5,"mac":"02:42:0a:00:00:03","ip":"10.0.0.3","vtep":"192.0.2.2"}"#,
            r#"{"op":"stats","extra":1}"#,
            r#"{"op":"attach","target":{"netns":"n"},"vni":5,"ips":["10.0.0.2"]}"#,
            r#"{"op":"vtep_add","vtep":"192.0.2.2","pubkey":"not base64"}"#,
            r#"{"op":"network_add","vni":5,"owner":"someone"}"#,
            r#"{"op":"network_add","vni":5,"flood":"no"}"#,
            r#"{"op":"service_set","vni":4096,"vip":"10.0.0.300"}"#,
            r#"{"op":"service_set","vni":0,"vip":"10.0.0.1"}"#,
            r#"{"op":"service_set","vni":1,"vip":"10.0.0.1","backends":[{"ip":"10.0.0.2","mac":"zz"}]}"#,
            r#"{"op":"service_set","vni":1,"vip":"10.0.0.1","backends":[{"addr":"10.0.0.2"}]}"#,
            r#"{"op":"service_del","vni":1}"#,
            r#"{"op":"conntrack","vni":1,"max":5}"#,
            r#"{"op":"nope"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
