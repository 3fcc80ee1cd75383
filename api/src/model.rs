//! The swarm's desired state as plain serde records: nodes, overlay
//! networks and containers. The control daemon keeps them in its store
//! (`vxnet-control`'s `model` adds how each is keyed there); the CLI shows
//! them.
//!
//! New fields must carry `#[serde(default)]` so that a store written by an
//! older version still loads. Records are not `deny_unknown_fields`, for
//! the same reason in the other direction (a downgrade).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use vxnet_proto::crypto::keys::PublicKey;
use vxnet_proto::mtu::Underlay;
use vxnet_proto::wire::{MacAddr, Vni};

/// Seconds since the Unix epoch; the caller reads the clock.
pub type UnixTime = u64;

/// Length of object ids, as Docker's swarm ids.
pub const ID_LEN: usize = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Down,
}

/// A host in the swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    /// Address for management (2377) and gossip (7946).
    pub advertise_addr: IpAddr,
    /// Address the node's VXLAN traffic uses (`--data-path-addr`; equals
    /// `advertise_addr` unless given).
    pub data_path_addr: IpAddr,
    /// UDP port of the data path (cluster-wide, 4789 by default).
    pub data_path_port: u16,
    /// The node's X25519 public key for ESP key agreement.
    pub public_key: PublicKey,
    pub created: UnixTime,
    /// Why the node is Down, when it is: it left (`swarm leave`), or
    /// gossip stopped hearing from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
    /// The node's own endpoint on the ingress network (Docker's
    /// `ingress-sbox`), through which published ports reach the tasks; its
    /// MAC is derived from it (`02:42:` and the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_ipv4: Option<Ipv4Addr>,
}

/// The only network driver vxnet has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Overlay,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overlay")
    }
}

/// IPv4 addressing of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Config {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Container addresses come from here (`--ip-range`); the whole subnet
    /// when absent.
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
}

/// IPv6 addressing of a network (only when the user gives a subnet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
    #[serde(default)]
    pub ip_range: Option<Ipv6Net>,
}

/// An overlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: Driver,
    pub vni: Vni,
    pub ipv4: Ipv4Config,
    #[serde(default)]
    pub ipv6: Option<Ipv6Config>,
    /// Standalone containers may join.
    pub attachable: bool,
    /// The swarm's routing-mesh network (at most one).
    pub ingress: bool,
    /// Data traffic is ESP-encrypted.
    pub encrypted: bool,
    /// MTU inside the containers, bytes, when given (`--opt mtu=N`). When
    /// not, what it would be over a 1500-byte IPv4 underlay (1450, 1408
    /// encrypted); the MTU in force then comes from each host's underlay
    /// ([`Network::mtu_on`]).
    pub mtu: u16,
    /// Whether `mtu` was given. `None` in records written before this
    /// field existed: see [`Network::explicit_mtu`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_explicit: Option<bool>,
    /// Broadcast, multicast and unknown-unicast frames are replicated to
    /// every host with endpoints on the network (`--opt flood=false` keeps
    /// them on their host).
    #[serde(default = "flood_default")]
    pub flood: bool,
    /// No egress to the outside (`--internal`).
    #[serde(default)]
    pub internal: bool,
    pub created: UnixTime,
}

fn flood_default() -> bool {
    true
}

/// The MTUs networks had before the MTU came from the underlay (issue 12):
/// a 1500-byte underlay minus VXLAN's 50 bytes, minus 42 for ESP.
const LEGACY_MTU: (u16, u16) = (1450, 1408);

impl Network {
    /// The MTU the network's creator gave, if any. A record from before
    /// `mtu_explicit` existed holds either the default of its time or a
    /// given MTU: a value other than that default was given.
    pub fn explicit_mtu(&self) -> Option<u16> {
        let legacy = if self.encrypted {
            LEGACY_MTU.1
        } else {
            LEGACY_MTU.0
        };
        match self.mtu_explicit {
            Some(true) => Some(self.mtu),
            Some(false) => None,
            None => (self.mtu != legacy).then_some(self.mtu),
        }
    }

    /// The MTU of the network's endpoints on a host whose VTEP is carried
    /// by `underlay` (the path MTU rule, [`vxnet_proto::mtu`]): the given
    /// MTU wins; else the underlay's MTU minus VXLAN (50 bytes over IPv4,
    /// 70 over IPv6), minus 42 more when encrypted.
    pub fn mtu_on(&self, underlay: Underlay) -> u32 {
        match self.explicit_mtu() {
            Some(m) => u32::from(m),
            None => underlay.endpoint_mtu(self.encrypted),
        }
    }

