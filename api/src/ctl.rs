//! The control daemon's local API: what `vxnet swarm|node|network|container`
//! sends over the daemon's Unix socket (`/run/vxnet/control.sock`), one
//! JSON object per line, and the views it gets back in the
//! [`Response`](crate::Response) envelope.
//!
//! ```text
//! -> {"op":"network_create","name":"test-net","attachable":true}
//! <- {"ok":true,"result":{"id":"...","name":"test-net",...}}
//! <- {"ok":false,"error":{"code":"already_exists","message":"network test-net exists already"}}
//! ```
//!
//! Like the dataplane's API, each request is a struct naming its reply
//! type, unknown fields are refused, and errors carry an
//! [`ErrorCode`](crate::ErrorCode).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use vxnet_proto::wire::MacAddr;

use crate::calls;
use crate::model::{
    Availability, DesiredState, Driver, EndpointMode, Network, Node, NodeStatus, PortProtocol,
    PublishMode, RestartCondition, Role, Service, ServiceMode, TaskState,
};

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/vxnet/control.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vxnet/control";
/// TCP port of the management plane, printed in join commands.
pub const MANAGEMENT_PORT: u16 = 2377;

/// `swarm init`: makes this node the manager of a new swarm.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmInit {
    /// Address for management and gossip; must be on an interface of this
    /// host, of the dataplane's VTEP family.
    #[serde(default)]
    pub advertise_addr: Option<IpAddr>,
    /// Address for VXLAN traffic; same checks.
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
    /// VXLAN UDP port of the whole swarm (1024-49151, Docker's range).
    #[serde(default)]
    pub data_path_port: Option<u16>,
}

/// `swarm join`: joins through a manager over mutual TLS.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmJoin {
    /// `SWMTKN-1-<CA digest>-<secret>`; a secret, never logged.
    pub token: String,
    /// The manager, `IP[:PORT]` (port 2377 by default).
    pub remote: String,
    #[serde(default)]
    pub advertise_addr: Option<IpAddr>,
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
}

impl std::fmt::Debug for SwarmJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("SwarmJoin")
            .field("remote", &self.remote)
            .field("advertise_addr", &self.advertise_addr)
            .field("data_path_addr", &self.data_path_addr)
            .finish_non_exhaustive()
    }
}

/// `swarm join-token [--rotate] ROLE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub role: Role,
    #[serde(default)]
    pub rotate: bool,
}

/// `swarm leave [--force]`: refused while containers run here (naming
/// them) and, on the last manager, unless forced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmLeave {
    #[serde(default)]
    pub force: bool,
}

/// `node ls [--filter role=...]` (managers only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLs {
    #[serde(default)]
    pub role: Option<Role>,
}

/// `node inspect NODE`: id, hostname or unique id prefix; a hostname that
/// several nodes share is refused, listing their ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInspect {
    pub node: String,
}

/// `node rm`: refused for this node and, without `force`, for a node that
/// is not Down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRm {
    pub node: String,
    #[serde(default)]
    pub force: bool,
}

/// `node update --availability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    pub node: String,
    pub availability: Availability,
}

/// This node's gossip driver: keyring and packet counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipStatusQuery {}

/// `network create` (managers only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    pub name: String,
    /// `-d`; overlay is the only one.
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub ingress: bool,
    /// No egress to the outside and no published ports (`--internal`).
    #[serde(default)]
    pub internal: bool,
    /// `--opt k=v` (`--opt encrypted` arrives with an empty value).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `--subnet`: at most one IPv4 and one IPv6.
    #[serde(default)]
    pub subnets: Vec<IpNet>,
    /// `--gateway`: each inside one of `subnets`.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// `--ip-range`: each inside one of `subnets`.
    #[serde(default)]
    pub ip_ranges: Vec<IpNet>,
}

/// `network ls --filter`: `name` matches a substring of the name (as
/// Docker's filter does), `id` a prefix of the id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFilter {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub driver: Option<Driver>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkLs {
    #[serde(default)]
    pub filter: NetworkFilter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInspect {
    pub network: String,
}

/// `network rm`: refused while endpoints are attached (Docker's rule).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRm {
    pub network: String,
}

