//! The bodies of the fuzz targets, kept in a library so that the same code
//! runs under libFuzzer (`fuzz_targets/`, `cargo fuzz run`) and as a plain
//! regression test over the seed corpora (`tests/corpus.rs`, `cargo test`).
//!
//! Each body feeds untrusted bytes to a parser and then checks invariants
//! that must hold for any input, panicking when one breaks. The larger
//! bodies have their own module: [`gossip`] (`gossip_rx`), [`mgmt`]
//! (`mgmt_frame`) and [`kx_rotation`].
pub mod alloc_probe;
pub mod gossip;
pub mod mgmt;

pub use gossip::gossip_rx;
pub use mgmt::mgmt_frame;

use std::sync::Arc;

pub mod kx_rotation;
pub use kx_rotation::kx_rotation;
use vxnet_proto::batch::{FrameRef, TxBatch};
use vxnet_proto::engine::{Engine, EngineConfig, Outputs};
use vxnet_proto::fdb::Fdb;
use vxnet_proto::lb::conntrack::ConntrackConfig;
use vxnet_proto::lb::nat::{self, Side};
use vxnet_proto::lb::reply;
use vxnet_proto::lb::service::{Backend, Service};
use vxnet_proto::offload::coalesce::{Coalescer, MAX_PIECES};
use vxnet_proto::offload::segment::{complete_checksum, segment};
use vxnet_proto::stats::Stats;
use vxnet_proto::wire::vnet::{self, GsoType, VnetHdr};
use vxnet_proto::wire::{MacAddr, Vni};
use vxnet_proto::wire::{arp, checksum, icmp, nd, vxlan};

/// A VXLAN datagram (UDP payload) from the wire.
pub fn vxlan(data: &[u8]) {
    if let Ok(p) = vxlan::Packet::new_checked(data) {
        assert_eq!(p.payload().len(), data.len() - vxlan::HEADER_LEN);
        let mut h = [0u8; vxlan::HEADER_LEN];
        vxlan::write_header(&mut h, p.vni());
        let again = vxlan::Packet::new_checked(&h[..]).expect("our header parses");
        assert_eq!(again.vni(), p.vni());
    }
}

/// `vnet header ‖ frame` as read from a TAP with IFF_VNET_HDR.
pub fn vnet_tap_frame(data: &[u8]) {
    let Ok(hdr) = VnetHdr::parse(data) else {
        return;
    };
    let frame = &data[vnet::LEN..];
    let prefix = [0xabu8; 8];
    let mut out = vec![1, 2, 3];
    match segment(&hdr, frame, &prefix, 16, &mut out) {
        Ok(s) => {
            assert_eq!(out.len(), 3 + s.total);
            assert!(s.count >= 1);
            assert!(s.stride * (s.count - 1) < s.total && s.total <= s.stride * s.count);
            if matches!(
                hdr.gso_type,
                GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4
            ) {
                for seg in out[3..].chunks(s.stride) {
                    assert_eq!(&seg[..8], &prefix);
                    check_l4_checksum(&seg[8..seg.len() - 16]);
                }
            }
        }
        Err(_) => assert_eq!(out, [1, 2, 3], "nothing appended on error"),
    }
    let mut copy = frame.to_vec();
    if complete_checksum(&hdr, &mut copy).is_err() {
        assert_eq!(copy, frame, "frame untouched on error");
    }
}

/// An Ethernet frame from a TAP that may be an ARP request or an ND
/// solicitation.
pub fn arp_nd(data: &[u8]) {
    let mac = vxnet_proto::wire::MacAddr([0x02, 0x42, 0x0a, 0, 0, 9]);
    if let Ok(Some(req)) = arp::parse_request(data) {
        let mut out = [0u8; arp::FRAME_LEN];
        let n = arp::emit_reply(&req, mac, &mut out);
        assert_eq!(arp::parse_request(&out[..n]), Ok(None), "a reply");
    }
    if let Ok(Some(sol)) = nd::parse_solicit(data) {
        let mut out = [0u8; nd::ADVERT_LEN];
        let n = nd::emit_advert(&sol, mac, &mut out);
        assert_eq!(nd::parse_solicit(&out[..n]), Ok(None), "an advert");
        // The advert's ICMPv6 checksum verifies.
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&out[22..38]);
        d.copy_from_slice(&out[38..54]);
        let p = checksum::pseudo_v6(s.into(), d.into(), 58, (n - 54) as u32);
        assert_eq!(checksum::finish(checksum::sum(&out[54..n], p)), 0);
    }
}

