//! Per-peer key rotation: the sans-IO state machine that installs, switches
//! and retires generations of SAs between this host and one peer.
//!
//! Driven quinn style: [`Session::handle_message`] for control messages from
//! the peer, [`Session::handle_timeout`] when [`Session::poll_timeout`]
//! expires, [`Session::poll_transmit`] for control messages to send, and
//! [`Session::rekey`] to force a rotation. Data goes through
//! [`Session::seal`] / [`Session::open`] (or the lower-level
//! [`Session::outbound`] / [`Session::inbound`] +
//! [`Session::note_authenticated`]).
//!
//! # Control messages
//!
//! Carried on the data port, first word 0 (see [`super::esp::classify`]),
//! 88 bytes each, all fields big-endian:
//!
//! ```text
//! 0        4     5      6   8            12            20              52            60      72    88
//! | 0x0000 | v=1 | type | 0 | generation | INIT ts (ns) | ephemeral pub | sender ts   | nonce | tag |
//! ```
//!
//! - INIT (type 1): initiator's generation, its wall-clock timestamp, e_i.
//! - RESP (type 2): same generation, the INIT's timestamp echoed, e_r.
//! - CONFIRM (type 3): same generation and timestamp, e_r echoed.
//! - sender ts: the sender's own clock when it sent the message. In a RESP
//!   it tells the initiator that every INIT the responder sent before that
//!   moment is abandoned (the responder yields in a collision), so such an
//!   INIT arriving late is ignored instead of starting a handshake nobody
//!   will finish.
//!
//! The tag is AES-GCM over an empty plaintext with the [`control_key`] from
//! the static-static DH, a random nonce (the key lives forever, so counters
//! would repeat across restarts), and AAD = bytes 0..60 ‖ sender static pub
//! ‖ receiver static pub (‖ e_i for RESP and CONFIRM, binding them to the
//! INIT). Only the two hosts can produce them, a message cannot be reflected
//! back to its sender, and an INIT is accepted only if its timestamp is newer
//! than the last accepted one from that peer (the timestamp is wall clock,
//! so this survives a restart of the initiator; a retry carries a fresh one).
//!
//! Every RESP and CONFIRM is authenticated before anything else is decided:
//! the public halves of the last 16 handshakes we initiated and
//! answered are kept for that (never a secret), so a late copy of a real
//! message is told apart from a forgery. Forgeries and messages we cannot
//! authenticate are [`CryptoError::BadControlMessage`] (`bad_control`);
//! only authentic superseded ones are [`CryptoError::StaleControlMessage`].
//!
//! # Freshness: what a replayed INIT can and cannot do
//!
//! The static keys live in the key file, so a recorded INIT authenticates
//! forever; only its timestamp dates it, and a host that just started (or
//! was just told the peer's key) has no earlier timestamp to compare with.
//! It cannot tell a replay from the peer's real INIT. We do not try to
//! prove freshness up front (a cookie round trip, or timestamps kept on
//! disk); instead an unproven INIT is never allowed to cost anything that
//! matters, and freshness is proven by completion:
//!
//! - Answering an INIT never abandons our own: a pending INIT of ours keeps
//!   being retried, and the peer's RESP to it is accepted, until the
//!   answered handshake is confirmed (by CONFIRM or the first packet of its
//!   generation, which only the holder of e_i can produce). A host that has
//!   no current generation initiates even while it answers. So a replay
//!   can neither stop us sending INIT nor make us reject the real RESP.
//! - A replay costs at most one RESP per peer handshake (its INIT
//!   ephemeral; INIT retries and their replays carry the same one, and a
//!   lost RESP is covered by our own bounded retransmission schedule, not
//!   by the peer's retries), and one INIT copy per peer handshake for the
//!   larger key. The pending answer it creates is replaced by any newer
//!   INIT and dropped when our own handshake completes.
//! - Nothing moves backwards: our current SAs change only on a completed
//!   handshake. Once one has completed, every recorded message is stale by
//!   timestamp (the peer's RESP carries its clock in `sender_ts`).
//! - While we answer, our INIT retries keep their timestamp, so a peer that
//!   completed the handshake we answered ignores them rather than starting
//!   a handshake we would drop once we switch.
//! - One INIT of ours can be answered twice, by a peer that restarted (or
//!   gave up on its first answer) while our retries were in flight, and the
//!   abandoned answer's RESP can arrive first: we complete with keys the
//!   peer no longer holds. An authentic RESP to that same handshake with
//!   another ephemeral and a later `sender_ts` proves it, and we start a
//!   new handshake at once (once per completed handshake, so a replay of
//!   it costs one rotation at most); otherwise the peer would keep
//!   answering, unestablished, until its RESP retries ran out. The same
//!   late RESP can also make us drop an answer we gave meanwhile, which the
//!   peer then confirms: an authentic CONFIRM of such an answer, sent after
//!   the peer last showed it holds our current generation, also starts a
//!   new handshake (a replay of it is dated before the new one); and an
//!   answer dropped that way never counts as given, so the peer's retries
//!   of its INIT newer than that RESP are answered anew.
//!
//! - Our INIT's ephemeral lives as long as its retries, so every RESP the
//!   peer ever made for it authenticates, also one from an answer the peer
//!   has since given up (its RESP retries ran out) or lost in a restart. A
//!   RESP whose `sender_ts` is older than an INIT of the peer we have seen
//!   is such an answer and is stale: the peer generates a fresh INIT
//!   timestamp only when it is not answering (retries keep theirs while it
//!   answers) or when it has no current generation, and then its RESP
//!   retransmissions carry newer `sender_ts`. Otherwise we would switch to
//!   keys the peer dropped and the pair would end on one generation with
//!   different keys.
//!
//! This needs no new message, state on disk, or extra round trip on the
//! normal path; the price is one unusable answer per replayed handshake.
//! `crypto/sim_tests.rs` replays every recorded message at restarts of
//! either host and during rotations and checks the pair is back within 1 s.
//!
//! # Rotation (make-before-break)
//!
//! ```text
//! initiator I                                   responder R
//! INIT(g, ts, e_i)  ------------------------->  install inbound I->R (g),
//!                                               prepare outbound R->I (g),
//!                                               keep sending on g-1
//! install inbound R->I (g), <----------------   RESP(g, ts, e_r)
//! switch outbound to g,
//! CONFIRM(g)        ------------------------->  first authenticated packet
//!                                               of g, or CONFIRM: switch to g
//! ```
//!
//! Nobody sends with g before the other side can receive it. The previous
//! generation's inbound SAs stay for [`SessionConfig::grace`] after the
//! switch, then are removed (their keys wiped). INIT is retried with
//! exponential backoff until a RESP arrives; RESP is retransmitted until the
//! switch, each time as a new copy (new nonce), and the initiator answers
//! each copy of the RESP of a completed handshake with CONFIRM once: a
//! replayed copy gets nothing, however often it comes, also after later
//! rotations. When both sides send INIT at once, the side with
//! the larger static public key stays initiator and answers the other's INIT
//! only by sending its own INIT again (see below); the other answers, and
//! drops its own INIT once the answered handshake is confirmed. Ephemeral
//! secrets are dropped (wiped) as soon as the generation's PRK is derived.
//!
//! # Hosts configured at different times
//!
//! Each host starts its first handshake when it is told the peer's key
//! (`vxnet dp vtep add`). An INIT that reaches a host before that is dropped
//! by the engine (control messages from a host without a session count as
//! `bad_control`): a host whose key we do not know can never make us install
//! an SA. When the second host is configured, it sends its own INIT. If the
//! first host has the smaller key, it yields and answers as in a collision.
//! If it has the larger key, it would ignore that INIT and wait for its own
//! next retry, which backoff may have pushed tens of seconds away; instead
//! it sends its pending INIT again at once, since an authenticated fresh INIT
//! proves the peer now knows us. The copy is the same handshake (generation,
//! timestamp and ephemeral; only the nonce differs), so a peer that did
//! receive the original drops it as stale; and the peer's INIT is recorded
//! as seen, so a replay of it makes us send nothing. The pair has SAs
//! within a few round trips of the second `vtep add`, and, thanks to the
//! short first retry interval ([`SessionConfig::handshake_timeout`]),
//! within one retry interval more when one message is lost.
//!
//! Limits, stated rather than handled: SPIs are 31-bit random values per
//! (generation, VNI, direction); if two live SAs of one peer collided
//! (probability about n²/2^32 for n live SAs) the newer one would shadow the
//! older for its grace period. INIT freshness relies on the initiator's wall
//! clock not going backwards across a restart (as WireGuard's TAI64N
//! timestamps do); a clock stepped back makes its INITs stale until it
//! catches up, while the other side can still initiate.
//!
//! Rekey triggers: `rekey_interval` after a generation starts (the side with
//! the smaller key waits 10% longer, so normally only one side initiates),
//! an outbound SA reaching `rekey_after_packets`, or [`Session::rekey`].

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use rustc_hash::FxHashMap;
use zeroize::Zeroizing;

