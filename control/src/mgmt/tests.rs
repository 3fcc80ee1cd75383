//! Join and mutual-TLS RPC over real sockets on 127.0.0.1 (port 0): a
//! manager with a MemStore-backed handler, joiners with good, wrong,
//! rotated and foreign tokens, and clients with and without certificates.

use super::calls::{KeyringReport, ManagerCall, NodeLeave};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;

use super::client::{JoinParams, MgmtClient, is_invalid_token, join};
use super::rpc::INVALID_TOKEN_MESSAGE;
use super::tls::CaPin;
use super::*;
use crate::cluster::{self, InitRequest, make_token, rotate_join_token, swarm_init};
use crate::model::test_rng::TestRng;
use crate::model::{Cluster, Node, UnixTime};
use crate::store::{MemStore, StoreExt};

/// Certificates are checked against the real clock by TLS, so they are
/// issued at the real time.
fn now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The manager's handler: joins through [`admit`], `node_list` from the
/// store, and two node-level calls to observe the verified peer.
struct TestHandler {
    store: MemStore,
    ca: SwarmCa,
    joins: AtomicUsize,
    rng: Mutex<TestRng>,
    /// (method, caller) of every `Call` that reached the handler.
    calls: Mutex<Vec<(String, Peer)>>,
}

impl Handler for TestHandler {
    async fn join(&self, req: JoinRequest, from: SocketAddr) -> Result<JoinResponse, RpcError> {
        self.joins.fetch_add(1, Ordering::SeqCst);
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| RpcError::new(ErrorCode::Failed, "lock"))?;
        admit(&self.store, &self.ca, &req, from, now(), &mut *rng)
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Response, RpcError> {
        match req {
            Request::NodeList => cluster::list_nodes(&self.store, None)
                .map(Response::Nodes)
                .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string())),
            Request::Node(call) => {
                if let Ok(mut c) = self.calls.lock() {
                    c.push((call.name().to_owned(), peer.clone()));
                }
                match call {
                    ManagerCall::NodeLeave(_) => Ok(Response::Value(json!(null))),
                    // Echoes the report's key count back as the poll time.
                    ManagerCall::GossipKeys(r) => Ok(Response::Value(json!({
                        "keys": [],
                        "poll_after_secs": r.key_ids.len(),
                    }))),
                    other => Err(RpcError::new(
                        ErrorCode::Unsupported,
                        format!("unknown {}", other.name()),
                    )),
                }
            }
            Request::Join(_) => Err(RpcError::new(ErrorCode::BadRequest, "join")),
        }
    }
}

fn report(n: u32) -> KeyringReport {
    KeyringReport {
        key_ids: (0..n).collect(),
        primary: None,
    }
}

/// A running manager; aborting the server task on drop closes its socket
/// and connections even when a test fails.
struct Manager {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    stats: Arc<ServerStats>,
    identity: NodeIdentity,
    task: JoinHandle<()>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Manager {
    fn cluster(&self) -> Cluster {
        cluster::cluster(&self.handler.store).unwrap()
    }

    fn node_count(&self) -> usize {
        self.handler.store.list::<Node>().unwrap().len()
    }
}

async fn start_manager() -> Manager {
    start_manager_issued_at(now()).await
}

/// A manager whose own certificate was issued at `issued`.
async fn start_manager_issued_at(issued: UnixTime) -> Manager {
    let ca = SwarmCa::generate(now()).unwrap();
    let store = MemStore::new();
    let req = InitRequest {
        hostname: "host1".into(),
        advertise_addr: "127.0.0.1".parse().unwrap(),
        data_path_addr: None,
        data_path_port: Some(4790),
        public_key: x25519_pub(1),
        default_pool: None,
        ca_digest: ca.digest().to_owned(),
    };
    let init = swarm_init(&store, &req, now(), &mut TestRng(1)).unwrap();
    let identity = ca
        .issue_identity(&init.node.id, crate::model::Role::Manager, issued)
        .unwrap();
    let handler = Arc::new(TestHandler {
        store,
        ca,
        joins: AtomicUsize::new(0),
        rng: Mutex::new(TestRng(2)),
        calls: Mutex::new(Vec::new()),
    });
    let server = MgmtServer::bind("127.0.0.1:0".parse().unwrap(), &identity, handler.clone())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let task = tokio::spawn(server.serve());
    Manager {
        addr,
        handler,
        stats,
        identity,
        task,
    }
}

fn x25519_pub(b: u8) -> vxnet_api::PublicKey {
    vxnet_api::PublicKey::from_bytes([b; 32])
}

fn params(host: &str) -> JoinParams {
    JoinParams {
        hostname: host.into(),
        advertise_addr: None,
        data_path_addr: Some("198.51.100.7".parse().unwrap()),
        public_key: x25519_pub(7),
    }
}

/// Polls `f` until true, for at most 5 s.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn join_then_mutual_tls_calls_with_role_checks() {
    let m = start_manager().await;
    let c = m.cluster();
    let j = join(m.addr, &c.tokens.worker, &params("host2"))
        .await
        .unwrap();

