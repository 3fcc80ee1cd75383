//! Every datagram received on the data port is counted once as received
//! (`udp_rx_datagrams`) and once as what became of it (issue 13, fault 2):
//! `received = decapsulated + decrypted + control + drops`, checked after
//! each datagram of every kind an underlay can bring.
use super::testkit::{self, Host, deliver, encrypted_pair, handshake};
use super::*;
use crate::stats::Snapshot;
use etherparse::PacketBuilder;

/// The plain VNI host B also has, with endpoint `B2` on port 1.
const PLAIN_VNI: u32 = 4097;
const A2: MacAddr = MacAddr([2, 0x42, 10, 0, 1, 2]);
const B2: MacAddr = MacAddr([2, 0x42, 10, 0, 1, 3]);

fn snapshot(h: &Host) -> Snapshot {
    Snapshot::sum([&**h.engine.stats()])
}

fn frame(src: MacAddr, dst: MacAddr) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .udp(1000, 2000)
        .write(&mut f, b"accounted")
        .expect("test frame");
    f
}

fn vxlan_datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::HEADER_LEN];
    vxlan::write_header(&mut d, Vni::new(vni).expect("vni"));
    d.extend_from_slice(inner);
    d
}

/// Host A's next ESP datagram to endpoint B, sealed but not delivered.
fn sealed_from_a(a: &mut Host) -> Vec<u8> {
    let mut pkt = vec![0u8; vnet::LEN];
    pkt.extend_from_slice(&frame(testkit::A, testkit::B));
    a.engine.from_tap(0, &mut pkt, &mut a.out);
    let msgs = a.out.udp.msgs().to_vec();
    assert_eq!(msgs.len(), 1);
    let d = a.out.udp.bytes(&msgs[0]).to_vec();
    a.out.udp.clear();
    d
}

