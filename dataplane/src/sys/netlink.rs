//! Links, addresses, routes and bridges through rtnetlink: what the daemons
//! used to run `ip` for.
//!
//! A [`Netlink`] is one `NETLINK_ROUTE` socket. The kernel binds a netlink
//! socket to the network namespace of the thread that creates it, for its
//! whole life, so [`Netlink::open_in`] creates the socket on a thread that
//! entered the namespace ([`super::netns::run_in`]) and every call made on
//! it afterwards, from any thread, configures that namespace. Nothing here
//! changes a thread's namespace.
//!
//! # Why synchronous `netlink-sys` and not `rtnetlink`
//! The message types and their encodings (every attribute, the nested
//! `IFLA_LINKINFO` and `IFLA_AF_SPEC`, address flags) come from
//! `netlink-packet-route`, the crate `rtnetlink` itself is built on; the
//! socket is `netlink-sys`. What `rtnetlink` adds is an async request
//! handle on tokio. The dataplane has no runtime, and the control daemon
//! calls its host seam from inside tokio tasks, where blocking on a nested
//! runtime panics. The request/acknowledge exchange of rtnetlink (netlink(7)
//! "NLMSG_ERROR", "NLMSG_DONE") is the small [`Netlink::request`] below, so
//! a blocking socket is both simpler and usable from any caller.
//!
//! # Errors
//! Every error is an [`io::Error`] whose message says what was attempted,
//! on which interface and in which namespace, followed by the kernel's errno
//! text (e.g. "interface eth0 not found in namespace web1", "cannot set MTU
//! 99999 on eth0 in namespace web1: Invalid argument (os error 22)"). The
//! kind is kept: a missing interface is `NotFound`, an existing one
//! `AlreadyExists`.
use super::netns;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use vxnet_proto::wire::MacAddr;

/// One network interface as the kernel reports it (`ip link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index (`ifindex`), unique within its namespace.
    pub index: u32,
    pub name: String,
    /// Bytes of IP packet the interface carries without fragmenting.
    pub mtu: u32,
    /// Hardware address; `None` for links without one of 6 bytes (`lo` has
    /// six zero bytes, so it is `Some`).
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the bridge (or bond) it is enslaved to.
    pub controller: Option<u32>,
    /// `IFLA_GSO_MAX_SEGS`: most segments per GSO/TSO frame the stack builds.
    pub gso_max_segs: Option<u32>,
}

/// One address on one interface (`ip addr show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// One route of the main table (`ip route show`, `ip -6 route show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None` with prefix 0: the default route.
    pub destination: Option<IpAddr>,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index.
    pub ifindex: Option<u32>,
}

