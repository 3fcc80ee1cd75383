//! Container records: `container run` (create), `network connect`
//! (attach), `network disconnect` (detach), `container rm`, `ls` and
//! `inspect`.
//!
//! A container's addresses are allocated from each network's
//! [`AddressSpace`] and written as [`AddressAlloc`] records in the same
//! transaction as the container record, so a crash between the two cannot
//! leak or duplicate an address. Standalone containers may only join
//! attachable networks (the ingress network never is).

use std::net::IpAddr;

use vxnet_api::MacAddr;

use ipnet::IpNet;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
pub use vxnet_api::ctl::EndpointRequest as NetworkRequest;

use crate::error::{ControlError, Result};
use crate::ipam::AddressSpace;
use crate::model::{
    AddressAlloc, AddressOwner, Attachment, Container, DesiredState, Network, Node, Service,
    UnixTime, new_id,
};
use crate::networks::{resolve, resolve_network, valid_name};
use crate::store::{Store, StoreExt, Txn};

/// Refuses a name a container or a service already answers to in DNS.
pub(crate) fn check_name_free<S: Store + ?Sized>(store: &S, name: &str) -> Result<()> {
    if let Some(c) = store
        .list::<Container>()?
        .into_iter()
        .find(|c| c.name == name)
    {
        return Err(ControlError::ContainerNameInUse {
            name: name.to_string(),
            id: c.id,
        });
    }
    if let Some(s) = store
        .list::<Service>()?
        .into_iter()
        .find(|s| s.name == name)
    {
        return Err(ControlError::ServiceNameInUse {
            name: name.to_string(),
            id: s.id,
        });
    }
    Ok(())
}

/// `vxnet container run` (or `network connect --netns` for another
/// runtime's container) as the daemon receives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub name: String,
    /// The node it runs on.
    pub node: String,
    #[serde(default)]
    pub netns: Option<String>,
    /// At least one; the first is the primary network.
    pub networks: Vec<NetworkRequest>,
    /// What the node's daemon runs in it (detached), if anything.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Another runtime's container (`network connect --netns|--veth`).
    #[serde(default)]
    pub external: Option<crate::model::External>,
    /// A service's task (the scheduler's).
    #[serde(default)]
    pub task: Option<crate::model::TaskInfo>,
    /// The id to give it (a task's name contains it); a new one if absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// The container named by `query` (id, name or unique id prefix).
pub fn resolve_container<S: Store + ?Sized>(store: &S, query: &str) -> Result<Container> {
    let all = store.list::<Container>()?;
    match resolve(&all, query, |c| &c.id, |c| &c.name) {
        Ok(Some(c)) => Ok(c.clone()),
        Ok(None) => Err(ControlError::ContainerNotFound(query.to_owned())),
        Err(ids) => Err(ControlError::AmbiguousContainer(
            query.to_owned(),
            ids.join(", "),
        )),
    }
}

/// The allocations of one network currently in the store.
fn allocations<S: Store + ?Sized>(store: &S, network: &str) -> Result<Vec<AddressAlloc>> {
    Ok(store
        .list::<AddressAlloc>()?
        .into_iter()
        .filter(|a| a.network == network)
        .collect())
}

fn owner_name(allocs: &[AddressAlloc], containers: &[Container], ip: IpAddr) -> String {
    match allocs.iter().find(|a| a.ip == ip).map(|a| &a.owner) {
        Some(AddressOwner::Gateway) => "the gateway".to_owned(),
        Some(AddressOwner::Container(id)) => match containers.iter().find(|c| &c.id == id) {
            Some(c) => format!("container {}", c.name),
            None => format!("container {id}"),
        },
        Some(AddressOwner::Service(id)) => format!("the virtual IP of service {id}"),
        Some(AddressOwner::Node(id)) => format!("the ingress endpoint of node {id}"),
        None => "another endpoint".to_owned(),
    }
}

