//! Gossip on a deterministic in-memory network with a virtual clock
//! (quinn `tests/util.rs`, nebula `e2e/router` style): several
//! `Membership`s, a packet queue with fixed latency, and timers, all
//! ordered by virtual time. A run of minutes takes milliseconds.
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use vxnet_control::gossip::keyring::{Context, SealedHeader};
use vxnet_control::gossip::{
    EndpointEvent, GossipConfig, GossipKey, KeyId, Keyring, MemberEvent, Membership, NodeIdentity,
    OpenError, TimerEvent,
};

const LATENCY: Duration = Duration::from_millis(2);
/// Bound on simulation steps per run, so a bug cannot spin forever.
const MAX_STEPS: usize = 2_000_000;

fn key(id: u32) -> GossipKey {
    GossipKey {
        id: KeyId(id),
        secret: [id as u8; 32],
    }
}

fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 0, 0, i as u8 + 1]), 7946)
}

fn identity(i: usize, generation: u32) -> NodeIdentity {
    NodeIdentity {
        node_id: format!("node{i}"),
        gossip_addr: gossip_addr(i),
        data_addr: IpAddr::from([192, 168, 0, i as u8 + 1]),
        data_port: 4789,
        public_key: [i as u8 + 1; 32],
        generation,
    }
}

fn seed(i: usize, generation: u32) -> [u8; 32] {
    let mut s = [0; 32];
    s[0] = i as u8;
    s[1..5].copy_from_slice(&generation.to_be_bytes());
    s
}

/// Tiny deterministic PRNG for the fuzz-style tests (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Node {
    m: Membership,
    running: bool,
    timers: Vec<(Instant, u64, TimerEvent)>,
    events: Vec<(Duration, MemberEvent)>,
    endpoint_events: Vec<EndpointEvent>,
}

struct Packet {
    at: Instant,
    seq: u64,
    to: SocketAddr,
    bytes: Vec<u8>,
}

struct Sim {
    start: Instant,
    now: Instant,
    seq: u64,
    nodes: Vec<Node>,
    in_flight: Vec<Packet>,
    /// Every packet sent, as (sender index, bytes), for inspection.
    sent_log: Vec<(usize, Vec<u8>)>,
    log_sent: bool,
}

