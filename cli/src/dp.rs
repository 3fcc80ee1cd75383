//! `vxnet dp ...`: talk to the local dataplane over its API socket.
//!
//! Arguments are checked here with the same parsers the API uses (VNI range,
//! MAC, ADDR/PLEN), so a typo is reported before any request is sent.

use crate::output::{self, Format};
use clap::{ArgGroup, Args, Subcommand};
use serde::de::DeserializeOwned;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use vxnet_api::client::{Client, Server, transport_error};
use vxnet_api::dp::{
    self, AttachTarget, BackendSpec, ConntrackReport, DEFAULT_SOCKET, DetachTarget, EndpointInfo,
    FdbEntry, NetworkInfo, Owner, Request, SaEntry, ServiceInfo, ShowReport, StatsReport, VtepInfo,
};
use vxnet_api::{ApiError, Call, IpNet, MacAddr, PublicKey, Vni};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet dp show
  vxnet dp attach --netns web1 --vni 4096 --ip 10.0.0.2/24 --gateway 10.0.0.1
  vxnet dp peer add --vni 4096 --mac 02:42:0a:00:00:03 --ip 10.0.0.3 --vtep 192.0.2.2
  vxnet dp stats --format json")]
pub struct DpArgs {
    /// Path of the dataplane's API socket.
    #[arg(long, global = true, env = "VXNET_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: DpCommand,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum DpCommand {
    /// Attach an endpoint to a VXLAN network.
    ///
    /// Native attach (--netns) creates a TAP inside the network namespace
    /// and gives it the addresses; sidecar attach (--veth) plugs an existing
    /// host-side veth into the network's bridge.
    #[command(after_help = "\
Examples:
  vxnet dp attach --netns web1 --vni 4096 --ip 10.0.0.2/24 --gateway 10.0.0.1
  vxnet dp attach --netns /proc/1234/ns/net --vni 4096 --ip 10.0.0.2/24 --ip fd00::2/64
  vxnet dp attach --veth veth1a2b --vni 4096 --ip 10.0.0.5/24")]
    #[command(group(ArgGroup::new("target").required(true).args(["netns", "veth"])))]
    Attach(AttachArgs),

    /// Detach endpoints, by id, by namespace or by veth.
    #[command(after_help = "\
Examples:
  vxnet dp detach --id 3
  vxnet dp detach --netns web1
  vxnet dp detach --netns web1 --ifname eth1
  vxnet dp detach --veth veth1a2b")]
    #[command(group(ArgGroup::new("target").required(true).args(["id", "netns", "veth"])))]
    Detach(DetachArgs),

    /// Add or remove remote endpoints (MAC and IPs behind a VTEP).
    #[command(subcommand)]
    Peer(PeerCommand),

    /// Add or remove flood VTEPs, which receive broadcast and unknown
    /// unicast frames of a VNI.
    #[command(subcommand)]
    Flood(FloodCommand),

    /// Show packet counters and drops.
    ///
    /// The table lists non-zero counters and non-zero drops grouped by
    /// pipeline stage; --all lists zeros too.
    #[command(after_help = "\
Examples:
  vxnet dp stats
  vxnet dp stats --all
  vxnet dp stats --format json")]
    Stats {
        /// Also list counters and drop reasons that are zero.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        format: FormatArg,
    },

    /// List forwarding entries: local endpoints, remote peers, flood VTEPs.
    #[command(after_help = "\
Examples:
  vxnet dp fdb
  vxnet dp fdb --vni 4096 --format json")]
    Fdb {
        /// Only entries of this VNI.
        #[arg(long, value_parser = parse_vni)]
        vni: Option<Vni>,
        #[command(flatten)]
        format: FormatArg,
    },

    /// List attached endpoints.
    Endpoints {
        #[command(flatten)]
        format: FormatArg,
    },

    /// Show the dataplane's configuration and state summary, including
    /// this host's public key (give it to the other hosts' `vtep add`).
    Show {
        #[command(flatten)]
        format: FormatArg,
    },

    /// Declare networks (VNIs) and whether their traffic is encrypted.
    #[command(subcommand)]
    Network(NetworkCommand),

    /// Tell the dataplane other hosts' public keys, so that encrypted
    /// networks can reach them (static mode, without a control plane).
    #[command(subcommand)]
    Vtep(VtepCommand),

    /// Start a key rotation now, with one host or with every host.
    #[command(after_help = "\
Examples:
  vxnet dp rekey
  vxnet dp rekey --vtep 192.0.2.11")]
    Rekey {
        /// Only with this host (default: all).
        #[arg(long, value_name = "IP")]
        vtep: Option<IpAddr>,
    },