use super::CryptoError;
use super::aead::{Aead, Backend, new_aead};
use super::esp;
use super::keys::{Direction, Ephemeral, GenerationSecret, PublicKey, StaticKeypair, control_key};
use super::sa::{InboundSa, OutboundSa, SaId, SaKey};

/// Length of every control message.
pub const CONTROL_LEN: usize = 88;
const VERSION: u8 = 1;
const TYPE_INIT: u8 = 1;
const TYPE_RESP: u8 = 2;
const TYPE_CONFIRM: u8 = 3;
/// Bytes covered as AAD (everything before the nonce).
const SIGNED_LEN: usize = 60;

/// Rotation policy.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Start a new generation this long after the current one began.
    pub rekey_interval: Duration,
    /// Start a new generation when an outbound SA has sent this many packets
    /// (far below [`super::sa::SEQ_HARD_LIMIT`]).
    pub rekey_after_packets: u64,
    /// First retry interval for INIT and RESP; doubles per retry. Short, so
    /// that one lost message costs well under a second on a fresh pair (the
    /// path must be up within 1 s of both hosts being configured); on a path
    /// whose round trip is longer, the doubling soon exceeds it.
    pub handshake_timeout: Duration,
    /// Cap of the retry backoff.
    pub max_retry_interval: Duration,
    /// RESP retransmissions before the responder gives up on a handshake.
    pub max_resp_retries: u32,
    /// How long a replaced generation still accepts packets.
    pub grace: Duration,
    /// AES key length: 16 (AES-128-GCM, default) or 32.
    pub key_len: usize,
    /// AES-GCM implementation.
    pub backend: Backend,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            rekey_interval: Duration::from_secs(12 * 3600),
            rekey_after_packets: 1 << 40,
            handshake_timeout: Duration::from_millis(250),
            max_retry_interval: Duration::from_secs(60),
            max_resp_retries: 6,
            grace: Duration::from_secs(10),
            key_len: 16,
            backend: Backend::default(),
        }
    }
}

/// Direction of an SA relative to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaDirection {
    /// We receive with it.
    Inbound,
    /// We send with it.
    Outbound,
}

/// One line of `vxnet dp sa`.
#[derive(Debug, Clone)]
pub struct SaInfo {
    /// SPI.
    pub spi: u32,
    /// Inbound or outbound.
    pub direction: SaDirection,
    /// The peer's static public key.
    pub peer: PublicKey,
    /// VNI.
    pub vni: u32,
    /// Wire generation.
    pub generation: u32,
    /// Packets sealed or opened.
    pub packets: u64,
    /// Time since installation.
    pub age: Duration,
    /// Whether this SA is in its grace period (inbound) or prepared but not
    /// yet used (outbound on the responder).
    pub standby: bool,
    /// Key and salt, only when asked for (`--show-keys`).
    pub key: Option<SaKey>,
}

