//! The routing mesh, host-mode published ports and egress: what the engine
//! does with frames of the host link (the dataplane's TAP in the host's
//! own namespace, [`HostLink`]) and with frames containers send to their
//! network's gateway. This module owns no state of its own: flows live in
//! the worker's conntrack table (`engine/lb.rs`), ports and addresses in
//! the [`Fdb`].
//!
//! ```text
//! client ──▶ host:P ─(host nft: DNAT to the mesh address, port kept)─▶ vxnet0
//!   host_in: published (proto, P)? ─ ingress: the VIP's Maglev table
//!                                    └ host:    the local tasks
//!   conntrack (HOST_VNI key) ▶ DNAT to task:target, src MAC = ingress endpoint
//!   ─▶ FDB: local task, or VXLAN to the task's node ──▶ task sees client:port
//! task's node: from_wire on the ingress VNI, source outside the network:
//!   a Return flow remembers the MAC it came from (the ingress node's)
//! task ─▶ gateway MAC ─ route: Return flow? back to that MAC over VXLAN
//!                            └ Published flow? source = mesh address:P ─▶ vxnet0
//! ingress node: from_wire to its ingress endpoint MAC ─ reply_to_host: same
//! host: conntrack un-DNAT ─▶ client (the client's address was never changed)
//! ```
//!
//! Egress is the other way round: a frame from a container to its
//! gateway MAC that belongs to no flow leaves through the host link with
//! its source mapped one-to-one to the container's egress address (from
//! [`HostLink::egress_addr`]); the host's firewall masquerades that to the
//! host's own address, and the answers come back to the egress address,
//! which maps back to the container. The dataplane keeps no per-flow state
//! for egress: the host's conntrack does.
use super::trace::{Answer, Note};
use super::{Ctx, ETHERTYPE_ARP, ETHERTYPE_IPV4, Outputs, ethertype, note};
use crate::fdb::{Dest, Fdb, HostLink, PortId, PublishedTo, VniTable};
use crate::lb::conntrack::{Dir, FlowKey, FlowKind, HOST_VNI, NewFlow};
use crate::lb::maglev::flow_hash;
use crate::lb::nat::{self, L4, NatError, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Side};
use crate::lb::reply;
use crate::stats::{Counter, Drop};
use crate::wire::vnet::VnetHdr;
use crate::wire::{MacAddr, Vni, arp};
use std::net::IpAddr;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;

/// The source MAC of frames the dataplane routes into `table`'s network:
/// its IPv4 gateway's (or IPv6 gateway's), else the link's own.
fn gateway_mac(table: &VniTable, v6: bool, fallback: MacAddr) -> MacAddr {
    table
        .gateways
        .iter()
        .find(|(ip, _)| ip.is_ipv6() == v6)
        .map_or(fallback, |(_, m)| *m)
}

fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

impl Ctx {
    /// A frame the host sent into the host link: ARP for the dataplane's
    /// addresses, a connection to a published port (to the mesh address),
    /// or an answer to a container's egress traffic.
    pub(super) fn host_in(
        &mut self,
        fdb: &Fdb,
        h: &HostLink,
        hdr: &VnetHdr,
        frame: &mut [u8],
        out: &mut Outputs,
    ) {
        note!(
            self.rec,
            Note::HostLinkRx {
                port: h.port,
                len: frame.len()
            }
        );
        match ethertype(frame) {
            ETHERTYPE_ARP => return self.host_arp(h, frame, out),
            ETHERTYPE_IPV4 => {}
            _ => return self.stats.dropped(Drop::MeshUnsupported),
        }
        let p = match nat::parse(frame) {
            Ok(p) => p,
            Err(NatError::Fragment) => return self.stats.dropped(Drop::LbFragment),
            Err(_) => return self.stats.dropped(Drop::LbMalformed),
        };
        let IpAddr::V4(dst) = p.dst else {
            return self.stats.dropped(Drop::MeshUnsupported);
        };
        if dst == h.mesh_ip() {
            return self.publish_in(fdb, h, hdr, frame, &p, out);
        }
        match h.egress_index(dst) {
            Some(i) => self.egress_in(fdb, h, i, hdr, frame, &p, out),
            None => self.stats.dropped(Drop::MeshNoRoute),
        }
    }

