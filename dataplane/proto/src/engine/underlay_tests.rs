//! The engine on real underlays (issue 12): frames too big for the path,
//! head-end replication with its rate limit and its off switch, neighbour
//! announcements, and every kind of frame ending up delivered, answered or
//! counted.

use super::tests::{A, B, C, ip, tcp_gso_frame, vni};
use super::*;
use crate::fdb::Fdb;
use crate::mtu::Underlay;
use crate::replication::{FloodCounts, FloodPolicy};
use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::time::Duration;

const D: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 5]);

/// Port 0: local A (10.0.0.2, fd00::2); remote B (10.0.0.3) behind
/// 192.0.2.2, over a 1400-byte IPv4 underlay.
fn setup(extra: impl FnOnce(&mut Fdb)) -> (Engine, Outputs) {
    let mut fdb = Fdb::default();
    fdb.set_underlay(Underlay::new(1400, false));
    fdb.add_local(0, vni(), A, &[ip("10.0.0.2"), ip("fd00::2")])
        .unwrap();
    fdb.add_remote(vni(), B, &[ip("10.0.0.3"), ip("fd00::3")], ip("192.0.2.2"))
        .unwrap();
    extra(&mut fdb);
    let e = Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    );
    (e, Outputs::new(TxBatch::new(1 << 20, 256)))
}

fn with_vnet(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; vnet::LEN];
    v.extend_from_slice(frame);
    v
}

/// UDP from 10.0.0.2 to `dst_ip` at `dst`, `payload` bytes, DF as given.
fn udp4(dst: MacAddr, dst_ip: [u8; 4], payload: usize, df: bool) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(A.0, dst.0)
        .ipv4([10, 0, 0, 2], dst_ip, 64)
        .udp(1000, 2000)
        .write(&mut f, &vec![7; payload])
        .unwrap();
    f[20] = if df { 0x40 } else { 0 };
    f[24..26].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum::ipv4_header(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn udp6(dst: MacAddr, dst_ip: &str, payload: usize) -> Vec<u8> {
    let d: std::net::Ipv6Addr = dst_ip.parse().unwrap();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(A.0, dst.0)
        .ipv6(ip6("fd00::2"), d.octets(), 64)
        .udp(1000, 2000)
        .write(&mut f, &vec![7; payload])
        .unwrap();
    f
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn taps(out: &mut Outputs) -> Vec<(PortId, Vec<u8>)> {
    let mut v = Vec::new();
    out.drain_taps(|p, w| v.push((p, w.as_bytes().expect("copied").to_vec())));
    v
}

fn counts(e: &Engine) -> FloodCounts {
    e.fdb.vni(vni()).unwrap().replication.counts()
}

fn with_policy(e: &mut Engine, policy: FloodPolicy) {
    let mut f = (*e.fdb).clone();
    f.set_flood_policy(vni(), policy);
    e.set_fdb(Arc::new(f));
}

#[test]
fn a_frame_too_big_is_answered_with_the_mtu_that_fits() {
    // 1400-byte underlay: 1350 bytes of IP fit, plain.
    let (mut e, mut out) = setup(|_| {});
    e.from_tap(
        0,
        &mut with_vnet(&udp4(B, [10, 0, 0, 3], 1351 - 28, true)),
        &mut out,
    );
    assert!(out.udp.is_empty(), "nothing goes out");
    assert_eq!(e.stats().drops(Drop::TapTooBig), 1);
    let w = taps(&mut out);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 0, "back into the sender's TAP");
    let p = SlicedPacket::from_ethernet(&w[0].1[vnet::LEN..]).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1350 }
        )
    );
    // One byte less fits.
    e.from_tap(
        0,
        &mut with_vnet(&udp4(B, [10, 0, 0, 3], 1350 - 28, true)),
        &mut out,
    );
    assert_eq!(out.udp.msgs().len(), 1);
    assert_eq!(out.udp.msgs()[0].range.len(), 8 + 14 + 1350);

    // IPv6: packet too big, same MTU.
    let (mut e, mut out) = setup(|_| {});
    e.from_tap(0, &mut with_vnet(&udp6(B, "fd00::3", 1351 - 48)), &mut out);
    let w = taps(&mut out);
    let p = SlicedPacket::from_ethernet(&w[0].1[vnet::LEN..]).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1350 });
    assert_eq!(e.stats().counter(Counter::TooBigReplies), 1);

    // Encrypted: ESP takes 42 more.
    let (mut e, mut out) = setup(|f| f.set_encrypted(vni(), true));
    e.from_tap(
        0,
        &mut with_vnet(&udp4(B, [10, 0, 0, 3], 1309 - 28, true)),
        &mut out,
    );
    let w = taps(&mut out);
    let p = SlicedPacket::from_ethernet(&w[0].1[vnet::LEN..]).unwrap();
    let Some(NetSlice::Ipv4(_)) = p.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(icmp.bytes5to8(), [0, 0, 0x05, 0x1c], "MTU 1308");
}

