//! Forwarding decisions: what happens to a frame read from a TAP
//! ([`Engine::from_tap`]) and to a datagram read from the underlay
//! ([`Engine::from_wire`]).
//!
//! The engine writes its results into [`Outputs`]: UDP messages into a
//! [`TxBatch`] (one `sendmmsg` per batch, UDP_SEGMENT for GSO frames) and
//! TAP-bound frames into one [`Coalescer`] per port (one write per
//! coalesced GSO frame). The caller flushes both after each batch. Nothing
//! here does I/O, allocates per packet once warmed up, or takes a lock.
//!
//! Received frames reach the TAP writes without a copy when the caller says
//! where the datagram lies in its receive buffers ([`Engine::from_wire_at`]):
//! the writes then refer to those bytes, and the caller must drain the TAP
//! output ([`Outputs::drain_taps`]) before it receives into them again.
//!
//! Frames are passed mutably because service VIP load balancing
//! (`engine/lb.rs`, [`crate::lb`]) rewrites addresses in place: DNAT of a
//! frame to a VIP before it is forwarded, and the reverse translation of a
//! reply just before it is written to a local port.

use crate::batch::{FrameRef, TxBatch};
use crate::crypto::CryptoError;
use crate::crypto::esp::{self, Classified};
use crate::fdb::{Dest, Fdb, PeerSession, PortId, VniTable};
use crate::lb::conntrack::{ConntrackConfig, FlowInfo};
use crate::offload::coalesce::{Coalescer, TapWrite};
use crate::offload::segment::segment_within;
use crate::stats::{Counter, Drop, Stats};
use crate::wire::vnet::{self, VnetHdr};
use crate::wire::{MacAddr, Vni, WireError, arp, icmp, nd, vxlan};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Instant;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

mod announce;
mod flood;
mod lb;
pub mod live;
mod mesh;
mod too_big;
pub mod trace;
use lb::{Lb, Vip};
use trace::{Answer, Note, Recorder, TraceRun};

/// Records `$note` if a recorder is installed (`vxnet trace`); otherwise
/// one test of a `None`. `$rec` is the `Ctx::rec` field, named directly so
/// that other fields of the context may be borrowed meanwhile.
macro_rules! note {
    ($rec:expr, $note:expr) => {
        if let Some(r) = $rec.as_deref_mut() {
            r.notes.push($note);
        }
    };
}
use note;

/// Static settings of one dataplane.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// UDP destination port of VXLAN datagrams (4789).
    pub port: u16,
    /// Each worker's conntrack table for balanced flows.
    pub conntrack: ConntrackConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            port: 4789,
            conntrack: ConntrackConfig::default(),
        }
    }
}

/// What one batch produced; the I/O layer drains it.
pub struct Outputs {
    pub udp: TxBatch,
    taps: Vec<Coalescer>,
    /// Ports with pending frames, so a flush touches only those.
    dirty: Vec<PortId>,
}

impl Outputs {
    pub fn new(udp: TxBatch) -> Outputs {
        Outputs {
            udp,
            taps: Vec::new(),
            dirty: Vec::new(),
        }
    }

    /// The coalescer of `port`, marking it as having output.
    fn tap(&mut self, port: PortId) -> &mut Coalescer {
        let idx = port as usize;
        if self.taps.len() <= idx {
            self.taps.resize_with(idx + 1, Coalescer::new);
        }
        if self.taps[idx].is_empty() && !self.dirty.contains(&port) {
            self.dirty.push(port);
        }
        &mut self.taps[idx]
    }

