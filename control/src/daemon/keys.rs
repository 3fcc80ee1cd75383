//! Gossip key rotation across the swarm, driven by the manager.
//!
//! The manager rotates the cluster key every `--gossip-key-rotation`
//! (12 h by default) in three make-before-break steps, each started only
//! once every Ready node reports that it has taken the previous one:
//!
//! 1. a new key is installed everywhere for receiving, while every node
//!    keeps sending with the current primary;
//! 2. the new key becomes the primary (while it spreads, some nodes send
//!    with the old key and some with the new, and every node opens both);
//! 3. the oldest key is removed once every node sends with the new one,
//!    keeping the previous primary as a spare: at most three keys at any
//!    time, two between rotations.
//!
//! Distribution: over the management plane's mutual TLS, not over gossip.
//! Each node polls its manager ([`KeyringReport`], allowed to any node
//! holding a certificate of this swarm), reporting the keyring its gossip
//! driver holds and receiving the keyring it should hold. This reuses the
//! channel that already carries the first key at join, it lets a node that
//! was away (or restarted with stale keys) catch up even though it can no
//! longer open gossip, and the reports are the acknowledgements the
//! manager waits for between steps. The manager keeps the reports in
//! memory only: after a manager restart a step waits for fresh ones. The
//! state of a rotation lives in the cluster record
//! ([`crate::cluster::pending_gossip_key`]), so it survives restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use vxnet_api::{ApiError, ApiResult};

use super::dataplane::DataplaneApi;
use super::gossip::GossipStatus;
use super::{Daemon, internal, lock, now};
use crate::cluster::{self, GOSSIP_KEYRING_LEN};
use crate::model::{Cluster, Node, NodeStatus, StoredGossipKey, UnixTime};
use crate::store::{Store, StoreExt};

pub use crate::mgmt::calls::{KeyringReport, KeysReply};

/// Longest a node waits between two polls while no rotation is due.
const MAX_POLL: u64 = 60;

impl From<&GossipStatus> for KeyringReport {
    fn from(s: &GossipStatus) -> Self {
        Self {
            key_ids: s.key_ids.clone(),
            primary: s.primary,
        }
    }
}

/// What the manager does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Step 1: install a new key everywhere.
    Begin,
    /// Step 2: send with the new key.
    Promote,
    /// Step 3: drop the oldest key.
    Retire,
}

/// The next rotation step, from the cluster record and the keyrings of
/// every Ready node (the manager's own included; a node that has not
/// reported yet counts as holding nothing).
pub fn plan(c: &Cluster, now: UnixTime, interval: u64, nodes: &[KeyringReport]) -> Step {
    let Some(primary) = c.primary_gossip_key().map(|k| k.id) else {
        return Step::Wait;
    };
    if let Some(new) = cluster::pending_gossip_key(c) {
        if nodes.iter().all(|n| n.key_ids.contains(&new.id)) {
            return Step::Promote;
        }
        return Step::Wait;
    }
    if c.gossip_keys.len() >= GOSSIP_KEYRING_LEN {
        if nodes.iter().all(|n| n.primary == Some(primary)) {
            return Step::Retire;
        }
        return Step::Wait;
    }
    if cluster::gossip_rotation_due_after(c, now, interval) {
        return Step::Begin;
    }
    Step::Wait
}

/// How long a node may wait before polling again: soon while a rotation
/// is under way, otherwise until the next one is due (at most a minute).
pub fn poll_after(c: &Cluster, now: UnixTime, interval: u64) -> u64 {
    if cluster::pending_gossip_key(c).is_some() || c.gossip_keys.len() >= GOSSIP_KEYRING_LEN {
        return 1;
    }
    let age = c
        .primary_gossip_key()
        .map_or(interval, |k| now.saturating_sub(k.created));
    interval.saturating_sub(age).clamp(1, MAX_POLL)
}

