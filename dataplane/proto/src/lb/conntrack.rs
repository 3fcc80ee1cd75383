//! Connection tracking for balanced flows: which backend each flow of a
//! VIP went to, so that every later packet goes there too and replies can
//! be translated back.
//!
//! This module owns the table and the per-flow state machine; it reads no
//! clock (`now` comes in) and does no allocation after [`Conntrack::new`].
//!
//! # Layout
//! A fixed pool of [`Flow`]s (the capacity, `--conntrack-size`) and an
//! index of buckets of 16 ways: one 64-byte cache line of 32-bit tags (of
//! the keys' hashes), one of the flows they belong to. Every flow is
//! indexed twice: by its forward key (client → VIP, as the client sent
//! it) and by its reply key (backend → client, as the backend answers).
//! A lookup hashes the key once, reads the bucket's tags and compares the
//! full key only on a tag match, so a miss costs one cache line. The index
//! has four times the ways the flows need (load at most 25%), so that a
//! bucket fills up (and refuses a flow though the pool has room) almost
//! never: at half the capacity in use, for about one key in 10^9 (Poisson
//! tail); with 8-way buckets it was one in 10^5, seen in the benches.
//!
//! # Expiry
//! Lazy on lookup (an expired flow is removed and the lookup misses), plus
//! [`Conntrack::handle_timeout`], which examines a bounded number of flows
//! per call ([`SWEEP_FLOWS`]) so that flows nobody looks up again free their
//! entry too; it also drops the flows its caller no longer wants (the
//! engine: flows to a VIP whose service was removed). Timeouts follow the connection's state ([`Timeouts`]):
//!
//! | state | default | why |
//! | --- | --- | --- |
//! | TCP `syn_sent` (SYN seen, no reply) | 60 s | half-open: goes quickly (Cilium `CT_SYN_TIMEOUT`) |
//! | TCP `established` | 24 h | an idle connection is not cut: Docker's IPVS cuts it after 900 s (moby#31208). Longer than Linux's TCP keepalive (2 h), so a connection that uses keepalive never expires; one idle for longer that comes back is picked up again (below) |
//! | TCP `closing` (FIN in one direction) | 120 s | a half-closed connection may still carry data the other way (Linux `fin_wait`) |
//! | TCP `closed` (FIN both ways, or RST) | 10 s | late retransmissions only (Cilium `CT_CLOSE_TIMEOUT`) |
//! | UDP `unreplied` / `replied` | 30 s | request/response (DNS): kept briefly (Linux `udp_timeout`) |
//! | UDP `assured` (more traffic after a reply) | 120 s | a stream (Linux `udp_timeout_stream`) |
//!
//! Every packet of a flow, either way, restarts its timeout. A TCP packet
//! that is not a SYN and finds no entry (an expired idle connection, or a
//! dataplane restart) starts an `established` entry: Maglev gives it the
//! same backend as long as the backend set has not changed (Linux calls
//! this loose pick-up, `nf_conntrack_tcp_loose`).
//!
//! # When full
//! An insert needs a free flow and a free way in both buckets of its keys.
//! If there is none, the flows indexed in those two buckets are examined:
//! expired ones are removed (counted as expiries), then one that is safe to
//! lose is evicted (`closed` first, then half-open TCP and unanswered UDP,
//! then answered UDP; oldest first), counted as an eviction. Established
//! TCP, closing TCP and assured UDP flows are never evicted. If that frees
//! nothing, the insert fails and is counted (`lb`/`conntrack_full`): the
//! caller drops the packet, since a flow whose replies cannot be translated
//! back would not work anyway (as Linux drops when `nf_conntrack_max` is
//! reached). A client's retry succeeds once an entry frees up.
use super::hash::{addr_bits, hash_words};
use crate::stats::{Counter, Drop, Stats};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Ways per bucket (a 64-byte cache line of tags, one of flow ids).
pub const WAYS: usize = 16;
/// Flows examined per [`Conntrack::handle_timeout`] call.
pub const SWEEP_FLOWS: usize = 1024;
/// Default flows per worker.
pub const DEFAULT_CAPACITY: u32 = 65_536;
pub const MIN_CAPACITY: u32 = 64;
pub const MAX_CAPACITY: u32 = 1 << 24;