    pub fn has_tap_output(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Hands every pending TAP write (`vnet header ‖ frame`, in pieces) to
    /// `write`, port by port, and empties the queues. Pieces may refer to
    /// the receive buffers given to [`Engine::from_wire_at`]: call this
    /// before those buffers are received into again.
    pub fn drain_taps(&mut self, mut write: impl FnMut(PortId, TapWrite<'_>)) {
        for port in self.dirty.drain(..) {
            if let Some(c) = self.taps.get_mut(port as usize) {
                c.drain(|w| write(port, w));
            }
        }
    }
}

/// One worker's forwarding engine.
pub struct Engine {
    fdb: Arc<Fdb>,
    ctx: Ctx,
}

/// The engine's mutable parts, apart from the table they read, so that a
/// lookup result can be borrowed while they are used (and the table's `Arc`
/// is never cloned per packet: its count is shared by every worker).
struct Ctx {
    cfg: EngineConfig,
    stats: Arc<Stats>,
    /// Room for one proxy reply.
    reply: [u8; 128],
    /// Room for one ICMP "too big" answer or neighbour announcement.
    icmp: Box<[u8; icmp::MAX_LEN]>,
    /// The time of the current batch (sans-IO: set by the caller).
    now: Instant,
    /// A control message arrived: session timers may have moved.
    timers_moved: bool,
    /// Service load balancing: this worker's conntrack table.
    lb: Lb,
    /// Installed while a packet is traced (see [`trace`]).
    rec: Option<Box<Recorder>>,
}

/// ESP header, inner UDP header and VXLAN header in front of each frame.
const ESP_PREFIX: usize = esp::HEADER_LEN + 8 + vxlan::HEADER_LEN;
/// A GSO frame cut into segments smaller than this is refused: it would
/// turn one 64 KB read into thousands of datagrams.
const MIN_GSO_SIZE: u16 = 64;

fn lock(s: &PeerSession) -> MutexGuard<'_, crate::crypto::session::Session> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    pub fn new(cfg: EngineConfig, fdb: Arc<Fdb>, stats: Arc<Stats>) -> Engine {
        let now = Instant::now();
        let mut ctx = Ctx {
            cfg,
            stats,
            reply: [0; 128],
            icmp: Box::new([0; icmp::MAX_LEN]),
            now,
            timers_moved: false,
            lb: Lb::new(cfg.conntrack),
            rec: None,
        };
        if fdb.needs_conntrack() {
            ctx.lb.prepare(now);
        }
        Engine { fdb, ctx }
    }

    /// Sets the time the next calls run at (once per batch).
    pub fn set_now(&mut self, now: Instant) {
        self.ctx.now = now;
    }

    /// True once after a control message arrived (the caller should run
    /// [`Engine::handle_timers`] soon).
    pub fn take_timers_moved(&mut self) -> bool {
        std::mem::take(&mut self.ctx.timers_moved)
    }

