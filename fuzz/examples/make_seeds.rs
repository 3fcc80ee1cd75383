//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*` from real
//! packet layouts (as Linux sends them). Run from `fuzz/`:
//! `cargo run --example make_seeds`.
use etherparse::{PacketBuilder, TcpOptionElement};
use std::fs;
use std::path::Path;
use vxnet_proto::offload::segment::segment;
use vxnet_proto::wire::vnet::{F_NEEDS_CSUM, GsoType, LEN, VnetHdr};
use vxnet_proto::wire::{MacAddr, Vni, checksum, vxlan};

const A: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
const B: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 3];
const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + 5) as u8).collect()
}

fn tcp(v6: bool, seq: u32, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(A, B);
    let b = if v6 {
        b.ipv6(A6, B6, 64)
    } else {
        b.ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
    };
    let b = b
        .tcp(40000, 5201, seq, 502)
        .ack(99)
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(11, 22),
        ])
        .expect("options");
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("frame");
    out
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&A);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&A);
    f.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 3]);
    f
}

fn nd_solicit(src: [u8; 16], slla: bool) -> Vec<u8> {
    let dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 3];
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&B6);
    if slla {
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&A);
    }
    let p = checksum::pseudo_v6(src.into(), dst.into(), 58, icmp.len() as u32);
    let c = checksum::finish(checksum::sum(&icmp, p));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, 0, 0, 3];
    f.extend_from_slice(&A);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, icmp.len() as u8, 58, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&icmp);
    f
}

/// A TAP read: vnet header with NEEDS_CSUM and the pseudo-header sum in
/// the L4 checksum field.
fn tap_read(frame: &[u8], gso_type: GsoType, gso_size: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let v6 = f[12] == 0x86;
    let l4 = if v6 { 54 } else { 34 };
    let tcp = f[if v6 { 20 } else { 23 }] == 6;
    let off = if tcp { 16 } else { 6 };
    let len = f.len() - l4;
    let p = if v6 {
        checksum::pseudo_v6(A6.into(), B6.into(), if tcp { 6 } else { 17 }, len as u32)
    } else {
        checksum::pseudo_v4(
            [10, 0, 0, 2].into(),
            [10, 0, 0, 3].into(),
            if tcp { 6 } else { 17 },
            len as u16,
        )
    };
    f[l4 + off..l4 + off + 2].copy_from_slice(&checksum::fold(p).to_be_bytes());
    let hl = if tcp {
        (f[l4 + 12] >> 4) as usize * 4
    } else {
        8
    };
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        gso_ecn: false,
        hdr_len: (l4 + hl) as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: off as u16,
    };
    let mut out = vec![0u8; LEN];
    h.emit(&mut out);
    out.extend_from_slice(&f);
    out
}

