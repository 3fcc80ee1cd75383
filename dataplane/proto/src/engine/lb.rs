//! VIP load balancing in the engine (see [`crate::lb`] for the design):
//! what happens to a frame from a TAP addressed to a VIP, and to a frame
//! about to be written to a local port that may be a reply of a balanced
//! flow. This module owns the worker's conntrack table.
use super::trace::{Answer, FlowMatch, Note};
use super::{Ctx, Outputs, note};
use crate::fdb::{Fdb, PortId, VniTable};
use crate::lb::conntrack::{
    Conntrack, ConntrackConfig, Dir, FlowId, FlowInfo, FlowKey, FlowKind, NewFlow,
};
use crate::lb::maglev::flow_hash;
use crate::lb::nat::{self, NatError, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Side};
use crate::lb::reply;
use crate::lb::service::{Backend, Service, vip_mac};
use crate::stats::{Counter, Drop};
use crate::wire::vnet::VnetHdr;
use crate::wire::{MacAddr, Vni};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How often [`Lb::sweep`] examines the next slice of the table.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;

/// One worker's load-balancing state.
pub(super) struct Lb {
    pub(super) cfg: ConntrackConfig,
    /// Allocated when the first service appears (between batches), so
    /// that a dataplane without services spends no memory on it.
    pub(super) conntrack: Option<Conntrack>,
    next_sweep: Option<Instant>,
    /// The last lookup and its answer. A GRO burst delivers dozens of
    /// segments of one flow in a row, and a GSO frame's segments follow
    /// each other too: all but the first skip the table.
    pub(super) recent: Option<Recent>,
}

/// A remembered lookup: still true while the table has not changed and,
/// for a hit (which may expire), within the same batch.
#[derive(Clone, Copy)]
pub(super) struct Recent {
    key: FlowKey,
    found: Option<(FlowId, Dir)>,
    changes: u64,
    now: Instant,
}

/// [`Conntrack::lookup`], answered from `recent` when it still holds.
#[inline]
pub(super) fn lookup(
    ct: &mut Conntrack,
    recent: &mut Option<Recent>,
    key: &FlowKey,
    now: Instant,
    stats: &crate::stats::Stats,
) -> Option<(FlowId, Dir)> {
    if let Some(r) = recent {
        if r.key == *key && r.changes == ct.changes() && (r.found.is_none() || r.now == now) {
            return r.found;
        }
    }
    let found = ct.lookup(key, now, stats);
    *recent = Some(Recent {
        key: *key,
        found,
        changes: ct.changes(),
        now,
    });
    found
}

/// What became of a frame offered to the VIP path.
pub(super) enum Vip {
    /// Its destination is not a VIP: forward it as usual.
    Pass,
    /// Answered, or dropped and counted.
    Done,
    /// Translated: forward it to this (the backend's) MAC.
    Forward(MacAddr),
}

impl Lb {
    pub(super) fn new(cfg: ConntrackConfig) -> Lb {
        Lb {
            cfg,
            conntrack: None,
            next_sweep: None,
            recent: None,
        }
    }

    /// Makes sure the table exists once services do.
    pub(super) fn prepare(&mut self, now: Instant) {
        if self.conntrack.is_none() {
            self.conntrack = Some(Conntrack::new(self.cfg, now));
        }
    }

    pub(super) fn conntrack(&self) -> Option<&Conntrack> {
        self.conntrack.as_ref()
    }
}

/// The key of packet `p` on `vni`, in the direction it travels.
fn flow_key(vni: Vni, p: &nat::L4) -> FlowKey {
    FlowKey {
        vni: vni.get(),
        proto: p.proto,
        src: p.src,
        dst: p.dst,
        sport: p.sport,
        dport: p.dport,
    }
}