/// Several inner frames from one receive batch: `[len: u16 LE][frame]...`;
/// a length with the top bit set means `push_as_is` with no GSO header.
/// Every other frame goes to two coalescers: one copies it (`push`), the
/// other refers to it where it lies in `data` (`push_ref`), unless bit 14
/// of its length is set (then it copies too, so copies and references mix
/// in one item). Both must hand out the same TAP writes. Returns how many
/// merged (GSO) items came out.
pub fn coalesce(data: &[u8]) -> usize {
    let mut copied = Coalescer::new();
    let mut referenced = Coalescer::new();
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    let mut off = 0;
    while let [a, b, tail @ ..] = rest {
        let raw = u16::from_le_bytes([*a, *b]);
        let n = ((raw & 0x3fff) as usize).min(tail.len());
        let (frame, next) = tail.split_at(n);
        off += 2;
        if raw & 0x8000 != 0 {
            copied.push_as_is(&VnetHdr::NONE, frame);
            referenced.push_as_is(&VnetHdr::NONE, frame);
        } else {
            copied.push(frame);
            if raw & 0x4000 != 0 {
                referenced.push(frame);
            } else {
                let at = FrameRef {
                    buf: 0,
                    off: u32::try_from(off).expect("fuzz inputs are small"),
                };
                referenced.push_ref(frame, at);
            }
        }
        frames.push(frame);
        off += n;
        rest = next;
    }
    let mut writes = Vec::new();
    let mut merged = 0;
    copied.drain(|w| {
        let item = w.as_bytes().expect("copied items are one piece");
        writes.push(item.to_vec());
        let hdr = VnetHdr::parse(item).expect("drain writes a vnet header");
        let frame = &item[vnet::LEN..];
        match hdr.gso_type {
            GsoType::None => {
                assert_eq!(hdr, VnetHdr::NONE);
                // Unchanged, except Ethernet padding after the IP packet.
                assert!(
                    frames.iter().any(|f| f.starts_with(frame)),
                    "unmerged frames pass unchanged"
                );
            }
            GsoType::TcpV4 | GsoType::TcpV6 => {
                merged += 1;
                // A merged item segments back into valid TCP segments.
                let mut out = Vec::new();
                let s = segment(&hdr, frame, &[], 0, &mut out).expect("merged item segments");
                assert!(s.count >= 2);
                for seg in out.chunks(s.stride) {
                    check_l4_checksum(seg);
                }
                let mut full = frame.to_vec();
                complete_checksum(&hdr, &mut full).expect("offsets in range");
                check_l4_checksum(&full);
            }
            other => panic!("coalescer produced {other:?}"),
        }
    });
    assert!(writes.len() <= frames.len());
    assert!(copied.is_empty());
    // The same writes, with references resolved into `data`.
    let mut k = 0;
    referenced.drain(|w| {
        assert!(w.piece_count() <= MAX_PIECES);
        let item = w
            .to_vec(|r| {
                assert_eq!(r.buf, 0);
                let start = r.off as usize;
                data.get(start..start + r.len as usize)
            })
            .expect("references resolve");
        assert_eq!(item.len(), w.size());
        assert_eq!(Some(&item), writes.get(k), "write {k}: references = copies");
        k += 1;
    });
    assert_eq!(k, writes.len());
    merged
}

/// An Ethernet frame a client sends to a VIP or a backend sends back:
/// the load balancer's parser, NAT and own answers (echo reply, reset),
/// then the whole engine with a service. For a frame whose checksums
/// verified, every translation keeps them valid; nothing panics.
pub fn lb_nat(data: &[u8]) {
    let Ok(p) = nat::parse(data) else {
        return;
    };
    assert!(p.l4 <= p.end && p.end <= data.len());
    let valid = l4_checksum_ok(data, &p);
    let (other, vip) = if p.v6 {
        (
            "fd00::7".parse().expect("addr"),
            "fd00::100".parse().expect("addr"),
        )
    } else {
        (
            "10.0.0.7".parse().expect("addr"),
            "10.0.0.100".parse().expect("addr"),
        )
    };
    for side in [Side::Dst, Side::Src] {
        for port in [None, Some(8080)] {
            let mut f = data.to_vec();
            nat::rewrite(&mut f, &p, side, other, port, false).expect("same family");
            let q = nat::parse(&f).expect("still parses");
            assert_eq!(if side == Side::Dst { q.dst } else { q.src }, other);
            if valid {
                assert!(l4_checksum_ok(&f, &q), "NAT broke a valid checksum");
            }
        }
    }
    let mac = MacAddr([6, 0x56, 10, 0, 0, 100]);
    let mut f = data.to_vec();
    if let Some(n) = reply::echo_reply(&mut f, &p, mac) {
        let q = nat::parse(&f[..n]).expect("reply parses");
        assert!(l4_checksum_ok(&f[..n], &q), "echo reply checksums");
    }
    let mut out = [0u8; reply::RESET_LEN];
    if let Some(n) = reply::tcp_reset(data, &p, mac, &mut out) {
        check_l4_checksum(&out[..n]);
    }
    // The whole engine: the client's port 0, one local backend on port 1.
    let vni = Vni::new(4096).expect("vni");
    let mut fdb = Fdb::default();
    let client = MacAddr::src_of(data).unwrap_or(MacAddr([2, 0x42, 10, 0, 0, 2]));
    if fdb.add_local(0, vni, client, &[]).is_err() {
        return;
    }
    let bmac = MacAddr([2, 0x42, 10, 0, 0, 7]);
    if fdb.add_local(1, vni, bmac, &[other]).is_err() {
        return;
    }
    let backends = vec![Backend {
        ip: other,
        mac: bmac,
    }];
    let service = Service::new(vip, backends, 251).expect("service");
    let vip_mac = service.mac();
    // Refused when the frame's source (our client) already holds the VIP's
    // MAC: the FDB keeps one owner per MAC, as it should.
    if fdb.set_service(vni, Arc::new(service)).is_err() {
        assert_eq!(client, vip_mac, "only a MAC clash refuses");
        return;
    }
    let cfg = EngineConfig {
        conntrack: ConntrackConfig {
            capacity: 64,
            ..ConntrackConfig::default()
        },
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, Arc::new(fdb), Arc::new(Stats::default()));
    let mut outs = Outputs::new(TxBatch::new(1 << 17, 16));
    let mut pkt = vec![0u8; vnet::LEN];
    pkt.extend_from_slice(data);
    e.from_tap(0, &mut pkt, &mut outs);
    e.from_tap(1, &mut pkt, &mut outs);
    outs.drain_taps(|_, w| assert!(w.as_bytes().is_some()));
    lb_hairpin(data, &p, client, valid);
}

