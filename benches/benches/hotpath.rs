//! Per-packet work of the data path, with throughput in bytes so that a
//! regression shows as a lower GB/s: VXLAN encapsulation/decapsulation of an
//! MTU-sized frame, segmentation of a 64 KB TCP GSO frame from the TAP,
//! coalescing of the 46 segments back (by reference, as received frames
//! are, and by copy), and the Internet checksum.
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use vxnet_proto::batch::{FrameRef, RxBatch};
use vxnet_proto::offload::coalesce::{Coalescer, Piece};
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
    // The receive path: payloads verified in place and written by
    // reference; draining resolves each piece as the worker's writev does.
    // Against it, frames without a location (and the receive path before
    // writev): each payload copied into its item while it is verified.
    let one = gro_batch(&out, s.stride, 1);
    let mut co = Coalescer::new();
    g.bench_function("coalesce_47_segments", |b| {
        b.iter(|| coalesce_by_ref(&mut co, &one))
    });
    g.bench_function("coalesce_47_segments_copy", |b| {
        b.iter(|| coalesce_by_copy(&mut co, &one))
    });
    // A whole receive batch (32 GRO buffers, 2 MB: more than L2), where
    // the copy also costs cache misses and evicts what the TAP write reads.
    let batch = gro_batch(&out, s.stride, 32);
    g.throughput(Throughput::Bytes(32 * frame.len() as u64));
    g.bench_function("coalesce_batch_32x47_segments", |b| {
        b.iter(|| coalesce_by_ref(&mut co, &batch))
    });
    g.bench_function("coalesce_batch_32x47_segments_copy", |b| {
        b.iter(|| coalesce_by_copy(&mut co, &batch))
    });
    g.finish();
}

/// `n` receive buffers, each holding the segments of `seg` back to back
/// the way UDP GRO hands them over.
fn gro_batch(seg: &[u8], stride: usize, n: usize) -> RxBatch {
    let mut rx = RxBatch::new(n, seg.len());
    for i in 0..n {
        rx.bufs[i].copy_from_slice(seg);
        rx.meta[i].len = seg.len();
        rx.meta[i].segment = stride as u16;
    }
    rx.filled = n;
    rx
}

fn coalesce_by_ref(co: &mut Coalescer, rx: &RxBatch) -> usize {
    for i in 0..rx.filled {
        let m = rx.meta[i];
        for (k, frame) in rx.datagrams(i).enumerate() {
            let at = FrameRef {
                buf: i as u32,
                off: (k * usize::from(m.segment)) as u32,
            };
            co.push_ref(black_box(frame), at);
        }
    }
    let mut n = 0;
    co.drain(|w| {
        for p in w.pieces() {
            n += match p {
                Piece::Bytes(b) => b.len(),
                Piece::Ref(r) => rx.resolve(r).map_or(0, <[u8]>::len),
            };
        }
    });
    black_box(n)
}

fn coalesce_by_copy(co: &mut Coalescer, rx: &RxBatch) -> usize {
    for i in 0..rx.filled {
        for frame in rx.datagrams(i) {
            co.push(black_box(frame));
        }
    }
    let mut n = 0;
    co.drain(|w| n += w.size());
    black_box(n)
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