/// True if `frame` is IPv4 or IPv6 to a VIP of `table` (read without
/// looking at the L4 header, which a fragment may not have).
fn frame_dst_is_vip(table: &VniTable, frame: &[u8]) -> bool {
    let dst = match super::ethertype(frame) {
        super::ETHERTYPE_IPV4 => frame
            .get(30..34)
            .map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        super::ETHERTYPE_IPV6 => frame.get(38..54).map(|b| {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(o))
        }),
        _ => None,
    };
    dst.is_some_and(|d| table.services.contains_key(&d))
}

/// True if `backend` is the sender of packet `p` (parsed from `frame`):
/// its address and its MAC, which anti-spoofing checked is the TAP's.
/// (A container that borrows a backend's address gets no hairpin: its
/// packet goes to the backend, which drops it as a martian.)
fn is_sender(backend: &Backend, p: &nat::L4, frame: &[u8]) -> bool {
    backend.ip == p.src && MacAddr::src_of(frame) == Some(backend.mac)
}

impl Ctx {
    /// Expires the next slice of the conntrack table, at most every 50 ms,
    /// and drops flows to VIPs that are no longer services in `fdb`
    /// (nothing would look them up again before they time out).
    pub(super) fn sweep_conntrack(&mut self, fdb: &Fdb) {
        let now = self.now;
        let lb = &mut self.lb;
        let Some(ct) = lb.conntrack.as_mut() else {
            return;
        };
        if lb.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        lb.next_sweep = Some(now + SWEEP_EVERY);
        ct.handle_timeout(now, &self.stats, |f| match f.kind {
            FlowKind::Vip => Vni::new(f.key.vni)
                .and_then(|v| fdb.vni(v))
                .is_some_and(|t| t.services.contains_key(&f.key.dst)),
            FlowKind::Published => fdb.published(f.key.proto, f.key.dport).is_some(),
            FlowKind::Return => Vni::new(f.key.vni)
                .and_then(|v| fdb.vni(v))
                .is_some_and(|t| t.ingress),
        });
    }

