//! Tables of desired against actual: what the plan wants, and the steps
//! the diff takes from what a dataplane holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::gossip::{EndpointRecord, NodeIdentity};
use crate::model::{Attachment, DesiredState, Driver, Ipv4Config, Ipv6Config};

const OWN: [u8; 4] = [192, 0, 2, 1];

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn vni(n: u32) -> Vni {
    Vni::new(n).unwrap()
}

pub(super) fn net(id: &str, v: u32, encrypted: bool, v6: bool) -> Network {
    Network {
        id: id.into(),
        name: format!("{id}-name"),
        driver: Driver::Overlay,
        vni: vni(v),
        ipv4: Ipv4Config {
            subnet: format!("10.0.{}.0/24", v - 4096).parse().unwrap(),
            gateway: format!("10.0.{}.1", v - 4096).parse().unwrap(),
            ip_range: None,
        },
        ipv6: v6.then(|| Ipv6Config {
            subnet: "fd00::/64".parse().unwrap(),
            gateway: "fd00::1".parse().unwrap(),
            ip_range: None,
        }),
        attachable: true,
        ingress: false,
        encrypted,
        mtu: if encrypted { 1408 } else { 1450 },
        mtu_explicit: Some(false),
        flood: true,
        internal: false,
        created: 0,
    }
}

/// A plain network that floods, as the dataplane reports one.
fn plain() -> NetSpec {
    NetSpec {
        flood: true,
        ..NetSpec::default()
    }
}

pub(super) fn attachment(network: &str, v4: &str, v6: Option<&str>) -> Attachment {
    let ipv4: std::net::Ipv4Addr = v4.parse().unwrap();
    Attachment {
        network: network.into(),
        ipv4,
        ipv6: v6.map(|s| s.parse().unwrap()),
        mac: MacAddr::from_ip(IpAddr::V4(ipv4)),
        aliases: Vec::new(),
    }
}

pub(super) fn container(id: &str, attachments: Vec<Attachment>) -> (Container, Runtime) {
    let rt = Runtime {
        container_id: id.into(),
        netns: format!("ns-{id}"),
        ifnames: attachments
            .iter()
            .enumerate()
            .map(|(i, a)| (a.network.clone(), format!("eth{i}")))
            .collect(),
        ..Runtime::default()
    };
    let c = Container {
        id: id.into(),
        name: id.into(),
        node: "me".into(),
        netns: None,
        attachments,
        created: 0,
        desired: DesiredState::Running,
        command: Vec::new(),
        env: Vec::new(),
        external: None,
        task: None,
        status: None,
    };
    (c, rt)
}

fn member(last: u8) -> NodeIdentity {
    NodeIdentity {
        node_id: format!("node{last}"),
        gossip_addr: SocketAddr::new(IpAddr::from([192, 0, 2, last]), 7946),
        data_addr: IpAddr::from([192, 0, 2, last]),
        data_port: 4789,
        public_key: [last; 32],
        generation: 1,
    }
}

/// A record of `ip` on `network`, with the MAC of the endpoint whose IPv4
/// address is `v4` (an endpoint's IPv6 record carries the same MAC).
fn record_of(network: &str, ip: &str, v4: &str, vtep_last: u8, version: u64) -> EndpointRecord {
    EndpointRecord {
        network_id: network.into(),
        ip: ip.parse().unwrap(),
        mac: MacAddr::from_ip(v4.parse().unwrap()).0,
        vtep: IpAddr::from([192, 0, 2, vtep_last]),
        version,
        removed: false,
    }
}

pub(super) fn record(network: &str, v4: &str, vtep_last: u8, version: u64) -> EndpointRecord {
    record_of(network, v4, v4, vtep_last, version)
}

pub(super) struct World {
    pub(super) networks: Vec<Network>,
    pub(super) containers: Vec<(Container, Runtime)>,
    pub(super) gossip: GossipView,
    pub(super) underlay: Option<Underlay>,
    pub(super) services: Vec<Service>,
    /// Other hosts' containers the store holds.
    pub(super) remote: Vec<Container>,
    /// This node, in a swarm with a host link.
    pub(super) node: Option<crate::model::Node>,
}