    /// The network's subnets, IPv4 first.
    pub fn subnets(&self) -> Vec<ipnet::IpNet> {
        let mut v = vec![ipnet::IpNet::V4(self.ipv4.subnet)];
        if let Some(c) = &self.ipv6 {
            v.push(ipnet::IpNet::V6(c.subnet));
        }
        v
    }
}

/// A container's membership in one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// `02:42:` followed by the IPv4 address, as Docker does (unique within
    /// the network because the address is), unless given.
    pub mac: MacAddr,
    /// Other names the container answers to on this network
    /// (`--network-alias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl Attachment {
    /// The endpoint's addresses, IPv4 first.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(IpAddr::V4(self.ipv4)).chain(self.ipv6.map(IpAddr::V6))
    }
}

/// What a container should be doing (the desired state the owning node's
/// daemon makes real).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Its namespace exists and is attached; its command runs if it has
    /// one.
    #[default]
    Running,
    /// Its command is stopped and its endpoints are detached; it keeps its
    /// addresses (`container stop`).
    Stopped,
    /// To be removed: the node's daemon removes it, then tells the manager,
    /// which forgets it and releases its addresses.
    Removed,
}

/// How many tasks a service runs (Docker's `--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// `--replicas N` tasks, spread over the Active nodes.
    Replicated { replicas: u64 },
    /// One task on every Active node, nodes that join later included.
    Global,
}

/// How clients find a service's tasks (Docker's `--endpoint-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// A virtual IP per network, balanced over the tasks by the dataplane.
    #[default]
    Vip,
    /// No VIP: the service name resolves to the tasks' addresses.
    Dnsrr,
}

/// When a task's exited command is started again (Docker's
/// `--restart-condition`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Whatever its exit status.
    #[default]
    Any,
    /// Only when it failed (a status other than 0).
    OnFailure,
    /// Never.
    None,
}

/// A network a service is on, with the extra names its tasks answer to
/// there (`--network-alias`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    /// The network's id.
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    /// The IP protocol number (6 or 17).
    pub fn number(self) -> u8 {
        match self {
            PortProtocol::Tcp => 6,
            PortProtocol::Udp => 17,
        }
    }
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        })
    }
}

/// Where a published port answers (Docker's `mode=`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node of the swarm (the routing mesh), balanced over all
    /// tasks through the ingress network.
    #[default]
    Ingress,
    /// Only on the nodes that run a task, to the task there.
    Host,
}

impl std::fmt::Display for PublishMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        })
    }
}

/// A published port of a service (Docker's `Endpoint.Spec.Ports` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortConfig {
    pub protocol: PortProtocol,
    /// The port the tasks listen on.
    pub target_port: u16,
    /// The port on the nodes.
    pub published_port: u16,
    pub publish_mode: PublishMode,
}

/// A service's virtual IP on one network (VIP mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    pub network: String,
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
}

/// A service: a task template, how many tasks run it, and how clients
/// reach them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub mode: ServiceMode,
    pub endpoint_mode: EndpointMode,
    pub networks: Vec<ServiceNetwork>,
    /// What every task runs.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default)]
    pub restart: RestartCondition,
    /// One per network in VIP mode; none in DNSRR mode.
    #[serde(default)]
    pub vips: Vec<VirtualIp>,
    pub created: UnixTime,
    pub updated: UnixTime,
    /// Bumped when the task template (command, env, restart) changes:
    /// tasks of an older version are replaced.
    pub version: u64,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

impl Service {
    /// Whether a port of the service is published through the routing
    /// mesh (its tasks then join the ingress network, first).
    pub fn uses_ingress(&self) -> bool {
        self.ports
            .iter()
            .any(|p| p.publish_mode == PublishMode::Ingress)
    }

    pub fn vip(&self, network: &str) -> Option<&VirtualIp> {
        self.vips.iter().find(|v| v.network == network)
    }
}

/// What makes a container a service's task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The service's id.
    pub service: String,
    /// Replicated: 1 to the replica count (Docker's slot); global: 0.
    pub slot: u64,
    /// The service version the task was made from.
    pub version: u64,
    pub restart: RestartCondition,
}

/// Where a container is in its life, as its node last reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Recorded; its node has not started it yet.
    Pending,
    Running,
    /// Its command ended with status 0 and is not restarted.
    Complete,
    /// Its command ended otherwise, or could not start.
    Failed,
    /// Stopped or removed.
    Shutdown,
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskState::Pending => "Pending",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Failed => "Failed",
            TaskState::Shutdown => "Shutdown",
        })
    }
}

