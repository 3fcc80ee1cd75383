//! The swarm itself: `swarm init` (cluster record, first manager node,
//! default ingress network, all in one transaction), join tokens and their
//! rotation, the gossip keyring and its rotation, and node records
//! (`node ls`, `inspect`, `rm`, status and availability).
//!
//! The TLS CA lives elsewhere; this module only embeds its digest in the
//! tokens (`SWMTKN-1-<digest>-<secret>`), so a joiner can check the manager
//! before sending anything.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{ControlError, Result};
use crate::ipam;
use crate::model::{
    AddressAlloc, AddressPool, Availability, Cluster, Container, JoinTokens, Network, Node,
    NodeStatus, Role, StoredGossipKey, UnixTime, is_id, new_id,
};
use crate::networks::{default_ingress_request, plan_network, resolve};
use crate::store::{Store, StoreExt, Txn};

/// VXLAN's IANA port.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;
/// Ports accepted for `--data-path-port`, as Docker.
pub const DATA_PATH_PORTS: std::ops::RangeInclusive<u16> = 1024..=49151;
/// Managers rotate the gossip key this often (seconds).
pub const GOSSIP_KEY_ROTATION_SECS: u64 = 12 * 60 * 60;
/// Keys kept: receive with all, send with the newest.
pub const GOSSIP_KEYRING_LEN: usize = 3;
/// Prefix of join tokens, Docker's format version 1.
pub const TOKEN_PREFIX: &str = "SWMTKN-1-";

/// `vxnet swarm init` as the daemon receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    pub hostname: String,
    pub advertise_addr: IpAddr,
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
    #[serde(default)]
    pub data_path_port: Option<u16>,
    /// This node's X25519 public key, base64.
    pub public_key: vxnet_api::PublicKey,
    #[serde(default)]
    pub default_pool: Option<AddressPool>,
    /// Digest of the CA certificate, embedded in the join tokens.
    pub ca_digest: String,
}

/// What `swarm init` created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResult {
    pub cluster: Cluster,
    pub node: Node,
    pub ingress: Network,
}

/// The cluster record, or [`ControlError::NotInitialized`].
pub fn cluster<S: Store + ?Sized>(store: &S) -> Result<Cluster> {
    store
        .get::<Cluster>(Cluster::KEY)?
        .ok_or(ControlError::NotInitialized)
}

fn check_hostname(h: &str) -> Result<()> {
    if h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ControlError::InvalidHostname(h.to_owned()));
    }
    Ok(())
}

/// Splits a join token into (CA digest, secret), so a joining host can
/// check the manager's certificate before it sends anything. `None` when the
/// token is not of the form `SWMTKN-1-<digest>-<25-char secret>`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (digest, secret) = rest.rsplit_once('-')?;
    (!digest.is_empty() && is_id(secret)).then_some((digest, secret))
}

/// A fresh join token for a CA digest (which must not be empty; it may
/// contain '-', the secret is split off at the last one).
pub fn make_token(ca_digest: &str, rng: &mut dyn RngCore) -> String {
    format!("{TOKEN_PREFIX}{ca_digest}-{}", new_id(rng))
}

fn new_gossip_key(id: u32, now: UnixTime, rng: &mut dyn RngCore) -> StoredGossipKey {
    let mut k = [0u8; 32];
    rng.fill_bytes(&mut k);
    StoredGossipKey {
        key: B64.encode(k),
        id,
        created: now,
    }
}

