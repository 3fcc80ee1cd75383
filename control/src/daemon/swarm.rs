//! Multi-host swarm glue between the daemon and the management plane
//! ([`crate::mgmt`]): what a node keeps of its mTLS identity, the seam
//! through which the (synchronous) daemon calls a manager, and the
//! manager's [`Handler`] over the daemon.
//!
//! Design (who writes what): the manager's store is the swarm's one place
//! of truth for nodes, networks and address allocations. A worker keeps in
//! its own store a copy of just what it runs: its node record, the cluster
//! settings, the networks its containers use and those containers. A
//! worker's `container run` asks the manager (mutual TLS,
//! [`METHOD_CONTAINER_CREATE`]) to allocate the container's addresses; the
//! manager answers with the container and its networks, which the worker
//! copies and programs. `container rm` releases them on the manager
//! ([`METHOD_CONTAINER_REMOVE`]); a worker's `network connect|disconnect`
//! go the same way ([`METHOD_NETWORK_CONNECT`],
//! [`METHOD_NETWORK_DISCONNECT`]). So a network appears on a worker when a
//! container there first needs it, and goes (record and dataplane VNI)
//! with its last container there. Endpoints and liveness travel by gossip
//! ([`super::gossip`]), never through the manager.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Daemon;
use super::dataplane::DataplaneApi;
use super::host::Host;
use super::keys::{KeyringReport, METHOD_GOSSIP_KEYS};
use crate::containers::{CreateContainer, NetworkRequest};
use crate::mgmt::{
    self, Access, ErrorCode, Handler, JoinParams, JoinRequest, JoinResponse, Joined, MgmtClient,
    NodeIdentity, Peer, Request, Response, RpcError,
};
use crate::model::{Container, Network};
use crate::store::{Record, Store};

/// Manager call: allocate a container for the calling node.
pub const METHOD_CONTAINER_CREATE: &str = "container_create";
/// Manager call: forget a container of the calling node, releasing its
/// addresses.
pub const METHOD_CONTAINER_REMOVE: &str = "container_remove";

/// Manager call: attach a container of the calling node to one more
/// network, allocating its addresses there.
pub const METHOD_NETWORK_CONNECT: &str = "network_connect";
/// Manager call: detach a container of the calling node from a network,
/// releasing its addresses there.
pub const METHOD_NETWORK_DISCONNECT: &str = "network_disconnect";

/// This node's management-plane state: its mTLS identity and, on a
/// worker, where its manager is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MgmtState {
    pub identity: NodeIdentity,
    /// The manager this node joined through (`None` on the manager).
    #[serde(default)]
    pub manager: Option<SocketAddr>,
}

impl MgmtState {
    pub const KEY: &'static str = "self";
}

impl std::fmt::Debug for MgmtState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtState")
            .field("identity", &self.identity)
            .field("manager", &self.manager)
            .finish()
    }
}

impl Record for MgmtState {
    const TABLE: &'static str = "daemon_mgmt";
    fn key(&self) -> String {
        Self::KEY.to_owned()
    }
}

/// What the manager answers to [`METHOD_CONTAINER_CREATE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteContainer {
    pub container: Container,
    /// The networks it is attached to, for the worker's copy.
    pub networks: Vec<Network>,
}

/// Parameters of [`METHOD_CONTAINER_REMOVE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveParams {
    pub container_id: String,
}

/// Parameters of [`METHOD_NETWORK_CONNECT`]; the answer is a
/// [`RemoteContainer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectParams {
    pub container_id: String,
    pub network: NetworkRequest,
}

/// Parameters of [`METHOD_NETWORK_DISCONNECT`]; the answer is the
/// [`Container`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectParams {
    pub container_id: String,
    pub network_id: String,
}

