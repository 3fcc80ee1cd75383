//! The routing mesh, host mode and egress through whole engines, with a
//! simulated clock and wire: node 1 (192.0.2.11) and node 2 (192.0.2.12)
//! share the ingress network (VNI 4096, 10.0.0.0/24, gateway 10.0.0.1);
//! each has the host link 198.18.0.0/16 with its ingress endpoint
//! (10.0.0.2 on node 1, 10.0.0.3 on node 2). Tasks T1 (10.0.0.5, node 2)
//! and T2 (10.0.0.6, node 2) serve published port 8080 → 80; node 2 also
//! has container C (10.1.0.5) on network 4097 (egress) and I (10.2.0.5)
//! on 4098 (internal).
use super::*;
use crate::fdb::{HostLink, Published, PublishedTo};
use crate::lb::nat;
use crate::lb::service::{Backend, Service, vip_mac};
use crate::offload::testutil::assert_valid;
use etherparse::PacketBuilder;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

const CLIENT: &str = "192.0.2.100";
const VIP: &str = "10.0.0.100";
const HOST_PORT: PortId = 9;

fn vni(n: u32) -> Vni {
    Vni::new(n).unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn mac_of(i: &str) -> MacAddr {
    MacAddr::from_ip(ip(i))
}
fn node_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + n))
}
/// Node n's ingress endpoint address.
fn ingress_ip(n: u8) -> &'static str {
    ["", "10.0.0.2", "10.0.0.3"][usize::from(n)]
}

fn link(n: u8) -> HostLink {
    HostLink {
        port: HOST_PORT,
        net: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 16,
        host_mac: mac_of(ingress_ip(n)),
        ingress: Some((vni(4096), ingress_ip(n).parse().unwrap())),
    }
}

fn tasks_service(vip: &str, tasks: &[&str]) -> Arc<Service> {
    let bs = tasks
        .iter()
        .map(|t| Backend {
            ip: ip(t),
            mac: mac_of(t),
        })
        .collect();
    Arc::new(Service::new(ip(vip), bs, 251).unwrap())
}

/// Node `n`'s table; tasks T1 and T2 live on node 2 (ports 0 and 1).
fn node(n: u8) -> Fdb {
    let mut f = Fdb::default();
    f.set_routing(vni(4096), &[ip("10.0.0.1")], true, true);
    f.set_routing(vni(4097), &[ip("10.1.0.1")], true, false);
    f.set_routing(vni(4098), &[ip("10.2.0.1")], false, false);
    for t in ["10.0.0.5", "10.0.0.6"] {
        if n == 2 {
            let port = if t.ends_with('5') { 0 } else { 1 };
            f.add_local(port, vni(4096), mac_of(t), &[ip(t)]).unwrap();
        } else {
            f.add_remote(vni(4096), mac_of(t), &[ip(t)], node_ip(2))
                .unwrap();
        }
    }
    let other = 3 - n;
    f.add_remote(
        vni(4096),
        mac_of(ingress_ip(other)),
        &[ip(ingress_ip(other))],
        node_ip(other),
    )
    .unwrap();
    if n == 2 {
        f.add_local(2, vni(4097), mac_of("10.1.0.5"), &[ip("10.1.0.5")])
            .unwrap();
        f.add_local(3, vni(4098), mac_of("10.2.0.5"), &[ip("10.2.0.5")])
            .unwrap();
    }
    f.set_host_link(link(n)).unwrap();
    f.set_service(vni(4096), tasks_service(VIP, &["10.0.0.5", "10.0.0.6"]))
        .unwrap();
    f.set_published(Published {
        proto: 6,
        port: 8080,
        target_port: 80,
        vni: vni(4096),
        to: PublishedTo::Vip(ip(VIP)),
    })
    .unwrap();
    f.set_published(Published {
        proto: 17,
        port: 8080,
        target_port: 7000,
        vni: vni(4096),
        to: PublishedTo::Vip(ip(VIP)),
    })
    .unwrap();
    f
}

struct Node {
    e: Engine,
    out: Outputs,
}