/// The frame sent by a task to a VIP whose only backend is the task
/// itself: it comes back from the VIP (hairpin NAT), and the task's reply
/// to the VIP reaches it as coming from the VIP's port, checksums kept.
fn lb_hairpin(data: &[u8], p: &nat::L4, client: MacAddr, valid: bool) {
    use vxnet_proto::lb::nat::{PROTO_TCP, PROTO_UDP};
    let vip: std::net::IpAddr = if p.v6 { "fd00::101" } else { "10.0.0.101" }
        .parse()
        .expect("addr");
    let vni = Vni::new(4096).expect("vni");
    let mut fdb = Fdb::default();
    let me = vec![Backend {
        ip: p.src,
        mac: client,
    }];
    let Ok(service) = Service::new(vip, me, 251) else {
        return;
    };
    let vip_mac = service.mac();
    if fdb.add_local(0, vni, client, &[p.src]).is_err()
        || fdb.set_service(vni, Arc::new(service)).is_err()
    {
        return;
    }
    let mut e = Engine::new(
        EngineConfig::default(),
        Arc::new(fdb),
        Arc::new(Stats::default()),
    );
    let mut outs = Outputs::new(TxBatch::new(1 << 17, 16));
    let mut f = data.to_vec();
    if nat::rewrite(&mut f, p, Side::Dst, vip, None, false).is_err() {
        return;
    }
    nat::set_dst_mac(&mut f, vip_mac);
    let send = |e: &mut Engine, outs: &mut Outputs, frame: &[u8]| {
        let mut pkt = vec![0u8; vnet::LEN];
        pkt.extend_from_slice(frame);
        e.from_tap(0, &mut pkt, outs);
        let mut written = Vec::new();
        outs.drain_taps(|port, w| {
            assert_eq!(port, 0, "a hairpin goes back to its own port");
            written.push(w.as_bytes().expect("copied")[vnet::LEN..].to_vec());
        });
        written
    };
    // From the VIP's own port, a flow balanced to its sender is refused.
    let tcp_udp = matches!(p.proto, PROTO_TCP | PROTO_UDP) && p.sport != p.dport;
    let out = send(&mut e, &mut outs, &f);
    let [there] = &out[..] else { return };
    if !tcp_udp {
        return;
    }
    // Both ways, what reaches the task comes from the VIP to the task's
    // own address and MAC, on the given ports, its checksums kept.
    let from_vip = |f: &[u8], sport: u16, dport: u16, what: &str| {
        let q = nat::parse(f).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(
            (q.src, q.dst, q.sport, q.dport),
            (vip, p.src, sport, dport),
            "{what}"
        );
        assert_eq!(MacAddr::src_of(f), Some(vip_mac), "{what}");
        assert_eq!(MacAddr::dst_of(f), Some(client), "{what}");
        if valid {
            assert!(l4_checksum_ok(f, &q), "{what} broke a valid checksum");
        }
        q
    };
    let q = from_vip(there, p.sport, p.dport, "the hairpin");
    // The task answers the VIP, from the port it was asked on.
    let mut reply = there.clone();
    nat::rewrite(&mut reply, &q, Side::Src, q.dst, Some(q.dport), false).expect("same family");
    let r = nat::parse(&reply).expect("parses");
    nat::rewrite(&mut reply, &r, Side::Dst, vip, Some(q.sport), false).expect("same family");
    nat::set_src_mac(&mut reply, client);
    nat::set_dst_mac(&mut reply, vip_mac);
    let back = send(&mut e, &mut outs, &reply);
    let [back] = &back[..] else {
        panic!("the reply of a hairpin flow went nowhere")
    };
    from_vip(back, p.dport, p.sport, "the reply's translation");
}