/// One `--network NET [--ip IP] [--ip6 IP] [--mac MAC] [--network-alias A]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// Network name, id or unique id prefix.
    pub network: String,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// The endpoint's MAC (needed for a sidecar veth, whose container side
    /// has its own); derived from the IPv4 address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Other names for the container on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

pub use crate::model::External;

/// `network connect`: a container joins one more network; with
/// `external`, `container` names a container of another runtime, recorded
/// here (Docker's `network connect` of an external container).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConnect {
    pub container: String,
    pub endpoint: EndpointRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDisconnect {
    pub container: String,
    pub network: String,
}

/// `container run` / `container create`: the namespace, attached. With a
/// `command`, the daemon starts it and answers once it runs (an exec
/// failure refuses the request and removes the container); without one,
/// the CLI runs its command itself and reports it with
/// [`ContainerStarted`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreate {
    pub name: String,
    pub networks: Vec<EndpointRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `--env K=V`, for the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// The CLI started a container's (foreground) command with this pid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStarted {
    pub container: String,
    pub pid: u32,
}

/// `container ls [-a]`: this node's containers (`-a`: stopped ones too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerLs {
    #[serde(default)]
    pub all: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInspect {
    pub container: String,
}

/// `container rm [-f]`: a running container needs `force`. On a manager
/// it may name a container of another node: that node removes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRm {
    pub container: String,
    #[serde(default)]
    pub force: bool,
}

/// `container stop [-t SECONDS]`: SIGTERM, then SIGKILL after the grace
/// period (Docker's default 10 s); its endpoints leave the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStop {
    pub container: String,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `container start`: a stopped container's endpoints come back and its
/// command runs again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStart {
    pub container: String,
}

/// `container logs [--tail N]`: the output of a detached command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerLogs {
    pub container: String,
    /// Only the last lines.
    #[serde(default)]
    pub tail: Option<usize>,
}

/// One `--network NET [--network-alias A]...` of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetworkRequest {
    /// Network name, id or unique id prefix.
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// One `--publish published=P,target=T,protocol=tcp|udp,mode=ingress|host`
/// (or `-p P:T[/udp]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRequest {
    #[serde(default)]
    pub protocol: PortProtocol,
    pub target_port: u16,
    /// Allocated from 30000-32767 when absent (ingress mode only).
    #[serde(default)]
    pub published_port: Option<u16>,
    #[serde(default)]
    pub publish_mode: PublishMode,
}

/// `service create` (managers only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCreate {
    pub name: String,
    pub mode: ServiceMode,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Swarm-scoped overlay networks (not the ingress network).
    #[serde(default)]
    pub networks: Vec<ServiceNetworkRequest>,
    /// What every task runs.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub restart: RestartCondition,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortRequest>,
}

/// `service ls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLs {}

/// `service inspect SERVICE`: id, name or unique id prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInspect {
    pub service: String,
}

/// `service ps SERVICE`: its tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePs {
    pub service: String,
}

/// `service scale SERVICE=N` (replicated services only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceScale {
    pub service: String,
    pub replicas: u64,
}

/// `service update`: only what is given changes. A change of the task
/// template (command, env, restart condition) replaces the tasks; a
/// change of replicas, networks or published ports keeps the running ones,
/// unless the routing mesh is newly used or no longer used (the tasks are
/// replaced to join or leave the ingress network, which must be their
/// first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    pub service: String,
    #[serde(default)]
    pub replicas: Option<u64>,
    #[serde(default)]
    pub network_add: Vec<ServiceNetworkRequest>,
    #[serde(default)]
    pub network_rm: Vec<String>,
    #[serde(default)]
    pub env_add: Vec<String>,
    /// Variable names to remove.
    #[serde(default)]
    pub env_rm: Vec<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub restart: Option<RestartCondition>,
    /// `--publish-add`.
    #[serde(default)]
    pub publish_add: Vec<PortRequest>,
    /// `--publish-rm`: ports to unpublish, matched by target port and
    /// protocol, and by published port when it is given.
    #[serde(default)]
    pub publish_rm: Vec<PortRequest>,
}