    /// Drives every peer session's timers (handshake retries, rekeys, grace
    /// expiry), queues the control messages they want sent, and returns when
    /// it wants to be called next.
    pub fn handle_timers(&mut self, out: &mut Outputs) -> Option<Instant> {
        let now = self.ctx.now;
        let mut next: Option<Instant> = None;
        for (vtep, s) in self.fdb.peers() {
            let mut s = lock(s);
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            self.ctx.send_control(&mut s, vtep, out);
            if let Some(t) = s.poll_timeout() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Installs a new forwarding table (between batches). The conntrack
    /// table is allocated here when the first service appears.
    pub fn set_fdb(&mut self, fdb: Arc<Fdb>) {
        if fdb.needs_conntrack() {
            self.ctx.lb.prepare(self.ctx.now);
        }
        self.fdb = fdb;
    }

    /// Expires a bounded slice of the conntrack table (at most every 50 ms
    /// of the time given to [`Engine::set_now`]), and drops flows of
    /// services that were removed; call once per loop.
    pub fn sweep_conntrack(&mut self) {
        self.ctx.sweep_conntrack(&self.fdb);
    }

    /// This worker's balanced flows (conntrack entries), as of the time of
    /// the last [`Engine::set_now`].
    pub fn flows(&self) -> impl Iterator<Item = FlowInfo> + '_ {
        self.ctx.flows()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.ctx.stats
    }

    /// The forwarding table in use.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Runs `pkt` (`vnet header ‖ frame`, as the TAP of `port` would hand
    /// it over) through [`Engine::from_tap`] without sending anything: a
    /// dry run that records each decision ([`trace`]).
    pub fn trace_tap(&mut self, port: PortId, pkt: &mut [u8]) -> TraceRun {
        self.dry_run(|e, out| e.from_tap(port, pkt, out))
    }

    /// Runs a datagram from `src` (one that [`Engine::trace_tap`] on the
    /// sending host produced) through [`Engine::from_wire`] as a dry run.
    pub fn trace_wire(&mut self, src: SocketAddr, datagram: &mut [u8]) -> TraceRun {
        self.dry_run(|e, out| e.from_wire(src, datagram, out))
    }

    fn dry_run(&mut self, f: impl FnOnce(&mut Engine, &mut Outputs)) -> TraceRun {
        let scratch = Arc::new(Stats::default());
        let real = std::mem::replace(&mut self.ctx.stats, Arc::clone(&scratch));
        let before = self.ctx.rec.replace(Box::new(Recorder::dry_run()));
        let timers_moved = self.ctx.timers_moved;
        let mut out = Outputs::new(TxBatch::new(256 * 1024, 64));
        f(self, &mut out);
        self.ctx.stats = real;
        self.ctx.timers_moved = timers_moved;
        let notes = std::mem::replace(&mut self.ctx.rec, before)
            .map(|r| r.notes)
            .unwrap_or_default();
        let drops = Drop::ALL
            .iter()
            .copied()
            .filter(|d| scratch.drops(*d) > 0)
            .collect();
        let sent = out
            .udp
            .msgs()
            .iter()
            .map(|m| {
                let b = out.udp.bytes(m);
                let first = match m.segment {
                    0 => b,
                    n => &b[..b.len().min(usize::from(n))],
                };
                (m.dst, first.to_vec())
            })
            .collect();
        let mut delivered = Vec::new();
        out.drain_taps(|port, w| {
            let frame = w
                .as_bytes()
                .and_then(|b| b.get(vnet::LEN..))
                .unwrap_or_default();
            delivered.push((port, frame.to_vec()));
        });
        TraceRun {
            notes,
            drops,
            sent,
            delivered,
        }
    }

    /// Installs (or removes, with `None`) the recorder that notes the
    /// decisions of the next packets (`vxnet trace --live` installs one for
    /// each sampled packet); returns the one installed before.
    pub fn set_recorder(&mut self, rec: Option<Box<Recorder>>) -> Option<Box<Recorder>> {
        std::mem::replace(&mut self.ctx.rec, rec)
    }

    /// Handles one `vnet header ‖ frame` read from the TAP of `port`. The
    /// frame may be rewritten in place (VIP DNAT, reverse translation).
    pub fn from_tap(&mut self, port: PortId, pkt: &mut [u8], out: &mut Outputs) {
        let ctx = &mut self.ctx;
        let stats = &*ctx.stats;
        stats.inc(Counter::TapRxFrames);
        stats.add(
            Counter::TapRxBytes,
            pkt.len().saturating_sub(vnet::LEN) as u64,
        );
        if pkt.len() < vnet::LEN + ETH_HLEN {
            return stats.dropped(Drop::TapRunt);
        }
        let Ok(hdr) = VnetHdr::parse(pkt) else {
            return stats.dropped(Drop::TapBadVnetHdr);
        };
        let frame = &mut pkt[vnet::LEN..];
        if hdr.gso_type != vnet::GsoType::None {
            stats.inc(Counter::TapRxGsoFrames);
        }
        let fdb = &*self.fdb;
        if let Some(h) = fdb.host().filter(|h| h.port == port) {
            return ctx.host_in(fdb, h, &hdr, frame, out);
        }
        let Some(p) = fdb.port(port) else {
            return stats.dropped(Drop::TapUnknownPort);
        };
        let (Some(dst), Some(src)) = (MacAddr::dst_of(frame), MacAddr::src_of(frame)) else {
            return stats.dropped(Drop::TapRunt);
        };
        if !p.macs.contains(&src) {
            return stats.dropped(Drop::TapSpoofedSource);
        }
        let vni = p.vni;
        note!(
            ctx.rec,
            Note::TapRx {
                port,
                vni,
                src,
                dst,
                len: frame.len(),
            }
        );
        let Some(table) = fdb.vni(vni) else {
            return stats.dropped(Drop::TapNoDestination);
        };
        if dst.is_multicast() {
            if ctx.proxy(table, port, frame, out) {
                return;
            }
            return ctx.flood(fdb, vni, table, port, &hdr, frame, out);
        }
        let mut dest = table.macs.get(&dst).copied();
        if dest.is_none() && table.is_gateway_mac(dst) {
            return ctx.route(fdb, vni, table, port, &hdr, frame, out);
        }
        if dest.is_none() && !table.services.is_empty() {
            // A unicast ARP or NS for a VIP (its MAC is no endpoint's).
            if ctx.proxy(table, port, frame, out) {
                return;
            }
            match ctx.balance(table, vni, port, &hdr, frame, out) {
                Vip::Pass => {}
                Vip::Done => return,
                Vip::Forward(backend) => dest = table.macs.get(&backend).copied(),
            }
        }
        ctx.unicast(fdb, vni, table, port, dest, &hdr, frame, out);
    }

    /// Handles one datagram received on the data port from `src`: plain
    /// VXLAN, ESP, or a key-rotation control message. ESP is decrypted in
    /// place, hence `&mut`. Frames for the TAPs are copied out of
    /// `datagram`; the data path uses [`Engine::from_wire_at`].
    pub fn from_wire(&mut self, src: SocketAddr, datagram: &mut [u8], out: &mut Outputs) {
        self.wire(src, datagram, None, out);
    }

    /// [`Engine::from_wire`] for a datagram that lies at `at` in the
    /// caller's receive buffers: TAP writes refer to its frames there
    /// instead of copying them. The caller keeps the bytes in place and
    /// unchanged until it has drained the TAP output.
    pub fn from_wire_at(
        &mut self,
        src: SocketAddr,
        datagram: &mut [u8],
        at: FrameRef,
        out: &mut Outputs,
    ) {
        self.wire(src, datagram, Some(at), out);
    }

    fn wire(
        &mut self,
        src: SocketAddr,
        datagram: &mut [u8],
        at: Option<FrameRef>,
        out: &mut Outputs,
    ) {
        let ctx = &mut self.ctx;
        let fdb = &*self.fdb;
        // Every datagram counted here ends as exactly one of decapsulated,
        // decrypted, control_rx, control_stale or a drop (the invariant
        // `engine/accounting_tests.rs` checks).
        ctx.stats.inc(Counter::UdpRxDatagrams);
        note!(
            ctx.rec,
            Note::WireRx {
                src,
                len: datagram.len()
            }
        );
        match esp::classify(datagram) {
            None if datagram.is_empty() => ctx.stats.dropped(Drop::WireEmpty),
            None => ctx.stats.dropped(Drop::WireRunt),
            Some(Classified::Vxlan) => ctx.decap(fdb, datagram, at, None, out),
            Some(Classified::Control) => ctx.control(fdb, src, datagram, out),
            Some(Classified::Reserved(_)) => ctx.stats.dropped(Drop::WireReservedSpi),
            Some(Classified::Esp(spi)) => {
                let Some(session) = fdb.peer(src.ip()) else {
                    return ctx.stats.dropped(Drop::WireUnknownSpi);
                };
                let opened = lock(session).open(datagram, ctx.now);
                match opened {
                    Ok(o) => {
                        // Counted as decrypted once `decap` delivers it.
                        note!(
                            ctx.rec,
                            Note::Decrypted {
                                spi,
                                vni: o.vni,
                                generation: o.generation
                            }
                        );
                        // Skip the inner UDP header (RFC 3948 style).
                        let start = o.range.start + 8;
                        let Some(inner) = datagram.get_mut(start..o.range.end) else {
                            return ctx.stats.dropped(Drop::WireBadEsp);
                        };
                        // Opened in place: the plaintext is where it was.
                        let at = at.map(|a| a.advance(start));
                        ctx.decap(fdb, inner, at, Some(o.vni), out);
                    }
                    Err(e) => ctx.stats.dropped(match e {
                        CryptoError::AuthFailed => Drop::WireAuthFailed,
                        CryptoError::Replay => Drop::WireReplay,
                        CryptoError::TooOld => Drop::WireTooOld,
                        CryptoError::UnknownSpi => Drop::WireUnknownSpi,
                        CryptoError::ReservedSpi => Drop::WireReservedSpi,
                        _ => Drop::WireBadEsp,
                    }),
                }
            }
        }
    }
}

impl Ctx {
    /// Sends a unicast frame from local `port` where the FDB says its
    /// destination MAC lives (`dest`), or floods it when the MAC is unknown.
    #[allow(clippy::too_many_arguments)]
    fn unicast(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        table: &VniTable,
        port: PortId,
        dest: Option<Dest>,
        hdr: &VnetHdr,
        frame: &mut [u8],
        out: &mut Outputs,
    ) {
        if self.rec.is_some() {
            let mac = MacAddr::dst_of(frame).unwrap_or(MacAddr([0; 6]));
            note!(
                self.rec,
                match dest {
                    Some(Dest::Local(port)) => Note::FdbLocal { mac, port },
                    Some(Dest::Remote(vtep)) => Note::FdbRemote { mac, vtep },
                    None => Note::FdbMiss { mac },
                }
            );
        }
        if let Some(h) = mesh::is_host_port(fdb, dest) {
            if self.reply_to_host(h, vni, hdr.needs_csum(), frame) {
                out.tap(h.port).push_as_is(hdr, frame);
            }
            return;
        }
        match dest {
            // Back where it came from: a bridge does not hairpin either.
            Some(Dest::Local(to)) if to == port => self.stats.dropped(Drop::TapSamePort),
            Some(Dest::Local(to)) => {
                if table.backends.may_contain_src(frame) {
                    self.reverse(vni, hdr.needs_csum(), frame);
                }
                self.stats.inc(Counter::LocalSwitched);
                note!(
                    self.rec,
                    Note::TapTx {
                        port: to,
                        len: frame.len()
                    }
                );
                out.tap(to).push_as_is(hdr, frame);
            }
            Some(Dest::Remote(vtep)) => {
                self.unicast_remote(fdb, vni, table.encrypted, vtep, port, hdr, frame, out)
            }
            // Unknown unicast: flooded, as a bridge does.
            None => self.flood(fdb, vni, table, port, hdr, frame, out),
        }
    }