/// The routing mesh's node: ingress network 4096 (gateway 10.0.0.1, this
/// node's ingress endpoint 10.0.0.2 behind the host link on port 9, a
/// local task 10.0.0.5 on port 0, a remote one), network 4097 with egress
/// (container 10.1.0.5 on port 1), published TCP and UDP 8080 through the
/// VIP 10.0.0.100 and host-mode TCP 9090 to the container.
fn mesh_node() -> Option<Engine> {
    use vxnet_proto::fdb::{HostLink, Published, PublishedTo};
    let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("addr") };
    let ing = Vni::new(4096)?;
    let app = Vni::new(4097)?;
    let mac = |s: &str| MacAddr::from_ip(ip(s));
    let mut f = Fdb::default();
    f.set_routing(ing, &[ip("10.0.0.1")], true, true);
    f.set_routing(app, &[ip("10.1.0.1")], true, false);
    f.add_local(0, ing, mac("10.0.0.5"), &[ip("10.0.0.5")])
        .ok()?;
    f.add_local(1, app, mac("10.1.0.5"), &[ip("10.1.0.5")])
        .ok()?;
    f.add_remote(ing, mac("10.0.0.6"), &[ip("10.0.0.6")], ip("192.0.2.12"))
        .ok()?;
    f.add_remote(ing, mac("10.0.0.3"), &[ip("10.0.0.3")], ip("192.0.2.12"))
        .ok()?;
    f.set_host_link(HostLink {
        port: 9,
        net: "198.18.0.0".parse().ok()?,
        prefix: 16,
        host_mac: mac("10.0.0.2"),
        ingress: Some((ing, "10.0.0.2".parse().ok()?)),
    })
    .ok()?;
    let backends = ["10.0.0.5", "10.0.0.6"]
        .iter()
        .map(|b| Backend {
            ip: ip(b),
            mac: mac(b),
        })
        .collect();
    f.set_service(
        ing,
        Arc::new(Service::new(ip("10.0.0.100"), backends, 251).ok()?),
    )
    .ok()?;
    for proto in [6, 17] {
        f.set_published(Published {
            proto,
            port: 8080,
            target_port: 80,
            vni: ing,
            to: PublishedTo::Vip(ip("10.0.0.100")),
        })
        .ok()?;
    }
    let host_mode = Service::new(
        ip("198.18.0.2"),
        vec![Backend {
            ip: ip("10.1.0.5"),
            mac: mac("10.1.0.5"),
        }],
        251,
    )
    .ok()?;
    f.set_published(Published {
        proto: 6,
        port: 9090,
        target_port: 80,
        vni: app,
        to: PublishedTo::Tasks(Arc::new(host_mode)),
    })
    .ok()?;
    let cfg = EngineConfig {
        conntrack: ConntrackConfig {
            capacity: 64,
            ..ConntrackConfig::default()
        },
        ..EngineConfig::default()
    };
    Some(Engine::new(cfg, Arc::new(f), Arc::new(Stats::default())))
}

/// An Ethernet frame through the routing mesh's paths: the first byte
/// picks the way in (0: from the host link; 1: from the container to its
/// gateway; 2: from another node to the local task, over VXLAN; 3: from
/// another node to the ingress endpoint), the rest is the frame. Nothing
/// panics, every TAP write resolves, and a TCP/UDP frame whose checksums
/// verified leaves with valid checksums whatever was translated.
pub fn mesh(data: &[u8]) {
    let Some((&way, frame)) = data.split_first() else {
        return;
    };
    let Some(mut e) = mesh_node() else {
        return;
    };
    let valid = nat::parse(frame).is_ok_and(|p| l4_checksum_ok(frame, &p));
    let mut outs = Outputs::new(TxBatch::new(1 << 17, 16));
    let mut f = frame.to_vec();
    let set_dst = |f: &mut Vec<u8>, m: [u8; 6]| {
        if let Some(d) = f.get_mut(0..6) {
            d.copy_from_slice(&m);
        }
    };
    let src = std::net::SocketAddr::from(([192, 0, 2, 12], 4789));
    match way % 4 {
        0 => {
            let mut pkt = vec![0u8; vnet::LEN];
            pkt.extend_from_slice(&f);
            e.from_tap(9, &mut pkt, &mut outs);
        }
        1 => {
            set_dst(&mut f, [6, 0x56, 10, 1, 0, 1]);
            if let Some(s) = f.get_mut(6..12) {
                s.copy_from_slice(&MacAddr::from_ip([10, 1, 0, 5].into()).0);
            }
            let mut pkt = vec![0u8; vnet::LEN];
            pkt.extend_from_slice(&f);
            e.from_tap(1, &mut pkt, &mut outs);
        }
        w => {
            let to = if w == 2 {
                MacAddr::from_ip([10, 0, 0, 5].into())
            } else {
                MacAddr::from_ip([10, 0, 0, 2].into())
            };
            set_dst(&mut f, to.0);
            let mut d = vec![0u8; vxlan::HEADER_LEN];
            vxlan::write_header(&mut d, Vni::new(4096).expect("vni"));
            d.extend_from_slice(&f);
            e.from_wire(src, &mut d, &mut outs);
        }
    }
    outs.drain_taps(|_, w| {
        let Some(b) = w.as_bytes() else {
            panic!("a TAP write did not resolve");
        };
        let out = &b[vnet::LEN..];
        if valid
            && let Ok(q) = nat::parse(out)
            && matches!(q.proto, 6 | 17)
        {
            assert!(l4_checksum_ok(out, &q), "the mesh broke a valid checksum");
        }
    });
}

