use super::*;
use crate::batch::RxBatch;
use crate::fdb::Fdb;
use etherparse::PacketBuilder;

pub(super) const A: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 2]);
pub(super) const B: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 3]);
pub(super) const C: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 4]);

pub(super) fn vni() -> Vni {
    Vni::new(4096).unwrap()
}
pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Port 0: local A (10.0.0.2); remote B (10.0.0.3) behind 192.0.2.2.
fn setup(fdb_extra: impl FnOnce(&mut Fdb)) -> (Engine, Outputs) {
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni(), A, &[ip("10.0.0.2"), ip("fd00::2")])
        .unwrap();
    fdb.add_remote(vni(), B, &[ip("10.0.0.3"), ip("fd00::3")], ip("192.0.2.2"))
        .unwrap();
    fdb_extra(&mut fdb);
    let engine = Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    );
    (engine, Outputs::new(TxBatch::new(1 << 20, 64)))
}

fn udp_frame(src: MacAddr, dst: MacAddr, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; vnet::LEN];
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .udp(1000, 2000)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// TAP writes of the copying path (`from_wire`, `from_tap`): one piece each.
fn drained(out: &mut Outputs) -> Vec<(PortId, Vec<u8>)> {
    let mut v = Vec::new();
    out.drain_taps(|p, w| v.push((p, w.as_bytes().expect("copied: one piece").to_vec())));
    v
}

/// TAP writes with references resolved against `rx`, and how many pieces
/// each had.
fn drained_from(out: &mut Outputs, rx: &RxBatch) -> Vec<(PortId, Vec<u8>, usize)> {
    let mut v = Vec::new();
    out.drain_taps(|p, w| {
        let bytes = w.to_vec(|r| rx.resolve(r)).expect("references resolve");
        v.push((p, bytes, w.piece_count()));
    });
    v
}

/// Puts UDP message `m` of `tx` into receive buffer `i` of a fresh batch
/// as one GRO buffer, after buffer 0 got an unrelated datagram.
fn gro_batch(tx: &TxBatch, m: &crate::batch::TxMsg, i: usize) -> RxBatch {
    let mut rx = RxBatch::new(i + 1, 65_536);
    let bytes = tx.bytes(m);
    rx.bufs[0][..4].copy_from_slice(&[1, 2, 3, 4]);
    rx.meta[0].len = 4;
    rx.bufs[i][..bytes.len()].copy_from_slice(bytes);
    rx.meta[i].len = bytes.len();
    rx.meta[i].segment = m.segment;
    rx.filled = i + 1;
    rx
}

#[test]
fn unicast_to_remote_is_encapsulated() {
    let (mut e, mut out) = setup(|_| {});
    let mut pkt = udp_frame(A, B, b"hello");
    e.from_tap(0, &mut pkt, &mut out);
    let msgs = out.udp.msgs().to_vec();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].dst, "192.0.2.2:4789".parse().unwrap());
    assert_eq!(msgs[0].segment, 0);
    let dgram = out.udp.bytes(&msgs[0]);
    let vx = vxlan::Packet::new_checked(dgram).unwrap();
    assert_eq!(vx.vni(), vni());
    assert_eq!(vx.payload(), &pkt[vnet::LEN..]);
    assert_eq!(e.stats().counter(Counter::Encapsulated), 1);
}

#[test]
fn spoofed_and_runt_frames_are_dropped() {
    let (mut e, mut out) = setup(|_| {});
    e.from_tap(0, &mut udp_frame(C, B, b"x"), &mut out);
    e.from_tap(0, &mut [0u8; 12], &mut out);
    e.from_tap(7, &mut udp_frame(A, B, b"x"), &mut out);
    assert!(out.udp.is_empty());
    assert_eq!(e.stats().drops(Drop::TapSpoofedSource), 1);
    assert_eq!(e.stats().drops(Drop::TapRunt), 1);
    assert_eq!(e.stats().drops(Drop::TapUnknownPort), 1);
}

