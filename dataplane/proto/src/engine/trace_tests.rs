//! Dry runs (`vxnet trace`) through the real engine: what they note, that
//! they agree with the packet they stand for, and that they change
//! nothing a real packet would see.
use super::trace::Note;
use super::*;
use crate::fdb::Fdb;
use etherparse::PacketBuilder;

const A: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 2]);
const B: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 3]);
const C: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 4]);

fn vni() -> Vni {
    Vni::new(4096).unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Host 1 has A on port 0 and knows B behind 192.0.2.2; host 2 has B on
/// port 3 and knows A behind 192.0.2.1.
fn hosts() -> (Engine, Engine) {
    let engine = |local: MacAddr, port: PortId, remote: MacAddr, vtep: &str| {
        let mut fdb = Fdb::default();
        fdb.add_local(port, vni(), local, &[]).unwrap();
        fdb.add_remote(vni(), remote, &[], ip(vtep)).unwrap();
        Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        )
    };
    (engine(A, 0, B, "192.0.2.2"), engine(B, 3, A, "192.0.2.1"))
}

fn udp_frame(src: MacAddr, dst: MacAddr) -> Vec<u8> {
    let mut v = vec![0u8; vnet::LEN];
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .udp(1000, 2000)
        .write(&mut v, b"trace me")
        .unwrap();
    v
}

fn counted(e: &Engine) -> (u64, u64) {
    let s = e.stats();
    (
        Counter::ALL.iter().map(|c| s.counter(*c)).sum(),
        Drop::ALL.iter().map(|d| s.drops(*d)).sum(),
    )
}

#[test]
fn plain_path_is_noted_end_to_end_and_matches_the_real_packet() {
    let (mut h1, mut h2) = hosts();
    let mut pkt = udp_frame(A, B);
    let run = h1.trace_tap(0, &mut pkt.clone());
    assert!(run.drops.is_empty(), "{run:?}");
    assert!(matches!(
        run.notes[0],
        Note::TapRx {
            port: 0,
            src: A,
            dst: B,
            ..
        }
    ));
    assert!(run.notes.contains(&Note::FdbRemote {
        mac: B,
        vtep: ip("192.0.2.2")
    }));
    let dst: SocketAddr = "192.0.2.2:4789".parse().unwrap();
    assert!(run.notes.iter().any(|n| matches!(
        n,
        Note::Outer { dst: d, datagrams: 1, encrypted: false, .. } if *d == dst
    )));
    assert_eq!(counted(&h1), (0, 0), "a dry run counts nothing");

    // The real packet leaves with exactly the traced bytes.
    let mut out = Outputs::new(TxBatch::new(1 << 20, 64));
    h1.from_tap(0, &mut pkt, &mut out);
    let real = out.udp.bytes(&out.udp.msgs()[0]).to_vec();
    assert_eq!(run.sent, vec![(dst, real.clone())]);

    // The remote half runs on those bytes.
    let src: SocketAddr = "192.0.2.1:4789".parse().unwrap();
    let remote = h2.trace_wire(src, &mut real.clone());
    assert!(remote.drops.is_empty(), "{remote:?}");
    assert_eq!(
        &remote.notes[1..],
        &[
            Note::Vni {
                vni: vni(),
                encrypted: false
            },
            Note::Endpoint { mac: B, port: 3 },
            Note::TapTx {
                port: 3,
                len: pkt.len() - vnet::LEN
            },
        ]
    );
    assert_eq!(remote.delivered, vec![(3, pkt[vnet::LEN..].to_vec())]);
    assert_eq!(counted(&h2), (0, 0));
}

