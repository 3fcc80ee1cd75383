//! Service VIP load balancing through the whole engine, with a simulated
//! clock: host "client" has client A on port 0 (10.0.0.2, fd00::2) and a
//! local backend L on port 1 (10.0.0.21, fd00::21); backends B1..B4
//! (10.0.0.11.., fd00::11..) live behind VTEP 192.0.2.2.
use super::*;
use crate::fdb::Fdb;
use crate::lb::nat;
use crate::lb::service::{Backend, Service, vip_mac};
use crate::offload::segment::complete_checksum;
use crate::offload::testutil::assert_valid;
use etherparse::PacketBuilder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const A: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 2]);
const PEER: &str = "192.0.2.2";

fn vni() -> Vni {
    Vni::new(4096).unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn mac_of(i: &str) -> MacAddr {
    MacAddr::from_ip(ip(i))
}

/// `n` of the remote backends (v6: the IPv6 ones).
fn remote(n: u8, v6: bool) -> Vec<&'static str> {
    let all: [&'static str; 4] = if v6 {
        ["fd00::11", "fd00::12", "fd00::13", "fd00::14"]
    } else {
        ["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"]
    };
    all[..usize::from(n)].to_vec()
}

fn service(vip: &str, backends: &[&str]) -> Arc<Service> {
    let bs = backends
        .iter()
        .map(|b| Backend {
            ip: ip(b),
            mac: mac_of(b),
        })
        .collect();
    Arc::new(Service::new(ip(vip), bs, 16_381).unwrap())
}

/// The client host's table, with `services` on VNI 4096.
fn table(services: &[(&str, &[&str])]) -> Fdb {
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni(), A, &[ip("10.0.0.2"), ip("fd00::2")])
        .unwrap();
    fdb.add_local(
        1,
        vni(),
        mac_of("10.0.0.21"),
        &[ip("10.0.0.21"), ip("fd00::21")],
    )
    .unwrap();
    for b in remote(4, false).into_iter().chain(remote(4, true)) {
        fdb.add_remote(vni(), mac_of(b), &[ip(b)], ip(PEER))
            .unwrap();
    }
    for (vip, backends) in services {
        fdb.set_service(vni(), service(vip, backends)).unwrap();
    }
    fdb
}

struct Host {
    e: Engine,
    out: Outputs,
    now: Instant,
}

impl Host {
    fn new(fdb: Fdb, conntrack: ConntrackConfig) -> Host {
        let cfg = EngineConfig {
            conntrack,
            ..EngineConfig::default()
        };
        let now = Instant::now();
        let mut e = Engine::new(cfg, Arc::new(fdb), Arc::new(Stats::default()));
        e.set_now(now);
        Host {
            e,
            out: Outputs::new(TxBatch::new(1 << 20, 256)),
            now,
        }
    }

    fn with(services: &[(&str, &[&str])]) -> Host {
        Host::new(table(services), ConntrackConfig::default())
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.e.set_now(self.now);
    }

    fn stat(&self, c: Counter) -> u64 {
        self.e.stats().counter(c)
    }

    fn drops(&self, d: Drop) -> u64 {
        self.e.stats().drops(d)
    }

    /// Inner frames sent to other hosts since the last call, by VTEP.
    fn sent(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut v = Vec::new();
        for m in self.out.udp.msgs().to_vec() {
            let bytes = self.out.udp.bytes(&m).to_vec();
            let step = if m.segment == 0 {
                bytes.len()
            } else {
                m.segment as usize
            };
            for d in bytes.chunks(step) {
                v.push((m.dst, d[vxlan::HEADER_LEN..].to_vec()));
            }
        }
        self.out.udp.clear();
        v
    }

    /// TAP writes since the last call: (port, vnet header, frame).
    fn written(&mut self) -> Vec<(PortId, VnetHdr, Vec<u8>)> {
        let mut v = Vec::new();
        self.out.drain_taps(|p, w| {
            let b = w.as_bytes().expect("copied").to_vec();
            v.push((p, VnetHdr::parse(&b).unwrap(), b[vnet::LEN..].to_vec()));
        });
        v
    }

    /// Sends `frame` from port `port`; returns the destination address it
    /// left with, if it left for the peer host.
    fn send(&mut self, port: PortId, frame: &[u8]) -> Option<IpAddr> {
        let mut pkt = vec![0u8; vnet::LEN];
        pkt.extend_from_slice(frame);
        self.e.from_tap(port, &mut pkt, &mut self.out);
        let sent = self.sent();
        assert!(sent.len() <= 1);
        sent.first().map(|(_, f)| {
            assert_valid(f);
            nat::parse(f).unwrap().dst
        })
    }
}

#[derive(Clone, Copy)]
enum Tcp {
    Syn,
    SynAck,
    Ack,
    Fin,
    Rst,
}

fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    f: Tcp,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0);
    let b = match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let t = b.tcp(sport, dport, 1000, 64_000);
    let t = match f {
        Tcp::Syn => t.syn(),
        Tcp::SynAck => t.syn().ack(1001),
        Tcp::Ack => t.ack(1),
        Tcp::Fin => t.fin().ack(1),
        Tcp::Rst => t.rst(),
    };
    let mut out = Vec::new();
    t.write(&mut out, if matches!(f, Tcp::Ack) { b"data" } else { b"" })
        .unwrap();
    out
}

/// A client → VIP segment.
fn to_vip(vip: &str, sport: u16, f: Tcp) -> Vec<u8> {
    let src = if ip(vip).is_ipv4() {
        "10.0.0.2"
    } else {
        "fd00::2"
    };
    tcp(A, vip_mac(ip(vip)), src, vip, sport, 80, f)
}

/// A backend → client segment as a VXLAN datagram from the peer host.
fn reply_from(h: &mut Host, backend: &str, sport: u16, f: Tcp) {
    let client = if ip(backend).is_ipv4() {
        "10.0.0.2"
    } else {
        "fd00::2"
    };
    let inner = tcp(mac_of(backend), A, backend, client, 80, sport, f);
    let mut d = vec![0u8; 8];
    vxlan::write_header(&mut d, vni());
    d.extend_from_slice(&inner);
    h.e.from_wire(SocketAddr::new(ip(PEER), 4789), &mut d, &mut h.out);
}

#[test]
fn new_flows_spread_over_backends_and_stick() {
    let bs = remote(3, false);
    let mut h = Host::with(&[("10.0.0.100", &bs)]);
    let mut per_backend: HashMap<IpAddr, u32> = HashMap::new();
    let mut chosen = Vec::new();
    for p in 0..300 {
        let to = h
            .send(0, &to_vip("10.0.0.100", 20_000 + p, Tcp::Syn))
            .unwrap();
        *per_backend.entry(to).or_default() += 1;
        chosen.push(to);
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for (b, n) in &per_backend {
        assert!(*n >= 60, "backend {b} got {n} of 300 new flows");
    }
    // Every later packet of a flow goes where its first went.
    for (p, want) in chosen.iter().enumerate() {
        let to = h.send(0, &to_vip("10.0.0.100", 20_000 + p as u16, Tcp::Ack));
        assert_eq!(to, Some(*want), "flow {p} moved");
    }
    assert_eq!(h.stat(Counter::LbNewFlows), 300);
    assert_eq!(h.stat(Counter::LbDnat), 600);
    assert_eq!(h.stat(Counter::ConntrackInserted), 300);
    // The frame carries the backend's MAC, and Maglev agrees with the pick.
    let svc = service("10.0.0.100", &bs);
    let mut pkt = vec![0u8; vnet::LEN];
    pkt.extend_from_slice(&to_vip("10.0.0.100", 9, Tcp::Syn));
    h.e.from_tap(0, &mut pkt, &mut h.out);
    let (vtep, frame) = h.sent().remove(0);
    assert_eq!(vtep, SocketAddr::new(ip(PEER), 4789));
    let hash = crate::lb::maglev::flow_hash(ip("10.0.0.2"), ip("10.0.0.100"), 6, 9, 80);
    let want = svc.pick(hash).unwrap().1;
    assert_eq!(MacAddr::dst_of(&frame), Some(want.mac));
    assert_eq!(nat::parse(&frame).unwrap().dst, want.ip);
}

#[test]
fn replies_come_back_from_the_vip() {
    let bs = remote(2, false);
    let mut h = Host::with(&[("10.0.0.100", &bs)]);
    let backend = h.send(0, &to_vip("10.0.0.100", 33_000, Tcp::Syn)).unwrap();
    reply_from(&mut h, &backend.to_string(), 33_000, Tcp::SynAck);
    let w = h.written();
    assert_eq!(w.len(), 1);
    let (port, _, frame) = &w[0];
    assert_eq!(*port, 0);
    assert_valid(frame);
    let p = nat::parse(frame).unwrap();
    assert_eq!(
        (p.src, p.dst, p.sport, p.dport),
        (ip("10.0.0.100"), ip("10.0.0.2"), 80, 33_000)
    );
    assert_eq!(MacAddr::src_of(frame), Some(vip_mac(ip("10.0.0.100"))));
    assert_eq!(h.stat(Counter::LbReverseNat), 1);
    // The backend talking to the client on its own (not a reply of a
    // balanced flow) is left alone.
    reply_from(&mut h, &backend.to_string(), 33_001, Tcp::Ack);
    let w = h.written();
    assert_eq!(nat::parse(&w[0].2).unwrap().src, backend);
    assert_eq!(h.stat(Counter::LbReverseNat), 1);
    let flows: Vec<_> = h.e.flows().collect();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state.name(), "established");
    assert_eq!(flows[0].packets, [1, 1]);
}