const TCP: u8 = 6;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A flow's addresses, protocol and ports in one direction, within one
/// network (VNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub vni: u32,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl FlowKey {
    /// The key replies of this (forward) flow carry once it was sent to
    /// `backend`: backend → client, ports swapped.
    #[inline]
    pub fn reply(&self, backend: IpAddr) -> FlowKey {
        FlowKey {
            vni: self.vni,
            proto: self.proto,
            src: backend,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    #[inline]
    fn hash(&self, seed: u64) -> u64 {
        let s = addr_bits(self.src);
        let d = addr_bits(self.dst);
        hash_words(
            seed,
            &[
                s as u64,
                (s >> 64) as u64,
                d as u64,
                (d >> 64) as u64,
                (u64::from(self.vni) << 32) | (u64::from(self.proto) << 16) | u64::from(self.sport),
                u64::from(self.dport),
            ],
        )
    }
}

/// What a tracked flow is for; decides how its replies are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    /// Client → VIP on one network, DNAT to a backend (the VIP path).
    Vip,
    /// Client → a published port, from the host link (key VNI
    /// [`HOST_VNI`]): DNAT to a task, on `reply_vni`, port translated.
    Published,
    /// An ingress-mesh flow arriving at its task's node from another node
    /// (its `peer`, the ingress endpoint of the node that balanced it):
    /// nothing is translated here, replies go back to `peer`.
    Return,
}

/// The VNI of keys of flows that entered from the host link (no overlay
/// network uses 0).
pub const HOST_VNI: u32 = 0;

/// A new flow for [`Conntrack::insert_flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlow {
    /// The forward key, as the first packet arrived.
    pub key: FlowKey,
    pub kind: FlowKind,
    /// Where the flow is sent (for a [`FlowKind::Return`] flow, the task:
    /// the key's own destination).
    pub backend: IpAddr,
    /// The destination port on the backend (the key's own `dport` unless
    /// a published port is translated).
    pub backend_port: u16,
    /// The VNI replies come back on (the key's own unless it entered from
    /// the host link).
    pub reply_vni: u32,
    /// The service build and backend index (0 when not balanced).
    pub service: u64,
    pub index: u16,
    /// [`FlowKind::Return`]: the MAC replies are sent to.
    pub peer: [u8; 6],
}

impl NewFlow {
    /// A VIP flow: same VNI and port both ways.
    pub fn vip(key: FlowKey, backend: IpAddr, service: u64, index: u16) -> NewFlow {
        NewFlow {
            key,
            kind: FlowKind::Vip,
            backend,
            backend_port: key.dport,
            reply_vni: key.vni,
            service,
            index,
            peer: [0; 6],
        }
    }
}

/// Which way a packet goes relative to the flow's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → VIP (before DNAT).
    Forward = 0,
    /// Backend → client (before reverse translation).
    Reply = 1,
}

/// Where a flow is in its life; decides its timeout and whether it may be
/// evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TCP: SYN seen from the client, nothing back yet.
    SynSent,
    /// TCP: the backend answered.
    Established,
    /// TCP: FIN seen in one direction.
    Closing,
    /// TCP: FIN seen both ways, or RST.
    Closed,
    /// UDP: nothing back yet.
    UdpUnreplied,
    /// UDP: the backend answered.
    UdpReplied,
    /// UDP: the client sent again after an answer (a stream).
    UdpAssured,
}

/// How many states there are.
const STATES: usize = 7;

impl State {
    const ALL: [State; STATES] = [
        State::SynSent,
        State::Established,
        State::Closing,
        State::Closed,
        State::UdpUnreplied,
        State::UdpReplied,
        State::UdpAssured,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::Established => "established",
            State::Closing => "closing",
            State::Closed => "closed",
            State::UdpUnreplied => "unreplied",
            State::UdpReplied => "replied",
            State::UdpAssured => "assured",
        }
    }

    /// Eviction order when the table is full (lower goes first); `None`:
    /// never evicted.
    fn eviction_rank(self) -> Option<u8> {
        match self {
            State::Closed => Some(0),
            State::SynSent | State::UdpUnreplied => Some(1),
            State::UdpReplied => Some(2),
            State::Established | State::Closing | State::UdpAssured => None,
        }
    }
}

/// How long a flow lives after its last packet, by state (see the module
/// documentation for the defaults and their reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
    pub udp_assured: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_closing: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_assured: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    fn of(&self, s: State) -> Duration {
        match s {
            State::SynSent => self.tcp_syn,
            State::Established => self.tcp_established,
            State::Closing => self.tcp_closing,
            State::Closed => self.tcp_closed,
            State::UdpUnreplied | State::UdpReplied => self.udp,
            State::UdpAssured => self.udp_assured,
        }
    }
}

