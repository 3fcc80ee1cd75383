//! A node's gossip identity: who it is and how to reach it.
//!
//! This module owns [`NodeIdentity`], the value foca spreads about every
//! member, so every host learns each peer's data-path address (its VTEP)
//! and X25519 public key from membership alone.
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Longest accepted node id, in bytes (Docker's are 25 characters).
pub const MAX_NODE_ID_LEN: usize = 64;

/// Everything a peer needs to know about a member.
///
/// Foca keys members by [`Self::gossip_addr`] (so `join` needs only an
/// address). Of two identities with the same gossip address, the one with
/// the higher [`Self::generation`] wins: a node that restarts with a new
/// generation replaces its old self everywhere and resyncs, and a node
/// wrongly declared Down bumps its generation by itself and rejoins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Cluster-unique node id (the manager's node id, at most
    /// [`MAX_NODE_ID_LEN`] bytes).
    pub node_id: String,
    /// Gossip address (`--advertise-addr`, port 7946).
    pub gossip_addr: SocketAddr,
    /// Data-path address (`--data-path-addr`), the VTEP for VXLAN.
    pub data_addr: IpAddr,
    /// Data-path UDP port (`--data-path-port`, 4789 by default).
    pub data_port: u16,
    /// The node's X25519 public key for encrypted networks.
    pub public_key: [u8; 32],
    /// Bumped on every restart (the daemon persists it or uses its start
    /// time in seconds) and on every automatic rejoin.
    pub generation: u32,
}

impl NodeIdentity {
    /// A placeholder for a seed we know only by address: foca accepts an
    /// announce addressed to any identity with the receiver's address.
    pub(crate) fn seed(addr: SocketAddr) -> Self {
        Self {
            node_id: String::new(),
            gossip_addr: addr,
            data_addr: addr.ip(),
            data_port: 0,
            public_key: [0; 32],
            generation: 0,
        }
    }

    /// Whether the fields are in range (checked on identities from the
    /// wire before they are reported to the daemon).
    pub fn is_valid(&self) -> bool {
        !self.node_id.is_empty() && self.node_id.len() <= MAX_NODE_ID_LEN
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        let generation = self.generation.checked_add(1)?;
        Some(Self {
            generation,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Higher generation wins; the rest only makes the order total so
        // every member picks the same winner.
        (self.generation, &self.node_id, &self.public_key)
            > (
                adversary.generation,
                &adversary.node_id,
                &adversary.public_key,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(generation: u32) -> NodeIdentity {
        NodeIdentity {
            node_id: "node1".into(),
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            data_addr: "10.0.0.1".parse().unwrap(),
            data_port: 4789,
            public_key: [1; 32],
            generation,
        }
    }

    #[test]
    fn renew_bumps_generation_and_wins() {
        let old = id(4);
        let new = old.renew().unwrap();
        assert_eq!(new.generation, 5);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert!(id(u32::MAX).renew().is_none());
    }

    #[test]
    fn validity() {
        assert!(id(0).is_valid());
        assert!(!NodeIdentity::seed("127.0.0.1:1".parse().unwrap()).is_valid());
        let mut long = id(0);
        long.node_id = "x".repeat(MAX_NODE_ID_LEN + 1);
        assert!(!long.is_valid());
    }
}