/// A `NETLINK_ROUTE` socket bound to one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    /// How errors name the namespace: "namespace web1", "this namespace".
    place: String,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        Self::open_as("this namespace".into())
    }

    /// A socket in the network namespace at `path` (`/run/netns/NAME` or
    /// `/proc/PID/ns/net`); calls on it configure that namespace.
    pub fn open_in(path: &Path) -> io::Result<Netlink> {
        let place = describe(path);
        netns::run_in(path, move || Self::open_as(place))?
    }

    fn open_as(place: String) -> io::Result<Netlink> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| annotate(e, "cannot open a netlink socket"))?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            place,
        })
    }

    /// The namespace as errors name it.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// The interface called `name`. `NotFound` if there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Link> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let replies = self
            .request(RouteNetlinkMessage::GetLink(msg), 0)
            .map_err(|e| self.link_error(e, name, "cannot look up"))?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .ok_or_else(|| self.not_found(name))
    }

    /// Whether an interface called `name` exists.
    pub fn link_exists(&mut self, name: &str) -> io::Result<bool> {
        match self.link(name) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let msg = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.dump(msg, "interfaces", |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
    }

    /// Sets the hardware address (`ip link set dev NAME address MAC`).
    pub fn set_mac(&mut self, name: &str, mac: MacAddr) -> io::Result<()> {
        self.set(
            name,
            &format!("set MAC {mac} on"),
            vec![LinkAttribute::Address(mac.0.to_vec())],
        )
    }

    /// Sets the MTU (`ip link set dev NAME mtu N`).
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> io::Result<()> {
        self.set(
            name,
            &format!("set MTU {mtu} on"),
            vec![LinkAttribute::Mtu(mtu)],
        )
    }

    /// Sets `IFLA_GSO_MAX_SEGS` (`ip link set dev NAME gso_max_segs N`):
    /// the most TCP segments the stack puts in one TSO frame for it.
    pub fn set_gso_max_segs(&mut self, name: &str, segs: u32) -> io::Result<()> {
        self.set(
            name,
            &format!("set gso_max_segs {segs} on"),
            vec![LinkAttribute::GsoMaxSegs(segs)],
        )
    }

    /// Stops the kernel from giving the interface IPv6 link-local addresses
    /// (`ip link set dev NAME addrgenmode none`).
    pub fn set_addr_gen_mode_none(&mut self, name: &str) -> io::Result<()> {
        self.set(
            name,
            "set addrgenmode none on",
            vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )])],
        )
    }

    /// Brings the interface up (`ip link set dev NAME up`).
    pub fn set_up(&mut self, name: &str) -> io::Result<()> {
        self.set_flags(name, true)
    }

    /// Takes the interface down (`ip link set dev NAME down`).
    pub fn set_down(&mut self, name: &str) -> io::Result<()> {
        self.set_flags(name, false)
    }

    /// Enslaves `name` to the bridge `bridge` (`ip link set dev NAME master
    /// BRIDGE`).
    pub fn set_controller(&mut self, name: &str, bridge: &str) -> io::Result<()> {
        let bridge_index = self.link(bridge)?.index;
        self.set(
            name,
            &format!("put on bridge {bridge}"),
            vec![LinkAttribute::Controller(bridge_index)],
        )
    }

    /// Takes `name` off its bridge (`ip link set dev NAME nomaster`).
    pub fn release(&mut self, name: &str) -> io::Result<()> {
        self.set(
            name,
            "take off its bridge",
            vec![LinkAttribute::Controller(0)],
        )
    }

    /// Moves the interface into the network namespace `ns` (an open
    /// `/run/netns/NAME` or `/proc/PID/ns/net`); it disappears from this one.
    pub fn move_to_netns(&mut self, name: &str, ns: &File) -> io::Result<()> {
        self.set(
            name,
            "move to another namespace",
            vec![LinkAttribute::NetNsFd(ns.as_raw_fd())],
        )
    }

    /// Creates a Linux bridge (`ip link add NAME type bridge`), down.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        self.add_link(name, InfoKind::Bridge, None)
    }

    /// Creates a veth pair `name` / `peer` (`ip link add NAME type veth peer
    /// name PEER`), both down, both in this namespace.
    pub fn add_veth(&mut self, name: &str, peer: &str) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.into()));
        self.add_link(
            name,
            InfoKind::Veth,
            Some(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        )
    }

    /// Deletes the interface (`ip link del dev NAME`); a veth takes its peer
    /// along, a bridge releases its ports.
    pub fn del_link(&mut self, name: &str) -> io::Result<()> {
        let index = self.link(name)?.index;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
            .map(drop)
            .map_err(|e| self.link_error(e, name, "cannot delete"))
    }

    /// Adds `addr/prefix` to the interface (`ip addr add`); an IPv6 address
    /// is usable at once, without duplicate address detection (`nodad`):
    /// the overlay's addresses are assigned by its IPAM, and DAD would keep
    /// them "tentative" (unusable) for a second or more.
    pub fn add_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewAddress(self.address_message(name, addr, prefix)?);
        let what = format!("cannot add address {addr}/{prefix} to {name}");
        self.change(msg, NLM_F_CREATE | NLM_F_EXCL, &what)
    }

    /// Removes `addr/prefix` from the interface (`ip addr del`).
    pub fn del_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::DelAddress(self.address_message(name, addr, prefix)?);
        let what = format!("cannot remove address {addr}/{prefix} from {name}");
        self.change(msg, 0, &what)
    }

    /// Every address of every interface, IPv4 and IPv6.
    pub fn addresses(&mut self) -> io::Result<Vec<Address>> {
        let msg = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        self.dump(msg, "addresses", |m| match m {
            RouteNetlinkMessage::NewAddress(a) => address_of(a),
            _ => None,
        })
    }

    /// Makes `gateway` via `name` the default route of its family, replacing
    /// any (`ip route replace default via GW dev NAME`).
    pub fn replace_default_route(&mut self, name: &str, gateway: IpAddr) -> io::Result<()> {
        let index = self.link(name)?.index;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(gateway);
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // What `ip route` marks its routes with ("proto boot").
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(gateway.into()));
        msg.attributes.push(RouteAttribute::Oif(index));
        let what = format!("cannot set the default route via {gateway} dev {name}");
        self.change(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &what,
        )
    }

    /// The routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let msg = RouteNetlinkMessage::GetRoute(RouteMessage::default());
        self.dump(msg, "routes", |m| match m {
            RouteNetlinkMessage::NewRoute(r) => route_of(r),
            _ => None,
        })
    }

    /// Sends a change and waits for its acknowledgement; an error says
    /// `what` failed, in which namespace, and why.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags)
            .map(drop)
            .map_err(|e| annotate(e, &format!("{what} in {}", self.place)))
    }

    /// Sends a dump request and keeps the answers `pick` takes.
    fn dump<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
        pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        let replies = self
            .request(msg, NLM_F_DUMP)
            .map_err(|e| annotate(e, &format!("cannot list {what} in {}", self.place)))?;
        Ok(replies.into_iter().filter_map(pick).collect())
    }

    fn address_message(
        &mut self,
        name: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> io::Result<AddressMessage> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("prefix length /{prefix} is longer than {bits} bits for {addr}"),
            ));
        }
        let index = self.link(name)?.index;
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        if addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
        } else {
            // As `ip addr add` does for IPv4: the local address, and the
            // same as "address" (the peer of a point-to-point link).
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        msg.attributes.push(AddressAttribute::Address(addr));
        Ok(msg)
    }

    fn add_link(&mut self, name: &str, kind: InfoKind, data: Option<InfoData>) -> io::Result<()> {
        let mut info = vec![LinkInfo::Kind(kind)];
        info.extend(data.map(LinkInfo::Data));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(|e| self.link_error(e, name, "cannot create"))
    }

    fn set_flags(&mut self, name: &str, up: bool) -> io::Result<()> {
        let index = self.link(name)?.index;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        let what = if up {
            "cannot bring up"
        } else {
            "cannot take down"
        };
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
            .map_err(|e| self.link_error(e, name, what))
    }

    /// One `RTM_SETLINK` on the interface `name` carrying `attributes`.
    fn set(&mut self, name: &str, what: &str, attributes: Vec<LinkAttribute>) -> io::Result<()> {
        let index = self.link(name)?.index;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes = attributes;
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
            .map_err(|e| self.link_error(e, name, &format!("cannot {what}")))
    }

    /// Sends one request and collects its answers: for a dump every message
    /// up to `NLMSG_DONE`, otherwise the replies up to the acknowledgement
    /// (an `NLMSG_ERROR` with code 0). A non-zero code is the errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        // A request that is not a dump always asks for an acknowledgement,
        // so that its end is known; a dump ends with NLMSG_DONE.
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                // Messages in one datagram are 4-byte aligned (NLMSG_ALIGN).
                let len = (reply.header.length as usize).next_multiple_of(4);
                if len == 0 {
                    break;
                }
                rest = rest.get(len..).unwrap_or_default();
                // Left over from an earlier request that failed half-way.
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(_) => return Err(e.to_io()),
                    },
                    _ => {}
                }
            }
        }
    }

    fn not_found(&self, name: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {name} not found in {}", self.place),
        )
    }

    /// `what` ("cannot delete") of interface `name` failed with `e`.
    fn link_error(&self, e: io::Error, name: &str, what: &str) -> io::Error {
        match e.raw_os_error() {
            Some(libc::ENODEV) => self.not_found(name),
            Some(libc::EEXIST) => io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("interface {name} already exists in {}", self.place),
            ),
            _ => annotate(e, &format!("{what} {name} in {}", self.place)),
        }
    }
}

