//! `swarm init|join|join-token|leave`, the gossip status and an explicit
//! reconciliation.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vxnet_api::ctl::{
    GossipStatus, InitView, JoinTokenView, JoinView, LeaveView, MANAGEMENT_PORT, ReconcileReport,
    SwarmInit, SwarmJoin, SwarmLeave,
};
use vxnet_api::dp::ShowReport;
use vxnet_api::{ApiError, ApiResult};

use crate::cluster::{self, InitRequest};
use crate::daemon::changes::Outcome;
use crate::daemon::dataplane::{DataplaneApi, DataplaneExt, dataplane_vtep};
use crate::daemon::runtime::{LocalNode, Runtime};
use crate::daemon::swarm_state::MgmtState;
use crate::daemon::worker::AgentState;
use crate::daemon::{Daemon, internal, now};
use crate::mgmt::calls::{Assignments, NodeLeave};
use crate::mgmt::{CaPem, JoinParams, SwarmCa};
use crate::model::{
    AddressAlloc, Cluster, Container, DesiredState, JoinTokens, Network, Node, Role,
};
use crate::store::{Store, StoreExt, Txn};

/// How long `swarm leave` waits for this host's containers and dataplane
/// state to be gone.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    fn show_dataplane(&self) -> ApiResult<ShowReport> {
        self.dp().show()
    }

    /// Checks a user-given address: it must be on an interface of this
    /// host, of the dataplane VTEP's family, and (for the data path) be
    /// the VTEP itself when the dataplane is bound to one.
    fn check_addr(&self, what: &str, addr: IpAddr, show: &ShowReport) -> ApiResult<()> {
        let vtep = show.local_vtep;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() && !vtep.is_loopback()
        {
            return Err(ApiError::invalid(format!(
                "--{what} {addr} is not a unicast address another host can reach"
            )));
        }
        if addr.is_ipv4() != vtep.is_ipv4() {
            return Err(ApiError::invalid(format!(
                "--{what} {addr} is {} but the dataplane's VTEP {vtep} is {}; give an address of the same family",
                family(addr),
                family(vtep)
            )));
        }
        let local = (self.local_addrs)();
        if !local.contains(&addr) {
            return Err(ApiError::invalid(format!(
                "--{what} {addr} is not an address of any interface of this host; \
                 give one of: {}",
                local
                    .iter()
                    .filter(|a| a.is_ipv4() == vtep.is_ipv4() && !a.is_loopback())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if what == "data-path-addr" && !vtep.is_unspecified() && addr != vtep {
            return Err(ApiError::invalid(format!(
                "--data-path-addr {addr} differs from the address the dataplane sends VXLAN from ({vtep}); \
                 restart vxnet-dataplane with --local-vtep {addr} or give --data-path-addr {vtep}"
            )));
        }
        Ok(())
    }

    /// The data path and advertise addresses to use: given, else the
    /// daemon's flags, else the dataplane's VTEP; each checked.
    fn addresses(
        &self,
        advertise: Option<IpAddr>,
        data_path: Option<IpAddr>,
        show: &ShowReport,
    ) -> ApiResult<(IpAddr, IpAddr)> {
        let data_path = data_path
            .or(self.cfg.data_path_addr)
            .or(dataplane_vtep(show))
            .or(advertise.or(self.cfg.advertise_addr))
            .ok_or_else(|| {
                ApiError::invalid("cannot tell which address to use: give --advertise-addr")
            })?;
        let advertise = advertise.or(self.cfg.advertise_addr).unwrap_or(data_path);
        self.check_addr("advertise-addr", advertise, show)?;
        self.check_addr("data-path-addr", data_path, show)?;
        Ok((advertise, data_path))
    }

    fn no_swarm_yet(&self) -> ApiResult<()> {
        if self
            .store
            .get::<Cluster>(Cluster::KEY)
            .map_err(internal)?
            .is_some()
        {
            return Err(ApiError::precondition(
                "this node is already part of a swarm; use `vxnet swarm leave` first",
            ));
        }
        Ok(())
    }

    pub(crate) fn swarm_init(&self, r: SwarmInit) -> ApiResult<InitView> {
        let show = self.show_dataplane()?;
        // The swarm's data port is the one the dataplane listens on.
        if r.data_path_port.is_some_and(|p| p != show.port) {
            return Err(ApiError::invalid(format!(
                "the dataplane listens on UDP port {}; restart it with --port {} or give --data-path-port {}",
                show.port,
                r.data_path_port.unwrap_or_default(),
                show.port
            )));
        }
        let (advertise_addr, data_path_addr) =
            self.addresses(r.advertise_addr, r.data_path_addr, &show)?;
        let ca = SwarmCa::generate(now()).map_err(internal)?;
        let _w = self.write();
        self.no_swarm_yet()?;
        let req = InitRequest {
            hostname: self.cfg.hostname.clone(),
            advertise_addr,
            data_path_addr: Some(data_path_addr),
            data_path_port: Some(show.port),
            public_key: show.public_key,
            default_pool: None,
            ca_digest: ca.digest().to_owned(),
        };
        let res = cluster::swarm_init(&self.store, &req, now(), &mut rand_core::OsRng)?;
        let identity = ca
            .issue_identity(&res.node.id, Role::Manager, now())
            .map_err(internal)?;
        let mut txn = Txn::new();
        txn.put(&LocalNode {
            node_id: res.node.id.clone(),
        })
        .map_err(internal)?;
        txn.put(&ca.to_pem()).map_err(internal)?;
        txn.put(&MgmtState {
            identity,
            manager: None,
        })
        .map_err(internal)?;
        self.store.apply(&txn).map_err(internal)?;
        drop(_w);
        tracing::info!(node = %res.node.id, advertise = %advertise_addr, "swarm initialized");
        self.wait_for_mgmt_server();
        Ok(InitView {
            node_id: res.node.id.clone(),
            cluster_id: res.cluster.id.clone(),
            manager_addr: SocketAddr::new(res.node.advertise_addr, MANAGEMENT_PORT),
            worker_token: res.cluster.tokens.worker.clone(),
            manager_token: res.cluster.tokens.manager.clone(),
            ingress_network: res.ingress.name,
        })
    }

    /// Waits (up to 5 s) for the roles loop to have the management server
    /// listening, so workers can join as soon as `swarm init` returns. A
    /// daemon without a roles loop (unit tests) does not wait.
    fn wait_for_mgmt_server(&self) {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.roles_running.load(Ordering::SeqCst)
            && !self.mgmt_serving.load(Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub(crate) fn join_token(&self, r: vxnet_api::ctl::JoinToken) -> ApiResult<JoinTokenView> {
        self.manager_only()?;
        let _w = self.write();
        let c = cluster::cluster(&self.store)?;
        let pem = self
            .store
            .get::<CaPem>(CaPem::KEY)
            .map_err(internal)?
            .ok_or_else(|| ApiError::internal("this manager has no CA"))?;
        let digest = SwarmCa::from_pem(&pem)
            .map_err(internal)?
            .digest()
            .to_owned();
        let token = if r.rotate {
            cluster::rotate_join_token(&self.store, r.role, &digest, now(), &mut rand_core::OsRng)?
        } else {
            match r.role {
                Role::Worker => c.tokens.worker.clone(),
                Role::Manager => c.tokens.manager.clone(),
            }
        };
        Ok(JoinTokenView {
            role: r.role,
            token,
            manager_addr: self.manager_addr()?,
        })
    }

    /// `vxnet swarm join`: joins through a manager over mutual TLS (no
    /// lock held meanwhile) and keeps what it returns; the roles thread
    /// then starts gossip with the manager as seed and the agent.
    pub(crate) fn swarm_join(&self, r: SwarmJoin) -> ApiResult<JoinView> {
        self.no_swarm_yet()?;
        let manager = parse_manager(&r.remote)?;
        let show = self.show_dataplane()?;
        let (advertise_addr, data_path_addr) =
            self.addresses(r.advertise_addr, r.data_path_addr, &show)?;
        let params = JoinParams {
            hostname: self.cfg.hostname.clone(),
            advertise_addr: Some(advertise_addr),
            data_path_addr: Some(data_path_addr),
            public_key: show.public_key,
        };
        let j = self.link.join(manager, &r.token, &params)?;
        if j.settings.data_path_port != show.port {
            tracing::warn!(
                swarm = j.settings.data_path_port,
                dataplane = show.port,
                "the swarm's data path port differs from the dataplane's"
            );
        }
        let cluster = Cluster {
            id: j.settings.cluster_id.clone(),
            created: now(),
            gossip_keys: j.gossip_keys.clone(),
            // Tokens are the managers' secret; a worker keeps none.
            tokens: JoinTokens {
                worker: String::new(),
                worker_rotated: 0,
                manager: String::new(),
                manager_rotated: 0,
            },
            default_pool: j.settings.default_pool,
            data_path_port: j.settings.data_path_port,
        };
        let role = j.node.role;
        let node_id = j.node.id.clone();
        {
            let _w = self.write();
            self.no_swarm_yet()?;
            let mut txn = Txn::new();
            txn.put(&cluster).map_err(internal)?;
            txn.put(&j.node).map_err(internal)?;
            txn.put(&LocalNode {
                node_id: node_id.clone(),
            })
            .map_err(internal)?;
            txn.put(&MgmtState {
                identity: j.identity,
                manager: Some(manager),
            })
            .map_err(internal)?;
            self.store.apply(&txn).map_err(internal)?;
        }
        tracing::info!(node = %node_id, manager = %manager, role = ?role, "joined the swarm");
        // The first assignments now rather than from the agent's first
        // round, so `network ls` shows ingress as soon as the join
        // returns (as Docker's does); the agent keeps them up to date.
        let first = self
            .manager_call(Assignments {
                since: 0,
                wait_ms: 0,
            })
            .and_then(|set| self.apply_assignments(&set));
        if let Err(e) = first {
            tracing::warn!(error = %e, "no assignments from the manager yet");
        }
        Ok(JoinView { node_id, role })
    }

    /// `vxnet swarm leave`: refused while containers run here unless
    /// forced, which removes them; a worker tells its manager (which marks
    /// it Down and forgets its containers); gossip says goodbye; then every
    /// record goes and the reconciler takes everything the swarm put into
    /// the dataplane out again.
    pub(crate) fn swarm_leave(&self, r: SwarmLeave) -> ApiResult<LeaveView> {
        let me = self.local_node()?;
        let manager = self.is_manager();
        let mine: Vec<Container> = crate::containers::list_containers(&self.store, Some(&me))?
            .into_iter()
            .filter(|c| c.desired != DesiredState::Removed)
            .collect();
        if !r.force && !mine.is_empty() {
            return Err(ApiError::precondition(format!(
                "containers run on this node: {}; remove them first, or use `vxnet swarm leave --force` to remove them too",
                names(&mine)
            )));
        }
        if manager && !r.force {
            return Err(ApiError::precondition(
                "this node is the swarm's only manager: leaving removes the swarm and its networks; \
                 use `vxnet swarm leave --force` to do it anyway",
            ));
        }
        // Until this returns, the roles loop keeps gossip stopped.
        self.leaving.store(true, Ordering::SeqCst);
        let _leaving = Leaving(&self.leaving);
        if !manager {
            if let Err(e) = self.manager_call(NodeLeave {}) {
                if !r.force {
                    return Err(e.context(
                        "cannot tell the manager this node leaves; use `vxnet swarm leave --force` to leave anyway",
                    ));
                }
                tracing::warn!(error = %e, "left without telling the manager");
            }
        }
        // This host's containers go first, while the records that say what
        // to remove still exist.
        let generation = {
            let _w = self.write();
            let mut txn = Txn::new();
            for c in &mine {
                let mut rt = self
                    .store
                    .get::<Runtime>(&c.id)
                    .map_err(internal)?
                    .unwrap_or_else(|| Runtime {
                        container_id: c.id.clone(),
                        netns: c
                            .netns
                            .clone()
                            .unwrap_or_else(|| format!("{}{}", self.cfg.netns_prefix, c.name)),
                        ..Runtime::default()
                    });
                rt.desired_override = Some(DesiredState::Removed);
                txn.put(&rt).map_err(internal)?;
            }
            if !txn.is_empty() {
                self.store.apply(&txn).map_err(internal)?;
            }
            self.changes.generation()
        };
        for c in &mine {
            if let Some(Outcome::Failed(e)) =
                self.wait_realized(generation, &c.id, LEAVE_TIMEOUT)?
            {
                return Err(ApiError::internal(format!(
                    "cannot remove container {}: {e}; nothing else was changed",
                    c.name
                )));
            }
        }
        if let Some(g) = self.gossip().take() {
            g.stop(true);
        }
        let generation = {
            let _w = self.write();
            let mut txn = Txn::new();
            self.delete_all::<Cluster>(&mut txn)?;
            self.delete_all::<Node>(&mut txn)?;
            self.delete_all::<Network>(&mut txn)?;
            self.delete_all::<AddressAlloc>(&mut txn)?;
            self.delete_all::<Container>(&mut txn)?;
            self.delete_all::<Runtime>(&mut txn)?;
            self.delete_all::<LocalNode>(&mut txn)?;
            self.delete_all::<MgmtState>(&mut txn)?;
            self.delete_all::<CaPem>(&mut txn)?;
            self.delete_all::<AgentState>(&mut txn)?;
            self.store.apply(&txn).map_err(internal)?;
            self.changes.generation()
        };
        // The dataplane is clean when this returns.
        self.wait_realized(generation, "", LEAVE_TIMEOUT)?;
        tracing::info!(removed = mine.len(), "left the swarm");
        Ok(LeaveView {
            removed_containers: mine.into_iter().map(|c| c.name).collect(),
        })
    }

    fn wait_realized(
        &self,
        generation: u64,
        container: &str,
        timeout: Duration,
    ) -> ApiResult<Option<Outcome>> {
        self.realized.wait(generation, container, timeout).map_err(
            |crate::daemon::changes::TimedOut| {
                ApiError::new(
                    vxnet_api::ErrorCode::Timeout,
                    format!(
                        "this host did not finish within {} s; see the daemon's log",
                        timeout.as_secs()
                    ),
                )
            },
        )
    }

    pub(crate) fn gossip_status(&self) -> ApiResult<GossipStatus> {
        self.gossip()
            .as_ref()
            .map(|g| g.status())
            .ok_or_else(|| ApiError::precondition("gossip is not running on this node"))
    }

    /// Runs a pass now and answers what it did.
    pub(crate) fn reconcile_now(&self) -> ApiResult<ReconcileReport> {
        let g = self.changes.bump();
        self.wait_realized(g, "", self.cfg.realize_timeout)?;
        Ok(self.realized.last_report())
    }
}

/// Clears the `leaving` flag however `swarm leave` ends.
struct Leaving<'a>(&'a AtomicBool);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn names(cs: &[Container]) -> String {
    cs.iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `MANAGER[:PORT]` of `swarm join` (port 2377 unless given).
fn parse_manager(remote: &str) -> ApiResult<SocketAddr> {
    if let Ok(a) = remote.parse::<SocketAddr>() {
        return Ok(a);
    }
    remote
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, MANAGEMENT_PORT))
        .map_err(|_| {
            ApiError::invalid(format!(
                "invalid manager address {remote}: give IP or IP:PORT, e.g. 192.0.2.1:2377"
            ))
        })
}