impl World {
    pub(super) fn plan(&self) -> Plan {
        let locals: Vec<LocalContainer<'_>> = self
            .containers
            .iter()
            .map(|(c, r)| LocalContainer {
                container: c,
                runtime: r,
            })
            .collect();
        let mut tasks: Vec<Container> = self.containers.iter().map(|(c, _)| c.clone()).collect();
        tasks.extend(self.remote.iter().cloned());
        let running: Vec<&Container> = self.containers.iter().map(|(c, _)| c).collect();
        let live = Live::new(&self.gossip, IpAddr::from(OWN), &running);
        plan(&Desired {
            own_vtep: IpAddr::from(OWN),
            underlay: self.underlay,
            networks: &self.networks,
            containers: &locals,
            gossip: &self.gossip,
            services: &self.services,
            tasks: &tasks,
            live: &live,
            node: self.node.as_ref(),
            host_link_subnet: self.node.as_ref().map(|_| "198.18.0.0/16".parse().unwrap()),
        })
    }
}

/// Host 1 with one container on `n1`; host 2 (live) has one, host 3 (not
/// a member any more) has one.
pub(super) fn world() -> World {
    World {
        networks: vec![net("n1", 4097, true, true), net("n2", 4098, false, false)],
        containers: vec![container(
            "c1",
            vec![attachment("n1", "10.0.1.2", Some("fd00::2"))],
        )],
        gossip: GossipView {
            syncing: false,
            own: Some(member(1)),
            members: vec![member(2)],
            records: vec![
                record("n1", "10.0.1.2", 1, 1),
                record("n1", "10.0.1.3", 2, 1),
                record_of("n1", "fd00::3", "10.0.1.3", 2, 1),
                record("n1", "10.0.1.4", 3, 1),
                record("n2", "10.0.2.3", 2, 1),
            ],
        },
        underlay: Some(Underlay::new(1500, false)),
        services: Vec::new(),
        remote: Vec::new(),
        node: None,
    }
}

#[test]
fn plan_of_a_host_with_one_container() {
    let p = world().plan();
    let s = &p.state;
    // Only the network a container here uses is declared.
    assert_eq!(
        s.networks,
        BTreeMap::from([(
            vni(4097),
            NetSpec {
                encrypted: true,
                gateways: vec![ip("10.0.1.1"), ip("fd00::1")],
                egress: true,
                ingress: false,
                flood: true,
            }
        )])
    );
    let key = EndpointKey::Netns {
        netns: "ns-c1".into(),
        ifname: "eth0".into(),
    };
    let e = &s.endpoints[&key];
    assert_eq!(e.vni, vni(4097));
    assert_eq!(e.mtu, 1408);
    assert_eq!(
        e.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.1.2/24", "fd00::2/64"]
    );
    assert_eq!(e.gateways, vec![ip("10.0.1.1"), ip("fd00::1")]);
    assert_eq!(p.owners[&key], "c1");
    assert_eq!(p.announce[&key].len(), 2);
    // The live peer with both its addresses in one entry; not our own
    // record, not host3's (not a member), not n2's (not declared here).
    let mac3 = MacAddr::from_ip(ip("10.0.1.3"));
    assert_eq!(s.peers.len(), 1, "{:?}", s.peers);
    let peer = &s.peers[&(vni(4097), mac3)];
    assert_eq!(peer.vtep, IpAddr::from([192, 0, 2, 2]));
    assert_eq!(
        peer.ips.iter().copied().collect::<Vec<_>>(),
        [ip("10.0.1.3"), ip("fd00::3")]
    );
    assert_eq!(
        s.vteps,
        BTreeMap::from([(IpAddr::from([192, 0, 2, 2]), PublicKey::from_bytes([2; 32]))])
    );
}

#[test]
fn empty_dataplane_gets_everything_keys_and_networks_first() {
    let p = world().plan();
    let ops = diff(&DpState::default(), &p.state);
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match o {
            Op::VtepAdd(..) => "vtep_add",
            Op::NetworkAdd(..) => "network_add",
            Op::Attach(..) => "attach",
            Op::PeerAdd { .. } => "peer_add",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["vtep_add", "network_add", "attach", "peer_add"]);
    // Applied, nothing is left to do.
    assert!(diff(&p.state, &p.state).is_empty());
}