#[test]
fn unknown_unicast_goes_to_every_vtep_of_the_vni() {
    let (mut e, mut out) = setup(|f| f.remove_remote(vni(), B, &[]).unwrap());
    e.from_tap(0, &mut udp_frame(A, C, b"x"), &mut out);
    assert!(out.udp.is_empty());
    assert_eq!(e.stats().drops(Drop::TapNoReceivers), 1, "nobody to go to");

    let (mut e, mut out) = setup(|f| {
        f.add_flood(vni(), ip("192.0.2.7")).unwrap();
        f.add_flood(vni(), ip("192.0.2.8")).unwrap();
    });
    e.from_tap(0, &mut udp_frame(A, C, b"x"), &mut out);
    let msgs = out.udp.msgs().to_vec();
    assert_eq!(msgs.len(), 3, "B's VTEP and both flood VTEPs");
    assert!(
        msgs.iter().all(|m| m.range == msgs[0].range),
        "flooding reuses the encapsulated bytes"
    );
    assert_eq!(msgs[0].dst, "192.0.2.2:4789".parse().unwrap());
    assert_eq!(msgs[2].dst, "192.0.2.8:4789".parse().unwrap());
    assert_eq!(e.stats().counter(Counter::Flooded), 3);
}

#[test]
fn arp_for_known_address_is_answered_locally() {
    let (mut e, mut out) = setup(|_| {});
    let mut pkt = vec![0u8; vnet::LEN];
    // Ethernet broadcast ARP request: who has 10.0.0.3? tell 10.0.0.2
    pkt.extend_from_slice(&MacAddr::BROADCAST.0);
    pkt.extend_from_slice(&A.0);
    pkt.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    pkt.extend_from_slice(&A.0);
    pkt.extend_from_slice(&[10, 0, 0, 2]);
    pkt.extend_from_slice(&[0; 6]);
    pkt.extend_from_slice(&[10, 0, 0, 3]);
    e.from_tap(0, &mut pkt, &mut out);
    assert!(
        out.udp.is_empty(),
        "ARP is never sent across hosts when the proxy knows the answer"
    );
    let taps = drained(&mut out);
    assert_eq!(taps.len(), 1);
    let (port, reply) = &taps[0];
    assert_eq!(*port, 0);
    let frame = &reply[vnet::LEN..];
    assert_eq!(MacAddr::dst_of(frame), Some(A));
    assert_eq!(&frame[12..14], &[0x08, 0x06]);
    assert_eq!(&frame[20..22], &[0, 2], "opcode reply");
    assert_eq!(
        &frame[22..28],
        &B.0,
        "sender hardware address is the answer"
    );
    assert_eq!(e.stats().counter(Counter::ArpProxied), 1);
}

#[test]
fn neighbour_solicitation_is_answered_locally() {
    let (mut e, mut out) = setup(|_| {});
    let target: std::net::Ipv6Addr = "fd00::3".parse().unwrap();
    let src: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
    let t = target.octets();
    let snm = [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ];
    let mut icmp = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&A.0);
    let mut pkt = vec![0u8; vnet::LEN];
    PacketBuilder::ethernet2(A.0, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
        .ipv6(src.octets(), snm, 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut pkt, &icmp[8..])
        .unwrap();
    e.from_tap(0, &mut pkt, &mut out);
    let taps = drained(&mut out);
    assert_eq!(taps.len(), 1, "answered on the asking port");
    assert_eq!(e.stats().counter(Counter::NdProxied), 1);
    let frame = &taps[0].1[vnet::LEN..];
    let parsed = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    match parsed.transport {
        Some(etherparse::TransportSlice::Icmpv6(i)) => assert_eq!(i.type_u8(), 136),
        other => panic!("expected an ICMPv6 advertisement, got {other:?}"),
    }
}

#[test]
fn local_endpoints_switch_without_the_wire() {
    let (mut e, mut out) = setup(|f| f.add_local(1, vni(), C, &[ip("10.0.0.4")]).unwrap());
    e.from_tap(0, &mut udp_frame(A, C, b"local"), &mut out);
    assert!(out.udp.is_empty());
    let taps = drained(&mut out);
    assert_eq!(taps.len(), 1);
    assert_eq!(taps[0].0, 1);
    assert_eq!(e.stats().counter(Counter::LocalSwitched), 1);
}

fn vxlan_datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    vxlan::write_header(&mut d, Vni::new(vni).unwrap());
    d.extend_from_slice(inner);
    d
}

