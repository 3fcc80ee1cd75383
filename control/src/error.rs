//! The control plane's error type. Every message says what is wrong and,
//! where there is one, what the user can do about it: these strings reach
//! the `vxnet` CLI unchanged.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),

    // --- swarm, nodes ---
    #[error("this node is not a swarm manager; run `vxnet swarm init` first")]
    NotInitialized,
    #[error("this node is already part of a swarm; run `vxnet swarm leave --force` first")]
    AlreadyInitialized,
    #[error("data path port {0} is out of range; choose a port in 1024..=49151")]
    DataPathPort(u16),
    #[error(
        "address pool {base} with subnet size /{size} is invalid: the size must be between /{min} and /30"
    )]
    InvalidPool { base: IpNet, size: u8, min: u8 },
    #[error("node '{0}' not found; list nodes with `vxnet node ls`")]
    NodeNotFound(String),
    #[error("node '{0}' is ambiguous: it matches {1}; give more of the id")]
    AmbiguousNode(String, String),
    #[error(
        "node {0} is not down; stop it or make it leave first, or remove it anyway with --force"
    )]
    NodeNotDown(String),
    #[error("public key '{0}' is not a base64-encoded 32-byte X25519 key")]
    InvalidPublicKey(String),
    #[error(
        "invalid hostname '{0}': give 1 to 253 characters without spaces or control characters"
    )]
    InvalidHostname(String),
    #[error("node {0} is the manager that holds the state; it cannot remove itself")]
    RemoveSelf(String),

    // --- networks ---
    #[error(
        "invalid network name '{0}': use letters, digits, '_', '.' or '-', starting with a letter or digit, at most 64 characters"
    )]
    InvalidNetworkName(String),
    #[error("network driver '{0}' is not supported; vxnet networks use `-d overlay`")]
    UnsupportedDriver(String),
    #[error(
        "network name '{name}' is already used by network {id}; choose another name or remove it first"
    )]
    NetworkNameInUse { name: String, id: String },
    #[error("network '{0}' not found; list networks with `vxnet network ls`")]
    NetworkNotFound(String),
    #[error("network '{0}' is ambiguous: it matches {1}; give more of the id or the full name")]
    AmbiguousNetwork(String, String),
    #[error(
        "an ingress network already exists ({name}, {id}); only one is allowed, remove it first"
    )]
    IngressExists { name: String, id: String },
    #[error("an ingress network cannot be attachable; drop --attachable or --ingress")]
    IngressAttachable,
    #[error(
        "unknown network option '{0}'; known options are encrypted, flood and mtu (or com.docker.network.driver.mtu)"
    )]
    UnknownOption(String),
    #[error("option {option}={value} is invalid: {reason}")]
    InvalidOption {
        option: String,
        value: String,
        reason: String,
    },
    #[error("no VXLAN network identifier is free (4096..=16777215 are all in use)")]
    VniExhausted,
    #[error("network {name} is in use by {users}; disconnect or remove them first")]
    NetworkInUse { name: String, users: String },

    // --- addressing ---
    #[error("invalid addressing: {0}")]
    InvalidAddressing(String),
    #[error("'{0}' is not a unicast MAC address; give six hex pairs like 02:42:0a:00:00:09")]
    InvalidMac(String),
    #[error(
        "subnet {subnet} overlaps subnet {other} of network {network}; choose a subnet that does not overlap"
    )]
    SubnetOverlap {
        subnet: IpNet,
        other: IpNet,
        network: String,
    },
    #[error(
        "the address pool {pool} has no free /{size} subnet left; remove unused networks, give --subnet, or init with a larger pool"
    )]
    PoolExhausted { pool: IpNet, size: u8 },
    #[error(
        "no free address left in {range} of network {network}; remove containers or use a larger --subnet/--ip-range"
    )]
    AddressesExhausted { network: String, range: IpNet },
    #[error(
        "address {ip} is already in use on network {network} by {owner}; choose another or let vxnet pick one"
    )]
    AddressInUse {
        ip: IpAddr,
        network: String,
        owner: String,
    },
    #[error("address {ip} is not usable on network {network}: {reason}")]
    AddressNotUsable {
        ip: IpAddr,
        network: String,
        reason: String,
    },

    // --- containers ---
    #[error(
        "invalid container name '{0}': use letters, digits, '_', '.' or '-', starting with a letter or digit, at most 64 characters"
    )]
    InvalidContainerName(String),
    #[error(
        "container name '{name}' is already used by container {id}; choose another name or remove it first"
    )]
    ContainerNameInUse { name: String, id: String },
    #[error("container '{0}' not found; list containers with `vxnet container ls`")]
    ContainerNotFound(String),
    #[error("container '{0}' is ambiguous: it matches {1}; give more of the id or the full name")]
    AmbiguousContainer(String, String),
    #[error(
        "invalid alias '{0}': use letters, digits, '_', '.' or '-', starting with a letter or digit, at most 64 characters"
    )]
    InvalidName(String),
    #[error("a container needs at least one network; give --network NET")]
    NoNetwork,
    #[error(
        "network {0} is not attachable: standalone containers can only join networks created with --attachable"
    )]
    NotAttachable(String),
    #[error("container {container} is already connected to network {network}")]
    AlreadyAttached { container: String, network: String },
    #[error("container {container} is not connected to network {network}")]
    NotAttached { container: String, network: String },

    // --- services ---
    #[error(
        "invalid service name '{0}': use letters, digits, '_', '.' or '-', starting with a letter or digit, at most 64 characters"
    )]
    InvalidServiceName(String),
    #[error(
        "service name '{name}' is already used by service {id}; choose another name or remove it first"
    )]
    ServiceNameInUse { name: String, id: String },
    #[error("service '{0}' not found; list services with `vxnet service ls`")]
    ServiceNotFound(String),
    #[error("service '{0}' is ambiguous: it matches {1}; give more of the id or the full name")]
    AmbiguousService(String, String),
    #[error("a service needs a command to run; give it after `--`")]
    NoCommand,
    #[error("'{0}' is not K=V")]
    InvalidEnv(String),
    #[error("{0} replicas is more than {max}; ask for fewer", max = crate::services::MAX_REPLICAS)]
    TooManyReplicas(u64),
    #[error(
        "network {0} is the ingress network, which carries published ports; services join other overlay networks"
    )]
    IngressForServices(String),
    #[error("network {0} is given twice")]
    NetworkGivenTwice(String),
    #[error("service {0} runs in global mode: one task per node, it cannot be scaled")]
    ScaleGlobal(String),
    #[error("service {service} is not on network {network}")]
    ServiceNotOnNetwork { service: String, network: String },

    // --- published ports ---
    #[error("port {0} is out of range; ports are 1-65535")]
    PortRange(u16),
    #[error(
        "{protocol} port {port} is already published by service {service}; choose another published port or remove it there first"
    )]
    PortInUse {
        protocol: vxnet_api::model::PortProtocol,
        port: u16,
        service: String,
    },
    #[error(
        "{protocol} port {port} is the swarm's own (2377/tcp management, 7946 gossip, 4789/udp VXLAN); publish on another port"
    )]
    SwarmPort {
        protocol: vxnet_api::model::PortProtocol,
        port: u16,
    },
    #[error(
        "{protocol} port {port} is already published by this service (to target port {target}); remove it with --publish-rm first"
    )]
    PortPublishedHere {
        protocol: vxnet_api::model::PortProtocol,
        port: u16,
        target: u16,
    },
    #[error("{protocol} port {port} is given twice")]
    PortGivenTwice {
        protocol: vxnet_api::model::PortProtocol,
        port: u16,
    },
    #[error("no free port left in 30000-32767 to publish on; give published= explicitly")]
    PortsExhausted,
    #[error("mode=host needs published=: say which port answers on the task's node")]
    HostModeNeedsPublished,
    #[error(
        "network {0} is --internal: it has neither egress nor published ports; publish from a service on another network"
    )]
    PublishOnInternal(String),
    #[error(
        "a port published with mode=ingress needs a VIP; it cannot be used with --endpoint-mode dnsrr (use mode=host)"
    )]
    IngressWithDnsrr,
    #[error(
        "the swarm has no ingress network to publish through; create one with `vxnet network create --ingress`"
    )]
    NoIngressNetwork,
    #[error(
        "service {service} publishes no {protocol} port with target {target}{published}; see `vxnet service inspect {service}`"
    )]
    NotPublished {
        service: String,
        protocol: vxnet_api::model::PortProtocol,
        target: u16,
        published: String,
    },
}