/// Result of [`Session::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Plaintext (inner UDP header + VXLAN datagram) within the packet.
    pub range: Range<usize>,
    /// The SA's VNI: the engine must check the VXLAN header carries it.
    pub vni: u32,
    /// The SA's wire generation.
    pub generation: u32,
}

struct Generation {
    local_id: u64,
    generation: u32,
    we_initiated: bool,
    /// Wiped when the generation stops being current or pending.
    secret: Option<GenerationSecret>,
    /// Set when the generation was replaced: inbound SAs go away then.
    retire_at: Option<Instant>,
}

struct PendingInit {
    generation: u32,
    eph: Ephemeral,
    ts: u64,
    next_retry: Instant,
    interval: Duration,
}

struct PendingResp {
    local_id: u64,
    generation: u32,
    ts: u64,
    init_eph: PublicKey,
    resp_eph: PublicKey,
    outbound: FxHashMap<u32, OutboundSa>,
    next_retry: Instant,
    interval: Duration,
    tries: u32,
}

/// Remembered after a completed handshake as initiator, to answer a
/// retransmitted RESP (our CONFIRM was lost) with CONFIRM again.
struct CompletedInit {
    ts: u64,
    /// Our INIT ephemeral: another RESP to the same handshake is told by it.
    e_i: PublicKey,
    resp_eph: PublicKey,
    /// `sender_ts` of the RESP we completed with: dates the peer's answer.
    resp_sender_ts: u64,
    confirm: [u8; CONTROL_LEN],
    /// Nonces of the RESP copies answered so far. The responder makes a new
    /// copy (new nonce) per retransmission; a replayed copy gets nothing,
    /// and no more copies are answered than the responder makes.
    answered: Vec<[u8; 12]>,
}

/// How many handshakes we initiated, and handshakes we answered, are remembered (by
/// their public values only) so that late RESPs and CONFIRMs can still be
/// authenticated before they are called stale.
const HISTORY: usize = 16;

/// A handshake we initiated: its generation, ephemeral public key, and the
/// timestamps of its first and latest INIT (retries carry newer ones; a
/// RESP echoes whichever copy it answers).
#[derive(Clone, Copy)]
struct SentInit {
    generation: u32,
    e_i: PublicKey,
    first_ts: u64,
    last_ts: u64,
}

/// A handshake we answered: the INIT's timestamp and both ephemerals.
#[derive(Clone, Copy)]
struct Answered {
    ts: u64,
    e_i: PublicKey,
    e_r: PublicKey,
}

fn remember<T>(ring: &mut VecDeque<T>, item: T) {
    if ring.len() == HISTORY {
        ring.pop_front();
    }
    ring.push_back(item);
}

/// Key rotation state with one peer.
pub struct Session {
    config: SessionConfig,
    local: PublicKey,
    peer: PublicKey,
    dh_ss: Zeroizing<[u8; 32]>,
    ctrl: Box<dyn Aead>,
    /// Our static key is the larger: we win simultaneous INITs.
    preferred: bool,
    rng: Box<dyn CryptoRngCore + Send>,
    epoch: Instant,
    wall_at_epoch_ns: u64,
    last_ts: u64,
    last_now: Instant,
    vnis: Vec<u32>,