/// A container's state as its node reports it to the manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// When it entered this state.
    pub since: UnixTime,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    /// How many times its command was started again.
    #[serde(default)]
    pub restarts: u32,
}

/// Another runtime's container, as `network connect --netns|--veth` names
/// it: vxnet attaches it but never creates or removes its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum External {
    /// Its network namespace: a name under /run/netns or a path such as
    /// /proc/PID/ns/net (native attach).
    Netns(String),
    /// The host side of its veth (sidecar attach; needs the container
    /// side's MAC).
    Veth(String),
}

/// A container (a network namespace plus what runs in it) or an endpoint of
/// another runtime's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Path or name of its network namespace, once known.
    #[serde(default)]
    pub netns: Option<String>,
    /// In the order joined; the first is the primary network.
    pub attachments: Vec<Attachment>,
    pub created: UnixTime,
    #[serde(default)]
    pub desired: DesiredState,
    /// The command its node's daemon runs in it (`container run -d`);
    /// empty when the CLI runs it (foreground) or another runtime does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `K=V` for the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Set for another runtime's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    /// Set for a service's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    /// What its node last reported (kept by the manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

impl Container {
    pub fn attachment(&self, network_id: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.network == network_id)
    }
}

/// Where network subnets come from when the user gives none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub base: Ipv4Net,
    /// Prefix length of each network's subnet.
    pub size: u8,
}

impl Default for AddressPool {
    /// Docker's default: 10.0.0.0/8 in /24s.
    fn default() -> Self {
        Self {
            base: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default(),
            size: 24,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_json() {
        let n = Network {
            id: "n".repeat(ID_LEN),
            name: "test-net".into(),
            driver: Driver::Overlay,
            vni: Vni::new(4096).unwrap(),
            ipv4: Ipv4Config {
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                ip_range: Some("10.0.1.128/25".parse().unwrap()),
            },
            ipv6: Some(Ipv6Config {
                subnet: "fd00::/64".parse().unwrap(),
                gateway: "fd00::1".parse().unwrap(),
                ip_range: None,
            }),
            attachable: true,
            ingress: false,
            encrypted: true,
            mtu: 1408,
            mtu_explicit: Some(false),
            flood: true,
            internal: false,
            created: 1,
        };
        let s = serde_json::to_string(&n).unwrap();
        assert!(s.contains("\"subnet\":\"10.0.1.0/24\""), "{s}");
        assert!(s.contains("\"driver\":\"overlay\""), "{s}");
        assert!(s.contains("\"vni\":4096"), "{s}");
        assert_eq!(serde_json::from_str::<Network>(&s).unwrap(), n);
        // A record written before `internal`, `mtu_explicit` and `flood`
        // existed still loads.
        let old = s
            .replace(",\"internal\":false", "")
            .replace(",\"mtu_explicit\":false", "")
            .replace(",\"flood\":true", "");
        assert_ne!(old, s);
        let loaded: Network = serde_json::from_str(&old).unwrap();
        assert_eq!(
            loaded,
            Network {
                mtu_explicit: None,
                ..n.clone()
            }
        );
        assert_eq!(loaded.explicit_mtu(), None, "1408 was the default");
        assert_eq!(AddressPool::default().base.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn the_mtu_in_force() {
        let v4 = |mtu| Underlay::new(mtu, false);
        let n = |encrypted, mtu, mtu_explicit| Network {
            id: "n".into(),
            name: "n".into(),
            driver: Driver::Overlay,
            vni: Vni::new(4096).unwrap(),
            ipv4: Ipv4Config {
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                ip_range: None,
            },
            ipv6: None,
            attachable: true,
            ingress: false,
            encrypted,
            mtu,
            mtu_explicit,
            flood: true,
            internal: false,
            created: 1,
        };
        // Derived from the underlay: plain, encrypted, IPv6.
        assert_eq!(n(false, 1450, Some(false)).mtu_on(v4(1400)), 1350);
        assert_eq!(n(true, 1408, Some(false)).mtu_on(v4(9000)), 8908);
        assert_eq!(
            n(false, 1450, Some(false)).mtu_on(Underlay::new(1400, true)),
            1330
        );
        // Given: wins, even when the underlay carries less.
        assert_eq!(n(false, 1450, Some(true)).mtu_on(v4(1400)), 1450);
        // Records from before: the old default is not a choice, 1200 was.
        assert_eq!(n(false, 1450, None).mtu_on(v4(1400)), 1350);
        assert_eq!(n(false, 1200, None).mtu_on(v4(9000)), 1200);
        assert_eq!(n(true, 1450, None).explicit_mtu(), Some(1450));
    }
}