impl ControlError {
    /// The API error code of this error.
    pub fn code(&self) -> vxnet_api::ErrorCode {
        use ControlError as E;
        use vxnet_api::ErrorCode as C;
        match self {
            E::Store(_) => C::Internal,
            E::NotInitialized | E::AlreadyInitialized | E::NodeNotDown(_) | E::RemoveSelf(_) => {
                C::FailedPrecondition
            }
            E::NetworkInUse { .. }
            | E::NotAttachable(_)
            | E::NotAttached { .. }
            | E::ScaleGlobal(_)
            | E::ServiceNotOnNetwork { .. }
            | E::PortsExhausted
            | E::NoIngressNetwork
            | E::PublishOnInternal(_)
            | E::NotPublished { .. } => C::FailedPrecondition,
            E::VniExhausted | E::PoolExhausted { .. } | E::AddressesExhausted { .. } => {
                C::FailedPrecondition
            }
            E::NodeNotFound(_)
            | E::NetworkNotFound(_)
            | E::ContainerNotFound(_)
            | E::ServiceNotFound(_) => C::NotFound,
            E::NetworkNameInUse { .. }
            | E::IngressExists { .. }
            | E::ContainerNameInUse { .. }
            | E::AddressInUse { .. }
            | E::AlreadyAttached { .. }
            | E::ServiceNameInUse { .. }
            | E::PortInUse { .. }
            | E::SubnetOverlap { .. } => C::AlreadyExists,
            E::DataPathPort(_)
            | E::InvalidPool { .. }
            | E::AmbiguousNode(..)
            | E::InvalidPublicKey(_)
            | E::InvalidHostname(_)
            | E::InvalidNetworkName(_)
            | E::UnsupportedDriver(_)
            | E::AmbiguousNetwork(..)
            | E::IngressAttachable
            | E::UnknownOption(_)
            | E::InvalidOption { .. }
            | E::InvalidAddressing(_)
            | E::InvalidMac(_)
            | E::AddressNotUsable { .. }
            | E::InvalidContainerName(_)
            | E::AmbiguousContainer(..)
            | E::InvalidName(_)
            | E::InvalidServiceName(_)
            | E::AmbiguousService(..)
            | E::NoCommand
            | E::InvalidEnv(_)
            | E::TooManyReplicas(_)
            | E::IngressForServices(_)
            | E::NetworkGivenTwice(_)
            | E::PortRange(_)
            | E::PortGivenTwice { .. }
            | E::SwarmPort { .. }
            | E::PortPublishedHere { .. }
            | E::HostModeNeedsPublished
            | E::IngressWithDnsrr
            | E::NoNetwork => C::InvalidArgument,
        }
    }
}

impl From<ControlError> for vxnet_api::ApiError {
    fn from(e: ControlError) -> Self {
        vxnet_api::ApiError::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;