/// Size and behaviour of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Flows the table holds, [`MIN_CAPACITY`]..=[`MAX_CAPACITY`].
    pub capacity: u32,
    /// Seed of the index hash. Any value works; a random one per dataplane
    /// keeps a container from aiming flows at one bucket of another host.
    pub seed: u64,
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: DEFAULT_CAPACITY,
            seed: 0x636f_6e6e_7472_6163,
            timeouts: Timeouts::default(),
        }
    }
}

/// An index into the flow pool.
pub type FlowId = u32;

/// One tracked flow.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// The forward key: client → VIP, as the client sends it.
    pub key: FlowKey,
    /// Where the flow was sent.
    pub backend: IpAddr,
    /// The [`super::service::Service::generation`] `index` refers to.
    pub service: u64,
    /// The backend's index in that service's sorted backends.
    pub index: u16,
    pub kind: FlowKind,
    /// The destination port on the backend.
    pub backend_port: u16,
    /// The VNI replies arrive on.
    pub reply_vni: u32,
    /// [`FlowKind::Return`]: where replies go (a MAC's bytes).
    pub peer: [u8; 6],
    pub state: State,
    /// FIN seen: bit 0 forward, bit 1 reply.
    fins: u8,
    live: bool,
    /// Milliseconds since the table's epoch.
    created: u64,
    last: u64,
    /// Packets forward, reply.
    pub packets: [u64; 2],
    /// Bucket of the forward key, of the reply key.
    buckets: [u32; 2],
}

impl Flow {
    const DEAD: Flow = Flow {
        key: FlowKey {
            vni: 0,
            proto: 0,
            src: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            sport: 0,
            dport: 0,
        },
        backend: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        service: 0,
        index: 0,
        kind: FlowKind::Vip,
        backend_port: 0,
        reply_vni: 0,
        peer: [0; 6],
        state: State::Closed,
        fins: 0,
        live: false,
        created: 0,
        last: 0,
        packets: [0; 2],
        buckets: [0; 2],
    };

    fn initial_state(proto: u8, tcp_flags: u8) -> (State, u8) {
        if proto != TCP {
            return (State::UdpUnreplied, 0);
        }
        if tcp_flags & RST != 0 {
            (State::Closed, 0)
        } else if tcp_flags & SYN != 0 && tcp_flags & ACK == 0 {
            (State::SynSent, 0)
        } else if tcp_flags & FIN != 0 {
            (State::Closing, 1)
        } else {
            // Picked up mid-connection.
            (State::Established, 0)
        }
    }

    /// Moves the state machine for one packet.
    fn advance(&mut self, dir: Dir, tcp_flags: u8) {
        self.state = match self.state {
            State::UdpUnreplied if dir == Dir::Reply => State::UdpReplied,
            State::UdpReplied if dir == Dir::Forward => State::UdpAssured,
            s @ (State::UdpUnreplied | State::UdpReplied | State::UdpAssured | State::Closed) => s,
            _ if tcp_flags & RST != 0 => State::Closed,
            s => {
                if tcp_flags & FIN != 0 {
                    self.fins |= 1 << dir as u8;
                }
                match (s, self.fins) {
                    (_, 3) => State::Closed,
                    (_, f) if f != 0 => State::Closing,
                    (State::SynSent, _) if dir == Dir::Reply => State::Established,
                    (s, _) => s,
                }
            }
        };
    }

    /// The key its replies carry: backend → client on the reply VNI, from
    /// the backend's port. A hairpin flow's replies go to the VIP, the
    /// source its packets were given (see [`Flow::is_hairpin`]).
    #[inline]
    pub fn reply_key(&self) -> FlowKey {
        FlowKey {
            vni: self.reply_vni,
            proto: self.key.proto,
            src: self.backend,
            dst: if self.is_hairpin() {
                self.key.dst
            } else {
                self.key.src
            },
            sport: self.backend_port,
            dport: self.key.sport,
        }
    }

    /// True for a VIP flow balanced back to its own client (a task that
    /// connects to its own service's VIP). Its packets reach the task from
    /// the VIP (source translated too), so that the task's replies come
    /// back through the dataplane instead of going to itself.
    #[inline]
    pub fn is_hairpin(&self) -> bool {
        self.kind == FlowKind::Vip && self.backend == self.key.src
    }

    /// True for a TCP flow whose connection ended (a new SYN on its
    /// addresses and ports starts a new flow).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
}

