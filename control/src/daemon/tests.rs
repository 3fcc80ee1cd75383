//! The daemon against an in-memory store, a fake dataplane (which keeps
//! networks, endpoints, peers and keys with their owners the way the real
//! one does), a fake host, and a reconciler thread: requests, what they
//! make real, and what a restart of the dataplane or a departure leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vxnet_api::ctl::{self, ContainerState, ContainerView, CtlRequest, InitView};
use vxnet_api::dp::{
    self, AttachTarget, DetachTarget, EndpointInfo, EndpointKind, FdbEntry, FdbKind, NetworkInfo,
    Owner, Request, ShowReport, VtepInfo,
};
use vxnet_api::{ApiError, ApiResult, Call, ErrorCode, MacAddr, PublicKey, Response, Vni};

use super::gossip::GossipView;
use super::host::{Exit, Host, Spawn};
use super::reconcile::Reconciler;
use super::worker::ManagerLink;
use super::*;
use crate::gossip::{EndpointRecord, NodeIdentity as GossipIdentity};
use crate::mgmt::calls::ManagerCall;
use crate::mgmt::{JoinParams, Joined};
use crate::store::MemStore;

// ---- a fake dataplane ------------------------------------------------

#[derive(Default)]
struct FakeDp {
    up: bool,
    instance: u64,
    networks: BTreeMap<Vni, dp::NetworkAdd>,
    /// The host link and whether its firewall table is whole.
    host_link: Option<(dp::HostLinkSet, bool)>,
    /// Published ports and whether the firewall holds each.
    ports: BTreeMap<(dp::PortProtocol, u16), (dp::PortSet, bool)>,
    endpoints: Vec<EndpointInfo>,
    peers: BTreeMap<(Vni, MacAddr), (BTreeSet<IpAddr>, IpAddr, Owner)>,
    vteps: BTreeMap<IpAddr, (PublicKey, Owner)>,
    /// (VNI, VIP) -> backends, owner.
    services: BTreeMap<(Vni, IpAddr), (Vec<dp::BackendSpec>, Owner)>,
    next_id: u32,
    /// Every mutating request, to check that a pass leaves what is right
    /// alone.
    writes: Vec<String>,
}

