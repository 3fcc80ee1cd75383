//! The gossip driver: one thread that owns the UDP socket on port 7946 and
//! the sans-IO [`Membership`], moves its packets and timers, and turns what
//! it learns into dataplane programming:
//!
//! - a remote endpoint record appears → `peer_add` (MAC and IP behind the
//!   record's VTEP, on the VNI of the record's network);
//! - a record is removed, or its host goes Down → `peer_del`;
//! - a member comes Up (or changes its key) → `vtep_add` with its public
//!   key, so encrypted networks can reach it.
//!
//! The daemon announces and withdraws its own endpoints through
//! [`GossipHandle::send`]. Which swarm to join (the seed: the manager a
//! worker joined through) and the cluster key come from the management
//! plane's join. A remote record of a network this host does not know
//! waits (a worker learns a network when its first container there needs
//! it) and is withdrawn again when the network goes from here
//! ([`Programmer::refresh`]). Member events also go to a hook, through
//! which a manager records node status Ready/Down.
//!
//! Bulk state (issue 4) moves over TCP on the same address: the driver
//! answers every connection with one length-prefixed sealed
//! [`Membership::state_snapshot`], and when it joins (or sees itself
//! `Rejoined`) it pulls its seed's snapshot and merges it. SWIM only
//! piggybacks recent updates, so without this a host that comes back would
//! never hear of endpoints announced while it was away. The pull runs on a
//! short-lived thread and the snapshot is handed back to the loop through
//! its channel, so the UDP loop never waits on a peer.

use std::collections::BTreeMap;
use std::io;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use vxnet_dataplane::api::{Peer, Request};
use vxnet_proto::wire::{MacAddr, Vni};

use super::dataplane::{DataplaneApi, DataplaneExt};
use crate::gossip::{
    EndpointEvent, EndpointRecord, GossipKey, KeyId, MemberEvent, Membership, NodeIdentity,
};

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

/// The VNI of a network id (from the store), if the network is known.
pub type VniOf = Arc<dyn Fn(&str) -> Option<Vni> + Send + Sync>;
/// Told of every member event (a manager records node status Ready/Down).
pub type MemberHook = Arc<dyn Fn(&MemberEvent) + Send + Sync>;
/// How often records of networks unknown here are looked at again (a
/// worker learns a network when a container of its own first uses it).
const REFRESH: Duration = Duration::from_millis(500);

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

/// What the driver reports of itself: its keyring (which a worker tells
/// its manager, so the manager knows when a rotation step has reached
/// everyone) and its packet counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GossipStatus {
    /// Installed key ids, in installation order.
    pub key_ids: Vec<u32>,
    /// The key sent with.
    pub primary: Option<u32>,
    /// Other members active (this node excluded).
    pub members: usize,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Received packets dropped for any reason.
    pub rx_dropped: u64,
    /// Received packets sealed under a key this node does not hold.
    pub rx_unknown_key: u64,
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
        });
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot start state sync");
    }
}

/// A running driver. Dropping it stops the thread without leaving.
pub struct GossipHandle {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    status: StatusCell,
}

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

    /// Queues a command; false if the driver has stopped.
    pub fn send(&self, cmd: GossipCmd) -> bool {
        self.tx.send(Msg::Cmd(cmd)).is_ok()
    }

    /// A sender for the daemon's [`super::Announcer`].
    pub fn sender(&self) -> impl Fn(GossipCmd) + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |c| {
            let _ = tx.send(Msg::Cmd(c));
        }
    }

    /// Stops the driver; with `leave`, tells members we are gone first.
    pub fn stop(mut self, leave: bool) {
        self.shutdown(leave);
    }

    fn shutdown(&mut self, leave: bool) {
        let _ = self.tx.send(Msg::Stop { leave });
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
/// address and [`GOSSIP_PORT`]).
pub fn spawn<D: DataplaneApi + 'static>(
    socket: UdpSocket,
    membership: Membership,
    dp: D,
    vni_of: VniOf,
) -> io::Result<GossipHandle> {
    spawn_with_hook(
        socket,
        membership,
        dp,
        vni_of,
        Arc::new(|_: &MemberEvent| {}),
    )
}

