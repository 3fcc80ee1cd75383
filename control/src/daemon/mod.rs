//! The control daemon's request handling: it owns the store, the
//! connection to the local dataplane and the host (namespaces, processes),
//! and turns each [`CtlRequest`] into store operations (the rules live in
//! [`crate::networks`], [`crate::containers`], [`crate::cluster`]) followed
//! by the dataplane calls that make them real.
//!
//! Order of effects: the store is written first (it validates and
//! allocates), then the host and the dataplane are changed; if those fail,
//! the store change is undone, so a refused request changes nothing. What
//! the dataplane lost anyway (a dataplane restart) is put back by
//! [`reconcile`], which compares the store with the dataplane and fixes
//! only the difference.
//!
//! Everything runs under one lock: the store's read-modify-write
//! sequences need it, and requests are rare next to packets.
//!
//! The management plane (join over mutual TLS on 2377) is wired in by
//! [`swarm`]: `swarm init` makes the swarm CA, `swarm join` calls a
//! manager through a [`swarm::ManagerLink`], and a worker's containers get
//! their addresses from the manager (see [`swarm`] for who writes what).

pub mod api;
pub mod client;
pub mod dataplane;
pub mod gossip;
pub mod host;
pub mod keys;
pub mod reconcile;
pub mod runtime;
pub mod swarm;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::Serialize;
use vxnet_dataplane::api::{AttachRequest, AttachTarget, DetachTarget, IpNet, Request, Response};
use vxnet_proto::wire::Vni;

use self::api::{
    ContainerView, CtlRequest, InitView, JoinTokenView, MANAGEMENT_PORT, NetworkInspectView,
    NodeView, ReconcileReport, container_view,
};
use self::dataplane::{DataplaneApi, DataplaneExt, dataplane_vtep};
use self::gossip::GossipCmd;
use self::host::Host;
use self::runtime::{LocalNode, Runtime};
use self::swarm::{
    ConnectParams, DisconnectParams, METHOD_CONTAINER_CREATE, METHOD_CONTAINER_REMOVE,
    METHOD_NETWORK_CONNECT, METHOD_NETWORK_DISCONNECT, ManagerLink, MgmtState, RemoteContainer,
    RemoveParams,
};
use crate::cluster::{self, InitRequest};
use crate::containers::{self, CreateContainer, NetworkRequest};
use crate::gossip::{KeyId, Keyring, NodeIdentity};
use crate::mgmt::{CaPem, JoinParams, JoinRequest, JoinResponse, RpcError, SwarmCa};
use crate::model::{AddressAlloc, Cluster, Container, JoinTokens, Network, Node, NodeStatus, Role};
use crate::networks;
use crate::store::{Record, Store, StoreExt, Txn};

/// What the daemon knows about its host from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub hostname: String,
    /// `--advertise-addr` of the daemon (a request's own wins).
    pub advertise_addr: Option<IpAddr>,
    /// `--data-path-addr` of the daemon (a request's own wins).
    pub data_path_addr: Option<IpAddr>,
    /// Digest of the management CA's certificate, embedded in join tokens;
    /// replaced by the digest of the CA `swarm init` makes.
    pub ca_digest: String,
    /// Where detached containers' output goes (one file per container).
    pub log_dir: PathBuf,
    /// Prepended to a container's name to name its network namespace
    /// (namespaces are host-wide; the testbed runs several hosts on one
    /// machine). Empty by default.
    pub netns_prefix: String,
}

/// The daemon: one lock around everything it owns.
pub struct Daemon<S, D, H> {
    inner: Mutex<Inner<S, D, H>>,
}

pub(crate) struct Inner<S, D, H> {
    pub(crate) store: S,
    pub(crate) dp: D,
    pub(crate) host: H,
    pub(crate) cfg: Config,
    /// Tells the gossip driver about local endpoints, while one runs.
    pub(crate) announce: Option<Announcer>,
    /// How this daemon reaches managers (`swarm join`, a worker's
    /// containers); `None`: single-host only.
    pub(crate) link: Option<Arc<dyn ManagerLink>>,
    /// The running gossip driver's status (keyring, counters).
    pub(crate) gossip_status: Option<self::gossip::StatusCell>,
    /// Seconds between gossip key rotations (a manager's).
    pub(crate) key_rotation: u64,
    /// What each node last reported of its gossip keyring (a manager's).
    pub(crate) key_acks: self::keys::KeyAcks,
}

/// This worker's manager and how to reach it (see
/// [`Inner::manager_target`]).
pub(crate) struct ManagerTarget {
    link: Arc<dyn ManagerLink>,
    manager: SocketAddr,
    identity: crate::mgmt::NodeIdentity,
}

impl ManagerTarget {
    pub(crate) fn call(&self, method: &str, params: serde_json::Value) -> R<serde_json::Value> {
        self.link.call(self.manager, &self.identity, method, params)
    }
}

/// Where the daemon sends its local endpoints' comings and goings.
pub type Announcer = Box<dyn Fn(GossipCmd) + Send + Sync>;

type R<T> = Result<T, String>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn value(v: impl Serialize) -> R<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| format!("internal error encoding the result: {e}"))
}

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn vni(n: &Network) -> R<Vni> {
    Vni::new(n.vni).ok_or_else(|| format!("network {} has an invalid VNI {}", n.name, n.vni))
}

/// The VNI of network `network_id` in `store`, if it is known and valid.
fn network_vni_in(store: &impl Store, network_id: &str) -> Option<Vni> {
    store
        .get::<Network>(network_id)
        .ok()
        .flatten()
        .and_then(|n| vni(&n).ok())
}