impl FakeDp {
    fn answer(&mut self, req: &Request) -> ApiResult<serde_json::Value> {
        fn v(x: impl serde::Serialize) -> ApiResult<serde_json::Value> {
            Ok(serde_json::to_value(x).unwrap())
        }
        match req {
            Request::Show(_) => v(ShowReport {
                version: "t".into(),
                instance: self.instance,
                local_vtep: "192.0.2.1".parse().unwrap(),
                port: 4789,
                workers: 1,
                poll: dp::PollMode::Busy,
                gso: false,
                gro: false,
                endpoints: self.endpoints.len(),
                vnis: self.networks.len(),
                public_key: PublicKey::from_bytes([7; 32]),
                underlay_mtu: 1500,
                flood_rate: 1000,
            }),
            Request::Networks(_) => v(self
                .networks
                .iter()
                .map(|(vni, n)| NetworkInfo {
                    vni: *vni,
                    encrypted: n.encrypted,
                    endpoints: self.endpoints.iter().filter(|e| e.vni == *vni).count(),
                    peers: 0,
                    mtu: 1450,
                    gateways: n.gateways.clone(),
                    egress: n.egress,
                    ingress: n.ingress,
                    flood: n.flood,
                    flood_rate: n.flood_rate.unwrap_or(1000),
                    flooding: dp::FloodStats::default(),
                    owner: n.owner,
                })
                .collect::<Vec<_>>()),
            Request::HostLink(_) => v(self.host_link.as_ref().map(|(h, ok)| dp::HostLinkInfo {
                ifname: "vxnet0".into(),
                subnet: h.subnet,
                host_ip: "198.18.0.1".parse().unwrap(),
                mesh_ip: "198.18.0.2".parse().unwrap(),
                mac: MacAddr([2, 0x42, 0, 0, 0, 1]),
                mtu: h.mtu.unwrap_or(1450),
                ingress: h.ingress,
                firewall_ok: *ok,
                firewall_error: None,
                egress_addresses: 0,
                owner: h.owner,
            })),
            Request::HostLinkSet(h) => {
                self.writes.push("host_link_set".into());
                if self.host_link.as_ref().is_none_or(|(old, _)| {
                    old.subnet != h.subnet || old.ingress != h.ingress || old.mtu != h.mtu
                }) {
                    // A new link starts without ports, as the real one.
                    self.ports.clear();
                }
                self.host_link = Some((h.clone(), true));
                v(dp::HostLinkInfo {
                    ifname: "vxnet0".into(),
                    subnet: h.subnet,
                    host_ip: "198.18.0.1".parse().unwrap(),
                    mesh_ip: "198.18.0.2".parse().unwrap(),
                    mac: MacAddr([2, 0x42, 0, 0, 0, 1]),
                    mtu: 1450,
                    ingress: h.ingress,
                    firewall_ok: true,
                    firewall_error: None,
                    egress_addresses: 0,
                    owner: h.owner,
                })
            }
            Request::HostLinkDel(_) => {
                self.writes.push("host_link_del".into());
                self.ports.clear();
                match self.host_link.take() {
                    Some(_) => v(()),
                    None => Err(ApiError::not_found("no host link")),
                }
            }
            Request::Ports(_) => v(self
                .ports
                .values()
                .map(|(p, in_firewall)| dp::PortInfo {
                    protocol: p.protocol,
                    published: p.published,
                    target: p.target,
                    vni: p.vni,
                    to: p.to.clone(),
                    in_firewall: *in_firewall,
                    owner: p.owner,
                })
                .collect::<Vec<_>>()),
            Request::PortSet(p) => {
                self.writes
                    .push(format!("port_set {} {}", p.protocol, p.published));
                if self.host_link.is_none() {
                    return Err(ApiError::precondition("no host link"));
                }
                self.ports
                    .insert((p.protocol, p.published), (p.clone(), true));
                v(())
            }
            Request::PortDel(p) => {
                self.writes
                    .push(format!("port_del {} {}", p.protocol, p.published));
                match self.ports.remove(&(p.protocol, p.published)) {
                    Some(_) => v(()),
                    None => Err(ApiError::not_found("not published")),
                }
            }
            Request::Endpoints(_) => v(&self.endpoints),
            Request::Fdb(_) => v(self
                .peers
                .iter()
                .map(|((vni, mac), (ips, vtep, owner))| FdbEntry {
                    vni: *vni,
                    mac: Some(*mac),
                    ips: ips.iter().copied().collect(),
                    kind: FdbKind::Remote,
                    endpoint: None,
                    vtep: Some(*vtep),
                    owner: *owner,
                })
                .collect::<Vec<_>>()),
            Request::Vteps(_) => v(self
                .vteps
                .iter()
                .map(|(vtep, (key, owner))| VtepInfo {
                    vtep: *vtep,
                    pubkey: *key,
                    established: true,
                    generation: 1,
                    rotating: false,
                    owner: *owner,
                })
                .collect::<Vec<_>>()),
            Request::NetworkAdd(n) => {
                self.writes.push(format!("network_add {}", n.vni));
                self.networks.insert(n.vni, n.clone());
                v(())
            }
            Request::NetworkDel(n) => {
                self.writes.push(format!("network_del {}", n.vni));
                if self.endpoints.iter().any(|e| e.vni == n.vni) {
                    return Err(ApiError::precondition("still has endpoints"));
                }
                self.networks.remove(&n.vni);
                self.peers.retain(|(vni, _), _| *vni != n.vni);
                v(())
            }
            Request::Attach(a) => {
                let (kind, ifname, location) = match &a.target {
                    AttachTarget::Netns(ns) => (
                        EndpointKind::Native,
                        a.ifname.clone().unwrap_or_else(|| "eth0".into()),
                        ns.clone(),
                    ),
                    AttachTarget::Veth(veth) => (
                        EndpointKind::Sidecar,
                        veth.clone(),
                        format!("vxbr{}", a.vni),
                    ),
                };
                self.writes.push(format!("attach {location} {ifname}"));
                if !self.networks.contains_key(&a.vni) {
                    return Err(ApiError::invalid("undeclared VNI"));
                }
                if self
                    .endpoints
                    .iter()
                    .any(|e| e.location == location && e.ifname == ifname)
                {
                    return Err(ApiError::exists("interface exists"));
                }
                let mac = a.mac.unwrap();
                // A local endpoint wins over a remote entry.
                self.peers.remove(&(a.vni, mac));
                self.next_id += 1;
                let e = EndpointInfo {
                    id: self.next_id,
                    vni: a.vni,
                    mac,
                    ips: a.ips.clone(),
                    mtu: a.mtu.unwrap_or(1450),
                    ifname,
                    location,
                    kind,
                    tap: format!("vx{}", self.next_id),
                    gateways: a.gateways.clone(),
                    path_mtu: 1450,
                    owner: a.owner,
                };
                self.endpoints.push(e.clone());
                v(e)
            }
            Request::Detach(d) => {
                self.writes.push(format!("detach {:?}", d.target));
                let before = self.endpoints.len();
                self.endpoints.retain(|e| match &d.target {
                    DetachTarget::Netns { netns, ifname } => {
                        !(e.location == *netns && ifname.as_ref().is_none_or(|i| *i == e.ifname))
                    }
                    DetachTarget::Veth(v) => e.ifname != *v,
                    DetachTarget::Id(id) => e.id != *id,
                });
                if before == self.endpoints.len() {
                    return Err(ApiError::not_found("nothing attached there"));
                }
                v(Vec::<EndpointInfo>::new())
            }
            Request::PeerAdd(p) => {
                self.writes.push(format!("peer_add {}", p.mac));
                let e =
                    self.peers
                        .entry((p.vni, p.mac))
                        .or_insert((BTreeSet::new(), p.vtep, p.owner));
                e.0.extend(p.ips.iter().copied());
                e.1 = p.vtep;
                e.2 = p.owner;
                v(())
            }
            Request::PeerDel(p) => {
                self.writes.push(format!("peer_del {}", p.mac));
                let Some(e) = self.peers.get_mut(&(p.vni, p.mac)) else {
                    return Err(ApiError::not_found("no such peer"));
                };
                if p.ips.is_empty() {
                    self.peers.remove(&(p.vni, p.mac));
                } else {
                    e.0.retain(|ip| !p.ips.contains(ip));
                }
                v(())
            }
            Request::VtepAdd(a) => {
                self.writes.push(format!("vtep_add {}", a.vtep));
                self.vteps.insert(a.vtep, (a.pubkey, a.owner));
                v(())
            }
            Request::VtepDel(d) => {
                self.writes.push(format!("vtep_del {}", d.vtep));
                self.vteps.remove(&d.vtep);
                v(())
            }
            Request::Services(_) => v(self
                .services
                .iter()
                .map(|((vni, vip), (backends, owner))| dp::ServiceInfo {
                    vni: *vni,
                    vip: *vip,
                    mac: MacAddr::from_ip(*vip),
                    table_size: 251,
                    backends: backends
                        .iter()
                        .map(|b| dp::BackendInfo {
                            ip: b.ip,
                            mac: b.mac.unwrap(),
                            flows: 0,
                        })
                        .collect(),
                    owner: *owner,
                })
                .collect::<Vec<_>>()),
            Request::ServiceSet(x) => {
                self.writes
                    .push(format!("service_set {} {}", x.vip, x.backends.len()));
                self.services
                    .insert((x.vni, x.vip), (x.backends.clone(), x.owner));
                v(())
            }
            Request::ServiceDel(x) => {
                self.writes.push(format!("service_del {}", x.vip));
                match self.services.remove(&(x.vni, x.vip)) {
                    Some(_) => v(()),
                    None => Err(ApiError::not_found("no such service")),
                }
            }
            other => Err(ApiError::internal(format!("fake: {other:?}"))),
        }
    }

    /// What a dataplane restart leaves: nothing.
    fn restart(&mut self) {
        let instance = self.instance + 1;
        *self = FakeDp {
            up: true,
            instance,
            ..FakeDp::default()
        };
    }
}

#[derive(Clone, Default)]
struct SharedDp(Arc<Mutex<FakeDp>>);

