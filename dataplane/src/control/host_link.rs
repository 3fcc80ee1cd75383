//! Host-link requests: `host_link_set`, `host_link_del`, `host_link`,
//! `port_set`, `port_del`, `ports`. The host link is the dataplane's TAP in
//! its own network namespace (the host's) with vxnet's firewall table
//! ([`crate::firewall`]); published ports enter through it and egress
//! leaves through it (the engine's side is `vxnet_proto::engine::mesh`).
//!
//! Everything the dataplane changes on the host is made here and undone
//! here: the TAP (gone with its descriptor), its address, the `ip vxnet`
//! table, and `net.ipv4.ip_forward`, which is set to 1 (the host forwards
//! between its interfaces and the link) and left so, as Docker leaves it.
//! Host-link requests are serialized by their own lock; the kernel and
//! `nft` are configured without the state's lock held.
use super::{Dataplane, R, free_port};
use crate::firewall;
use crate::sys::netlink::Netlink;
use crate::sys::tap::Tap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, MutexGuard, PoisonError};
use vxnet_api::dp::{
    BackendSpec, HostLinkInfo, HostLinkSet, IngressEndpoint, Owner, PortInfo, PortProtocol,
    PortSet, PortTo,
};
use vxnet_api::{ApiError, ErrorCode, Ipv4Net};
use vxnet_proto::fdb::{HostLink, PortId, Published, PublishedTo};
use vxnet_proto::lb::service::{Backend, MAX_BACKENDS, Service};
use vxnet_proto::wire::MacAddr;

/// The TAP's default name.
pub const DEFAULT_IFNAME: &str = "vxnet0";
/// The subnet must hold the reserved addresses and at least this many
/// egress addresses (a /22).
const MIN_SUBNET_SIZE: u32 = 1024;

/// The host link as made.
pub(crate) struct Linked {
    tap: Arc<Tap>,
    port: PortId,
    ifname: String,
    subnet: Ipv4Net,
    mtu: u32,
    ingress: Option<IngressEndpoint>,
    mac: MacAddr,
    owner: Owner,
    /// The last firewall error, if the table could not be written.
    firewall_error: Option<String>,
    /// Who published each port.
    port_owners: std::collections::HashMap<(PortProtocol, u16), Owner>,
}

impl Linked {
    fn firewall_spec(&self) -> firewall::Spec {
        firewall::Spec {
            ifname: self.ifname.clone(),
            net: self.subnet.network(),
            prefix: self.subnet.prefix_len(),
            mesh_ip: mesh_ip(self.subnet),
        }
    }

    fn same_as(&self, s: &HostLinkSet, mtu: u32) -> bool {
        self.ifname == ifname(s)
            && self.subnet == s.subnet.trunc()
            && self.mtu == mtu
            && self.ingress == s.ingress
    }
}

fn ifname(s: &HostLinkSet) -> String {
    s.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.into())
}

fn host_ip(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

fn mesh_ip(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(2))
}

fn proto_of(p: PortProtocol) -> u8 {
    p.number()
}

pub(super) fn protocol(n: u8) -> PortProtocol {
    if n == 17 {
        PortProtocol::Udp
    } else {
        PortProtocol::Tcp
    }
}

/// The host's firewall must hold these ports: what the table holds.
fn firewall_ports(fdb: &vxnet_proto::fdb::Fdb) -> firewall::Ports {
    let mut ports = firewall::Ports::default();
    for p in fdb.published_ports() {
        match protocol(p.proto) {
            PortProtocol::Tcp => ports.tcp.insert(p.port),
            PortProtocol::Udp => ports.udp.insert(p.port),
        };
    }
    ports
}

/// Sets `net.ipv4.ip_forward` to 1 in the dataplane's namespace.
fn enable_forwarding() -> Result<(), String> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1").map_err(|e| format!("cannot enable IPv4 forwarding ({PATH}): {e}"))
}

