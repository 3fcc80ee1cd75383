//! `kx_rotation`: the key-exchange and rotation state machine
//! ([`Session`]) of two hosts, driven by a script decoded from the input.
//!
//! The input is a sequence of two-byte operations `[op, arg]` (see [`op`]):
//! control messages in flight delivered, dropped, duplicated or reordered;
//! any recorded control message replayed, reflected or forged; time
//! advanced (each host's timers run at their due times); rekeys forced;
//! either host restarted (a new session, as after a dataplane restart);
//! data sealed by one host and opened by the other. After every step:
//!
//! - no packet is sealed on an outbound SA that was replaced before, and no
//!   inbound SA outlives its grace period;
//! - no sequence number is used twice under one SPI;
//! - the timers make progress (no busy loop).
//!
//! At the end the adversary stops: what is in flight arrives in order,
//! nothing is lost any more, and time moves on. Within [`CONVERGE_WITHIN`]
//! of virtual time both hosts must be established, with no INIT of their
//! own outstanding, and a packet sealed by each must open at the other.
//! An answer to a peer's INIT may still be pending then: one the peer has
//! moved on from (it has no message to say so) ends by its bounded RESP
//! retries, so within [`QUIESCE_WITHIN`] both hosts must be out of every
//! handshake, and packets must still open both ways.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use vxnet_proto::crypto::esp::{HEADER_LEN, MAX_TRAILER};
use vxnet_proto::crypto::keys::StaticKeypair;
use vxnet_proto::crypto::session::{SaDirection, Session, SessionConfig};
use vxnet_proto::engine::testkit;

/// Operation codes (the first byte of each pair, modulo [`op::COUNT`]); the
/// second byte is the argument.
pub mod op {
    /// Deliver the oldest control message in flight.
    pub const DELIVER: u8 = 0;
    /// Lose the oldest control message in flight.
    pub const DROP: u8 = 1;
    /// Deliver a copy of the oldest one and keep it in flight.
    pub const DUPLICATE: u8 = 2;
    /// Move the oldest one to the back (reordering).
    pub const REORDER: u8 = 3;
    /// Replay recorded message `arg` (modulo their number) to its receiver.
    pub const REPLAY: u8 = 4;
    /// Send recorded message `arg` back to its sender.
    pub const REFLECT: u8 = 5;
    /// Recorded message `arg` with byte `arg % 88` flipped, to its receiver.
    pub const FORGE: u8 = 6;
    /// Advance time by `arg` × 5 ms.
    pub const ADVANCE: u8 = 7;
    /// Advance time by `arg` × 100 ms.
    pub const ADVANCE_LONG: u8 = 8;
    /// Host `arg & 1` rekeys now.
    pub const REKEY: u8 = 9;
    /// Host `arg & 1` restarts: a new session, no memory.
    pub const RESTART: u8 = 10;
    /// Host `arg & 1` seals a packet; the other opens it.
    pub const DATA: u8 = 11;
    /// Every recorded message of host `arg & 1`, newest first, to the other.
    pub const REPLAY_ALL: u8 = 12;
    /// Number of operations.
    pub const COUNT: u8 = 13;
}

const VNI: u32 = 4096;
const PAYLOAD: usize = 32;
const WALL_BASE_NS: u64 = 1_800_000_000_000_000_000;
const MAX_IN_FLIGHT: usize = 64;
const MAX_RECORDED: usize = 256;
const MAX_OPS: usize = 400;

/// Once the adversary stops, the pair must agree within this virtual time.
/// (The slowest legitimate path: an INIT retry backed off to the 0.8 s
/// cap, then one round trip.)
pub const CONVERGE_WITHIN: Duration = Duration::from_millis(1200);

/// Once the adversary stops, both hosts must be out of every handshake
/// within this virtual time: a dangling answer gives up after 1.55 s
/// ([`config`]'s RESP retries), plus slack.
pub const QUIESCE_WITHIN: Duration = Duration::from_millis(2000);

