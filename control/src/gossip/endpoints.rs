//! Endpoint records: where every overlay endpoint lives (Docker's peer
//! records), spread by piggybacking on SWIM messages.
//!
//! This module owns the record wire format, the last-writer-wins table
//! with tombstones, and the foca [`BroadcastHandler`] that decides whether
//! a received record is news worth passing on.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  format (1)   |  op (1=add,   |   version (u64, big endian)   |
//! |               |     2=remove) |                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |                                                               |
//! +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               |  net id len   | network id ...|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | ip family 4|6 | endpoint IP (4 or 16) ... | MAC (6) ...       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | vtep family   | VTEP IP (4 or 16) ...                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A record is keyed by (network id, endpoint IP). Of two records for one
//! key the higher version wins; at equal versions a removal wins, then the
//! larger encoding, so every host settles on the same record whatever the
//! order it hears them in. A removal stays as a tombstone for
//! [`super::GossipConfig::tombstone_ttl`] so a late add with an older
//! version cannot bring the endpoint back.
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::identity::NodeIdentity;

/// Version of the record encoding.
pub const RECORD_FORMAT: u8 = 1;
/// Longest network id accepted, in bytes.
pub const MAX_NETWORK_ID_LEN: usize = 64;

const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;

/// Where one overlay endpoint lives, or that it is gone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The overlay network's id.
    pub network_id: String,
    /// The endpoint's address inside the overlay.
    pub ip: IpAddr,
    /// The endpoint's MAC address.
    pub mac: [u8; 6],
    /// The data-path address of the host it lives on.
    pub vtep: IpAddr,
    /// Version of this record; newest wins.
    pub version: u64,
    /// A tombstone: the endpoint was removed.
    pub removed: bool,
}

/// Why a record's bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Ran out of bytes.
    #[error("truncated endpoint record")]
    Truncated,
    /// Unknown format, op or address family byte.
    #[error("malformed endpoint record")]
    Malformed,
    /// Bytes left after the record.
    #[error("trailing bytes after endpoint record")]
    Trailing,
}

/// The key records are versioned under.
pub type RecordKey = (String, IpAddr);

impl EndpointRecord {
    /// The (network, IP) pair this record is about.
    pub fn key(&self) -> RecordKey {
        (self.network_id.clone(), self.ip)
    }

    /// Whether `self` replaces `other` (same key assumed).
    pub fn supersedes(&self, other: &Self) -> bool {
        (self.version, self.removed, self.emit()) > (other.version, other.removed, other.emit())
    }

    /// Encodes the record.
    ///
    /// # Panics
    /// If `network_id` is longer than [`MAX_NETWORK_ID_LEN`] (a caller
    /// mistake; [`super::Membership::announce_endpoint`] checks it).
    pub fn emit(&self) -> Vec<u8> {
        let id = self.network_id.as_bytes();
        assert!(id.len() <= MAX_NETWORK_ID_LEN, "network id too long");
        let mut out = Vec::with_capacity(12 + id.len() + 2 * 17 + 6);
        out.push(RECORD_FORMAT);
        out.push(if self.removed { OP_REMOVE } else { OP_ADD });
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        emit_ip(&mut out, self.ip);
        out.extend_from_slice(&self.mac);
        emit_ip(&mut out, self.vtep);
        out
    }

    /// Decodes untrusted bytes holding exactly one record.
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(bytes);
        if r.u8()? != RECORD_FORMAT {
            return Err(RecordError::Malformed);
        }
        let removed = match r.u8()? {
            OP_ADD => false,
            OP_REMOVE => true,
            _ => return Err(RecordError::Malformed),
        };
        let version = u64::from_be_bytes(r.array()?);
        let id_len = usize::from(r.u8()?);
        if id_len > MAX_NETWORK_ID_LEN {
            return Err(RecordError::Malformed);
        }
        let network_id = std::str::from_utf8(r.take(id_len)?)
            .map_err(|_| RecordError::Malformed)?
            .to_owned();
        let ip = r.ip()?;
        let mac = r.array()?;
        let vtep = r.ip()?;
        if !r.0.is_empty() {
            return Err(RecordError::Trailing);
        }
        Ok(Self {
            network_id,
            ip,
            mac,
            vtep,
            version,
            removed,
        })
    }

    /// Whether a record decoded by serde (snapshots) is in range.
    pub fn is_valid(&self) -> bool {
        self.network_id.len() <= MAX_NETWORK_ID_LEN
    }
}

