//! vxnet-control: the per-host control plane's sans-IO building blocks.
//! The daemon (`main.rs`) owns sockets and clocks and drives them.
//!
//! Layers, bottom up:
//! - [`store`]: the one place of truth, a key/value [`store::Store`] with
//!   all-or-nothing transactions ([`store::RedbStore`] on disk,
//!   [`store::MemStore`] in tests). A Raft-replicated store can replace it.
//! - [`model`]: the records kept there (nodes, networks, address
//!   allocations, containers, the cluster singleton).
//! - [`ipam`]: subnet and address choice, pure functions over what is taken.
//! - [`cluster`], [`networks`], [`containers`]: the operations the daemon
//!   calls for `vxnet swarm`/`node`, `network` and `container` commands,
//!   each a function over the store that validates its input with Docker's
//!   rules and writes its result in one transaction.
//! - [`gossip`]: membership, failure detection and endpoint spreading
//!   between hosts (SWIM on port 7946).
//! - [`daemon`]: the process's request handling and dataplane
//!   reconciliation over these, behind narrow dataplane and host traits.
//!
//! Nothing here but [`daemon`] reads the clock or opens a socket: callers pass `now` and a
//! random source, so every rule is tested deterministically.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod containers;
pub mod daemon;
pub mod dns;
pub mod error;
pub mod gossip;
pub mod ipam;
pub mod mgmt;
pub mod model;
pub mod networks;
pub mod scheduler;
pub mod services;
pub mod store;

pub use error::{ControlError, Result};