/// Short timers so that short scripts reach retries, give-ups, rekeys by
/// time and by packet count, and the end of grace periods.
fn config() -> SessionConfig {
    SessionConfig {
        // Long against the convergence bound, so a stuck pair cannot be
        // rescued by a timed rekey; still reachable with ADVANCE_LONG.
        rekey_interval: Duration::from_secs(20),
        rekey_after_packets: 40,
        handshake_timeout: Duration::from_millis(50),
        max_retry_interval: Duration::from_millis(800),
        // Giving up on an unanswered RESP takes 1.55 s, longer than
        // CONVERGE_WITHIN: a pair that must wait for it (as after a replayed
        // INIT before the fix) fails the target.
        max_resp_retries: 5,
        grace: Duration::from_secs(1),
        ..SessionConfig::default()
    }
}

/// What an input reached, for the seed tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct KxReached {
    /// Host restarts.
    pub restarts: u32,
    /// Recorded messages replayed (also reflected, forged, replayed all).
    pub replays: u32,
    /// Changes of either host's current outbound SAs.
    pub rotations: u32,
    /// Data packets opened during the script (before convergence).
    pub opened: u32,
    /// Virtual time from the end of the script to agreement.
    pub converged_after: Duration,
}

struct World {
    now: Instant,
    base: Instant,
    keys: [StaticKeypair; 2],
    nodes: [Session; 2],
    sessions_made: u64,
    in_flight: VecDeque<(usize, Vec<u8>)>,
    recorded: Vec<(usize, Vec<u8>)>,
    /// Highest sequence number sealed per (host, SPI).
    last_seq: HashMap<(usize, u32), u64>,
    /// Outbound SPIs a host has stopped sending on.
    replaced: HashSet<(usize, u32)>,
    current_out: [HashSet<u32>; 2],
    /// When an inbound SA was first seen in its grace period.
    standby_since: HashMap<(usize, u32), Instant>,
    counter: u64,
    reached: KxReached,
}

impl World {
    fn new(swap_keys: bool) -> World {
        let base = Instant::now();
        let (a, b) = (testkit::keypair(1), testkit::keypair(2));
        let keys = if swap_keys { [b, a] } else { [a, b] };
        let nodes = [
            Self::session(&keys, 0, base, WALL_BASE_NS, 10),
            Self::session(&keys, 1, base, WALL_BASE_NS, 11),
        ];
        let mut w = World {
            now: base,
            base,
            keys,
            nodes,
            sessions_made: 12,
            in_flight: VecDeque::new(),
            recorded: Vec::new(),
            last_seq: HashMap::new(),
            replaced: HashSet::new(),
            current_out: [HashSet::new(), HashSet::new()],
            standby_since: HashMap::new(),
            counter: 0,
            reached: KxReached::default(),
        };
        w.run_timers(base);
        w
    }

    fn session(keys: &[StaticKeypair; 2], n: usize, now: Instant, wall: u64, seed: u64) -> Session {
        Session::new(
            config(),
            &keys[n],
            keys[1 - n].public(),
            &[VNI],
            now,
            wall,
            testkit::seeded_rng(seed),
        )
        .expect("valid session config")
    }

    fn restart(&mut self, n: usize) {
        // A restart takes time: the new session's first INIT timestamp is
        // later than anything the old one sent (INIT freshness relies on it).
        self.run_timers(self.now + Duration::from_millis(1));
        let wall = WALL_BASE_NS + (self.now - self.base).as_nanos() as u64;
        self.sessions_made += 1;
        self.nodes[n] = Self::session(&self.keys, n, self.now, wall, self.sessions_made);
        self.reached.restarts += 1;
        // The old session's SAs are gone: none may be used again.
        for spi in self.current_out[n].drain() {
            self.replaced.insert((n, spi));
        }
        self.standby_since.retain(|(m, _), _| *m != n);
        self.run_timers(self.now);
    }

    /// Moves what the sessions want to send into the network.
    fn flush(&mut self) {
        for n in 0..2 {
            while let Some(m) = self.nodes[n].poll_transmit() {
                if self.recorded.len() < MAX_RECORDED {
                    self.recorded.push((n, m.clone()));
                }
                if self.in_flight.len() == MAX_IN_FLIGHT {
                    self.in_flight.pop_front();
                }
                self.in_flight.push_back((1 - n, m));
            }
        }
    }

    fn deliver(&mut self, to: usize, msg: &[u8]) {
        // Errors are drops the engine counts; any is fine here.
        let _ = self.nodes[to].handle_message(self.now, msg);
        self.flush();
        self.observe();
    }

