//! A worker's side of the swarm: how it reaches its manager
//! ([`ManagerLink`]), and its agent.
//!
//! The manager's store is the only place of desired state; a worker keeps
//! in its own store a copy of just what it runs: its node record, the
//! networks its containers use and those containers (swarmkit's agent
//! does the same with its dispatcher's assignments). Two threads keep that
//! copy and the manager in step:
//!
//! - the watch: a long poll ([`calls::Assignments`]) that returns as soon
//!   as the manager's store changes; the answer replaces the copy in one
//!   transaction. An answer older than what the worker already has (a
//!   write of its own overtook it) is ignored.
//! - the reporter: containers this node has removed ([`Runtime::removed`])
//!   are reported ([`calls::ContainerRemoved`]) until the manager has
//!   forgotten them, so an address is released only once nothing here uses
//!   it, and nothing is lost when the manager is down meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vxnet_api::{ApiError, ApiResult, Call};

use super::dataplane::DataplaneApi;
use super::runtime::{LocalNode, Runtime};
use super::swarm_state::MgmtState;
use super::{Daemon, internal};
use crate::mgmt::calls::{self, AssignmentSet, ContainerGrant, ManagerCall};
use crate::mgmt::{self, JoinParams, Joined, MgmtClient, NodeIdentity};
use crate::model::{Container, Network, Node, Service};
use crate::store::{Record, Store, StoreExt, Txn};

/// How the (synchronous) daemon reaches a manager. The real one runs the
/// async [`mgmt`] client on a tokio runtime; tests fake it.
pub trait ManagerLink: Send + Sync {
    fn join(&self, manager: SocketAddr, token: &str, params: &JoinParams) -> ApiResult<Joined>;
    /// One call; the reply as JSON, decoded by [`Daemon::manager_call`].
    fn call(
        &self,
        manager: SocketAddr,
        identity: &NodeIdentity,
        call: ManagerCall,
    ) -> ApiResult<serde_json::Value>;
}

/// [`ManagerLink`] over the mgmt client, blocking on a tokio runtime.
/// Must not be called from inside that runtime's tasks.
pub struct TokioLink {
    rt: tokio::runtime::Handle,
}

impl TokioLink {
    pub fn new(rt: tokio::runtime::Handle) -> Self {
        Self { rt }
    }
}

impl ManagerLink for TokioLink {
    fn join(&self, manager: SocketAddr, token: &str, params: &JoinParams) -> ApiResult<Joined> {
        self.rt
            .block_on(mgmt::join(manager, token, params))
            .map_err(ApiError::from)
    }

    fn call(
        &self,
        manager: SocketAddr,
        identity: &NodeIdentity,
        call: ManagerCall,
    ) -> ApiResult<serde_json::Value> {
        self.rt
            .block_on(async {
                let mut c = MgmtClient::connect(manager, identity).await?;
                c.call(RawCall(call)).await
            })
            .map_err(ApiError::from)
    }
}

/// A [`ManagerCall`] whose reply is left as JSON (the link's callers
/// decode it as the call's own reply type).
struct RawCall(ManagerCall);

impl Call for RawCall {
    type Request = ManagerCall;
    type Reply = serde_json::Value;
    fn into_request(self) -> ManagerCall {
        self.0
    }
}

/// What a worker's agent keeps: the manager's store generation its copy
/// is from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub generation: u64,
}

impl AgentState {
    pub const KEY: &'static str = "agent";
}

