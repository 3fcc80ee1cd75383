//! The engine's whole per-packet decision, with throughput in bytes: FDB
//! lookup among many endpoints, `from_tap` of an MTU-sized frame and of a
//! 64 KB GSO frame (plain and encrypted), `from_wire` of a plain and of an
//! ESP datagram, and of a GRO buffer of 46 datagrams coalesced into one TAP
//! write (by reference and by copy).
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use vxnet_proto::batch::{RxBatch, TxBatch};
use vxnet_proto::engine::testkit::{self, A, B};
use vxnet_proto::engine::{Engine, EngineConfig, Outputs};
use vxnet_proto::fdb::Fdb;
use vxnet_proto::offload::coalesce::Piece;
use vxnet_proto::stats::Stats;
use vxnet_proto::wire::vnet::{self, F_NEEDS_CSUM, GsoType, VnetHdr};
use vxnet_proto::wire::{MacAddr, checksum};

fn udp_frame(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; vnet::LEN];
    PacketBuilder::ethernet2(A.0, B.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .udp(1000, 2000)
        .write(&mut v, &vec![7u8; len - 14 - 20 - 8])
        .expect("frame");
    v
}

fn gso_frame() -> Vec<u8> {
    let data = vec![9u8; 64_000];
    let mut f = Vec::new();
    PacketBuilder::ethernet2(A.0, B.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .tcp(40000, 5201, 1, 502)
        .ack(1)
        .write(&mut f, &data)
        .expect("64 KB frame");
    let p = checksum::pseudo_v4(
        [10, 0, 0, 2].into(),
        [10, 0, 0, 3].into(),
        6,
        (f.len() - 34) as u16,
    );
    f[50..52].copy_from_slice(&checksum::fold(p).to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: 54,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut pkt = vec![0u8; vnet::LEN];
    hdr.emit(&mut pkt);
    pkt.extend_from_slice(&f);
    pkt
}

/// A plain engine with endpoint A local and `peers` remote endpoints, B among them.
fn plain_engine(peers: u32) -> Engine {
    let vni = testkit::vni();
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni, A, &[]).expect("local");
    fdb.add_remote(vni, B, &[], IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
        .expect("B");
    for i in 0..peers {
        let m = MacAddr([2, 0x43, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]);
        fdb.add_remote(vni, m, &[], IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))
            .expect("peer");
    }
    Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    )
}

fn from_tap(c: &mut Criterion) {
    let mut g = c.benchmark_group("from_tap");
    for peers in [10u32, 10_000] {
        let mut e = plain_engine(peers);
        let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
        let mut f = udp_frame(1450);
        g.throughput(Throughput::Bytes(1450));
        g.bench_function(BenchmarkId::new("plain_1450B_fdb", peers), |b| {
            b.iter(|| {
                e.from_tap(0, black_box(&mut f), &mut out);
                out.udp.clear();
            })
        });
    }
    // Not rewritten by the engine (no service): reused as it is.
    let mut gso = gso_frame();
    g.throughput(Throughput::Bytes(64_000));
    let mut e = plain_engine(10);
    let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
    g.bench_function("plain_64KB_gso", |b| {
        b.iter(|| {
            e.from_tap(0, black_box(&mut gso), &mut out);
            out.udp.clear();
        })
    });
    let (mut a, mut bh) = testkit::encrypted_pair(Instant::now());
    testkit::handshake(&mut a, &mut bh);
    g.bench_function("encrypted_64KB_gso", |b| {
        b.iter(|| {
            a.engine.from_tap(0, black_box(&mut gso), &mut a.out);
            a.out.udp.clear();
        })
    });
    g.finish();
}

