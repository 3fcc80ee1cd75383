//! The reconciler: the one writer to this host's dataplane, and the one
//! that creates and removes containers' namespaces and starts and stops
//! their commands.
//!
//! A pass reads the desired state (the store's containers for this node
//! and the networks they use, and gossip's [`GossipView`]), makes the host
//! match it (namespaces, processes), computes what the dataplane must hold
//! ([`plan`]), reads what it holds ([`plan::observe`]), applies the
//! difference ([`plan::diff`]), announces or withdraws this host's
//! endpoints by gossip, and publishes what it made real
//! ([`super::changes::Realized`]). It runs whenever something changed and
//! at least every `interval`, so after a dataplane restart (seen by its
//! changed `instance`) or a daemon restart it converges by itself. A pass
//! never removes what it does not own: dataplane entries made by hand, and
//! namespaces of containers it never knew.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vxnet_api::ctl::ReconcileReport;
use vxnet_api::dp;
use vxnet_api::{ApiResult, ErrorCode, MacAddr};

use self::plan::{Announcement, Desired, DpState, EndpointKey, LocalContainer, Observed, Op};
use super::changes::Outcome;
use super::dataplane::{DataplaneApi, DataplaneExt};
use super::gossip::{GossipCmd, GossipView};
use super::host::{Exit, Host, Spawn};
use super::runtime::{LocalNode, Runtime};
use super::{Daemon, lock};
use crate::containers;
use crate::model::{Container, DesiredState, External, Network};
use crate::store::{Store, StoreExt, Txn};

/// Grace between SIGTERM and SIGKILL when none was asked for (Docker's).
pub const DEFAULT_STOP_GRACE: u64 = 10;

/// The reconciler of one host.
pub struct Reconciler<S, D, H> {
    d: Arc<Daemon<S, D>>,
    dp: D,
    host: H,
    /// The dataplane's `instance` at the last pass.
    instance: Option<u64>,
    /// Endpoints whose MTU the underlay no longer gives, as last reported.
    drift: Vec<(EndpointKey, u32, u32)>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a pass found about one container.
#[derive(Default)]
struct Pass {
    report: ReconcileReport,
    outcomes: BTreeMap<String, Outcome>,
}

impl Pass {
    fn fail(&mut self, container: &Container, what: impl std::fmt::Display) {
        let msg = what.to_string();
        self.report
            .errors
            .push(format!("container {}: {msg}", container.name));
        self.outcomes
            .insert(container.id.clone(), Outcome::Failed(msg));
    }
}

impl<S, D, H> Reconciler<S, D, H>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
    H: Host,
{
    /// `dp` is this reconciler's own dataplane connection.
    pub fn new(d: Arc<Daemon<S, D>>, dp: D, host: H) -> Self {
        Reconciler {
            d,
            dp,
            host,
            instance: None,
            drift: Vec::new(),
        }
    }

    /// Runs passes until `stop` is set: at once on any change, else every
    /// `interval`.
    pub fn run(&mut self, interval: Duration, stop: &AtomicBool) {
        let mut seq = self.d.changes.sequence();
        let mut last_errors = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let r = self.pass();
            if r.changed() {
                tracing::info!(report = ?r, "reconciled");
            }
            // A persistent problem is logged once, not every interval.
            if r.errors != last_errors {
                for e in &r.errors {
                    tracing::warn!(error = %e, "reconciliation");
                }
                last_errors = r.errors;
            }
            seq = self.d.changes.wait_change(seq, interval);
        }
    }

    /// One pass; what it changed and what it could not.
    pub fn pass(&mut self) -> ReconcileReport {
        let generation = self.d.changes.generation();
        let mut p = Pass::default();
        if let Err(e) = self.pass_into(&mut p) {
            p.report.errors.push(e.message);
        }
        self.d
            .realized
            .publish(generation, p.outcomes, p.report.clone());
        p.report
    }

