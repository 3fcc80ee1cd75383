//! The gossip driver: one thread that owns the UDP socket on port 7946 and
//! the sans-IO [`Membership`], moves its packets and timers, and publishes
//! what it knows as a [`GossipView`]: the live members (with their data
//! addresses and public keys) and every live endpoint record. It never
//! programs the dataplane: the reconciler reads the view, together with the
//! store, and makes the dataplane match (remote peers, hosts' keys).
//! Whenever the view changes, the driver calls its `on_change` hook so the
//! reconciler runs at once.
//!
//! The reconciler announces and withdraws this host's endpoints through
//! [`GossipHandle::send`]. Which swarm to join (the seed: the manager a
//! worker joined through) and the cluster key come from the management
//! plane.
//!
//! Bulk state moves over TCP on the same address: the driver answers every
//! connection with one length-prefixed sealed
//! [`Membership::state_snapshot`], and when it joins (or sees itself
//! `Rejoined`) it pulls its seed's snapshot and merges it. SWIM only
//! piggybacks recent updates, so without this a host that comes back would
//! never hear of endpoints announced while it was away. The pull runs on a
//! short-lived thread and the snapshot is handed back to the loop through
//! its channel, so the UDP loop never waits on a peer.

use std::io;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use vxnet_api::ctl::GossipStatus;

use crate::gossip::{EndpointRecord, GossipKey, KeyId, MemberEvent, Membership, NodeIdentity};

/// The gossip port, as Docker's.
pub const GOSSIP_PORT: u16 = 7946;
/// Longest the driver sleeps in `recv` before looking at its commands.
const POLL: Duration = Duration::from_millis(50);
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_536;
/// Largest state snapshot sent or accepted over TCP.
pub const MAX_SNAPSHOT: usize = 16 << 20;
/// Connect, read and write timeout of one snapshot exchange.
const SYNC_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Pull attempts per sync, and the first backoff (doubled each time).
const SYNC_ATTEMPTS: u32 = 5;
const SYNC_BACKOFF: Duration = Duration::from_millis(200);
/// Longest one whole pull may take (a peer dribbling bytes cannot hold the
/// sync thread for longer).
const SYNC_DEADLINE: Duration = Duration::from_secs(10);
/// Snapshot writes in flight at once; connections beyond are closed.
const MAX_SERVING: usize = 16;

/// Called whenever the view changed (the reconciler's wake-up).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// What the driver knows, as of its last change: a snapshot the
/// reconciler and the manager read without touching the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipView {
    /// This node.
    pub own: Option<NodeIdentity>,
    /// The other members gossip holds Up (Suspect included: a suspect
    /// host still gets its traffic until it is declared Down).
    pub members: Vec<NodeIdentity>,
    /// Every live endpoint record, this node's own included.
    pub records: Vec<EndpointRecord>,
    /// The driver is still pulling its seed's state (it just started or
    /// joined): members and records the swarm has may be missing, so what
    /// is absent here must not be taken as gone.
    pub syncing: bool,
}

impl GossipView {
    /// The member whose data-path address is `vtep`.
    pub fn member_at(&self, vtep: IpAddr) -> Option<&NodeIdentity> {
        self.members.iter().find(|m| m.data_addr == vtep)
    }
}

/// What the daemon tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipCmd {
    /// A local endpoint exists (container attached).
    Announce {
        network_id: String,
        ip: IpAddr,
        mac: [u8; 6],
    },
    /// A local endpoint is gone.
    Withdraw { network_id: String, ip: IpAddr },
    /// Contact a member to join its swarm's gossip.
    Join(SocketAddr),
    /// The keyring the swarm wants now, the primary last (see
    /// [`apply_keys`]).
    Keys(Vec<crate::model::StoredGossipKey>),
}

/// Shared between the driver (writer) and the daemon (reader).
pub type StatusCell = Arc<Mutex<GossipStatus>>;

