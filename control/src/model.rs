//! The desired state of a swarm as plain serde records: nodes, overlay
//! networks, address allocations, containers and the cluster singleton
//! (keys, tokens, address pool).
//!
//! These types own no behaviour beyond small helpers; the rules live in
//! [`crate::networks`], [`crate::containers`], [`crate::cluster`] and
//! [`crate::ipam`]. Each record knows its table and key ([`Record`]), and
//! new fields must carry `#[serde(default)]` so an older store still loads.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::store::Record;

/// Length of object ids, as Docker's swarm ids.
pub const ID_LEN: usize = 25;

const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A random id of [`ID_LEN`] lowercase letters and digits.
pub fn new_id(rng: &mut dyn RngCore) -> String {
    // Rejection sampling keeps every character uniform (256 % 36 != 0).
    let mut id = String::with_capacity(ID_LEN);
    while id.len() < ID_LEN {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        for x in b {
            if id.len() < ID_LEN && (x as usize) < 252 {
                id.push(char::from(ID_ALPHABET[x as usize % 36]));
            }
        }
    }
    id
}

/// Whether `s` looks like an id made by [`new_id`].
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| ID_ALPHABET.contains(&b))
}

/// Seconds since the Unix epoch; the caller reads the clock.
pub type UnixTime = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Down,
}

/// A host in the swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    /// Address for management (2377) and gossip (7946).
    pub advertise_addr: IpAddr,
    /// Address the node's VXLAN traffic uses (`--data-path-addr`; equals
    /// `advertise_addr` unless given).
    pub data_path_addr: IpAddr,
    /// UDP port of the data path (cluster-wide, 4789 by default).
    pub data_path_port: u16,
    /// The node's X25519 public key for ESP key agreement, base64.
    pub public_key: String,
    pub created: UnixTime,
}

impl Record for Node {
    const TABLE: &'static str = "nodes";
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// The only network driver vxnet has.
pub const DRIVER_OVERLAY: &str = "overlay";

/// IPv4 addressing of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Config {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Container addresses come from here (`--ip-range`); the whole subnet
    /// when absent.
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
}

/// IPv6 addressing of a network (only when the user gives a subnet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    pub subnet: Ipv6Net,
    pub gateway: std::net::Ipv6Addr,
    #[serde(default)]
    pub ip_range: Option<Ipv6Net>,
}

/// An overlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// Always [`DRIVER_OVERLAY`].
    pub driver: String,
    pub vni: u32,
    pub ipv4: Ipv4Config,
    #[serde(default)]
    pub ipv6: Option<Ipv6Config>,
    /// Standalone containers may join.
    pub attachable: bool,
    /// The swarm's routing-mesh network (at most one).
    pub ingress: bool,
    /// Data traffic is ESP-encrypted.
    pub encrypted: bool,
    /// MTU inside the containers.
    pub mtu: u16,
    pub created: UnixTime,
}

impl Network {
    /// The network's subnets, IPv4 first.
    pub fn subnets(&self) -> Vec<IpNet> {
        let mut v = vec![IpNet::V4(self.ipv4.subnet)];
        if let Some(c) = &self.ipv6 {
            v.push(IpNet::V6(c.subnet));
        }
        v
    }
}

impl Record for Network {
    const TABLE: &'static str = "networks";
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// Who holds an allocated address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum AddressOwner {
    Gateway,
    Container(String),
}

/// One allocated address of one network. Kept as its own record, written in
/// the same transaction as its owner, so an address is never handed out
/// twice, restarts included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressAlloc {
    pub network: String,
    pub ip: IpAddr,
    pub owner: AddressOwner,
}

impl AddressAlloc {
    pub fn key_of(network: &str, ip: IpAddr) -> String {
        format!("{network}/{ip}")
    }
}

impl Record for AddressAlloc {
    const TABLE: &'static str = "addresses";
    fn key(&self) -> String {
        Self::key_of(&self.network, self.ip)
    }
}

/// A container's membership in one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// `02:42:` followed by the IPv4 address, as Docker does: unique within
    /// the network because the address is.
    pub mac: String,
}

/// A container (a network namespace plus what runs in it) or an endpoint of
/// another runtime's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Path of its network namespace, once known.
    #[serde(default)]
    pub netns: Option<String>,
    /// In the order joined; the first is the primary network.
    pub attachments: Vec<Attachment>,
    pub created: UnixTime,
}

impl Container {
    pub fn attachment(&self, network_id: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.network == network_id)
    }
}