/// What [`Conntrack::iter`] shows of a flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowInfo {
    pub key: FlowKey,
    pub kind: FlowKind,
    pub backend: IpAddr,
    pub backend_port: u16,
    /// The VNI replies arrive on (the backend's network).
    pub reply_vni: u32,
    pub state: State,
    pub age: Duration,
    pub idle: Duration,
    pub expires_in: Duration,
    /// Packets forward (client → backend), reply.
    pub packets: [u64; 2],
}

#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct Bucket {
    /// 0: free way.
    tags: [u32; WAYS],
    /// `flow id << 1 | direction`.
    ids: [u32; WAYS],
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        tags: [0; WAYS],
        ids: [0; WAYS],
    };

    fn free_ways(&self) -> usize {
        self.tags.iter().filter(|t| **t == 0).count()
    }
}

/// The table of one worker.
pub struct Conntrack {
    flows: Box<[Flow]>,
    /// Free flow ids (a stack; capacity reserved up front).
    free: Vec<FlowId>,
    buckets: Box<[Bucket]>,
    mask: usize,
    seed: u64,
    /// Timeout of each [`State`] in milliseconds.
    timeout_ms: [u64; STATES],
    epoch: Instant,
    /// The last `now` converted to milliseconds (the engine passes the same
    /// `now` for a whole batch).
    now: (Instant, u64),
    /// Next flow the sweep examines.
    sweep_at: usize,
    /// Counts inserts and removals: a lookup's answer stays true while
    /// this is unchanged (and, for a hit, `now` too: it may expire).
    changes: u64,
}

#[inline]
fn tag_of(h: u64) -> u32 {
    ((h >> 32) as u32) | 1
}

impl Conntrack {
    /// Allocates a table for `cfg.capacity` flows (clamped to the allowed
    /// range); `now` is the table's time origin.
    pub fn new(cfg: ConntrackConfig, now: Instant) -> Conntrack {
        let cap = cfg.capacity.clamp(MIN_CAPACITY, MAX_CAPACITY) as usize;
        // Two index entries per flow over a quarter of the ways at most
        // (see the module documentation).
        let buckets = (cap * 2 * 4).div_ceil(WAYS).next_power_of_two();
        Conntrack {
            flows: vec![Flow::DEAD; cap].into_boxed_slice(),
            free: (0..cap as u32).rev().collect(),
            buckets: vec![Bucket::EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            seed: cfg.seed,
            timeout_ms: State::ALL.map(|s| cfg.timeouts.of(s).as_millis() as u64),
            epoch: now,
            now: (now, 0),
            sweep_at: 0,
            changes: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.flows.len()
    }

    /// Flows in the table (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.flows.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes with every insert and removal (see [`Conntrack::lookup`]'s
    /// callers that remember an answer).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    #[inline]
    fn ms(&mut self, now: Instant) -> u64 {
        if now != self.now.0 {
            self.now = (now, self.ms_of(now));
        }
        self.now.1
    }

    fn ms_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    #[inline]
    fn deadline(&self, f: &Flow) -> u64 {
        f.last + self.timeout_ms[f.state as usize]
    }

    #[inline]
    fn key_of(f: &Flow, dir: u32) -> FlowKey {
        if dir == 0 { f.key } else { f.reply_key() }
    }

    /// Finds the flow `key` belongs to and the direction it matched in.
    /// An expired flow is removed (counted) and not returned. Counts a hit
    /// or a miss.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: Instant, stats: &Stats) -> Option<(FlowId, Dir)> {
        let h = key.hash(self.seed);
        let b = &self.buckets[h as usize & self.mask];
        let tag = tag_of(h);
        let mut found = None;
        for w in 0..WAYS {
            if b.tags[w] != tag {
                continue;
            }
            let id = b.ids[w];
            let f = &self.flows[(id >> 1) as usize];
            if f.live && Self::key_of(f, id & 1) == *key {
                found = Some(id);
                break;
            }
        }
        let Some(id) = found else {
            stats.inc(Counter::ConntrackMisses);
            return None;
        };
        let flow = id >> 1;
        if self.ms(now) >= self.deadline(&self.flows[flow as usize]) {
            self.remove(flow);
            stats.inc(Counter::ConntrackExpired);
            stats.inc(Counter::ConntrackMisses);
            return None;
        }
        stats.inc(Counter::ConntrackHits);
        let dir = if id & 1 == 0 {
            Dir::Forward
        } else {
            Dir::Reply
        };
        Some((flow, dir))
    }

    /// Tracks a new flow `key` (forward, client → VIP) sent to `backend`
    /// (index `index` of service build `service`), its first packet having
    /// TCP flags `tcp_flags` (0 for UDP). The caller has looked `key` up
    /// and found nothing. `None` when there is no room even after expiring
    /// and evicting (counted as `lb`/`conntrack_full`).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        key: FlowKey,
        backend: IpAddr,
        service: u64,
        index: u16,
        tcp_flags: u8,
        now: Instant,
        stats: &Stats,
    ) -> Option<FlowId> {
        self.insert_flow(
            NewFlow::vip(key, backend, service, index),
            tcp_flags,
            now,
            stats,
        )
    }

