//! Worker threads: each polls its UDP socket and the TAPs it owns, runs the
//! engine over whole batches and flushes the results with one `sendmmsg`
//! and one TAP write per (coalesced) frame.
//!
//! Received frames are written to the TAPs straight from the receive
//! buffers (`writev` of the coalescer's pieces, see `Engine::from_wire_at`).
//! Invariant: every TAP write of a receive batch is flushed before the next
//! `recv_batch` refills `rx`; `poll_udp` flushes after each batch and checks
//! again before receiving. A reference that still fails to resolve is
//! dropped and counted (`io`/`bad_ref`), never followed.
//!
//! Work is handed to a worker only through its command channel (ports added
//! or removed), never per packet. The forwarding table is published as a
//! new `Arc<Fdb>` and picked up between batches by comparing a version
//! number, so the hot path takes no lock.

use crate::observe::{CaptureTap, LiveTap};
use crate::sys::poll::{Poller, Waker};
use crate::sys::tap::Tap;
use crate::sys::udp::UdpIo;
use crossbeam_channel::{Receiver, Sender};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vxnet_api::observe::Direction;
use vxnet_proto::batch::{RxBatch, TxBatch};
use vxnet_proto::engine::{Engine, EngineConfig, Outputs};
use vxnet_proto::fdb::{Fdb, PortId};
use vxnet_proto::offload::coalesce::{MAX_PIECES, TapWrite};
use vxnet_proto::stats::{Counter, Drop, Stats};
use vxnet_proto::wire::vnet;

/// How a worker waits for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleeps: lowest latency, one core per worker at 100%.
    Busy,
    /// Spins for a bounded time after the last packet, then sleeps in epoll.
    Adaptive,
    /// Always sleeps in epoll when there is nothing to do.
    Interrupt,
}

impl PollMode {
    /// The same mode as the API names it.
    pub fn api(self) -> vxnet_api::dp::PollMode {
        match self {
            PollMode::Busy => vxnet_api::dp::PollMode::Busy,
            PollMode::Adaptive => vxnet_api::dp::PollMode::Adaptive,
            PollMode::Interrupt => vxnet_api::dp::PollMode::Interrupt,
        }
    }
}

impl FromStr for PollMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(PollMode::Busy),
            "adaptive" => Ok(PollMode::Adaptive),
            "interrupt" => Ok(PollMode::Interrupt),
            _ => Err(format!(
                "poll mode '{s}' is not one of busy, adaptive, interrupt"
            )),
        }
    }
}

impl std::fmt::Display for PollMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PollMode::Busy => "busy",
            PollMode::Adaptive => "adaptive",
            PollMode::Interrupt => "interrupt",
        })
    }
}

/// The published forwarding table.
pub struct FdbCell {
    version: AtomicU64,
    fdb: Mutex<Arc<Fdb>>,
}

impl FdbCell {
    pub fn new(fdb: Fdb) -> FdbCell {
        FdbCell {
            version: AtomicU64::new(1),
            fdb: Mutex::new(Arc::new(fdb)),
        }
    }