/// `service rm`: its tasks are removed, then its VIPs released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRm {
    pub service: String,
}

/// `service logs`: the output of the service's tasks, from whichever node
/// runs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLogs {
    pub service: String,
    #[serde(default)]
    pub tail: Option<usize>,
}

/// Compare the dataplane and the host with the desired state now and fix
/// the difference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CtlRequest {
    SwarmInit(SwarmInit),
    SwarmJoin(SwarmJoin),
    JoinToken(JoinToken),
    SwarmLeave(SwarmLeave),
    NodeLs(NodeLs),
    NodeInspect(NodeInspect),
    NodeRm(NodeRm),
    NodeUpdate(NodeUpdate),
    GossipStatus(GossipStatusQuery),
    NetworkCreate(NetworkCreate),
    NetworkLs(NetworkLs),
    NetworkInspect(NetworkInspect),
    NetworkRm(NetworkRm),
    NetworkConnect(NetworkConnect),
    NetworkDisconnect(NetworkDisconnect),
    ContainerCreate(ContainerCreate),
    ContainerStarted(ContainerStarted),
    ContainerLs(ContainerLs),
    ContainerInspect(ContainerInspect),
    ContainerRm(ContainerRm),
    ContainerStop(ContainerStop),
    ContainerStart(ContainerStart),
    ContainerLogs(ContainerLogs),
    ServiceCreate(ServiceCreate),
    ServiceLs(ServiceLs),
    ServiceInspect(ServiceInspect),
    ServicePs(ServicePs),
    ServiceScale(ServiceScale),
    ServiceUpdate(ServiceUpdate),
    ServiceRm(ServiceRm),
    ServiceLogs(ServiceLogs),
    Reconcile(Reconcile),
    Trace(crate::trace::SwarmTrace),
}

calls!(CtlRequest;
    SwarmInit(SwarmInit) -> InitView,
    SwarmJoin(SwarmJoin) -> JoinView,
    JoinToken(JoinToken) -> JoinTokenView,
    SwarmLeave(SwarmLeave) -> LeaveView,
    NodeLs(NodeLs) -> Vec<NodeView>,
    NodeInspect(NodeInspect) -> NodeView,
    NodeRm(NodeRm) -> Node,
    NodeUpdate(NodeUpdate) -> Node,
    GossipStatus(GossipStatusQuery) -> GossipStatus,
    NetworkCreate(NetworkCreate) -> Network,
    NetworkLs(NetworkLs) -> Vec<Network>,
    NetworkInspect(NetworkInspect) -> NetworkInspectView,
    NetworkRm(NetworkRm) -> Network,
    NetworkConnect(NetworkConnect) -> ContainerView,
    NetworkDisconnect(NetworkDisconnect) -> ContainerView,
    ContainerCreate(ContainerCreate) -> ContainerView,
    ContainerStarted(ContainerStarted) -> ContainerView,
    ContainerLs(ContainerLs) -> Vec<ContainerView>,
    ContainerInspect(ContainerInspect) -> ContainerView,
    ContainerRm(ContainerRm) -> ContainerView,
    ContainerStop(ContainerStop) -> ContainerView,
    ContainerStart(ContainerStart) -> ContainerView,
    ContainerLogs(ContainerLogs) -> LogsView,
    ServiceCreate(ServiceCreate) -> ServiceView,
    ServiceLs(ServiceLs) -> Vec<ServiceView>,
    ServiceInspect(ServiceInspect) -> ServiceView,
    ServicePs(ServicePs) -> Vec<TaskView>,
    ServiceScale(ServiceScale) -> ServiceView,
    ServiceUpdate(ServiceUpdate) -> ServiceView,
    ServiceRm(ServiceRm) -> ServiceView,
    ServiceLogs(ServiceLogs) -> Vec<TaskLogs>,
    Reconcile(Reconcile) -> ReconcileReport,
    Trace(crate::trace::SwarmTrace) -> crate::trace::TraceReport,
);

/// A service's VIP on one network, with the network's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualIpView {
    pub network_id: String,
    pub network: String,
    /// `ADDR/PLEN`, as Docker's `Endpoint.VirtualIPs` shows it.
    pub addr: String,
    #[serde(default)]
    pub addr6: Option<String>,
}