/// Brings `m`'s keyring to `want` (primary last) make-before-break: keys
/// that are wanted are installed before the primary changes, and keys no
/// longer wanted are removed only after it has. A keyring too full to take
/// a new key first drops keys that are neither wanted nor the primary.
pub fn apply_keys(m: &mut Membership, want: &[GossipKey]) -> Result<(), String> {
    let Some(primary) = want.last().map(|k| k.id) else {
        return Err("an empty gossip keyring".into());
    };
    let unwanted = |id: &KeyId| !want.iter().any(|k| k.id == *id);
    let current = m.keyring().primary();
    for id in m.keyring().key_ids() {
        if unwanted(&id) && Some(id) != current {
            m.remove_key(id).map_err(|e| e.to_string())?;
        }
    }
    for k in want {
        let ring = m.keyring().key_ids();
        if !ring.contains(&k.id) && ring.len() >= crate::gossip::keyring::MAX_KEYS {
            // Only an unwanted primary can hold the slot (a node that
            // missed a step catches up): send with a wanted key instead.
            let old = m.keyring().primary();
            if let Some(id) = ring.iter().copied().find(|id| !unwanted(id)) {
                m.set_primary(id).map_err(|e| e.to_string())?;
            }
            if let Some(old) = old.filter(|o| unwanted(o)) {
                m.remove_key(old).map_err(|e| e.to_string())?;
            }
        }
        m.install_key(k.clone()).map_err(|e| e.to_string())?;
    }
    m.set_primary(primary).map_err(|e| e.to_string())?;
    for id in m.keyring().key_ids() {
        if unwanted(&id) {
            m.remove_key(id).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

enum Msg {
    Cmd(GossipCmd),
    Stop {
        leave: bool,
    },
    /// A sealed snapshot pulled from the seed, to merge.
    Snapshot(Vec<u8>),
    /// Every pull from the seed failed: the driver goes on with what SWIM
    /// brings.
    SyncGaveUp,
}

/// Writes `snapshot` as one frame: a big-endian u32 length, then the bytes.
pub fn write_snapshot(w: &mut impl Write, snapshot: &[u8]) -> io::Result<()> {
    if snapshot.len() > MAX_SNAPSHOT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "state snapshot too large",
        ));
    }
    let len = u32::try_from(snapshot.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "state snapshot too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(snapshot)?;
    w.flush()
}

/// Reads one frame written by [`write_snapshot`], refusing lengths above
/// [`MAX_SNAPSHOT`] before allocating.
pub fn read_snapshot(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_SNAPSHOT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "state snapshot too large",
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Pulls one snapshot from the member whose gossip address is `seed` (its
/// TCP listener is on the same address).
pub fn fetch_snapshot(seed: SocketAddr) -> io::Result<Vec<u8>> {
    let s = TcpStream::connect_timeout(&seed, SYNC_IO_TIMEOUT)?;
    s.set_read_timeout(Some(SYNC_IO_TIMEOUT))?;
    s.set_write_timeout(Some(SYNC_IO_TIMEOUT))?;
    read_snapshot(&mut Deadline {
        inner: s,
        until: Instant::now() + SYNC_DEADLINE,
    })
}

/// A reader that fails once its deadline has passed.
struct Deadline<R> {
    inner: R,
    until: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "state snapshot too slow",
            ));
        }
        self.inner.read(buf)
    }
}

/// Pulls `seed`'s snapshot on its own thread, with bounded retries and
/// backoff, and hands it to the driver loop.
fn spawn_sync(seed: SocketAddr, tx: Sender<Msg>) {
    let r = std::thread::Builder::new()
        .name("vxnet-gossip-sync".into())
        .spawn(move || {
            let mut backoff = SYNC_BACKOFF;
            for attempt in 1..=SYNC_ATTEMPTS {
                match fetch_snapshot(seed) {
                    Ok(snap) => {
                        let _ = tx.send(Msg::Snapshot(snap));
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(seed = %seed, attempt, error = %e, "state sync failed");
                    }
                }
                if attempt < SYNC_ATTEMPTS {
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                }
            }
            tracing::warn!(seed = %seed, "state sync gave up");
            let _ = tx.send(Msg::SyncGaveUp);
        });
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot start state sync");
    }
}

/// A running driver. Dropping it stops the thread without leaving.
pub struct GossipHandle {
    tx: Sender<Msg>,
    /// Wakes the driver out of its receive: an empty datagram to its
    /// socket, so a command is handled at once rather than after the
    /// receive timeout.
    waker: Option<(UdpSocket, SocketAddr)>,
    thread: Option<JoinHandle<()>>,
    status: StatusCell,
    view: ViewCell,
    /// Shared with the driver: see [`GossipView::syncing`].
    syncing: Arc<AtomicBool>,
}

