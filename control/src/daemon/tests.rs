//! Request handling against an in-memory store, a fake dataplane (which
//! keeps networks and endpoints the way the real one does) and a fake host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use vxnet_dataplane::api::{
    AttachTarget, DetachTarget, EndpointInfo, NetworkInfo, Request, Response, ShowReport,
};

use super::api::{ContainerView, CtlRequest, InitView, ReconcileReport};
use super::dataplane::DataplaneApi;
use super::gossip::GossipCmd;
use super::host::Host;
use super::*;
use crate::containers::NetworkRequest;
use crate::networks::CreateNetwork;
use crate::store::MemStore;

#[derive(Default)]
struct FakeDp {
    up: bool,
    networks: BTreeMap<u32, bool>,
    endpoints: Vec<EndpointInfo>,
    next_id: u32,
    /// Every mutating request, to check that reconciliation leaves what is
    /// right alone.
    writes: Vec<String>,
    /// Default routes asked for by the last native attach, per namespace.
    gateways: BTreeMap<String, usize>,
}

#[derive(Clone, Default)]
struct SharedDp(Arc<Mutex<FakeDp>>);

impl SharedDp {
    fn with<T>(&self, f: impl FnOnce(&mut FakeDp) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl DataplaneApi for SharedDp {
    fn call(&mut self, req: &Request) -> Result<Response, String> {
        let mut d = self.0.lock().unwrap();
        if !d.up {
            return Err("cannot reach the dataplane".into());
        }
        let r = match req {
            Request::Show => Response::ok(ShowReport {
                version: "t".into(),
                local_vtep: "192.0.2.1".parse().unwrap(),
                port: 4789,
                workers: 1,
                poll: "busy".into(),
                gso: false,
                gro: false,
                endpoints: d.endpoints.len(),
                vnis: d.networks.len(),
                public_key: Some(crate::cluster::tests::key(7)),
            }),
            Request::Networks => {
                let v: Vec<NetworkInfo> = d
                    .networks
                    .iter()
                    .map(|(vni, enc)| NetworkInfo {
                        vni: Vni::new(*vni).unwrap(),
                        encrypted: *enc,
                        endpoints: d.endpoints.iter().filter(|e| e.vni.get() == *vni).count(),
                        peers: 0,
                        mtu: 1450,
                    })
                    .collect();
                Response::ok(v)
            }
            Request::Endpoints => Response::ok(d.endpoints.clone()),
            Request::NetworkAdd { vni, encrypted } => {
                d.writes.push(format!("network_add {vni}"));
                d.networks.insert(vni.get(), *encrypted);
                Response::ok(())
            }
            Request::NetworkDel { vni } => {
                d.writes.push(format!("network_del {vni}"));
                if d.endpoints.iter().any(|e| e.vni == *vni) {
                    Response::error("still has endpoints")
                } else if d.networks.remove(&vni.get()).is_none() {
                    Response::error("not a network")
                } else {
                    Response::ok(())
                }
            }
            Request::Attach(a) if matches!(a.target, AttachTarget::Veth(_)) => {
                let AttachTarget::Veth(veth) = &a.target else {
                    unreachable!()
                };
                d.writes.push(format!("attach veth {veth}"));
                if !d.networks.contains_key(&a.vni.get()) {
                    Response::error("undeclared VNI")
                } else if a.mac.is_none() || !a.gateways.is_empty() {
                    Response::error("sidecar needs a MAC and no gateway")
                } else if d
                    .endpoints
                    .iter()
                    .any(|e| e.kind == "sidecar" && e.ifname == *veth)
                {
                    Response::error("veth already attached")
                } else {
                    d.next_id += 1;
                    let e = EndpointInfo {
                        id: d.next_id,
                        vni: a.vni,
                        mac: a.mac.unwrap(),
                        ips: a.ips.clone(),
                        mtu: a.mtu.unwrap_or(1450),
                        ifname: veth.clone(),
                        location: format!("vxbr{}", a.vni),
                        kind: "sidecar".into(),
                        tap: format!("vx{}", d.next_id),
                    };
                    d.endpoints.push(e.clone());
                    Response::ok(vec![e])
                }
            }
            Request::Attach(a) => {
                let AttachTarget::Netns(ns) = &a.target else {
                    return Ok(Response::error("veth"));
                };
                d.gateways.insert(ns.clone(), a.gateways.len());
                let ifname = a.ifname.clone().unwrap_or_else(|| "eth0".into());
                d.writes.push(format!("attach {ns} {ifname}"));
                if !d.networks.contains_key(&a.vni.get()) {
                    Response::error("undeclared VNI")
                } else if d
                    .endpoints
                    .iter()
                    .any(|e| e.location == *ns && e.ifname == ifname)
                {
                    Response::error("interface exists")
                } else {
                    d.next_id += 1;
                    let e = EndpointInfo {
                        id: d.next_id,
                        vni: a.vni,
                        mac: a.mac.unwrap(),
                        ips: a.ips.clone(),
                        mtu: a.mtu.unwrap_or(1450),
                        ifname,
                        location: ns.clone(),
                        kind: "native".into(),
                        tap: format!("vx{}", d.next_id),
                    };
                    d.endpoints.push(e.clone());
                    Response::ok(vec![e])
                }
            }
            Request::Detach {
                target: DetachTarget::Netns { netns, ifname },
            } => {
                d.writes.push(format!("detach {netns} {ifname:?}"));
                let before = d.endpoints.len();
                d.endpoints.retain(|e| {
                    !(e.location == *netns && ifname.as_ref().is_none_or(|i| *i == e.ifname))
                });
                if d.endpoints.len() == before {
                    Response::error("nothing attached")
                } else {
                    Response::ok(())
                }
            }
            Request::Detach {
                target: DetachTarget::Veth(v),
            } => {
                d.writes.push(format!("detach veth {v}"));
                let before = d.endpoints.len();
                d.endpoints
                    .retain(|e| !(e.kind == "sidecar" && e.ifname == *v));
                if d.endpoints.len() == before {
                    Response::error("nothing attached")
                } else {
                    Response::ok(())
                }
            }
            other => Response::error(format!("unsupported {other:?}")),
        };
        Ok(r)
    }
}

#[derive(Default)]
struct FakeHostState {
    netns: BTreeSet<String>,
    resolv: BTreeSet<String>,
    alive: BTreeSet<u32>,
    killed: Vec<u32>,
}

#[derive(Clone, Default)]
struct SharedHost(Arc<Mutex<FakeHostState>>);

impl Host for SharedHost {
    fn netns_exists(&self, name: &str) -> bool {
        self.0.lock().unwrap().netns.contains(name)
    }
    fn netns_add(&self, name: &str) -> Result<(), String> {
        self.0.lock().unwrap().netns.insert(name.into());
        Ok(())
    }
    fn netns_del(&self, name: &str) -> Result<(), String> {
        self.0.lock().unwrap().netns.remove(name);
        Ok(())
    }
    fn write_resolv_conf(&self, name: &str) -> Result<(), String> {
        self.0.lock().unwrap().resolv.insert(name.into());
        Ok(())
    }
    fn remove_resolv_conf(&self, name: &str) {
        self.0.lock().unwrap().resolv.remove(name);
    }
    fn process_alive(&self, pid: u32) -> bool {
        self.0.lock().unwrap().alive.contains(&pid)
    }
    fn kill_group(&self, pid: u32) {
        let mut h = self.0.lock().unwrap();
        h.alive.remove(&pid);
        h.killed.push(pid);
    }
}

struct Fixture {
    d: Arc<Daemon<Arc<MemStore>, SharedDp, SharedHost>>,
    dp: SharedDp,
    host: SharedHost,
}

fn fixture_with(store: Arc<MemStore>, dp: SharedDp, host: SharedHost) -> Fixture {
    let cfg = Config {
        hostname: "host1".into(),
        advertise_addr: None,
        data_path_addr: None,
        ca_digest: "cadigest".into(),
        netns_prefix: String::new(),
        log_dir: "/tmp/vxnet-test-logs".into(),
    };
    Fixture {
        d: Arc::new(Daemon::new(store, dp.clone(), host.clone(), cfg)),
        dp,
        host,
    }
}

fn fixture() -> Fixture {
    let dp = SharedDp::default();
    dp.with(|d| d.up = true);
    fixture_with(Arc::new(MemStore::new()), dp, SharedHost::default())
}

impl Fixture {
    fn ok<T: serde::de::DeserializeOwned>(&self, req: CtlRequest) -> T {
        let r = self.d.handle(req.clone());
        assert!(r.ok, "{req:?}: {:?}", r.error);
        serde_json::from_value(r.result.unwrap()).unwrap()
    }

    fn err(&self, req: CtlRequest) -> String {
        let r = self.d.handle(req.clone());
        assert!(!r.ok, "{req:?} should fail");
        r.error.unwrap()
    }

    fn init(&self) -> InitView {
        self.ok(CtlRequest::SwarmInit {
            advertise_addr: None,
            data_path_addr: None,
            data_path_port: None,
        })
    }

    fn net(&self, name: &str, attachable: bool) -> Network {
        self.ok(CtlRequest::NetworkCreate(CreateNetwork {
            name: name.into(),
            attachable,
            ..Default::default()
        }))
    }

    fn run(&self, name: &str, nets: &[&str]) -> ContainerView {
        self.ok(CtlRequest::ContainerCreate {
            name: name.into(),
            networks: nets
                .iter()
                .map(|n| NetworkRequest {
                    network: (*n).into(),
                    ..Default::default()
                })
                .collect(),
        })
    }
}

#[test]
fn init_uses_the_dataplane_and_prints_tokens() {
    let f = fixture();
    // The data port must be the one the dataplane listens on.
    let e = f.err(CtlRequest::SwarmInit {
        advertise_addr: None,
        data_path_addr: None,
        data_path_port: Some(4790),
    });
    assert!(e.contains("listens on UDP port 4789"), "{e}");
    let v = f.init();
    assert_eq!(v.manager_addr.to_string(), "192.0.2.1:2377");
    // Tokens carry the digest of the CA that init made, not the
    // configured placeholder.
    let w = crate::mgmt::JoinToken::parse(&v.worker_token).unwrap();
    let m = crate::mgmt::JoinToken::parse(&v.manager_token).unwrap();
    assert_eq!(w.digest(), m.digest());
    assert_ne!(w.digest(), "cadigest");
    assert_eq!(v.ingress_network, "ingress");
    let e = f.err(CtlRequest::SwarmInit {
        advertise_addr: None,
        data_path_addr: None,
        data_path_port: None,
    });
    assert!(e.contains("already part of a swarm"), "{e}");
    let t: api::JoinTokenView = f.ok(CtlRequest::JoinToken {
        role: Role::Worker,
        rotate: false,
    });
    assert_eq!(t.token, v.worker_token);
    let t: api::JoinTokenView = f.ok(CtlRequest::JoinToken {
        role: Role::Worker,
        rotate: true,
    });
    assert_ne!(t.token, v.worker_token);
    let nodes: Vec<api::NodeView> = f.ok(CtlRequest::NodeLs);
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].is_self);
    assert_eq!(nodes[0].node.public_key, crate::cluster::tests::key(7));
    let e = f.err(CtlRequest::SwarmJoin {
        token: v.worker_token,
        remote: "192.0.2.9:2377".into(),
        advertise_addr: None,
        data_path_addr: None,
    });
    assert!(e.contains("already part of a swarm"), "{e}");
    // The rotated token carries the same CA digest.
    assert_eq!(
        crate::mgmt::JoinToken::parse(&t.token).unwrap().digest(),
        w.digest()
    );
}