    /// [`Conntrack::insert`] for any kind of flow.
    pub fn insert_flow(
        &mut self,
        new: NewFlow,
        tcp_flags: u8,
        now: Instant,
        stats: &Stats,
    ) -> Option<FlowId> {
        let key = new.key;
        let mut f = Flow {
            key,
            backend: new.backend,
            service: new.service,
            index: new.index,
            kind: new.kind,
            backend_port: new.backend_port,
            reply_vni: new.reply_vni,
            peer: new.peer,
            state: State::Closed,
            fins: 0,
            live: true,
            created: 0,
            last: 0,
            packets: [1, 0],
            buckets: [0; 2],
        };
        let hf = key.hash(self.seed);
        let hr = f.reply_key().hash(self.seed);
        let (bf, br) = (hf as usize & self.mask, hr as usize & self.mask);
        let now_ms = self.ms(now);
        if !self.has_room(bf, br) {
            self.make_room(bf, br, now_ms, stats);
            if !self.has_room(bf, br) {
                stats.dropped(Drop::LbConntrackFull);
                return None;
            }
        }
        let id = self.free.pop()?;
        let (state, fins) = Flow::initial_state(key.proto, tcp_flags);
        f.state = state;
        f.fins = fins;
        f.created = now_ms;
        f.last = now_ms;
        f.buckets = [bf as u32, br as u32];
        self.flows[id as usize] = f;
        self.link(bf, tag_of(hf), id << 1);
        self.link(br, tag_of(hr), (id << 1) | 1);
        stats.inc(Counter::ConntrackInserted);
        self.changes += 1;
        Some(id)
    }

    /// Points a [`FlowKind::Return`] flow's replies at another peer (the
    /// client's packets now arrive through another node).
    #[inline]
    pub fn set_peer(&mut self, id: FlowId, peer: [u8; 6]) {
        self.flows[id as usize].peer = peer;
    }

    fn has_room(&self, bf: usize, br: usize) -> bool {
        let need_f = if bf == br { 2 } else { 1 };
        !self.free.is_empty()
            && self.buckets[bf].free_ways() >= need_f
            && self.buckets[br].free_ways() >= 1
    }

    fn link(&mut self, b: usize, tag: u32, id: u32) {
        let bucket = &mut self.buckets[b];
        if let Some(w) = bucket.tags.iter().position(|t| *t == 0) {
            bucket.tags[w] = tag;
            bucket.ids[w] = id;
        }
    }

    /// Frees what can be freed among the flows indexed in buckets `bf` and
    /// `br`: every expired flow, then the most expendable live one if
    /// still needed.
    fn make_room(&mut self, bf: usize, br: usize, now_ms: u64, stats: &Stats) {
        for b in [bf, br] {
            for w in 0..WAYS {
                let bucket = &self.buckets[b];
                if bucket.tags[w] == 0 {
                    continue;
                }
                let flow = bucket.ids[w] >> 1;
                if now_ms >= self.deadline(&self.flows[flow as usize]) {
                    self.remove(flow);
                    stats.inc(Counter::ConntrackExpired);
                }
            }
        }
        // Then one victim per missing piece of room: a way in `bf`, a way
        // in `br`, a free flow (any victim frees one).
        for _ in 0..3 {
            if self.has_room(bf, br) {
                return;
            }
            let need_f = if bf == br { 2 } else { 1 };
            let from: &[usize] = if self.buckets[bf].free_ways() < need_f {
                &[bf]
            } else if self.buckets[br].free_ways() < 1 {
                &[br]
            } else {
                &[bf, br]
            };
            let mut victim: Option<(u8, u64, FlowId)> = None;
            for &b in from {
                let bucket = self.buckets[b];
                for w in 0..WAYS {
                    if bucket.tags[w] == 0 {
                        continue;
                    }
                    let flow = bucket.ids[w] >> 1;
                    let f = &self.flows[flow as usize];
                    let Some(rank) = f.state.eviction_rank() else {
                        continue;
                    };
                    if victim.is_none_or(|(r, last, _)| (rank, f.last) < (r, last)) {
                        victim = Some((rank, f.last, flow));
                    }
                }
            }
            let Some((_, _, flow)) = victim else {
                return;
            };
            self.remove(flow);
            stats.inc(Counter::ConntrackEvicted);
        }
    }

