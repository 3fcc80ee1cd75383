//! The I/O half of the embedded DNS server: sockets inside each
//! container's network namespace, served by tasks on the daemon's tokio
//! runtime, answering with [`answer`] and forwarding with
//! [`upstream`].
//!
//! Per namespace: one UDP socket and one TCP listener on
//! 127.0.0.11:53, bound by a short-lived thread that entered the
//! namespace ([`netns::run_in`]); the sockets stay in that namespace, and
//! keep it alive, until [`DnsServer::stop_netns`]. Two tasks serve them;
//! forwards and TCP connections are sub-tasks in a `JoinSet` owned by
//! those two, so aborting the two ends everything of that namespace.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use rand::Rng;
use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use vxnet_dataplane::sys::netns;

use super::answer::{Decision, Forward, MAX_QUERY_LEN, Transport, answer};
use super::records::DnsRecords;
use super::resolv_conf::LISTEN_ADDR;
use super::stats::{DnsStats, DnsStatsSnapshot};
use super::upstream::{self, Outcome};
use super::{FORWARD_TIMEOUT, MAX_FORWARDS_IN_FLIGHT, MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT};

/// Errors of [`DnsServer::serve_netns`]; nothing changed when one is
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("network namespace '{netns}': {source}")]
    Netns { netns: String, source: io::Error },
    #[error(
        "cannot listen on {addr} in network namespace '{netns}': {source} (is `lo` up there, and no other DNS server on port 53?)"
    )]
    Bind {
        netns: String,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// Start-up settings of [`DnsServer::start`].
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Upstream resolvers, at most [`super::MAX_UPSTREAMS`] are used
    /// (see [`super::upstreams_from_resolv_conf`]). Empty: every name
    /// that is not ours gets SERVFAIL at once.
    pub upstreams: Vec<SocketAddr>,
    /// Deadline of one forwarded query, all upstreams included.
    pub forward_timeout: Duration,
    /// The port to listen on inside each namespace (53; tests may pick
    /// another).
    pub port: u16,
}

impl DnsConfig {
    pub fn new(upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig {
            upstreams,
            forward_timeout: FORWARD_TIMEOUT,
            port: 53,
        }
    }
}

/// State every namespace's tasks share.
struct Shared {
    records: RwLock<Arc<DnsRecords>>,
    upstreams: RwLock<Arc<Vec<SocketAddr>>>,
    forward_timeout: Duration,
    stats: DnsStats,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(PoisonError::into_inner) = value;
}

fn limit_upstreams(mut upstreams: Vec<SocketAddr>) -> Arc<Vec<SocketAddr>> {
    upstreams.truncate(super::MAX_UPSTREAMS);
    Arc::new(upstreams)
}

/// One namespace being served.
struct Namespace {
    id: NetnsId,
    ctx: Arc<NsContext>,
    tasks: [JoinHandle<()>; 2],
}

/// What one namespace's tasks need.
struct NsContext {
    shared: Arc<Shared>,
    /// The asker's networks (IDs, in order of preference).
    networks: RwLock<Arc<Vec<String>>>,
    forwards_in_flight: AtomicUsize,
}

/// The embedded DNS server of one host: one handle, many namespaces.
///
/// Dropping it stops every namespace's server.
pub struct DnsServer {
    shared: Arc<Shared>,
    runtime: Handle,
    port: u16,
    namespaces: Mutex<HashMap<String, Namespace>>,
}