impl Node {
    fn new(fdb: Fdb, now: Instant) -> Node {
        let mut e = Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        );
        e.set_now(now);
        Node {
            e,
            out: Outputs::new(TxBatch::new(1 << 20, 256)),
        }
    }

    fn tap(&mut self, port: PortId, frame: &[u8]) {
        let mut pkt = vec![0u8; vnet::LEN];
        pkt.extend_from_slice(frame);
        self.e.from_tap(port, &mut pkt, &mut self.out);
    }

    /// Datagrams sent since the last call: (to VTEP, inner frame).
    fn sent(&mut self) -> Vec<(IpAddr, Vec<u8>)> {
        let v = self
            .out
            .udp
            .msgs()
            .to_vec()
            .into_iter()
            .map(|m| {
                let b = self.out.udp.bytes(&m).to_vec();
                (m.dst.ip(), b[vxlan::HEADER_LEN..].to_vec())
            })
            .collect();
        self.out.udp.clear();
        v
    }

    fn wire(&mut self, from: IpAddr, inner: &[u8]) {
        let mut d = vec![0u8; 8];
        vxlan::write_header(&mut d, vni(4096));
        d.extend_from_slice(inner);
        self.e
            .from_wire(SocketAddr::new(from, 4789), &mut d, &mut self.out);
    }

    fn written(&mut self) -> Vec<(PortId, Vec<u8>)> {
        let mut v = Vec::new();
        self.out.drain_taps(|p, w| {
            let b = w.as_bytes().expect("copied").to_vec();
            v.push((p, b[vnet::LEN..].to_vec()));
        });
        v
    }

    fn drops(&self, d: Drop) -> u64 {
        self.e.stats().drops(d)
    }

    fn stat(&self, c: Counter) -> u64 {
        self.e.stats().counter(c)
    }
}

fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: &str,
    dst: &str,
    ports: (u16, u16),
    syn: bool,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("v4 only")
    };
    let t = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(ports.0, ports.1, 1000, 64_000);
    let t = if syn { t.syn() } else { t.ack(1) };
    let mut out = Vec::new();
    t.write(&mut out, if syn { b"" } else { b"data" }).unwrap();
    out
}

fn udp(src_mac: MacAddr, dst_mac: MacAddr, src: &str, dst: &str, ports: (u16, u16)) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("v4 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(ports.0, ports.1)
        .write(&mut out, b"ping")
        .unwrap();
    out
}

fn ping(src_mac: MacAddr, dst_mac: MacAddr, src: &str, dst: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("v4 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(s.octets(), d.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut out, b"abcd")
        .unwrap();
    out
}

/// The host's SYN (after its DNAT to the mesh address) from client port
/// `sport`, as the host link of node `n` hands it over.
fn from_client(n: u8, sport: u16, syn: bool) -> Vec<u8> {
    let h = link(n);
    tcp(
        h.host_mac,
        h.link_mac(),
        CLIENT,
        "198.18.0.2",
        (sport, 8080),
        syn,
    )
}

#[test]
fn ingress_keeps_the_client_address_and_replies_return_through_the_ingress_node() {
    let now = Instant::now();
    let mut n1 = Node::new(node(1), now);
    let mut n2 = Node::new(node(2), now);
    // The client's SYN enters node 1, which runs no task.
    n1.tap(HOST_PORT, &from_client(1, 40_000, true));
    let sent = n1.sent();
    assert_eq!(sent.len(), 1, "one datagram to the task's node");
    let (to, inner) = &sent[0];
    assert_eq!(*to, node_ip(2));
    assert_valid(inner);
    let p = nat::parse(inner).unwrap();
    let task = p.dst;
    assert!(task == ip("10.0.0.5") || task == ip("10.0.0.6"));
    assert_eq!((p.src, p.sport, p.dport), (ip(CLIENT), 40_000, 80));
    assert_eq!(
        inner[6..12],
        mac_of("10.0.0.2").0,
        "from node 1's ingress MAC"
    );
    // Node 2 delivers it to the task unchanged.
    n2.wire(node_ip(1), inner);
    let w = n2.written();
    assert_eq!(w.len(), 1);
    let task_port = if task == ip("10.0.0.5") { 0 } else { 1 };
    assert_eq!(w[0].0, task_port);
    assert_eq!(
        nat::parse(&w[0].1).unwrap().src,
        ip(CLIENT),
        "the task sees the client"
    );
    // The task answers through its gateway; node 2 sends it back to node 1.
    let task_s = task.to_string();
    let syn_ack = tcp(
        mac_of(&task_s),
        vip_mac(ip("10.0.0.1")),
        &task_s,
        CLIENT,
        (80, 40_000),
        false,
    );
    n2.tap(task_port, &syn_ack);
    let sent = n2.sent();
    assert_eq!(
        sent.len(),
        1,
        "{:?}",
        n2.e.stats().drops(Drop::MeshNoEgress)
    );
    assert_eq!(sent[0].0, node_ip(1));
    assert_eq!(sent[0].1[0..6], mac_of("10.0.0.2").0);
    assert_eq!(n2.stat(Counter::MeshReturned), 1);
    // Node 1 translates it back for its host: from the mesh address and
    // the published port, to the host's MAC.
    n1.wire(node_ip(2), &sent[0].1);
    let w = n1.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, HOST_PORT);
    assert_valid(&w[0].1);
    let r = nat::parse(&w[0].1).unwrap();
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (ip("198.18.0.2"), 8080, ip(CLIENT), 40_000)
    );
    assert_eq!(w[0].1[0..6], link(1).host_mac.0);
    assert_eq!(w[0].1[6..12], link(1).link_mac().0);
    // Later packets follow the same flow.
    n1.tap(HOST_PORT, &from_client(1, 40_000, false));
    let again = n1.sent();
    assert_eq!(nat::parse(&again[0].1).unwrap().dst, task);
}

