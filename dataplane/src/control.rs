//! The dataplane's control side: the state behind the local API (endpoints,
//! bridges, the master copy of the forwarding table) and the handling of
//! each request. A request is validated completely before anything changes;
//! a step that fails half-way undoes what it did, so a refused request
//! leaves no TAP, bridge or table entry behind.
//!
//! The state's lock is never held while the kernel is configured (TAPs,
//! bridges, addresses through netlink) or while workers let go of a port:
//! an attach claims what it needs under the lock, configures without it and
//! commits under it again (see `Dataplane::attach`); a detach forgets the
//! endpoint under the lock and removes its devices after.

mod underlay;
pub use underlay::WATCH_INTERVAL as UNDERLAY_WATCH_INTERVAL;

use crate::attach::{self, Bridge};
use crate::sys::tap::Tap;
use crate::worker::{self, Command, FdbCell, PollMode, WorkerConfig, WorkerHandle};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vxnet_proto::crypto::OsRng;
use vxnet_proto::crypto::keys::{PublicKey, StaticKeypair};
use vxnet_proto::crypto::session::{SaDirection, Session, SessionConfig};
use vxnet_proto::engine::EngineConfig;
use vxnet_proto::fdb::{Dest, Fdb, PortId};
use vxnet_proto::lb::conntrack::ConntrackConfig;
use vxnet_proto::mtu::ESP_OVERHEAD;
use vxnet_proto::replication::FloodPolicy;
use vxnet_proto::stats::{Counter, Drop, Snapshot};
use vxnet_proto::wire::{MacAddr, Vni};

use vxnet_api::dp::{
    self, Attach, AttachTarget, DetachTarget, EndpointInfo, EndpointKind, FdbEntry, FdbKind,
    NetworkInfo, Owner, PeerAdd, Request, SaEntry, SaState, ShowReport, StatsReport, VtepInfo,
};
use vxnet_api::{ApiError, IpNet, Response};

type R<T> = Result<T, ApiError>;

mod host_link;
mod observe;
mod services;
mod trace;

/// Start-up settings of a dataplane.
#[derive(Debug, Clone)]
pub struct Config {
    pub local_vtep: IpAddr,
    pub port: u16,
    pub workers: usize,
    pub src_ports: usize,
    pub poll: PollMode,
    pub spin: Duration,
    /// Endpoint MTU when an attach gives none (`--mtu`), in place of the
    /// one the underlay carries (the path MTU rule, [`vxnet_proto::mtu`]).
    pub mtu: Option<u32>,
    /// Frames per second each network may flood unless it says.
    pub flood_rate: u32,
    /// This host's X25519 static key.
    pub keypair: Arc<StaticKeypair>,
    /// How often each host pair rotates its keys.
    pub rekey_interval: Duration,
    /// Whether `sa --show-keys` may print keys.
    pub allow_key_export: bool,
    /// Each worker's conntrack table for flows to service VIPs.
    pub conntrack: ConntrackConfig,
    /// Entries of each service's Maglev table (a prime).
    pub maglev_size: u32,
}

impl Config {
    /// A dataplane on 127.0.0.1 (any port) with one interrupt-driven worker
    /// and a fresh key: for tests of the request handling.
    #[doc(hidden)]
    pub fn loopback_for_tests() -> Config {
        Config {
            local_vtep: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            workers: 1,
            src_ports: 1,
            poll: PollMode::Interrupt,
            spin: Duration::ZERO,
            mtu: Some(1450),
            flood_rate: vxnet_proto::replication::DEFAULT_RATE,
            keypair: Arc::new(StaticKeypair::generate(&mut OsRng)),
            rekey_interval: Duration::from_secs(3600),
            allow_key_export: false,
            conntrack: ConntrackConfig {
                capacity: 1024,
                ..ConntrackConfig::default()
            },
            maglev_size: 251,
        }
    }
}

/// Bytes each inner packet gains on the wire as UDP payload: its Ethernet
/// header, the VXLAN header and, on an encrypted network, ESP.
fn wire_overhead(encrypted: bool) -> u32 {
    let plain = 14 + vxnet_proto::wire::vxlan::HEADER_LEN as u32;
    if encrypted {
        plain + ESP_OVERHEAD
    } else {
        plain
    }
}

/// An attach between its check and its commit: what it holds so that no
/// other request takes the same endpoint id, port, MAC, addresses or device
/// while the kernel is being configured without the lock.
#[derive(Clone)]
struct Claim {
    id: u32,
    plan: attach::Plan,
    target: AttachTarget,
    port: PortId,
    /// This attach makes the VNI's bridge (its slot is `Busy` meanwhile).
    new_bridge: bool,
    /// Whether the VNI was encrypted when the plan (MTU) was made.
    encrypted: bool,
    /// The MTU the underlay carried for the VNI then.
    path_mtu: u32,
    /// Who asked for it.
    owner: Owner,
}

/// What the kernel side of an attach made.
enum Made {
    /// The TAP and the namespace it lives in.
    Native(Arc<Tap>, String),
    /// The bridge, if this attach made it.
    Sidecar(Option<Bridge>),
}

/// A VNI's sidecar bridge, or a request making or removing it outside the
/// lock (attaches that need it wait on `Dataplane::bridge_done`).
enum BridgeSlot {
    Ready(Bridge),
    Busy,
}

/// One attached endpoint.
struct Endpoint {
    info: EndpointInfo,
    port: PortId,
    /// Native endpoints own their TAP; sidecar ones share their bridge's.
    tap: Option<Arc<Tap>>,
}

#[derive(Default)]
struct State {
    fdb: Fdb,
    endpoints: BTreeMap<u32, Endpoint>,
    next_id: u32,
    bridges: HashMap<Vni, BridgeSlot>,
    /// Attaches in progress.
    claims: Vec<Claim>,
    /// Ports being taken from the workers after a detach; not reused yet.
    draining: Vec<PortId>,
    next_worker: usize,
    /// Hosts whose public keys we were told, and by whom.
    vteps: BTreeMap<IpAddr, (PublicKey, Owner)>,
    /// Networks declared with `network_add`, and by whom.
    networks: BTreeMap<Vni, Owner>,
    /// Who added each remote FDB entry.
    peer_owners: HashMap<(Vni, MacAddr), Owner>,
    /// Who set each service.
    service_owners: HashMap<(Vni, IpAddr), Owner>,
    /// The host link's port, reserved from its creation on.
    host_port: Option<PortId>,
}