#[test]
fn local_backend_both_ways_with_partial_checksums() {
    let mut h = Host::with(&[("10.0.0.100", &["10.0.0.21"])]);
    // The client's TAP hands over a TCP segment with checksum offload.
    let mut f = to_vip("10.0.0.100", 41_000, Tcp::Ack);
    let p = nat::parse(&f).unwrap();
    let hdr = partial(&mut f, &p);
    let mut pkt = vec![0u8; vnet::LEN];
    hdr.emit(&mut pkt);
    pkt.extend_from_slice(&f);
    h.e.from_tap(0, &mut pkt, &mut h.out);
    let w = h.written();
    assert_eq!(w.len(), 1);
    let (port, whdr, mut frame) = w.into_iter().next().unwrap();
    assert_eq!(port, 1, "to the local backend's port");
    assert!(whdr.needs_csum(), "the receiving kernel completes it");
    complete_checksum(&whdr, &mut frame).unwrap();
    assert_valid(&frame);
    assert_eq!(nat::parse(&frame).unwrap().dst, ip("10.0.0.21"));
    assert_eq!(MacAddr::dst_of(&frame), Some(mac_of("10.0.0.21")));
    // The backend answers from its TAP, also with a partial checksum.
    let mut r = tcp(
        mac_of("10.0.0.21"),
        A,
        "10.0.0.21",
        "10.0.0.2",
        80,
        41_000,
        Tcp::Ack,
    );
    let rp = nat::parse(&r).unwrap();
    let rhdr = partial(&mut r, &rp);
    let mut pkt = vec![0u8; vnet::LEN];
    rhdr.emit(&mut pkt);
    pkt.extend_from_slice(&r);
    h.e.from_tap(1, &mut pkt, &mut h.out);
    let (port, whdr, mut frame) = h.written().into_iter().next().unwrap();
    assert_eq!(port, 0);
    complete_checksum(&whdr, &mut frame).unwrap();
    assert_valid(&frame);
    assert_eq!(nat::parse(&frame).unwrap().src, ip("10.0.0.100"));
    assert_eq!(MacAddr::src_of(&frame), Some(vip_mac(ip("10.0.0.100"))));
}

/// Turns `frame`'s full TCP checksum into the pseudo-header sum a TAP with
/// checksum offload hands over, and returns the matching vnet header.
fn partial(frame: &mut [u8], p: &nat::L4) -> VnetHdr {
    let ipi = crate::offload::IpInfo::parse(frame).unwrap();
    let sum = ipi.pseudo(frame, 6, p.end - p.l4);
    frame[p.l4 + 16..p.l4 + 18].copy_from_slice(&crate::wire::checksum::fold(sum).to_be_bytes());
    VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GsoType::None,
        gso_ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: p.l4 as u16,
        csum_offset: 16,
    }
}

#[test]
fn gso_frame_to_a_vip_segments_with_valid_checksums() {
    for (vip, bs, v6) in [
        ("10.0.0.100", remote(2, false), false),
        ("fd00::100", remote(2, true), true),
    ] {
        let mut h = Host::with(&[(vip, &bs)]);
        let payload: Vec<u8> = (0..60_000).map(|i| (i * 7) as u8).collect();
        let src = if v6 { "fd00::2" } else { "10.0.0.2" };
        let b = PacketBuilder::ethernet2(A.0, vip_mac(ip(vip)).0);
        let b = match (ip(src), ip(vip)) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let mut f = Vec::new();
        b.tcp(40_000, 5201, 1, 65_535)
            .ack(1)
            .write(&mut f, &payload)
            .unwrap();
        let p = nat::parse(&f).unwrap();
        let mut hdr = partial(&mut f, &p);
        hdr.gso_type = if v6 {
            vnet::GsoType::TcpV6
        } else {
            vnet::GsoType::TcpV4
        };
        hdr.gso_size = 1398;
        hdr.hdr_len = (p.l4 + 20) as u16;
        let mut pkt = vec![0u8; vnet::LEN];
        hdr.emit(&mut pkt);
        pkt.extend_from_slice(&f);
        h.e.from_tap(0, &mut pkt, &mut h.out);
        let segs = h.sent();
        assert_eq!(segs.len(), 60_000usize.div_ceil(1398));
        let mut joined = Vec::new();
        let mut to = None;
        for (_, s) in &segs {
            // Every segment's IP and TCP checksums hold the backend's address.
            joined.extend(assert_valid(s));
            let d = nat::parse(s).unwrap().dst;
            assert!(to.is_none_or(|t| t == d));
            to = Some(d);
        }
        assert_eq!(joined, payload);
        assert!(bs.iter().any(|b| Some(ip(b)) == to));
        assert_eq!(h.stat(Counter::LbDnat), 1, "one translation per GSO frame");
    }
}