#[test]
fn every_node_picks_the_same_task_for_a_flow() {
    let now = Instant::now();
    let mut n1 = Node::new(node(1), now);
    let mut n2 = Node::new(node(2), now);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 30_000..30_200 {
        n1.tap(HOST_PORT, &from_client(1, sport, true));
        let a = nat::parse(&n1.sent()[0].1).unwrap().dst;
        // Node 2 has both tasks locally: its pick is written to a port.
        n2.tap(HOST_PORT, &from_client(2, sport, true));
        let w = n2.written();
        let b = nat::parse(&w[0].1).unwrap().dst;
        assert_eq!(a, b, "client port {sport}");
        seen.insert(a);
    }
    assert_eq!(seen.len(), 2, "both tasks get flows");
}

#[test]
fn a_local_task_answers_straight_to_the_host() {
    let now = Instant::now();
    let mut n2 = Node::new(node(2), now);
    n2.tap(HOST_PORT, &from_client(2, 41_000, true));
    let w = n2.written();
    let task = nat::parse(&w[0].1).unwrap().dst.to_string();
    assert_eq!(w[0].1[6..12], link(2).host_mac.0);
    let port = w[0].0;
    n2.tap(
        port,
        &tcp(
            mac_of(&task),
            vip_mac(ip("10.0.0.1")),
            &task,
            CLIENT,
            (80, 41_000),
            false,
        ),
    );
    let w = n2.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, HOST_PORT);
    assert_valid(&w[0].1);
    let r = nat::parse(&w[0].1).unwrap();
    assert_eq!((r.src, r.sport), (ip("198.18.0.2"), 8080));
    assert_eq!(n2.stat(Counter::MeshToHost), 1);
}

#[test]
fn udp_published_ports_translate_both_ways() {
    let now = Instant::now();
    let mut n2 = Node::new(node(2), now);
    let h = link(2);
    n2.tap(
        HOST_PORT,
        &udp(h.host_mac, h.link_mac(), CLIENT, "198.18.0.2", (5353, 8080)),
    );
    let w = n2.written();
    assert_eq!(w.len(), 1);
    assert_valid(&w[0].1);
    let p = nat::parse(&w[0].1).unwrap();
    assert_eq!((p.src, p.dport), (ip(CLIENT), 7000));
    let task = p.dst.to_string();
    n2.tap(
        w[0].0,
        &udp(
            mac_of(&task),
            vip_mac(ip("10.0.0.1")),
            &task,
            CLIENT,
            (7000, 5353),
        ),
    );
    let w = n2.written();
    assert_valid(&w[0].1);
    let r = nat::parse(&w[0].1).unwrap();
    assert_eq!(
        (w[0].0, r.src, r.sport),
        (HOST_PORT, ip("198.18.0.2"), 8080)
    );
}

