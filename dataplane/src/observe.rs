//! What workers copy out while a capture or a live trace runs: the taps
//! installed in a worker (between batches, by command) and what they do
//! with each packet. Off (no tap installed) a worker pays one test of a
//! `None` per packet. On, a record or event is built only for packets that
//! match, and handed over with `try_send` on a bounded channel: a reader
//! that falls behind loses records (counted), never the data path's time.

use crossbeam_channel::{Sender, TrySendError};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use vxnet_api::observe::{CaptureRecord, Direction, Flow, LiveEvent, View};
use vxnet_api::trace::{Bytes, TraceProto, TraceStage, TraceVerdict};
use vxnet_proto::engine::live::{LiveSampler, Observed};
use vxnet_proto::engine::trace::Note;
use vxnet_proto::fdb::{Dest, Fdb, PortId};
use vxnet_proto::wire::{MacAddr, Vni, vxlan};

/// Records or events queued towards the API thread at most.
pub const QUEUE: usize = 4096;

/// Shared between the API thread and the workers of one stream.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Set when the stream ends: workers drop the tap at their next packet.
    pub done: AtomicBool,
    /// Records or events lost to a full queue.
    pub dropped: AtomicU64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sends `item` unless the stream ended; false when the tap should go.
fn offer<T>(tx: &Sender<T>, state: &StreamState, item: T) -> bool {
    if state.done.load(Ordering::Relaxed) {
        return false;
    }
    match tx.try_send(item) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            state.dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// A capture's filter, resolved against the table when it started.
#[derive(Debug, Clone)]
pub struct CaptureFilter {
    pub vni: Option<Vni>,
    /// Local ports of the selected endpoints (empty: all).
    pub ports: Vec<PortId>,
    /// Their MACs (plain outer datagrams are matched on the inner frame).
    pub macs: Vec<MacAddr>,
    /// With a VNI: the VTEPs with endpoints on it (ESP is matched on them).
    pub vteps: Vec<IpAddr>,
    pub inner: bool,
    pub outer: bool,
    pub snaplen: usize,
}

/// A capture installed in a worker.
pub struct CaptureTap {
    pub filter: CaptureFilter,
    pub tx: Sender<CaptureRecord>,
    pub state: Arc<StreamState>,
    /// The worker's local address (the outer view's rebuilt headers).
    pub local: SocketAddr,
}

impl CaptureTap {
    fn record(&self, view: View, dir: Direction, data: &[u8]) -> bool {
        let keep = data.len().min(self.filter.snaplen);
        offer(
            &self.tx,
            &self.state,
            CaptureRecord {
                view,
                dir,
                ts_ns: now_ns(),
                orig_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                data: Bytes(data[..keep].to_vec()),
            },
        )
    }

    /// A frame read from (`Rx`) or written to (`Tx`) the TAP of `port`
    /// (without its vnet header). False when the tap should go.
    pub fn inner(&self, fdb: &Fdb, port: PortId, dir: Direction, frame: &[u8]) -> bool {
        if self.state.done.load(Ordering::Relaxed) {
            return false;
        }
        let f = &self.filter;
        if !f.inner {
            return true;
        }
        if !f.ports.is_empty() && !f.ports.contains(&port) {
            return true;
        }
        if let Some(vni) = f.vni {
            if fdb.port(port).is_none_or(|p| p.vni != vni) {
                return true;
            }
        }
        self.record(View::Inner, dir, frame)
    }

    /// A UDP payload received from or sent to `peer` (one datagram).
    pub fn outer(
        &self,
        dir: Direction,
        peer: SocketAddr,
        from: SocketAddr,
        payload: &[u8],
    ) -> bool {
        if self.state.done.load(Ordering::Relaxed) {
            return false;
        }
        let f = &self.filter;
        if !f.outer || !self.outer_matches(peer.ip(), payload) {
            return true;
        }
        let (src, dst) = match dir {
            Direction::Rx => (peer, self.local),
            Direction::Tx => (from, peer),
        };
        match ip_udp(src, dst, payload) {
            Some(pkt) => self.record(View::Outer, dir, &pkt),
            None => true,
        }
    }

    fn outer_matches(&self, peer: IpAddr, payload: &[u8]) -> bool {
        let f = &self.filter;
        if f.vni.is_none() && f.macs.is_empty() {
            return true;
        }
        match vxlan::Packet::new_checked(payload) {
            // Plain VXLAN: its header and inner frame say.
            Ok(p) if payload.get(..4) == Some(&[8, 0, 0, 0]) => {
                if f.vni.is_some_and(|v| v != p.vni()) {
                    return false;
                }
                let inner = &payload[vxlan::HEADER_LEN..];
                f.macs.is_empty()
                    || [MacAddr::dst_of(inner), MacAddr::src_of(inner)]
                        .iter()
                        .any(|m| m.is_some_and(|m| f.macs.contains(&m)))
            }
            // ESP (or a control message): by the network's VTEPs.
            _ => f.vni.is_some() && f.vteps.contains(&peer),
        }
    }
}

/// `payload` behind rebuilt IPv4 or IPv6 and UDP headers (checksum 0).
fn ip_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let b = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64)
        }
        _ => return None,
    };
    let mut out = Vec::with_capacity(payload.len() + 48);
    b.udp(src.port(), dst.port())
        .write(&mut out, payload)
        .ok()?;
    Some(out)
}