#[test]
fn scaling_keeps_flows_on_surviving_backends() {
    let all = remote(3, false);
    let mut h = Host::with(&[("10.0.0.100", &all)]);
    let mut flows = Vec::new();
    for p in 0..200u16 {
        let port = 10_000 + p;
        let b = h.send(0, &to_vip("10.0.0.100", port, Tcp::Syn)).unwrap();
        reply_from(&mut h, &b.to_string(), port, Tcp::SynAck);
        flows.push((port, b));
    }
    h.written();
    // Scale down: the third backend leaves.
    let gone = ip(all[2]);
    h.e.set_fdb(Arc::new(table(&[("10.0.0.100", &all[..2])])));
    let mut lost = 0;
    for (port, b) in &flows {
        let to = h.send(0, &to_vip("10.0.0.100", *port, Tcp::Ack));
        if *b == gone {
            assert_eq!(to, None, "a flow to the removed backend is dropped");
            lost += 1;
        } else {
            assert_eq!(
                to,
                Some(*b),
                "flow {port} was moved off a surviving backend"
            );
        }
    }
    assert!(lost > 30, "{lost} flows were on the removed backend");
    assert_eq!(h.drops(Drop::LbBackendGone), lost);
    assert_eq!(h.stat(Counter::ConntrackRemoved), lost);
    // The packet after that is balanced afresh to a backend that stays
    // (whose TCP stack will reset the unknown connection).
    let (port, _) = flows.iter().find(|(_, b)| *b == gone).copied().unwrap();
    let to = h.send(0, &to_vip("10.0.0.100", port, Tcp::Ack)).unwrap();
    assert!(to != gone && all[..2].iter().any(|b| ip(b) == to));
    // New flows now avoid it.
    for p in 0..100 {
        let to = h
            .send(0, &to_vip("10.0.0.100", 50_000 + p, Tcp::Syn))
            .unwrap();
        assert_ne!(to, gone);
    }
    // Scale up again, and beyond: established flows stay where they are.
    h.e.set_fdb(Arc::new(table(&[("10.0.0.100", &remote(4, false))])));
    for (port, b) in flows.iter().filter(|(_, b)| *b != gone) {
        let to = h.send(0, &to_vip("10.0.0.100", *port, Tcp::Ack));
        assert_eq!(to, Some(*b));
    }
    assert_eq!(h.drops(Drop::LbBackendGone), lost, "nothing else was lost");
}

#[test]
fn conntrack_follows_connection_state_on_the_clock() {
    let mut h = Host::with(&[("10.0.0.100", &remote(3, false))]);
    let b = h.send(0, &to_vip("10.0.0.100", 1111, Tcp::Syn)).unwrap();
    reply_from(&mut h, &b.to_string(), 1111, Tcp::SynAck);
    // Idle for 6 hours (Docker's IPVS would have cut it after 15 min).
    h.advance(Duration::from_secs(6 * 3600));
    assert_eq!(h.send(0, &to_vip("10.0.0.100", 1111, Tcp::Ack)), Some(b));
    assert_eq!(h.stat(Counter::LbNewFlows), 1, "the same entry served it");
    // Closed both ways: the entry goes 10 s later, swept without lookups.
    h.send(0, &to_vip("10.0.0.100", 1111, Tcp::Fin));
    reply_from(&mut h, &b.to_string(), 1111, Tcp::Fin);
    assert_eq!(h.e.flows().next().map(|f| f.state.name()), Some("closed"));
    // A half-open one (SYN, no answer) goes after a minute.
    h.send(0, &to_vip("10.0.0.100", 2222, Tcp::Syn));
    h.advance(Duration::from_secs(11));
    for _ in 0..(ConntrackConfig::default().capacity as usize).div_ceil(1024) {
        h.advance(Duration::from_millis(50));
        h.e.sweep_conntrack();
    }
    let left: Vec<_> = h.e.flows().map(|f| f.key.sport).collect();
    assert_eq!(left, [2222]);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.e.flows().count(), 0);
    assert!(h.stat(Counter::ConntrackExpired) >= 1);
    // The same ports again start a new flow.
    assert!(h.send(0, &to_vip("10.0.0.100", 1111, Tcp::Syn)).is_some());
    assert_eq!(h.stat(Counter::LbNewFlows), 3);
}

