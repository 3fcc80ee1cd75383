//! Per-flow cost of service VIP load balancing, in ns per packet:
//!
//! - `maglev/build`: a service's Maglev table for 1,000 backends (done by
//!   the control side on every change of the backend set).
//! - `lb/first_packet`: what the first packet of a new flow costs the
//!   balancer: parse, conntrack miss, flow hash, Maglev pick, conntrack
//!   insert, DNAT with checksum updates.
//! - `lb/established`: a later packet: parse, conntrack hit, state update,
//!   DNAT. `lb/reverse`: a reply: parse, reply-key hit, source NAT.
//! - `from_tap/*`, `from_wire/*`: the same inside the whole engine decision
//!   (encapsulation included), next to the plain path without a VIP, and
//!   what a VNI with services costs traffic that is not balanced.
//!
//! Each iteration restores the frame's headers from a template (the NAT
//! rewrites them in place), a copy of 54 bytes counted in the result.
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vxnet_proto::batch::{RxBatch, TxBatch};
use vxnet_proto::engine::{Engine, EngineConfig, Outputs};
use vxnet_proto::fdb::Fdb;
use vxnet_proto::lb::conntrack::{Conntrack, ConntrackConfig, FlowId, FlowKey};
use vxnet_proto::lb::maglev::{Maglev, flow_hash};
use vxnet_proto::lb::nat::{self, Side};
use vxnet_proto::lb::service::{Backend, Service, vip_mac};
use vxnet_proto::stats::Stats;
use vxnet_proto::wire::{MacAddr, Vni, checksum, vnet, vxlan};

const CLIENT: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 2]);

fn v4(last: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + last))
}

fn vni() -> Vni {
    Vni::new(4096).expect("vni")
}

/// `n` backends 10.0.1.0.. (MACs derived from the address).
fn backends(n: u32) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let ip = v4(0x100 + i);
            Backend {
                ip,
                mac: MacAddr::from_ip(ip),
            }
        })
        .collect()
}

/// A TCP segment (vnet header first) with `payload` bytes, ACK set.
fn segment(
    (src, src_mac, sport): (IpAddr, MacAddr, u16),
    (dst, dst_mac, dport): (IpAddr, MacAddr, u16),
    payload: usize,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        unreachable!("IPv4 benches")
    };
    let mut v = vec![0u8; vnet::LEN];
    PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(sport, dport, 1, 64_000)
        .ack(1)
        .write(&mut v, &vec![7u8; payload])
        .expect("segment");
    v
}

fn maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev");
    let ips: Vec<IpAddr> = backends(1000).iter().map(|b| b.ip).collect();
    for m in [16_381u32, 65_537] {
        g.bench_function(BenchmarkId::new("build_1000_backends", m), |b| {
            b.iter(|| Maglev::new(black_box(&ips), m).expect("table"))
        });
    }
    g.finish();
}

