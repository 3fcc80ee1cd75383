//! What a node keeps of its management identity: its mutual-TLS
//! certificate and key, and on a worker where its manager is.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::mgmt::NodeIdentity;
use crate::store::Record;

/// This node's management-plane state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MgmtState {
    pub identity: NodeIdentity,
    /// The manager this node joined through (`None` on the manager).
    #[serde(default)]
    pub manager: Option<SocketAddr>,
}

impl MgmtState {
    pub const KEY: &'static str = "self";
}

impl std::fmt::Debug for MgmtState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity's Debug keeps its key out of logs.
        f.debug_struct("MgmtState")
            .field("identity", &self.identity)
            .field("manager", &self.manager)
            .finish()
    }
}

impl Record for MgmtState {
    const TABLE: &'static str = "daemon_mgmt";
    fn key(&self) -> String {
        Self::KEY.to_owned()
    }
}