    /// The balanced flows of this worker, as of the current batch's time.
    pub(super) fn flows(&self) -> impl Iterator<Item = FlowInfo> + '_ {
        self.lb
            .conntrack()
            .into_iter()
            .flat_map(move |ct| ct.iter(self.now))
    }

    /// A frame from local `port` on `vni` whose destination MAC is no
    /// endpoint: balanced if its destination IP is a VIP of the VNI.
    pub(super) fn balance(
        &mut self,
        table: &VniTable,
        vni: Vni,
        port: PortId,
        hdr: &VnetHdr,
        frame: &mut [u8],
        out: &mut Outputs,
    ) -> Vip {
        let p = match nat::parse(frame) {
            Ok(p) => p,
            Err(NatError::Fragment) => {
                // Only a VIP's fragments are this path's business.
                if frame_dst_is_vip(table, frame) {
                    self.stats.dropped(Drop::LbFragment);
                    return Vip::Done;
                }
                return Vip::Pass;
            }
            Err(_) => return Vip::Pass,
        };
        let Some(svc) = table.services.get(&p.dst) else {
            return Vip::Pass;
        };
        if reply::is_echo_request(&p) {
            match reply::echo_reply(frame, &p, svc.mac()) {
                Some(n) => {
                    self.stats.inc(Counter::LbEchoReplies);
                    note!(
                        self.rec,
                        Note::Answered {
                            answer: Answer::VipEcho,
                            port
                        }
                    );
                    out.tap(port).push_as_is(&VnetHdr::NONE, &frame[..n]);
                }
                None => self.stats.dropped(Drop::LbMalformed),
            }
            return Vip::Done;
        }
        if p.proto == PROTO_ICMPV6 && p.icmp_type == ICMPV6_NEIGHBOR_SOLICIT {
            // A unicast solicitation (neighbour unreachability detection).
            if !self.proxy(table, port, frame, out) {
                self.stats.dropped(Drop::LbMalformed);
            }
            return Vip::Done;
        }
        if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
            self.stats.dropped(Drop::LbUnsupported);
            return Vip::Done;
        }
        let key = flow_key(vni, &p);
        if self.hairpin_reply(&key, &p, port, hdr, frame, out) {
            return Vip::Done;
        }
        if p.sport == p.dport && self.picks_itself(svc, &key, &p, frame) {
            // Refused like a VIP without backends: a reset ends the
            // connect at once.
            self.stats.dropped(Drop::LbHairpinPort);
            self.refuse(port, frame, &p, svc.mac(), out);
            return Vip::Done;
        }
        let Some((backend, flow)) = self.track(svc, &key, p.tcp_flags) else {
            if svc.backends().is_empty() {
                self.refuse(port, frame, &p, svc.mac(), out);
            }
            return Vip::Done;
        };
        note!(
            self.rec,
            Note::Vip {
                vip: p.dst,
                backend: backend.ip,
                mac: backend.mac,
                flow,
                backends: svc.backends().len(),
            }
        );
        if is_sender(backend, &p, frame) {
            return self.hairpin(&p, port, hdr, frame, out);
        }
        if nat::rewrite(frame, &p, Side::Dst, backend.ip, None, hdr.needs_csum()).is_err() {
            self.stats.dropped(Drop::LbMalformed);
            return Vip::Done;
        }
        nat::set_dst_mac(frame, backend.mac);
        self.stats.inc(Counter::LbDnat);
        Vip::Forward(backend.mac)
    }

    /// A packet `p` of a task to its own service's VIP that was balanced
    /// to the task itself, as Docker allows (its IPVS runs in the task's
    /// own namespace). Translating the destination alone would hand the
    /// task a packet from its own address (a martian, dropped) whose
    /// reply would never leave it. So the source becomes the VIP as well
    /// (hairpin NAT, as kube-proxy's masquerade does), and the packet goes
    /// back to the port it came from, to the task's own MAC. Its replies,
    /// to the VIP, come back through [`Ctx::hairpin_reply`].
    ///
    /// Not from the service's own port: see [`Ctx::picks_itself`].
    fn hairpin(
        &mut self,
        p: &nat::L4,
        port: PortId,
        hdr: &VnetHdr,
        frame: &mut [u8],
        out: &mut Outputs,
    ) -> Vip {
        let vip = p.dst;
        if self.reflect(vip, p, frame, hdr) {
            self.stats.inc(Counter::LbDnat);
            note!(self.rec, Note::Hairpin { vip });
            self.send_back(port, hdr, frame, out);
        }
        Vip::Done
    }

    /// A reply (task → VIP) of a hairpin flow, if `key` is one: translated
    /// to come from the VIP and go to the task's own address and MAC, and
    /// sent back to `port`. False (and `frame` untouched) for any other
    /// packet.
    fn hairpin_reply(
        &mut self,
        key: &FlowKey,
        p: &nat::L4,
        port: PortId,
        hdr: &VnetHdr,
        frame: &mut [u8],
        out: &mut Outputs,
    ) -> bool {
        let (now, stats, lb) = (self.now, &*self.stats, &mut self.lb);
        let Some(ct) = lb.conntrack.as_mut() else {
            return false;
        };
        let Some((id, Dir::Reply)) = lookup(ct, &mut lb.recent, key, now, stats) else {
            return false;
        };
        if !ct.flow(id).is_hairpin() {
            return false;
        }
        if !self.rec.as_ref().is_some_and(|r| r.dry_run) {
            ct.update(id, Dir::Reply, p.tcp_flags, now);
        }
        let vip = ct.flow(id).key.dst;
        note!(self.rec, Note::ReverseNat { vip });
        if self.reflect(vip, p, frame, hdr) {
            self.stats.inc(Counter::LbReverseNat);
            self.send_back(port, hdr, frame, out);
        }
        true
    }

    /// Turns packet `p` of a task (parsed from `frame`) around for a
    /// hairpin, either way: from `vip` to the task's own address and MAC
    /// (its source's), checksums fixed. False when the frame is malformed
    /// (counted).
    fn reflect(&mut self, vip: IpAddr, p: &nat::L4, frame: &mut [u8], hdr: &VnetHdr) -> bool {
        let partial = hdr.needs_csum();
        let Some(task_mac) = MacAddr::src_of(frame) else {
            self.stats.dropped(Drop::LbMalformed);
            return false;
        };
        if nat::rewrite(frame, p, Side::Src, vip, None, partial).is_err()
            || nat::rewrite(frame, p, Side::Dst, p.src, None, partial).is_err()
        {
            self.stats.dropped(Drop::LbMalformed);
            return false;
        }
        nat::set_src_mac(frame, vip_mac(vip));
        nat::set_dst_mac(frame, task_mac);
        true
    }

    /// Whether a packet `p` from the service's own port (client port = VIP
    /// port) of one of `svc`'s tasks starts a flow Maglev balances back to
    /// the task itself. That hairpin cannot work: the translated packet,
    /// VIP:P → task:P, matches the client's own connected socket (task:P ↔
    /// VIP:P) before the server's listening one, so the task would connect
    /// to itself. Without translating the source port it cannot work, so
    /// it is refused (`lb/hairpin_port`) rather than let the client talk to
    /// itself. Balanced to another task, it works.
    fn picks_itself(&mut self, svc: &Service, key: &FlowKey, p: &nat::L4, frame: &[u8]) -> bool {
        let own = svc
            .find(p.src)
            .and_then(|i| svc.backends().get(usize::from(i)))
            .is_some_and(|b| is_sender(b, p, frame));
        if !own {
            return false;
        }
        let (now, stats, lb) = (self.now, &*self.stats, &mut self.lb);
        // A tracked flow keeps the backend it has (never the sender).
        if let Some(ct) = lb.conntrack.as_mut() {
            if lookup(ct, &mut lb.recent, key, now, stats).is_some() {
                return false;
            }
        }
        let hash = flow_hash(key.src, key.dst, key.proto, key.sport, key.dport);
        svc.pick(hash).is_some_and(|(_, b)| is_sender(b, p, frame))
    }

    /// Writes a hairpinned `frame` to the port it came from.
    fn send_back(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8], out: &mut Outputs) {
        self.stats.inc(Counter::LbHairpin);
        note!(
            self.rec,
            Note::TapTx {
                port,
                len: frame.len()
            }
        );
        out.tap(port).push_as_is(hdr, frame);
    }

    /// The backend of flow `key` (a packet to the VIP of `svc` with TCP
    /// flags `flags`): its tracked one if it is still in the set, else a
    /// new pick, tracked. `None` when the packet is dropped (counted). A
    /// dry run (`vxnet trace`) decides the same but changes no flow; it
    /// cannot tell that a full table would refuse a new flow.
    fn track<'s>(
        &mut self,
        svc: &'s Service,
        key: &FlowKey,
        flags: u8,
    ) -> Option<(&'s Backend, FlowMatch)> {
        let hash = flow_hash(key.src, key.dst, key.proto, key.sport, key.dport);
        let k = *key;
        self.track_flow(svc, key, flags, hash, |ip, index, generation| {
            NewFlow::vip(k, ip, generation, index)
        })
    }

    /// [`Ctx::track`] for any flow balanced over `svc`: a new one is
    /// picked by `hash` and tracked as `make(backend, index, generation)`.
    pub(super) fn track_flow<'s>(
        &mut self,
        svc: &'s Service,
        key: &FlowKey,
        flags: u8,
        hash: u64,
        make: impl FnOnce(IpAddr, u16, u64) -> NewFlow,
    ) -> Option<(&'s Backend, FlowMatch)> {
        let dry = self.rec.as_ref().is_some_and(|r| r.dry_run);
        let now = self.now;
        let stats = &*self.stats;
        let lb = &mut self.lb;
        let ct = match lb.conntrack.as_mut() {
            Some(ct) => ct,
            None => lb.conntrack.insert(Conntrack::new(lb.cfg, now)),
        };
        if let Some((id, dir)) = lookup(ct, &mut lb.recent, key, now, stats) {
            let f = ct.flow(id);
            let new_syn = key.proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            if dir == Dir::Forward && !(f.is_closed() && new_syn) {
                let (backend_ip, generation, index) = (f.backend, f.service, f.index);
                let index = if generation == svc.generation() {
                    index
                } else {
                    // The set changed since: the flow stays if its backend did.
                    let Some(i) = svc.find(backend_ip) else {
                        if !dry {
                            ct.remove(id);
                            stats.inc(Counter::ConntrackRemoved);
                        }
                        stats.dropped(Drop::LbBackendGone);
                        return None;
                    };
                    if !dry {
                        ct.rebind(id, svc.generation(), i);
                    }
                    i
                };
                if !dry {
                    ct.update(id, Dir::Forward, flags, now);
                }
                return svc
                    .backends()
                    .get(usize::from(index))
                    .map(|b| (b, FlowMatch::Hit));
            }
            // A new connection reusing a closed one's ports (or, oddly, a
            // packet matching a flow's reply key): start afresh.
            if !dry {
                ct.remove(id);
            }
        }
        let Some((index, backend)) = svc.pick(hash) else {
            stats.dropped(Drop::LbNoBackend);
            return None;
        };
        if !dry {
            ct.insert_flow(make(backend.ip, index, svc.generation()), flags, now, stats)?;
        }
        stats.inc(Counter::LbNewFlows);
        Some((backend, FlowMatch::New))
    }

    /// A new flow to a VIP with no backend: a TCP segment gets a reset from
    /// the VIP (so `connect` fails at once); anything else is only dropped.
    fn refuse(&mut self, port: PortId, frame: &[u8], p: &nat::L4, mac: MacAddr, out: &mut Outputs) {
        if let Some(n) = reply::tcp_reset(frame, p, mac, &mut self.reply) {
            self.stats.inc(Counter::LbResets);
            note!(
                self.rec,
                Note::Answered {
                    answer: Answer::VipReset,
                    port
                }
            );
            out.tap(port).push_as_is(&VnetHdr::NONE, &self.reply[..n]);
        }
    }

    /// A frame about to be written to a local port on `vni`: if it is a
    /// reply of a balanced flow (backend → client), its source becomes the
    /// VIP again (address and MAC). `partial`: its L4 checksum field holds
    /// a partial sum (NEEDS_CSUM, TAP-to-TAP).
    pub(super) fn reverse(&mut self, vni: Vni, partial: bool, frame: &mut [u8]) {
        let now = self.now;
        let stats = &*self.stats;
        let lb = &mut self.lb;
        let Some(ct) = lb.conntrack.as_mut() else {
            return;
        };
        let Ok(p) = nat::parse(frame) else {
            return;
        };
        if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
            return;
        }
        let key = flow_key(vni, &p);
        let Some((id, Dir::Reply)) = lookup(ct, &mut lb.recent, &key, now, stats) else {
            return;
        };
        if ct.flow(id).kind != FlowKind::Vip {
            return;
        }
        if !self.rec.as_ref().is_some_and(|r| r.dry_run) {
            ct.update(id, Dir::Reply, p.tcp_flags, now);
        }
        let vip = ct.flow(id).key.dst;
        note!(self.rec, Note::ReverseNat { vip });
        if nat::rewrite(frame, &p, Side::Src, vip, None, partial).is_ok() {
            nat::set_src_mac(frame, vip_mac(vip));
            stats.inc(Counter::LbReverseNat);
        }
    }
}