/// Checks a keyring received from the manager before it is used.
fn check_keys(keys: &[StoredGossipKey]) -> Result<(), String> {
    if keys.is_empty() || keys.len() > GOSSIP_KEYRING_LEN {
        return Err(format!("the manager sent {} gossip keys", keys.len()));
    }
    if keys.iter().any(|k| k.to_keyring().is_none()) {
        return Err("the manager sent a malformed gossip key".into());
    }
    Ok(())
}

/// The manager's record of what each node reported last.
pub(crate) type KeyAcks = BTreeMap<String, KeyringReport>;

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    /// The manager's side of [`KeyringReport`]: records what `node` holds
    /// and answers what it should hold.
    pub(crate) fn gossip_keys_for(
        &self,
        node: &str,
        report: KeyringReport,
    ) -> ApiResult<KeysReply> {
        let c = cluster::cluster(&self.store)?;
        // A removed node's certificate may still be valid: it gets no
        // more keys.
        if self.store.get::<Node>(node).map_err(internal)?.is_none() {
            return Err(ApiError::denied(format!(
                "node {node} is not part of this swarm"
            )));
        }
        lock(&self.key_acks).insert(node.to_owned(), report);
        Ok(KeysReply {
            poll_after_secs: poll_after(&c, now(), self.cfg.key_rotation),
            keys: c.gossip_keys,
        })
    }

    /// One rotation tick on a manager: takes the next step if every Ready
    /// node has taken the previous one. Returns the keyring the local
    /// gossip driver should hold; `None` on a worker, or with no driver.
    pub(crate) fn tend_gossip_keys(&self) -> Option<Vec<StoredGossipKey>> {
        let me = self.local_node().ok()?;
        if !self.is_manager() {
            return None;
        }
        let own = KeyringReport::from(&self.gossip_status().ok()?);
        let _w = self.write();
        let nodes = cluster::list_nodes(&self.store, None).ok()?;
        let reports = {
            let mut acks = lock(&self.key_acks);
            // Reports of nodes no longer in the swarm are dropped.
            acks.retain(|id, _| nodes.iter().any(|n: &Node| n.id == *id));
            let mut reports = vec![own];
            reports.extend(
                nodes
                    .iter()
                    .filter(|n| n.id != me && n.status == NodeStatus::Ready)
                    .map(|n| acks.get(&n.id).cloned().unwrap_or_default()),
            );
            reports
        };
        let c = cluster::cluster(&self.store).ok()?;
        let step = plan(&c, now(), self.cfg.key_rotation, &reports);
        let r = match step {
            Step::Wait => Ok(None),
            Step::Begin => {
                cluster::begin_gossip_rotation(&self.store, now(), &mut rand_core::OsRng)
            }
            Step::Promote => cluster::promote_gossip_key(&self.store),
            Step::Retire => cluster::retire_gossip_keys(&self.store),
        };
        match r {
            Ok(Some(c)) => {
                if matches!(step, Step::Begin) {
                    super::metrics::ControlCounters::inc(&self.counters.key_rotations);
                }
                let ids: Vec<u32> = c.gossip_keys.iter().map(|k| k.id).collect();
                tracing::info!(step = ?step, keys = ?ids, "gossip key rotation");
                Some(c.gossip_keys)
            }
            Ok(None) => Some(c.gossip_keys),
            Err(e) => {
                tracing::warn!(step = ?step, error = %e, "gossip key rotation");
                Some(c.gossip_keys)
            }
        }
    }

    /// A worker's poll of its manager: reports what its gossip holds,
    /// keeps the wanted keyring in its own cluster record (so a restart
    /// starts with it) and returns it with the time to the next poll.
    pub(crate) fn sync_gossip_keys(&self) -> ApiResult<(Vec<StoredGossipKey>, Duration)> {
        if self.is_manager() {
            return Err(ApiError::precondition("a manager rotates its own keys"));
        }
        let report = KeyringReport::from(&self.gossip_status()?);
        // No lock held: a manager that does not answer must not hold up
        // the API or the gossip driver for the call's timeout.
        let reply = self.manager_call(report)?;
        check_keys(&reply.keys).map_err(ApiError::internal)?;
        let _w = self.write();
        let mut c: Cluster = cluster::cluster(&self.store)?;
        if c.gossip_keys != reply.keys {
            c.gossip_keys = reply.keys.clone();
            self.store.put(&c).map_err(internal)?;
        }
        Ok((
            reply.keys,
            Duration::from_secs(reply.poll_after_secs.clamp(1, MAX_POLL)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressPool, JoinTokens};

    fn key(id: u32, created: UnixTime) -> StoredGossipKey {
        StoredGossipKey {
            key: String::new(),
            id,
            created,
        }
    }

    fn cluster_with(keys: Vec<StoredGossipKey>) -> Cluster {
        Cluster {
            id: "c".into(),
            created: 0,
            gossip_keys: keys,
            tokens: JoinTokens {
                worker: String::new(),
                worker_rotated: 0,
                manager: String::new(),
                manager_rotated: 0,
            },
            default_pool: AddressPool::default(),
            data_path_port: 4789,
        }
    }

    fn holds(ids: &[u32], primary: u32) -> KeyringReport {
        KeyringReport {
            key_ids: ids.to_vec(),
            primary: Some(primary),
        }
    }

    #[test]
    fn each_step_waits_for_every_node() {
        // Steady, not yet due.
        let c = cluster_with(vec![key(1, 100), key(2, 200)]);
        assert_eq!(plan(&c, 209, 10, &[holds(&[1, 2], 2)]), Step::Wait);
        assert_eq!(poll_after(&c, 209, 10), 1);
        assert_eq!(poll_after(&c, 201, 10), 9);
        assert_eq!(poll_after(&c, 201, 43_200), MAX_POLL);
        // Due.
        assert_eq!(plan(&c, 210, 10, &[holds(&[1, 2], 2)]), Step::Begin);
        // Key 3 pending: promoted only once everyone holds it.
        let c = cluster_with(vec![key(1, 100), key(3, 210), key(2, 200)]);
        let all = [holds(&[1, 2, 3], 2), holds(&[1, 2, 3], 2)];
        let one_behind = [holds(&[1, 2, 3], 2), holds(&[1, 2], 2)];
        assert_eq!(plan(&c, 300, 10, &one_behind), Step::Wait);
        assert_eq!(plan(&c, 300, 10, &all), Step::Promote);
        assert_eq!(poll_after(&c, 300, 10), 1);
        // Promoted: the oldest goes once everyone sends with key 3.
        let c = cluster_with(vec![key(1, 100), key(2, 200), key(3, 210)]);
        assert_eq!(
            plan(&c, 300, 10, &[holds(&[1, 2, 3], 3), holds(&[1, 2, 3], 2)]),
            Step::Wait
        );
        assert_eq!(
            plan(&c, 300, 10, &[holds(&[1, 2, 3], 3), holds(&[1, 2, 3], 3)]),
            Step::Retire
        );
        // A node that never reported holds nothing.
        assert_eq!(
            plan(
                &c,
                300,
                10,
                &[holds(&[1, 2, 3], 3), KeyringReport::default()]
            ),
            Step::Wait
        );
    }

    #[test]
    fn received_keyrings_are_checked() {
        let good = StoredGossipKey {
            key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]),
            id: 1,
            created: 0,
        };
        assert!(check_keys(std::slice::from_ref(&good)).is_ok());
        assert!(check_keys(&[]).is_err());
        assert!(check_keys(&[good.clone(), good.clone(), good.clone(), good.clone()]).is_err());
        let mut bad = good;
        bad.key = "short".into();
        assert!(check_keys(&[bad]).is_err());
    }
}