#[test]
fn from_wire_delivers_and_drops_by_reason() {
    let (mut e, mut out) = setup(|_| {});
    let src: SocketAddr = "192.0.2.2:40000".parse().unwrap();
    let inner = udp_frame(B, A, b"back")[vnet::LEN..].to_vec();
    e.from_wire(src, &mut vxlan_datagram(4096, &inner), &mut out);
    let taps = drained(&mut out);
    assert_eq!(taps.len(), 1);
    assert_eq!(&taps[0].1[vnet::LEN..], &inner[..]);

    e.from_wire(src, &mut vxlan_datagram(4097, &inner), &mut out);
    e.from_wire(src, &mut [0x08, 0, 0], &mut out);
    // First word 1..=255: neither VXLAN (0x08000000) nor a valid SPI.
    let mut bad = vxlan_datagram(4096, &inner);
    bad[..4].copy_from_slice(&[0, 0, 0, 5]);
    e.from_wire(src, &mut bad, &mut out);
    // First word 0 is a control message; from a host with no keys set up.
    let mut ctl = vec![0u8; 88];
    e.from_wire(src, &mut ctl, &mut out);
    e.from_wire(
        src,
        &mut vxlan_datagram(4096, &udp_frame(B, C, b"")[vnet::LEN..]),
        &mut out,
    );
    e.from_wire(
        src,
        &mut vxlan_datagram(4096, &udp_frame(A, A, b"")[vnet::LEN..]),
        &mut out,
    );
    e.from_wire(src, &mut vxlan_datagram(4096, &inner[..10]), &mut out);
    assert!(drained(&mut out).is_empty());
    let s = e.stats();
    assert_eq!(s.drops(Drop::WireUnknownVni), 1);
    assert_eq!(s.drops(Drop::WireReservedSpi), 1);
    assert_eq!(s.drops(Drop::WireBadControl), 1);
    assert_eq!(s.drops(Drop::WireRunt), 2);
    assert_eq!(s.drops(Drop::WireNoEndpoint), 1);
    assert_eq!(s.drops(Drop::WireFromSelf), 1);
    assert_eq!(s.counter(Counter::Decapsulated), 1);
}

/// A 64 KB TCP GSO frame as a TAP with TSO hands it over.
pub(super) fn tcp_gso_frame(payload_len: usize, mss: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(A.0, B.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .tcp(40000, 5201, 1000, 65535)
        .ack(1)
        .write(&mut frame, &payload)
        .unwrap();
    let hdr = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: 14 + 20 + 20,
        gso_size: mss,
        csum_start: 14 + 20,
        csum_offset: 16,
    };
    let mut pkt = vec![0u8; vnet::LEN];
    hdr.emit(&mut pkt);
    pkt.extend_from_slice(&frame);
    pkt
}

#[test]
fn gso_frame_becomes_one_udp_gso_message_and_coalesces_back() {
    let (mut e, mut out) = setup(|_| {});
    let mut pkt = tcp_gso_frame(60_000, 1398);
    e.from_tap(0, &mut pkt, &mut out);
    let msgs = out.udp.msgs().to_vec();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.segment as usize, 8 + 14 + 20 + 20 + 1398);
    assert_eq!(m.datagrams(), 60_000usize.div_ceil(1398));
    assert_eq!(
        e.stats().counter(Counter::Encapsulated),
        m.datagrams() as u64
    );

    // Feed the datagrams to the receiving side (A and B swapped) and expect
    // them to be merged into few TAP writes carrying the same payload.
    let (mut rx, mut rx_out) = {
        let mut fdb = Fdb::default();
        fdb.add_local(0, vni(), B, &[ip("10.0.0.3")]).unwrap();
        fdb.add_remote(vni(), A, &[ip("10.0.0.2")], ip("192.0.2.1"))
            .unwrap();
        let e = Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        );
        (e, Outputs::new(TxBatch::new(1 << 20, 64)))
    };
    let mut bytes = out.udp.bytes(m).to_vec();
    for d in bytes.chunks_mut(m.segment as usize) {
        rx.from_wire("192.0.2.1:1".parse().unwrap(), d, &mut rx_out);
    }
    let taps = drained(&mut rx_out);
    assert!(
        taps.len() < 4,
        "{} TAP writes for one 60 KB burst",
        taps.len()
    );
    let mut total = 0;
    for (_, w) in &taps {
        let h = VnetHdr::parse(w).unwrap();
        let frame = &w[vnet::LEN..];
        total += frame.len() - 54;
        if taps.len() == 1 {
            assert_eq!(h.gso_type, vnet::GsoType::TcpV4);
        }
    }
    assert_eq!(total, 60_000);
}