pub struct Dataplane {
    cfg: Config,
    /// Random per start, reported by `show` so clients notice a restart.
    instance: u64,
    cell: Arc<FdbCell>,
    state: Mutex<State>,
    /// Signalled when a bridge slot stops being `Busy`.
    bridge_done: Condvar,
    workers: Mutex<Vec<WorkerHandle>>,
    /// The host link; its lock serializes host-link and port requests
    /// (taken before `state`'s, never after).
    host: Mutex<Option<host_link::Linked>>,
    stats: Vec<Arc<vxnet_proto::stats::Stats>>,
    /// A capture, or a live trace, is running (one of each at a time).
    capturing: observe::SlotState,
    live_tracing: observe::SlotState,
    gso: bool,
    gro: bool,
    /// Set by [`Dataplane::shutdown`]: the underlay watcher ends.
    stopping: AtomicBool,
    /// Test hook: (reached, go) for [`Dataplane::stall_before_configure`].
    #[cfg(test)]
    stall: Mutex<
        Option<(
            crossbeam_channel::Sender<()>,
            crossbeam_channel::Receiver<()>,
        )>,
    >,
}

impl Dataplane {
    /// Binds the sockets and starts the workers.
    pub fn start(cfg: Config) -> std::io::Result<Dataplane> {
        let mut fdb = Fdb::default();
        fdb.set_underlay(underlay::read(cfg.local_vtep));
        fdb.set_flood_rate(cfg.flood_rate);
        let cell = Arc::new(FdbCell::new(fdb.clone()));
        let mut workers = Vec::with_capacity(cfg.workers);
        for id in 0..cfg.workers.max(1) {
            let wc = WorkerConfig {
                id,
                local: SocketAddr::new(cfg.local_vtep, cfg.port),
                src_ports: cfg.src_ports,
                poll: cfg.poll,
                spin: cfg.spin,
                engine: EngineConfig {
                    port: cfg.port,
                    conntrack: cfg.conntrack,
                },
            };
            workers.push(worker::spawn(wc, Arc::clone(&cell))?);
        }
        let stats = workers.iter().map(|w| Arc::clone(&w.stats)).collect();
        let gso = workers.iter().all(|w| w.gso);
        let gro = workers.iter().all(|w| w.gro);
        Ok(Dataplane {
            instance: rand_instance(),
            cfg,
            cell,
            state: Mutex::new(State {
                next_id: 1,
                fdb,
                ..State::default()
            }),
            bridge_done: Condvar::new(),
            workers: Mutex::new(workers),
            host: Mutex::new(None),
            stats,
            capturing: Arc::default(),
            live_tracing: Arc::default(),
            gso,
            gro,
            stopping: AtomicBool::new(false),
            #[cfg(test)]
            stall: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::sum(self.stats.iter().map(|s| &**s))
    }

    /// (endpoints, VNIs) for gauges.
    pub fn sizes(&self) -> (usize, usize) {
        let st = self.lock();
        (st.endpoints.len(), st.fdb.vnis().count())
    }

    /// Head-end replication counters of every VNI.
    pub fn flood_counts(&self) -> Vec<(Vni, vxnet_proto::replication::FloodCounts)> {
        let st = self.lock();
        let mut v: Vec<_> = st
            .fdb
            .vnis()
            .map(|(vni, t)| (vni, t.replication.counts()))
            .collect();
        v.sort_by_key(|(vni, _)| *vni);
        v
    }

    pub fn worker_count(&self) -> usize {
        self.stats.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one API request.
    pub fn handle(&self, req: Request) -> Response {
        use Response as Re;
        match req {
            Request::Attach(a) => Re::of::<Attach>(self.attach(a)),
            Request::Detach(d) => Re::of::<dp::Detach>(self.detach(d.target)),
            Request::PeerAdd(p) => Re::of::<PeerAdd>(self.peer_add(p)),
            Request::PeerDel(p) => Re::of::<dp::PeerDel>(self.peer_del(p)),
            Request::FloodAdd(f) => Re::of::<dp::FloodAdd>(
                self.check_vtep(f.vtep)
                    .and_then(|()| self.edit_fdb(|x| x.add_flood(f.vni, f.vtep))),
            ),
            Request::FloodDel(f) => {
                Re::of::<dp::FloodDel>(self.edit_fdb(|x| x.remove_flood(f.vni, f.vtep)))
            }
            Request::Stats(_) => Re::of::<dp::Stats>(Ok(self.stats_report())),
            Request::Fdb(f) => Re::of::<dp::Fdb>(Ok(self.fdb_entries(f.vni))),
            Request::Endpoints(_) => Re::of::<dp::Endpoints>(Ok(self.endpoints())),
            Request::Show(_) => Re::of::<dp::Show>(Ok(self.show())),
            Request::NetworkAdd(n) => Re::of::<dp::NetworkAdd>(self.network_add(&n)),
            Request::NetworkDel(n) => Re::of::<dp::NetworkDel>(self.network_del(n.vni)),
            Request::Networks(_) => Re::of::<dp::Networks>(Ok(self.networks())),
            Request::VtepAdd(v) => Re::of::<dp::VtepAdd>(self.vtep_add(v.vtep, v.pubkey, v.owner)),
            Request::VtepDel(v) => Re::of::<dp::VtepDel>(self.vtep_del(v.vtep)),
            Request::Vteps(_) => Re::of::<dp::Vteps>(Ok(self.vteps())),
            Request::Rekey(r) => Re::of::<dp::Rekey>(self.rekey(r.vtep)),
            Request::Sa(r) => Re::of::<dp::Sa>(self.sas(r.show_keys)),
            Request::ServiceSet(s) => Re::of::<dp::ServiceSet>(self.service_set(s)),
            Request::ServiceDel(s) => Re::of::<dp::ServiceDel>(self.service_del(s.vni, s.vip)),
            Request::Services(s) => Re::of::<dp::Services>(self.services(s.vni)),
            Request::Conntrack(c) => Re::of::<dp::Conntrack>(self.conntrack(c.vni, c.limit)),
            Request::HostLinkSet(h) => Re::of::<dp::HostLinkSet>(self.host_link_set(h)),
            Request::HostLinkDel(_) => Re::of::<dp::HostLinkDel>(self.host_link_del()),
            Request::HostLink(_) => Re::of::<dp::HostLink>(Ok(self.host_link())),
            Request::PortSet(p) => Re::of::<dp::PortSet>(self.port_set(p)),
            Request::PortDel(p) => Re::of::<dp::PortDel>(self.port_del(p.protocol, p.published)),
            Request::Ports(_) => Re::of::<dp::Ports>(Ok(self.ports())),
            Request::Trace(t) => Re::of::<dp::Trace>(self.trace(t)),
            Request::TraceWire(t) => Re::of::<dp::TraceWire>(self.trace_wire(t)),
            Request::Capture(_) | Request::LiveTrace(_) => Re::err(ApiError::invalid(
                "capture and live_trace answer with a stream; the API server hands them to handle_reply",
            )),
        }
    }

    fn edit_fdb<E: Into<FdbRefusal>>(&self, f: impl FnOnce(&mut Fdb) -> Result<(), E>) -> R<()> {
        let mut st = self.lock();
        let mut next = st.fdb.clone();
        f(&mut next).map_err(|e| e.into().0)?;
        self.cell.publish(next.clone());
        st.fdb = next;
        Ok(())
    }

    fn check_vtep(&self, vtep: IpAddr) -> R<()> {
        remote_vtep(self.cfg.local_vtep, vtep)
    }

    /// Adds a remote endpoint; where that moved an address to another MAC
    /// or host, the local endpoints of the VNI are told at once.
    fn peer_add(&self, p: PeerAdd) -> R<()> {
        self.check_vtep(p.vtep)?;
        let news = {
            let mut st = self.lock();
            let mut next = st.fdb.clone();
            next.add_remote(p.vni, p.mac, &p.ips, p.vtep)
                .map_err(|e| FdbRefusal::from(e).0)?;
            let news = underlay::announcements(&st.fdb, &next, p.vni, p.mac, &p.ips);
            self.cell.publish(next.clone());
            st.fdb = next;
            st.peer_owners.insert((p.vni, p.mac), p.owner);
            news
        };
        self.announce(news);
        Ok(())
    }

    fn peer_del(&self, p: dp::PeerDel) -> R<()> {
        self.edit_fdb(|f| f.remove_remote(p.vni, p.mac, &p.ips))?;
        if p.ips.is_empty() {
            self.lock().peer_owners.remove(&(p.vni, p.mac));
        }
        Ok(())
    }

    /// Attaches an endpoint in three steps so that no lock is held while
    /// the kernel is configured: [`Self::reserve`] checks the request and
    /// claims its id, port, MAC, addresses and device under the lock;
    /// [`Self::configure`] makes the TAP (or bridge port) without it; and
    /// [`Self::commit`] takes the lock again to publish the endpoint, or to
    /// drop the claim and undo the kernel side. Other requests (stats, FDB,
    /// other attaches) run meanwhile; only a sidecar attach that needs a
    /// bridge still being made or removed waits for it.
    fn attach(&self, req: Attach) -> R<EndpointInfo> {
        let claim = self.reserve(&req)?;
        #[cfg(test)]
        self.stall_before_configure();
        let made = self.configure(&claim);
        self.commit(claim, made)
    }

    /// Checks `req` against the table and the other claims and records its
    /// claim. Refused requests change nothing.
    fn reserve(&self, req: &Attach) -> R<Claim> {
        // A new endpoint gets the MTU the underlay carries now.
        self.refresh_underlay();
        let mut st = self.lock();
        let encrypted = st.fdb.is_encrypted(req.vni);
        let plan = attach::Plan::validate(
            req,
            self.default_mtu(&st.fdb, req.vni),
            wire_overhead(encrypted),
        )
        .map_err(ApiError::invalid)?;
        let ips: Vec<IpAddr> = plan.ips.iter().map(|n| n.addr()).collect();
        let (port, new_bridge) = match &req.target {
            AttachTarget::Netns(ns) => {
                if let Some(c) = st.claims.iter().find(|c| {
                    matches!(&c.target, AttachTarget::Netns(n) if n == ns)
                        && c.plan.ifname == plan.ifname
                }) {
                    return Err(ApiError::exists(format!(
                        "interface {} in network namespace '{ns}' is being attached (endpoint {})",
                        plan.ifname, c.id
                    )));
                }
                (free_port(&st), false)
            }
            AttachTarget::Veth(veth) => {
                // A bridge being made or removed by another request: wait
                // for it (that request holds no lock either).
                while matches!(st.bridges.get(&plan.vni), Some(BridgeSlot::Busy)) {
                    st = self
                        .bridge_done
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                let attached = st
                    .endpoints
                    .values()
                    .any(|e| e.info.kind == EndpointKind::Sidecar && e.info.ifname == *veth);
                let claimed = st
                    .claims
                    .iter()
                    .any(|c| matches!(&c.target, AttachTarget::Veth(v) if v == veth));
                if attached || claimed {
                    return Err(ApiError::exists(format!("veth {veth} is already attached")));
                }
                match st.bridges.get(&plan.vni) {
                    Some(BridgeSlot::Ready(b)) => (b.port, false),
                    _ => (free_port(&st), true),
                }
            }
        };
        st.fdb
            .check_local(port, plan.vni, plan.mac, &ips)
            .map_err(|e| FdbRefusal::from(e).0)?;
        for c in st.claims.iter().filter(|c| c.plan.vni == plan.vni) {
            if c.plan.mac == plan.mac {
                return Err(ApiError::exists(format!(
                    "MAC {} is already used on VNI {} by endpoint {}, being attached",
                    plan.mac, plan.vni, c.id
                )));
            }
            if let Some(ip) = c.plan.ips.iter().find(|n| ips.contains(&n.addr())) {
                return Err(ApiError::exists(format!(
                    "IP {} is already used on VNI {} by endpoint {}, being attached",
                    ip.addr(),
                    plan.vni,
                    c.id
                )));
            }
        }
        if new_bridge {
            st.bridges.insert(plan.vni, BridgeSlot::Busy);
        }
        let id = st.next_id;
        st.next_id += 1;
        let claim = Claim {
            id,
            plan,
            target: req.target.clone(),
            port,
            new_bridge,
            encrypted,
            path_mtu: st.fdb.underlay().path_mtu(encrypted),
            owner: req.owner,
        };
        st.claims.push(claim.clone());
        Ok(claim)
    }

    /// The kernel side of an attach; runs without the lock.
    fn configure(&self, claim: &Claim) -> Result<Made, String> {
        let plan = &claim.plan;
        match &claim.target {
            AttachTarget::Netns(ns) => {
                let (tap, location) = attach::native(ns, plan)?;
                Ok(Made::Native(Arc::new(tap), location))
            }
            AttachTarget::Veth(veth) => {
                let bridge = if claim.new_bridge {
                    Some(Bridge::create(plan.vni, claim.port, plan.mtu)?)
                } else {
                    None
                };
                if let Err(e) = attach::enslave(&attach::bridge_name(plan.vni), veth, plan.mtu) {
                    if let Some(b) = bridge {
                        b.destroy();
                    }
                    return Err(e);
                }
                Ok(Made::Sidecar(bridge))
            }
        }
    }

    /// Publishes a configured endpoint, or drops its claim when `made`
    /// failed or the table changed meanwhile so that it no longer fits (a
    /// remote peer took the MAC, the network's encryption changed); the
    /// kernel side is then undone, outside the lock.
    fn commit(&self, claim: Claim, made: Result<Made, String>) -> R<EndpointInfo> {
        let mut st = self.lock();
        st.claims.retain(|c| c.id != claim.id);
        let plan = &claim.plan;
        let ips: Vec<IpAddr> = plan.ips.iter().map(|n| n.addr()).collect();
        let made = match made {
            Ok(m) => m,
            Err(e) => {
                drop(st);
                self.free_bridge_slot(&claim, None);
                // The kernel refused (no such namespace, a name taken).
                return Err(ApiError::precondition(e));
            }
        };
        let mut next = st.fdb.clone();
        let fits = if st.fdb.is_encrypted(plan.vni) != claim.encrypted {
            Err(ApiError::precondition(format!(
                "VNI {} changed between plain and encrypted during the attach; attach again",
                plan.vni
            )))
        } else {
            next.add_local(claim.port, plan.vni, plan.mac, &ips)
                .map_err(|e| FdbRefusal::from(e).0)
        };
        if let Err(e) = fits {
            drop(st);
            match made {
                // Closing the last descriptor deletes the TAP.
                Made::Native(tap, _) => drop(tap),
                Made::Sidecar(bridge) => {
                    if let AttachTarget::Veth(veth) = &claim.target {
                        attach::release(veth);
                    }
                    self.free_bridge_slot(&claim, bridge);
                }
            }
            return Err(e);
        }
        let info = match made {
            Made::Native(tap, location) => {
                self.add_port(&mut st, claim.port, &tap);
                let info = endpoint_info(
                    &claim,
                    (plan.ifname.clone(), location),
                    EndpointKind::Native,
                    tap.name(),
                );
                st.endpoints.insert(
                    info.id,
                    Endpoint {
                        info: info.clone(),
                        port: claim.port,
                        tap: Some(tap),
                    },
                );
                info
            }
            Made::Sidecar(new_bridge) => {
                if let Some(b) = new_bridge {
                    self.add_port(&mut st, claim.port, &b.tap);
                    st.bridges.insert(plan.vni, BridgeSlot::Ready(b));
                    self.bridge_done.notify_all();
                }
                let Some(BridgeSlot::Ready(b)) = st.bridges.get_mut(&plan.vni) else {
                    // reserve() saw it Ready, and a bridge with a claim on
                    // it is never removed (see detach).
                    return Err(ApiError::internal(format!(
                        "internal error: bridge of VNI {} vanished",
                        plan.vni
                    )));
                };
                b.members += 1;
                let (bridge, tap) = (b.name.clone(), b.tap.name().to_string());
                let veth = match &claim.target {
                    AttachTarget::Veth(v) => v.clone(),
                    AttachTarget::Netns(_) => String::new(),
                };
                let info = endpoint_info(&claim, (veth, bridge), EndpointKind::Sidecar, &tap);
                st.endpoints.insert(
                    info.id,
                    Endpoint {
                        info: info.clone(),
                        port: claim.port,
                        tap: None,
                    },
                );
                info
            }
        };
        let news = underlay::announcements(&st.fdb, &next, plan.vni, plan.mac, &ips);
        self.cell.publish(next.clone());
        st.fdb = next;
        drop(st);
        self.announce(news);
        Ok(info)
    }

    /// After a failed sidecar attach: deletes the bridge it made (if any)
    /// and lets waiting attaches go on; or, when it meant to join an
    /// existing bridge that meanwhile lost its last member, removes that.
    fn free_bridge_slot(&self, claim: &Claim, bridge: Option<Bridge>) {
        if !claim.new_bridge {
            let idle = take_idle_bridge(&mut self.lock(), claim.plan.vni);
            if let Some(b) = idle {
                self.drop_bridge(b);
            }
            return;
        }
        if let Some(b) = bridge {
            b.destroy();
        }
        let mut st = self.lock();
        st.bridges.remove(&claim.plan.vni);
        self.bridge_done.notify_all();
    }

    /// Test hook: an attach reports that it has reserved and waits for the
    /// go-ahead before configuring.
    #[cfg(test)]
    fn stall_before_configure(&self) {
        let hook = self
            .stall
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((reached, go)) = hook {
            let _ = reached.send(());
            let _ = go.recv();
        }
    }

    /// Hands a new port's TAP to every worker; one of them polls it.
    fn add_port(&self, st: &mut State, port: PortId, tap: &Arc<Tap>) {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let owner = st.next_worker % workers.len().max(1);
        st.next_worker += 1;
        for (i, w) in workers.iter().enumerate() {
            w.send(Command::AddPort {
                port,
                tap: Arc::clone(tap),
                owner: i == owner,
            });
        }
    }

    /// Takes a port away from every worker and waits until none uses it.
    fn remove_port(&self, port: PortId) {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let (tx, rx) = crossbeam_channel::bounded(workers.len());
        for w in workers.iter() {
            w.send(Command::RemovePort {
                port,
                done: tx.clone(),
            });
        }
        for _ in 0..workers.len() {
            if rx.recv_timeout(Duration::from_secs(5)).is_err() {
                tracing::error!(port, "a worker did not release a port in time");
                break;
            }
        }
    }

    fn detach(&self, target: DetachTarget) -> R<Vec<EndpointInfo>> {
        let mut st = self.lock();
        let ids: Vec<u32> = st
            .endpoints
            .values()
            .filter(|e| match &target {
                DetachTarget::Id(id) => e.info.id == *id,
                DetachTarget::Netns { netns, ifname } => {
                    e.info.kind == EndpointKind::Native
                        && e.info.location == *netns
                        && ifname.as_ref().is_none_or(|i| *i == e.info.ifname)
                }
                DetachTarget::Veth(v) => {
                    e.info.kind == EndpointKind::Sidecar && e.info.ifname == *v
                }
            })
            .map(|e| e.info.id)
            .collect();
        if ids.is_empty() {
            return Err(ApiError::not_found(match target {
                DetachTarget::Id(id) => {
                    format!("no endpoint with id {id}; see `vxnet dp endpoints`")
                }
                DetachTarget::Netns { netns, .. } => {
                    format!("no endpoint is attached in network namespace '{netns}'")
                }
                DetachTarget::Veth(v) => format!("veth {v} is not attached"),
            }));
        }
        // The table forgets the endpoints at once; the workers and the
        // kernel are told after the lock is released. Their ports stay
        // reserved (`draining`) until then, so no attach reuses one early.
        let mut removed = Vec::new();
        let mut taps = Vec::new();
        let mut veths = Vec::new();
        let mut bridges = Vec::new();
        let mut next = st.fdb.clone();
        for id in ids {
            let Some(ep) = st.endpoints.remove(&id) else {
                continue;
            };
            next.remove_local(ep.port, ep.info.mac);
            if let Some(tap) = ep.tap {
                st.draining.push(ep.port);
                taps.push((ep.port, tap));
            } else {
                veths.push(ep.info.ifname.clone());
                if let Some(BridgeSlot::Ready(b)) = st.bridges.get_mut(&ep.info.vni) {
                    b.members = b.members.saturating_sub(1);
                }
                bridges.extend(take_idle_bridge(&mut st, ep.info.vni));
            }
            removed.push(ep.info);
        }
        self.cell.publish(next.clone());
        st.fdb = next;
        drop(st);
        let mut drained = Vec::new();
        for (port, tap) in taps {
            self.remove_port(port);
            // Closing the last descriptor deletes the TAP.
            drop(tap);
            drained.push(port);
        }
        for veth in &veths {
            attach::release(veth);
        }
        for b in bridges {
            self.drop_bridge(b);
        }
        let mut st = self.lock();
        st.draining.retain(|p| !drained.contains(p));
        Ok(removed)
    }

    /// Takes a bridge returned by [`take_idle_bridge`] from the workers and
    /// the kernel, then frees its slot and port.
    fn drop_bridge(&self, b: Bridge) {
        let (vni, port) = (b.vni, b.port);
        self.remove_port(port);
        b.destroy();
        let mut st = self.lock();
        st.draining.retain(|p| *p != port);
        st.bridges.remove(&vni);
        self.bridge_done.notify_all();
    }

    fn stats_report(&self) -> StatsReport {
        let s = self.snapshot();
        StatsReport {
            workers: self.stats.len(),
            counters: Counter::ALL
                .iter()
                .map(|c| dp::CounterValue {
                    name: c.name().to_string(),
                    value: s.counter(*c),
                    help: c.help().to_string(),
                })
                .collect(),
            drops: Drop::ALL
                .iter()
                .map(|d| dp::DropCount {
                    stage: d.stage().to_string(),
                    reason: d.reason().to_string(),
                    count: s.drop_count(*d),
                    help: d.help().to_string(),
                })
                .collect(),
        }
    }

    fn fdb_entries(&self, only: Option<Vni>) -> Vec<FdbEntry> {
        let st = self.lock();
        let mut out = Vec::new();
        let mut vnis: Vec<_> = st
            .fdb
            .vnis()
            .filter(|(v, _)| only.is_none_or(|o| o == *v))
            .collect();
        vnis.sort_by_key(|(v, _)| *v);
        for (vni, t) in vnis {
            let mut macs: Vec<(&MacAddr, &Dest)> = t.macs.iter().collect();
            macs.sort_by_key(|(m, _)| **m);
            for (mac, dest) in macs {
                let mut ips: Vec<IpAddr> = t
                    .ips
                    .iter()
                    .filter(|(_, m)| *m == mac)
                    .map(|(ip, _)| *ip)
                    .collect();
                ips.sort();
                let (kind, endpoint, vtep, local_owner) = match dest {
                    Dest::Local(p) => {
                        let ep = st
                            .endpoints
                            .values()
                            .find(|e| e.port == *p && e.info.mac == *mac);
                        let owner = ep.map(|e| e.info.owner).unwrap_or_default();
                        (FdbKind::Local, ep.map(|e| e.info.id), None, owner)
                    }
                    Dest::Remote(v) => (FdbKind::Remote, None, Some(*v), Owner::default()),
                };
                // A local entry is its endpoint's.
                let owner = match dest {
                    Dest::Local(_) => local_owner,
                    Dest::Remote(_) => st
                        .peer_owners
                        .get(&(vni, *mac))
                        .copied()
                        .unwrap_or_default(),
                };
                out.push(FdbEntry {
                    vni,
                    mac: Some(*mac),
                    ips,
                    kind,
                    endpoint,
                    vtep,
                    owner,
                });
            }
            for v in &t.flood {
                out.push(FdbEntry {
                    vni,
                    mac: None,
                    ips: Vec::new(),
                    kind: FdbKind::Flood,
                    endpoint: None,
                    vtep: Some(*v),
                    owner: Owner::User,
                });
            }
        }
        out
    }

    /// Every endpoint, with the MTU the underlay carries for it now.
    fn endpoints(&self) -> Vec<EndpointInfo> {
        let st = self.lock();
        let underlay = st.fdb.underlay();
        st.endpoints
            .values()
            .map(|e| EndpointInfo {
                path_mtu: underlay.path_mtu(st.fdb.is_encrypted(e.info.vni)),
                ..e.info.clone()
            })
            .collect()
    }

    fn show(&self) -> ShowReport {
        let (endpoints, vnis) = self.sizes();
        ShowReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance: self.instance,
            local_vtep: self.cfg.local_vtep,
            port: self.cfg.port,
            workers: self.stats.len(),
            poll: self.cfg.poll.api(),
            gso: self.gso,
            gro: self.gro,
            endpoints,
            vnis,
            public_key: self.cfg.keypair.public(),
            underlay_mtu: self.lock().fdb.underlay().mtu,
            flood_rate: self.cfg.flood_rate,
        }
    }

    /// The MTU of an endpoint attached to `vni` without one: `--mtu`, or
    /// what the underlay carries (the path MTU rule).
    fn default_mtu(&self, fdb: &Fdb, vni: Vni) -> u32 {
        let encrypted = fdb.is_encrypted(vni);
        match self.cfg.mtu {
            Some(m) if encrypted => m.saturating_sub(ESP_OVERHEAD),
            Some(m) => m,
            None => fdb.underlay().endpoint_mtu(encrypted).min(attach::MAX_MTU),
        }
    }

    fn network_add(&self, n: &dp::NetworkAdd) -> R<()> {
        let (vni, encrypted) = (n.vni, n.encrypted);
        if n.flood_rate == Some(0) {
            return Err(ApiError::invalid(
                "a flood rate of 0 frames per second floods nothing; give flood: false to turn flooding off",
            ));
        }
        let gateways = &n.gateways;
        for (i, g) in gateways.iter().enumerate() {
            if gateways[..i].iter().any(|o| o.is_ipv4() == g.is_ipv4()) {
                return Err(ApiError::invalid(format!(
                    "more than one {} gateway given",
                    family(*g)
                )));
            }
            if g.is_unspecified() || g.is_multicast() || g.is_loopback() {
                return Err(ApiError::invalid(format!(
                    "gateway {g} is not a unicast address"
                )));
            }
        }
        let policy = FloodPolicy {
            enabled: n.flood,
            rate: n.flood_rate,
        };
        let now = Instant::now();
        self.edit_fdb(|f| {
            f.set_routing(vni, gateways, n.egress, n.ingress);
            let was = f.vni(vni).is_some_and(|t| t.encrypted);
            if let Some(t) = f.vni(vni) {
                if was != encrypted && !t.ports.is_empty() {
                    return Err(ApiError::precondition(format!(
                        "VNI {vni} has local endpoints; detach them before making it {}",
                        if encrypted { "encrypted" } else { "plain" }
                    )));
                }
            }
            f.set_flood_policy(vni, policy);
            if was == encrypted {
                return Ok(());
            }
            f.set_encrypted(vni, encrypted);
            for (_, s) in f.peers() {
                let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
                if encrypted {
                    s.add_vni(vni.get(), now).map_err(|e| {
                        ApiError::internal(format!("cannot derive keys for VNI {vni}: {e}"))
                    })?;
                } else {
                    s.remove_vni(vni.get());
                }
            }
            Ok(())
        })?;
        self.lock().networks.insert(vni, n.owner);
        self.kick_timers();
        Ok(())
    }

    /// Forgets a network: its remote and flood entries and its keys go
    /// with it; refused while local endpoints, services or published ports
    /// use it.
    fn network_del(&self, vni: Vni) -> R<()> {
        let declared = self.lock().networks.contains_key(&vni);
        self.edit_fdb(|f| {
            // Checked first: a port outlives the service it led to.
            if let Some(p) = f.published_ports().find(|p| p.vni == vni) {
                return Err(ApiError::precondition(format!(
                    "published {} port {} leads into VNI {vni}; unpublish it first (`vxnet dp port del`, see `vxnet dp ports`)",
                    host_link::protocol(p.proto),
                    p.port
                )));
            }
            let Some(t) = f.vni(vni) else {
                if declared {
                    return Ok(());
                }
                return Err(ApiError::not_found(format!(
                    "VNI {vni} is not a network here; see `vxnet dp network ls`"
                )));
            };
            if !t.ports.is_empty() {
                return Err(ApiError::precondition(format!(
                    "VNI {vni} still has local endpoints; detach them first"
                )));
            }
            // Its services would outlive it (the control plane removes
            // them first, too).
            if let Some(vip) = t.services.keys().next() {
                return Err(ApiError::precondition(format!(
                    "VNI {vni} still has services (VIP {vip}); remove them first (`vxnet dp service del --vni {vni} --vip {vip}`, see `vxnet dp services`)"
                )));
            }
            if t.encrypted {
                for (_, s) in f.peers() {
                    s.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove_vni(vni.get());
                }
            }
            f.remove_vni(vni);
            Ok(())
        })?;
        let mut st = self.lock();
        st.networks.remove(&vni);
        st.peer_owners.retain(|(v, _), _| *v != vni);
        Ok(())
    }

    fn networks(&self) -> Vec<NetworkInfo> {
        let st = self.lock();
        let mut vnis: Vec<Vni> = st.fdb.vnis().map(|(v, _)| v).collect();
        vnis.extend(st.networks.keys().copied());
        vnis.sort();
        vnis.dedup();
        vnis.into_iter()
            .map(|vni| {
                let t = st.fdb.vni(vni);
                let count = |local: bool| {
                    t.map_or(0, |t| {
                        t.macs
                            .values()
                            .filter(|d| matches!(d, Dest::Local(_)) == local)
                            .count()
                    })
                };
                let policy = t.map(|t| t.policy).unwrap_or_default();
                let counts = t.map(|t| t.replication.counts()).unwrap_or_default();
                NetworkInfo {
                    vni,
                    encrypted: t.is_some_and(|t| t.encrypted),
                    endpoints: count(true),
                    peers: count(false),
                    mtu: self.default_mtu(&st.fdb, vni),
                    gateways: t
                        .map(|t| t.gateways.iter().map(|g| g.0).collect())
                        .unwrap_or_default(),
                    egress: t.is_some_and(|t| t.egress),
                    ingress: t.is_some_and(|t| t.ingress),
                    flood: policy.enabled,
                    flood_rate: policy.rate.unwrap_or(self.cfg.flood_rate),
                    flooding: dp::FloodStats {
                        frames: counts.frames,
                        copies: counts.copies,
                        rate_limited: counts.rate_limited,
                        suppressed: counts.suppressed,
                    },
                    owner: st.networks.get(&vni).copied().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Tells the dataplane `vtep`'s key; the same key again only updates
    /// its owner (so the control plane can re-assert what it wants).
    fn vtep_add(&self, vtep: IpAddr, peer: PublicKey, owner: Owner) -> R<()> {
        self.check_vtep(vtep)?;
        if peer == self.cfg.keypair.public() {
            return Err(ApiError::invalid("that is this host's own public key"));
        }
        let mut st = self.lock();
        if let Some((old, o)) = st.vteps.get_mut(&vtep) {
            if *old == peer {
                *o = owner;
                return Ok(());
            }
        }
        let now = Instant::now();
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let vnis: Vec<u32> = st
            .fdb
            .vnis()
            .filter(|(_, t)| t.encrypted)
            .map(|(v, _)| v.get())
            .collect();
        let config = SessionConfig {
            rekey_interval: self.cfg.rekey_interval,
            ..SessionConfig::default()
        };
        let session = Session::new(
            config,
            &self.cfg.keypair,
            peer,
            &vnis,
            now,
            unix_ns,
            Box::new(OsRng),
        )
        .map_err(|e| ApiError::internal(format!("cannot set up keys with {vtep}: {e}")))?;
        let mut next = st.fdb.clone();
        next.set_peer(vtep, Arc::new(Mutex::new(session)));
        self.cell.publish(next.clone());
        st.fdb = next;
        st.vteps.insert(vtep, (peer, owner));
        drop(st);
        self.kick_timers();
        Ok(())
    }

    fn vtep_del(&self, vtep: IpAddr) -> R<()> {
        let mut st = self.lock();
        if st.vteps.remove(&vtep).is_none() {
            return Err(ApiError::not_found(format!(
                "VTEP {vtep} has no key here; see `vxnet dp vtep ls`"
            )));
        }
        let mut next = st.fdb.clone();
        next.remove_peer(vtep);
        self.cell.publish(next.clone());
        st.fdb = next;
        Ok(())
    }

    fn vteps(&self) -> Vec<VtepInfo> {
        let st = self.lock();
        st.vteps
            .iter()
            .map(|(vtep, (key, owner))| {
                let (established, generation, rotating) = match st.fdb.peer(*vtep) {
                    Some(s) => {
                        let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                        (s.is_established(), s.generation(), s.is_rotating())
                    }
                    None => (false, 0, false),
                };
                VtepInfo {
                    vtep: *vtep,
                    pubkey: *key,
                    established,
                    generation,
                    rotating,
                    owner: *owner,
                }
            })
            .collect()
    }

    fn rekey(&self, only: Option<IpAddr>) -> R<Vec<IpAddr>> {
        let st = self.lock();
        let now = Instant::now();
        let mut done = Vec::new();
        for (vtep, s) in st.fdb.peers() {
            if only.is_none_or(|o| o == vtep) {
                s.lock().unwrap_or_else(PoisonError::into_inner).rekey(now);
                done.push(vtep);
            }
        }
        drop(st);
        if done.is_empty() {
            return Err(ApiError::not_found(match only {
                Some(v) => format!("VTEP {v} has no key here; add it with `vxnet dp vtep add`"),
                None => "no VTEP has a key here; add one with `vxnet dp vtep add`".into(),
            }));
        }
        self.kick_timers();
        done.sort();
        Ok(done)
    }

    fn sas(&self, show_keys: bool) -> R<Vec<SaEntry>> {
        if show_keys && !self.cfg.allow_key_export {
            return Err(ApiError::denied(
                "refusing to print keys: start vxnet-dataplane with --allow-key-export to allow \
                        `vxnet dp sa --show-keys` (for debugging with a dissector only)",
            ));
        }
        let st = self.lock();
        let now = Instant::now();
        let local = self.cfg.local_vtep;
        let mut out = Vec::new();
        for (vtep, s) in st.fdb.peers() {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            for i in s.sa_infos(now, show_keys) {
                let inbound = i.direction == SaDirection::Inbound;
                out.push(SaEntry {
                    spi: format!("0x{:08x}", i.spi),
                    direction: if inbound {
                        dp::SaDirection::In
                    } else {
                        dp::SaDirection::Out
                    },
                    peer: vtep,
                    vni: i.vni,
                    generation: i.generation,
                    packets: i.packets,
                    age_secs: i.age.as_secs_f64(),
                    state: if i.standby {
                        SaState::Standby
                    } else {
                        SaState::Active
                    },
                    src: if inbound { vtep } else { local },
                    dst: if inbound { local } else { vtep },
                    key: i.key.as_ref().map(|k| hex(k.key())),
                    salt: i.key.as_ref().map(|k| hex(&k.salt())),
                });
            }
        }
        out.sort_by(|a, b| {
            (a.peer, a.vni, a.generation, &a.direction).cmp(&(
                b.peer,
                b.vni,
                b.generation,
                &b.direction,
            ))
        });
        Ok(out)
    }

    /// Makes worker 0 run the session timers now (handshakes start at once).
    fn kick_timers(&self) {
        if let Some(w) = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
        {
            w.send(Command::Kick);
        }
    }

    /// Detaches everything (TAPs closed, bridges deleted) and stops the
    /// workers.
    pub fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.host_link_del() {
            if e.code != vxnet_api::ErrorCode::NotFound {
                tracing::warn!(error = %e.message, "cannot remove the host link");
            }
        }
        let ids: Vec<u32> = self.lock().endpoints.keys().copied().collect();
        for id in ids {
            let _ = self.detach(DetachTarget::Id(id));
        }
        for w in self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            w.stop();
        }
    }
}

/// The lowest port id that no endpoint, claim, bridge or draining port
/// holds.
fn free_port(st: &State) -> PortId {
    let taken = |p: PortId| {
        st.host_port == Some(p)
            || st.fdb.port(p).is_some()
            || st.claims.iter().any(|c| c.port == p)
            || st.draining.contains(&p)
            || st
                .bridges
                .values()
                .any(|s| matches!(s, BridgeSlot::Ready(b) if b.port == p))
    };
    (0..PortId::MAX).find(|p| !taken(*p)).unwrap_or(PortId::MAX)
}

/// Takes the bridge of `vni` out of service if it has no member and no
/// attach means to join it: its slot turns `Busy` and its port draining
/// until [`Dataplane::drop_bridge`] has removed it outside the lock.
fn take_idle_bridge(st: &mut State, vni: Vni) -> Option<Bridge> {
    let idle = matches!(st.bridges.get(&vni), Some(BridgeSlot::Ready(b)) if b.members == 0);
    let joining = st
        .claims
        .iter()
        .any(|c| c.plan.vni == vni && matches!(c.target, AttachTarget::Veth(_)));
    if !idle || joining {
        return None;
    }
    // `idle` saw it Ready, so this takes the bridge and leaves it Busy.
    let Some(BridgeSlot::Ready(b)) = st.bridges.insert(vni, BridgeSlot::Busy) else {
        return None;
    };
    st.draining.push(b.port);
    Some(b)
}

fn endpoint_info(
    claim: &Claim,
    (ifname, location): (String, String),
    kind: EndpointKind,
    tap: &str,
) -> EndpointInfo {
    EndpointInfo {
        id: claim.id,
        vni: claim.plan.vni,
        mac: claim.plan.mac,
        ips: claim.plan.ips.clone(),
        mtu: claim.plan.mtu,
        ifname,
        location,
        kind,
        tap: tap.to_string(),
        gateways: claim.plan.gateways.clone(),
        path_mtu: claim.path_mtu,
        owner: claim.owner,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a peer's VTEP that cannot be another host's underlay address
/// seen from `local`: another address family, `local` itself, an
/// unspecified, multicast or broadcast address, or loopback (unless `local`
/// is loopback too, as when dataplanes share one host in tests).
fn remote_vtep(local: IpAddr, vtep: IpAddr) -> R<()> {
    if vtep.is_ipv4() != local.is_ipv4() {
        return Err(ApiError::invalid(format!(
            "VTEP {vtep} is {} but this dataplane's local VTEP {local} is {}; use an address of the same family",
            family(vtep),
            family(local)
        )));
    }
    if vtep == local {
        return Err(ApiError::invalid(format!(
            "VTEP {vtep} is this dataplane's own address; a peer lives behind another host"
        )));
    }
    if !vxnet_api::dp::is_host_address(vtep) {
        return Err(ApiError::invalid(format!(
            "VTEP {vtep} is not a unicast host address; give the peer host's underlay address"
        )));
    }
    if vtep.is_loopback() && !local.is_loopback() {
        return Err(ApiError::invalid(format!(
            "VTEP {vtep} is a loopback address, which reaches only this host; give the peer host's underlay address"
        )));
    }
    Ok(())
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// An FDB refusal as an API error: a taken MAC or address is
/// `already_exists`, a missing entry `not_found`, the rest invalid.
pub(crate) struct FdbRefusal(ApiError);

impl From<vxnet_proto::fdb::FdbError> for FdbRefusal {
    fn from(e: vxnet_proto::fdb::FdbError) -> Self {
        use vxnet_proto::fdb::FdbError as F;
        let code = match e {
            F::MacInUse { .. } | F::IpInUse { .. } | F::FloodExists { .. } => {
                vxnet_api::ErrorCode::AlreadyExists
            }
            F::NoSuchPeer { .. }
            | F::NoSuchFlood { .. }
            | F::NoSuchService { .. }
            | F::NoSuchPort { .. } => vxnet_api::ErrorCode::NotFound,
            F::NoHostLink => vxnet_api::ErrorCode::FailedPrecondition,
            F::NotMulticastSafe(_)
            | F::PortOnOtherVni { .. }
            | F::BackendIsVip { .. }
            | F::BackendMac { .. } => vxnet_api::ErrorCode::InvalidArgument,
        };
        FdbRefusal(ApiError::new(code, e.to_string()))
    }
}

impl From<ApiError> for FdbRefusal {
    fn from(e: ApiError) -> Self {
        FdbRefusal(e)
    }
}

fn rand_instance() -> u64 {
    let mut b = [0u8; 8];
    if rand_core::RngCore::try_fill_bytes(&mut OsRng, &mut b).is_err() {
        // Time is a fine stand-in: it only has to differ between starts.
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(b)
}

/// Used by `attach` to describe addresses in errors.
pub(crate) fn describe_ips(ips: &[IpNet]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
