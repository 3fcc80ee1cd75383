//! The routing mesh, host-mode ports, egress and the host link in the
//! plan: tables of desired state against what the dataplane must hold.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::tests::{World, attachment, container, ip, net, service, task_of, vni, world};
use super::*;
use crate::model::{NodeStatus, PortConfig, PortProtocol, PublishMode, Role};
use vxnet_api::model::Availability;

fn me() -> Node {
    Node {
        id: "me".into(),
        hostname: "host1".into(),
        role: Role::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: ip("192.0.2.1"),
        data_path_addr: ip("192.0.2.1"),
        data_path_port: 4789,
        public_key: PublicKey::from_bytes([1; 32]),
        created: 0,
        down_reason: None,
        ingress_ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
    }
}

fn ingress_net() -> Network {
    let mut n = net("ing", 4096, false, false);
    n.ingress = true;
    n.attachable = false;
    n
}

fn port(published: u16, target: u16, mode: PublishMode) -> PortConfig {
    PortConfig {
        protocol: PortProtocol::Tcp,
        target_port: target,
        published_port: published,
        publish_mode: mode,
    }
}

/// A swarm node with the ingress network; service `web` on n1 publishes
/// 8080 → 80 through the mesh, its tasks live on host 2 only.
fn mesh_world() -> World {
    let mut w = world();
    w.node = Some(me());
    w.networks.push(ingress_net());
    w.containers.clear();
    let (mut t2, _) = container(
        "t2",
        vec![
            attachment("ing", "10.0.0.5", None),
            attachment("n1", "10.0.1.3", None),
        ],
    );
    task_of(&mut t2, "web", 1);
    t2.node = "node2".into();
    w.remote = vec![t2];
    w.gossip
        .records
        .push(super::tests::record("ing", "10.0.0.5", 2, 1));
    w.gossip
        .records
        .push(super::tests::record("ing", "10.0.0.3", 2, 1));
    let mut web = service("web", "n1", "10.0.1.100", None);
    web.ports = vec![port(8080, 80, PublishMode::Ingress)];
    web.vips.push(crate::model::VirtualIp {
        network: "ing".into(),
        ipv4: "10.0.0.100".parse().unwrap(),
        ipv6: None,
    });
    w.services = vec![web];
    w
}

#[test]
fn outside_a_swarm_there_is_no_host_link() {
    let p = world().plan();
    assert_eq!(p.state.host_link, None);
    assert!(p.state.ports.is_empty());
    assert!(p.announce_node.is_empty());
}

#[test]
fn a_node_without_tasks_publishes_through_the_mesh() {
    let p = mesh_world().plan();
    let s = &p.state;
    // The ingress network is declared with no container here, the host
    // link stands for this node's ingress endpoint, which gossip announces.
    let ingress = &s.networks[&vni(4096)];
    assert!(ingress.ingress && ingress.egress);
    let link = s.host_link.as_ref().unwrap();
    assert_eq!(link.subnet.to_string(), "198.18.0.0/16");
    assert_eq!(
        link.ingress,
        Some(dp::IngressEndpoint {
            vni: vni(4096),
            ip: Ipv4Addr::new(10, 0, 0, 2)
        })
    );
    assert_eq!(
        p.announce_node,
        [(
            "ing".to_string(),
            ip("10.0.0.2"),
            MacAddr::from_ip(ip("10.0.0.2"))
        )]
    );
    // The port leads to the service's ingress VIP, whose backend is the
    // remote task's ingress address; the other node's ingress endpoint is
    // a peer.
    assert_eq!(
        s.ports,
        BTreeMap::from([(
            (PortProtocol::Tcp, 8080),
            PortSpec {
                target: 80,
                vni: vni(4096),
                to: PortTo::Vip(ip("10.0.0.100")),
            }
        )])
    );
    assert_eq!(s.services[&(vni(4096), ip("10.0.0.100"))].len(), 1);
    assert!(
        s.peers
            .contains_key(&(vni(4096), MacAddr::from_ip(ip("10.0.0.3"))))
    );
    // The service's own network is not declared here (no container uses it).
    assert!(!s.networks.contains_key(&vni(4097)));
}

#[test]
fn without_a_mesh_port_the_ingress_network_stays_away() {
    let mut w = mesh_world();
    w.services[0].ports.clear();
    let p = w.plan();
    assert!(!p.state.networks.contains_key(&vni(4096)));
    assert_eq!(p.state.host_link.as_ref().unwrap().ingress, None);
    assert!(p.state.ports.is_empty());
    assert!(p.announce_node.is_empty());
}

#[test]
fn host_mode_publishes_only_where_a_task_is_alive() {
    let mut w = mesh_world();
    w.services[0].ports = vec![port(9090, 80, PublishMode::Host)];
    // No task here: nothing published.
    assert!(w.plan().state.ports.is_empty());
    // A task here (running, so alive), on n1 first.
    let (mut t1, rt) = container("t1", vec![attachment("n1", "10.0.1.2", None)]);
    task_of(&mut t1, "web", 2);
    t1.node = "me".into();
    w.containers = vec![(t1, rt)];
    let p = w.plan();
    assert_eq!(
        p.state.ports[&(PortProtocol::Tcp, 9090)],
        PortSpec {
            target: 80,
            vni: vni(4097),
            to: PortTo::Backends(vec![dp::BackendSpec {
                ip: ip("10.0.1.2"),
                mac: Some(MacAddr::from_ip(ip("10.0.1.2"))),
            }]),
        }
    );
}

