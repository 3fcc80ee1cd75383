//! vxnet-api: the one schema of vxnet's local APIs, compiled by both sides
//! of each boundary (STYLE §10).
//!
//! - [`dp`]: the dataplane's API (`vxnet dp ...`, and `vxnet-control`'s
//!   reconciler programming the dataplane).
//! - [`ctl`]: the control daemon's API (`vxnet swarm|node|network|container`).
//! - [`model`]: the swarm records those views show (nodes, networks,
//!   containers).
//! - [`call`]: the [`Response`] envelope and [`Call`], a request type that
//!   names its reply type.
//! - [`error`]: [`ApiError`] with an [`ErrorCode`] the CLI maps to its exit
//!   status.
//! - [`client`], [`server`]: newline-delimited JSON over a Unix socket.
//!
//! Domain values have one type each, everywhere: a VNI is a [`Vni`], a MAC
//! a [`MacAddr`], an interface address an [`ipnet::IpNet`], a host key a
//! [`PublicKey`]. Every request struct is `#[serde(deny_unknown_fields)]`.

#![forbid(unsafe_code)]

pub mod call;
pub mod client;
pub mod ctl;
pub mod dp;
pub mod error;
pub mod model;
pub mod observe;
pub mod server;
#[cfg(test)]
mod testutil;
pub mod trace;

pub use call::{Call, Response};
pub use error::{ApiError, ApiResult, ErrorCode};
pub use ipnet::{IpNet, Ipv4Net};
pub use vxnet_proto::crypto::keys::PublicKey;
pub use vxnet_proto::wire::{MacAddr, Vni};