impl SharedDp {
    fn with<T>(&self, f: impl FnOnce(&mut FakeDp) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl DataplaneApi for SharedDp {
    fn send(&mut self, req: &Request) -> ApiResult<Response> {
        let mut d = self.0.lock().unwrap();
        if !d.up {
            return Err(ApiError::unavailable("cannot reach the dataplane"));
        }
        Ok(match d.answer(req) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        })
    }
}

// ---- a fake host -----------------------------------------------------

#[derive(Default)]
struct FakeHostState {
    netns: BTreeSet<String>,
    resolv: BTreeSet<String>,
    /// pid -> still running.
    procs: BTreeMap<u32, bool>,
    next_pid: u32,
    killed: Vec<u32>,
    /// The environment of every process started.
    envs: Vec<Vec<String>>,
    /// Processes ignore SIGTERM (they end only when killed).
    ignore_term: bool,
    /// Processes sent SIGTERM.
    terminated: Vec<u32>,
}

#[derive(Clone, Default)]
struct SharedHost(Arc<Mutex<FakeHostState>>);

impl SharedHost {
    fn with<T>(&self, f: impl FnOnce(&mut FakeHostState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl Host for SharedHost {
    fn netns_exists(&self, name: &str) -> bool {
        self.with(|h| h.netns.contains(name))
    }
    fn netns_add(&self, name: &str) -> Result<(), String> {
        self.with(|h| h.netns.insert(name.into()));
        Ok(())
    }
    fn netns_del(&self, name: &str) -> Result<(), String> {
        self.with(|h| h.netns.remove(name));
        Ok(())
    }
    fn write_resolv_conf(&self, name: &str) -> Result<(), String> {
        self.with(|h| h.resolv.insert(name.into()));
        Ok(())
    }
    fn remove_resolv_conf(&self, name: &str) {
        self.with(|h| h.resolv.remove(name));
    }
    fn process_alive(&self, pid: u32) -> bool {
        self.with(|h| h.procs.get(&pid) == Some(&true))
    }
    fn kill_group(&self, pid: u32) {
        self.with(|h| {
            h.procs.insert(pid, false);
            h.killed.push(pid);
        });
    }
    fn terminate_group(&self, pid: u32) {
        self.with(|h| h.terminated.push(pid));
        if !self.with(|h| h.ignore_term) {
            self.kill_group(pid);
        }
    }
    fn spawn(&self, _netns: &str, spawn: &Spawn) -> Result<u32, String> {
        let program = spawn.command.first().cloned().unwrap_or_default();
        if program.starts_with("/nonexistent") {
            return Err(format!("exec: \"{program}\": no such file or directory"));
        }
        Ok(self.with(|h| {
            h.envs.push(spawn.env.clone());
            h.next_pid += 1;
            let pid = 1000 + h.next_pid;
            h.procs.insert(pid, true);
            pid
        }))
    }
    fn exit(&self, pid: u32) -> Exit {
        match self.with(|h| h.procs.get(&pid).copied()) {
            Some(true) => Exit::Running,
            Some(false) => Exit::Code(137),
            None => Exit::Unknown,
        }
    }
}

// ---- a node: daemon, dataplane, host, reconciler ------------------------

/// A worker's link that calls a manager daemon in this process.
struct Direct(Arc<Daemon<MemStore, SharedDp>>);

impl ManagerLink for Direct {
    fn join(&self, _: SocketAddr, _: &str, _: &JoinParams) -> ApiResult<Joined> {
        Err(ApiError::internal("not in this test"))
    }
    fn call(
        &self,
        _: SocketAddr,
        identity: &crate::mgmt::NodeIdentity,
        call: ManagerCall,
    ) -> ApiResult<serde_json::Value> {
        self.0.node_call(&identity.node_id, call)
    }
}

/// A link that says the manager is out of reach.
struct Unreachable;

impl ManagerLink for Unreachable {
    fn join(&self, _: SocketAddr, _: &str, _: &JoinParams) -> ApiResult<Joined> {
        Err(ApiError::unavailable("no manager"))
    }
    fn call(
        &self,
        _: SocketAddr,
        _: &crate::mgmt::NodeIdentity,
        _: ManagerCall,
    ) -> ApiResult<serde_json::Value> {
        Err(ApiError::unavailable("cannot reach the manager"))
    }
}

struct Node {
    d: Arc<Daemon<MemStore, SharedDp>>,
    dp: SharedDp,
    host: SharedHost,
    stop: Arc<AtomicBool>,
    reconciler: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.d.poke();
        if let Some(t) = self.reconciler.take() {
            let _ = t.join();
        }
    }
}

fn node_with(hostname: &str, link: Arc<dyn ManagerLink>) -> Node {
    let dp = SharedDp::default();
    dp.with(|d| d.up = true);
    let host = SharedHost::default();
    let mut cfg = Config::new(hostname, "/tmp/vxnet-test-logs");
    cfg.realize_timeout = Duration::from_secs(10);
    let d = Arc::new(
        Daemon::new(MemStore::new(), dp.clone(), cfg, link)
            .with_local_addrs(Box::new(|| vec!["192.0.2.1".parse().unwrap()])),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut r = Reconciler::new(Arc::clone(&d), dp.clone(), host.clone());
    let s = Arc::clone(&stop);
    let reconciler = Some(std::thread::spawn(move || {
        r.run(Duration::from_millis(50), &s)
    }));
    Node {
        d,
        dp,
        host,
        stop,
        reconciler,
    }
}

fn node() -> Node {
    node_with("host1", Arc::new(Unreachable))
}

impl Node {
    fn ok<C: Call<Request = CtlRequest>>(&self, c: C) -> C::Reply {
        let req = c.into_request();
        let shown = format!("{req:?}");
        self.d
            .handle(req)
            .decode_as::<C::Reply>()
            .unwrap_or_else(|e| panic!("{shown}: {e}"))
    }

    fn err<C: Call<Request = CtlRequest>>(&self, c: C) -> ApiError {
        let req = c.into_request();
        let shown = format!("{req:?}");
        match self.d.handle(req).decode_as::<serde_json::Value>() {
            Ok(v) => panic!("{shown} should fail, answered {v}"),
            Err(e) => e,
        }
    }

    fn init(&self) -> InitView {
        self.ok(ctl::SwarmInit::default())
    }

    fn net(&self, name: &str) -> crate::model::Network {
        self.ok(ctl::NetworkCreate {
            name: name.into(),
            attachable: true,
            ..Default::default()
        })
    }

    fn run(&self, name: &str, nets: &[&str], command: &[&str]) -> ContainerView {
        self.ok(run_req(name, nets, command))
    }

    /// Waits for a reconciler pass that started after now.
    fn settle(&self) {
        let g = self.d.changes.bump();
        self.d.realized(g, "").unwrap();
    }

    fn writes(&self) -> Vec<String> {
        self.dp.with(|d| std::mem::take(&mut d.writes))
    }

    fn set_view(&self, v: GossipView) {
        *lock(&self.d.view_override) = Some(Arc::new(v));
        self.settle();
    }
}

/// A replicated VIP service of `sleep 600` on `net`.
fn service_req(name: &str, replicas: u64, net: &str) -> ctl::ServiceCreate {
    ctl::ServiceCreate {
        name: name.into(),
        mode: crate::model::ServiceMode::Replicated { replicas },
        endpoint_mode: crate::model::EndpointMode::Vip,
        networks: vec![ctl::ServiceNetworkRequest {
            network: net.into(),
            aliases: vec![],
        }],
        command: vec!["sleep".into(), "600".into()],
        env: vec![],
        restart: crate::model::RestartCondition::Any,
        ports: vec![],
    }
}

fn run_req(name: &str, nets: &[&str], command: &[&str]) -> ctl::ContainerCreate {
    ctl::ContainerCreate {
        name: name.into(),
        networks: nets
            .iter()
            .map(|n| ctl::EndpointRequest {
                network: (*n).into(),
                ..Default::default()
            })
            .collect(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![],
    }
}

fn member(last: u8) -> GossipIdentity {
    GossipIdentity {
        node_id: format!("node{last}"),
        gossip_addr: SocketAddr::new(IpAddr::from([192, 0, 2, last]), 7946),
        data_addr: IpAddr::from([192, 0, 2, last]),
        data_port: 4789,
        public_key: [last; 32],
        generation: 1,
    }
}

fn record(network: &str, ip: &str, vtep_last: u8) -> EndpointRecord {
    let ip: IpAddr = ip.parse().unwrap();
    EndpointRecord {
        network_id: network.into(),
        ip,
        mac: MacAddr::from_ip(ip).0,
        vtep: IpAddr::from([192, 0, 2, vtep_last]),
        version: 1,
        removed: false,
    }
}

// ---- tests -------------------------------------------------------------

#[test]
fn init_checks_its_addresses_and_prints_tokens() {
    let n = node();
    // Not an address of this host; the other family than the VTEP.
    let e = n.err(ctl::SwarmInit {
        advertise_addr: Some("198.51.100.9".parse().unwrap()),
        ..Default::default()
    });
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("not an address of any interface"), "{e}");
    assert!(
        e.message.contains("192.0.2.1"),
        "lists the usable ones: {e}"
    );
    let e = n.err(ctl::SwarmInit {
        advertise_addr: Some("2001:db8::1".parse().unwrap()),
        ..Default::default()
    });
    assert!(e.message.contains("same family"), "{e}");
    let e = n.err(ctl::SwarmInit {
        data_path_port: Some(4790),
        ..Default::default()
    });
    assert!(e.message.contains("listens on UDP port 4789"), "{e}");
    // None of that changed anything.
    assert_eq!(
        n.err(ctl::NodeLs::default()).code,
        ErrorCode::FailedPrecondition
    );

    let v = n.init();
    assert!(v.worker_token.starts_with("SWMTKN-1-"));
    assert_eq!(v.manager_addr.to_string(), "192.0.2.1:2377");
    let nodes = n.ok(ctl::NodeLs::default());
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].is_self);
    assert_eq!(nodes[0].node.public_key, PublicKey::from_bytes([7; 32]));
    let e = n.err(ctl::SwarmInit::default());
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
}

#[test]
fn a_container_is_made_real_and_removed_without_a_trace() {
    let n = node();
    n.init();
    let net = n.net("tnet");
    let c = n.run("c1", &["tnet"], &["sleep", "600"]);
    assert_eq!(c.state, ContainerState::Running);
    assert!(c.pid.is_some());
    assert!(
        n.host
            .with(|h| h.netns.contains("c1") && h.resolv.contains("c1"))
    );
    n.dp.with(|d| {
        let n = d.networks.get(&net.vni).unwrap();
        assert_eq!(
            (n.encrypted, n.flood, n.owner),
            (false, true, Owner::Control)
        );
        let e = &d.endpoints[0];
        assert_eq!((e.location.as_str(), e.ifname.as_str()), ("c1", "eth0"));
        assert_eq!(e.gateways.len(), 1, "the first network routes by default");
        assert_eq!(e.owner, Owner::Control);
    });
    // A pass over a dataplane that matches changes nothing.
    n.writes();
    n.settle();
    assert_eq!(n.writes(), Vec::<String>::new());

    // Running: refused without -f.
    let e = n.err(ctl::ContainerRm {
        container: "c1".into(),
        force: false,
    });
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("is running"), "{e}");
    n.ok(ctl::ContainerRm {
        container: "c1".into(),
        force: true,
    });
    assert!(n.host.with(|h| h.netns.is_empty() && h.resolv.is_empty()));
    assert!(n.host.with(|h| h.killed.len() == 1));
    n.dp.with(|d| {
        assert!(d.endpoints.is_empty());
        assert!(
            d.networks.is_empty(),
            "the network left with its last container"
        );
    });
    assert!(n.ok(ctl::ContainerLs { all: true }).is_empty());
    // Its address is free again.
    let again = n.run("c2", &["tnet"], &["sleep", "600"]);
    assert_eq!(again.networks[0].ipv4, c.networks[0].ipv4);
}

#[test]
fn a_command_that_cannot_start_refuses_the_run_and_leaves_nothing() {
    let n = node();
    n.init();
    n.net("tnet");
    let e = n.err(run_req("bad", &["tnet"], &["/nonexistent/binary"]));
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("/nonexistent/binary"), "{e}");
    assert!(e.message.contains("no such file"), "{e}");
    n.settle();
    assert!(n.ok(ctl::ContainerLs { all: true }).is_empty());
    assert!(n.host.with(|h| h.netns.is_empty()));
    n.dp.with(|d| assert!(d.endpoints.is_empty() && d.networks.is_empty()));
    // The name and address are free.
    n.run("bad", &["tnet"], &["sleep", "600"]);
}

