//! [`MgmtServer`]: accepts TLS on the management port, learns who the peer
//! is from its verified certificate, enforces [`Access`], and runs the
//! daemon's [`Handler`].
//!
//! Every wait is bounded: the handshake, reading a request (an idle
//! connection is closed), writing a reply. The number of connections is
//! capped; a connection over the cap is closed at once rather than queued,
//! so a flood cannot pin memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::ca::{NodeIdentity, identity_of};
use super::rpc::{
    Access, ErrorCode, FrameError, Reply, Request, Response, RpcError, read_frame, write_frame,
};
use super::{Handler, MgmtError, Peer};
use crate::model::Role;

/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed to write a reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;

/// Counters for observability (and for tests that must prove a request
/// never arrived).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Request frames received (well-formed or not).
    pub requests: AtomicU64,
    /// Requests refused for lack of authentication or authorization.
    pub denied: AtomicU64,
}

impl ServerStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The management port's server.
pub struct MgmtServer<H> {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
}

impl<H: Handler> MgmtServer<H> {
    /// Listens on `addr` (port 0 picks one) with this node's identity.
    pub async fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        handler: Arc<H>,
    ) -> Result<Self, MgmtError> {
        let cfg = super::tls::server_config(identity)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MgmtError::Bind { addr, source })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(cfg),
            handler,
            stats: Arc::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Serves until the returned future is dropped (abort its task to
    /// stop); dropping it also ends every connection it serves.
    pub async fn serve(self) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, from)) => {
                        ServerStats::bump(&self.stats.connections);
                        // Over the cap: drop the socket (closes it) at once.
                        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                        let acceptor = self.acceptor.clone();
                        let handler = self.handler.clone();
                        let stats = self.stats.clone();
                        conns.spawn(async move {
                            serve_conn(acceptor, tcp, from, &*handler, &stats).await;
                            drop(slot);
                        });
                    }
                    // Out of descriptors and the like: back off instead of
                    // spinning on a listener that keeps failing.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

fn denied(code: ErrorCode, message: String) -> Reply {
    Err(RpcError::new(code, message))
}

fn op_name(req: &Request) -> String {
    match req {
        Request::Join(_) => "join".into(),
        Request::NodeList => "node_list".into(),
        Request::Node(c) => c.name().into(),
    }
}

async fn serve_conn<H: Handler>(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    from: SocketAddr,
    handler: &H,
    stats: &ServerStats,
) {
    let mut tls = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        _ => {
            ServerStats::bump(&stats.handshake_failures);
            return;
        }
    };
    // The TLS layer verified any certificate against the swarm CA; what it
    // names is therefore the CA's word. A verified certificate that does not
    // name a node (not one we issued) gets no identity.
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity_of(c).ok())
        .map(|(node_id, role)| Peer {
            addr: from,
            node_id,
            role,
        });
    loop {
        let req = match timeout(IDLE_TIMEOUT, read_frame::<Request, _>(&mut tls)).await {
            Ok(Ok(r)) => {
                ServerStats::bump(&stats.requests);
                r
            }
            Ok(Err(FrameError::Json(e))) => {
                ServerStats::bump(&stats.requests);
                let reply: Reply = denied(ErrorCode::BadRequest, format!("malformed request: {e}"));
                let _ = timeout(WRITE_TIMEOUT, write_frame(&mut tls, &reply)).await;
                return;
            }
            // Closed, too large, I/O error or idle: nothing useful to say.
            _ => return,
        };
        let reply = dispatch(handler, peer.as_ref(), from, req, stats).await;
        match timeout(WRITE_TIMEOUT, write_frame(&mut tls, &reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

async fn dispatch<H: Handler>(
    handler: &H,
    peer: Option<&Peer>,
    from: SocketAddr,
    req: Request,
    stats: &ServerStats,
) -> Reply {
    let access = match &req {
        Request::Join(_) => Access::Anyone,
        Request::NodeList => Access::Manager,
        Request::Node(_) => Access::Node,
    };
    if !access.allows(peer.map(|p| p.role)) {
        ServerStats::bump(&stats.denied);
        let op = op_name(&req);
        return match peer {
            None => denied(
                ErrorCode::Unauthenticated,
                format!(
                    "'{op}' needs mutual TLS: this client presented no certificate of this swarm; join the swarm first with `vxnet swarm join`"
                ),
            ),
            Some(p) => denied(
                ErrorCode::Forbidden,
                format!(
                    "'{op}' is a manager-only operation and node {} is a {}; run it on a manager",
                    p.node_id,
                    match p.role {
                        Role::Manager => "manager",
                        Role::Worker => "worker",
                    }
                ),
            ),
        };
    }
    match (req, peer) {
        (Request::Join(j), _) => handler
            .join(j, from)
            .await
            .map(|r| Response::Joined(Box::new(r))),
        (other, Some(p)) => handler.handle(p, other).await,
        // Unreachable: only Join is allowed without a peer.
        (_, None) => denied(ErrorCode::Unauthenticated, "no certificate".into()),
    }
}
