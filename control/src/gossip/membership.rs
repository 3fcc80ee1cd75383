//! The sans-IO membership driver: foca's SWIM state machine plus sealing
//! of every packet and the endpoint-record table.
//!
//! This module owns [`Membership`]. It takes bytes and time in and hands
//! out datagrams to send, timers to arm and events; the daemon owns the
//! UDP/TCP sockets on port 7946 and the clock.
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, PeriodicParams, PostcardCodec};
use rand::RngCore;
use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::endpoints::{
    EndpointBroadcasts, EndpointEvent, EndpointRecord, EndpointTable, MAX_NETWORK_ID_LEN, lock,
};
use super::identity::NodeIdentity;
use super::keyring::{
    Context, GossipKey, KeyId, Keyring, KeyringError, NONCE_LEN, OVERHEAD, OpenError,
};

/// Timing and size knobs.
///
/// The defaults declare a dead host Down within 5 seconds on a LAN
/// cluster of a few to a few dozen hosts:
///
/// - every `probe_period` (500 ms) each member pings the next member of
///   its shuffled round-robin list; with N members a dead host is probed
///   by someone in the first period with probability 1 - (1 - 1/(N-1))^(N-1)
///   (above 60 %), and by everyone within N-1 periods;
/// - no ack in `probe_rtt` (200 ms) starts indirect pings through
///   `num_indirect_probes` (3) members; no ack by the period's end makes it
///   Suspect, gossiped every `gossip_every` (200 ms);
/// - a Suspect that does not refute within `suspect_to_down_after` (1.5 s)
///   is declared Down and that is gossiped too.
///
/// So detection takes about 2 s typically (0.5 s to the first probe, 0.5 s
/// probe, 1.5 s suspicion, a few hundred ms of gossip); the simulated
/// network tests check the 5 s bound on every member.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// How often a member is probed.
    pub probe_period: Duration,
    /// Direct-ack wait before indirect probes (< `probe_period`).
    pub probe_rtt: Duration,
    /// Members asked to ping a silent member on our behalf.
    pub num_indirect_probes: usize,
    /// How long a Suspect member has to refute before it is Down.
    pub suspect_to_down_after: Duration,
    /// How often updates are pushed to `gossip_fanout` random members.
    pub gossip_every: Duration,
    /// Members each periodic gossip goes to.
    pub gossip_fanout: usize,
    /// How often we ask a random member for members we don't know yet.
    pub announce_every: Duration,
    /// How often we knock on Down members' door, so partitions heal.
    pub announce_to_down_every: Duration,
    /// How many times one update is piggybacked.
    pub max_transmissions: u8,
    /// How long a Down identity is remembered (its generation must change
    /// to come back before then; ours does, by itself).
    pub remove_down_after: Duration,
    /// Largest sealed datagram we send or accept (under the path MTU).
    pub max_datagram: usize,
    /// How long an endpoint removal is remembered.
    pub tombstone_ttl: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            num_indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(1500),
            gossip_every: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_every: Duration::from_secs(10),
            announce_to_down_every: Duration::from_secs(5),
            max_transmissions: 8,
            remove_down_after: Duration::from_secs(3600),
            max_datagram: 1400,
            // Docker's networkdb reaps deleted entries after 30 minutes.
            tombstone_ttl: Duration::from_secs(30 * 60),
        }
    }
}