#[test]
fn a_restarted_dataplane_gets_everything_back() {
    let n = node();
    n.init();
    let net = n.net("tnet");
    n.run("c1", &["tnet"], &["sleep", "600"]);
    // Another host with an endpoint (IPv4 and IPv6 records) on the network.
    n.set_view(GossipView {
        syncing: false,
        own: Some(member(1)),
        members: vec![member(2)],
        records: vec![
            record(&net.id, "10.0.0.3", 2),
            record(&net.id, "10.0.0.7", 2),
        ],
    });
    let before =
        n.dp.with(|d| (d.endpoints.len(), d.peers.clone(), d.vteps.clone()));
    assert_eq!(before.0, 1);
    assert_eq!(before.1.len(), 2);
    assert_eq!(before.2.len(), 1);
    // The dataplane restarts: endpoints, peers and keys come back.
    n.dp.with(FakeDp::restart);
    n.settle();
    let after =
        n.dp.with(|d| (d.endpoints.len(), d.peers.clone(), d.vteps.clone()));
    assert_eq!(after, before);
    // Entries made by hand are left alone.
    let hand = MacAddr::from_ip("10.0.0.99".parse().unwrap());
    n.dp.with(|d| {
        d.peers.insert(
            (net.vni, hand),
            (BTreeSet::new(), "192.0.2.9".parse().unwrap(), Owner::User),
        )
    });
    n.settle();
    assert!(n.dp.with(|d| d.peers.contains_key(&(net.vni, hand))));
    // The host goes Down: its peers and key go.
    n.set_view(GossipView {
        syncing: false,
        own: Some(member(1)),
        members: vec![],
        records: vec![record(&net.id, "10.0.0.3", 2)],
    });
    n.dp.with(|d| {
        assert_eq!(d.peers.len(), 1, "only the one made by hand: {:?}", d.peers);
        assert!(d.vteps.is_empty());
    });
}