/// [`spawn`], telling `on_member` of every member event.
pub fn spawn_with_hook<D: DataplaneApi + 'static>(
    socket: UdpSocket,
    membership: Membership,
    dp: D,
    vni_of: VniOf,
    on_member: MemberHook,
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
    let (tx, rx) = mpsc::channel();
    let status = StatusCell::default();
    let mut driver = Driver {
        status: Arc::clone(&status),
        programmer: Programmer::new(dp, vni_of, membership.identity().data_addr),
        m: membership,
        sock: socket,
        timers: Vec::new(),
        on_member,
        listener,
        tx: tx.clone(),
        seed: None,
        serving: Arc::default(),
    };
    let thread = std::thread::Builder::new()
        .name("vxnet-gossip".into())
        .spawn(move || driver.run(&rx))?;
    let handle = GossipHandle {
        tx,
        thread: Some(thread),
        status,
    };
    Ok(handle)
}

struct Driver<D> {
    m: Membership,
    sock: UdpSocket,
    timers: Vec<(Instant, crate::gossip::TimerEvent)>,
    programmer: Programmer<D>,
    on_member: MemberHook,
    status: StatusCell,
    /// Serves state snapshots (non-blocking, polled by the loop).
    listener: Option<TcpListener>,
    /// Our own channel, for the sync thread to hand snapshots back.
    tx: Sender<Msg>,
    /// Who we joined through: where we resync from.
    seed: Option<SocketAddr>,
    /// Snapshot writes in flight.
    serving: Arc<AtomicUsize>,
}

impl<D: DataplaneApi> Driver<D> {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut refreshed = Instant::now();
        loop {
            if refreshed.elapsed() >= REFRESH {
                self.programmer.refresh();
                refreshed = Instant::now();
            }
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
                    }
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
                .map(|_| ()),
            GossipCmd::Withdraw { network_id, ip } => {
                self.m.withdraw_endpoint(&network_id, ip).map(|_| ())
            }
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