#[test]
fn dataplane_ahead_of_desired_loses_stale_state() {
    let p = world().plan();
    let mut actual = p.state.clone();
    // A peer whose host went away, an endpoint of a removed container, a
    // network nothing uses, a key of a host that left.
    let stale_mac = MacAddr::from_ip(ip("10.0.1.9"));
    actual.peers.insert(
        (vni(4097), stale_mac),
        PeerSpec {
            ips: [ip("10.0.1.9")].into(),
            vtep: IpAddr::from([192, 0, 2, 9]),
        },
    );
    let gone = EndpointKey::Netns {
        netns: "ns-old".into(),
        ifname: "eth0".into(),
    };
    actual.endpoints.insert(
        gone.clone(),
        EndpointSpec {
            vni: vni(4098),
            mac: MacAddr::from_ip(ip("10.0.2.9")),
            ips: vec![],
            mtu: 1450,
            gateways: vec![],
        },
    );
    actual.networks.insert(vni(4098), plain());
    actual
        .vteps
        .insert(IpAddr::from([192, 0, 2, 9]), PublicKey::from_bytes([9; 32]));
    let ops = diff(&actual, &p.state);
    assert_eq!(
        ops,
        vec![
            Op::Detach(gone),
            Op::PeerDel {
                vni: vni(4097),
                mac: stale_mac,
                ips: vec![]
            },
            Op::NetworkDel(vni(4098)),
            Op::VtepDel(IpAddr::from([192, 0, 2, 9])),
        ]
    );
}

#[test]
fn missing_keys_are_added_and_changed_keys_replaced() {
    let p = world().plan();
    let mut actual = p.state.clone();
    actual.vteps.clear();
    assert_eq!(
        diff(&actual, &p.state),
        vec![Op::VtepAdd(
            IpAddr::from([192, 0, 2, 2]),
            PublicKey::from_bytes([2; 32])
        )]
    );
    // The host came back with a new dataplane key.
    actual
        .vteps
        .insert(IpAddr::from([192, 0, 2, 2]), PublicKey::from_bytes([7; 32]));
    assert_eq!(
        diff(&actual, &p.state),
        vec![Op::VtepAdd(
            IpAddr::from([192, 0, 2, 2]),
            PublicKey::from_bytes([2; 32])
        )]
    );
}

#[test]
fn a_network_only_seen_through_remote_peers_is_not_programmed() {
    let mut w = world();
    // No container here: records of n1 and n2 exist, but nothing is wanted.
    w.containers.clear();
    let p = w.plan();
    assert!(p.state.networks.is_empty());
    assert!(p.state.peers.is_empty());
    assert!(p.state.endpoints.is_empty());
    // Keys are per host, not per network: still there.
    assert_eq!(p.state.vteps.len(), 1);
}

#[test]
fn a_local_endpoint_wins_over_a_record_about_it() {
    let mut w = world();
    // Host 2 still announces 10.0.1.3, which now runs here.
    w.containers.push(container(
        "c3",
        vec![attachment("n1", "10.0.1.3", Some("fd00::3"))],
    ));
    let p = w.plan();
    assert!(p.state.peers.is_empty(), "{:?}", p.state.peers);
}

#[test]
fn a_moved_endpoint_follows_the_newest_record() {
    let mut w = world();
    w.gossip.members.push(member(4));
    // 10.0.1.3 moved to host 4 (newer version); the old host still has
    // its IPv6 record.
    w.gossip.records.retain(|r| r.ip != ip("10.0.1.3"));
    w.gossip.records.push(record("n1", "10.0.1.3", 4, 5));
    let p = w.plan();
    let peer = &p.state.peers[&(vni(4097), MacAddr::from_ip(ip("10.0.1.3")))];
    assert_eq!(peer.vtep, IpAddr::from([192, 0, 2, 4]));
    assert_eq!(
        peer.ips.iter().copied().collect::<Vec<_>>(),
        [ip("10.0.1.3")]
    );
    // From what the dataplane holds (both addresses at host 2): the stale
    // address goes, then the entry moves.
    let before = world().plan().state;
    let ops = diff(&before, &p.state);
    assert_eq!(
        ops,
        vec![
            Op::VtepAdd(IpAddr::from([192, 0, 2, 4]), PublicKey::from_bytes([4; 32])),
            Op::PeerDel {
                vni: vni(4097),
                mac: MacAddr::from_ip(ip("10.0.1.3")),
                ips: vec![ip("fd00::3")]
            },
            Op::PeerAdd {
                vni: vni(4097),
                mac: MacAddr::from_ip(ip("10.0.1.3")),
                ips: vec![ip("10.0.1.3")],
                vtep: IpAddr::from([192, 0, 2, 4]),
            },
        ]
    );
}