impl Record for Container {
    const TABLE: &'static str = "containers";
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// One gossip encryption key as stored (the live form is
/// [`crate::gossip::GossipKey`], see [`StoredGossipKey::to_keyring`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGossipKey {
    /// 32 random bytes (AES-256-GCM), base64.
    pub key: String,
    /// Increases by one per rotation: the [`crate::gossip::KeyId`] carried
    /// in every packet it seals.
    pub id: u32,
    pub created: UnixTime,
}

impl StoredGossipKey {
    /// The key for the gossip keyring; `None` if the stored secret is not
    /// 32 bytes of base64.
    pub fn to_keyring(&self) -> Option<crate::gossip::GossipKey> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .ok()?;
        Some(crate::gossip::GossipKey {
            id: crate::gossip::KeyId(self.id),
            secret: bytes.try_into().ok()?,
        })
    }
}

impl std::fmt::Debug for StoredGossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("StoredGossipKey")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Join tokens: `SWMTKN-1-<CA digest>-<secret>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub worker_rotated: UnixTime,
    pub manager: String,
    pub manager_rotated: UnixTime,
}

/// Where network subnets come from when the user gives none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub base: Ipv4Net,
    /// Prefix length of each network's subnet.
    pub size: u8,
}

impl Default for AddressPool {
    /// Docker's default: 10.0.0.0/8 in /24s.
    fn default() -> Self {
        Self {
            base: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default(),
            size: 24,
        }
    }
}

/// The cluster singleton, written by `swarm init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub created: UnixTime,
    /// Up to three keys, oldest first, except that a key being spread by a
    /// rotation sits just before the last; the last is the one to send
    /// with, all are accepted on receive (see [`crate::daemon::keys`]).
    pub gossip_keys: Vec<StoredGossipKey>,
    pub tokens: JoinTokens,
    pub default_pool: AddressPool,
    /// VXLAN UDP port for the whole swarm.
    pub data_path_port: u16,
}

impl Cluster {
    pub const KEY: &'static str = "cluster";

    /// The key to encrypt gossip with.
    pub fn primary_gossip_key(&self) -> Option<&StoredGossipKey> {
        self.gossip_keys.last()
    }
}

impl Record for Cluster {
    const TABLE: &'static str = "cluster";
    fn key(&self) -> String {
        Self::KEY.to_owned()
    }
}

/// Docker's MAC for a container address: `02:42:` then the four bytes.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
pub(crate) mod test_rng {
    use rand_core::{RngCore, impls};

    /// Deterministic xorshift64* for reproducible tests.
    pub struct TestRng(pub u64);

    impl TestRng {
        /// A generator seeded from a string (FNV-1a), so helpers keyed by a
        /// name get distinct ids for distinct names.
        pub fn from_name(name: &str) -> Self {
            let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            TestRng(h)
        }
    }

    impl RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0.max(1);
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            impls::fill_bytes_via_next(self, dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_rng::TestRng;
    use super::*;

    #[test]
    fn ids_are_docker_shaped_and_distinct() {
        let mut rng = TestRng(7);
        let a = new_id(&mut rng);
        let b = new_id(&mut rng);
        assert!(is_id(&a), "{a}");
        assert!(is_id(&b));
        assert_ne!(a, b);
        assert!(!is_id("ABC"));
        assert!(!is_id(&"A".repeat(ID_LEN)));
        let os = new_id(&mut rand_core::OsRng);
        assert!(is_id(&os));
    }

    #[test]
    fn mac_follows_docker() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 0, 1, 2)), "02:42:0a:00:01:02");
    }

    #[test]
    fn records_round_trip_json() {
        let n = Network {
            id: "n".repeat(ID_LEN),
            name: "test-net".into(),
            driver: DRIVER_OVERLAY.into(),
            vni: 4096,
            ipv4: Ipv4Config {
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                ip_range: Some("10.0.1.128/25".parse().unwrap()),
            },
            ipv6: Some(Ipv6Config {
                subnet: "fd00::/64".parse().unwrap(),
                gateway: "fd00::1".parse().unwrap(),
                ip_range: None,
            }),
            attachable: true,
            ingress: false,
            encrypted: true,
            mtu: 1408,
            created: 1,
        };
        let s = serde_json::to_string(&n).unwrap();
        assert!(s.contains("\"subnet\":\"10.0.1.0/24\""), "{s}");
        assert_eq!(serde_json::from_str::<Network>(&s).unwrap(), n);

        let a = AddressAlloc {
            network: "x".into(),
            ip: "10.0.0.1".parse().unwrap(),
            owner: AddressOwner::Container("c1".into()),
        };
        assert_eq!(a.key(), "x/10.0.0.1");
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<AddressAlloc>(&s).unwrap(), a);
        assert_eq!(AddressPool::default().base.to_string(), "10.0.0.0/8");
    }
}
