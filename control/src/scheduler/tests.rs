//! Tables of services, tasks and nodes, and what the scheduler does.

use super::*;
use crate::model::{
    Availability, EndpointMode, NodeStatus, RestartCondition, Role, Service, ServiceMode, TaskInfo,
};
use vxnet_api::PublicKey;

fn node(id: &str, status: NodeStatus, availability: Availability) -> Node {
    Node {
        id: id.into(),
        hostname: id.into(),
        role: Role::Worker,
        availability,
        status,
        advertise_addr: "192.0.2.1".parse().unwrap(),
        data_path_addr: "192.0.2.1".parse().unwrap(),
        data_path_port: 4789,
        public_key: PublicKey::from_bytes([0; 32]),
        created: 0,
        down_reason: None,
        ingress_ipv4: None,
    }
}

fn ready(id: &str) -> Node {
    node(id, NodeStatus::Ready, Availability::Active)
}

fn service(id: &str, mode: ServiceMode) -> Service {
    Service {
        id: id.into(),
        name: id.into(),
        mode,
        endpoint_mode: EndpointMode::Vip,
        networks: vec![],
        command: vec!["sleep".into()],
        env: vec![],
        restart: RestartCondition::Any,
        vips: vec![],
        created: 0,
        updated: 0,
        version: 1,
        ports: Vec::new(),
    }
}

fn replicated(id: &str, n: u64) -> Service {
    service(id, ServiceMode::Replicated { replicas: n })
}

fn task(id: &str, service: &str, slot: u64, node: &str) -> Container {
    Container {
        id: id.into(),
        name: format!("{service}.{slot}.{id}"),
        node: node.into(),
        netns: None,
        attachments: vec![],
        created: 0,
        desired: DesiredState::Running,
        command: vec![],
        env: vec![],
        external: None,
        task: Some(TaskInfo {
            service: service.into(),
            slot,
            version: 1,
            restart: RestartCondition::Any,
        }),
        status: None,
    }
}

fn creates(a: &[Action]) -> Vec<(u64, String)> {
    a.iter()
        .filter_map(|x| match x {
            Action::Create { slot, node, .. } => Some((*slot, node.clone())),
            _ => None,
        })
        .collect()
}