#[test]
fn a_changed_endpoint_is_detached_then_attached() {
    let w = world();
    let p = w.plan();
    let mut actual = p.state.clone();
    let key = p.state.endpoints.keys().next().unwrap().clone();
    // Another MAC (the MTU alone does not count: see
    // an_underlay_mtu_change_is_reported_not_reattached).
    actual.endpoints.get_mut(&key).unwrap().mac = MacAddr::from_ip(ip("10.0.1.99"));
    assert_eq!(
        diff(&actual, &p.state),
        vec![
            Op::Detach(key.clone()),
            Op::Attach(key.clone(), p.state.endpoints[&key].clone())
        ]
    );
}

#[test]
fn after_leaving_everything_owned_goes() {
    let p = world().plan();
    let empty = World {
        networks: vec![],
        containers: vec![],
        gossip: GossipView::default(),
        underlay: None,
        services: Vec::new(),
        remote: Vec::new(),
        node: None,
    }
    .plan();
    let ops = diff(&p.state, &empty.state);
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert!(matches!(ops[0], Op::Detach(_)));
    assert!(matches!(ops[1], Op::PeerDel { .. }));
    assert!(matches!(ops[2], Op::NetworkDel(_)));
    assert!(matches!(ops[3], Op::VtepDel(_)));
}

#[test]
fn only_control_owned_entries_are_observed() {
    use vxnet_api::dp::{FdbKind, Owner};
    let o = Observed {
        networks: vec![
            NetworkInfo {
                vni: vni(4097),
                encrypted: false,
                endpoints: 0,
                peers: 1,
                mtu: 1450,
                gateways: vec![],
                egress: false,
                ingress: false,
                flood: false,
                flood_rate: 1000,
                flooding: Default::default(),
                owner: Owner::Control,
            },
            NetworkInfo {
                vni: vni(5),
                encrypted: false,
                endpoints: 0,
                peers: 0,
                mtu: 1450,
                gateways: vec![],
                egress: false,
                ingress: false,
                flood: true,
                flood_rate: 1000,
                flooding: Default::default(),
                owner: Owner::User,
            },
        ],
        endpoints: vec![],
        fdb: vec![
            FdbEntry {
                vni: vni(4097),
                mac: Some(MacAddr::from_ip(ip("10.0.1.3"))),
                ips: vec![ip("10.0.1.3")],
                kind: FdbKind::Remote,
                endpoint: None,
                vtep: Some(IpAddr::from([192, 0, 2, 2])),
                owner: Owner::Control,
            },
            FdbEntry {
                vni: vni(4097),
                mac: Some(MacAddr::from_ip(ip("10.0.1.7"))),
                ips: vec![],
                kind: FdbKind::Remote,
                endpoint: None,
                vtep: Some(IpAddr::from([192, 0, 2, 7])),
                owner: Owner::User,
            },
        ],
        vteps: vec![],
        services: vec![],
        host_link: None,
        ports: vec![],
    };
    let s = observe(&o);
    assert_eq!(s.networks.len(), 1);
    assert!(
        !s.networks[&vni(4097)].flood,
        "the flooding setting is observed"
    );
    assert_eq!(s.peers.len(), 1);
}

/// The endpoint of `c1` in `w`'s plan.
fn c1_endpoint(w: &World) -> EndpointSpec {
    let key = EndpointKey::Netns {
        netns: "ns-c1".into(),
        ifname: "eth0".into(),
    };
    w.plan().state.endpoints[&key].clone()
}

#[test]
fn endpoint_mtu_comes_from_the_underlay_unless_given() {
    let mut w = world();
    // n1 is encrypted: 1500 - 50 - 42.
    assert_eq!(c1_endpoint(&w).mtu, 1408);
    w.underlay = Some(Underlay::new(1400, false));
    assert_eq!(c1_endpoint(&w).mtu, 1308);
    w.underlay = Some(Underlay::new(9000, true));
    assert_eq!(c1_endpoint(&w).mtu, 9000 - 70 - 42);
    w.networks[0].encrypted = false;
    assert_eq!(c1_endpoint(&w).mtu, 8930);
    // A given MTU wins whatever the underlay.
    w.networks[0].mtu = 1200;
    w.networks[0].mtu_explicit = Some(true);
    assert_eq!(c1_endpoint(&w).mtu, 1200);
    // A dataplane that does not say its underlay: the recorded MTU.
    w.networks[0].mtu_explicit = Some(false);
    w.networks[0].mtu = 1450;
    w.underlay = None;
    assert_eq!(c1_endpoint(&w).mtu, 1450);
}