    /// List the security associations (SPI, direction, peer, generation,
    /// packets, age).
    ///
    /// --show-keys also prints keys and salts, to decode captures with a
    /// dissector; the dataplane refuses it unless started with
    /// --allow-key-export.
    #[command(after_help = "\
Examples:
  vxnet dp sa
  vxnet dp sa --show-keys --format json")]
    Sa {
        /// Print AES-GCM keys and salts too.
        #[arg(long)]
        show_keys: bool,
        #[command(flatten)]
        format: FormatArg,
    },

    /// Program service VIPs: connections from the network to a VIP (any
    /// port, TCP and UDP) are spread over its backends by Maglev hashing,
    /// and each stays on its backend (conntrack). Ping to a VIP is answered.
    #[command(subcommand)]
    Service(ServiceCommand),

    /// List services: each VIP, its MAC, its backends and the flows
    /// tracked to each.
    #[command(after_help = "\
Examples:
  vxnet dp services
  vxnet dp services --vni 4096 --format json")]
    Services {
        /// Only services of this VNI.
        #[arg(long, value_parser = parse_vni)]
        vni: Option<Vni>,
        #[command(flatten)]
        format: FormatArg,
    },

    /// List the flows to service VIPs that the dataplane tracks
    /// (conntrack): client, VIP and port, backend, state and timeout.
    #[command(after_help = "\
Examples:
  vxnet dp conntrack
  vxnet dp conntrack --vni 4096 --limit 50 --format json")]
    Conntrack {
        /// Only flows of this VNI.
        #[arg(long, value_parser = parse_vni)]
        vni: Option<Vni>,
        /// List at most this many flows (the total is always given).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        format: FormatArg,
    },

    /// Trace one packet through this host's dataplane, sending nothing.
    ///
    /// Builds what the local endpoint with address --from would send to
    /// --to (its ARP or neighbour solicitation first), runs it through the
    /// engine's real code as a dry run, and prints each stage: TAP
    /// receive, anti-spoof, ARP/ND, VIP and conntrack, FDB, SA, outer
    /// header. A drop names its stage, its reason (as in `vxnet dp stats`)
    /// and a fix, and the command exits 1. The remote host's half needs the
    /// control plane: `vxnet trace`.
    #[command(after_help = "\
Examples:
  vxnet dp trace --from 10.0.0.2 --to 10.0.0.3
  vxnet dp trace --from 10.0.0.2 --to 10.0.0.100 --proto tcp --dport 80
  vxnet dp trace --from 10.0.0.2 --to 10.0.0.3 --size 1450 --df --format json")]
    Trace {
        /// The local endpoint's address.
        #[arg(long, value_name = "IP")]
        from: IpAddr,
        /// The destination address.
        #[arg(long, value_name = "IP")]
        to: IpAddr,
        /// The source's network, when several local endpoints have --from.
        #[arg(long, value_parser = parse_vni)]
        vni: Option<Vni>,
        /// Send to this MAC without ARP/ND, as a container whose neighbour
        /// cache holds it would.
        #[arg(long, value_parser = parse_unicast_mac, value_name = "MAC")]
        dst_mac: Option<MacAddr>,
        #[command(flatten)]
        packet: crate::trace::PacketArgs,
        #[command(flatten)]
        format: FormatArg,
    },