/// [`allocate`] for a container; standalone containers join attachable
/// networks only (Docker's rule), a service's tasks any swarm network.
fn attach<S: Store + ?Sized>(
    store: &S,
    txn: &mut Txn,
    net: &Network,
    c: (&str, bool),
    req: &NetworkRequest,
) -> Result<Attachment> {
    let (container_id, task) = c;
    if !net.attachable && !task {
        return Err(ControlError::NotAttachable(net.name.clone()));
    }
    allocate(
        store,
        txn,
        net,
        &AddressOwner::Container(container_id.to_owned()),
        req,
    )
}

/// Allocates the addresses of `owner` on `net` (the ones `req` asks for,
/// else the next free ones) and adds their records to `txn`.
pub(crate) fn allocate<S: Store + ?Sized>(
    store: &S,
    txn: &mut Txn,
    net: &Network,
    owner: &AddressOwner,
    req: &NetworkRequest,
) -> Result<Attachment> {
    let mac = match req.mac {
        Some(m) if m.is_multicast() || m.is_zero() => {
            return Err(ControlError::InvalidMac(m.to_string()));
        }
        m => m,
    };
    for a in &req.aliases {
        if !crate::networks::valid_name(a) {
            return Err(ControlError::InvalidName(a.clone()));
        }
    }
    let allocs = allocations(store, &net.id)?;
    let containers = store.list::<Container>()?;
    let taken_by = |ip| owner_name(&allocs, &containers, ip);
    let mut take = |subnet: IpNet, range: Option<IpNet>, want: Option<IpAddr>| -> Result<IpAddr> {
        let mut space = AddressSpace::new(&net.name, subnet, range)?;
        for a in &allocs {
            space.mark_taken(a.ip);
        }
        let ip = match want {
            Some(ip) => space.take(ip, taken_by)?,
            None => space.allocate()?,
        };
        txn.require_absent::<AddressAlloc>(&AddressAlloc::key_of(&net.id, ip));
        txn.put(&AddressAlloc {
            network: net.id.clone(),
            ip,
            owner: owner.clone(),
        })?;
        Ok(ip)
    };
    let ipv4 = match take(
        IpNet::V4(net.ipv4.subnet),
        net.ipv4.ip_range.map(IpNet::V4),
        req.ipv4.map(IpAddr::V4),
    )? {
        IpAddr::V4(a) => a,
        // An IPv4 space only yields IPv4 addresses.
        IpAddr::V6(a) => {
            return Err(ControlError::InvalidAddressing(format!(
                "{a} is not an IPv4 address"
            )));
        }
    };
    let ipv6 = match (&net.ipv6, req.ipv6) {
        (Some(c), want) => match take(
            IpNet::V6(c.subnet),
            c.ip_range.map(IpNet::V6),
            want.map(IpAddr::V6),
        )? {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(a) => {
                return Err(ControlError::InvalidAddressing(format!(
                    "{a} is not an IPv6 address"
                )));
            }
        },
        (None, Some(want)) => {
            return Err(ControlError::AddressNotUsable {
                ip: IpAddr::V6(want),
                network: net.name.clone(),
                reason: "the network has no IPv6 subnet".into(),
            });
        }
        (None, None) => None,
    };
    Ok(Attachment {
        network: net.id.clone(),
        ipv4,
        ipv6,
        mac: mac.unwrap_or_else(|| MacAddr::from_ip(IpAddr::V4(ipv4))),
        aliases: req.aliases.clone(),
    })
}

fn release(txn: &mut Txn, a: &Attachment) {
    txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&a.network, IpAddr::V4(a.ipv4)));
    if let Some(v6) = a.ipv6 {
        txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&a.network, IpAddr::V6(v6)));
    }
}