impl Record for AgentState {
    const TABLE: &'static str = "daemon_agent";
    fn key(&self) -> String {
        Self::KEY.to_owned()
    }
}

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    /// This worker's manager and identity; an error on a manager or
    /// outside a swarm.
    fn manager_target(&self) -> ApiResult<(SocketAddr, NodeIdentity)> {
        let st = self
            .store
            .get::<MgmtState>(MgmtState::KEY)
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::precondition("this node has no management identity; rejoin the swarm")
            })?;
        let manager = st
            .manager
            .ok_or_else(|| ApiError::internal("this node does not know its manager"))?;
        Ok((manager, st.identity))
    }

    /// A call to this worker's manager, made holding no lock.
    pub(crate) fn manager_call<C: Call<Request = ManagerCall>>(&self, c: C) -> ApiResult<C::Reply> {
        let (manager, identity) = self.manager_target()?;
        let v = self.link.call(manager, &identity, c.into_request())?;
        serde_json::from_value(v).map_err(|e| {
            ApiError::internal(format!(
                "the manager's answer is not understood ({e}); are both on the same version?"
            ))
        })
    }

    /// Keeps what the manager granted: the container and its networks,
    /// unless the copy is already newer.
    pub(crate) fn keep_grant(&self, g: &ContainerGrant) -> ApiResult<u64> {
        let _w = self.write();
        let mut txn = Txn::new();
        for n in &g.networks {
            txn.put(n).map_err(internal)?;
        }
        txn.put(&g.container).map_err(internal)?;
        let agent = self.agent_state();
        txn.put(&AgentState {
            generation: agent.generation.max(g.generation),
        })
        .map_err(internal)?;
        self.store.apply(&txn).map_err(internal)?;
        Ok(self.changes.generation())
    }

    pub(crate) fn agent_state(&self) -> AgentState {
        self.store
            .get::<AgentState>(AgentState::KEY)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Replaces the copy with `set`, unless the copy is newer. A container
    /// this node decided about without its manager keeps that decision.
    pub(crate) fn apply_assignments(&self, set: &AssignmentSet) -> ApiResult<bool> {
        let _w = self.write();
        if set.generation < self.agent_state().generation {
            return Ok(false);
        }
        let me = self.local_node()?;
        if set.node.id != me {
            return Err(ApiError::internal(format!(
                "the manager sent the assignments of node {} to node {me}",
                set.node.id
            )));
        }
        let mut txn = Txn::new();
        let (held, peers): (Vec<Container>, Vec<Container>) = self
            .store
            .list::<Container>()
            .map_err(internal)?
            .into_iter()
            .partition(|c| c.node == me);
        let runtimes: Vec<Runtime> = self.store.list::<Runtime>().map_err(internal)?;
        let overridden = |id: &str| {
            runtimes
                .iter()
                .any(|r| r.container_id == id && (r.desired_override.is_some() || r.removed))
        };
        for c in &held {
            if !set.containers.iter().any(|x| x.id == c.id) && !overridden(&c.id) {
                // Gone on the manager: removing it here is the
                // reconciler's job, which needs the record to know what
                // to remove. Mark it.
                let mut gone = c.clone();
                gone.desired = crate::model::DesiredState::Removed;
                if gone != *c {
                    txn.put(&gone).map_err(internal)?;
                }
            }
        }
        for c in &set.containers {
            if overridden(&c.id) {
                continue;
            }
            if held.iter().find(|h| h.id == c.id) != Some(c) {
                txn.put(c).map_err(internal)?;
            }
        }
        // Other nodes' containers on our networks, and the services there:
        // a copy for names (DNS) and backends (VIPs), replaced wholesale.
        for c in &set.peers {
            if c.node != me && peers.iter().find(|h| h.id == c.id) != Some(c) {
                txn.put(c).map_err(internal)?;
            }
        }
        for c in &peers {
            if !set.peers.iter().any(|x| x.id == c.id) {
                txn.delete::<Container>(&c.id);
            }
        }
        let services: Vec<Service> = self.store.list::<Service>().map_err(internal)?;
        for s in &set.services {
            if services.iter().find(|h| h.id == s.id) != Some(s) {
                txn.put(s).map_err(internal)?;
            }
        }
        for s in &services {
            if !set.services.iter().any(|x| x.id == s.id) {
                txn.delete::<Service>(&s.id);
            }
        }
        let nets: Vec<Network> = self.store.list::<Network>().map_err(internal)?;
        for n in &set.networks {
            if nets.iter().find(|h| h.id == n.id) != Some(n) {
                txn.put(n).map_err(internal)?;
            }
        }
        let used = |id: &str| {
            held.iter().any(|c| c.attachment(id).is_some())
                || set.containers.iter().any(|c| c.attachment(id).is_some())
        };
        for n in &nets {
            if !set.networks.iter().any(|x| x.id == n.id) && !used(&n.id) {
                txn.delete::<Network>(&n.id);
            }
        }
        let nodes: Vec<Node> = self.store.list::<Node>().map_err(internal)?;
        for n in &set.nodes {
            if nodes.iter().find(|h| h.id == n.id) != Some(n) {
                txn.put(n).map_err(internal)?;
            }
        }
        for n in &nodes {
            if !set.nodes.iter().any(|x| x.id == n.id) {
                txn.delete::<Node>(&n.id);
            }
        }
        if self.agent_state().generation != set.generation {
            txn.put(&AgentState {
                generation: set.generation,
            })
            .map_err(internal)?;
        }
        let changed = !txn.is_empty();
        if changed {
            self.store.apply(&txn).map_err(internal)?;
        }
        Ok(changed)
    }

    /// Answers the manager's log requests (from its assignment set).
    pub(crate) fn answer_log_requests(&self, reqs: &[calls::LogRequest]) {
        for r in reqs {
            let reply = match self.container_logs(vxnet_api::ctl::ContainerLogs {
                container: r.container_id.clone(),
                tail: r.tail,
            }) {
                Ok(l) => calls::LogsReply {
                    id: r.id,
                    text: l.text,
                    error: None,
                },
                Err(e) => calls::LogsReply {
                    id: r.id,
                    text: String::new(),
                    error: Some(e.message),
                },
            };
            if let Err(e) = self.manager_call(reply) {
                tracing::warn!(error = %e, "log not sent to the manager");
            }
        }
    }

    /// Tells the manager how this node's containers are, where its copy
    /// differs.
    pub(crate) fn report_statuses(&self) -> ApiResult<()> {
        let me = self.local_node()?;
        let mine: Vec<Container> = crate::containers::list_containers(&self.store, Some(&me))?;
        let statuses: Vec<(String, crate::model::TaskStatus)> = mine
            .iter()
            .filter_map(|c| {
                let rt = self.store.get::<Runtime>(&c.id).ok().flatten()?;
                let st = rt.status?;
                (c.status.as_ref() != Some(&st)).then(|| (c.id.clone(), st))
            })
            .collect();
        if statuses.is_empty() {
            return Ok(());
        }
        self.manager_call(calls::StatusReport { statuses })
    }

    /// Tells the manager about containers this node removed, and forgets
    /// those it acknowledged.
    pub(crate) fn report_removed(&self) -> ApiResult<()> {
        let done: Vec<Runtime> = self
            .store
            .list::<Runtime>()
            .map_err(internal)?
            .into_iter()
            .filter(|r| r.removed)
            .collect();
        for rt in done {
            let id = rt.container_id.clone();
            self.manager_call(calls::ContainerRemoved {
                container_id: id.clone(),
            })?;
            let _w = self.write();
            let mut txn = Txn::new();
            txn.delete::<Runtime>(&id);
            txn.delete::<Container>(&id);
            self.store.apply(&txn).map_err(internal)?;
            tracing::info!(container = %id, "manager told of the removal");
        }
        Ok(())
    }

    fn is_worker(&self) -> bool {
        self.store
            .get::<LocalNode>(LocalNode::KEY)
            .ok()
            .flatten()
            .is_some()
            && !self.is_manager()
    }
}

