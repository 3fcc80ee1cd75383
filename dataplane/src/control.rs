//! The dataplane's control side: the state behind the local API (endpoints,
//! bridges, the master copy of the forwarding table) and the handling of
//! each request. A request is validated completely before anything changes;
//! a step that fails half-way undoes what it did, so a refused request
//! leaves no TAP, bridge or table entry behind.

use crate::api::{
    AttachRequest, AttachTarget, DetachTarget, EndpointInfo, FdbEntry, IpNet, NetworkInfo, Peer,
    Request, Response, SaEntry, ShowReport, StatsReport, VtepInfo,
};
use crate::attach::{self, Bridge};
use crate::sys::tap::Tap;
use crate::worker::{self, Command, FdbCell, PollMode, WorkerConfig, WorkerHandle};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod services;
use vxnet_proto::crypto::OsRng;
use vxnet_proto::crypto::keys::{PublicKey, StaticKeypair};
use vxnet_proto::crypto::session::{SaDirection, Session, SessionConfig};
use vxnet_proto::engine::EngineConfig;
use vxnet_proto::fdb::{Dest, Fdb, PortId};
use vxnet_proto::lb::conntrack::ConntrackConfig;
use vxnet_proto::stats::{Counter, Drop, Snapshot};
use vxnet_proto::wire::{MacAddr, Vni};

/// Start-up settings of a dataplane.
#[derive(Debug, Clone)]
pub struct Config {
    pub local_vtep: IpAddr,
    pub port: u16,
    pub workers: usize,
    pub src_ports: usize,
    pub poll: PollMode,
    pub spin: Duration,
    pub default_mtu: u32,
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

/// Bytes an encrypted network adds per packet on top of VXLAN: ESP header
/// and IV (16), inner UDP header (8), trailer (2, no padding for MTUs that
/// are multiples of 4) and ICV (16). 1450 - 42 = 1408.
pub const ESP_OVERHEAD: u32 = 42;

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
    bridges: HashMap<Vni, Bridge>,
    next_worker: usize,
    /// Hosts whose public keys we were told.
    vteps: BTreeMap<IpAddr, PublicKey>,
}

pub struct Dataplane {
    cfg: Config,
    cell: Arc<FdbCell>,
    state: Mutex<State>,
    workers: Mutex<Vec<WorkerHandle>>,
    stats: Vec<Arc<vxnet_proto::stats::Stats>>,
    gso: bool,
    gro: bool,
}