impl Sim {
    fn new() -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            seq: 0,
            nodes: Vec::new(),
            in_flight: Vec::new(),
            sent_log: Vec::new(),
            log_sent: false,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Adds node `i` (index == position) with `keyring`.
    fn add_node(&mut self, generation: u32, keyring: Keyring) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            m: Membership::new(
                identity(i, generation),
                GossipConfig::default(),
                keyring,
                seed(i, generation),
            ),
            running: true,
            timers: Vec::new(),
            events: Vec::new(),
            endpoint_events: Vec::new(),
        });
        i
    }

    /// A cluster of `n` members under key 1, all joined through node 0.
    fn cluster(n: usize) -> Self {
        let mut sim = Self::new();
        for _ in 0..n {
            sim.add_node(1, Keyring::with_primary(key(1)));
        }
        for i in 1..n {
            sim.nodes[i].m.join(gossip_addr(0)).unwrap();
            sim.collect(i);
        }
        sim
    }

    /// Moves a node's outputs into the network and its timer list.
    fn collect(&mut self, i: usize) {
        let now = self.now;
        let elapsed = self.elapsed();
        let node = &mut self.nodes[i];
        while let Some((to, bytes)) = node.m.poll_transmit() {
            self.seq += 1;
            if self.log_sent {
                self.sent_log.push((i, bytes.clone()));
            }
            self.in_flight.push(Packet {
                at: now + LATENCY,
                seq: self.seq,
                to,
                bytes,
            });
        }
        while let Some((delay, event)) = node.m.poll_timer() {
            self.seq += 1;
            node.timers.push((now + delay, self.seq, event));
        }
        while let Some(event) = node.m.poll_event() {
            node.events.push((elapsed, event));
        }
        while let Some(event) = node.m.poll_endpoint_event() {
            node.endpoint_events.push(event);
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.m.identity().gossip_addr == addr && n.running)
    }

    /// Runs the earliest pending action; false when nothing is pending
    /// before `deadline`.
    fn step(&mut self, deadline: Instant) -> bool {
        let next_packet = self
            .in_flight
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| (p.at, p.seq))
            .map(|(k, p)| (p.at, p.seq, k));
        let next_timer = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.running)
            .flat_map(|(i, n)| {
                n.timers
                    .iter()
                    .enumerate()
                    .map(move |(k, t)| (t.0, t.1, i, k))
            })
            .min_by_key(|&(at, seq, _, _)| (at, seq));
        let packet_first = match (next_packet, next_timer) {
            (None, None) => return false,
            (Some(p), Some(t)) => (p.0, p.1) < (t.0, t.1),
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if packet_first {
            let (at, _, k) = next_packet.unwrap();
            if at > deadline {
                return false;
            }
            self.now = at;
            let packet = self.in_flight.swap_remove(k);
            if let Some(i) = self.index_of(packet.to) {
                let now = self.now;
                let _ = self.nodes[i].m.handle_data(&packet.bytes, now);
                self.collect(i);
            }
        } else {
            let (at, _, i, k) = next_timer.unwrap();
            if at > deadline {
                return false;
            }
            self.now = at;
            let (_, _, event) = self.nodes[i].timers.swap_remove(k);
            let now = self.now;
            self.nodes[i].m.handle_timer(event, now);
            self.collect(i);
        }
        true
    }

    fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        for _ in 0..MAX_STEPS {
            if !self.step(deadline) {
                self.now = deadline;
                return;
            }
        }
        panic!("simulation did not settle within {MAX_STEPS} steps");
    }

    /// Runs until `done` holds (checked after every step) or `limit`
    /// passes; returns the virtual time it took.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        let deadline = start + limit;
        for _ in 0..MAX_STEPS {
            if done(self) {
                return Some(self.now - start);
            }
            if !self.step(deadline) {
                return done(self).then(|| self.now - start);
            }
        }
        panic!("simulation did not settle within {MAX_STEPS} steps");
    }

    /// Stops a node dead: no more timers, packets to it are lost.
    fn kill(&mut self, i: usize) {
        self.nodes[i].running = false;
        self.nodes[i].timers.clear();
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate().filter(|(_, n)| n.running)
    }

    fn converged(&self) -> bool {
        let live: Vec<NodeIdentity> = self
            .running()
            .map(|(_, n)| n.m.identity().clone())
            .collect();
        self.running().all(|(_, n)| {
            let mut members = n.m.members();
            members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            let mut expected: Vec<_> = live
                .iter()
                .filter(|id| *id != n.m.identity())
                .cloned()
                .collect();
            expected.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            members == expected
        })
    }
}

fn converge(n: usize) -> Sim {
    let mut sim = Sim::cluster(n);
    let took = sim.run_until(Duration::from_secs(10), Sim::converged);
    assert!(took.is_some(), "{n} members did not converge in 10 s");
    sim
}

#[test]
fn members_converge_and_learn_each_others_identity() {
    for n in 3..=5 {
        let sim = converge(n);
        for (i, node) in sim.nodes.iter().enumerate() {
            let members = node.m.members();
            assert_eq!(members.len(), n - 1, "node {i}");
            for j in (0..n).filter(|&j| j != i) {
                assert!(members.contains(&identity(j, 1)), "{i} lacks {j}");
                assert!(
                    node.events
                        .iter()
                        .any(|(_, e)| *e == MemberEvent::Up(identity(j, 1))),
                    "{i} had no Up for {j}"
                );
            }
            assert_eq!(node.m.stats().rx_dropped(), 0);
        }
    }
}

/// Kills `victim` after a steady period; asserts every other member
/// reports it Down within 5 s and returns the slowest member's time.
fn kill_and_detect(sim: &mut Sim, victim: usize) -> Duration {
    sim.run_for(Duration::from_secs(3));
    let killed_at = sim.elapsed();
    sim.kill(victim);
    let down = MemberEvent::Down(identity(victim, 1));
    let took = sim.run_until(Duration::from_secs(5), |s| {
        s.running()
            .all(|(_, n)| n.events.iter().any(|(_, e)| *e == down))
    });
    assert!(
        took.is_some(),
        "victim {victim}: someone missed the Down in 5 s"
    );
    let mut slowest = Duration::ZERO;
    for (i, node) in sim.running() {
        let at = node
            .events
            .iter()
            .find(|(_, e)| *e == down)
            .map(|(t, _)| *t - killed_at)
            .unwrap();
        assert!(at <= Duration::from_secs(5), "node {i} after {at:?}");
        assert!(!node.m.members().contains(&identity(victim, 1)));
        slowest = slowest.max(at);
    }
    slowest
}

