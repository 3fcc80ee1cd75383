//! What only this host's daemon needs to remember, kept in the same store
//! as the swarm's records (so it is written atomically and survives
//! restarts): which node this daemon is, and per container its namespace,
//! the interface name of each network inside it, the pid of its command and
//! its log file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::Record;

/// The node this daemon runs as (written by `swarm init`, later `join`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNode {
    pub node_id: String,
}

impl LocalNode {
    pub const KEY: &'static str = "self";
}

impl Record for LocalNode {
    const TABLE: &'static str = "daemon_local";
    fn key(&self) -> String {
        Self::KEY.to_owned()
    }
}

/// The host side of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub container_id: String,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// Network id -> interface name inside the namespace. Kept rather than
    /// derived from the attachment order, so a disconnect does not rename
    /// the interfaces of the remaining networks.
    #[serde(default)]
    pub ifnames: BTreeMap<String, String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub log_path: String,
    /// Another runtime made the container (`network connect --netns|--veth`):
    /// its namespace and processes are not ours to create or remove.
    #[serde(default)]
    pub external: bool,
    /// The host side of the container's veth, for a sidecar attach
    /// (`network connect --veth`); its one network is bridged to it.
    #[serde(default)]
    pub veth: Option<String>,
    /// How many times this daemon started the container's command.
    #[serde(default)]
    pub starts: u32,
    /// The command's exit status, once this daemon saw it end (`None` while
    /// it runs, or when it ended while the daemon was down).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The last reason the container could not be made as desired.
    #[serde(default)]
    pub error: Option<String>,
    /// A worker's decision made without its manager (`container rm -f` or
    /// `swarm leave --force` while the manager is out of reach): wins over
    /// the manager's copy until the manager has been told.
    #[serde(default)]
    pub desired_override: Option<crate::model::DesiredState>,
    /// Everything of the container is gone from this host; only the
    /// manager has to be told (a worker's removal in flight).
    #[serde(default)]
    pub removed: bool,
    /// The command ended (its status in `exit_code` when known).
    #[serde(default)]
    pub ended: bool,
    /// Start the command again even though it ran before (`container
    /// start`, or a stopped container running again).
    #[serde(default)]
    pub restart: bool,
    /// When the command was seen to have ended (Unix ms), for the delay
    /// before a task's restart.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// When the command was last started (Unix ms).
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// Exits in a row that came soon after the start
    /// ([`QUICK_EXIT_MS`]): what the restart delay doubles with. A command
    /// that ran longer starts again after the shortest delay.
    #[serde(default)]
    pub quick_exits: u32,
    /// The container's state as this node sees it; a worker reports it to
    /// its manager when the manager's copy differs.
    #[serde(default)]
    pub status: Option<crate::model::TaskStatus>,
    /// When SIGTERM went to the command (Unix ms), so SIGKILL follows
    /// after `grace_secs` (`container stop -t`).
    #[serde(default)]
    pub term_sent_ms: Option<u64>,
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

/// A command that ends sooner than this after its start counts as
/// failing in a loop.
pub const QUICK_EXIT_MS: u64 = 10_000;

impl Runtime {
    pub fn ifname(&self, network_id: &str) -> Option<&str> {
        self.ifnames.get(network_id).map(String::as_str)
    }

    /// The first `ethN` not used yet; `vxN` in another runtime's
    /// namespace, whose `ethN` are likely that runtime's own.
    pub fn next_ifname(&self) -> String {
        let prefix = if self.external { "vx" } else { "eth" };
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|n| !self.ifnames.values().any(|v| v == n))
            .unwrap_or_else(|| "eth0".to_owned())
    }
}

impl Record for Runtime {
    const TABLE: &'static str = "daemon_runtime";
    fn key(&self) -> String {
        self.container_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_fill_gaps() {
        let mut r = Runtime::default();
        assert_eq!(r.next_ifname(), "eth0");
        r.ifnames.insert("a".into(), "eth0".into());
        r.ifnames.insert("b".into(), "eth1".into());
        assert_eq!(r.next_ifname(), "eth2");
        r.ifnames.remove("a");
        assert_eq!(r.next_ifname(), "eth0");
        assert_eq!(r.ifname("b"), Some("eth1"));
        r.external = true;
        assert_eq!(r.next_ifname(), "vx0");
    }
}
