//! A manager's duties beyond the local API: answering nodes on the
//! management port ([`ManagerHandler`]: joins and the typed
//! [`ManagerCall`]s, the assignment watch among them), and tending the
//! swarm: node status from gossip, the scheduler
//! ([`Daemon::tend_services`]), and `service logs` of tasks on other nodes
//! (asked through their assignment watch).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vxnet_api::{ApiError, ApiResult};

use super::dataplane::DataplaneApi;
use super::{Daemon, internal, now};
use crate::cluster;
use crate::containers;
use crate::containers::CreateContainer;
use crate::mgmt::calls::{
    AssignmentSet, ContainerGrant, LogRequest, LogsReply, MAX_ASSIGNMENT_WAIT_MS, ManagerCall,
};
use crate::mgmt::{
    self, CaPem, ErrorCode, Handler, JoinRequest, JoinResponse, Peer, Request, Response, RpcError,
    SwarmCa,
};
use crate::model::{
    AddressAlloc, AddressOwner, Container, Network, Node, NodeStatus, Service, TaskInfo,
};
use crate::scheduler::Action;
use crate::store::{Store, StoreExt, Txn};
use std::collections::BTreeMap;

/// How long `service logs` waits for another node's log.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// Log requests for other nodes and their answers (a manager's).
#[derive(Default)]
pub struct LogQueue {
    next: u64,
    pending: BTreeMap<String, Vec<LogRequest>>,
    replies: BTreeMap<u64, LogsReply>,
}

impl LogQueue {
    fn ask(&mut self, node: &str, container: &str, tail: Option<usize>) -> u64 {
        self.next += 1;
        self.pending
            .entry(node.to_owned())
            .or_default()
            .push(LogRequest {
                id: self.next,
                container_id: container.to_owned(),
                tail,
            });
        self.next
    }

    fn take_for(&mut self, node: &str) -> Vec<LogRequest> {
        self.pending.remove(node).unwrap_or_default()
    }

    fn answer(&mut self, r: LogsReply) {
        // Only answers to questions asked (a node cannot fill memory).
        if r.id <= self.next && self.replies.len() < 1024 {
            self.replies.insert(r.id, r);
        }
    }

    fn reply(&mut self, id: u64) -> Option<LogsReply> {
        self.replies.remove(&id)
    }

    fn forget(&mut self, id: u64) {
        self.replies.remove(&id);
        for v in self.pending.values_mut() {
            v.retain(|r| r.id != id);
        }
    }
}