/// True if the IPv4 header and the TCP/UDP/ICMPv6 checksum of `f` verify
/// (a UDP checksum of 0 counts as valid over IPv4).
fn l4_checksum_ok(f: &[u8], p: &nat::L4) -> bool {
    if !p.v6 && checksum::finish(checksum::sum(&f[14..p.l4], 0)) != 0 {
        return false;
    }
    let l4 = &f[p.l4..p.end];
    let pseudo = match (p.v6, p.proto) {
        (_, 6 | 17) | (true, 58) => {
            if !p.v6 && p.proto == 17 && l4.get(6..8) == Some(&[0, 0]) {
                return true;
            }
            let info = |o: usize, n: usize| &f[14 + o..14 + o + n];
            if p.v6 {
                let a: [u8; 16] = info(8, 16).try_into().expect("16");
                let b: [u8; 16] = info(24, 16).try_into().expect("16");
                checksum::pseudo_v6(a.into(), b.into(), p.proto, l4.len() as u32)
            } else {
                let a: [u8; 4] = info(12, 4).try_into().expect("4");
                let b: [u8; 4] = info(16, 4).try_into().expect("4");
                checksum::pseudo_v4(a.into(), b.into(), p.proto, l4.len() as u16)
            }
        }
        (false, 1) => 0,
        _ => return true,
    };
    checksum::finish(checksum::sum(l4, pseudo)) == 0
}

/// Asserts that an Ethernet/IP/TCP|UDP frame's IPv4 header and L4
/// checksums verify.
fn check_l4_checksum(f: &[u8]) {
    let (l4, end, pseudo) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let hl = (f[14] & 0x0f) as usize * 4;
            assert_eq!(
                checksum::finish(checksum::sum(&f[14..14 + hl], 0)),
                0,
                "IPv4"
            );
            let end = 14 + u16::from_be_bytes([f[16], f[17]]) as usize;
            let src: [u8; 4] = f[26..30].try_into().expect("4 bytes");
            let dst: [u8; 4] = f[30..34].try_into().expect("4 bytes");
            let p = checksum::pseudo_v4(src.into(), dst.into(), f[23], (end - 14 - hl) as u16);
            (14 + hl, end, p)
        }
        _ => {
            let end = 54 + u16::from_be_bytes([f[18], f[19]]) as usize;
            let src: [u8; 16] = f[22..38].try_into().expect("16 bytes");
            let dst: [u8; 16] = f[38..54].try_into().expect("16 bytes");
            let p = checksum::pseudo_v6(src.into(), dst.into(), f[20], (end - 54) as u32);
            (54, end, p)
        }
    };
    assert_eq!(
        checksum::finish(checksum::sum(&f[l4..end], pseudo)),
        0,
        "L4"
    );
}

/// A request line from either local API socket (the dataplane's or the
/// control daemon's) or an answer: it either parses into a message that
/// survives a round trip, or is refused; an attach request is validated the
/// way the dataplane does before touching the system.
pub fn api_request(data: &[u8]) {
    use vxnet_api::Response;
    use vxnet_api::ctl::CtlRequest;
    use vxnet_api::dp::Request;
    fn round_trip<T>(v: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(v).expect("a parsed message serializes");
        let again: T = serde_json::from_str(&text).expect("what we print parses");
        assert_eq!(&again, v);
    }
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        round_trip(&req);
        if let Request::Attach(a) = &req
            && let Ok(plan) = vxnet_dataplane::attach::Plan::validate(a, 1450, 22)
        {
            assert!(!plan.ips.is_empty());
            assert!(!plan.mac.is_multicast());
            assert!((68..=65_000).contains(&plan.mtu));
            assert!((1..=64).contains(&plan.gso_max_segs));
        }
    }
    if let Ok(req) = serde_json::from_slice::<CtlRequest>(data) {
        round_trip(&req);
    }
    if let Ok(resp) = serde_json::from_slice::<Response>(data) {
        let text = serde_json::to_string(&resp).expect("a parsed answer serializes");
        let _: Response = serde_json::from_str(&text).expect("what we print parses");
    }
}