#[test]
fn host_mode_goes_to_the_local_task_from_its_gateway() {
    let now = Instant::now();
    let mut f = node(2);
    f.set_published(Published {
        proto: 6,
        port: 9090,
        target_port: 80,
        vni: vni(4097),
        to: PublishedTo::Tasks(tasks_service("198.18.0.2", &["10.1.0.5"])),
    })
    .unwrap();
    let mut n2 = Node::new(f, now);
    let h = link(2);
    n2.tap(
        HOST_PORT,
        &tcp(
            h.host_mac,
            h.link_mac(),
            CLIENT,
            "198.18.0.2",
            (42_000, 9090),
            true,
        ),
    );
    let w = n2.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 2);
    assert_eq!(w[0].1[6..12], vip_mac(ip("10.1.0.1")).0, "from its gateway");
    let p = nat::parse(&w[0].1).unwrap();
    assert_eq!((p.src, p.dst, p.dport), (ip(CLIENT), ip("10.1.0.5"), 80));
    n2.tap(
        2,
        &tcp(
            mac_of("10.1.0.5"),
            vip_mac(ip("10.1.0.1")),
            "10.1.0.5",
            CLIENT,
            (80, 42_000),
            false,
        ),
    );
    let w = n2.written();
    let r = nat::parse(&w[0].1).unwrap();
    assert_eq!(
        (w[0].0, r.src, r.sport),
        (HOST_PORT, ip("198.18.0.2"), 9090)
    );
}

#[test]
fn unknown_ports_and_addresses_from_the_host_are_dropped() {
    let now = Instant::now();
    let mut n1 = Node::new(node(1), now);
    let h = link(1);
    n1.tap(
        HOST_PORT,
        &tcp(
            h.host_mac,
            h.link_mac(),
            CLIENT,
            "198.18.0.2",
            (1, 9999),
            true,
        ),
    );
    n1.tap(
        HOST_PORT,
        &tcp(
            h.host_mac,
            h.link_mac(),
            CLIENT,
            "198.18.9.9",
            (1, 80),
            true,
        ),
    );
    n1.tap(
        HOST_PORT,
        &tcp(h.host_mac, h.link_mac(), CLIENT, "10.0.0.5", (1, 80), true),
    );
    assert_eq!(n1.drops(Drop::MeshNoPort), 1);
    assert_eq!(n1.drops(Drop::MeshNoRoute), 2);
    assert!(n1.sent().is_empty() && n1.written().is_empty());
}

#[test]
fn the_host_link_answers_arp_for_its_subnet_but_the_hosts_address() {
    let now = Instant::now();
    let mut n1 = Node::new(node(1), now);
    let h = link(1);
    let arp = |target: [u8; 4]| {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&h.host_mac.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&h.host_mac.0);
        f.extend_from_slice(&[198, 18, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    };
    n1.tap(HOST_PORT, &arp([198, 18, 0, 2]));
    let w = n1.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].1[22..28], h.link_mac().0);
    n1.tap(HOST_PORT, &arp([198, 18, 0, 1]));
    n1.tap(HOST_PORT, &arp([192, 0, 2, 1]));
    assert!(n1.written().is_empty());
}

/// The outside server's answer to C's connection from 192.0.2.200:22 to
/// 50000, as the host writes it into the link once its masquerade is
/// undone: to C's egress address `mapped`.
fn egress_answer(h: &HostLink, mapped: Ipv4Addr) -> Vec<u8> {
    tcp(
        h.host_mac,
        h.link_mac(),
        "192.0.2.200",
        &mapped.to_string(),
        (22, 50_000),
        false,
    )
}