fn emit_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(RecordError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        self.take(N)?.try_into().map_err(|_| RecordError::Truncated)
    }

    fn ip(&mut self) -> Result<IpAddr, RecordError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(RecordError::Malformed),
        }
    }
}

/// A change in where endpoints live, reported to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A remote endpoint appeared or moved (program the dataplane).
    Added(EndpointRecord),
    /// A remote endpoint went away (withdraw it).
    Removed(EndpointRecord),
}

struct Entry {
    record: EndpointRecord,
    /// When the tombstone was learned (only for removals).
    removed_at: Option<Instant>,
}

/// The record table shared by [`super::Membership`] and the broadcast
/// handler foca owns.
pub(crate) struct EndpointTable {
    entries: BTreeMap<RecordKey, Entry>,
    events: VecDeque<EndpointEvent>,
    /// The latest time the driver handed in, stamped on new tombstones.
    pub(crate) now: Option<Instant>,
}

impl EndpointTable {
    fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            events: VecDeque::new(),
            now: None,
        }
    }

    /// Applies a record if it is news. Returns whether it was; `report`
    /// queues an event for the daemon when the visible state changed.
    pub(crate) fn apply(&mut self, record: EndpointRecord, report: bool) -> bool {
        let key = record.key();
        let previous = self.entries.get(&key);
        if let Some(prev) = previous {
            if !record.supersedes(&prev.record) {
                return false;
            }
        }
        let was_live = previous.is_some_and(|p| !p.record.removed);
        if report {
            if record.removed {
                if let Some(prev) = previous.filter(|_| was_live) {
                    self.events
                        .push_back(EndpointEvent::Removed(prev.record.clone()));
                }
            } else if previous.is_none_or(|p| {
                p.record.removed || p.record.mac != record.mac || p.record.vtep != record.vtep
            }) {
                self.events.push_back(EndpointEvent::Added(record.clone()));
            }
        }
        let removed_at = record.removed.then_some(self.now).flatten();
        self.entries.insert(key, Entry { record, removed_at });
        true
    }

    pub(crate) fn version_of(&self, key: &RecordKey) -> Option<u64> {
        self.entries.get(key).map(|e| e.record.version)
    }

    pub(crate) fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Live records (no tombstones).
    pub(crate) fn live(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.entries
            .values()
            .map(|e| &e.record)
            .filter(|r| !r.removed)
    }

    /// Every record, tombstones included (for snapshots).
    pub(crate) fn all(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.entries.values().map(|e| &e.record)
    }

    /// Forgets tombstones older than `ttl`. A tombstone learned before the
    /// first timestamp arrived gets stamped now, so it still expires.
    pub(crate) fn reap(&mut self, now: Instant, ttl: Duration) {
        self.now = Some(now);
        self.entries.retain(|_, e| {
            if !e.record.removed {
                return true;
            }
            let at = *e.removed_at.get_or_insert(now);
            now.saturating_duration_since(at) < ttl
        });
    }

    pub(crate) fn tombstones(&self) -> usize {
        self.entries.values().filter(|e| e.record.removed).count()
    }
}

/// Locks the table; a poisoned lock still holds consistent data because
/// no method panics half-way through an update.
pub(crate) fn lock(table: &Mutex<EndpointTable>) -> MutexGuard<'_, EndpointTable> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// The foca broadcast handler: decodes records and keeps only news.
pub(crate) struct EndpointBroadcasts {
    pub(crate) table: Arc<Mutex<EndpointTable>>,
}