/// `service ls|inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceView {
    pub service: Service,
    pub virtual_ips: Vec<VirtualIpView>,
    /// Network names, in the service's order.
    pub network_names: Vec<String>,
    /// Tasks whose node reports them running.
    pub running: u64,
    /// Tasks the service wants.
    pub desired: u64,
    /// Why the scheduler could not create a task the service wants (e.g.
    /// its network has no free address), while that lasts.
    #[serde(default)]
    pub schedule_error: Option<String>,
}

/// One task in `service ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskView {
    pub id: String,
    /// `SERVICE.SLOT` (replicated) or `SERVICE.NODE` (global), as Docker
    /// shows it.
    pub name: String,
    /// The task's container name (`SERVICE.SLOT.ID`).
    pub container: String,
    pub node: String,
    pub desired: DesiredState,
    pub state: TaskState,
    pub since: u64,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    pub restarts: u32,
    /// The task's IPv4 address on each of its networks.
    pub addresses: Vec<(String, Ipv4Addr)>,
}

/// One task's output in `service logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLogs {
    pub task: String,
    pub node: String,
    pub text: String,
    /// Why the log could not be read (its node did not answer).
    #[serde(default)]
    pub error: Option<String>,
}

/// What `swarm init` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitView {
    pub node_id: String,
    pub cluster_id: String,
    pub manager_addr: SocketAddr,
    pub worker_token: String,
    pub manager_token: String,
    pub ingress_network: String,
}

/// What `swarm join` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinView {
    pub node_id: String,
    pub role: Role,
}

/// What `swarm leave` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveView {
    /// Containers removed because of `--force`, by name.
    pub removed_containers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenView {
    pub role: Role,
    pub token: String,
    pub manager_addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    pub node: Node,
    /// This is the node the daemon runs on.
    pub is_self: bool,
}

impl NodeView {
    pub fn is_ready(&self) -> bool {
        self.node.status == NodeStatus::Ready
    }
}

/// One network of a container, with the names the CLI shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentView {
    pub network_id: String,
    pub network: String,
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub prefix: u8,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: MacAddr,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Namespace made and attached; no command yet.
    Created,
    Running,
    /// Its command ended (see `exit_code`).
    Exited,
    /// Stopped by `container stop`: no endpoints, addresses kept.
    Stopped,
    /// Another runtime's container, attached by vxnet.
    External,
    /// Asked to go (from a manager); its node is removing it.
    Removing,
    /// Runs on another node; this node only knows its record.
    Remote,
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Stopped => "stopped",
            ContainerState::External => "external",
            ContainerState::Removing => "removing",
            ContainerState::Remote => "remote",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub node: String,
    /// Network namespace name (under /run/netns) or path.
    pub netns: String,
    pub pid: Option<u32>,
    pub state: ContainerState,
    /// The command's exit status, once it ended.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The command (detached runs).
    #[serde(default)]
    pub command: Vec<String>,
    /// The host side of an external container's veth (sidecar attach).
    #[serde(default)]
    pub veth: Option<String>,
    /// Where a detached command's output goes.
    pub log_path: String,
    pub created: u64,
    pub networks: Vec<AttachmentView>,
}

impl ContainerView {
    /// Its state as `container ls` shows it: `exited (CODE)` once its
    /// command ended with a known status, else the state's name.
    pub fn status(&self) -> String {
        match (self.state, self.exit_code) {
            (ContainerState::Exited, Some(code)) => format!("exited ({code})"),
            (state, _) => state.to_string(),
        }
    }

    /// Why nothing can run in it or be traced from it, unless it is
    /// running (or another runtime's, attached here). Callers say
    /// [`ContainerState::Remote`] in their own words first.
    pub fn not_running(&self) -> Option<String> {
        match self.state {
            ContainerState::Running | ContainerState::External => None,
            _ => Some(format!(
                "container {} is not running ({}); start it with `vxnet container start {}`",
                self.name,
                self.status(),
                self.name
            )),
        }
    }
}

/// `container logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsView {
    pub text: String,
    /// The log was longer than what is returned.
    pub truncated: bool,
}