#[test]
fn full_conntrack_drops_new_flows_and_counts() {
    let cfg = ConntrackConfig {
        capacity: 64,
        ..ConntrackConfig::default()
    };
    let mut h = Host::new(table(&[("10.0.0.100", &remote(2, false))]), cfg);
    // Established connections (picked up mid-flow) are never evicted.
    let mut accepted = 0;
    for p in 0..200 {
        if h.send(0, &to_vip("10.0.0.100", 3000 + p, Tcp::Ack))
            .is_some()
        {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 64);
    assert_eq!(h.drops(Drop::LbConntrackFull), 200 - 64);
    assert_eq!(h.stat(Counter::ConntrackEvicted), 0);
    // Tracked flows still work.
    assert!(h.send(0, &to_vip("10.0.0.100", 3000, Tcp::Ack)).is_some());
}

#[test]
fn vip_without_backends_resets_tcp_and_drops_udp() {
    let mut h = Host::with(&[("10.0.0.100", &[])]);
    assert_eq!(h.send(0, &to_vip("10.0.0.100", 5555, Tcp::Syn)), None);
    let w = h.written();
    assert_eq!(w.len(), 1, "a reset back to the client");
    let p = nat::parse(&w[0].2).unwrap();
    assert_eq!(
        (p.src, p.dst, p.tcp_flags),
        (ip("10.0.0.100"), ip("10.0.0.2"), 0x14)
    );
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(A.0, vip_mac(ip("10.0.0.100")).0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 100], 64)
        .udp(5353, 53)
        .write(&mut udp, b"q")
        .unwrap();
    assert_eq!(h.send(0, &udp), None);
    assert!(h.written().is_empty());
    assert_eq!(h.drops(Drop::LbNoBackend), 2);
    assert_eq!(h.stat(Counter::LbResets), 1);
    // Backends arrive: new flows work.
    h.e.set_fdb(Arc::new(table(&[("10.0.0.100", &remote(1, false))])));
    assert_eq!(
        h.send(0, &to_vip("10.0.0.100", 5556, Tcp::Syn)),
        Some(ip("10.0.0.11"))
    );
}

#[test]
fn arp_nd_and_ping_for_a_vip_are_answered() {
    let mut h = Host::with(&[
        ("10.0.0.100", &remote(1, false)),
        ("fd00::100", &remote(1, true)),
    ]);
    // ARP who-has 10.0.0.100.
    let mut arp = Vec::new();
    arp.extend_from_slice(&MacAddr::BROADCAST.0);
    arp.extend_from_slice(&A.0);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&A.0);
    arp.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 100]);
    h.send(0, &arp);
    let w = h.written();
    assert_eq!(
        &w[0].2[22..28],
        &vip_mac(ip("10.0.0.100")).0,
        "answered with the VIP's MAC"
    );
    // The same request unicast to the VIP's MAC (a kernel's reachability
    // probe) is answered too.
    arp[..6].copy_from_slice(&vip_mac(ip("10.0.0.100")).0);
    h.send(0, &arp);
    assert_eq!(h.written().len(), 1);
    // Neighbour solicitation for fd00::100, multicast and unicast.
    let ns = crate::wire::nd::tests::solicit_frame(
        "fd00::2".parse().unwrap(),
        "fd00::100".parse().unwrap(),
        true,
    );
    h.send(0, &ns);
    let w = h.written();
    assert_eq!(w.len(), 1);
    let mut uni = ns.clone();
    uni[..6].copy_from_slice(&vip_mac(ip("fd00::100")).0);
    h.send(0, &uni);
    assert_eq!(h.written().len(), 1);
    assert_eq!(h.stat(Counter::NdProxied), 2);
    // Ping, both families.
    for (src, vip) in [("10.0.0.2", "10.0.0.100"), ("fd00::2", "fd00::100")] {
        let b = PacketBuilder::ethernet2(A.0, vip_mac(ip(vip)).0);
        let mut f = Vec::new();
        match (ip(src), ip(vip)) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b
                .ipv4(s.octets(), d.octets(), 64)
                .icmpv4_echo_request(1, 1)
                .write(&mut f, b"ping")
                .unwrap(),
            (IpAddr::V6(s), IpAddr::V6(d)) => b
                .ipv6(s.octets(), d.octets(), 64)
                .icmpv6_echo_request(1, 1)
                .write(&mut f, b"ping")
                .unwrap(),
            _ => unreachable!(),
        }
        assert_eq!(h.send(0, &f), None, "not sent to a backend");
        let w = h.written();
        assert_eq!(w.len(), 1);
        let p = nat::parse(&w[0].2).unwrap();
        assert_eq!((p.src, p.dst), (ip(vip), ip(src)));
    }
    assert_eq!(h.stat(Counter::LbEchoReplies), 2);
}

#[test]
fn ipv6_vip_round_trip() {
    let bs = remote(3, true);
    let mut h = Host::with(&[("fd00::100", &bs)]);
    let b = h.send(0, &to_vip("fd00::100", 7000, Tcp::Syn)).unwrap();
    assert!(bs.iter().any(|x| ip(x) == b));
    reply_from(&mut h, &b.to_string(), 7000, Tcp::SynAck);
    let w = h.written();
    assert_valid(&w[0].2);
    assert_eq!(nat::parse(&w[0].2).unwrap().src, ip("fd00::100"));
    assert_eq!(h.send(0, &to_vip("fd00::100", 7000, Tcp::Ack)), Some(b));
}