impl<S, D, H> Daemon<S, D, H>
where
    S: Store + Send,
    D: DataplaneApi,
    H: Host,
{
    pub fn new(store: S, dp: D, host: H, cfg: Config) -> Self {
        Self {
            inner: Mutex::new(Inner {
                store,
                dp,
                host,
                cfg,
                announce: None,
                link: None,
                gossip_status: None,
                key_rotation: cluster::GOSSIP_KEY_ROTATION_SECS,
                key_acks: Default::default(),
            }),
        }
    }

    /// Starts (`Some`) or stops (`None`) telling a gossip driver about
    /// local endpoints.
    pub fn set_announcer(&self, a: Option<Announcer>) {
        self.lock().announce = a;
    }

    /// Sets how the daemon reaches managers over the management plane.
    pub fn set_manager_link(&self, link: Arc<dyn ManagerLink>) {
        self.lock().link = Some(link);
    }

    /// This node's management identity, and its manager's address on a
    /// worker; `None` before `swarm init`/`join`.
    pub fn mgmt_state(&self) -> Option<MgmtState> {
        let g = self.lock();
        g.local_node().ok()?;
        g.store.get::<MgmtState>(MgmtState::KEY).ok().flatten()
    }

    /// The manager's side of a join (the mgmt server's handler).
    pub fn admit(&self, req: &JoinRequest, from: SocketAddr) -> Result<JoinResponse, RpcError> {
        let g = self.lock();
        let fail = |e: String| RpcError::new(crate::mgmt::ErrorCode::Failed, e);
        let pem = g
            .store
            .get::<CaPem>(CaPem::KEY)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("this node is not a swarm manager".into()))?;
        let ca = SwarmCa::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
        let r = crate::mgmt::admit(&g.store, &ca, req, from, now(), &mut rand_core::OsRng);
        if let Ok(j) = &r {
            tracing::info!(node = %j.node.id, hostname = %j.node.hostname, role = ?j.node.role, "node joined");
        }
        r
    }

    /// The swarm's nodes (a manager's store).
    pub fn nodes(&self) -> Result<Vec<Node>, String> {
        cluster::list_nodes(&self.lock().store, None).map_err(s)
    }

    /// Records a container for a remote node and allocates its addresses
    /// (a worker's `container run`, on the manager).
    pub fn create_for_node(&self, req: &containers::CreateContainer) -> R<RemoteContainer> {
        let g = self.lock();
        let c =
            containers::create_container(&g.store, req, now(), &mut rand_core::OsRng).map_err(s)?;
        let networks = g.nets_of(&c)?;
        Ok(RemoteContainer {
            container: c,
            networks,
        })
    }

    /// Forgets a remote node's container, releasing its addresses.
    pub fn remove_for_node(&self, node: &str, container_id: &str) -> R<()> {
        let g = self.lock();
        let Some(c) = g.store.get::<Container>(container_id).map_err(s)? else {
            // Already gone: removal is idempotent.
            return Ok(());
        };
        if c.node != node {
            return Err(format!("container {} does not run on node {node}", c.name));
        }
        containers::remove_container(&g.store, &c.id).map_err(s)?;
        Ok(())
    }

    /// Attaches a remote node's container to one more network (a worker's
    /// `network connect`, on the manager).
    pub fn connect_for_node(&self, node: &str, p: &ConnectParams) -> R<RemoteContainer> {
        let g = self.lock();
        let c = g.node_container(node, &p.container_id)?;
        let c = containers::connect(&g.store, &c.id, &p.network).map_err(s)?;
        let networks = g.nets_of(&c)?;
        Ok(RemoteContainer {
            container: c,
            networks,
        })
    }

    /// Detaches a remote node's container from a network, releasing its
    /// addresses there (a worker's `network disconnect`, on the manager).
    pub fn disconnect_for_node(&self, node: &str, p: &DisconnectParams) -> R<Container> {
        let g = self.lock();
        let c = g.node_container(node, &p.container_id)?;
        containers::disconnect(&g.store, &c.id, &p.network_id).map_err(s)
    }

    /// Records what gossip says of a member (managers keep node status).
    pub fn set_member_status(&self, node_id: &str, up: bool) {
        let g = self.lock();
        let Ok(me) = g.local_node() else { return };
        if node_id == me || !g.is_manager() {
            return;
        }
        let status = if up {
            NodeStatus::Ready
        } else {
            NodeStatus::Down
        };
        match cluster::set_node_status(&g.store, node_id, status) {
            Ok(_) => tracing::info!(node = %node_id, status = ?status, "node status"),
            Err(e) => tracing::debug!(node = %node_id, error = %e, "node status"),
        }
    }

    /// Announcements of every local endpoint, for a gossip driver that
    /// just started.
    pub fn local_endpoints(&self) -> Vec<GossipCmd> {
        let g = self.lock();
        let Ok(me) = g.local_node() else {
            return Vec::new();
        };
        containers::list_containers(&g.store, Some(&me))
            .unwrap_or_default()
            .iter()
            .flat_map(announcements)
            .collect()
    }

    /// The VNI of a network id, if the store knows the network.
    pub fn network_vni(&self, network_id: &str) -> Option<Vni> {
        network_vni_in(&self.lock().store, network_id)
    }

    /// Where a joining node's gossip starts: its manager's gossip port.
    pub fn gossip_seed(&self) -> Option<SocketAddr> {
        let state = self.mgmt_state()?;
        if let Some(m) = state.manager {
            return Some(SocketAddr::new(m.ip(), self::gossip::GOSSIP_PORT));
        }
        // The manager itself: any other node it knows, so that a manager
        // that comes back pulls the swarm's state (and rejoins) too.
        let g = self.lock();
        let me = g.local_node().ok()?;
        cluster::list_nodes(&g.store, None)
            .ok()?
            .into_iter()
            .find(|n| n.id != me)
            .map(|n| SocketAddr::new(n.advertise_addr, self::gossip::GOSSIP_PORT))
    }

    /// This node's gossip identity and the cluster's keyring, once the
    /// swarm exists; `generation` should grow with every daemon start.
    pub fn gossip_setup(&self, generation: u32) -> Option<(NodeIdentity, Keyring)> {
        let g = self.lock();
        let me = g.local_node().ok()?;
        let node = g.store.get::<Node>(&me).ok().flatten()?;
        let c = cluster::cluster(&g.store).ok()?;
        let public_key: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(&node.public_key)
            .ok()?
            .try_into()
            .ok()?;
        let mut ring = Keyring::new();
        for k in &c.gossip_keys {
            ring.install_key(k.to_keyring()?).ok()?;
        }
        ring.set_primary(KeyId(c.primary_gossip_key()?.id)).ok()?;
        Some((
            NodeIdentity {
                node_id: node.id,
                gossip_addr: SocketAddr::new(node.advertise_addr, self::gossip::GOSSIP_PORT),
                data_addr: node.data_path_addr,
                data_port: node.data_path_port,
                public_key,
                generation,
            },
            ring,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S, D, H>> {
        // A panicking handler leaves the store consistent (transactions are
        // atomic), so the lock stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request.
    pub fn handle(&self, req: CtlRequest) -> Response {
        let op = format!("{req:?}");
        match self.lock().handle(req) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => {
                tracing::info!(request = %op, error = %e, "request refused");
                Response::error(e)
            }
        }
    }

    /// Compares the dataplane with the store and fixes the difference.
    pub fn reconcile(&self) -> ReconcileReport {
        self.lock().reconcile()
    }
}

impl<S, D, H> Daemon<S, D, H>
where
    S: Store + Clone + Send + Sync + 'static,
    D: DataplaneApi + Send + 'static,
    H: Host + Send + 'static,
{
    /// What a gossip driver asks of the daemon: the VNI of a network and
    /// where member events go. Neither waits for the daemon's lock, which
    /// a worker holds for as long as a call to its manager takes (up to the
    /// call's timeout when the manager is down): a driver that waited would
    /// stop answering probes and get this node declared dead exactly when
    /// failure detection matters. VNIs are read from the store directly
    /// (reads do not block behind writes); member events are queued to a
    /// thread of their own, applied in order, which ends with the driver.
    pub fn gossip_hooks(self: &Arc<Self>) -> (self::gossip::VniOf, self::gossip::MemberHook) {
        let reader = self.lock().store.clone();
        let vni_of: self::gossip::VniOf =
            Arc::new(move |network_id: &str| network_vni_in(&reader, network_id));
        let (tx, rx) = std::sync::mpsc::channel::<(String, bool)>();
        let daemon = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("vxnet-members".into())
            .spawn(move || {
                for (node, up) in rx {
                    daemon.set_member_status(&node, up);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the member-status thread; node status will not follow gossip");
        }
        let hook: self::gossip::MemberHook = Arc::new(move |ev: &crate::gossip::MemberEvent| {
            use crate::gossip::MemberEvent;
            let update = match ev {
                MemberEvent::Up(id) => Some((id.node_id.clone(), true)),
                MemberEvent::Updated { new, .. } => Some((new.node_id.clone(), true)),
                MemberEvent::Down(id) => Some((id.node_id.clone(), false)),
                _ => None,
            };
            if let Some(u) = update {
                // Only fails once the thread is gone; then nobody listens.
                let _ = tx.send(u);
            }
        });
        (vni_of, hook)
    }
}

impl<S, D, H> Inner<S, D, H>
where
    S: Store,
    D: DataplaneApi,
    H: Host,
{
    fn handle(&mut self, req: CtlRequest) -> R<serde_json::Value> {
        match req {
            CtlRequest::SwarmInit {
                advertise_addr,
                data_path_addr,
                data_path_port,
            } => value(self.swarm_init(advertise_addr, data_path_addr, data_path_port)?),
            CtlRequest::SwarmJoin {
                token,
                remote,
                advertise_addr,
                data_path_addr,
            } => value(self.swarm_join(&token, &remote, advertise_addr, data_path_addr)?),
            CtlRequest::JoinToken { role, rotate } => {
                self.manager_only()?;
                value(self.join_token(role, rotate)?)
            }
            CtlRequest::SwarmLeave { force } => value(self.swarm_leave(force)?),
            CtlRequest::GossipStatus => value(
                self.gossip_status_now()
                    .ok_or_else(|| "gossip is not running on this node".to_owned())?,
            ),
            CtlRequest::NodeLs => {
                self.manager_only()?;
                value(self.node_ls()?)
            }
            CtlRequest::NodeInspect { node } => {
                self.manager_only()?;
                let n = cluster::resolve_node(&self.store, &node).map_err(s)?;
                value(NodeView {
                    is_self: n.id == self.local_node()?,
                    node: n,
                })
            }
            CtlRequest::NodeRm { node, force } => {
                self.manager_only()?;
                value(self.node_rm(&node, force)?)
            }
            CtlRequest::NodeUpdate { node, availability } => {
                self.manager_only()?;
                value(cluster::set_node_availability(&self.store, &node, availability).map_err(s)?)
            }
            CtlRequest::NetworkCreate(c) => {
                self.manager_only()?;
                value(
                    networks::create_network(&self.store, &c, now(), &mut rand_core::OsRng)
                        .map_err(s)?,
                )
            }
            CtlRequest::NetworkLs { filter } => {
                value(networks::list_networks(&self.store, &filter).map_err(s)?)
            }
            CtlRequest::NetworkInspect { network } => value(NetworkInspectView {
                details: networks::inspect_network(&self.store, &network).map_err(s)?,
                self_node: self.local_node().ok(),
            }),
            CtlRequest::NetworkRm { network } => {
                self.manager_only()?;
                value(self.network_rm(&network)?)
            }
            CtlRequest::NetworkConnect {
                container,
                network,
                netns,
                veth,
            } => {
                let v = match external_target(netns, veth)? {
                    Some(ext) => self.connect_external(&container, &network, ext)?,
                    None => self.network_connect(&container, &network)?,
                };
                value(v)
            }
            CtlRequest::NetworkDisconnect { container, network } => {
                value(self.network_disconnect(&container, &network)?)
            }
            CtlRequest::ContainerCreate { name, networks } => {
                value(self.container_create(&name, networks)?)
            }
            CtlRequest::ContainerStarted { container, pid } => {
                value(self.container_started(&container, pid)?)
            }
            CtlRequest::ContainerLs => value(self.container_ls()?),
            CtlRequest::ContainerInspect { container } => {
                let c = containers::resolve_container(&self.store, &container).map_err(s)?;
                value(self.view(&c)?)
            }
            CtlRequest::ContainerRm { container, force } => {
                value(self.container_rm(&container, force)?)
            }
            CtlRequest::Reconcile => value(self.reconcile()),
        }
    }

    fn tell(&self, cmds: Vec<GossipCmd>) {
        if let Some(a) = &self.announce {
            for c in cmds {
                a(c);
            }
        }
    }

    /// Whether this node is a manager (true before any swarm: the
    /// single-host daemon keeps its own state).
    pub(crate) fn is_manager(&self) -> bool {
        let Ok(me) = self.local_node() else {
            return true;
        };
        !matches!(self.store.get::<Node>(&me), Ok(Some(n)) if n.role == Role::Worker)
    }

    fn manager_only(&self) -> R<()> {
        if self.is_manager() {
            Ok(())
        } else {
            Err(
                "this node is not a swarm manager; run this command on a manager \
                 (worker nodes cannot be used to view or modify cluster state)"
                    .into(),
            )
        }
    }

    /// A call to this worker's manager over the management plane.
    fn manager_call(&self, method: &str, params: serde_json::Value) -> R<serde_json::Value> {
        self.manager_target()?.call(method, params)
    }

    /// Everything a call to the manager needs, so that a caller can make
    /// it after letting go of the daemon's lock.
    pub(crate) fn manager_target(&self) -> R<ManagerTarget> {
        let st = self
            .store
            .get::<MgmtState>(MgmtState::KEY)
            .map_err(s)?
            .ok_or_else(|| "this node has no management identity; rejoin the swarm".to_owned())?;
        let manager = st
            .manager
            .ok_or_else(|| "this node does not know its manager".to_owned())?;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| "this daemon cannot reach managers".to_owned())?;
        Ok(ManagerTarget {
            link: Arc::clone(link),
            manager,
            identity: st.identity,
        })
    }

    /// The node this daemon runs as; an error before `swarm init`.
    pub(crate) fn local_node(&self) -> R<String> {
        cluster::cluster(&self.store).map_err(s)?;
        self.store
            .get::<LocalNode>(LocalNode::KEY)
            .map_err(s)?
            .map(|l| l.node_id)
            .ok_or_else(|| "this daemon has no node record; run `vxnet swarm init`".to_owned())
    }

    fn manager_addr(&self) -> R<SocketAddr> {
        let id = self.local_node()?;
        let n = self
            .store
            .get::<Node>(&id)
            .map_err(s)?
            .ok_or_else(|| format!("node {id} is missing from the store"))?;
        Ok(SocketAddr::new(n.advertise_addr, MANAGEMENT_PORT))
    }

    fn swarm_init(
        &mut self,
        advertise_addr: Option<IpAddr>,
        data_path_addr: Option<IpAddr>,
        data_path_port: Option<u16>,
    ) -> R<InitView> {
        if self
            .store
            .get::<Cluster>(Cluster::KEY)
            .map_err(s)?
            .is_some()
        {
            return Err(s(crate::ControlError::AlreadyInitialized));
        }
        let show = self.dp.show()?;
        let public_key = show.public_key.clone().ok_or_else(|| {
            "the dataplane reports no public key; upgrade vxnet-dataplane".to_owned()
        })?;
        let dp_vtep = dataplane_vtep(&show);
        // The swarm's data port is the one the dataplane listens on.
        if data_path_port.is_some_and(|p| p != show.port) {
            return Err(format!(
                "the dataplane listens on UDP port {}; restart it with --port {} or give --data-path-port {}",
                show.port,
                data_path_port.unwrap_or_default(),
                show.port
            ));
        }
        let data_path_port = Some(show.port);
        let data_path_addr = data_path_addr.or(self.cfg.data_path_addr).or(dp_vtep);
        let advertise_addr = advertise_addr
            .or(self.cfg.advertise_addr)
            .or(data_path_addr)
            .ok_or_else(|| {
                "cannot tell which address to advertise: give --advertise-addr".to_owned()
            })?;
        let ca = SwarmCa::generate(now()).map_err(s)?;
        let req = InitRequest {
            hostname: self.cfg.hostname.clone(),
            advertise_addr,
            data_path_addr,
            data_path_port,
            public_key,
            default_pool: None,
            ca_digest: ca.digest().to_owned(),
        };
        let r = cluster::swarm_init(&self.store, &req, now(), &mut rand_core::OsRng).map_err(s)?;
        let identity = ca
            .issue_identity(&r.node.id, Role::Manager, now())
            .map_err(s)?;
        let mut txn = Txn::new();
        txn.put(&LocalNode {
            node_id: r.node.id.clone(),
        })
        .map_err(s)?;
        txn.put(&ca.to_pem()).map_err(s)?;
        txn.put(&MgmtState {
            identity,
            manager: None,
        })
        .map_err(s)?;
        self.store.apply(&txn).map_err(s)?;
        self.cfg.ca_digest = ca.digest().to_owned();
        Ok(InitView {
            node_id: r.node.id.clone(),
            cluster_id: r.cluster.id.clone(),
            manager_addr: SocketAddr::new(r.node.advertise_addr, MANAGEMENT_PORT),
            worker_token: r.cluster.tokens.worker.clone(),
            manager_token: r.cluster.tokens.manager.clone(),
            ingress_network: r.ingress.name,
        })
    }

    fn join_token(&mut self, role: Role, rotate: bool) -> R<JoinTokenView> {
        let c = cluster::cluster(&self.store).map_err(s)?;
        if let Some(pem) = self.store.get::<CaPem>(CaPem::KEY).map_err(s)? {
            self.cfg.ca_digest = SwarmCa::from_pem(&pem).map_err(s)?.digest().to_owned();
        }
        let token = if rotate {
            cluster::rotate_join_token(
                &self.store,
                role,
                &self.cfg.ca_digest,
                now(),
                &mut rand_core::OsRng,
            )
            .map_err(s)?
        } else {
            match role {
                Role::Worker => c.tokens.worker.clone(),
                Role::Manager => c.tokens.manager.clone(),
            }
        };
        Ok(JoinTokenView {
            role,
            token,
            manager_addr: self.manager_addr()?,
        })
    }

    /// `vxnet swarm join`: joins through a manager over mutual TLS and keeps
    /// what it returns; gossip then starts with the manager as seed.
    fn swarm_join(
        &mut self,
        token: &str,
        remote: &str,
        advertise_addr: Option<IpAddr>,
        data_path_addr: Option<IpAddr>,
    ) -> R<String> {
        if self
            .store
            .get::<Cluster>(Cluster::KEY)
            .map_err(s)?
            .is_some()
        {
            return Err(
                "this node is already part of a swarm; use `vxnet swarm leave` first".into(),
            );
        }
        let manager = parse_manager(remote)?;
        let show = self.dp.show()?;
        let public_key = show.public_key.clone().ok_or_else(|| {
            "the dataplane reports no public key; upgrade vxnet-dataplane".to_owned()
        })?;
        let data_path_addr = data_path_addr
            .or(self.cfg.data_path_addr)
            .or(dataplane_vtep(&show));
        let advertise_addr = advertise_addr
            .or(self.cfg.advertise_addr)
            .or(data_path_addr);
        let link = self
            .link
            .clone()
            .ok_or_else(|| "this daemon cannot reach managers".to_owned())?;
        let params = JoinParams {
            hostname: self.cfg.hostname.clone(),
            advertise_addr,
            data_path_addr,
            public_key,
        };
        let j = link.join(manager, token, &params)?;
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
        let mut txn = Txn::new();
        txn.put(&cluster).map_err(s)?;
        txn.put(&j.node).map_err(s)?;
        txn.put(&LocalNode {
            node_id: node_id.clone(),
        })
        .map_err(s)?;
        txn.put(&MgmtState {
            identity: j.identity,
            manager: Some(manager),
        })
        .map_err(s)?;
        self.store.apply(&txn).map_err(s)?;
        tracing::info!(node = %node_id, manager = %manager, role = ?role, "joined the swarm");
        Ok(match role {
            Role::Worker => "This node joined a swarm as a worker.".into(),
            Role::Manager => "This node joined a swarm as a manager.".into(),
        })
    }

    fn swarm_leave(&mut self, force: bool) -> R<String> {
        cluster::cluster(&self.store).map_err(s)?;
        if !force && self.is_manager() {
            return Err(
                "this node is the swarm's only manager: leaving removes the swarm, \
                 its networks and this host's containers; use `vxnet swarm leave --force` \
                 to do it anyway"
                    .into(),
            );
        }
        // Containers first (processes, namespaces, endpoints), then every
        // record in one transaction.
        for c in self.store.list::<Container>().map_err(s)? {
            self.container_rm(&c.id, true)?;
        }
        let nets = self.store.list::<Network>().map_err(s)?;
        for n in &nets {
            if let Ok(v) = vni(n) {
                let _ = self.dp.command(&Request::NetworkDel { vni: v });
            }
        }
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
        self.store.apply(&txn).map_err(s)?;
        Ok("Node left the swarm.".into())
    }

    fn delete_all<T: Record>(&self, txn: &mut Txn) -> R<()> {
        for (k, _) in self.store.scan(T::TABLE).map_err(s)? {
            txn.delete::<T>(&k);
        }
        Ok(())
    }

    fn node_ls(&self) -> R<Vec<NodeView>> {
        let me = self.local_node()?;
        Ok(cluster::list_nodes(&self.store, None)
            .map_err(s)?
            .into_iter()
            .map(|n| NodeView {
                is_self: n.id == me,
                node: n,
            })
            .collect())
    }

    /// `node rm`: the store forgets the node and its containers (releasing
    /// their addresses); their endpoints leave the other dataplanes with
    /// the node's gossip membership.
    fn node_rm(&mut self, query: &str, force: bool) -> R<Node> {
        let me = self.local_node()?;
        let n = cluster::remove_node(&self.store, query, force, &me).map_err(s)?;
        tracing::info!(node = %n.id, hostname = %n.hostname, force, "node removed");
        Ok(n)
    }

    fn network_rm(&mut self, query: &str) -> R<Network> {
        let n = networks::remove_network(&self.store, query).map_err(s)?;
        // Declared only while something here used it; usually gone already.
        if let Ok(v) = vni(&n) {
            let _ = self.dp.command(&Request::NetworkDel { vni: v });
        }
        Ok(n)
    }

    fn runtime(&self, c: &Container) -> R<Runtime> {
        Ok(self
            .store
            .get::<Runtime>(&c.id)
            .map_err(s)?
            .unwrap_or_else(|| default_runtime(c)))
    }

    fn status(&self, rt: &Runtime) -> &'static str {
        if rt.external {
            return "external";
        }
        match rt.pid {
            None => "created",
            Some(p) if self.host.process_alive(p) => "running",
            Some(_) => "exited",
        }
    }

    fn view(&self, c: &Container) -> R<ContainerView> {
        let nets = self.store.list::<Network>().map_err(s)?;
        let rt = self.runtime(c)?;
        Ok(container_view(c, &nets, &rt, self.status(&rt)))
    }

    fn container_ls(&self) -> R<Vec<ContainerView>> {
        let me = self.local_node()?;
        containers::list_containers(&self.store, Some(&me))
            .map_err(s)?
            .iter()
            .map(|c| self.view(c))
            .collect()
    }

    /// Declares the network and attaches the container's interface for it.
    pub(crate) fn attach(
        &mut self,
        netns: &str,
        ifname: &str,
        net: &Network,
        c: &Container,
        primary: bool,
    ) -> R<()> {
        self.dp.command(&Request::NetworkAdd {
            vni: vni(net)?,
            encrypted: net.encrypted,
        })?;
        self.attach_endpoint(netns, ifname, net, c, primary)
    }

    /// Attaches the container's interface for `net` (declared already).
    pub(crate) fn attach_endpoint(
        &mut self,
        netns: &str,
        ifname: &str,
        net: &Network,
        c: &Container,
        primary: bool,
    ) -> R<()> {
        let target = AttachTarget::Netns(netns.to_owned());
        self.attach_to(target, Some(ifname.to_owned()), net, c, primary)
    }

    /// Attaches the container's endpoint on `net` at `target`; `primary`
    /// installs the default routes.
    pub(crate) fn attach_to(
        &mut self,
        target: AttachTarget,
        ifname: Option<String>,
        net: &Network,
        c: &Container,
        primary: bool,
    ) -> R<()> {
        let a = c
            .attachment(&net.id)
            .ok_or_else(|| format!("container {} is not on network {}", c.name, net.name))?;
        let v = vni(net)?;
        let mut ips = vec![IpNet {
            addr: IpAddr::V4(a.ipv4),
            prefix: net.ipv4.subnet.prefix_len(),
        }];
        let mut gateways = vec![];
        if primary {
            gateways.push(IpAddr::V4(net.ipv4.gateway));
        }
        if let (Some(v6), Some(cfg)) = (a.ipv6, &net.ipv6) {
            ips.push(IpNet {
                addr: IpAddr::V6(v6),
                prefix: cfg.subnet.prefix_len(),
            });
            if primary {
                gateways.push(IpAddr::V6(cfg.gateway));
            }
        }
        let mac = a
            .mac
            .parse()
            .map_err(|_| format!("stored MAC {} of {} is invalid", a.mac, c.name))?;
        self.dp.command(&Request::Attach(AttachRequest {
            target,
            vni: v,
            ips,
            mac: Some(mac),
            mtu: Some(u32::from(net.mtu)),
            gateways,
            ifname,
        }))
    }

    fn detach(&mut self, netns: &str, ifname: Option<&str>) -> R<()> {
        self.dp.command(&Request::Detach {
            target: DetachTarget::Netns {
                netns: netns.to_owned(),
                ifname: ifname.map(str::to_owned),
            },
        })
    }

    /// Withdraws from the dataplane the networks nothing here uses any more
    /// (a network goes from a host with its last container there).
    fn drop_unused_networks(&mut self, candidates: &[Network]) -> R<()> {
        let me = self.local_node()?;
        let used = networks::networks_on_node(&self.store, &me).map_err(s)?;
        let worker = !self.is_manager();
        for n in candidates {
            if !used.iter().any(|u| u.id == n.id) {
                if worker {
                    // A worker's copy of a network lives as long as its use.
                    let _ = self.store.delete::<Network>(&n.id);
                }
                if let Ok(v) = vni(n) {
                    if let Err(e) = self.dp.command(&Request::NetworkDel { vni: v }) {
                        tracing::debug!(network = %n.name, error = %e, "network_del");
                    }
                }
            }
        }
        Ok(())
    }

    fn container_create(&mut self, name: &str, nets: Vec<NetworkRequest>) -> R<ContainerView> {
        let me = self.local_node()?;
        let req = CreateContainer {
            name: name.to_owned(),
            node: me,
            netns: Some(format!("{}{name}", self.cfg.netns_prefix)),
            networks: nets,
        };
        let c = if self.is_manager() {
            containers::create_container(&self.store, &req, now(), &mut rand_core::OsRng)
                .map_err(s)?
        } else {
            self.create_via_manager(&req)?
        };
        match self.make_container(&c) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Forget it first, so its networks count as unused here.
                let nets = self.nets_of(&c)?;
                let _ = containers::remove_container(&self.store, &c.id);
                let _ = self.drop_unused_networks(&nets);
                if !self.is_manager() {
                    let _ = self.release_via_manager(&c.id);
                }
                Err(e)
            }
        }
    }

    /// A worker's container: the manager allocates, this node keeps a copy
    /// of the container and its networks.
    fn create_via_manager(&mut self, req: &CreateContainer) -> R<Container> {
        let v = self.manager_call(METHOD_CONTAINER_CREATE, value(req)?)?;
        self.keep_remote_copy(v, |d, c| {
            let _ = d.release_via_manager(&c.id);
        })
    }

    /// Stores the manager's answer (a [`RemoteContainer`]): the container
    /// and its networks, in one transaction. If that fails, `undo` takes
    /// back on the manager what the answer granted.
    fn keep_remote_copy(
        &self,
        answer: serde_json::Value,
        undo: impl FnOnce(&Self, &Container),
    ) -> R<Container> {
        let r: RemoteContainer = serde_json::from_value(answer)
            .map_err(|e| format!("the manager's answer is not understood: {e}"))?;
        let mut txn = Txn::new();
        for n in &r.networks {
            txn.put(n).map_err(s)?;
        }
        txn.put(&r.container).map_err(s)?;
        if let Err(e) = self.store.apply(&txn) {
            undo(self, &r.container);
            return Err(s(e));
        }
        Ok(r.container)
    }

    fn release_via_manager(&self, container_id: &str) -> R<()> {
        let p = RemoveParams {
            container_id: container_id.to_owned(),
        };
        self.manager_call(METHOD_CONTAINER_REMOVE, value(p)?)
            .map(|_| ())
    }

    /// The host side of a new container. On failure its host and dataplane
    /// changes are undone; the caller forgets the record.
    fn make_container(&mut self, c: &Container) -> R<ContainerView> {
        let ns = c.netns.clone().unwrap_or_else(|| c.name.clone());
        if self.host.netns_exists(&ns) {
            return Err(format!(
                "a network namespace named {ns} already exists; remove it or choose another container name"
            ));
        }
        let mut rt = default_runtime(c);
        rt.ifnames.clear();
        rt.log_path = self
            .cfg
            .log_dir
            .join(format!("{}.log", c.name))
            .display()
            .to_string();
        self.host.netns_add(&ns)?;
        let done = (|| -> R<()> {
            self.host.write_resolv_conf(&ns)?;
            let nets = self.store.list::<Network>().map_err(s)?;
            for (i, a) in c.attachments.iter().enumerate() {
                let net = nets
                    .iter()
                    .find(|n| n.id == a.network)
                    .ok_or_else(|| format!("network {} vanished", a.network))?;
                let ifname = rt.next_ifname();
                self.attach(&ns, &ifname, net, c, i == 0)?;
                rt.ifnames.insert(net.id.clone(), ifname);
            }
            self.store.put(&rt).map_err(s)
        })();
        if let Err(e) = done {
            let _ = self.detach(&ns, None);
            let _ = self.host.netns_del(&ns);
            self.host.remove_resolv_conf(&ns);
            let _ = self.store.delete::<Runtime>(&c.id);
            return Err(e);
        }
        tracing::info!(container = %c.name, netns = %ns, "container created");
        self.tell(announcements(c));
        self.view(c)
    }

    fn nets_of(&self, c: &Container) -> R<Vec<Network>> {
        Ok(self
            .store
            .list::<Network>()
            .map_err(s)?
            .into_iter()
            .filter(|n| c.attachment(&n.id).is_some())
            .collect())
    }

    fn container_started(&mut self, query: &str, pid: u32) -> R<ContainerView> {
        let c = containers::resolve_container(&self.store, query).map_err(s)?;
        let mut rt = self.runtime(&c)?;
        if let Some(old) = rt.pid.filter(|p| *p != pid && self.host.process_alive(*p)) {
            return Err(format!(
                "container {} already runs a command (pid {old}); use `vxnet container exec`",
                c.name
            ));
        }
        rt.pid = Some(pid);
        self.store.put(&rt).map_err(s)?;
        self.view(&c)
    }

    fn container_rm(&mut self, query: &str, force: bool) -> R<ContainerView> {
        let c = containers::resolve_container(&self.store, query).map_err(s)?;
        let rt = self.runtime(&c)?;
        let view = self.view(&c)?;
        let running = rt.pid.filter(|p| self.host.process_alive(*p));
        if let Some(pid) = running.filter(|_| !force) {
            return Err(format!(
                "container {} is running (pid {pid}); stop its command first or use `vxnet container rm -f`",
                c.name
            ));
        }
        if !self.is_manager() {
            // The manager releases the addresses first: a manager out of
            // reach must not leak them, unless the user forces it.
            if let Err(e) = self.release_via_manager(&c.id) {
                if !force {
                    return Err(format!(
                        "cannot release {}'s addresses on the manager: {e}; use -f to remove it here anyway",
                        c.name
                    ));
                }
                tracing::warn!(container = %c.name, error = %e, "removed without the manager");
            }
        }
        if let Some(pid) = running {
            self.host.kill_group(pid);
        }
        if let Err(e) = self.detach_runtime(&rt, None) {
            // Nothing attached is fine (the dataplane may have restarted).
            tracing::debug!(container = %c.name, error = %e, "detach");
        }
        // Another runtime's namespace is that runtime's to remove.
        if !rt.external {
            if self.host.netns_exists(&rt.netns) {
                self.host.netns_del(&rt.netns)?;
            }
            self.host.remove_resolv_conf(&rt.netns);
        }
        let nets = self.nets_of(&c)?;
        let mut txn = Txn::new();
        txn.delete::<Runtime>(&c.id);
        self.store.apply(&txn).map_err(s)?;
        containers::remove_container(&self.store, &c.id).map_err(s)?;
        self.drop_unused_networks(&nets)?;
        self.tell(withdrawals(&c.attachments));
        tracing::info!(container = %c.name, "container removed");
        Ok(view)
    }

    /// A container of this node by id (the manager's view of a worker's
    /// request: a node changes its own containers only).
    fn node_container(&self, node: &str, id: &str) -> R<Container> {
        let c = self
            .store
            .get::<Container>(id)
            .map_err(s)?
            .ok_or_else(|| s(crate::ControlError::ContainerNotFound(id.to_owned())))?;
        if c.node != node {
            return Err(format!("container {} does not run on node {node}", c.name));
        }
        Ok(c)
    }

    /// A container of this host, for `network connect|disconnect`: a
    /// manager refuses to program another node's container here.
    fn local_container(&self, query: &str) -> R<Container> {
        let c = containers::resolve_container(&self.store, query).map_err(s)?;
        let me = self.local_node()?;
        if c.node != me {
            let host = self
                .store
                .get::<Node>(&c.node)
                .ok()
                .flatten()
                .map_or_else(|| c.node.clone(), |n| n.hostname);
            return Err(format!(
                "container {} runs on node {host}; run the command there",
                c.name
            ));
        }
        Ok(c)
    }

    /// Records a container's new network: on a manager in its own store,
    /// on a worker through the manager (which allocates), keeping a copy
    /// of the container and its networks.
    fn record_connect(&mut self, c: &Container, req: &NetworkRequest) -> R<Container> {
        if self.is_manager() {
            return containers::connect(&self.store, &c.id, req).map_err(s);
        }
        let p = ConnectParams {
            container_id: c.id.clone(),
            network: req.clone(),
        };
        let v = self.manager_call(METHOD_NETWORK_CONNECT, value(p)?)?;
        self.keep_remote_copy(v, |d, remote| {
            if let Some(a) = remote.attachments.last() {
                let _ = d.disconnect_via_manager(&c.id, &a.network);
            }
        })
    }

    /// Undoes [`Self::record_connect`] (or records a disconnect): the
    /// manager releases first, then this node's copy follows.
    fn record_disconnect(&mut self, c: &Container, network_id: &str) -> R<Container> {
        if self.is_manager() {
            return containers::disconnect(&self.store, &c.id, network_id).map_err(s);
        }
        self.disconnect_via_manager(&c.id, network_id)?;
        let mut copy = c.clone();
        copy.attachments.retain(|a| a.network != network_id);
        self.store.put(&copy).map_err(s)?;
        Ok(copy)
    }

    fn disconnect_via_manager(&self, container_id: &str, network_id: &str) -> R<()> {
        let p = DisconnectParams {
            container_id: container_id.to_owned(),
            network_id: network_id.to_owned(),
        };
        self.manager_call(METHOD_NETWORK_DISCONNECT, value(p)?)
            .map(|_| ())
    }

    fn network_connect(&mut self, query: &str, req: &NetworkRequest) -> R<ContainerView> {
        let before = self.local_container(query)?;
        let mut rt = self.runtime(&before)?;
        if let Some(veth) = &rt.veth {
            return Err(format!(
                "container {} is attached by its veth {veth}, which carries one network; \
                 connect another veth under another name",
                before.name
            ));
        }
        let c = self.record_connect(&before, req)?;
        let net_id = c
            .attachments
            .iter()
            .find(|a| before.attachment(&a.network).is_none())
            .map(|a| a.network.clone())
            .ok_or_else(|| "internal error: the new attachment is missing".to_owned())?;
        let net = self
            .store
            .get::<Network>(&net_id)
            .map_err(s)?
            .ok_or_else(|| format!("network {net_id} is missing from the store"))?;
        let ifname = rt.next_ifname();
        // Another runtime's container keeps its own default route.
        let primary = before.attachments.is_empty() && !rt.external;
        if let Err(e) = self.attach(&rt.netns.clone(), &ifname, &net, &c, primary) {
            let _ = self.record_disconnect(&c, &net.id);
            let _ = self.drop_unused_networks(std::slice::from_ref(&net));
            return Err(e);
        }
        rt.ifnames.insert(net.id.clone(), ifname);
        self.store.put(&rt).map_err(s)?;
        let mut only = c.clone();
        only.attachments.retain(|a| a.network == net.id);
        self.tell(announcements(&only));
        self.view(&c)
    }

    /// `network connect --netns|--veth NET NAME`: records another runtime's
    /// container NAME with an address on NET and attaches it (into its
    /// namespace, or by bridging its veth). A NAME recorded already with
    /// the same namespace just joins one more network.
    fn connect_external(
        &mut self,
        name: &str,
        req: &NetworkRequest,
        ext: External,
    ) -> R<ContainerView> {
        if let Ok(c) = containers::resolve_container(&self.store, name) {
            let rt = self.runtime(&c)?;
            return match &ext {
                External::Netns(ns) if rt.external && rt.veth.is_none() && rt.netns == *ns => {
                    self.network_connect(&c.id, req)
                }
                _ => Err(format!(
                    "a container named {} exists already; connect it by name alone, \
                     or give the other runtime's container another name",
                    c.name
                )),
            };
        }
        if matches!(ext, External::Veth(_)) && req.mac.is_none() {
            return Err(
                "--veth needs --mac: the MAC of the container's end of the veth".to_owned(),
            );
        }
        let me = self.local_node()?;
        let netns = match &ext {
            External::Netns(ns) => Some(ns.clone()),
            External::Veth(_) => None,
        };
        let creq = CreateContainer {
            name: name.to_owned(),
            node: me,
            netns: netns.clone(),
            networks: vec![req.clone()],
        };
        let c = if self.is_manager() {
            containers::create_container(&self.store, &creq, now(), &mut rand_core::OsRng)
                .map_err(s)?
        } else {
            self.create_via_manager(&creq)?
        };
        let mut rt = Runtime {
            container_id: c.id.clone(),
            netns: netns.unwrap_or_default(),
            external: true,
            veth: match &ext {
                External::Veth(v) => Some(v.clone()),
                External::Netns(_) => None,
            },
            ..Runtime::default()
        };
        let done = (|| -> R<()> {
            let net = self
                .nets_of(&c)?
                .into_iter()
                .next()
                .ok_or_else(|| "internal error: the new attachment is missing".to_owned())?;
            match &ext {
                External::Netns(ns) => {
                    let ifname = rt.next_ifname();
                    self.attach(ns, &ifname, &net, &c, false)?;
                    rt.ifnames.insert(net.id.clone(), ifname);
                }
                External::Veth(veth) => {
                    self.dp.command(&Request::NetworkAdd {
                        vni: vni(&net)?,
                        encrypted: net.encrypted,
                    })?;
                    self.attach_to(AttachTarget::Veth(veth.clone()), None, &net, &c, false)?;
                    rt.ifnames.insert(net.id.clone(), veth.clone());
                }
            }
            self.store.put(&rt).map_err(s)
        })();
        if let Err(e) = done {
            let _ = self.detach_runtime(&rt, None);
            let nets = self.nets_of(&c)?;
            let _ = containers::remove_container(&self.store, &c.id);
            let _ = self.drop_unused_networks(&nets);
            if !self.is_manager() {
                let _ = self.release_via_manager(&c.id);
            }
            return Err(e);
        }
        tracing::info!(container = %c.name, "external container connected");
        self.tell(announcements(&c));
        self.view(&c)
    }

    /// Detaches a container's interface for one network (`ifname`), or all
    /// of them: in its namespace, or its veth for a sidecar.
    fn detach_runtime(&mut self, rt: &Runtime, ifname: Option<&str>) -> R<()> {
        match &rt.veth {
            Some(v) => self.dp.command(&Request::Detach {
                target: DetachTarget::Veth(v.clone()),
            }),
            None => self.detach(&rt.netns, ifname),
        }
    }

    fn network_disconnect(&mut self, query: &str, network: &str) -> R<ContainerView> {
        let c = self.local_container(query)?;
        let net = networks::resolve_network(&self.store, network).map_err(s)?;
        let leaving: Vec<_> = c
            .attachments
            .iter()
            .filter(|a| a.network == net.id)
            .cloned()
            .collect();
        if leaving.is_empty() {
            return Err(s(crate::ControlError::NotAttached {
                container: c.name,
                network: net.name,
            }));
        }
        let mut rt = self.runtime(&c)?;
        if rt.external && c.attachments.len() == 1 {
            // Another runtime's container is recorded for its networks
            // only: with the last one it is forgotten.
            return self.container_rm(&c.id, false);
        }
        let c = self.record_disconnect(&c, &net.id)?;
        if let Some(ifname) = rt.ifnames.remove(&net.id) {
            if let Err(e) = self.detach_runtime(&rt, Some(&ifname)) {
                tracing::debug!(container = %c.name, error = %e, "detach");
            }
        }
        self.store.put(&rt).map_err(s)?;
        self.drop_unused_networks(std::slice::from_ref(&net))?;
        self.tell(withdrawals(&leaving));
        self.view(&c)
    }
}