/// The worker's agent threads; they end when `stop` is set (and the
/// watch's current poll returns).
pub struct Agent {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Agent {
    pub fn spawn<S, D>(d: Arc<Daemon<S, D>>) -> std::io::Result<Agent>
    where
        S: Store + Send + Sync + 'static,
        D: DataplaneApi + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (d1, s1) = (Arc::clone(&d), Arc::clone(&stop));
        threads.push(
            std::thread::Builder::new()
                .name("vxnet-agent-watch".into())
                .spawn(move || watch(&d1, &s1))?,
        );
        let (d2, s2) = (d, Arc::clone(&stop));
        threads.push(
            std::thread::Builder::new()
                .name("vxnet-agent-report".into())
                .spawn(move || report(&d2, &s2))?,
        );
        Ok(Agent { stop, threads })
    }

    /// Stops both threads and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Long poll per round; short so that stopping is quick.
const WATCH_WAIT: Duration = Duration::from_secs(2);
/// Pause after a failed call, so a down manager is not hammered.
const RETRY: Duration = Duration::from_millis(500);

fn watch<S, D>(d: &Daemon<S, D>, stop: &AtomicBool)
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        if !d.is_worker() {
            std::thread::sleep(RETRY);
            continue;
        }
        let since = d.agent_state().generation;
        let r = d
            .manager_call(calls::Assignments {
                since,
                wait_ms: WATCH_WAIT.as_millis() as u64,
            })
            .and_then(|set| {
                d.apply_assignments(&set)?;
                d.answer_log_requests(&set.log_requests);
                d.answer_trace_requests(&set.trace_requests);
                Ok(())
            });
        match r {
            Ok(_) => {
                if !last_error.is_empty() {
                    tracing::info!("assignments from the manager again");
                    last_error.clear();
                }
            }
            Err(e) => {
                if e.message != last_error {
                    tracing::warn!(error = %e, "cannot get assignments from the manager");
                    last_error = e.message;
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

fn report<S, D>(d: &Daemon<S, D>, stop: &AtomicBool)
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    let mut seq = d.changes.sequence();
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        if d.is_worker() {
            match d.report_removed().and_then(|()| d.report_statuses()) {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    if e.message != last_error {
                        tracing::warn!(error = %e, "cannot report removed containers to the manager");
                        last_error = e.message;
                    }
                }
            }
        }
        seq = d.changes.wait_change(seq, Duration::from_secs(1));
    }
}