/// One datagram arriving on the data port of host B from host A (plain
/// VXLAN, ESP for the encrypted VNI, or a key-rotation control message):
/// the whole receive path, including SA lookup, the replay check and open
/// (under `cfg(fuzzing)` ESP carries no AEAD, so the fuzzer writes
/// trailers directly), from a receive buffer as the worker does it, so TAP writes refer to
/// that buffer and every reference must resolve. Whatever arrives, B keeps
/// its keys and forwards the next real packet from A.
pub fn wire_rx(data: &[u8]) {
    use std::net::SocketAddr;
    use std::sync::{Mutex, OnceLock};
    use vxnet_proto::batch::RxBatch;
    use vxnet_proto::engine::testkit::{self, Host};
    static WORLD: OnceLock<Mutex<(Host, Host, RxBatch)>> = OnceLock::new();
    let world = WORLD.get_or_init(|| {
        let (mut a, mut b) = testkit::encrypted_pair(std::time::Instant::now());
        testkit::handshake(&mut a, &mut b);
        Mutex::new((a, b, RxBatch::new(1, 65_536)))
    });
    let mut guard = world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (a, b, rx) = &mut *guard;
    if data.len() > rx.bufs[0].len() {
        return;
    }
    rx.bufs[0][..data.len()].copy_from_slice(data);
    rx.meta[0].len = data.len();
    rx.meta[0].segment = 0;
    rx.filled = 1;
    for (at, d) in rx.datagrams_at_mut(0) {
        b.engine
            .from_wire_at(SocketAddr::new(a.addr, 4789), d, at, &mut b.out);
    }
    b.out.drain_taps(|_, w| {
        let frame = w.to_vec(|r| rx.resolve(r)).expect("references resolve");
        assert!(frame.len() >= vnet::LEN);
    });
    b.out.udp.clear();
}

/// A message arriving at the embedded DNS server in a container's
/// namespace, over UDP and over TCP, and the same bytes as an upstream's
/// reply to a query being forwarded. Our replies always parse, echo the
/// ID, stay within the asker's UDP size and carry our TTL; only
/// well-formed single-question queries are forwarded; only a reply with
/// the forwarded query's ID and question is passed on, untouched but for
/// the asker's ID. Returns which paths the input reached.
pub fn dns_query(data: &[u8]) -> DnsReached {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use rand_chacha::ChaCha12Rng;
    use rand_chacha::rand_core::SeedableRng;
    use std::sync::OnceLock;
    use vxnet_control::dns::{self, Decision, DnsRecords, Forward, Transport};

    /// The ID of the forwarded query whose replies `data` may be.
    const ASKER_ID: u16 = 0x0001;
    static WORLD: OnceLock<(DnsRecords, Forward)> = OnceLock::new();
    let (records, forward) = WORLD.get_or_init(|| {
        let records = dns_records();
        let q = dns_seed_query("example.com.", ASKER_ID);
        let nets = ["n1".to_string()];
        let mut rng = ChaCha12Rng::seed_from_u64(1);
        match dns::answer(&records, &nets, Transport::Udp, &q, &mut rng) {
            Decision::Forward(f) => (records, f),
            other => panic!("example.com is forwarded, got {other:?}"),
        }
    });
    let nets = ["n2".to_string(), "n1".to_string()];
    let mut rng = ChaCha12Rng::seed_from_u64(data.len() as u64);
    let mut reached = DnsReached::default();
    for transport in [Transport::Udp, Transport::Tcp] {
        match dns::answer(records, &nets, transport, data, &mut rng) {
            Decision::Reply(r) => {
                reached.answered |= r.rcode == ResponseCode::NoError && !r.bytes.is_empty();
                reached.refused |= r.rcode != ResponseCode::NoError;
                let m = Message::from_vec(&r.bytes).expect("our replies parse");
                assert_eq!(m.message_type(), MessageType::Response);
                assert_eq!(r.bytes[..2], data[..2], "the asker's ID");
                assert_eq!(u16::from(m.response_code()), u16::from(r.rcode));
                if r.rcode == ResponseCode::NoError {
                    let q = Message::from_vec(data).expect("answered queries parse");
                    if transport == Transport::Udp {
                        assert!(r.bytes.len() <= usize::from(q.max_payload()));
                    }
                    for rec in m.answers() {
                        assert_eq!(rec.ttl(), dns::TTL);
                        assert_eq!(rec.name(), q.queries()[0].name());
                    }
                }
            }
            Decision::Forward(f) => {
                reached.forwarded = true;
                let q = Message::from_vec(data).expect("forwarded queries parse");
                assert_eq!(q.queries().len(), 1);
                assert_eq!(f.transport(), transport);
                let up = f.upstream_query(0x5a5a);
                assert_eq!(up[..2], [0x5a, 0x5a]);
                assert_eq!(up[2..], data[2..]);
                for rcode in [ResponseCode::ServFail, ResponseCode::Refused] {
                    let e = Message::from_vec(&f.error_reply(rcode)).expect("errors parse");
                    assert_eq!(e.response_code(), rcode);
                    assert_eq!(e.id(), q.id());
                }
            }
            Decision::Drop(_) => {
                reached.dropped = true;
                assert!(
                    data.len() < 12 || data[2] & 0x80 != 0 || data.len() > dns::MAX_QUERY_LEN,
                    "only headerless, oversized and responses are dropped"
                );
            }
        }
    }
    if let [a, b, ..] = *data {
        let id = u16::from_be_bytes([a, b]);
        if let Some(r) = forward.accept_reply(id, data) {
            assert_eq!(r.bytes[..2], ASKER_ID.to_be_bytes());
            assert_eq!(r.bytes[2..], data[2..]);
            assert_eq!(r.rcode.low(), data[3] & 0x0f);
            reached.accepted_upstream = true;
        }
    }
    reached
}

