//! The typed calls a node makes to its manager over mutual TLS, each with
//! its reply type ([`vxnet_api::Call`]), so neither side names a method by
//! a string. Every call is about the calling node itself: the manager takes
//! the node's id from its verified certificate, never from the request.
//!
//! Who writes what: the manager's store is the only place of desired state
//! (nodes, networks, containers and their addresses). A worker keeps a copy
//! of what it must run, refreshed by [`Assignments`], a long poll that
//! returns as soon as the manager's store changes (swarmkit's dispatcher
//! `Assignments` stream does the same: the full set for the node, not
//! deltas to remember). A worker's requests that change desired state go
//! to the manager; the worker then realizes the answer and reports back
//! ([`ContainerRemoved`]).

use serde::{Deserialize, Serialize};
use vxnet_api::calls;

use crate::containers::CreateContainer;
use crate::model::{Container, DesiredState, Network, Node, Service, StoredGossipKey, TaskStatus};

pub use vxnet_api::ctl::EndpointRequest;

/// `container run` on a worker: the manager records the container for the
/// calling node and allocates its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreate(pub CreateContainer);

/// `container stop|start|rm` on a worker: the desired state of one of its
/// containers changes on the manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDesire {
    pub container_id: String,
    pub desired: DesiredState,
}

/// The calling node removed its container: the manager forgets it and
/// releases its addresses. Idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRemoved {
    pub container_id: String,
}

/// A worker's `network connect`: one more network for its container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConnect {
    pub container_id: String,
    pub endpoint: EndpointRequest,
}

/// A worker's `network disconnect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDisconnect {
    pub container_id: String,
    pub network_id: String,
}

/// What the calling node must run. Answered at once when the manager's
/// store is newer than `since`, else as soon as it changes, or after
/// `wait_ms` (at most [`MAX_ASSIGNMENT_WAIT_MS`]) with the same set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignments {
    pub since: u64,
    pub wait_ms: u64,
}

/// Longest an [`Assignments`] call is held.
pub const MAX_ASSIGNMENT_WAIT_MS: u64 = 10_000;

/// The calling node leaves the swarm (`swarm leave`): it is marked Down
/// ("left") and its containers are forgotten, releasing their addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLeave {}

/// What a node reports of its gossip keyring.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringReport {
    pub key_ids: Vec<u32>,
    pub primary: Option<u32>,
}

/// The manager's answer to a [`KeyringReport`]: the keyring to hold
/// (primary last), and when to ask again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysReply {
    pub keys: Vec<StoredGossipKey>,
    pub poll_after_secs: u64,
}

/// A container as the manager recorded it, with its networks (for the
/// worker's copy) and the manager's store generation after the write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerGrant {
    pub container: Container,
    pub networks: Vec<Network>,
    pub generation: u64,
}

/// The manager asks a node for a container's log (`service logs` of a
/// task on that node); the node answers with [`LogsReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRequest {
    pub id: u64,
    pub container_id: String,
    #[serde(default)]
    pub tail: Option<usize>,
}

/// A node's answer to a [`LogRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsReply {
    pub id: u64,
    pub text: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// A trace's remote half (`vxnet trace`): node `node` runs `wire`
/// through its dataplane's receive path and answers the stages. A worker
/// asks its manager, which runs it itself or asks that node through its
/// assignment watch ([`TraceRequest`], answered by [`TraceReply`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTrace {
    pub node: String,
    pub wire: vxnet_api::trace::TraceWire,
}

/// The manager asks a node to run a trace's remote half.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    pub id: u64,
    pub wire: vxnet_api::trace::TraceWire,
}

/// A node's answer to a [`TraceRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceReply {
    pub id: u64,
    #[serde(default)]
    pub report: Option<vxnet_api::trace::TraceReport>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A node reports how its containers are doing (their states as the
/// node sees them); the manager keeps them for `service ps` and
/// `container inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub statuses: Vec<(String, TaskStatus)>,
}