#[test]
fn fragments_and_other_protocols_to_a_vip_are_dropped() {
    let mut h = Host::with(&[("10.0.0.100", &remote(2, false))]);
    let mut f = to_vip("10.0.0.100", 1, Tcp::Syn);
    f[20] = 0x20; // MF
    assert_eq!(h.send(0, &f), None);
    assert_eq!(h.drops(Drop::LbFragment), 1);
    let mut gre = to_vip("10.0.0.100", 1, Tcp::Syn);
    gre[23] = 47;
    assert_eq!(h.send(0, &gre), None);
    assert_eq!(h.drops(Drop::LbUnsupported), 1);
    // A lone reset is forwarded (tracked as a closed flow, gone in 10 s).
    assert!(h.send(0, &to_vip("10.0.0.100", 2, Tcp::Rst)).is_some());
}

#[test]
fn encrypted_network_carries_balanced_flows() {
    use crate::engine::testkit::{B, HOST_B, deliver, encrypted_pair, handshake};
    let now = Instant::now();
    let (mut a, mut b) = encrypted_pair(now);
    handshake(&mut a, &mut b);
    // Host A gets a service whose one backend is B's endpoint.
    let mut fdb = Fdb::default();
    fdb.set_encrypted(vni(), true);
    fdb.add_local(0, vni(), testkit::A, &[ip("10.0.0.2")])
        .unwrap();
    fdb.add_remote(vni(), B, &[ip("10.0.0.3")], ip(HOST_B))
        .unwrap();
    fdb.set_peer(
        ip(HOST_B),
        Arc::clone(a.engine.fdb.peer(ip(HOST_B)).unwrap()),
    );
    let svc = Service::new(
        ip("10.0.0.100"),
        vec![Backend {
            ip: ip("10.0.0.3"),
            mac: B,
        }],
        251,
    )
    .unwrap();
    fdb.set_service(vni(), Arc::new(svc)).unwrap();
    a.engine.set_fdb(Arc::new(fdb));
    let mut f = vec![0u8; vnet::LEN];
    f.extend_from_slice(&tcp(
        testkit::A,
        vip_mac(ip("10.0.0.100")),
        "10.0.0.2",
        "10.0.0.100",
        4000,
        80,
        Tcp::Syn,
    ));
    a.engine.from_tap(0, &mut f, &mut a.out);
    assert_eq!(deliver(&mut a, &mut b), 1);
    let mut got = Vec::new();
    b.out
        .drain_taps(|_, w| got.push(w.as_bytes().unwrap()[vnet::LEN..].to_vec()));
    assert_eq!(
        got.len(),
        1,
        "the backend's host decrypted and delivered it"
    );
    assert_eq!(nat::parse(&got[0]).unwrap().dst, ip("10.0.0.3"));
    assert_valid(&got[0]);
}

#[test]
fn a_new_flow_is_found_after_its_reply_key_missed() {
    // One backend, so the flow's reply key is known in advance.
    let mut h = Host::with(&[("10.0.0.100", &["10.0.0.11"])]);
    // The backend talks to the client from port 80 to port 6000 on its
    // own: not a balanced flow (the miss is remembered).
    reply_from(&mut h, "10.0.0.11", 6000, Tcp::Ack);
    reply_from(&mut h, "10.0.0.11", 6000, Tcp::Ack);
    assert!(
        h.written()
            .iter()
            .all(|(_, _, f)| nat::parse(f).unwrap().src == ip("10.0.0.11"))
    );
    assert_eq!(
        h.stat(Counter::ConntrackMisses),
        1,
        "the second missed without a lookup"
    );
    // Then the client opens port 6000 to the VIP: the same reply key now
    // belongs to a flow, and replies are translated.
    assert_eq!(
        h.send(0, &to_vip("10.0.0.100", 6000, Tcp::Syn)),
        Some(ip("10.0.0.11"))
    );
    reply_from(&mut h, "10.0.0.11", 6000, Tcp::SynAck);
    let w = h.written();
    assert_eq!(nat::parse(&w[0].2).unwrap().src, ip("10.0.0.100"));
}

#[test]
fn traffic_from_non_backends_skips_conntrack() {
    let mut h = Host::with(&[("10.0.0.100", &remote(2, false))]);
    // 10.0.0.14 is on the network but backs no service.
    assert!(
        !h.e.fdb
            .vni(vni())
            .unwrap()
            .backends
            .may_contain(ip("10.0.0.14"))
    );
    for _ in 0..3 {
        reply_from(&mut h, "10.0.0.14", 7000, Tcp::Ack);
    }
    assert_eq!(h.written().len(), 3);
    let s = h.e.stats();
    assert_eq!(
        s.counter(Counter::ConntrackHits) + s.counter(Counter::ConntrackMisses),
        0
    );
}

#[test]
fn flows_of_a_removed_service_are_swept() {
    let mut h = Host::with(&[
        ("10.0.0.100", &remote(2, false)),
        ("10.0.0.101", &remote(2, false)),
    ]);
    h.send(0, &to_vip("10.0.0.100", 1, Tcp::Ack));
    h.send(0, &to_vip("10.0.0.101", 2, Tcp::Ack));
    assert_eq!(h.e.flows().count(), 2);
    h.e.set_fdb(Arc::new(table(&[("10.0.0.101", &remote(2, false))])));
    h.e.sweep_conntrack();
    let left: Vec<IpAddr> = h.e.flows().map(|f| f.key.dst).collect();
    assert_eq!(left, [ip("10.0.0.101")]);
    assert_eq!(h.stat(Counter::ConntrackRemoved), 1);
}