/// Every address of every interface of the calling thread's namespace, as
/// (interface name, address, prefix length): IPv4 and IPv6, loopback and
/// link-local included.
pub fn local_addresses() -> io::Result<Vec<(String, IpAddr, u8)>> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("if{index}"), |l| l.name.clone())
    };
    Ok(nl
        .addresses()?
        .into_iter()
        .map(|a| (name_of(a.ifindex), a.addr, a.prefix))
        .collect())
}

/// The MTU of the interface that carries `addr` in the calling thread's
/// namespace; `None` when no interface has that address.
pub fn interface_mtu_of_address(addr: IpAddr) -> io::Result<Option<u32>> {
    let mut nl = Netlink::open()?;
    let Some(a) = nl.addresses()?.into_iter().find(|a| a.addr == addr) else {
        return Ok(None);
    };
    Ok(nl
        .links()?
        .into_iter()
        .find(|l| l.index == a.ifindex)
        .map(|l| l.mtu))
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// "namespace NAME" for `/run/netns/NAME`, else "namespace PATH".
fn describe(path: &Path) -> String {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if dir == Path::new(netns::NETNS_RUN_DIR) => {
            format!("namespace {}", name.to_string_lossy())
        }
        _ => format!("namespace {}", path.display()),
    }
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_of(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        controller: None,
        gso_max_segs: None,
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Address(bytes) => {
                link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::Controller(c) if c != 0 => link.controller = Some(c),
            LinkAttribute::GsoMaxSegs(s) => link.gso_max_segs = Some(s),
            _ => {}
        }
    }
    link
}