    /// Sends a unicast frame from local `port` to the endpoint behind
    /// `vtep`. A frame too big for the underlay is answered with an ICMP
    /// "too big" when its sender can use one (and dropped), else sent in a
    /// datagram the kernel fragments; GSO frames are segmented to fit (and
    /// their sender told). Costs the fast path one comparison.
    #[allow(clippy::too_many_arguments)]
    fn unicast_remote(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        encrypted: bool,
        vtep: IpAddr,
        port: PortId,
        hdr: &VnetHdr,
        frame: &[u8],
        out: &mut Outputs,
    ) {
        let max = fdb.max_frame(encrypted);
        if frame.len() > max
            && hdr.gso_type == vnet::GsoType::None
            && self.too_big(fdb, encrypted, port, frame, out)
        {
            return;
        }
        let capped = if encrypted {
            self.encap_esp(fdb, vni, vtep, hdr, frame, max, out)
        } else {
            self.encap(vni, vtep, hdr, frame, max, out)
                .is_some_and(|e| e.capped)
        };
        if capped {
            self.gso_capped(fdb, encrypted, port, frame, out);
        }
    }

    /// Delivers a VXLAN datagram (at `at` in the receive buffers, if
    /// known) to local endpoints. `sa_vni` is the VNI of the SA it was
    /// decrypted with, `None` for plain VXLAN. Counts it once: delivered
    /// as `decrypted` (ESP) or `decapsulated` (plain), or as its drop.
    fn decap(
        &mut self,
        fdb: &Fdb,
        datagram: &mut [u8],
        at: Option<FrameRef>,
        sa_vni: Option<u32>,
        out: &mut Outputs,
    ) {
        let pkt = match vxlan::Packet::new_checked(datagram) {
            Ok(p) => p,
            Err(WireError::Truncated) => return self.stats.dropped(Drop::WireRunt),
            Err(_) => return self.stats.dropped(Drop::WireBadVxlan),
        };
        let vni = pkt.vni();
        if sa_vni.is_some_and(|v| v != vni.get()) {
            return self.stats.dropped(Drop::WireVniMismatch);
        }
        // new_checked guaranteed the header.
        let inner = &mut pkt.into_inner()[vxlan::HEADER_LEN..];
        let stats = &*self.stats;
        let (Some(dst), Some(src)) = (MacAddr::dst_of(inner), MacAddr::src_of(inner)) else {
            return stats.dropped(Drop::WireRunt);
        };
        if inner.len() < ETH_HLEN {
            return stats.dropped(Drop::WireRunt);
        }
        let Some(table) = fdb.vni(vni) else {
            return stats.dropped(Drop::WireUnknownVni);
        };
        if table.encrypted && sa_vni.is_none() {
            return stats.dropped(Drop::WirePlainOnEncrypted);
        }
        if let Some(Dest::Local(_)) = table.macs.get(&src) {
            return stats.dropped(Drop::WireFromSelf);
        }
        let delivered = if sa_vni.is_some() {
            Counter::Decrypted
        } else {
            Counter::Decapsulated
        };
        note!(
            self.rec,
            Note::Vni {
                vni,
                encrypted: table.encrypted
            }
        );
        if dst.is_multicast() {
            stats.inc(delivered);
            for &p in &table.ports {
                note!(
                    self.rec,
                    Note::TapTx {
                        port: p,
                        len: inner.len()
                    }
                );
                out.tap(p).push_as_is(&VnetHdr::NONE, inner);
            }
            return;
        }
        let dest = table.macs.get(&dst).copied();
        if let Some(h) = mesh::is_host_port(fdb, dest) {
            // A reply that matches no flow is counted as its drop instead:
            // one outcome per datagram.
            if self.reply_to_host(h, vni, false, inner) {
                self.stats.inc(delivered);
                match at {
                    Some(at) => out
                        .tap(h.port)
                        .push_ref(inner, at.advance(vxlan::HEADER_LEN)),
                    None => out.tap(h.port).push(inner),
                }
            }
            return;
        }
        match dest {
            Some(Dest::Local(p)) => {
                stats.inc(delivered);
                note!(self.rec, Note::Endpoint { mac: dst, port: p });
                if table.ingress {
                    self.track_return(vni, table, inner);
                }
                if table.backends.may_contain_src(inner) {
                    // Rewritten in place: references still see the bytes.
                    self.reverse(vni, false, inner);
                }
                note!(
                    self.rec,
                    Note::TapTx {
                        port: p,
                        len: inner.len()
                    }
                );
                // The payload follows the VXLAN header.
                match at {
                    Some(at) => out.tap(p).push_ref(inner, at.advance(vxlan::HEADER_LEN)),
                    None => out.tap(p).push(inner),
                }
            }
            _ => stats.dropped(Drop::WireNoEndpoint),
        }
    }

