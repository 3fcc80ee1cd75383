//! Which background parts run, as the swarm comes and goes: one thread
//! that, on every change and every second, makes them match the store:
//!
//! - the gossip driver, while this node is in a swarm;
//! - the management server (TCP 2377), while this node is a manager,
//!   restarted when its identity changes (a new swarm after `leave
//!   --force` and `init` gets the new CA at once);
//! - the worker's agent ([`super::worker::Agent`]), while it is a worker;
//! - the manager's tending: node status from gossip, and gossip key
//!   rotation; a worker's gossip key poll instead.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;

use super::dataplane::DataplaneApi;
use super::gossip::{self, GossipCmd, GossipHandle, OnChange};
use super::manager::ManagerHandler;
use super::worker::Agent;
use super::{Daemon, lock};
use crate::cluster;
use crate::gossip::{GossipConfig, KeyId, Keyring, Membership, NodeIdentity};
use crate::mgmt::{MGMT_PORT, MgmtServer};
use crate::model::{Node, Role, StoredGossipKey};
use crate::store::{Store, StoreExt};

/// How often the roles are looked at without a change.
const TICK: Duration = Duration::from_secs(1);

/// The management server task and the identity it serves with.
struct Server {
    task: tokio::task::JoinHandle<()>,
    cert: String,
}

/// The state of the roles loop.
pub struct Roles<S, D> {
    d: Arc<Daemon<S, D>>,
    rt: tokio::runtime::Handle,
    /// The gossip generation: the start time, so a restarted daemon's
    /// identity and records win over its previous life's.
    generation: u32,
    server: Option<Server>,
    agent: Option<Agent>,
    keys_sent: Vec<StoredGossipKey>,
    next_key_poll: Option<Instant>,
    errors: [String; 3],
}

