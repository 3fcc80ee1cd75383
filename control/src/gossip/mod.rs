//! Swarm membership and gossip (UDP/TCP 7946), sans-IO.
//!
//! This module owns everything a host says to its peers on the gossip
//! port; the daemon owns the sockets and the clock and only moves bytes:
//!
//! - [`identity`]: [`NodeIdentity`], what every member learns about every
//!   other (gossip address, VTEP address and port, X25519 public key,
//!   generation).
//! - [`membership`]: [`Membership`], SWIM failure detection by the `foca`
//!   crate, driven quinn-style (`handle_*` in, `poll_*` out), with the
//!   timing that declares a dead host Down within 5 seconds.
//! - [`endpoints`]: [`EndpointRecord`]s (Docker's peer records), spread
//!   piggybacked on SWIM messages, newest version wins, removals
//!   tombstoned; plus full-state snapshots for the TCP sync.
//! - [`keyring`]: AES-256-GCM sealing of every packet under a keyring of
//!   up to three cluster keys, with lossless rotation.
//!
//! Randomness comes in as a seed and time as `Instant`s, so tests run a
//! whole cluster on a virtual clock (see `tests/gossip_sim.rs`).
#![forbid(unsafe_code)]

pub mod endpoints;
pub mod identity;
pub mod keyring;
pub mod membership;

pub use endpoints::{EndpointEvent, EndpointRecord};
pub use identity::NodeIdentity;
pub use keyring::{GossipKey, KeyId, Keyring, KeyringError, OpenError};
pub use membership::{
    DropReason, GossipConfig, GossipStats, MemberEvent, Membership, MembershipError, TimerEvent,
};
