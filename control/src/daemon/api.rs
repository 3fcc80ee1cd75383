//! The control daemon's local API: what `vxnet swarm|node|network|container`
//! sends over the daemon's Unix socket, one JSON object per line, and the
//! views it gets back inside the dataplane's [`Response`] envelope
//! (`{"ok":true,"result":...}` / `{"ok":false,"error":"..."}`).
//!
//! ```text
//! -> {"op":"network_create","name":"test-net","attachable":true}
//! <- {"ok":true,"result":{"id":"...","name":"test-net",...}}
//! ```
//!
//! [`Response`]: vxnet_dataplane::api::Response

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::containers::NetworkRequest;
use crate::model::{Availability, Container, Network, Node, Role};
use crate::networks::{CreateNetwork, NetworkDetails, NetworkFilter};

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/vxnet/control.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vxnet/control";
/// TCP port of the management plane, printed in join commands.
pub const MANAGEMENT_PORT: u16 = 2377;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CtlRequest {
    SwarmInit {
        #[serde(default)]
        advertise_addr: Option<IpAddr>,
        #[serde(default)]
        data_path_addr: Option<IpAddr>,
        #[serde(default)]
        data_path_port: Option<u16>,
    },
    /// Join through a manager (`remote` is `IP[:PORT]`, port 2377 by
    /// default) over mutual TLS.
    SwarmJoin {
        token: String,
        remote: String,
        #[serde(default)]
        advertise_addr: Option<IpAddr>,
        #[serde(default)]
        data_path_addr: Option<IpAddr>,
    },
    JoinToken {
        role: Role,
        #[serde(default)]
        rotate: bool,
    },
    SwarmLeave {
        #[serde(default)]
        force: bool,
    },
    NodeLs,
    /// `node inspect`: one node (id, hostname or unique id prefix).
    NodeInspect {
        node: String,
    },
    /// `node rm`: refused for this node and, without `force`, for a node
    /// that is not Down.
    NodeRm {
        node: String,
        #[serde(default)]
        force: bool,
    },
    /// `node update --availability`.
    NodeUpdate {
        node: String,
        availability: Availability,
    },
    /// This node's gossip driver: keyring and packet counters
    /// ([`super::gossip::GossipStatus`]).
    GossipStatus,
    NetworkCreate(CreateNetwork),
    NetworkLs {
        #[serde(default)]
        filter: NetworkFilter,
    },
    NetworkInspect {
        network: String,
    },
    NetworkRm {
        network: String,
    },
    /// Attach a container to one more network; with `netns` or `veth`,
    /// `container` names a container of another runtime, recorded here
    /// (Docker's `network connect` of an external container).
    NetworkConnect {
        container: String,
        #[serde(flatten)]
        network: NetworkRequest,
        /// The external container's network namespace: a name under
        /// /run/netns or a path such as /proc/PID/ns/net (native attach).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
        /// The host side of the external container's veth (sidecar
        /// attach; needs the container side's MAC).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        veth: Option<String>,
    },
    NetworkDisconnect {
        container: String,
        network: String,
    },
    /// `container run`, first half: the namespace, attached, ready for the
    /// command (which the CLI starts and reports with `ContainerStarted`).
    ContainerCreate {
        name: String,
        networks: Vec<NetworkRequest>,
    },
    ContainerStarted {
        container: String,
        pid: u32,
    },
    ContainerLs,
    ContainerInspect {
        container: String,
    },
    ContainerRm {
        container: String,
        #[serde(default)]
        force: bool,
    },
    /// Compare the dataplane with the store now and fix the difference.
    Reconcile,
}

/// What `swarm init` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitView {
    pub node_id: String,
    pub cluster_id: String,
    pub manager_addr: SocketAddr,
    pub worker_token: String,
    pub manager_token: String,
    pub ingress_network: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenView {
    pub role: Role,
    pub token: String,
    pub manager_addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: Node,
    /// This is the node the daemon runs on.
    pub is_self: bool,
}

/// One network of a container, with the names the CLI shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub network_id: String,
    pub network: String,
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub prefix: u8,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: String,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub node: String,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    pub pid: Option<u32>,
    /// "created" (no command yet), "running", "exited", or "external"
    /// (another runtime's container).
    pub status: String,
    /// The host side of an external container's veth (sidecar attach).
    #[serde(default)]
    pub veth: Option<String>,
    /// Where a detached command's output goes.
    pub log_path: String,
    pub created: u64,
    pub networks: Vec<AttachmentView>,
}

/// `network inspect`: the store's view plus which node is this one, so
/// the CLI can show this host's endpoints as `Containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInspectView {
    #[serde(flatten)]
    pub details: NetworkDetails,
    pub self_node: Option<String>,
}

/// What one reconciliation pass changed on the dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub networks_added: usize,
    pub networks_removed: usize,
    pub attached: usize,
    pub detached: usize,
    pub netns_created: usize,
    /// Problems that did not stop the pass (one per endpoint or network).
    pub errors: Vec<String>,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        self.networks_added
            + self.networks_removed
            + self.attached
            + self.detached
            + self.netns_created
            > 0
    }
}

/// A container with its network records, for views.
pub(crate) fn container_view(
    c: &Container,
    nets: &[Network],
    rt: &super::runtime::Runtime,
    status: &str,
) -> ContainerView {
    let networks = c
        .attachments
        .iter()
        .filter_map(|a| {
            let n = nets.iter().find(|n| n.id == a.network)?;
            Some(AttachmentView {
                network_id: n.id.clone(),
                network: n.name.clone(),
                ifname: rt.ifname(&n.id).unwrap_or("-").to_owned(),
                ipv4: a.ipv4,
                prefix: n.ipv4.subnet.prefix_len(),
                ipv6: a.ipv6,
                mac: a.mac.clone(),
                gateway: n.ipv4.gateway,
                mtu: n.mtu,
            })
        })
        .collect();
    ContainerView {
        id: c.id.clone(),
        name: c.name.clone(),
        node: c.node.clone(),
        netns: rt.netns.clone(),
        pid: rt.pid,
        status: status.to_owned(),
        veth: rt.veth.clone(),
        log_path: rt.log_path.clone(),
        created: c.created,
        networks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let r: CtlRequest = serde_json::from_str(
            r#"{"op":"network_connect","container":"c1","network":"n1","ipv4":"10.0.0.9"}"#,
        )
        .unwrap();
        let CtlRequest::NetworkConnect {
            container,
            network,
            netns,
            veth,
        } = r
        else {
            panic!("wrong op");
        };
        assert_eq!((netns, veth), (None, None));
        assert_eq!(container, "c1");
        assert_eq!(network.network, "n1");
        assert_eq!(network.ipv4, Some(Ipv4Addr::new(10, 0, 0, 9)));
        let r: CtlRequest =
            serde_json::from_str(r#"{"op":"network_create","name":"n","attachable":true}"#)
                .unwrap();
        assert!(matches!(r, CtlRequest::NetworkCreate(c) if c.attachable && c.name == "n"));
        for bad in [
            r#"{"op":"nope"}"#,
            r#"{"op":"join_token","role":"admin"}"#,
            r#"{"op":"container_started","container":"c","pid":-1}"#,
            r#"{"op":"swarm_init","advertise_addr":"1.2.3"}"#,
        ] {
            assert!(serde_json::from_str::<CtlRequest>(bad).is_err(), "{bad}");
        }
    }
}