/// A daemon that just (re)started sees an empty view until gossip pulled
/// its seed's state: nothing it lacks is removed from the dataplane until
/// then, so connections through other hosts' endpoints survive.
#[test]
fn nothing_is_removed_while_gossip_syncs() {
    let n = node();
    n.init();
    let net = n.net("tnet");
    n.run("c1", &["tnet"], &["sleep", "600"]);
    let host2 = vec![member(2)];
    let view = |members, records, syncing| GossipView {
        own: Some(member(1)),
        members,
        records,
        syncing,
    };
    n.set_view(view(host2, vec![record(&net.id, "10.0.0.3", 2)], false));
    let before = n.dp.with(|d| (d.peers.clone(), d.vteps.clone()));
    assert_eq!((before.0.len(), before.1.len()), (1, 1));
    // Restarted: gossip knows nobody yet, and says it is syncing.
    n.set_view(view(vec![], vec![], true));
    n.settle();
    assert_eq!(n.dp.with(|d| (d.peers.clone(), d.vteps.clone())), before);
    // Synced, and the host is really gone: now its peer and key go.
    n.set_view(view(vec![], vec![], false));
    n.dp.with(|d| assert!(d.peers.is_empty() && d.vteps.is_empty(), "{:?}", d.peers));
}

#[test]
fn leaving_refuses_while_containers_run_and_then_removes_everything() {
    let n = node();
    n.init();
    let net = n.net("tnet");
    n.run("web", &["tnet"], &["sleep", "600"]);
    n.run("db", &["tnet"], &["sleep", "600"]);
    n.set_view(GossipView {
        syncing: false,
        own: Some(member(1)),
        members: vec![member(2)],
        records: vec![record(&net.id, "10.0.0.9", 2)],
    });
    n.dp.with(|d| assert!(!d.peers.is_empty() && !d.vteps.is_empty()));
    let e = n.err(ctl::SwarmLeave { force: false });
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("web") && e.message.contains("db"), "{e}");
    assert_eq!(
        n.ok(ctl::ContainerLs::default()).len(),
        2,
        "nothing changed"
    );
    let v = n.ok(ctl::SwarmLeave { force: true });
    assert_eq!(
        v.removed_containers.iter().collect::<BTreeSet<_>>(),
        ["db", "web"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect()
    );
    // Everything the swarm programmed is gone, although gossip's last
    // view still lists the other host.
    n.dp.with(|d| {
        assert!(d.endpoints.is_empty() && d.networks.is_empty());
        assert!(d.peers.is_empty() && d.vteps.is_empty(), "{:?}", d.vteps);
    });
    assert!(n.host.with(|h| h.netns.is_empty()));
    // And a new swarm starts clean.
    *lock(&n.d.view_override) = None;
    n.init();
    let nets = n.ok(ctl::NetworkLs::default());
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].name, "ingress");
}

/// `vxnet trace --from FROM --to TO`: an echo request.
fn trace_of_icmp(from: &str, to: &str) -> vxnet_api::trace::SwarmTrace {
    vxnet_api::trace::SwarmTrace {
        from: from.into(),
        to: to.into(),
        network: None,
        proto: Default::default(),
        sport: None,
        dport: None,
        size: None,
        df: false,
    }
}

#[test]
fn stop_keeps_the_address_and_start_brings_it_back() {
    let n = node();
    n.init();
    n.net("tnet");
    let c = n.run("c1", &["tnet"], &["sleep", "600"]);
    let stopped = n.ok(ctl::ContainerStop {
        container: "c1".into(),
        timeout_secs: Some(0),
    });
    assert_eq!(stopped.state, ContainerState::Stopped);
    n.dp.with(|d| assert!(d.endpoints.is_empty() && d.networks.is_empty()));
    assert!(n.ok(ctl::ContainerLs { all: false }).is_empty());
    assert_eq!(n.ok(ctl::ContainerLs { all: true }).len(), 1);
    // A trace from it says it is stopped (the dataplane has no endpoint).
    let e = n.err(trace_of_icmp("c1", "10.0.0.9"));
    assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e}");
    assert!(e.message.contains("c1 is not running (stopped)"), "{e}");
    let started = n.ok(ctl::ContainerStart {
        container: "c1".into(),
    });
    assert_eq!(started.state, ContainerState::Running);
    assert_ne!(started.pid, c.pid, "a new process");
    assert_eq!(started.networks[0].ipv4, c.networks[0].ipv4);
    n.dp.with(|d| assert_eq!(d.endpoints.len(), 1));
}