    generation: u32,
    next_local_id: u64,
    gens: Vec<Generation>,
    /// Local id of the generation we send with.
    current: Option<u64>,
    outbound: FxHashMap<u32, OutboundSa>,
    inbound: FxHashMap<u32, InboundSa>,
    initiating: Option<PendingInit>,
    responding: Option<PendingResp>,
    completed: Option<CompletedInit>,
    /// (INIT ts, e_i, e_r) of the last handshake we answered and switched to.
    last_promoted: Option<(u64, PublicKey, PublicKey)>,
    /// The peer's clock when it last showed it holds our current
    /// generation (its RESP's `sender_ts`, or its INIT's timestamp for a
    /// handshake we answered): a CONFIRM of another handshake it sent later
    /// means it switched to keys we no longer hold.
    current_peer_ts: u64,
    last_peer_init_ts: u64,
    /// The peer handshake (e_i) we last answered with a RESP: its INIT
    /// retries (and replays of them) get no second RESP; our own RESP
    /// retransmission covers a lost one. Cleared when we give up on it.
    answered_eph: Option<PublicKey>,
    /// The peer handshake (e_i) for which we last sent our pending INIT
    /// again at once (as the side with the larger key).
    nudged_eph: Option<PublicKey>,
    sent_inits: VecDeque<SentInit>,
    answered: VecDeque<Answered>,
    rekey_at: Option<Instant>,
    rekey_wanted: bool,
    transmit: VecDeque<[u8; CONTROL_LEN]>,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("generation", &self.generation)
            .field("established", &self.current.is_some())
            .field("initiating", &self.initiating.is_some())
            .field("responding", &self.responding.is_some())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with `peer` for the encrypted `vnis`. The first handshake
    /// starts at the first [`handle_timeout`](Self::handle_timeout) (which
    /// [`poll_timeout`](Self::poll_timeout) asks for immediately).
    ///
    /// `unix_time_ns` is the wall clock at `now`; INIT timestamps are derived
    /// from it and the monotonic `now` of later calls.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: SessionConfig,
        local: &StaticKeypair,
        peer: PublicKey,
        vnis: &[u32],
        now: Instant,
        unix_time_ns: u64,
        rng: Box<dyn CryptoRngCore + Send>,
    ) -> Result<Self, CryptoError> {
        if config.key_len != 16 && config.key_len != 32 {
            return Err(CryptoError::BadKeyLength);
        }
        let dh_ss = local.dh(&peer).ok_or(CryptoError::BadControlMessage)?;
        let ctrl_key = control_key(&dh_ss, &local.public(), &peer);
        let ctrl = new_aead(config.backend, &*ctrl_key)?;
        let mut vnis = vnis.to_vec();
        vnis.sort_unstable();
        vnis.dedup();
        Ok(Session {
            preferred: local.public() > peer,
            config,
            local: local.public(),
            peer,
            dh_ss,
            ctrl,
            rng,
            epoch: now,
            wall_at_epoch_ns: unix_time_ns,
            last_ts: 0,
            last_now: now,
            vnis,
            generation: 0,
            next_local_id: 1,
            gens: Vec::new(),
            current: None,
            outbound: FxHashMap::default(),
            inbound: FxHashMap::default(),
            initiating: None,
            responding: None,
            completed: None,
            last_promoted: None,
            current_peer_ts: 0,
            last_peer_init_ts: 0,
            answered_eph: None,
            nudged_eph: None,
            sent_inits: VecDeque::with_capacity(HISTORY),
            answered: VecDeque::with_capacity(HISTORY),
            rekey_at: None,
            rekey_wanted: true,
            transmit: VecDeque::new(),
        })
    }

    /// The peer's static public key.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// Wire generation we currently send with (0 before the first handshake).
    pub fn generation(&self) -> u32 {
        self.current
            .and_then(|id| self.gens.iter().find(|g| g.local_id == id))
            .map_or(0, |g| g.generation)
    }

    /// Whether we have outbound SAs (a handshake completed).
    pub fn is_established(&self) -> bool {
        self.current.is_some()
    }

    /// Whether our own INIT is outstanding (we want new keys).
    pub fn is_initiating(&self) -> bool {
        self.initiating.is_some()
    }

    /// Whether a handshake (as initiator or responder) is in progress.
    pub fn is_rotating(&self) -> bool {
        self.initiating.is_some() || self.responding.is_some()
    }

    // ---- data path ------------------------------------------------------

    /// The SA to send on for `vni`; `None` before the first handshake or for
    /// a VNI not in the session. Notes when the SA nears its packet budget.
    pub fn outbound(&mut self, vni: u32) -> Option<&mut OutboundSa> {
        let limit = self.config.rekey_after_packets;
        let sa = self.outbound.get_mut(&vni)?;
        if sa.next_seq() >= limit {
            self.rekey_wanted = true;
        }
        Some(sa)
    }

    /// The inbound SA with this SPI (current, pending or in grace).
    pub fn inbound(&mut self, spi: u32) -> Option<&mut InboundSa> {
        self.inbound.get_mut(&spi)
    }

    /// Tells the session a packet on `spi` authenticated: the first one of a
    /// generation we answered (as responder) makes us switch to it.
    pub fn note_authenticated(&mut self, spi: u32, now: Instant) {
        let Some(id) = self.inbound.get(&spi).map(|sa| sa.local_gen) else {
            return;
        };
        if self.responding.as_ref().is_some_and(|r| r.local_id == id) {
            self.promote_responding(now);
        }
    }

    /// Seals `packet[esp::HEADER_LEN..][..payload_len]` for `vni` with the
    /// current generation; see [`esp::seal_in_place`].
    pub fn seal(
        &mut self,
        vni: u32,
        packet: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, CryptoError> {
        let sa = self.outbound(vni).ok_or(CryptoError::NoSa)?;
        esp::seal_in_place(sa, packet, payload_len)
    }

    /// Looks up the SA by SPI, opens the packet, and takes an authenticated
    /// packet of a new generation as the peer's confirmation.
    pub fn open(&mut self, packet: &mut [u8], now: Instant) -> Result<Opened, CryptoError> {
        let spi = match esp::classify(packet).ok_or(CryptoError::Truncated)? {
            esp::Classified::Esp(spi) => spi,
            esp::Classified::Reserved(_) => return Err(CryptoError::ReservedSpi),
            _ => return Err(CryptoError::UnknownSpi),
        };
        let sa = self.inbound.get_mut(&spi).ok_or(CryptoError::UnknownSpi)?;
        let range = esp::open_in_place(sa, packet)?;
        let id = sa.id();
        let local_gen = sa.local_gen;
        if self
            .responding
            .as_ref()
            .is_some_and(|r| r.local_id == local_gen)
        {
            self.promote_responding(now);
        }
        Ok(Opened {
            range,
            vni: id.vni,
            generation: id.generation,
        })
    }

    // ---- configuration --------------------------------------------------

    /// Adds an encrypted VNI: SAs for it are derived for every live generation.
    pub fn add_vni(&mut self, vni: u32, now: Instant) -> Result<(), CryptoError> {
        if self.vnis.contains(&vni) {
            return Ok(());
        }
        self.vnis.push(vni);
        self.vnis.sort_unstable();
        let live: Vec<u64> = self
            .gens
            .iter()
            .filter(|g| g.secret.is_some())
            .map(|g| g.local_id)
            .collect();
        for id in live {
            let (ins, outs) = self.derive_sas(id, &[vni], now)?;
            for sa in ins {
                self.inbound.insert(sa.spi(), sa);
            }
            for sa in outs {
                if Some(id) == self.current {
                    self.outbound.insert(vni, sa);
                } else if let Some(r) = self.responding.as_mut().filter(|r| r.local_id == id) {
                    r.outbound.insert(vni, sa);
                }
            }
        }
        Ok(())
    }

    /// Removes a VNI and wipes its SAs.
    pub fn remove_vni(&mut self, vni: u32) {
        self.vnis.retain(|&v| v != vni);
        self.outbound.remove(&vni);
        self.inbound.retain(|_, sa| sa.vni() != vni);
        if let Some(r) = self.responding.as_mut() {
            r.outbound.remove(&vni);
        }
    }

    /// All installed SAs, for `vxnet dp sa`; keys only if `with_keys`.
    pub fn sa_infos(&self, now: Instant, with_keys: bool) -> Vec<SaInfo> {
        let mut out = Vec::new();
        let retiring = |id: u64| {
            self.gens
                .iter()
                .any(|g| g.local_id == id && g.retire_at.is_some())
        };
        for sa in self.inbound.values() {
            out.push(SaInfo {
                spi: sa.spi(),
                direction: SaDirection::Inbound,
                peer: self.peer,
                vni: sa.vni(),
                generation: sa.id().generation,
                packets: sa.packets,
                age: sa.age(now),
                standby: retiring(sa.local_gen),
                key: with_keys.then(|| sa.key().clone()),
            });
        }
        let pending = self
            .responding
            .iter()
            .flat_map(|r| r.outbound.values().map(|sa| (sa, true)));
        for (sa, standby) in self.outbound.values().map(|sa| (sa, false)).chain(pending) {
            out.push(SaInfo {
                spi: sa.spi(),
                direction: SaDirection::Outbound,
                peer: self.peer,
                vni: sa.id().vni,
                generation: sa.id().generation,
                packets: sa.packets,
                age: sa.age(now),
                standby,
                key: with_keys.then(|| sa.key().clone()),
            });
        }
        out.sort_by_key(|i| {
            (
                i.generation,
                i.vni,
                i.direction == SaDirection::Outbound,
                i.spi,
            )
        });
        out
    }

    // ---- control plane --------------------------------------------------

    /// Forces a rotation now (`vxnet dp rekey`). A no-op while a handshake
    /// is already under way (ours, or the peer's that we answered: either
    /// brings a new generation).
    pub fn rekey(&mut self, now: Instant) {
        self.last_now = now;
        if !self.is_rotating() {
            self.start_init(now);
        }
    }

    /// The next control message to send to the peer, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front().map(|m| m.to_vec())
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(i) = &self.initiating {
            consider(i.next_retry);
        } else if self.responding.is_some() && self.current.is_some() {
            // The answered handshake brings the next generation. Without a
            // current one we initiate all the same: the INIT we answered
            // may be a replay (see "Freshness").
        } else if self.rekey_wanted {
            consider(self.last_now);
        } else if let Some(r) = self.rekey_at {
            consider(r);
        }
        if let Some(r) = &self.responding {
            consider(r.next_retry);
        }
        for g in &self.gens {
            if let Some(at) = g.retire_at {
                consider(at);
            }
        }
        t
    }

    /// Runs the timers: INIT/RESP retries, rekeying, end of grace periods.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        // End of grace: remove inbound SAs of retired generations.
        let expired: Vec<u64> = self
            .gens
            .iter()
            .filter(|g| g.retire_at.is_some_and(|at| at <= now))
            .map(|g| g.local_id)
            .collect();
        if !expired.is_empty() {
            self.inbound
                .retain(|_, sa| !expired.contains(&sa.local_gen));
            self.gens.retain(|g| !expired.contains(&g.local_id));
        }
        // INIT retry with a fresh timestamp (the responder only takes newer
        // ones), except while we answer the peer's INIT: the same timestamp
        // then lets a peer that completed that handshake (its RESP told us
        // so through `sender_ts`) ignore the retry instead of starting a
        // handshake we would drop once we switch.
        if let Some(i) = &self.initiating {
            if now >= i.next_retry {
                let ts = if self.responding.is_some() {
                    i.ts
                } else {
                    self.next_ts(now)
                };
                let max = self.config.max_retry_interval;
                if let Some(i) = self.initiating.as_mut() {
                    i.ts = ts;
                    i.interval = (i.interval * 2).min(max);
                    i.next_retry = now + i.interval;
                }
                self.queue_init();
            }
        } else if (self.responding.is_none() || self.current.is_none())
            && (self.rekey_wanted || self.rekey_at.is_some_and(|at| now >= at))
        {
            self.start_init(now);
        }
        // RESP retransmission until the initiator confirms (or we give up).
        let mut give_up = false;
        let mut resend = None;
        if let Some(r) = self.responding.as_mut() {
            if now >= r.next_retry {
                if r.tries >= self.config.max_resp_retries {
                    give_up = true;
                } else {
                    r.tries += 1;
                    r.interval = (r.interval * 2).min(self.config.max_retry_interval);
                    r.next_retry = now + r.interval;
                    resend = Some((r.generation, r.ts, r.resp_eph, r.init_eph));
                }
            }
        }
        // A new copy (new nonce): the initiator answers each copy at most
        // once, so a replayed one gets nothing but ours still get through.
        if let Some((generation, ts, e_r, e_i)) = resend {
            let sender_ts = self.next_ts(now);
            let resp = self.build(TYPE_RESP, generation, ts, &e_r, sender_ts, Some(&e_i));
            self.transmit.push_back(resp);
        }
        if give_up {
            if let Some(r) = self.responding.take() {
                self.retire(r.local_id, now);
                // Should the peer still be retrying that INIT, answer it anew.
                if self.answered_eph == Some(r.init_eph) {
                    self.answered_eph = None;
                }
            }
            // The peer wanted a new generation and did not get it: we try.
            self.rekey_wanted = true;
        }
    }

    /// Handles a control message from the peer (first word 0). Errors mean
    /// the message was dropped; the engine counts them.
    pub fn handle_message(&mut self, now: Instant, msg: &[u8]) -> Result<(), CryptoError> {
        self.last_now = now;
        let msg: &[u8; CONTROL_LEN] = msg.try_into().map_err(|_| CryptoError::BadControlMessage)?;
        if msg[..4] != [0, 0, 0, 0] || msg[4] != VERSION || msg[6..8] != [0, 0] {
            return Err(CryptoError::BadControlMessage);
        }
        let generation = u32::from_be_bytes([msg[8], msg[9], msg[10], msg[11]]);
        let mut ts_bytes = [0u8; 8];
        ts_bytes.copy_from_slice(&msg[12..20]);
        let ts = u64::from_be_bytes(ts_bytes);
        let mut eph = [0u8; 32];
        eph.copy_from_slice(&msg[20..52]);
        let eph = PublicKey::from_bytes(eph);
        let mut sender_ts = [0u8; 8];
        sender_ts.copy_from_slice(&msg[52..60]);
        let sender_ts = u64::from_be_bytes(sender_ts);
        match msg[5] {
            TYPE_INIT => self.on_init(now, msg, generation, ts, eph),
            TYPE_RESP => self.on_resp(now, msg, generation, ts, eph, sender_ts),
            TYPE_CONFIRM => self.on_confirm(now, msg, ts, eph, sender_ts),
            _ => Err(CryptoError::BadControlMessage),
        }
    }

    fn on_init(
        &mut self,
        now: Instant,
        msg: &[u8; CONTROL_LEN],
        generation: u32,
        ts: u64,
        e_i: PublicKey,
    ) -> Result<(), CryptoError> {
        self.verify(msg, None)?;
        if ts <= self.last_peer_init_ts {
            return Err(CryptoError::StaleControlMessage);
        }
        // Retries of one handshake carry the same ephemeral: one RESP per
        // handshake, so a replayed retry costs nothing. A lost RESP is
        // covered by our retransmission timer.
        if self.answered_eph == Some(e_i) {
            self.last_peer_init_ts = ts;
            return Err(CryptoError::StaleControlMessage);
        }
        if self.initiating.is_some() && self.preferred {
            // Simultaneous INIT: we stay initiator; the peer will answer
            // ours. It may never have seen ours, though: an INIT that
            // reached it before it had our key was dropped there, and our
            // next retry may be far off. This authenticated INIT suggests it
            // knows us now, so send ours again at once (the same
            // generation, timestamp and ephemeral: a peer that did get it
            // drops the copy as stale), once per peer handshake, so a
            // replayed copy or retry makes us send nothing.
            self.last_peer_init_ts = ts;
            if self.nudged_eph != Some(e_i) {
                self.nudged_eph = Some(e_i);
                self.queue_init();
                // Should the copy be lost, retry soon rather than after the
                // backed-off interval: our own timer, not the peer's retries
                // (which a replay could imitate), covers the loss.
                let first = self.config.handshake_timeout;
                if let Some(i) = self.initiating.as_mut() {
                    i.interval = first;
                    i.next_retry = now + first;
                }
            }
            return Ok(());
        }
        // We answer. A pending INIT of ours stays pending and keeps being
        // retried: this INIT may be a replay (see "Freshness"); it is
        // dropped only when the answered handshake is confirmed.
        let e_r = Ephemeral::generate(&mut *self.rng);
        let dh_ee = e_r.dh(&e_i).ok_or(CryptoError::BadControlMessage)?;
        self.last_peer_init_ts = ts;
        let secret = GenerationSecret::new(&dh_ee, &self.dh_ss, self.peer, self.local, generation);
        drop(dh_ee);
        let resp_eph = e_r.public;
        drop(e_r);
        self.answered_eph = Some(e_i);
        remember(
            &mut self.answered,
            Answered {
                ts,
                e_i,
                e_r: resp_eph,
            },
        );
        self.generation = self.generation.max(generation);
        // A previous unconfirmed answer is superseded; keep receiving on it
        // for the grace period in case the peer did switch to it.
        if let Some(old) = self.responding.take() {
            self.retire(old.local_id, now);
        }
        let local_id = self.install_generation(secret, false);
        let (ins, outs) = self.derive_sas(local_id, &self.vnis.clone(), now)?;
        for sa in ins {
            self.inbound.insert(sa.spi(), sa);
        }
        let outbound: FxHashMap<u32, OutboundSa> =
            outs.into_iter().map(|sa| (sa.id().vni, sa)).collect();
        let sender_ts = self.next_ts(now);
        let resp = self.build(TYPE_RESP, generation, ts, &resp_eph, sender_ts, Some(&e_i));
        self.transmit.push_back(resp);
        self.responding = Some(PendingResp {
            local_id,
            ts,
            init_eph: e_i,
            resp_eph,
            generation,
            outbound,
            next_retry: now + self.config.handshake_timeout,
            interval: self.config.handshake_timeout,
            tries: 0,
        });
        Ok(())
    }

    fn on_resp(
        &mut self,
        now: Instant,
        msg: &[u8; CONTROL_LEN],
        generation: u32,
        ts: u64,
        e_r: PublicKey,
        sender_ts: u64,
    ) -> Result<(), CryptoError> {
        // Authenticate first: the RESP is bound to the INIT it answers, so
        // find that INIT (by its timestamp) among those we sent. One we
        // cannot find cannot be authenticated and counts as bad.
        let sent = self
            .sent_inits
            .iter()
            .rev()
            .find(|s| s.generation == generation && (s.first_ts..=s.last_ts).contains(&ts))
            .copied()
            .ok_or(CryptoError::BadControlMessage)?;
        self.verify(msg, Some(&sent.e_i))?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&msg[60..72]);
        // Any retry of our pending INIT (same ephemeral) may be answered.
        let Some(init) = self
            .initiating
            .as_ref()
            .filter(|i| i.eph.public == sent.e_i && i.generation == generation)
        else {
            // A retransmitted RESP for the handshake we completed: our
            // CONFIRM was lost; send it again, once per copy of the RESP
            // (a replayed copy must not make us answer one for one).
            let copies = self.config.max_resp_retries as usize + 1;
            if let Some(c) = self.completed.as_mut().filter(|c| {
                c.ts == ts
                    && c.resp_eph == e_r
                    && !c.answered.contains(&nonce)
                    && c.answered.len() < copies
            }) {
                c.answered.push(nonce);
                let confirm = c.confirm;
                self.transmit.push_back(confirm);
                return Ok(());
            }
            // An authentic RESP to the handshake we completed, with another
            // ephemeral and sent after the one we completed with: the peer
            // answered our INIT twice (it restarted, or gave up on its first
            // answer, while our retries were in flight) and the RESP we took
            // came from the abandoned answer, arriving late. The peer does
            // not hold our keys and never will (the other answer's secret
            // is gone on both sides), and it ignores our retries (same
            // ephemeral) and its own INIT retries keep their timestamp while
            // it answers, which we have seen: without this the pair is
            // stuck, one side established and the other not, until its RESP
            // retries run out. So start a new handshake now. Only the peer
            // can make such a RESP (it is bound to our ephemeral); a replay
            // of it costs at most one rotation per completed handshake, as
            // a new INIT of ours is pending from then on. Not while we
            // answer the peer's INIT: that handshake brings a new
            // generation already, and confirming it would drop ours and
            // leave the peer answering it until its RESP retries run out.
            if !self.is_rotating()
                && self.completed.as_ref().is_some_and(|c| {
                    c.e_i == sent.e_i && c.resp_eph != e_r && sender_ts > c.resp_sender_ts
                })
            {
                self.start_init(now);
                return Ok(());
            }
            // For an INIT we abandoned, a handshake already answered, or a
            // replay.
            return Err(CryptoError::StaleControlMessage);
        };
        // A RESP sent before an INIT of the peer we have seen comes from an
        // answer the peer no longer holds: when it sent that INIT with a
        // fresh timestamp it was not answering (retries keep their
        // timestamp while it answers), or it had restarted, or it had no
        // current generation and still answers, in which case its RESP
        // retransmissions (each with a new `sender_ts`) get through. Our
        // INIT's ephemeral lives as long as our retries, so without this a
        // late or replayed RESP from an abandoned answer completes the
        // handshake with keys the peer dropped.
        if sender_ts < self.last_peer_init_ts {
            return Err(CryptoError::StaleControlMessage);
        }
        let e_i_pub = init.eph.public;
        self.verify(msg, Some(&e_i_pub))?;
        let dh_ee = init.eph.dh(&e_r).ok_or(CryptoError::BadControlMessage)?;
        let secret = GenerationSecret::new(&dh_ee, &self.dh_ss, self.local, self.peer, generation);
        drop(dh_ee);
        // Forward secrecy: the ephemeral secret goes now.
        self.initiating = None;
        // A CONFIRM of a handshake we answered before is now stale.
        self.last_promoted = None;
        // Any INIT the peer sent before answering ours was abandoned by it.
        self.last_peer_init_ts = self.last_peer_init_ts.max(sender_ts);
        let local_id = self.install_generation(secret, true);
        let (ins, outs) = self.derive_sas(local_id, &self.vnis.clone(), now)?;
        for sa in ins {
            self.inbound.insert(sa.spi(), sa);
        }
        let outbound = outs.into_iter().map(|sa| (sa.id().vni, sa)).collect();
        // An answer we gave to the peer's INIT meanwhile is superseded. Its
        // INIT is answered anew should the peer retry it with a timestamp
        // newer than this RESP (older retries are stale by the line above):
        // the peer sent that retry after this RESP, so this RESP may come
        // from a session of the peer that no longer exists (it restarted),
        // and the peer, wanting our answer, would otherwise wait forever
        // (it keeps retrying; as the larger key it answers nothing of ours).
        if let Some(old) = self.responding.take() {
            self.retire(old.local_id, now);
            if self.answered_eph == Some(old.init_eph) {
                self.answered_eph = None;
            }
        }
        self.switch_outbound(local_id, outbound, now);
        let our_ts = self.next_ts(now);
        let confirm = self.build(TYPE_CONFIRM, generation, ts, &e_r, our_ts, Some(&e_i_pub));
        self.transmit.push_back(confirm);
        self.current_peer_ts = sender_ts;
        self.completed = Some(CompletedInit {
            ts,
            e_i: e_i_pub,
            resp_eph: e_r,
            resp_sender_ts: sender_ts,
            confirm,
            answered: vec![nonce],
        });
        Ok(())
    }

    fn on_confirm(
        &mut self,
        now: Instant,
        msg: &[u8; CONTROL_LEN],
        ts: u64,
        e_r: PublicKey,
        sender_ts: u64,
    ) -> Result<(), CryptoError> {
        // Authenticate first, against the handshake it names.
        let answered = self
            .answered
            .iter()
            .rev()
            .find(|a| a.ts == ts && a.e_r == e_r)
            .copied()
            .ok_or(CryptoError::BadControlMessage)?;
        self.verify(msg, Some(&answered.e_i))?;
        if self
            .responding
            .as_ref()
            .is_some_and(|r| r.ts == ts && r.resp_eph == e_r)
        {
            self.promote_responding(now);
            return Ok(());
        }
        // Usually we already switched because data of the new generation
        // arrived first: accept that as a no-op.
        if self
            .last_promoted
            .is_some_and(|(t, _, resp_eph)| t == ts && resp_eph == e_r)
        {
            return Ok(());
        }
        // An answer we dropped (a RESP to our own INIT completed first, and
        // that RESP came from an answer the peer had abandoned, e.g. before
        // it restarted), confirmed after the peer last showed it holds our
        // current generation: the peer now sends with keys we no longer
        // hold, and neither side is in a handshake that would fix it before
        // the next timed rekey. Start one now. A replay of this CONFIRM is
        // dated before the new generation's RESP and changes nothing.
        if !self.is_rotating() && self.current.is_some() && sender_ts > self.current_peer_ts {
            self.start_init(now);
            return Ok(());
        }
        Err(CryptoError::StaleControlMessage)
    }

    fn promote_responding(&mut self, now: Instant) {
        if let Some(r) = self.responding.take() {
            self.last_promoted = Some((r.ts, r.init_eph, r.resp_eph));
            self.current_peer_ts = r.ts;
            // The answered handshake is confirmed (only the holder of e_i
            // can confirm it): it is fresh and brings the new generation, so
            // our own pending INIT, if any, is no longer needed, and a
            // RESP to a handshake we completed earlier is now stale.
            self.initiating = None;
            self.completed = None;
            let PendingResp {
                local_id, outbound, ..
            } = r;
            self.switch_outbound(local_id, outbound, now);
        }
    }

    /// Makes `local_id` the generation we send with; the previous one enters
    /// its grace period.
    fn switch_outbound(
        &mut self,
        local_id: u64,
        outbound: FxHashMap<u32, OutboundSa>,
        now: Instant,
    ) {
        if let Some(prev) = self.current.replace(local_id) {
            self.retire(prev, now);
        }
        // Old outbound SAs drop here (their key copies are wiped).
        self.outbound = outbound;
        self.rekey_wanted = false;
        let interval = if self.preferred {
            self.config.rekey_interval
        } else {
            self.config.rekey_interval + self.config.rekey_interval / 10
        };
        self.rekey_at = Some(now + interval);
    }

    fn retire(&mut self, local_id: u64, now: Instant) {
        if let Some(g) = self.gens.iter_mut().find(|g| g.local_id == local_id) {
            g.secret = None;
            if g.retire_at.is_none() {
                g.retire_at = Some(now + self.config.grace);
            }
        }
    }

    fn install_generation(&mut self, secret: GenerationSecret, we_initiated: bool) -> u64 {
        let local_id = self.next_local_id;
        self.next_local_id += 1;
        self.gens.push(Generation {
            local_id,
            generation: secret.generation(),
            we_initiated,
            secret: Some(secret),
            retire_at: None,
        });
        local_id
    }

    /// Inbound and outbound SAs of generation `local_id` for `vnis`.
    fn derive_sas(
        &self,
        local_id: u64,
        vnis: &[u32],
        now: Instant,
    ) -> Result<(Vec<InboundSa>, Vec<OutboundSa>), CryptoError> {
        let Some(g) = self.gens.iter().find(|g| g.local_id == local_id) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let Some(secret) = g.secret.as_ref() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let (dir_out, dir_in) = if g.we_initiated {
            (
                Direction::InitiatorToResponder,
                Direction::ResponderToInitiator,
            )
        } else {
            (
                Direction::ResponderToInitiator,
                Direction::InitiatorToResponder,
            )
        };
        let mut ins = Vec::with_capacity(vnis.len());
        let mut outs = Vec::with_capacity(vnis.len());
        for &vni in vnis {
            let (key, spi) = secret.sa_material(vni, dir_in, self.config.key_len)?;
            let mut sa = InboundSa::new(
                SaId {
                    spi,
                    vni,
                    generation: g.generation,
                },
                key,
                self.config.backend,
                now,
            )?;
            sa.local_gen = local_id;
            ins.push(sa);
            let (key, spi) = secret.sa_material(vni, dir_out, self.config.key_len)?;
            outs.push(OutboundSa::new(
                SaId {
                    spi,
                    vni,
                    generation: g.generation,
                },
                key,
                self.config.backend,
                now,
            )?);
        }
        Ok((ins, outs))
    }

    fn start_init(&mut self, now: Instant) {
        let generation = self.generation.wrapping_add(1).max(1);
        self.generation = generation;
        let eph = Ephemeral::generate(&mut *self.rng);
        let ts = self.next_ts(now);
        self.nudged_eph = None;
        self.initiating = Some(PendingInit {
            generation,
            eph,
            ts,
            next_retry: now + self.config.handshake_timeout,
            interval: self.config.handshake_timeout,
        });
        self.rekey_wanted = false;
        self.queue_init();
    }

    fn queue_init(&mut self) {
        if let Some((generation, ts, e_i)) = self
            .initiating
            .as_ref()
            .map(|i| (i.generation, i.ts, i.eph.public))
        {
            let msg = self.build(TYPE_INIT, generation, ts, &e_i, ts, None);
            self.transmit.push_back(msg);
            match self.sent_inits.back_mut() {
                Some(s) if s.e_i == e_i => s.last_ts = s.last_ts.max(ts),
                _ => remember(
                    &mut self.sent_inits,
                    SentInit {
                        generation,
                        e_i,
                        first_ts: ts,
                        last_ts: ts,
                    },
                ),
            }
        }
    }

    /// Strictly increasing wall-clock nanoseconds.
    fn next_ts(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let wall = self
            .wall_at_epoch_ns
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        self.last_ts = wall.max(self.last_ts + 1);
        self.last_ts
    }

    fn aad(
        &self,
        msg: &[u8; CONTROL_LEN],
        sender: &PublicKey,
        receiver: &PublicKey,
        init_eph: Option<&PublicKey>,
    ) -> Vec<u8> {
        let mut aad = Vec::with_capacity(SIGNED_LEN + 96);
        aad.extend_from_slice(&msg[..SIGNED_LEN]);
        aad.extend_from_slice(sender.as_bytes());
        aad.extend_from_slice(receiver.as_bytes());
        if let Some(e) = init_eph {
            aad.extend_from_slice(e.as_bytes());
        }
        aad
    }

    fn build(
        &mut self,
        kind: u8,
        generation: u32,
        ts: u64,
        eph: &PublicKey,
        sender_ts: u64,
        init_eph: Option<&PublicKey>,
    ) -> [u8; CONTROL_LEN] {
        let mut msg = [0u8; CONTROL_LEN];
        msg[4] = VERSION;
        msg[5] = kind;
        msg[8..12].copy_from_slice(&generation.to_be_bytes());
        msg[12..20].copy_from_slice(&ts.to_be_bytes());
        msg[20..52].copy_from_slice(eph.as_bytes());
        msg[52..60].copy_from_slice(&sender_ts.to_be_bytes());
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        msg[60..72].copy_from_slice(&nonce);
        let aad = self.aad(&msg, &self.local, &self.peer, init_eph);
        let tag = self.ctrl.seal_in_place(&nonce, &aad, &mut []);
        msg[72..88].copy_from_slice(&tag);
        msg
    }

    fn verify(
        &self,
        msg: &[u8; CONTROL_LEN],
        init_eph: Option<&PublicKey>,
    ) -> Result<(), CryptoError> {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&msg[60..72]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&msg[72..88]);
        let aad = self.aad(msg, &self.peer, &self.local, init_eph);
        self.ctrl
            .open_in_place(&nonce, &aad, &mut [], &tag)
            .map_err(|_| CryptoError::BadControlMessage)
    }
}