#[test]
fn before_init_requests_say_so() {
    let f = fixture();
    let e = f.err(CtlRequest::NetworkCreate(CreateNetwork {
        name: "n".into(),
        ..Default::default()
    }));
    assert!(e.contains("swarm init"), "{e}");
    let e = f.err(CtlRequest::ContainerLs);
    assert!(e.contains("swarm init"), "{e}");
    assert_eq!(f.d.reconcile(), ReconcileReport::default());
}

#[test]
fn container_lifecycle_programs_the_dataplane() {
    let f = fixture();
    f.init();
    let n = f.net("test-net", true);
    let c1 = f.run("c1", &["test-net"]);
    assert_eq!(c1.netns, "c1");
    assert_eq!(c1.status, "created");
    assert_eq!(c1.networks[0].ifname, "eth0");
    assert_eq!(c1.networks[0].mtu, 1450);
    assert!(f.host.netns_exists("c1"));
    assert!(f.host.0.lock().unwrap().resolv.contains("c1"));
    f.dp.with(|d| {
        assert_eq!(d.networks.get(&n.vni), Some(&false));
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].location, "c1");
        assert_eq!(d.endpoints[0].mac.to_string(), c1.networks[0].mac);
        assert_eq!(d.endpoints[0].ips[0].addr, IpAddr::V4(c1.networks[0].ipv4));
    });

    // A running command blocks rm without -f.
    f.host.0.lock().unwrap().alive.insert(4242);
    let v: ContainerView = f.ok(CtlRequest::ContainerStarted {
        container: "c1".into(),
        pid: 4242,
    });
    assert_eq!(v.status, "running");
    let e = f.err(CtlRequest::NetworkRm {
        network: "test-net".into(),
    });
    assert!(e.contains("in use by container c1"), "{e}");
    let e = f.err(CtlRequest::ContainerRm {
        container: "c1".into(),
        force: false,
    });
    assert!(e.contains("rm -f"), "{e}");
    assert!(f.host.netns_exists("c1"));
    f.ok::<ContainerView>(CtlRequest::ContainerRm {
        container: "c1".into(),
        force: true,
    });
    assert_eq!(f.host.0.lock().unwrap().killed, vec![4242]);
    assert!(!f.host.netns_exists("c1"));
    f.dp.with(|d| {
        assert!(d.endpoints.is_empty());
        // The network went with its last container here.
        assert!(d.networks.is_empty());
    });
    f.ok::<Network>(CtlRequest::NetworkRm {
        network: "test-net".into(),
    });
}