fn removes(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|x| match x {
            Action::Remove { task, .. } | Action::Forget { task } => Some(task.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn replicas_spread_over_eligible_nodes_fewest_first() {
    let nodes = [ready("a"), ready("b"), ready("c")];
    let a = schedule(&[replicated("web", 5)], &[], &nodes, None);
    let c = creates(&a);
    assert_eq!(c.len(), 5);
    let per = |n: &str| c.iter().filter(|(_, x)| x == n).count();
    assert_eq!((per("a"), per("b"), per("c")), (2, 2, 1));
    // Slots are 1..=5, each once.
    let slots: BTreeSet<u64> = c.iter().map(|(s, _)| *s).collect();
    assert_eq!(slots, (1..=5).collect());
    // Applied, nothing is left to do.
    let tasks: Vec<Container> = c
        .iter()
        .map(|(slot, n)| task(&format!("t{slot}"), "web", *slot, n))
        .collect();
    assert!(schedule(&[replicated("web", 5)], &tasks, &nodes, None).is_empty());
}

#[test]
fn scaling_touches_only_the_slots_that_change() {
    let nodes = [ready("a"), ready("b")];
    let tasks = [
        task("t1", "web", 1, "a"),
        task("t2", "web", 2, "b"),
        task("t3", "web", 3, "a"),
    ];
    // Down to 2: slot 3 goes, 1 and 2 stay.
    let a = schedule(&[replicated("web", 2)], &tasks, &nodes, None);
    assert_eq!(removes(&a), ["t3"]);
    assert!(creates(&a).is_empty());
    // Up to 5: slots 4 and 5 are added, to the least loaded first.
    let a = schedule(&[replicated("web", 5)], &tasks, &nodes, None);
    assert!(removes(&a).is_empty());
    assert_eq!(creates(&a), [(4, "b".to_owned()), (5, "a".to_owned())]);
}

#[test]
fn a_down_nodes_tasks_are_forgotten_and_placed_elsewhere() {
    let nodes = [
        ready("a"),
        node("b", NodeStatus::Down, Availability::Active),
    ];
    let tasks = [task("t1", "web", 1, "a"), task("t2", "web", 2, "b")];
    let a = schedule(&[replicated("web", 2)], &tasks, &nodes, None);
    assert!(a.contains(&Action::Forget { task: "t2".into() }));
    assert_eq!(creates(&a), [(2, "a".to_owned())]);
}

#[test]
fn drain_moves_tasks_and_pause_keeps_them() {
    let nodes = [
        ready("a"),
        node("b", NodeStatus::Ready, Availability::Drain),
        node("c", NodeStatus::Ready, Availability::Pause),
    ];
    let tasks = [task("t1", "web", 1, "b"), task("t2", "web", 2, "c")];
    let a = schedule(&[replicated("web", 3)], &tasks, &nodes, None);
    assert_eq!(removes(&a), ["t1"]);
    // Slot 1 (from the drained node) and slot 3 both go to the only
    // eligible node; the paused node keeps slot 2 and gets nothing new.
    assert_eq!(creates(&a), [(1, "a".to_owned()), (3, "a".to_owned())]);
}

#[test]
fn global_runs_one_task_per_eligible_node() {
    let mut nodes = vec![ready("a"), ready("b")];
    let g = service("mon", ServiceMode::Global);
    let a = schedule(std::slice::from_ref(&g), &[], &nodes, None);
    assert_eq!(creates(&a), [(0, "a".to_owned()), (0, "b".to_owned())]);
    // A node that joins later gets its task.
    let tasks = [task("t1", "mon", 0, "a"), task("t2", "mon", 0, "b")];
    nodes.push(ready("c"));
    let a = schedule(std::slice::from_ref(&g), &tasks, &nodes, None);
    assert_eq!(creates(&a), [(0, "c".to_owned())]);
    // Two on one node: the younger goes.
    let mut twin = task("t9", "mon", 0, "a");
    twin.created = 5;
    let tasks = [task("t1", "mon", 0, "a"), twin, task("t2", "mon", 0, "b")];
    let a = schedule(&[g], &tasks, &nodes[..2], None);
    assert_eq!(removes(&a), ["t9"]);
}

#[test]
fn an_updated_template_replaces_tasks_and_a_removed_service_loses_them() {
    let nodes = [ready("a")];
    let mut s = replicated("web", 1);
    s.version = 2;
    let tasks = [task("t1", "web", 1, "a"), task("x1", "gone", 1, "a")];
    let a = schedule(&[s], &tasks, &nodes, None);
    let mut r = removes(&a);
    r.sort();
    assert_eq!(r, ["t1", "x1"]);
    assert_eq!(creates(&a), [(1, "a".to_owned())]);
}

#[test]
fn no_eligible_node_leaves_tasks_pending() {
    let nodes = [node("a", NodeStatus::Ready, Availability::Pause)];
    assert!(schedule(&[replicated("web", 2)], &[], &nodes, None).is_empty());
}

#[test]
fn tasks_on_their_way_out_do_not_hold_slots() {
    let nodes = [ready("a")];
    let mut leaving = task("t1", "web", 1, "a");
    leaving.desired = DesiredState::Removed;
    let a = schedule(&[replicated("web", 1)], &[leaving], &nodes, None);
    assert!(removes(&a).is_empty(), "already removed");
    assert_eq!(creates(&a), [(1, "a".to_owned())]);
}

fn on(mut t: Container, nets: &[&str]) -> Container {
    t.attachments = nets
        .iter()
        .enumerate()
        .map(|(i, n)| crate::model::Attachment {
            network: (*n).into(),
            ipv4: std::net::Ipv4Addr::new(10, 0, 0, 2 + i as u8),
            ipv6: None,
            mac: vxnet_api::MacAddr([2, 0x42, 10, 0, 0, 2 + i as u8]),
            aliases: vec![],
        })
        .collect();
    t
}

#[test]
fn tasks_follow_their_services_networks_with_the_mesh_first() {
    let nodes = [ready("a")];
    let mut web = replicated("web", 1);
    web.networks = vec![crate::model::ServiceNetwork {
        network: "app".into(),
        aliases: vec![],
    }];
    assert_eq!(task_networks(&web, Some("ing")), ["app"]);
    let t = on(task("t1", "web", 1, "a"), &["app"]);
    assert!(
        schedule(
            std::slice::from_ref(&web),
            std::slice::from_ref(&t),
            &nodes,
            Some("ing")
        )
        .is_empty()
    );
    // A port published through the mesh: the ingress network comes first,
    // and the task made before is replaced.
    web.ports = vec![crate::model::PortConfig {
        protocol: crate::model::PortProtocol::Tcp,
        target_port: 80,
        published_port: 8080,
        publish_mode: crate::model::PublishMode::Ingress,
    }];
    assert_eq!(task_networks(&web, Some("ing")), ["ing", "app"]);
    let a = schedule(std::slice::from_ref(&web), &[t], &nodes, Some("ing"));
    assert_eq!(removes(&a), ["t1"]);
    assert_eq!(creates(&a).len(), 1);
    let t = on(task("t2", "web", 1, "a"), &["ing", "app"]);
    assert!(
        schedule(
            std::slice::from_ref(&web),
            std::slice::from_ref(&t),
            &nodes,
            Some("ing")
        )
        .is_empty()
    );
    // `--network-add app2 --network-rm app`: the task stays, joins app2
    // and leaves app; it stays on the ingress network.
    web.networks[0].network = "app2".into();
    let a = schedule(
        std::slice::from_ref(&web),
        std::slice::from_ref(&t),
        &nodes,
        Some("ing"),
    );
    assert!(removes(&a).is_empty(), "{a:?}");
    assert!(a.contains(&Action::Disconnect {
        task: "t2".into(),
        network: "app".into(),
    }));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Connect { network, .. } if network == "app2"))
    );
    // The last mesh port unpublished: replaced (off the ingress network).
    web.ports.clear();
    assert_eq!(
        removes(&schedule(&[web], &[t], &nodes, Some("ing"))),
        ["t2"]
    );
}