#[test]
fn an_underlay_mtu_change_is_reported_not_reattached() {
    let mut w = world();
    let before = w.plan().state;
    w.underlay = Some(Underlay::new(1400, false));
    let after = w.plan().state;
    assert!(
        diff(&before, &after).is_empty(),
        "existing endpoints keep their MTU (a re-attach would cut their connections)"
    );
    let drift = mtu_drift(&before, &after);
    assert_eq!(drift.len(), 1);
    assert_eq!((drift[0].1, drift[0].2), (1408, 1308));
    // Anything else about the endpoint still re-attaches it.
    let mut moved = before.clone();
    for e in moved.endpoints.values_mut() {
        e.gateways.clear();
    }
    assert_eq!(diff(&moved, &after).len(), 2, "detach and attach");
    assert!(mtu_drift(&after, &after).is_empty());
}

#[test]
fn a_network_with_flooding_off_says_so() {
    let mut w = world();
    w.networks[0].flood = false;
    let p = w.plan();
    assert!(!p.state.networks[&vni(4097)].flood);
    let ops = diff(&world().plan().state, &p.state);
    assert_eq!(
        ops,
        vec![Op::NetworkAdd(
            vni(4097),
            NetSpec {
                flood: false,
                ..world().plan().state.networks[&vni(4097)].clone()
            }
        )]
    );
    let dp::Request::NetworkAdd(req) = ops[0].request() else {
        panic!("not a network_add")
    };
    assert!(!req.flood && req.encrypted);
}

pub(super) fn service(id: &str, network: &str, vip: &str, vip6: Option<&str>) -> Service {
    Service {
        id: id.into(),
        name: id.into(),
        mode: crate::model::ServiceMode::Replicated { replicas: 2 },
        endpoint_mode: EndpointMode::Vip,
        networks: vec![crate::model::ServiceNetwork {
            network: network.into(),
            aliases: Vec::new(),
        }],
        command: vec!["sleep".into()],
        env: Vec::new(),
        restart: crate::model::RestartCondition::Any,
        vips: vec![crate::model::VirtualIp {
            network: network.into(),
            ipv4: vip.parse().unwrap(),
            ipv6: vip6.map(|s| s.parse().unwrap()),
        }],
        created: 0,
        updated: 0,
        version: 1,
        ports: Vec::new(),
    }
}

pub(super) fn task_of(c: &mut Container, service: &str, slot: u64) {
    c.task = Some(crate::model::TaskInfo {
        service: service.into(),
        slot,
        version: 1,
        restart: crate::model::RestartCondition::Any,
    });
}

/// `world()` with service `web` on n1: task c1 here, task t2 on host 2
/// (alive: gossip has its record), task t3 on host 3 (not a member).
fn service_world() -> World {
    let mut w = world();
    task_of(&mut w.containers[0].0, "web", 1);
    let (mut t2, _) = container("t2", vec![attachment("n1", "10.0.1.3", Some("fd00::3"))]);
    task_of(&mut t2, "web", 2);
    t2.node = "node2".into();
    let (mut t3, _) = container("t3", vec![attachment("n1", "10.0.1.4", None)]);
    task_of(&mut t3, "web", 3);
    t3.node = "node3".into();
    w.remote = vec![t2, t3];
    w.services = vec![service("web", "n1", "10.0.1.100", Some("fd00::100"))];
    w
}

#[test]
fn a_vip_balances_over_the_tasks_alive_on_its_network() {
    let p = service_world().plan();
    let mac = |v4: &str| MacAddr::from_ip(ip(v4));
    assert_eq!(
        p.state.services,
        BTreeMap::from([
            (
                (vni(4097), ip("10.0.1.100")),
                BTreeSet::from([
                    (ip("10.0.1.2"), mac("10.0.1.2")),
                    (ip("10.0.1.3"), mac("10.0.1.3")),
                ])
            ),
            (
                (vni(4097), ip("fd00::100")),
                BTreeSet::from([
                    (ip("fd00::2"), mac("10.0.1.2")),
                    (ip("fd00::3"), mac("10.0.1.3")),
                ])
            ),
        ])
    );
}