    /// Makes `fdb` the table every worker uses from its next batch on.
    pub fn publish(&self, fdb: Fdb) {
        *self.fdb.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(fdb);
        self.version.fetch_add(1, Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn load(&self) -> (u64, Arc<Fdb>) {
        let guard = self.fdb.lock().unwrap_or_else(PoisonError::into_inner);
        (self.version(), Arc::clone(&guard))
    }
}

pub enum Command {
    /// Start writing to `tap` for `port`; the owner also polls it.
    AddPort {
        port: PortId,
        tap: Arc<Tap>,
        owner: bool,
    },
    /// Forget `port`; answered once the worker holds no reference to it.
    RemovePort {
        port: PortId,
        done: Sender<()>,
    },
    /// Run the session timers now (a rekey was asked for).
    Kick,
    /// Tell the local endpoints of each VNI that the address is at the
    /// MAC (gratuitous ARP, unsolicited neighbour advertisement): it was
    /// just attached or moved. Uses the newest table.
    Announce(
        Vec<(
            vxnet_proto::wire::Vni,
            std::net::IpAddr,
            vxnet_proto::wire::MacAddr,
        )>,
    ),
    /// Run this on the engine between batches (listings of the worker's
    /// own state, such as its conntrack table); it answers through a
    /// channel it carries.
    Inspect(Box<dyn FnOnce(&Engine) + Send>),
    /// Run this on the engine between batches, mutably (`vxnet trace`'s
    /// dry runs); it answers through a channel it carries.
    Run(Box<dyn FnOnce(&mut Engine) + Send>),
    /// Start (or, with `None`, stop) copying packets for a capture.
    Capture(Option<Box<CaptureTap>>),
    /// Start (or stop) reporting packets' verdicts for a live trace.
    Live(Option<Box<LiveTap>>),
    Stop,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: usize,
    pub local: SocketAddr,
    pub src_ports: usize,
    pub poll: PollMode,
    /// Adaptive mode: how long to spin after the last packet.
    pub spin: Duration,
    pub engine: EngineConfig,
}

pub struct WorkerHandle {
    pub stats: Arc<Stats>,
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    pub gso: bool,
    pub gro: bool,
}

/// A way to send a worker commands that outlives a borrow of its handle
/// (a stream's end tells the workers to drop its taps).
#[derive(Clone)]
pub struct Commander {
    commands: Sender<Command>,
    waker: Arc<Waker>,
}

impl Commander {
    pub fn send(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
        self.waker.wake();
    }
}

impl WorkerHandle {
    pub fn commander(&self) -> Commander {
        Commander {
            commands: self.commands.clone(),
            waker: Arc::clone(&self.waker),
        }
    }

    pub fn send(&self, cmd: Command) {
        // A worker only goes away at shutdown; then there is nobody to tell.
        let _ = self.commands.send(cmd);
        self.waker.wake();
    }

    pub fn stop(&mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::ops::Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

const TOKEN_UDP: u64 = 0;
const TOKEN_WAKER: u64 = 1;
const TOKEN_TAP: u64 = 2;
/// Frames read from one TAP before looking at the others.
const TAP_BUDGET: usize = 64;
/// Receive batches in a row before looking at the TAPs.
const UDP_BUDGET: usize = 4;
/// Largest `vnet header ‖ frame` a TAP hands over (64 KB GSO frame).
const TAP_BUF: usize = vnet::LEN + 65_536 + 256;
/// How long an idle worker sleeps at most (housekeeping, timers).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Binds the worker's sockets (so errors surface to the caller) and starts it.
pub fn spawn(cfg: WorkerConfig, fdb: Arc<FdbCell>) -> io::Result<WorkerHandle> {
    let udp = UdpIo::bind(cfg.local, cfg.src_ports)?;
    let poller = Poller::new()?;
    let waker = Arc::new(Waker::new()?);
    poller.add(udp.rx_fd(), TOKEN_UDP)?;
    poller.add(waker.fd(), TOKEN_WAKER)?;
    let stats = Arc::new(Stats::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let (gso, gro) = (udp.gso_enabled(), udp.gro_enabled());
    let (version, table) = fdb.load();
    let mut worker = Worker {
        engine: Engine::new(cfg.engine, table, Arc::clone(&stats)),
        cfg,
        udp,
        poller,
        waker: Arc::clone(&waker),
        commands: rx,
        fdb,
        fdb_version: version,
        ports: Vec::new(),
        owned: Vec::new(),
        rx: RxBatch::new(32, 65_536),
        out: Outputs::new(TxBatch::new(512 * 1024, 256)),
        tapbuf: vec![0u8; TAP_BUF].into_boxed_slice(),
        ready: Vec::with_capacity(64),
        kicked: false,
        capture: None,
        live: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("vxnet-worker-{}", worker.cfg.id))
        .spawn(move || {
            // A worker that dies would leave a process that answers its API
            // but forwards nothing: take the whole dataplane down instead,
            // so that its supervisor restarts it and the failure is seen.
            let id = worker.cfg.id;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())).is_err() {
                tracing::error!(worker = id, "worker panicked; stopping the dataplane");
                std::process::exit(70);
            }
        })?;
    Ok(WorkerHandle {
        stats,
        commands: tx,
        waker,
        thread: Some(thread),
        gso,
        gro,
    })
}

struct Worker {
    cfg: WorkerConfig,
    engine: Engine,
    udp: UdpIo,
    poller: Poller,
    waker: Arc<Waker>,
    commands: Receiver<Command>,
    fdb: Arc<FdbCell>,
    fdb_version: u64,
    /// Every port's TAP, for writes (indexed by port id).
    ports: Vec<Option<Arc<Tap>>>,
    /// The ports this worker reads.
    owned: Vec<PortId>,
    rx: RxBatch,
    out: Outputs,
    tapbuf: Box<[u8]>,
    ready: Vec<u64>,
    kicked: bool,
    /// Installed while a capture runs (`vxnet capture`).
    capture: Option<Box<CaptureTap>>,
    /// Installed while a live trace runs (`vxnet trace --live`).
    live: Option<Box<LiveTap>>,
}

impl Worker {
    fn run(&mut self) {
        tracing::debug!(worker = self.cfg.id, poll = %self.cfg.poll, "worker started");
        let mut last_work = Instant::now();
        // Worker 0 drives the key-rotation timers of every peer session.
        let drives_timers = self.cfg.id == 0;
        let mut next_timer = Instant::now();
        loop {
            if !self.handle_commands() {
                break;
            }
            if self.refresh_fdb() {
                next_timer = Instant::now();
            }
            let now = Instant::now();
            self.engine.set_now(now);
            self.engine.sweep_conntrack();
            if drives_timers && (now >= next_timer || self.kicked) {
                self.kicked = false;
                next_timer = self
                    .engine
                    .handle_timers(&mut self.out)
                    .unwrap_or(now + IDLE_WAKE);
            }
            let worked = self.poll_udp() | self.poll_taps();
            if self.engine.take_timers_moved() {
                next_timer = now;
            }
            self.flush();
            if worked {
                last_work = now;
                continue;
            }
            let sleep = match self.cfg.poll {
                PollMode::Busy => false,
                PollMode::Adaptive => last_work.elapsed() >= self.cfg.spin,
                PollMode::Interrupt => true,
            };
            if sleep {
                self.engine.stats().inc(Counter::PollSleeps);
                self.ready.clear();
                let mut timeout = IDLE_WAKE;
                if drives_timers {
                    timeout = timeout.min(next_timer.saturating_duration_since(Instant::now()));
                }
                if let Err(e) = self.poller.wait(&mut self.ready, Some(timeout)) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        tracing::error!(worker = self.cfg.id, error = %e, "epoll wait failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if self.ready.contains(&TOKEN_WAKER) {
                    self.waker.drain();
                }
                last_work = Instant::now();
            } else if self.cfg.poll == PollMode::Busy {
                std::hint::spin_loop();
            } else {
                // Adaptive: keep the core, but let a runnable thread (the
                // container's own TCP stack, iperf3 on a small host) have it
                // first; measured fewer CPU-ms per GB than a pure spin.
                std::thread::yield_now();
            }
        }
        tracing::debug!(worker = self.cfg.id, "worker stopped");
    }

    /// Applies pending commands; false when told to stop.
    fn handle_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::AddPort { port, tap, owner } => {
                    let idx = port as usize;
                    if self.ports.len() <= idx {
                        self.ports.resize(idx + 1, None);
                    }
                    if owner {
                        match self.poller.add(
                            std::os::fd::AsRawFd::as_raw_fd(&*tap),
                            TOKEN_TAP + u64::from(port),
                        ) {
                            Ok(()) => self.owned.push(port),
                            Err(e) => tracing::error!(port, error = %e, "cannot poll TAP"),
                        }
                    }
                    self.ports[idx] = Some(tap);
                }
                Command::RemovePort { port, done } => {
                    self.forget_port(port);
                    let _ = done.send(());
                }
                Command::Kick => self.kicked = true,
                Command::Announce(news) => {
                    // The table that made the news.
                    self.refresh_fdb();
                    for (vni, ip, mac) in news {
                        self.engine.announce(vni, ip, mac, &mut self.out);
                    }
                }
                Command::Inspect(f) => {
                    self.engine.set_now(Instant::now());
                    f(&self.engine);
                }
                Command::Capture(c) => self.capture = c,
                Command::Live(l) => self.live = l,
                Command::Run(f) => {
                    // A trace sees the table the next packet would see.
                    self.refresh_fdb();
                    self.engine.set_now(Instant::now());
                    f(&mut self.engine);
                }
                Command::Stop => return false,
            }
        }
        true
    }