    fn pass_into(&mut self, p: &mut Pass) -> ApiResult<()> {
        let store = &self.d.store;
        let me = store
            .get::<LocalNode>(LocalNode::KEY)
            .map_err(super::internal)?
            .map(|l| l.node_id);
        let networks: Vec<Network> = store.list::<Network>().map_err(super::internal)?;
        let mut containers: Vec<Container> = match &me {
            Some(me) => containers::list_containers(store, Some(me)).map_err(ApiError::from)?,
            None => Vec::new(),
        };
        let mut runtimes: BTreeMap<String, Runtime> = store
            .list::<Runtime>()
            .map_err(super::internal)?
            .into_iter()
            .map(|r| (r.container_id.clone(), r))
            .collect();
        // A worker's own decision wins until its manager has heard of it.
        for c in &mut containers {
            if let Some(d) = runtimes.get(&c.id).and_then(|r| r.desired_override) {
                c.desired = d;
            }
        }
        let show = self.dp.show()?;
        if self.instance.is_some_and(|i| i != show.instance) {
            tracing::warn!("the dataplane restarted: programming it again");
        }
        self.instance = Some(show.instance);
        let underlay = (show.underlay_mtu != 0)
            .then(|| vxnet_proto::mtu::Underlay::new(show.underlay_mtu, show.local_vtep.is_ipv6()));
        self.d.set_underlay(underlay);
        // Outside a swarm nothing gossip knew is wanted any more.
        let gossip: Arc<GossipView> = if me.is_some() {
            self.d.gossip_view()
        } else {
            Arc::default()
        };

        // The host side first: namespaces and runtime records, processes
        // of containers that must not run.
        let mut ready: Vec<String> = Vec::new();
        for c in &containers {
            let rt = runtimes
                .entry(c.id.clone())
                .or_insert_with(|| self.default_runtime(c));
            let before = rt.clone();
            if rt.removed {
                p.outcomes.insert(c.id.clone(), Outcome::Done);
                continue;
            }
            sync_ifnames(c, rt);
            match c.desired {
                DesiredState::Removed => self.end_process(rt, 0),
                DesiredState::Stopped => {
                    let grace = rt.grace_secs.unwrap_or(DEFAULT_STOP_GRACE);
                    self.end_process(rt, grace);
                    rt.restart = true;
                }
                DesiredState::Running => match self.ensure_netns(rt) {
                    Ok(created) => {
                        p.report.netns_created += usize::from(created);
                        ready.push(c.id.clone());
                    }
                    Err(e) => p.fail(c, e),
                },
            }
            if *rt != before {
                self.d.store.put(rt).map_err(super::internal)?;
            }
        }

        // The dataplane.
        let locals: Vec<LocalContainer<'_>> = containers
            .iter()
            .filter(|c| ready.contains(&c.id))
            .filter_map(|c| {
                runtimes.get(&c.id).map(|rt| LocalContainer {
                    container: c,
                    runtime: rt,
                })
            })
            .collect();
        let want = plan::plan(&Desired {
            own_vtep: show.local_vtep,
            underlay,
            networks: &networks,
            containers: &locals,
            gossip: &gossip,
        });
        let have = self.observe()?;
        self.report_drift(plan::mtu_drift(&have, &want.state));
        let mut failed_endpoints: BTreeSet<EndpointKey> = BTreeSet::new();
        for op in plan::diff(&have, &want.state) {
            if let Err(e) = self.apply(&op, &mut p.report) {
                if let Op::Attach(key, _) = &op {
                    failed_endpoints.insert(key.clone());
                    if let Some(c) = want
                        .owners
                        .get(key)
                        .and_then(|id| containers.iter().find(|c| &c.id == id))
                    {
                        p.fail(c, &e);
                        continue;
                    }
                }
                p.report.errors.push(e.message);
            }
        }

        // Processes of running containers, once their endpoints exist.
        for c in containers.iter().filter(|c| ready.contains(&c.id)) {
            if matches!(p.outcomes.get(&c.id), Some(Outcome::Failed(_))) {
                continue;
            }
            let Some(rt) = runtimes.get_mut(&c.id) else {
                continue;
            };
            let before = rt.clone();
            match self.run_process(c, rt) {
                Ok(started) => {
                    p.report.processes_started += usize::from(started);
                    p.outcomes.insert(c.id.clone(), Outcome::Done);
                    rt.error = None;
                }
                Err(e) => {
                    rt.error = Some(e.clone());
                    p.fail(c, e);
                }
            }
            if *rt != before {
                self.d.store.put(rt).map_err(super::internal)?;
            }
        }

        // Containers that are gone: their endpoints left with the diff;
        // now their namespaces, then their records.
        for c in containers
            .iter()
            .filter(|c| c.desired == DesiredState::Removed)
        {
            let Some(rt) = runtimes.get(&c.id).cloned() else {
                continue;
            };
            if rt.removed {
                continue;
            }
            if let Err(e) = self.finish_removal(c, &rt) {
                p.fail(c, e);
                continue;
            }
            p.report.containers_removed += 1;
            p.outcomes.insert(c.id.clone(), Outcome::Done);
        }
        for c in containers
            .iter()
            .filter(|c| c.desired == DesiredState::Stopped)
        {
            p.outcomes.insert(c.id.clone(), Outcome::Done);
        }

        // Gossip: announce exactly the endpoints that exist.
        let mut announce: BTreeSet<Announcement> = BTreeSet::new();
        for (key, list) in &want.announce {
            if !failed_endpoints.contains(key) {
                announce.extend(list.iter().cloned());
            }
        }
        self.announce(&gossip, show.local_vtep, &announce);
        Ok(())
    }

