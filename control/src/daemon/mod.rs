//! The control daemon, level-triggered (STYLE §9).
//!
//! Requests (the CLI's, and workers' calls on a manager) only change
//! desired state: the store. One reconciler per host ([`reconcile`]) is
//! the only writer to the dataplane and the only one that creates
//! namespaces and starts or stops processes; it computes from the store
//! and gossip's view what the host must look like, compares with what it
//! is, and applies the difference, on every change and on a timer, so a
//! restart of the dataplane or of this daemon converges without anything
//! else. A request that needs its change made real (a container run must
//! say whether its command started) waits for a pass that saw its write
//! ([`changes::Realized`]).
//!
//! Roles:
//! - [`manager`]: the manager's side of the management port (workers'
//!   calls, the assignment watch), node status from gossip, gossip key
//!   rotation.
//! - [`worker`]: how a worker reaches its manager, and its agent: the
//!   assignment watch that keeps the worker's copy of what it must run,
//!   and the reports of what it removed.
//! - [`roles`]: which of those, and the gossip driver and the management
//!   server, run as the swarm comes and goes.
//!
//! No lock is held across a call to another process: a worker calls its
//! manager before it takes the store's write lock, the reconciler holds
//! none while it talks to the dataplane, and gossip never waits on a
//! request.

pub mod changes;
pub mod dataplane;
pub mod gossip;
pub mod host;
pub mod keys;
pub mod manager;
pub mod metrics;
pub mod reconcile;
mod requests;
pub mod roles;
pub mod runtime;
pub mod trace;
pub mod worker;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vxnet_api::ctl::{CtlRequest, MANAGEMENT_PORT};
use vxnet_api::{ApiError, ApiResult, Response};

use self::changes::{Changes, Realized};
use self::dataplane::DataplaneApi;
use self::gossip::GossipHandle;
use self::runtime::LocalNode;
use self::swarm_state::MgmtState;
use self::worker::ManagerLink;
use crate::store::{Record, Store, StoreError, StoreExt, Txn};

pub mod swarm_state;

/// What the daemon knows about its host from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub hostname: String,
    /// `--advertise-addr` of the daemon (a request's own wins).
    pub advertise_addr: Option<IpAddr>,
    /// `--data-path-addr` of the daemon (a request's own wins).
    pub data_path_addr: Option<IpAddr>,
    /// Where detached containers' output goes (one file per container).
    pub log_dir: PathBuf,
    /// Prepended to a container's name to name its network namespace
    /// (namespaces are host-wide; the testbed runs several hosts on one
    /// machine). Empty by default.
    pub netns_prefix: String,
    /// Seconds between gossip key rotations (a manager's).
    pub key_rotation: u64,
    /// How long a request waits for the reconciler to make its change real.
    pub realize_timeout: Duration,
    /// The dataplane's host link subnet (published ports and egress go
    /// through it); `None`: no host link.
    pub host_link_subnet: Option<vxnet_api::Ipv4Net>,
}

/// The default host link subnet: part of 198.18.0.0/15 (RFC 2544,
/// benchmarking), which real networks rarely route.
pub const DEFAULT_HOST_LINK_SUBNET: &str = "198.18.0.0/16";

impl Config {
    pub fn new(hostname: impl Into<String>, log_dir: impl Into<PathBuf>) -> Self {
        Config {
            hostname: hostname.into(),
            advertise_addr: None,
            data_path_addr: None,
            log_dir: log_dir.into(),
            netns_prefix: String::new(),
            key_rotation: crate::cluster::GOSSIP_KEY_ROTATION_SECS,
            realize_timeout: Duration::from_secs(30),
            host_link_subnet: DEFAULT_HOST_LINK_SUBNET.parse().ok(),
        }
    }
}

/// The store, telling [`Changes`] about every write.
pub struct WatchedStore<S> {
    inner: S,
    changes: Arc<Changes>,
}

impl<S: Store> Store for WatchedStore<S> {
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read(table, key)
    }

    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan(table)
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        self.inner.apply(txn)?;
        if !txn.is_empty() {
            self.changes.bump();
        }
        Ok(())
    }
}