#[test]
fn any_dead_member_is_down_everywhere_within_5s() {
    for n in [3, 5] {
        for victim in 0..n {
            let mut sim = converge(n);
            let slowest = kill_and_detect(&mut sim, victim);
            eprintln!("n={n} victim={victim}: Down everywhere after {slowest:?}");
        }
    }
}

#[test]
fn dead_member_rejoins_as_new_generation() {
    let n = 5;
    let mut sim = converge(n);
    let victim = 4;
    let ip: IpAddr = "10.30.0.4".parse().unwrap();
    let vtep = identity(victim, 1).data_addr;
    let first = sim.nodes[victim]
        .m
        .announce_endpoint("n", ip, [2, 0, 0, 0, 0, 1], vtep)
        .unwrap();
    sim.collect(victim);
    kill_and_detect(&mut sim, victim);
    // What the daemon withdraws from its dataplane on Down.
    for (i, node) in sim.running() {
        assert_eq!(node.m.endpoints_at(vtep), vec![first.clone()], "node {i}");
    }

    // The host comes back: a new process, next generation, joins node 0.
    sim.nodes[victim] = Node {
        m: Membership::new(
            identity(victim, 2),
            GossipConfig::default(),
            Keyring::with_primary(key(1)),
            seed(victim, 2),
        ),
        running: true,
        timers: Vec::new(),
        events: Vec::new(),
        endpoint_events: Vec::new(),
    };
    sim.nodes[victim].m.join(gossip_addr(0)).unwrap();
    sim.collect(victim);
    let up = MemberEvent::Up(identity(victim, 2));
    let took = sim.run_until(Duration::from_secs(5), |s| {
        s.converged()
            && s.running()
                .filter(|(i, _)| *i != victim)
                .all(|(_, n)| n.events.iter().any(|(_, e)| *e == up))
    });
    assert!(took.is_some(), "rejoined node not Up everywhere in 5 s");
    // The restarted host re-announces its endpoint before hearing its old
    // record back: its new generation's version still wins everywhere.
    let again = sim.nodes[victim]
        .m
        .announce_endpoint("n", ip, [2, 0, 0, 0, 0, 2], vtep)
        .unwrap();
    sim.collect(victim);
    assert!(again.version > first.version);
    let spread = sim.run_until(Duration::from_secs(3), |s| {
        s.nodes
            .iter()
            .all(|n| n.m.endpoints() == vec![again.clone()])
    });
    assert!(spread.is_some(), "restarted host's record lost");
    for (i, node) in sim.running().filter(|(i, _)| *i != victim) {
        assert!(
            node.events.iter().any(|(_, e)| *e
                == MemberEvent::Updated {
                    old: identity(victim, 1),
                    new: identity(victim, 2)
                }),
            "node {i} saw no Updated"
        );
    }
}

#[test]
fn silent_member_rejoins_by_itself_after_a_partition() {
    let mut sim = converge(3);
    // Node 2 is cut off (its process keeps running) long enough to be
    // declared Down, then the partition heals.
    let victim = 2;
    sim.nodes[victim].running = false;
    let saved = std::mem::take(&mut sim.nodes[victim].timers);
    let down = MemberEvent::Down(identity(victim, 1));
    assert!(
        sim.run_until(Duration::from_secs(5), |s| s
            .running()
            .all(|(_, n)| n.events.iter().any(|(_, e)| *e == down)))
            .is_some()
    );
    // Its timers fire late, as after a long pause; it learns it is Down,
    // renews its identity (generation 2) and is Up again everywhere.
    sim.nodes[victim].running = true;
    sim.nodes[victim].timers = saved
        .into_iter()
        .map(|(_, seq, e)| (sim.now, seq, e))
        .collect();
    let up = MemberEvent::Up(identity(victim, 2));
    let took = sim.run_until(Duration::from_secs(15), |s| {
        s.running()
            .filter(|(i, _)| *i != victim)
            .all(|(_, n)| n.events.iter().any(|(_, e)| *e == up))
    });
    assert!(took.is_some(), "partitioned node did not come back");
    assert!(
        sim.nodes[victim]
            .events
            .iter()
            .any(|(_, e)| *e == MemberEvent::Rejoined(identity(victim, 2)))
    );
}