fn from_wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("from_wire");
    g.throughput(Throughput::Bytes(1450));
    // Plain: host B's engine receiving A's datagram.
    let mut e = {
        let vni = testkit::vni();
        let mut fdb = Fdb::default();
        fdb.add_local(0, vni, B, &[]).expect("local");
        fdb.add_remote(vni, A, &[], IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .expect("A");
        Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        )
    };
    let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
    let mut sender = plain_engine(0);
    let mut sout = Outputs::new(TxBatch::new(1 << 20, 256));
    sender.from_tap(0, &mut udp_frame(1450), &mut sout);
    let dgram = sout.udp.bytes(&sout.udp.msgs()[0]).to_vec();
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4789);
    // As the worker does it: the datagram in a receive buffer (copied there
    // each time, as recvmmsg would), the TAP write referring to it.
    let mut rx = RxBatch::new(1, dgram.len());
    rx.meta[0].len = dgram.len();
    rx.filled = 1;
    g.bench_function("plain_1450B", |b| {
        b.iter(|| {
            rx.bufs[0].copy_from_slice(&dgram);
            for (at, d) in rx.datagrams_at_mut(0) {
                e.from_wire_at(src, black_box(d), at, &mut out);
            }
            drain_resolved(&mut out, &rx)
        })
    });
    // A GRO buffer of the 46 datagrams of one 64 KB TSO frame: decapsulated
    // and coalesced into one TAP write, by reference (the worker's path)
    // and by copy. Draining resolves the references as the worker does.
    sender.from_tap(0, &mut gso_frame(), &mut sout);
    let m = sout.udp.msgs()[1].clone();
    let mut rx = RxBatch::new(1, m.range.len());
    rx.bufs[0].copy_from_slice(sout.udp.bytes(&m));
    rx.meta[0].len = m.range.len();
    rx.meta[0].segment = m.segment;
    rx.filled = 1;
    g.throughput(Throughput::Bytes(64_000));
    g.bench_function("plain_gro_64KB", |b| {
        b.iter(|| {
            for (at, d) in rx.datagrams_at_mut(0) {
                e.from_wire_at(src, black_box(d), at, &mut out);
            }
            drain_resolved(&mut out, &rx)
        })
    });
    g.bench_function("plain_gro_64KB_copy", |b| {
        b.iter(|| {
            for d in rx.datagrams_mut(0) {
                e.from_wire(src, black_box(d), &mut out);
            }
            let mut n = 0;
            out.drain_taps(|_, w| n += w.size());
            black_box(n)
        })
    });
    g.throughput(Throughput::Bytes(1450));
    // ESP: every iteration opens a fresh packet (new sequence number).
    let (mut a, mut bh) = testkit::encrypted_pair(Instant::now());
    testkit::handshake(&mut a, &mut bh);
    let mut frame = udp_frame(1450);
    let mut pkt = Vec::with_capacity(2048);
    g.bench_function("esp_seal_and_open_1450B", |b| {
        b.iter(|| {
            a.engine.from_tap(0, &mut frame, &mut a.out);
            pkt.clear();
            pkt.extend_from_slice(a.out.udp.bytes(&a.out.udp.msgs()[0]));
            a.out.udp.clear();
            bh.engine.from_wire(
                SocketAddr::new(a.addr, 4789),
                black_box(&mut pkt),
                &mut bh.out,
            );
            bh.out.drain_taps(|_, w| {
                black_box(w);
            });
        })
    });
    g.finish();
}

/// Drains the TAP writes, resolving each piece as the worker's writev does.
fn drain_resolved(out: &mut Outputs, rx: &RxBatch) -> usize {
    let mut n = 0;
    out.drain_taps(|_, w| {
        for p in w.pieces() {
            n += match p {
                Piece::Bytes(b) => b.len(),
                Piece::Ref(r) => rx.resolve(r).map_or(0, <[u8]>::len),
            };
        }
    });
    black_box(n)
}

/// `vxnet trace --live`'s cost on `from_tap` of a 1450-byte frame: off
/// (the plain call), on with drops only (two loads of the drop sequence
/// per packet), sampling one packet in 64 (the default), and noting every
/// packet (the recorder's own cost, for reference).
fn live(c: &mut Criterion) {
    use vxnet_proto::engine::live::LiveSampler;
    let mut g = c.benchmark_group("live");
    let frame = udp_frame(1450);
    g.throughput(Throughput::Bytes(1450));
    let mut e = plain_engine(10);
    let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
    let mut pkt = frame;
    g.bench_function("off", |b| {
        b.iter(|| {
            e.from_tap(0, black_box(&mut pkt), &mut out);
            out.udp.clear();
        })
    });
    for (name, every) in [("drops_only", 0), ("sample_64", 64), ("every_packet", 1)] {
        let mut live = LiveSampler::new(every);
        g.bench_function(name, |b| {
            b.iter(|| {
                let o = e.from_tap_observed(0, black_box(&mut pkt), &mut out, &mut live);
                out.udp.clear();
                black_box(o)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, from_tap, from_wire, live);
criterion_main!(benches);