    /// Run a datagram through this host's receive path, as if it came
    /// from --src: the remote half of a trace (the `outer.datagram` of
    /// `vxnet dp trace --format json` on the sending host). Nothing is
    /// delivered; `vxnet trace` does this for you over the control plane.
    /// Exits 1 when the datagram is dropped.
    #[command(after_help = "\
Examples:
  vxnet dp trace-wire --src 192.0.2.10 --datagram CAAAAAAQAAACQgoAAAMCQgoAAAIIAEU...
  vxnet dp trace-wire --src 192.0.2.10 --datagram \"$(vxnet dp trace --from 10.0.0.2 --to 10.0.0.3 --format json | jq -r .outer.datagram)\"")]
    TraceWire {
        /// The sending host's VTEP.
        #[arg(long, value_name = "IP")]
        src: IpAddr,
        /// The UDP payload (VXLAN or ESP), base64.
        #[arg(long, value_name = "BASE64")]
        datagram: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show or program the host link: the dataplane's TAP in the host's
    /// namespace (vxnet0) and the host firewall's table `ip vxnet`, through
    /// which published ports come in and containers reach the outside.
    #[command(subcommand)]
    HostLink(HostLinkCommand),

    /// Publish or unpublish a port on the host (through the host link).
    #[command(subcommand)]
    Port(PortCommand),

    /// List published ports, where they lead, and whether the host's
    /// firewall sends them to the dataplane.
    #[command(after_help = "\
Examples:
  vxnet dp ports
  vxnet dp ports --format json")]
    Ports {
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostLinkCommand {
    /// Show the host link (nothing when there is none).
    #[command(after_help = "Example:\n  vxnet dp host-link show --format json")]
    Show {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Set up (or replace) the host link. The host side gets the subnet's
    /// first address; published ports are sent to the second; egress
    /// addresses start at the 257th and are masqueraded by the host.
    #[command(after_help = "\
Examples:
  vxnet dp host-link set --subnet 198.18.0.0/16
  vxnet dp host-link set --subnet 198.18.0.0/16 --ingress 4096,10.0.0.2 --mtu 1450")]
    Set {
        /// vxnet's own subnet on the link, a /22 or larger.
        #[arg(long, value_name = "CIDR")]
        subnet: vxnet_api::Ipv4Net,
        /// The TAP's name (default vxnet0).
        #[arg(long)]
        ifname: Option<String>,
        /// Bytes (default: the dataplane's default MTU).
        #[arg(long)]
        mtu: Option<u32>,
        /// This node's endpoint on the ingress network, VNI,IPv4.
        #[arg(long, value_name = "VNI,IP", value_parser = parse_ingress)]
        ingress: Option<dp::IngressEndpoint>,
    },
    /// Remove the host link, its firewall table and every published port.
    Del,
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Publish PROTOCOL/PUBLISHED on the host, leading to TARGET on the
    /// tasks of a network: balanced over a VIP's backends (--vip, the
    /// routing mesh) or over given local backends (--backend, host mode).
    #[command(after_help = "\
Examples:
  vxnet dp port set --published 8080 --target 80 --vni 4096 --vip 10.0.0.100
  vxnet dp port set --protocol udp --published 5353 --target 53 --vni 4097 --backend 10.0.1.5")]
    #[command(group(ArgGroup::new("to").required(true).args(["vip", "backends"])))]
    Set {
        #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
        protocol: ProtocolArg,
        /// The host's port (1-65535).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..), allow_negative_numbers = true)]
        published: u16,
        /// The tasks' port (1-65535).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..), allow_negative_numbers = true)]
        target: u16,
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
        #[arg(long, value_name = "IP")]
        vip: Option<IpAddr>,
        #[arg(long = "backend", value_name = "IP[,MAC]", value_parser = parse_backend)]
        backends: Vec<BackendSpec>,
    },
    /// Unpublish a port.
    #[command(after_help = "Example:\n  vxnet dp port del --published 8080")]
    Del {
        #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
        protocol: ProtocolArg,
        /// The host's port (1-65535).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..), allow_negative_numbers = true)]
        published: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

impl From<ProtocolArg> for dp::PortProtocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => dp::PortProtocol::Tcp,
            ProtocolArg::Udp => dp::PortProtocol::Udp,
        }
    }
}

/// `VNI,IPv4`.
fn parse_ingress(s: &str) -> Result<dp::IngressEndpoint, String> {
    let (vni, ip) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}' is not VNI,IP (e.g. 4096,10.0.0.2)"))?;
    Ok(dp::IngressEndpoint {
        vni: parse_vni(vni)?,
        ip: ip
            .parse()
            .map_err(|_| format!("'{ip}' is not an IPv4 address"))?,
    })
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service, or replace its whole backend set at once.
    ///
    /// Without --backend the set is empty: new connections to the VIP are
    /// refused (TCP gets a reset) and counted as lb/no_backend. Flows to
    /// backends that stay are never moved; flows to a removed backend end.
    #[command(after_help = "\
Examples:
  vxnet dp service set --vni 4096 --vip 10.0.0.100 --backend 10.0.0.2 --backend 10.0.0.3
  vxnet dp service set --vni 4096 --vip fd00::100 --backend fd00::3,02:42:0a:00:00:03
  vxnet dp service set --vni 4096 --vip 10.0.0.100")]
    Set {
        /// VXLAN network identifier, 1 to 16777215.
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
        /// The virtual IP: an unused address of the network.
        #[arg(long, value_name = "IP")]
        vip: IpAddr,
        /// A backend's address, and optionally its MAC after a comma
        /// (default: the MAC the dataplane knows for the address). Repeat.
        #[arg(long = "backend", value_name = "IP[,MAC]", value_parser = parse_backend)]
        backends: Vec<BackendSpec>,
    },
    /// Remove a service; its tracked flows end.
    #[command(after_help = "Example:\n  vxnet dp service del --vni 4096 --vip 10.0.0.100")]
    Del {
        /// VXLAN network identifier, 1 to 16777215.
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
        /// The service's virtual IP.
        #[arg(long, value_name = "IP")]
        vip: IpAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Declare a network; --encrypted makes every frame between hosts ESP.
    /// Its broadcast, multicast and unknown-unicast frames are replicated
    /// to every host with endpoints on it, unless --no-flood.
    #[command(after_help = "\
Examples:
  vxnet dp network add --vni 4096
  vxnet dp network add --vni 4097 --encrypted
  vxnet dp network add --vni 4098 --gateway 10.0.3.1 --egress
  vxnet dp network add --vni 4099 --no-flood
  vxnet dp network add --vni 4100 --flood-rate 200")]
    Add {
        /// VXLAN network identifier, 1 to 16777215.
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
        /// Encrypt and authenticate this network's traffic between hosts.
        #[arg(long)]
        encrypted: bool,
        /// The network's gateway (answered by the dataplane: ARP/ND, ping,
        /// and routing of what containers send to it); one per family.
        #[arg(long = "gateway", value_name = "IP")]
        gateways: Vec<IpAddr>,
        /// Containers reach the outside through the host link.
        #[arg(long)]
        egress: bool,
        /// This is the swarm's ingress network (routing-mesh flows).
        #[arg(long)]
        ingress: bool,
        /// Keep flooded frames (broadcast, multicast, unknown unicast) on
        /// this host: they reach only its local endpoints.
        #[arg(long)]
        no_flood: bool,
        /// Frames per second this network may flood from this host (the
        /// dataplane's --flood-rate by default).
        #[arg(long, value_name = "FRAMES", conflicts_with = "no_flood",
              value_parser = clap::value_parser!(u32).range(1..))]
        flood_rate: Option<u32>,
    },
    /// Forget a network declaration (refused while endpoints are attached).
    Del {
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
    },
    /// List networks.
    Ls {
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum VtepCommand {
    /// Add a host's public key (from `vxnet dp show` on that host).
    #[command(after_help = "\
Examples:
  vxnet dp vtep add --vtep 192.0.2.11 --pubkey 3q2+7w...=")]
    Add {
        /// The host's underlay address.
        #[arg(long, value_name = "IP")]
        vtep: IpAddr,
        /// Its X25519 public key, base64 (44 characters).
        #[arg(long, value_name = "KEY", value_parser = parse_pubkey)]
        pubkey: PublicKey,
    },
    /// Forget a host's key.
    Del {
        #[arg(long, value_name = "IP")]
        vtep: IpAddr,
    },
    /// List hosts with keys and whether a handshake completed.
    Ls {
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Network namespace to create the endpoint's TAP in: a name under
    /// /run/netns or a path such as /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH", value_parser = parse_nonempty)]
    pub netns: Option<String>,
    /// Existing host-side veth to plug into the network's bridge.
    #[arg(long, value_name = "HOSTIF", value_parser = parse_ifname,
          conflicts_with_all = ["mtu", "gateways", "ifname"])]
    pub veth: Option<String>,
    /// VXLAN network identifier, 1 to 16777215.
    #[arg(long, value_parser = parse_vni)]
    pub vni: Vni,
    /// Address with prefix length, e.g. 10.0.0.2/24 (repeat for more).
    #[arg(long = "ip", value_name = "ADDR/PLEN", required = true, value_parser = parse_ipnet)]
    pub ips: Vec<IpNet>,
    /// MAC address (default: derived from the first address, 02:42:...).
    #[arg(long, value_parser = parse_unicast_mac)]
    pub mac: Option<MacAddr>,
    /// Interface MTU (default: what the underlay carries, 1450 on a
    /// 1500-byte IPv4 underlay; see `vxnet dp show`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(68..=65535))]
    pub mtu: Option<u32>,
    /// Default gateway; at most one IPv4 and one IPv6.
    #[arg(long = "gateway", value_name = "IP")]
    pub gateways: Vec<IpAddr>,
    /// Interface name inside the namespace (default eth0).
    #[arg(long, value_parser = parse_ifname)]
    pub ifname: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Endpoint id, as listed by `vxnet dp endpoints`.
    #[arg(long)]
    pub id: Option<u32>,
    /// Every endpoint in this network namespace.
    #[arg(long, value_name = "NAME|PATH", value_parser = parse_nonempty)]
    pub netns: Option<String>,
    /// Only this interface of --netns.
    #[arg(long, value_parser = parse_ifname)]
    pub ifname: Option<String>,
    /// The endpoint plugged in through this host-side veth.
    #[arg(long, value_name = "HOSTIF", value_parser = parse_ifname)]
    pub veth: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Tell the dataplane that MAC (and its IPs) lives behind VTEP.
    #[command(after_help = "\
Example:
  vxnet dp peer add --vni 4096 --mac 02:42:0a:00:00:03 --ip 10.0.0.3 --vtep 192.0.2.2")]
    Add {
        /// VXLAN network identifier, 1 to 16777215.
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
        /// The remote endpoint's MAC address.
        #[arg(long, value_parser = parse_unicast_mac)]
        mac: MacAddr,
        /// Overlay address of the endpoint, answered by the ARP/ND proxy
        /// (repeat for more).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
        /// Underlay address of the host running the endpoint.
        #[arg(long, value_parser = parse_vtep)]
        vtep: IpAddr,
    },
    /// Forget a remote endpoint, or only some of its addresses.
    #[command(after_help = "\
Examples:
  vxnet dp peer del --vni 4096 --mac 02:42:0a:00:00:03
  vxnet dp peer del --vni 4096 --mac 02:42:0a:00:00:03 --ip fd00::3")]
    Del {
        /// VXLAN network identifier, 1 to 16777215.
        #[arg(long, value_parser = parse_vni)]
        vni: Vni,
        /// The remote endpoint's MAC address.
        #[arg(long, value_parser = parse_unicast_mac)]
        mac: MacAddr,
        /// Only this address (repeat for more); the whole entry without.
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FloodCommand {
    /// Send the VNI's broadcast and unknown unicast frames to VTEP too.
    #[command(after_help = "Example:\n  vxnet dp flood add --vni 4096 --vtep 192.0.2.2")]
    Add(FloodArgs),
    /// Stop flooding the VNI to VTEP.
    #[command(after_help = "Example:\n  vxnet dp flood del --vni 4096 --vtep 192.0.2.2")]
    Del(FloodArgs),
}

#[derive(Debug, Args)]
pub struct FloodArgs {
    /// VXLAN network identifier, 1 to 16777215.
    #[arg(long, value_parser = parse_vni)]
    pub vni: Vni,
    /// Underlay address of the remote host.
    #[arg(long, value_parser = parse_vtep)]
    pub vtep: IpAddr,
}

/// `ADDR/PLEN`: an interface address with its prefix length.
pub fn parse_ipnet(s: &str) -> Result<IpNet, String> {
    let Some((a, p)) = s.split_once('/') else {
        return Err(format!(
            "'{s}' needs a prefix length, like 10.0.0.2/24 or fd00::2/64"
        ));
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("'{a}' is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix length '{p}' must be a number from 0 to {max}"))?;
    IpNet::new(addr, prefix).map_err(|e| e.to_string())
}

pub fn parse_pubkey(s: &str) -> Result<PublicKey, String> {
    s.parse().map_err(|e| {
        format!(
            "'{s}' is not an X25519 public key ({e}); copy it from `vxnet dp show` on that host"
        )
    })
}

pub fn parse_vni(s: &str) -> Result<Vni, String> {
    let n: u32 = s.trim().parse().map_err(|_| {
        format!(
            "'{s}' is not a VNI; expected a number from 1 to {}",
            Vni::MAX
        )
    })?;
    Vni::try_from(n)
}

pub fn parse_unicast_mac(s: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = s.parse()?;
    if mac.is_multicast() {
        return Err(format!(
            "{mac} is a multicast/broadcast address; an endpoint needs a unicast MAC"
        ));
    }
    if mac.is_zero() {
        return Err("00:00:00:00:00:00 is not a usable MAC address".into());
    }
    Ok(mac)
}

pub fn parse_vtep(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address"))?;
    if !vxnet_api::dp::is_host_address(ip) {
        return Err(format!(
            "{ip} cannot be a VTEP; give the remote host's unicast address"
        ));
    }
    Ok(ip)
}

/// `IP` or `IP,MAC` (a comma, since both IPv6 addresses and MACs hold ':').
pub fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let (ip, mac) = match s.split_once(',') {
        Some((ip, mac)) => (ip, Some(parse_unicast_mac(mac.trim())?)),
        None => (s, None),
    };
    let ip: IpAddr = ip.trim().parse().map_err(|_| {
        format!(
            "'{ip}' is not an IPv4 or IPv6 address; expected IP or IP,MAC like 10.0.0.3,02:42:0a:00:00:03"
        )
    })?;
    Ok(BackendSpec { ip, mac })
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace.
pub fn parse_ifname(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)"
        ))
    }
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// Why a command did not succeed; decides the exit code.
#[derive(Debug)]
pub enum CliError {
    /// The arguments make no sense together (exit 2, before any request).
    Usage(String),
    /// Something here failed: output, a local process (exit 1).
    Failed(String),
    /// A daemon refused or could not be reached; the exit code comes from
    /// the error's code ([`vxnet_api::ErrorCode::exit_status`]).
    Api(ApiError),
}