#[test]
fn staying_tasks_follow_their_service_networks() {
    use crate::model::{Attachment, ServiceNetwork};
    let nodes = [ready("a")];
    let mut s = replicated("web", 1);
    s.networks = vec![
        ServiceNetwork {
            network: "n1".into(),
            aliases: vec![],
        },
        ServiceNetwork {
            network: "n2".into(),
            aliases: vec!["www".into()],
        },
    ];
    let mut t = task("t1", "web", 1, "a");
    let ipv4 = "10.0.0.2".parse().unwrap();
    for net in ["n1", "n0"] {
        t.attachments.push(Attachment {
            network: net.into(),
            ipv4,
            ipv6: None,
            mac: vxnet_api::MacAddr::from_ip(std::net::IpAddr::V4(ipv4)),
            aliases: vec![],
        });
    }
    let a = schedule(&[s.clone()], std::slice::from_ref(&t), &nodes, None);
    assert_eq!(
        a,
        [
            Action::Connect {
                task: "t1".into(),
                network: "n2".into(),
                aliases: vec!["www".into()],
            },
            Action::Disconnect {
                task: "t1".into(),
                network: "n0".into(),
            },
        ]
    );
    // A task on its way out is left alone.
    t.desired = DesiredState::Removed;
    assert!(
        schedule(&[s], &[t], &nodes, None)
            .iter()
            .all(|a| matches!(a, Action::Create { .. }))
    );
}