/// The balancer's own work on one packet, as the engine does it.
fn per_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb");
    let vip = v4(100);
    let svc = Service::new(vip, backends(10), 16_381).expect("service");
    let stats = Stats::default();
    let now = Instant::now();
    let template = segment((v4(2), CLIENT, 40_000), (vip, vip_mac(vip), 80), 0);
    let mut frame = template.clone();
    let key_of = |p: &nat::L4| FlowKey {
        vni: 4096,
        proto: p.proto,
        src: p.src,
        dst: p.dst,
        sport: p.sport,
        dport: p.dport,
    };

    // First packets: every iteration a new client port (and address, past
    // 65,536 flows); the table is emptied outside the timing when half full.
    let cap = 1 << 18;
    let mut ct = Conntrack::new(
        ConntrackConfig {
            capacity: cap,
            ..ConntrackConfig::default()
        },
        now,
    );
    let mut ids: Vec<FlowId> = Vec::with_capacity(cap as usize);
    let mut n: u32 = 0;
    g.bench_function("first_packet", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(u64::from(cap / 2) - ids.len() as u64);
                let t = Instant::now();
                for _ in 0..batch {
                    n = n.wrapping_add(1);
                    let f = &mut frame[vnet::LEN..];
                    f.copy_from_slice(&template[vnet::LEN..]);
                    f[34..36].copy_from_slice(&(n as u16).to_be_bytes());
                    f[29] = (n >> 16) as u8;
                    let p = nat::parse(f).expect("parses");
                    let key = key_of(&p);
                    if ct.lookup(&key, now, &stats).is_some() {
                        continue;
                    }
                    let h = flow_hash(key.src, key.dst, key.proto, key.sport, key.dport);
                    let (i, be) = svc.pick(h).expect("backend");
                    let id = ct.insert(key, be.ip, svc.generation(), i, p.tcp_flags, now, &stats);
                    ids.push(id.expect("room"));
                    nat::rewrite(f, &p, Side::Dst, be.ip, None, false).expect("nat");
                }
                spent += t.elapsed();
                left -= batch;
                if ids.len() as u32 >= cap / 2 {
                    for id in ids.drain(..) {
                        ct.remove(id);
                    }
                }
            }
            spent
        })
    });

    // Later packets of one established flow.
    let mut ct = Conntrack::new(ConntrackConfig::default(), now);
    let p = nat::parse(&template[vnet::LEN..]).expect("parses");
    let key = key_of(&p);
    let (i, be) = svc
        .pick(flow_hash(key.src, key.dst, key.proto, key.sport, key.dport))
        .expect("backend");
    ct.insert(key, be.ip, svc.generation(), i, p.tcp_flags, now, &stats)
        .expect("room");
    let backend = be.ip;
    g.bench_function("established", |b| {
        b.iter(|| {
            let f = &mut frame[vnet::LEN..];
            f.copy_from_slice(&template[vnet::LEN..]);
            let p = nat::parse(black_box(f)).expect("parses");
            let (id, dir) = ct.lookup(&key_of(&p), now, &stats).expect("hit");
            ct.update(id, dir, p.tcp_flags, now);
            let to = svc.backends()[usize::from(ct.flow(id).index)].ip;
            nat::rewrite(f, &p, Side::Dst, to, None, false).expect("nat");
        })
    });
    let reply = segment(
        (backend, MacAddr::from_ip(backend), 80),
        (v4(2), CLIENT, 40_000),
        0,
    );
    let mut r = reply.clone();
    g.bench_function("reverse", |b| {
        b.iter(|| {
            let f = &mut r[vnet::LEN..];
            f.copy_from_slice(&reply[vnet::LEN..]);
            let p = nat::parse(black_box(f)).expect("parses");
            let (id, dir) = ct.lookup(&key_of(&p), now, &stats).expect("hit");
            ct.update(id, dir, p.tcp_flags, now);
            nat::rewrite(f, &p, Side::Src, vip, None, false).expect("nat");
        })
    });
    g.finish();
}

/// The client's host: client on port 0; 10 backends and one plain peer
/// (10.0.0.3) behind 192.0.2.2; a service 10.0.0.100 over the backends.
fn client_engine() -> Engine {
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni(), CLIENT, &[v4(2)]).expect("local");
    let vtep = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    fdb.add_remote(vni(), MacAddr::from_ip(v4(3)), &[v4(3)], vtep)
        .expect("peer");
    for b in backends(10) {
        fdb.add_remote(vni(), b.mac, &[b.ip], vtep)
            .expect("backend");
    }
    let svc = Service::new(v4(100), backends(10), 16_381).expect("service");
    fdb.set_service(vni(), Arc::new(svc)).expect("service");
    Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    )
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("from_tap");
    let mut e = client_engine();
    let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
    for len in [64usize, 1450] {
        let payload = len - 54;
        g.throughput(Throughput::Bytes(len as u64));
        for (name, to) in [
            ("direct", (v4(3), MacAddr::from_ip(v4(3)), 80)),
            ("vip_established", (v4(100), vip_mac(v4(100)), 80)),
        ] {
            let frame = segment((v4(2), CLIENT, 40_000), to, payload);
            let mut f = frame.clone();
            g.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| {
                    f.copy_from_slice(&frame);
                    e.from_tap(0, black_box(&mut f), &mut out);
                    out.udp.clear();
                })
            });
        }
    }
    // New flows through the whole engine: a new client port each time.
    g.throughput(Throughput::Bytes(64));
    let syn = segment((v4(2), CLIENT, 40_000), (v4(100), vip_mac(v4(100)), 80), 10);
    let mut f = syn.clone();
    let mut n: u32 = 0;
    g.bench_function("vip_first_packet/64", |b| {
        b.iter_custom(|iters| {
            // Fresh tables now and then, outside the timing, so inserts
            // never hit a full one.
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(30_000);
                let mut e = client_engine();
                let t = Instant::now();
                for _ in 0..batch {
                    n = n.wrapping_add(1);
                    f.copy_from_slice(&syn);
                    let tcp = vnet::LEN + 34;
                    f[tcp..tcp + 2].copy_from_slice(&(n as u16).to_be_bytes());
                    e.from_tap(0, black_box(&mut f), &mut out);
                    out.udp.clear();
                }
                spent += t.elapsed();
                left -= batch;
            }
            spent
        })
    });
    g.finish();

    // Received traffic for the client: a reply of a balanced flow, and a
    // frame of a VNI that has services but is not balanced, next to the
    // plain path.
    let mut g = c.benchmark_group("from_wire");
    g.throughput(Throughput::Bytes(1450));
    let mut plain = {
        let mut fdb = Fdb::default();
        fdb.add_local(0, vni(), CLIENT, &[v4(2)]).expect("local");
        fdb.add_remote(
            vni(),
            MacAddr::from_ip(v4(3)),
            &[v4(3)],
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        )
        .expect("peer");
        Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        )
    };
    let mut e = client_engine();
    // Establish one balanced flow from client port 40000.
    let mut first = segment((v4(2), CLIENT, 40_000), (v4(100), vip_mac(v4(100)), 80), 0);
    e.from_tap(0, &mut first, &mut out);
    let sent = out.udp.bytes(&out.udp.msgs()[0]).to_vec();
    out.udp.clear();
    let backend = nat::parse(&sent[vxlan::HEADER_LEN..]).expect("dnat").dst;
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 4789);
    // Backend (or peer) port 80 → client port 40000: one 1450-byte
    // datagram, then a 64 KB GRO buffer (46 datagrams). From the peer, a
    // flow that is not balanced (what services on a network cost its other
    // traffic); from the backend, the balanced flow's replies (a download
    // from the VIP).
    let datagram = |from: IpAddr| {
        let inner = segment(
            (from, MacAddr::from_ip(from), 80),
            (v4(2), CLIENT, 40_000),
            1450 - 54,
        );
        let mut d = vec![0u8; vxlan::HEADER_LEN];
        vxlan::write_header(&mut d, vni());
        d.extend_from_slice(&inner[vnet::LEN..]);
        (d, 0u16)
    };
    for (size, bytes, make) in [
        ("1450", 1450, &datagram as &dyn Fn(IpAddr) -> (Vec<u8>, u16)),
        ("gro_64KB", 64_000, &gro_buffer),
    ] {
        g.throughput(Throughput::Bytes(bytes));
        let (peer, reply) = (make(v4(3)), make(backend));
        for (name, engine, input) in [
            ("plain", &mut plain, &peer),
            ("vni_with_service_not_balanced", &mut e, &peer),
        ] {
            bench_rx(
                &mut g,
                BenchmarkId::new(name, size),
                engine,
                input,
                src,
                &mut out,
            );
        }
        let id = BenchmarkId::new("vip_reply", size);
        bench_rx(&mut g, id, &mut e, &reply, src, &mut out);
    }
    g.finish();
}