#[test]
fn endpoint_records_spread_update_and_tombstone() {
    let mut sim = converge(4);
    let net = "net-a";
    let ip: IpAddr = "10.10.0.2".parse().unwrap();
    let mac = [2, 0, 0, 0, 0, 2];
    let vtep1 = identity(1, 1).data_addr;
    let rec = sim.nodes[1]
        .m
        .announce_endpoint(net, ip, mac, vtep1)
        .unwrap();
    assert_eq!(rec.version, 1 << 32, "generation 1 in the high half");
    sim.collect(1);
    let spread = sim.run_until(Duration::from_secs(3), |s| {
        s.nodes.iter().all(|n| n.m.endpoints() == vec![rec.clone()])
    });
    assert!(spread.is_some(), "record did not reach everyone");
    for (i, node) in sim.nodes.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(
            node.endpoint_events,
            vec![EndpointEvent::Added(rec.clone())],
            "node {i}"
        );
        assert_eq!(node.m.endpoints_at(vtep1), vec![rec.clone()]);
    }
    assert!(sim.nodes[1].endpoint_events.is_empty(), "own record echoed");

    // The endpoint moves to node 3: a newer version, wins everywhere.
    let vtep3 = identity(3, 1).data_addr;
    let moved = sim.nodes[3]
        .m
        .announce_endpoint(net, ip, mac, vtep3)
        .unwrap();
    assert_eq!(moved.version, rec.version + 1);
    sim.collect(3);
    assert!(
        sim.run_until(Duration::from_secs(3), |s| s
            .nodes
            .iter()
            .all(|n| n.m.endpoints() == vec![moved.clone()]))
            .is_some()
    );
    assert!(
        sim.nodes[0]
            .endpoint_events
            .contains(&EndpointEvent::Added(moved.clone()))
    );

    // Removal: gone everywhere, remembered as a tombstone.
    let gone = sim.nodes[3].m.withdraw_endpoint(net, ip).unwrap();
    sim.collect(3);
    assert!(gone.removed);
    assert!(
        sim.run_until(Duration::from_secs(3), |s| s
            .nodes
            .iter()
            .all(|n| n.m.endpoints().is_empty()))
            .is_some()
    );
    for node in &sim.nodes {
        assert_eq!(node.m.tombstones(), 1);
    }
    assert_eq!(
        sim.nodes[0].endpoint_events.last(),
        Some(&EndpointEvent::Removed(moved.clone()))
    );

    // A late joiner syncs the full state over "TCP" (snapshot exchange).
    let late = sim.add_node(1, Keyring::with_primary(key(1)));
    let live = sim.nodes[0]
        .m
        .announce_endpoint("net-b", "10.20.0.5".parse().unwrap(), mac, vtep3)
        .unwrap();
    sim.collect(0);
    sim.nodes[late].m.join(gossip_addr(0)).unwrap();
    let snapshot = sim.nodes[0].m.state_snapshot().unwrap();
    let now = sim.now;
    sim.nodes[late].m.merge_snapshot(&snapshot, now).unwrap();
    sim.collect(late);
    assert_eq!(sim.nodes[late].m.endpoints(), vec![live.clone()]);
    assert_eq!(sim.nodes[late].m.tombstones(), 1, "tombstone synced too");
    assert!(
        sim.run_until(Duration::from_secs(5), Sim::converged)
            .is_some()
    );
    // A snapshot does not open as a datagram (context is authenticated).
    assert!(sim.nodes[1].m.handle_data(&snapshot, now).is_err());

    // Tombstones expire after the TTL.
    sim.run_for(GossipConfig::default().tombstone_ttl + Duration::from_secs(1));
    assert_eq!(sim.nodes[0].m.tombstones(), 0);
    assert_eq!(sim.nodes[0].m.endpoints(), vec![live]);
}

