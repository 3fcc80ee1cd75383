//! The management protocol on TCP 2377: typed requests and responses, and
//! their framing inside the TLS stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON. Frames above [`MAX_FRAME`] are refused before anything is
//! allocated for them. A connection carries any number of request/response
//! pairs, one at a time.
//!
//! Who may send what ([`Access`]): only [`Request::Join`] is accepted from
//! a client without a certificate (its token is its credential); all other
//! requests need a certificate of this swarm, and manager-only ones a
//! manager's certificate. The server checks this before the handler runs.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::{AddressPool, Node, Role, StoredGossipKey};

/// Largest frame either side accepts (bytes of JSON).
pub const MAX_FRAME: usize = 4 << 20;

/// What the joining host sends, over TLS, once it has checked the manager's
/// CA against the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The whole join token, `SWMTKN-1-<digest>-<secret>`.
    pub token: String,
    pub hostname: String,
    /// Address for management and gossip; the connection's source address
    /// when absent.
    #[serde(default)]
    pub advertise_addr: Option<IpAddr>,
    /// Address for VXLAN traffic; `advertise_addr` when absent.
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
    /// The host's X25519 dataplane public key.
    pub public_key: vxnet_api::PublicKey,
    /// PKCS#10 request for the host's management certificate, PEM.
    pub csr_pem: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("JoinRequest")
            .field("hostname", &self.hostname)
            .field("advertise_addr", &self.advertise_addr)
            .field("data_path_addr", &self.data_path_addr)
            .finish_non_exhaustive()
    }
}

/// Swarm-wide settings a joining host needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub cluster_id: String,
    /// VXLAN UDP port of the whole swarm.
    pub data_path_port: u16,
    pub default_pool: AddressPool,
}

/// The manager's answer to a successful join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The node record made for the host (its id, role, addresses).
    pub node: Node,
    /// The host's certificate, signed by the swarm CA, PEM.
    pub cert_pem: String,
    /// The swarm CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The gossip keyring, oldest first; send with the last.
    pub gossip_keys: Vec<StoredGossipKey>,
    pub settings: ClusterSettings,
}

/// A request on the management port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Request {
    /// A host asks to join (the only request allowed without a certificate).
    Join(JoinRequest),
    /// The swarm's nodes (`vxnet node ls` asked of a manager).
    NodeList,
    /// A node's call about itself ([`super::calls`]); any node of this
    /// swarm may make it.
    Node(super::calls::ManagerCall),
}

/// Who may send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone who reaches the port (join: the token authenticates).
    Anyone,
    /// Any node with a certificate of this swarm.
    Node,
    /// Managers only.
    Manager,
}

