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

pub mod names;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vxnet_api::ctl::ReconcileReport;
use vxnet_api::dp;
use vxnet_api::{ApiResult, ErrorCode, MacAddr};

use self::names::Live;
use self::plan::{Announcement, Desired, DpState, EndpointKey, LocalContainer, Observed, Op};
use super::changes::Outcome;
use super::dataplane::{DataplaneApi, DataplaneExt};
use super::gossip::{GossipCmd, GossipView};
use super::host::{Exit, Host, Spawn};
use super::runtime::{LocalNode, QUICK_EXIT_MS, Runtime};
use super::{Daemon, lock};
use crate::containers;
use crate::dns::{DnsEntry, DnsRecords, DnsServer};
use crate::model::{
    Container, DesiredState, External, Network, Node, RestartCondition, Service, TaskState,
    TaskStatus,
};
use crate::store::{Store, StoreExt, Txn};

/// Grace between SIGTERM and SIGKILL when none was asked for (Docker's).
pub const DEFAULT_STOP_GRACE: u64 = 10;

/// Seconds a container being removed has between SIGTERM and SIGKILL: a
/// task's, as Docker's `--stop-grace-period` (scale down, `service rm`,
/// a rolling update), so it can finish what it serves; none for a
/// standalone container (`container rm -f`, as `docker rm -f`).
fn removal_grace(c: &Container, rt: &Runtime) -> u64 {
    if c.task.is_some() {
        rt.grace_secs.unwrap_or(DEFAULT_STOP_GRACE)
    } else {
        0
    }
}

/// Whether the command of `rt`, sent SIGTERM, still has time left of
/// `grace` seconds at `now_ms` (before SIGKILL).
fn in_grace(rt: &Runtime, grace: u64, now_ms: u64) -> bool {
    rt.term_sent_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < grace.saturating_mul(1000))
}