/// A `container start` while a `container stop` waits for the command to
/// end: the stop says it was overtaken, at once, instead of waiting out its
/// grace period and reporting that the container did not stop.
#[test]
fn a_stop_overtaken_by_a_start_says_so() {
    let n = node();
    n.init();
    n.net("tnet");
    n.run("c1", &["tnet"], &["sleep", "600"]);
    n.host.with(|h| h.ignore_term = true);
    let d = Arc::clone(&n.d);
    let stopping = std::thread::spawn(move || {
        d.handle(
            ctl::ContainerStop {
                container: "c1".into(),
                timeout_secs: Some(2),
            }
            .into_request(),
        )
        .decode_as::<ContainerView>()
    });
    let state = || {
        n.ok(ctl::ContainerInspect {
            container: "c1".into(),
        })
        .state
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while state() != ContainerState::Stopped {
        assert!(Instant::now() < deadline, "the stop never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    n.ok(ctl::ContainerStart {
        container: "c1".into(),
    });
    let e = stopping.join().unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e}");
    assert!(e.message.contains("c1 was started again"), "{e}");
    assert_eq!(state(), ContainerState::Running);
}

/// A trace to any name of a stopped container (its name, short ID or
/// `NAME.NETWORK`) says it is stopped, though DNS no longer has it.
#[test]
fn a_trace_to_a_stopped_containers_names_says_it_is_stopped() {
    let n = node();
    n.init();
    n.net("tnet");
    let c1 = n.run("c1", &["tnet"], &["sleep", "600"]);
    n.run("c2", &["tnet"], &["sleep", "600"]);
    n.ok(ctl::ContainerStop {
        container: "c1".into(),
        timeout_secs: Some(0),
    });
    for to in ["c1", "C1", &c1.id[..12], "c1.tnet"] {
        let e = n.err(trace_of_icmp("c2", to));
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{to}: {e}");
        assert!(
            e.message.contains("container c1 on host1 is stopped"),
            "{to}: {e}"
        );
    }
    let e = n.err(trace_of_icmp("c2", "c9"));
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
}

/// A trace to the source's own address, or to a mistyped address, is
/// refused with what is wrong, before anything is traced.
#[test]
fn traces_to_own_or_mistyped_addresses_are_refused() {
    let n = node();
    n.init();
    n.net("tnet");
    let c = n.run("c1", &["tnet"], &["sleep", "600"]);
    let own = c.networks[0].ipv4.to_string();
    let e = n.err(trace_of_icmp("c1", &own));
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(
        e.message.contains(&format!("{own} is c1's own address")),
        "{e}"
    );
    for bad in ["999.1.1.1", "10.0.0", "fd00::zz"] {
        let e = n.err(trace_of_icmp("c1", bad));
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}: {e}");
        assert!(e.message.contains("not a valid IP address"), "{e}");
    }
    for (dst, what) in [
        ("::1", "loopback"),
        ("ff02::1", "multicast"),
        ("", "no destination"),
    ] {
        let e = n.err(trace_of_icmp("c1", dst));
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{dst}: {e}");
        assert!(e.message.contains(what), "{dst}: {e}");
    }
    let e = n.err(trace_of_icmp("c1", "nosuchname"));
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.message.contains("no name on network tnet"), "{e}");
    // The network's broadcast address: a flood, like 255.255.255.255.
    let ip: std::net::Ipv4Addr = own.parse().unwrap();
    let prefix = c.networks[0].prefix;
    let net = ipnet::Ipv4Net::new(ip, prefix).unwrap();
    let bcast = net.broadcast().to_string();
    let e = n.err(trace_of_icmp("c1", &bcast));
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{bcast}: {e}");
    assert!(
        e.message.contains("broadcast address of network tnet"),
        "{e}"
    );
}

#[test]
fn refusals_change_nothing() {
    let n = node();
    n.init();
    n.net("tnet");
    n.ok(ctl::NetworkCreate {
        name: "private".into(),
        ..Default::default()
    });
    for (req, code) in [
        (run_req("c1", &["nope"], &[]), ErrorCode::NotFound),
        (
            run_req("c1", &["private"], &[]),
            ErrorCode::FailedPrecondition,
        ),
        (
            run_req("bad name", &["tnet"], &[]),
            ErrorCode::InvalidArgument,
        ),
    ] {
        assert_eq!(n.err(req).code, code);
    }
    n.run("c1", &["tnet"], &["sleep", "600"]);
    let twice = n.err(run_req("c1", &["tnet"], &[]));
    assert_eq!(twice.code, ErrorCode::AlreadyExists);
    assert!(
        twice
            .message
            .contains("container name 'c1' is already used"),
        "{twice}"
    );
    let e = n.err(ctl::NetworkRm {
        network: "tnet".into(),
    });
    assert!(e.message.contains("c1"), "{e}");
    let mtu = n.err(ctl::NetworkCreate {
        name: "big".into(),
        options: [("mtu".to_owned(), "99999".to_owned())].into(),
        ..Default::default()
    });
    assert!(mtu.message.contains("out of range"), "{mtu}");
    n.settle();
    assert_eq!(n.ok(ctl::ContainerLs::default()).len(), 1);
    n.dp.with(|d| assert_eq!(d.endpoints.len(), 1));
}

/// What the manager records when a worker with dataplane key `[key; 32]`
/// joins.
fn add_worker(m: &Node, hostname: &str, key: u8) -> crate::model::Node {
    let _w = m.d.write();
    crate::cluster::add_node(
        &m.d.store,
        &crate::cluster::JoinRequest {
            hostname: hostname.into(),
            role: crate::model::Role::Worker,
            advertise_addr: IpAddr::from([192, 0, 2, key]),
            data_path_addr: None,
            public_key: PublicKey::from_bytes([key; 32]),
        },
        now(),
        &mut rand_core::OsRng,
    )
    .unwrap()
}

/// A manager and a worker in one process: the worker's calls reach the
/// manager daemon directly.
fn pair() -> (Node, Node, String) {
    let m = node();
    m.init();
    m.net("tnet");
    let w = node_with("host2", Arc::new(Direct(Arc::clone(&m.d))));
    // What a join would have written on both sides.
    let worker_node = { add_worker(&m, "host2", 2) };
    let c = crate::cluster::cluster(&m.d.store).unwrap();
    let ca = crate::mgmt::SwarmCa::generate(now()).unwrap();
    let identity = ca
        .issue_identity(&worker_node.id, crate::model::Role::Worker, now())
        .unwrap();
    {
        let mut txn = Txn::new();
        txn.put(&c).unwrap();
        txn.put(&worker_node).unwrap();
        txn.put(&LocalNode {
            node_id: worker_node.id.clone(),
        })
        .unwrap();
        txn.put(&MgmtState {
            identity,
            manager: Some("192.0.2.1:2377".parse().unwrap()),
        })
        .unwrap();
        w.d.store.apply(&txn).unwrap();
    }
    (m, w, worker_node.id)
}