/// Receives one buffer (`(bytes, datagram size)`: a GRO buffer, or one
/// datagram with size 0) and drains its TAP writes, restoring the buffer
/// each time (reverse NAT rewrites it).
fn bench_rx(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    e: &mut Engine,
    (gro, segment): &(Vec<u8>, u16),
    src: SocketAddr,
    out: &mut Outputs,
) {
    let mut rx = RxBatch::new(1, gro.len());
    rx.meta[0].len = gro.len();
    rx.meta[0].segment = *segment;
    rx.filled = 1;
    g.bench_function(id, |b| {
        b.iter(|| {
            rx.bufs[0].copy_from_slice(gro);
            for (at, d) in rx.datagrams_at_mut(0) {
                e.from_wire_at(src, black_box(d), at, out);
            }
            let mut n = 0;
            out.drain_taps(|_, w| n += w.size());
            black_box(n)
        })
    });
}

/// The UDP payload of one GSO send from `from`:80 to the client
/// (10.0.0.2:40000): a 64 KB TSO frame cut into 46 VXLAN datagrams, and
/// the datagram size.
fn gro_buffer(from: IpAddr) -> (Vec<u8>, u16) {
    let peer = MacAddr::from_ip(from);
    let mut fdb = Fdb::default();
    fdb.add_local(0, vni(), peer, &[from]).expect("local");
    fdb.add_remote(
        vni(),
        CLIENT,
        &[v4(2)],
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    )
    .expect("client");
    let mut sender = Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    );
    let mut f = segment((from, peer, 80), (v4(2), CLIENT, 40_000), 64_000);
    // What a TAP with TSO hands over: the pseudo-header sum in the TCP
    // checksum field, NEEDS_CSUM, GSO TCPv4.
    let l4 = vnet::LEN + 34;
    let IpAddr::V4(src) = from else {
        unreachable!("IPv4 benches")
    };
    let pseudo = checksum::pseudo_v4(src, [10, 0, 0, 2].into(), 6, (f.len() - l4) as u16);
    f[l4 + 16..l4 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let hdr = vnet::VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: 54,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    hdr.emit(&mut f);
    let mut out = Outputs::new(TxBatch::new(1 << 20, 16));
    sender.from_tap(0, &mut f, &mut out);
    let m = out.udp.msgs()[0].clone();
    (out.udp.bytes(&m).to_vec(), m.segment)
}

criterion_group!(benches, maglev, per_flow, engine);
criterion_main!(benches);