#[test]
fn a_frame_that_may_be_fragmented_is_sent_whole() {
    let (mut e, mut out) = setup(|_| {});
    e.from_tap(
        0,
        &mut with_vnet(&udp4(B, [10, 0, 0, 3], 3000, false)),
        &mut out,
    );
    assert_eq!(out.udp.msgs().len(), 1);
    assert_eq!(
        out.udp.msgs()[0].segment,
        0,
        "one datagram, fragmented by the kernel"
    );
    assert_eq!(e.stats().counter(Counter::OversizeSent), 1);
    assert!(taps(&mut out).is_empty());
}

#[test]
fn a_gso_frame_is_cut_to_fit_and_its_sender_told() {
    // A container with MTU 1450 over a 1400 underlay: MSS 1398 asked,
    // 1350 - 40 = 1310 fits.
    let (mut e, mut out) = setup(|_| {});
    e.from_tap(0, &mut tcp_gso_frame(60_000, 1398), &mut out);
    let msgs = out.udp.msgs().to_vec();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].segment as usize, 8 + 14 + 20 + 20 + 1310);
    assert_eq!(msgs[0].datagrams(), 60_000usize.div_ceil(1310));
    assert_eq!(e.stats().counter(Counter::GsoCapped), 1);
    assert_eq!(e.stats().drops(Drop::TapTooBig), 0, "nothing lost");
    let w = taps(&mut out);
    assert_eq!(w.len(), 1, "the sender is told the MTU");
    let p = SlicedPacket::from_ethernet(&w[0].1[vnet::LEN..]).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(icmp.bytes5to8(), [0, 0, 0x05, 0x46], "MTU 1350");
    // A frame that fits is not touched.
    e.from_tap(0, &mut tcp_gso_frame(60_000, 1310), &mut out);
    assert_eq!(e.stats().counter(Counter::GsoCapped), 1);
}

/// A broadcast UDP datagram from A of `payload` bytes.
fn broadcast(payload: usize) -> Vec<u8> {
    with_vnet(&udp4(MacAddr::BROADCAST, [10, 0, 0, 255], payload, false))
}

#[test]
fn broadcast_reaches_local_ports_and_every_vtep_once() {
    let (mut e, mut out) = setup(|f| {
        f.add_local(1, vni(), C, &[ip("10.0.0.4")]).unwrap();
        f.add_remote(vni(), D, &[ip("10.0.0.5")], ip("192.0.2.5"))
            .unwrap();
        // A second MAC behind B's host: still one copy for that host.
        f.add_remote(vni(), MacAddr([2, 0x42, 10, 0, 0, 6]), &[], ip("192.0.2.2"))
            .unwrap();
    });
    e.from_tap(0, &mut broadcast(100), &mut out);
    let dsts: Vec<SocketAddr> = out.udp.msgs().iter().map(|m| m.dst).collect();
    assert_eq!(
        dsts,
        [
            "192.0.2.2:4789".parse().unwrap(),
            "192.0.2.5:4789".parse().unwrap()
        ]
    );
    let w = taps(&mut out);
    assert_eq!(w.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        counts(&e),
        FloodCounts {
            frames: 1,
            copies: 2,
            rate_limited: 0,
            suppressed: 0
        }
    );
    // IPv4 and IPv6 multicast go the same way.
    let mut mc = udp4(MacAddr([1, 0, 0x5e, 1, 1, 1]), [239, 1, 1, 1], 20, false);
    e.from_tap(0, &mut with_vnet(&mc), &mut out);
    mc = udp6(MacAddr([0x33, 0x33, 0, 0, 0, 1]), "ff02::1", 20);
    e.from_tap(0, &mut with_vnet(&mc), &mut out);
    assert_eq!(counts(&e).frames, 3);
    assert_eq!(e.stats().counter(Counter::Flooded), 6);
}