#[test]
fn refusals_reach_the_caller_and_change_nothing() {
    let f = fixture();
    f.init();
    f.net("closed", false);
    let e = f.err(CtlRequest::ContainerCreate {
        name: "c1".into(),
        networks: vec![NetworkRequest {
            network: "closed".into(),
            ..Default::default()
        }],
    });
    assert!(e.contains("not attachable"), "{e}");
    let e = f.err(CtlRequest::ContainerCreate {
        name: "c1".into(),
        networks: vec![NetworkRequest {
            network: "ingress".into(),
            ..Default::default()
        }],
    });
    assert!(e.contains("not attachable"), "{e}");
    assert!(!f.host.netns_exists("c1"));

    // A dataplane failure undoes the container and its addresses.
    f.net("open", true);
    f.dp.with(|d| d.up = false);
    let e = f.err(CtlRequest::ContainerCreate {
        name: "c1".into(),
        networks: vec![NetworkRequest {
            network: "open".into(),
            ipv4: Some("10.0.2.5".parse().unwrap()),
            ..Default::default()
        }],
    });
    assert!(e.contains("cannot reach"), "{e}");
    assert!(!f.host.netns_exists("c1"));
    f.dp.with(|d| d.up = true);
    let list: Vec<ContainerView> = f.ok(CtlRequest::ContainerLs);
    assert!(list.is_empty());
    // The same address is free again.
    let c: ContainerView = f.ok(CtlRequest::ContainerCreate {
        name: "c1".into(),
        networks: vec![NetworkRequest {
            network: "open".into(),
            ipv4: Some("10.0.2.5".parse().unwrap()),
            ..Default::default()
        }],
    });
    assert_eq!(c.networks[0].ipv4.to_string(), "10.0.2.5");

    // An existing namespace of the same name is not taken over.
    f.host.netns_add("taken").unwrap();
    let e = f.err(CtlRequest::ContainerCreate {
        name: "taken".into(),
        networks: vec![NetworkRequest {
            network: "open".into(),
            ..Default::default()
        }],
    });
    assert!(e.contains("already exists"), "{e}");
    let list: Vec<ContainerView> = f.ok(CtlRequest::ContainerLs);
    assert_eq!(list.len(), 1);
}