    /// Runs every timer due up to `until`, each at its own time, then sets
    /// the clock to `until`.
    fn run_timers(&mut self, until: Instant) {
        for _ in 0..10_000 {
            let next = (0..2).filter_map(|n| self.nodes[n].poll_timeout()).min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    for n in 0..2 {
                        if self.nodes[n].poll_timeout().is_some_and(|t| t <= self.now) {
                            self.nodes[n].handle_timeout(self.now);
                        }
                    }
                    self.flush();
                    self.observe();
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
        panic!("timers make no progress at {:?}", self.now - self.base);
    }

    /// Checks the SA invariants against what the sessions show now.
    fn observe(&mut self) {
        let grace = config().grace;
        for n in 0..2 {
            let infos = self.nodes[n].sa_infos(self.now, false);
            let out: HashSet<u32> = infos
                .iter()
                .filter(|i| i.direction == SaDirection::Outbound && !i.standby)
                .map(|i| i.spi)
                .collect();
            for spi in &out {
                assert!(
                    !self.replaced.contains(&(n, *spi)),
                    "host {n} sends on SPI {spi:#x} again after replacing it"
                );
            }
            let gone: Vec<u32> = self.current_out[n].difference(&out).copied().collect();
            if !gone.is_empty() || (self.current_out[n].is_empty() && !out.is_empty()) {
                self.reached.rotations += 1;
            }
            for spi in gone {
                self.replaced.insert((n, spi));
            }
            self.current_out[n] = out;
            let standby: HashSet<u32> = infos
                .iter()
                .filter(|i| i.direction == SaDirection::Inbound && i.standby)
                .map(|i| i.spi)
                .collect();
            self.standby_since
                .retain(|(m, spi), _| *m != n || standby.contains(spi));
            for spi in standby {
                let since = *self.standby_since.entry((n, spi)).or_insert(self.now);
                assert!(
                    self.now <= since + grace,
                    "host {n}: inbound SA {spi:#x} still there {:?} after its grace began",
                    self.now - since
                );
            }
        }
    }

    /// Host `n` seals one packet, the other opens it; whether it opened.
    fn data(&mut self, n: usize) -> bool {
        let mut buf = vec![0u8; HEADER_LEN + PAYLOAD + MAX_TRAILER];
        self.counter += 1;
        buf[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&self.counter.to_be_bytes());
        let Ok(len) = self.nodes[n].seal(VNI, &mut buf, PAYLOAD) else {
            return false;
        };
        buf.truncate(len);
        let spi = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&buf[8..16]);
        let seq = u64::from_be_bytes(seq);
        assert!(
            self.current_out[n].contains(&spi) && !self.replaced.contains(&(n, spi)),
            "host {n} sealed on SPI {spi:#x}, which is not its current SA"
        );
        if let Some(&last) = self.last_seq.get(&(n, spi)) {
            assert!(
                seq > last,
                "host {n} reused sequence number {seq} on SPI {spi:#x}"
            );
        }
        self.last_seq.insert((n, spi), seq);
        let opened = match self.nodes[1 - n].open(&mut buf, self.now) {
            Ok(o) => {
                assert_eq!(o.vni, VNI);
                assert_eq!(&buf[o.range][..8], &self.counter.to_be_bytes());
                true
            }
            Err(_) => false,
        };
        self.observe();
        opened
    }

    fn recorded_msg(&self, arg: u8) -> Option<(usize, Vec<u8>)> {
        if self.recorded.is_empty() {
            return None;
        }
        Some(self.recorded[usize::from(arg) % self.recorded.len()].clone())
    }

