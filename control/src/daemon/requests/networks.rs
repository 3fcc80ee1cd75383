//! `network create|ls|inspect|rm|connect|disconnect`.

use std::collections::BTreeMap;

use vxnet_api::ctl::{
    ContainerView, External, NetworkConnect, NetworkCreate, NetworkFilter, NetworkInspectView,
    PeerView,
};
use vxnet_api::{ApiError, ApiResult};

use crate::containers::{self, CreateContainer};
use crate::daemon::dataplane::DataplaneApi;
use crate::daemon::{Daemon, internal, now};
use crate::mgmt::calls;
use crate::model::{Container, Network, Node};
use crate::networks;
use crate::store::{Store, StoreExt};

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    pub(crate) fn network_create(&self, r: NetworkCreate) -> ApiResult<Network> {
        self.manager_only()?;
        let _w = self.write();
        Ok(networks::create_network(
            &self.store,
            &r,
            now(),
            &mut rand_core::OsRng,
        )?)
    }

    pub(crate) fn network_ls(&self, filter: &NetworkFilter) -> ApiResult<Vec<Network>> {
        self.local_node()?;
        Ok(networks::list_networks(&self.store, filter)?)
    }

    /// The network, its endpoints this node knows, and the hosts with
    /// endpoints on it: from gossip (what every node sees), and on a
    /// manager also from its records.
    pub(crate) fn network_inspect(&self, query: &str) -> ApiResult<NetworkInspectView> {
        let me = self.local_node()?;
        let details = networks::inspect_network(&self.store, query)?;
        let nodes: Vec<Node> = self.store.list::<Node>().map_err(internal)?;
        let mut peers: BTreeMap<std::net::IpAddr, PeerView> = details
            .peers
            .into_iter()
            .map(|p| (p.data_path_addr, p))
            .collect();
        {
            let view = self.gossip_view();
            for r in view
                .records
                .iter()
                .filter(|r| r.network_id == details.network.id && !r.removed)
            {
                peers.entry(r.vtep).or_insert_with(|| {
                    let node = nodes.iter().find(|n| n.data_path_addr == r.vtep);
                    let member = view.member_at(r.vtep).or(view.own.as_ref());
                    PeerView {
                        node: node
                            .map(|n| n.id.clone())
                            .or_else(|| member.map(|m| m.node_id.clone()))
                            .unwrap_or_default(),
                        hostname: node.map(|n| n.hostname.clone()).unwrap_or_default(),
                        data_path_addr: r.vtep,
                    }
                });
            }
        }
        let mut network = details.network;
        // What this host's endpoints get (`Options` shows it as Docker's
        // com.docker.network.driver.mtu).
        network.mtu = u16::try_from(self.mtu_in_force(&network)).unwrap_or(u16::MAX);
        Ok(NetworkInspectView {
            network,
            containers: details.containers,
            peers: peers.into_values().collect(),
            self_node: Some(me),
        })
    }

    pub(crate) fn network_rm(&self, query: &str) -> ApiResult<Network> {
        self.manager_only()?;
        let _w = self.write();
        Ok(networks::remove_network(&self.store, query)?)
    }

    pub(crate) fn network_connect(&self, r: NetworkConnect) -> ApiResult<ContainerView> {
        if let Some(ext) = r.external {
            return self.connect_external(&r.container, r.endpoint, ext);
        }
        let c = self.local_container(&r.container)?;
        let rt = self.runtime_of(&c.id)?.unwrap_or_default();
        if let Some(veth) = &rt.veth {
            return Err(ApiError::precondition(format!(
                "container {} is attached by its veth {veth}, which carries one network; \
                 connect another veth under another name",
                c.name
            )));
        }
        let (after, generation) = if self.is_manager() {
            let _w = self.write();
            let after = containers::connect(&self.store, &c.id, &r.endpoint)?;
            (after, self.changes.generation())
        } else {
            let g = self.manager_call(calls::NetworkConnect {
                container_id: c.id.clone(),
                endpoint: r.endpoint.clone(),
            })?;
            let generation = self.keep_grant(&g)?;
            (g.container, generation)
        };
        if let Some(crate::daemon::changes::Outcome::Failed(e)) =
            self.realized(generation, &c.id)?
        {
            // Back to what it was.
            if let Some(net) = after
                .attachments
                .iter()
                .find(|a| c.attachment(&a.network).is_none())
            {
                let _ = self.disconnect_record(&c, &net.network);
            }
            return Err(ApiError::precondition(format!(
                "container {} on network {}: {e}",
                c.name, r.endpoint.network
            )));
        }
        self.view(&self.resolve(&c.id)?)
    }

    /// Takes `network_id` out of a container's record (on a worker through
    /// the manager, which releases its addresses). Returns the generation
    /// to wait for.
    fn disconnect_record(&self, c: &Container, network_id: &str) -> ApiResult<u64> {
        if self.is_manager() {
            let _w = self.write();
            containers::disconnect(&self.store, &c.id, network_id)?;
            Ok(self.changes.generation())
        } else {
            let g = self.manager_call(calls::NetworkDisconnect {
                container_id: c.id.clone(),
                network_id: network_id.to_owned(),
            })?;
            self.keep_grant(&g)
        }
    }

    pub(crate) fn network_disconnect(
        &self,
        query: &str,
        network: &str,
    ) -> ApiResult<ContainerView> {
        let c = self.local_container(query)?;
        let net = networks::resolve_network(&self.store, network)?;
        if c.attachment(&net.id).is_none() {
            return Err(crate::ControlError::NotAttached {
                container: c.name,
                network: net.name,
            }
            .into());
        }
        let rt = self.runtime_of(&c.id)?.unwrap_or_default();
        if rt.external && c.attachments.len() == 1 {
            // Another runtime's container is recorded for its networks
            // only: with the last one it is forgotten.
            return self.container_rm(&c.id, true);
        }
        let generation = self.disconnect_record(&c, &net.id)?;
        self.realized(generation, &c.id)?;
        self.view(&self.resolve(&c.id)?)
    }

    /// `network connect --netns|--veth NET NAME`: records another runtime's
    /// container NAME with an address on NET and attaches it (into its
    /// namespace, or by bridging its veth). A NAME recorded already with
    /// the same namespace just joins one more network.
    fn connect_external(
        &self,
        name: &str,
        endpoint: vxnet_api::ctl::EndpointRequest,
        ext: External,
    ) -> ApiResult<ContainerView> {
        if let Ok(c) = self.resolve(name) {
            let rt = self.runtime_of(&c.id)?.unwrap_or_default();
            return match &ext {
                External::Netns(ns) if rt.external && rt.veth.is_none() && rt.netns == *ns => self
                    .network_connect(NetworkConnect {
                        container: c.id,
                        endpoint,
                        external: None,
                    }),
                _ => Err(ApiError::exists(format!(
                    "a container named {} exists already; connect it by name alone, \
                     or give the other runtime's container another name",
                    c.name
                ))),
            };
        }
        match &ext {
            External::Netns(ns) if ns.is_empty() => {
                return Err(ApiError::invalid("--netns needs a name or path"));
            }
            External::Veth(v) if v.is_empty() || v.len() > 15 || v.contains(['/', ' ']) => {
                return Err(ApiError::invalid(format!("invalid interface name '{v}'")));
            }
            External::Veth(_) if endpoint.mac.is_none() => {
                return Err(ApiError::invalid(
                    "--veth needs --mac: the MAC of the container's end of the veth",
                ));
            }
            _ => {}
        }
        let me = self.local_node()?;
        let (c, generation) = self.record_container(CreateContainer {
            name: name.to_owned(),
            node: me,
            netns: match &ext {
                External::Netns(ns) => Some(ns.clone()),
                External::Veth(_) => None,
            },
            networks: vec![endpoint],
            external: Some(ext),
            ..Default::default()
        })?;
        if let Some(crate::daemon::changes::Outcome::Failed(e)) =
            self.realized(generation, &c.id)?
        {
            self.undo_container(&c);
            return Err(ApiError::precondition(format!("container {name}: {e}")));
        }
        tracing::info!(container = %c.name, "external container connected");
        self.view(&self.resolve(&c.id)?)
    }
}