    /// A key-rotation control message from the host at `src`.
    fn control(&mut self, fdb: &Fdb, src: SocketAddr, msg: &[u8], out: &mut Outputs) {
        let Some(session) = fdb.peer(src.ip()) else {
            return self.stats.dropped(Drop::WireBadControl);
        };
        let mut s = lock(session);
        match s.handle_message(self.now, msg) {
            Ok(()) => self.stats.inc(Counter::ControlRx),
            Err(CryptoError::StaleControlMessage) => self.stats.inc(Counter::ControlStale),
            Err(_) => self.stats.dropped(Drop::WireBadControl),
        }
        self.send_control(&mut s, src.ip(), out);
        self.timers_moved = true;
    }

    /// Queues the control messages a session wants sent.
    fn send_control(
        &mut self,
        s: &mut crate::crypto::session::Session,
        vtep: IpAddr,
        out: &mut Outputs,
    ) {
        while let Some(msg) = s.poll_transmit() {
            let start = out.udp.arena().len();
            out.udp.arena().extend_from_slice(&msg);
            out.udp
                .commit(SocketAddr::new(vtep, self.cfg.port), start, 0, 0);
            self.stats.inc(Counter::ControlTx);
        }
    }

    /// Encapsulates `frame` for an encrypted VNI: each segment becomes
    /// `ESP header ‖ UDP header ‖ VXLAN ‖ frame ‖ ESP trailer ‖ ICV`, sealed
    /// in place and packed back to back so that every datagram but the last
    /// has the same length (one UDP_SEGMENT message per GSO frame).
    /// Segments are at most `max_frame` long; true when a GSO frame had to
    /// be cut smaller than it asked for that.
    #[allow(clippy::too_many_arguments)]
    fn encap_esp(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        vtep: IpAddr,
        hdr: &VnetHdr,
        frame: &[u8],
        max_frame: usize,
        out: &mut Outputs,
    ) -> bool {
        let stats = &*self.stats;
        if hdr.gso_type != vnet::GsoType::None && hdr.gso_size < MIN_GSO_SIZE {
            stats.dropped(Drop::TapSegmentError);
            return false;
        }
        let Some(session) = fdb.peer(vtep) else {
            stats.dropped(Drop::TapNoSa);
            return false;
        };
        let entropy = flow_hash(frame);
        let mut prefix = [0u8; ESP_PREFIX];
        let udp = esp::HEADER_LEN;
        // Inner UDP header: source port from the flow (as VXLAN does), the
        // data port as destination, length per segment, checksum 0 (the ICV
        // protects the datagram).
        let sport = 49_152 + (entropy % 16_384) as u16;
        prefix[udp..udp + 2].copy_from_slice(&sport.to_be_bytes());
        prefix[udp + 2..udp + 4].copy_from_slice(&self.cfg.port.to_be_bytes());
        vxlan::write_header(&mut prefix[udp + 8..], vni);
        let start = out.udp.arena().len();
        let arena = out.udp.arena();
        let seg = match segment_within(hdr, frame, &prefix, esp::MAX_TRAILER, max_frame, arena) {
            Ok(seg) => seg,
            Err(_) => {
                out.udp.rollback(start);
                stats.dropped(Drop::TapSegmentError);
                return false;
            }
        };
        let mut s = lock(session);
        let Some(sa) = s.outbound(vni.get()) else {
            out.udp.rollback(start);
            stats.dropped(Drop::TapNoSa);
            return false;
        };
        if let Some(r) = self.rec.as_deref_mut() {
            let id = sa.id();
            r.notes.push(Note::Sa {
                spi: id.spi,
                generation: id.generation,
                seq: sa.next_seq(),
            });
        }
        let arena = out.udp.arena();
        let (mut read, mut write, mut first) = (start, start, 0);
        for i in 0..seg.count {
            let len = if i + 1 < seg.count {
                seg.stride
            } else {
                seg.total - seg.stride * (seg.count - 1)
            };
            let payload_len = len - esp::HEADER_LEN - esp::MAX_TRAILER;
            let Ok(udp_len) = u16::try_from(payload_len) else {
                arena.truncate(start);
                stats.dropped(Drop::TapSegmentError);
                return false;
            };
            arena[read + udp + 4..read + udp + 6].copy_from_slice(&udp_len.to_be_bytes());
            let sealed = match esp::seal_in_place(sa, &mut arena[read..read + len], payload_len) {
                Ok(n) => n,
                Err(_) => {
                    // The sequence space is used up; the rekey that should
                    // have happened long before is overdue.
                    arena.truncate(start);
                    stats.dropped(Drop::TapNoSa);
                    return false;
                }
            };
            if write != read {
                arena.copy_within(read..read + sealed, write);
            }
            if i == 0 {
                first = sealed;
            }
            write += sealed;
            read += len;
        }
        arena.truncate(write);
        drop(s);
        let gso = if seg.count > 1 {
            u16::try_from(first).unwrap_or(0)
        } else {
            0
        };
        out.udp
            .commit(SocketAddr::new(vtep, self.cfg.port), start, gso, entropy);
        note!(
            self.rec,
            Note::Outer {
                dst: SocketAddr::new(vtep, self.cfg.port),
                vni,
                len: first,
                datagrams: seg.count,
                encrypted: true,
            }
        );
        stats.add(Counter::Encapsulated, seg.count as u64);
        stats.add(Counter::Encrypted, seg.count as u64);
        seg.capped
    }