impl From<ApiError> for CliError {
    fn from(e: ApiError) -> Self {
        CliError::Api(e)
    }
}

impl AttachArgs {
    /// Checks that span several arguments, which clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let (mut v4, mut v6) = (0, 0);
        for gw in &self.gateways {
            if gw.is_ipv4() {
                v4 += 1
            } else {
                v6 += 1
            }
            if !self.ips.iter().any(|n| n.addr().is_ipv4() == gw.is_ipv4()) {
                return Err(format!(
                    "gateway {gw} has no --ip of the same address family to be reached through"
                ));
            }
        }
        if v4 > 1 || v6 > 1 {
            return Err("give at most one IPv4 and one IPv6 --gateway".into());
        }
        for (i, a) in self.ips.iter().enumerate() {
            if self.ips.iter().skip(i + 1).any(|b| b.addr() == a.addr()) {
                return Err(format!("address {} is given twice", a.addr()));
            }
        }
        Ok(())
    }

    fn request(&self) -> Request {
        let target = match (&self.netns, &self.veth) {
            (_, Some(veth)) => AttachTarget::Veth(veth.clone()),
            (Some(ns), None) => AttachTarget::Netns(ns.clone()),
            // clap's required group guarantees one of them.
            (None, None) => AttachTarget::Netns(String::new()),
        };
        dp::Attach {
            target,
            vni: self.vni,
            ips: self.ips.clone(),
            mac: self.mac,
            mtu: self.mtu,
            gateways: self.gateways.clone(),
            ifname: self.ifname.clone(),
            owner: Owner::User,
        }
        .into_request()
    }
}