    // The node record, its certificate and the swarm's settings.
    assert_eq!(j.node.hostname, "host2");
    assert_eq!(j.node.role, crate::model::Role::Worker);
    assert_eq!(
        j.node.advertise_addr.to_string(),
        "127.0.0.1",
        "source address"
    );
    assert_eq!(j.node.data_path_addr.to_string(), "198.51.100.7");
    assert_eq!(j.node.data_path_port, 4790);
    assert_eq!(j.identity.node_id, j.node.id);
    assert_eq!(j.identity.ca_digest().unwrap(), m.handler.ca.digest());
    assert_eq!(j.gossip_keys, c.gossip_keys);
    assert_eq!(j.settings.cluster_id, c.id);
    assert_eq!(j.settings.data_path_port, 4790);
    assert_eq!(m.node_count(), 2);

    // Mutual TLS with the issued identity: the handler sees who called.
    let mut w = MgmtClient::connect(m.addr, &j.identity).await.unwrap();
    w.call(NodeLeave {}).await.unwrap();
    let last = m.handler.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.1.node_id, j.node.id);
    assert_eq!(last.1.role, crate::model::Role::Worker);
    assert_eq!(w.call(report(2)).await.unwrap().poll_after_secs, 2);

    // A worker cannot call manager-only operations; the handler never
    // sees them, and the connection stays usable.
    let e = w.node_list().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    assert!(e.to_string().contains("manager-only"), "{e}");
    let seen: Vec<String> = m
        .handler
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert_eq!(seen, ["node_leave", "gossip_keys"]);
    assert_eq!(w.call(report(3)).await.unwrap().poll_after_secs, 3);

    // The manager's own identity may.
    let mut mc = MgmtClient::connect(m.addr, &m.identity).await.unwrap();
    let nodes = mc.node_list().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
    assert_eq!(names, ["host1", "host2"]);
    assert_eq!(mc.call(report(1)).await.unwrap().poll_after_secs, 1);
    let last = m.handler.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.1.node_id, m.identity.node_id);
    assert_eq!(last.1.role, crate::model::Role::Manager);
}