/// How the synchronous daemon reaches a manager. The real one runs the
/// async [`mgmt`] client on a tokio runtime; tests may fake it.
pub trait ManagerLink: Send + Sync {
    fn join(&self, manager: SocketAddr, token: &str, params: &JoinParams)
    -> Result<Joined, String>;
    fn call(
        &self,
        manager: SocketAddr,
        identity: &NodeIdentity,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, String>;
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
    fn join(
        &self,
        manager: SocketAddr,
        token: &str,
        params: &JoinParams,
    ) -> Result<Joined, String> {
        self.rt
            .block_on(mgmt::join(manager, token, params))
            .map_err(|e| e.to_string())
    }

    fn call(
        &self,
        manager: SocketAddr,
        identity: &NodeIdentity,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.rt
            .block_on(async {
                let mut c = MgmtClient::connect(manager, identity).await?;
                c.call(method, params).await
            })
            .map_err(|e| e.to_string())
    }
}

/// The manager's side of the management port, over the daemon.
pub struct DaemonHandler<S, D, H>(pub Arc<Daemon<S, D, H>>);

fn bad(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorCode::BadRequest, e.to_string())
}

impl<S, D, H> Handler for DaemonHandler<S, D, H>
where
    S: Store + Send + 'static,
    D: DataplaneApi + 'static,
    H: Host + Send + 'static,
{
    async fn join(&self, req: JoinRequest, from: SocketAddr) -> Result<JoinResponse, RpcError> {
        let d = Arc::clone(&self.0);
        // The daemon's lock is a blocking one; keep it off the async workers.
        tokio::task::spawn_blocking(move || d.admit(&req, from))
            .await
            .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string()))?
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Response, RpcError> {
        let d = Arc::clone(&self.0);
        let peer = peer.clone();
        tokio::task::spawn_blocking(move || match req {
            Request::NodeList => d.nodes().map(Response::Nodes).map_err(bad),
            Request::Call { method, params } => match method.as_str() {
                METHOD_CONTAINER_CREATE => {
                    let mut c: CreateContainer = serde_json::from_value(params).map_err(bad)?;
                    // A node creates containers on itself only.
                    c.node = peer.node_id.clone();
                    let r = d.create_for_node(&c).map_err(bad)?;
                    serde_json::to_value(r).map(Response::Value).map_err(bad)
                }
                METHOD_GOSSIP_KEYS => {
                    let r: KeyringReport = serde_json::from_value(params).map_err(bad)?;
                    let reply = d.gossip_keys_for(&peer.node_id, r).map_err(bad)?;
                    serde_json::to_value(reply)
                        .map(Response::Value)
                        .map_err(bad)
                }
                METHOD_CONTAINER_REMOVE => {
                    let p: RemoveParams = serde_json::from_value(params).map_err(bad)?;
                    d.remove_for_node(&peer.node_id, &p.container_id)
                        .map_err(bad)?;
                    Ok(Response::Value(serde_json::Value::Null))
                }
                METHOD_NETWORK_CONNECT => {
                    let p: ConnectParams = serde_json::from_value(params).map_err(bad)?;
                    let r = d.connect_for_node(&peer.node_id, &p).map_err(bad)?;
                    serde_json::to_value(r).map(Response::Value).map_err(bad)
                }
                METHOD_NETWORK_DISCONNECT => {
                    let p: DisconnectParams = serde_json::from_value(params).map_err(bad)?;
                    let c = d.disconnect_for_node(&peer.node_id, &p).map_err(bad)?;
                    serde_json::to_value(c).map(Response::Value).map_err(bad)
                }
                other => Err(RpcError::new(
                    ErrorCode::Unsupported,
                    format!("unknown management call {other}"),
                )),
            },
            Request::Join(_) => Err(RpcError::new(
                ErrorCode::BadRequest,
                "join is answered by the join handler",
            )),
        })
        .await
        .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string()))?
    }

    fn call_access(&self, method: &str) -> Access {
        match method {
            METHOD_CONTAINER_CREATE
            | METHOD_CONTAINER_REMOVE
            | METHOD_NETWORK_CONNECT
            | METHOD_NETWORK_DISCONNECT
            | METHOD_GOSSIP_KEYS => Access::Node,
            _ => Access::Manager,
        }
    }
}
