//! `node ls|inspect|rm|update` (managers only, as Docker's).

use vxnet_api::ctl::{NodeLs, NodeUpdate, NodeView};
use vxnet_api::{ApiError, ApiResult};

use crate::cluster;
use crate::daemon::dataplane::DataplaneApi;
use crate::daemon::{Daemon, internal};
use crate::model::Node;
use crate::store::{Store, StoreExt};

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    fn node_view(&self, node: Node) -> ApiResult<NodeView> {
        Ok(NodeView {
            is_self: node.id == self.local_node()?,
            node,
        })
    }

    pub(crate) fn node_ls(&self, r: NodeLs) -> ApiResult<Vec<NodeView>> {
        self.manager_only()?;
        cluster::list_nodes(&self.store, r.role)?
            .into_iter()
            .map(|n| self.node_view(n))
            .collect()
    }

    pub(crate) fn node_inspect(&self, query: &str) -> ApiResult<NodeView> {
        self.manager_only()?;
        self.node_view(cluster::resolve_node(&self.store, query)?)
    }

    /// `node rm`: the store forgets the node and its containers (releasing
    /// their addresses); its endpoints leave the other dataplanes with its
    /// gossip membership.
    pub(crate) fn node_rm(&self, query: &str, force: bool) -> ApiResult<Node> {
        self.manager_only()?;
        let me = self.local_node()?;
        let _w = self.write();
        let n = cluster::remove_node(&self.store, query, force, &me)?;
        tracing::info!(node = %n.id, hostname = %n.hostname, force, "node removed");
        Ok(n)
    }

    pub(crate) fn node_update(&self, r: NodeUpdate) -> ApiResult<Node> {
        self.manager_only()?;
        let _w = self.write();
        Ok(cluster::set_node_availability(
            &self.store,
            &r.node,
            r.availability,
        )?)
    }

    /// The node record of this daemon.
    pub(crate) fn own_node(&self) -> ApiResult<Node> {
        let id = self.local_node()?;
        self.store
            .get::<Node>(&id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::internal(format!("node {id} is missing from the store")))
    }
}