/// The latest [`GossipView`], shared between the driver and its readers.
pub type ViewCell = Arc<Mutex<Arc<GossipView>>>;

impl GossipHandle {
    /// The driver's keyring and counters, as of its last loop.
    pub fn status(&self) -> GossipStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The shared status, for readers that outlive a borrow of the handle.
    pub fn status_cell(&self) -> StatusCell {
        Arc::clone(&self.status)
    }

    /// What the driver knows now.
    pub fn view(&self) -> Arc<GossipView> {
        Arc::clone(&self.view.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Joins the swarm through `seed` and pulls its state; until that pull
    /// is over the view says [`GossipView::syncing`] (set here, before the
    /// driver sees the command, so no reader sees a fresh driver's empty
    /// view as the swarm's).
    pub fn join(&self, seed: SocketAddr) -> bool {
        self.syncing.store(true, Ordering::SeqCst);
        {
            let mut v = self.view.lock().unwrap_or_else(PoisonError::into_inner);
            let mut now = (**v).clone();
            now.syncing = true;
            *v = Arc::new(now);
        }
        self.send(GossipCmd::Join(seed))
    }

    /// Queues a command; false if the driver has stopped.
    pub fn send(&self, cmd: GossipCmd) -> bool {
        let sent = self.tx.send(Msg::Cmd(cmd)).is_ok();
        self.wake();
        sent
    }

    fn wake(&self) {
        if let Some((sock, to)) = &self.waker {
            // Best effort: the receive timeout still bounds the delay.
            let _ = sock.send_to(&[], to);
        }
    }

    /// Stops the driver; with `leave`, tells members we are gone first.
    pub fn stop(mut self, leave: bool) {
        self.shutdown(leave);
    }

    fn shutdown(&mut self, leave: bool) {
        let _ = self.tx.send(Msg::Stop { leave });
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GossipHandle {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// Starts the driver on `socket` (bound by the caller to the advertise
/// address and [`GOSSIP_PORT`]); `on_change` is called after every change
/// of the view.
pub fn spawn(
    socket: UdpSocket,
    membership: Membership,
    on_change: OnChange,
) -> io::Result<GossipHandle> {
    socket.set_read_timeout(Some(POLL))?;
    // Bulk state on TCP, same address. Without it the node still gossips,
    // it only cannot serve resyncs.
    let listener = socket
        .local_addr()
        .and_then(TcpListener::bind)
        .and_then(|l| l.set_nonblocking(true).map(|()| l));
    let listener = match listener {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "gossip state sync not served");
            None
        }
    };
    let waker = socket.local_addr().ok().and_then(|addr| {
        let to = if addr.ip().is_unspecified() {
            match addr {
                SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port())),
                SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
            }
        } else {
            addr
        };
        let any: SocketAddr = match to {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(any).ok()?;
        sock.set_nonblocking(true).ok()?;
        Some((sock, to))
    });
    let (tx, rx) = mpsc::channel();
    let status = StatusCell::default();
    let view = ViewCell::default();
    let syncing = Arc::new(AtomicBool::new(false));
    let mut driver = Driver {
        status: Arc::clone(&status),
        view: Arc::clone(&view),
        on_change,
        m: membership,
        sock: socket,
        timers: Vec::new(),
        listener,
        tx: tx.clone(),
        seed: None,
        serving: Arc::default(),
        syncing: Arc::clone(&syncing),
    };
    driver.publish_view();
    let thread = std::thread::Builder::new()
        .name("vxnet-gossip".into())
        .spawn(move || driver.run(&rx))?;
    Ok(GossipHandle {
        tx,
        waker,
        thread: Some(thread),
        status,
        view,
        syncing,
    })
}

struct Driver {
    m: Membership,
    sock: UdpSocket,
    timers: Vec<(Instant, crate::gossip::TimerEvent)>,
    on_change: OnChange,
    status: StatusCell,
    view: ViewCell,
    /// Serves state snapshots (non-blocking, polled by the loop).
    listener: Option<TcpListener>,
    /// Our own channel, for the sync thread to hand snapshots back.
    tx: Sender<Msg>,
    /// Who we joined through: where we resync from.
    seed: Option<SocketAddr>,
    /// Snapshot writes in flight.
    serving: Arc<AtomicUsize>,
    /// A join's pull from the seed is under way ([`GossipView::syncing`]).
    syncing: Arc<AtomicBool>,
}

impl Driver {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Msg::Cmd(c)) => self.command(c),
                    Ok(Msg::Stop { leave }) => {
                        if leave && self.m.leave().is_ok() {
                            self.flush();
                        }
                        return;
                    }
                    Ok(Msg::Snapshot(snap)) => {
                        match self.m.merge_snapshot(&snap, Instant::now()) {
                            Ok(()) => tracing::info!(bytes = snap.len(), "gossip state resynced"),
                            Err(e) => tracing::warn!(error = %e, "gossip state not merged"),
                        }
                        self.flush();
                        self.synced();
                    }
                    Ok(Msg::SyncGaveUp) => self.synced(),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            let due: Vec<_> = {
                let (due, later) = std::mem::take(&mut self.timers)
                    .into_iter()
                    .partition(|(at, _)| *at <= now);
                self.timers = later;
                due
            };
            for (_, ev) in due {
                self.m.handle_timer(ev, now);
            }
            self.flush();
            self.serve();
            let wait = self
                .timers
                .iter()
                .map(|(at, _)| at.saturating_duration_since(now))
                .min()
                .unwrap_or(POLL)
                .clamp(Duration::from_millis(1), POLL);
            let _ = self.sock.set_read_timeout(Some(wait));
            match self.sock.recv_from(&mut buf) {
                // An empty datagram is a wake-up (ours, or anyone's:
                // harmless either way), not gossip.
                Ok((0, _)) => {}
                Ok((n, _from)) => {
                    if let Some(pkt) = buf.get(..n) {
                        if let Err(e) = self.m.handle_data(pkt, Instant::now()) {
                            tracing::debug!(error = %e, "gossip packet dropped");
                        }
                    }
                    self.flush();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => tracing::warn!(error = %e, "gossip receive failed"),
            }
        }
    }