#[test]
fn internal_networks_have_no_egress_and_no_default_route() {
    let mut w = world();
    w.networks[1].internal = true;
    let (c, rt) = container(
        "c2",
        vec![
            attachment("n2", "10.0.2.2", None),
            attachment("n1", "10.0.1.2", None),
        ],
    );
    w.containers = vec![(c, rt)];
    let p = w.plan();
    assert!(!p.state.networks[&vni(4098)].egress);
    assert!(p.state.networks[&vni(4097)].egress);
    let route = |ifname: &str| {
        p.state.endpoints[&EndpointKey::Netns {
            netns: "ns-c2".into(),
            ifname: ifname.into(),
        }]
            .gateways
            .clone()
    };
    // eth0 is the internal network: the default route is through eth1.
    assert!(route("eth0").is_empty());
    assert_eq!(route("eth1"), vec![ip("10.0.1.1")]);
    // Only internal networks: no default route at all.
    let (c, rt) = container("c3", vec![attachment("n2", "10.0.2.3", None)]);
    w.containers = vec![(c, rt)];
    let p = w.plan();
    assert!(p.state.endpoints.values().all(|e| e.gateways.is_empty()));
}

#[test]
fn ports_follow_their_service_and_a_new_link_gets_them_again() {
    let p = mesh_world().plan();
    let ops = diff(&DpState::default(), &p.state);
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    let link = pos(&|o| matches!(o, Op::HostLinkSet(_)));
    let port = pos(&|o| matches!(o, Op::PortSet { .. }));
    let svc = pos(&|o| matches!(o, Op::ServiceSet { .. }));
    assert!(link < port && svc < port, "{ops:?}");
    assert!(pos(&|o| matches!(o, Op::NetworkAdd(..))) < link, "{ops:?}");
    assert!(diff(&p.state, &p.state).is_empty());
    // The service goes: its port before its VIP.
    let mut w = mesh_world();
    w.services.clear();
    let gone = w.plan();
    let ops = diff(&p.state, &gone.state);
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    assert!(
        pos(&|o| matches!(o, Op::PortDel { .. })) < pos(&|o| matches!(o, Op::ServiceDel { .. })),
        "{ops:?}"
    );
    // The link changes (another subnet): it is set again, and its ports
    // with it, since a new link starts without any.
    let mut actual = p.state.clone();
    if let Some(h) = actual.host_link.as_mut() {
        h.subnet = "198.19.0.0/16".parse().unwrap();
    }
    let ops = diff(&actual, &p.state);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(matches!(ops[0], Op::HostLinkSet(_)));
    assert!(matches!(ops[1], Op::PortSet { .. }));
    // Leaving the swarm: ports and link go.
    let ops = diff(&p.state, &world().plan().state);
    assert!(ops.iter().any(|o| matches!(o, Op::HostLinkDel)), "{ops:?}");
}

#[test]
fn what_the_firewall_lost_is_not_observed() {
    use vxnet_api::dp::{HostLinkInfo, Owner, PortInfo};
    let info = |ok| HostLinkInfo {
        ifname: "vxnet0".into(),
        subnet: "198.18.0.0/16".parse().unwrap(),
        host_ip: "198.18.0.1".parse().unwrap(),
        mesh_ip: "198.18.0.2".parse().unwrap(),
        mac: MacAddr::from_ip(ip("10.0.0.2")),
        mtu: 1450,
        ingress: None,
        firewall_ok: ok,
        firewall_error: None,
        egress_addresses: 0,
        owner: Owner::Control,
    };
    let port = |published, in_firewall, owner| PortInfo {
        protocol: PortProtocol::Tcp,
        published,
        target: 80,
        vni: vni(4096),
        to: PortTo::Vip(ip("10.0.0.100")),
        in_firewall,
        owner,
    };
    let o = Observed {
        host_link: Some(info(true)),
        ports: vec![
            port(8080, true, Owner::Control),
            port(8081, false, Owner::Control),
            port(8082, true, Owner::User),
        ],
        ..Observed::default()
    };
    let s = observe(&o);
    assert!(s.host_link.is_some());
    assert_eq!(
        s.ports.keys().collect::<Vec<_>>(),
        [&(PortProtocol::Tcp, 8080)]
    );
    let o = Observed {
        host_link: Some(info(false)),
        ..Observed::default()
    };
    assert_eq!(observe(&o).host_link, None, "a broken table is set again");
}

#[test]
fn a_fresh_dataplane_gets_egress_after_the_ports() {
    // A restarted dataplane: everything is added anew. The ingress
    // network's egress comes only after its ports, so a task's segment of
    // a published-port connection never leaves as egress in between.
    let p = mesh_world().plan();
    let ops = diff(&DpState::default(), &p.state);
    let adds: Vec<(usize, bool)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Op::NetworkAdd(v, s) | Op::EgressOn(v, s) if *v == vni(4096) => Some((i, s.egress)),
            _ => None,
        })
        .collect();
    let last_port = ops
        .iter()
        .rposition(|o| matches!(o, Op::PortSet { .. }))
        .unwrap();
    assert_eq!(adds.len(), 2, "{ops:?}");
    assert!(!adds[0].1, "added without egress first: {ops:?}");
    assert!(
        adds[1].1 && adds[1].0 > last_port,
        "egress after the ports: {ops:?}"
    );
    // Once applied, nothing is left to do; a network whose ports are
    // already there gets egress at once.
    assert!(diff(&p.state, &p.state).is_empty());
    let mut actual = p.state.clone();
    if let Some(n) = actual.networks.get_mut(&vni(4096)) {
        n.egress = false;
    }
    let ops = diff(&actual, &p.state);
    assert!(
        matches!(&ops[..], [Op::NetworkAdd(_, s)] if s.egress),
        "a network whose ports are there gets egress in its own add: {ops:?}"
    );
}