impl DnsServer {
    /// Creates the server with an empty name table; nothing listens until
    /// [`DnsServer::serve_netns`]. Tasks run on `runtime`, which needs its
    /// I/O and time drivers (`enable_all`).
    pub fn start(runtime: Handle, config: DnsConfig) -> DnsServer {
        DnsServer {
            shared: Arc::new(Shared {
                records: RwLock::new(Arc::new(DnsRecords::default())),
                upstreams: RwLock::new(limit_upstreams(config.upstreams)),
                forward_timeout: config.forward_timeout,
                stats: DnsStats::default(),
            }),
            runtime,
            port: config.port,
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    /// Swaps in a new name table; the next query in every namespace uses
    /// it, so a removed entry is gone from answers at once.
    pub fn set_records(&self, records: Arc<DnsRecords>) {
        write(&self.shared.records, records);
    }

    /// The table queries are answered from now.
    pub fn records(&self) -> Arc<DnsRecords> {
        read(&self.shared.records)
    }

    /// Replaces the upstream resolvers (the host's resolv.conf changed);
    /// queries already being forwarded keep the old list.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        write(&self.shared.upstreams, limit_upstreams(upstreams));
    }

    /// Starts answering inside network namespace `netns` (a name under
    /// /run/netns, or a path such as /proc/PID/ns/net) for an asker on
    /// `asker_networks` (network IDs, the preferred first), under `key`
    /// (the container's ID, say).
    ///
    /// Idempotent: called again with the same key and namespace it only
    /// replaces the asker's networks (a container connected to or
    /// disconnected from a network), without rebinding. With the same key
    /// and another namespace (the container was recreated, even under the
    /// same name: namespaces are compared by inode), the old one is
    /// stopped first.
    ///
    /// Blocks for the bind: a thread is spawned, enters the namespace,
    /// binds, and exits (about a millisecond; up to a second if the
    /// namespace's previous server, just stopped, still holds the port).
    ///
    /// # Errors
    /// [`DnsError::Netns`] when the namespace does not exist or cannot be
    /// entered, [`DnsError::Bind`] when 127.0.0.11:53 cannot be bound in
    /// it. On error nothing changed, except that an old namespace under
    /// `key` was stopped.
    pub fn serve_netns(
        &self,
        key: &str,
        netns: &str,
        asker_networks: Vec<String>,
    ) -> Result<(), DnsError> {
        let ns_err = |source| DnsError::Netns {
            netns: netns.to_owned(),
            source,
        };
        let path = netns::resolve(netns).map_err(ns_err)?;
        let id = NetnsId::of(&path).map_err(ns_err)?;
        let mut namespaces = self.lock();
        if let Some(ns) = namespaces.get(key) {
            if ns.id == id {
                write(&ns.ctx.networks, Arc::new(asker_networks));
                return Ok(());
            }
            if let Some(old) = namespaces.remove(key) {
                old.abort();
            }
        }
        let addr = SocketAddr::new(LISTEN_ADDR, self.port);
        let (udp, tcp) = bind_in(&path, addr).map_err(|e| match e {
            BindError::Netns(source) => ns_err(source),
            BindError::Bind(source) => DnsError::Bind {
                netns: netns.to_owned(),
                addr,
                source,
            },
        })?;
        let _entered = self.runtime.enter();
        let (udp, tcp) = match (UdpSocket::from_std(udp), TcpListener::from_std(tcp)) {
            (Ok(u), Ok(t)) => (u, t),
            (Err(source), _) | (_, Err(source)) => {
                return Err(DnsError::Bind {
                    netns: netns.to_owned(),
                    addr,
                    source,
                });
            }
        };
        let ctx = Arc::new(NsContext {
            shared: Arc::clone(&self.shared),
            networks: RwLock::new(Arc::new(asker_networks)),
            forwards_in_flight: AtomicUsize::new(0),
        });
        let tasks = [
            self.runtime
                .spawn(serve_udp(Arc::new(udp), Arc::clone(&ctx), new_rng())),
            self.runtime
                .spawn(serve_tcp(tcp, Arc::clone(&ctx), new_rng())),
        ];
        tracing::info!(key, netns, "dns: serving 127.0.0.11 in the namespace");
        namespaces.insert(key.to_owned(), Namespace { id, ctx, tasks });
        Ok(())
    }

    /// Stops answering in the namespace served under `key` (no-op if
    /// none). Its sockets close as its tasks end, right after this
    /// returns; until then they keep the namespace alive.
    pub fn stop_netns(&self, key: &str) {
        if let Some(ns) = self.lock().remove(key) {
            ns.abort();
            tracing::info!(key, "dns: stopped serving in the namespace");
        }
    }

    /// The keys of the namespaces being served, sorted.
    pub fn served(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn stats(&self) -> DnsStatsSnapshot {
        self.shared.stats.snapshot()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Namespace>> {
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for (_, ns) in self.lock().drain() {
            ns.abort();
        }
    }
}

impl Namespace {
    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A network namespace's identity: the device and inode of its nsfs
/// file, the same through every path to it (/run/netns/NAME,
/// /proc/PID/ns/net), different for a namespace made anew under the same
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    fn of(path: &Path) -> io::Result<NetnsId> {
        let m = std::fs::metadata(path)?;
        Ok(NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

fn new_rng() -> ChaCha12Rng {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    ChaCha12Rng::from_seed(seed)
}

enum BindError {
    Netns(io::Error),
    Bind(io::Error),
}

/// How long a bind retries while the port is still held by the server
/// just stopped in the same namespace (its tasks close the sockets a
/// scheduler tick after the abort).
const REBIND_PATIENCE: Duration = Duration::from_secs(1);
const REBIND_STEP: Duration = Duration::from_millis(10);

/// Binds UDP and TCP `addr` inside the namespace at `path`, non-blocking.
fn bind_in(
    path: &Path,
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), BindError> {
    let started = std::time::Instant::now();
    loop {
        let bound = netns::run_in(path, move || -> io::Result<_> {
            let udp = std::net::UdpSocket::bind(addr)?;
            let tcp = std::net::TcpListener::bind(addr)?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })
        .map_err(BindError::Netns)?;
        match bound {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && started.elapsed() < REBIND_PATIENCE =>
            {
                std::thread::sleep(REBIND_STEP);
            }
            other => return other.map_err(BindError::Bind),
        }
    }
}

/// Holds one of the namespace's [`MAX_FORWARDS_IN_FLIGHT`] slots.
struct InFlight(Arc<NsContext>);

impl InFlight {
    fn acquire(ctx: &Arc<NsContext>) -> Option<InFlight> {
        let before = ctx.forwards_in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_FORWARDS_IN_FLIGHT {
            ctx.forwards_in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(Arc::clone(ctx)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.forwards_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one query asks of its socket task.
enum Step {
    /// Send these bytes now.
    Send(Vec<u8>),
    /// Send what this future yields (a forward).
    Later(std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send>>),
    Nothing,
}

impl NsContext {
    /// Answers one query: our own reply, a forward, or nothing. Counts it.
    fn handle(self: &Arc<Self>, transport: Transport, query: &[u8], rng: &mut ChaCha12Rng) -> Step {
        let stats = &self.shared.stats;
        stats.query(transport == Transport::Tcp);
        let records = read(&self.shared.records);
        let networks = read(&self.networks);
        match answer(&records, &networks, transport, query, rng) {
            Decision::Reply(r) => {
                stats.reply(r.rcode);
                Step::Send(r.bytes)
            }
            Decision::Drop(_) => {
                stats.dropped();
                Step::Nothing
            }
            Decision::Forward(fwd) => self.forward(fwd, rng),
        }
    }

    fn forward(self: &Arc<Self>, fwd: Forward, rng: &mut ChaCha12Rng) -> Step {
        let stats = &self.shared.stats;
        let upstreams = read(&self.shared.upstreams);
        if upstreams.is_empty() {
            stats.forward_failure();
            stats.reply(ResponseCode::ServFail);
            return Step::Send(fwd.error_reply(ResponseCode::ServFail));
        }
        let Some(slot) = InFlight::acquire(self) else {
            stats.overload_refusal();
            stats.reply(ResponseCode::Refused);
            return Step::Send(fwd.error_reply(ResponseCode::Refused));
        };
        stats.forwarded();
        let ids: Vec<u16> = upstreams.iter().map(|_| rng.random()).collect();
        let ctx = Arc::clone(self);
        Step::Later(Box::pin(async move {
            let _slot = slot;
            let fwd = Arc::new(fwd);
            let timeout = ctx.shared.forward_timeout;
            let stats = &ctx.shared.stats;
            let outcome = upstream::forward(Arc::clone(&fwd), &upstreams, &ids, timeout).await;
            match outcome {
                Outcome::Answered(reply) => {
                    stats.reply(reply.rcode);
                    return reply.bytes;
                }
                Outcome::TimedOut => stats.forward_timeout(),
                Outcome::Failed => stats.forward_failure(),
            }
            tracing::debug!(question = %fwd.question(), ?outcome, "dns: no upstream answered");
            stats.reply(ResponseCode::ServFail);
            fwd.error_reply(ResponseCode::ServFail)
        }))
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, ctx: Arc<NsContext>, mut rng: ChaCha12Rng) {
    // One octet more than we accept, so an oversized datagram is seen as
    // such (and dropped) rather than silently cut.
    let mut buf = vec![0u8; MAX_QUERY_LEN + 1];
    let mut forwards = JoinSet::new();
    loop {
        tokio::select! {
            received = sock.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "dns: UDP receive failed");
                        continue;
                    }
                };
                match ctx.handle(Transport::Udp, &buf[..n], &mut rng) {
                    Step::Send(bytes) => send_udp(&sock, &bytes, peer).await,
                    Step::Later(reply) => {
                        let sock = Arc::clone(&sock);
                        forwards.spawn(async move { send_udp(&sock, &reply.await, peer).await });
                    }
                    Step::Nothing => {}
                }
            }
            Some(_) = forwards.join_next() => {}
        }
    }
}

async fn send_udp(sock: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, peer).await {
        tracing::debug!(error = %e, %peer, "dns: UDP send failed");
    }
}

async fn serve_tcp(listener: TcpListener, ctx: Arc<NsContext>, mut rng: ChaCha12Rng) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if conns.len() < MAX_TCP_CONNECTIONS => {
                    let conn_rng = ChaCha12Rng::from_rng(&mut rng);
                    conns.spawn(serve_conn(stream, Arc::clone(&ctx), conn_rng));
                }
                Ok(_) => ctx.shared.stats.tcp_rejected(),
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "dns: TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next() => {}
        }
    }
}

/// One TCP connection: length-prefixed queries (RFC 1035 §4.2.2), answered
/// as they complete, so a slow forward does not hold up the queries
/// pipelined behind it (RFC 7766 §6.2.1.1).
async fn serve_conn(stream: TcpStream, ctx: Arc<NsContext>, mut rng: ChaCha12Rng) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let mut pending = JoinSet::new();
    loop {
        let Ok(Ok(len)) = timeout(TCP_IDLE_TIMEOUT, rd.read_u16()).await else {
            break;
        };
        let len = usize::from(len);
        if len == 0 || len > MAX_QUERY_LEN {
            ctx.shared.stats.tcp_rejected();
            break;
        }
        let mut query = vec![0u8; len];
        let Ok(Ok(_)) = timeout(TCP_IDLE_TIMEOUT, rd.read_exact(&mut query)).await else {
            break;
        };
        match ctx.handle(Transport::Tcp, &query, &mut rng) {
            Step::Send(bytes) => {
                if send_tcp(&wr, &bytes).await.is_err() {
                    break;
                }
            }
            Step::Later(reply) => {
                let wr = Arc::clone(&wr);
                pending.spawn(async move {
                    let _ = send_tcp(&wr, &reply.await).await;
                });
            }
            Step::Nothing => {}
        }
        while pending.try_join_next().is_some() {}
    }
    // The asker may have half-closed after its last query: finish the
    // forwards it is still waiting for (each ends by its deadline).
    while pending.join_next().await.is_some() {}
}

async fn send_tcp(wr: &tokio::sync::Mutex<OwnedWriteHalf>, bytes: &[u8]) -> io::Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply longer than 65535"))?;
    let mut framed = Vec::with_capacity(2 + bytes.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    wr.lock().await.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_in_flight_are_capped_per_namespace() {
        let shared = Arc::new(Shared {
            records: RwLock::new(Arc::new(DnsRecords::default())),
            upstreams: RwLock::new(Arc::new(Vec::new())),
            forward_timeout: FORWARD_TIMEOUT,
            stats: DnsStats::default(),
        });
        let ns = || {
            Arc::new(NsContext {
                shared: Arc::clone(&shared),
                networks: RwLock::new(Arc::new(Vec::new())),
                forwards_in_flight: AtomicUsize::new(0),
            })
        };
        let (a, b) = (ns(), ns());
        let mut held: Vec<InFlight> = (0..MAX_FORWARDS_IN_FLIGHT)
            .map(|_| InFlight::acquire(&a).expect("below the cap"))
            .collect();
        assert!(InFlight::acquire(&a).is_none(), "one more is refused");
        assert_eq!(
            a.forwards_in_flight.load(Ordering::Relaxed),
            MAX_FORWARDS_IN_FLIGHT
        );
        assert!(
            InFlight::acquire(&b).is_some(),
            "another namespace has its own"
        );
        held.pop();
        assert!(
            InFlight::acquire(&a).is_some(),
            "a finished forward frees its slot"
        );
        drop(held);
        assert_eq!(a.forwards_in_flight.load(Ordering::Relaxed), 0);
    }
}