impl GossipConfig {
    fn to_foca(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.num_indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: self.remove_down_after,
            // Leave room for the seal so a full foca packet still fits.
            max_packet_size: nz(self.max_datagram.saturating_sub(OVERHEAD)),
            notify_down_members: true,
            periodic_announce: Some(PeriodicParams {
                frequency: self.announce_every,
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(PeriodicParams {
                frequency: self.announce_to_down_every,
                num_members: NonZeroUsize::MIN,
            }),
            periodic_gossip: Some(PeriodicParams {
                frequency: self.gossip_every,
                num_members: nz(self.gossip_fanout),
            }),
        }
    }
}

/// An opaque timer: hand it back to [`Membership::handle_timer`] after
/// the delay [`Membership::poll_timer`] gave with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerEvent(foca::Timer<NodeIdentity>);

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member is alive (joined, or came back).
    Up(NodeIdentity),
    /// A member was declared dead or left: withdraw its endpoints.
    Down(NodeIdentity),
    /// A member replaced its identity (restart with a new generation,
    /// new key or address); an `Up(new)` follows if it was Down.
    Updated {
        /// The identity we knew.
        old: NodeIdentity,
        /// The identity that replaced it.
        new: NodeIdentity,
    },
    /// We were declared Down and rejoined as a new generation.
    Rejoined(NodeIdentity),
    /// We are Down in everyone's eyes and will not rejoin (after
    /// [`Membership::leave`], or generation exhausted).
    Defunct,
}

/// Why a received packet was dropped. Each has a counter in
/// [`GossipStats`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// The seal could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Opened fine but foca refused the payload (malformed, too big,
    /// from ourselves, bad endpoint record).
    #[error("malformed gossip payload: {0}")]
    Malformed(String),
}

/// Counters, by reason. Exported by the daemon as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Packets sealed and queued for sending.
    pub tx_packets: u64,
    /// Packets opened and handed to SWIM.
    pub rx_packets: u64,
    /// Dropped: shorter than header and tag.
    pub rx_truncated: u64,
    /// Dropped: unknown format version.
    pub rx_bad_version: u64,
    /// Dropped: sealed under a key we don't hold.
    pub rx_unknown_key: u64,
    /// Dropped: tag check failed (tampered or forged).
    pub rx_auth_failed: u64,
    /// Dropped: opened, but the SWIM payload was malformed.
    pub rx_malformed: u64,
    /// Not sent: no primary key.
    pub tx_no_key: u64,
}

impl GossipStats {
    fn count_open_error(&mut self, e: OpenError) {
        match e {
            OpenError::Truncated => self.rx_truncated += 1,
            OpenError::BadVersion(_) => self.rx_bad_version += 1,
            OpenError::UnknownKey(_) => self.rx_unknown_key += 1,
            OpenError::AuthFailed => self.rx_auth_failed += 1,
        }
    }

    /// All packets dropped on receive.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_truncated
            + self.rx_bad_version
            + self.rx_unknown_key
            + self.rx_auth_failed
            + self.rx_malformed
    }
}

/// Errors of calls the daemon makes (not of wire input).
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Keyring management refused the change.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Network id longer than the wire format carries.
    #[error("network id longer than {MAX_NETWORK_ID_LEN} bytes")]
    NetworkIdTooLong,
    /// A snapshot could not be opened.
    #[error("snapshot: {0}")]
    SnapshotOpen(#[from] OpenError),
    /// A snapshot opened but did not decode.
    #[error("snapshot does not decode")]
    SnapshotDecode,
    /// The keyring has no primary key to seal with.
    #[error("no primary key installed")]
    NoPrimaryKey,
    /// foca refused the operation.
    #[error("swim: {0}")]
    Swim(String),
}

/// What a full-state sync carries (plaintext inside the seal).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    members: Vec<Member<NodeIdentity>>,
    endpoints: Vec<EndpointRecord>,
}

type Swim = Foca<NodeIdentity, PostcardCodec, ChaCha12Rng, EndpointBroadcasts>;

/// One host's view of the swarm.
///
/// Drive it like a quinn `Connection`: feed `handle_data` with every
/// datagram from UDP 7946 and `handle_timer` with every timer when it is
/// due, and after each call drain `poll_transmit`, `poll_timer`,
/// `poll_event` and `poll_endpoint_event`.
pub struct Membership {
    swim: Swim,
    runtime: AccumulatingRuntime<NodeIdentity>,
    keyring: Keyring,
    /// Nonces for sealing; a separate stream from foca's own choices.
    nonce_rng: ChaCha12Rng,
    table: Arc<Mutex<EndpointTable>>,
    config: GossipConfig,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    timers: VecDeque<(Duration, TimerEvent)>,
    events: VecDeque<MemberEvent>,
    stats: GossipStats,
}

