//! The client end of the management port: [`join`] for a host that has only
//! a token, [`MgmtClient`] for a node with its certificate.
//!
//! Every step has a deadline ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`]) so
//! `vxnet swarm join` fails with a message instead of hanging, as Docker's
//! does when a firewall eats the packets.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ca::{NodeIdentity, identity_of, new_key_and_csr};
use super::rpc::{
    ClusterSettings, FrameError, JoinRequest, Reply, Request, Response, read_frame, write_frame,
};
use super::tls::{CaPin, ManagerVerifier, client_config, pin_of};
use super::token::JoinToken;
use super::{ErrorCode, MgmtError};
use crate::model::{Node, StoredGossipKey};

/// Time allowed for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one request's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a joining host says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinParams {
    pub hostname: String,
    /// `--advertise-addr`; the manager uses the connection's source address
    /// when absent.
    pub advertise_addr: Option<IpAddr>,
    /// `--data-path-addr`; the advertise address when absent.
    pub data_path_addr: Option<IpAddr>,
    /// The host's X25519 dataplane public key.
    pub public_key: vxnet_api::PublicKey,
}

/// A completed join.
#[derive(Clone, Debug)]
pub struct Joined {
    /// Certificate, key and CA for every later management call; keep it.
    pub identity: NodeIdentity,
    /// The node record the manager made.
    pub node: Node,
    /// The gossip keyring, oldest first.
    pub gossip_keys: Vec<StoredGossipKey>,
    pub settings: ClusterSettings,
}

/// A mutual-TLS connection to a manager. Requests go one at a time.
pub struct MgmtClient {
    tls: TlsStream<TcpStream>,
    addr: SocketAddr,
}

impl std::fmt::Debug for MgmtClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MgmtClient {
    /// Connects to a manager with this node's identity; the manager must
    /// present a manager certificate of the identity's CA.
    pub async fn connect(addr: SocketAddr, identity: &NodeIdentity) -> Result<Self, MgmtError> {
        Self::open(addr, pin_of(identity)?, Some(identity)).await
    }

    pub(crate) async fn open(
        addr: SocketAddr,
        pin: CaPin,
        identity: Option<&NodeIdentity>,
    ) -> Result<Self, MgmtError> {
        let by_digest = matches!(pin, CaPin::Digest(_));
        let (verifier, mismatch) = ManagerVerifier::new(pin);
        let cfg = client_config(verifier, identity)?;
        let secs = CONNECT_TIMEOUT.as_secs();
        let tcp = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(MgmtError::Connect { addr, source }),
            Err(_) => return Err(MgmtError::Timeout { addr, secs }),
        };
        // Names are not checked (managers are reached by address, their
        // certificates name node ids); the verifier checks the CA instead.
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = match timeout(CONNECT_TIMEOUT, TlsConnector::from(cfg).connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) if mismatch.load(Ordering::Relaxed) => {
                return Err(if by_digest {
                    MgmtError::CaMismatch { addr }
                } else {
                    MgmtError::NotOurManager { addr }
                });
            }
            Ok(Err(source)) => return Err(MgmtError::Tls { addr, source }),
            Err(_) => return Err(MgmtError::Timeout { addr, secs }),
        };
        Ok(Self { tls, addr })
    }

    /// Sends one request and waits for its answer; a refusal becomes
    /// [`MgmtError::Refused`] carrying the manager's message.
    pub async fn request(&mut self, req: &Request) -> Result<Response, MgmtError> {
        let addr = self.addr;
        let frame = |source: FrameError| match source {
            // The manager dropped us: in TLS 1.3 a refused client
            // certificate shows up here, as an alert on the first read.
            FrameError::Io(source)
                if source
                    .get_ref()
                    .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some()) =>
            {
                MgmtError::Tls { addr, source }
            }
            source => MgmtError::Frame { addr, source },
        };
        let exchange = async {
            write_frame(&mut self.tls, req).await.map_err(frame)?;
            read_frame::<Reply, _>(&mut self.tls).await.map_err(frame)
        };
        match timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(e))) => Err(MgmtError::Refused(e)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MgmtError::Timeout {
                addr,
                secs: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    /// `Request::NodeList` (managers only).
    pub async fn node_list(&mut self) -> Result<Vec<Node>, MgmtError> {
        match self.request(&Request::NodeList).await? {
            Response::Nodes(n) => Ok(n),
            other => Err(self.unexpected(&other)),
        }
    }

    /// A node's call to its manager, decoded as the call's reply.
    pub async fn call<C>(&mut self, call: C) -> Result<C::Reply, MgmtError>
    where
        C: vxnet_api::Call<Request = super::calls::ManagerCall>,
    {
        match self.request(&Request::Node(call.into_request())).await? {
            Response::Value(v) => serde_json::from_value(v).map_err(|e| MgmtError::Unexpected {
                addr: self.addr,
                what: format!(
                    "an answer this node does not understand ({e}); are both on the same version?"
                ),
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, r: &Response) -> MgmtError {
        let what = match r {
            Response::Joined(_) => "joined",
            Response::Nodes(_) => "nodes",
            Response::Value(_) => "value",
        };
        MgmtError::Unexpected {
            addr: self.addr,
            what: format!("a '{what}' response"),
        }
    }
}

/// `vxnet swarm join`: checks the manager against the token's CA digest,
/// and only then sends the token and a CSR; returns the new identity.
pub async fn join(
    manager: SocketAddr,
    token: &str,
    params: &JoinParams,
) -> Result<Joined, MgmtError> {
    let token = JoinToken::parse(token)?;
    let (key_pem, csr_pem) = new_key_and_csr()?;
    let mut c = MgmtClient::open(manager, CaPin::Digest(token.digest().to_owned()), None).await?;
    let req = Request::Join(JoinRequest {
        token: token.to_string(),
        hostname: params.hostname.clone(),
        advertise_addr: params.advertise_addr,
        data_path_addr: params.data_path_addr,
        public_key: params.public_key,
        csr_pem,
    });
    let j = match c.request(&req).await {
        Ok(Response::Joined(j)) => *j,
        Ok(other) => return Err(c.unexpected(&other)),
        Err(e) => return Err(e),
    };
    let bad = |what: String| MgmtError::Unexpected {
        addr: manager,
        what,
    };
    let identity = NodeIdentity {
        node_id: j.node.id.clone(),
        role: j.node.role,
        cert_pem: j.cert_pem,
        key_pem,
        ca_cert_pem: j.ca_cert_pem,
    };
    // The answer must be usable: the CA the token pinned, a certificate for
    // the node and role it names.
    if identity.ca_digest()? != token.digest() {
        return Err(bad("a CA certificate other than the token's".into()));
    }
    let leaf = CertificateDer::from_pem_slice(identity.cert_pem.as_bytes())
        .map_err(|e| bad(format!("a malformed certificate ({e})")))?;
    let (id, role) = identity_of(&leaf)?;
    if id != identity.node_id || role != identity.role {
        return Err(bad(format!(
            "a certificate for {id} ({role:?}) instead of node {} ({:?})",
            identity.node_id, identity.role
        )));
    }
    Ok(Joined {
        identity,
        node: j.node,
        gossip_keys: j.gossip_keys,
        settings: j.settings,
    })
}

/// Whether an error is the manager refusing the token.
pub fn is_invalid_token(e: &MgmtError) -> bool {
    e.code() == Some(ErrorCode::InvalidToken)
}