#[test]
fn a_dead_task_leaves_the_backends_and_a_vip_without_tasks_stays() {
    let mut w = service_world();
    // Host 2 withdrew t2 (its command exited); c1 left this host.
    w.gossip
        .records
        .retain(|r| r.ip != ip("10.0.1.3") && r.ip != ip("fd00::3"));
    let mut other = container("c9", vec![attachment("n1", "10.0.1.9", None)]);
    other.0.task = None;
    w.containers = vec![other];
    let p = w.plan();
    assert_eq!(
        p.state.services[&(vni(4097), ip("10.0.1.100"))],
        BTreeSet::new()
    );
    assert_eq!(
        p.state.services[&(vni(4097), ip("fd00::100"))],
        BTreeSet::new()
    );
}

#[test]
fn no_vip_where_the_network_is_not_used_or_in_dnsrr_mode() {
    let mut w = service_world();
    w.services.push(service("db", "n2", "10.0.2.100", None));
    let mut rr = service("rr", "n1", "10.0.1.101", None);
    rr.endpoint_mode = EndpointMode::Dnsrr;
    rr.vips.clear();
    w.services.push(rr);
    let p = w.plan();
    let vips: Vec<IpAddr> = p.state.services.keys().map(|(_, v)| *v).collect();
    assert_eq!(vips, [ip("10.0.1.100"), ip("fd00::100")]);
}

#[test]
fn services_change_after_endpoints_and_leave_before_them() {
    let w = service_world();
    let p = w.plan();
    let ops = diff(&DpState::default(), &p.state);
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    let set = pos(&|o| matches!(o, Op::ServiceSet { .. }));
    assert!(set > pos(&|o| matches!(o, Op::Attach(..))), "{ops:?}");
    assert!(set > pos(&|o| matches!(o, Op::PeerAdd { .. })), "{ops:?}");
    // Already right: nothing to do.
    assert_eq!(diff(&p.state, &p.state), vec![]);
    // Everything goes: the VIPs before the endpoint and the network.
    let ops = diff(&p.state, &DpState::default());
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    let del = pos(&|o| matches!(o, Op::ServiceDel { .. }));
    assert!(del < pos(&|o| matches!(o, Op::Detach(..))), "{ops:?}");
    assert!(del < pos(&|o| matches!(o, Op::NetworkDel(..))), "{ops:?}");
    // A changed backend set is one replacement.
    let mut fewer = p.state.clone();
    fewer
        .services
        .get_mut(&(vni(4097), ip("10.0.1.100")))
        .unwrap()
        .retain(|(b, _)| *b != ip("10.0.1.3"));
    let ops = diff(&p.state, &fewer);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(&ops[0], Op::ServiceSet { backends, .. } if backends.len() == 1));
}

#[test]
fn only_control_owned_services_are_observed() {
    use vxnet_api::dp::{BackendInfo, Owner, ServiceInfo};
    let svc = |vip: &str, owner| ServiceInfo {
        vni: vni(4097),
        vip: ip(vip),
        mac: MacAddr::from_ip(ip(vip)),
        table_size: 65537,
        backends: vec![BackendInfo {
            ip: ip("10.0.1.2"),
            mac: MacAddr::from_ip(ip("10.0.1.2")),
            flows: 3,
        }],
        owner,
    };
    let o = Observed {
        services: vec![
            svc("10.0.1.100", Owner::Control),
            svc("10.0.1.200", Owner::User),
        ],
        ..Observed::default()
    };
    let s = observe(&o);
    assert_eq!(
        s.services,
        BTreeMap::from([(
            (vni(4097), ip("10.0.1.100")),
            BTreeSet::from([(ip("10.0.1.2"), MacAddr::from_ip(ip("10.0.1.2")))])
        )])
    );
}

#[test]
fn only_additions_are_additive() {
    let w = world();
    let want = w.plan().state;
    let empty = DpState::default();
    // Onto an empty dataplane everything the plan makes is an addition.
    assert!(diff(&empty, &want).iter().all(|op| additive(op, &empty)));
    // Taking it all away is not, nor is re-attaching what exists.
    assert!(!diff(&want, &empty).iter().any(|op| additive(op, &want)));
    let key = want.endpoints.keys().next().unwrap().clone();
    let spec = want.endpoints[&key].clone();
    assert!(!additive(&Op::Attach(key, spec), &want));
}