    /// Answers ARP requests and neighbour solicitations for addresses the
    /// table knows (endpoints and VIPs), on the port they came from.
    /// Returns true if answered.
    fn proxy(&mut self, table: &VniTable, port: PortId, frame: &[u8], out: &mut Outputs) -> bool {
        let (answer, counter) = match ethertype(frame) {
            ETHERTYPE_ARP => {
                let Ok(Some(req)) = arp::parse_request(frame) else {
                    return false;
                };
                if req.is_gratuitous() {
                    // An announcement for the others, not a question.
                    return false;
                }
                let Some(mac) = proxied_mac(table, IpAddr::V4(req.target_ip)) else {
                    return false;
                };
                (
                    arp::emit_reply(&req, mac, &mut self.reply),
                    Counter::ArpProxied,
                )
            }
            ETHERTYPE_IPV6 => {
                let Ok(Some(sol)) = nd::parse_solicit(frame) else {
                    return false;
                };
                let Some(mac) = proxied_mac(table, IpAddr::V6(sol.target)) else {
                    return false;
                };
                (
                    nd::emit_advert(&sol, mac, &mut self.reply),
                    Counter::NdProxied,
                )
            }
            _ => return false,
        };
        if answer == 0 || answer > self.reply.len() {
            return false;
        }
        self.stats.inc(counter);
        note!(
            self.rec,
            Note::Answered {
                answer: if counter == Counter::ArpProxied {
                    Answer::Arp
                } else {
                    Answer::Nd
                },
                port
            }
        );
        out.tap(port)
            .push_as_is(&VnetHdr::NONE, &self.reply[..answer]);
        true
    }