/// The reconciler of one host.
pub struct Reconciler<S, D, H> {
    d: Arc<Daemon<S, D>>,
    dp: D,
    host: H,
    /// The dataplane's `instance` at the last pass.
    instance: Option<u64>,
    /// Endpoints whose MTU the underlay no longer gives, as last reported.
    drift: Vec<(EndpointKey, u32, u32)>,
    /// The embedded DNS server, when this daemon runs one.
    dns: Option<DnsServer>,
    /// The table it was last given.
    dns_table: Vec<DnsEntry>,
    /// Container id -> (namespace, networks) it answers in.
    dns_served: BTreeMap<String, (String, Vec<String>)>,
    /// The earliest time (Unix ms) a pass has something to do that no
    /// change announces: a task's delayed restart.
    wake_ms: Option<u64>,
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
            dns: None,
            dns_table: Vec::new(),
            dns_served: BTreeMap::new(),
            wake_ms: None,
        }
    }

    /// Answers DNS at 127.0.0.11 in every container namespace.
    pub fn with_dns(mut self, dns: DnsServer) -> Self {
        self.dns = Some(dns);
        self
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
            let wait = self.wake_ms.map_or(interval, |at| {
                // Not below 50 ms: a restart that keeps failing must not spin.
                interval.min(Duration::from_millis(at.saturating_sub(unix_ms()).max(50)))
            });
            seq = self.d.changes.wait_change(seq, wait);
        }
    }

    /// One pass; what it changed and what it could not.
    pub fn pass(&mut self) -> ReconcileReport {
        let generation = self.d.changes.generation();
        let mut p = Pass::default();
        if let Err(e) = self.pass_into(&mut p) {
            p.report.errors.push(e.message);
        }
        use super::metrics::ControlCounters;
        ControlCounters::inc(&self.d.counters.reconcile_runs);
        if !p.report.errors.is_empty() {
            ControlCounters::inc(&self.d.counters.reconcile_errors);
        }
        self.d
            .realized
            .publish(generation, p.outcomes, p.report.clone());
        p.report
    }

    fn pass_into(&mut self, p: &mut Pass) -> ApiResult<()> {
        let d = Arc::clone(&self.d);
        let store = &d.store;
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
                DesiredState::Removed => self.end_process(rt, removal_grace(c, rt)),
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
        // Tasks alive now are the VIPs' backends; one started below counts
        // from the next pass (its runtime record changes, so that is soon).
        let everyone: Vec<Container> = store.list::<Container>().map_err(super::internal)?;
        let services: Vec<Service> = store.list::<Service>().map_err(super::internal)?;
        let running_before: Vec<&Container> = containers
            .iter()
            .filter(|c| ready.contains(&c.id) && runs(runtimes.get(&c.id)))
            .collect();
        let live = Live::new(&gossip, show.local_vtep, &running_before);
        let node: Option<Node> = match &me {
            Some(id) => store.get::<Node>(id).map_err(super::internal)?,
            None => None,
        };
        let want = plan::plan(&Desired {
            own_vtep: show.local_vtep,
            underlay,
            networks: &networks,
            containers: &locals,
            gossip: &gossip,
            services: &services,
            tasks: &everyone,
            live: &live,
            node: node.as_ref(),
            host_link_subnet: d.cfg.host_link_subnet,
        });
        let have = self.observe()?;
        self.report_drift(plan::mtu_drift(&have, &want.state));
        let mut failed_endpoints: BTreeSet<EndpointKey> = BTreeSet::new();
        let mut held = 0usize;
        for op in plan::diff(&have, &want.state) {
            // A daemon that just started does not know the swarm yet: the
            // peers, backends and ports it lacks are unknown, not gone, and
            // removing them would cut live connections (a published
            // port's flow reset through a VIP without backends).
            if gossip.syncing && !plan::additive(&op, &have) {
                held += 1;
                continue;
            }
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

        if held > 0 {
            tracing::info!(held, "gossip is syncing: dataplane removals wait for it");
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

        self.wake_ms = containers
            .iter()
            .filter(|c| ready.contains(&c.id))
            .filter_map(|c| restart_at(c, runtimes.get(&c.id)?))
            .min();
        self.statuses(&containers, &mut runtimes)?;

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
            match self.finish_removal(c, &rt) {
                Ok(true) => {}
                // Still in its grace period.
                Ok(false) => continue,
                Err(e) => {
                    p.fail(c, e);
                    continue;
                }
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

        // Gossip: announce exactly the endpoints that exist; a task's only
        // while its command runs, so other hosts stop sending it new
        // connections as soon as it is dead (Docker keeps dead backends:
        // moby#33790).
        let mut announce: BTreeSet<Announcement> = want.announce_node.iter().cloned().collect();
        for (key, list) in &want.announce {
            let live = want
                .owners
                .get(key)
                .and_then(|id| containers.iter().find(|c| &c.id == id))
                .is_some_and(|c| c.task.is_none() || runs(runtimes.get(&c.id)));
            if live && !failed_endpoints.contains(key) {
                announce.extend(list.iter().cloned());
            }
        }
        self.announce(&gossip, show.local_vtep, &announce);

        // Names, from the same view.
        let local_running: Vec<&Container> = containers
            .iter()
            .filter(|c| ready.contains(&c.id) && runs(runtimes.get(&c.id)))
            .collect();
        let live = Live::new(&gossip, show.local_vtep, &local_running);
        let here: Vec<&Network> = networks
            .iter()
            .filter(|n| want.state.networks.contains_key(&n.vni))
            .collect();
        let serve: Vec<(&Container, &Runtime)> = containers
            .iter()
            .filter(|c| ready.contains(&c.id))
            .filter_map(|c| runtimes.get(&c.id).map(|rt| (c, rt)))
            .filter(|(_, rt)| !rt.external && rt.veth.is_none())
            .collect();
        self.tend_dns(&here, &everyone, &services, &live, &serve);
        Ok(())
    }

    /// Gives the DNS server the table of this host's networks, and makes
    /// it answer in exactly the namespaces of this host's running
    /// containers (not another runtime's: their resolv.conf is theirs).
    fn tend_dns(
        &mut self,
        networks: &[&Network],
        everyone: &[Container],
        services: &[Service],
        live: &Live,
        serve: &[(&Container, &Runtime)],
    ) {
        let Some(dns) = &self.dns else { return };
        let (entries, names) = names::dns_entries(networks, everyone, services, live);
        if entries != self.dns_table {
            let records = Arc::new(DnsRecords::new(entries.clone(), names));
            *super::lock(&self.d.dns_records) = Some(Arc::clone(&records));
            dns.set_records(records);
            self.dns_table = entries;
        }
        let mut want: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for (c, rt) in serve {
            let nets = c.attachments.iter().map(|a| a.network.clone()).collect();
            want.insert(c.id.clone(), (rt.netns.clone(), nets));
        }
        for (id, (netns, nets)) in &want {
            if self.dns_served.get(id) == Some(&(netns.clone(), nets.clone())) {
                continue;
            }
            match dns.serve_netns(id, netns, nets.clone()) {
                Ok(()) => {
                    self.dns_served
                        .insert(id.clone(), (netns.clone(), nets.clone()));
                }
                Err(e) => tracing::warn!(container = %id, error = %e, "no DNS in the container"),
            }
        }
        let gone: Vec<String> = self
            .dns_served
            .keys()
            .filter(|id| !want.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            dns.stop_netns(&id);
            self.dns_served.remove(&id);
        }
    }

    /// Records each local container's state as this node sees it; a
    /// manager keeps it in the container's record at once (a worker's
    /// agent reports it).
    fn statuses(
        &self,
        containers: &[Container],
        runtimes: &mut BTreeMap<String, Runtime>,
    ) -> ApiResult<()> {
        let now = super::now();
        let manager = self.d.is_manager();
        let mut txn = Txn::new();
        for c in containers {
            let Some(rt) = runtimes.get_mut(&c.id) else {
                continue;
            };
            if rt.removed {
                continue;
            }
            let st = status_of(c, rt, c.desired, now);
            if rt.status.as_ref() != Some(&st) {
                rt.status = Some(st.clone());
                txn.put(rt).map_err(super::internal)?;
            }
            if manager && c.status.as_ref() != Some(&st) {
                let _w = self.d.write();
                if let Some(mut cur) = self
                    .d
                    .store
                    .get::<Container>(&c.id)
                    .map_err(super::internal)?
                {
                    cur.status = Some(st);
                    self.d.store.put(&cur).map_err(super::internal)?;
                }
            }
        }
        if !txn.is_empty() {
            self.d.store.apply(&txn).map_err(super::internal)?;
        }
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
            Some(_) if !in_grace(rt, grace, now) => self.host.kill_group(pid),
            Some(_) => {}
        }
    }

    /// What a command learns about itself from its environment (the
    /// user's `--env` comes after, so it may override these). Docker
    /// offers the same facts through `--hostname` templates
    /// (`{{.Task.Name}}`, `{{.Service.Name}}`).
    fn identity_env(&self, c: &Container) -> Vec<String> {
        let mut env = vec![
            format!("VXNET_CONTAINER_ID={}", c.id),
            format!("VXNET_CONTAINER_NAME={}", c.name),
            format!("VXNET_NODE_ID={}", c.node),
        ];
        if let Some(t) = &c.task {
            let name = self
                .d
                .store
                .get::<Service>(&t.service)
                .ok()
                .flatten()
                .map(|s| s.name);
            env.push(format!("VXNET_SERVICE_ID={}", t.service));
            env.push(format!("VXNET_SERVICE_NAME={}", name.unwrap_or_default()));
            env.push(format!("VXNET_TASK_SLOT={}", t.slot));
        }
        env
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
            let now = unix_ms();
            rt.ended_ms = Some(now);
            let quick = rt
                .started_ms
                .is_none_or(|t| now.saturating_sub(t) < QUICK_EXIT_MS);
            rt.quick_exits = if quick { rt.quick_exits + 1 } else { 0 };
            tracing::info!(container = %c.name, code = ?rt.exit_code, "command ended");
        }
        if c.command.is_empty() || rt.external {
            return Ok(false);
        }
        let now = unix_ms();
        let due = rt.starts == 0
            || (rt.ended && rt.restart)
            || restart_at(c, rt).is_some_and(|at| now >= at);
        if !due {
            return Ok(false);
        }
        let pid = self.host.spawn(
            &rt.netns,
            &Spawn {
                command: c.command.clone(),
                env: self
                    .identity_env(c)
                    .into_iter()
                    .chain(c.env.iter().cloned())
                    .collect(),
                log_path: rt.log_path.clone().into(),
            },
        )?;
        tracing::info!(container = %c.name, pid, "command started");
        rt.pid = Some(pid);
        rt.starts += 1;
        rt.started_ms = Some(now);
        rt.ended = false;
        rt.exit_code = None;
        rt.restart = false;
        rt.term_sent_ms = None;
        rt.ended_ms = None;
        Ok(true)
    }

    /// Removes what is left of a removed container (its endpoints are gone
    /// already) and then its records: on a manager the container record
    /// too (releasing its addresses), on a worker only once the manager
    /// has been told ([`Runtime::removed`], the agent's job). True when
    /// removed; false while a task's command still has time left after
    /// its SIGTERM.
    fn finish_removal(&self, c: &Container, rt: &Runtime) -> Result<bool, String> {
        if let Some(pid) = rt.pid.filter(|_| !rt.ended) {
            if self.host.exit(pid) == Exit::Running {
                if in_grace(rt, removal_grace(c, rt), unix_ms()) {
                    return Ok(false);
                }
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
        Ok(true)
    }

    fn observe(&mut self) -> ApiResult<DpState> {
        let o = Observed {
            networks: self.dp.call(dp::Networks {})?,
            endpoints: self.dp.call(dp::Endpoints {})?,
            fdb: self.dp.call(dp::Fdb { vni: None })?,
            vteps: self.dp.call(dp::Vteps {})?,
            services: self.dp.call(dp::Services { vni: None })?,
            host_link: self.dp.call(dp::HostLink {})?,
            ports: self.dp.call(dp::Ports {})?,
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
                    Op::Detach(_)
                        | Op::PeerDel { .. }
                        | Op::NetworkDel(_)
                        | Op::VtepDel(_)
                        | Op::ServiceDel { .. }
                        | Op::PortDel { .. }
                        | Op::HostLinkDel
                );
            if !gone {
                return Err(e.context(describe(op)));
            }
        }
        match op {
            Op::VtepAdd(..) => r.vteps_added += 1,
            Op::VtepDel(_) => r.vteps_removed += 1,
            Op::NetworkAdd(..) => r.networks_added += 1,
            // Counted when the network was added.
            Op::EgressOn(..) => {}
            Op::NetworkDel(_) => r.networks_removed += 1,
            Op::Attach(..) => r.attached += 1,
            Op::Detach(_) => r.detached += 1,
            Op::PeerAdd { .. } => r.peers_added += 1,
            Op::PeerDel { .. } => r.peers_removed += 1,
            Op::ServiceSet { .. } => r.services_set += 1,
            Op::ServiceDel { .. } => r.services_removed += 1,
            Op::PortSet { .. } => r.ports_set += 1,
            Op::PortDel { .. } => r.ports_removed += 1,
            Op::HostLinkSet(_) | Op::HostLinkDel => r.host_link_changes += 1,
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

/// Whether a container's command runs (as of the last look).
fn runs(rt: Option<&Runtime>) -> bool {
    rt.is_some_and(|rt| rt.pid.is_some() && !rt.ended)
}

/// When (Unix ms) a task's ended command starts again, if its restart
/// condition wants it: after a delay that doubles with every exit in a row
/// soon after a start (0.5 s to 16 s), so a command that keeps failing
/// does not spin, while one that ran for a while comes back at once.
fn restart_at(c: &Container, rt: &Runtime) -> Option<u64> {
    let task = c.task.as_ref()?;
    if !rt.ended {
        return None;
    }
    let wanted = match task.restart {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => rt.exit_code != Some(0),
        RestartCondition::None => false,
    };
    let delay = 500u64 << rt.quick_exits.saturating_sub(1).min(5);
    wanted.then(|| rt.ended_ms.map_or(0, |t| t + delay))
}

/// The state of a container as this node sees it, keeping `since` while
/// the state stays.
fn status_of(c: &Container, rt: &Runtime, desired: DesiredState, now: u64) -> TaskStatus {
    let (state, error) = if desired != DesiredState::Running {
        (TaskState::Shutdown, None)
    } else if rt.external {
        (TaskState::Running, None)
    } else if let Some(e) = rt.error.clone().filter(|_| rt.pid.is_none() || rt.ended) {
        (TaskState::Failed, Some(e))
    } else if rt.pid.is_none() {
        (TaskState::Pending, None)
    } else if !rt.ended {
        (TaskState::Running, None)
    } else if rt.exit_code == Some(0) {
        (TaskState::Complete, None)
    } else {
        (TaskState::Failed, None)
    };
    let _ = c;
    let since = match &rt.status {
        Some(old) if old.state == state => old.since,
        _ => now,
    };
    TaskStatus {
        state,
        since,
        exit_code: rt.exit_code.filter(|_| rt.ended),
        error,
        restarts: rt.starts.saturating_sub(1),
    }
}

/// Names what an op was about, for errors.
fn describe(op: &Op) -> String {
    match op {
        Op::VtepAdd(v, _) => format!("key of host {v}"),
        Op::VtepDel(v) => format!("removing the key of host {v}"),
        Op::NetworkAdd(v, _) => format!("network VNI {v}"),
        Op::EgressOn(v, _) => format!("egress of network VNI {v}"),
        Op::NetworkDel(v) => format!("removing network VNI {v}"),
        Op::Attach(k, s) => format!("endpoint {} on VNI {}", key_name(k), s.vni),
        Op::Detach(k) => format!("detaching {}", key_name(k)),
        Op::PeerAdd { vni, mac, vtep, .. } => format!("peer {mac} behind {vtep} on VNI {vni}"),
        Op::PeerDel { vni, mac, .. } => format!("removing peer {mac} on VNI {vni}"),
        Op::ServiceSet { vni, vip, backends } => {
            format!(
                "service VIP {vip} with {} backends on VNI {vni}",
                backends.len()
            )
        }
        Op::ServiceDel { vni, vip } => format!("removing service VIP {vip} on VNI {vni}"),
        Op::HostLinkSet(h) => format!("host link on {}", h.subnet),
        Op::HostLinkDel => "removing the host link".into(),
        Op::PortSet {
            protocol,
            published,
            spec,
        } => format!(
            "published {protocol} port {published} to {} on VNI {}",
            spec.target, spec.vni
        ),
        Op::PortDel {
            protocol,
            published,
        } => format!("unpublishing {protocol} port {published}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskInfo;

    fn task(restart: RestartCondition) -> Container {
        Container {
            id: "t".into(),
            name: "web.1.t".into(),
            node: "n".into(),
            netns: None,
            attachments: Vec::new(),
            created: 0,
            desired: DesiredState::Running,
            command: vec!["true".into()],
            env: Vec::new(),
            external: None,
            task: Some(TaskInfo {
                service: "s".into(),
                slot: 1,
                version: 1,
                restart,
            }),
            status: None,
        }
    }

    fn ended(code: i32, quick_exits: u32) -> Runtime {
        Runtime {
            ended: true,
            exit_code: Some(code),
            ended_ms: Some(1_000),
            quick_exits,
            ..Runtime::default()
        }
    }

    #[test]
    fn restarts_back_off_only_while_the_command_keeps_failing_fast() {
        let any = task(RestartCondition::Any);
        // After a long run (no quick exit in a row): the shortest delay.
        assert_eq!(restart_at(&any, &ended(1, 0)), Some(1_500));
        assert_eq!(restart_at(&any, &ended(1, 1)), Some(1_500));
        assert_eq!(restart_at(&any, &ended(1, 3)), Some(3_000));
        assert_eq!(restart_at(&any, &ended(1, 40)), Some(17_000));
        // Still running: nothing to restart.
        let running = Runtime {
            ended: false,
            ..ended(1, 0)
        };
        assert_eq!(restart_at(&any, &running), None);
        // The conditions.
        let on_failure = task(RestartCondition::OnFailure);
        assert_eq!(restart_at(&on_failure, &ended(0, 0)), None);
        assert_eq!(restart_at(&on_failure, &ended(2, 0)), Some(1_500));
        assert_eq!(
            restart_at(&task(RestartCondition::None), &ended(2, 0)),
            None
        );
        // A standalone container is not restarted.
        let mut plain = task(RestartCondition::Any);
        plain.task = None;
        assert_eq!(restart_at(&plain, &ended(2, 0)), None);
    }
}