#[test]
fn connect_and_disconnect_use_new_interfaces() {
    let f = fixture();
    f.init();
    let a = f.net("a", true);
    let b = f.net("b", true);
    f.run("c1", &["a"]);
    let v: ContainerView = f.ok(CtlRequest::NetworkConnect {
        container: "c1".into(),
        network: NetworkRequest {
            network: "b".into(),
            ..Default::default()
        },
        netns: None,
        veth: None,
    });
    assert_eq!(v.networks.len(), 2);
    assert_eq!(v.networks[1].ifname, "eth1");
    f.dp.with(|d| {
        assert_eq!(d.endpoints.len(), 2);
        assert!(d.networks.contains_key(&b.vni));
    });
    let v: ContainerView = f.ok(CtlRequest::NetworkDisconnect {
        container: "c1".into(),
        network: "a".into(),
    });
    assert_eq!(v.networks.len(), 1);
    assert_eq!(v.networks[0].ifname, "eth1");
    f.dp.with(|d| {
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].ifname, "eth1");
        assert!(!d.networks.contains_key(&a.vni));
    });
    let e = f.err(CtlRequest::NetworkDisconnect {
        container: "c1".into(),
        network: "a".into(),
    });
    assert!(e.contains("not connected"), "{e}");
    // Reconnecting takes the free eth0 again.
    let v: ContainerView = f.ok(CtlRequest::NetworkConnect {
        container: "c1".into(),
        network: NetworkRequest {
            network: "a".into(),
            ..Default::default()
        },
        netns: None,
        veth: None,
    });
    assert_eq!(v.networks[1].ifname, "eth0");
}