impl core::fmt::Debug for Membership {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Membership")
            .field("identity", self.swim.identity())
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A member that knows nobody yet. `seed` must come from the OS RNG
    /// (it seeds the nonces; reusing it with the same key reuses nonces).
    pub fn new(
        identity: NodeIdentity,
        config: GossipConfig,
        keyring: Keyring,
        seed: [u8; 32],
    ) -> Self {
        let mut nonce_rng = ChaCha12Rng::from_seed(seed);
        let mut swim_seed = [0; 32];
        nonce_rng.fill_bytes(&mut swim_seed);
        let handler = EndpointBroadcasts::new();
        let table = Arc::clone(&handler.table);
        let swim = Foca::with_custom_broadcast(
            identity,
            config.to_foca(),
            ChaCha12Rng::from_seed(swim_seed),
            PostcardCodec,
            handler,
        );
        Self {
            swim,
            runtime: AccumulatingRuntime::new(),
            keyring,
            nonce_rng,
            table,
            config,
            transmits: VecDeque::new(),
            timers: VecDeque::new(),
            events: VecDeque::new(),
            stats: GossipStats::default(),
        }
    }

    /// Our current identity (its generation moves on after a rejoin).
    pub fn identity(&self) -> &NodeIdentity {
        self.swim.identity()
    }

    /// Asks the member at `seed` (its gossip address) to let us in.
    pub fn join(&mut self, seed: SocketAddr) -> Result<(), MembershipError> {
        let result = self
            .swim
            .announce(NodeIdentity::seed(seed), &mut self.runtime);
        self.drain();
        result.map_err(|e| MembershipError::Swim(e.to_string()))
    }

    /// Handles one datagram received on the gossip port.
    pub fn handle_data(&mut self, packet: &[u8], now: Instant) -> Result<(), DropReason> {
        self.tick(now);
        let plain = match self.keyring.open(Context::Datagram, packet) {
            Ok((plain, _key)) => plain,
            Err(e) => {
                self.stats.count_open_error(e);
                return Err(e.into());
            }
        };
        let result = self.swim.handle_data(&plain, &mut self.runtime);
        self.drain();
        match result {
            Ok(()) => {
                self.stats.rx_packets += 1;
                Ok(())
            }
            Err(e) => {
                self.stats.rx_malformed += 1;
                Err(DropReason::Malformed(e.to_string()))
            }
        }
    }

    /// Handles a timer that is due.
    pub fn handle_timer(&mut self, event: TimerEvent, now: Instant) {
        self.tick(now);
        // foca errors here only on internal inconsistencies it recovers
        // from by itself (a stale token); nothing for the daemon to do.
        let _ = self.swim.handle_timer(event.0, &mut self.runtime);
        self.drain();
    }

    /// Next datagram to send: (gossip address, sealed bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// Next timer to arm: hand `event` back after `delay` from now.
    pub fn poll_timer(&mut self) -> Option<(Duration, TimerEvent)> {
        self.timers.pop_front()
    }

    /// Next membership change.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// Next change in remote endpoints (our own announcements are not
    /// reported back).
    pub fn poll_endpoint_event(&mut self) -> Option<EndpointEvent> {
        lock(&self.table).poll_event()
    }

    /// Active members, ourselves excluded.
    pub fn members(&self) -> Vec<NodeIdentity> {
        // As for events: an identity from the wire that is not valid (an
        // empty node id, say) never reaches the daemon. foca may still hold
        // it (its decoder cannot refuse it: a join's seed identity has an
        // empty id) until it probes it Down.
        self.swim
            .iter_members()
            .map(|m| m.id())
            .filter(|id| id.is_valid())
            .cloned()
            .collect()
    }

