//! What the embedded DNS server answers on this host, and which tasks are
//! alive to be answered or balanced to: pure functions of the desired
//! state and gossip's view, rebuilt by every reconciler pass.
//!
//! A task is alive on a network when its endpoint there is announced: by
//! gossip for another host's task (its node announces a task's endpoint
//! only while the task's command runs), by the local runtime for this
//! host's. So a dead or removed task leaves DNS answers and VIP backends
//! on every host as fast as gossip carries the withdrawal, and a Down
//! host's tasks with its membership.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::daemon::gossip::GossipView;
use crate::dns::{DnsEntry, EntryKind};
use crate::model::{Attachment, Container, DesiredState, EndpointMode, Network, Service};

/// (network id, address) of every live task endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live(BTreeSet<(String, IpAddr)>);

impl Live {
    /// From gossip (other hosts') and this host's running tasks.
    pub fn new(view: &GossipView, own_vtep: IpAddr, local_running: &[&Container]) -> Live {
        let members: BTreeSet<IpAddr> = view.members.iter().map(|m| m.data_addr).collect();
        let mut set: BTreeSet<(String, IpAddr)> = view
            .records
            .iter()
            .filter(|r| !r.removed && r.vtep != own_vtep && members.contains(&r.vtep))
            .map(|r| (r.network_id.clone(), r.ip))
            .collect();
        for c in local_running {
            for a in &c.attachments {
                for ip in a.ips() {
                    set.insert((a.network.clone(), ip));
                }
            }
        }
        Live(set)
    }

    /// Whether `c` counts on `network`: a standalone container while it
    /// is meant to run (a stopped one has no endpoint, so Docker drops its
    /// names until `container start`), a task when alive there.
    pub fn counts(&self, c: &Container, network: &str) -> bool {
        if c.desired != DesiredState::Running {
            return false;
        }
        match (&c.task, c.attachment(network)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(_), Some(a)) => self.0.contains(&(network.to_owned(), a.ipv4.into())),
        }
    }
}

