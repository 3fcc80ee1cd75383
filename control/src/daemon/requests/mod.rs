//! The local API's requests, one module per area: [`swarm`] (init, join,
//! leave, tokens, gossip status), [`nodes`], [`networks`] and
//! [`containers`]. Each handler validates, writes desired state (on a
//! worker through its manager first, holding no lock meanwhile) and, where
//! the answer depends on it, waits for the reconciler to make it real.

mod containers;
mod networks;
mod nodes;
mod services;
mod swarm;

use vxnet_api::Response;
use vxnet_api::ctl::{self, CtlRequest};

use super::Daemon;
use super::dataplane::DataplaneApi;
use crate::store::Store;

/// The request's name, for logs (never its content: it may hold a token).
pub(super) fn op_name(req: &CtlRequest) -> &'static str {
    match req {
        CtlRequest::SwarmInit(_) => "swarm_init",
        CtlRequest::SwarmJoin(_) => "swarm_join",
        CtlRequest::JoinToken(_) => "join_token",
        CtlRequest::SwarmLeave(_) => "swarm_leave",
        CtlRequest::NodeLs(_) => "node_ls",
        CtlRequest::NodeInspect(_) => "node_inspect",
        CtlRequest::NodeRm(_) => "node_rm",
        CtlRequest::NodeUpdate(_) => "node_update",
        CtlRequest::GossipStatus(_) => "gossip_status",
        CtlRequest::NetworkCreate(_) => "network_create",
        CtlRequest::NetworkLs(_) => "network_ls",
        CtlRequest::NetworkInspect(_) => "network_inspect",
        CtlRequest::NetworkRm(_) => "network_rm",
        CtlRequest::NetworkConnect(_) => "network_connect",
        CtlRequest::NetworkDisconnect(_) => "network_disconnect",
        CtlRequest::ContainerCreate(_) => "container_create",
        CtlRequest::ContainerStarted(_) => "container_started",
        CtlRequest::ContainerLs(_) => "container_ls",
        CtlRequest::ContainerInspect(_) => "container_inspect",
        CtlRequest::ContainerRm(_) => "container_rm",
        CtlRequest::ContainerStop(_) => "container_stop",
        CtlRequest::ContainerStart(_) => "container_start",
        CtlRequest::ContainerLogs(_) => "container_logs",
        CtlRequest::ServiceCreate(_) => "service_create",
        CtlRequest::ServiceLs(_) => "service_ls",
        CtlRequest::ServiceInspect(_) => "service_inspect",
        CtlRequest::ServicePs(_) => "service_ps",
        CtlRequest::ServiceScale(_) => "service_scale",
        CtlRequest::ServiceUpdate(_) => "service_update",
        CtlRequest::ServiceRm(_) => "service_rm",
        CtlRequest::ServiceLogs(_) => "service_logs",
        CtlRequest::Reconcile(_) => "reconcile",
        CtlRequest::Trace(_) => "trace",
    }
}

/// Answers one request; the reply type is checked against the request's.
pub(super) fn dispatch<S, D>(d: &Daemon<S, D>, req: CtlRequest) -> Response
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    use Response as R;
    match req {
        CtlRequest::SwarmInit(r) => R::of::<ctl::SwarmInit>(d.swarm_init(r)),
        CtlRequest::SwarmJoin(r) => R::of::<ctl::SwarmJoin>(d.swarm_join(r)),
        CtlRequest::JoinToken(r) => R::of::<ctl::JoinToken>(d.join_token(r)),
        CtlRequest::SwarmLeave(r) => R::of::<ctl::SwarmLeave>(d.swarm_leave(r)),
        CtlRequest::NodeLs(r) => R::of::<ctl::NodeLs>(d.node_ls(r)),
        CtlRequest::NodeInspect(r) => R::of::<ctl::NodeInspect>(d.node_inspect(&r.node)),
        CtlRequest::NodeRm(r) => R::of::<ctl::NodeRm>(d.node_rm(&r.node, r.force)),
        CtlRequest::NodeUpdate(r) => R::of::<ctl::NodeUpdate>(d.node_update(r)),
        CtlRequest::GossipStatus(_) => R::of::<ctl::GossipStatusQuery>(d.gossip_status()),
        CtlRequest::NetworkCreate(r) => R::of::<ctl::NetworkCreate>(d.network_create(r)),
        CtlRequest::NetworkLs(r) => R::of::<ctl::NetworkLs>(d.network_ls(&r.filter)),
        CtlRequest::NetworkInspect(r) => {
            R::of::<ctl::NetworkInspect>(d.network_inspect(&r.network))
        }
        CtlRequest::NetworkRm(r) => R::of::<ctl::NetworkRm>(d.network_rm(&r.network)),
        CtlRequest::NetworkConnect(r) => R::of::<ctl::NetworkConnect>(d.network_connect(r)),
        CtlRequest::NetworkDisconnect(r) => {
            R::of::<ctl::NetworkDisconnect>(d.network_disconnect(&r.container, &r.network))
        }
        CtlRequest::ContainerCreate(r) => R::of::<ctl::ContainerCreate>(d.container_create(r)),
        CtlRequest::ContainerStarted(r) => {
            R::of::<ctl::ContainerStarted>(d.container_started(&r.container, r.pid))
        }
        CtlRequest::ContainerLs(r) => R::of::<ctl::ContainerLs>(d.container_ls(r.all)),
        CtlRequest::ContainerInspect(r) => {
            R::of::<ctl::ContainerInspect>(d.container_inspect(&r.container))
        }
        CtlRequest::ContainerRm(r) => {
            R::of::<ctl::ContainerRm>(d.container_rm(&r.container, r.force))
        }
        CtlRequest::ContainerStop(r) => R::of::<ctl::ContainerStop>(d.container_stop(r)),
        CtlRequest::ContainerStart(r) => {
            R::of::<ctl::ContainerStart>(d.container_start(&r.container))
        }
        CtlRequest::ContainerLogs(r) => R::of::<ctl::ContainerLogs>(d.container_logs(r)),
        CtlRequest::ServiceCreate(r) => R::of::<ctl::ServiceCreate>(d.service_create(r)),
        CtlRequest::ServiceLs(_) => R::of::<ctl::ServiceLs>(d.service_ls()),
        CtlRequest::ServiceInspect(r) => {
            R::of::<ctl::ServiceInspect>(d.service_inspect(&r.service))
        }
        CtlRequest::ServicePs(r) => R::of::<ctl::ServicePs>(d.service_ps(&r.service)),
        CtlRequest::ServiceScale(r) => {
            R::of::<ctl::ServiceScale>(d.service_update(ctl::ServiceUpdate {
                service: r.service,
                replicas: Some(r.replicas),
                ..Default::default()
            }))
        }
        CtlRequest::ServiceUpdate(r) => R::of::<ctl::ServiceUpdate>(d.service_update(r)),
        CtlRequest::ServiceRm(r) => R::of::<ctl::ServiceRm>(d.service_rm(&r.service)),
        CtlRequest::ServiceLogs(r) => R::of::<ctl::ServiceLogs>(d.service_logs(r)),
        CtlRequest::Reconcile(_) => R::of::<ctl::Reconcile>(d.reconcile_now()),
        CtlRequest::Trace(r) => R::of::<vxnet_api::trace::SwarmTrace>(d.trace(r)),
    }
}