/// `vxnet container run`: records the container with an address on every
/// requested network, all or nothing.
pub fn create_container<S: Store + ?Sized>(
    store: &S,
    req: &CreateContainer,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<Container> {
    if !valid_name(&req.name) {
        return Err(ControlError::InvalidContainerName(req.name.clone()));
    }
    check_name_free(store, &req.name)?;
    if store.get::<Node>(&req.node)?.is_none() {
        return Err(ControlError::NodeNotFound(req.node.clone()));
    }
    if req.networks.is_empty() {
        return Err(ControlError::NoNetwork);
    }
    let id = req.id.clone().unwrap_or_else(|| new_id(rng));
    let mut txn = Txn::new();
    let mut attachments: Vec<Attachment> = Vec::new();
    for nr in &req.networks {
        let net = resolve_network(store, &nr.network)?;
        if attachments.iter().any(|a| a.network == net.id) {
            return Err(ControlError::AlreadyAttached {
                container: req.name.clone(),
                network: net.name,
            });
        }
        attachments.push(attach(
            store,
            &mut txn,
            &net,
            (&id, req.task.is_some()),
            nr,
        )?);
    }
    let c = Container {
        id,
        name: req.name.clone(),
        node: req.node.clone(),
        netns: req.netns.clone(),
        attachments,
        created: now,
        desired: DesiredState::Running,
        command: req.command.clone(),
        env: req.env.clone(),
        external: req.external.clone(),
        task: req.task.clone(),
        status: None,
    };
    txn.require_absent::<Container>(&c.id);
    txn.put(&c)?;
    store.apply(&txn)?;
    Ok(c)
}

/// `vxnet network connect NET CONTAINER`.
pub fn connect<S: Store + ?Sized>(
    store: &S,
    container: &str,
    req: &NetworkRequest,
) -> Result<Container> {
    let mut c = resolve_container(store, container)?;
    let net = resolve_network(store, &req.network)?;
    if c.attachment(&net.id).is_some() {
        return Err(ControlError::AlreadyAttached {
            container: c.name,
            network: net.name,
        });
    }
    let mut txn = Txn::new();
    let a = attach(store, &mut txn, &net, (&c.id, c.task.is_some()), req)?;
    c.attachments.push(a);
    txn.put(&c)?;
    store.apply(&txn)?;
    Ok(c)
}

/// `vxnet network disconnect NET CONTAINER`: releases its addresses there.
pub fn disconnect<S: Store + ?Sized>(
    store: &S,
    container: &str,
    network: &str,
) -> Result<Container> {
    let mut c = resolve_container(store, container)?;
    let net = resolve_network(store, network)?;
    let Some(pos) = c.attachments.iter().position(|a| a.network == net.id) else {
        return Err(ControlError::NotAttached {
            container: c.name,
            network: net.name,
        });
    };
    let a = c.attachments.remove(pos);
    let mut txn = Txn::new();
    release(&mut txn, &a);
    txn.put(&c)?;
    store.apply(&txn)?;
    Ok(c)
}

/// Records the container's network namespace once the runtime made it.
pub fn set_netns<S: Store + ?Sized>(store: &S, container: &str, netns: &str) -> Result<Container> {
    let mut c = resolve_container(store, container)?;
    c.netns = Some(netns.to_owned());
    store.put(&c)?;
    Ok(c)
}

/// `vxnet container rm`: forgets the container and releases its addresses.
pub fn remove_container<S: Store + ?Sized>(store: &S, container: &str) -> Result<Container> {
    let c = resolve_container(store, container)?;
    let mut txn = Txn::new();
    for a in &c.attachments {
        release(&mut txn, a);
    }
    txn.delete::<Container>(&c.id);
    store.apply(&txn)?;
    Ok(c)
}

/// `vxnet container ls`: every container, or those on `node`; by name.
pub fn list_containers<S: Store + ?Sized>(store: &S, node: Option<&str>) -> Result<Vec<Container>> {
    let mut v: Vec<Container> = store
        .list::<Container>()?
        .into_iter()
        .filter(|c| node.is_none_or(|n| c.node == n))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::{add_worker, init};
    use crate::model::test_rng::TestRng;
    use crate::networks::{
        CreateNetwork, INGRESS_NAME, create_network, inspect_network, networks_on_node,
        remove_network,
    };
    use crate::store::{MemStore, Record, RedbStore};
    use rand_core::RngCore;
    use std::collections::BTreeSet;

    fn net(s: &dyn Store, name: &str, attachable: bool) -> Network {
        let r = CreateNetwork {
            name: name.into(),
            attachable,
            ..CreateNetwork::default()
        };
        create_network(s, &r, 1, &mut TestRng::from_name(name)).unwrap()
    }

    fn on(network: &str) -> NetworkRequest {
        NetworkRequest {
            network: network.into(),
            ..NetworkRequest::default()
        }
    }

    fn run(
        s: &dyn Store,
        rng: &mut TestRng,
        name: &str,
        node: &str,
        nets: &[&str],
    ) -> Result<Container> {
        create_container(
            s,
            &CreateContainer {
                name: name.into(),
                node: node.into(),
                netns: None,
                networks: nets.iter().map(|n| on(n)).collect(),
                ..Default::default()
            },
            5,
            rng,
        )
    }

    #[test]
    fn run_connect_disconnect_rm() {
        let s = MemStore::new();
        let (_, manager) = init(&s);
        let mut rng = TestRng(99);
        let a = net(&s, "a", true);
        let b = net(&s, "b", true);
        let c = run(&s, &mut rng, "web", &manager.id, &["a"]).unwrap();
        assert_eq!(c.attachments.len(), 1);
        assert_eq!(c.attachments[0].ipv4, std::net::Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(c.attachments[0].mac.to_string(), "02:42:0a:00:01:02");
        assert_eq!(c.node, manager.id);

        let c2 = run(&s, &mut rng, "db", &manager.id, &["a"]).unwrap();
        assert_eq!(c2.attachments[0].ipv4, std::net::Ipv4Addr::new(10, 0, 1, 3));

        let c = connect(&s, "web", &on("b")).unwrap();
        assert_eq!(c.attachments[1].network, b.id);
        assert_eq!(c.attachments[1].ipv4, std::net::Ipv4Addr::new(10, 0, 2, 2));
        assert!(matches!(
            connect(&s, "web", &on("b")),
            Err(ControlError::AlreadyAttached { .. })
        ));

        let d = inspect_network(&s, "a").unwrap();
        let names: Vec<&str> = d.containers.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].hostname, "host1");

        // rm of a used network names the users and changes nothing.
        let e = remove_network(&s, "a").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("container web") && msg.contains("container db"),
            "{msg}"
        );
        assert!(msg.contains("disconnect or remove them"), "{msg}");
        assert_eq!(s.get::<Network>(&a.id).unwrap(), Some(a.clone()));

        let c = disconnect(&s, "web", "a").unwrap();
        assert_eq!(c.attachments.len(), 1);
        assert!(matches!(
            disconnect(&s, "web", "a"),
            Err(ControlError::NotAttached { .. })
        ));
        // The released address is free again.
        assert!(
            s.get::<AddressAlloc>(&AddressAlloc::key_of(&a.id, "10.0.1.2".parse().unwrap()))
                .unwrap()
                .is_none()
        );
        remove_container(&s, "db").unwrap();
        assert!(matches!(
            resolve_container(&s, "db"),
            Err(ControlError::ContainerNotFound(_))
        ));
        remove_network(&s, "a").unwrap();
        // Only the gateway of b and web's address on b are left.
        let left: BTreeSet<String> = s
            .list::<AddressAlloc>()
            .unwrap()
            .iter()
            .filter(|x| {
                x.network
                    != crate::networks::resolve_network(&s, INGRESS_NAME)
                        .unwrap()
                        .id
            })
            .map(|x| x.ip.to_string())
            .collect();
        assert_eq!(left, BTreeSet::from(["10.0.2.1".into(), "10.0.2.2".into()]));
    }

    #[test]
    fn refusals_are_clear_and_atomic() {
        let s = MemStore::new();
        let (_, manager) = init(&s);
        let mut rng = TestRng(5);
        net(&s, "open", true);
        net(&s, "svc", false);
        let e = run(&s, &mut rng, "x", &manager.id, &["svc"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network svc is not attachable: standalone containers can only join networks created with --attachable"
        );
        assert!(matches!(
            run(&s, &mut rng, "x", &manager.id, &[INGRESS_NAME]),
            Err(ControlError::NotAttachable(_))
        ));
        // Second network refused: the first network's address is not kept.
        assert!(run(&s, &mut rng, "x", &manager.id, &["open", "svc"]).is_err());
        assert!(run(&s, &mut rng, "x", &manager.id, &["open", "open"]).is_err());
        assert!(matches!(
            run(&s, &mut rng, "x", &manager.id, &[]),
            Err(ControlError::NoNetwork)
        ));
        assert!(matches!(
            run(&s, &mut rng, "x", "nonode", &["open"]),
            Err(ControlError::NodeNotFound(_))
        ));
        assert!(matches!(
            run(&s, &mut rng, "bad name", &manager.id, &["open"]),
            Err(ControlError::InvalidContainerName(_))
        ));
        assert!(s.list::<Container>().unwrap().is_empty());
        let open = resolve_network(&s, "open").unwrap();
        assert_eq!(
            allocations(&s, &open.id).unwrap().len(),
            1,
            "only the gateway"
        );

        run(&s, &mut rng, "x", &manager.id, &["open"]).unwrap();
        let e = run(&s, &mut rng, "x", &manager.id, &["open"]).unwrap_err();
        assert!(
            e.to_string().contains("container name 'x' is already used"),
            "{e}"
        );
    }

    #[test]
    fn requested_addresses() {
        let s = MemStore::new();
        let (_, manager) = init(&s);
        let mut rng = TestRng(8);
        let r = CreateNetwork {
            name: "n".into(),
            attachable: true,
            subnets: vec![
                "172.30.0.0/24".parse().unwrap(),
                "fd00:30::/64".parse().unwrap(),
            ],
            ..CreateNetwork::default()
        };
        create_network(&s, &r, 1, &mut rng).unwrap();
        let mk = |name: &str, v4: Option<&str>, v6: Option<&str>, rng: &mut TestRng| {
            create_container(
                &s,
                &CreateContainer {
                    name: name.into(),
                    node: manager.id.clone(),
                    netns: Some(format!("/run/netns/{name}")),
                    networks: vec![NetworkRequest {
                        network: "n".into(),
                        ipv4: v4.map(|x| x.parse().unwrap()),
                        ipv6: v6.map(|x| x.parse().unwrap()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                1,
                rng,
            )
        };
        let a = mk("a", Some("172.30.0.50"), Some("fd00:30::50"), &mut rng).unwrap();
        assert_eq!(a.attachments[0].ipv4.to_string(), "172.30.0.50");
        assert_eq!(a.attachments[0].ipv6.unwrap().to_string(), "fd00:30::50");
        let b = mk("b", None, None, &mut rng).unwrap();
        assert_eq!(b.attachments[0].ipv6.unwrap().to_string(), "fd00:30::2");
        let e = mk("c", Some("172.30.0.50"), None, &mut rng).unwrap_err();
        assert!(
            e.to_string()
                .contains("already in use on network n by container a"),
            "{e}"
        );
        let e = mk("c", Some("172.30.0.1"), None, &mut rng).unwrap_err();
        assert!(e.to_string().contains("by the gateway"), "{e}");
        let e = mk("c", Some("172.31.0.9"), None, &mut rng).unwrap_err();
        assert!(e.to_string().contains("outside subnet"), "{e}");
        let e = mk("c", None, Some("fd00:30::50"), &mut rng).unwrap_err();
        assert!(matches!(e, ControlError::AddressInUse { .. }), "{e}");
        // After rm the address can be requested again.
        remove_container(&s, "a").unwrap();
        assert!(mk("c", Some("172.30.0.50"), None, &mut rng).is_ok());
        // IPv6 on an IPv4-only network is refused.
        net(&s, "v4only", true);
        let e = connect(
            &s,
            "b",
            &NetworkRequest {
                network: "v4only".into(),
                ipv4: None,
                ipv6: Some("fd00::9".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no IPv6 subnet"), "{e}");
        assert_eq!(
            set_netns(&s, "b", "/proc/1/ns/net")
                .unwrap()
                .netns
                .as_deref(),
            Some("/proc/1/ns/net")
        );
    }

    #[test]
    fn networks_follow_their_users_per_node() {
        let s = MemStore::new();
        let (_, manager) = init(&s);
        let worker = add_worker(&s, "host2");
        let mut rng = TestRng(3);
        net(&s, "test-net", true);
        net(&s, "other", true);
        assert!(networks_on_node(&s, &worker.id).unwrap().is_empty());
        run(&s, &mut rng, "alpine1", &manager.id, &["test-net"]).unwrap();
        assert!(networks_on_node(&s, &worker.id).unwrap().is_empty());
        run(&s, &mut rng, "alpine2", &worker.id, &["test-net", "other"]).unwrap();
        run(&s, &mut rng, "alpine3", &worker.id, &["test-net"]).unwrap();
        let names = |node: &str| -> Vec<String> {
            networks_on_node(&s, node)
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect()
        };
        assert_eq!(names(&worker.id), ["other", "test-net"]);
        assert_eq!(names(&manager.id), ["test-net"]);
        let d = inspect_network(&s, "test-net").unwrap();
        let hosts: Vec<&str> = d.peers.iter().map(|p| p.hostname.as_str()).collect();
        assert_eq!(hosts.len(), 2);
        assert!(hosts.contains(&"host1") && hosts.contains(&"host2"));
        remove_container(&s, "alpine2").unwrap();
        assert_eq!(names(&worker.id), ["test-net"]);
        remove_container(&s, "alpine3").unwrap();
        assert!(names(&worker.id).is_empty());
        assert_eq!(list_containers(&s, Some(&worker.id)).unwrap().len(), 0);
        assert_eq!(list_containers(&s, None).unwrap().len(), 1);
    }

    #[test]
    fn exhaustion_and_no_double_allocation_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut rng = TestRng(77);
        let node;
        {
            let s = RedbStore::open(&path).unwrap();
            node = init(&s).1;
            let r = CreateNetwork {
                name: "tiny".into(),
                attachable: true,
                subnets: vec!["192.168.50.0/29".parse().unwrap()],
                ..CreateNetwork::default()
            };
            create_network(&s, &r, 1, &mut rng).unwrap();
            // /29: .1 gateway, .2-.6 for containers, .7 broadcast.
            for i in 0..3 {
                run(&s, &mut rng, &format!("c{i}"), &node.id, &["tiny"]).unwrap();
            }
            remove_container(&s, "c1").unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        let ips = |s: &RedbStore| -> Vec<String> {
            list_containers(s, None)
                .unwrap()
                .iter()
                .map(|c| c.attachments[0].ipv4.to_string())
                .collect()
        };
        assert_eq!(ips(&s), ["192.168.50.2", "192.168.50.4"]);
        let c = run(&s, &mut rng, "d1", &node.id, &["tiny"]).unwrap();
        assert_eq!(c.attachments[0].ipv4.to_string(), "192.168.50.3");
        run(&s, &mut rng, "d2", &node.id, &["tiny"]).unwrap();
        run(&s, &mut rng, "d3", &node.id, &["tiny"]).unwrap();
        let e = run(&s, &mut rng, "d4", &node.id, &["tiny"]).unwrap_err();
        assert!(matches!(e, ControlError::AddressesExhausted { .. }));
        assert!(
            e.to_string()
                .contains("no free address left in 192.168.50.0/29 of network tiny"),
            "{e}"
        );
        let all: BTreeSet<String> = ips(&s).into_iter().collect();
        assert_eq!(all.len(), 5);
    }

    /// Property: random run/connect/disconnect/rm sequences keep every
    /// address held by exactly one owner, and the store's allocation records
    /// match the containers' attachments exactly. `reopen` is called every
    /// `reopen_every` steps to simulate a manager restart.
    fn random_operations(
        mut s: Box<dyn Store>,
        mut reopen: impl FnMut(Box<dyn Store>) -> Box<dyn Store>,
        steps: usize,
        reopen_every: usize,
    ) {
        let (_, manager) = init(&*s);
        let mut rng = TestRng(2024);
        for (n, subnet) in [("p", "10.50.0.0/28"), ("q", "10.51.0.0/29")] {
            let r = CreateNetwork {
                name: n.into(),
                attachable: true,
                subnets: vec![subnet.parse().unwrap()],
                ..CreateNetwork::default()
            };
            create_network(&*s, &r, 1, &mut rng).unwrap();
        }
        let nets = ["p", "q"];
        let (mut ok, mut exhausted) = (0, 0);
        for step in 0..steps {
            if step % reopen_every == reopen_every - 1 {
                s = reopen(s);
            }
            let s = &*s;
            let names: Vec<String> = list_containers(s, None)
                .unwrap()
                .into_iter()
                .map(|c| c.name)
                .collect();
            let pick = rng.next_u32() as usize;
            let netname = nets[pick % 2];
            // Runs are more frequent than removals, so the networks fill up.
            let r = match rng.next_u32() % 5 {
                0 | 4 => run(s, &mut rng, &format!("c{step}"), &manager.id, &[netname]).map(|_| ()),
                1 if !names.is_empty() => {
                    connect(s, &names[pick % names.len()], &on(netname)).map(|_| ())
                }
                2 if !names.is_empty() => {
                    disconnect(s, &names[pick % names.len()], netname).map(|_| ())
                }
                3 if !names.is_empty() => {
                    remove_container(s, &names[pick % names.len()]).map(|_| ())
                }
                _ => Ok(()),
            };
            match r {
                Ok(()) => ok += 1,
                Err(ControlError::AddressesExhausted { .. }) => exhausted += 1,
                Err(ControlError::AlreadyAttached { .. } | ControlError::NotAttached { .. }) => {}
                Err(e) => panic!("step {step}: unexpected error {e}"),
            }
            // Invariant: allocation records == gateways + attachments.
            let mut expected = BTreeSet::new();
            for c in s.list::<Container>().unwrap() {
                for a in &c.attachments {
                    assert!(
                        expected.insert(AddressAlloc::key_of(&a.network, IpAddr::V4(a.ipv4))),
                        "address {} held twice",
                        a.ipv4
                    );
                }
            }
            let mut stored = BTreeSet::new();
            for a in s.list::<AddressAlloc>().unwrap() {
                if a.owner != AddressOwner::Gateway {
                    stored.insert(a.key());
                }
            }
            assert_eq!(stored, expected, "step {step}");
        }
        // The sequence did reach both full networks and normal operation.
        assert!(ok > steps / 3, "{ok} successful ops of {steps}");
        assert!(exhausted > 0, "never exhausted a network");
    }

    #[test]
    fn random_operations_keep_allocations_consistent() {
        random_operations(Box::new(MemStore::new()), |s| s, 400, 1000);
    }

    #[test]
    fn random_operations_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let open =
            |p: &std::path::Path| -> Box<dyn Store> { Box::new(RedbStore::open(p).unwrap()) };
        random_operations(
            open(&path),
            |old| {
                drop(old);
                open(&path)
            },
            150,
            25,
        );
    }
}