impl Dataplane {
    fn host_lock(&self) -> MutexGuard<'_, Option<Linked>> {
        self.host.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn host_link_set(&self, req: HostLinkSet) -> R<HostLinkInfo> {
        let name = ifname(&req);
        if name.is_empty()
            || name.len() > 15
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ApiError::invalid(format!(
                "interface name '{name}' is invalid: use 1 to 15 letters, digits, '-', '_' or '.'"
            )));
        }
        let subnet = req.subnet.trunc();
        let size = 1u64 << (32 - u32::from(subnet.prefix_len()));
        if size < u64::from(MIN_SUBNET_SIZE) {
            return Err(ApiError::invalid(format!(
                "host link subnet {} is too small: give a /22 or larger (its addresses from the 257th on are containers' egress addresses)",
                req.subnet
            )));
        }
        // By default what the ingress network's endpoints get: routing-mesh
        // flows cross the underlay in VXLAN.
        let mtu = req.mtu.unwrap_or_else(|| {
            let st = self.lock();
            match req.ingress {
                Some(i) => self.default_mtu(&st.fdb, i.vni),
                None => self.cfg.mtu.unwrap_or_else(|| {
                    (st.fdb.underlay().endpoint_mtu(false)).min(crate::attach::MAX_MTU)
                }),
            }
        });
        if !(576..=65_000).contains(&mtu) {
            return Err(ApiError::invalid(format!(
                "MTU {mtu} is outside 576..=65000"
            )));
        }
        if let Some(i) = req.ingress {
            if subnet.contains(&i.ip) {
                return Err(ApiError::invalid(format!(
                    "the ingress endpoint {} is inside the host link's subnet {subnet}; give another subnet",
                    i.ip
                )));
            }
        }
        let mut host = self.host_lock();
        if let Some(l) = host.as_mut().filter(|l| l.same_as(&req, mtu)) {
            // The same link: write the firewall table again (someone may
            // have removed it), keep the rest.
            l.owner = req.owner;
            let ports = firewall_ports(&self.lock().fdb);
            let r = firewall::apply(&firewall::install(&l.firewall_spec(), &ports));
            l.firewall_error = r.clone().err();
            r.map_err(ApiError::internal)?;
            return Ok(self.info(l));
        }
        if let Some(old) = host.take() {
            self.tear_down(old);
        }
        let made = self.make_link(&req, name, subnet, mtu)?;
        let info = self.info(&made);
        *host = Some(made);
        Ok(info)
    }

    /// Creates the TAP, its address, the firewall table and the FDB entry;
    /// on failure undoes what it did.
    fn make_link(&self, req: &HostLinkSet, name: String, subnet: Ipv4Net, mtu: u32) -> R<Linked> {
        let port = {
            let mut st = self.lock();
            let p = free_port(&st);
            st.host_port = Some(p);
            p
        };
        let release = |this: &Self| this.lock().host_port = None;
        let mac = match req.ingress {
            Some(i) => MacAddr::from_ip(IpAddr::V4(i.ip)),
            None => MacAddr::from_ip(IpAddr::V4(host_ip(subnet))),
        };
        let tap = match self.make_tap(&name, subnet, mtu, mac) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                release(self);
                return Err(ApiError::internal(e));
            }
        };
        let mut linked = Linked {
            tap,
            port,
            ifname: name,
            subnet,
            mtu,
            ingress: req.ingress,
            mac,
            owner: req.owner,
            firewall_error: None,
            port_owners: Default::default(),
        };
        let fw = enable_forwarding().and_then(|()| {
            firewall::apply(&firewall::install(
                &linked.firewall_spec(),
                &firewall::Ports::default(),
            ))
        });
        if let Err(e) = fw {
            drop(linked);
            release(self);
            return Err(ApiError::internal(e));
        }
        let link = HostLink {
            port,
            net: subnet.network(),
            prefix: subnet.prefix_len(),
            host_mac: mac,
            ingress: req.ingress.map(|i| (i.vni, i.ip)),
        };
        if let Err(e) = self.edit_fdb(|f| f.set_host_link(link)) {
            let _ = firewall::apply(&firewall::remove());
            drop(linked);
            release(self);
            return Err(e);
        }
        let mut st = self.lock();
        self.add_port(&mut st, port, &linked.tap);
        linked.firewall_error = None;
        Ok(linked)
    }

    fn make_tap(&self, name: &str, subnet: Ipv4Net, mtu: u32, mac: MacAddr) -> Result<Tap, String> {
        let mut nl = Netlink::open().map_err(|e| e.to_string())?;
        if nl.link_exists(name).map_err(|e| e.to_string())? {
            return Err(format!(
                "interface {name} already exists in the host's namespace; remove it or give another name"
            ));
        }
        let tap = Tap::create(name).map_err(|e| format!("cannot create TAP {name}: {e}"))?;
        let configured = (|| {
            // Plumbing, not a host of the overlay: no IPv6 link-local
            // address, no router solicitations into the dataplane.
            nl.set_addr_gen_mode_none(name)?;
            nl.set_mac(name, mac)?;
            nl.set_mtu(name, mtu)?;
            nl.add_address(name, IpAddr::V4(host_ip(subnet)), subnet.prefix_len())?;
            nl.set_up(name)
        })();
        // On failure the TAP goes with its descriptor.
        configured.map_err(|e| format!("configuring {name} failed: {e}"))?;
        Ok(tap)
    }

    /// Undoes a host link: the FDB forgets it (and its ports), the
    /// firewall table goes, the workers let go of the port, the TAP closes.
    fn tear_down(&self, l: Linked) {
        {
            let mut st = self.lock();
            let mut next = st.fdb.clone();
            next.clear_host_link();
            self.cell.publish(next.clone());
            st.fdb = next;
        }
        if let Err(e) = firewall::apply(&firewall::remove()) {
            tracing::warn!(error = %e, "cannot remove the firewall table ip {}", firewall::TABLE);
        }
        self.remove_port(l.port);
        drop(l.tap);
        self.lock().host_port = None;
    }

    pub(super) fn host_link_del(&self) -> R<()> {
        let Some(l) = self.host_lock().take() else {
            return Err(ApiError::not_found(
                "there is no host link; see `vxnet dp host-link`",
            ));
        };
        self.tear_down(l);
        Ok(())
    }

    fn info(&self, l: &Linked) -> HostLinkInfo {
        let (firewall_ok, firewall_error) = match firewall::read() {
            Ok(Some(o)) => (o.complete, l.firewall_error.clone()),
            Ok(None) => (false, l.firewall_error.clone()),
            Err(e) => (false, Some(e)),
        };
        let st = self.lock();
        HostLinkInfo {
            ifname: l.ifname.clone(),
            subnet: l.subnet,
            host_ip: host_ip(l.subnet),
            mesh_ip: mesh_ip(l.subnet),
            mac: l.mac,
            mtu: l.mtu,
            ingress: l.ingress,
            firewall_ok,
            firewall_error,
            egress_addresses: st
                .endpoints
                .values()
                .map(|e| e.info.ips.iter().filter(|n| n.addr().is_ipv4()).count())
                .sum(),
            owner: l.owner,
        }
    }

    /// The host link's port and how a trace names it.
    pub(super) fn host_link_port(&self) -> Option<(PortId, String)> {
        let host = self.host_lock();
        host.as_ref()
            .map(|l| (l.port, format!("the host link {}", l.ifname)))
    }

    pub(super) fn host_link(&self) -> Option<HostLinkInfo> {
        let host = self.host_lock();
        host.as_ref().map(|l| self.info(l))
    }

    pub(super) fn port_set(&self, req: PortSet) -> R<()> {
        let workers = self.stats.len();
        if workers > 1 {
            return Err(ApiError::precondition(format!(
                "published ports need a dataplane with one worker (--workers 1); this one runs {workers}"
            )));
        }
        if req.published == 0 || req.target == 0 {
            return Err(ApiError::invalid("ports are 1..=65535"));
        }
        let mut host = self.host_lock();
        let Some(l) = host.as_mut() else {
            return Err(ApiError::precondition(
                "the host link is not set up; ports are published through it (`vxnet dp host-link set`)",
            ));
        };
        // The host link and vxnet's firewall table are IPv4 (`table ip`).
        let v6 = match &req.to {
            PortTo::Vip(vip) => vip.is_ipv6(),
            PortTo::Backends(bs) => bs.iter().any(|b| b.ip.is_ipv6()),
        };
        if v6 {
            return Err(ApiError::invalid(
                "published ports lead to IPv4 addresses only (the host link is IPv4): give the service's IPv4 VIP or its tasks' IPv4 addresses",
            ));
        }
        // What the port leads to must exist first (the control plane sets
        // networks and services before ports, and deletes ports first).
        {
            let st = self.lock();
            // Declared, or holding something (its table may be empty).
            let table = st.fdb.vni(req.vni);
            if table.is_none() && !st.networks.contains_key(&req.vni) {
                return Err(ApiError::precondition(format!(
                    "VNI {} is not a network here: add it first (`vxnet dp network add --vni {}`)",
                    req.vni, req.vni
                )));
            }
            let empty = vxnet_proto::fdb::VniTable::default();
            let table = table.unwrap_or(&empty);
            if let PortTo::Backends(bs) = &req.to {
                if let Some(b) = bs.iter().find(|b| table.services.contains_key(&b.ip)) {
                    return Err(ApiError::invalid(format!(
                        "backend {} is a service VIP on VNI {}: give it as --vip, or give the tasks' addresses as backends",
                        b.ip, req.vni
                    )));
                }
            }
            if let PortTo::Vip(vip) = req.to {
                if let Some(what) = vxnet_api::trace::not_unicast(vip) {
                    return Err(ApiError::invalid(format!(
                        "{vip} is {what}: it cannot be a VIP; give the service's VIP (`vxnet dp services`)"
                    )));
                }
                if table.ips.contains_key(&vip) {
                    return Err(ApiError::precondition(format!(
                        "{vip} is an endpoint's address on VNI {}, not a service VIP: give the VIP (`vxnet dp services`), or --backend {vip} for host mode",
                        req.vni
                    )));
                }
                if !table.services.contains_key(&vip) {
                    return Err(ApiError::precondition(format!(
                        "{vip} is no service VIP on VNI {}: set the service first (`vxnet dp service set --vni {} --vip {vip}`), see `vxnet dp services`",
                        req.vni, req.vni
                    )));
                }
            }
        }
        let to = match &req.to {
            PortTo::Vip(vip) => PublishedTo::Vip(*vip),
            PortTo::Backends(bs) => {
                if bs.len() > MAX_BACKENDS {
                    return Err(ApiError::invalid(format!(
                        "{} backends; a port has at most {MAX_BACKENDS}",
                        bs.len()
                    )));
                }
                let backends = self.backend_macs(req.vni, bs)?;
                // The Maglev table is built outside the state lock.
                let s = Service::new(
                    IpAddr::V4(mesh_ip(l.subnet)),
                    backends,
                    self.cfg.maglev_size,
                )
                .map_err(|e| ApiError::invalid(e.to_string()))?;
                PublishedTo::Tasks(Arc::new(s))
            }
        };
        let published = Published {
            proto: proto_of(req.protocol),
            port: req.published,
            target_port: req.target,
            vni: req.vni,
            to,
        };
        let (before, after) = {
            let st = self.lock();
            let before = firewall_ports(&st.fdb);
            let mut after = before.clone();
            match req.protocol {
                PortProtocol::Tcp => after.tcp.insert(req.published),
                PortProtocol::Udp => after.udp.insert(req.published),
            };
            (before, after)
        };
        self.write_ports(l, &after)?;
        if let Err(e) = self.edit_fdb(|f| f.set_published(published)) {
            let _ = self.write_ports(l, &before);
            return Err(e);
        }
        l.port_owners
            .insert((req.protocol, req.published), req.owner);
        Ok(())
    }

    pub(super) fn port_del(&self, protocol: PortProtocol, port: u16) -> R<()> {
        let mut host = self.host_lock();
        let Some(l) = host.as_mut() else {
            return Err(ApiError::not_found(format!(
                "{protocol} port {port} is not published here (there is no host link)"
            )));
        };
        let proto = proto_of(protocol);
        let after = {
            let st = self.lock();
            if st.fdb.published(proto, port).is_none() {
                return Err(ApiError::not_found(format!(
                    "{protocol} port {port} is not published here; see `vxnet dp ports`"
                )));
            }
            let mut after = firewall_ports(&st.fdb);
            match protocol {
                PortProtocol::Tcp => after.tcp.remove(&port),
                PortProtocol::Udp => after.udp.remove(&port),
            };
            after
        };
        // The firewall first: no new connection reaches a port that is
        // about to go.
        self.write_ports(l, &after)?;
        self.edit_fdb(|f| f.remove_published(proto, port).map(|_| ()))?;
        l.port_owners.remove(&(protocol, port));
        Ok(())
    }

    /// Makes the firewall's sets hold `ports`.
    fn write_ports(&self, l: &mut Linked, ports: &firewall::Ports) -> R<()> {
        let r = firewall::apply(&firewall::set_ports(ports)).or_else(|e| {
            // The table itself may be gone: write it whole.
            tracing::warn!(error = %e, "rewriting the firewall table");
            firewall::apply(&firewall::install(&l.firewall_spec(), ports))
        });
        l.firewall_error = r.clone().err();
        r.map_err(|e| ApiError::new(ErrorCode::Internal, e))
    }

    fn backend_macs(&self, vni: vxnet_proto::wire::Vni, bs: &[BackendSpec]) -> R<Vec<Backend>> {
        let st = self.lock();
        let table = st.fdb.vni(vni);
        bs.iter()
            .map(|b| {
                let known = table.and_then(|t| t.ips.get(&b.ip)).copied();
                let mac = b.mac.or(known).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "backend {} has no known MAC on VNI {vni}: give it as IP,MAC, or attach that endpoint first",
                        b.ip
                    ))
                })?;
                Ok(Backend { ip: b.ip, mac })
            })
            .collect()
    }

    pub(super) fn ports(&self) -> Vec<PortInfo> {
        let host = self.host_lock();
        let Some(l) = host.as_ref() else {
            return Vec::new();
        };
        let held = firewall::read().ok().flatten().unwrap_or_default();
        let st = self.lock();
        let mut out: Vec<PortInfo> = st
            .fdb
            .published_ports()
            .map(|p| {
                let protocol = protocol(p.proto);
                let in_firewall = match protocol {
                    PortProtocol::Tcp => held.ports.tcp.contains(&p.port),
                    PortProtocol::Udp => held.ports.udp.contains(&p.port),
                } && held.complete;
                PortInfo {
                    protocol,
                    published: p.port,
                    target: p.target_port,
                    vni: p.vni,
                    to: match &p.to {
                        PublishedTo::Vip(v) => PortTo::Vip(*v),
                        PublishedTo::Tasks(s) => PortTo::Backends(
                            s.backends()
                                .iter()
                                .map(|b| BackendSpec {
                                    ip: b.ip,
                                    mac: Some(b.mac),
                                })
                                .collect(),
                        ),
                    },
                    in_firewall,
                    owner: l
                        .port_owners
                        .get(&(protocol, p.port))
                        .copied()
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by_key(|p| (p.protocol, p.published));
        out
    }
}