/// A live trace's filter.
#[derive(Debug, Clone, Default)]
pub struct LiveFilter {
    pub vni: Option<Vni>,
    /// `--container`: the addresses of its endpoints here, and their TAPs.
    /// A packet matches if it comes from or goes to one of them.
    pub endpoints: Vec<IpAddr>,
    pub ports: Vec<PortId>,
    /// `--addr`: and (with `--container`) also from or to this address.
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub proto: Option<TraceProto>,
    pub drops: bool,
}

/// What a live trace knows of one packet, to match against its filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The network it is on: where it entered, else where it was
    /// delivered or sent.
    pub vni: Option<Vni>,
    /// Its addresses as it left the engine (`None`: not IP, e.g. ARP).
    pub flow: Option<&'a Flow>,
    /// A sampled packet's notes (what the engine translated); empty for
    /// one that was not sampled.
    pub notes: &'a [Note],
    /// The TAP it was read from, if it came from one.
    pub port: Option<PortId>,
}

impl Seen<'_> {
    /// Whether `a` is one of its addresses, before or after a translation.
    fn has_addr(&self, a: IpAddr) -> bool {
        self.flow.is_some_and(|fl| fl.src == a || fl.dst == a)
            || self.notes.iter().any(|n| translated(n).contains(&Some(a)))
    }

    /// Whether `p` is one of its transport ports, before or after a
    /// translation.
    fn has_port(&self, p: u16) -> bool {
        self.flow
            .is_some_and(|fl| fl.sport == Some(p) || fl.dport == Some(p))
            || self
                .notes
                .iter()
                .any(|n| translated_port(n).contains(&Some(p)))
    }

    /// Whether it was read from or written to one of `ports`.
    fn at_port(&self, ports: &[PortId]) -> bool {
        self.port.is_some_and(|p| ports.contains(&p))
            || self.notes.iter().any(|n| match n {
                Note::TapTx { port, .. } => ports.contains(port),
                _ => false,
            })
    }
}

impl LiveFilter {
    /// Whether a packet matches every filter given. Addresses and ports
    /// match the packet as its sender and its receiver know it too, across
    /// the translations on the way: an egress request after its SNAT, a
    /// VIP's connection after its DNAT, a published port's connection after
    /// its DNAT, and the replies after their reverse NAT. `--container`
    /// also matches what its TAP sent or received that has no addresses
    /// (ARP, a frame dropped for a spoofed source).
    pub fn matches(&self, seen: &Seen) -> bool {
        if self.vni.is_some_and(|v| Some(v) != seen.vni) {
            return false;
        }
        if !self.endpoints.is_empty()
            && !seen.at_port(&self.ports)
            && !self.endpoints.iter().any(|a| seen.has_addr(*a))
        {
            return false;
        }
        if self.addr.is_some_and(|a| !seen.has_addr(a)) {
            return false;
        }
        if self.port.is_some_and(|p| !seen.has_port(p)) {
            return false;
        }
        self.proto
            .is_none_or(|p| seen.flow.is_some_and(|fl| fl.proto == p.to_string()))
    }
}