/// `vxnet trace` to a VIP: Maglev's pick, without creating the flow; once
/// the real flow exists, the trace sees it (conntrack hit, same backend).
#[test]
fn trace_to_a_vip_picks_without_tracking() {
    use super::trace::{FlowMatch, Note};
    let mut h = Host::with(&[("10.0.0.100", &remote(3, false))]);
    let syn = to_vip("10.0.0.100", 40_000, Tcp::Syn);
    let mut pkt = vec![0u8; vnet::LEN];
    pkt.extend_from_slice(&syn);
    let run = h.e.trace_tap(0, &mut pkt.clone());
    let Some(Note::Vip {
        backend,
        flow,
        backends: 3,
        ..
    }) = run
        .notes
        .iter()
        .find(|n| matches!(n, Note::Vip { .. }))
        .cloned()
    else {
        panic!("no VIP note: {run:?}");
    };
    assert_eq!(flow, FlowMatch::New);
    assert_eq!(h.e.flows().count(), 0, "a dry run tracks no flow");
    assert_eq!(h.stat(Counter::LbNewFlows), 0);
    let real = h.send(0, &syn);
    assert_eq!(
        real,
        Some(backend),
        "the real packet goes where the trace said"
    );
    let again = h.e.trace_tap(0, &mut pkt);
    assert!(again.notes.iter().any(|n| matches!(
        n,
        Note::Vip { backend: b, flow: FlowMatch::Hit, .. } if *b == backend
    )));
    // No backend: the trace shows the reset the client would get.
    let mut empty = Host::with(&[("10.0.0.101", &[])]);
    let mut pkt = vec![0u8; vnet::LEN];
    pkt.extend_from_slice(&to_vip("10.0.0.101", 40_001, Tcp::Syn));
    let run = empty.e.trace_tap(0, &mut pkt);
    assert_eq!(run.drops, vec![Drop::LbNoBackend]);
    assert_eq!(run.delivered.len(), 1, "the reset");
}

/// Sends `frame` from `port` with a partial checksum when `offload` (as a
/// TAP with checksum offload hands it over); returns the TAP writes, their
/// checksums completed and checked.
fn send_local(h: &mut Host, port: PortId, frame: &[u8], offload: bool) -> Vec<(PortId, Vec<u8>)> {
    let mut f = frame.to_vec();
    let mut pkt = vec![0u8; vnet::LEN];
    if offload {
        let p = nat::parse(&f).unwrap();
        partial(&mut f, &p).emit(&mut pkt);
    }
    pkt.extend_from_slice(&f);
    h.e.from_tap(port, &mut pkt, &mut h.out);
    h.written()
        .into_iter()
        .map(|(port, whdr, mut frame)| {
            assert_eq!(whdr.needs_csum(), offload);
            complete_checksum(&whdr, &mut frame).unwrap();
            assert_valid(&frame);
            (port, frame)
        })
        .collect()
}