#[test]
fn flooding_off_keeps_frames_on_the_host() {
    let off = FloodPolicy {
        enabled: false,
        rate: None,
    };
    let (mut e, mut out) = setup(|f| f.add_local(1, vni(), C, &[]).unwrap());
    with_policy(&mut e, off);
    e.from_tap(0, &mut broadcast(10), &mut out);
    assert!(out.udp.is_empty());
    assert_eq!(taps(&mut out).len(), 1, "the local endpoint still gets it");
    assert_eq!(counts(&e).suppressed, 1);
    // Nobody local: counted as a drop too.
    let (mut e, mut out) = setup(|_| {});
    with_policy(&mut e, off);
    e.from_tap(0, &mut broadcast(10), &mut out);
    e.from_tap(
        0,
        &mut with_vnet(&udp4(C, [10, 0, 0, 9], 10, false)),
        &mut out,
    );
    assert!(out.udp.is_empty());
    assert_eq!(e.stats().drops(Drop::TapFloodOff), 2);
    assert_eq!(counts(&e).suppressed, 2);
}

#[test]
fn a_broadcast_storm_is_held_to_the_vni_rate() {
    let (mut e, mut out) = setup(|_| {});
    with_policy(
        &mut e,
        FloodPolicy {
            enabled: true,
            rate: Some(10),
        },
    );
    let t0 = Instant::now();
    e.set_now(t0);
    for _ in 0..50 {
        e.from_tap(0, &mut broadcast(10), &mut out);
    }
    assert_eq!(out.udp.msgs().len(), 10);
    assert_eq!(e.stats().drops(Drop::TapFloodRateLimited), 40);
    assert_eq!(counts(&e).rate_limited, 40);
    e.set_now(t0 + Duration::from_millis(500));
    for _ in 0..50 {
        e.from_tap(0, &mut broadcast(10), &mut out);
    }
    assert_eq!(out.udp.msgs().len(), 15, "5 more after half a second");
    // Unicast to a known MAC is never limited.
    for _ in 0..50 {
        e.from_tap(
            0,
            &mut with_vnet(&udp4(B, [10, 0, 0, 3], 10, false)),
            &mut out,
        );
    }
    assert_eq!(out.udp.msgs().len(), 65);
}

#[test]
fn an_encrypted_broadcast_is_sealed_per_vtep_and_opens_on_the_peer() {
    use crate::engine::testkit::{deliver, encrypted_pair, handshake};
    let (mut a, mut b) = encrypted_pair(Instant::now());
    handshake(&mut a, &mut b);
    a.engine.from_tap(0, &mut broadcast(300), &mut a.out);
    assert_eq!(a.out.udp.msgs().len(), 1);
    assert_eq!(deliver(&mut a, &mut b), 1);
    let w = taps(&mut b.out);
    assert_eq!(w.len(), 1, "host B's endpoint gets the broadcast");
    assert_eq!(&w[0].1[vnet::LEN..vnet::LEN + 6], &[0xff; 6]);
    assert_eq!(b.engine.stats().counter(Counter::Decrypted), 1);
}

#[test]
fn announcements_go_to_every_other_local_port() {
    let (mut e, mut out) = setup(|f| {
        f.add_local(1, vni(), C, &[ip("10.0.0.4")]).unwrap();
        f.add_local(2, vni(), D, &[ip("10.0.0.5")]).unwrap();
    });
    // B (remote) moved: every local port hears it.
    assert_eq!(e.announce(vni(), ip("10.0.0.3"), B, &mut out), 3);
    // C was attached: all but C's own port.
    assert_eq!(e.announce(vni(), ip("fd00::4"), C, &mut out), 2);
    // Drained port by port.
    let w = taps(&mut out);
    assert_eq!(
        w.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 0, 1, 2, 2]
    );
    let garp = &w[0].1[vnet::LEN..];
    let r = arp::parse_request(garp).unwrap().unwrap();
    assert!(r.is_gratuitous());
    assert_eq!(r.sender_mac, B);
    let na = SlicedPacket::from_ethernet(&w[1].1[vnet::LEN..]).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = na.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.type_u8(), 136);
    assert_eq!(e.stats().counter(Counter::NeighbourAnnounced), 5);
    assert_eq!(
        e.announce(Vni::new(9).unwrap(), ip("10.9.0.1"), B, &mut out),
        0
    );
}