#[tokio::test]
async fn manager_token_grants_manager_role() {
    let m = start_manager().await;
    let j = join(m.addr, &m.cluster().tokens.manager, &params("host3"))
        .await
        .unwrap();
    assert_eq!(j.node.role, crate::model::Role::Manager);
    assert_eq!(j.identity.role, crate::model::Role::Manager);
    let mut c = MgmtClient::connect(m.addr, &j.identity).await.unwrap();
    assert_eq!(c.node_list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn wrong_secret_is_refused_and_changes_nothing() {
    let m = start_manager().await;
    let wrong = make_token(m.handler.ca.digest(), &mut TestRng(77));
    let e = join(m.addr, &wrong, &params("host2")).await.unwrap_err();
    assert!(is_invalid_token(&e), "{e}");
    assert_eq!(e.to_string(), INVALID_TOKEN_MESSAGE);
    assert!(e.to_string().contains("vxnet swarm join-token worker"));
    assert_eq!(m.node_count(), 1);
    assert_eq!(m.handler.joins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rotated_token_is_refused_and_the_new_one_works() {
    let m = start_manager().await;
    let old = m.cluster().tokens.worker;
    let new = rotate_join_token(
        &m.handler.store,
        crate::model::Role::Worker,
        m.handler.ca.digest(),
        now() + 5,
        &mut TestRng(3),
    )
    .unwrap();
    let e = join(m.addr, &old, &params("host2")).await.unwrap_err();
    assert!(is_invalid_token(&e), "{e}");
    assert!(e.to_string().contains("rotated"), "{e}");
    assert_eq!(m.node_count(), 1);
    let j = join(m.addr, &new, &params("host2")).await.unwrap();
    assert_eq!(j.node.hostname, "host2");
    assert_eq!(m.node_count(), 2);
}

#[tokio::test]
async fn digest_mismatch_fails_before_the_secret_is_sent() {
    let m = start_manager().await;
    // The right secret, but the digest of another swarm's CA.
    let (_, secret) = cluster::parse_token(&m.cluster().tokens.worker)
        .map(|(d, s)| (d.to_owned(), s.to_owned()))
        .unwrap();
    let foreign = SwarmCa::generate(now()).unwrap();
    let token = format!("{}{}-{secret}", cluster::TOKEN_PREFIX, foreign.digest());
    let e = join(m.addr, &token, &params("host2")).await.unwrap_err();
    assert!(
        matches!(e, MgmtError::CaMismatch { addr } if addr == m.addr),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "the manager at {} is not the swarm this token belongs to (CA digest mismatch)",
            m.addr
        )
    );
    // The connection reached the manager and died in the handshake; not a
    // single request frame arrived.
    let stats = m.stats.clone();
    assert!(eventually(|| stats.handshake_failures.load(Ordering::SeqCst) == 1).await);
    assert_eq!(stats.connections.load(Ordering::SeqCst), 1);
    assert_eq!(stats.requests.load(Ordering::SeqCst), 0);
    assert_eq!(m.handler.joins.load(Ordering::SeqCst), 0);
    assert_eq!(m.node_count(), 1);
}

#[tokio::test]
async fn malformed_token_fails_without_connecting() {
    let m = start_manager().await;
    let e = join(m.addr, "SWMTKN-1-nope", &params("host2"))
        .await
        .unwrap_err();
    assert!(matches!(e, MgmtError::Token(_)), "{e}");
    assert_eq!(m.stats.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn calls_without_a_certificate_are_refused() {
    let m = start_manager().await;
    // TLS to the right manager, but no client certificate: only Join passes.
    let pin = CaPin::Digest(m.handler.ca.digest().to_owned());
    let mut anon = MgmtClient::open(m.addr, pin, None).await.unwrap();
    for req in [
        Request::NodeList,
        Request::Node(ManagerCall::NodeLeave(NodeLeave {})),
    ] {
        let e = anon.request(&req).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
        assert!(e.to_string().contains("mutual TLS"), "{e}");
    }
    assert!(m.handler.calls.lock().unwrap().is_empty());
    assert_eq!(m.stats.denied.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn certificates_of_another_swarm_are_refused_both_ways() {
    let m = start_manager().await;
    let foreign_ca = SwarmCa::generate(now()).unwrap();
    let foreign = foreign_ca
        .issue_identity(&m.identity.node_id, crate::model::Role::Manager, now())
        .unwrap();

    // A client of another swarm does not accept this manager.
    let e = MgmtClient::connect(m.addr, &foreign).await.unwrap_err();
    assert!(matches!(e, MgmtError::NotOurManager { .. }), "{e}");

    // A client that trusts this manager but presents another swarm's
    // certificate (even one claiming the manager's id and role) is refused
    // by the server's TLS: its call never reaches the handler.
    let forged = NodeIdentity {
        ca_cert_pem: m.identity.ca_cert_pem.clone(),
        ..foreign
    };
    let res = async {
        let mut c = MgmtClient::connect(m.addr, &forged).await?;
        c.node_list().await
    }
    .await;
    let e = res.unwrap_err();
    assert!(matches!(e, MgmtError::Tls { .. }), "{e}");
    assert!(m.handler.calls.lock().unwrap().is_empty());
    assert_eq!(m.stats.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unreachable_manager_is_reported() {
    // Bind then drop a listener: nothing listens on that port any more.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let token = make_token(&"ab".repeat(32), &mut TestRng(1));
    let e = join(addr, &token, &params("h")).await.unwrap_err();
    assert!(matches!(e, MgmtError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("cannot reach the manager"), "{e}");
}

#[tokio::test]
async fn expired_manager_certificate_is_reported_as_such() {
    let m = start_manager_issued_at(now() - 2 * super::ca::NODE_CERT_VALIDITY_SECS).await;
    let e = join(m.addr, &m.cluster().tokens.worker, &params("host2"))
        .await
        .unwrap_err();
    // Not "wrong swarm": the CA matched, the certificate is out of date.
    assert!(matches!(e, MgmtError::Tls { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
    assert_eq!(m.stats.requests.load(Ordering::SeqCst), 0);
}
