//! A manager's duties beyond the local API: answering nodes on the
//! management port ([`ManagerHandler`]: joins and the typed
//! [`ManagerCall`]s, the assignment watch among them), and tending the
//! swarm ([`Daemon::tend_swarm`]): node status from gossip, and the
//! gossip key rotation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use vxnet_api::{ApiError, ApiResult};

use super::dataplane::DataplaneApi;
use super::{Daemon, internal, now};
use crate::cluster;
use crate::containers;
use crate::mgmt::calls::{AssignmentSet, ContainerGrant, MAX_ASSIGNMENT_WAIT_MS, ManagerCall};
use crate::mgmt::{
    self, CaPem, ErrorCode, Handler, JoinRequest, JoinResponse, Peer, Request, Response, RpcError,
    SwarmCa,
};
use crate::model::{Container, Network, Node, NodeStatus};
use crate::store::{Store, StoreExt};

/// A node that joined less than this long ago and gossip has not seen yet
/// is still Ready (gossip needs a moment to hear of it); one gossip saw is
/// Down as soon as gossip drops it.
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

    /// What `node` must run.
    fn assignments(&self, node: &str) -> ApiResult<AssignmentSet> {
        let generation = self.changes.generation();
        let me = self
            .store
            .get::<Node>(node)
            .map_err(internal)?
            .ok_or_else(|| ApiError::denied(format!("node {node} is not part of this swarm")))?;
        let containers = containers::list_containers(&self.store, Some(node))?;
        let networks = self
            .store
            .list::<Network>()
            .map_err(internal)?
            .into_iter()
            .filter(|n| n.ingress || containers.iter().any(|c| c.attachment(&n.id).is_some()))
            .collect();
        Ok(AssignmentSet {
            generation,
            node: me,
            containers,
            networks,
            nodes: self.store.list::<Node>().map_err(internal)?,
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
        if view.own.is_none() {
            // No gossip yet: nothing to tell Ready from Down by.
            return;
        }
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
                && now() < n.created + JOIN_GRACE_SECS;
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