#[test]
fn drops_name_the_reason_the_counters_use() {
    let (mut h1, mut h2) = hosts();
    let run = h1.trace_tap(0, &mut udp_frame(C, B));
    assert_eq!(run.drops, vec![Drop::TapSpoofedSource]);
    assert!(run.notes.is_empty() && run.sent.is_empty());

    // Unknown unicast is flooded to the VNI's other host, which has no
    // endpoint with that MAC.
    let run = h1.trace_tap(0, &mut udp_frame(A, C));
    assert!(run.drops.is_empty(), "{run:?}");
    assert_eq!(
        &run.notes[1..3],
        &[Note::FdbMiss { mac: C }, Note::Flood { ports: 0, vteps: 1 }]
    );
    assert_eq!(run.sent.len(), 1);
    let (_, mut flooded) = run.sent[0].clone();
    let run = h2.trace_wire("192.0.2.1:4789".parse().unwrap(), &mut flooded);
    assert_eq!(run.drops, vec![Drop::WireNoEndpoint]);

    // With no other host or endpoint on the VNI, nobody gets it.
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni(), A, &[]).unwrap();
    let stats = Arc::new(Stats::default());
    let mut alone = Engine::new(EngineConfig::default(), Arc::new(fdb), Arc::clone(&stats));
    let run = alone.trace_tap(0, &mut udp_frame(A, C));
    assert_eq!(run.drops, vec![Drop::TapNoReceivers]);
    assert_eq!(run.notes.last(), Some(&Note::FdbMiss { mac: C }));
    assert_eq!(counted(&alone), (0, 0));

    // A VNI only the sender has.
    let mut d = vec![0u8; 8];
    vxlan::write_header(&mut d, Vni::new(4097).unwrap());
    d.extend_from_slice(&udp_frame(A, B)[vnet::LEN..]);
    let run = h2.trace_wire("192.0.2.1:4789".parse().unwrap(), &mut d);
    assert_eq!(run.drops, vec![Drop::WireUnknownVni]);
    assert!(run.delivered.is_empty());
    assert_eq!(counted(&h1), (0, 0));
    assert_eq!(counted(&h2), (0, 0));
}

#[test]
fn live_recorder_notes_real_packets() {
    let (mut h1, _) = hosts();
    let mut out = Outputs::new(TxBatch::new(1 << 20, 64));
    assert!(h1.set_recorder(Some(Box::new(Recorder::live()))).is_none());
    h1.from_tap(0, &mut udp_frame(A, B), &mut out);
    let rec = h1.set_recorder(None).unwrap();
    assert_eq!(rec.notes.len(), 3, "{:?}", rec.notes);
    assert_eq!(
        h1.stats().counter(Counter::Encapsulated),
        1,
        "counted for real"
    );
    assert_eq!(out.udp.msgs().len(), 1, "and sent");
}

#[cfg(feature = "testkit")]
mod encrypted {
    use super::super::testkit::{self, HOST_A, encrypted_pair, handshake};
    use super::*;
    use std::time::Instant;

    #[test]
    fn encrypted_trace_seals_and_opens_and_real_traffic_goes_on() {
        let now = Instant::now();
        let (mut a, mut b) = encrypted_pair(now);
        handshake(&mut a, &mut b);
        let before = (counted(&a.engine), counted(&b.engine));
        let mut pkt = udp_frame(testkit::A, testkit::B);
        let run = a.engine.trace_tap(0, &mut pkt.clone());
        assert!(run.drops.is_empty(), "{run:?}");
        let Some(Note::Sa { spi, .. }) = run.notes.iter().find(|n| matches!(n, Note::Sa { .. }))
        else {
            panic!("no SA noted: {run:?}");
        };
        assert!(run.notes.iter().any(|n| matches!(
            n,
            Note::Outer {
                encrypted: true,
                ..
            }
        )));
        let (_, mut dgram) = run.sent[0].clone();
        assert_eq!(crate::crypto::esp::peek_spi(&dgram), Some(*spi));
        let src = SocketAddr::new(a.addr, 4789);
        let remote = b.engine.trace_wire(src, &mut dgram);
        assert!(remote.drops.is_empty(), "{remote:?}");
        assert!(matches!(remote.notes[1], Note::Decrypted { vni: 4096, .. }));
        assert_eq!(remote.delivered.len(), 1);
        assert_eq!(remote.delivered[0].1, pkt[vnet::LEN..].to_vec());
        assert_eq!((counted(&a.engine), counted(&b.engine)), before);

        // A real packet after the trace still gets through.
        a.engine.from_tap(0, &mut pkt, &mut a.out);
        testkit::deliver(&mut a, &mut b);
        assert_eq!(b.engine.stats().counter(Counter::Decrypted), 1);
        assert_eq!(b.engine.stats().drops(Drop::WireReplay), 0);
        let _ = HOST_A;
    }

    #[test]
    fn unknown_sender_is_unknown_spi_on_the_receiver() {
        let now = Instant::now();
        let (mut a, mut b) = encrypted_pair(now);
        handshake(&mut a, &mut b);
        let run = a
            .engine
            .trace_tap(0, &mut udp_frame(testkit::A, testkit::B));
        let (_, mut dgram) = run.sent[0].clone();
        // From a VTEP the receiver holds no key for.
        let remote = b
            .engine
            .trace_wire("192.0.2.99:4789".parse().unwrap(), &mut dgram);
        assert_eq!(remote.drops, vec![Drop::WireUnknownSpi]);
    }
}
