//! The swarm management plane on TCP 2377: the manager's certificate
//! authority, join tokens, and mutual-TLS RPC between nodes and managers.
//!
//! Unlike the rest of this crate, this module does I/O (tokio sockets); the
//! rules it applies stay in [`crate::cluster`].
//!
//! - [`ca`]: the swarm CA ([`SwarmCa`]) and node identities
//!   ([`NodeIdentity`]); PEM in and out, so the daemon stores them.
//! - [`token`]: the joiner's strict parse of `SWMTKN-1-<digest>-<secret>`.
//! - [`rpc`]: the typed [`Request`]/[`Response`] messages and their
//!   length-prefixed JSON framing.
//! - [`tls`]: rustls configuration (ring provider) and the verifier that
//!   pins the manager to the swarm's CA.
//! - [`server`]: [`MgmtServer`], which checks who the peer is and what it
//!   may call, then hands the request to the daemon's [`Handler`].
//! - [`client`]: the function [`join`] (token-pinned, before any certificate exists)
//!   and [`MgmtClient`] (mutual TLS afterwards).
//! - [`mod@admit`]: the manager's side of a join over the store, for the
//!   daemon's [`Handler::join`].
//!
//! The join handshake, and why it is safe to send the token: the joiner
//! parses the token's CA digest, opens TLS with a verifier that accepts only
//! a chain whose CA certificate has that digest and whose leaf is a
//! manager's, and sends its [`JoinRequest`] only after the handshake
//! succeeded. A man in the middle without the CA key cannot complete it, so
//! the secret never reaches anyone but the swarm's manager.
//!
//! Wiring for the daemon, manager side:
//! ```text
//! init:   ca = SwarmCa::generate(now); InitRequest { ca_digest: ca.digest(), .. }
//!         store.put(&ca.to_pem()); identity = ca.issue_identity(&node.id, Role::Manager, now)
//! serve:  MgmtServer::bind(addr, &identity, Arc::new(handler)).await?.serve().await
//!         where Handler::join calls mgmt::admit(store, &ca, &req, from, now, rng)
//! rotate: cluster::rotate_join_token(store, role, ca.digest(), now, rng)
//! ```
//! Joining host: `mgmt::join(manager, token, &params).await?` gives
//! [`Joined`]; keep `joined.identity` and call managers with
//! `MgmtClient::connect(manager, &identity)`.

pub mod admit;
pub mod ca;
pub mod calls;
pub mod client;
pub mod rpc;
pub mod server;
pub mod tls;
pub mod token;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;

pub use admit::admit;
pub use ca::{CaError, CaPem, NodeIdentity, SwarmCa, ca_digest};
pub use client::{JoinParams, Joined, MgmtClient, join};
pub use rpc::{
    Access, ClusterSettings, ErrorCode, JoinRequest, JoinResponse, Request, Response, RpcError,
};
pub use server::{MgmtServer, ServerStats};
pub use token::{JoinToken, TokenError};

use crate::model::Role;

/// The management port, as Docker's.
pub const MGMT_PORT: u16 = 2377;

/// A peer whose certificate TLS has verified against the swarm CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub node_id: String,
    pub role: Role,
}

/// The daemon's side of the management port. The server has already
/// checked access ([`Access`]) when a method runs.
pub trait Handler: Send + Sync + 'static {
    /// A host asks to join; it has no certificate yet, `from` is where its
    /// connection came from. Usually [`admit()`] under the store's lock.
    fn join(
        &self,
        req: JoinRequest,
        from: SocketAddr,
    ) -> impl Future<Output = Result<JoinResponse, RpcError>> + Send;

    /// Every other request ([`Request::NodeList`], [`Request::Node`]) from
    /// a verified peer.
    fn handle(
        &self,
        peer: &Peer,
        req: Request,
    ) -> impl Future<Output = Result<Response, RpcError>> + Send;
}

/// Errors of the management plane; the messages reach the user.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the manager at {addr} is not the swarm this token belongs to (CA digest mismatch)")]
    CaMismatch { addr: SocketAddr },
    #[error(
        "the manager at {addr} did not present a manager certificate of this swarm; is it still a manager of the swarm this node belongs to?"
    )]
    NotOurManager { addr: SocketAddr },
    #[error(
        "cannot reach the manager at {addr}: {source}; check the address, that vxnet-control runs there, and that firewalls let TCP {MGMT_PORT} through"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with the manager at {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the manager at {addr} did not answer within {secs} s; check that vxnet-control runs there and that firewalls let TCP {MGMT_PORT} through"
    )]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("management connection with {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        source: rpc::FrameError,
    },
    /// The manager refused the request; its message says why.
    #[error("{0}")]
    Refused(RpcError),
    #[error("the manager at {addr} sent an unexpected answer: {what}")]
    Unexpected { addr: SocketAddr, what: String },
    #[error("cannot listen on {addr} for management traffic: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl MgmtError {
    /// The refusal's code, when the manager refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            MgmtError::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

impl From<MgmtError> for vxnet_api::ApiError {
    fn from(e: MgmtError) -> Self {
        use vxnet_api::ErrorCode as A;
        let code = match &e {
            MgmtError::Refused(r) => r.code.into(),
            MgmtError::Token(_) => A::InvalidArgument,
            MgmtError::CaMismatch { .. } | MgmtError::NotOurManager { .. } => A::FailedPrecondition,
            MgmtError::Timeout { .. } => A::Timeout,
            MgmtError::Connect { .. } | MgmtError::Tls { .. } | MgmtError::Frame { .. } => {
                A::Unavailable
            }
            MgmtError::Ca(_) | MgmtError::Unexpected { .. } | MgmtError::Bind { .. } => A::Internal,
        };
        vxnet_api::ApiError::new(code, e.to_string())
    }
}