/// A node that joined less than this long ago (or before this manager
/// process started, less than this long after its start) and gossip has
/// not seen yet is still Ready (gossip needs a moment to hear of it); one
/// gossip saw is Down as soon as gossip drops it.
const JOIN_GRACE_SECS: u64 = 10;

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    /// The manager's side of a join.
    pub fn admit(&self, req: &JoinRequest, from: SocketAddr) -> Result<JoinResponse, RpcError> {
        let fail = |e: String| RpcError::new(ErrorCode::Failed, e);
        let pem = self
            .store
            .get::<CaPem>(CaPem::KEY)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("this node is not a swarm manager".into()))?;
        let ca = SwarmCa::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
        let _w = self.write();
        let r = mgmt::admit(&self.store, &ca, req, from, now(), &mut rand_core::OsRng);
        if let Ok(j) = &r {
            tracing::info!(node = %j.node.id, hostname = %j.node.hostname, role = ?j.node.role, "node joined");
        }
        r
    }

    /// The grant for container `id` as it is now.
    fn grant(&self, id: &str) -> ApiResult<ContainerGrant> {
        let c = self
            .store
            .get::<Container>(id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("container {id} is gone")))?;
        let networks = self
            .store
            .list::<Network>()
            .map_err(internal)?
            .into_iter()
            .filter(|n| c.attachment(&n.id).is_some())
            .collect();
        Ok(ContainerGrant {
            container: c,
            networks,
            generation: self.changes.generation(),
        })
    }

    /// A container of `node` (a node changes its own containers only).
    fn node_container(&self, node: &str, id: &str) -> ApiResult<Container> {
        let c = self
            .store
            .get::<Container>(id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("container {id} not found")))?;
        if c.node != node {
            return Err(ApiError::denied(format!(
                "container {} does not run on node {node}",
                c.name
            )));
        }
        Ok(c)
    }

    /// What `node` must run, and what it must know of its networks.
    fn assignments(&self, node: &str) -> ApiResult<AssignmentSet> {
        let generation = self.changes.generation();
        let me = self
            .store
            .get::<Node>(node)
            .map_err(internal)?
            .ok_or_else(|| ApiError::denied(format!("node {node} is not part of this swarm")))?;
        let all = self.store.list::<Container>().map_err(internal)?;
        let (containers, others): (Vec<Container>, Vec<Container>) =
            all.into_iter().partition(|c| c.node == node);
        let used = |id: &str| containers.iter().any(|c| c.attachment(id).is_some());
        let networks: Vec<Network> = self
            .store
            .list::<Network>()
            .map_err(internal)?
            .into_iter()
            .filter(|n| n.ingress || used(&n.id))
            .collect();
        let peers = others
            .into_iter()
            .filter(|c| c.attachments.iter().any(|a| used(&a.network)))
            .collect();
        let services = self
            .store
            .list::<Service>()
            .map_err(internal)?
            .into_iter()
            .filter(|s| s.networks.iter().any(|n| used(&n.network)))
            .collect();
        Ok(AssignmentSet {
            generation,
            node: me,
            containers,
            networks,
            nodes: self.store.list::<Node>().map_err(internal)?,
            peers,
            services,
            log_requests: super::lock(&self.logs).take_for(node),
            trace_requests: super::lock(&self.traces).take_for(node),
        })
    }

    /// Answers a node's call about itself.
    pub fn node_call(&self, node: &str, call: ManagerCall) -> ApiResult<serde_json::Value> {
        fn value(v: impl serde::Serialize) -> ApiResult<serde_json::Value> {
            serde_json::to_value(v).map_err(internal)
        }
        self.manager_only()?;
        match call {
            ManagerCall::ContainerCreate(mut c) => {
                // A node creates containers on itself only.
                c.0.node = node.to_owned();
                let id = {
                    let _w = self.write();
                    containers::create_container(&self.store, &c.0, now(), &mut rand_core::OsRng)?
                        .id
                };
                value(self.grant(&id)?)
            }
            ManagerCall::ContainerDesire(d) => {
                {
                    let _w = self.write();
                    let mut c = self.node_container(node, &d.container_id)?;
                    if c.desired != d.desired {
                        c.desired = d.desired;
                        self.store.put(&c).map_err(internal)?;
                    }
                }
                value(self.grant(&d.container_id)?)
            }
            ManagerCall::ContainerRemoved(r) => {
                let _w = self.write();
                match self.node_container(node, &r.container_id) {
                    Ok(c) => {
                        containers::remove_container(&self.store, &c.id)?;
                        tracing::info!(container = %c.name, node, "container removed by its node");
                    }
                    // Already gone: removal is idempotent.
                    Err(e) if e.code == vxnet_api::ErrorCode::NotFound => {}
                    Err(e) => return Err(e),
                }
                value(self.changes.generation())
            }
            ManagerCall::NetworkConnect(c) => {
                {
                    let _w = self.write();
                    let cont = self.node_container(node, &c.container_id)?;
                    containers::connect(&self.store, &cont.id, &c.endpoint)?;
                }
                value(self.grant(&c.container_id)?)
            }
            ManagerCall::NetworkDisconnect(c) => {
                {
                    let _w = self.write();
                    let cont = self.node_container(node, &c.container_id)?;
                    containers::disconnect(&self.store, &cont.id, &c.network_id)?;
                }
                value(self.grant(&c.container_id)?)
            }
            ManagerCall::Assignments(a) => {
                let wait = Duration::from_millis(a.wait_ms.min(MAX_ASSIGNMENT_WAIT_MS));
                self.changes.wait_generation(a.since, wait);
                value(self.assignments(node)?)
            }
            ManagerCall::NodeLeave(_) => {
                let _w = self.write();
                let n = cluster::node_left(&self.store, node)?;
                tracing::info!(node = %n.id, hostname = %n.hostname, "node left the swarm");
                value(())
            }
            ManagerCall::GossipKeys(r) => value(self.gossip_keys_for(node, r)?),
            ManagerCall::StatusReport(r) => {
                let _w = self.write();
                let mut txn = crate::store::Txn::new();
                for (id, st) in r.statuses {
                    if let Some(mut c) = self.store.get::<Container>(&id).map_err(internal)? {
                        if c.node == node && c.status.as_ref() != Some(&st) {
                            c.status = Some(st);
                            txn.put(&c).map_err(internal)?;
                        }
                    }
                }
                if !txn.is_empty() {
                    self.store.apply(&txn).map_err(internal)?;
                }
                value(())
            }
            ManagerCall::LogsReply(r) => {
                super::lock(&self.logs).answer(r);
                self.changes.poke();
                value(())
            }
            ManagerCall::NodeTrace(t) => value(self.trace_on_node(&t.node, t.wire)?),
            ManagerCall::TraceReply(r) => {
                super::lock(&self.traces).answer(r);
                self.changes.poke();
                value(())
            }
        }
    }

    /// One round of the scheduler: what the services want, made into task
    /// records (created for their nodes, or marked for removal).
    pub(crate) fn tend_services(&self) {
        if self.local_node().is_err() || !self.is_manager() {
            return;
        }
        let _w = self.write();
        let r = (|| -> ApiResult<usize> {
            let services = self.store.list::<Service>().map_err(internal)?;
            let tasks: Vec<Container> = self
                .store
                .list::<Container>()
                .map_err(internal)?
                .into_iter()
                .filter(|c| c.task.is_some())
                .collect();
            let nodes = self.store.list::<Node>().map_err(internal)?;
            let ingress = self
                .store
                .list::<Network>()
                .map_err(internal)?
                .into_iter()
                .find(|n| n.ingress)
                .map(|n| n.id);
            let actions = crate::scheduler::schedule(&services, &tasks, &nodes, ingress.as_deref());
            let mut errors = super::lock(&self.schedule_errors);
            // A service that needs no new task has no scheduling problem.
            errors.retain(|id, _| {
                actions
                    .iter()
                    .any(|a| matches!(a, Action::Create { service, .. } if service == id))
            });
            for a in &actions {
                let r = self.apply_action(a, &services, ingress.as_deref());
                // A task that cannot be created (no free address, say) is
                // the service's problem, shown by `service inspect` and
                // the CLI's wait; the other services' actions go on.
                if let Action::Create { service, .. } = a {
                    match r {
                        Ok(()) => {
                            errors.remove(service);
                        }
                        Err(e) => {
                            errors.insert(service.clone(), e.message.clone());
                        }
                    }
                    continue;
                }
                r?;
            }
            Ok(actions.len())
        })();
        match r {
            Ok(0) => {}
            Ok(n) => tracing::debug!(actions = n, "scheduled"),
            Err(e) => tracing::warn!(error = %e, "scheduling failed"),
        }
    }

    /// Gives every node an endpoint on the ingress network (Docker's
    /// `ingress-sbox`: its host link stands for it there, so the tasks'
    /// nodes know where a routing-mesh flow came from), and releases the
    /// endpoints of nodes that are gone. One node per transaction: the
    /// allocator reads the store, not the transaction.
    pub(crate) fn tend_ingress_endpoints(&self) {
        if self.local_node().is_err() || !self.is_manager() {
            return;
        }
        let _w = self.write();
        let r = (|| -> crate::error::Result<()> {
            let Some(ingress) = self
                .store
                .list::<Network>()?
                .into_iter()
                .find(|n| n.ingress)
            else {
                return Ok(());
            };
            let allocs = self.store.list::<AddressAlloc>()?;
            let nodes = self.store.list::<Node>()?;
            let holds = |n: &Node, ip: std::net::Ipv4Addr| {
                allocs.iter().any(|a| {
                    a.network == ingress.id
                        && a.ip == std::net::IpAddr::V4(ip)
                        && a.owner == AddressOwner::Node(n.id.clone())
                })
            };
            for n in &nodes {
                if n.ingress_ipv4.is_some_and(|ip| holds(n, ip)) {
                    continue;
                }
                let mut txn = Txn::new();
                let a = containers::allocate(
                    &self.store,
                    &mut txn,
                    &ingress,
                    &AddressOwner::Node(n.id.clone()),
                    &containers::NetworkRequest {
                        network: ingress.id.clone(),
                        ..Default::default()
                    },
                )?;
                let mut with = n.clone();
                with.ingress_ipv4 = Some(a.ipv4);
                txn.put(&with)?;
                self.store.apply(&txn)?;
                tracing::info!(node = %n.hostname, ip = %a.ipv4, "ingress endpoint");
            }
            let mut txn = Txn::new();
            for a in &allocs {
                if let AddressOwner::Node(id) = &a.owner {
                    let live = nodes.iter().any(|n| {
                        &n.id == id && n.ingress_ipv4.map(std::net::IpAddr::V4) == Some(a.ip)
                    });
                    if !live || a.network != ingress.id {
                        txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&a.network, a.ip));
                    }
                }
            }
            if !txn.is_empty() {
                self.store.apply(&txn)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!(error = %e, "ingress endpoints not allocated");
        }
    }

    fn apply_action(
        &self,
        a: &Action,
        services: &[Service],
        ingress: Option<&str>,
    ) -> ApiResult<()> {
        match a {
            Action::Create {
                service,
                slot,
                node,
            } => {
                let Some(s) = services.iter().find(|s| &s.id == service) else {
                    return Ok(());
                };
                let id = crate::model::new_id(&mut rand_core::OsRng);
                let r = containers::create_container(
                    &self.store,
                    &CreateContainer {
                        name: format!("{}.{}.{id}", s.name, slot),
                        node: node.clone(),
                        netns: None,
                        networks: crate::scheduler::task_networks(s, ingress)
                            .into_iter()
                            .map(|id| crate::containers::NetworkRequest {
                                aliases: s
                                    .networks
                                    .iter()
                                    .find(|n| n.network == id)
                                    .map(|n| n.aliases.clone())
                                    .unwrap_or_default(),
                                network: id,
                                ..Default::default()
                            })
                            .collect(),
                        command: s.command.clone(),
                        env: s.env.clone(),
                        external: None,
                        task: Some(TaskInfo {
                            service: s.id.clone(),
                            slot: *slot,
                            version: s.version,
                            restart: s.restart,
                        }),
                        id: Some(id),
                    },
                    now(),
                    &mut rand_core::OsRng,
                );
                match r {
                    Ok(c) => tracing::info!(task = %c.name, node = %node, "task created"),
                    // A full network: the slot stays empty and the next
                    // round tries again; the caller records why for the
                    // service (`service inspect`, the CLI's wait).
                    Err(e) => {
                        tracing::warn!(service = %s.name, error = %e, "task not created");
                        return Err(e.into());
                    }
                }
            }
            Action::Remove { task, why } => {
                if let Some(mut c) = self.store.get::<Container>(task).map_err(internal)? {
                    c.desired = crate::model::DesiredState::Removed;
                    self.store.put(&c).map_err(internal)?;
                    tracing::info!(task = %c.name, why, "task to be removed");
                }
            }
            Action::Forget { task } => {
                if let Ok(c) = containers::remove_container(&self.store, task) {
                    tracing::info!(task = %c.name, "task forgotten: its node is down");
                }
            }
            Action::Connect {
                task,
                network,
                aliases,
            } => {
                let req = crate::containers::NetworkRequest {
                    network: network.clone(),
                    aliases: aliases.clone(),
                    ..Default::default()
                };
                match containers::connect(&self.store, task, &req) {
                    Ok(c) => tracing::info!(task = %c.name, network, "task joined a network"),
                    // A full network: tried again next round.
                    Err(e) => tracing::warn!(task, network, error = %e, "task not connected"),
                }
            }
            Action::Disconnect { task, network } => {
                match containers::disconnect(&self.store, task, network) {
                    Ok(c) => tracing::info!(task = %c.name, network, "task left a network"),
                    Err(e) => tracing::warn!(task, network, error = %e, "task not disconnected"),
                }
            }
        }
        Ok(())
    }

    /// A remote container's log, asked of its node through its assignment
    /// watch (the node answers with a [`ManagerCall::LogsReply`]).
    pub(crate) fn remote_logs(&self, c: &Container, tail: Option<usize>) -> ApiResult<String> {
        let id = super::lock(&self.logs).ask(&c.node, &c.id, tail);
        // Wakes the node's watch.
        self.changes.bump();
        let deadline = std::time::Instant::now() + LOG_TIMEOUT;
        let mut seq = self.changes.sequence();
        loop {
            if let Some(r) = super::lock(&self.logs).reply(id) {
                return match r.error {
                    Some(e) => Err(ApiError::unavailable(e)),
                    None => Ok(r.text),
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                super::lock(&self.logs).forget(id);
                return Err(ApiError::new(
                    vxnet_api::ErrorCode::Timeout,
                    format!(
                        "node {} did not send the log within {} s",
                        self.hostname_of(&c.node),
                        LOG_TIMEOUT.as_secs()
                    ),
                ));
            }
            seq = self.changes.wait_change(seq, left);
        }
    }

    /// Node status from gossip: a member gossip holds is Ready; a node it
    /// does not hold is Down once it had time to be heard of. A node that
    /// left stays Down with its reason.
    pub(crate) fn tend_node_status(&self) {
        let Ok(me) = self.local_node() else { return };
        if !self.is_manager() {
            return;
        }
        let view = self.gossip_view();
        if view.own.is_none() || view.syncing {
            // No gossip yet, or still pulling the swarm's state: nothing
            // to tell Ready from Down by.
            return;
        }
        let since = match self.tending_since.load(Ordering::Relaxed) {
            0 => {
                let t = now();
                self.tending_since.store(t, Ordering::Relaxed);
                t
            }
            t => t,
        };
        let _w = self.write();
        let Ok(nodes) = self.store.list::<Node>() else {
            return;
        };
        let mut seen = super::lock(&self.seen_members);
        for mut n in nodes {
            if n.down_reason.as_deref() == Some(cluster::LEFT_REASON) {
                // It left: gossip may hold it a moment longer.
                continue;
            }
            let live = n.id == me || view.members.iter().any(|m| m.node_id == n.id);
            if live {
                seen.insert(n.id.clone());
            }
            let joining = n.status == NodeStatus::Ready
                && !seen.contains(&n.id)
                && now() < n.created.max(since) + JOIN_GRACE_SECS;
            let status = if live || joining {
                NodeStatus::Ready
            } else {
                NodeStatus::Down
            };
            if status == n.status {
                continue;
            }
            n.status = status;
            n.down_reason = match status {
                NodeStatus::Ready => None,
                NodeStatus::Down => Some("unreachable: gossip declared it down".into()),
            };
            tracing::info!(node = %n.id, hostname = %n.hostname, status = ?status, "node status");
            if let Err(e) = self.store.put(&n) {
                tracing::warn!(error = %e, "node status not recorded");
            }
        }
    }
}

/// The manager's side of the management port, over the daemon.
pub struct ManagerHandler<S, D>(pub Arc<Daemon<S, D>>);

impl<S, D> Handler for ManagerHandler<S, D>
where
    S: Store + Send + Sync + 'static,
    D: DataplaneApi + 'static,
{
    async fn join(&self, req: JoinRequest, from: SocketAddr) -> Result<JoinResponse, RpcError> {
        let d = Arc::clone(&self.0);
        // The store's lock is a blocking one; keep it off the async workers.
        tokio::task::spawn_blocking(move || d.admit(&req, from))
            .await
            .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string()))?
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Response, RpcError> {
        let d = Arc::clone(&self.0);
        let node = peer.node_id.clone();
        tokio::task::spawn_blocking(move || match req {
            Request::NodeList => cluster::list_nodes(&d.store, None)
                .map(Response::Nodes)
                .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string())),
            Request::Node(call) => d
                .node_call(&node, call)
                .map(Response::Value)
                .map_err(RpcError::from),
            Request::Join(_) => Err(RpcError::new(
                ErrorCode::BadRequest,
                "join is answered by the join handler",
            )),
        })
        .await
        .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string()))?
    }
}