    /// Picks up a newly published forwarding table; true if there was one.
    fn refresh_fdb(&mut self) -> bool {
        if self.fdb.version() == self.fdb_version {
            return false;
        }
        let (v, table) = self.fdb.load();
        self.fdb_version = v;
        self.engine.set_fdb(table);
        true
    }

    fn forget_port(&mut self, port: PortId) {
        if let Some(Some(tap)) = self.ports.get_mut(port as usize).map(Option::take) {
            if self.owned.contains(&port) {
                let _ = self.poller.remove(std::os::fd::AsRawFd::as_raw_fd(&*tap));
            }
        }
        self.owned.retain(|p| *p != port);
    }

    /// Reads up to a few batches from the underlay.
    fn poll_udp(&mut self) -> bool {
        let mut worked = false;
        for _ in 0..UDP_BUDGET {
            // TAP writes may refer to `rx`: none may be pending when it is
            // received into (flushed after each batch below; this is the
            // guard should another path ever queue some).
            if self.out.has_tap_output() {
                self.flush();
            }
            match self.udp.recv_batch(&mut self.rx) {
                Ok(0) => break,
                Ok(n) => {
                    worked = true;
                    let stats = Arc::clone(self.engine.stats());
                    stats.inc(Counter::UdpRxCalls);
                    for i in 0..n {
                        let meta = self.rx.meta[i];
                        stats.add(Counter::UdpRxBytes, meta.len as u64);
                        if meta.segment != 0 && meta.len > usize::from(meta.segment) {
                            stats.inc(Counter::UdpRxGroBuffers);
                        }
                        // The engine counts each datagram (empty ones
                        // too) as received and as what became of it.
                        for (at, d) in self.rx.datagrams_at_mut(i) {
                            if let Some(c) = &self.capture {
                                if !c.outer(Direction::Rx, meta.src, meta.src, d) {
                                    self.capture = None;
                                }
                            }
                            match &mut self.live {
                                None => self.engine.from_wire_at(meta.src, d, at, &mut self.out),
                                Some(live) => {
                                    let o = self.engine.from_wire_observed(
                                        meta.src,
                                        d,
                                        at,
                                        &mut self.out,
                                        &mut live.sampler,
                                    );
                                    if !live.wire(self.engine.fdb(), o, meta.src, d) {
                                        self.live = None;
                                    }
                                }
                            }
                        }
                    }
                    // Hand the batch to the TAPs now, while the received
                    // frames are still in cache (a batch is up to 2 MB), and
                    // before `rx` is received into again: the writes refer
                    // to it.
                    self.flush();
                    if n < self.rx.bufs.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(worker = self.cfg.id, error = %e, "UDP receive failed");
                    break;
                }
            }
        }
        worked
    }