    /// Logs endpoints whose MTU the underlay no longer gives, when that
    /// list changes.
    fn report_drift(&mut self, drift: Vec<(EndpointKey, u32, u32)>) {
        if drift == self.drift {
            return;
        }
        for (key, have, want) in &drift {
            tracing::warn!(
                endpoint = %key_name(key),
                mtu = have,
                underlay_gives = want,
                "the underlay's MTU changed since this endpoint was attached; it keeps its MTU \
                 until its container restarts"
            );
        }
        self.drift = drift;
    }

    fn default_runtime(&self, c: &Container) -> Runtime {
        let log_path = self
            .d
            .cfg
            .log_dir
            .join(format!("{}.log", c.name))
            .display()
            .to_string();
        let mut rt = Runtime {
            container_id: c.id.clone(),
            netns: c
                .netns
                .clone()
                .unwrap_or_else(|| format!("{}{}", self.d.cfg.netns_prefix, c.name)),
            log_path,
            ..Runtime::default()
        };
        match &c.external {
            Some(External::Netns(ns)) => {
                rt.external = true;
                rt.netns = ns.clone();
            }
            Some(External::Veth(v)) => {
                rt.external = true;
                rt.netns = String::new();
                rt.veth = Some(v.clone());
                rt.ifnames = c
                    .attachments
                    .iter()
                    .map(|a| (a.network.clone(), v.clone()))
                    .collect();
            }
            None => {}
        }
        rt
    }

    /// Creates the container's namespace if it is ours and missing; true
    /// when it did.
    fn ensure_netns(&self, rt: &Runtime) -> Result<bool, String> {
        if rt.veth.is_some() {
            return Ok(false);
        }
        if self.host.netns_exists(&rt.netns) {
            return Ok(false);
        }
        if rt.external {
            // Another runtime's namespace is that runtime's to make.
            return Err(format!(
                "its namespace {} is gone; `vxnet network disconnect` it",
                rt.netns
            ));
        }
        self.host.netns_add(&rt.netns)?;
        if let Err(e) = self.host.write_resolv_conf(&rt.netns) {
            let _ = self.host.netns_del(&rt.netns);
            return Err(e);
        }
        Ok(true)
    }