/// Everything a node must run, as of `generation` of the manager's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentSet {
    pub generation: u64,
    /// The calling node's record (its role, availability).
    pub node: Node,
    /// Its containers, in any desired state.
    pub containers: Vec<Container>,
    /// The networks they use, and the ingress network.
    pub networks: Vec<Network>,
    /// Every node of the swarm, for names in `network inspect` and later
    /// for services.
    pub nodes: Vec<Node>,
    /// The other containers on those networks (their names and addresses
    /// for DNS, tasks for service backends).
    #[serde(default)]
    pub peers: Vec<Container>,
    /// The services on those networks (VIPs, names, endpoint modes).
    #[serde(default)]
    pub services: Vec<Service>,
    /// Logs the manager wants from this node.
    #[serde(default)]
    pub log_requests: Vec<LogRequest>,
    /// Trace halves the manager wants this node's dataplane to run.
    #[serde(default)]
    pub trace_requests: Vec<TraceRequest>,
}

/// Every call a node makes to its manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", content = "args", rename_all = "snake_case")]
pub enum ManagerCall {
    ContainerCreate(ContainerCreate),
    ContainerDesire(ContainerDesire),
    ContainerRemoved(ContainerRemoved),
    NetworkConnect(NetworkConnect),
    NetworkDisconnect(NetworkDisconnect),
    Assignments(Assignments),
    NodeLeave(NodeLeave),
    GossipKeys(KeyringReport),
    StatusReport(StatusReport),
    LogsReply(LogsReply),
    NodeTrace(NodeTrace),
    TraceReply(TraceReply),
}

calls!(ManagerCall;
    ContainerCreate(ContainerCreate) -> ContainerGrant,
    ContainerDesire(ContainerDesire) -> ContainerGrant,
    ContainerRemoved(ContainerRemoved) -> u64,
    NetworkConnect(NetworkConnect) -> ContainerGrant,
    NetworkDisconnect(NetworkDisconnect) -> ContainerGrant,
    Assignments(Assignments) -> AssignmentSet,
    NodeLeave(NodeLeave) -> (),
    GossipKeys(KeyringReport) -> KeysReply,
    StatusReport(StatusReport) -> (),
    LogsReply(LogsReply) -> (),
    NodeTrace(NodeTrace) -> vxnet_api::trace::TraceReport,
    TraceReply(TraceReply) -> (),
);

impl ManagerCall {
    /// The call's name, for logs and refusals.
    pub fn name(&self) -> &'static str {
        match self {
            ManagerCall::ContainerCreate(_) => "container_create",
            ManagerCall::ContainerDesire(_) => "container_desire",
            ManagerCall::ContainerRemoved(_) => "container_removed",
            ManagerCall::NetworkConnect(_) => "network_connect",
            ManagerCall::NetworkDisconnect(_) => "network_disconnect",
            ManagerCall::Assignments(_) => "assignments",
            ManagerCall::NodeLeave(_) => "node_leave",
            ManagerCall::GossipKeys(_) => "gossip_keys",
            ManagerCall::StatusReport(_) => "status_report",
            ManagerCall::LogsReply(_) => "logs_reply",
            ManagerCall::NodeTrace(_) => "node_trace",
            ManagerCall::TraceReply(_) => "trace_reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_api::Call;

    #[test]
    fn calls_are_tagged_and_refuse_unknown_fields() {
        let c = Assignments {
            since: 3,
            wait_ms: 100,
        }
        .into_request();
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(
            s,
            r#"{"call":"assignments","args":{"since":3,"wait_ms":100}}"#
        );
        assert_eq!(serde_json::from_str::<ManagerCall>(&s).unwrap(), c);
        for bad in [
            r#"{"call":"assignments","args":{"since":3,"wait_ms":100,"node":"x"}}"#,
            r#"{"call":"container_removed","args":{"container":"x"}}"#,
            r#"{"call":"drop_tables","args":{}}"#,
        ] {
            assert!(serde_json::from_str::<ManagerCall>(bad).is_err(), "{bad}");
        }
    }
}