#[test]
fn a_worker_runs_through_its_manager_and_the_manager_removes_its_container() {
    let (m, w, worker) = pair();
    let c = w.run("wc", &["tnet"], &["sleep", "600"]);
    assert_eq!(c.state, ContainerState::Running);
    // The manager knows it, as running elsewhere.
    let seen = m.ok(ctl::ContainerInspect {
        container: "wc".into(),
    });
    assert_eq!(seen.state, ContainerState::Remote);
    assert_eq!(seen.node, "host2");
    // The network cannot go while the worker uses it.
    assert!(
        m.err(ctl::NetworkRm {
            network: "tnet".into()
        })
        .message
        .contains("wc")
    );

    // The manager removes it: the worker's agent sees it, removes it, and
    // tells the manager, which then forgets it. Driven by hand here.
    let rm = {
        let md = Arc::clone(&m.d);
        std::thread::spawn(move || {
            md.handle(
                ctl::ContainerRm {
                    container: "wc".into(),
                    force: true,
                }
                .into_request(),
            )
        })
    };
    let set = loop {
        let set: crate::mgmt::calls::AssignmentSet = serde_json::from_value(
            m.d.node_call(
                &worker,
                ManagerCall::Assignments(crate::mgmt::calls::Assignments {
                    since: 0,
                    wait_ms: 0,
                }),
            )
            .unwrap(),
        )
        .unwrap();
        if set
            .containers
            .iter()
            .any(|c| c.desired == crate::model::DesiredState::Removed)
        {
            break set;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    w.d.apply_assignments(&set).unwrap();
    w.settle();
    assert!(w.host.with(|h| h.netns.is_empty()), "removed on the worker");
    w.dp.with(|d| assert!(d.endpoints.is_empty()));
    w.d.report_removed().unwrap();
    assert!(
        rm.join().unwrap().ok,
        "the manager's rm returns once confirmed"
    );
    assert_eq!(
        m.err(ctl::ContainerInspect {
            container: "wc".into()
        })
        .code,
        ErrorCode::NotFound
    );
    m.ok(ctl::NetworkRm {
        network: "tnet".into(),
    });
}

#[test]
fn a_worker_that_leaves_is_down_and_forgotten_and_a_rejoin_replaces_it() {
    let (m, w, worker) = pair();
    w.run("wc", &["tnet"], &["sleep", "600"]);
    let e = w.err(ctl::SwarmLeave { force: false });
    assert!(e.message.contains("wc"), "{e}");
    let v = w.ok(ctl::SwarmLeave { force: true });
    assert_eq!(v.removed_containers, ["wc"]);
    let n = m.ok(ctl::NodeInspect {
        node: worker.clone(),
    });
    assert_eq!(n.node.status, crate::model::NodeStatus::Down);
    assert!(n.node.down_reason.unwrap().contains("left"));
    assert!(m.ok(ctl::ContainerLs { all: true }).is_empty());
    // The same host (same key) joins again: one entry, not two.
    add_worker(&m, "host2", 2);
    let nodes = m.ok(ctl::NodeLs::default());
    assert_eq!(
        nodes.iter().filter(|n| n.node.hostname == "host2").count(),
        1
    );
}

#[test]
fn a_command_that_cannot_start_on_a_worker_leaves_no_record_anywhere() {
    let (m, w, _) = pair();
    let e = w.err(run_req("bad", &["tnet"], &["/nonexistent/binary"]));
    assert!(e.message.contains("/nonexistent/binary"), "{e}");
    for n in [&w, &m] {
        let e = n.err(ctl::ContainerInspect {
            container: "bad".into(),
        });
        assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    }
    assert!(w.host.with(|h| h.netns.is_empty()));
}

#[test]
fn a_node_that_left_stays_down_while_gossip_still_holds_it() {
    let (m, w, worker) = pair();
    w.ok(ctl::SwarmLeave { force: true });
    // The manager's gossip has not heard the goodbye yet.
    let mut held = member(2);
    held.node_id = worker.clone();
    m.set_view(GossipView {
        syncing: false,
        own: Some(member(1)),
        members: vec![held],
        records: vec![],
    });
    m.d.tend_node_status();
    let n = m.ok(ctl::NodeInspect { node: worker });
    assert_eq!(n.node.status, crate::model::NodeStatus::Down);
    assert_eq!(
        n.node.down_reason.as_deref(),
        Some(crate::cluster::LEFT_REASON)
    );
}

#[test]
fn an_ambiguous_hostname_names_the_candidates() {
    let m = node();
    m.init();
    for key in [3u8, 4] {
        add_worker(&m, "twin", key);
    }
    let e = m.err(ctl::NodeInspect {
        node: "twin".into(),
    });
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("ambiguous"), "{e}");
}

/// Polls `f` (tending the manager's services and waiting for a pass each
/// time) until it holds, for at most 10 s.
fn eventually(n: &Node, what: &str, f: impl Fn(&FakeDp) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        n.d.tend_ingress_endpoints();
        n.d.tend_services();
        n.settle();
        if n.dp.with(|d| f(d)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {:?}",
            n.dp.with(|d| d.services.clone())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backends_of(d: &FakeDp, vip: IpAddr) -> Option<usize> {
    d.services
        .iter()
        .find(|((_, v), _)| *v == vip)
        .map(|(_, (b, _))| b.len())
}

#[test]
fn a_service_vip_follows_its_running_tasks_and_leaves_with_it() {
    let n = node();
    n.init();
    n.net("tnet");
    let s = n.ok(service_req("web", 2, "tnet"));
    let vip = IpAddr::V4(s.service.vips[0].ipv4);
    eventually(&n, "two backends", |d| backends_of(d, vip) == Some(2));
    // Each task knows what it is.
    let envs = n.host.with(|h| h.envs.clone());
    assert_eq!(envs.len(), 2);
    for e in &envs {
        assert!(e.contains(&"VXNET_SERVICE_NAME=web".to_string()), "{e:?}");
    }
    let slots: BTreeSet<&String> = envs
        .iter()
        .flat_map(|e| e.iter().filter(|v| v.starts_with("VXNET_TASK_SLOT=")))
        .collect();
    assert_eq!(slots.len(), 2, "{envs:?}");
    n.dp.with(|d| {
        let (_, owner) = d.services.values().next().unwrap();
        assert_eq!(*owner, Owner::Control);
    });

    // A task whose command died is no backend until it runs again.
    let pid = n.host.with(|h| *h.procs.keys().next().unwrap());
    n.host.with(|h| h.procs.insert(pid, false));
    eventually(&n, "the dead task left", |d| backends_of(d, vip) == Some(1));

    // The dataplane restarts: the VIP comes back with its backends.
    n.dp.with(FakeDp::restart);
    eventually(&n, "the VIP is back", |d| backends_of(d, vip).is_some());

    let before = n.host.with(|h| h.terminated.len());
    n.ok(ctl::ServiceScale {
        service: "web".into(),
        replicas: 1,
    });
    eventually(&n, "scaled to one", |d| backends_of(d, vip) == Some(1));
    // The task scaled away got SIGTERM first (Docker's stop grace period).
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.host.with(|h| h.terminated.len()) == before {
        assert!(
            Instant::now() < deadline,
            "no SIGTERM for the task scaled away"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Removed: the VIP goes, and the network with it.
    let rm = {
        let d = Arc::clone(&n.d);
        std::thread::spawn(move || {
            d.handle(
                ctl::ServiceRm {
                    service: "web".into(),
                }
                .into_request(),
            )
        })
    };
    eventually(&n, "the VIP left", |d| {
        d.services.is_empty() && d.networks.is_empty()
    });
    assert!(rm.join().unwrap().ok);
}

#[test]
fn a_published_port_is_programmed_repaired_and_withdrawn() {
    let n = node();
    n.init();
    n.net("tnet");
    let s = n.ok(ctl::ServiceCreate {
        ports: vec![ctl::PortRequest {
            protocol: crate::model::PortProtocol::Tcp,
            target_port: 80,
            published_port: Some(8080),
            publish_mode: crate::model::PublishMode::Ingress,
        }],
        ..service_req("web", 1, "tnet")
    });
    assert_eq!(s.service.vips.len(), 2, "{:?}", s.service.vips);
    let key = (dp::PortProtocol::Tcp, 8080);
    let published = |d: &FakeDp| {
        d.ports.get(&key).is_some_and(|(p, _)| p.target == 80)
            && d.host_link
                .as_ref()
                .is_some_and(|(h, _)| h.ingress.is_some())
    };
    eventually(&n, "8080 published through the mesh", published);
    // The task is on the ingress network first (its default route).
    let tasks = n.ok(ctl::ServicePs {
        service: "web".into(),
    });
    let ingress = n.ok(ctl::NetworkInspect {
        network: "ingress".into(),
    });
    let task = n.ok(ctl::ContainerInspect {
        container: tasks[0].container.clone(),
    });
    assert_eq!(task.networks[0].network_id, ingress.network.id);
    // A pass with nothing to do writes nothing.
    n.settle();
    n.writes();
    n.settle();
    assert!(
        !n.writes()
            .iter()
            .any(|w| w.starts_with("port_") || w.starts_with("host_link")),
        "no duplicates"
    );
    // The host's firewall lost the element: published again.
    n.dp.with(|d| d.ports.get_mut(&key).unwrap().1 = false);
    eventually(&n, "repaired", |d| d.ports.get(&key).is_some_and(|p| p.1));
    // The firewall table went: the link is set again, and the port.
    n.dp.with(|d| d.host_link.as_mut().unwrap().1 = false);
    eventually(&n, "table rewritten", |d| {
        d.host_link.as_ref().is_some_and(|h| h.1) && published(d)
    });
    // A dataplane restart: everything comes back.
    n.dp.with(FakeDp::restart);
    eventually(&n, "back after a restart", published);
    // Unpublished: the port goes, the ingress network with it.
    n.ok(ctl::ServiceUpdate {
        service: "web".into(),
        publish_rm: vec![ctl::PortRequest {
            protocol: crate::model::PortProtocol::Tcp,
            target_port: 80,
            published_port: None,
            publish_mode: crate::model::PublishMode::Ingress,
        }],
        ..Default::default()
    });
    eventually(&n, "8080 withdrawn", |d| {
        d.ports.is_empty()
            && d.host_link
                .as_ref()
                .is_some_and(|(h, _)| h.ingress.is_none())
    });
}

#[test]
fn a_restarted_manager_does_not_take_ready_nodes_for_down() {
    let (m, _w, worker) = pair();
    // The worker joined long ago; this manager process has just started
    // and its gossip has heard of nobody yet.
    let mut n =
        m.d.store
            .list::<crate::model::Node>()
            .unwrap()
            .into_iter()
            .find(|n| n.id == worker)
            .unwrap();
    n.created = 0;
    m.d.store.put(&n).unwrap();
    let alone = GossipView {
        syncing: false,
        own: Some(member(1)),
        members: vec![],
        records: vec![],
    };
    m.set_view(alone.clone());
    m.d.tend_node_status();
    let status = |m: &Node| {
        m.ok(ctl::NodeInspect {
            node: worker.clone(),
        })
        .node
        .status
    };
    assert_eq!(status(&m), crate::model::NodeStatus::Ready);
    // The grace from the start has passed and gossip never found it: Down.
    m.d.tending_since.store(1, Ordering::Relaxed);
    m.d.tend_node_status();
    assert_eq!(status(&m), crate::model::NodeStatus::Down);
}

#[test]
fn a_task_that_cannot_be_created_is_the_services_visible_problem() {
    let n = node();
    n.init();
    // A /29 holds 5 addresses after the gateway: the VIP and 4 tasks.
    n.ok(ctl::NetworkCreate {
        name: "tiny".into(),
        subnets: vec!["10.9.9.0/29".parse().unwrap()],
        ..Default::default()
    });
    n.ok(service_req("many", 6, "tiny"));
    n.d.tend_services();
    let view = n.ok(ctl::ServiceInspect {
        service: "many".into(),
    });
    let e = view.schedule_error.expect("the missing tasks say why");
    assert!(e.contains("no free address left in 10.9.9.0/29"), "{e}");
    // Down to what fits: nothing is wrong any more.
    n.ok(ctl::ServiceScale {
        service: "many".into(),
        replicas: 2,
    });
    n.d.tend_services();
    let view = n.ok(ctl::ServiceInspect {
        service: "many".into(),
    });
    assert_eq!(view.schedule_error, None);
}