    /// Forgets a flow (both index entries).
    pub fn remove(&mut self, flow: FlowId) {
        let Some(f) = self.flows.get_mut(flow as usize) else {
            return;
        };
        if !f.live {
            return;
        }
        f.live = false;
        let buckets = f.buckets;
        for (dir, b) in buckets.iter().enumerate() {
            let id = (flow << 1) | dir as u32;
            let bucket = &mut self.buckets[*b as usize];
            for w in 0..WAYS {
                if bucket.tags[w] != 0 && bucket.ids[w] == id {
                    bucket.tags[w] = 0;
                    break;
                }
            }
        }
        self.free.push(flow);
        self.changes += 1;
    }

    #[inline]
    pub fn flow(&self, id: FlowId) -> &Flow {
        &self.flows[id as usize]
    }

    /// Records one packet of flow `id` going `dir` with TCP flags
    /// `tcp_flags` (0 for UDP): restarts its timeout, moves its state.
    #[inline]
    pub fn update(&mut self, id: FlowId, dir: Dir, tcp_flags: u8, now: Instant) {
        let now_ms = self.ms(now);
        let f = &mut self.flows[id as usize];
        f.last = now_ms;
        f.packets[dir as usize] += 1;
        f.advance(dir, tcp_flags);
    }

    /// Points flow `id` at backend index `index` of service build
    /// `service` (same backend address, after the set changed).
    #[inline]
    pub fn rebind(&mut self, id: FlowId, service: u64, index: u16) {
        let f = &mut self.flows[id as usize];
        f.service = service;
        f.index = index;
    }