#[test]
fn egress_maps_the_source_one_to_one_and_back() {
    let now = Instant::now();
    let mut n2 = Node::new(node(2), now);
    let c = mac_of("10.1.0.5");
    let gw = vip_mac(ip("10.1.0.1"));
    n2.tap(
        2,
        &tcp(c, gw, "10.1.0.5", "192.0.2.200", (50_000, 22), true),
    );
    let w = n2.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, HOST_PORT);
    assert_valid(&w[0].1);
    let p = nat::parse(&w[0].1).unwrap();
    let IpAddr::V4(mapped) = p.src else { panic!() };
    let h = link(2);
    assert!(
        h.contains(mapped) && h.egress_index(mapped).is_some(),
        "{mapped}"
    );
    assert_eq!((p.dst, p.sport), (ip("192.0.2.200"), 50_000));
    assert_eq!(w[0].1[0..6], h.host_mac.0);
    // The host's answer (after its masquerade is undone).
    n2.tap(HOST_PORT, &egress_answer(&h, mapped));
    let w = n2.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 2);
    assert_valid(&w[0].1);
    assert_eq!(nat::parse(&w[0].1).unwrap().dst, ip("10.1.0.5"));
    assert_eq!(w[0].1[0..6], c.0);
    assert_eq!(w[0].1[6..12], gw.0);
    // Ping leaves the same way.
    n2.tap(2, &ping(c, gw, "10.1.0.5", "192.0.2.200"));
    let w = n2.written();
    assert_eq!(nat::parse(&w[0].1).unwrap().src, IpAddr::V4(mapped));
    assert_eq!(n2.stat(Counter::MeshEgress), 2);
    // Another container's address from this port is not mapped.
    n2.tap(2, &ping(c, gw, "10.1.0.9", "192.0.2.200"));
    assert!(n2.written().is_empty());
    assert_eq!(n2.drops(Drop::MeshNoEgress), 1);
    // An egress address (its own here) is answer-only: dropped and
    // counted here, not left to the host's firewall.
    n2.tap(
        2,
        &tcp(c, gw, "10.1.0.5", &mapped.to_string(), (50_001, 80), true),
    );
    assert!(n2.written().is_empty());
    assert_eq!(n2.drops(Drop::MeshEgressAddress), 1);
    // The host's own address and the mesh address are not.
    for to in [h.host_ip(), h.mesh_ip()] {
        n2.tap(
            2,
            &tcp(c, gw, "10.1.0.5", &to.to_string(), (50_002, 80), true),
        );
        let w = n2.written();
        assert_eq!(w.len(), 1, "{to}");
        assert_eq!(w[0].0, HOST_PORT);
    }
    assert_eq!(n2.drops(Drop::MeshEgressAddress), 1);
}

#[test]
fn internal_networks_have_no_egress_but_their_gateway_answers_ping() {
    let now = Instant::now();
    let mut n2 = Node::new(node(2), now);
    let i = mac_of("10.2.0.5");
    let gw = vip_mac(ip("10.2.0.1"));
    n2.tap(3, &ping(i, gw, "10.2.0.5", "192.0.2.200"));
    assert!(n2.written().is_empty());
    assert_eq!(n2.drops(Drop::MeshNoEgress), 1);
    n2.tap(3, &ping(i, gw, "10.2.0.5", "10.2.0.1"));
    let w = n2.written();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 3);
    let r = nat::parse(&w[0].1).unwrap();
    assert_eq!(
        (r.src, r.dst, r.icmp_type),
        (ip("10.2.0.1"), ip("10.2.0.5"), 0)
    );
    assert_eq!(n2.stat(Counter::MeshGatewayReplies), 1);
    // ARP for the gateway is answered with its MAC.
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&i.0);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&i.0);
    arp.extend_from_slice(&[10, 2, 0, 5]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 2, 0, 1]);
    n2.tap(3, &arp);
    let w = n2.written();
    assert_eq!(w[0].1[22..28], gw.0);
}