#[test]
fn reconcile_reprograms_a_restarted_dataplane_and_leaves_the_rest() {
    let store = Arc::new(MemStore::new());
    let dp = SharedDp::default();
    dp.with(|d| d.up = true);
    let host = SharedHost::default();
    let f = fixture_with(store.clone(), dp.clone(), host.clone());
    f.init();
    f.net("n", true);
    f.net("m", true);
    f.run("c1", &["n", "m"]);
    f.run("c2", &["n"]);

    // Nothing to do when everything is right: no writes at all.
    dp.with(|d| d.writes.clear());
    let r = f.d.reconcile();
    assert!(!r.changed(), "{r:?}");
    assert!(dp.with(|d| d.writes.is_empty()));

    // A daemon restart (new daemon, same store, same dataplane) changes nothing.
    drop(f);
    let f = fixture_with(store.clone(), dp.clone(), host.clone());
    let r = f.d.reconcile();
    assert!(!r.changed(), "{r:?}");

    // The dataplane restarted: empty. Everything comes back.
    dp.with(|d| {
        d.networks.clear();
        d.endpoints.clear();
    });
    let r = f.d.reconcile();
    assert_eq!(r.networks_added, 2, "{r:?}");
    assert_eq!(r.attached, 3, "{r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
    dp.with(|d| {
        let mut eps: Vec<_> = d
            .endpoints
            .iter()
            .map(|e| format!("{}/{}", e.location, e.ifname))
            .collect();
        eps.sort();
        assert_eq!(eps, ["c1/eth0", "c1/eth1", "c2/eth0"]);
    });

    // Half lost: only the missing endpoint is attached again.
    dp.with(|d| {
        d.endpoints.retain(|e| e.location != "c2");
        d.writes.clear();
    });
    let r = f.d.reconcile();
    assert_eq!((r.attached, r.detached, r.networks_added), (1, 0, 0));
    assert_eq!(dp.with(|d| d.writes.clone()), ["attach c2 eth0"]);

    // A stale endpoint in a container's namespace and a stale network of
    // ours are removed; an endpoint in a foreign namespace stays.
    let stray_vni = Vni::new(4242).unwrap();
    dp.with(|d| {
        d.networks.insert(4242, false);
        let mut e = d.endpoints[0].clone();
        e.ifname = "eth7".into();
        e.id = 99;
        d.endpoints.push(e.clone());
        e.location = "manual".into();
        e.id = 100;
        e.vni = stray_vni;
        d.endpoints.push(e);
    });
    let r = f.d.reconcile();
    assert_eq!(r.detached, 1, "{r:?}");
    dp.with(|d| {
        assert!(d.endpoints.iter().any(|e| e.location == "manual"));
        assert!(
            !d.endpoints
                .iter()
                .any(|e| e.ifname == "eth7" && e.location != "manual")
        );
        assert!(d.networks.contains_key(&4242));
    });

    // A network of ours that nothing here uses is withdrawn.
    let unused = f.net("unused", true);
    dp.with(|d| d.networks.insert(unused.vni, false));
    let r = f.d.reconcile();
    assert_eq!(r.networks_removed, 1, "{r:?}");
    assert!(!dp.with(|d| d.networks.contains_key(&unused.vni)));

    // A deleted namespace is recreated and re-attached.
    host.netns_del("c2").unwrap();
    dp.with(|d| d.endpoints.retain(|e| e.location != "c2"));
    let r = f.d.reconcile();
    assert_eq!((r.netns_created, r.attached), (1, 1), "{r:?}");
    assert!(host.netns_exists("c2"));

    // A dataplane that is down is an error in the report, not a panic.
    dp.with(|d| d.up = false);
    let r = f.d.reconcile();
    assert_eq!(r.errors.len(), 1, "{r:?}");
}

#[test]
fn leave_removes_everything() {
    let f = fixture();
    f.init();
    f.net("n", true);
    f.run("c1", &["n"]);
    let e = f.err(CtlRequest::SwarmLeave { force: false });
    assert!(e.contains("--force"), "{e}");
    assert!(f.host.netns_exists("c1"));
    let _: String = f.ok(CtlRequest::SwarmLeave { force: true });
    assert!(!f.host.netns_exists("c1"));
    assert!(f.dp.with(|d| d.endpoints.is_empty() && d.networks.is_empty()));
    let nets: Vec<Network> = f.ok(CtlRequest::NetworkLs {
        filter: Default::default(),
    });
    assert!(nets.is_empty());
    let e = f.err(CtlRequest::ContainerLs);
    assert!(e.contains("swarm init"), "{e}");
    // A new swarm can be made at once.
    f.init();
}

#[test]
fn local_endpoints_are_announced_and_withdrawn() {
    let f = fixture();
    assert!(f.d.gossip_setup(5).is_none(), "no swarm, no gossip");
    let init = f.init();
    let (id, ring) = f.d.gossip_setup(5).unwrap();
    assert_eq!(id.node_id, init.node_id);
    assert_eq!(id.gossip_addr.to_string(), "192.0.2.1:7946");
    assert_eq!(id.public_key, [7; 32]);
    assert_eq!(id.generation, 5);
    assert!(ring.primary().is_some());

    let said: Arc<Mutex<Vec<GossipCmd>>> = Arc::default();
    let sink = said.clone();
    f.d.set_announcer(Some(Box::new(move |c| sink.lock().unwrap().push(c))));
    let n = f.net("n", true);
    let c = f.run("c1", &["n"]);
    assert_eq!(f.d.network_vni(&n.id).map(Vni::get), Some(n.vni));
    let ip = IpAddr::V4(c.networks[0].ipv4);
    assert_eq!(
        said.lock().unwrap().as_slice(),
        [GossipCmd::Announce {
            network_id: n.id.clone(),
            ip,
            mac: c.networks[0]
                .mac
                .parse::<vxnet_proto::wire::MacAddr>()
                .unwrap()
                .0,
        }]
    );
    assert_eq!(f.d.local_endpoints(), said.lock().unwrap().clone());
    f.ok::<ContainerView>(CtlRequest::ContainerRm {
        container: "c1".into(),
        force: false,
    });
    assert_eq!(
        said.lock().unwrap().last(),
        Some(&GossipCmd::Withdraw {
            network_id: n.id,
            ip
        })
    );
}

/// A manager and a worker daemon over real mutual TLS on loopback: join,
/// a worker's container allocated by the manager, its network copied to
/// the worker and forgotten with its last container there, a bad token
/// refused with nothing changed.
#[test]
fn worker_joins_and_gets_addresses_from_the_manager() {
    use super::swarm::{DaemonHandler, TokioLink};
    use crate::mgmt::MgmtServer;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let m = fixture();
    m.init();
    let net = m.net("over", true);
    let tokens: api::JoinTokenView = m.ok(CtlRequest::JoinToken {
        role: Role::Worker,
        rotate: false,
    });
    let st = m.d.mgmt_state().unwrap();
    let server = rt
        .block_on(MgmtServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &st.identity,
            Arc::new(DaemonHandler(Arc::clone(&m.d))),
        ))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let serving = rt.spawn(server.serve());

    let w = fixture();
    w.d.set_manager_link(Arc::new(TokioLink::new(rt.handle().clone())));
    let join = |token: &str| CtlRequest::SwarmJoin {
        token: token.into(),
        remote: addr.to_string(),
        advertise_addr: Some("192.0.2.2".parse().unwrap()),
        data_path_addr: Some("192.0.2.2".parse().unwrap()),
    };
    // A token of another swarm (wrong CA digest) is refused before any
    // request, and a well-formed token with a wrong secret by the manager.
    let digest = crate::mgmt::JoinToken::parse(&tokens.token)
        .unwrap()
        .digest()
        .to_owned();
    let e = w.err(join(&format!(
        "SWMTKN-1-{digest}-0123456789abcdefghijklmno"
    )));
    assert!(e.contains("token"), "{e}");
    assert!(w.d.mgmt_state().is_none());
    assert_eq!(m.d.nodes().unwrap().len(), 1);

    let msg: String = w.ok(join(&tokens.token));
    assert!(msg.contains("joined a swarm as a worker"), "{msg}");
    assert_eq!(m.d.nodes().unwrap().len(), 2);
    assert!(w.d.gossip_seed().is_some_and(|s| s.port() == 7946));
    // The manager seeds from the worker it now knows (for when it returns).
    let me = m.d.mgmt_state().unwrap().identity.node_id;
    let worker =
        m.d.nodes()
            .unwrap()
            .into_iter()
            .find(|n| n.id != me)
            .unwrap();
    assert_eq!(
        m.d.gossip_seed(),
        Some(SocketAddr::new(worker.advertise_addr, 7946))
    );
    // A worker does not manage the swarm.
    let e = w.err(CtlRequest::NodeLs);
    assert!(e.contains("not a swarm manager"), "{e}");
    let e = w.err(CtlRequest::NetworkCreate(CreateNetwork {
        name: "x".into(),
        ..Default::default()
    }));
    assert!(e.contains("not a swarm manager"), "{e}");

    // The worker's container gets its address from the manager; the
    // manager's own container on the same network gets another.
    let cw = w.run("cw", &["over"]);
    let cm = m.run("cm", &["over"]);
    assert_ne!(cw.networks[0].ipv4, cm.networks[0].ipv4);
    assert!(w.d.network_vni(&net.id).is_some());
    assert!(w.dp.with(|d| d.networks.contains_key(&net.vni)));
    let on_manager = m.d.lock().store.get::<Container>(&cw.id).unwrap().is_some();
    assert!(on_manager, "the manager records the worker's container");

    let _: ContainerView = w.ok(CtlRequest::ContainerRm {
        container: "cw".into(),
        force: false,
    });
    assert!(w.d.network_vni(&net.id).is_none(), "network copy forgotten");
    assert!(!w.dp.with(|d| d.networks.contains_key(&net.vni)));
    let on_manager = m.d.lock().store.get::<Container>(&cw.id).unwrap().is_some();
    assert!(!on_manager, "the manager released the worker's container");

    // `network connect|disconnect` on a worker go through the manager.
    let other = m.net("other", true);
    let cw = w.run("cw", &["over"]);
    let e = m.err(connect_req("cw", "other", None, None));
    assert!(e.contains("runs on node"), "{e}");
    let v: ContainerView = w.ok(connect_req("cw", "other", None, None));
    assert_eq!(v.networks.len(), 2);
    assert!(w.dp.with(|d| d.networks.contains_key(&other.vni)));
    let on_manager = |id: &str| m.d.lock().store.get::<Container>(id).unwrap();
    assert_eq!(on_manager(&cw.id).unwrap().attachments.len(), 2);
    let _: ContainerView = w.ok(CtlRequest::NetworkDisconnect {
        container: "cw".into(),
        network: "other".into(),
    });
    assert_eq!(on_manager(&cw.id).unwrap().attachments.len(), 1);
    assert!(
        w.d.network_vni(&other.id).is_none(),
        "network copy forgotten"
    );
    assert!(!w.dp.with(|d| d.networks.contains_key(&other.vni)));
    // Another runtime's container on the worker is recorded by the manager
    // and released with its last network.
    let ext: ContainerView = w.ok(connect_req("ext", "other", Some("/proc/7/ns/net"), None));
    assert!(on_manager(&ext.id).is_some());
    let _: ContainerView = w.ok(CtlRequest::NetworkDisconnect {
        container: "ext".into(),
        network: "other".into(),
    });
    assert!(on_manager(&ext.id).is_none());
    serving.abort();
}