    /// Reads up to a budget of frames from each owned TAP.
    fn poll_taps(&mut self) -> bool {
        let mut worked = false;
        let mut dead: Option<PortId> = None;
        for &port in &self.owned {
            let Some(Some(tap)) = self.ports.get(port as usize) else {
                continue;
            };
            for _ in 0..TAP_BUDGET {
                match tap.read(&mut self.tapbuf) {
                    Ok(n) => {
                        worked = true;
                        let pkt = &mut self.tapbuf[..n];
                        if let Some(c) = &self.capture {
                            let frame = pkt.get(vnet::LEN..).unwrap_or_default();
                            if !c.inner(self.engine.fdb(), port, Direction::Rx, frame) {
                                self.capture = None;
                            }
                        }
                        match &mut self.live {
                            None => self.engine.from_tap(port, pkt, &mut self.out),
                            Some(live) => {
                                let o = self.engine.from_tap_observed(
                                    port,
                                    pkt,
                                    &mut self.out,
                                    &mut live.sampler,
                                );
                                let frame = pkt.get(vnet::LEN..).unwrap_or_default();
                                if !live.tap(self.engine.fdb(), o, port, frame) {
                                    self.live = None;
                                }
                            }
                        }
                        if self.out.udp.is_full() {
                            self.udp.send_batch(&self.out.udp, self.engine.stats());
                            self.out.udp.clear();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The device is gone (its namespace was deleted).
                        tracing::warn!(port, tap = tap.name(), error = %e, "TAP read failed; no longer polling it");
                        dead = Some(port);
                        break;
                    }
                }
            }
        }
        if let Some(port) = dead {
            if let Some(Some(tap)) = self.ports.get(port as usize) {
                let _ = self.poller.remove(std::os::fd::AsRawFd::as_raw_fd(&**tap));
            }
            self.owned.retain(|p| *p != port);
        }
        worked
    }

    fn flush(&mut self) {
        if self.capture.is_some() {
            self.capture_outputs();
        }
        let stats = self.engine.stats();
        if !self.out.udp.is_empty() {
            self.udp.send_batch(&self.out.udp, stats);
            self.out.udp.clear();
        }
        if self.out.has_tap_output() {
            let ports = &self.ports;
            let rx = &self.rx;
            let capture = &mut self.capture;
            let fdb = self.engine.fdb();
            self.out.drain_taps(|port, w| {
                if let Some(c) = capture.as_deref() {
                    let frame = w.to_vec(|r| rx.resolve(r)).unwrap_or_default();
                    let frame = frame.get(vnet::LEN..).unwrap_or_default();
                    if !c.inner(fdb, port, Direction::Tx, frame) {
                        *capture = None;
                    }
                }
                let Some(Some(tap)) = ports.get(port as usize) else {
                    return stats.dropped(Drop::IoTapWrite);
                };
                let Some(written) = write_tap(tap, &w, rx) else {
                    return stats.dropped(Drop::IoBadRef);
                };
                match written {
                    Ok(_) => {
                        stats.inc(Counter::TapTxFrames);
                        stats.add(
                            Counter::TapTxBytes,
                            w.size().saturating_sub(vnet::LEN) as u64,
                        );
                        if w.is_gso() {
                            stats.inc(Counter::TapTxGsoFrames);
                        }
                    }
                    Err(_) => stats.dropped(Drop::IoTapWrite),
                }
            });
        }
    }
}

impl Worker {
    /// Copies every datagram about to be sent for the capture (one record
    /// per datagram of a UDP_SEGMENT message).
    fn capture_outputs(&mut self) {
        let Some(c) = self.capture.as_deref() else {
            return;
        };
        let mut keep = true;
        for m in self.out.udp.msgs() {
            let bytes = self.out.udp.bytes(m);
            let step = match m.segment {
                0 => bytes.len().max(1),
                n => usize::from(n),
            };
            let from = self.udp.source_addr(m.entropy);
            for d in bytes.chunks(step) {
                keep &= c.outer(Direction::Tx, m.dst, from, d);
            }
        }
        if !keep {
            self.capture = None;
        }
    }
}

/// Writes one coalescer write to `tap`: copied frames (TAP-to-TAP, proxy
/// replies, small ones) with `write`, others with one `writev` of own bytes
/// and references into `rx`, resolved with bounds checks. `None` when a
/// reference does not resolve (nothing written).
fn write_tap(tap: &Tap, w: &TapWrite<'_>, rx: &RxBatch) -> Option<io::Result<usize>> {
    /// Most writes by reference are one frame left where it was received:
    /// its vnet header and the frame. Merged TCP items have more pieces.
    const FEW: usize = 4;
    if let Some(bytes) = w.as_bytes() {
        return Some(tap.write(bytes));
    }
    // The iovec array lives on the stack; a short one for the common case
    // spares initialising MAX_PIECES slots per write.
    if w.piece_count() <= FEW {
        writev_pieces::<FEW>(tap, w, rx)
    } else {
        writev_pieces::<MAX_PIECES>(tap, w, rx)
    }
}

/// One `writev` of `w`'s pieces through an iovec array of `N` slots.
fn writev_pieces<const N: usize>(
    tap: &Tap,
    w: &TapWrite<'_>,
    rx: &RxBatch,
) -> Option<io::Result<usize>> {
    let mut iov = [IoSlice::new(&[]); N];
    let n = w.iovecs(|r| rx.resolve(r), &mut iov)?;
    Some(tap.writev(&iov[..n]))
}