/// Another runtime's container, as `network connect` names it.
enum External {
    Netns(String),
    Veth(String),
}

fn external_target(netns: Option<String>, veth: Option<String>) -> R<Option<External>> {
    match (netns, veth) {
        (Some(_), Some(_)) => Err("give --netns or --veth, not both".to_owned()),
        (Some(n), None) if n.is_empty() => Err("--netns needs a name or path".to_owned()),
        (None, Some(v)) if v.is_empty() || v.len() > 15 || v.contains(['/', ' ']) => {
            Err(format!("invalid interface name '{v}'"))
        }
        (Some(n), None) => Ok(Some(External::Netns(n))),
        (None, Some(v)) => Ok(Some(External::Veth(v))),
        (None, None) => Ok(None),
    }
}

/// `MANAGER[:PORT]` of `swarm join` (port 2377 unless given).
fn parse_manager(remote: &str) -> R<SocketAddr> {
    if let Ok(a) = remote.parse::<SocketAddr>() {
        return Ok(a);
    }
    remote
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, MANAGEMENT_PORT))
        .map_err(|_| format!("invalid manager address {remote}: give IP:PORT, e.g. 192.0.2.1:2377"))
}

/// Gossip announcements of a container's endpoints (one per address).
fn announcements(c: &Container) -> Vec<GossipCmd> {
    let mut v = Vec::new();
    for a in &c.attachments {
        let Ok(mac) = a.mac.parse::<vxnet_proto::wire::MacAddr>() else {
            continue;
        };
        let ips = std::iter::once(IpAddr::V4(a.ipv4)).chain(a.ipv6.map(IpAddr::V6));
        for ip in ips {
            v.push(GossipCmd::Announce {
                network_id: a.network.clone(),
                ip,
                mac: mac.0,
            });
        }
    }
    v
}

/// Withdrawals of the endpoints of `attachments`.
fn withdrawals(attachments: &[crate::model::Attachment]) -> Vec<GossipCmd> {
    let mut v = Vec::new();
    for a in attachments {
        let ips = std::iter::once(IpAddr::V4(a.ipv4)).chain(a.ipv6.map(IpAddr::V6));
        for ip in ips {
            v.push(GossipCmd::Withdraw {
                network_id: a.network.clone(),
                ip,
            });
        }
    }
    v
}

/// The runtime record of a container made before this daemon kept one (or
/// whose record was lost): interfaces by attachment order.
pub(crate) fn default_runtime(c: &Container) -> Runtime {
    Runtime {
        container_id: c.id.clone(),
        netns: c.netns.clone().unwrap_or_else(|| c.name.clone()),
        ifnames: c
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| (a.network.clone(), format!("eth{i}")))
            .collect(),
        pid: None,
        log_path: String::new(),
        external: false,
        veth: None,
    }
}

#[cfg(test)]
mod tests;