/// The addresses a note says the packet had before or after a
/// translation (NAT of a VIP, a published port, egress).
fn translated(n: &Note) -> [Option<IpAddr>; 2] {
    match *n {
        Note::Vip { vip, backend, .. } => [Some(vip), Some(backend)],
        Note::Egress { from, addr, .. } => [Some(from), Some(addr)],
        Note::EgressReply { addr } => [Some(addr), None],
        Note::Published { backend, .. } => [Some(backend), None],
        Note::ReverseNat { vip } | Note::Hairpin { vip } => [Some(vip), None],
        Note::ToHost { mesh, backend, .. } => [Some(mesh), Some(backend)],
        _ => [None, None],
    }
}

/// The ports a note says the packet had before or after a translation
/// (a published port and the task's port it is mapped to).
fn translated_port(n: &Note) -> [Option<u16>; 2] {
    match *n {
        Note::Published {
            published,
            target_port,
            ..
        }
        | Note::ToHost {
            published,
            target_port,
            ..
        } => [Some(published), Some(target_port)],
        _ => [None, None],
    }
}

/// The network a packet without one where it entered (from the host
/// link: an answer to egress traffic, a published port's connection) is
/// on: that of the endpoint it was written to, or of the VXLAN datagram
/// it was sent in.
fn noted_vni(fdb: &Fdb, notes: &[Note]) -> Option<Vni> {
    notes.iter().rev().find_map(|n| match n {
        Note::TapTx { port, .. } => fdb.port(*port).map(|p| p.vni),
        Note::Outer { vni, .. } => Some(*vni),
        _ => None,
    })
}

/// A live trace installed in a worker.
pub struct LiveTap {
    pub sampler: LiveSampler,
    pub filter: LiveFilter,
    pub tx: Sender<LiveEvent>,
    pub state: Arc<StreamState>,
    pub host: IpAddr,
}

impl LiveTap {
    /// Reports a packet read from the TAP of `port` (`frame` without its
    /// vnet header, as it is after the engine: a VIP's is translated).
    pub fn tap(&mut self, fdb: &Fdb, o: Observed, port: PortId, frame: &[u8]) -> bool {
        let vni = fdb.port(port).map(|p| p.vni);
        let outer_dst = self.sampler.notes().iter().find_map(|n| match n {
            Note::Outer { dst, .. } => Some(dst.ip()),
            _ => None,
        });
        let outer_dst = if o.sampled { outer_dst } else { None };
        let outer_src = outer_dst.map(|_| self.host);
        self.report(fdb, o, vni, frame, (outer_src, outer_dst), Some(port))
    }

    /// Reports a datagram received from `src` (decrypted in place if it
    /// was opened).
    pub fn wire(&mut self, fdb: &Fdb, o: Observed, src: SocketAddr, datagram: &[u8]) -> bool {
        let decrypted = o.sampled
            && self
                .sampler
                .notes()
                .iter()
                .any(|n| matches!(n, Note::Decrypted { .. }));
        // ESP: header and IV (16), then the inner UDP header (8).
        let vx = match datagram.get(..4) {
            Some([8, 0, 0, 0]) => Some(datagram),
            _ if decrypted => datagram.get(24..),
            _ => None,
        };
        let vni = vx
            .and_then(|d| vxlan::Packet::new_checked(d).ok())
            .map(|p| p.vni());
        let inner = vx.and_then(|d| d.get(vxlan::HEADER_LEN..)).unwrap_or(&[]);
        let host = Some(self.host);
        self.report(fdb, o, vni, inner, (Some(src.ip()), host), None)
    }