impl EndpointBroadcasts {
    pub(crate) fn new() -> Self {
        Self {
            table: Arc::new(Mutex::new(EndpointTable::new())),
        }
    }
}

/// What foca keeps disseminating: a newer record for the same key makes
/// it drop the older one from its backlog.
pub(crate) struct BroadcastKey {
    key: RecordKey,
    record: EndpointRecord,
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.record.supersedes(&other.record)
    }
}

impl BroadcastHandler<NodeIdentity> for EndpointBroadcasts {
    type Key = BroadcastKey;
    type Error = RecordError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<BroadcastKey>, RecordError> {
        let record = EndpointRecord::parse(data)?;
        // Our own announcements (sender None) are already in the table.
        let mut table = lock(&self.table);
        let news = match sender {
            None => true,
            Some(_) => table.apply(record.clone(), true),
        };
        Ok(news.then(|| BroadcastKey {
            key: record.key(),
            record,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(ip: &str, version: u64, removed: bool) -> EndpointRecord {
        EndpointRecord {
            network_id: "net1".into(),
            ip: ip.parse().unwrap(),
            mac: [2, 0, 0, 0, 0, 1],
            vtep: "192.168.1.1".parse().unwrap(),
            version,
            removed,
        }
    }

    #[test]
    fn emit_parse_round_trip_and_bytes() {
        let r = rec("10.0.0.2", 0x0102, false);
        let bytes = r.emit();
        assert_eq!(
            bytes,
            [
                1, 1, 0, 0, 0, 0, 0, 0, 1, 2, 4, b'n', b'e', b't', b'1', 4, 10, 0, 0, 2, 2, 0, 0,
                0, 0, 1, 4, 192, 168, 1, 1
            ]
        );
        assert_eq!(EndpointRecord::parse(&bytes).unwrap(), r);
        let mut v6 = rec("fd00::2", 9, true);
        v6.vtep = "fd00::1".parse().unwrap();
        assert_eq!(EndpointRecord::parse(&v6.emit()).unwrap(), v6);
    }

    #[test]
    fn parse_rejects_bad_input() {
        let bytes = rec("10.0.0.2", 1, false).emit();
        for len in 0..bytes.len() {
            assert_eq!(
                EndpointRecord::parse(&bytes[..len]),
                Err(RecordError::Truncated),
                "len {len}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(EndpointRecord::parse(&long), Err(RecordError::Trailing));
        for (at, val) in [(0, 9), (1, 3), (10, 65), (15, 5)] {
            let mut bad = bytes.clone();
            bad[at] = val;
            assert!(EndpointRecord::parse(&bad).is_err(), "byte {at}");
        }
    }

    #[test]
    fn newest_wins_and_tombstones_expire() {
        let t0 = Instant::now();
        let mut table = EndpointTable::new();
        table.now = Some(t0);
        assert!(table.apply(rec("10.0.0.2", 2, false), true));
        assert!(!table.apply(rec("10.0.0.2", 1, false), true), "older loses");
        assert!(!table.apply(rec("10.0.0.2", 2, false), true), "same is old");
        assert_eq!(
            table.poll_event(),
            Some(EndpointEvent::Added(rec("10.0.0.2", 2, false)))
        );
        assert_eq!(table.poll_event(), None);
        // Equal version: the removal wins on every host.
        assert!(table.apply(rec("10.0.0.2", 2, true), true));
        assert!(!table.apply(rec("10.0.0.2", 2, false), true));
        assert_eq!(
            table.poll_event(),
            Some(EndpointEvent::Removed(rec("10.0.0.2", 2, false)))
        );
        assert_eq!(table.live().count(), 0);
        table.reap(t0 + Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(table.tombstones(), 1, "young tombstone kept");
        assert!(!table.apply(rec("10.0.0.2", 1, false), true), "stale add");
        table.reap(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(table.tombstones(), 0);
    }
}