/// Adds a worker node to the manager's store as a join would.
fn add_worker_node(f: &Fixture, hostname: &str) -> Node {
    let g = f.d.lock();
    crate::cluster::add_node(
        &g.store,
        &crate::cluster::JoinRequest {
            hostname: hostname.into(),
            role: Role::Worker,
            advertise_addr: "192.0.2.9".parse().unwrap(),
            data_path_addr: None,
            public_key: crate::cluster::tests::key(9),
        },
        now(),
        &mut rand_core::OsRng,
    )
    .unwrap()
}

#[test]
fn node_inspect_update_and_rm() {
    let f = fixture();
    let init = f.init();
    let w = add_worker_node(&f, "host2");
    let me: NodeView = f.ok(CtlRequest::NodeInspect {
        node: "host1".into(),
    });
    assert!(me.is_self);
    assert_eq!(me.node.id, init.node_id);
    assert_eq!(me.node.role, Role::Manager);
    let v: NodeView = f.ok(CtlRequest::NodeInspect {
        node: w.id[..6].into(),
    });
    assert!(!v.is_self);
    assert_eq!(v.node.hostname, "host2");
    let e = f.err(CtlRequest::NodeInspect {
        node: "nosuch".into(),
    });
    assert!(e.contains("nosuch"), "{e}");

    let n: Node = f.ok(CtlRequest::NodeUpdate {
        node: "host2".into(),
        availability: crate::model::Availability::Drain,
    });
    assert_eq!(n.availability, crate::model::Availability::Drain);
    let v: NodeView = f.ok(CtlRequest::NodeInspect {
        node: "host2".into(),
    });
    assert_eq!(v.node.availability, crate::model::Availability::Drain);

    // Self is never removed; a Ready node only with force.
    let e = f.err(CtlRequest::NodeRm {
        node: "host1".into(),
        force: true,
    });
    assert!(e.contains("cannot remove itself"), "{e}");
    let e = f.err(CtlRequest::NodeRm {
        node: "host2".into(),
        force: false,
    });
    assert!(e.contains("not down"), "{e}");
    assert_eq!(f.d.nodes().unwrap().len(), 2);
    // Down: removed without force.
    f.d.set_member_status(&w.id, false);
    let gone: Node = f.ok(CtlRequest::NodeRm {
        node: "host2".into(),
        force: false,
    });
    assert_eq!(gone.id, w.id);
    assert_eq!(f.d.nodes().unwrap().len(), 1);
    // A Ready node goes with --force.
    add_worker_node(&f, "host3");
    let _: Node = f.ok(CtlRequest::NodeRm {
        node: "host3".into(),
        force: true,
    });
    assert_eq!(f.d.nodes().unwrap().len(), 1);
}

fn connect_req(
    container: &str,
    network: &str,
    netns: Option<&str>,
    veth: Option<&str>,
) -> CtlRequest {
    CtlRequest::NetworkConnect {
        container: container.into(),
        network: NetworkRequest {
            network: network.into(),
            ..Default::default()
        },
        netns: netns.map(Into::into),
        veth: veth.map(Into::into),
    }
}

