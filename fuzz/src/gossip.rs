//! The `gossip_rx` target: what a host's gossip port takes from the
//! network, datagrams on UDP 7946 and state snapshots on TCP 7946.
//!
//! Random bytes die at the AES-GCM tag, so the first input byte picks a
//! [`GossipMode`]: the rest is either taken as it arrived, or sealed first
//! under the member's own cluster key (a fixed nonce is fine here) so that
//! the SWIM (foca, postcard) and endpoint-record decoders behind the seal
//! see it. Each input meets a fresh [`Membership`], so a crash reproduces
//! from its input alone.
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use vxnet_control::gossip::endpoints::MAX_NETWORK_ID_LEN;
use vxnet_control::gossip::keyring::{
    Context, HEADER_LEN, NONCE_LEN, OVERHEAD, SealedHeader, WIRE_VERSION,
};
use vxnet_control::gossip::{
    DropReason, EndpointEvent, EndpointRecord, GossipConfig, GossipKey, KeyId, Keyring,
    MemberEvent, Membership, MembershipError, NodeIdentity, OpenError,
};

/// Fewest bytes one SWIM member takes in postcard: an empty node id (1),
/// gossip address (6), data address (5), port (1), public key (32),
/// generation (1). Every member a packet adds was spelled out in it.
const MIN_IDENTITY_LEN: usize = 46;
/// Fewest bytes of a piggybacked endpoint record: its u16 length and the
/// shortest emitted record (an empty network id, two IPv4 addresses).
const MIN_BROADCAST_RECORD_LEN: usize = 2 + 27;
/// Fewest bytes of an endpoint record in a snapshot (postcard): network id
/// (1), IP (5), MAC (6), VTEP (5), version (1), removed (1).
const MIN_SNAPSHOT_RECORD_LEN: usize = 19;

/// What the first byte of a `gossip_rx` input selects (its value mod 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GossipMode {
    /// The rest is a UDP datagram as it arrived: `handle_data`.
    Raw = 0,
    /// The rest is a SWIM message, sealed as a datagram: `handle_data`.
    Sealed = 1,
    /// The rest is one endpoint record: `EndpointRecord::parse`.
    Record = 2,
    /// The rest is a snapshot's plaintext, sealed: `merge_snapshot`.
    Snapshot = 3,
    /// The rest is a TCP snapshot as it arrived: `merge_snapshot`.
    RawSnapshot = 4,
}

impl GossipMode {
    fn of(byte: u8) -> Self {
        match byte % 5 {
            0 => Self::Raw,
            1 => Self::Sealed,
            2 => Self::Record,
            3 => Self::Snapshot,
            _ => Self::RawSnapshot,
        }
    }

    /// A `gossip_rx` input: the mode byte, then `rest`.
    pub fn input(self, rest: &[u8]) -> Vec<u8> {
        let mut v = vec![self as u8];
        v.extend_from_slice(rest);
        v
    }
}

/// The cluster key every member of the target's swarm holds.
pub fn gossip_key() -> GossipKey {
    GossipKey {
        id: KeyId(7),
        secret: [0x5a; 32],
    }
}

/// Member `i` of the target's swarm; the target itself is member 0.
pub fn gossip_identity(i: u8) -> NodeIdentity {
    NodeIdentity {
        node_id: format!("node{i}"),
        gossip_addr: SocketAddr::new(IpAddr::from([10, 0, 0, i + 1]), 7946),
        data_addr: IpAddr::from([192, 168, 0, i + 1]),
        data_port: 4789,
        public_key: [i + 1; 32],
        generation: 1,
    }
}

/// Member `i` as a fresh [`Membership`] (default config, deterministic
/// nonces), knowing nobody yet.
pub fn gossip_member(i: u8) -> Membership {
    Membership::new(
        gossip_identity(i),
        GossipConfig::default(),
        Keyring::with_primary(gossip_key()),
        [i; 32],
    )
}

/// How far one `gossip_rx` input got (for the seed test).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GossipReached {
    /// A datagram or snapshot opened under the cluster key.
    pub opened: bool,
    /// ...and was accepted (SWIM took it, the snapshot merged, the record
    /// parsed).
    pub accepted: bool,
    /// Members the target knows afterwards.
    pub members: usize,
    /// Endpoint records (live and tombstones) it knows afterwards.
    pub records: usize,
}