    /// Sends what the membership wants sent, arms its timers and hands its
    /// events to the programmer.
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
        while let Some(ev) = self.m.poll_event() {
            if let (MemberEvent::Rejoined(_), Some(seed)) = (&ev, self.seed) {
                // We were declared down and came back under a new
                // identity: what we missed meanwhile is pulled again.
                spawn_sync(seed, self.tx.clone());
            }
            let gone = match &ev {
                MemberEvent::Down(id) => self.m.endpoints_at(id.data_addr),
                _ => Vec::new(),
            };
            self.programmer.on_member(&ev, &gone);
            if let MemberEvent::Up(id) | MemberEvent::Updated { new: id, .. } = &ev {
                // A host back from Down: its records may never have left
                // our table (same versions, so no new endpoint event), but
                // its Down withdrew them from the dataplane. Program them
                // again.
                for r in self.m.endpoints_at(id.data_addr) {
                    self.programmer.on_endpoint(&EndpointEvent::Added(r));
                }
            }
            (self.on_member)(&ev);
        }
        while let Some(ev) = self.m.poll_endpoint_event() {
            self.programmer.on_endpoint(&ev);
        }
        self.publish();
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

/// Turns gossip events into dataplane requests. Remembers what it
/// programmed, so a Down host's endpoints can be withdrawn even when the
/// membership no longer lists them.
pub struct Programmer<D> {
    dp: D,
    vni_of: VniOf,
    own_vtep: IpAddr,
    /// (network id, IP) -> (VNI, MAC, VTEP) as programmed.
    programmed: BTreeMap<(String, IpAddr), (Vni, [u8; 6], IpAddr)>,
    /// Live remote records of networks not known here (yet, or any more).
    pending: BTreeMap<(String, IpAddr), EndpointRecord>,
}

impl<D: DataplaneApi> Programmer<D> {
    pub fn new(dp: D, vni_of: VniOf, own_vtep: IpAddr) -> Self {
        Self {
            dp,
            vni_of,
            own_vtep,
            programmed: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Programs pending records whose network became known, and withdraws
    /// programmed ones whose network is no longer known here (a worker's
    /// last container on it left), keeping them pending.
    pub fn refresh(&mut self) {
        let stale: Vec<(String, IpAddr)> = self
            .programmed
            .keys()
            .filter(|(net, _)| (self.vni_of)(net).is_none())
            .cloned()
            .collect();
        for (net, ip) in stale {
            if let Some((_, mac, vtep)) = self.programmed.get(&(net.clone(), ip)).copied() {
                self.remove(&net, ip);
                self.pending.insert(
                    (net.clone(), ip),
                    EndpointRecord {
                        network_id: net,
                        ip,
                        mac,
                        vtep,
                        version: 0,
                        removed: false,
                    },
                );
            }
        }
        let ready: Vec<EndpointRecord> = self
            .pending
            .values()
            .filter(|r| (self.vni_of)(&r.network_id).is_some())
            .cloned()
            .collect();
        for r in ready {
            self.pending.remove(&(r.network_id.clone(), r.ip));
            self.add(&r);
        }
    }

    pub fn on_endpoint(&mut self, ev: &EndpointEvent) {
        match ev {
            EndpointEvent::Added(r) => self.add(r),
            EndpointEvent::Removed(r) => self.remove(&r.network_id, r.ip),
        }
    }

    /// `gone`: the live records of a member that went Down.
    pub fn on_member(&mut self, ev: &MemberEvent, gone: &[EndpointRecord]) {
        match ev {
            MemberEvent::Up(id) => self.vtep(id, None),
            MemberEvent::Updated { old, new } => self.vtep(new, Some(old)),
            MemberEvent::Down(id) => {
                let mut keys: Vec<(String, IpAddr)> =
                    gone.iter().map(|r| (r.network_id.clone(), r.ip)).collect();
                keys.extend(
                    self.programmed
                        .iter()
                        .filter(|(_, (_, _, vtep))| *vtep == id.data_addr)
                        .map(|(k, _)| k.clone()),
                );
                for (net, ip) in keys {
                    self.remove(&net, ip);
                }
                self.pending.retain(|_, r| r.vtep != id.data_addr);
            }
            MemberEvent::Rejoined(_) | MemberEvent::Defunct => {}
        }
    }

    fn add(&mut self, r: &EndpointRecord) {
        if r.vtep == self.own_vtep || r.removed {
            return;
        }
        let Some(vni) = (self.vni_of)(&r.network_id) else {
            tracing::debug!(network = %r.network_id, "endpoint of a network unknown here: pending");
            self.pending.insert((r.network_id.clone(), r.ip), r.clone());
            return;
        };
        let key = (r.network_id.clone(), r.ip);
        if let Some((old_vni, old_mac, _)) = self.programmed.get(&key).copied() {
            if old_mac != r.mac {
                let _ = self.dp.command(&Request::PeerDel {
                    vni: old_vni,
                    mac: MacAddr(old_mac),
                });
            }
        }
        let req = Request::PeerAdd(Peer {
            vni,
            mac: MacAddr(r.mac),
            ips: vec![r.ip],
            vtep: r.vtep,
        });
        match self.dp.command(&req) {
            Ok(()) => {
                self.programmed.insert(key, (vni, r.mac, r.vtep));
            }
            Err(e) => tracing::warn!(ip = %r.ip, vtep = %r.vtep, error = %e, "peer_add"),
        }
    }

    fn remove(&mut self, network_id: &str, ip: IpAddr) {
        self.pending.remove(&(network_id.to_owned(), ip));
        if let Some((vni, mac, _)) = self.programmed.remove(&(network_id.to_owned(), ip)) {
            if let Err(e) = self.dp.command(&Request::PeerDel {
                vni,
                mac: MacAddr(mac),
            }) {
                tracing::debug!(ip = %ip, error = %e, "peer_del");
            }
        }
    }

    fn vtep(&mut self, id: &NodeIdentity, old: Option<&NodeIdentity>) {
        if id.data_addr == self.own_vtep {
            return;
        }
        if let Some(old) =
            old.filter(|o| o.data_addr != id.data_addr || o.public_key != id.public_key)
        {
            let _ = self.dp.command(&Request::VtepDel {
                vtep: old.data_addr,
            });
        }
        let pubkey = base64::engine::general_purpose::STANDARD.encode(id.public_key);
        let req = Request::VtepAdd {
            vtep: id.data_addr,
            pubkey,
        };
        match self.dp.command(&req) {
            Ok(()) => {}
            Err(e) if e.contains("already has this key") => {}
            Err(e) => tracing::warn!(vtep = %id.data_addr, error = %e, "vtep_add"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{GossipConfig, Keyring};
    use std::sync::Mutex;
    use vxnet_dataplane::api::Response;

    /// Records every request and accepts it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Request>>>);

    impl DataplaneApi for Recorder {
        fn call(&mut self, req: &Request) -> Result<Response, String> {
            self.0.lock().unwrap().push(req.clone());
            Ok(Response::ok(()))
        }
    }

    impl Recorder {
        fn has(&self, f: impl Fn(&Request) -> bool) -> bool {
            self.0.lock().unwrap().iter().any(f)
        }
    }

    fn vni_of() -> VniOf {
        Arc::new(|id: &str| (id == "net1").then(|| Vni::new(4097)).flatten())
    }

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

    fn record(ip: [u8; 4], vtep: [u8; 4], network: &str) -> EndpointRecord {
        EndpointRecord {
            network_id: network.into(),
            ip: IpAddr::from(ip),
            mac: [2, 0x42, ip[0], ip[1], ip[2], ip[3]],
            vtep: IpAddr::from(vtep),
            version: 1,
            removed: false,
        }
    }

    #[test]
    fn events_become_dataplane_requests() {
        let rec = Recorder::default();
        let mut p = Programmer::new(rec.clone(), vni_of(), IpAddr::from([192, 0, 2, 1]));
        // Ours and unknown networks are not programmed.
        p.on_endpoint(&EndpointEvent::Added(record(
            [10, 0, 1, 2],
            [192, 0, 2, 1],
            "net1",
        )));
        p.on_endpoint(&EndpointEvent::Added(record(
            [10, 0, 1, 3],
            [192, 0, 2, 2],
            "other",
        )));
        assert!(rec.0.lock().unwrap().is_empty());
        let r = record([10, 0, 1, 4], [192, 0, 2, 2], "net1");
        p.on_endpoint(&EndpointEvent::Added(r.clone()));
        assert!(rec.has(|q| matches!(q, Request::PeerAdd(peer)
            if peer.vni.get() == 4097 && peer.vtep == r.vtep && peer.ips == vec![r.ip])));
        let peer = ident(2, 1);
        p.on_member(&MemberEvent::Up(peer.clone()), &[]);
        let key = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
        assert!(rec.has(|q| matches!(q, Request::VtepAdd { vtep, pubkey }
            if *vtep == peer.data_addr && *pubkey == key)));
        // Its host goes Down: the endpoint is withdrawn.
        p.on_member(&MemberEvent::Down(peer), &[]);
        assert!(rec.has(|q| matches!(q, Request::PeerDel { vni, mac }
            if vni.get() == 4097 && mac.0 == r.mac)));
        assert!(p.programmed.is_empty());
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

    fn start(i: u8) -> (GossipHandle, Recorder, SocketAddr) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let m = member(i, addr.port());
        let rec = Recorder::default();
        (spawn(sock, m, rec.clone(), vni_of()).unwrap(), rec, addr)
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
        let (a, rec_a, addr_a) = start(1);
        let (b, rec_b, _) = start(2);
        assert!(b.send(GossipCmd::Join(addr_a)));
        assert!(a.send(GossipCmd::Announce {
            network_id: "net1".into(),
            ip: IpAddr::from([10, 0, 1, 2]),
            mac: [2, 0x42, 10, 0, 1, 2],
        }));
        let a_vtep = IpAddr::from([192, 0, 2, 1]);
        assert!(
            wait_for(Duration::from_secs(10), || rec_b
                .has(|q| matches!(q, Request::PeerAdd(p) if p.vtep == a_vtep))),
            "b never learned a's endpoint: {:?}",
            rec_b.0.lock().unwrap()
        );
        assert!(wait_for(Duration::from_secs(5), || rec_a.has(
            |q| matches!(q, Request::VtepAdd { vtep, .. } if *vtep == IpAddr::from([192, 0, 2, 2]))
        )));
        // A dies without a word: b withdraws its endpoint within 5 s (plus
        // slack for a loaded test machine).
        drop(a);
        assert!(
            wait_for(Duration::from_secs(12), || rec_b.has(
                |q| matches!(q, Request::PeerDel { mac, .. } if mac.0 == [2, 0x42, 10, 0, 1, 2])
            )),
            "b did not withdraw a's endpoint: {:?}",
            rec_b.0.lock().unwrap()
        );
        b.stop(true);
    }

    #[test]
    fn state_snapshot_served_over_tcp_on_the_gossip_address() {
        let (a, _rec_a, addr_a) = start(1);
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
        let (a, _rec_a, addr_a) = start(1);
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
        let server = std::thread::spawn(move || {
            let (mut s, _) = seed.accept().unwrap();
            write_snapshot(&mut s, &snap).unwrap();
        });
        let (b, rec_b, _) = start(2);
        assert!(b.send(GossipCmd::Join(seed_addr)));
        assert!(
            wait_for(Duration::from_secs(10), || rec_b.has(
                |q| matches!(q, Request::PeerAdd(p) if p.ips == vec![IpAddr::from([10, 0, 1, 8])])
            )),
            "b never learned a's endpoint: {:?}",
            rec_b.0.lock().unwrap()
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

    #[test]
    fn records_of_networks_unknown_here_wait_and_go_with_the_network() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let known = Arc::new(AtomicBool::new(false));
        let k = Arc::clone(&known);
        let vni_of: VniOf = Arc::new(move |id: &str| {
            (id == "net1" && k.load(Ordering::SeqCst))
                .then(|| Vni::new(4097))
                .flatten()
        });
        let dp = Recorder::default();
        let mut p = Programmer::new(dp.clone(), vni_of, IpAddr::from([192, 0, 2, 1]));
        let r = record([10, 0, 0, 5], [192, 0, 2, 2], "net1");
        p.on_endpoint(&EndpointEvent::Added(r.clone()));
        let is_add = |q: &Request| matches!(q, Request::PeerAdd(x) if x.ips == vec![r.ip]);
        let is_del = |q: &Request| matches!(q, Request::PeerDel { .. });
        assert!(
            !dp.has(is_add),
            "not programmed while the network is unknown"
        );
        known.store(true, Ordering::SeqCst);
        p.refresh();
        assert!(dp.has(is_add), "programmed once the network is known");
        assert!(!dp.has(is_del));
        known.store(false, Ordering::SeqCst);
        p.refresh();
        assert!(dp.has(is_del), "withdrawn when the network goes from here");
        // Back again: programmed again from the kept record.
        dp.0.lock().unwrap().clear();
        known.store(true, Ordering::SeqCst);
        p.refresh();
        assert!(dp.has(is_add));
        // Its host going Down drops it for good.
        p.on_member(&MemberEvent::Down(ident(2, 1)), &[]);
        dp.0.lock().unwrap().clear();
        known.store(false, Ordering::SeqCst);
        p.refresh();
        known.store(true, Ordering::SeqCst);
        p.refresh();
        assert!(!dp.has(is_add));
    }
}