/// Host B's engine: endpoint B local, A behind 192.0.2.1.
fn receiver() -> (Engine, Outputs) {
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni(), B, &[ip("10.0.0.3")]).unwrap();
    fdb.add_remote(vni(), A, &[ip("10.0.0.2")], ip("192.0.2.1"))
        .unwrap();
    let e = Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    );
    (e, Outputs::new(TxBatch::new(1 << 20, 64)))
}

#[test]
fn from_wire_at_writes_what_from_wire_writes_without_copying() {
    let (mut e, mut out) = setup(|_| {});
    e.from_tap(0, &mut tcp_gso_frame(60_000, 1398), &mut out);
    // A small frame too: copied, whatever its location.
    e.from_tap(0, &mut udp_frame(A, B, b"small"), &mut out);
    let msgs = out.udp.msgs().to_vec();
    let src: SocketAddr = "192.0.2.1:1".parse().unwrap();

    let (mut copying, mut copied) = receiver();
    for m in &msgs {
        let mut bytes = out.udp.bytes(m).to_vec();
        let step = if m.segment == 0 {
            bytes.len()
        } else {
            m.segment as usize
        };
        for d in bytes.chunks_mut(step) {
            copying.from_wire(src, d, &mut copied);
        }
    }
    let want = drained(&mut copied);

    let (mut rx_engine, mut rx_out) = receiver();
    let mut got = Vec::new();
    for m in &msgs {
        let mut rx = gro_batch(&out.udp, m, 2);
        for (at, d) in rx.datagrams_at_mut(2) {
            rx_engine.from_wire_at(src, d, at, &mut rx_out);
        }
        got.extend(drained_from(&mut rx_out, &rx));
    }
    let bytes: Vec<_> = got.iter().map(|(p, b, _)| (*p, b.clone())).collect();
    assert_eq!(bytes, want);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].2,
        1 + 60_000usize.div_ceil(1398),
        "headers + one reference per segment"
    );
    assert_eq!(got[1].2, 1, "the small frame is one piece");
    assert_eq!(
        rx_engine.stats().counter(Counter::Decapsulated),
        copying.stats().counter(Counter::Decapsulated)
    );
}