    /// Removes, among the next [`SWEEP_FLOWS`] of the pool (round robin
    /// over calls), the flows that expired (counted as expiries) and those
    /// `keep` no longer wants, such as flows to a VIP whose service is gone
    /// (counted as removals). Returns how many it removed.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        stats: &Stats,
        keep: impl Fn(&Flow) -> bool,
    ) -> usize {
        let now_ms = self.ms(now);
        let n = self.flows.len();
        let mut removed = 0;
        for _ in 0..SWEEP_FLOWS.min(n) {
            let i = self.sweep_at;
            self.sweep_at = (i + 1) % n;
            let f = &self.flows[i];
            if !f.live {
                continue;
            }
            let counter = if now_ms >= self.deadline(f) {
                Counter::ConntrackExpired
            } else if !keep(f) {
                Counter::ConntrackRemoved
            } else {
                continue;
            };
            self.remove(i as FlowId);
            stats.inc(counter);
            removed += 1;
        }
        removed
    }

    /// The live, unexpired flows as of `now`.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = FlowInfo> + '_ {
        let now_ms = self.ms_of(now);
        self.flows
            .iter()
            .filter(move |f| f.live && now_ms < self.deadline(f))
            .map(move |f| FlowInfo {
                key: f.key,
                kind: f.kind,
                backend: f.backend,
                backend_port: f.backend_port,
                reply_vni: f.reply_vni,
                state: f.state,
                age: Duration::from_millis(now_ms - f.created),
                idle: Duration::from_millis(now_ms - f.last),
                expires_in: Duration::from_millis(self.deadline(f) - now_ms),
                packets: f.packets,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            vni: 4096,
            proto: TCP,
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.100".parse().unwrap(),
            sport,
            dport: 80,
        }
    }

    fn backend() -> IpAddr {
        "10.0.0.7".parse().unwrap()
    }

    fn small(capacity: u32) -> (Conntrack, Stats, Instant) {
        let now = Instant::now();
        let cfg = ConntrackConfig {
            capacity,
            ..ConntrackConfig::default()
        };
        (Conntrack::new(cfg, now), Stats::default(), now)
    }

    #[test]
    fn both_directions_find_the_flow() {
        let (mut ct, st, now) = small(1024);
        let k = key(40000);
        assert!(ct.lookup(&k, now, &st).is_none());
        let id = ct.insert(k, backend(), 9, 3, SYN, now, &st).unwrap();
        assert_eq!(ct.lookup(&k, now, &st), Some((id, Dir::Forward)));
        assert_eq!(
            ct.lookup(&k.reply(backend()), now, &st),
            Some((id, Dir::Reply))
        );
        // A reply from another address, or to another port, is not it.
        assert!(
            ct.lookup(&k.reply("10.0.0.8".parse().unwrap()), now, &st)
                .is_none()
        );
        assert!(ct.lookup(&key(40001), now, &st).is_none());
        let f = ct.flow(id);
        assert_eq!((f.backend, f.service, f.index), (backend(), 9, 3));
        assert_eq!(st.counter(Counter::ConntrackInserted), 1);
        assert_eq!(st.counter(Counter::ConntrackHits), 2);
        assert_eq!(st.counter(Counter::ConntrackMisses), 3);
        ct.remove(id);
        assert!(ct.lookup(&k, now, &st).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn tcp_states_and_their_timeouts() {
        let t = Timeouts::default();
        let (mut ct, st, t0) = small(1024);
        // Handshake, then idle for 23 hours: still there.
        let id = ct.insert(key(1), backend(), 1, 0, SYN, t0, &st).unwrap();
        assert_eq!(ct.flow(id).state, State::SynSent);
        ct.update(id, Dir::Reply, SYN | ACK, t0);
        assert_eq!(ct.flow(id).state, State::Established);
        ct.update(id, Dir::Forward, ACK, t0);
        let later = t0 + Duration::from_secs(23 * 3600);
        assert_eq!(ct.lookup(&key(1), later, &st), Some((id, Dir::Forward)));
        // 15 minutes of silence (Docker's IPVS cut) is nothing.
        ct.update(id, Dir::Forward, ACK, later);
        assert!(
            ct.lookup(&key(1), later + Duration::from_secs(900), &st)
                .is_some()
        );
        // FIN one way: closing; FIN back: closed, gone 10 s later.
        ct.update(id, Dir::Forward, FIN | ACK, later);
        assert_eq!(ct.flow(id).state, State::Closing);
        ct.update(id, Dir::Reply, FIN | ACK, later);
        assert_eq!(ct.flow(id).state, State::Closed);
        assert!(ct.lookup(&key(1), later + t.tcp_closed, &st).is_none());
        assert_eq!(st.counter(Counter::ConntrackExpired), 1);

        // An established connection idle past its timeout expires.
        let id = ct.insert(key(2), backend(), 1, 0, ACK, t0, &st).unwrap();
        assert_eq!(ct.flow(id).state, State::Established, "picked up mid-flow");
        assert!(
            ct.lookup(
                &key(2),
                t0 + t.tcp_established - Duration::from_secs(1),
                &st
            )
            .is_some()
        );
        assert!(ct.lookup(&key(2), t0 + t.tcp_established, &st).is_none());

        // Half-open: a SYN that never got an answer goes after 60 s.
        let id = ct.insert(key(3), backend(), 1, 0, SYN, t0, &st).unwrap();
        ct.update(id, Dir::Forward, SYN, t0 + Duration::from_secs(3));
        assert!(
            ct.lookup(&key(3), t0 + Duration::from_secs(62), &st)
                .is_some()
        );
        assert!(
            ct.lookup(&key(3), t0 + Duration::from_secs(63), &st)
                .is_none()
        );

        // RST from either side closes.
        let id = ct.insert(key(4), backend(), 1, 0, SYN, t0, &st).unwrap();
        ct.update(id, Dir::Reply, RST | ACK, t0);
        assert!(ct.flow(id).is_closed());
    }

    #[test]
    fn udp_states() {
        let t = Timeouts::default();
        let (mut ct, st, t0) = small(1024);
        let k = FlowKey {
            proto: 17,
            ..key(5353)
        };
        let id = ct.insert(k, backend(), 1, 0, 0, t0, &st).unwrap();
        assert_eq!(ct.flow(id).state, State::UdpUnreplied);
        ct.update(id, Dir::Reply, 0, t0);
        assert_eq!(ct.flow(id).state, State::UdpReplied);
        assert!(ct.lookup(&k, t0 + t.udp, &st).is_none(), "one answer: 30 s");
        let id = ct.insert(k, backend(), 1, 0, 0, t0, &st).unwrap();
        ct.update(id, Dir::Reply, 0, t0);
        ct.update(id, Dir::Forward, 0, t0);
        assert_eq!(ct.flow(id).state, State::UdpAssured);
        assert!(
            ct.lookup(&k, t0 + t.udp, &st).is_some(),
            "a stream lives longer"
        );
        assert!(ct.lookup(&k, t0 + t.udp + t.udp_assured, &st).is_none());
    }

    #[test]
    fn sweep_removes_flows_nobody_looks_up() {
        let (mut ct, st, t0) = small(4096);
        for p in 0..3000 {
            ct.insert(key(p), backend(), 1, 0, SYN, t0, &st).unwrap();
        }
        assert_eq!(ct.len(), 3000);
        let later = t0 + Duration::from_secs(61);
        let mut removed = 0;
        for _ in 0..ct.capacity().div_ceil(SWEEP_FLOWS) {
            let r = ct.handle_timeout(later, &st, |_| true);
            assert!(r <= SWEEP_FLOWS, "bounded work per call");
            removed += r;
        }
        assert_eq!(removed, 3000);
        assert!(ct.is_empty());
        assert_eq!(st.counter(Counter::ConntrackExpired), 3000);
        assert_eq!(ct.iter(later).count(), 0);
        // Flows the owner no longer wants go too, before their time.
        for p in 0..10 {
            ct.insert(key(p), backend(), 1, 0, ACK, later, &st).unwrap();
        }
        for _ in 0..ct.capacity().div_ceil(SWEEP_FLOWS) {
            ct.handle_timeout(later, &st, |f| f.key.sport % 2 == 0);
        }
        assert_eq!(ct.len(), 5);
        assert_eq!(st.counter(Counter::ConntrackRemoved), 5);
    }

    #[test]
    fn full_table_evicts_the_expendable_and_refuses_the_rest() {
        let (mut ct, st, t0) = small(MIN_CAPACITY);
        // Fill with established connections: nothing may be evicted.
        let mut n = 0u16;
        while ct.len() < ct.capacity() {
            let before = ct.len();
            let id = ct.insert(key(n), backend(), 1, 0, ACK, t0, &st);
            n += 1;
            if let Some(id) = id {
                assert_eq!(ct.flow(id).state, State::Established);
            } else {
                // A bucket filled up before the pool did.
                assert_eq!(ct.len(), before);
            }
            assert!(n < 10_000);
        }
        let refused_before = st.drops(Drop::LbConntrackFull);
        assert!(
            ct.insert(key(60_000), backend(), 1, 0, SYN, t0, &st)
                .is_none()
        );
        assert_eq!(st.drops(Drop::LbConntrackFull), refused_before + 1);
        assert_eq!(st.counter(Counter::ConntrackEvicted), 0);
        let established = ct.iter(t0).count();
        assert_eq!(established, ct.capacity(), "no live connection was lost");

        // Once flows end, a newcomer takes the place of a closed one.
        let (mut ct, st, t0) = small(MIN_CAPACITY);
        let mut ids = Vec::new();
        let mut p = 0u16;
        while ct.len() < ct.capacity() {
            if let Some(id) = ct.insert(key(p), backend(), 1, 0, SYN, t0, &st) {
                ids.push(id);
            }
            p += 1;
        }
        for id in &ids {
            ct.update(*id, Dir::Reply, RST, t0);
        }
        let id = ct.insert(key(60_000), backend(), 1, 0, SYN, t0, &st);
        assert!(id.is_some(), "a closed flow is evicted for a new one");
        assert_eq!(st.counter(Counter::ConntrackEvicted), 1);
        assert_eq!(ct.len(), ct.capacity());
        // Expired flows are reclaimed before anything is evicted.
        let later = t0 + Duration::from_secs(11);
        assert!(
            ct.insert(key(60_001), backend(), 1, 0, SYN, later, &st)
                .is_some()
        );
        assert!(st.counter(Counter::ConntrackExpired) >= 1);
        assert_eq!(st.counter(Counter::ConntrackEvicted), 1);
    }

    #[test]
    fn bucket_tags_fill_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 128);
        assert_eq!(std::mem::align_of::<Bucket>(), 128);
        assert_eq!(std::mem::offset_of!(Bucket, ids), 64);
    }

    /// Half the capacity in use, flows coming and going: an insert never
    /// finds its bucket full (the 8-way layout failed this).
    #[test]
    fn buckets_do_not_fill_before_the_pool() {
        let cap = 1u32 << 16;
        let (mut ct, st, now) = small(cap);
        let mut ids = std::collections::VecDeque::new();
        for n in 0..1_000_000u32 {
            let k = FlowKey {
                src: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + (n >> 16))),
                ..key(n as u16)
            };
            let id = ct.insert(k, backend(), 1, 0, ACK, now, &st);
            ids.push_back(id.unwrap_or_else(|| panic!("refused at {n} with {} flows", ct.len())));
            if ids.len() as u32 > cap / 2 {
                ct.remove(ids.pop_front().unwrap());
            }
        }
    }
}