    fn report(
        &mut self,
        fdb: &Fdb,
        o: Observed,
        vni: Option<Vni>,
        frame: &[u8],
        (outer_src, outer_dst): (Option<IpAddr>, Option<IpAddr>),
        tap_port: Option<PortId>,
    ) -> bool {
        if !o.is_event() || (self.filter.drops && o.drop.is_none()) {
            return !self.state.done.load(Ordering::Relaxed);
        }
        let flow = flow_of(frame);
        // A sampled packet's notes also name what the engine translated
        // it from; a dropped one that was not sampled has stale notes.
        let notes = if o.sampled { self.sampler.notes() } else { &[] };
        let vni = vni.or_else(|| noted_vni(fdb, notes));
        let seen = Seen {
            vni,
            flow: flow.as_ref(),
            notes,
            port: tap_port,
        };
        if !self.filter.matches(&seen) {
            return !self.state.done.load(Ordering::Relaxed);
        }
        let entry = match tap_port {
            Some(_) => TraceStage::TapRx,
            None => TraceStage::WireRx,
        };
        let (stage, verdict, reason) = match o.drop {
            Some(d) => (
                crate::trace_stage::of_drop(d),
                TraceVerdict::Dropped,
                Some(format!("{}/{}", d.stage(), d.reason())),
            ),
            None => ending(self.sampler.notes(), entry),
        };
        offer(
            &self.tx,
            &self.state,
            LiveEvent {
                ts_ns: now_ns(),
                host: self.host,
                stage,
                verdict,
                reason,
                flow,
                vni,
                outer_src,
                outer_dst,
            },
        )
    }
}

/// Where a sampled packet that was not dropped ended.
fn ending(notes: &[Note], entry: TraceStage) -> (TraceStage, TraceVerdict, Option<String>) {
    for n in notes.iter().rev() {
        let end = match n {
            Note::TapTx { .. } => (TraceStage::TapTx, TraceVerdict::Delivered),
            Note::Egress { .. } | Note::ToHost { .. } => {
                (TraceStage::Gateway, TraceVerdict::Delivered)
            }
            Note::Answered { answer, .. } => (
                crate::trace_stage::of_answer(*answer),
                TraceVerdict::Answered,
            ),
            Note::Outer { .. } => (TraceStage::Outer, TraceVerdict::Sent),
            _ => continue,
        };
        return (end.0, end.1, None);
    }
    (entry, TraceVerdict::Sent, None)
}