/// The daemon's shared parts. Requests run on the API server's threads,
/// the reconciler and the roles' loops on their own; they share this.
pub struct Daemon<S, D> {
    pub(crate) store: WatchedStore<S>,
    /// Serializes read-modify-write sequences on the store (allocations,
    /// records); never held across a call to another process.
    write: Mutex<()>,
    pub(crate) changes: Arc<Changes>,
    pub(crate) realized: Realized,
    pub(crate) cfg: Config,
    /// For the few reads requests make of the dataplane (`show`); the
    /// reconciler has its own connection.
    dp: Mutex<D>,
    pub(crate) link: Arc<dyn ManagerLink>,
    /// The running gossip driver, while the swarm exists.
    pub(crate) gossip: Mutex<Option<GossipHandle>>,
    /// What each node last reported of its gossip keyring (a manager's).
    pub(crate) key_acks: Mutex<keys::KeyAcks>,
    /// `swarm leave` is under way: the roles loop must not restart gossip
    /// for the swarm being left.
    pub(crate) leaving: AtomicBool,
    /// Whether a roles loop tends this daemon, and whether its management
    /// server (TCP 2377) listens: `swarm init` returns once it does, so a
    /// `swarm join` right after finds it.
    pub(crate) roles_running: AtomicBool,
    pub(crate) mgmt_serving: AtomicBool,
    /// The addresses of this host's interfaces (`--advertise-addr` must be
    /// one of them).
    pub(crate) local_addrs: LocalAddrs,
    /// Log requests to other nodes and their answers (a manager's).
    pub(crate) logs: Mutex<manager::LogQueue>,
    /// Events the metrics count (`--metrics`).
    pub(crate) counters: metrics::ControlCounters,
    /// Trace halves asked of other nodes and their answers (a manager's).
    pub(crate) traces: Mutex<trace::TraceQueue>,
    /// The names the embedded DNS server answers from, as the reconciler
    /// last built them (`vxnet trace` resolves names with them).
    pub(crate) dns_records: Mutex<Option<Arc<crate::dns::DnsRecords>>>,
    /// Nodes gossip has held Up since this daemon started (a manager's).
    pub(crate) seen_members: Mutex<std::collections::BTreeSet<String>>,
    /// When this process first tended node status (s since the epoch; 0:
    /// not yet). A node gossip has not heard of since is given the join
    /// grace from then: a restarted manager must not take every node for
    /// Down before its gossip has found them (their tasks would be
    /// rescheduled).
    pub(crate) tending_since: std::sync::atomic::AtomicU64,
    /// Service id -> why the scheduler's last attempt to create one of
    /// its tasks failed; cleared when one is created (the manager's).
    pub(crate) schedule_errors: Mutex<std::collections::BTreeMap<String, String>>,
    /// What carries this host's VTEP, as the dataplane last said (each
    /// reconciliation pass): the MTU in force of networks without a given
    /// MTU comes from it.
    underlay: Mutex<Option<vxnet_proto::mtu::Underlay>>,
    /// What unit tests make gossip say, without a driver.
    #[cfg(test)]
    pub(crate) view_override: Mutex<Option<Arc<gossip::GossipView>>>,
}

/// Lists the addresses of the host's interfaces.
pub type LocalAddrs = Box<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