/// Another runtime's container joins by its namespace: recorded with an
/// address, attached as `vxN` without default routes, its namespace left
/// alone; it is forgotten with its last network.
#[test]
fn external_netns_container_connects_and_leaves() {
    let f = fixture();
    f.init();
    let a = f.net("a", true);
    let b = f.net("b", true);
    let ns = "/proc/4242/ns/net";
    // The ingress network is not attachable; nothing is recorded.
    let e = f.err(connect_req("web", "ingress", Some(ns), None));
    assert!(e.contains("not attachable"), "{e}");
    let e = f.err(connect_req("web", "a", Some(ns), Some("veth0")));
    assert!(e.contains("not both"), "{e}");
    assert!(f.d.lock().store.list::<Container>().unwrap().is_empty());

    let v: ContainerView = f.ok(connect_req("web", "a", Some(ns), None));
    assert_eq!(v.status, "external");
    assert_eq!(v.netns, ns);
    assert_eq!(v.networks[0].ifname, "vx0");
    f.dp.with(|d| {
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].location, ns);
        assert_eq!(d.gateways.get(ns), Some(&0), "no default route");
        assert!(d.networks.contains_key(&a.vni));
    });
    // The same namespace joins one more network; another one under the
    // same name is refused.
    let v: ContainerView = f.ok(connect_req("web", "b", Some(ns), None));
    assert_eq!(v.networks.len(), 2);
    assert_eq!(v.networks[1].ifname, "vx1");
    let e = f.err(connect_req("web", "b", Some("/proc/1/ns/net"), None));
    assert!(e.contains("exists already"), "{e}");
    // A name taken by a vxnet container is refused too.
    f.run("c1", &["a"]);
    let e = f.err(connect_req("c1", "b", Some(ns), None));
    assert!(e.contains("exists already"), "{e}");

    let _: ContainerView = f.ok(CtlRequest::NetworkDisconnect {
        container: "web".into(),
        network: "a".into(),
    });
    let _: ContainerView = f.ok(CtlRequest::NetworkDisconnect {
        container: "web".into(),
        network: "b".into(),
    });
    // Forgotten, its addresses released, its namespace not ours.
    let g = f.d.lock();
    let left: Vec<String> = g
        .store
        .list::<Container>()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(left, ["c1"]);
    let allocs = g.store.list::<AddressAlloc>().unwrap();
    assert!(
        !allocs
            .iter()
            .any(|x| x.network == b.id && !x.ip.to_string().ends_with(".1")),
        "{allocs:?}"
    );
    drop(g);
    f.dp.with(|d| {
        assert_eq!(d.endpoints.len(), 1, "only c1 is left");
        assert!(!d.networks.contains_key(&b.vni));
        assert!(
            d.writes
                .iter()
                .any(|w| w.starts_with(&format!("detach {ns}")))
        );
    });
    assert!(f.host.0.lock().unwrap().killed.is_empty());
}

/// Another runtime's container joins by its veth: a sidecar endpoint with
/// the container side's MAC; one network per veth; reconciled after a
/// dataplane restart; removed with `container rm`.
#[test]
fn external_veth_container_is_a_sidecar() {
    let f = fixture();
    f.init();
    let a = f.net("a", true);
    f.net("b", true);
    let e = f.err(connect_req("db", "a", None, Some("veth1234")));
    assert!(e.contains("--mac"), "{e}");
    let mut req = connect_req("db", "a", None, Some("veth1234"));
    if let CtlRequest::NetworkConnect { network, .. } = &mut req {
        network.mac = Some("01:00:5e:00:00:01".into());
    }
    let e = f.err(req.clone());
    assert!(e.contains("unicast MAC"), "{e}");
    if let CtlRequest::NetworkConnect { network, .. } = &mut req {
        network.mac = Some("02:AA:bb:cc:dd:ee".into());
    }
    let v: ContainerView = f.ok(req);
    assert_eq!(v.veth.as_deref(), Some("veth1234"));
    assert_eq!(v.networks[0].mac, "02:aa:bb:cc:dd:ee");
    f.dp.with(|d| {
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].kind, "sidecar");
        assert_eq!(d.endpoints[0].mac.to_string(), "02:aa:bb:cc:dd:ee");
    });
    let e = f.err(connect_req("db", "b", None, None));
    assert!(e.contains("one network"), "{e}");

    // A restarted dataplane gets the sidecar back; a second pass is idle.
    f.dp.with(|d| {
        d.endpoints.clear();
        d.networks.clear();
    });
    let r = f.d.reconcile();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.attached, 1);
    assert!(!f.d.reconcile().changed());

    let _: ContainerView = f.ok(CtlRequest::ContainerRm {
        container: "db".into(),
        force: false,
    });
    f.dp.with(|d| {
        assert!(d.endpoints.is_empty());
        assert!(!d.networks.contains_key(&a.vni));
        assert!(d.writes.iter().any(|w| w == "detach veth veth1234"));
    });
}