    /// Ends the command: SIGTERM, then SIGKILL once `grace` seconds passed
    /// (at once with 0). Records how it ended.
    fn end_process(&self, rt: &mut Runtime, grace: u64) {
        let Some(pid) = rt.pid.filter(|_| !rt.ended) else {
            return;
        };
        match self.host.exit(pid) {
            Exit::Running => {}
            Exit::Code(c) => {
                rt.ended = true;
                rt.exit_code = Some(c);
                rt.term_sent_ms = None;
                return;
            }
            Exit::Unknown => {
                rt.ended = true;
                rt.term_sent_ms = None;
                return;
            }
        }
        let now = unix_ms();
        match rt.term_sent_ms {
            _ if grace == 0 => self.host.kill_group(pid),
            None => {
                self.host.terminate_group(pid);
                rt.term_sent_ms = Some(now);
            }
            Some(t) if now.saturating_sub(t) >= grace.saturating_mul(1000) => {
                self.host.kill_group(pid)
            }
            Some(_) => {}
        }
    }

    /// Starts the command of a running container when it has not run yet
    /// or a start was asked for; notes when it ended. True when started.
    fn run_process(&self, c: &Container, rt: &mut Runtime) -> Result<bool, String> {
        if let Some(pid) = rt.pid.filter(|_| !rt.ended) {
            match self.host.exit(pid) {
                Exit::Running => return Ok(false),
                Exit::Code(code) => {
                    rt.ended = true;
                    rt.exit_code = Some(code);
                }
                Exit::Unknown => rt.ended = true,
            }
        }
        if c.command.is_empty() || rt.external {
            return Ok(false);
        }
        let due = rt.starts == 0 || (rt.ended && rt.restart);
        if !due {
            return Ok(false);
        }
        let pid = self.host.spawn(
            &rt.netns,
            &Spawn {
                command: c.command.clone(),
                env: c.env.clone(),
                log_path: rt.log_path.clone().into(),
            },
        )?;
        tracing::info!(container = %c.name, pid, "command started");
        rt.pid = Some(pid);
        rt.starts += 1;
        rt.ended = false;
        rt.exit_code = None;
        rt.restart = false;
        rt.term_sent_ms = None;
        Ok(true)
    }

    /// Removes what is left of a removed container (its endpoints are gone
    /// already) and then its records: on a manager the container record
    /// too (releasing its addresses), on a worker only once the manager
    /// has been told ([`Runtime::removed`], the agent's job).
    fn finish_removal(&self, c: &Container, rt: &Runtime) -> Result<(), String> {
        if let Some(pid) = rt.pid.filter(|_| !rt.ended) {
            if self.host.exit(pid) == Exit::Running {
                self.host.kill_group(pid);
                // Gone at the next pass.
                if self.host.exit(pid) == Exit::Running {
                    return Err(format!("its process {pid} did not end yet"));
                }
            }
        }
        if !rt.external && rt.veth.is_none() {
            if self.host.netns_exists(&rt.netns) {
                self.host.netns_del(&rt.netns)?;
            }
            self.host.remove_resolv_conf(&rt.netns);
        }
        let _w = self.d.write();
        if self.d.is_manager() {
            let mut txn = Txn::new();
            txn.delete::<Runtime>(&c.id);
            self.d.store.apply(&txn).map_err(|e| e.to_string())?;
            containers::remove_container(&self.d.store, &c.id).map_err(|e| e.to_string())?;
        } else {
            let mut done = rt.clone();
            done.removed = true;
            self.d.store.put(&done).map_err(|e| e.to_string())?;
        }
        tracing::info!(container = %c.name, "container removed");
        Ok(())
    }

    fn observe(&mut self) -> ApiResult<DpState> {
        let o = Observed {
            networks: self.dp.call(dp::Networks {})?,
            endpoints: self.dp.call(dp::Endpoints {})?,
            fdb: self.dp.call(dp::Fdb { vni: None })?,
            vteps: self.dp.call(dp::Vteps {})?,
        };
        Ok(plan::observe(&o))
    }