/// `vxnet swarm init`: the cluster record, this node as manager and the
/// default `ingress` network, in one transaction.
pub fn swarm_init<S: Store + ?Sized>(
    store: &S,
    req: &InitRequest,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<InitResult> {
    if store.get::<Cluster>(Cluster::KEY)?.is_some() {
        return Err(ControlError::AlreadyInitialized);
    }
    check_hostname(&req.hostname)?;
    let port = req.data_path_port.unwrap_or(DEFAULT_DATA_PATH_PORT);
    if !DATA_PATH_PORTS.contains(&port) {
        return Err(ControlError::DataPathPort(port));
    }
    let pool = req.default_pool.unwrap_or_default();
    ipam::check_pool(&pool)?;

    let cluster = Cluster {
        id: new_id(rng),
        created: now,
        gossip_keys: vec![new_gossip_key(1, now, rng)],
        tokens: JoinTokens {
            worker: make_token(&req.ca_digest, rng),
            worker_rotated: now,
            manager: make_token(&req.ca_digest, rng),
            manager_rotated: now,
        },
        default_pool: pool,
        data_path_port: port,
    };
    let node = Node {
        id: new_id(rng),
        hostname: req.hostname.clone(),
        role: Role::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: req.advertise_addr,
        data_path_addr: req.data_path_addr.unwrap_or(req.advertise_addr),
        data_path_port: port,
        public_key: req.public_key,
        created: now,
        down_reason: None,
        ingress_ipv4: None,
    };
    let (ingress, mut txn) = plan_network(store, &pool, &default_ingress_request(), now, rng)?;
    txn.require_absent::<Cluster>(Cluster::KEY);
    txn.put(&cluster)?;
    txn.put(&node)?;
    store.apply(&txn)?;
    Ok(InitResult {
        cluster,
        node,
        ingress,
    })
}

/// `vxnet swarm join-token --rotate ROLE`: the new token; the old one stops
/// working at once.
pub fn rotate_join_token<S: Store + ?Sized>(
    store: &S,
    role: Role,
    ca_digest: &str,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<String> {
    let mut c = cluster(store)?;
    let t = make_token(ca_digest, rng);
    match role {
        Role::Worker => {
            c.tokens.worker = t.clone();
            c.tokens.worker_rotated = now;
        }
        Role::Manager => {
            c.tokens.manager = t.clone();
            c.tokens.manager_rotated = now;
        }
    }
    store.put(&c)?;
    Ok(t)
}

/// Equality that takes the same time wherever the strings differ, so a
/// token cannot be guessed byte by byte from response times.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The role a join token grants, if it is one of the current tokens.
pub fn token_role(cluster: &Cluster, token: &str) -> Option<Role> {
    if same(&cluster.tokens.worker, token) {
        Some(Role::Worker)
    } else if same(&cluster.tokens.manager, token) {
        Some(Role::Manager)
    } else {
        None
    }
}

/// Whether the newest gossip key is [`GOSSIP_KEY_ROTATION_SECS`] old.
pub fn gossip_rotation_due(cluster: &Cluster, now: UnixTime) -> bool {
    gossip_rotation_due_after(cluster, now, GOSSIP_KEY_ROTATION_SECS)
}

/// Whether the primary gossip key is `interval` seconds old.
pub fn gossip_rotation_due_after(cluster: &Cluster, now: UnixTime, interval: u64) -> bool {
    cluster
        .primary_gossip_key()
        .is_none_or(|k| now.saturating_sub(k.created) >= interval)
}

/// The key being spread but not yet sent with (step one of a rotation):
/// one newer than the primary. It sits just before the primary in
/// [`Cluster::gossip_keys`], whose last entry is always the primary.
pub fn pending_gossip_key(cluster: &Cluster) -> Option<&StoredGossipKey> {
    let primary = cluster.primary_gossip_key()?.id;
    cluster.gossip_keys.iter().find(|k| k.id > primary)
}

/// Rotation step one: a new key that every node installs for receiving
/// while all keep sending with the primary. `None` (nothing done) while a
/// rotation is under way or the keyring is full (retire the oldest first).
pub fn begin_gossip_rotation<S: Store + ?Sized>(
    store: &S,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<Option<Cluster>> {
    let mut c = cluster(store)?;
    if pending_gossip_key(&c).is_some() || c.gossip_keys.len() >= GOSSIP_KEYRING_LEN {
        return Ok(None);
    }
    let id = c
        .gossip_keys
        .iter()
        .map(|k| k.id)
        .max()
        .map_or(1, |m| m.saturating_add(1));
    let at = c.gossip_keys.len().saturating_sub(1);
    c.gossip_keys.insert(at, new_gossip_key(id, now, rng));
    store.put(&c)?;
    Ok(Some(c))
}

/// Rotation step two: the pending key becomes the primary (moved last).
/// `None` when no key is pending.
pub fn promote_gossip_key<S: Store + ?Sized>(store: &S) -> Result<Option<Cluster>> {
    let mut c = cluster(store)?;
    let Some(pos) = pending_gossip_key(&c)
        .map(|p| p.id)
        .and_then(|id| c.gossip_keys.iter().position(|k| k.id == id))
    else {
        return Ok(None);
    };
    let k = c.gossip_keys.remove(pos);
    c.gossip_keys.push(k);
    store.put(&c)?;
    Ok(Some(c))
}

/// Rotation step three: drops the oldest keys so that one spare (the
/// previous primary) is kept beside the primary, leaving room for the
/// next rotation. `None` when there is nothing to drop or a key is still
/// pending.
pub fn retire_gossip_keys<S: Store + ?Sized>(store: &S) -> Result<Option<Cluster>> {
    let mut c = cluster(store)?;
    let keep = GOSSIP_KEYRING_LEN - 1;
    if pending_gossip_key(&c).is_some() || c.gossip_keys.len() <= keep {
        return Ok(None);
    }
    let excess = c.gossip_keys.len() - keep;
    c.gossip_keys.drain(..excess);
    store.put(&c)?;
    Ok(Some(c))
}

/// Adds a new primary gossip key and drops the oldest beyond
/// [`GOSSIP_KEYRING_LEN`] (make before break: the previous keys stay
/// accepted while the new one spreads).
pub fn rotate_gossip_key<S: Store + ?Sized>(
    store: &S,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<Cluster> {
    let mut c = cluster(store)?;
    let id = c
        .gossip_keys
        .iter()
        .map(|k| k.id)
        .max()
        .map_or(1, |m| m.wrapping_add(1).max(1));
    c.gossip_keys.push(new_gossip_key(id, now, rng));
    let excess = c.gossip_keys.len().saturating_sub(GOSSIP_KEYRING_LEN);
    c.gossip_keys.drain(..excess);
    store.put(&c)?;
    Ok(c)
}

/// A host joining with a valid token (the caller checked it with
/// [`token_role`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub hostname: String,
    pub role: Role,
    pub advertise_addr: IpAddr,
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
    pub public_key: vxnet_api::PublicKey,
}

/// Records a joining node (Ready, Active) with the swarm's data path port.
pub fn add_node<S: Store + ?Sized>(
    store: &S,
    req: &JoinRequest,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<Node> {
    let c = cluster(store)?;
    check_hostname(&req.hostname)?;
    let node = Node {
        id: new_id(rng),
        hostname: req.hostname.clone(),
        role: req.role,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        advertise_addr: req.advertise_addr,
        data_path_addr: req.data_path_addr.unwrap_or(req.advertise_addr),
        data_path_port: c.data_path_port,
        public_key: req.public_key,
        created: now,
        down_reason: None,
        ingress_ipv4: None,
    };
    let mut txn = Txn::new();
    // The same host joining again (its dataplane key is its identity):
    // its old record and containers go, so `node ls` shows it once.
    for old in store.list::<Node>()? {
        if old.public_key == node.public_key {
            forget_node(store, &mut txn, &old)?;
        }
    }
    txn.require_absent::<Node>(&node.id);
    txn.put(&node)?;
    store.apply(&txn)?;
    Ok(node)
}

/// Adds to `txn` the removal of node `n` and of its containers, releasing
/// their addresses.
fn forget_node<S: Store + ?Sized>(store: &S, txn: &mut Txn, n: &Node) -> Result<()> {
    for c in store.list::<Container>()? {
        if c.node == n.id {
            for a in &c.attachments {
                txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&a.network, a.ipv4.into()));
                if let Some(v6) = a.ipv6 {
                    txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&a.network, v6.into()));
                }
            }
            txn.delete::<Container>(&c.id);
        }
    }
    txn.delete::<Node>(&n.id);
    Ok(())
}