#[test]
fn manager_rotates_gossip_keys_step_by_step_with_node_reports() {
    use super::gossip::{GossipStatus, StatusCell};
    use super::keys::KeyringReport;
    let store = Arc::new(MemStore::new());
    let dp = SharedDp::default();
    dp.with(|d| d.up = true);
    let f = fixture_with(Arc::clone(&store), dp, SharedHost::default());
    f.init();
    let worker = crate::cluster::tests::add_worker(&*store, "host2");
    // No driver yet: nothing to tend.
    assert_eq!(f.d.tend_gossip_keys(), None);
    let own = StatusCell::default();
    let set_own = |ids: &[u32], primary: u32| {
        *own.lock().unwrap() = GossipStatus {
            key_ids: ids.to_vec(),
            primary: Some(primary),
            ..Default::default()
        };
    };
    set_own(&[1], 1);
    f.d.set_gossip_status(Some(Arc::clone(&own)));
    f.d.set_gossip_key_rotation(std::time::Duration::from_secs(1));
    let ids = |k: Vec<crate::model::StoredGossipKey>| k.iter().map(|k| k.id).collect::<Vec<_>>();
    // Step 1 once key 1 is a second old (bounded poll on the clock).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut keys = ids(f.d.tend_gossip_keys().unwrap());
    while keys == [1] && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(50));
        keys = ids(f.d.tend_gossip_keys().unwrap());
    }
    assert_eq!(keys, [2, 1], "key 2 installed, key 1 still the primary");
    // The worker has not reported key 2: no promotion, however often asked.
    set_own(&[1, 2], 1);
    let report = |ids: &[u32], primary: u32| KeyringReport {
        key_ids: ids.to_vec(),
        primary: Some(primary),
    };
    let reply = f.d.gossip_keys_for(&worker.id, report(&[1], 1)).unwrap();
    assert_eq!(ids(reply.keys), [2, 1]);
    assert_eq!(reply.poll_after_secs, 1, "poll soon while rotating");
    assert_eq!(ids(f.d.tend_gossip_keys().unwrap()), [2, 1]);
    // Everyone holds key 2: it becomes the primary.
    f.d.gossip_keys_for(&worker.id, report(&[1, 2], 1)).unwrap();
    assert_eq!(ids(f.d.tend_gossip_keys().unwrap()), [1, 2]);
    // A node that is not (or no longer) in the swarm gets no keys.
    let e =
        f.d.gossip_keys_for("nosuchnode", report(&[1], 1))
            .unwrap_err();
    assert!(e.contains("not part of this swarm"), "{e}");
    // The local API shows the driver's status.
    let st: GossipStatus = f.ok(CtlRequest::GossipStatus);
    assert_eq!(st.key_ids, [1, 2]);
}

/// A manager that never answers until told to: the call blocks, as a real
/// one does for its timeout when the manager host is down.
struct StalledLink {
    entered: Mutex<std::sync::mpsc::Sender<()>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ManagerLink for StalledLink {
    fn join(&self, _: SocketAddr, _: &str, _: &JoinParams) -> Result<crate::mgmt::Joined, String> {
        Err("manager unreachable".into())
    }
    fn call(
        &self,
        _: SocketAddr,
        _: &crate::mgmt::NodeIdentity,
        _: &str,
        _: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self.release.lock().unwrap().recv();
        Err("manager unreachable".into())
    }
}

/// Runs `f` on another thread and returns its result if it finishes
/// within 10 s (a thread stuck behind the daemon's lock never does).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
}

/// While a worker waits on a manager that does not answer (holding the
/// daemon's lock for a container request), its gossip driver still gets
/// network VNIs and can hand over member events; a manager applies the
/// events it is handed to node status, in order.
#[test]
fn gossip_hooks_do_not_wait_for_a_stalled_manager_call() {
    use crate::gossip::{MemberEvent, NodeIdentity as GossipIdentity};

    let m = fixture();
    m.init();
    let net = m.net("over", true);
    // A worker: its own node record says so, and it knows its manager.
    let w = fixture();
    w.init();
    {
        let g = w.d.lock();
        let me = g.local_node().unwrap();
        let mut node = g.store.get::<Node>(&me).unwrap().unwrap();
        node.role = Role::Worker;
        g.store.put(&node).unwrap();
        let mut st = g.store.get::<MgmtState>(MgmtState::KEY).unwrap().unwrap();
        st.manager = Some("192.0.2.1:2377".parse().unwrap());
        g.store.put(&st).unwrap();
        // Its copy of the network, as an earlier container there left.
        g.store.put(&net).unwrap();
    }
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    w.d.set_manager_link(Arc::new(StalledLink {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    }));
    let (vni_of, hook) = w.d.gossip_hooks();

    // `container run` on the worker: the daemon calls the manager with its
    // lock held.
    let d = Arc::clone(&w.d);
    let stalled = std::thread::spawn(move || {
        d.handle(CtlRequest::ContainerCreate {
            name: "cw".into(),
            networks: vec![NetworkRequest {
                network: "over".into(),
                ..Default::default()
            }],
        })
    });
    entered
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the manager call started");
    let id = net.id.clone();
    let got = within_10s(move || vni_of(&id));
    assert_eq!(
        got,
        Some(Vni::new(net.vni)),
        "VNI lookup waited for the lock"
    );
    let ident = GossipIdentity {
        node_id: "other".into(),
        gossip_addr: "192.0.2.9:7946".parse().unwrap(),
        data_addr: "192.0.2.9".parse().unwrap(),
        data_port: 4789,
        public_key: [0; 32],
        generation: 1,
    };
    let h = hook.clone();
    let ev = MemberEvent::Down(ident.clone());
    assert!(
        within_10s(move || h(&ev)).is_some(),
        "the member hook waited for the lock"
    );
    release.send(()).unwrap();
    let r = stalled.join().unwrap();
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("unreachable")),
        "{r:?}"
    );

    // On a manager, queued events reach node status in order.
    let node = add_worker_node(&m, "host2");
    let (_, hook) = m.d.gossip_hooks();
    let status = |id: &str| {
        m.d.nodes()
            .unwrap()
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.status)
    };
    let ident = GossipIdentity {
        node_id: node.id.clone(),
        ..ident
    };
    hook(&MemberEvent::Down(ident.clone()));
    hook(&MemberEvent::Up(ident.clone()));
    hook(&MemberEvent::Down(ident));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(&node.id) != Some(NodeStatus::Down) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(status(&node.id), Some(NodeStatus::Down));
}