/// The addresses of every interface of this host's network namespace.
pub fn system_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(ifs) => ifs
            .filter_map(|i| i.address)
            .filter_map(|a| {
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the host's addresses");
            Vec::new()
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent (store writes are
    // transactions), so a panic elsewhere does not poison the daemon.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A store failure as an API error.
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    pub fn new(store: S, dp: D, cfg: Config, link: Arc<dyn ManagerLink>) -> Self {
        let changes = Arc::new(Changes::default());
        Daemon {
            store: WatchedStore {
                inner: store,
                changes: Arc::clone(&changes),
            },
            write: Mutex::new(()),
            changes,
            realized: Realized::default(),
            cfg,
            dp: Mutex::new(dp),
            link,
            gossip: Mutex::new(None),
            key_acks: Mutex::default(),
            leaving: AtomicBool::new(false),
            roles_running: AtomicBool::new(false),
            mgmt_serving: AtomicBool::new(false),
            local_addrs: Box::new(system_addresses),
            seen_members: Mutex::default(),
            tending_since: std::sync::atomic::AtomicU64::new(0),
            schedule_errors: Mutex::default(),
            underlay: Mutex::default(),
            logs: Mutex::default(),
            traces: Mutex::default(),
            counters: metrics::ControlCounters::default(),
            dns_records: Mutex::default(),
            #[cfg(test)]
            view_override: Mutex::default(),
        }
    }

    /// What gossip knows now (empty without a driver).
    pub(crate) fn gossip_view(&self) -> Arc<gossip::GossipView> {
        #[cfg(test)]
        if let Some(v) = lock(&self.view_override).clone() {
            return v;
        }
        match lock(&self.gossip).as_ref() {
            Some(g) => g.view(),
            // The roles loop starts gossip soon: until its first pull, the
            // swarm's members and endpoints are unknown, not gone.
            None => Arc::new(gossip::GossipView {
                syncing: self.roles_running.load(std::sync::atomic::Ordering::SeqCst),
                ..gossip::GossipView::default()
            }),
        }
    }

    pub(crate) fn set_underlay(&self, u: Option<vxnet_proto::mtu::Underlay>) {
        *lock(&self.underlay) = u;
    }

    /// The MTU `net`'s endpoints get on this host: its given MTU, else
    /// what this host's underlay carries (its recorded MTU before the
    /// reconciler heard from the dataplane).
    pub(crate) fn mtu_in_force(&self, net: &crate::model::Network) -> u32 {
        match *lock(&self.underlay) {
            Some(u) => net.mtu_on(u),
            None => u32::from(net.mtu),
        }
    }

    /// Wakes the reconciler and the roles loop (shutdown, tests).
    pub fn poke(&self) {
        self.changes.poke();
    }

    /// Replaces how the host's addresses are listed (tests).
    pub fn with_local_addrs(mut self, f: LocalAddrs) -> Self {
        self.local_addrs = f;
        self
    }

    /// Holds the store's write lock.
    pub(crate) fn write(&self) -> MutexGuard<'_, ()> {
        lock(&self.write)
    }

    pub(crate) fn dp(&self) -> MutexGuard<'_, D> {
        lock(&self.dp)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Answers one request of the local API.
    pub fn handle(&self, req: CtlRequest) -> Response {
        let op = requests::op_name(&req);
        let r = requests::dispatch(self, req);
        if let Some(e) = &r.error {
            // The request itself is not logged: it may hold a secret.
            tracing::info!(op, code = ?e.code, error = %e.message, "request refused");
        }
        r
    }

    /// The node this daemon runs as; an error before `swarm init`.
    pub(crate) fn local_node(&self) -> ApiResult<String> {
        self.store
            .get::<LocalNode>(LocalNode::KEY)
            .map_err(internal)?
            .map(|l| l.node_id)
            .ok_or_else(|| {
                ApiError::precondition(
                    "this node is not part of a swarm; run `vxnet swarm init` or `vxnet swarm join`",
                )
            })
    }

    /// This node's management identity, and its manager's address on a
    /// worker; `None` before `swarm init`/`join`.
    pub fn mgmt_state(&self) -> Option<MgmtState> {
        self.store.get::<MgmtState>(MgmtState::KEY).ok().flatten()
    }

    /// Whether this node is a manager (true before any swarm: the
    /// single-host daemon keeps its own state).
    pub fn is_manager(&self) -> bool {
        self.mgmt_state().is_none_or(|st| st.manager.is_none())
    }

    pub(crate) fn manager_only(&self) -> ApiResult<()> {
        self.local_node()?;
        if self.is_manager() {
            Ok(())
        } else {
            Err(ApiError::denied(
                "this node is not a swarm manager; run this command on a manager \
                 (worker nodes cannot be used to view or modify cluster state)",
            ))
        }
    }

    /// This node's management address (its advertise address, port 2377).
    pub(crate) fn manager_addr(&self) -> ApiResult<SocketAddr> {
        let id = self.local_node()?;
        let n = self
            .store
            .get::<crate::model::Node>(&id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::internal(format!("node {id} is missing from the store")))?;
        Ok(SocketAddr::new(n.advertise_addr, MANAGEMENT_PORT))
    }

    /// Waits until a reconciler pass saw store generation `generation`;
    /// then the outcome for `container`.
    pub(crate) fn realized(
        &self,
        generation: u64,
        container: &str,
    ) -> ApiResult<Option<changes::Outcome>> {
        self.realized
            .wait(generation, container, self.cfg.realize_timeout)
            .map_err(|changes::TimedOut| {
                ApiError::new(
                    vxnet_api::ErrorCode::Timeout,
                    format!(
                        "the change is recorded, but this host did not make it real within {} s; \
                         see `vxnet container inspect` and the daemon's log",
                        self.cfg.realize_timeout.as_secs()
                    ),
                )
            })
    }

    /// Deletes every record of table `T` in `txn`.
    pub(crate) fn delete_all<T: Record>(&self, txn: &mut Txn) -> ApiResult<()> {
        for (k, _) in self.store.scan(T::TABLE).map_err(internal)? {
            txn.delete::<T>(&k);
        }
        Ok(())
    }

    /// The gossip driver's handle, while one runs.
    pub(crate) fn gossip(&self) -> MutexGuard<'_, Option<GossipHandle>> {
        lock(&self.gossip)
    }
}