/// Which paths one `dns_query` input took (for the seed test).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsReached {
    /// Answered by us, NOERROR (with data or NODATA).
    pub answered: bool,
    /// Answered by us with an error RCODE (FORMERR, NOTIMP, BADVERS).
    pub refused: bool,
    pub forwarded: bool,
    pub dropped: bool,
    /// Accepted as an upstream's reply to the forwarded query.
    pub accepted_upstream: bool,
}

/// The name table the `dns_query` target answers from: the names the
/// seed queries ask for, on two networks.
pub fn dns_records() -> vxnet_control::dns::DnsRecords {
    use vxnet_control::dns::{DnsRecords, EntryKind::*};
    let mut b = DnsRecords::builder();
    b.network_name("n1", "front").network_name("n2", "back");
    for (net, name, ip, kind) in [
        ("n1", "alpine1", "10.0.1.2", Container),
        ("n1", "alpine1", "fd00:1::2", Container),
        ("n1", "db", "10.0.1.2", Alias),
        ("n1", "web", "10.0.1.100", ServiceVip),
        ("n1", "web", "10.0.1.3", ServiceTask),
        ("n1", "web", "10.0.1.4", ServiceTask),
        ("n1", "web.1.k3j5", "10.0.1.3", Container),
        ("n1", "rr", "10.0.1.7", ServiceTask),
        ("n1", "rr", "10.0.1.8", ServiceTask),
        ("n2", "web", "10.0.2.100", ServiceVip),
        ("n2", "alpine2", "10.0.2.5", Container),
    ] {
        b.entry(net, name, ip.parse().expect("seed address"), kind);
    }
    b.build()
}

/// A recursive A query for `name` with `id`, no EDNS.
pub fn dns_seed_query(name: &str, id: u16) -> Vec<u8> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("seed name"),
        RecordType::A,
    ));
    m.to_vec().expect("seed query encodes")
}

/// `vxnet trace`'s dry runs on arbitrary bytes: the first byte picks the
/// path (even: a `vnet header ‖ frame` from host A's TAP, odd: a datagram
/// arriving at host B from A), the rest is the packet. Whatever it is, a
/// dry run counts nothing on either host, and what it would send or
/// deliver is well-formed enough to report (`vxnet trace --live` parses
/// the same frames' flows).
pub fn trace_dry_run(data: &[u8]) {
    use std::net::SocketAddr;
    use std::sync::{Mutex, OnceLock};
    use vxnet_proto::engine::testkit::{self, Host};
    use vxnet_proto::stats::{Counter, Drop};
    static WORLD: OnceLock<Mutex<(Host, Host)>> = OnceLock::new();
    let world = WORLD.get_or_init(|| {
        let (mut a, mut b) = testkit::encrypted_pair(std::time::Instant::now());
        testkit::handshake(&mut a, &mut b);
        Mutex::new((a, b))
    });
    let mut guard = world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (a, b) = &mut *guard;
    let Some((&pick, pkt)) = data.split_first() else {
        return;
    };
    let counted = |h: &Host| {
        let s = h.engine.stats();
        let c: u64 = Counter::ALL.iter().map(|c| s.counter(*c)).sum();
        let d: u64 = Drop::ALL.iter().map(|d| s.drops(*d)).sum();
        (c, d)
    };
    let before = (counted(a), counted(b));
    let mut bytes = pkt.to_vec();
    let run = if pick % 2 == 0 {
        a.engine.trace_tap(0, &mut bytes)
    } else {
        b.engine
            .trace_wire(SocketAddr::new(a.addr, 4789), &mut bytes)
    };
    assert_eq!((counted(a), counted(b)), before, "a dry run counted");
    assert!(run.drops.len() <= Drop::COUNT);
    for (_, frame) in &run.delivered {
        let _ = vxnet_dataplane::observe::flow_of(frame);
    }
    let _ = vxnet_dataplane::observe::flow_of(pkt);
}