    fn apply(&mut self, op: &Op, r: &mut ReconcileReport) -> ApiResult<()> {
        let resp = self.dp.send(&op.request())?;
        if !resp.ok {
            let e = resp.error.unwrap_or_else(|| {
                vxnet_api::ApiError::internal("the dataplane refused without saying why")
            });
            // Already gone is what a removal wanted.
            let gone = e.code == ErrorCode::NotFound
                && matches!(
                    op,
                    Op::Detach(_) | Op::PeerDel { .. } | Op::NetworkDel(_) | Op::VtepDel(_)
                );
            if !gone {
                return Err(e.context(describe(op)));
            }
        }
        match op {
            Op::VtepAdd(..) => r.vteps_added += 1,
            Op::VtepDel(_) => r.vteps_removed += 1,
            Op::NetworkAdd(..) => r.networks_added += 1,
            Op::NetworkDel(_) => r.networks_removed += 1,
            Op::Attach(..) => r.attached += 1,
            Op::Detach(_) => r.detached += 1,
            Op::PeerAdd { .. } => r.peers_added += 1,
            Op::PeerDel { .. } => r.peers_removed += 1,
        }
        Ok(())
    }

    /// Makes gossip announce exactly `want` of this host's endpoints.
    fn announce(&self, view: &GossipView, own: IpAddr, want: &BTreeSet<Announcement>) {
        let g = lock(&self.d.gossip);
        let Some(g) = g.as_ref() else { return };
        let have: BTreeSet<Announcement> = view
            .records
            .iter()
            .filter(|r| r.vtep == own && !r.removed)
            .map(|r| (r.network_id.clone(), r.ip, MacAddr(r.mac)))
            .collect();
        for (network_id, ip, mac) in want.difference(&have) {
            g.send(GossipCmd::Announce {
                network_id: network_id.clone(),
                ip: *ip,
                mac: mac.0,
            });
        }
        for (network_id, ip, _) in have.difference(want) {
            g.send(GossipCmd::Withdraw {
                network_id: network_id.clone(),
                ip: *ip,
            });
        }
    }
}

use vxnet_api::ApiError;

/// Names what an op was about, for errors.
fn describe(op: &Op) -> String {
    match op {
        Op::VtepAdd(v, _) => format!("key of host {v}"),
        Op::VtepDel(v) => format!("removing the key of host {v}"),
        Op::NetworkAdd(v, _) => format!("network VNI {v}"),
        Op::NetworkDel(v) => format!("removing network VNI {v}"),
        Op::Attach(k, s) => format!("endpoint {} on VNI {}", key_name(k), s.vni),
        Op::Detach(k) => format!("detaching {}", key_name(k)),
        Op::PeerAdd { vni, mac, vtep, .. } => format!("peer {mac} behind {vtep} on VNI {vni}"),
        Op::PeerDel { vni, mac, .. } => format!("removing peer {mac} on VNI {vni}"),
    }
}

fn key_name(k: &EndpointKey) -> String {
    match k {
        EndpointKey::Netns { netns, ifname } => format!("{ifname} in {netns}"),
        EndpointKey::Veth(v) => format!("veth {v}"),
    }
}

/// Gives every attachment an interface name and drops the names of
/// networks the container left. Names are kept rather than derived from
/// the order, so a disconnect does not rename the other interfaces.
fn sync_ifnames(c: &Container, rt: &mut Runtime) {
    if rt.veth.is_some() {
        return;
    }
    rt.ifnames.retain(|net, _| c.attachment(net).is_some());
    for a in &c.attachments {
        if rt.ifname(&a.network).is_none() {
            let name = rt.next_ifname();
            rt.ifnames.insert(a.network.clone(), name);
        }
    }
}