#[test]
fn replies_without_state_never_leak_untranslated() {
    let now = Instant::now();
    let mut n1 = Node::new(node(1), now);
    let mut n2 = Node::new(node(2), now);
    // Node 2 forgot the flow (a restart): the task's segment from its
    // published port is dropped, not sent out through egress.
    n2.tap(
        0,
        &tcp(
            mac_of("10.0.0.5"),
            vip_mac(ip("10.0.0.1")),
            "10.0.0.5",
            CLIENT,
            (80, 43_000),
            false,
        ),
    );
    assert!(n2.written().is_empty() && n2.sent().is_empty());
    assert_eq!(n2.drops(Drop::MeshNoFlow), 1);
    // Node 1 forgot the flow: a reply arriving for its ingress endpoint
    // does not reach the host untranslated.
    n1.wire(
        node_ip(2),
        &tcp(
            mac_of("10.0.0.5"),
            link(1).host_mac,
            "10.0.0.5",
            CLIENT,
            (80, 43_000),
            false,
        ),
    );
    assert!(n1.written().is_empty());
    assert_eq!(n1.drops(Drop::MeshNoFlow), 1);
    // The client's next segment picks the flow up again (same task: the
    // set did not change), and the flow works both ways once more.
    n1.tap(HOST_PORT, &from_client(1, 43_000, false));
    let sent = n1.sent();
    assert_eq!(sent.len(), 1);
    n2.wire(node_ip(1), &sent[0].1);
    let task = nat::parse(&n2.written()[0].1).unwrap().dst.to_string();
    let port = if task.ends_with('5') { 0 } else { 1 };
    n2.tap(
        port,
        &tcp(
            mac_of(&task),
            vip_mac(ip("10.0.0.1")),
            &task,
            CLIENT,
            (80, 43_000),
            false,
        ),
    );
    let back = n2.sent();
    n1.wire(node_ip(2), &back[0].1);
    assert_eq!(n1.written().len(), 1);
}

#[test]
fn a_flow_that_moves_to_another_ingress_node_returns_there() {
    let now = Instant::now();
    let mut n2 = Node::new(node(2), now);
    let seg = |from: u8| {
        tcp(
            mac_of(ingress_ip(from)),
            mac_of("10.0.0.5"),
            CLIENT,
            "10.0.0.5",
            (44_000, 80),
            false,
        )
    };
    let answer = tcp(
        mac_of("10.0.0.5"),
        vip_mac(ip("10.0.0.1")),
        "10.0.0.5",
        CLIENT,
        (80, 44_000),
        false,
    );
    // Through node 1 (as if from a node with the same ingress address
    // scheme: here node 1's MAC), then through another node's MAC.
    n2.wire(node_ip(1), &seg(1));
    n2.written();
    n2.tap(0, &answer);
    assert_eq!(n2.sent()[0].1[0..6], mac_of(ingress_ip(1)).0);
    let mut via_other = seg(1);
    let other = MacAddr([2, 0x42, 10, 0, 0, 9]);
    via_other[6..12].copy_from_slice(&other.0);
    n2.wire(node_ip(1), &via_other);
    n2.written();
    n2.tap(0, &answer);
    // The other MAC is unknown to the FDB: the reply is flooded or
    // dropped, but never sent to the old node.
    assert!(
        n2.sent()
            .iter()
            .all(|(_, f)| f[0..6] != mac_of(ingress_ip(1)).0)
    );
}

/// Every flow as the table holds it, less its times.
fn flow_table(e: &Engine) -> Vec<String> {
    let mut v: Vec<String> = e
        .flows()
        .map(|f| format!("{:?} {:?} {:?} {:?}", f.key, f.kind, f.state, f.packets))
        .collect();
    v.sort();
    v
}