    /// Encapsulates `frame` (segmenting GSO frames into segments of at most
    /// `max_frame` bytes) towards `vtep`; returns where the committed
    /// message lies in the arena.
    fn encap(
        &mut self,
        vni: Vni,
        vtep: IpAddr,
        hdr: &VnetHdr,
        frame: &[u8],
        max_frame: usize,
        out: &mut Outputs,
    ) -> Option<Encapped> {
        if hdr.gso_type != vnet::GsoType::None && hdr.gso_size < MIN_GSO_SIZE {
            self.stats.dropped(Drop::TapSegmentError);
            return None;
        }
        let mut prefix = [0u8; vxlan::HEADER_LEN];
        vxlan::write_header(&mut prefix, vni);
        let start = out.udp.arena().len();
        match segment_within(hdr, frame, &prefix, 0, max_frame, out.udp.arena()) {
            Ok(seg) => {
                let gso = if seg.count > 1 {
                    u16::try_from(seg.stride).unwrap_or(0)
                } else {
                    0
                };
                if seg.count > 1 && gso == 0 {
                    out.udp.rollback(start);
                    self.stats.dropped(Drop::TapSegmentError);
                    return None;
                }
                let dst = SocketAddr::new(vtep, self.cfg.port);
                out.udp.commit(dst, start, gso, flow_hash(frame));
                note!(
                    self.rec,
                    Note::Outer {
                        dst,
                        vni,
                        len: if seg.count > 1 { seg.stride } else { seg.total },
                        datagrams: seg.count,
                        encrypted: false,
                    }
                );
                self.stats.add(Counter::Encapsulated, seg.count as u64);
                Some(Encapped {
                    range: start..start + seg.total,
                    capped: seg.capped,
                })
            }
            Err(_) => {
                out.udp.rollback(start);
                self.stats.dropped(Drop::TapSegmentError);
                None
            }
        }
    }
}

/// A frame [`Ctx::encap`] committed.
struct Encapped {
    /// Its bytes in the batch arena.
    range: std::ops::Range<usize>,
    /// Its segments were cut smaller than the frame asked, to fit.
    capped: bool,
}

/// The MAC the proxy answers for `ip`: an endpoint's, a VIP's, or the
/// gateway's.
#[inline]
fn proxied_mac(table: &VniTable, ip: IpAddr) -> Option<MacAddr> {
    match table.ips.get(&ip) {
        Some(m) => Some(*m),
        None => table.services.get(&ip).map(|s| s.mac()).or_else(|| {
            table
                .gateways
                .iter()
                .find(|(g, _)| *g == ip)
                .map(|(_, m)| *m)
        }),
    }
}

#[inline]
fn ethertype(frame: &[u8]) -> u16 {
    match frame.get(12..14) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// A hash of the inner flow (addresses, protocol, ports; MACs for non-IP),
/// used to pick the outer UDP source port so that flows spread over
/// underlay ECMP paths while one flow stays on one path (no reordering).
pub fn flow_hash(frame: &[u8]) -> u32 {
    // FxHash-style mixing: fast, and good enough to spread a few bits.
    #[inline]
    fn mix(h: u64, bytes: &[u8]) -> u64 {
        let mut h = h;
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        h
    }
    let l3 = ETH_HLEN;
    let h = match ethertype(frame) {
        ETHERTYPE_IPV4 if frame.len() >= l3 + 20 => {
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            let proto = frame[l3 + 9];
            let frag = u16::from_be_bytes([frame[l3 + 6], frame[l3 + 7]]) & 0x3fff != 0;
            let mut h = mix(u64::from(proto), &frame[l3 + 12..l3 + 20]);
            if !frag && matches!(proto, 6 | 17 | 132) {
                if let Some(ports) = frame.get(l3 + ihl..l3 + ihl + 4) {
                    h = mix(h, ports);
                }
            }
            h
        }
        ETHERTYPE_IPV6 if frame.len() >= l3 + 40 => {
            let next = frame[l3 + 6];
            let mut h = mix(u64::from(next), &frame[l3 + 8..l3 + 40]);
            if matches!(next, 6 | 17 | 132) {
                if let Some(ports) = frame.get(l3 + 40..l3 + 44) {
                    h = mix(h, ports);
                }
            }
            h
        }
        _ => mix(0, &frame[..frame.len().min(12)]),
    };
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod accounting_tests;
#[cfg(test)]
mod lb_tests;
#[cfg(test)]
mod mesh_tests;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;
#[cfg(test)]
mod underlay_tests;