#[test]
fn a_task_reaches_its_own_vip_through_a_hairpin() {
    for (vip, task, offload) in [
        ("10.0.0.100", "10.0.0.2", false),
        ("fd00::100", "fd00::2", true),
    ] {
        let mut fdb = table(&[]);
        let only_a = vec![Backend {
            ip: ip(task),
            mac: A,
        }];
        fdb.set_service(
            vni(),
            Arc::new(Service::new(ip(vip), only_a, 16_381).unwrap()),
        )
        .unwrap();
        let mut h = Host::new(fdb, ConntrackConfig::default());
        // `vxnet trace` says so, and tracks nothing.
        let mut pkt = vec![0u8; vnet::LEN];
        pkt.extend_from_slice(&to_vip(vip, 42_000, Tcp::Syn));
        let run = h.e.trace_tap(0, &mut pkt);
        assert!(run.drops.is_empty(), "{run:?}");
        assert!(
            run.notes
                .contains(&super::trace::Note::Hairpin { vip: ip(vip) }),
            "{run:?}"
        );
        assert!(
            run.notes
                .iter()
                .any(|n| matches!(n, super::trace::Note::TapTx { port: 0, .. })),
            "{run:?}"
        );
        assert_eq!(h.e.flows().count(), 0);
        // A is the service's only task: its SYN to the VIP comes back to
        // it from the VIP.
        let back_to_a = |h: &mut Host, frame: &[u8], sport: u16, dport: u16| {
            let w = send_local(h, 0, frame, offload);
            assert_eq!(w.len(), 1, "{vip}");
            let (port, frame) = &w[0];
            assert_eq!(*port, 0, "back to the task's own port");
            let p = nat::parse(frame).unwrap();
            assert_eq!(
                (p.src, p.dst, p.sport, p.dport),
                (ip(vip), ip(task), sport, dport)
            );
            assert_eq!(MacAddr::src_of(frame), Some(vip_mac(ip(vip))));
            assert_eq!(MacAddr::dst_of(frame), Some(A));
        };
        back_to_a(&mut h, &to_vip(vip, 42_000, Tcp::Syn), 42_000, 80);
        // The task answers the VIP: the reply reaches the connecting
        // socket from the VIP's port.
        let reply = tcp(A, vip_mac(ip(vip)), task, vip, 80, 42_000, Tcp::SynAck);
        back_to_a(&mut h, &reply, 80, 42_000);
        // The rest of the connection follows the same flow.
        assert_eq!(
            send_local(&mut h, 0, &to_vip(vip, 42_000, Tcp::Ack), offload).len(),
            1
        );
        let flows: Vec<_> = h.e.flows().collect();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].state.name(), "established");
        assert_eq!(flows[0].packets, [2, 1]);
        assert_eq!(h.stat(Counter::LbHairpin), 3);
        assert_eq!(h.stat(Counter::LbDnat), 2);
        assert_eq!(h.stat(Counter::LbReverseNat), 1);
        assert_eq!(h.drops(Drop::TapSamePort), 0);

        // From the service's own port, balanced to itself, it would reach
        // its own socket: refused with a reset from the VIP, no flow.
        let same = tcp(A, vip_mac(ip(vip)), task, vip, 80, 80, Tcp::Syn);
        let w = send_local(&mut h, 0, &same, false);
        assert_eq!(w.len(), 1, "the reset");
        let r = nat::parse(&w[0].1).unwrap();
        assert_eq!(
            (r.src, r.dst, r.tcp_flags & 0x04),
            (ip(vip), ip(task), 0x04)
        );
        assert_eq!(h.drops(Drop::LbHairpinPort), 1);
        assert_eq!(h.e.flows().count(), 1);
    }
}

/// From the service's own port, a task's flow balanced to another task
/// works; only one balanced to itself is refused. Which one Maglev picks
/// depends on the VIP: over 20 VIPs, both happen.
#[test]
fn a_same_port_flow_is_refused_only_when_it_picks_the_sender() {
    let (mut refused, mut sent) = (0, 0);
    for last in 100..120u8 {
        let vip = format!("10.0.0.{last}");
        let mut h = Host::with(&[(vip.as_str(), &["10.0.0.2", "10.0.0.11"])]);
        let syn = tcp(A, vip_mac(ip(&vip)), "10.0.0.2", &vip, 80, 80, Tcp::Syn);
        match h.send(0, &syn) {
            Some(to) => {
                assert_eq!(to, ip("10.0.0.11"));
                sent += 1;
            }
            None => {
                assert_eq!(h.drops(Drop::LbHairpinPort), 1, "{vip}");
                refused += 1;
            }
        }
        // The same packet again decides the same way.
        let again = h.send(0, &syn);
        assert_eq!(again.is_some(), h.drops(Drop::LbHairpinPort) == 0, "{vip}");
    }
    assert!(refused > 0 && sent > 0, "refused {refused}, sent {sent}");
}

#[test]
fn another_client_of_a_tasks_vip_is_not_hairpinned() {
    let mut h = Host::with(&[("10.0.0.100", &["10.0.0.2"])]);
    let from_l = |sport: u16| {
        let (l, vip) = ("10.0.0.21", "10.0.0.100");
        tcp(mac_of(l), vip_mac(ip(vip)), l, vip, sport, 80, Tcp::Syn)
    };
    // L (port 1) connects to the VIP whose only task is A.
    let w = send_local(&mut h, 1, &from_l(43_000), false);
    assert_eq!(w.len(), 1);
    let p = nat::parse(&w[0].1).unwrap();
    assert_eq!(w[0].0, 0, "to the task's port");
    assert_eq!(
        (p.src, p.dst),
        (ip("10.0.0.21"), ip("10.0.0.2")),
        "source kept"
    );
    assert_eq!(h.stat(Counter::LbHairpin), 0);
    // A borrowing the address of L, the VIP's only backend: sent to L as
    // any client's packet would be, not back to A.
    let mut h = Host::with(&[("10.0.0.101", &["10.0.0.21"])]);
    let mut borrowed = from_l(44_000);
    nat::set_src_mac(&mut borrowed, A);
    let p = nat::parse(&borrowed).unwrap();
    nat::rewrite(
        &mut borrowed,
        &p,
        nat::Side::Dst,
        ip("10.0.0.101"),
        None,
        false,
    )
    .unwrap();
    nat::set_dst_mac(&mut borrowed, vip_mac(ip("10.0.0.101")));
    let w = send_local(&mut h, 0, &borrowed, false);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 1, "to L's port");
    assert_eq!(nat::parse(&w[0].1).unwrap().src, ip("10.0.0.21"));
    assert_eq!(h.stat(Counter::LbHairpin), 0);
}