    fn step(&mut self, op: u8, arg: u8) {
        let side = usize::from(arg & 1);
        match op % op::COUNT {
            op::DELIVER => {
                if let Some((to, m)) = self.in_flight.pop_front() {
                    self.deliver(to, &m);
                }
            }
            op::DROP => {
                self.in_flight.pop_front();
            }
            op::DUPLICATE => {
                if let Some((to, m)) = self.in_flight.front().cloned() {
                    self.deliver(to, &m);
                }
            }
            op::REORDER => {
                if let Some(x) = self.in_flight.pop_front() {
                    self.in_flight.push_back(x);
                }
            }
            op::REPLAY | op::REFLECT | op::FORGE => {
                if let Some((from, mut m)) = self.recorded_msg(arg) {
                    self.reached.replays += 1;
                    let to = if op % op::COUNT == op::REFLECT {
                        from
                    } else {
                        1 - from
                    };
                    if op % op::COUNT == op::FORGE {
                        let i = usize::from(arg) % m.len();
                        m[i] ^= 1 << (arg % 8);
                    }
                    self.deliver(to, &m);
                }
            }
            op::REPLAY_ALL => {
                let msgs: Vec<Vec<u8>> = self
                    .recorded
                    .iter()
                    .rev()
                    .filter(|(f, _)| *f == side)
                    .map(|(_, m)| m.clone())
                    .collect();
                for m in msgs {
                    self.reached.replays += 1;
                    self.deliver(1 - side, &m);
                }
            }
            op::ADVANCE => {
                let to = self.now + Duration::from_millis(5) * u32::from(arg);
                self.run_timers(to);
            }
            op::ADVANCE_LONG => {
                let to = self.now + Duration::from_millis(100) * u32::from(arg);
                self.run_timers(to);
            }
            op::REKEY => {
                self.nodes[side].rekey(self.now);
                self.flush();
                self.run_timers(self.now);
            }
            op::RESTART => self.restart(side),
            _ => {
                if self.data(side) {
                    self.reached.opened += 1;
                }
            }
        }
    }

    /// Whether both hosts are established, with no INIT of their own
    /// outstanding, and a packet from each opens at the other.
    fn agreed(&mut self) -> bool {
        self.nodes
            .iter()
            .all(|s| s.is_established() && !s.is_initiating())
            && self.data(0)
            && self.data(1)
    }

    /// Delivers what is in flight, and what that sends, in order.
    fn deliver_in_flight(&mut self) {
        let mut delivered = 0;
        while let Some((to, m)) = self.in_flight.pop_front() {
            self.deliver(to, &m);
            delivered += 1;
            assert!(delivered < 10_000, "control messages never stop");
        }
    }

    /// Moves time on by one millisecond of network delay (when something
    /// is in flight) or to the next timer, at most to `deadline`.
    fn advance(&mut self, deadline: Instant) {
        let next = if self.in_flight.is_empty() {
            (0..2)
                .filter_map(|n| self.nodes[n].poll_timeout())
                .min()
                .unwrap_or(deadline)
                .max(self.now + Duration::from_millis(1))
        } else {
            self.now + Duration::from_millis(1)
        };
        self.run_timers(next.min(deadline));
    }

    /// After agreement: every pending answer ends by [`QUIESCE_WITHIN`]
    /// from `start`, and changes nothing that works.
    fn quiesce(&mut self, start: Instant) {
        let deadline = start + QUIESCE_WITHIN;
        while self.nodes.iter().any(Session::is_rotating) {
            self.deliver_in_flight();
            assert!(
                self.now < deadline,
                "a handshake still pending {QUIESCE_WITHIN:?} after the adversary stopped: {:?} {:?}",
                self.nodes[0],
                self.nodes[1]
            );
            self.advance(deadline);
        }
        assert!(
            self.data(0) && self.data(1),
            "packets stopped opening once the handshakes ended: {:?} {:?}",
            self.nodes[0],
            self.nodes[1]
        );
    }

    /// The adversary has stopped: a fair, lossless, in-order network.
    fn converge(&mut self) -> Duration {
        let start = self.now;
        let deadline = start + CONVERGE_WITHIN;
        loop {
            self.deliver_in_flight();
            if self.agreed() {
                let took = self.now - start;
                self.quiesce(start);
                return took;
            }
            assert!(
                self.now < deadline,
                "no agreement {CONVERGE_WITHIN:?} after the adversary stopped: {:?} {:?}",
                self.nodes[0],
                self.nodes[1]
            );
            self.advance(deadline);
        }
    }
}

/// Runs the script in `data` (see the module doc); panics when an invariant
/// breaks. The first byte's low bit swaps the two hosts' keys (which host
/// wins collisions).
pub fn kx_rotation(data: &[u8]) -> KxReached {
    let Some((&first, script)) = data.split_first() else {
        return KxReached::default();
    };
    let mut w = World::new(first & 1 == 1);
    for pair in script.chunks_exact(2).take(MAX_OPS) {
        w.step(pair[0], pair[1]);
    }
    w.reached.converged_after = w.converge();
    w.reached
}