/// One input to the gossip port of member 0; see [`GossipMode`]. Nothing
/// panics; a datagram or snapshot that does not open changes nothing; what
/// opens grows the member and record tables by no more than it spells out;
/// no member has our address; every record we hold re-emits to bytes that
/// parse back to it; every datagram we answer with fits `max_datagram` and
/// opens; our snapshot after a merge carries the same state into a fresh
/// member.
pub fn gossip_rx(data: &[u8]) -> GossipReached {
    static START: OnceLock<Instant> = OnceLock::new();
    let now = *START.get_or_init(Instant::now);
    let Some((&mode, rest)) = data.split_first() else {
        return GossipReached::default();
    };
    let mut m = gossip_member(0);
    let ring = Keyring::with_primary(gossip_key());
    let seal = |context, plain: &[u8]| {
        ring.seal(context, [0; NONCE_LEN], plain)
            .expect("a primary key seals")
    };
    let mut reached = match GossipMode::of(mode) {
        GossipMode::Raw => {
            check_sealed_header(rest, &ring);
            datagram(&mut m, rest, now)
        }
        GossipMode::Sealed => {
            let r = datagram(&mut m, &seal(Context::Datagram, rest), now);
            assert!(r.opened, "sealed under our key, it opens");
            r
        }
        GossipMode::Record => return record(rest),
        GossipMode::Snapshot => {
            let r = snapshot(&mut m, &seal(Context::Snapshot, rest), now);
            assert!(r.opened, "sealed under our key, it opens");
            r
        }
        GossipMode::RawSnapshot => snapshot(&mut m, rest, now),
    };
    check_state(&mut m);
    reached.members = m.members().len();
    reached.records = m.endpoints().len() + m.tombstones();
    reached
}

/// Members, records and counters before an input, to compare after.
struct Before {
    members: Vec<NodeIdentity>,
    endpoints: Vec<EndpointRecord>,
    records: usize,
}

impl Before {
    fn of(m: &Membership) -> Self {
        Self {
            members: m.members(),
            endpoints: m.endpoints(),
            records: m.endpoints().len() + m.tombstones(),
        }
    }

    fn unchanged(&self, m: &Membership, what: &str) {
        assert_eq!(m.members(), self.members, "{what} changed the members");
        assert_eq!(m.endpoints(), self.endpoints, "{what} changed the records");
    }

    /// Growth is bounded by the plaintext: every new member and record was
    /// spelled out in it.
    fn bounded(&self, m: &Membership, plain_len: usize, record_len: usize) {
        let members = m.members().len().saturating_sub(self.members.len());
        assert!(
            members * MIN_IDENTITY_LEN <= plain_len,
            "{members} new members from {plain_len} bytes"
        );
        let records = (m.endpoints().len() + m.tombstones()).saturating_sub(self.records);
        assert!(
            records * record_len <= plain_len,
            "{records} new records from {plain_len} bytes"
        );
    }
}

/// A datagram into `handle_data`: exactly one counter moves, by the reason.
fn datagram(m: &mut Membership, packet: &[u8], now: Instant) -> GossipReached {
    let before = Before::of(m);
    let stats = m.stats().clone();
    let result = m.handle_data(packet, now);
    let after = m.stats();
    assert_eq!(after.tx_no_key, stats.tx_no_key, "we hold a primary key");
    let mut reached = GossipReached::default();
    match result {
        Ok(()) => {
            assert_eq!(after.rx_packets, stats.rx_packets + 1);
            assert_eq!(after.rx_dropped(), stats.rx_dropped());
            reached.opened = true;
            reached.accepted = true;
        }
        Err(DropReason::Malformed(_)) => {
            assert_eq!(after.rx_malformed, stats.rx_malformed + 1);
            assert_eq!(after.rx_packets, stats.rx_packets);
            reached.opened = true;
        }
        Err(DropReason::Open(e)) => {
            assert_eq!(after.rx_dropped(), stats.rx_dropped() + 1, "{e}");
            assert_eq!(after.rx_malformed, stats.rx_malformed);
            assert_eq!(after.rx_packets, stats.rx_packets);
            before.unchanged(m, "an unopened datagram");
        }
    }
    if reached.opened {
        before.bounded(m, packet.len() - OVERHEAD, MIN_BROADCAST_RECORD_LEN);
    }
    reached
}