#[test]
fn a_gratuitous_arp_is_flooded_not_answered() {
    let (mut e, mut out) = setup(|_| {});
    let mut garp = [0u8; arp::FRAME_LEN];
    arp::emit_gratuitous(std::net::Ipv4Addr::new(10, 0, 0, 2), A, &mut garp);
    e.from_tap(0, &mut with_vnet(&garp), &mut out);
    assert_eq!(e.stats().counter(Counter::ArpProxied), 0);
    assert_eq!(out.udp.msgs().len(), 1, "to B's host");
}

/// What became of one frame from port 0.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent to another host or written to another local port.
    Forwarded,
    /// Answered on the sender's port by the ARP/ND proxy.
    Answered,
    /// Counted as dropped (an ICMP "too big" may go back with it).
    Dropped(Drop),
}

fn outcome(frame: &[u8]) -> Outcome {
    let (mut e, mut out) = setup(|f| f.add_local(1, vni(), C, &[ip("10.0.0.4")]).unwrap());
    e.from_tap(0, &mut frame.to_vec(), &mut out);
    let s = e.stats();
    let drops: Vec<Drop> = Drop::ALL
        .iter()
        .copied()
        .filter(|d| s.drops(*d) > 0)
        .collect();
    let answered = s.counter(Counter::ArpProxied) + s.counter(Counter::NdProxied);
    let forwarded = !out.udp.is_empty() || taps(&mut out).iter().any(|(p, _)| *p != 0);
    match (drops.as_slice(), answered, forwarded) {
        ([d], 0, false) => Outcome::Dropped(*d),
        ([], 1, false) => Outcome::Answered,
        ([], 0, true) => Outcome::Forwarded,
        other => panic!("not exactly one outcome: {other:?}"),
    }
}