impl Dataplane {
    /// Binds the sockets and starts the workers.
    pub fn start(cfg: Config) -> std::io::Result<Dataplane> {
        let cell = Arc::new(FdbCell::new(Fdb::default()));
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
            cfg,
            cell,
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            workers: Mutex::new(workers),
            stats,
            gso,
            gro,
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

    pub fn worker_count(&self) -> usize {
        self.stats.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one API request.
    pub fn handle(&self, req: Request) -> Response {
        let result = match req {
            Request::Attach(a) => self.attach(a).map(Response::ok),
            Request::Detach { target } => self.detach(target).map(Response::ok),
            Request::PeerAdd(p) => self.peer_add(p).map(|()| Response::ok(())),
            Request::PeerDel { vni, mac } => self
                .edit_fdb(|f| f.remove_remote(vni, mac))
                .map(|()| Response::ok(())),
            Request::FloodAdd { vni, vtep } => self
                .check_vtep(vtep)
                .and_then(|()| self.edit_fdb(|f| f.add_flood(vni, vtep)))
                .map(|()| Response::ok(())),
            Request::FloodDel { vni, vtep } => self
                .edit_fdb(|f| f.remove_flood(vni, vtep))
                .map(|()| Response::ok(())),
            Request::Stats => Ok(Response::ok(self.stats_report())),
            Request::Fdb { vni } => Ok(Response::ok(self.fdb_entries(vni))),
            Request::Endpoints => Ok(Response::ok(
                self.lock()
                    .endpoints
                    .values()
                    .map(|e| e.info.clone())
                    .collect::<Vec<_>>(),
            )),
            Request::Show => Ok(Response::ok(self.show())),
            Request::NetworkAdd { vni, encrypted } => {
                self.network_add(vni, encrypted).map(|()| Response::ok(()))
            }
            Request::NetworkDel { vni } => self.network_del(vni).map(|()| Response::ok(())),
            Request::Networks => Ok(Response::ok(self.networks())),
            Request::VtepAdd { vtep, pubkey } => {
                self.vtep_add(vtep, &pubkey).map(|()| Response::ok(()))
            }
            Request::VtepDel { vtep } => self.vtep_del(vtep).map(|()| Response::ok(())),
            Request::Vteps => Ok(Response::ok(self.vteps())),
            Request::Rekey { vtep } => self.rekey(vtep).map(Response::ok),
            Request::Sa { show_keys } => self.sas(show_keys).map(Response::ok),
            Request::ServiceSet(spec) => self.service_set(spec).map(|()| Response::ok(())),
            Request::ServiceDel { vni, vip } => {
                self.service_del(vni, vip).map(|()| Response::ok(()))
            }
            Request::Services { vni } => self.services(vni).map(Response::ok),
            Request::Conntrack { vni, limit } => self.conntrack(vni, limit).map(Response::ok),
        };
        result.unwrap_or_else(Response::error)
    }

    fn edit_fdb<E: std::fmt::Display>(
        &self,
        f: impl FnOnce(&mut Fdb) -> Result<(), E>,
    ) -> Result<(), String> {
        let mut st = self.lock();
        let mut next = st.fdb.clone();
        f(&mut next).map_err(|e| e.to_string())?;
        self.cell.publish(next.clone());
        st.fdb = next;
        Ok(())
    }

    fn check_vtep(&self, vtep: IpAddr) -> Result<(), String> {
        let local = self.cfg.local_vtep;
        if vtep.is_ipv4() != local.is_ipv4() {
            return Err(format!(
                "VTEP {vtep} is {} but this dataplane's local VTEP {local} is {}; use an address of the same family",
                family(vtep),
                family(local)
            ));
        }
        if vtep == local {
            return Err(format!(
                "VTEP {vtep} is this dataplane's own address; a peer lives behind another host"
            ));
        }
        if vtep.is_unspecified() || vtep.is_multicast() {
            return Err(format!("VTEP {vtep} is not a unicast host address"));
        }
        Ok(())
    }

    fn peer_add(&self, p: Peer) -> Result<(), String> {
        self.check_vtep(p.vtep)?;
        self.edit_fdb(|f| f.add_remote(p.vni, p.mac, &p.ips, p.vtep))
    }

    fn attach(&self, req: AttachRequest) -> Result<EndpointInfo, String> {
        let mut st = self.lock();
        let plan = attach::Plan::validate(
            &req,
            self.default_mtu(&st.fdb, req.vni),
            wire_overhead(st.fdb.is_encrypted(req.vni)),
        )?;
        let ips: Vec<IpAddr> = plan.ips.iter().map(|n| n.addr).collect();
        match &req.target {
            AttachTarget::Netns(ns) => {
                let port = st.fdb.free_port();
                st.fdb
                    .check_local(port, plan.vni, plan.mac, &ips)
                    .map_err(|e| e.to_string())?;
                let (tap, location) = attach::native(ns, &plan)?;
                let tap = Arc::new(tap);
                let mut next = st.fdb.clone();
                next.add_local(port, plan.vni, plan.mac, &ips)
                    .map_err(|e| e.to_string())?;
                let info = self.endpoint_info(
                    &mut st,
                    &plan,
                    plan.ifname.clone(),
                    location,
                    "native",
                    tap.name(),
                );
                self.add_port(&mut st, port, &tap);
                st.endpoints.insert(
                    info.id,
                    Endpoint {
                        info: info.clone(),
                        port,
                        tap: Some(tap),
                    },
                );
                self.cell.publish(next.clone());
                st.fdb = next;
                Ok(info)
            }
            AttachTarget::Veth(veth) => {
                let existing = st.bridges.get(&plan.vni).map(|b| b.port);
                let port = existing.unwrap_or_else(|| st.fdb.free_port());
                st.fdb
                    .check_local(port, plan.vni, plan.mac, &ips)
                    .map_err(|e| e.to_string())?;
                if st
                    .endpoints
                    .values()
                    .any(|e| e.info.kind == "sidecar" && e.info.ifname == *veth)
                {
                    return Err(format!("veth {veth} is already attached"));
                }
                let new_bridge = match existing {
                    Some(_) => None,
                    None => Some(Bridge::create(plan.vni, port, plan.mtu)?),
                };
                let bridge = new_bridge.as_ref().or_else(|| st.bridges.get(&plan.vni));
                let Some(bridge) = bridge else {
                    return Err("internal error: bridge vanished".into());
                };
                if let Err(e) = bridge.enslave(veth, plan.mtu) {
                    if let Some(b) = new_bridge {
                        b.destroy();
                    }
                    return Err(e);
                }
                let (bridge_name, tap_name) = (bridge.name.clone(), bridge.tap.name().to_string());
                let mut next = st.fdb.clone();
                next.add_local(port, plan.vni, plan.mac, &ips)
                    .map_err(|e| e.to_string())?;
                if let Some(b) = new_bridge {
                    self.add_port(&mut st, port, &b.tap);
                    st.bridges.insert(plan.vni, b);
                }
                if let Some(b) = st.bridges.get_mut(&plan.vni) {
                    b.members += 1;
                }
                let info = self.endpoint_info(
                    &mut st,
                    &plan,
                    veth.clone(),
                    bridge_name,
                    "sidecar",
                    &tap_name,
                );
                st.endpoints.insert(
                    info.id,
                    Endpoint {
                        info: info.clone(),
                        port,
                        tap: None,
                    },
                );
                self.cell.publish(next.clone());
                st.fdb = next;
                Ok(info)
            }
        }
    }

    fn endpoint_info(
        &self,
        st: &mut State,
        plan: &attach::Plan,
        ifname: String,
        location: String,
        kind: &str,
        tap: &str,
    ) -> EndpointInfo {
        let id = st.next_id;
        st.next_id += 1;
        EndpointInfo {
            id,
            vni: plan.vni,
            mac: plan.mac,
            ips: plan.ips.clone(),
            mtu: plan.mtu,
            ifname,
            location,
            kind: kind.to_string(),
            tap: tap.to_string(),
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

    fn detach(&self, target: DetachTarget) -> Result<Vec<EndpointInfo>, String> {
        let mut st = self.lock();
        let ids: Vec<u32> = st
            .endpoints
            .values()
            .filter(|e| match &target {
                DetachTarget::Id(id) => e.info.id == *id,
                DetachTarget::Netns { netns, ifname } => {
                    e.info.kind == "native"
                        && e.info.location == *netns
                        && ifname.as_ref().is_none_or(|i| *i == e.info.ifname)
                }
                DetachTarget::Veth(v) => e.info.kind == "sidecar" && e.info.ifname == *v,
            })
            .map(|e| e.info.id)
            .collect();
        if ids.is_empty() {
            return Err(match target {
                DetachTarget::Id(id) => {
                    format!("no endpoint with id {id}; see `vxnet dp endpoints`")
                }
                DetachTarget::Netns { netns, .. } => {
                    format!("no endpoint is attached in network namespace '{netns}'")
                }
                DetachTarget::Veth(v) => format!("veth {v} is not attached"),
            });
        }
        let mut removed = Vec::new();
        for id in ids {
            let Some(ep) = st.endpoints.remove(&id) else {
                continue;
            };
            let mut next = st.fdb.clone();
            next.remove_local(ep.port, ep.info.mac);
            self.cell.publish(next.clone());
            st.fdb = next;
            if ep.tap.is_some() {
                self.remove_port(ep.port);
            } else if let Some(b) = st.bridges.get_mut(&ep.info.vni) {
                b.release(&ep.info.ifname);
                b.members = b.members.saturating_sub(1);
                if b.members == 0 {
                    let port = b.port;
                    self.remove_port(port);
                    if let Some(b) = st.bridges.remove(&ep.info.vni) {
                        b.destroy();
                    }
                }
            }
            drop(ep.tap);
            removed.push(ep.info);
        }
        Ok(removed)
    }

    fn stats_report(&self) -> StatsReport {
        let s = self.snapshot();
        StatsReport {
            workers: self.stats.len(),
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), s.counter(*c)))
                .collect(),
            drops: Drop::ALL
                .iter()
                .map(|d| {
                    (
                        d.stage().to_string(),
                        d.reason().to_string(),
                        s.drop_count(*d),
                    )
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
                let (kind, dest) = match dest {
                    Dest::Local(p) => {
                        let ep = st
                            .endpoints
                            .values()
                            .find(|e| e.port == *p && e.info.mac == *mac);
                        (
                            "local",
                            ep.map_or_else(
                                || format!("port {p}"),
                                |e| format!("endpoint {}", e.info.id),
                            ),
                        )
                    }
                    Dest::Remote(v) => ("remote", v.to_string()),
                };
                out.push(FdbEntry {
                    vni,
                    mac: mac.to_string(),
                    ips,
                    kind: kind.into(),
                    dest,
                });
            }
            for v in &t.flood {
                out.push(FdbEntry {
                    vni,
                    mac: "flood".into(),
                    ips: Vec::new(),
                    kind: "flood".into(),
                    dest: v.to_string(),
                });
            }
        }
        out
    }

    fn show(&self) -> ShowReport {
        let (endpoints, vnis) = self.sizes();
        ShowReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            local_vtep: self.cfg.local_vtep,
            port: self.cfg.port,
            workers: self.stats.len(),
            poll: self.cfg.poll.to_string(),
            gso: self.gso,
            gro: self.gro,
            endpoints,
            vnis,
            public_key: Some(self.cfg.keypair.public().to_string()),
        }
    }

    fn default_mtu(&self, fdb: &Fdb, vni: Vni) -> u32 {
        if fdb.is_encrypted(vni) {
            self.cfg.default_mtu.saturating_sub(ESP_OVERHEAD)
        } else {
            self.cfg.default_mtu
        }
    }

    fn network_add(&self, vni: Vni, encrypted: bool) -> Result<(), String> {
        let now = Instant::now();
        self.edit_fdb(|f| {
            if let Some(t) = f.vni(vni) {
                if t.encrypted != encrypted && !t.ports.is_empty() {
                    return Err(format!(
                        "VNI {vni} has local endpoints; detach them before making it {}",
                        if encrypted { "encrypted" } else { "plain" }
                    ));
                }
            }
            f.set_encrypted(vni, encrypted);
            for (_, s) in f.peers() {
                let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
                if encrypted {
                    s.add_vni(vni.get(), now)
                        .map_err(|e| format!("cannot derive keys for VNI {vni}: {e}"))?;
                } else {
                    s.remove_vni(vni.get());
                }
            }
            Ok(())
        })?;
        self.kick_timers();
        Ok(())
    }

    fn network_del(&self, vni: Vni) -> Result<(), String> {
        self.edit_fdb(|f| {
            let Some(t) = f.vni(vni) else {
                return Err(format!("VNI {vni} is not a network here"));
            };
            if !t.ports.is_empty() {
                return Err(format!(
                    "VNI {vni} still has local endpoints; detach them first"
                ));
            }
            if t.encrypted {
                for (_, s) in f.peers() {
                    s.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove_vni(vni.get());
                }
            }
            f.set_encrypted(vni, false);
            Ok(())
        })
    }

    fn networks(&self) -> Vec<NetworkInfo> {
        let st = self.lock();
        let mut out: Vec<NetworkInfo> = st
            .fdb
            .vnis()
            .map(|(vni, t)| NetworkInfo {
                vni,
                encrypted: t.encrypted,
                endpoints: t
                    .macs
                    .values()
                    .filter(|d| matches!(d, Dest::Local(_)))
                    .count(),
                peers: t
                    .macs
                    .values()
                    .filter(|d| matches!(d, Dest::Remote(_)))
                    .count(),
                mtu: self.default_mtu(&st.fdb, vni),
            })
            .collect();
        out.sort_by_key(|n| n.vni);
        out
    }

    fn vtep_add(&self, vtep: IpAddr, pubkey: &str) -> Result<(), String> {
        self.check_vtep(vtep)?;
        let peer: PublicKey = pubkey
            .parse()
            .map_err(|e| format!("'{pubkey}' is not an X25519 public key ({e}); copy it from `vxnet dp show` on that host"))?;
        if peer == self.cfg.keypair.public() {
            return Err("that is this host's own public key".into());
        }
        let mut st = self.lock();
        if let Some(old) = st.vteps.get(&vtep) {
            if *old == peer {
                return Err(format!("VTEP {vtep} already has this key"));
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
        .map_err(|e| format!("cannot set up keys with {vtep}: {e}"))?;
        let mut next = st.fdb.clone();
        next.set_peer(vtep, Arc::new(Mutex::new(session)));
        self.cell.publish(next.clone());
        st.fdb = next;
        st.vteps.insert(vtep, peer);
        drop(st);
        self.kick_timers();
        Ok(())
    }

    fn vtep_del(&self, vtep: IpAddr) -> Result<(), String> {
        let mut st = self.lock();
        if st.vteps.remove(&vtep).is_none() {
            return Err(format!(
                "VTEP {vtep} has no key here; see `vxnet dp vtep ls`"
            ));
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
            .map(|(vtep, key)| {
                let (established, generation, rotating) = match st.fdb.peer(*vtep) {
                    Some(s) => {
                        let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                        (s.is_established(), s.generation(), s.is_rotating())
                    }
                    None => (false, 0, false),
                };
                VtepInfo {
                    vtep: *vtep,
                    pubkey: key.to_string(),
                    established,
                    generation,
                    rotating,
                }
            })
            .collect()
    }

    fn rekey(&self, only: Option<IpAddr>) -> Result<Vec<IpAddr>, String> {
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
            return Err(match only {
                Some(v) => format!("VTEP {v} has no key here; add it with `vxnet dp vtep add`"),
                None => "no VTEP has a key here; add one with `vxnet dp vtep add`".into(),
            });
        }
        self.kick_timers();
        done.sort();
        Ok(done)
    }

    fn sas(&self, show_keys: bool) -> Result<Vec<SaEntry>, String> {
        if show_keys && !self.cfg.allow_key_export {
            return Err(
                "refusing to print keys: start vxnet-dataplane with --allow-key-export to allow \
                        `vxnet dp sa --show-keys` (for debugging with a dissector only)"
                    .into(),
            );
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
                    direction: if inbound { "in" } else { "out" }.into(),
                    peer: vtep,
                    vni: i.vni,
                    generation: i.generation,
                    packets: i.packets,
                    age_secs: i.age.as_secs_f64(),
                    state: if i.standby { "standby" } else { "active" }.into(),
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Used by `attach` to describe addresses in errors.
pub(crate) fn describe_ips(ips: &[IpNet]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