#[test]
fn flow_hash_separates_flows_and_keeps_one_flow_stable() {
    let a = udp_frame(A, B, b"1");
    let b = udp_frame(A, B, b"22");
    assert_eq!(flow_hash(&a[vnet::LEN..]), flow_hash(&b[vnet::LEN..]));
    let mut other = Vec::new();
    PacketBuilder::ethernet2(A.0, B.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .udp(1001, 2000)
        .write(&mut other, b"1")
        .unwrap();
    assert_ne!(flow_hash(&a[vnet::LEN..]), flow_hash(&other));
    assert_eq!(flow_hash(&[]), flow_hash(&[]));
}

mod encrypted {
    use super::*;
    use crate::engine::testkit::{HOST_A, HOST_B, deliver, encrypted_pair as pair, handshake};
    use std::time::{Duration, Instant};

    #[test]
    fn nothing_leaves_before_keys_exist() {
        let (mut a, _b) = pair(Instant::now());
        a.engine
            .from_tap(0, &mut udp_frame(A, B, b"early"), &mut a.out);
        assert!(a.out.udp.is_empty());
        assert_eq!(a.engine.stats().drops(Drop::TapNoSa), 1);
    }

    #[test]
    fn gso_frame_is_sealed_per_segment_and_opens_on_the_peer() {
        let (mut a, mut b) = pair(Instant::now());
        handshake(&mut a, &mut b);
        a.engine
            .from_tap(0, &mut tcp_gso_frame(60_000, 1398), &mut a.out);
        let m = a.out.udp.msgs()[0].clone();
        assert_eq!(a.out.udp.msgs().len(), 1);
        let full = esp::sealed_len(8 + 8 + 14 + 20 + 20 + 1398);
        assert_eq!(m.segment as usize, full, "uniform stride for UDP_SEGMENT");
        let wire = a.out.udp.bytes(&m).to_vec();
        let clear = tcp_gso_frame(60_000, 1398)[200..216].to_vec();
        assert!(
            !wire.windows(16).any(|w| w == clear.as_slice()),
            "payload bytes must not appear in clear on the wire"
        );
        let datagrams = deliver(&mut a, &mut b);
        assert_eq!(datagrams, 60_000usize.div_ceil(1398));
        assert_eq!(
            b.engine.stats().counter(Counter::Decrypted),
            datagrams as u64
        );
        let taps = drained(&mut b.out);
        let total: usize = taps.iter().map(|(_, w)| w.len() - vnet::LEN - 54).sum();
        assert_eq!(total, 60_000);
        assert!(taps.len() < 4, "decrypted segments coalesce too");
    }

    #[test]
    fn opened_in_place_and_written_by_reference() {
        // Two host pairs, one receiving by copy, one by reference, each
        // sent the same frames: the TAP writes must be the same bytes.
        let mut writes = Vec::new();
        for by_ref in [false, true] {
            let (mut a, mut b) = pair(Instant::now());
            handshake(&mut a, &mut b);
            a.engine
                .from_tap(0, &mut tcp_gso_frame(60_000, 1398), &mut a.out);
            a.engine
                .from_tap(0, &mut udp_frame(A, B, &[5; 900]), &mut a.out);
            let msgs = a.out.udp.msgs().to_vec();
            assert_eq!(msgs.len(), 2);
            let from = SocketAddr::new(a.addr, 4789);
            let mut got = Vec::new();
            for m in &msgs {
                if by_ref {
                    let mut rx = gro_batch(&a.out.udp, m, 1);
                    for (at, d) in rx.datagrams_at_mut(1) {
                        b.engine.from_wire_at(from, d, at, &mut b.out);
                    }
                    for (_, w, pieces) in drained_from(&mut b.out, &rx) {
                        assert!(pieces > 1, "referenced, not copied");
                        got.push(w);
                    }
                } else {
                    let mut bytes = a.out.udp.bytes(m).to_vec();
                    let step = if m.segment == 0 {
                        bytes.len()
                    } else {
                        m.segment as usize
                    };
                    for d in bytes.chunks_mut(step) {
                        b.engine.from_wire(from, d, &mut b.out);
                    }
                    got.extend(drained(&mut b.out).into_iter().map(|(_, w)| w));
                }
            }
            assert_eq!(
                b.engine.stats().counter(Counter::Decrypted),
                60_000usize.div_ceil(1398) as u64 + 1
            );
            writes.push(got);
        }
        assert_eq!(writes[0], writes[1]);
        assert_eq!(writes[0].len(), 2);
    }

    #[test]
    fn injected_packets_are_dropped_by_reason() {
        let (mut a, mut b) = pair(Instant::now());
        handshake(&mut a, &mut b);
        a.engine
            .from_tap(0, &mut udp_frame(A, B, b"real"), &mut a.out);
        let m = a.out.udp.msgs()[0].clone();
        let captured = a.out.udp.bytes(&m).to_vec();
        let from = SocketAddr::new(a.addr, 40000);
        let mut first = captured.clone();
        b.engine.from_wire(from, &mut first, &mut b.out);
        assert_eq!(drained(&mut b.out).len(), 1, "the real packet arrives");

        let mut replayed = captured.clone();
        b.engine.from_wire(from, &mut replayed, &mut b.out);
        // A fresh packet (new sequence number) with one bit flipped: only
        // the ICV can catch it.
        a.engine
            .from_tap(0, &mut udp_frame(A, B, b"fresh"), &mut a.out);
        let fresh = a.out.udp.msgs()[1].clone();
        let mut flipped = a.out.udp.bytes(&fresh).to_vec();
        a.out.udp.clear();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        b.engine.from_wire(from, &mut flipped, &mut b.out);
        let mut random_spi = captured.clone();
        random_spi[..4].copy_from_slice(&[0x52, 0x5a, 0x5a, 0x5a]);
        b.engine.from_wire(from, &mut random_spi, &mut b.out);
        let inner = udp_frame(A, B, b"plain")[vnet::LEN..].to_vec();
        b.engine
            .from_wire(from, &mut vxlan_datagram(4096, &inner), &mut b.out);
        let mut stranger = captured.clone();
        b.engine.from_wire(
            SocketAddr::new(ip("192.0.2.99"), 4789),
            &mut stranger,
            &mut b.out,
        );

        assert!(
            drained(&mut b.out).is_empty(),
            "no injected packet reaches the container"
        );
        let s = b.engine.stats();
        assert_eq!(s.drops(Drop::WireReplay), 1);
        assert_eq!(s.drops(Drop::WireAuthFailed), 1);
        assert_eq!(s.drops(Drop::WireUnknownSpi), 2);
        assert_eq!(s.drops(Drop::WirePlainOnEncrypted), 1);

        // The real flow goes on.
        a.engine
            .from_tap(0, &mut udp_frame(A, B, b"after"), &mut a.out);
        deliver(&mut a, &mut b);
        assert_eq!(drained(&mut b.out).len(), 1);
    }

    #[test]
    fn forced_rotations_lose_nothing() {
        let start = Instant::now();
        let (mut a, mut b) = pair(start);
        handshake(&mut a, &mut b);
        let mut now = start;
        let mut sent = 0;
        for round in 0..20 {
            let initiator = if round % 2 == 0 { &a } else { &b };
            let peer = if initiator.addr == ip(HOST_A) {
                ip(HOST_B)
            } else {
                ip(HOST_A)
            };
            initiator
                .engine
                .fdb
                .peer(peer)
                .unwrap()
                .lock()
                .unwrap()
                .rekey(now);
            // Traffic both ways while the control messages cross.
            for _ in 0..5 {
                now += Duration::from_millis(1);
                a.engine.set_now(now);
                b.engine.set_now(now);
                a.engine.handle_timers(&mut a.out);
                b.engine.handle_timers(&mut b.out);
                a.engine
                    .from_tap(0, &mut udp_frame(A, B, b"ab"), &mut a.out);
                b.engine
                    .from_tap(0, &mut udp_frame(B, A, b"ba"), &mut b.out);
                sent += 2;
                deliver(&mut a, &mut b);
                deliver(&mut b, &mut a);
            }
        }
        let received = drained(&mut a.out).len() + drained(&mut b.out).len();
        assert_eq!(received, sent, "no packet lost to 20 rotations");
        let generation = a
            .engine
            .fdb
            .peer(ip(HOST_B))
            .unwrap()
            .lock()
            .unwrap()
            .generation();
        assert!(
            generation >= 20,
            "20 rotations happened (generation {generation})"
        );
        for h in [&a, &b] {
            assert_eq!(h.engine.stats().drops(Drop::WireUnknownSpi), 0);
            assert_eq!(h.engine.stats().drops(Drop::WireAuthFailed), 0);
            assert_eq!(h.engine.stats().drops(Drop::TapNoSa), 0);
        }
    }

    /// Issue 13, fault 3: RESPs and CONFIRMs with a bad tag are forgeries
    /// (`bad_control`), not retries (`control_stale`), whatever state the
    /// session is in.
    #[test]
    fn forged_resp_and_confirm_count_as_bad_control() {
        let (mut a, mut b) = pair(Instant::now());
        handshake(&mut a, &mut b);
        a.out.udp.clear();
        let from = SocketAddr::new(b.addr, 4789);
        // (A collision in the handshake may have left a stale message.)
        let stale = a.engine.stats().counter(Counter::ControlStale);
        for kind in [2u8, 3] {
            for fill in [0u8, 0x5a, 0xff] {
                let mut m = vec![fill; 88];
                m[..8].copy_from_slice(&[0, 0, 0, 0, 1, kind, 0, 0]);
                a.engine.from_wire(from, &mut m, &mut a.out);
            }
        }
        let s = a.engine.stats();
        assert_eq!(s.drops(Drop::WireBadControl), 6);
        assert_eq!(s.counter(Counter::ControlStale), stale);
        assert!(a.out.udp.is_empty(), "a forgery is never answered");
    }
}