#[test]
fn every_kind_of_frame_is_forwarded_answered_or_counted() {
    use Outcome::*;
    let arp = |op: u8, sender: [u8; 4], target: [u8; 4], dst: MacAddr| {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&A.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
        f.extend_from_slice(&A.0);
        f.extend_from_slice(&sender);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        with_vnet(&f)
    };
    let icmp6 = |dst: MacAddr, dst_ip: &str, src_ip: &str, t: u8, body: &[u8]| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A.0, dst.0)
            .ipv6(ip6(src_ip), ip6(dst_ip), 255)
            .icmpv6(Icmpv6Type::Unknown {
                type_u8: t,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut f, body)
            .unwrap();
        with_vnet(&f)
    };
    let ns = |target: &str, src: &str, slla: bool| {
        let t: std::net::Ipv6Addr = target.parse().unwrap();
        let o = t.octets();
        let mut body = o.to_vec();
        if slla {
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&A.0);
        }
        let snm = format!("ff02::1:ff{:02x}:{:02x}{:02x}", o[13], o[14], o[15]);
        icmp6(
            MacAddr([0x33, 0x33, 0xff, o[13], o[14], o[15]]),
            &snm,
            src,
            135,
            &body,
        )
    };
    let mut ip_options = udp4(B, [10, 0, 0, 3], 20, false);
    ip_options[14] = 0x46;
    ip_options.splice(34..34, [1, 1, 1, 0]);
    let mut vlan = udp4(B, [10, 0, 0, 3], 20, false);
    vlan.splice(12..12, [0x81, 0, 0, 5]);
    let mut hop_by_hop = udp6(B, "fd00::3", 20);
    hop_by_hop[20] = 0;
    hop_by_hop.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "unicast, remote",
            with_vnet(&udp4(B, [10, 0, 0, 3], 20, false)),
            Forwarded,
        ),
        (
            "unicast, local",
            with_vnet(&udp4(C, [10, 0, 0, 4], 20, false)),
            Forwarded,
        ),
        (
            "unicast, unknown",
            with_vnet(&udp4(D, [10, 0, 0, 9], 20, false)),
            Forwarded,
        ),
        ("broadcast", broadcast(20), Forwarded),
        (
            "IPv4 multicast",
            with_vnet(&udp4(
                MacAddr([1, 0, 0x5e, 1, 1, 1]),
                [239, 1, 1, 1],
                20,
                false,
            )),
            Forwarded,
        ),
        (
            "IPv6 all-nodes",
            with_vnet(&udp6(MacAddr([0x33, 0x33, 0, 0, 0, 1]), "ff02::1", 20)),
            Forwarded,
        ),
        (
            "ARP request, known",
            arp(1, [10, 0, 0, 2], [10, 0, 0, 3], MacAddr::BROADCAST),
            Answered,
        ),
        (
            "ARP request, unknown",
            arp(1, [10, 0, 0, 2], [10, 0, 0, 9], MacAddr::BROADCAST),
            Forwarded,
        ),
        (
            "ARP probe",
            arp(1, [0; 4], [10, 0, 0, 3], MacAddr::BROADCAST),
            Answered,
        ),
        (
            "ARP gratuitous",
            arp(1, [10, 0, 0, 2], [10, 0, 0, 2], MacAddr::BROADCAST),
            Forwarded,
        ),
        (
            "ARP reply",
            arp(2, [10, 0, 0, 2], [10, 0, 0, 3], B),
            Forwarded,
        ),
        (
            "ND solicitation, known",
            ns("fd00::3", "fd00::2", true),
            Answered,
        ),
        (
            "ND solicitation, unknown",
            ns("fd00::9", "fd00::2", true),
            Forwarded,
        ),
        ("ND solicitation, DAD", ns("fd00::3", "::", false), Answered),
        (
            "ND advertisement",
            icmp6(
                MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                "ff02::1",
                "fd00::2",
                136,
                &ip6("fd00::2"),
            ),
            Forwarded,
        ),
        (
            "ND router solicitation",
            icmp6(
                MacAddr([0x33, 0x33, 0, 0, 0, 2]),
                "ff02::2",
                "fd00::2",
                133,
                &[0; 4],
            ),
            Forwarded,
        ),
        (
            "ND router advertisement",
            icmp6(
                MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                "ff02::1",
                "fe80::2",
                134,
                &[0; 12],
            ),
            Forwarded,
        ),
        (
            "ND redirect",
            icmp6(B, "fd00::3", "fe80::2", 137, &[0; 36]),
            Forwarded,
        ),
        ("IPv4 with options", with_vnet(&ip_options), Forwarded),
        (
            "IPv6 with a hop-by-hop header",
            with_vnet(&hop_by_hop),
            Forwarded,
        ),
        ("VLAN-tagged", with_vnet(&vlan), Forwarded),
        (
            "jumbo with DF",
            with_vnet(&udp4(B, [10, 0, 0, 3], 8000, true)),
            Dropped(Drop::TapTooBig),
        ),
        (
            "jumbo without DF",
            with_vnet(&udp4(B, [10, 0, 0, 3], 8000, false)),
            Forwarded,
        ),
        (
            "jumbo IPv6",
            with_vnet(&udp6(B, "fd00::3", 8000)),
            Dropped(Drop::TapTooBig),
        ),
        (
            "Ethernet header only",
            with_vnet(&udp4(B, [10, 0, 0, 3], 0, false)[..14]),
            Forwarded,
        ),
        ("runt", vec![0; vnet::LEN + 10], Dropped(Drop::TapRunt)),
        (
            "to its own MAC",
            with_vnet(&udp4(A, [10, 0, 0, 2], 20, false)),
            Dropped(Drop::TapSamePort),
        ),
        (
            "spoofed source",
            with_vnet(&{
                let mut f = udp4(B, [10, 0, 0, 3], 20, false);
                f[6..12].copy_from_slice(&D.0);
                f
            }),
            Dropped(Drop::TapSpoofedSource),
        ),
    ];
    for (kind, frame, want) in cases {
        assert_eq!(outcome(&frame), want, "{kind}");
    }
}