impl DetachArgs {
    fn request(&self) -> Request {
        let target = match (self.id, &self.netns, &self.veth) {
            (Some(id), _, _) => DetachTarget::Id(id),
            (None, Some(ns), _) => DetachTarget::Netns {
                netns: ns.clone(),
                ifname: self.ifname.clone(),
            },
            (None, None, Some(v)) => DetachTarget::Veth(v.clone()),
            // clap's required group guarantees one of them.
            (None, None, None) => DetachTarget::Veth(String::new()),
        };
        dp::Detach { target }.into_request()
    }
}

impl DpCommand {
    /// Cross-argument checks; an error here is a usage error.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            DpCommand::Trace {
                from, to, packet, ..
            } => {
                if from.is_ipv4() != to.is_ipv4() {
                    return Err(format!(
                        "--from {from} and --to {to} are of different address families"
                    ));
                }
                packet.validate()
            }
            DpCommand::TraceWire { datagram, .. } => decode_base64(datagram)
                .map(|_| ())
                .map_err(|e| format!("--datagram is not base64: {e}")),
            DpCommand::Attach(a) => a.validate(),
            DpCommand::Detach(d) if d.ifname.is_some() && d.netns.is_none() => {
                Err("--ifname selects an interface of --netns; use it with --netns".into())
            }
            DpCommand::Service(ServiceCommand::Set { vip, backends, .. }) => {
                for (i, b) in backends.iter().enumerate() {
                    if backends[i + 1..].iter().any(|o| o.ip == b.ip) {
                        return Err(format!("backend {} is given twice", b.ip));
                    }
                    if b.ip.is_ipv4() != vip.is_ipv4() {
                        return Err(format!(
                            "backend {} and VIP {vip} are of different address families",
                            b.ip
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The subcommand's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            DpCommand::Attach(_) => "attach",
            DpCommand::Detach(_) => "detach",
            DpCommand::Peer(_) => "peer",
            DpCommand::Flood(_) => "flood",
            DpCommand::Stats { .. } => "stats",
            DpCommand::Fdb { .. } => "fdb",
            DpCommand::Endpoints { .. } => "endpoints",
            DpCommand::Show { .. } => "show",
            DpCommand::Network(_) => "network",
            DpCommand::Vtep(_) => "vtep",
            DpCommand::Rekey { .. } => "rekey",
            DpCommand::Sa { .. } => "sa",
            DpCommand::Service(_) => "service",
            DpCommand::Services { .. } => "services",
            DpCommand::Conntrack { .. } => "conntrack",
            DpCommand::HostLink(_) => "host-link",
            DpCommand::Port(_) => "port",
            DpCommand::Ports { .. } => "ports",
            DpCommand::Trace { .. } => "trace",
            DpCommand::TraceWire { .. } => "trace-wire",
        }
    }

    /// The API request this command sends.
    pub fn request(&self) -> Request {
        match self {
            DpCommand::Attach(a) => a.request(),
            DpCommand::Detach(d) => d.request(),
            DpCommand::Peer(PeerCommand::Add {
                vni,
                mac,
                ips,
                vtep,
            }) => dp::PeerAdd {
                vni: *vni,
                mac: *mac,
                ips: ips.clone(),
                vtep: *vtep,
                owner: Owner::User,
            }
            .into_request(),
            DpCommand::Peer(PeerCommand::Del { vni, mac, ips }) => dp::PeerDel {
                vni: *vni,
                mac: *mac,
                ips: ips.clone(),
            }
            .into_request(),
            DpCommand::Flood(FloodCommand::Add(f)) => dp::FloodAdd {
                vni: f.vni,
                vtep: f.vtep,
            }
            .into_request(),
            DpCommand::Flood(FloodCommand::Del(f)) => dp::FloodDel {
                vni: f.vni,
                vtep: f.vtep,
            }
            .into_request(),
            DpCommand::Stats { .. } => dp::Stats {}.into_request(),
            DpCommand::Fdb { vni, .. } => dp::Fdb { vni: *vni }.into_request(),
            DpCommand::Endpoints { .. } => dp::Endpoints {}.into_request(),
            DpCommand::Show { .. } => dp::Show {}.into_request(),
            DpCommand::Network(NetworkCommand::Add {
                vni,
                encrypted,
                gateways,
                egress,
                ingress,
                no_flood,
                flood_rate,
            }) => dp::NetworkAdd {
                vni: *vni,
                encrypted: *encrypted,
                gateways: gateways.clone(),
                egress: *egress,
                ingress: *ingress,
                flood: !*no_flood,
                flood_rate: *flood_rate,
                owner: Owner::User,
            }
            .into_request(),
            DpCommand::Network(NetworkCommand::Del { vni }) => {
                dp::NetworkDel { vni: *vni }.into_request()
            }
            DpCommand::Network(NetworkCommand::Ls { .. }) => dp::Networks {}.into_request(),
            DpCommand::Vtep(VtepCommand::Add { vtep, pubkey }) => dp::VtepAdd {
                vtep: *vtep,
                pubkey: *pubkey,
                owner: Owner::User,
            }
            .into_request(),
            DpCommand::Vtep(VtepCommand::Del { vtep }) => {
                dp::VtepDel { vtep: *vtep }.into_request()
            }
            DpCommand::Vtep(VtepCommand::Ls { .. }) => dp::Vteps {}.into_request(),
            DpCommand::Rekey { vtep } => dp::Rekey { vtep: *vtep }.into_request(),
            DpCommand::Sa { show_keys, .. } => dp::Sa {
                show_keys: *show_keys,
            }
            .into_request(),
            DpCommand::Service(ServiceCommand::Set { vni, vip, backends }) => dp::ServiceSet {
                vni: *vni,
                vip: *vip,
                backends: backends.clone(),
                owner: Owner::User,
            }
            .into_request(),
            DpCommand::Service(ServiceCommand::Del { vni, vip }) => dp::ServiceDel {
                vni: *vni,
                vip: *vip,
            }
            .into_request(),
            DpCommand::Services { vni, .. } => dp::Services { vni: *vni }.into_request(),
            DpCommand::Conntrack { vni, limit, .. } => dp::Conntrack {
                vni: *vni,
                limit: Some(*limit),
            }
            .into_request(),
            DpCommand::HostLink(HostLinkCommand::Show { .. }) => dp::HostLink {}.into_request(),
            DpCommand::HostLink(HostLinkCommand::Set {
                subnet,
                ifname,
                mtu,
                ingress,
            }) => dp::HostLinkSet {
                ifname: ifname.clone(),
                subnet: *subnet,
                mtu: *mtu,
                ingress: *ingress,
                owner: Owner::User,
            }
            .into_request(),
            DpCommand::HostLink(HostLinkCommand::Del) => dp::HostLinkDel {}.into_request(),
            DpCommand::Port(PortCommand::Set {
                protocol,
                published,
                target,
                vni,
                vip,
                backends,
            }) => dp::PortSet {
                protocol: (*protocol).into(),
                published: *published,
                target: *target,
                vni: *vni,
                to: match vip {
                    Some(v) => dp::PortTo::Vip(*v),
                    None => dp::PortTo::Backends(backends.clone()),
                },
                owner: Owner::User,
            }
            .into_request(),
            DpCommand::Port(PortCommand::Del {
                protocol,
                published,
            }) => dp::PortDel {
                protocol: (*protocol).into(),
                published: *published,
            }
            .into_request(),
            DpCommand::Ports { .. } => dp::Ports {}.into_request(),
            DpCommand::Trace {
                from,
                to,
                vni,
                dst_mac,
                packet,
                ..
            } => dp::Trace {
                src: *from,
                vni: *vni,
                packet: vxnet_api::trace::PacketSpec {
                    dst_mac: *dst_mac,
                    ..packet.spec(*to)
                },
            }
            .into_request(),
            DpCommand::TraceWire { src, datagram, .. } => {
                // Checked in validate(); an undecodable one is sent empty
                // and refused by the dataplane.
                let bytes = decode_base64(datagram).unwrap_or_default();
                dp::TraceWire {
                    src: *src,
                    datagram: vxnet_api::trace::Bytes(bytes),
                }
                .into_request()
            }
        }
    }

    fn format(&self) -> Format {
        match self {
            DpCommand::Attach(a) => a.format.format,
            DpCommand::Detach(d) => d.format.format,
            DpCommand::Peer(_)
            | DpCommand::Flood(_)
            | DpCommand::Rekey { .. }
            | DpCommand::Service(_)
            | DpCommand::Port(_)
            | DpCommand::HostLink(HostLinkCommand::Set { .. } | HostLinkCommand::Del)
            | DpCommand::Network(NetworkCommand::Add { .. } | NetworkCommand::Del { .. })
            | DpCommand::Vtep(VtepCommand::Add { .. } | VtepCommand::Del { .. }) => Format::Table,
            DpCommand::Network(NetworkCommand::Ls { format })
            | DpCommand::Vtep(VtepCommand::Ls { format })
            | DpCommand::Sa { format, .. }
            | DpCommand::Services { format, .. }
            | DpCommand::Ports { format }
            | DpCommand::HostLink(HostLinkCommand::Show { format })
            | DpCommand::Conntrack { format, .. }
            | DpCommand::Trace { format, .. }
            | DpCommand::TraceWire { format, .. } => format.format,
            DpCommand::Stats { format, .. }
            | DpCommand::Fdb { format, .. }
            | DpCommand::Endpoints { format }
            | DpCommand::Show { format } => format.format,
        }
    }

    /// Renders a successful result for the terminal.
    fn render(&self, result: serde_json::Value) -> Result<String, CliError> {
        if self.format() == Format::Json {
            if result.is_null() {
                return Ok(String::new());
            }
            let mut s = serde_json::to_string_pretty(&result)
                .map_err(|e| CliError::Failed(format!("cannot print the answer: {e}")))?;
            s.push('\n');
            return Ok(s);
        }
        Ok(match self {
            DpCommand::Attach(_) => output::endpoints(&[decode::<EndpointInfo>(result)?]),
            DpCommand::Detach(_) => {
                // The dataplane may answer with the detached endpoints or
                // with nothing; show them when it does.
                match serde_json::from_value::<Vec<EndpointInfo>>(result.clone()) {
                    Ok(list) => output::endpoints(&list),
                    Err(_) => match serde_json::from_value::<EndpointInfo>(result) {
                        Ok(e) => output::endpoints(&[e]),
                        Err(_) => String::new(),
                    },
                }
            }
            DpCommand::Peer(_) | DpCommand::Flood(_) => String::new(),
            DpCommand::Stats { all, .. } => output::stats(&decode::<StatsReport>(result)?, *all),
            DpCommand::Fdb { .. } => output::fdb(&decode::<Vec<FdbEntry>>(result)?),
            DpCommand::Endpoints { .. } => output::endpoints(&decode::<Vec<EndpointInfo>>(result)?),
            DpCommand::Show { .. } => output::show(&decode::<ShowReport>(result)?),
            DpCommand::Network(NetworkCommand::Ls { .. }) => {
                output::networks(&decode::<Vec<NetworkInfo>>(result)?)
            }
            DpCommand::Vtep(VtepCommand::Ls { .. }) => {
                output::vteps(&decode::<Vec<VtepInfo>>(result)?)
            }
            DpCommand::Sa { .. } => output::sas(&decode::<Vec<SaEntry>>(result)?),
            DpCommand::Rekey { .. } => {
                let hosts = decode::<Vec<IpAddr>>(result)?;
                let list: Vec<String> = hosts.iter().map(ToString::to_string).collect();
                format!("rotation started with {}\n", list.join(", "))
            }
            DpCommand::Services { .. } => output::services(&decode::<Vec<ServiceInfo>>(result)?),
            DpCommand::Conntrack { .. } => output::conntrack(&decode::<ConntrackReport>(result)?),
            DpCommand::HostLink(HostLinkCommand::Show { .. }) => {
                match decode::<Option<dp::HostLinkInfo>>(result)? {
                    Some(h) => output::host_link(&h),
                    None => "no host link\n".into(),
                }
            }
            DpCommand::HostLink(HostLinkCommand::Set { .. }) => {
                output::host_link(&decode::<dp::HostLinkInfo>(result)?)
            }
            DpCommand::Ports { .. } => output::ports(&decode::<Vec<dp::PortInfo>>(result)?),
            DpCommand::Trace { .. } | DpCommand::TraceWire { .. } => {
                crate::trace::render(&decode::<vxnet_api::trace::TraceReport>(result)?)
            }
            DpCommand::Network(_)
            | DpCommand::Vtep(_)
            | DpCommand::Service(_)
            | DpCommand::Port(_)
            | DpCommand::HostLink(HostLinkCommand::Del) => String::new(),
        })
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| {
        CliError::Failed(format!(
            "unexpected answer from the dataplane ({e}); are the CLI and the dataplane the same version?"
        ))
    })
}

/// Runs one `vxnet dp` command, writing its output to `out`. Returns the
/// exit status: 0, or 1 when a `trace`/`trace-wire` packet is dropped
/// (as `vxnet trace` does, so scripts can test a path).
pub fn run(args: &DpArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    args.command.validate().map_err(CliError::Usage)?;
    let req = args.command.request();
    let mut client = Client::connect(Server::Dataplane, &args.socket).map_err(transport_error)?;
    let result = client
        .send(&req)
        .map_err(transport_error)?
        .decode_as::<serde_json::Value>()?;
    let dropped = matches!(
        args.command,
        DpCommand::Trace { .. } | DpCommand::TraceWire { .. }
    ) && result["verdict"] == "dropped";
    let text = args.command.render(result)?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Failed(format!("cannot write output: {e}")))?;
    Ok(u8::from(dropped))
}