fn batch(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn main() {
    esp_seeds();
    kx_seeds();
    dns_seeds();
    let vni = Vni::new(4096).expect("vni");
    let icmp_echo = {
        let b = PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .icmpv4_echo_request(7, 1);
        let mut f = Vec::new();
        b.write(&mut f, &data(56)).expect("icmp");
        f
    };
    for (name, inner) in [
        ("arp-request", arp_request()),
        ("icmp-echo", icmp_echo.clone()),
    ] {
        let mut d = vec![0u8; vxlan::HEADER_LEN];
        vxlan::write_header(&mut d, vni);
        d.extend_from_slice(&inner);
        write("vxlan", name, &d);
    }

    write("arp_nd", "arp-request", &arp_request());
    write("arp_nd", "nd-solicit", &nd_solicit(A6, true));
    write("arp_nd", "nd-solicit-dad", &nd_solicit([0; 16], false));

    let tso4 = tcp(false, 1000, &data(6000));
    let tso6 = tcp(true, 1000, &data(6000));
    write(
        "vnet_tap_frame",
        "tso4-6k",
        &tap_read(&tso4, GsoType::TcpV4, 1398),
    );
    write(
        "vnet_tap_frame",
        "tso6-6k",
        &tap_read(&tso6, GsoType::TcpV6, 1378),
    );
    let udp = {
        let b = PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .udp(5000, 5201);
        let mut f = Vec::new();
        b.write(&mut f, &data(3000)).expect("udp");
        f
    };
    write(
        "vnet_tap_frame",
        "uso4-3k",
        &tap_read(&udp, GsoType::UdpL4, 1400),
    );
    write(
        "vnet_tap_frame",
        "csum-tcp4",
        &tap_read(&tcp(false, 1, &data(100)), GsoType::None, 0),
    );
    let mut plain = vec![0u8; LEN];
    plain.extend_from_slice(&icmp_echo);
    write("vnet_tap_frame", "icmp-echo", &plain);

    // Coalesce: the segments of a GSO frame, as they arrive from the wire.
    for (name, v6, frame, mss) in [
        ("tcp4-5segs", false, &tso4, 1398u16),
        ("tcp6-5segs", true, &tso6, 1378),
    ] {
        let read = tap_read(frame, if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 }, mss);
        let hdr = VnetHdr::parse(&read).expect("hdr");
        let mut out = Vec::new();
        let s = segment(&hdr, &read[LEN..], &[], 0, &mut out).expect("segments");
        let mut segs: Vec<&[u8]> = out.chunks(s.stride).collect();
        let arp = arp_request();
        segs.insert(2, &arp);
        write("coalesce", name, &batch(&segs));
    }
    mesh_seeds();
    // lb_nat: a client's first packets to a VIP (10.0.0.100, fd00::100),
    // a ping to it, and a backend's reply.
    let vip_mac = [6, 0x56, 10, 0, 0, 100];
    let vip6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
    let to_vip = |v6: bool,
                  build: &dyn Fn(
        etherparse::PacketBuilderStep<etherparse::IpHeaders>,
        &mut Vec<u8>,
    )| {
        let b = PacketBuilder::ethernet2(A, vip_mac);
        let b = if v6 {
            b.ipv6(A6, vip6, 64)
        } else {
            b.ipv4([10, 0, 0, 2], [10, 0, 0, 100], 64)
        };
        let mut f = Vec::new();
        build(b, &mut f);
        f
    };
    for (name, v6) in [("syn4", false), ("syn6", true)] {
        let f = to_vip(v6, &|b, f| {
            b.tcp(40000, 80, 1, 64240).syn().write(f, &[]).expect("syn")
        });
        write("lb_nat", name, &f);
    }
    let f = to_vip(false, &|b, f| {
        b.udp(5353, 53).write(f, &data(40)).expect("udp")
    });
    write("lb_nat", "udp4", &f);
    let f = to_vip(false, &|b, f| {
        b.icmpv4_echo_request(1, 1)
            .write(f, &data(56))
            .expect("ping")
    });
    write("lb_nat", "ping4", &f);
    let f = to_vip(true, &|b, f| {
        b.icmpv6_echo_request(1, 1)
            .write(f, &data(56))
            .expect("ping")
    });
    write("lb_nat", "ping6", &f);
    write("lb_nat", "reply4", &tcp(false, 7, &data(100)));
    underlay_seeds(&tso4, &icmp_echo);
    let _ = MacAddr::BROADCAST;
    println!("seeds written");
}

/// Frames too big for a 1400-byte underlay (`too_big`: MTU 1350 first),
/// and frames from a TAP of every kind the engine tells apart
/// (`tap_frame_accounted`: flags byte first, 0x20 = a 1780-byte underlay).
fn underlay_seeds(tso4: &[u8], icmp_echo: &[u8]) {
    let big4 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .udp(5000, 5201)
            .write(&mut f, &data(1400))
            .expect("udp");
        f
    };
    let big6 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6(A6, B6, 64)
            .udp(5000, 5201)
            .write(&mut f, &data(1400))
            .expect("udp");
        f
    };
    for (name, frame) in [("udp4-df-1428", &big4), ("udp6-1448", &big6)] {
        let mut d = 1350u16.to_le_bytes().to_vec();
        d.extend_from_slice(frame);
        write("too_big", name, &d);
    }
    let mut broadcast = arp_request();
    broadcast[38..42].copy_from_slice(&[10, 0, 0, 99]);
    let plain = |f: &[u8]| {
        let mut v = vec![0u8; LEN];
        v.extend_from_slice(f);
        v
    };
    for (name, flags, read) in [
        ("tso4-capped", 0x00, tap_read(tso4, GsoType::TcpV4, 1398)),
        ("udp4-too-big", 0x00, plain(&big4)),
        ("udp6-too-big-v6-underlay", 0x02, plain(&big6)),
        ("arp-known", 0x20, plain(&arp_request())),
        ("arp-unknown-flooded", 0x20, plain(&broadcast)),
        ("arp-unknown-flood-off", 0x24, plain(&broadcast)),
        ("arp-unknown-rate-1", 0x28, plain(&broadcast)),
        ("nd-solicit", 0x20, plain(&nd_solicit(A6, true))),
        ("icmp-echo", 0x20, plain(icmp_echo)),
    ] {
        let mut d = vec![flags];
        d.extend_from_slice(&read);
        write("tap_frame_accounted", name, &d);
    }
}