    /// ARP from the host for the mesh address or an egress address: the
    /// dataplane's side of the link answers for its whole subnet but the
    /// host's own address.
    fn host_arp(&mut self, h: &HostLink, frame: &[u8], out: &mut Outputs) {
        let Ok(Some(req)) = arp::parse_request(frame) else {
            return self.stats.dropped(Drop::MeshUnsupported);
        };
        if req.is_gratuitous() || !h.contains(req.target_ip) || req.target_ip == h.host_ip() {
            return;
        }
        let n = arp::emit_reply(&req, h.link_mac(), &mut self.reply);
        self.stats.inc(Counter::MeshHostArp);
        note!(
            self.rec,
            Note::Answered {
                answer: Answer::Arp,
                port: h.port
            }
        );
        out.tap(h.port).push_as_is(&VnetHdr::NONE, &self.reply[..n]);
    }

    /// A packet to a published port: balanced (conntrack, else Maglev) to a
    /// task, its destination address and port translated, and forwarded on
    /// the task's network. The source (the client) is left alone.
    fn publish_in(
        &mut self,
        fdb: &Fdb,
        h: &HostLink,
        hdr: &VnetHdr,
        frame: &mut [u8],
        p: &L4,
        out: &mut Outputs,
    ) {
        if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
            return self.stats.dropped(Drop::MeshUnsupported);
        }
        let Some(pb) = fdb.published(p.proto, p.dport) else {
            return self.stats.dropped(Drop::MeshNoPort);
        };
        let (vni, target) = (pb.vni, pb.target_port);
        let Some(table) = fdb.vni(vni) else {
            return self.stats.dropped(Drop::LbNoBackend);
        };
        // Ingress: hashed on the VIP, the same on every node (the mesh
        // address is too, but the VIP does not depend on the link's
        // configuration).
        let (svc, hash_dst, ingress) = match &pb.to {
            PublishedTo::Vip(vip) => match table.services.get(vip) {
                Some(s) => (&**s, *vip, true),
                None => return self.stats.dropped(Drop::LbNoBackend),
            },
            PublishedTo::Tasks(s) => (&**s, p.dst, false),
        };
        let key = FlowKey {
            vni: HOST_VNI,
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            sport: p.sport,
            dport: p.dport,
        };
        let hash = flow_hash(p.src, hash_dst, p.proto, p.sport, p.dport);
        let make = |ip: IpAddr, index: u16, generation: u64| NewFlow {
            key,
            kind: FlowKind::Published,
            backend: ip,
            backend_port: target,
            reply_vni: vni.get(),
            service: generation,
            index,
            peer: [0; 6],
        };
        let Some((backend, _)) = self.track_flow(svc, &key, p.tcp_flags, hash, make) else {
            if svc.backends().is_empty() {
                // Refused at once, like a VIP without tasks.
                if let Some(n) = reply::tcp_reset(frame, p, h.link_mac(), &mut self.reply) {
                    self.stats.inc(Counter::LbResets);
                    note!(
                        self.rec,
                        Note::Answered {
                            answer: Answer::VipReset,
                            port: h.port
                        }
                    );
                    out.tap(h.port).push_as_is(&VnetHdr::NONE, &self.reply[..n]);
                }
            }
            return;
        };
        let (ip, mac) = (backend.ip, backend.mac);
        if nat::rewrite(frame, p, Side::Dst, ip, Some(target), hdr.needs_csum()).is_err() {
            return self.stats.dropped(Drop::LbMalformed);
        }
        nat::set_dst_mac(frame, mac);
        // The ingress endpoint's MAC tells the task's node where replies
        // go; a host-mode task sees its gateway.
        let from = if ingress {
            h.host_mac
        } else {
            gateway_mac(table, ip.is_ipv6(), h.link_mac())
        };
        nat::set_src_mac(frame, from);
        self.stats.inc(Counter::MeshIngress);
        note!(
            self.rec,
            Note::Published {
                published: p.dport,
                backend: ip,
                target_port: target
            }
        );
        let dest = table.macs.get(&mac).copied();
        self.unicast(fdb, vni, table, h.port, dest, hdr, frame, out);
    }

    /// An answer from the outside to egress address slot `index`: back to
    /// the container's own address, from its gateway.
    #[allow(clippy::too_many_arguments)]
    fn egress_in(
        &mut self,
        fdb: &Fdb,
        h: &HostLink,
        index: u32,
        hdr: &VnetHdr,
        frame: &mut [u8],
        p: &L4,
        out: &mut Outputs,
    ) {
        let Some(slot) = fdb.egress_slot(index).copied() else {
            return self.stats.dropped(Drop::MeshNoRoute);
        };
        let Some(table) = fdb.vni(slot.vni).filter(|t| t.egress) else {
            return self.stats.dropped(Drop::MeshNoEgress);
        };
        if nat::rewrite(
            frame,
            p,
            Side::Dst,
            IpAddr::V4(slot.ip),
            None,
            hdr.needs_csum(),
        )
        .is_err()
        {
            return self.stats.dropped(Drop::LbMalformed);
        }
        nat::set_dst_mac(frame, slot.mac);
        nat::set_src_mac(frame, gateway_mac(table, false, h.link_mac()));
        self.stats.inc(Counter::MeshEgressReplies);
        note!(
            self.rec,
            Note::EgressReply {
                addr: IpAddr::V4(slot.ip)
            }
        );
        note!(
            self.rec,
            Note::TapTx {
                port: slot.port,
                len: frame.len()
            }
        );
        out.tap(slot.port).push_as_is(hdr, frame);
    }

    /// A frame from local `port` on `vni` to one of the network's gateway
    /// MACs: a ping or neighbour solicitation for the gateway (answered), a
    /// reply of a published-port flow (to the host, or back to the node
    /// the client came through), or egress.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        table: &VniTable,
        port: PortId,
        hdr: &VnetHdr,
        frame: &mut [u8],
        out: &mut Outputs,
    ) {
        if ethertype(frame) == ETHERTYPE_ARP {
            if !self.proxy(table, port, frame, out) {
                self.stats.dropped(Drop::TapNoDestination);
            }
            return;
        }
        let p = match nat::parse(frame) {
            Ok(p) => p,
            Err(NatError::Fragment) => return self.stats.dropped(Drop::LbFragment),
            Err(_) => return self.stats.dropped(Drop::LbMalformed),
        };
        if reply::is_echo_request(&p) {
            if let Some(&(_, mac)) = table.gateways.iter().find(|(ip, _)| *ip == p.dst) {
                match reply::echo_reply(frame, &p, mac) {
                    Some(n) => {
                        self.stats.inc(Counter::MeshGatewayReplies);
                        note!(
                            self.rec,
                            Note::Answered {
                                answer: Answer::GatewayEcho,
                                port
                            }
                        );
                        out.tap(port).push_as_is(&VnetHdr::NONE, &frame[..n]);
                    }
                    None => self.stats.dropped(Drop::LbMalformed),
                }
                return;
            }
        }
        if p.proto == PROTO_ICMPV6 && p.icmp_type == ICMPV6_NEIGHBOR_SOLICIT {
            if !self.proxy(table, port, frame, out) {
                self.stats.dropped(Drop::TapNoDestination);
            }
            return;
        }
        if p.proto == PROTO_TCP || p.proto == PROTO_UDP {
            let key = FlowKey {
                vni: vni.get(),
                proto: p.proto,
                src: p.src,
                dst: p.dst,
                sport: p.sport,
                dport: p.dport,
            };
            if let Some((kind, peer, mesh, published)) = self.reply_of(&key, p.tcp_flags) {
                match kind {
                    FlowKind::Published => {
                        let Some(h) = fdb.host() else {
                            return self.stats.dropped(Drop::MeshNoFlow);
                        };
                        if !self.translate_for_host(h, mesh, published, hdr.needs_csum(), frame, &p)
                        {
                            return;
                        }
                        return out.tap(h.port).push_as_is(hdr, frame);
                    }
                    FlowKind::Return => {
                        let peer = MacAddr(peer);
                        nat::set_dst_mac(frame, peer);
                        self.stats.inc(Counter::MeshReturned);
                        let dest = table.macs.get(&peer).copied();
                        return self.unicast(fdb, vni, table, port, dest, hdr, frame, out);
                    }
                    // A VIP flow's client is an endpoint of the network,
                    // never reached through the gateway.
                    FlowKind::Vip => {}
                }
            }
            // A task's answer on a published port with no flow (this
            // dataplane restarted): must not leak out through egress, from
            // the wrong address. The client's next packet brings the flow
            // back (loose pick-up), and the task's retransmission follows.
            if p.proto == PROTO_TCP
                && p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
                && fdb.may_be_published_reply(vni, p.proto, p.sport)
            {
                return self.stats.dropped(Drop::MeshNoFlow);
            }
        }
        self.egress_out(fdb, vni, table, port, hdr, frame, &p, out);
    }

    /// The flow whose reply key `key` is, updated for one packet: (kind,
    /// peer, the forward key's destination and port).
    fn reply_of(&mut self, key: &FlowKey, flags: u8) -> Option<(FlowKind, [u8; 6], IpAddr, u16)> {
        let now = self.now;
        let stats = &*self.stats;
        let lb = &mut self.lb;
        let ct = lb.conntrack.as_mut()?;
        let (id, dir) = super::lb::lookup(ct, &mut lb.recent, key, now, stats)?;
        if dir != Dir::Reply {
            return None;
        }
        // A dry run (`vxnet trace`) decides the same but changes no flow.
        if !self.rec.as_ref().is_some_and(|r| r.dry_run) {
            ct.update(id, Dir::Reply, flags, now);
        }
        let f = ct.flow(id);
        Some((f.kind, f.peer, f.key.dst, f.key.dport))
    }

    /// Turns a published flow's reply into what the host expects: from
    /// the mesh address and the published port, between the link's MACs.
    fn translate_for_host(
        &mut self,
        h: &HostLink,
        mesh: IpAddr,
        published: u16,
        partial: bool,
        frame: &mut [u8],
        p: &L4,
    ) -> bool {
        if nat::rewrite(frame, p, Side::Src, mesh, Some(published), partial).is_err() {
            self.stats.dropped(Drop::LbMalformed);
            return false;
        }
        nat::set_src_mac(frame, h.link_mac());
        nat::set_dst_mac(frame, h.host_mac);
        self.stats.inc(Counter::MeshToHost);
        note!(
            self.rec,
            Note::ToHost {
                backend: p.src,
                target_port: p.sport,
                mesh,
                published,
                port: h.port,
                len: frame.len()
            }
        );
        true
    }

    /// A frame about to be written to the host link's port on `vni` (from
    /// the wire, or switched locally): only a published flow's reply may
    /// pass, translated. False when it must be dropped (counted).
    pub(super) fn reply_to_host(
        &mut self,
        h: &HostLink,
        vni: Vni,
        partial: bool,
        frame: &mut [u8],
    ) -> bool {
        let p = match nat::parse(frame) {
            Ok(p) if p.proto == PROTO_TCP || p.proto == PROTO_UDP => p,
            _ => {
                self.stats.dropped(Drop::MeshNoFlow);
                return false;
            }
        };
        let key = FlowKey {
            vni: vni.get(),
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            sport: p.sport,
            dport: p.dport,
        };
        match self.reply_of(&key, p.tcp_flags) {
            Some((FlowKind::Published, _, mesh, published)) => {
                self.translate_for_host(h, mesh, published, partial, frame, &p)
            }
            _ => {
                self.stats.dropped(Drop::MeshNoFlow);
                false
            }
        }
    }

    /// Egress: the container's address becomes its egress address, and
    /// the frame goes to the host. Only from the port that holds the
    /// address (no container sends as another).
    #[allow(clippy::too_many_arguments)]
    fn egress_out(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        table: &VniTable,
        port: PortId,
        hdr: &VnetHdr,
        frame: &mut [u8],
        p: &L4,
        out: &mut Outputs,
    ) {
        let (Some(h), true, IpAddr::V4(src)) = (fdb.host(), table.egress, p.src) else {
            return self.stats.dropped(Drop::MeshNoEgress);
        };
        // Another container's egress address: the host's forward chain
        // drops every new connection into the link but the mesh address's
        // (crate docs of the dataplane's firewall), so say it here, where
        // it is counted and traced. The host's address and the mesh
        // address stay reachable.
        if let IpAddr::V4(dst) = p.dst {
            if h.contains(dst) && dst != h.host_ip() && dst != h.mesh_ip() {
                return self.stats.dropped(Drop::MeshEgressAddress);
            }
        }
        let mapped = fdb
            .egress_slot_of(vni, src)
            .filter(|i| {
                fdb.egress_slot(*i)
                    .is_some_and(|s| s.port == port && s.mac.0 == src_mac(frame))
            })
            .and_then(|i| h.egress_addr(i));
        let Some(mapped) = mapped else {
            return self.stats.dropped(Drop::MeshNoEgress);
        };
        if nat::rewrite(
            frame,
            p,
            Side::Src,
            IpAddr::V4(mapped),
            None,
            hdr.needs_csum(),
        )
        .is_err()
        {
            return self.stats.dropped(Drop::LbMalformed);
        }
        nat::set_src_mac(frame, h.link_mac());
        nat::set_dst_mac(frame, h.host_mac);
        self.stats.inc(Counter::MeshEgress);
        note!(
            self.rec,
            Note::Egress {
                from: IpAddr::V4(src),
                addr: IpAddr::V4(mapped),
                port: h.port,
                len: frame.len()
            }
        );
        out.tap(h.port).push_as_is(hdr, frame);
    }

    /// On the ingress network, a frame from another node about to be
    /// written to local endpoint `dest`: when it comes from an outside
    /// client (its source is no endpoint of the network), its flow is
    /// tracked with the MAC it came from, so that the task's replies go
    /// back through that node (which holds the flow's translation).
    pub(super) fn track_return(&mut self, vni: Vni, table: &VniTable, frame: &[u8]) {
        // A dry run (`vxnet trace`) tracks nothing: the real packet will.
        if self.rec.as_ref().is_some_and(|r| r.dry_run) {
            return;
        }
        let Ok(p) = nat::parse(frame) else {
            return;
        };
        if (p.proto != PROTO_TCP && p.proto != PROTO_UDP) || table.ips.contains_key(&p.src) {
            return;
        }
        let key = FlowKey {
            vni: vni.get(),
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            sport: p.sport,
            dport: p.dport,
        };
        let peer = src_mac(frame);
        let now = self.now;
        let stats = &*self.stats;
        let lb = &mut self.lb;
        let ct = match lb.conntrack.as_mut() {
            Some(ct) => ct,
            None => lb
                .conntrack
                .insert(crate::lb::conntrack::Conntrack::new(lb.cfg, now)),
        };
        let new_syn = p.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if let Some((id, dir)) = super::lb::lookup(ct, &mut lb.recent, &key, now, stats) {
            let f = ct.flow(id);
            if dir == Dir::Forward && f.kind == FlowKind::Return && !(f.is_closed() && new_syn) {
                if f.peer != peer {
                    // The client's packets now come through another node.
                    ct.set_peer(id, peer);
                }
                ct.update(id, Dir::Forward, p.tcp_flags, now);
                return;
            }
            ct.remove(id);
        }
        let _ = ct.insert_flow(
            NewFlow {
                key,
                kind: FlowKind::Return,
                backend: p.dst,
                backend_port: p.dport,
                reply_vni: vni.get(),
                service: 0,
                index: 0,
                peer,
            },
            p.tcp_flags,
            now,
            stats,
        );
    }
}

/// Whether `d` is the host link's port.
#[inline]
pub(super) fn is_host_port(fdb: &Fdb, d: Option<Dest>) -> Option<&HostLink> {
    match (fdb.host(), d) {
        (Some(h), Some(Dest::Local(p))) if p == h.port => Some(h),
        _ => None,
    }
}