/// The names container `c` answers to on its attachment `a` (each also
/// as `NAME.NETWORK`): its own name, a standalone container's aliases,
/// and its short ID, as Docker registers them.
pub fn own_names<'a>(
    c: &'a Container,
    a: &'a Attachment,
) -> impl Iterator<Item = (&'a str, EntryKind)> + 'a {
    // A task's aliases are its service's: they answer like the service
    // name (the VIP), in `dns_entries` (Docker's svcAliases).
    let aliases = a.aliases.iter().filter(|_| c.task.is_none());
    std::iter::once((c.name.as_str(), EntryKind::Container))
        .chain(aliases.map(|n| (n.as_str(), EntryKind::Alias)))
        // Docker also answers a container's short id.
        .chain(c.id.get(..12).map(|short| (short, EntryKind::Alias)))
}

/// The DNS table of the networks in `networks` (those used here), and
/// their names (for `NAME.NETWORK`).
pub fn dns_entries(
    networks: &[&Network],
    containers: &[Container],
    services: &[Service],
    live: &Live,
) -> (Vec<DnsEntry>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut push = |network: &str, name: &str, ip: IpAddr, kind: EntryKind| {
        out.push(DnsEntry {
            network: network.to_owned(),
            name: name.to_owned(),
            ip,
            kind,
        });
    };
    for net in networks {
        for c in containers.iter().filter(|c| live.counts(c, &net.id)) {
            let Some(a) = c.attachment(&net.id) else {
                continue;
            };
            for ip in a.ips() {
                for (name, kind) in own_names(c, a) {
                    push(&net.id, name, ip, kind);
                }
            }
        }
        for s in services {
            let Some(sn) = s.networks.iter().find(|n| n.network == net.id) else {
                continue;
            };
            let names: Vec<&str> = std::iter::once(s.name.as_str())
                .chain(sn.aliases.iter().map(String::as_str))
                .collect();
            if s.endpoint_mode == EndpointMode::Vip {
                if let Some(v) = s.vip(&net.id) {
                    for name in &names {
                        push(&net.id, name, IpAddr::V4(v.ipv4), EntryKind::ServiceVip);
                        if let Some(v6) = v.ipv6 {
                            push(&net.id, name, IpAddr::V6(v6), EntryKind::ServiceVip);
                        }
                    }
                }
            }
            let tasks = containers.iter().filter(|c| {
                c.task.as_ref().is_some_and(|t| t.service == s.id) && live.counts(c, &net.id)
            });
            for t in tasks {
                let Some(a) = t.attachment(&net.id) else {
                    continue;
                };
                for ip in a.ips() {
                    for name in &names {
                        push(&net.id, name, ip, EntryKind::ServiceTask);
                    }
                }
            }
        }
    }
    let names = networks
        .iter()
        .map(|n| (n.id.clone(), n.name.clone()))
        .collect();
    (out, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{EndpointRecord, NodeIdentity};
    use crate::model::{
        Attachment, Driver, Ipv4Config, RestartCondition, ServiceMode, ServiceNetwork, TaskInfo,
        VirtualIp,
    };
    use std::net::SocketAddr;
    use vxnet_api::{MacAddr, Vni};

    fn net() -> Network {
        Network {
            id: "n1".into(),
            name: "front".into(),
            driver: Driver::Overlay,
            vni: Vni::new(4097).unwrap(),
            ipv4: Ipv4Config {
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                ip_range: None,
            },
            ipv6: None,
            attachable: true,
            ingress: false,
            encrypted: false,
            mtu: 1450,
            mtu_explicit: Some(false),
            flood: true,
            internal: false,
            created: 0,
        }
    }

    fn container(id: &str, name: &str, ip: &str, task: Option<&str>) -> Container {
        let ipv4: std::net::Ipv4Addr = ip.parse().unwrap();
        Container {
            id: id.into(),
            name: name.into(),
            node: "x".into(),
            netns: None,
            attachments: vec![Attachment {
                network: "n1".into(),
                ipv4,
                ipv6: None,
                mac: MacAddr::from_ip(ipv4.into()),
                aliases: vec!["db".into()],
            }],
            created: 0,
            desired: DesiredState::Running,
            command: vec![],
            env: vec![],
            external: None,
            task: task.map(|s| TaskInfo {
                service: s.into(),
                slot: 1,
                version: 1,
                restart: RestartCondition::Any,
            }),
            status: None,
        }
    }

    fn service(mode: EndpointMode) -> Service {
        Service {
            id: "s1".into(),
            name: "web".into(),
            mode: ServiceMode::Replicated { replicas: 2 },
            endpoint_mode: mode,
            networks: vec![ServiceNetwork {
                network: "n1".into(),
                aliases: vec!["www".into()],
            }],
            command: vec![],
            env: vec![],
            restart: RestartCondition::Any,
            vips: vec![VirtualIp {
                network: "n1".into(),
                ipv4: "10.0.1.100".parse().unwrap(),
                ipv6: None,
            }],
            created: 0,
            updated: 0,
            version: 1,
            ports: Vec::new(),
        }
    }

    fn view(ips: &[&str]) -> GossipView {
        let member = NodeIdentity {
            node_id: "n2".into(),
            gossip_addr: SocketAddr::new("192.0.2.2".parse().unwrap(), 7946),
            data_addr: "192.0.2.2".parse().unwrap(),
            data_port: 4789,
            public_key: [2; 32],
            generation: 1,
        };
        GossipView {
            syncing: false,
            own: None,
            members: vec![member],
            records: ips
                .iter()
                .map(|ip| EndpointRecord {
                    network_id: "n1".into(),
                    ip: ip.parse().unwrap(),
                    mac: [0; 6],
                    vtep: "192.0.2.2".parse().unwrap(),
                    version: 1,
                    removed: false,
                })
                .collect(),
        }
    }

    fn find<'a>(e: &'a [DnsEntry], name: &str, kind: EntryKind) -> Vec<&'a str> {
        let mut v: Vec<&str> = e
            .iter()
            .filter(|x| x.name == name && x.kind == kind)
            .map(|x| {
                if x.ip.to_string() == "10.0.1.100" {
                    "vip"
                } else {
                    "task"
                }
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_of_containers_services_and_live_tasks_only() {
        let n = net();
        let containers = [
            container("c1aaaaaaaaaaaaaaaaaaaaaaa", "alpine1", "10.0.1.2", None),
            container("t1", "web.1.t1", "10.0.1.3", Some("s1")),
            container("t2", "web.2.t2", "10.0.1.4", Some("s1")),
        ];
        // Task t2 is not announced (dead, or its host is down).
        let live = Live::new(&view(&["10.0.1.3"]), "192.0.2.1".parse().unwrap(), &[]);
        let (e, names) = dns_entries(&[&n], &containers, &[service(EndpointMode::Vip)], &live);
        assert_eq!(names, [("n1".to_owned(), "front".to_owned())]);
        assert_eq!(find(&e, "alpine1", EntryKind::Container), ["task"]);
        assert_eq!(find(&e, "c1aaaaaaaaaa", EntryKind::Alias).len(), 1);
        assert_eq!(find(&e, "web.1.t1", EntryKind::Container).len(), 1);
        assert!(find(&e, "web.2.t2", EntryKind::Container).is_empty());
        assert_eq!(find(&e, "web", EntryKind::ServiceVip), ["vip"]);
        assert_eq!(find(&e, "www", EntryKind::ServiceVip), ["vip"]);
        assert_eq!(find(&e, "web", EntryKind::ServiceTask), ["task"]);
        // A standalone container's alias is its own; a task's aliases are
        // the service's, answered by the VIP only.
        assert_eq!(find(&e, "db", EntryKind::Alias), ["task"]);
        assert!(
            e.iter()
                .all(|x| x.kind != EntryKind::Alias || x.ip.to_string() != "10.0.1.3")
        );
        // DNSRR: no VIP entries.
        let (e, _) = dns_entries(&[&n], &containers, &[service(EndpointMode::Dnsrr)], &live);
        assert!(find(&e, "web", EntryKind::ServiceVip).is_empty());
        assert_eq!(find(&e, "web", EntryKind::ServiceTask), ["task"]);
    }

    #[test]
    fn a_local_running_task_is_live_and_a_stopped_or_removed_container_is_not() {
        let t = container("t3", "web.3.t3", "10.0.1.5", Some("s1"));
        let live = Live::new(&GossipView::default(), "192.0.2.1".parse().unwrap(), &[&t]);
        assert!(live.counts(&t, "n1"));
        let mut gone = container("c9", "old", "10.0.1.9", None);
        gone.desired = DesiredState::Removed;
        assert!(!live.counts(&gone, "n1"));
        assert!(!live.counts(&t, "n2"), "not on that network");
        let mut c = container("c8", "db", "10.0.1.8", None);
        assert!(
            live.counts(&c, "n1"),
            "a standalone container needs no announcement"
        );
        c.desired = DesiredState::Stopped;
        assert!(!live.counts(&c, "n1"), "stopped: no endpoint, no name");
        let (e, _) = dns_entries(&[&net()], &[c], &[], &live);
        assert!(e.is_empty(), "{e:?}");
    }
}
