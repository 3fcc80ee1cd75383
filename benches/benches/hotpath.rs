//! Per-packet work of the data path, with throughput in bytes so that a
//! regression shows as a lower GB/s: VXLAN encapsulation/decapsulation of an
//! MTU-sized frame, segmentation of a 64 KB TCP GSO frame from the TAP,
//! coalescing of the 46 segments back, and the Internet checksum.
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use vxnet_proto::offload::coalesce::Coalescer;
use vxnet_proto::offload::segment::segment;
use vxnet_proto::wire::vnet::{F_NEEDS_CSUM, GsoType, VnetHdr};
use vxnet_proto::wire::{Vni, checksum, vxlan};

const INNER_MTU_FRAME: usize = 1450;
const MSS: u16 = 1398;

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// A TCPv4 frame as a TAP with TSO4 hands it over: one 64 KB packet whose
/// TCP checksum field holds the pseudo-header sum.
fn gso_frame() -> (VnetHdr, Vec<u8>) {
    let data = payload(65535 - 20 - 20);
    let b = PacketBuilder::ethernet2([2, 0x42, 10, 0, 0, 2], [2, 0x42, 10, 0, 0, 3])
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .tcp(40000, 5201, 1, 502)
        .ack(1);
    let mut f = Vec::with_capacity(b.size(data.len()));
    b.write(&mut f, &data).expect("64 KB TCP frame");
    let tcp_len = (f.len() - 34) as u16;
    let p = checksum::pseudo_v4([10, 0, 0, 2].into(), [10, 0, 0, 3].into(), 6, tcp_len);
    f[50..52].copy_from_slice(&checksum::fold(p).to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: 54,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: 16,
    };
    (hdr, f)
}

fn vxlan_benches(c: &mut Criterion) {
    let frame = payload(INNER_MTU_FRAME);
    let vni = Vni::new(4096).expect("valid VNI");
    let mut g = c.benchmark_group("vxlan");
    g.throughput(Throughput::Bytes(INNER_MTU_FRAME as u64));
    let mut buf = vec![0u8; vxlan::HEADER_LEN + INNER_MTU_FRAME];
    g.bench_function("encapsulate_1450", |b| {
        b.iter(|| {
            vxlan::write_header(&mut buf, black_box(vni));
            buf[vxlan::HEADER_LEN..].copy_from_slice(black_box(&frame));
            black_box(&buf);
        })
    });
    let datagram = buf.clone();
    g.bench_function("decapsulate_1450", |b| {
        b.iter(|| {
            let p = vxlan::Packet::new_checked(black_box(&datagram[..])).expect("valid");
            black_box((p.vni(), p.payload().len()))
        })
    });
    g.finish();
}

fn offload_benches(c: &mut Criterion) {
    let (hdr, frame) = gso_frame();
    let mut out = Vec::with_capacity(80 * 1024);
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("segment_tcpv4_64k_mss1398", |b| {
        b.iter(|| {
            out.clear();
            let s = segment(&hdr, black_box(&frame), &[], 0, &mut out).expect("segments");
            black_box(s)
        })
    });
    out.clear();
    let s = segment(&hdr, &frame, &[], 0, &mut out).expect("segments");
    assert_eq!(s.count, 47, "46 full segments and a short one");
    let segs: Vec<&[u8]> = out.chunks(s.stride).collect();
    let mut co = Coalescer::new();
    g.bench_function("coalesce_47_segments", |b| {
        b.iter(|| {
            for seg in &segs {
                co.push(black_box(seg));
            }
            let mut n = 0;
            co.drain(|w| n += w.size());
            black_box(n)
        })
    });
    g.finish();
}

fn checksum_benches(c: &mut Criterion) {
    let data = payload(65536);
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sum_64k", |b| {
        b.iter(|| checksum::finish(checksum::sum(black_box(&data), 0)))
    });
    g.finish();
    // One MSS-sized segment: what GRO verification and GSO segmentation sum
    // per packet.
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(1448));
    g.bench_function("sum_1448", |b| {
        b.iter(|| checksum::finish(checksum::sum(black_box(&data[..1448]), 0)))
    });
    let mut dst = Vec::with_capacity(2048);
    g.bench_function("copy_and_sum_1448", |b| {
        b.iter(|| {
            dst.clear();
            checksum::copy_and_sum(&mut dst, black_box(&data[..1448]), 0)
        })
    });
    g.finish();
}

criterion_group!(benches, vxlan_benches, offload_benches, checksum_benches);
criterion_main!(benches);