impl Access {
    /// Whether a peer with this role (`None`: no certificate) may call.
    pub fn allows(self, role: Option<Role>) -> bool {
        match self {
            Access::Anyone => true,
            Access::Node => role.is_some(),
            Access::Manager => role == Some(Role::Manager),
        }
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Response {
    Joined(Box<JoinResponse>),
    Nodes(Vec<Node>),
    /// The answer to a [`Request::Node`] call, decoded by the caller as
    /// the call's reply type.
    Value(serde_json::Value),
}

/// Why a request was refused; the message reaches the user's terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The join token is not (or no longer) one of this swarm's.
    InvalidToken,
    /// The call needs a node certificate and none was presented.
    Unauthenticated,
    /// The peer's role may not make this call.
    Forbidden,
    /// The request is malformed or its content invalid.
    BadRequest,
    /// The handler does not know the operation.
    Unsupported,
    /// The operation failed on the manager.
    Failed,
    /// What the call names does not exist.
    NotFound,
    /// A name, address or MAC is taken.
    AlreadyExists,
    /// The swarm's state does not allow it (a network in use...).
    FailedPrecondition,
    /// Something the manager needs is out of reach.
    Unavailable,
}

impl From<vxnet_api::ErrorCode> for ErrorCode {
    fn from(c: vxnet_api::ErrorCode) -> Self {
        use vxnet_api::ErrorCode as A;
        match c {
            A::InvalidArgument => ErrorCode::BadRequest,
            A::NotFound => ErrorCode::NotFound,
            A::AlreadyExists => ErrorCode::AlreadyExists,
            A::FailedPrecondition => ErrorCode::FailedPrecondition,
            A::PermissionDenied => ErrorCode::Forbidden,
            A::Unavailable | A::Timeout => ErrorCode::Unavailable,
            A::Internal => ErrorCode::Failed,
        }
    }
}

impl From<ErrorCode> for vxnet_api::ErrorCode {
    fn from(c: ErrorCode) -> Self {
        use vxnet_api::ErrorCode as A;
        match c {
            ErrorCode::InvalidToken | ErrorCode::Unauthenticated | ErrorCode::Forbidden => {
                A::PermissionDenied
            }
            ErrorCode::BadRequest => A::InvalidArgument,
            ErrorCode::Unsupported | ErrorCode::Failed => A::Internal,
            ErrorCode::NotFound => A::NotFound,
            ErrorCode::AlreadyExists => A::AlreadyExists,
            ErrorCode::FailedPrecondition => A::FailedPrecondition,
            ErrorCode::Unavailable => A::Unavailable,
        }
    }
}

impl From<vxnet_api::ApiError> for RpcError {
    fn from(e: vxnet_api::ApiError) -> Self {
        RpcError::new(e.code.into(), e.message)
    }
}

/// A refusal, as sent on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The message for a join token that is not current, as issue 4 asks.
pub const INVALID_TOKEN_MESSAGE: &str = "join token is not valid for this swarm (it may have been rotated); get a new one with `vxnet swarm join-token worker` on a manager";

/// What travels back: a response or a refusal.
pub(crate) type Reply = Result<Response, RpcError>;

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame and decodes it. [`FrameError::Closed`] for a clean end
/// of stream before the first length byte.
pub async fn read_frame<T, R>(r: &mut R) -> Result<T, FrameError>
where
    T: serde::de::DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(serde_json::from_slice(&buf)?)
}

/// Encodes one frame and writes it (and flushes: TLS buffers records).
pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|_| body.len() <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(body.len()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// The address a joining node advertises: what it asked for, else where
/// its connection came from.
pub(crate) fn advertise_or_source(req: &JoinRequest, from: SocketAddr) -> IpAddr {
    req.advertise_addr.unwrap_or(from.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let req = Request::Node(super::super::calls::ManagerCall::NodeLeave(
            super::super::calls::NodeLeave {},
        ));
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).await.unwrap();
        assert_eq!(
            buf.len(),
            4 + u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize
        );
        let back: Request = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, req);

        // A huge length is refused without reading (or allocating) a body.
        let mut big = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        big.extend_from_slice(b"{}");
        let e = read_frame::<Request, _>(&mut big.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(n) if n == MAX_FRAME + 1));

        // Truncated body, garbage JSON, clean end.
        let e = read_frame::<Request, _>(&mut [0, 0, 0, 9, b'{'].as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::Io(_)), "{e:?}");
        let e = read_frame::<Request, _>(&mut [0, 0, 0, 2, b'{', b'}'].as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::Json(_)), "{e:?}");
        let e = read_frame::<Request, _>(&mut [].as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::Closed));
    }

    #[test]
    fn access_rules() {
        assert!(Access::Anyone.allows(None));
        assert!(!Access::Node.allows(None));
        assert!(Access::Node.allows(Some(Role::Worker)));
        assert!(!Access::Manager.allows(Some(Role::Worker)));
        assert!(!Access::Manager.allows(None));
        assert!(Access::Manager.allows(Some(Role::Manager)));
    }

    #[test]
    fn join_request_debug_hides_token() {
        let r = JoinRequest {
            token: "SWMTKN-1-secretdigest-secretsecret".into(),
            hostname: "h".into(),
            advertise_addr: None,
            data_path_addr: None,
            public_key: vxnet_api::PublicKey::from_bytes([0; 32]),
            csr_pem: String::new(),
        };
        assert!(!format!("{r:?}").contains("secret"));
    }
}