    /// Leaves the swarm: tells a few members we are Down. The instance is
    /// defunct afterwards; make a new one (next generation) to come back.
    pub fn leave(&mut self) -> Result<(), MembershipError> {
        let result = self.swim.leave_cluster(&mut self.runtime);
        self.drain();
        result.map_err(|e| MembershipError::Swim(e.to_string()))
    }

    /// Counters.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// The keyring, for inspection.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Rotation step 1: accept packets under `key` too.
    pub fn install_key(&mut self, key: GossipKey) -> Result<(), MembershipError> {
        Ok(self.keyring.install_key(key)?)
    }

    /// Rotation step 2: seal new packets under `id`.
    pub fn set_primary(&mut self, id: KeyId) -> Result<(), MembershipError> {
        Ok(self.keyring.set_primary(id)?)
    }

    /// Rotation step 3: stop accepting packets under `id`.
    pub fn remove_key(&mut self, id: KeyId) -> Result<(), MembershipError> {
        Ok(self.keyring.remove_key(id)?)
    }

    /// Announces that a local endpoint lives here (at `vtep`, normally our
    /// `data_addr`), or moved; returns the record as spread.
    ///
    /// The version is one past the newest we know for (network, IP) and at
    /// least `generation << 32`: with the generation taken from the start
    /// time (or a persisted counter), a restarted host's records win.
    pub fn announce_endpoint(
        &mut self,
        network_id: &str,
        ip: IpAddr,
        mac: [u8; 6],
        vtep: IpAddr,
    ) -> Result<EndpointRecord, MembershipError> {
        self.publish(network_id, ip, mac, vtep, false)
    }

    /// Announces that a local endpoint is gone.
    pub fn withdraw_endpoint(
        &mut self,
        network_id: &str,
        ip: IpAddr,
    ) -> Result<EndpointRecord, MembershipError> {
        let vtep = self.identity().data_addr;
        self.publish(network_id, ip, [0; 6], vtep, true)
    }

    fn publish(
        &mut self,
        network_id: &str,
        ip: IpAddr,
        mac: [u8; 6],
        vtep: IpAddr,
        removed: bool,
    ) -> Result<EndpointRecord, MembershipError> {
        if network_id.len() > MAX_NETWORK_ID_LEN {
            return Err(MembershipError::NetworkIdTooLong);
        }
        let key = (network_id.to_owned(), ip);
        let record = {
            let mut table = lock(&self.table);
            // Versions start at our generation in the high half, so a
            // restarted node (higher generation) wins over the records of
            // its previous life even before it hears them back; within a
            // life they count up past anything we heard.
            let floor = u64::from(self.swim.identity().generation) << 32;
            let version = table
                .version_of(&key)
                .map_or(floor, |v| v.saturating_add(1).max(floor));
            let record = EndpointRecord {
                network_id: network_id.to_owned(),
                ip,
                mac,
                vtep,
                version,
                removed,
            };
            table.apply(record.clone(), false);
            record
        };
        self.swim
            .add_broadcast(&record.emit())
            .map_err(|e| MembershipError::Swim(e.to_string()))?;
        // Push it out now instead of waiting for the next gossip tick.
        let _ = self.swim.broadcast(&mut self.runtime);
        self.drain();
        Ok(record)
    }

    /// Live endpoint records we know of, ours included.
    pub fn endpoints(&self) -> Vec<EndpointRecord> {
        lock(&self.table).live().cloned().collect()
    }

    /// Live endpoint records on one VTEP (a host's `data_addr`), e.g. to
    /// withdraw a Down host's endpoints.
    pub fn endpoints_at(&self, vtep: IpAddr) -> Vec<EndpointRecord> {
        lock(&self.table)
            .live()
            .filter(|r| r.vtep == vtep)
            .cloned()
            .collect()
    }