/// A snapshot into `merge_snapshot`; what merged comes out of our own
/// snapshot into a fresh member again.
fn snapshot(m: &mut Membership, sealed: &[u8], now: Instant) -> GossipReached {
    let before = Before::of(m);
    let result = m.merge_snapshot(sealed, now);
    let mut reached = GossipReached {
        opened: !matches!(result, Err(MembershipError::SnapshotOpen(_))),
        ..GossipReached::default()
    };
    match result {
        Ok(()) => reached.accepted = true,
        Err(MembershipError::SnapshotOpen(_) | MembershipError::SnapshotDecode) => {
            before.unchanged(m, "a refused snapshot");
        }
        // foca stopped part way through the members; the records and the
        // members before that one are in.
        Err(MembershipError::Swim(_)) => {}
        Err(other) => panic!("merge_snapshot failed with {other:?}"),
    }
    if reached.opened {
        before.bounded(m, sealed.len() - OVERHEAD, MIN_SNAPSHOT_RECORD_LEN);
    }
    if reached.accepted {
        let ours = m.state_snapshot().expect("a primary key seals");
        let mut fresh = gossip_member(200);
        fresh
            .merge_snapshot(&ours, now)
            .expect("our own snapshot merges");
        assert_eq!(sorted(fresh.endpoints()), sorted(m.endpoints()));
        assert_eq!(fresh.tombstones(), m.tombstones());
        // Every member we know, but one at the fresh member's address (it
        // declares that one Down). We may be missing: a Down identity at
        // our address that wins foca's address conflict (a higher
        // generation, from a mutated peer state) is kept in our state and
        // replaces us at the receiver.
        let mut want: HashSet<NodeIdentity> = m.members().into_iter().collect();
        want.retain(|id| id.gossip_addr != fresh.identity().gossip_addr);
        let mut got: HashSet<NodeIdentity> = fresh.members().into_iter().collect();
        got.remove(m.identity());
        assert_eq!(got, want, "our snapshot carries our members");
    }
    reached
}

/// `EndpointRecord::parse` is strict: what parses re-emits to the same
/// bytes.
fn record(bytes: &[u8]) -> GossipReached {
    let Ok(r) = EndpointRecord::parse(bytes) else {
        return GossipReached::default();
    };
    assert!(r.is_valid());
    assert_eq!(r.emit(), bytes, "parse then emit gives the input back");
    GossipReached {
        accepted: true,
        records: 1,
        ..GossipReached::default()
    }
}

/// The sealed header's fields are where the layout says, and a packet that
/// opens seals back to itself under its own nonce.
fn check_sealed_header(packet: &[u8], ring: &Keyring) {
    match SealedHeader::parse(packet) {
        Ok(h) => {
            assert!(packet.len() >= OVERHEAD);
            assert_eq!(packet[0], WIRE_VERSION);
            assert_eq!(h.key_id.0.to_be_bytes(), packet[1..5]);
            assert_eq!(h.nonce, packet[5..HEADER_LEN]);
            if let Ok((plain, id)) = ring.open(Context::Datagram, packet) {
                assert_eq!(id, h.key_id);
                let again = ring.seal(Context::Datagram, h.nonce, &plain);
                assert_eq!(again.as_deref(), Ok(packet), "seal(open(p)) == p");
            }
        }
        Err(OpenError::Truncated) => assert!(packet.len() < OVERHEAD),
        Err(OpenError::BadVersion(v)) => assert_eq!((packet[0], v == WIRE_VERSION), (v, false)),
        Err(e) => panic!("the header parse returned {e}"),
    }
}

/// What holds after any input: no member has our address, records are in
/// range and round-trip, events name valid identities, answers fit and
/// open.
fn check_state(m: &mut Membership) {
    let us = m.identity().clone();
    for id in m.members() {
        assert_ne!(id.gossip_addr, us.gossip_addr, "a member with our address");
        // What the daemon programs VTEPs from; wire identities are checked.
        assert!(id.is_valid(), "an invalid member reported: {id:?}");
    }
    for r in m.endpoints() {
        assert!(r.network_id.len() <= MAX_NETWORK_ID_LEN);
        assert_eq!(EndpointRecord::parse(&r.emit()).as_ref(), Ok(&r));
    }
    while let Some(e) = m.poll_event() {
        match &e {
            MemberEvent::Up(id) | MemberEvent::Down(id) => assert!(id.is_valid(), "{e:?}"),
            MemberEvent::Updated { new, .. } => assert!(new.is_valid(), "{e:?}"),
            MemberEvent::Rejoined(_) | MemberEvent::Defunct => {}
        }
    }
    while let Some(e) = m.poll_endpoint_event() {
        let (EndpointEvent::Added(r) | EndpointEvent::Removed(r)) = &e;
        assert_eq!(EndpointRecord::parse(&r.emit()).as_ref(), Ok(r));
    }
    let ring = Keyring::with_primary(gossip_key());
    let max = GossipConfig::default().max_datagram;
    while let Some((_, packet)) = m.poll_transmit() {
        assert!(packet.len() <= max, "a {}-byte datagram", packet.len());
        assert!(ring.open(Context::Datagram, &packet).is_ok());
    }
    while m.poll_timer().is_some() {}
}

fn sorted(mut v: Vec<EndpointRecord>) -> Vec<EndpointRecord> {
    v.sort_by_key(|r| r.emit());
    v
}
