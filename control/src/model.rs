//! The desired state of a swarm as records of the store: the records the
//! API shows ([`vxnet_api::model`]: nodes, networks, containers) keyed
//! here for the store, and those only the control plane keeps (address
//! allocations, the cluster singleton with its keys and tokens).
//!
//! These types own no behaviour beyond small helpers; the rules live in
//! [`crate::networks`], [`crate::containers`], [`crate::cluster`] and
//! [`crate::ipam`]. Each record knows its table and key ([`Record`]), and
//! new fields must carry `#[serde(default)]` so an older store still loads.

use std::net::IpAddr;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::store::Record;

pub use vxnet_api::model::*;

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

impl Record for Node {
    const TABLE: &'static str = "nodes";
    fn key(&self) -> String {
        self.id.clone()
    }
}

impl Record for Network {
    const TABLE: &'static str = "networks";
    fn key(&self) -> String {
        self.id.clone()
    }
}

impl Record for Service {
    const TABLE: &'static str = "services";
    fn key(&self) -> String {
        self.id.clone()
    }
}

impl Record for Container {
    const TABLE: &'static str = "containers";
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
    /// A service's virtual IP.
    Service(String),
    /// A node's endpoint on the ingress network.
    Node(String),
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
    fn address_records_round_trip_json() {
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