    /// Endpoint tombstones currently remembered.
    pub fn tombstones(&self) -> usize {
        lock(&self.table).tombstones()
    }

    /// Our full state (members, endpoint records and tombstones), sealed
    /// under the primary key, for the TCP bulk sync with a (re)joining
    /// member. Both sides send theirs and merge the other's.
    pub fn state_snapshot(&mut self) -> Result<Vec<u8>, MembershipError> {
        let snapshot = Snapshot {
            // Ourselves first (foca does not list us), at incarnation 0:
            // a receiver that knows us better keeps what it knows.
            members: std::iter::once(Member::alive(self.identity().clone()))
                .chain(self.swim.iter_membership_state().cloned())
                .collect(),
            endpoints: lock(&self.table).all().cloned().collect(),
        };
        let plain =
            postcard::to_allocvec(&snapshot).map_err(|_| MembershipError::SnapshotDecode)?;
        let nonce = self.nonce();
        self.keyring
            .seal(Context::Snapshot, nonce, &plain)
            .map_err(|_| MembershipError::NoPrimaryKey)
    }

    /// Merges a peer's [`Self::state_snapshot`]; newer knowledge wins.
    pub fn merge_snapshot(&mut self, sealed: &[u8], now: Instant) -> Result<(), MembershipError> {
        self.tick(now);
        let (plain, _) = self
            .keyring
            .open(Context::Snapshot, sealed)
            .inspect_err(|e| self.stats.count_open_error(*e))?;
        let snapshot: Snapshot =
            postcard::from_bytes(&plain).map_err(|_| MembershipError::SnapshotDecode)?;
        {
            let mut table = lock(&self.table);
            for record in snapshot.endpoints.into_iter().filter(|r| r.is_valid()) {
                table.apply(record, true);
            }
        }
        let members = snapshot.members.into_iter().filter(|m| m.id().is_valid());
        let result = self.swim.apply_many(members, true, &mut self.runtime);
        self.drain();
        result.map_err(|e| MembershipError::Swim(e.to_string()))
    }

    fn tick(&mut self, now: Instant) {
        lock(&self.table).reap(now, self.config.tombstone_ttl);
    }

    fn nonce(&mut self) -> [u8; NONCE_LEN] {
        let mut nonce = [0; NONCE_LEN];
        self.nonce_rng.fill_bytes(&mut nonce);
        nonce
    }

    /// Moves what foca produced into our queues, sealing datagrams.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let nonce = self.nonce();
            match self.keyring.seal(Context::Datagram, nonce, &data) {
                Ok(packet) => {
                    self.stats.tx_packets += 1;
                    self.transmits.push_back((to.gossip_addr, packet));
                }
                Err(_) => self.stats.tx_no_key += 1,
            }
        }
        while let Some((delay, timer)) = self.runtime.to_schedule() {
            self.timers.push_back((delay, TimerEvent(timer)));
        }
        while let Some(notification) = self.runtime.to_notify() {
            let event = match notification {
                OwnedNotification::MemberUp(id) => MemberEvent::Up(id),
                OwnedNotification::MemberDown(id) => MemberEvent::Down(id),
                OwnedNotification::Rename(old, new) => MemberEvent::Updated { old, new },
                OwnedNotification::Rejoin(id) => MemberEvent::Rejoined(id),
                OwnedNotification::Defunct => MemberEvent::Defunct,
                OwnedNotification::Active | OwnedNotification::Idle => continue,
            };
            // Identities from the wire are checked before the daemon sees
            // them; an invalid one cannot name a node to program.
            let valid = match &event {
                MemberEvent::Up(id) | MemberEvent::Down(id) => id.is_valid(),
                MemberEvent::Updated { new, .. } => new.is_valid(),
                _ => true,
            };
            if valid {
                self.events.push_back(event);
            }
        }
    }
}