#[test]
fn traces_of_mesh_packets_change_no_flow() {
    let now = Instant::now();
    let mut n1 = Node::new(node(1), now);
    let mut n2 = Node::new(node(2), now);
    // A real flow: the client's SYN through node 1 to the task on node 2.
    n1.tap(HOST_PORT, &from_client(1, 40_000, true));
    let (_, inner) = n1.sent().pop().expect("sent to the task's node");
    n2.wire(node_ip(1), &inner);
    let (task_port, _) = n2.written().pop().expect("delivered to the task");
    let task = nat::parse(&inner).unwrap().dst.to_string();
    let syn_ack = tcp(
        mac_of(&task),
        vip_mac(ip("10.0.0.1")),
        &task,
        CLIENT,
        (80, 40_000),
        false,
    );
    let (before1, before2) = (flow_table(&n1.e), flow_table(&n2.e));
    assert!(!before1.is_empty() && !before2.is_empty());

    // Traces of: a new client's SYN on node 1 (published port), its
    // arrival on node 2 (return tracking), the task's answer on node 2
    // (a reply of the return flow) and on node 1 (to the host).
    let mut pkt = [&[0u8; vnet::LEN][..], &from_client(1, 40_001, true)].concat();
    let run = n1.e.trace_tap(HOST_PORT, &mut pkt);
    assert_eq!(run.sent.len(), 1, "the trace picks a task: {:?}", run.drops);
    assert!(
        matches!(
            run.notes[..2],
            [
                Note::HostLinkRx {
                    port: HOST_PORT,
                    ..
                },
                Note::Published {
                    published: 8080,
                    target_port: 80,
                    ..
                }
            ]
        ),
        "{:?}",
        run.notes
    );
    let mut d = run.sent[0].1.clone();
    assert_eq!(
        n2.e.trace_wire(SocketAddr::new(node_ip(1), 4789), &mut d)
            .delivered
            .len(),
        1
    );
    let mut pkt = [&[0u8; vnet::LEN][..], &syn_ack].concat();
    let run = n2.e.trace_tap(task_port, &mut pkt);
    assert_eq!(run.sent.len(), 1, "back to node 1: {:?}", run.drops);
    let mut d = run.sent[0].1.clone();
    let run = n1.e.trace_wire(SocketAddr::new(node_ip(2), 4789), &mut d);
    assert_eq!(run.delivered.len(), 1, "to the host: {:?}", run.drops);
    assert_eq!(run.delivered[0].0, HOST_PORT);

    assert!(
        run.notes.iter().any(|n| matches!(
            n,
            Note::ToHost {
                published: 8080,
                port: HOST_PORT,
                ..
            }
        )),
        "the reply is noted to the host: {:?}",
        run.notes
    );

    assert_eq!(flow_table(&n1.e), before1, "node 1's conntrack moved");
    assert_eq!(flow_table(&n2.e), before2, "node 2's conntrack moved");
}

/// `vxnet trace` follows the gateway's paths too: egress out with the
/// container's egress address, the answer back in, a ping to the gateway;
/// and a network without egress stops at `mesh/no_egress`. Dry runs count
/// nothing.
#[test]
fn traces_note_the_gateway_paths() {
    let now = Instant::now();
    let mut n2 = Node::new(node(2), now);
    let with_hdr = |f: &[u8]| [&[0u8; vnet::LEN][..], f].concat();
    let c = mac_of("10.1.0.5");
    let gw = vip_mac(ip("10.1.0.1"));
    let out = tcp(c, gw, "10.1.0.5", "192.0.2.200", (50_000, 22), true);
    let run = n2.e.trace_tap(2, &mut with_hdr(&out));
    assert!(run.drops.is_empty(), "{:?}", run.drops);
    let Some(&Note::Egress {
        from,
        addr,
        port,
        len,
    }) = run.notes.last()
    else {
        panic!("egress is noted last: {:?}", run.notes)
    };
    assert_eq!(from, ip("10.1.0.5"), "the container's own address is noted");
    let IpAddr::V4(mapped) = addr else {
        panic!("{addr}")
    };
    let h = link(2);
    assert!(h.egress_index(mapped).is_some(), "{mapped}");
    assert_eq!((port, len), (HOST_PORT, out.len()));
    assert_eq!(run.delivered.len(), 1);
    assert_eq!(run.delivered[0].0, HOST_PORT);

    let back = egress_answer(&h, mapped);
    let run = n2.e.trace_tap(HOST_PORT, &mut with_hdr(&back));
    assert_eq!(
        run.notes,
        vec![
            Note::HostLinkRx {
                port: HOST_PORT,
                len: back.len()
            },
            Note::EgressReply {
                addr: ip("10.1.0.5")
            },
            Note::TapTx {
                port: 2,
                len: back.len()
            },
        ]
    );

    let i = mac_of("10.2.0.5");
    let gw = vip_mac(ip("10.2.0.1"));
    let run =
        n2.e.trace_tap(3, &mut with_hdr(&ping(i, gw, "10.2.0.5", "10.2.0.1")));
    assert_eq!(
        run.notes.last(),
        Some(&Note::Answered {
            answer: Answer::GatewayEcho,
            port: 3
        })
    );
    let run =
        n2.e.trace_tap(3, &mut with_hdr(&ping(i, gw, "10.2.0.5", "192.0.2.200")));
    assert_eq!(run.drops, vec![Drop::MeshNoEgress]);

    assert_eq!(n2.stat(Counter::MeshEgress), 0, "a dry run counted");
    assert_eq!(n2.stat(Counter::MeshGatewayReplies), 0, "a dry run counted");
}