/// The inner IPv4/IPv6 flow of an Ethernet frame (untrusted bytes: a
/// frame from a container or the wire; fuzzed by `trace_dry_run`).
pub fn flow_of(frame: &[u8]) -> Option<Flow> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, proto): (IpAddr, IpAddr, u8) = match p.net? {
        NetSlice::Ipv4(v4) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
            v4.header().protocol().0,
        ),
        NetSlice::Ipv6(v6) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
            v6.payload().ip_number.0,
        ),
    };
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (Some(t.source_port()), Some(t.destination_port())),
        Some(TransportSlice::Udp(u)) => (Some(u.source_port()), Some(u.destination_port())),
        _ => (None, None),
    };
    let proto = match proto {
        1 | 58 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        n => n.to_string(),
    };
    Some(Flow {
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

/// The VTEPs that have endpoints of `vni`, and its flood VTEPs.
pub fn vteps_of(fdb: &Fdb, vni: Vni) -> Vec<IpAddr> {
    let Some(t) = fdb.vni(vni) else {
        return Vec::new();
    };
    let mut v: Vec<IpAddr> = t
        .macs
        .values()
        .filter_map(|d| match d {
            Dest::Remote(ip) => Some(*ip),
            Dest::Local(_) => None,
        })
        .chain(t.flood.iter().copied())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that falls behind loses records, counted; the worker
    /// never waits. A closed or finished stream removes the tap.
    #[test]
    fn a_full_queue_drops_and_counts_and_never_blocks() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let state = StreamState::default();
        for i in 0..5u32 {
            assert!(offer(&tx, &state, i), "the tap stays");
        }
        assert_eq!(state.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [0, 1]);

        state.done.store(true, Ordering::Relaxed);
        assert!(!offer(&tx, &state, 9), "a finished stream drops the tap");
        let fresh = StreamState::default();
        drop(rx);
        assert!(!offer(&tx, &fresh, 9), "a gone reader drops the tap");
        assert_eq!(fresh.dropped.load(Ordering::Relaxed), 0);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Flow {
        Flow {
            proto: "tcp".into(),
            src: ip(src),
            dst: ip(dst),
            sport: Some(sport),
            dport: Some(dport),
        }
    }

    fn seen<'a>(vni: Option<Vni>, flow: Option<&'a Flow>, notes: &'a [Note]) -> Seen<'a> {
        Seen {
            vni,
            flow,
            notes,
            port: None,
        }
    }

    fn container(addrs: &[&str], ports: &[PortId]) -> LiveFilter {
        LiveFilter {
            endpoints: addrs.iter().map(|a| ip(a)).collect(),
            ports: ports.to_vec(),
            ..LiveFilter::default()
        }
    }

    /// `--container c1` and `--network` follow an egress flow both ways:
    /// the request leaves the engine with the egress address as its
    /// source, the answer comes from the host link with no VNI. Before,
    /// the filter saw neither.
    #[test]
    fn filters_follow_egress_translations() {
        let net = Vni::new(4097).expect("vni");
        let mut fdb = Fdb::default();
        let port = fdb.free_port();
        fdb.add_local(
            port,
            net,
            MacAddr([2, 0x42, 10, 1, 0, 5]),
            &[ip("10.1.0.5")],
        )
        .expect("endpoint");
        let by_container = container(&["10.1.0.5"], &[]);
        let by_network = LiveFilter {
            vni: Some(net),
            ..LiveFilter::default()
        };

        // The request, as it left the engine (source translated).
        let request = tcp("198.18.0.9", "192.0.2.200", 50_000, 22);
        let snat = [Note::Egress {
            from: ip("10.1.0.5"),
            addr: ip("198.18.0.9"),
            port: 9,
            len: 74,
        }];
        assert!(by_container.matches(&seen(Some(net), Some(&request), &snat)));
        assert!(
            !by_container.matches(&seen(Some(net), Some(&request), &[])),
            "without the note nothing says it was the container's"
        );

        // The answer, from the host link: no VNI where it entered; it is
        // the network of the endpoint it was written to.
        let answer = tcp("192.0.2.200", "10.1.0.5", 22, 50_000);
        let notes = [
            Note::HostLinkRx { port: 9, len: 74 },
            Note::EgressReply {
                addr: ip("10.1.0.5"),
            },
            Note::TapTx { port, len: 74 },
        ];
        let vni = noted_vni(&fdb, &notes);
        assert_eq!(vni, Some(net));
        assert!(by_network.matches(&seen(vni, Some(&answer), &notes)));
        assert!(by_container.matches(&seen(vni, Some(&answer), &notes)));

        // Other networks and addresses still do not match.
        let other = LiveFilter {
            vni: Some(Vni::new(4098).expect("vni")),
            ..LiveFilter::default()
        };
        assert!(!other.matches(&seen(vni, Some(&answer), &notes)));
        let stranger = container(&["10.1.0.6"], &[]);
        assert!(!stranger.matches(&seen(Some(net), Some(&request), &snat)));
    }

    /// `--port` matches a published connection by its published port and
    /// by the task's port it was mapped to, both ways; `--addr` the task's
    /// replies by the task's address; `--proto` by the flow's.
    #[test]
    fn filters_follow_published_ports() {
        let to_task = tcp("192.0.2.7", "10.0.0.5", 40_000, 80);
        let dnat = [Note::Published {
            published: 8080,
            backend: ip("10.0.0.5"),
            target_port: 80,
        }];
        let port = |p| LiveFilter {
            port: Some(p),
            ..LiveFilter::default()
        };
        assert!(port(8080).matches(&seen(None, Some(&to_task), &dnat)));
        assert!(port(80).matches(&seen(None, Some(&to_task), &dnat)));
        assert!(!port(8080).matches(&seen(None, Some(&to_task), &[])));
        assert!(!port(8081).matches(&seen(None, Some(&to_task), &dnat)));

        // The task's reply, as it left the engine for the host link.
        let reply = tcp("198.18.0.2", "192.0.2.7", 8080, 40_000);
        let to_host = [Note::ToHost {
            backend: ip("10.0.0.5"),
            target_port: 80,
            mesh: ip("198.18.0.2"),
            published: 8080,
            port: 9,
            len: 74,
        }];
        assert!(port(80).matches(&seen(None, Some(&reply), &to_host)));
        let task = LiveFilter {
            addr: Some(ip("10.0.0.5")),
            ..LiveFilter::default()
        };
        assert!(task.matches(&seen(None, Some(&reply), &to_host)));
        assert!(!task.matches(&seen(None, Some(&reply), &[])));

        let udp = LiveFilter {
            proto: Some(TraceProto::Udp),
            ..LiveFilter::default()
        };
        assert!(!udp.matches(&seen(None, Some(&to_task), &dnat)));
        assert!(!udp.matches(&seen(None, None, &[])), "no flow, no protocol");
    }

    /// A request forwarded to another host's task carries the VNI it was
    /// sent on, though it came from the host link.
    #[test]
    fn a_packet_sent_from_the_host_link_has_the_vni_it_was_sent_on() {
        let ingress = Vni::new(4096).expect("vni");
        let notes = [
            Note::HostLinkRx { port: 9, len: 74 },
            Note::Outer {
                dst: "192.0.2.12:4789".parse().expect("address"),
                vni: ingress,
                len: 124,
                datagrams: 1,
                encrypted: false,
            },
        ];
        assert_eq!(noted_vni(&Fdb::default(), &notes), Some(ingress));
    }

    /// `--container` matches every address of the container (both
    /// families, every network), what its TAP sent without addresses, and
    /// `--addr` with it narrows to the traffic between the two.
    #[test]
    fn container_and_addr_filters() {
        let c1 = container(&["10.0.1.2", "fd00:9::2", "10.0.2.2"], &[3]);
        let v6 = Flow {
            proto: "icmp".into(),
            src: ip("fd00:9::2"),
            dst: ip("fd00:9::3"),
            sport: None,
            dport: None,
        };
        assert!(c1.matches(&seen(None, Some(&v6), &[])));
        let other_net = tcp("10.0.2.7", "10.0.2.2", 40_000, 80);
        assert!(c1.matches(&seen(None, Some(&other_net), &[])));
        let not_c1 = tcp("10.0.1.7", "10.0.1.3", 40_000, 80);
        assert!(!c1.matches(&seen(None, Some(&not_c1), &[])));

        // ARP, or a spoofed frame, from c1's TAP: no flow, its port.
        let from_tap = Seen {
            port: Some(3),
            ..Seen::default()
        };
        assert!(c1.matches(&from_tap));
        let other_tap = Seen {
            port: Some(4),
            ..Seen::default()
        };
        assert!(!c1.matches(&other_tap));
        // Written to c1's TAP.
        let to_c1 = [Note::TapTx { port: 3, len: 42 }];
        assert!(c1.matches(&seen(None, None, &to_c1)));

        // --container c1 --addr 10.0.1.3: only c1's traffic with it.
        let narrowed = LiveFilter {
            addr: Some(ip("10.0.1.3")),
            ..c1.clone()
        };
        assert!(!narrowed.matches(&seen(None, Some(&not_c1), &[])));
        let with_c1 = tcp("10.0.1.2", "10.0.1.3", 40_000, 80);
        assert!(narrowed.matches(&seen(None, Some(&with_c1), &[])));
    }
}