#[test]
fn every_received_datagram_is_counted_once_by_what_became_of_it() {
    let now = Instant::now();
    let (mut a, mut b) = encrypted_pair(now);
    // Host B also carries a plain VNI, so plain VXLAN can be delivered.
    let mut fdb = (*b.engine.fdb).clone();
    let plain = Vni::new(PLAIN_VNI).expect("vni");
    fdb.add_local(1, plain, B2, &[]).expect("fixture");
    fdb.add_remote(plain, A2, &[], a.addr).expect("fixture");
    b.engine.set_fdb(Arc::new(fdb));
    // Good control messages: the handshake.
    handshake(&mut a, &mut b);
    let s = snapshot(&b);
    assert!(
        s.counter(Counter::ControlRx) >= 1,
        "the handshake reached B"
    );
    assert_eq!(s.counter(Counter::UdpRxDatagrams), s.wire_outcomes());

    let from_a = SocketAddr::new(a.addr, 4789);
    let stranger: SocketAddr = "198.51.100.9:4789".parse().expect("addr");
    let good_esp = sealed_from_a(&mut a);
    let mut tampered = sealed_from_a(&mut a);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let mut reserved_spi = good_esp.clone();
    reserved_spi[..4].copy_from_slice(&[0, 0, 0, 7]);
    let mut forged_control = vec![0u8; 120];
    forged_control[4..].fill(0x5a);
    // Random-looking bytes: with the VXLAN I flag in the first byte, and
    // without it (then the first word reads as an SPI nobody has).
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 37 + 11) as u8).collect();
    let mut esp_garbage = garbage.clone();
    esp_garbage[0] = 0x93;
    let inner_plain = frame(A2, B2);
    let inner_encrypted = frame(testkit::A, testkit::B);

    type Outcome = Result<Counter, Drop>;
    let cases: Vec<(&str, SocketAddr, Vec<u8>, Outcome)> = vec![
        ("empty", from_a, vec![], Err(Drop::WireEmpty)),
        ("runt", from_a, vec![0x08, 0, 0], Err(Drop::WireRunt)),
        (
            "runt VXLAN",
            from_a,
            vxlan_datagram(PLAIN_VNI, &inner_plain[..10]),
            Err(Drop::WireRunt),
        ),
        ("garbage", from_a, garbage, Err(Drop::WireUnknownVni)),
        (
            "garbage, ESP",
            from_a,
            esp_garbage.clone(),
            Err(Drop::WireUnknownSpi),
        ),
        (
            "garbage, stranger",
            stranger,
            esp_garbage,
            Err(Drop::WireUnknownSpi),
        ),
        (
            "reserved SPI",
            from_a,
            reserved_spi,
            Err(Drop::WireReservedSpi),
        ),
        (
            "forged control",
            from_a,
            forged_control.clone(),
            Err(Drop::WireBadControl),
        ),
        (
            "control, stranger",
            stranger,
            forged_control,
            Err(Drop::WireBadControl),
        ),
        ("good ESP", from_a, good_esp.clone(), Ok(Counter::Decrypted)),
        ("replayed ESP", from_a, good_esp, Err(Drop::WireReplay)),
        ("tampered ESP", from_a, tampered, Err(Drop::WireAuthFailed)),
        (
            "plain on encrypted",
            from_a,
            vxlan_datagram(4096, &inner_encrypted),
            Err(Drop::WirePlainOnEncrypted),
        ),
        (
            "good plain",
            from_a,
            vxlan_datagram(PLAIN_VNI, &inner_plain),
            Ok(Counter::Decapsulated),
        ),
        (
            "plain, unknown VNI",
            from_a,
            vxlan_datagram(5000, &inner_plain),
            Err(Drop::WireUnknownVni),
        ),
    ];
    for (what, src, mut datagram, outcome) in cases {
        let before = snapshot(&b);
        b.engine.from_wire(src, &mut datagram, &mut b.out);
        b.out.drain_taps(|_, _| {});
        b.out.udp.clear();
        let after = snapshot(&b);
        assert_eq!(
            after.counter(Counter::UdpRxDatagrams),
            before.counter(Counter::UdpRxDatagrams) + 1,
            "{what}: received once"
        );
        assert_eq!(
            after.wire_outcomes(),
            before.wire_outcomes() + 1,
            "{what}: one outcome"
        );
        match outcome {
            Ok(c) => assert_eq!(after.counter(c), before.counter(c) + 1, "{what}: {c:?}"),
            Err(d) => assert_eq!(
                after.drop_count(d),
                before.drop_count(d) + 1,
                "{what}: {d:?}"
            ),
        }
    }

    // Good control again: a rotation, exchanged both ways.
    let before = snapshot(&b);
    testkit::rekey(&a, b.addr, now);
    a.engine.handle_timers(&mut a.out);
    for _ in 0..4 {
        deliver(&mut a, &mut b);
        deliver(&mut b, &mut a);
    }
    let after = snapshot(&b);
    assert!(after.counter(Counter::ControlRx) > before.counter(Counter::ControlRx));
    assert_eq!(
        after.counter(Counter::UdpRxDatagrams),
        after.wire_outcomes()
    );
    // And on host A, which took only the handshake's and rotation's.
    let s = snapshot(&a);
    assert_eq!(s.counter(Counter::UdpRxDatagrams), s.wire_outcomes());
}

#[test]
fn reserved_spis_have_their_own_drop_reason() {
    // RFC 4303 section 2.1: SPIs 1-255 are reserved by IANA; no SA has
    // one, so no ESP datagram may carry one (not a malformed VXLAN header).
    let (a, mut b) = encrypted_pair(Instant::now());
    let src = SocketAddr::new(a.addr, 4789);
    for spi in [1u32, 7, 255] {
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(&spi.to_be_bytes());
        b.engine.from_wire(src, &mut d, &mut b.out);
    }
    // 256 is the first SPI an SA may have: unknown, not reserved.
    let mut d = vec![0u8; 64];
    d[..4].copy_from_slice(&256u32.to_be_bytes());
    b.engine.from_wire(src, &mut d, &mut b.out);
    let s = b.engine.stats();
    assert_eq!(s.drops(Drop::WireReservedSpi), 3);
    assert_eq!(s.drops(Drop::WireBadVxlan), 0);
    assert_eq!(s.drops(Drop::WireUnknownSpi), 1);
    assert_eq!(Drop::WireReservedSpi.reason(), "reserved_spi");
}