    fn command(&mut self, c: GossipCmd) {
        let vtep = self.m.identity().data_addr;
        let r = match c {
            GossipCmd::Announce {
                network_id,
                ip,
                mac,
            } => self
                .m
                .announce_endpoint(&network_id, ip, mac, vtep)
                .map(|_| self.own_records_changed()),
            GossipCmd::Withdraw { network_id, ip } => self
                .m
                .withdraw_endpoint(&network_id, ip)
                .map(|_| self.own_records_changed()),
            GossipCmd::Join(seed) => {
                self.seed = Some(seed);
                spawn_sync(seed, self.tx.clone());
                self.m.join(seed)
            }
            GossipCmd::Keys(keys) => {
                let keys: Option<Vec<GossipKey>> = keys.iter().map(|k| k.to_keyring()).collect();
                let r = keys.ok_or_else(|| "a malformed gossip key".to_owned());
                if let Err(e) = r.and_then(|k| apply_keys(&mut self.m, &k)) {
                    tracing::warn!(error = %e, "gossip keyring not updated");
                } else {
                    tracing::debug!(keys = ?self.m.keyring().key_ids(), "gossip keyring");
                }
                Ok(())
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "gossip command failed");
        }
        self.flush();
    }

    /// Answers pending TCP connections, each with one snapshot. The write
    /// (bounded by a timeout) runs on its own thread so a slow reader
    /// cannot stall gossip; at most a few connections per loop.
    fn serve(&mut self) {
        let Some(l) = &self.listener else { return };
        for _ in 0..8 {
            let (mut s, from) = match l.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip sync accept");
                    return;
                }
            };
            if self.serving.load(Ordering::Acquire) >= MAX_SERVING {
                tracing::debug!(peer = %from, "too many state syncs in flight: closed");
                continue;
            }
            let snap = match self.m.state_snapshot() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no state snapshot to serve");
                    return;
                }
            };
            let serving = Arc::clone(&self.serving);
            serving.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new()
                .name("vxnet-gossip-serve".into())
                .spawn(move || {
                    let r = s
                        .set_nonblocking(false)
                        .and_then(|()| s.set_write_timeout(Some(SYNC_IO_TIMEOUT)))
                        .and_then(|()| write_snapshot(&mut s, &snap));
                    if let Err(e) = r {
                        tracing::debug!(peer = %from, error = %e, "state snapshot not sent");
                    }
                    serving.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.serving.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Sends what the membership wants sent, arms its timers and, when
    /// members or records changed, publishes a new view.
    fn flush(&mut self) {
        while let Some((to, bytes)) = self.m.poll_transmit() {
            if let Err(e) = self.sock.send_to(&bytes, to) {
                tracing::debug!(to = %to, error = %e, "gossip send failed");
            }
        }
        let now = Instant::now();
        while let Some((after, ev)) = self.m.poll_timer() {
            self.timers.push((now + after, ev));
        }
        let mut changed = false;
        while let Some(ev) = self.m.poll_event() {
            if let (MemberEvent::Rejoined(_), Some(seed)) = (&ev, self.seed) {
                // We were declared down and came back under a new
                // identity: what we missed meanwhile is pulled again.
                spawn_sync(seed, self.tx.clone());
            }
            match &ev {
                MemberEvent::Up(id) => {
                    tracing::info!(node = %id.node_id, vtep = %id.data_addr, "member up")
                }
                MemberEvent::Down(id) => {
                    tracing::info!(node = %id.node_id, vtep = %id.data_addr, "member down")
                }
                _ => {}
            }
            changed = true;
        }
        while self.m.poll_endpoint_event().is_some() {
            changed = true;
        }
        if changed {
            self.publish_view();
            (self.on_change)();
        }
        self.publish();
    }

    /// Our own records raise no endpoint event: the view (which the
    /// reconciler compares its wishes with) is published here, and the
    /// reconciler told, so a withdrawal followed by a new announcement is
    /// never mistaken for nothing to do.
    fn own_records_changed(&self) {
        self.publish_view();
        (self.on_change)();
    }

    /// The pull from the seed is over (merged or given up): the view is
    /// as complete as gossip can make it, and the reconciler may act on
    /// what it lacks.
    fn synced(&self) {
        if self.syncing.swap(false, Ordering::SeqCst) {
            self.publish_view();
            (self.on_change)();
        }
    }

    fn publish_view(&self) {
        let own = self.m.identity().clone();
        let view = GossipView {
            members: self
                .m
                .members()
                .into_iter()
                .filter(|m| m.node_id != own.node_id)
                .collect(),
            records: self.m.endpoints(),
            own: Some(own),
            syncing: self.syncing.load(Ordering::SeqCst),
        };
        *self.view.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }

    fn publish(&self) {
        let st = self.m.stats();
        let ring = self.m.keyring();
        let now = GossipStatus {
            key_ids: ring.key_ids().iter().map(|k| k.0).collect(),
            primary: ring.primary().map(|k| k.0),
            members: self.m.members().len(),
            rx_packets: st.rx_packets,
            tx_packets: st.tx_packets,
            rx_dropped: st.rx_dropped(),
            rx_unknown_key: st.rx_unknown_key,
        };
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{GossipConfig, KeyId, Keyring};

    fn ident(i: u8, port: u16) -> NodeIdentity {
        NodeIdentity {
            node_id: format!("node{i}"),
            gossip_addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
            data_addr: IpAddr::from([192, 0, 2, i]),
            data_port: 4789,
            public_key: [i; 32],
            generation: 1,
        }
    }

    fn gkey(id: u32) -> GossipKey {
        GossipKey {
            id: KeyId(id),
            secret: [id as u8; 32],
        }
    }

    #[test]
    fn keyring_follows_the_wanted_keys_make_before_break() {
        let mut m = Membership::new(
            ident(1, 1),
            GossipConfig::default(),
            Keyring::with_primary(gkey(1)),
            [1; 32],
        );
        let ids = |m: &Membership| {
            m.keyring()
                .key_ids()
                .iter()
                .map(|k| k.0)
                .collect::<Vec<_>>()
        };
        // Step one: installed, the primary kept.
        apply_keys(&mut m, &[gkey(2), gkey(1)]).unwrap();
        assert_eq!(ids(&m), [1, 2]);
        assert_eq!(m.keyring().primary(), Some(KeyId(1)));
        // Step two: the new one sends.
        apply_keys(&mut m, &[gkey(1), gkey(2)]).unwrap();
        assert_eq!(m.keyring().primary(), Some(KeyId(2)));
        apply_keys(&mut m, &[gkey(1), gkey(3), gkey(2)]).unwrap();
        assert_eq!(ids(&m), [1, 2, 3]);
        apply_keys(&mut m, &[gkey(1), gkey(2), gkey(3)]).unwrap();
        // Step three: the oldest goes.
        apply_keys(&mut m, &[gkey(2), gkey(3)]).unwrap();
        assert_eq!(ids(&m), [2, 3]);
        assert_eq!(m.keyring().primary(), Some(KeyId(3)));
        // A node that missed everything catches up in one go, although its
        // keyring is full, and keeps no key the swarm dropped.
        let mut late = Membership::new(
            ident(2, 2),
            GossipConfig::default(),
            Keyring::with_primary(gkey(1)),
            [2; 32],
        );
        late.install_key(gkey(7)).unwrap();
        late.install_key(gkey(8)).unwrap();
        apply_keys(&mut late, &[gkey(4), gkey(5), gkey(6)]).unwrap();
        assert_eq!(ids(&late), [4, 5, 6]);
        assert_eq!(late.keyring().primary(), Some(KeyId(6)));
        assert!(apply_keys(&mut late, &[]).is_err());
    }

    /// Member `i` on `port` under the drivers' shared test key.
    fn member(i: u8, port: u16) -> Membership {
        let key = GossipKey {
            id: KeyId(1),
            secret: [9; 32],
        };
        Membership::new(
            ident(i, port),
            GossipConfig::default(),
            Keyring::with_primary(key),
            [i; 32],
        )
    }

    /// A driver on loopback, and how many times it said its view changed.
    fn start(i: u8) -> (GossipHandle, Arc<AtomicUsize>, SocketAddr) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let m = member(i, addr.port());
        let changes = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&changes);
        let on_change: OnChange = Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        (spawn(sock, m, on_change).unwrap(), changes, addr)
    }

    fn has_record(g: &GossipHandle, ip: [u8; 4], vtep: [u8; 4]) -> bool {
        g.view()
            .records
            .iter()
            .any(|r| r.ip == IpAddr::from(ip) && r.vtep == IpAddr::from(vtep))
    }

    fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f()
    }

    #[test]
    fn two_drivers_over_loopback_spread_endpoints_and_detect_down() {
        let (a, _changes_a, addr_a) = start(1);
        let (b, changes_b, _) = start(2);
        assert!(b.send(GossipCmd::Join(addr_a)));
        assert!(a.send(GossipCmd::Announce {
            network_id: "net1".into(),
            ip: IpAddr::from([10, 0, 1, 2]),
            mac: [2, 0x42, 10, 0, 1, 2],
        }));
        assert!(
            wait_for(Duration::from_secs(10), || has_record(
                &b,
                [10, 0, 1, 2],
                [192, 0, 2, 1]
            )),
            "b never learned a's endpoint: {:?}",
            b.view()
        );
        assert!(changes_b.load(Ordering::SeqCst) > 0, "b never said so");
        assert!(wait_for(Duration::from_secs(5), || a
            .view()
            .member_at(IpAddr::from([192, 0, 2, 2]))
            .is_some_and(|m| m.public_key == [2; 32])));
        // A dies without a word: b drops it from its members within 5 s
        // (plus slack for a loaded test machine).
        drop(a);
        assert!(
            wait_for(Duration::from_secs(12), || b
                .view()
                .member_at(IpAddr::from([192, 0, 2, 1]))
                .is_none()),
            "b still holds a as a member: {:?}",
            b.view()
        );
        b.stop(true);
    }

    #[test]
    fn own_records_show_in_the_view_at_once_and_wake_the_reconciler() {
        let (a, changes, _) = start(1);
        let ip = IpAddr::from([10, 0, 1, 9]);
        let cmd = |announce: bool| {
            if announce {
                GossipCmd::Announce {
                    network_id: "net1".into(),
                    ip,
                    mac: [2, 0x42, 10, 0, 1, 9],
                }
            } else {
                GossipCmd::Withdraw {
                    network_id: "net1".into(),
                    ip,
                }
            }
        };
        // Withdrawn and announced again: the view follows each step (a
        // stale view would make the reconciler skip the announcement).
        for announce in [true, false, true] {
            let before = changes.load(Ordering::SeqCst);
            assert!(a.send(cmd(announce)));
            assert!(
                wait_for(Duration::from_secs(5), || has_record(
                    &a,
                    [10, 0, 1, 9],
                    [192, 0, 2, 1]
                ) == announce
                    && changes.load(Ordering::SeqCst) > before),
                "announce={announce}: {:?}",
                a.view()
            );
        }
        a.stop(false);
    }

    #[test]
    fn state_snapshot_served_over_tcp_on_the_gossip_address() {
        let (a, _, addr_a) = start(1);
        assert!(a.send(GossipCmd::Announce {
            network_id: "net1".into(),
            ip: IpAddr::from([10, 0, 1, 7]),
            mac: [2, 0x42, 10, 0, 1, 7],
        }));
        // A fresh member under the same key merges what the driver serves.
        let mut fresh = member(3, 1);
        let learned = wait_for(Duration::from_secs(10), || {
            let Ok(snap) = fetch_snapshot(addr_a) else {
                return false;
            };
            assert!(fresh.merge_snapshot(&snap, Instant::now()).is_ok());
            fresh.endpoints().iter().any(|r| {
                r.ip == IpAddr::from([10, 0, 1, 7]) && r.vtep == IpAddr::from([192, 0, 2, 1])
            })
        });
        assert!(
            learned,
            "endpoint not in the served snapshot: {:?}",
            fresh.endpoints()
        );
        assert!(fresh.members().iter().any(|m| m.node_id == "node1"));
        a.stop(false);
    }

    #[test]
    fn a_joining_driver_pulls_state_from_its_seed() {
        let (a, _, addr_a) = start(1);
        assert!(a.send(GossipCmd::Announce {
            network_id: "net1".into(),
            ip: IpAddr::from([10, 0, 1, 8]),
            mac: [2, 0x42, 10, 0, 1, 8],
        }));
        // Give the announce time to land before b exists (polled through a
        // snapshot rather than slept on).
        let mut probe = member(3, 1);
        assert!(wait_for(Duration::from_secs(5), || {
            fetch_snapshot(addr_a).is_ok_and(|s| probe.merge_snapshot(&s, Instant::now()).is_ok())
                && !probe.endpoints().is_empty()
        }));
        // The seed b joins serves a's state over TCP only (nothing answers
        // its UDP), so b can learn the endpoint through the resync alone.
        let snap = fetch_snapshot(addr_a).unwrap();
        let seed = TcpListener::bind("127.0.0.1:0").unwrap();
        let seed_addr = seed.local_addr().unwrap();
        // It answers only when told, so b's view is seen while it syncs.
        let (go, wait) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            wait.recv().unwrap();
            let (mut s, _) = seed.accept().unwrap();
            write_snapshot(&mut s, &snap).unwrap();
        });
        let (b, _, _) = start(2);
        assert!(!b.view().syncing);
        assert!(b.join(seed_addr));
        assert!(b.view().syncing, "a joining driver's view says it syncs");
        go.send(()).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || has_record(
                &b,
                [10, 0, 1, 8],
                [192, 0, 2, 1]
            ) && !b.view().syncing),
            "b never learned a's endpoint, or still syncs: {:?}",
            b.view()
        );
        server.join().unwrap();
        b.stop(false);
        a.stop(false);
    }

    #[test]
    fn snapshot_frames_are_bounded() {
        let mut out = Vec::new();
        write_snapshot(&mut out, b"sealed").unwrap();
        assert_eq!(out.get(..4), Some(&[0u8, 0, 0, 6][..]));
        assert_eq!(read_snapshot(&mut out.as_slice()).unwrap(), b"sealed");
        // A length above the bound is refused before anything is read.
        let huge = u32::MAX.to_be_bytes();
        let e = read_snapshot(&mut &huge[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A truncated frame is an error, not a short snapshot.
        let short = [0u8, 0, 0, 9, 1, 2];
        assert!(read_snapshot(&mut &short[..]).is_err());
        assert!(write_snapshot(&mut Vec::new(), &vec![0; MAX_SNAPSHOT + 1]).is_err());
        // A pull past its deadline stops even when bytes keep coming.
        let mut late = Deadline {
            inner: &out[..],
            until: Instant::now(),
        };
        let e = read_snapshot(&mut late).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