/// The `down_reason` of a node that left (`swarm leave`): it stays Down
/// with it, whatever gossip says while the node says goodbye.
pub const LEFT_REASON: &str = "left the swarm";

/// A node left the swarm (`swarm leave`): Down, with the reason, and its
/// containers forgotten (it removed them).
pub fn node_left<S: Store + ?Sized>(store: &S, id: &str) -> Result<Node> {
    let mut n = store
        .get::<Node>(id)?
        .ok_or_else(|| ControlError::NodeNotFound(id.to_owned()))?;
    let mut txn = Txn::new();
    forget_node(store, &mut txn, &n)?;
    n.status = NodeStatus::Down;
    n.down_reason = Some(LEFT_REASON.into());
    txn.put(&n)?;
    store.apply(&txn)?;
    Ok(n)
}

/// The node named by `query` (id, hostname or unique id prefix). A
/// hostname several nodes share is ambiguous: the error lists their ids.
pub fn resolve_node<S: Store + ?Sized>(store: &S, query: &str) -> Result<Node> {
    let all = store.list::<Node>()?;
    let same_name: Vec<&Node> = all.iter().filter(|n| n.hostname == query).collect();
    if same_name.len() > 1 && !all.iter().any(|n| n.id == query) {
        return Err(ControlError::AmbiguousNode(
            query.to_owned(),
            same_name
                .iter()
                .map(|n| format!("{} ({:?})", n.id, n.status).to_lowercase())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    match resolve(&all, query, |n| &n.id, |n| &n.hostname) {
        Ok(Some(n)) => Ok(n.clone()),
        Ok(None) => Err(ControlError::NodeNotFound(query.to_owned())),
        Err(ids) => Err(ControlError::AmbiguousNode(
            query.to_owned(),
            ids.join(", "),
        )),
    }
}

/// `vxnet node ls [--filter role=R]`, managers first, then by hostname.
pub fn list_nodes<S: Store + ?Sized>(store: &S, role: Option<Role>) -> Result<Vec<Node>> {
    let mut v: Vec<Node> = store
        .list::<Node>()?
        .into_iter()
        .filter(|n| role.is_none_or(|r| n.role == r))
        .collect();
    v.sort_by(|a, b| {
        (a.role != Role::Manager, &a.hostname).cmp(&(b.role != Role::Manager, &b.hostname))
    });
    Ok(v)
}

/// Marks a node Ready or Down (from failure detection).
pub fn set_node_status<S: Store + ?Sized>(store: &S, id: &str, status: NodeStatus) -> Result<Node> {
    let mut n = store
        .get::<Node>(id)?
        .ok_or_else(|| ControlError::NodeNotFound(id.to_owned()))?;
    n.status = status;
    store.put(&n)?;
    Ok(n)
}

/// `vxnet node update --availability`.
pub fn set_node_availability<S: Store + ?Sized>(
    store: &S,
    query: &str,
    availability: Availability,
) -> Result<Node> {
    let mut n = resolve_node(store, query)?;
    n.availability = availability;
    store.put(&n)?;
    Ok(n)
}

/// `vxnet node rm [--force]`: refused for this manager itself and, without
/// `force`, for a node that is not Down. The node's containers go with it
/// (their addresses are released in the same transaction).
pub fn remove_node<S: Store + ?Sized>(
    store: &S,
    query: &str,
    force: bool,
    self_id: &str,
) -> Result<Node> {
    let n = resolve_node(store, query)?;
    if n.id == self_id {
        return Err(ControlError::RemoveSelf(n.id));
    }
    if n.status != NodeStatus::Down && !force {
        return Err(ControlError::NodeNotDown(n.hostname));
    }
    let mut txn = Txn::new();
    forget_node(store, &mut txn, &n)?;
    store.apply(&txn)?;
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::test_rng::TestRng;
    use crate::networks::INGRESS_NAME;
    use crate::store::{MemStore, RedbStore};
    use ipnet::Ipv4Net;

    pub(crate) fn key(b: u8) -> vxnet_api::PublicKey {
        vxnet_api::PublicKey::from_bytes([b; 32])
    }

    pub(crate) fn init_req() -> InitRequest {
        InitRequest {
            hostname: "host1".into(),
            advertise_addr: "192.0.2.1".parse().unwrap(),
            data_path_addr: Some("198.51.100.1".parse().unwrap()),
            data_path_port: None,
            public_key: key(1),
            default_pool: None,
            ca_digest: "cadigest".into(),
        }
    }

    /// `swarm init` on a fresh store; returns (cluster, manager node).
    pub(crate) fn init(s: &dyn Store) -> (Cluster, Node) {
        let r = swarm_init(s, &init_req(), 1000, &mut TestRng(1)).unwrap();
        (r.cluster, r.node)
    }

    pub(crate) fn init_with_pool(s: &dyn Store, base: Ipv4Net, size: u8) {
        let mut req = init_req();
        req.default_pool = Some(AddressPool { base, size });
        swarm_init(s, &req, 1000, &mut TestRng(1)).unwrap();
    }

    pub(crate) fn add_worker(s: &dyn Store, hostname: &str) -> Node {
        let r = JoinRequest {
            hostname: hostname.into(),
            role: Role::Worker,
            advertise_addr: "192.0.2.2".parse().unwrap(),
            data_path_addr: None,
            public_key: key(2),
        };
        add_node(s, &r, 1001, &mut TestRng::from_name(hostname)).unwrap()
    }

    #[test]
    fn init_creates_everything_once() {
        let s = MemStore::new();
        let r = swarm_init(&s, &init_req(), 1000, &mut TestRng(1)).unwrap();
        assert_eq!(r.node.role, Role::Manager);
        assert_eq!(r.node.status, NodeStatus::Ready);
        assert_eq!(r.node.data_path_addr.to_string(), "198.51.100.1");
        assert_eq!(r.node.data_path_port, DEFAULT_DATA_PATH_PORT);
        assert_eq!(r.cluster.gossip_keys.len(), 1);
        assert!(r.cluster.tokens.worker.starts_with("SWMTKN-1-cadigest-"));
        assert_ne!(r.cluster.tokens.worker, r.cluster.tokens.manager);
        assert_eq!(r.ingress.name, INGRESS_NAME);
        assert!(!r.ingress.attachable);
        assert_eq!(cluster(&s).unwrap(), r.cluster);
        assert_eq!(resolve_node(&s, "host1").unwrap(), r.node);
        let e = swarm_init(&s, &init_req(), 1000, &mut TestRng(2)).unwrap_err();
        assert!(matches!(e, ControlError::AlreadyInitialized));
        assert_eq!(s.list::<Network>().unwrap().len(), 1);
    }

    #[test]
    fn init_validates_and_writes_nothing_on_error() {
        let s = MemStore::new();
        let mut r = init_req();
        r.data_path_port = Some(80);
        assert!(
            swarm_init(&s, &r, 0, &mut TestRng(1))
                .unwrap_err()
                .to_string()
                .contains("1024..=49151")
        );
        let mut r = init_req();
        r.hostname = "a b".into();
        assert!(matches!(
            swarm_init(&s, &r, 0, &mut TestRng(1)),
            Err(ControlError::InvalidHostname(_))
        ));
        let mut r = init_req();
        r.default_pool = Some(AddressPool {
            base: "10.0.0.0/16".parse().unwrap(),
            size: 12,
        });
        assert!(matches!(
            swarm_init(&s, &r, 0, &mut TestRng(1)),
            Err(ControlError::InvalidPool { .. })
        ));
        assert!(matches!(cluster(&s), Err(ControlError::NotInitialized)));
        assert!(s.list::<Node>().unwrap().is_empty());
        assert!(s.list::<Network>().unwrap().is_empty());

        // A configured pool is used for ingress.
        let mut r = init_req();
        r.default_pool = Some(AddressPool {
            base: "172.20.0.0/16".parse().unwrap(),
            size: 26,
        });
        r.data_path_port = Some(4790);
        let res = swarm_init(&s, &r, 0, &mut TestRng(1)).unwrap();
        assert_eq!(res.ingress.ipv4.subnet.to_string(), "172.20.0.0/26");
        assert_eq!(res.node.data_path_port, 4790);
        assert_eq!(add_worker(&s, "w").data_path_port, 4790);
    }

    #[test]
    fn join_tokens_rotate() {
        let s = MemStore::new();
        let (c, _) = init(&s);
        assert_eq!(token_role(&c, &c.tokens.worker), Some(Role::Worker));
        assert_eq!(token_role(&c, &c.tokens.manager), Some(Role::Manager));
        assert_eq!(token_role(&c, "SWMTKN-1-cadigest-nope"), None);
        let (digest, secret) = parse_token(&c.tokens.worker).unwrap();
        assert_eq!(digest, "cadigest");
        assert!(is_id(secret));
        assert_eq!(parse_token("SWMTKN-1-a-b-c"), None);
        assert_eq!(
            parse_token("SWMTKN-2-cadigest-aaaaaaaaaaaaaaaaaaaaaaaaa"),
            None
        );
        assert_eq!(parse_token("SWMTKN-1--aaaaaaaaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(
            parse_token("SWMTKN-1-sha-256-aaaaaaaaaaaaaaaaaaaaaaaaa"),
            Some(("sha-256", "aaaaaaaaaaaaaaaaaaaaaaaaa"))
        );
        let t = rotate_join_token(&s, Role::Worker, "cadigest", 2000, &mut TestRng(9)).unwrap();
        let c2 = cluster(&s).unwrap();
        assert_eq!(token_role(&c2, &c.tokens.worker), None, "old token refused");
        assert_eq!(token_role(&c2, &t), Some(Role::Worker));
        assert_eq!(c2.tokens.worker_rotated, 2000);
        assert_eq!(c2.tokens.manager, c.tokens.manager);
    }

    #[test]
    fn gossip_keyring_keeps_three() {
        let s = MemStore::new();
        let (c, _) = init(&s);
        assert!(!gossip_rotation_due(
            &c,
            1000 + GOSSIP_KEY_ROTATION_SECS - 1
        ));
        assert!(gossip_rotation_due(&c, 1000 + GOSSIP_KEY_ROTATION_SECS));
        let mut rng = TestRng(4);
        let mut last = c;
        for i in 0..4u64 {
            last = rotate_gossip_key(&s, 2000 + i, &mut rng).unwrap();
        }
        let gens: Vec<u32> = last.gossip_keys.iter().map(|k| k.id).collect();
        assert_eq!(gens, [3, 4, 5]);
        let p = last.primary_gossip_key().unwrap();
        assert_eq!((p.id, p.created), (5, 2003));
        assert_eq!(B64.decode(&p.key).unwrap().len(), 32);
        // The stored keys load into the gossip keyring, primary last.
        let mut ring = crate::gossip::Keyring::new();
        for k in &last.gossip_keys {
            ring.install_key(k.to_keyring().unwrap()).unwrap();
        }
        ring.set_primary(crate::gossip::KeyId(p.id)).unwrap();
        assert_eq!(ring.key_ids().len(), 3);
        assert!(!format!("{p:?}").contains(&p.key), "Debug leaks the secret");
        let mut bad = p.clone();
        bad.key = B64.encode([0u8; 16]);
        assert!(bad.to_keyring().is_none());
        let distinct: std::collections::BTreeSet<&str> =
            last.gossip_keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(distinct.len(), 3);
        assert_eq!(cluster(&s).unwrap(), last);
    }

    #[test]
    fn gossip_rotation_in_three_steps() {
        let s = MemStore::new();
        let (c, _) = init(&s);
        assert!(gossip_rotation_due_after(&c, 1010, 10));
        assert!(!gossip_rotation_due_after(&c, 1009, 10));
        let ids = |c: &Cluster| c.gossip_keys.iter().map(|k| k.id).collect::<Vec<_>>();
        let mut rng = TestRng(5);
        // Nothing to promote or retire before a rotation starts.
        assert_eq!(promote_gossip_key(&s).unwrap(), None);
        assert_eq!(retire_gossip_keys(&s).unwrap(), None);
        for round in 0..3u32 {
            let before = cluster(&s).unwrap();
            let primary = before.primary_gossip_key().unwrap().clone();
            // 1: installed, the primary unchanged.
            let c = begin_gossip_rotation(&s, 2000, &mut rng).unwrap().unwrap();
            assert_eq!(c.primary_gossip_key(), Some(&primary));
            let new = pending_gossip_key(&c).unwrap().clone();
            assert_eq!(new.id, primary.id + 1);
            assert!(c.gossip_keys.len() <= GOSSIP_KEYRING_LEN);
            // A second start, or a retirement, waits for the promotion.
            assert_eq!(begin_gossip_rotation(&s, 2000, &mut rng).unwrap(), None);
            assert_eq!(retire_gossip_keys(&s).unwrap(), None);
            // 2: the new key sends, the old ones still open.
            let c = promote_gossip_key(&s).unwrap().unwrap();
            assert_eq!(c.primary_gossip_key(), Some(&new));
            assert!(pending_gossip_key(&c).is_none());
            assert!(c.gossip_keys.contains(&primary));
            // 3: the oldest goes once the keyring is full; one spare stays.
            let retired = retire_gossip_keys(&s).unwrap();
            assert_eq!(retired.is_some(), round > 0, "round {round}");
            let c = cluster(&s).unwrap();
            assert_eq!(ids(&c), [primary.id, new.id]);
        }
    }

    #[test]
    fn nodes_status_and_removal() {
        let s = MemStore::new();
        let (_, m) = init(&s);
        let w = add_worker(&s, "host2");
        assert_eq!(w.role, Role::Worker);
        assert_eq!(w.data_path_addr, w.advertise_addr);
        let hosts: Vec<String> = list_nodes(&s, None)
            .unwrap()
            .into_iter()
            .map(|n| n.hostname)
            .collect();
        assert_eq!(hosts, ["host1", "host2"]);
        assert_eq!(list_nodes(&s, Some(Role::Worker)).unwrap().len(), 1);
        assert_eq!(
            set_node_availability(&s, "host2", Availability::Drain)
                .unwrap()
                .availability,
            Availability::Drain
        );

        // A container on the worker.
        let r = crate::networks::CreateNetwork {
            name: "n".into(),
            attachable: true,
            ..Default::default()
        };
        let net = crate::networks::create_network(&s, &r, 1, &mut TestRng(3)).unwrap();
        let c = crate::containers::create_container(
            &s,
            &crate::containers::CreateContainer {
                name: "c".into(),
                node: w.id.clone(),
                netns: None,
                networks: vec![crate::containers::NetworkRequest {
                    network: "n".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            1,
            &mut TestRng(4),
        )
        .unwrap();

        let e = remove_node(&s, "host2", false, &m.id).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(matches!(
            remove_node(&s, "host1", true, &m.id),
            Err(ControlError::RemoveSelf(_))
        ));
        set_node_status(&s, &w.id, NodeStatus::Down).unwrap();
        remove_node(&s, "host2", false, &m.id).unwrap();
        assert!(matches!(
            resolve_node(&s, "host2"),
            Err(ControlError::NodeNotFound(_))
        ));
        assert!(s.get::<Container>(&c.id).unwrap().is_none());
        let ip = c.attachments[0].ipv4;
        assert!(
            s.get::<AddressAlloc>(&AddressAlloc::key_of(&net.id, ip.into()))
                .unwrap()
                .is_none()
        );
        // The network can go now.
        crate::networks::remove_network(&s, "n").unwrap();
    }

    #[test]
    fn state_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (c, n) = {
            let s = RedbStore::open(&path).unwrap();
            init(&s)
        };
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(cluster(&s).unwrap(), c);
        assert_eq!(resolve_node(&s, &n.id).unwrap(), n);
        assert_eq!(
            crate::networks::resolve_network(&s, INGRESS_NAME)
                .unwrap()
                .vni
                .get(),
            crate::networks::VNI_FIRST
        );
    }
}