/// Real ESP and control datagrams from the testkit's two hosts (the same
/// deterministic keys the `wire_rx` target's host B holds).
fn esp_seeds() {
    use vxnet_proto::engine::testkit;
    let now = std::time::Instant::now();
    let (mut a, mut b) = testkit::encrypted_pair(now);
    testkit::handshake(&mut a, &mut b);
    let mut frame = vec![0u8; LEN];
    PacketBuilder::ethernet2(testkit::A.0, testkit::B.0)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, &data(56))
        .expect("icmp");
    a.engine.from_tap(0, &mut frame, &mut a.out);
    let m = a.out.udp.msgs()[0].clone();
    write("wire_rx", "esp-icmp", a.out.udp.bytes(&m));
    a.out.udp.clear();
    let mut plain = vec![0u8; vxlan::HEADER_LEN];
    vxlan::write_header(&mut plain, testkit::vni());
    plain.extend_from_slice(&frame[LEN..]);
    write("wire_rx", "plain-on-encrypted", &plain);
    let peer = b.addr;
    testkit::rekey(&a, peer, now);
    a.engine.handle_timers(&mut a.out);
    if let Some(m) = a.out.udp.msgs().first().cloned() {
        write("wire_rx", "control-init", a.out.udp.bytes(&m));
    }
}

/// The `dns_query` seeds that are not queries `dig` sent (those,
/// `seed-a-*`, `seed-aaaa-*`, `seed-mx-*`, `seed-ptr-*`, were captured
/// from dig 9.18): upstream replies to a forwarded `example.com` query,
/// a NOTIFY and a query with two questions.
fn dns_seeds() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let question = |name: &str| Query::query(Name::from_ascii(name).expect("name"), RecordType::A);
    let reply = |id: u16, rcode: ResponseCode| {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_recursion_desired(true)
            .set_recursion_available(true)
            .set_response_code(rcode);
        m.add_query(question("example.com."));
        m
    };
    let mut answer = reply(1, ResponseCode::NoError);
    answer.add_answer(Record::from_rdata(
        Name::from_ascii("example.com.").expect("name"),
        60,
        RData::A(A::new(192, 0, 2, 1)),
    ));
    let encode = |m: &Message| m.to_vec().expect("seed encodes");
    write("dns_query", "upstream-reply-example-com", &encode(&answer));
    let nx = reply(2, ResponseCode::NXDomain);
    write("dns_query", "upstream-nxdomain-example-com", &encode(&nx));
    let mut notify = Message::new();
    notify.set_id(3).set_op_code(OpCode::Notify);
    notify.add_query(question("web."));
    write("dns_query", "notify", &encode(&notify));
    let mut two = Message::new();
    two.set_id(4).set_recursion_desired(true);
    two.add_query(question("web.")).add_query(question("db."));
    write("dns_query", "qdcount2", &encode(&two));
}