/// One container endpoint in `network inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointView {
    pub container_id: String,
    pub name: String,
    pub node: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: MacAddr,
}

/// One host that has endpoints on the network (Docker's `Peers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerView {
    /// Node id, when this node knows it (managers; a worker knows hosts
    /// from gossip by address).
    pub node: String,
    pub hostname: String,
    pub data_path_addr: IpAddr,
}

/// `network inspect`: the network with its endpoints and the hosts they
/// are on; the CLI shows the endpoints of its own host as `Containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInspectView {
    pub network: Network,
    pub containers: Vec<EndpointView>,
    pub peers: Vec<PeerView>,
    /// This daemon's node id.
    pub self_node: Option<String>,
}

/// What one reconciliation pass changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileReport {
    pub networks_added: usize,
    pub networks_removed: usize,
    pub attached: usize,
    pub detached: usize,
    pub peers_added: usize,
    pub peers_removed: usize,
    pub vteps_added: usize,
    pub vteps_removed: usize,
    /// Service VIPs created or given new backends.
    #[serde(default)]
    pub services_set: usize,
    #[serde(default)]
    pub services_removed: usize,
    /// Published ports set up or changed here, and removed.
    #[serde(default)]
    pub ports_set: usize,
    #[serde(default)]
    pub ports_removed: usize,
    /// The host link set up (or replaced) or removed.
    #[serde(default)]
    pub host_link_changes: usize,
    pub netns_created: usize,
    pub processes_started: usize,
    pub containers_removed: usize,
    /// Problems that did not stop the pass (one per object).
    pub errors: Vec<String>,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        self.networks_added
            + self.networks_removed
            + self.attached
            + self.detached
            + self.peers_added
            + self.peers_removed
            + self.vteps_added
            + self.vteps_removed
            + self.services_set
            + self.services_removed
            + self.ports_set
            + self.ports_removed
            + self.host_link_changes
            + self.netns_created
            + self.processes_started
            + self.containers_removed
            > 0
    }
}

/// A gossip driver's state: its keyring (which a worker tells its manager,
/// so the manager knows when a rotation step has reached everyone) and its
/// packet counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipStatus {
    /// Installed key ids, in installation order.
    pub key_ids: Vec<u32>,
    /// The key sent with.
    pub primary: Option<u32>,
    /// Other members active (this node excluded).
    pub members: usize,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Received packets dropped for any reason.
    pub rx_dropped: u64,
    /// Received packets sealed under a key this node does not hold.
    pub rx_unknown_key: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let r: CtlRequest = serde_json::from_str(
            r#"{"op":"network_connect","container":"c1","endpoint":{"network":"n1","ipv4":"10.0.0.9"}}"#,
        )
        .unwrap();
        let CtlRequest::NetworkConnect(c) = r else {
            panic!("wrong op");
        };
        assert_eq!(c.external, None);
        assert_eq!(c.container, "c1");
        assert_eq!(c.endpoint.network, "n1");
        assert_eq!(c.endpoint.ipv4, Some(Ipv4Addr::new(10, 0, 0, 9)));
        let r: CtlRequest =
            serde_json::from_str(r#"{"op":"network_create","name":"n","attachable":true}"#)
                .unwrap();
        assert!(matches!(r, CtlRequest::NetworkCreate(c) if c.attachable && c.name == "n"));
        for bad in [
            r#"{"op":"nope"}"#,
            r#"{"op":"join_token","role":"admin"}"#,
            r#"{"op":"container_started","container":"c","pid":-1}"#,
            r#"{"op":"swarm_init","advertise_addr":"1.2.3"}"#,
            r#"{"op":"network_create","name":"n","attachabel":true}"#,
            r#"{"op":"network_create","name":"n","driver":"bridge"}"#,
            r#"{"op":"node_ls","filter":"role=manager"}"#,
        ] {
            assert!(serde_json::from_str::<CtlRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_token_is_never_printed() {
        let j = SwarmJoin {
            token: "SWMTKN-1-abc-secretsecret".into(),
            remote: "192.0.2.1".into(),
            advertise_addr: None,
            data_path_addr: None,
        };
        let shown = format!("{:?}", CtlRequest::SwarmJoin(j));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