#[test]
fn key_rotation_during_gossip_loses_nothing() {
    let n = 4;
    let mut sim = converge(n);
    let step = Duration::from_millis(700);
    // Each step reaches the nodes one at a time while gossip runs.
    for i in 0..n {
        sim.nodes[i].m.install_key(key(2)).unwrap();
        sim.run_for(step);
    }
    // While the primary switch spreads, both keys are on the wire.
    sim.log_sent = true;
    for i in 0..n {
        sim.nodes[i].m.set_primary(KeyId(2)).unwrap();
        sim.run_for(step);
    }
    let used: std::collections::BTreeSet<KeyId> = sim
        .sent_log
        .drain(..)
        .map(|(_, p)| SealedHeader::parse(&p).unwrap().key_id)
        .collect();
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        vec![KeyId(1), KeyId(2)]
    );
    sim.log_sent = false;
    for i in 0..n {
        sim.nodes[i].m.remove_key(KeyId(1)).unwrap();
        sim.run_for(step);
    }
    sim.log_sent = true;
    sim.run_for(Duration::from_secs(3));
    for (i, node) in sim.nodes.iter().enumerate() {
        assert_eq!(node.m.stats().rx_dropped(), 0, "node {i} dropped packets");
        assert!(
            !node
                .events
                .iter()
                .any(|(_, e)| matches!(e, MemberEvent::Down(_))),
            "node {i} saw a Down during rotation"
        );
        assert_eq!(node.m.keyring().key_ids(), vec![KeyId(2)]);
    }
    assert!(sim.converged());
    assert!(!sim.sent_log.is_empty());
    for (_, packet) in &sim.sent_log {
        assert_eq!(SealedHeader::parse(packet).unwrap().key_id, KeyId(2));
    }
}

#[test]
fn switching_primary_before_install_drops_and_counts() {
    // The negative control for the rotation order above.
    let mut sim = converge(3);
    sim.nodes[0].m.install_key(key(2)).unwrap();
    sim.nodes[0].m.set_primary(KeyId(2)).unwrap();
    sim.run_for(Duration::from_secs(1));
    let unknown: u64 = sim.nodes[1..]
        .iter()
        .map(|n| n.m.stats().rx_unknown_key)
        .sum();
    assert!(unknown > 0, "premature switch went unnoticed");
}

#[test]
fn bad_packets_are_dropped_and_counted() {
    let mut sim = converge(3);
    let now = sim.now;
    // A genuine packet from node 1, captured.
    let plain = b"not swim, but sealed";
    let good = Keyring::with_primary(key(1))
        .seal(Context::Datagram, [7; 12], plain)
        .unwrap();
    let node = &mut sim.nodes[0].m;
    let before = node.stats().clone();

    let foreign = Keyring::with_primary(key(9))
        .seal(Context::Datagram, [7; 12], plain)
        .unwrap();
    assert!(node.handle_data(&foreign, now).is_err());
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(node.handle_data(&tampered, now).is_err());
    assert!(node.handle_data(&good[..10], now).is_err());
    let mut bad_version = good.clone();
    bad_version[0] = 0xff;
    assert!(node.handle_data(&bad_version, now).is_err());
    // Sealed with the right key, but not a SWIM message.
    assert!(node.handle_data(&good, now).is_err());

    let after = node.stats();
    assert_eq!(after.rx_unknown_key, before.rx_unknown_key + 1);
    assert_eq!(after.rx_auth_failed, before.rx_auth_failed + 1);
    assert_eq!(after.rx_truncated, before.rx_truncated + 1);
    assert_eq!(after.rx_bad_version, before.rx_bad_version + 1);
    assert_eq!(after.rx_malformed, before.rx_malformed + 1);
    assert_eq!(after.rx_packets, before.rx_packets);

    // The cluster is unharmed.
    sim.run_for(Duration::from_secs(3));
    assert!(sim.converged());
    assert_eq!(sim.nodes[1].m.members().len(), 2);
    let e = Keyring::with_primary(key(1)).open(Context::Datagram, &foreign);
    assert_eq!(e, Err(OpenError::UnknownKey(KeyId(9))));
}