/// mesh: the first byte picks the way in (see `vxnet_fuzz::mesh`).
fn mesh_seeds() {
    let host = [2, 0x42, 10, 0, 0, 2];
    let link = [6, 0x56, 198, 18, 0, 2];
    let task = [2, 0x42, 10, 0, 0, 5];
    let gw = [6, 0x56, 10, 0, 0, 1];
    let with = |way: u8, f: Vec<u8>| {
        let mut v = vec![way];
        v.extend_from_slice(&f);
        v
    };
    let tcp = |src_mac, dst_mac, src: [u8; 4], dst: [u8; 4], ports: (u16, u16), syn: bool| {
        let b = PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src, dst, 64)
            .tcp(ports.0, ports.1, 1, 64240);
        let b = if syn { b.syn() } else { b.ack(1) };
        let mut f = Vec::new();
        b.write(&mut f, if syn { &[] } else { &[1, 2, 3] })
            .expect("tcp");
        f
    };
    let client = [192, 0, 2, 231];
    // Into a published port from the host (TCP, UDP, host mode).
    write(
        "mesh",
        "published-syn",
        &with(
            0,
            tcp(host, link, client, [198, 18, 0, 2], (40000, 8080), true),
        ),
    );
    write(
        "mesh",
        "host-mode-syn",
        &with(
            0,
            tcp(host, link, client, [198, 18, 0, 2], (40001, 9090), true),
        ),
    );
    let mut u = Vec::new();
    PacketBuilder::ethernet2(host, link)
        .ipv4(client, [198, 18, 0, 2], 64)
        .udp(5353, 8080)
        .write(&mut u, &data(20))
        .expect("udp");
    write("mesh", "published-udp", &with(0, u));
    // An egress answer, and the host's ARP for the mesh address.
    write(
        "mesh",
        "egress-answer",
        &with(
            0,
            tcp(host, link, client, [198, 18, 1, 0], (22, 50000), false),
        ),
    );
    write("mesh", "host-arp", &with(0, arp_request()));
    // A task's answer to an outside client through its gateway, egress.
    write(
        "mesh",
        "task-reply",
        &with(1, tcp(task, gw, [10, 1, 0, 5], client, (80, 40001), false)),
    );
    // A routing-mesh flow arriving from another node, and a reply to this
    // node's ingress endpoint.
    write(
        "mesh",
        "from-node",
        &with(
            2,
            tcp(
                [2, 0x42, 10, 0, 0, 3],
                task,
                client,
                [10, 0, 0, 5],
                (40002, 80),
                true,
            ),
        ),
    );
    write(
        "mesh",
        "to-ingress-endpoint",
        &with(
            3,
            tcp(
                [2, 0x42, 10, 0, 0, 6],
                host,
                [10, 0, 0, 6],
                client,
                (80, 40000),
                false,
            ),
        ),
    );
}

/// Scripts for `kx_rotation` (pairs of [op, arg]; the first byte picks
/// which host has the larger key).
fn kx_seeds() {
    use vxnet_fuzz::kx_rotation::op::*;
    let deliver = |n: usize| vec![[DELIVER, 0]; n];
    let data = vec![[DATA, 0], [DATA, 1]];
    let script = |first: u8, parts: &[Vec<[u8; 2]>]| {
        let mut v = vec![first];
        for p in parts {
            for [o, a] in p {
                v.extend_from_slice(&[*o, *a]);
            }
        }
        v
    };
    write(
        "kx_rotation",
        "handshake-traffic",
        &script(
            0,
            &[deliver(6), data.clone(), vec![[ADVANCE, 20]], data.clone()],
        ),
    );
    write(
        "kx_rotation",
        "restart-replay-all",
        &script(
            0,
            &[
                deliver(6),
                data.clone(),
                vec![[REKEY, 0]],
                deliver(4),
                vec![[REKEY, 1]],
                deliver(4),
                data.clone(),
                vec![[ADVANCE, 10], [RESTART, 0], [REPLAY_ALL, 1]],
                deliver(8),
                data.clone(),
                vec![[RESTART, 1], [REPLAY_ALL, 0], [REPLAY, 3], [REPLAY, 7]],
                deliver(8),
                data.clone(),
                vec![[ADVANCE_LONG, 15]],
                data.clone(),
            ],
        ),
    );
    write(
        "kx_rotation",
        "collision-loss-forgery",
        &script(
            1,
            &[
                deliver(6),
                vec![
                    [REKEY, 0],
                    [REKEY, 1],
                    [DROP, 0],
                    [DUPLICATE, 0],
                    [REORDER, 0],
                ],
                deliver(3),
                vec![[FORGE, 9], [REFLECT, 2], [ADVANCE, 12]],
                deliver(6),
                data.clone(),
            ],
        ),
    );
    let mut many = vec![[DATA, 0]; 50];
    many.extend(vec![[DATA, 1]; 50]);
    write(
        "kx_rotation",
        "packet-budget-and-grace",
        &script(
            0,
            &[
                deliver(6),
                many,
                deliver(6),
                vec![[ADVANCE_LONG, 12], [ADVANCE_LONG, 250]],
                deliver(6),
                data,
            ],
        ),
    );
}