impl<S, D> Roles<S, D>
where
    S: Store + Send + Sync + 'static,
    D: DataplaneApi + 'static,
{
    pub fn new(d: Arc<Daemon<S, D>>, rt: tokio::runtime::Handle) -> Self {
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| (d.as_secs() & u64::from(u32::MAX)) as u32);
        Roles {
            d,
            rt,
            generation,
            server: None,
            agent: None,
            keys_sent: Vec::new(),
            next_key_poll: None,
            errors: Default::default(),
        }
    }

    /// Tends the roles until `stop`; then stops everything (gossip without
    /// a goodbye: a restart is not a departure).
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut seq = self.d.changes.sequence();
        self.d.roles_running.store(true, Ordering::SeqCst);
        while !stop.load(Ordering::SeqCst) {
            self.tend();
            seq = self.d.changes.wait_change(seq, TICK);
        }
        self.d.roles_running.store(false, Ordering::SeqCst);
        self.d.mgmt_serving.store(false, Ordering::SeqCst);
        if let Some(a) = self.agent.take() {
            a.stop();
        }
        if let Some(s) = self.server.take() {
            s.task.abort();
        }
        drop(lock(&self.d.gossip).take());
    }

    /// One look at every role.
    pub fn tend(&mut self) {
        let leaving = self.d.leaving.load(Ordering::SeqCst);
        let in_swarm = self.d.local_node().is_ok() && !leaving;
        let manager = in_swarm && self.d.is_manager();
        // While `swarm leave` runs, gossip stays up: the reconciler
        // withdraws this host's endpoints through it, and the leave ends it
        // with a goodbye. It is only not started again.
        self.tend_gossip(in_swarm, leaving);
        self.tend_server(manager);
        self.tend_agent(in_swarm && !manager);
        if manager {
            self.d.tend_node_status();
            self.d.tend_ingress_endpoints();
            self.d.tend_services();
        }
        self.tend_keys(in_swarm, manager);
    }

    fn note(&mut self, slot: usize, what: &str, r: Result<(), String>) {
        match r {
            Ok(()) => self.errors[slot].clear(),
            Err(e) => {
                if self.errors[slot] != e {
                    tracing::warn!(error = %e, "{what}");
                    self.errors[slot] = e;
                }
            }
        }
    }

    fn tend_gossip(&mut self, in_swarm: bool, leaving: bool) {
        let running = lock(&self.d.gossip).is_some();
        if in_swarm && !running {
            let r = self.start_gossip();
            self.note(0, "gossip not running", r);
        } else if !in_swarm && !leaving && running {
            drop(lock(&self.d.gossip).take());
            tracing::info!("gossip stopped: not in a swarm");
        }
    }

    fn start_gossip(&mut self) -> Result<(), String> {
        let Some((identity, keyring)) = self.gossip_setup() else {
            return Err("the swarm's records are incomplete; leave and join again".into());
        };
        let addr = identity.gossip_addr;
        let sock =
            UdpSocket::bind(addr).map_err(|e| format!("cannot bind gossip to {addr}: {e}"))?;
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        let m = Membership::new(identity, GossipConfig::default(), keyring, seed);
        let changes = Arc::clone(&self.d.changes);
        let on_change: OnChange = Arc::new(move || changes.poke());
        let h: GossipHandle =
            gossip::spawn(sock, m, on_change).map_err(|e| format!("cannot start gossip: {e}"))?;
        if let Some(seed) = self.gossip_seed() {
            h.join(seed);
        }
        tracing::info!(addr = %addr, "gossip running");
        *lock(&self.d.gossip) = Some(h);
        self.keys_sent.clear();
        // The reconciler announces this host's endpoints on its next pass.
        self.d.changes.poke();
        Ok(())
    }

    /// This node's gossip identity and the cluster's keyring.
    fn gossip_setup(&self) -> Option<(NodeIdentity, Keyring)> {
        let node = self.d.own_node().ok()?;
        let c = cluster::cluster(&self.d.store).ok()?;
        let mut ring = Keyring::new();
        for k in &c.gossip_keys {
            ring.install_key(k.to_keyring()?).ok()?;
        }
        ring.set_primary(KeyId(c.primary_gossip_key()?.id)).ok()?;
        Some((
            NodeIdentity {
                node_id: node.id,
                gossip_addr: SocketAddr::new(node.advertise_addr, gossip::GOSSIP_PORT),
                data_addr: node.data_path_addr,
                data_port: node.data_path_port,
                public_key: *node.public_key.as_bytes(),
                generation: self.generation,
            },
            ring,
        ))
    }

    /// Where gossip starts: a worker's manager; a manager's any other node
    /// it knows, so that a manager that comes back pulls the swarm's state
    /// (and rejoins) too.
    fn gossip_seed(&self) -> Option<SocketAddr> {
        let st = self.d.mgmt_state()?;
        if let Some(m) = st.manager {
            return Some(SocketAddr::new(m.ip(), gossip::GOSSIP_PORT));
        }
        let me = self.d.local_node().ok()?;
        self.d
            .store
            .list::<Node>()
            .ok()?
            .into_iter()
            .find(|n| n.id != me)
            .map(|n| SocketAddr::new(n.advertise_addr, gossip::GOSSIP_PORT))
    }

    fn tend_server(&mut self, manager: bool) {
        let want = if manager { self.d.mgmt_state() } else { None };
        let want = want.filter(|st| st.identity.role == Role::Manager);
        let cert = want.as_ref().map(|st| cert_digest(&st.identity.cert_pem));
        if self.server.as_ref().map(|s| &s.cert) != cert.as_ref() {
            if let Some(s) = self.server.take() {
                s.task.abort();
                self.d.mgmt_serving.store(false, Ordering::SeqCst);
                tracing::info!("management server stopped");
            }
        }
        let (Some(st), None) = (want, &self.server) else {
            return;
        };
        let Ok(node) = self.d.own_node() else { return };
        let addr = SocketAddr::new(node.advertise_addr, MGMT_PORT);
        let handler = Arc::new(ManagerHandler(Arc::clone(&self.d)));
        let r = self
            .rt
            .block_on(MgmtServer::bind(addr, &st.identity, handler))
            .map(|server| {
                tracing::info!(addr = %addr, "management server running");
                self.d.mgmt_serving.store(true, Ordering::SeqCst);
                self.server = Some(Server {
                    task: self.rt.spawn(server.serve()),
                    cert: cert_digest(&st.identity.cert_pem),
                });
            })
            .map_err(|e| e.to_string());
        self.note(1, "management server not running", r);
    }

    fn tend_agent(&mut self, worker: bool) {
        match (worker, self.agent.is_some()) {
            (true, false) => match Agent::spawn(Arc::clone(&self.d)) {
                Ok(a) => self.agent = Some(a),
                Err(e) => tracing::warn!(error = %e, "cannot start the agent"),
            },
            (false, true) => {
                if let Some(a) = self.agent.take() {
                    a.stop();
                }
            }
            _ => {}
        }
    }

    /// A manager's rotation step, or a worker's poll; the keyring goes to
    /// the gossip driver when it changed.
    fn tend_keys(&mut self, in_swarm: bool, manager: bool) {
        if !in_swarm {
            self.next_key_poll = None;
            return;
        }
        let keys = if manager {
            self.d.tend_gossip_keys()
        } else {
            let now = Instant::now();
            if self.next_key_poll.is_some_and(|t| now < t) {
                return;
            }
            match self.d.sync_gossip_keys() {
                Ok((keys, after)) => {
                    self.next_key_poll = Some(now + after);
                    self.note(2, "", Ok(()));
                    Some(keys)
                }
                Err(e) => {
                    self.next_key_poll = Some(now + Duration::from_secs(5));
                    self.note(2, "gossip keys not synced with the manager", Err(e.message));
                    None
                }
            }
        };
        let Some(keys) = keys else { return };
        if keys != self.keys_sent {
            if let Some(g) = lock(&self.d.gossip).as_ref() {
                g.send(GossipCmd::Keys(keys.clone()));
                self.keys_sent = keys;
            }
        }
    }
}

/// A short fingerprint of a certificate, to tell identities apart.
fn cert_digest(pem: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}