#[test]
fn fuzz_handle_data_never_panics() {
    let mut sim = converge(3);
    // Capture real sealed SWIM traffic to mutate.
    sim.log_sent = true;
    sim.run_for(Duration::from_secs(2));
    let captured: Vec<Vec<u8>> = sim.sent_log.iter().map(|(_, p)| p.clone()).collect();
    assert!(!captured.is_empty());
    let ring = Keyring::with_primary(key(1));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let now = sim.now;
    let target = &mut sim.nodes[0].m;
    let accepted_before = target.stats().rx_packets;
    for round in 0..20_000u32 {
        let len = (rng.next() % 1500) as usize;
        let packet = match round % 4 {
            // Pure noise.
            0 => rng.bytes(len),
            // A real packet with a few bits flipped or cut short.
            1 => {
                let mut p = captured[rng.next() as usize % captured.len()].clone();
                for _ in 0..1 + rng.next() % 4 {
                    let at = rng.next() as usize % p.len();
                    p[at] ^= 1 << (rng.next() % 8);
                }
                p.truncate(rng.next() as usize % (p.len() + 1));
                p
            }
            // Authenticated noise: exercises the SWIM and record decoders.
            2 => ring
                .seal(
                    Context::Datagram,
                    rng.bytes(12).try_into().unwrap(),
                    &rng.bytes(len),
                )
                .unwrap(),
            // Authenticated, mutated real plaintext.
            _ => {
                let p = &captured[rng.next() as usize % captured.len()];
                let (mut plain, _) = ring.open(Context::Datagram, p).unwrap();
                if !plain.is_empty() {
                    for _ in 0..1 + rng.next() % 3 {
                        let at = rng.next() as usize % plain.len();
                        plain[at] = rng.next() as u8;
                    }
                    plain.truncate(rng.next() as usize % (plain.len() + 1));
                }
                ring.seal(Context::Datagram, rng.bytes(12).try_into().unwrap(), &plain)
                    .unwrap()
            }
        };
        let _ = target.handle_data(&packet, now);
    }
    let stats = target.stats().clone();
    assert!(stats.rx_dropped() > 10_000, "{stats:?}");
    assert!(
        stats.rx_auth_failed > 0 && stats.rx_malformed > 0,
        "{stats:?}"
    );
    // Whatever slipped through was valid SWIM; the cluster still works.
    assert!(stats.rx_packets >= accepted_before);
    sim.run_for(Duration::from_secs(5));
    assert!(sim.converged());
}

#[test]
fn leaving_member_is_down_at_once_and_defunct() {
    let mut sim = converge(4);
    let leaver = 3;
    let start = sim.elapsed();
    sim.nodes[leaver].m.leave().unwrap();
    sim.collect(leaver);
    assert!(
        sim.nodes[leaver]
            .events
            .iter()
            .any(|(_, e)| *e == MemberEvent::Defunct)
    );
    let down = MemberEvent::Down(identity(leaver, 1));
    let took = sim.run_until(Duration::from_secs(5), |s| {
        s.nodes[..leaver]
            .iter()
            .all(|n| n.events.iter().any(|(_, e)| *e == down))
    });
    let took = took.expect("leave not seen everywhere");
    // Announced, not detected: much faster than a failure.
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} from {start:?}"
    );
}

#[test]
fn tampered_or_foreign_snapshot_is_refused() {
    let mut sim = converge(3);
    let mac = [2, 0, 0, 0, 0, 9];
    let vtep = identity(0, 1).data_addr;
    sim.nodes[0]
        .m
        .announce_endpoint("n", "10.1.0.9".parse().unwrap(), mac, vtep)
        .unwrap();
    let snapshot = sim.nodes[0].m.state_snapshot().unwrap();
    let now = sim.now;
    let mut fresh = Membership::new(
        identity(7, 1),
        GossipConfig::default(),
        Keyring::with_primary(key(1)),
        seed(7, 1),
    );
    let mut bad = snapshot.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(fresh.merge_snapshot(&bad, now).is_err());
    assert!(fresh.merge_snapshot(&snapshot[..20], now).is_err());
    let mut other = Membership::new(
        identity(8, 1),
        GossipConfig::default(),
        Keyring::with_primary(key(5)),
        seed(8, 1),
    );
    assert!(other.merge_snapshot(&snapshot, now).is_err());
    assert_eq!(other.stats().rx_unknown_key, 1);
    // Authenticated garbage inside the seal is refused too.
    let garbage = Keyring::with_primary(key(1))
        .seal(Context::Snapshot, [1; 12], &[0xff; 64])
        .unwrap();
    assert!(fresh.merge_snapshot(&garbage, now).is_err());
    assert!(fresh.endpoints().is_empty() && fresh.members().is_empty());
    assert_eq!(fresh.stats().rx_auth_failed, 1);
    assert_eq!(fresh.stats().rx_truncated, 1);
    // The genuine one merges: members and records.
    fresh.merge_snapshot(&snapshot, now).unwrap();
    assert_eq!(fresh.endpoints().len(), 1);
    assert_eq!(fresh.members().len(), 3);
}