fn address_of(msg: AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the same
    // except on point-to-point links, where it is the peer's. IPv6 sends
    // only IFA_ADDRESS.
    let mut local = None;
    let mut address = None;
    for a in msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    Some(Address {
        ifindex: msg.header.index,
        addr: local.or(address)?,
        prefix: msg.header.prefix_len,
    })
}

fn route_of(msg: RouteMessage) -> Option<Route> {
    let mut table = u32::from(msg.header.table);
    let mut route = Route {
        destination: None,
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        ifindex: None,
    };
    for a in msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Destination(d) => route.destination = ip_of(d),
            RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
            RouteAttribute::Oif(i) => route.ifindex = Some(i),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(route)
}

fn ip_of(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_named_for_errors() {
        assert_eq!(describe(Path::new("/run/netns/web1")), "namespace web1");
        assert_eq!(
            describe(Path::new("/proc/42/ns/net")),
            "namespace /proc/42/ns/net"
        );
    }

    #[test]
    fn link_attributes_are_read() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up;
        msg.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0x42, 10, 0, 0, 2]),
            LinkAttribute::Controller(0),
            LinkAttribute::GsoMaxSegs(44),
        ];
        let l = link_of(msg);
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "eth0");
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.mac, Some(MacAddr([2, 0x42, 10, 0, 0, 2])));
        assert!(l.up);
        assert_eq!(l.controller, None, "index 0 means no bridge");
        assert_eq!(l.gso_max_segs, Some(44));
    }

    #[test]
    fn ipv4_addresses_prefer_the_local_side() {
        let mut msg = AddressMessage::default();
        msg.header.index = 3;
        msg.header.prefix_len = 32;
        msg.attributes = vec![
            AddressAttribute::Address("192.0.2.2".parse().unwrap()),
            AddressAttribute::Local("192.0.2.1".parse().unwrap()),
        ];
        let a = address_of(msg).unwrap();
        assert_eq!(a.addr, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((a.ifindex, a.prefix), (3, 32));
        assert!(address_of(AddressMessage::default()).is_none());
    }

    #[test]
    fn only_main_table_routes_are_listed() {
        let mut msg = RouteMessage::default();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.attributes = vec![
            RouteAttribute::Gateway("fd00::1".parse::<IpAddr>().unwrap().into()),
            RouteAttribute::Oif(2),
        ];
        let r = route_of(msg.clone()).unwrap();
        assert_eq!(r.destination, None);
        assert_eq!(r.gateway, Some("fd00::1".parse().unwrap()));
        assert_eq!(r.ifindex, Some(2));
        msg.attributes.push(RouteAttribute::Table(255));
        assert!(route_of(msg).is_none(), "local table");
    }
}