/// A frame too big for the underlay: `[mtu: u16 LE][Ethernet frame]`. An
/// answer, when there is one, is a valid ICMP or ICMPv6 error back from
/// the frame's destination to its source, quoting the start of its IP
/// packet, within the size limits of RFC 1812 and RFC 4443.
pub fn too_big(data: &[u8]) {
    let Some((mtu, frame)) = data.split_at_checked(2) else {
        return;
    };
    let mtu = u32::from(u16::from_le_bytes([mtu[0], mtu[1]]));
    let mut out = [0u8; icmp::MAX_LEN];
    let Some(n) = icmp::emit_too_big(frame, mtu, &mut out) else {
        return;
    };
    let a = &out[..n];
    assert_eq!(&a[0..6], &frame[6..12], "to the sender");
    assert_eq!(&a[6..12], &frame[0..6], "from the MAC it was sent to");
    assert_eq!(&a[12..14], &frame[12..14], "same IP version");
    let ip = &frame[14..];
    if a[12..14] == [0x08, 0x00] {
        assert!(n <= 14 + 576 && mtu >= icmp::MIN_MTU_V4);
        assert_eq!(checksum::ipv4_header(&a[14..34]), 0, "IPv4 header checksum");
        assert_eq!(
            checksum::finish(checksum::sum(&a[34..], 0)),
            0,
            "ICMP checksum"
        );
        assert_eq!(&a[26..30], &ip[16..20], "from the destination");
        assert_eq!(&a[30..34], &ip[12..16], "to the source");
        assert_eq!(&a[34..36], &[3, 4]);
        assert_eq!(&a[42..], &ip[..n - 42], "quotes the packet");
    } else {
        assert!(n <= icmp::MAX_LEN && mtu >= icmp::MIN_MTU_V6);
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&a[22..38]);
        d.copy_from_slice(&a[38..54]);
        assert_eq!(&s, &ip[24..40], "from the destination");
        assert_eq!(&d, &ip[8..24], "to the source");
        let p = checksum::pseudo_v6(s.into(), d.into(), 58, (n - 54) as u32);
        assert_eq!(
            checksum::finish(checksum::sum(&a[54..], p)),
            0,
            "ICMPv6 checksum"
        );
        assert_eq!(a[54], 2);
        assert_eq!(&a[62..], &ip[..n - 62], "quotes the packet");
    }
}

/// `[flags][vnet header ‖ frame]` read from local port 0 of a VNI with a
/// second local port, a remote endpoint and a flood VTEP, over a small
/// underlay. Flags: bit 0 keeps the frame's source MAC (else it is port
/// 0's endpoint, to get past anti-spoofing), bit 1 an IPv6 underlay, bit 2
/// flooding off, bit 3 a flood rate of one frame a second, bits 4-7 add
/// 500 bytes each to a 1280-byte underlay MTU. Every frame is forwarded,
/// answered or counted as dropped (once), and no GSO segment is larger
/// than the underlay carries.
pub fn tap_frame_accounted(data: &[u8]) {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use vxnet_proto::batch::TxBatch;
    use vxnet_proto::engine::{Engine, EngineConfig, Outputs};
    use vxnet_proto::fdb::Fdb;
    use vxnet_proto::mtu::Underlay;
    use vxnet_proto::replication::FloodPolicy;
    use vxnet_proto::stats::{Counter, Drop, Stats};
    use vxnet_proto::wire::{MacAddr, Vni};

    let Some((&flags, pkt)) = data.split_first() else {
        return;
    };
    let a = MacAddr([2, 0x42, 10, 0, 0, 2]);
    let mut pkt = pkt.to_vec();
    if flags & 1 == 0 && pkt.len() >= vnet::LEN + 12 {
        pkt[vnet::LEN + 6..vnet::LEN + 12].copy_from_slice(&a.0);
    }
    let vni = Vni::new(4096).expect("valid VNI");
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, last));
    let underlay = Underlay::new(1280 + u32::from(flags >> 4) * 500, flags & 2 != 0);
    let mut fdb = Fdb::default();
    fdb.set_underlay(underlay);
    let setup = (|| {
        fdb.add_local(0, vni, a, &[ip(2), "fd00::2".parse().ok()?])
            .ok()?;
        fdb.add_local(1, vni, MacAddr([2, 0x42, 10, 0, 0, 4]), &[ip(4)])
            .ok()?;
        let (b, flood) = if underlay.ipv6 {
            ("2001:db8::2".parse().ok()?, "2001:db8::9".parse().ok()?)
        } else {
            ("192.0.2.2".parse().ok()?, "192.0.2.9".parse().ok()?)
        };
        fdb.add_remote(
            vni,
            MacAddr([2, 0x42, 10, 0, 0, 3]),
            &[ip(3), "fd00::3".parse().ok()?],
            b,
        )
        .ok()?;
        fdb.add_flood(vni, flood).ok()
    })();
    assert!(setup.is_some(), "fixture");
    fdb.set_flood_policy(
        vni,
        FloodPolicy {
            enabled: flags & 4 == 0,
            rate: (flags & 8 != 0).then_some(1),
        },
    );
    let stats = Arc::new(Stats::default());
    let mut e = Engine::new(EngineConfig::default(), Arc::new(fdb), Arc::clone(&stats));
    let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
    // Twice: the second meets an empty flood budget with bit 3.
    for round in 1..=2u64 {
        e.from_tap(0, &mut pkt.clone(), &mut out);
        let drops: u64 = Drop::ALL.iter().map(|d| stats.drops(*d)).sum();
        let answered = stats.counter(Counter::ArpProxied) + stats.counter(Counter::NdProxied);
        let mut forwarded = !out.udp.is_empty();
        out.drain_taps(|port, _| forwarded |= port != 0);
        assert!(
            drops + answered + u64::from(forwarded) >= 1,
            "a frame went nowhere uncounted"
        );
        assert!(drops <= round, "one frame, one drop at most");
        let max = underlay.max_frame(false) + vxlan::HEADER_LEN;
        for m in out.udp.msgs() {
            assert!(
                m.segment == 0 || usize::from(m.segment) <= max,
                "a GSO segment larger than the underlay carries"
            );
        }
        out.udp.clear();
    }
}
